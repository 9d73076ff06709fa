"""The relay's wire vocabulary, shared by every API shape: token usage, error bodies, SSE framing.

Pure: dicts in, dicts out, no I/O, no Flask, no logging. The translation
directions (app/relay/translate/) and the shape adapters (app/relay/shapes.py)
build on it.

Zero-log (P23): request and response content must never end up in an
exception message, because exception messages are what error handlers log.
Every refusal raises ``TranslationError`` with a message that names *where*
the problem is (``messages[2].content[0]``) and *what kind* of thing it is,
never the text itself, and is raised ``from None`` so no chained parser error
carries the offending document along.

``Usage.input_tokens`` is always the *uncached* input. Cache reads and cache
writes are counted separately, so the relay can price each at its own rate
without double counting. OpenAI's ``prompt_tokens`` includes cached tokens,
so ``usage_from_openai`` subtracts ``cached_tokens``; Anthropic already
reports the three apart.
"""
from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any, Literal

try:  # orjson is faster and is what the relay uses; json keeps the module importable without it
    import orjson as _orjson
except ImportError:  # pragma: no cover - exercised only where orjson is absent
    _orjson = None

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "SSE_OPENAI_DONE",
    "TranslationError",
    "Usage",
    "usage_from_openai",
    "usage_from_anthropic",
    "usage_to_openai",
    "usage_to_anthropic",
    "openai_error",
    "anthropic_error",
    "error_type_for_status",
    "sse_openai",
    "sse_anthropic",
]

DEFAULT_MAX_TOKENS = 4096
"""Anthropic requires ``max_tokens``; OpenAI clients usually omit it."""

SSE_OPENAI_DONE = b"data: [DONE]\n\n"
"""The terminator OpenAI clients wait for after the last chunk."""

# OpenAI finish_reason <-> Anthropic stop_reason. Anthropic cannot tell a stop
# sequence from a natural end once it is an OpenAI "stop", hence end_turn.
_STOP_TO_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
_FINISH_TO_STOP = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}

# Names we are willing to echo in an error message: protocol identifiers such
# as block types. Anything else a client put in a field might be content.
_SAFE_NAME = re.compile(r"^[a-z0-9_.\-]{1,40}$")
_TOOL_ID_BAD = re.compile(r"[^A-Za-z0-9_\-]")


class TranslationError(ValueError):
    """A request or response that cannot be expressed in the other API's shape.

    The message is safe to log and to show the client (it never quotes
    content). ``param`` is the JSON path of the offending field, suitable for
    OpenAI's ``error.param``. The relay answers it with a 400 for a client
    request, and with a 502 when the untranslatable thing came from upstream.
    """

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def _name(value: Any) -> str:
    """Quote a protocol identifier for an error message, or decline to."""
    if isinstance(value, str) and _SAFE_NAME.match(value):
        return f"'{value}'"
    return "(unrecognised)"


# --------------------------------------------------------------------------- JSON


def _dumps(obj: Any) -> bytes:
    if _orjson is not None:
        return _orjson.dumps(obj)
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def _dumps_str(obj: Any) -> str:
    return _dumps(obj).decode()


def _loads(text: str) -> Any:
    if _orjson is not None:
        return _orjson.loads(text)
    return json.loads(text)


# --------------------------------------------------------------------------- usage


@dataclass
class Usage:
    """Token counts for one request, in the shape the relay records (P22).

    ``input_tokens`` is the uncached input only; ``cache_read_tokens`` and
    ``cache_write_tokens`` are the prompt tokens read from / written to the
    provider's cache. Their sum is the whole prompt. ``reported`` is True once
    the upstream has sent its final count; False means the numbers are
    partial or absent (a stream cut short) and the caller may estimate.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reported: bool = False

    @property
    def prompt_tokens(self) -> int:
        """All input tokens, cached or not: OpenAI's ``prompt_tokens``."""
        return self.input_tokens + self.cache_read_tokens + self.cache_write_tokens


def _int(value: Any) -> int:
    """A token count from an upstream field that may be missing, null or odd."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0
    return max(int(value), 0)


def usage_from_openai(usage: Any) -> Usage:
    """Read an OpenAI ``usage`` object (response or final stream chunk).

    ``prompt_tokens`` includes cached tokens, so they are subtracted to give
    the uncached input. OpenAI reports no cache writes. DeepSeek-style
    ``prompt_cache_hit_tokens`` is accepted where ``prompt_tokens_details``
    is absent, since OpenAI-compatible workers vary.
    """
    if not isinstance(usage, dict):
        return Usage()
    prompt = _int(usage.get("prompt_tokens"))
    details = usage.get("prompt_tokens_details")
    if isinstance(details, dict) and details.get("cached_tokens") is not None:
        cached = _int(details.get("cached_tokens"))
    else:
        cached = _int(usage.get("prompt_cache_hit_tokens"))
    cached = min(cached, prompt)
    return Usage(
        input_tokens=prompt - cached,
        output_tokens=_int(usage.get("completion_tokens")),
        cache_read_tokens=cached,
        cache_write_tokens=0,
        reported=("prompt_tokens" in usage or "completion_tokens" in usage),
    )


def usage_from_anthropic(usage: Any) -> Usage:
    """Read an Anthropic ``usage`` object; its three input counts are already apart."""
    if not isinstance(usage, dict):
        return Usage()
    return Usage(
        input_tokens=_int(usage.get("input_tokens")),
        output_tokens=_int(usage.get("output_tokens")),
        cache_read_tokens=_int(usage.get("cache_read_input_tokens")),
        cache_write_tokens=_int(usage.get("cache_creation_input_tokens")),
        reported=("input_tokens" in usage or "output_tokens" in usage),
    )


def usage_to_openai(usage: Usage) -> dict:
    """An OpenAI ``usage`` object; cache writes count as (uncached) prompt tokens."""
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.prompt_tokens + usage.output_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cache_read_tokens},
    }


def usage_to_anthropic(usage: Usage) -> dict:
    """An Anthropic ``usage`` object."""
    return {
        "input_tokens": usage.input_tokens,
        "cache_creation_input_tokens": usage.cache_write_tokens,
        "cache_read_input_tokens": usage.cache_read_tokens,
        "output_tokens": usage.output_tokens,
    }


def _parse_arguments(arguments: Any, path: str) -> dict:
    """OpenAI sends tool arguments as a JSON string; Anthropic wants the object."""
    if arguments is None or arguments == "":
        return {}
    if isinstance(arguments, dict):
        return arguments
    if not isinstance(arguments, str):
        raise TranslationError(f"{path} must be a JSON string", path)
    try:
        value = _loads(arguments)
    except ValueError:
        raise TranslationError(f"{path} is not valid JSON", path) from None
    if not isinstance(value, dict):
        raise TranslationError(f"{path} must encode a JSON object", path)
    return value


# --------------------------------------------------------------------------- shared by the directions


def _unset(value: Any) -> bool:
    """Absent, null, or an empty list or object: a field that asks for nothing."""
    return value is None or value == [] or value == {}


def _only(obj: dict, fields: frozenset, target: str, path: str = "", neutral: dict | None = None) -> None:
    """Refuse the first field of `obj` a direction does not carry to `target`, unless it
    is unset or at its neutral value. The error names the field, or only `path` when
    the field's name is not a protocol identifier (it could be client text, P23)."""
    for key, value in obj.items():
        if key in fields or _unset(value) or (neutral and key in neutral and value in neutral[key]):
            continue
        if isinstance(key, str) and _SAFE_NAME.match(key):
            where = f"{path}.{key}" if path else key
            raise TranslationError(f"{where} cannot be carried to {target}", where)
        raise TranslationError(f"{path or 'the request'} has a field that cannot be carried to {target}",
                               path or None)


def _append_turn(turns: list[dict], role: str, blocks: list[dict]) -> None:
    """Anthropic wants alternating turns: consecutive same-role messages become one."""
    if not blocks:
        return
    if turns and turns[-1]["role"] == role:
        turns[-1]["content"].extend(blocks)
    else:
        turns.append({"role": role, "content": list(blocks)})


# --------------------------------------------------------------------------- ids


def _new_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:24]


def _openai_id_from(upstream_id: Any) -> str:
    """``msg_01AB`` -> ``chatcmpl-01AB``: recognisably the same answer, in OpenAI's form."""
    if isinstance(upstream_id, str) and upstream_id:
        return "chatcmpl-" + upstream_id.removeprefix("msg_")
    return _new_id("chatcmpl-")


def _anthropic_id_from(upstream_id: Any) -> str:
    if isinstance(upstream_id, str) and upstream_id:
        return "msg_" + upstream_id.removeprefix("chatcmpl-")
    return _new_id("msg_")


def _tool_id(value: Any) -> str | None:
    """A tool-call id Anthropic accepts (``^[a-zA-Z0-9_-]+$``), mapped the same way every time."""
    if not isinstance(value, str) or not value:
        return None
    return _TOOL_ID_BAD.sub("_", value)



# --------------------------------------------------------------------------- errors and SSE

_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "not_found_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_type_for_status(status: int, api: Literal["openai", "anthropic"]) -> str:
    """The ``error.type`` each API uses for an HTTP status.

    The SDKs pick their exception class from the status code; the type is
    what a person reads. 402 (budget or balance exhausted, P26) is
    Anthropic's own ``billing_error``; OpenAI has no 402, so it gets
    ``insufficient_quota``, the type OpenAI uses for an exhausted balance.
    OpenAI's 5xx type is ``server_error``, as OpenAI sends it.
    """
    if api == "anthropic":
        if status in _ANTHROPIC_TYPES:
            return _ANTHROPIC_TYPES[status]
        return "api_error" if status >= 500 else "invalid_request_error"
    if api == "openai":
        if status in _OPENAI_TYPES:
            return _OPENAI_TYPES[status]
        return "server_error" if status >= 500 else "invalid_request_error"
    raise ValueError("api must be 'openai' or 'anthropic'")


def openai_error(status: int, message: str, type_: str | None = None, code: str | None = None,
                 param: str | None = None) -> dict:
    """An OpenAI error body: ``{"error": {"message", "type", "param", "code"}}``.

    ``type_`` defaults to ``error_type_for_status(status, "openai")``.
    """
    return {"error": {
        "message": message,
        "type": type_ or error_type_for_status(status, "openai"),
        "param": param,
        "code": code,
    }}


def anthropic_error(type_: str, message: str, request_id: str | None = None) -> dict:
    """An Anthropic error body (also the data of a stream ``error`` event)."""
    body: dict = {"type": "error", "error": {"type": type_, "message": message}}
    if request_id is not None:
        body["request_id"] = request_id
    return body


def sse_openai(chunk: dict) -> bytes:
    """One OpenAI stream frame: ``data: {...}\\n\\n`` (OpenAI names no events)."""
    return b"data: " + _dumps(chunk) + b"\n\n"


def sse_anthropic(event: str, data: dict) -> bytes:
    """One Anthropic stream frame: ``event: name\\ndata: {...}\\n\\n``."""
    return b"event: " + event.encode() + b"\ndata: " + _dumps(data) + b"\n\n"
