"""The cheapest possible stream relays, to measure what the server itself costs
(bench/stream_floor.py --floor): no key, no limits, no parsing, no metering. Each
forwards the request to the fake provider (FLOOR_UPSTREAM_PORT; it answers
chunked, as bench/lightfake.py and tests/fakes/provider.py do) and passes every
chunk back: `wsgi_app` over stdlib http.client, `asgi_app` over raw asyncio
streams (a connection per request), `asgi_aiohttp_app` over an aiohttp session
(only when aiohttp is installed)."""
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


_session = None  # one aiohttp session per worker, made on the first request


async def asgi_aiohttp_app(scope, receive, send):
    """The ASGI floor of PERF-NOTES' "Async streaming floor": an aiohttp client session with an
    unlimited connector. Needs aiohttp (not a dependency of the project; stream_floor.py checks)."""
    global _session
    import aiohttp

    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                if _session is not None:
                    await _session.close()
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    if _session is None:
        _session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    body = b""
    while True:
        msg = await receive()
        body += msg.get("body", b"")
        if not msg.get("more_body"):
            break
    async with _session.post(f"http://127.0.0.1:{UPSTREAM}/v1/chat/completions", data=body,
                             headers={"Authorization": "Bearer sk-fake-upstream",
                                      "Content-Type": "application/json"}) as resp:
        await send({"type": "http.response.start", "status": resp.status,
                    "headers": [(b"content-type", b"text/event-stream")]})
        async for data in resp.content.iter_any():
            await send({"type": "http.response.body", "body": data, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})
