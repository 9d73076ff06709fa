"""An Anthropic Messages client served by an OpenAI chat-completions provider.

The request goes out as a chat completion (``anthropic_to_openai_request``), a
whole answer comes back as a Message (``openai_to_anthropic_response``), and a
stream's chunks become Messages events (``OpenAIStreamToAnthropic``).

The request: every field is mapped, or refused
----------------------------------------------

Every field of the Messages request (as the ``anthropic`` SDK's
``MessageCreateParams`` defines it, plus ``temperature``, ``top_p`` and
``top_k``, which older SDKs send), of each message, content block and tool is
either carried across or refused with a ``TranslationError`` naming it; none
is dropped (issue 12). A field that is absent or ``null``, an empty list or
object, is not set and needs no carrying; so is a field at the value that asks
for nothing (below). The relay answers a refusal with a 400 in the client's
shape, before anything goes upstream.

Mapped:

* ``system`` (a string or text blocks) -> a leading ``system`` message.
* ``messages``: user text blocks -> a user message (one text as a plain
  string, which every OpenAI-compatible server takes); ``tool_result`` blocks
  (text content) -> ``tool`` messages, placed before the user text of their
  turn; assistant text and ``tool_use`` blocks -> an assistant message with
  ``tool_calls`` (ids unchanged, input as a JSON string).
* ``max_tokens`` -> ``max_tokens`` (or ``max_completion_tokens``, see
  ``anthropic_to_openai_request``); ``temperature``, ``top_p`` unchanged;
  ``stop_sequences`` -> ``stop``.
* ``tools`` (custom tools: ``name``, ``description``, ``input_schema``,
  ``strict``) -> function tools (``parameters``, ``strict``).
* ``tool_choice`` -> ``tool_choice`` (auto, any -> required, none, a named
  tool -> a named function); ``disable_parallel_tool_use`` ->
  ``parallel_tool_calls: false``. Without tools, ``auto`` and ``none`` ask for
  nothing; ``any`` and a named tool are refused.
* ``metadata.user_id`` -> ``user``.
* ``stream`` -> ``stream``, always with ``stream_options.include_usage`` so
  the relay gets the token counts it must record (P22).

Accepted at the value that asks for nothing, refused otherwise:
``thinking: {"type": "disabled"}``, ``service_tier: "auto"``,
``speed: "standard"``, a tool result's ``is_error: false``, a tool's
``allowed_callers: ["direct"]``, a ``tool_use`` block's
``caller: {"type": "direct"}``.

Refused when set, because chat completions has no counterpart: ``top_k``,
``thinking`` (enabled, adaptive...), ``cache_control`` (top-level, and on any
block or tool: prompt caching is automatic on OpenAI, with no markers and no
TTL), ``output_config`` (``effort``, ``format``), ``container``,
``diagnostics``, ``inference_geo``, ``service_tier: "standard_only"``,
``speed: "fast"``; ``citations`` on a text block; a tool result's
``is_error: true`` (a tool message has no error flag); ``thinking`` and
``redacted_thinking`` blocks in an assistant turn (an OpenAI model cannot take
back Anthropic's signed reasoning); image, document, search-result and
server-tool blocks; a ``role: "system"`` message; server tools and a tool's
``defer_loading``, ``eager_input_streaming``, ``input_examples``; and any
field the SDK does not define (the official API refuses those too). An error
names the field by its path (``messages[0].content[1].cache_control``) and
never quotes content (P23); a field name that is not a plain protocol
identifier is not quoted. The ``anthropic-beta`` header cannot be carried
either; headers are the relay's business (app/relay/shapes.py), not this
module's.

The answer: what an Anthropic client has no place for
-----------------------------------------------------

The first choice's ``content`` (or ``refusal``) becomes a text block and its
``tool_calls`` become ``tool_use`` blocks; ``finish_reason`` becomes
``stop_reason``. Only the first choice is read: the request never asks for
more (``n`` is not a Messages field). ``logprobs`` and ``audio`` cannot have
been asked for and are not carried. ``annotations`` (URL citations, which
search models add unasked) and the reasoning text some compatible servers add
(``reasoning_content``) are left out: an Anthropic citation points into a
document or search result the request never had, and a ``thinking`` block
needs a signature only Anthropic can make. A stream cannot be refused
half-way, so these are left out of a stream too.
"""
from __future__ import annotations

from typing import Any

from app.relay.meters import ChatStreamMeter
from app.relay.wire import (
    _FINISH_TO_STOP,
    TranslationError,
    Usage,
    _anthropic_id_from,
    _dumps_str,
    _name,
    _new_id,
    _only,
    _parse_arguments,
    _tool_id,
    anthropic_error,
    usage_from_openai,
    usage_to_anthropic,
)

# --------------------------------------------------------------------------- Anthropic -> OpenAI request

_TARGET = "an OpenAI-shaped model"

# The request fields this direction reads; every other field is refused when set.
_REQUEST_FIELDS = frozenset({
    "model", "messages", "max_tokens", "system", "temperature", "top_p", "stop_sequences", "stream",
    "tools", "tool_choice", "metadata",
})
# Fields with no chat-completions counterpart, accepted at the value that asks for nothing.
_NEUTRAL = {
    "thinking": ({"type": "disabled"},),
    "service_tier": ("auto",),
    "speed": ("standard",),
}
_TEXT_FIELDS = frozenset({"type", "text"})
_TOOL_FIELDS = frozenset({"type", "name", "description", "input_schema", "strict"})


def _anthropic_text_blocks(content: Any, path: str) -> list[str]:
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
        _only(block, _TEXT_FIELDS, _TARGET, where)
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
    _only(block, _TEXT_FIELDS, _TARGET, path)
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
            _only(block, frozenset({"type", "tool_use_id", "content"}), _TARGET, path, {"is_error": (False,)})
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
            _only(block, frozenset({"type", "id", "name", "input"}), _TARGET, path, {"caller": ({"type": "direct"},)})
            calls.append({"id": call_id, "type": "function",
                          "function": {"name": name, "arguments": _dumps_str(tool_input)}})
        else:  # thinking and redacted_thinking included: an OpenAI model cannot take them back
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
        _only(tool, _TOOL_FIELDS, _TARGET, where, {"allowed_callers": (["direct"],)})
        schema = tool.get("input_schema")
        if schema is None:
            schema = {"type": "object", "properties": {}}
        elif not isinstance(schema, dict):
            raise TranslationError(f"{where}.input_schema must be an object", where)
        fn: dict = {"name": name, "parameters": schema}
        if isinstance(tool.get("description"), str) and tool["description"]:
            fn["description"] = tool["description"]
        strict = tool.get("strict")
        if strict is not None and not isinstance(strict, bool):
            raise TranslationError(f"{where}.strict must be true or false", f"{where}.strict")
        if strict:
            fn["strict"] = True
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
    _only(choice, frozenset({"type", "name", "disable_parallel_tool_use"}), _TARGET, "tool_choice")
    no_parallel = choice.get("disable_parallel_tool_use")
    if no_parallel is not None and not isinstance(no_parallel, bool):
        raise TranslationError("tool_choice.disable_parallel_tool_use must be true or false",
                               "tool_choice.disable_parallel_tool_use")
    return value, bool(no_parallel)


def anthropic_to_openai_request(
    body: dict, upstream_model: str, *, max_tokens_field: str = "max_tokens"
) -> dict:
    """Turn a ``/v1/messages`` body into a ``/v1/chat/completions`` body for ``upstream_model``.

    ``max_tokens_field`` is ``"max_tokens"`` by default because every
    OpenAI-compatible server knows it; pass ``"max_completion_tokens"`` for
    OpenAI's reasoning models, which refuse the old name. What maps to what,
    and what is refused, is in the module docstring.
    """
    if not isinstance(body, dict):
        raise TranslationError("the request body must be a JSON object")
    _only(body, _REQUEST_FIELDS, _TARGET, neutral=_NEUTRAL)
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
        if role not in ("user", "assistant"):
            raise TranslationError(f"{where} has an unsupported role {_name(role)}", where)
        _only(message, frozenset({"role", "content"}), _TARGET, where)
        if role == "user":
            out_messages.extend(_anthropic_user_turn(message.get("content"), where))
        else:
            converted = _anthropic_assistant_turn(message.get("content"), where)
            if converted is not None:
                out_messages.append(converted)

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
    choice = body.get("tool_choice")
    if tools:
        out["tools"] = _anthropic_tools_to_openai(tools)
        if choice is not None:
            value, no_parallel = _anthropic_tool_choice_to_openai(choice)
            out["tool_choice"] = value
            if no_parallel:
                out["parallel_tool_calls"] = False
    elif choice is not None:
        _anthropic_tool_choice_to_openai(choice)  # its own errors first
        if choice.get("type") not in ("auto", "none"):
            raise TranslationError("tool_choice asks for a tool call, but the request has no tools", "tool_choice")

    metadata = body.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise TranslationError("metadata must be an object", "metadata")
        _only(metadata, frozenset({"user_id"}), _TARGET, "metadata")
        user_id = metadata.get("user_id")
        if user_id is not None and not isinstance(user_id, str):
            raise TranslationError("metadata.user_id must be a string", "metadata.user_id")
        if user_id:
            out["user"] = user_id
    return out



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



class OpenAIStreamToAnthropic:
    """Turn OpenAI ``chat.completion.chunk`` dicts into Anthropic SSE events.

    ``feed`` each parsed chunk; call ``finish()`` on ``[DONE]`` (or when the
    upstream closes) to get ``message_delta`` and ``message_stop``. Both
    return ``(event_name, data)`` pairs for ``sse_anthropic``. The
    ``message_delta`` waits for ``finish()`` because OpenAI sends its usage in
    a chunk after the one carrying ``finish_reason``; it then carries the
    input and cache counts too, which the Anthropic SDK folds into the
    final message. Only ``choices[0]`` is followed. The usage is read from the
    stream meter (app/relay/meters.py), the only place stream usage is counted:
    pass the meter the relay feeds, or leave it out and the translator feeds
    one of its own.
    """

    def __init__(self, public_model: str, *, message_id: str | None = None,
                 meter: ChatStreamMeter | None = None) -> None:
        self._meter = meter or ChatStreamMeter()
        self._feeds_meter = meter is None
        self._model = public_model
        self._id = message_id
        self._started = False
        self._next_block = 0
        self._open: tuple[str, Any] | None = None  # ("text", None) or ("tool", openai tool index)
        self._open_index = -1
        self._tools: dict[Any, int] = {}  # OpenAI tool_calls index -> Anthropic block index
        self._stop_reason: str | None = None
        self.done = False

    @property
    def usage(self) -> Usage:
        return self._meter.usage or Usage()

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
            "usage": usage_to_anthropic(self.usage),
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
        if self._feeds_meter:
            self._meter.feed("", chunk)
        if self.done or not isinstance(chunk, dict):
            return []
        out: list[tuple[str, dict]] = []
        error = chunk.get("error")
        if error:  # some OpenAI-compatible servers report mid-stream failures this way
            error = error if isinstance(error, dict) else {}
            message = error.get("message") if isinstance(error.get("message"), str) else "upstream error"
            self.done = True
            return [("error", anthropic_error("api_error", message))]
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
        counted = self.usage
        usage: dict = {"output_tokens": counted.output_tokens}
        if counted.reported:
            usage = usage_to_anthropic(counted)
        out.append(("message_delta", {"type": "message_delta",
                                      "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                                      "usage": usage}))
        out.append(("message_stop", {"type": "message_stop"}))
        self.done = True
        return out


