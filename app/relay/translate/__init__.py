"""Translation directions: a client of one API shape served by a provider of another.

Each module is one direction, named `<client shape>_via_<provider shape>`, and
carries three things across: the request out, a whole answer back, and a
stream's events back. They are pure (dicts in, dicts out) and refuse what the
other side cannot express with a `TranslationError` naming the field, never a
silent drop. `direction(client, provider)` is the only lookup; None means the
shapes are the same and the bytes pass through.

A stream translator never counts usage: it reads it from the provider shape's
stream meter (app/relay/meters.py), which the relay feeds first.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from app.relay.responses import sse_responses
from app.relay.translate import chat_via_messages, messages_via_chat, responses_via_messages
from app.relay.wire import SSE_OPENAI_DONE, Usage, sse_anthropic, sse_openai


class _ChatViaMessagesStream:
    def __init__(self, public_model: str, body: dict, meter) -> None:
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        self.t = chat_via_messages.AnthropicStreamToOpenAI(public_model, include_usage=include_usage, meter=meter)

    def feed(self, name: str, obj: Any) -> list[bytes]:
        return [sse_openai(c) for c in self.t.feed(name, obj)]

    def finish(self) -> list[bytes]:
        return [sse_openai(c) for c in self.t.finish()] + [SSE_OPENAI_DONE]


class _MessagesViaChatStream:
    def __init__(self, public_model: str, body: dict, meter) -> None:
        self.t = messages_via_chat.OpenAIStreamToAnthropic(public_model, meter=meter)

    def feed(self, name: str, obj: Any) -> list[bytes]:
        if obj is None:  # [DONE]: the closing events come from finish()
            return []
        return [sse_anthropic(e, d) for e, d in self.t.feed(obj)]

    def finish(self) -> list[bytes]:
        return [sse_anthropic(e, d) for e, d in self.t.finish()]


class _ResponsesViaMessagesStream:
    def __init__(self, public_model: str, body: dict, meter) -> None:
        self.t = responses_via_messages.AnthropicStreamToResponses(public_model, lambda: meter.usage or Usage(),
                                                                   request=body)

    def feed(self, name: str, obj: Any) -> list[bytes]:
        return [sse_responses(e, d) for e, d in self.t.feed(name, obj)]

    def finish(self) -> list[bytes]:
        return [sse_responses(e, d) for e, d in self.t.finish()]


@dataclass(frozen=True)
class Direction:
    request: Callable[[dict, str], dict]          # (client body, provider's model name) -> provider body
    response: Callable[[dict, str, dict], dict]   # (provider answer, public model name, client body) -> answer
    stream: Callable[[str, dict, Any], Any]       # (public model, client body, meter) -> .feed(name, obj), .finish()


_DIRECTIONS = {
    ("chat", "messages"): Direction(chat_via_messages.openai_to_anthropic_request,
                                    lambda obj, model, body: chat_via_messages.anthropic_to_openai_response(obj, model),
                                    _ChatViaMessagesStream),
    ("messages", "chat"): Direction(messages_via_chat.anthropic_to_openai_request,
                                    lambda obj, model, body: messages_via_chat.openai_to_anthropic_response(obj, model),
                                    _MessagesViaChatStream),
    ("responses", "messages"): Direction(responses_via_messages.responses_to_anthropic_request,
                                         lambda obj, model, body:
                                             responses_via_messages.anthropic_to_responses_response(
                                                 obj, model, request=body),
                                         _ResponsesViaMessagesStream),
}


def direction(client: str, provider: str) -> Direction | None:
    """How a client shape is carried to a provider shape; None when they are the same."""
    if client == provider:
        return None
    return _DIRECTIONS[(client, provider)]
