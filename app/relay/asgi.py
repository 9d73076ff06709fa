"""The server's entry: an ASGI app that serves /v1/ on an async path and the portal behind it.

The relay's calls spend nearly all their life waiting on the provider, and a
stream can last minutes, so /v1/ runs on the event loop: one task per call,
the provider reached with aiohttp (app/relay/aupstream.py). The pipeline's
stages (app/relay/pipeline.py) are the same functions the blocking transport
runs: they are quick (a key lookup, a limit check) and run inline; only the
provider call and the answer's bytes are awaited. Every other path goes to
the portal's Flask app on a thread pool (a2wsgi), unchanged.

Back-pressure: a stream reads the provider's next event only after the
client's transport took the last one (`await send`), so a slow client slows
the upstream read instead of growing a buffer. A client that goes away is
noticed by a watcher on `receive` and the upstream call is dropped at once.
Nothing in a body is logged (P23).
"""
from __future__ import annotations

import asyncio
import logging
import secrets
import time

from a2wsgi import WSGIMiddleware
from flask import Flask
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response as WerkzeugResponse

from app.logsafe import where
from app.relay import aupstream, budget, deliver, pipeline
from app.relay.call import Call, Refusal
from app.relay.failover import Failover
from app.relay.routes import _EXACT, MODEL_ENDPOINTS, URLS, status_error
from app.relay.upstream import UpstreamError

log = logging.getLogger(__name__)

_JSON = (b"content-type", b"application/json")
_NOSNIFF = (b"x-content-type-options", b"nosniff")
_STREAM = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
           (b"x-accel-buffering", b"no")]


class Headers(dict):
    """A request's headers, looked up without regard to case (names are stored lower-case)."""

    def get(self, name, default=None):
        return dict.get(self, name.lower(), default)

    def __getitem__(self, name):
        return dict.__getitem__(self, name.lower())

    def __contains__(self, name):
        return dict.__contains__(self, name.lower())


class Request:
    """What the pipeline's stages read of a request, built from an ASGI scope
    (the blocking transport hands them a werkzeug Request with the same face)."""

    __slots__ = ("method", "path", "headers", "environ", "_body")

    def __init__(self, scope: dict, body: bytes, environ: dict) -> None:
        self.method = scope["method"]
        self.path = scope["path"]
        self.headers = Headers((k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"])
        self.environ = environ
        self._body = body

    @property
    def content_length(self) -> int:
        return len(self._body)

    def get_data(self, cache: bool = False) -> bytes:
        return self._body


class TooLarge(Exception):
    pass


class App:
    """The ASGI application: /v1/ here, everything else to the portal's Flask app."""

    def __init__(self, flask_app: Flask, portal_threads: int | None = None) -> None:
        self.flask = flask_app
        self.portal = WSGIMiddleware(flask_app, workers=portal_threads or flask_app.config["PORTAL_THREADS"])
        self.max_body = flask_app.config.get("MAX_CONTENT_LENGTH")
        self.holds_on_thread = not flask_app.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite")

    async def __call__(self, scope, receive, send):
        kind = scope["type"]
        if kind == "http" and scope["path"].startswith("/v1/"):
            return await self.relay(scope, receive, send)
        if kind == "lifespan":
            return await self.lifespan(receive, send)

        async def portal_receive():
            # a2wsgi hands this to run_coroutine_threadsafe, which wants a coroutine;
            # granian's receive returns another kind of awaitable.
            return await receive()

        return await self.portal(scope, portal_receive, send)

    async def lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                # Replays the spool of any process that died before this one.
                self.flask.extensions["meter"].ensure_started()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await aupstream.close_sessions()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # ---- /v1/ -------------------------------------------------------------------------

    async def relay(self, scope, receive, send) -> None:
        rid = "req_" + secrets.token_hex(12)
        environ = {"relay.request_id": rid, "relay.extensions": self.flask.extensions}
        path, method = scope["path"], scope["method"]
        try:
            body = await self._body(scope, receive)
        except TooLarge:
            return await _send_werkzeug(send, status_error(Request(scope, b"", environ), 413), rid)
        req = Request(scope, body, environ)
        try:
            shape = MODEL_ENDPOINTS.get(path.rstrip("/")) if method == "POST" else None
            if shape is not None:
                return await self.run(req, shape, receive, send)
            view = _EXACT.get((path, method))
            if view is not None:
                return await _send_werkzeug(send, view(req), rid)
            view, args = URLS.bind("relay").match(path, method)
            return await _send_werkzeug(send, view(req, **args), rid)
        except HTTPException as exc:
            return await _send_werkzeug(send, status_error(req, exc.code or 500), rid)
        except Exception as exc:  # never a stack trace to a client; never a body in the log
            route = path if (path, method) in _EXACT or path in MODEL_ENDPOINTS else "/v1/…"
            log.error("unhandled %s at %s %s: %s", type(exc).__name__, method, route, where(exc))
            return await _send_werkzeug(send, status_error(req, 500), rid)

    async def _body(self, scope, receive) -> bytes:
        limit = self.max_body
        for k, v in scope["headers"]:
            if k == b"content-length" and limit is not None and v.isdigit() and int(v) > limit:
                raise TooLarge
        chunks, size = [], 0
        while True:
            message = await receive()
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if limit is not None and size > limit:
                    raise TooLarge
                chunks.append(chunk)
            if not message.get("more_body"):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def run(self, req: Request, shape, receive, send) -> None:
        """One model call: the pipeline's stages, then the async failover and delivery."""
        call = pipeline.begin(req, shape)
        try:
            for stage in pipeline.STAGES:
                stage(call)
            if call.hold_wanted:
                if self.holds_on_thread:  # a network round trip: off the event loop
                    await asyncio.to_thread(budget.hold, call)
                else:  # SQLite, ~0.1 ms: a thread hop would cost more than it saves
                    budget.hold(call)
            answer = await failover(call)
            resp = answer.resp
            if resp.status >= 400:
                try:
                    data = await resp.read()
                    resp.release()
                except UpstreamError:
                    data = b""  # the refusal stands; only its message is lost
                raise deliver.provider_refusal(resp.status, data)
            if call.stream:
                return await stream(call, answer, receive, send)
            try:
                data = await resp.read()
            except UpstreamError as exc:
                raise deliver.cut_short(exc) from None
            resp.release()
            out = deliver.finish_whole(call, answer, data, pipeline.settle)
        except Refusal as refusal:
            return await _send_werkzeug(send, pipeline.refuse(call, refusal), call.request_id)
        except Exception:
            pipeline.abandon(call)
            raise
        await send({"type": "http.response.start", "status": 200,
                    "headers": [_JSON, *_ids(call.request_id), _NOSNIFF]})
        await send({"type": "http.response.body", "body": out})


def _ids(rid: str) -> list[tuple[bytes, bytes]]:
    b = rid.encode()
    return [(b"x-request-id", b), (b"request-id", b)]


async def _send_werkzeug(send, resp: WerkzeugResponse, rid: str) -> None:
    """A (small, whole) werkzeug Response: model lookups and errors."""
    headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in resp.headers.items()
               if k.lower() != "content-length"]
    headers += [*_ids(rid), _NOSNIFF]
    await send({"type": "http.response.start", "status": resp.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": resp.get_data()})


async def failover(call: Call):
    """The first target that answers (async transport), or a Refusal that sums up why none did."""
    f = Failover(call)
    for target, shape, (path, payload, headers) in f.candidates():
        t0 = time.perf_counter()
        try:
            resp = await aupstream.send(target.provider, path, payload, headers)
        except UpstreamError as exc:
            f.failed(target, exc.error_class, t0)
            continue
        if f.retry(resp.status):
            try:
                await resp.read()  # drained and dropped: provider error bodies can quote the prompt
                resp.release()
            except UpstreamError:
                pass
            f.failed(target, f"http_{resp.status}", t0)
            continue
        return f.answered(target, shape, resp, t0)
    raise f.refusal()


async def stream(call: Call, answer, receive, send) -> None:
    """Send the stream as the provider produces it, through the transport-neutral Pump."""
    pump = deliver.Pump(call, answer, pipeline.settle)
    resp = answer.resp
    await send({"type": "http.response.start", "status": 200,
                "headers": [*_STREAM, *_ids(call.request_id), _NOSNIFF]})

    async def pass_events() -> None:
        try:
            async for raw in resp.events():
                out = pump.event(raw)
                if out:
                    await send({"type": "http.response.body", "body": b"".join(out), "more_body": True})
            resp.release()
            tail = pump.end()
            await send({"type": "http.response.body", "body": b"".join(tail), "more_body": False})
        except UpstreamError as exc:
            await send({"type": "http.response.body", "body": pump.broke(exc.error_class), "more_body": False})

    async def client_left() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    passing = asyncio.ensure_future(pass_events())
    watching = asyncio.ensure_future(client_left())
    try:
        await asyncio.wait((passing, watching), return_when=asyncio.FIRST_COMPLETED)
        if not passing.done():  # the client went away first: drop the upstream call now
            passing.cancel()
            resp.close()
            pump.gone()
            await asyncio.gather(passing, return_exceptions=True)
        else:
            watching.cancel()
            failure = passing.exception()
            if failure is not None:  # a send to a client that is gone failed
                log.info("stream ended by %s while sending", type(failure).__name__)
                resp.close()
                pump.gone()
    except asyncio.CancelledError:  # the server gave up on the call
        passing.cancel()
        watching.cancel()
        resp.close()
        pump.gone()
        raise
    finally:
        pump.done()
