"""One adapter per API shape: everything the relay knows about a shape, in one place.

A *shape* is an endpoint's wire format: OpenAI chat completions, OpenAI
embeddings, Anthropic Messages (and the Responses API, app/relay/responses.py).
A client speaks one; a provider is called in one. Each adapter says, for its
shape: which body a client must send (`check`), which shape a provider is
called in to serve it (`upstream`), the path and headers of that call and the
body's last touches (`path`, `headers`, `prepare`), how to read usage and
answer length from a whole answer (`usage`, `chars`), and how to read its
stream (`events`, `meter`, `passthrough`). A *family* (OpenAI, Anthropic)
owns the error body and the model objects its SDK expects.

When the client's shape and the provider's differ, a translation direction
(app/relay/translate/) carries the request, the answer and the stream across.
Nothing here does I/O.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import orjson

from app.relay import meters, responses
from app.relay.providers import Provider
from app.relay.wire import (
    SSE_OPENAI_DONE,
    Usage,
    anthropic_error,
    error_type_for_status,
    openai_error,
    sse_anthropic,
    sse_openai,
    usage_from_anthropic,
    usage_from_openai,
)

ANTHROPIC_VERSION = "2023-06-01"


# ---- families: the error body and the model objects of each SDK -----------------------

class Family:
    name: str
    not_found_type: str
    billing_type: str         # the error type of a request refused by a budget or balance (402)

    def error_type(self, status: int) -> str:
        return error_type_for_status(status, self.name)

    def error(self, status: int, message: str, type_: str | None, request_id: str, param: str | None = None) -> dict:
        raise NotImplementedError

    def stream_error(self, message: str, request_id: str) -> bytes:
        """An error event inside a stream that has already begun."""
        raise NotImplementedError

    def model(self, name: str, created: int) -> dict:
        raise NotImplementedError

    def models(self, entries: list[tuple[str, int]]) -> dict:
        raise NotImplementedError


class _OpenAI(Family):
    name = "openai"
    not_found_type = "invalid_request_error"
    billing_type = "insufficient_quota"

    def error(self, status, message, type_, request_id, param=None):
        return openai_error(status, message, type_, param=param)

    def stream_error(self, message, request_id):
        return sse_openai(openai_error(502, message))

    def model(self, name, created):
        return {"id": name, "object": "model", "created": created, "owned_by": "relay"}

    def models(self, entries):
        return {"object": "list", "data": [self.model(n, c) for n, c in entries]}


class _Anthropic(Family):
    name = "anthropic"
    not_found_type = "not_found_error"
    billing_type = "billing_error"

    def error(self, status, message, type_, request_id, param=None):
        return anthropic_error(type_ or error_type_for_status(status, "anthropic"), message, request_id=request_id)

    def stream_error(self, message, request_id):
        return sse_anthropic("error", anthropic_error("api_error", message, request_id=request_id))

    def model(self, name, created):
        return {"type": "model", "id": name, "display_name": name,
                "created_at": datetime.fromtimestamp(created, timezone.utc).isoformat()}

    def models(self, entries):
        data = [self.model(n, c) for n, c in entries]
        return {"data": data, "has_more": False, "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None}


OPENAI, ANTHROPIC = _OpenAI(), _Anthropic()
FAMILIES = {f.name: f for f in (OPENAI, ANTHROPIC)}


# ---- the shapes ----------------------------------------------------------------------------

def sse_fields(event: bytes) -> tuple[str, bytes]:
    """(event name, data) of one server-sent event."""
    name, data = "", b""
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            data = line[5:].strip() if not data else data + b"\n" + line[5:].strip()
        elif line.startswith(b"event:"):
            name = line[6:].strip().decode()
    return name, data


class Shape:
    name: str
    family: Family
    path: str                 # under the provider's base URL
    streams = True            # a client may ask for a stream
    unsupported = "This model cannot serve this endpoint."

    # -- as the client's shape
    def check(self, body: dict) -> str | None:
        """What is wrong with a client's body before anything goes upstream, or None
        (or a TranslationError raised, when the problem is one field: it names it)."""
        return None

    def upstream(self, provider: Provider) -> Shape | None:
        """The shape `provider` is called in to answer this client shape; None if it cannot."""
        raise NotImplementedError

    def passthrough(self, raw: bytes, obj: Any, body: dict) -> bytes | None:
        """A provider event of this shape as it goes to a client of the same shape (None: hold it back)."""
        return raw

    metered = True            # a call of this shape gets a usage row
    # Where a client caps the answer's tokens, read in this order; a budget's
    # cap is written to the first. Empty: the shape answers no output tokens.
    output_fields: tuple[str, ...] = ()

    def output_cap(self, body: dict) -> int | None:
        """The most output tokens this body allows (0: a shape with no output; None: no cap set)."""
        if not self.output_fields:
            return 0
        for name in self.output_fields:
            value = body.get(name)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
        return None

    def stream_error(self, message: str, request_id: str) -> bytes:
        """An error event for a stream of this shape that has already begun."""
        return self.family.stream_error(message, request_id)

    def end(self) -> list[bytes]:
        """What closes a stream of this shape for a client after the translated events (if anything)."""
        return []

    # -- as the provider's shape
    def headers(self, provider: Provider, client_headers, same: bool, stream: bool) -> dict:
        raise NotImplementedError

    def prepare(self, body: dict, stream: bool) -> dict:
        """Last touches to the body that goes to a provider in this shape."""
        return body

    def usage(self, obj: dict) -> Usage:
        raise NotImplementedError

    def chars(self, obj: dict) -> int:
        """Characters of answer in a whole response: the basis of an estimate."""
        raise NotImplementedError

    def meter(self):
        """A new stream meter for this shape (app/relay/meters.py)."""
        raise NotImplementedError

    def event(self, raw: bytes) -> tuple[str, Any] | None:
        """One SSE event -> (name, parsed data); None for an event to skip. A
        non-JSON end marker parses as (name, None)."""
        name, data = sse_fields(raw)
        if not data:
            return None
        try:
            return name, orjson.loads(data)
        except orjson.JSONDecodeError:
            return None


def _openai_headers(provider: Provider, stream: bool) -> dict:
    h = {"Content-Type": "application/json", "Accept": "text/event-stream" if stream else "application/json"}
    if provider.api_key:
        h["Authorization"] = "Bearer " + provider.api_key
    return h


class Chat(Shape):
    """OpenAI chat completions: POST {base}/chat/completions."""
    name, family, path = "chat", OPENAI, "/chat/completions"
    output_fields = ("max_completion_tokens", "max_tokens")

    def check(self, body):
        if not isinstance(body.get("messages"), list):
            return "messages: a list is required."
        return None

    def upstream(self, provider):
        return MESSAGES if provider.shape == "anthropic" else CHAT

    def passthrough(self, raw, obj, body):
        if obj is None:
            return SSE_OPENAI_DONE
        if not obj.get("choices") and obj.get("usage") and not (body.get("stream_options") or {}).get("include_usage"):
            return None  # asked upstream for our metering; the client did not ask
        return raw

    def end(self):
        return [SSE_OPENAI_DONE]

    def headers(self, provider, client_headers, same, stream):
        return _openai_headers(provider, stream)

    def prepare(self, body, stream):
        if stream:  # the usage chunk is how a stream is metered
            body["stream"] = True
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        return body

    def usage(self, obj):
        return usage_from_openai(obj.get("usage"))

    def chars(self, obj):
        return meters.chat_chars(obj)

    def meter(self):
        return meters.ChatStreamMeter()

    def event(self, raw):
        name, data = sse_fields(raw)
        if data == b"[DONE]":
            return name, None
        return super().event(raw)


class Embeddings(Shape):
    """OpenAI embeddings: POST {base}/embeddings, never streamed, served by OpenAI-shaped providers only."""
    name, family, path = "embeddings", OPENAI, "/embeddings"
    streams = False
    unsupported = "The model '{model}' does not create embeddings."

    def check(self, body):
        if body.get("input") in (None, "", []):
            return "input: text or a list of texts is required."
        return None

    def upstream(self, provider):
        return EMBEDDINGS if provider.shape == "openai" else None

    def headers(self, provider, client_headers, same, stream):
        return _openai_headers(provider, False)

    def usage(self, obj):
        return usage_from_openai(obj.get("usage"))

    def chars(self, obj):
        return 0  # an embedding is not text: only the input counts


class Messages(Shape):
    """Anthropic Messages: POST {base}/v1/messages."""
    name, family, path = "messages", ANTHROPIC, "/v1/messages"
    output_fields = ("max_tokens",)

    def check(self, body):
        max_tokens = body.get("max_tokens")
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
            return "max_tokens: an integer is required."
        if not isinstance(body.get("messages"), list):
            return "messages: a list is required."
        return None

    def upstream(self, provider):
        return MESSAGES if provider.shape == "anthropic" else CHAT

    def headers(self, provider, client_headers, same, stream):
        h = {"Content-Type": "application/json", "Accept": "text/event-stream" if stream else "application/json",
             "anthropic-version": client_headers.get("anthropic-version") or ANTHROPIC_VERSION}
        if same and client_headers.get("anthropic-beta"):
            h["anthropic-beta"] = client_headers["anthropic-beta"]
        if provider.api_key:
            h["x-api-key"] = provider.api_key
        return h

    def usage(self, obj):
        return usage_from_anthropic(obj.get("usage"))

    def chars(self, obj):
        n = 0
        for block in obj.get("content") or ():
            if block.get("type") == "text":
                n += len(block.get("text") or "")
            elif block.get("type") == "tool_use":
                n += len(orjson.dumps(block.get("input") or {}))
        return n

    def meter(self):
        return meters.MessagesStreamMeter()


class CountTokens(Shape):
    """Anthropic's token counter: POST {base}/v1/messages/count_tokens, passed through to
    Anthropic-shaped providers. It is free and answers no model output, so it
    counts against the request limits but gets no usage row."""
    name, family, path = "count_tokens", ANTHROPIC, "/v1/messages/count_tokens"
    streams = False
    metered = False
    unsupported = "The model '{model}' cannot count tokens: its providers do not speak the Messages API."

    def check(self, body):
        if not isinstance(body.get("messages"), list):
            return "messages: a list is required."
        return None

    def upstream(self, provider):
        return COUNT_TOKENS if provider.shape == "anthropic" else None

    def headers(self, provider, client_headers, same, stream):
        return MESSAGES.headers(provider, client_headers, same, False)

    def usage(self, obj):
        return Usage()

    def chars(self, obj):
        return 0


class Responses(Shape):
    """OpenAI's Responses API: POST {base}/responses on OpenAI-shaped providers, translated
    to Messages for Anthropic-shaped ones (app/relay/translate/responses_via_messages.py).
    Nothing stateful: the relay keeps no responses, so a request that needs one is
    refused (app/relay/responses.py)."""
    name, family, path = "responses", OPENAI, "/responses"
    output_fields = ("max_output_tokens",)

    def check(self, body):
        responses.check_request(body)  # a TranslationError names the field
        return None

    def upstream(self, provider):
        return MESSAGES if provider.shape == "anthropic" else RESPONSES

    def stream_error(self, message, request_id):
        return responses.sse_responses("error", responses.error_event(message))

    def headers(self, provider, client_headers, same, stream):
        return _openai_headers(provider, stream)

    def prepare(self, body, stream):
        if body.get("store") is None:
            body["store"] = False  # OpenAI would keep the conversation otherwise
        return body

    def usage(self, obj):
        return responses.usage_from_responses(obj.get("usage"))

    def chars(self, obj):
        return responses.responses_text_chars(obj)

    def meter(self):
        return meters.ResponsesStreamMeter()


CHAT, EMBEDDINGS, MESSAGES = Chat(), Embeddings(), Messages()
COUNT_TOKENS, RESPONSES = CountTokens(), Responses()

