"""Stream meters: the one place a streamed answer's usage is counted (P22).

One meter per provider shape reads the provider's events as they pass, whether
the relay forwards them untouched or translates them for a client of another
shape; a translator that needs the usage (for the usage chunk or the closing
``message_delta`` it writes) reads it from the meter, never counts it again.

Every meter has the same face:
  ``usage``      the provider's counts so far (``reported`` False until final), or None;
  ``chars_out``  characters of answer (text and tool arguments) seen, for an estimate;
  ``clean_end``  the provider ended the stream the proper way;
  ``error``      the provider reported a failure inside the stream;
  ``feed(name, obj)``  one event (its SSE name and parsed data; None for a
                 non-JSON end marker such as ``[DONE]``) -> answer characters in it.
"""
from __future__ import annotations

from typing import Any

from app.relay.responses import usage_from_responses
from app.relay.wire import Usage, _int, usage_from_anthropic, usage_from_openai


class StreamMeter:
    """The state every meter keeps (see the module docstring)."""

    def __init__(self) -> None:
        self.usage: Usage | None = None
        self.chars_out = 0
        self.clean_end = False
        self.error = False


class ChatStreamMeter(StreamMeter):
    """OpenAI chat-completion chunks: usage in the last chunk (``stream_options.include_usage``)."""

    def feed(self, name: str, obj: Any) -> int:
        if obj is None:  # data: [DONE]
            self.clean_end = True
            return 0
        if not isinstance(obj, dict):
            return 0
        if "error" in obj:
            self.error = True
        usage = obj.get("usage")
        if isinstance(usage, dict) and usage:
            self.usage = usage_from_openai(usage)
        n = chat_chars(obj)
        self.chars_out += n
        return n


def chat_chars(obj: dict) -> int:
    """Answer characters in a chat completion or chunk: content and tool-call arguments."""
    n = 0
    for choice in obj.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        msg = choice.get("message") or choice.get("delta") or {}
        c = msg.get("content")
        if isinstance(c, str):
            n += len(c)
        for tc in msg.get("tool_calls") or ():
            n += len(((tc or {}).get("function") or {}).get("arguments") or "")
    return n


class MessagesStreamMeter(StreamMeter):
    """Anthropic Messages events. ``message_start`` carries the exact input and
    cache counts and a provisional output count; ``message_delta`` carries the
    final (cumulative) counts, so a stream cut before it is an estimate."""

    def feed(self, name: str, obj: Any) -> int:
        if not isinstance(obj, dict):
            return 0
        kind = name or obj.get("type", "")
        if kind == "message_start":
            message = obj.get("message") if isinstance(obj.get("message"), dict) else {}
            self.usage = usage_from_anthropic(message.get("usage"))
            self.usage.reported = False
        elif kind == "message_delta":
            usage = obj.get("usage") if isinstance(obj.get("usage"), dict) else {}
            u = self.usage or Usage()
            if "output_tokens" in usage:
                u.output_tokens = _int(usage.get("output_tokens"))
            if usage.get("input_tokens") is not None:
                u.input_tokens = _int(usage["input_tokens"])
            if usage.get("cache_read_input_tokens") is not None:
                u.cache_read_tokens = _int(usage["cache_read_input_tokens"])
            if usage.get("cache_creation_input_tokens") is not None:
                u.cache_write_tokens = _int(usage["cache_creation_input_tokens"])
            if usage:
                u.reported = True
            self.usage = u
        elif kind == "message_stop":
            self.clean_end = True
        elif kind == "error":
            self.error = True
        delta = obj.get("delta") if isinstance(obj.get("delta"), dict) else {}
        text, partial = delta.get("text"), delta.get("partial_json")
        n = (len(text) if isinstance(text, str) else 0) + (len(partial) if isinstance(partial, str) else 0)
        self.chars_out += n
        return n


class ResponsesStreamMeter(StreamMeter):
    """OpenAI Responses events (a Responses-shaped provider, passed through). The
    provider's counts come in the closing ``response.completed`` /
    ``response.incomplete`` / ``response.failed`` (None until then); answer
    characters are the text, refusal and tool-call argument deltas; an ``error``
    or ``response.failed`` event is an error."""

    _DELTAS = frozenset({"response.output_text.delta", "response.refusal.delta",
                         "response.function_call_arguments.delta", "response.custom_tool_call_input.delta"})
    _ENDS = frozenset({"response.completed", "response.incomplete", "response.failed"})

    def feed(self, name: str, obj: Any) -> int:
        if not isinstance(obj, dict):
            return 0
        kind = name or obj.get("type")
        if kind in self._DELTAS:
            delta = obj.get("delta")
            n = len(delta) if isinstance(delta, str) else 0
            self.chars_out += n
            return n
        if kind in self._ENDS:
            self.clean_end = True
            if kind == "response.failed":
                self.error = True
            response = obj.get("response")
            if isinstance(response, dict) and isinstance(response.get("usage"), dict):
                self.usage = usage_from_responses(response["usage"])
        elif kind == "error":
            self.error = True
        return 0

