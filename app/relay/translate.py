"""Translate between OpenAI chat-completions and Anthropic Messages shapes, both ways, streams included.

The relay (P20, P21) accepts either API shape and may route a model to a
provider of the other kind. This module is the only place that knows how one
shape maps onto the other. It is pure: dicts in, dicts out, no I/O, no Flask,
no logging. The caller parses JSON (orjson) and writes bytes.

Zero-log (P23): request and response content must never end up in an
exception message, because exception messages are what error handlers log.
Every refusal raises ``TranslationError`` with a message that names *where*
the problem is (``messages[2].content[0]``) and *what kind* of thing it is,
never the text itself, and is raised ``from None`` so no chained parser error
carries the offending document along.

Decisions worth knowing (see also the docstrings):

* ``Usage.input_tokens`` is always the *uncached* input. Cache reads and cache
  writes are counted separately, so the relay can price each at its own rate
  without double counting. OpenAI's ``prompt_tokens`` includes cached tokens,
  so ``usage_from_openai`` subtracts ``cached_tokens``; Anthropic already
  reports the three apart.
* A request without a token limit gets ``DEFAULT_MAX_TOKENS`` (4096) when it
  goes to Anthropic, which requires ``max_tokens``.
* Tool-call ids pass through unchanged (OpenAI ``call_…`` ids are valid
  Anthropic ids); characters Anthropic does not accept are replaced by ``_``
  the same way everywhere, so a call and its result still match.
* Content the other side cannot express (images, documents, audio, server
  tools, ``n > 1``, structured ``response_format``) is refused with a
  ``TranslationError`` rather than silently dropped; harmless knobs with no
  counterpart (``top_k``, ``seed``, penalties, ``thinking``…) are dropped.
"""
from __future__ import annotations

import json
import re
import time
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
    "openai_to_anthropic_request",
    "anthropic_to_openai_request",
    "anthropic_to_openai_response",
    "openai_to_anthropic_response",
    "AnthropicStreamToOpenAI",
    "OpenAIStreamToAnthropic",
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


# --------------------------------------------------------------------------- OpenAI -> Anthropic request


def _openai_texts(content: Any, path: str) -> list[str]:
    """The text pieces of an OpenAI message ``content`` (string or parts), empties dropped."""
    if content is None:
        return []
    if isinstance(content, str):
        return [content] if content else []
    if not isinstance(content, list):
        raise TranslationError(f"{path} must be a string or a list of content parts", path)
    texts = []
    for j, part in enumerate(content):
        where = f"{path}[{j}]"
        if not isinstance(part, dict):
            raise TranslationError(f"{where} must be an object", where)
        kind = part.get("type")
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise TranslationError(f"{where}.text must be a string", where)
        elif kind == "refusal":  # an assistant's earlier refusal, replayed in history
            text = part.get("refusal")
            if not isinstance(text, str):
                raise TranslationError(f"{where}.refusal must be a string", where)
        else:
            raise TranslationError(
                f"{where} has an unsupported content part type {_name(kind)} for this model", where)
        if text:
            texts.append(text)
    return texts


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


def _openai_tool_calls_to_blocks(tool_calls: Any, path: str) -> list[dict]:
    if not isinstance(tool_calls, list):
        raise TranslationError(f"{path} must be a list", path)
    blocks = []
    for j, call in enumerate(tool_calls):
        where = f"{path}[{j}]"
        if not isinstance(call, dict):
            raise TranslationError(f"{where} must be an object", where)
        if call.get("type", "function") != "function":
            raise TranslationError(f"{where} has an unsupported tool call type {_name(call.get('type'))}", where)
        fn = call.get("function")
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn.get("name"):
            raise TranslationError(f"{where}.function.name is required", where)
        call_id = _tool_id(call.get("id"))
        if call_id is None:
            raise TranslationError(f"{where}.id is required", where)
        blocks.append({
            "type": "tool_use",
            "id": call_id,
            "name": fn["name"],
            "input": _parse_arguments(fn.get("arguments"), f"{where}.function.arguments"),
        })
    return blocks


def _append_turn(turns: list[dict], role: str, blocks: list[dict]) -> None:
    """Anthropic wants alternating turns: consecutive same-role messages become one."""
    if not blocks:
        return
    if turns and turns[-1]["role"] == role:
        turns[-1]["content"].extend(blocks)
    else:
        turns.append({"role": role, "content": list(blocks)})


def _openai_tools_to_anthropic(tools: Any) -> list[dict]:
    if not isinstance(tools, list):
        raise TranslationError("tools must be a list", "tools")
    out = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise TranslationError(f"{where} must be an object", where)
        if tool.get("type", "function") != "function":
            raise TranslationError(f"{where} has an unsupported tool type {_name(tool.get('type'))}", where)
        fn = tool.get("function")
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn.get("name"):
            raise TranslationError(f"{where}.function.name is required", where)
        params = fn.get("parameters")
        if params is None:
            params = {"type": "object", "properties": {}}
        elif not isinstance(params, dict):
            raise TranslationError(f"{where}.function.parameters must be an object", where)
        converted = {"name": fn["name"], "input_schema": params}
        if isinstance(fn.get("description"), str) and fn["description"]:
            converted["description"] = fn["description"]
        out.append(converted)
    return out


def _openai_tool_choice_to_anthropic(choice: Any, parallel: Any) -> dict | None:
    if choice is None:
        result: dict | None = {"type": "auto"} if parallel is False else None
    elif choice == "auto":
        result = {"type": "auto"}
    elif choice == "none":
        return {"type": "none"}
    elif choice == "required":
        result = {"type": "any"}
    elif isinstance(choice, dict) and choice.get("type") == "function":
        fn = choice.get("function")
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn.get("name"):
            raise TranslationError("tool_choice.function.name is required", "tool_choice")
        result = {"type": "tool", "name": fn["name"]}
    else:
        kind = choice.get("type") if isinstance(choice, dict) else choice
        raise TranslationError(f"tool_choice {_name(kind)} is not supported for this model", "tool_choice")
    if result is not None and parallel is False:
        result["disable_parallel_tool_use"] = True
    return result


def openai_to_anthropic_request(
    body: dict, upstream_model: str, *, default_max_tokens: int = DEFAULT_MAX_TOKENS
) -> dict:
    """Turn a ``/v1/chat/completions`` body into a ``/v1/messages`` body for ``upstream_model``.

    System and developer messages become the top-level ``system``; tool
    messages become ``tool_result`` blocks in a user turn; consecutive turns of
    one role are merged (Anthropic requires alternation) with tool results
    kept first, as Anthropic requires. ``temperature`` is clamped to
    Anthropic's 0..1. ``stream`` passes through; the caller decides from the
    client's ``stream_options.include_usage`` whether to send a usage chunk.
    """
    if not isinstance(body, dict):
        raise TranslationError("the request body must be a JSON object")
    if body.get("n") not in (None, 1):
        raise TranslationError("n greater than 1 is not supported for this model", "n")
    if body.get("functions") is not None or body.get("function_call") is not None:
        raise TranslationError("functions and function_call are not supported; use tools", "functions")
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") not in (None, "text"):
        raise TranslationError(
            f"response_format {_name(response_format.get('type'))} is not supported for this model",
            "response_format")

    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise TranslationError("messages must be a non-empty list", "messages")

    system: list[str] = []
    turns: list[dict] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise TranslationError(f"{where} must be an object", where)
        role = message.get("role")
        content = message.get("content")
        if role in ("system", "developer"):
            system.extend(_openai_texts(content, f"{where}.content"))
        elif role == "user":
            blocks = [{"type": "text", "text": t} for t in _openai_texts(content, f"{where}.content")]
            _append_turn(turns, "user", blocks)
        elif role == "assistant":
            if message.get("function_call") is not None:
                raise TranslationError(f"{where}.function_call is not supported; use tool_calls", where)
            blocks = [{"type": "text", "text": t} for t in _openai_texts(content, f"{where}.content")]
            if message.get("tool_calls"):
                blocks += _openai_tool_calls_to_blocks(message["tool_calls"], f"{where}.tool_calls")
            _append_turn(turns, "assistant", blocks)
        elif role == "tool":
            call_id = _tool_id(message.get("tool_call_id"))
            if call_id is None:
                raise TranslationError(f"{where}.tool_call_id is required", where)
            result: dict = {"type": "tool_result", "tool_use_id": call_id}
            texts = _openai_texts(content, f"{where}.content")
            if texts:
                result["content"] = "\n".join(texts)
            _append_turn(turns, "user", [result])
        else:
            raise TranslationError(f"{where} has an unsupported role {_name(role)}", where)

    for turn in turns:  # Anthropic: tool_result blocks come first in a user turn
        if turn["role"] == "user":
            turn["content"].sort(key=lambda block: block["type"] != "tool_result")

    out: dict = {"model": upstream_model, "messages": turns}
    if system:
        out["system"] = "\n\n".join(system)

    max_tokens = body.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = body.get("max_tokens")
    if max_tokens is None:
        max_tokens = default_max_tokens
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise TranslationError("max_tokens must be a positive integer", "max_tokens")
    out["max_tokens"] = max_tokens

    temperature = body.get("temperature")
    if temperature is not None:
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
            raise TranslationError("temperature must be a number", "temperature")
        out["temperature"] = min(max(float(temperature), 0.0), 1.0)
    top_p = body.get("top_p")
    if top_p is not None:
        if isinstance(top_p, bool) or not isinstance(top_p, (int, float)):
            raise TranslationError("top_p must be a number", "top_p")
        # top_p=1 is a no-op, and newer Claude models refuse temperature and top_p together.
        if not (top_p >= 1 and temperature is not None):
            out["top_p"] = top_p

    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None:
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise TranslationError("stop must be a string or a list of strings", "stop")
        stop = [s for s in stop if s]
        if stop:
            out["stop_sequences"] = stop

    if body.get("stream") is not None:
        out["stream"] = bool(body["stream"])

    tools = body.get("tools")
    if tools:
        out["tools"] = _openai_tools_to_anthropic(tools)
        choice = _openai_tool_choice_to_anthropic(body.get("tool_choice"), body.get("parallel_tool_calls"))
        if choice is not None:
            out["tool_choice"] = choice

    user = body.get("user")
    if isinstance(user, str) and user:
        out["metadata"] = {"user_id": user}
    return out


# --------------------------------------------------------------------------- Anthropic -> OpenAI request


def _anthropic_text_blocks(content: Any, path: str, *, allow_images: bool = False) -> list[str]:
    """Texts of an Anthropic content value (string or blocks) where only text is allowed."""
    if content is None:
        return []
    if isinstance(content, str):
        return [content] if content else []
    if not isinstance(content, list):
        raise TranslationError(f"{path} must be a string or a list of content blocks", path)
    texts = []
    for j, block in enumerate(content):
        where = f"{path}[{j}]"
        if not isinstance(block, dict):
            raise TranslationError(f"{where} must be an object", where)
        if block.get("type") != "text":
            raise TranslationError(
                f"{where} has an unsupported block type {_name(block.get('type'))} for this model", where)
        text = block.get("text")
        if not isinstance(text, str):
            raise TranslationError(f"{where}.text must be a string", where)
        if text:
            texts.append(text)
    return texts


def _text_content(texts: list[str]) -> str | list[dict]:
    """One text is sent as a plain string (every OpenAI-compatible server takes that), several as parts."""
    if len(texts) == 1:
        return texts[0]
    return [{"type": "text", "text": t} for t in texts]


def _content_blocks(content: Any, where: str):
    """Yield (path, type, block) for each block of a list `content`, refusing
    anything that is not a list of objects."""
    if not isinstance(content, list):
        raise TranslationError(f"{where}.content must be a string or a list of content blocks", where)
    for j, block in enumerate(content):
        path = f"{where}.content[{j}]"
        if not isinstance(block, dict):
            raise TranslationError(f"{path} must be an object", path)
        yield path, block.get("type"), block


def _block_text(block: dict, path: str) -> str:
    text = block.get("text")
    if not isinstance(text, str):
        raise TranslationError(f"{path}.text must be a string", path)
    return text


def _anthropic_user_turn(content: Any, where: str) -> list[dict]:
    """One Anthropic user turn -> OpenAI tool messages (first) and a user message."""
    if isinstance(content, str) or content is None:
        texts = [content] if content else []
        return [{"role": "user", "content": _text_content(texts)}] if texts else []
    tool_messages, texts = [], []
    for path, kind, block in _content_blocks(content, where):
        if kind == "text":
            text = _block_text(block, path)
            if text:
                texts.append(text)
        elif kind == "tool_result":
            call_id = block.get("tool_use_id")
            if not isinstance(call_id, str) or not call_id:
                raise TranslationError(f"{path}.tool_use_id is required", path)
            result = _anthropic_text_blocks(block.get("content"), f"{path}.content")
            tool_messages.append({"role": "tool", "tool_call_id": call_id, "content": "\n".join(result)})
        else:
            raise TranslationError(f"{path} has an unsupported block type {_name(kind)} for this model", path)
    out = tool_messages
    if texts:
        out.append({"role": "user", "content": _text_content(texts)})
    return out


def _anthropic_assistant_turn(content: Any, where: str) -> dict | None:
    if isinstance(content, str) or content is None:
        return {"role": "assistant", "content": content} if content else None
    texts, calls = [], []
    for path, kind, block in _content_blocks(content, where):
        if kind == "text":
            texts.append(_block_text(block, path))
        elif kind == "tool_use":
            call_id, name = block.get("id"), block.get("name")
            if not isinstance(call_id, str) or not call_id or not isinstance(name, str) or not name:
                raise TranslationError(f"{path} needs an id and a name", path)
            tool_input = block.get("input")
            if tool_input is None:
                tool_input = {}
            if not isinstance(tool_input, dict):
                raise TranslationError(f"{path}.input must be an object", path)
            calls.append({"id": call_id, "type": "function",
                          "function": {"name": name, "arguments": _dumps_str(tool_input)}})
        elif kind in ("thinking", "redacted_thinking"):
            continue  # Anthropic-internal reasoning; an OpenAI model cannot take it back
        else:
            raise TranslationError(f"{path} has an unsupported block type {_name(kind)} for this model", path)
    text = "".join(texts)
    if not text and not calls:
        return None
    message: dict = {"role": "assistant", "content": text or None}
    if calls:
        message["tool_calls"] = calls
    return message


def _anthropic_tools_to_openai(tools: Any) -> list[dict]:
    if not isinstance(tools, list):
        raise TranslationError("tools must be a list", "tools")
    out = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise TranslationError(f"{where} must be an object", where)
        if tool.get("type") not in (None, "custom"):
            raise TranslationError(
                f"{where} is a server tool {_name(tool.get('type'))} not supported for this model", where)
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise TranslationError(f"{where}.name is required", where)
        schema = tool.get("input_schema")
        if schema is None:
            schema = {"type": "object", "properties": {}}
        elif not isinstance(schema, dict):
            raise TranslationError(f"{where}.input_schema must be an object", where)
        fn: dict = {"name": name, "parameters": schema}
        if isinstance(tool.get("description"), str) and tool["description"]:
            fn["description"] = tool["description"]
        out.append({"type": "function", "function": fn})
    return out


def _anthropic_tool_choice_to_openai(choice: Any) -> tuple[Any, bool]:
    """Returns (tool_choice, parallel_tool_calls disabled?)."""
    if not isinstance(choice, dict):
        raise TranslationError("tool_choice must be an object", "tool_choice")
    kind = choice.get("type")
    if kind == "auto":
        value: Any = "auto"
    elif kind == "any":
        value = "required"
    elif kind == "none":
        value = "none"
    elif kind == "tool":
        name = choice.get("name")
        if not isinstance(name, str) or not name:
            raise TranslationError("tool_choice.name is required", "tool_choice")
        value = {"type": "function", "function": {"name": name}}
    else:
        raise TranslationError(f"tool_choice {_name(kind)} is not supported for this model", "tool_choice")
    return value, bool(choice.get("disable_parallel_tool_use"))


def anthropic_to_openai_request(
    body: dict, upstream_model: str, *, max_tokens_field: str = "max_tokens"
) -> dict:
    """Turn a ``/v1/messages`` body into a ``/v1/chat/completions`` body for ``upstream_model``.

    ``max_tokens_field`` is ``"max_tokens"`` by default because every
    OpenAI-compatible server knows it; pass ``"max_completion_tokens"`` for
    OpenAI's reasoning models, which refuse the old name. A streaming request
    always asks for ``stream_options.include_usage`` so the relay gets the
    token counts it must record (P22). ``top_k``, ``thinking``,
    ``cache_control`` and a tool result's ``is_error`` have no OpenAI
    counterpart and are dropped.
    """
    if not isinstance(body, dict):
        raise TranslationError("the request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise TranslationError("messages must be a non-empty list", "messages")

    out_messages: list[dict] = []
    system = body.get("system")
    if system:
        texts = _anthropic_text_blocks(system, "system")
        if texts:
            out_messages.append({"role": "system", "content": "\n\n".join(texts)})

    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise TranslationError(f"{where} must be an object", where)
        role = message.get("role")
        if role == "user":
            out_messages.extend(_anthropic_user_turn(message.get("content"), where))
        elif role == "assistant":
            converted = _anthropic_assistant_turn(message.get("content"), where)
            if converted is not None:
                out_messages.append(converted)
        else:
            raise TranslationError(f"{where} has an unsupported role {_name(role)}", where)

    out: dict = {"model": upstream_model, "messages": out_messages}
    max_tokens = body.get("max_tokens")
    if max_tokens is not None:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise TranslationError("max_tokens must be a positive integer", "max_tokens")
        out[max_tokens_field] = max_tokens
    for key in ("temperature", "top_p"):
        value = body.get(key)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TranslationError(f"{key} must be a number", key)
            out[key] = value

    stop = body.get("stop_sequences")
    if stop is not None:
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise TranslationError("stop_sequences must be a list of strings", "stop_sequences")
        if stop:
            out["stop"] = list(stop)

    if body.get("stream"):
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    elif body.get("stream") is not None:
        out["stream"] = False

    tools = body.get("tools")
    if tools:
        out["tools"] = _anthropic_tools_to_openai(tools)
        if body.get("tool_choice") is not None:
            choice, no_parallel = _anthropic_tool_choice_to_openai(body["tool_choice"])
            out["tool_choice"] = choice
            if no_parallel:
                out["parallel_tool_calls"] = False

    metadata = body.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str) and metadata["user_id"]:
        out["user"] = metadata["user_id"]
    return out


# --------------------------------------------------------------------------- responses


def anthropic_to_openai_response(msg: dict, public_model: str, *, created: int | None = None) -> dict:
    """Turn an Anthropic Message into a ``chat.completion`` naming ``public_model``.

    Text blocks are joined; ``tool_use`` blocks become ``tool_calls`` with
    JSON-string arguments; thinking and server-tool blocks are left out (an
    OpenAI client has nowhere to put them).
    """
    if not isinstance(msg, dict):
        raise TranslationError("the upstream response is not a JSON object")
    content = msg.get("content")
    if content is None:
        content = []
    if not isinstance(content, list):
        raise TranslationError("the upstream response content is not a list")
    texts, calls = [], []
    for j, block in enumerate(content):
        if not isinstance(block, dict):
            raise TranslationError(f"the upstream response content[{j}] is not an object")
        kind = block.get("type")
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif kind == "tool_use":
            tool_input = block.get("input")
            calls.append({
                "id": block.get("id") or _new_id("toolu_"),
                "type": "function",
                "function": {"name": block.get("name") or "",
                             "arguments": _dumps_str(tool_input if tool_input is not None else {})},
            })
    text = "".join(texts)
    message: dict = {"role": "assistant", "content": text if (text or not calls) else None, "refusal": None}
    if calls:
        message["tool_calls"] = calls
    return {
        "id": _openai_id_from(msg.get("id")),
        "object": "chat.completion",
        "created": int(time.time()) if created is None else created,
        "model": public_model,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": None,
            "finish_reason": _STOP_TO_FINISH.get(msg.get("stop_reason"), "stop"),
        }],
        "usage": usage_to_openai(usage_from_anthropic(msg.get("usage"))),
    }


def openai_to_anthropic_response(resp: dict, public_model: str) -> dict:
    """Turn a ``chat.completion`` into an Anthropic Message naming ``public_model``.

    Only the first choice is used (the request never asks for more). Tool
    arguments must be a JSON object; a model that produced broken JSON makes
    this raise, since an Anthropic ``tool_use.input`` cannot hold it.
    """
    if not isinstance(resp, dict):
        raise TranslationError("the upstream response is not a JSON object")
    choices = resp.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise TranslationError("the upstream response has no choices")
    choice = choices[0]
    message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
    blocks: list[dict] = []
    content = message.get("content")
    if isinstance(content, list):  # some compatible servers answer with parts
        content = "".join(p.get("text", "") for p in content
                          if isinstance(p, dict) and isinstance(p.get("text"), str))
    if isinstance(content, str) and content:
        blocks.append({"type": "text", "text": content})
    elif isinstance(message.get("refusal"), str) and message["refusal"]:
        blocks.append({"type": "text", "text": message["refusal"]})
    for j, call in enumerate(message.get("tool_calls") or []):
        if not isinstance(call, dict):
            continue
        fn = call.get("function") if isinstance(call.get("function"), dict) else {}
        blocks.append({
            "type": "tool_use",
            "id": _tool_id(call.get("id")) or _new_id("toolu_"),
            "name": fn.get("name") or "",
            "input": _parse_arguments(fn.get("arguments"), f"upstream tool_calls[{j}].function.arguments"),
        })
    finish = choice.get("finish_reason")
    stop_reason = _FINISH_TO_STOP.get(finish, "end_turn")
    if finish is None and any(b["type"] == "tool_use" for b in blocks):
        stop_reason = "tool_use"
    return {
        "id": _anthropic_id_from(resp.get("id")),
        "type": "message",
        "role": "assistant",
        "model": public_model,
        "content": blocks,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": usage_to_anthropic(usage_from_openai(resp.get("usage"))),
    }


# --------------------------------------------------------------------------- streams


class AnthropicStreamToOpenAI:
    """Turn an Anthropic SSE stream into OpenAI ``chat.completion.chunk`` dicts.

    Feed every upstream event in order; write each returned chunk with
    ``sse_openai`` and, once ``done``, ``SSE_OPENAI_DONE``. The usage chunk
    (``choices: []``) is emitted only with ``include_usage=True``, i.e. when
    the client asked for ``stream_options.include_usage``; ``usage`` is
    filled either way so the relay can record it (P22). An upstream
    ``error`` event becomes an ``{"error": {...}}`` chunk, which the OpenAI
    SDK raises as ``APIError``.
    """

    def __init__(self, public_model: str, *, include_usage: bool = False,
                 completion_id: str | None = None, created: int | None = None) -> None:
        self._model = public_model
        self._include_usage = include_usage
        self._id = completion_id
        self._created = int(time.time()) if created is None else created
        self._role_sent = False
        self._finish_sent = False
        self._tools: dict[Any, int] = {}  # Anthropic block index -> OpenAI tool_calls index
        self._usage = Usage()
        self.done = False

    @property
    def usage(self) -> Usage:
        return self._usage

    def _chunk(self, delta: dict, finish_reason: str | None = None) -> dict:
        if self._id is None:
            self._id = _new_id("chatcmpl-")
        return {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }

    def _start(self, out: list[dict]) -> None:
        if not self._role_sent:
            self._role_sent = True
            out.append(self._chunk({"role": "assistant", "content": ""}))

    def _finish(self, out: list[dict], stop_reason: Any) -> None:
        if not self._finish_sent:
            self._start(out)
            self._finish_sent = True
            out.append(self._chunk({}, _STOP_TO_FINISH.get(stop_reason, "stop")))

    def feed(self, event_type: str, data: dict) -> list[dict]:
        """One upstream event (its SSE ``event:`` name and parsed ``data``) -> chunks to send."""
        if self.done:
            return []
        if not isinstance(data, dict):
            data = {}
        kind = event_type or data.get("type")
        out: list[dict] = []
        if kind == "message_start":
            message = data.get("message") if isinstance(data.get("message"), dict) else {}
            if self._id is None:
                self._id = _openai_id_from(message.get("id"))
            started = usage_from_anthropic(message.get("usage"))
            started.reported = False  # output_tokens here is provisional
            self._usage = started
            self._start(out)
        elif kind == "content_block_start":
            self._start(out)
            block = data.get("content_block") if isinstance(data.get("content_block"), dict) else {}
            if block.get("type") == "text" and isinstance(block.get("text"), str) and block["text"]:
                out.append(self._chunk({"content": block["text"]}))
            elif block.get("type") == "tool_use":
                position = len(self._tools)
                self._tools[data.get("index")] = position
                tool_input = block.get("input")
                out.append(self._chunk({"tool_calls": [{
                    "index": position,
                    "id": block.get("id") or _new_id("toolu_"),
                    "type": "function",
                    "function": {"name": block.get("name") or "",
                                 "arguments": _dumps_str(tool_input) if tool_input else ""},
                }]}))
        elif kind == "content_block_delta":
            delta = data.get("delta") if isinstance(data.get("delta"), dict) else {}
            if delta.get("type") == "text_delta" and isinstance(delta.get("text"), str) and delta["text"]:
                self._start(out)
                out.append(self._chunk({"content": delta["text"]}))
            elif delta.get("type") == "input_json_delta" and data.get("index") in self._tools:
                fragment = delta.get("partial_json")
                if isinstance(fragment, str) and fragment:
                    out.append(self._chunk({"tool_calls": [{
                        "index": self._tools[data.get("index")],
                        "function": {"arguments": fragment},
                    }]}))
            # thinking_delta, signature_delta, citations_delta: nothing an OpenAI client reads
        elif kind == "message_delta":
            usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
            # message_delta counts are cumulative; input and cache counts appear here only when final.
            if "output_tokens" in usage:
                self._usage.output_tokens = _int(usage.get("output_tokens"))
            if usage.get("input_tokens") is not None:
                self._usage.input_tokens = _int(usage["input_tokens"])
            if usage.get("cache_read_input_tokens") is not None:
                self._usage.cache_read_tokens = _int(usage["cache_read_input_tokens"])
            if usage.get("cache_creation_input_tokens") is not None:
                self._usage.cache_write_tokens = _int(usage["cache_creation_input_tokens"])
            if usage:
                self._usage.reported = True
            delta = data.get("delta") if isinstance(data.get("delta"), dict) else {}
            self._finish(out, delta.get("stop_reason"))
        elif kind == "message_stop":
            out.extend(self.finish())
        elif kind == "error":
            error = data.get("error") if isinstance(data.get("error"), dict) else {}
            self.done = True
            out.append({"error": {
                "message": error.get("message") if isinstance(error.get("message"), str) else "upstream error",
                "type": error.get("type") if isinstance(error.get("type"), str) else "api_error",
                "param": None,
                "code": None,
            }})
        # ping and unknown events: nothing to send
        return out

    def finish(self) -> list[dict]:
        """Close the stream: the finish chunk if none was sent, then the usage chunk if asked for.

        Called by ``message_stop``; call it yourself if the upstream ended
        without one. ``usage.reported`` stays False in that case.
        """
        if self.done:
            return []
        out: list[dict] = []
        self._finish(out, None)
        if self._include_usage:
            chunk = self._chunk({})
            chunk["choices"] = []
            chunk["usage"] = usage_to_openai(self._usage)
            out.append(chunk)
        self.done = True
        return out


class OpenAIStreamToAnthropic:
    """Turn OpenAI ``chat.completion.chunk`` dicts into Anthropic SSE events.

    ``feed`` each parsed chunk; call ``finish()`` on ``[DONE]`` (or when the
    upstream closes) to get ``message_delta`` and ``message_stop``. Both
    return ``(event_name, data)`` pairs for ``sse_anthropic``. The
    ``message_delta`` waits for ``finish()`` because OpenAI sends its usage in
    a chunk after the one carrying ``finish_reason``; it then carries the
    input and cache counts too, which the Anthropic SDK folds into the
    final message. Only ``choices[0]`` is followed.
    """

    def __init__(self, public_model: str, *, message_id: str | None = None) -> None:
        self._model = public_model
        self._id = message_id
        self._started = False
        self._next_block = 0
        self._open: tuple[str, Any] | None = None  # ("text", None) or ("tool", openai tool index)
        self._open_index = -1
        self._tools: dict[Any, int] = {}  # OpenAI tool_calls index -> Anthropic block index
        self._stop_reason: str | None = None
        self._usage = Usage()
        self.done = False

    @property
    def usage(self) -> Usage:
        return self._usage

    def _start(self, out: list, chunk_id: Any = None) -> None:
        if self._started:
            return
        self._started = True
        if self._id is None:
            self._id = _anthropic_id_from(chunk_id)
        out.append(("message_start", {"type": "message_start", "message": {
            "id": self._id,
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage_to_anthropic(self._usage),
        }}))

    def _close(self, out: list) -> None:
        if self._open is not None:
            out.append(("content_block_stop", {"type": "content_block_stop", "index": self._open_index}))
            self._open = None

    def _open_block(self, out: list, kind: tuple[str, Any], block: dict) -> int:
        self._close(out)
        index = self._next_block
        self._next_block += 1
        self._open, self._open_index = kind, index
        out.append(("content_block_start", {"type": "content_block_start", "index": index, "content_block": block}))
        return index

    def _text(self, out: list, text: str) -> None:
        if self._open != ("text", None):
            self._open_block(out, ("text", None), {"type": "text", "text": ""})
        out.append(("content_block_delta", {"type": "content_block_delta", "index": self._open_index,
                                            "delta": {"type": "text_delta", "text": text}}))

    def _tool(self, out: list, call: dict) -> None:
        key = call.get("index")
        if not isinstance(key, int):  # servers that omit index: a new id means a new call
            current = self._open[1] if self._open and self._open[0] == "tool" else None
            key = call.get("id") or current or 0
        fn = call.get("function") if isinstance(call.get("function"), dict) else {}
        if key not in self._tools:
            self._tools[key] = self._open_block(out, ("tool", key), {
                "type": "tool_use",
                "id": _tool_id(call.get("id")) or _new_id("toolu_"),
                "name": fn.get("name") if isinstance(fn.get("name"), str) else "",
                "input": {},
            })
        fragment = fn.get("arguments")
        if isinstance(fragment, str) and fragment:
            # A fragment for a call already closed still goes to its own block index.
            out.append(("content_block_delta", {"type": "content_block_delta", "index": self._tools[key],
                                                "delta": {"type": "input_json_delta", "partial_json": fragment}}))

    def feed(self, chunk: dict) -> list[tuple[str, dict]]:
        """One parsed upstream chunk -> Anthropic events to send (possibly none)."""
        if self.done or not isinstance(chunk, dict):
            return []
        out: list[tuple[str, dict]] = []
        error = chunk.get("error")
        if error:  # some OpenAI-compatible servers report mid-stream failures this way
            error = error if isinstance(error, dict) else {}
            message = error.get("message") if isinstance(error.get("message"), str) else "upstream error"
            self.done = True
            return [("error", anthropic_error("api_error", message))]
        if isinstance(chunk.get("usage"), dict):
            self._usage = usage_from_openai(chunk["usage"])
        self._start(out, chunk.get("id"))
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            return out
        for choice in choices:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") if isinstance(choice.get("delta"), dict) else {}
            for key in ("content", "refusal"):
                if isinstance(delta.get(key), str) and delta[key]:
                    self._text(out, delta[key])
            calls = delta.get("tool_calls")
            if isinstance(calls, list):
                for call in calls:
                    if isinstance(call, dict):
                        self._tool(out, call)
            finish = choice.get("finish_reason")
            if finish:
                self._stop_reason = _FINISH_TO_STOP.get(finish, "end_turn")
                self._close(out)
        return out

    def finish(self) -> list[tuple[str, dict]]:
        """Close the message: any open block, ``message_delta`` with stop reason and usage, ``message_stop``."""
        if self.done:
            return []
        out: list[tuple[str, dict]] = []
        self._start(out)
        self._close(out)
        stop_reason = self._stop_reason
        if stop_reason is None:
            stop_reason = "tool_use" if self._tools else "end_turn"
        usage: dict = {"output_tokens": self._usage.output_tokens}
        if self._usage.reported:
            usage = usage_to_anthropic(self._usage)
        out.append(("message_delta", {"type": "message_delta",
                                      "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                                      "usage": usage}))
        out.append(("message_stop", {"type": "message_stop"}))
        self.done = True
        return out


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
