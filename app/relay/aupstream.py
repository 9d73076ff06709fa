"""Calls to providers from the async relay (app/relay/asgi.py): aiohttp, one session per event loop.

The same contract as the blocking client (app/relay/upstream.py): `send` waits
for the response headers within the provider's connect and first-byte
timeouts, the body is read whole (`read`) or event by event (`events`, each
read within the read timeout), and a failure is an `UpstreamError` carrying
an error class, never a body (P23). Redirects are not followed. Reading is
driven by the relay: it reads the next event only after the client took the
last one, so a slow client slows the upstream read instead of filling memory.
"""
from __future__ import annotations

import asyncio
import socket
import ssl

import aiohttp
import yarl

from app.relay.providers import Provider
from app.relay.upstream import UpstreamError, split_events

_sessions: dict[asyncio.AbstractEventLoop, aiohttp.ClientSession] = {}
_urls: dict[tuple[str, str], yarl.URL] = {}


def _session() -> aiohttp.ClientSession:
    loop = asyncio.get_running_loop()
    session = _sessions.get(loop)
    if session is None or session.closed:
        # No limit on connections (one per concurrent call, kept alive for the next),
        # no cookie jar (the relay holds no state between calls), no decompression
        # (the bytes go to the client as the provider sent them).
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=60, keepalive_timeout=30)
        session = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(),
                                        auto_decompress=False, skip_auto_headers=("User-Agent",),
                                        timeout=aiohttp.ClientTimeout(total=None))
        _sessions[loop] = session
    return session


async def close_sessions() -> None:
    """Close this loop's session (at shutdown)."""
    session = _sessions.pop(asyncio.get_running_loop(), None)
    if session is not None:
        await session.close()


def close_all_from_another_thread(timeout: float = 5.0) -> None:
    """Close every loop's session and its kept-alive connections (tests: so the next
    call opens a fresh connection). Only while no call is in flight."""
    for loop, session in list(_sessions.items()):
        if not loop.is_closed():
            asyncio.run_coroutine_threadsafe(session.close(), loop).result(timeout)
        _sessions.pop(loop, None)


def _classify(exc: BaseException) -> str:
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError, aiohttp.ServerTimeoutError)):
        return "timeout"
    if isinstance(exc, aiohttp.ClientConnectorError):
        cause = exc.os_error
        if isinstance(cause, ConnectionRefusedError):
            return "connect_refused"
        if isinstance(cause, socket.gaierror) or isinstance(exc, aiohttp.ClientConnectorDNSError):
            return "dns_error"
        if isinstance(exc, aiohttp.ClientSSLError) or isinstance(cause, ssl.SSLError):
            return "tls_error"
        return "connection_error"
    if isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, ConnectionResetError,
                        BrokenPipeError)):
        return "upstream_disconnected"
    return "connection_error"


_FAILURES = (aiohttp.ClientError, OSError, asyncio.TimeoutError)


class Response:
    """An upstream response whose headers have arrived. Read the body with
    `read()` or `events()`, then `release()` (or `close()` on any failure)."""

    def __init__(self, resp: aiohttp.ClientResponse, read_timeout: float) -> None:
        self._resp = resp
        self.status = resp.status
        self.headers = resp.headers
        # From here on, the wait allowed between two reads is the read timeout, not the first byte's.
        if resp.connection is not None and resp.connection.protocol is not None:
            resp.connection.protocol.read_timeout = read_timeout

    async def read(self) -> bytes:
        try:
            return await self._resp.read()
        except _FAILURES as exc:
            self.close()
            raise UpstreamError(_classify(exc)) from None

    async def events(self):
        """Yield each server-sent event (the bytes up to and including the blank
        line) as it arrives. Raises UpstreamError if the stream breaks."""
        content = self._resp.content
        buf = b""
        while True:
            try:
                data = await content.readany()
            except _FAILURES as exc:
                self.close()
                raise UpstreamError(_classify(exc)) from None
            if not data:
                if buf.strip():
                    yield buf
                return
            events, buf = split_events(buf + data)
            for event in events:
                yield event

    def release(self) -> None:
        """Give the connection back to the pool (the body was read to its end)."""
        self._resp.release()

    def close(self) -> None:
        """Drop the connection: the provider sees the call end now."""
        self._resp.close()


async def send(provider: Provider, path: str, body: bytes, headers: dict[str, str]) -> Response:
    """POST (or GET when body is empty) `path` under the provider's base URL and
    wait for the response headers within the provider's timeouts. A kept-alive
    connection the provider had closed is retried once on a fresh one."""
    session = _session()
    url = _urls.get((provider.base_url, path))
    if url is None:  # parsed once, not per call
        url = _urls[(provider.base_url, path)] = yarl.URL(provider.base_url + path)
    method = "POST" if body else "GET"
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=provider.connect_timeout,
                                    sock_read=provider.first_byte_timeout)
    for attempt in (0, 1):
        try:
            resp = await session.request(method, url, data=body or None, headers=headers, timeout=timeout,
                                         allow_redirects=False)
        except aiohttp.ServerDisconnectedError:
            if attempt == 0:
                continue
            raise UpstreamError("upstream_disconnected") from None
        except _FAILURES as exc:
            raise UpstreamError(_classify(exc)) from None
        return Response(resp, provider.read_timeout)
    raise UpstreamError("connection_error")  # pragma: no cover
