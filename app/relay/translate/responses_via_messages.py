"""An OpenAI Responses client served by an Anthropic Messages provider.

The request goes out as Messages (``responses_to_anthropic_request``), a whole
answer comes back as a Responses ``response`` (``anthropic_to_responses_response``),
and a stream's events become Responses events (``AnthropicStreamToResponses``).
What needs a stored response is refused for every target, before this
direction is reached (``responses.check_request``).

Mapped:

* ``instructions`` and ``system``/``developer`` message items -> the top-level
  ``system``; ``user`` and ``assistant`` message items (text parts, and an
  assistant's replayed ``refusal``) -> text blocks; ``function_call`` items ->
  ``tool_use`` blocks, ``function_call_output`` items -> ``tool_result``
  blocks, call ids made Anthropic-safe (``wire._tool_id``). Consecutive items
  of one role are merged (Anthropic requires alternation), tool results first
  in their turn.
* ``max_output_tokens`` (else ``DEFAULT_MAX_TOKENS``, which Anthropic
  requires) -> ``max_tokens``; ``temperature``, clamped to Anthropic's 0..1;
  ``top_p`` (``top_p: 1`` beside a temperature is left out: newer Claude
  models refuse the two together); ``stream``.
* function ``tools`` -> ``tools`` (``input_schema``); ``tool_choice`` (auto,
  none, required -> any, a named function -> tool);
  ``parallel_tool_calls: false`` -> ``disable_parallel_tool_use``.
* ``safety_identifier`` (else ``user``) -> ``metadata.user_id``.

Dropped, because they change nothing the model produces: ``metadata`` (echoed
back when the request is passed to the response builders),
``prompt_cache_key``, ``prompt_cache_retention``, ``stream_options``, a
function tool's ``strict`` (Claude follows the schema but does not promise
to), and the defaults of the other knobs.

Refused with a ``TranslationError`` naming the field, never silently dropped:
built-in tools (web_search, file_search, ...), ``text.format`` other than
text, ``text.verbosity`` other than medium, ``include``, ``reasoning`` (but
``effort: none``), ``prompt``, ``truncation: auto``, ``service_tier`` other
than auto/default, ``top_logprobs``, a function call's ``namespace``,
non-text input parts, reasoning and other item types, unknown fields.

The answer: each run of text blocks becomes one ``message`` item, each
``tool_use`` block a ``function_call`` item; a ``max_tokens`` stop makes the
response ``incomplete`` (a refusal: ``content_filter``). Thinking and
server-tool blocks are left out (the request never asks for them). The stream
translator does not count usage: it asks ``usage_of()`` (the Messages stream
meter's, app/relay/meters.py) for the counts when it writes the closing event.
"""
from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

from app.relay.responses import check_request, error_event, usage_to_responses
from app.relay.wire import (
    _SAFE_NAME,
    DEFAULT_MAX_TOKENS,
    TranslationError,
    Usage,
    _append_turn,
    _dumps_str,
    _name,
    _new_id,
    _parse_arguments,
    _tool_id,
    usage_from_anthropic,
)

# Anthropic stop reasons that end a Responses response as "incomplete", and why.
_INCOMPLETE = {
    "max_tokens": "max_output_tokens",
    "model_context_window_exceeded": "max_output_tokens",
    "refusal": "content_filter",
}

# Request fields the Anthropic translation reads; anything else set is refused.
_KNOWN_FIELDS = frozenset({
    "model", "input", "instructions", "stream", "max_output_tokens", "temperature", "top_p", "tools",
    "tool_choice", "parallel_tool_calls", "store", "user", "safety_identifier", "metadata", "prompt_cache_key",
    "prompt_cache_retention", "stream_options", "service_tier", "truncation", "text", "reasoning",
    "include", "top_logprobs", "background", "previous_response_id", "conversation",
})


def _response_id_from(upstream_id: Any) -> str:
    """``msg_01AB`` -> ``resp_01AB``: recognisably the same answer, in the Responses form."""
    if isinstance(upstream_id, str) and upstream_id:
        return "resp_" + upstream_id.removeprefix("msg_")
    return _new_id("resp_")


# --------------------------------------------------------------------------- Responses -> Anthropic request


def _texts(content: Any, path: str, *, assistant: bool) -> list[str]:
    """The text pieces of a message item's ``content`` (string or parts), empties dropped."""
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
        if kind in ("input_text", "output_text"):
            text = part.get("text")
            if not isinstance(text, str):
                raise TranslationError(f"{where}.text must be a string", where)
        elif kind == "refusal" and assistant:  # an earlier refusal, replayed in history
            text = part.get("refusal")
            if not isinstance(text, str):
                raise TranslationError(f"{where}.refusal must be a string", where)
        else:
            raise TranslationError(
                f"{where} has a content part type {_name(kind)} that is not supported for this model", where)
        if text:
            texts.append(text)
    return texts


def _arguments(arguments: Any, path: str) -> dict:
    """Responses sends function arguments as a JSON string (never an object, which wire's
    parser would take as it is); Anthropic wants the object."""
    if isinstance(arguments, dict):
        raise TranslationError(f"{path} must be a JSON string", path)
    return _parse_arguments(arguments, path)


def _input_to_turns(items: Any) -> tuple[list[str], list[dict]]:
    """(system texts, Anthropic messages) of a Responses ``input``."""
    if isinstance(items, str):
        return [], ([{"role": "user", "content": [{"type": "text", "text": items}]}] if items else [])
    if not isinstance(items, list):
        raise TranslationError("input must be a string or a list of items", "input")
    system: list[str] = []
    turns: list[dict] = []
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise TranslationError(f"{where} must be an object", where)
        kind = item.get("type")
        if kind is None and "role" not in item:
            raise TranslationError(f"{where} needs a type or a role", where)
        if kind in (None, "message"):
            role = item.get("role")
            content = item.get("content")
            if role in ("system", "developer"):
                system.extend(_texts(content, f"{where}.content", assistant=False))
            elif role == "user":
                texts = _texts(content, f"{where}.content", assistant=False)
                _append_turn(turns, "user", [{"type": "text", "text": t} for t in texts])
            elif role == "assistant":
                texts = _texts(content, f"{where}.content", assistant=True)
                _append_turn(turns, "assistant", [{"type": "text", "text": t} for t in texts])
            else:
                raise TranslationError(f"{where} has an unsupported role {_name(role)}", where)
        elif kind == "function_call":
            call_id = _tool_id(item.get("call_id"))
            if call_id is None:
                raise TranslationError(f"{where}.call_id is required", where)
            name = item.get("name")
            if not isinstance(name, str) or not name:
                raise TranslationError(f"{where}.name is required", where)
            if item.get("namespace") is not None:
                raise TranslationError(f"{where}.namespace is not supported for this model", where)
            _append_turn(turns, "assistant", [{"type": "tool_use", "id": call_id, "name": name,
                                               "input": _arguments(item.get("arguments"), f"{where}.arguments")}])
        elif kind == "function_call_output":
            call_id = _tool_id(item.get("call_id"))
            if call_id is None:
                raise TranslationError(f"{where}.call_id is required", where)
            output = item.get("output")
            texts = _texts(output, f"{where}.output", assistant=False)
            result: dict = {"type": "tool_result", "tool_use_id": call_id}
            if texts:
                result["content"] = "\n".join(texts)
            _append_turn(turns, "user", [result])
        else:
            raise TranslationError(f"{where} has an item type {_name(kind)} that is not supported for this model",
                                   where)
    for turn in turns:  # Anthropic: tool_result blocks come first in a user turn
        if turn["role"] == "user":
            turn["content"].sort(key=lambda block: block["type"] != "tool_result")
    return system, turns


def _tools_to_anthropic(tools: Any) -> list[dict]:
    if not isinstance(tools, list):
        raise TranslationError("tools must be a list", "tools")
    out = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise TranslationError(f"{where} must be an object", where)
        if tool.get("type") != "function":
            raise TranslationError(
                f"{where} is a tool of type {_name(tool.get('type'))}, which is not supported for this model; "
                "only function tools are", where)
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise TranslationError(f"{where}.name is required", where)
        params = tool.get("parameters")
        if params is None:
            params = {"type": "object", "properties": {}}
        elif not isinstance(params, dict):
            raise TranslationError(f"{where}.parameters must be an object", where)
        converted: dict = {"name": name, "input_schema": params}
        description = tool.get("description")
        if description is not None and not isinstance(description, str):
            raise TranslationError(f"{where}.description must be a string", where)
        if description:
            converted["description"] = description
        for key in tool:
            if key not in ("type", "name", "parameters", "description", "strict"):
                raise TranslationError(f"{where}.{key if _SAFE_NAME.match(key) else '(unrecognised)'} "
                                       "is not supported for this model", where)
        out.append(converted)
    return out


def _tool_choice_to_anthropic(choice: Any, parallel: Any) -> dict | None:
    if parallel is not None and not isinstance(parallel, bool):
        raise TranslationError("parallel_tool_calls must be true or false", "parallel_tool_calls")
    if choice is None or choice == "auto":
        result: dict | None = {"type": "auto"} if (choice == "auto" or parallel is False) else None
    elif choice == "none":
        return {"type": "none"}
    elif choice == "required":
        result = {"type": "any"}
    elif isinstance(choice, dict) and choice.get("type") == "function":
        name = choice.get("name")
        if not isinstance(name, str) or not name:
            raise TranslationError("tool_choice.name is required", "tool_choice")
        result = {"type": "tool", "name": name}
    else:
        kind = choice.get("type") if isinstance(choice, dict) else choice
        raise TranslationError(f"tool_choice {_name(kind)} is not supported for this model", "tool_choice")
    if result is not None and parallel is False:
        result["disable_parallel_tool_use"] = True
    return result


def _number(body: dict, key: str) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TranslationError(f"{key} must be a number", key)
    return value


def _refuse_unmappable(body: dict) -> None:
    """Fields Anthropic cannot carry, when set to anything but their default."""
    for key in body:
        if key not in _KNOWN_FIELDS and body[key] is not None:
            safe = isinstance(key, str) and _SAFE_NAME.match(key) is not None
            raise TranslationError(f"{key if safe else 'a field (unrecognised)'} is not supported for this model",
                                   key if safe else None)
    include = body.get("include")
    if include is not None and include != []:
        raise TranslationError("include is not supported for this model", "include")
    reasoning = body.get("reasoning")
    if reasoning is not None:
        if not isinstance(reasoning, dict) or any(
                v is not None for k, v in reasoning.items() if not (k == "effort" and v == "none")):
            raise TranslationError("reasoning is not supported for this model", "reasoning")
    text = body.get("text")
    if text is not None:
        if not isinstance(text, dict):
            raise TranslationError("text must be an object", "text")
        fmt = text.get("format")
        if fmt is not None and (not isinstance(fmt, dict) or fmt.get("type") != "text"):
            kind = fmt.get("type") if isinstance(fmt, dict) else None
            raise TranslationError(f"text.format {_name(kind)} is not supported for this model", "text.format")
        if text.get("verbosity") not in (None, "medium"):
            raise TranslationError("text.verbosity is not supported for this model", "text.verbosity")
        for key in text:
            if key not in ("format", "verbosity") and text[key] is not None:
                raise TranslationError("text has a field that is not supported for this model", "text")
    if body.get("truncation") not in (None, "disabled"):
        raise TranslationError("truncation 'auto' is not supported for this model", "truncation")
    if body.get("service_tier") not in (None, "auto", "default"):
        raise TranslationError(f"service_tier {_name(body.get('service_tier'))} is not supported for this model",
                               "service_tier")
    if body.get("top_logprobs") not in (None, 0):
        raise TranslationError("top_logprobs is not supported for this model", "top_logprobs")
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise TranslationError("metadata must be an object", "metadata")
    if "stream" in body and body["stream"] is not None and not isinstance(body["stream"], bool):
        raise TranslationError("stream must be true or false", "stream")


def responses_to_anthropic_request(body: dict, target_model: str) -> dict:
    """Turn a ``/v1/responses`` body into a ``/v1/messages`` body for ``target_model``.

    ``instructions`` and system/developer items become the top-level
    ``system``; ``function_call`` items become ``tool_use`` blocks and
    ``function_call_output`` items ``tool_result`` blocks; consecutive items of
    one role are merged (Anthropic requires alternation). ``max_output_tokens``
    becomes ``max_tokens`` (``DEFAULT_MAX_TOKENS`` when absent); ``temperature``
    is clamped to Anthropic's 0..1; ``user`` / ``safety_identifier`` becomes
    ``metadata.user_id``. Calls ``check_request`` first.
    """
    check_request(body)
    _refuse_unmappable(body)

    system: list[str] = []
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise TranslationError("instructions must be a string", "instructions")
        if instructions:
            system.append(instructions)
    more, turns = _input_to_turns(body.get("input"))
    system.extend(more)
    if not turns:
        raise TranslationError("input has no user or assistant content", "input")

    out: dict = {"model": target_model, "messages": turns}
    if system:
        out["system"] = "\n\n".join(system)

    max_tokens = body.get("max_output_tokens")
    if max_tokens is None:
        max_tokens = DEFAULT_MAX_TOKENS
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise TranslationError("max_output_tokens must be a positive integer", "max_output_tokens")
    out["max_tokens"] = max_tokens

    temperature = _number(body, "temperature")
    if temperature is not None:
        out["temperature"] = min(max(float(temperature), 0.0), 1.0)
    top_p = _number(body, "top_p")
    # top_p=1 is a no-op, and newer Claude models refuse temperature and top_p together.
    if top_p is not None and not (top_p >= 1 and temperature is not None):
        out["top_p"] = top_p

    if body.get("stream") is not None:
        out["stream"] = bool(body["stream"])

    tools = body.get("tools")
    if tools:
        out["tools"] = _tools_to_anthropic(tools)
        choice = _tool_choice_to_anthropic(body.get("tool_choice"), body.get("parallel_tool_calls"))
        if choice is not None:
            out["tool_choice"] = choice
    elif body.get("tool_choice") not in (None, "auto", "none"):
        raise TranslationError("tool_choice names a tool but tools is empty", "tool_choice")

    for key in ("safety_identifier", "user"):
        value = body.get(key)
        if value is not None and not isinstance(value, str):
            raise TranslationError(f"{key} must be a string", key)
        if value:
            out["metadata"] = {"user_id": value}
            break
    return out


# --------------------------------------------------------------------------- Anthropic -> Responses response


def _envelope(response_id: str, created_at: int, public_model: str, status: str, output: list[dict],
              usage: dict | None, request: dict | None, incomplete: str | None = None,
              error: dict | None = None) -> dict:
    """A Responses ``response`` object; the request's settings are echoed when it is given."""
    req = request if isinstance(request, dict) else {}
    instructions = req.get("instructions")
    metadata = req.get("metadata")
    out = {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "background": False,
        "error": error,
        "incomplete_details": {"reason": incomplete} if incomplete else None,
        "instructions": instructions if isinstance(instructions, str) else None,
        "max_output_tokens": req.get("max_output_tokens") if isinstance(req.get("max_output_tokens"), int) else None,
        "metadata": metadata if isinstance(metadata, dict) else {},
        "model": public_model,
        "output": output,
        "parallel_tool_calls": req.get("parallel_tool_calls") is not False,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "store": False,
        "temperature": req.get("temperature") if isinstance(req.get("temperature"), (int, float)) else None,
        "text": {"format": {"type": "text"}},
        "tool_choice": req.get("tool_choice") if req.get("tool_choice") is not None else "auto",
        "tools": req.get("tools") if isinstance(req.get("tools"), list) else [],
        "top_p": req.get("top_p") if isinstance(req.get("top_p"), (int, float)) else None,
        "truncation": "disabled",
        "usage": usage,
    }
    if status == "completed":
        out["completed_at"] = int(time.time())
    return out


def _text_part(text: str) -> dict:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def anthropic_to_responses_response(msg: dict, public_model: str, *, request: dict | None = None,
                                    created_at: int | None = None) -> dict:
    """Turn an Anthropic Message into a Responses ``response`` naming ``public_model``.

    Each run of text blocks becomes one ``message`` output item (one
    ``output_text`` part per block); each ``tool_use`` block a
    ``function_call`` item whose ``call_id`` is the tool-use id. A
    ``max_tokens`` stop makes the response ``incomplete`` with
    ``incomplete_details.reason`` ``max_output_tokens`` (a refusal:
    ``content_filter``). Thinking and server-tool blocks are left out (the
    request never asks for them). ``request``, the client's body, is echoed
    (tools, instructions, metadata...) as OpenAI does.
    """
    if not isinstance(msg, dict):
        raise TranslationError("the upstream response is not a JSON object")
    content = msg.get("content")
    if content is None:
        content = []
    if not isinstance(content, list):
        raise TranslationError("the upstream response content is not a list")
    incomplete = _INCOMPLETE.get(msg.get("stop_reason"))
    item_status = "incomplete" if incomplete else "completed"
    output: list[dict] = []
    message: dict | None = None
    for j, block in enumerate(content):
        if not isinstance(block, dict):
            raise TranslationError(f"the upstream response content[{j}] is not an object")
        kind = block.get("type")
        if kind == "text" and isinstance(block.get("text"), str):
            if message is None:
                message = {"id": _new_id("msg_"), "type": "message", "status": item_status, "role": "assistant",
                           "content": []}
                output.append(message)
            message["content"].append(_text_part(block["text"]))
        elif kind == "tool_use":
            message = None
            tool_input = block.get("input")
            output.append({"id": _new_id("fc_"), "type": "function_call", "status": item_status,
                           "call_id": block.get("id") if isinstance(block.get("id"), str) else _new_id("toolu_"),
                           "name": block.get("name") if isinstance(block.get("name"), str) else "",
                           "arguments": _dumps_str(tool_input if tool_input is not None else {})})
    usage = usage_to_responses(usage_from_anthropic(msg.get("usage")))
    return _envelope(_response_id_from(msg.get("id")), int(time.time()) if created_at is None else created_at,
                     public_model, "incomplete" if incomplete else "completed", output, usage, request, incomplete)


# --------------------------------------------------------------------------- stream


class AnthropicStreamToResponses:
    """Turn an Anthropic SSE stream into Responses stream events.

    ``feed`` each upstream event (its SSE ``event:`` name and parsed data);
    ``message_stop`` closes the response, or call ``finish()`` when the
    upstream ended without one. Both return ``(event_name, data)`` pairs for
    ``sse_responses``, each with the next ``sequence_number``.

    The sequence is OpenAI's: ``response.created``, ``response.in_progress``;
    per text run ``response.output_item.added``, then per text block
    ``response.content_part.added``, ``response.output_text.delta``...,
    ``response.output_text.done``, ``response.content_part.done``; per tool
    call ``response.output_item.added``, ``response.function_call_arguments.delta``...,
    ``response.function_call_arguments.done``; ``response.output_item.done``
    when the item is over; and ``response.completed`` (``response.incomplete``
    on a ``max_tokens`` stop; ``response.failed`` when the upstream stopped
    without saying why). An upstream ``error`` event becomes an ``error``
    event and ends the stream.

    Usage is not counted here: ``usage_of()`` is called for the closing event.
    """

    def __init__(self, public_model: str, usage_of: Callable[[], Usage], *, request: dict | None = None,
                 response_id: str | None = None, created_at: int | None = None) -> None:
        self._model = public_model
        self._usage_of = usage_of
        self._request = request
        self._id = response_id
        self._created = int(time.time()) if created_at is None else created_at
        self._seq = 0
        self._started = False
        self._items: list[dict] = []
        self._open: dict | None = None  # the output item not yet done
        self._part: tuple[int, int] | None = None  # (output_index, content_index) of the open text part
        self._blocks: dict[Any, tuple] = {}  # Anthropic block index -> ("text", out, part) | ("tool", out)
        self._args_done: set[int] = set()  # output indexes of calls whose arguments are final
        self._stop_reason: str | None = None
        self._stopped = False
        self.done = False

    def _emit(self, out: list, kind: str, **fields: Any) -> None:
        out.append((kind, {"type": kind, "sequence_number": self._seq, **fields}))
        self._seq += 1

    def _response(self, status: str, usage: dict | None = None, incomplete: str | None = None,
                  error: dict | None = None, output: list | None = None) -> dict:
        return _envelope(self._id, self._created, self._model, status,
                         copy.deepcopy(self._items) if output is None else output,
                         usage, self._request, incomplete, error)

    def _start(self, out: list, message_id: Any = None) -> None:
        if self._started:
            return
        self._started = True
        if self._id is None:
            self._id = _response_id_from(message_id)
        self._emit(out, "response.created", response=self._response("in_progress", output=[]))
        self._emit(out, "response.in_progress", response=self._response("in_progress", output=[]))

    def _close_part(self, out: list) -> None:
        if self._part is None:
            return
        index, content_index = self._part
        self._part = None
        item = self._items[index]
        part = item["content"][content_index]
        self._emit(out, "response.output_text.done", item_id=item["id"], output_index=index,
                   content_index=content_index, text=part["text"], logprobs=[])
        self._emit(out, "response.content_part.done", item_id=item["id"], output_index=index,
                   content_index=content_index, part=dict(part))

    def _close_tool(self, out: list, index: int) -> None:
        if index in self._args_done:
            return
        self._args_done.add(index)
        item = self._items[index]
        if not item["arguments"]:  # no input at all: the empty object, said as a delta too
            item["arguments"] = "{}"
            self._emit(out, "response.function_call_arguments.delta", item_id=item["id"], output_index=index,
                       delta="{}")
        self._emit(out, "response.function_call_arguments.done", item_id=item["id"], output_index=index,
                   arguments=item["arguments"])

    def _close_item(self, out: list) -> None:
        """End the open output item; its status is known only once the stop reason is."""
        item = self._open
        if item is None:
            return
        self._close_part(out)
        index = self._items.index(item)
        if item["type"] == "function_call":
            self._close_tool(out, index)
        item["status"] = "incomplete" if self._stop_reason in _INCOMPLETE else "completed"
        self._open = None
        self._emit(out, "response.output_item.done", output_index=index, item=copy.deepcopy(item))

    def _open_item(self, out: list, item: dict) -> int:
        self._close_item(out)
        self._items.append(item)
        self._open = item
        index = len(self._items) - 1
        self._emit(out, "response.output_item.added", output_index=index, item=copy.deepcopy(item))
        return index

    def _text_delta(self, out: list, text: str) -> None:
        index, content_index = self._part  # type: ignore[misc]
        item = self._items[index]
        item["content"][content_index]["text"] += text
        self._emit(out, "response.output_text.delta", item_id=item["id"], output_index=index,
                   content_index=content_index, delta=text, logprobs=[])

    def _args_delta(self, out: list, index: int, fragment: str) -> None:
        item = self._items[index]
        item["arguments"] += fragment
        self._emit(out, "response.function_call_arguments.delta", item_id=item["id"], output_index=index,
                   delta=fragment)

    def feed(self, event_type: str, data: dict) -> list[tuple[str, dict]]:
        """One upstream event (its SSE ``event:`` name and parsed ``data``) -> events to send."""
        if self.done:
            return []
        if not isinstance(data, dict):
            data = {}
        kind = event_type or data.get("type")
        out: list[tuple[str, dict]] = []
        if kind == "message_start":
            message = data.get("message") if isinstance(data.get("message"), dict) else {}
            self._start(out, message.get("id"))
        elif kind == "content_block_start":
            self._start(out)
            block = data.get("content_block") if isinstance(data.get("content_block"), dict) else {}
            key = data.get("index")
            if block.get("type") == "text":
                if self._open is None or self._open["type"] != "message":
                    self._open_item(out, {"id": _new_id("msg_"), "type": "message", "status": "in_progress",
                                          "role": "assistant", "content": []})
                else:
                    self._close_part(out)
                index = len(self._items) - 1
                item = self._items[index]
                item["content"].append(_text_part(""))
                content_index = len(item["content"]) - 1
                self._part = (index, content_index)
                self._blocks[key] = ("text", index, content_index)
                self._emit(out, "response.content_part.added", item_id=item["id"], output_index=index,
                           content_index=content_index, part=_text_part(""))
                if isinstance(block.get("text"), str) and block["text"]:
                    self._text_delta(out, block["text"])
            elif block.get("type") == "tool_use":
                call_id = block.get("id") if isinstance(block.get("id"), str) and block["id"] else _new_id("toolu_")
                index = self._open_item(out, {"id": _new_id("fc_"), "type": "function_call", "status": "in_progress",
                                              "arguments": "", "call_id": call_id,
                                              "name": block.get("name") if isinstance(block.get("name"), str) else ""})
                self._blocks[key] = ("tool", index)
                if isinstance(block.get("input"), dict) and block["input"]:
                    self._args_delta(out, index, _dumps_str(block["input"]))
            # thinking, server tools: nothing a Responses client is owed (the request never asks for them)
        elif kind == "content_block_delta":
            delta = data.get("delta") if isinstance(data.get("delta"), dict) else {}
            where = self._blocks.get(data.get("index"))
            if where is None:
                return out
            if where[0] == "text" and delta.get("type") == "text_delta":
                text = delta.get("text")
                if isinstance(text, str) and text and self._part == (where[1], where[2]):
                    self._text_delta(out, text)
            elif where[0] == "tool" and delta.get("type") == "input_json_delta":
                fragment = delta.get("partial_json")
                if isinstance(fragment, str) and fragment and where[1] not in self._args_done:
                    self._args_delta(out, where[1], fragment)
        elif kind == "content_block_stop":
            where = self._blocks.get(data.get("index"))
            if where is not None and where[0] == "text" and self._part == (where[1], where[2]):
                self._close_part(out)
            elif where is not None and where[0] == "tool":
                self._close_tool(out, where[1])
        elif kind == "message_delta":
            delta = data.get("delta") if isinstance(data.get("delta"), dict) else {}
            if isinstance(delta.get("stop_reason"), str):
                self._stop_reason = delta["stop_reason"]
        elif kind == "message_stop":
            self._stopped = True
            out.extend(self.finish())
        elif kind == "error":
            error = data.get("error") if isinstance(data.get("error"), dict) else {}
            self.done = True
            message = error.get("message") if isinstance(error.get("message"), str) else "upstream error"
            type_ = error.get("type") if isinstance(error.get("type"), str) else "api_error"
            out.append(("error", error_event(message, type_, sequence_number=self._seq)))
            self._seq += 1
        # ping and unknown events: nothing to send
        return out

    def finish(self) -> list[tuple[str, dict]]:
        """Close the response: the open item, then ``response.completed`` (or ``.incomplete`` / ``.failed``).

        Called by ``message_stop``; call it yourself if the upstream ended
        without one. ``usage_of()`` gives the usage of the closing event.
        """
        if self.done:
            return []
        out: list[tuple[str, dict]] = []
        self._start(out)
        self._close_item(out)
        self.done = True
        usage = usage_to_responses(self._usage_of())
        if self._stop_reason is None and not self._stopped:
            error = {"code": "server_error", "message": "The provider's stream ended before the answer was complete."}
            self._emit(out, "response.failed", response=self._response("failed", usage, error=error))
        elif self._stop_reason in _INCOMPLETE:
            self._emit(out, "response.incomplete",
                       response=self._response("incomplete", usage, _INCOMPLETE[self._stop_reason]))
        else:
            self._emit(out, "response.completed", response=self._response("completed", usage))
        return out
