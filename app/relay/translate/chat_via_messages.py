"""An OpenAI chat-completions client served by an Anthropic Messages provider.

The request goes out as Messages (``openai_to_anthropic_request``), a whole
answer comes back as a chat completion (``anthropic_to_openai_response``), and
a stream's events become chunks (``AnthropicStreamToOpenAI``).

The request: every field is mapped, or refused
----------------------------------------------

Every field of the chat-completions request (as the ``openai`` SDK's
``CompletionCreateParams`` defines it), of each message, content part, tool
call and tool is either carried across or refused with a ``TranslationError``
naming it; none is dropped (issue 12). A field that is absent or ``null``,
an empty list or object, is not set and needs no carrying; so is a field at
the value that asks for nothing (below). The relay answers a refusal with a
400 in the client's shape, before anything goes upstream.

Mapped:

* ``messages``: ``system`` and ``developer`` messages (text) join into the
  top-level ``system``; ``user`` text parts become text blocks; ``assistant``
  text, ``refusal`` (the field or a refusal part, replayed history) and
  ``tool_calls`` become text and ``tool_use`` blocks; ``tool`` messages become
  ``tool_result`` blocks in a user turn. Consecutive turns of one role are
  merged (Anthropic requires alternation), tool results first in their turn.
* ``max_completion_tokens`` (else the older ``max_tokens``, else
  ``DEFAULT_MAX_TOKENS``, which Anthropic requires) -> ``max_tokens``.
* ``temperature`` -> ``temperature``, clamped to Anthropic's 0..1 (OpenAI
  allows 0..2): the one approximation.
* ``top_p`` -> ``top_p``; ``top_p: 1`` beside a temperature asks for nothing
  and is left out, since newer Claude models refuse the two together.
* ``stop`` -> ``stop_sequences`` (empty strings ask for nothing).
* ``tools`` (function tools: ``name``, ``description``, ``parameters``,
  ``strict``) -> ``tools`` (``input_schema``, ``strict``).
* ``tool_choice`` -> ``tool_choice`` (auto, none, required -> any, a named
  function -> tool); ``parallel_tool_calls: false`` -> ``disable_parallel_tool_use``.
  Without tools, ``tool_choice`` ``auto``/``none`` and ``parallel_tool_calls``
  ask for nothing; any other choice is refused.
* ``user`` and ``safety_identifier`` -> ``metadata.user_id`` (the same thing:
  an opaque id for abuse detection); refused if both are set and differ.
* ``stream`` -> ``stream``. ``stream_options`` is the relay's business, not
  the provider's: ``include_usage`` decides whether the client gets a usage
  chunk (``AnthropicStreamToOpenAI``).

Accepted at the value that asks for nothing, refused otherwise: ``n: 1``,
``response_format: {"type": "text"}``, ``frequency_penalty: 0``,
``presence_penalty: 0``, ``logprobs: false``, ``top_logprobs: 0``,
``logit_bias: {}``, ``store: false``, ``modalities: ["text"]``,
``service_tier: "auto"``, ``metadata: {}``.

Refused when set, because Messages has no counterpart: ``seed``,
``logprobs``/``top_logprobs``, ``logit_bias``, the penalties, ``n > 1``,
structured ``response_format`` (``json_object``, ``json_schema``),
``reasoning_effort``, ``verbosity``, ``audio`` and ``modalities`` with audio,
``prediction``, ``web_search_options``, ``store: true``, ``metadata`` (stored
completions' tags), ``service_tier`` other than auto, ``prompt_cache_key``,
``prompt_cache_options``, ``prompt_cache_retention``, ``moderation``, the
legacy ``functions``/``function_call``; a message's ``name``, an assistant
message's ``audio`` and ``function_call``, a part's
``prompt_cache_breakpoint``; content parts other than text and refusal
(``image_url``, ``input_audio``, ``file``); custom tools; and any field the
SDK does not define (the official API refuses those too). An error names
the field by its path (``messages[2].content[1]``) and never quotes content
(P23); a field name that is not a plain protocol identifier is not quoted.

The answer: what an OpenAI client has no place for
--------------------------------------------------

Text blocks are joined into ``content``; ``tool_use`` blocks become
``tool_calls``; the stop reason becomes ``finish_reason``. ``thinking`` and
``redacted_thinking`` blocks, and their streamed ``thinking_delta`` and
``signature_delta``, are left out: a chat completion has no field for them,
the client did not ask for them (``thinking`` is not a chat-completions field,
and any unknown field is refused), and a stream cannot be refused half-way.
Some Claude models think unasked; the client then gets the answer without the
reasoning, as an OpenAI reasoning model answers. Server-tool blocks and
``citations_delta`` are left out likewise; they can only follow server tools
or documents, which the request cannot carry.
"""
from __future__ import annotations

import time
from typing import Any

from app.relay.meters import MessagesStreamMeter
from app.relay.wire import (
    _STOP_TO_FINISH,
    DEFAULT_MAX_TOKENS,
    TranslationError,
    Usage,
    _append_turn,
    _dumps_str,
    _name,
    _new_id,
    _only,
    _openai_id_from,
    _parse_arguments,
    _tool_id,
    usage_from_anthropic,
    usage_to_openai,
)

# --------------------------------------------------------------------------- OpenAI -> Anthropic request

_TARGET = "an Anthropic-shaped model"

# The request fields this direction reads; every other field is refused when set.
_REQUEST_FIELDS = frozenset({
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stop", "stream",
    "stream_options", "tools", "tool_choice", "parallel_tool_calls", "user", "safety_identifier",
    "n", "response_format", "functions", "function_call",
})
# Fields with no Messages counterpart, accepted at the value that asks for nothing.
_NEUTRAL = {
    "frequency_penalty": (0,),
    "presence_penalty": (0,),
    "logprobs": (False,),
    "top_logprobs": (0,),
    "store": (False,),
    "modalities": (["text"],),
    "service_tier": ("auto",),
}
_MESSAGE_FIELDS = {
    "system": frozenset({"role", "content"}),
    "developer": frozenset({"role", "content"}),
    "user": frozenset({"role", "content"}),
    "assistant": frozenset({"role", "content", "refusal", "tool_calls", "function_call"}),
    "tool": frozenset({"role", "content", "tool_call_id"}),
}
_PART_FIELDS = {"text": frozenset({"type", "text"}), "refusal": frozenset({"type", "refusal"})}


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
        _only(part, _PART_FIELDS[kind], _TARGET, where)
        if text:
            texts.append(text)
    return texts



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
        _only(call, frozenset({"id", "type", "function"}), _TARGET, where)
        _only(fn, frozenset({"name", "arguments"}), _TARGET, f"{where}.function")
        blocks.append({
            "type": "tool_use",
            "id": call_id,
            "name": fn["name"],
            "input": _parse_arguments(fn.get("arguments"), f"{where}.function.arguments"),
        })
    return blocks


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
        _only(tool, frozenset({"type", "function"}), _TARGET, where)
        _only(fn, frozenset({"name", "description", "parameters", "strict"}), _TARGET, f"{where}.function")
        params = fn.get("parameters")
        if params is None:
            params = {"type": "object", "properties": {}}
        elif not isinstance(params, dict):
            raise TranslationError(f"{where}.function.parameters must be an object", where)
        converted = {"name": fn["name"], "input_schema": params}
        if isinstance(fn.get("description"), str) and fn["description"]:
            converted["description"] = fn["description"]
        strict = fn.get("strict")
        if strict is not None and not isinstance(strict, bool):
            raise TranslationError(f"{where}.function.strict must be true or false", f"{where}.function.strict")
        if strict:
            converted["strict"] = True
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
        _only(choice, frozenset({"type", "function"}), _TARGET, "tool_choice")
        _only(fn, frozenset({"name"}), _TARGET, "tool_choice.function")
        result = {"type": "tool", "name": fn["name"]}
    else:
        kind = choice.get("type") if isinstance(choice, dict) else choice
        raise TranslationError(f"tool_choice {_name(kind)} is not supported for this model", "tool_choice")
    if result is not None and parallel is False:
        result["disable_parallel_tool_use"] = True
    return result


def _user_id(body: dict) -> str | None:
    """``safety_identifier`` and the older ``user``: one opaque end-user id, as Anthropic's ``metadata.user_id``."""
    found = None
    for key in ("safety_identifier", "user"):
        value = body.get(key)
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            raise TranslationError(f"{key} must be a string", key)
        if found is not None and value != found:
            raise TranslationError(f"user and safety_identifier differ, and {_TARGET} takes one user id", "user")
        found = value
    return found


def openai_to_anthropic_request(
    body: dict, upstream_model: str, *, default_max_tokens: int = DEFAULT_MAX_TOKENS
) -> dict:
    """Turn a ``/v1/chat/completions`` body into a ``/v1/messages`` body for ``upstream_model``.

    What maps to what, and what is refused, is in the module docstring. The
    caller decides from the client's ``stream_options.include_usage`` whether
    to send a usage chunk.
    """
    if not isinstance(body, dict):
        raise TranslationError("the request body must be a JSON object")
    _only(body, _REQUEST_FIELDS, _TARGET, neutral=_NEUTRAL)
    if body.get("n") not in (None, 1):
        raise TranslationError("n greater than 1 is not supported for this model", "n")
    if body.get("functions") is not None or body.get("function_call") is not None:
        raise TranslationError("functions and function_call are not supported; use tools", "functions")
    response_format = body.get("response_format")
    if response_format is not None and not (isinstance(response_format, dict)
                                            and response_format.get("type") in (None, "text")):
        kind = response_format.get("type") if isinstance(response_format, dict) else response_format
        raise TranslationError(f"response_format {_name(kind)} is not supported for this model", "response_format")
    if isinstance(response_format, dict):
        _only(response_format, frozenset({"type"}), _TARGET, "response_format")

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
        if isinstance(role, str) and role in _MESSAGE_FIELDS:
            _only(message, _MESSAGE_FIELDS[role], _TARGET, where)
        if role in ("system", "developer"):
            system.extend(_openai_texts(content, f"{where}.content"))
        elif role == "user":
            blocks = [{"type": "text", "text": t} for t in _openai_texts(content, f"{where}.content")]
            _append_turn(turns, "user", blocks)
        elif role == "assistant":
            if message.get("function_call") is not None:
                raise TranslationError(f"{where}.function_call is not supported; use tool_calls", where)
            texts = _openai_texts(content, f"{where}.content")
            refusal = message.get("refusal")
            if refusal is not None and not isinstance(refusal, str):
                raise TranslationError(f"{where}.refusal must be a string", f"{where}.refusal")
            if refusal:
                texts.append(refusal)
            blocks = [{"type": "text", "text": t} for t in texts]
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

    parallel = body.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise TranslationError("parallel_tool_calls must be true or false", "parallel_tool_calls")
    tools = body.get("tools")
    if tools:
        out["tools"] = _openai_tools_to_anthropic(tools)
        choice = _openai_tool_choice_to_anthropic(body.get("tool_choice"), parallel)
        if choice is not None:
            out["tool_choice"] = choice
    elif body.get("tool_choice") not in (None, "auto", "none"):
        raise TranslationError("tool_choice asks for a tool call, but the request has no tools", "tool_choice")

    user_id = _user_id(body)
    if user_id is not None:
        out["metadata"] = {"user_id": user_id}
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



# --------------------------------------------------------------------------- streams


class AnthropicStreamToOpenAI:
    """Turn an Anthropic SSE stream into OpenAI ``chat.completion.chunk`` dicts.

    Feed every upstream event in order; write each returned chunk with
    ``sse_openai`` and, once ``done``, ``SSE_OPENAI_DONE``. The usage chunk
    (``choices: []``) is emitted only with ``include_usage=True``, i.e. when
    the client asked for ``stream_options.include_usage``; ``usage`` is
    read from the stream meter (app/relay/meters.py), the only place stream
    usage is counted: pass the meter the relay feeds, or leave it out and the
    translator feeds one of its own (P22). An upstream
    ``error`` event becomes an ``{"error": {...}}`` chunk, which the OpenAI
    SDK raises as ``APIError``.
    """

    def __init__(self, public_model: str, *, include_usage: bool = False,
                 completion_id: str | None = None, created: int | None = None,
                 meter: MessagesStreamMeter | None = None) -> None:
        self._meter = meter or MessagesStreamMeter()
        self._feeds_meter = meter is None
        self._model = public_model
        self._include_usage = include_usage
        self._id = completion_id
        self._created = int(time.time()) if created is None else created
        self._role_sent = False
        self._finish_sent = False
        self._tools: dict[Any, int] = {}  # Anthropic block index -> OpenAI tool_calls index
        self.done = False

    @property
    def usage(self) -> Usage:
        return self._meter.usage or Usage()

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
        if self._feeds_meter:
            self._meter.feed(event_type, data)
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
            chunk["usage"] = usage_to_openai(self.usage)
            out.append(chunk)
        self.done = True
        return out


