"""The cheapest possible stream relays, to measure what the server itself costs
(bench/stream_floor.py): no key, no limits, no parsing, no metering. Each
forwards the request to the fake provider and passes every chunk back."""
from __future__ import annotations

import asyncio
import http.client
import os

UPSTREAM = int(os.environ.get("FLOOR_UPSTREAM_PORT", "0"))
HEAD = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer sk-fake-upstream\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n")


def wsgi_app(environ, start_response):
    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    conn = http.client.HTTPConnection("127.0.0.1", UPSTREAM)
    conn.request("POST", "/v1/chat/completions", body, {"Authorization": "Bearer sk-fake-upstream",
                                                         "Content-Type": "application/json"})
    resp = conn.getresponse()
    start_response("200 OK", [("Content-Type", "text/event-stream")])

    def chunks():
        try:
            while True:
                data = resp.read1(65536)
                if not data:
                    return
                yield data
        finally:
            conn.close()
    return chunks()


async def asgi_app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = b""
    while True:
        msg = await receive()
        body += msg.get("body", b"")
        if not msg.get("more_body"):
            break
    reader, writer = await asyncio.open_connection("127.0.0.1", UPSTREAM)
    writer.write(HEAD % len(body) + body)
    await reader.readuntil(b"\r\n\r\n")  # the fake always answers chunked
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    try:
        while True:
            size = int((await reader.readline()).strip() or b"0", 16)
            if size == 0:
                break
            data = await reader.readexactly(size + 2)
            await send({"type": "http.response.body", "body": data[:-2], "more_body": True})
    finally:
        writer.close()
    await send({"type": "http.response.body", "body": b"", "more_body": False})
