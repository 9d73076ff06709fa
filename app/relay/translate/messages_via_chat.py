"""An Anthropic Messages client served by an OpenAI chat-completions provider.

The request goes out as a chat completion (``request``), a whole answer comes
back as a Message (``response``), and a stream's chunks become Messages events
(``Stream``). Tool-call ids pass through unchanged; content chat completions
cannot express (documents, server tools...) is refused with a
``TranslationError`` naming the field.
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
    _parse_arguments,
    _tool_id,
    anthropic_error,
    usage_from_openai,
    usage_to_anthropic,
)

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


