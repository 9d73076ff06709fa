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
    """A 4xx (not 429) from the provider: the request itself was refused. Pass the
    provider's message to the client in the client's shape; store nothing of it."""
    data = answer.resp.read()
    answer.resp.release()
    status = answer.resp.status
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
    """A non-streamed answer: read, count, translate if the shapes differ."""
    resp = answer.resp
    try:
        data = resp.read()
    except upstream.UpstreamError as exc:
        raise Refusal(502, "The provider's answer was cut short.", error_class=exc.error_class) from None
    resp.release()
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
    return Response(data, status=200, mimetype="application/json")


def stream(call: Call, answer: Answer, settle: Settle) -> Response:
    return Response(_events(call, answer, settle), status=200, mimetype="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _events(call: Call, answer: Answer, settle: Settle):
    """Pass each event through as it arrives (translated when the shapes differ),
    fed first to the provider shape's meter. The call is settled when the
    provider ends its stream (just before the client's last event), when the
    stream breaks, or when the client goes away (then the upstream call is
    dropped at once)."""
    resp, shape, body = answer.resp, answer.shape, call.body
    meter = shape.meter()
    translator = answer.direction.stream(call.model, body, meter) if answer.direction else None

    def done() -> None:
        settle(call, meter.usage, meter.chars_out)

    try:
        for raw in resp.events():
            parsed = shape.event(raw)
            if parsed is None:
                continue
            name, obj = parsed
            if meter.feed(name, obj):
                call.first_token()
            if meter.error and call.error_class is None:
                call.error_class = "upstream_stream_error"
            if translator is None:
                piece = call.shape.passthrough(raw, obj, body)
                out = () if piece is None else (piece,)
            else:
                out = translator.feed(name, obj)
            if meter.clean_end:
                done()
            yield from out
        if not meter.clean_end and call.error_class is None:
            call.error_class = "upstream_incomplete"
        tail = translator.finish() if translator is not None else []
        resp.release()
        done()
        yield from tail
    except upstream.UpstreamError as exc:
        call.error_class = exc.error_class
        done()
        yield call.shape.stream_error("The provider's stream broke off; the answer is incomplete.", call.request_id)
    except GeneratorExit:
        # The client went away: drop the upstream call now, not when it finishes.
        # (After an upstream failure it was told, it may leave first: keep that cause.)
        resp.close()
        if call.error_class is None:
            call.error_class = "client_disconnected"
            call.status = 499
        raise
    finally:
        done()
