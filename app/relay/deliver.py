"""Deliver the provider's answer to the client: whole, or as a stream of events.

Both read the answer in the provider's shape, count it with that shape's
reader (`Shape.usage` for a whole answer, the stream meter for a stream: the
only places usage is read), translate it when the client speaks another
shape, and call `settle` once, before the client can know it has its answer,
so the usage row is in the spool by then. Nothing of the answer is kept.
"""
from __future__ import annotations

from collections.abc import Callable

import orjson
from werkzeug.wrappers import Response

from app.relay import upstream
from app.relay.call import Call, Refusal
from app.relay.failover import Answer
from app.relay.wire import TranslationError

Settle = Callable[..., None]  # settle(call, reported=None, chars_out=None)


def refused_by_provider(call: Call, answer: Answer) -> Refusal:
    """A 4xx (not 429) from the provider (blocking transport): read it, then `provider_refusal`."""
    try:
        data = answer.resp.read()
        answer.resp.release()
    except upstream.UpstreamError:
        data = b""  # the refusal stands; only its message is lost
    return provider_refusal(answer.resp.status, data)


def provider_refusal(status: int, data: bytes) -> Refusal:
    """The request itself was refused. Pass the provider's message to the client
    in the client's shape; store nothing of it."""
    if status in (401, 403):
        # The provider refused *our* credential; the client's key is fine.
        return Refusal(502, "The provider refused the relay's credentials for this model.",
                       error_class=f"upstream_{status}")
    message = "The provider refused the request."
    try:
        obj = orjson.loads(data)
        err = obj.get("error") if isinstance(obj, dict) else None
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            message = err["message"]
    except orjson.JSONDecodeError:
        pass
    return Refusal(status, message, error_class=f"upstream_{status}")


def whole(call: Call, answer: Answer, settle: Settle) -> Response:
    """A non-streamed answer (blocking transport): read it, then `finish_whole`."""
    try:
        data = answer.resp.read()
    except upstream.UpstreamError as exc:
        raise cut_short(exc) from None
    answer.resp.release()
    return Response(finish_whole(call, answer, data, settle), status=200, mimetype="application/json")


def cut_short(exc: upstream.UpstreamError) -> Refusal:
    return Refusal(502, "The provider's answer was cut short.", error_class=exc.error_class)


def finish_whole(call: Call, answer: Answer, data: bytes, settle: Settle) -> bytes:
    """Count a whole answer, translate it if the shapes differ, settle: the bytes for the client."""
    call.first_token()
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise Refusal(502, "The provider sent an answer that is not valid JSON.",
                      error_class="upstream_bad_json") from None
    try:
        reported, chars_out = answer.shape.usage(obj), answer.shape.chars(obj)
        if answer.direction is not None:
            data = orjson.dumps(answer.direction.response(obj, call.model, call.body))
    except TranslationError:
        raise Refusal(502, "The provider's answer could not be translated to this API.",
                      error_class="upstream_untranslatable") from None
    settle(call, reported, chars_out)  # spooled before the first byte goes out: a killed worker loses no row
    return data


STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def stream(call: Call, answer: Answer, settle: Settle) -> Response:
    return Response(_events(Pump(call, answer, settle), answer.resp), status=200,
                    mimetype="text/event-stream", headers=STREAM_HEADERS)


class Pump:
    """One stream's passage, whatever the transport: each provider event is fed
    first to the provider shape's meter, then passed through (same shape) or
    translated, and the call is settled when the provider ends its stream
    (just before the client's last event), when the stream breaks, or when the
    client goes away."""

    def __init__(self, call: Call, answer: Answer, settle: Settle) -> None:
        self.call, self.shape, self.settle = call, answer.shape, settle
        self.meter = answer.shape.meter()
        self.translator = answer.direction.stream(call.model, call.body, self.meter) if answer.direction else None

    def done(self) -> None:
        self.settle(self.call, self.meter.usage, self.meter.chars_out)

    def event(self, raw: bytes) -> list[bytes] | tuple:
        """One raw provider event -> the bytes for the client (possibly none)."""
        parsed = self.shape.event(raw)
        if parsed is None:
            return ()
        name, obj = parsed
        call, meter = self.call, self.meter
        if meter.feed(name, obj):
            call.first_token()
        if meter.error and call.error_class is None:
            call.error_class = "upstream_stream_error"
        if self.translator is None:
            piece = call.shape.passthrough(raw, obj, call.body)
            out = () if piece is None else (piece,)
        else:
            out = self.translator.feed(name, obj)
        if meter.clean_end:
            self.done()
        return out

    def end(self) -> list[bytes]:
        """The provider closed its stream: settle, then what closes it for the client."""
        if not self.meter.clean_end and self.call.error_class is None:
            self.call.error_class = "upstream_incomplete"
        tail = self.translator.finish() if self.translator is not None else []
        self.done()
        return tail

    def broke(self, error_class: str) -> bytes:
        """The provider's stream failed: settle, and the error event to tell the client."""
        self.call.error_class = error_class
        self.done()
        return self.call.shape.stream_error("The provider's stream broke off; the answer is incomplete.",
                                            self.call.request_id)

    def gone(self) -> None:
        """The client went away. (After an upstream failure it was told, it may leave first: keep that cause.)"""
        if self.call.error_class is None:
            self.call.error_class = "client_disconnected"
            self.call.status = 499


def _events(pump: Pump, resp):
    """The blocking transport's stream: the upstream connection is dropped at
    once when the client goes away, not when the provider finishes."""
    try:
        for raw in resp.events():
            yield from pump.event(raw)
        resp.release()
        yield from pump.end()
    except upstream.UpstreamError as exc:
        yield pump.broke(exc.error_class)
    except GeneratorExit:
        resp.close()
        pump.gone()
        raise
    finally:
        pump.done()
