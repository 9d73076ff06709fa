"""The OpenAI Responses API (``POST /v1/responses``) as a shape: checks, usage, answer length, stream frames.

OpenAI's current SDKs call ``/v1/responses``. For an OpenAI-shaped target the
relay passes the body through to the provider's ``/responses`` with the model
swapped and ``store: false`` (``shapes.Responses.prepare``); for an
Anthropic-shaped target the direction module
(app/relay/translate/responses_via_messages.py) translates to ``/v1/messages``
and back, streams included. The meter of a Responses-shaped provider stream is
``meters.ResponsesStreamMeter``. Pure: dicts in, dicts out, no I/O, no Flask,
no logging.

The relay keeps no content (P23), so everything that needs a stored response
is refused for every target by ``check_request``: ``previous_response_id``,
``store: true``, ``conversation``, ``background: true`` and ``item_reference``
input items. When ``store`` is absent the relay sends ``store: false`` (OpenAI's
default is true).

``Usage.input_tokens`` is the *uncached* input (app/relay/wire.py). The
Responses API's ``input_tokens`` includes the tokens read from the cache
(``cached_tokens``) and written to it (``cache_write_tokens``), so
``usage_from_responses`` subtracts both, and ``usage_to_responses`` adds them
back. A refusal is a ``TranslationError`` naming *where* the problem is
(``input[2]``) and never quoting the client's content; the relay answers it
with a 400 in OpenAI's error shape (the Responses API's own), ``param`` set to
the field.
"""
from __future__ import annotations

from typing import Any

from app.relay.wire import TranslationError, Usage, _int, sse_anthropic

__all__ = [
    "check_request",
    "error_event",
    "responses_text_chars",
    "sse_responses",
    "usage_from_responses",
    "usage_to_responses",
]


# --------------------------------------------------------------------------- checks


def check_request(body: dict) -> None:
    """Refuse what the relay cannot serve for any target: stored state, and an ``input`` of the wrong shape.

    The relay keeps no responses, so ``previous_response_id``, ``store: true``,
    ``conversation``, ``background: true`` and ``item_reference`` input items
    (all of which need OpenAI to hold earlier content) are refused; the client
    sends the whole conversation in ``input`` instead.
    """
    if not isinstance(body, dict):
        raise TranslationError("the request body must be a JSON object")
    if body.get("previous_response_id") is not None:
        raise TranslationError("previous_response_id is not supported: the relay keeps no responses; "
                               "send the whole conversation in input", "previous_response_id")
    if body.get("conversation") is not None:
        raise TranslationError("conversation is not supported: the relay keeps no conversations; "
                               "send the whole conversation in input", "conversation")
    store = body.get("store")
    if store is not None and not isinstance(store, bool):
        raise TranslationError("store must be true or false", "store")
    if store:
        raise TranslationError("store: true is not supported: the relay keeps no responses; "
                               "leave store out or set it to false", "store")
    background = body.get("background")
    if background is not None and not isinstance(background, bool):
        raise TranslationError("background must be true or false", "background")
    if background:
        raise TranslationError("background: true is not supported: it needs a stored response", "background")
    items = body.get("input")
    if isinstance(items, str):
        return
    if not isinstance(items, list):
        raise TranslationError("input must be a string or a list of items", "input")
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise TranslationError(f"{where} must be an object", where)
        if item.get("type") == "item_reference":
            raise TranslationError(f"{where} is an item_reference, which needs stored responses; "
                                   "send the item itself", where)


# --------------------------------------------------------------------------- usage


def usage_from_responses(usage: Any) -> Usage:
    """Read a Responses ``usage`` object (a response's, or the one in ``response.completed``).

    ``input_tokens`` includes the cache reads (``input_tokens_details.cached_tokens``)
    and cache writes (``cache_write_tokens``), so both are subtracted to give the
    uncached input. ``reported`` is True when the provider gave a count.
    """
    if not isinstance(usage, dict):
        return Usage()
    prompt = _int(usage.get("input_tokens"))
    details = usage.get("input_tokens_details")
    details = details if isinstance(details, dict) else {}
    cached = min(_int(details.get("cached_tokens")), prompt)
    written = min(_int(details.get("cache_write_tokens")), prompt - cached)
    return Usage(
        input_tokens=prompt - cached - written,
        output_tokens=_int(usage.get("output_tokens")),
        cache_read_tokens=cached,
        cache_write_tokens=written,
        reported=("input_tokens" in usage or "output_tokens" in usage),
    )


def usage_to_responses(usage: Usage) -> dict:
    """A Responses ``usage`` object; ``input_tokens`` includes the cached part, as OpenAI reports it."""
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": usage.cache_read_tokens,
                                 "cache_write_tokens": usage.cache_write_tokens},
        "output_tokens": usage.output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.prompt_tokens + usage.output_tokens,
    }


def responses_text_chars(obj: dict) -> int:
    """Characters of answer text and function-call arguments in a whole Responses response."""
    n = 0
    output = obj.get("output") if isinstance(obj, dict) else None
    for item in output if isinstance(output, list) else ():
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        if kind == "message":
            for part in item.get("content") if isinstance(item.get("content"), list) else ():
                if isinstance(part, dict):
                    for key in ("text", "refusal"):
                        if isinstance(part.get(key), str):
                            n += len(part[key])
        elif kind == "function_call" and isinstance(item.get("arguments"), str):
            n += len(item["arguments"])
        elif kind == "custom_tool_call" and isinstance(item.get("input"), str):
            n += len(item["input"])
    return n


# --------------------------------------------------------------------------- streams


def sse_responses(event: str, data: dict) -> bytes:
    """One Responses stream frame: ``event: name\\ndata: {...}\\n\\n``, framed as Anthropic's are."""
    return sse_anthropic(event, data)


def error_event(message: str, type_: str = "api_error", code: str | None = None, sequence_number: int = 0) -> dict:
    """A Responses ``error`` event, in both the documented flat shape and the nested one
    OpenAI sends at runtime (which is what makes the openai SDK raise ``APIError``)."""
    return {"type": "error", "sequence_number": sequence_number, "code": code or type_, "message": message,
            "param": None, "error": {"type": type_, "code": code or type_, "message": message, "param": None}}
