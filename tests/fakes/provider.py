"""A fake LLM provider on loopback that speaks the OpenAI and Anthropic HTTP APIs, with faults on demand.

The relay's tests and benchmarks point the relay at this server instead of the
real providers (STYLE.md habit 6: a real server, not a mock of our own code).
It follows the providers' wire formats closely enough that the official
`openai` and `anthropic` SDKs work against it unchanged, and it answers
deterministically so that tests can assert on content and usage:

* the reply echoes the last user message: ``"echo: <text>"``;
* a token is a whitespace-separated word: prompt tokens are the words of every
  message (and the Anthropic ``system``), at least 1; completion tokens are the
  words of the reply (of the arguments, for a tool call);
* ``POST /v1/responses`` (OpenAI's Responses API) answers the same way, as a
  ``response`` object or its ``response.*`` event stream; its prompt tokens are
  the words of ``instructions`` and of every input item (a function call's
  output included), and ``input_tokens`` includes the cached ones, as OpenAI
  reports them. Requests are recorded as sent (``store`` included);
* with ``tools`` in the request and the word "weather" in the last user turn,
  the model calls the first tool with the arguments ``{"city": "Paris"}``. Once
  the conversation ends with a tool result it answers in text, so an agent
  loop ends.

OpenAI routes want ``Authorization: Bearer <api_key>``; Anthropic routes want
``x-api-key: <api_key>`` or, as anthropic SDK 2.x sends it, the Bearer header.
A missing or wrong key gets the provider's own 401 body.

Faults (the keys of ``FAULTS``) are queued with ``push_fault``, each consumed by
the next request, or made sticky with ``set_default_fault``; a queued fault is
laid over the default one.

For benchmarks it runs on its own, recording nothing:
``python -m tests.fakes.provider --port 8900 [--quiet]``.
"""
from __future__ import annotations

import argparse
import base64
import collections
import hashlib
import itertools
import json
import re
import select
import signal
import socket
import struct
import threading
import time
import traceback
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.fakes.loopback import LoopbackServer

DEFAULT_KEY = "sk-fake-upstream"
DEFAULT_MODELS = ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small", "claude-sonnet-4-5", "claude-haiku-4-5")
TOOL_ARGUMENTS = '{"city": "Paris"}'
EMBEDDING_DIMS = 8

# What a fault may say; see FakeProvider.push_fault for the meaning of each.
FAULTS = frozenset({
    "status", "retry_after", "message", "error_type",
    "slow_first_byte", "hang", "drop_after", "error_after", "chunk_delay", "chunks",
    "wrong_usage", "cached_tokens", "cache_creation_tokens", "reply",
})
WRONG_USAGE = (True, "zero", "absent", "inflated")

# One encoder for the whole process: building it per response costs more than small bodies.
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_WORD = re.compile(r"\S+")
_PIECE = re.compile(r"\s*\S+")
_WEATHER = re.compile(r"\bweather\b", re.IGNORECASE)
_ids = itertools.count(1)
_REASONS = {s.value: s.phrase for s in HTTPStatus} | {529: "Overloaded"}
_FINGERPRINT = "fp_fake0001"
_NO_FAULT: dict[str, Any] = {}

# Per status: the error type (and OpenAI code) and message each provider really sends.
_OPENAI_ERRORS = {
    400: ("invalid_request_error", None, "Bad request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("invalid_request_error", "unsupported_country_region_territory",
          "Country, region, or territory not supported"),
    404: ("invalid_request_error", None, "The requested resource does not exist."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests. Please try again in 1s."),
    500: ("server_error", None, "The server had an error while processing your request. Sorry about that!"),
    502: ("server_error", None, "Bad gateway."),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
}
_ANTHROPIC_ERRORS = {
    400: ("invalid_request_error", "Bad request."),
    401: ("authentication_error", "invalid x-api-key"),
    403: ("permission_error", "Your API key does not have permission to use the specified resource."),
    404: ("not_found_error", "Not found."),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Number of requests has exceeded your rate limit."),
    500: ("api_error", "Internal server error"),
    503: ("overloaded_error", "Overloaded"),
    504: ("timeout_error", "Request timed out."),
    529: ("overloaded_error", "Overloaded"),
}


def _json(obj: Any) -> bytes:
    return _encode(obj).encode()


def _words(text: str) -> int:
    return len(text.split())


def _new_id(prefix: str) -> str:
    return f"{prefix}{next(_ids):016x}"


@dataclass(slots=True)
class RecordedRequest:
    """One request as the fake received it; header names are lower-cased."""
    method: str
    path: str
    headers: dict[str, str]
    body: Any  # the parsed JSON, or None when there was no body or it was not JSON
    raw: bytes


@dataclass(slots=True)
class _Turn:
    """What the model 'says' to one request, in provider-neutral terms."""
    text: str
    tool: str | None  # name of the tool it calls, if any
    reason: str  # "end", "length", "stop" or "tool"
    stop_hit: str | None
    prompt_tokens: int
    completion_tokens: int


# ----------------------------------------------------------------------------- the model

def _content_text(content: Any) -> str:
    """The text of a message's content: a string, or the text (and tool-result) parts of a list."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    parts = []
    for part in content:
        if not isinstance(part, dict):
            continue
        text = part.get("text")
        if isinstance(text, str):
            parts.append(text)
        elif part.get("type") == "tool_result":
            parts.append(_content_text(part.get("content")))
    return " ".join(parts)


def _cut(text: str, max_words: Any, stops: Any) -> tuple[str, str, str | None]:
    """Where generation would end: at a stop string, after max_words words, or at the end."""
    if isinstance(stops, str):
        stops = [stops]
    cut, hit = len(text), None
    for s in stops or ():
        if isinstance(s, str) and s:
            i = text.find(s)
            if 0 <= i < cut:
                cut, hit = i, s
    if isinstance(max_words, int) and not isinstance(max_words, bool):
        limit = 0
        for n, m in enumerate(_WORD.finditer(text), 1):
            if n > max_words:
                if limit < cut:
                    return text[:limit], "length", None
                break
            limit = m.end()
    if hit is not None:
        return text[:cut], "stop", hit
    return text, "end", None


def _pick_tool(names: list[str], mode: str, forced: str | None, last_text: str, after_result: bool) -> str | None:
    if not names or mode == "none":
        return None
    if forced:
        return forced if forced in names else names[0]
    if mode == "required" or (not after_result and _WEATHER.search(last_text)):
        return names[0]
    return None


def _finish(text: str, tool: str | None, prompt_words: int, max_words: Any, stops: Any) -> _Turn:
    prompt_tokens = max(prompt_words, 1)
    if tool:
        return _Turn("", tool, "tool", None, prompt_tokens, _words(TOOL_ARGUMENTS))
    text, reason, hit = _cut(text, max_words, stops)
    return _Turn(text, None, reason, hit, prompt_tokens, _words(text))


def _openai_turn(body: dict, last_text: str, fault: dict) -> _Turn:
    messages = body.get("messages") or []
    prompt_words = sum(_words(_content_text(m.get("content"))) for m in messages if isinstance(m, dict))
    names = [t["function"]["name"] for t in body.get("tools") or ()
             if isinstance(t, dict) and isinstance(t.get("function"), dict) and "name" in t["function"]]
    choice = body.get("tool_choice")
    mode, forced = (choice, None) if isinstance(choice, str) else ("auto", None)
    if isinstance(choice, dict):
        forced = (choice.get("function") or {}).get("name")
    after_result = bool(messages) and isinstance(messages[-1], dict) and messages[-1].get("role") == "tool"
    tool = _pick_tool(names, mode, forced, last_text, after_result)
    max_words = body.get("max_completion_tokens", body.get("max_tokens"))
    text = fault.get("reply", f"echo: {last_text}")
    return _finish(text, tool, prompt_words, max_words, body.get("stop"))


def _anthropic_turn(body: dict, last_text: str, fault: dict) -> _Turn:
    messages = body.get("messages") or []
    prompt_words = _words(_content_text(body.get("system"))) + sum(
        _words(_content_text(m.get("content"))) for m in messages if isinstance(m, dict))
    names = [t["name"] for t in body.get("tools") or () if isinstance(t, dict) and "name" in t]
    choice = body.get("tool_choice") if isinstance(body.get("tool_choice"), dict) else {}
    mode = {"any": "required", "none": "none"}.get(choice.get("type"), "auto")
    forced = choice.get("name") if choice.get("type") == "tool" else None
    last = messages[-1] if messages and isinstance(messages[-1], dict) else {}
    after_result = isinstance(last.get("content"), list) and any(
        isinstance(b, dict) and b.get("type") == "tool_result" for b in last["content"])
    tool = _pick_tool(names, mode, forced, last_text, after_result)
    text = fault.get("reply", f"echo: {last_text}")
    return _finish(text, tool, prompt_words, body.get("max_tokens"), body.get("stop_sequences"))


def _responses_items(body: dict) -> list:
    """The Responses ``input`` as a list of items (a string is one user message)."""
    items = body.get("input")
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    return [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []


def _item_text(item: dict) -> str:
    """The text of a Responses input item: a message's content, or a function call output's output."""
    if item.get("type") == "function_call_output":
        return _content_text(item.get("output"))
    if item.get("type") in (None, "message"):
        return _content_text(item.get("content"))
    return ""


def _responses_turn(body: dict, fault: dict) -> _Turn:
    items = _responses_items(body)
    prompt_words = _words(body.get("instructions") if isinstance(body.get("instructions"), str) else "") + sum(
        _words(_item_text(i)) for i in items)
    last_text = next((_content_text(i.get("content")) for i in reversed(items)
                      if i.get("role") == "user" and i.get("type") in (None, "message")), "")
    names = [t["name"] for t in body.get("tools") or ()
             if isinstance(t, dict) and t.get("type") == "function" and "name" in t]
    choice = body.get("tool_choice")
    mode, forced = (choice, None) if isinstance(choice, str) else ("auto", None)
    if isinstance(choice, dict) and choice.get("type") == "function":
        forced = choice.get("name")
    after_result = bool(items) and items[-1].get("type") == "function_call_output"
    tool = _pick_tool(names, mode, forced, last_text, after_result)
    text = fault.get("reply", f"echo: {last_text}")
    return _finish(text, tool, prompt_words, body.get("max_output_tokens"), None)


def _last_user_text(messages: Any) -> str:
    for m in reversed(messages if isinstance(messages, list) else ()):
        if isinstance(m, dict) and m.get("role") == "user":
            return _content_text(m.get("content"))
    return ""


def _split(text: str, n: Any) -> list[str]:
    """The reply as stream pieces: one per word by default, else exactly n pieces that join back to it."""
    pieces = _PIECE.findall(text)
    if pieces:
        pieces[-1] += text[len("".join(pieces)):]  # trailing whitespace
    elif text:
        pieces = [text]
    if not n or n < 1 or n == len(pieces):
        return pieces
    if len(pieces) > n:  # group neighbouring words
        size, extra = divmod(len(pieces), n)
        out, i = [], 0
        for k in range(n):
            j = i + size + (k < extra)
            out.append("".join(pieces[i:j]))
            i = j
        return out
    if len(text) >= n:  # slice the characters
        size, extra = divmod(len(text), n)
        out, i = [], 0
        for k in range(n):
            j = i + size + (k < extra)
            out.append(text[i:j])
            i = j
        return out
    return list(text) + [""] * (n - len(text))  # more pieces than characters: empty deltas


def _usage_counts(prompt: int, completion: int, wrong: Any) -> tuple[int, int] | None:
    if not wrong:
        return prompt, completion
    if wrong == "absent":
        return None
    if wrong == "inflated":
        return prompt + 1000, completion + 1000
    return 0, 0  # True or "zero"


def _embedding(item: Any, dims: int) -> list[float]:
    """A deterministic vector; every value is exact in float32, so float and base64 forms agree."""
    data = item.encode() if isinstance(item, str) else _json(item)
    return [(b - 128) / 128 for b in hashlib.shake_256(data).digest(dims)]


# ----------------------------------------------------------------------------- HTTP

class _Abort(Exception):
    """The connection is to be closed without (the rest of) an answer."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # each SSE event leaves at once instead of waiting for the client's ACK
    server_version = "fake-provider"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:  # no per-request logging
        pass

    def do_GET(self) -> None:
        try:
            self._serve()
        except _Abort:
            self._abort()
        except OSError:  # the client went away
            self.close_connection = True

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    # -- the request

    def _read_body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if length:
            return self.rfile.read(int(length))
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        return b""

    def _serve(self) -> None:
        fake: FakeProvider = self.server.fake  # type: ignore[attr-defined]
        raw = self._read_body()
        path = self.path.partition("?")[0]
        headers = self.headers
        self.anthropic = path.startswith("/v1/messages") or (
            path.startswith("/v1/models") and ("x-api-key" in headers or "anthropic-version" in headers))
        body, bad_json = None, False
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                bad_json = True
        fault = fake._take_fault()
        self.fault = fault
        if fake.record:
            fake._record(RecordedRequest(self.command, self.path, {k.lower(): v for k, v in headers.items()},
                                         body, raw))

        if fault:
            if fault.get("hang"):
                self._hang(fault["hang"])
            if fault.get("slow_first_byte") and fake._stopping.wait(fault["slow_first_byte"]):
                raise _Abort
        if self.anthropic:
            # x-api-key is the documented header; anthropic SDK 2.x sends the key as a Bearer token.
            key = headers.get("x-api-key")
            if key is None and (headers.get("Authorization") or "").startswith("Bearer "):
                key = headers["Authorization"][7:]
            if key != fake.api_key:
                return self._error(401, None if key else "x-api-key header is required")
        else:
            auth = headers.get("Authorization")
            if not auth:
                return self._error(401, "You didn't provide an API key. You need to provide your API key in an "
                                   "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                                   code=None)
            if auth != f"Bearer {fake.api_key}":
                return self._error(401)
        if fault.get("status"):
            return self._error(int(fault["status"]), fault.get("message"), type_=fault.get("error_type"))
        if bad_json:
            return self._error(400, "We could not parse the JSON body of your request.")

        try:
            if self.command == "POST" and path == "/v1/chat/completions":
                return self._chat(body)
            if self.command == "POST" and path == "/v1/messages":
                return self._messages(body)
            if self.command == "POST" and path == "/v1/embeddings":
                return self._embeddings(body)
            if self.command == "POST" and path == "/v1/responses":
                return self._responses(body)
            if self.command == "POST" and path == "/v1/messages/count_tokens":
                return self._count_tokens(body)
            if self.command == "GET" and (path == "/v1/models" or path.startswith("/v1/models/")):
                return self._models(path[len("/v1/models/"):] if path != "/v1/models" else None)
        except (_Abort, OSError):
            raise
        except Exception as exc:  # a bug in the fake: say so loudly rather than hang the test
            traceback.print_exc()
            return self._error(500, f"fake provider bug: {exc!r}")
        return self._error(404, f"Invalid URL ({self.command} {path})" if not self.anthropic else None)

    # -- writing

    def _head(self, status: int, content_type: bytes, extra: bytes) -> bytes:
        rid = _new_id("req_").encode()
        return (b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\n%s: %s\r\n%s%s"
                % (status, _REASONS.get(status, "Error").encode(), content_type,
                   b"request-id" if self.anthropic else b"x-request-id", rid, extra,
                   b"Connection: close\r\n" if self.close_connection else b""))

    def _send(self, status: int, payload: Any, extra: bytes = b"") -> None:
        data = _json(payload)
        head = self._head(status, b"application/json", extra) + b"Content-Length: %d\r\n\r\n" % len(data)
        if self.fault.get("drop_after") is not None:  # a body cut short
            self.wfile.write(head + data[:len(data) // 2])
            raise _Abort
        self.wfile.write(head + data)

    def _stream(self, events: list[bytes]) -> None:
        """Chunked SSE, one write per event so that each one leaves at once."""
        fault, stopping = self.fault, self.server.fake._stopping  # type: ignore[attr-defined]
        drop, delay = fault.get("drop_after"), fault.get("chunk_delay")
        head = self._head(200, b"text/event-stream; charset=utf-8",
                          b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n")
        if drop is not None and drop <= 0:
            self.wfile.write(head)
            raise _Abort
        write = self.wfile.write
        fake = self.server.fake  # type: ignore[attr-defined]
        for i, event in enumerate(events):
            if i:
                if drop is not None and i >= drop:
                    raise _Abort
                if delay and stopping.wait(delay):
                    raise _Abort
            chunk = b"%x\r\n%s\r\n" % (len(event), event)
            write(head + chunk if i == 0 else chunk)
            fake.streamed_bytes += len(chunk)
        if drop is not None:
            raise _Abort
        write(b"0\r\n\r\n")

    def _abort(self) -> None:
        """Close without the terminating chunk: the client sees a truncated response."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _hang(self, limit: Any) -> None:
        """Answer nothing until the client leaves, the server stops or `limit` seconds pass."""
        stopping = self.server.fake._stopping  # type: ignore[attr-defined]
        deadline = None if limit is True else time.monotonic() + float(limit)
        conn = self.connection
        while not stopping.is_set():
            wait = 0.25 if deadline is None else min(0.25, deadline - time.monotonic())
            if wait <= 0:
                break
            readable, _, _ = select.select([conn], [], [], wait)
            if readable:
                try:
                    if not conn.recv(1, socket.MSG_PEEK):
                        break
                except OSError:
                    break
                stopping.wait(0.05)  # a pipelined request: keep hanging
        raise _Abort

    def _error(self, status: int, message: str | None = None, *, type_: str | None = None,
               code: str | None = "", param: str | None = None) -> None:
        fault = self.fault
        extra = b""
        if status in (429, 503, 529) or fault.get("retry_after") is not None:
            extra = b"Retry-After: %s\r\n" % str(fault.get("retry_after", 1)).encode()
        if self.anthropic:
            default_type, default_message = _ANTHROPIC_ERRORS.get(
                status, ("invalid_request_error" if status < 500 else "api_error", _REASONS.get(status, "Error")))
            return self._send(status, {"type": "error",
                                       "error": {"type": type_ or default_type, "message": message or default_message},
                                       "request_id": _new_id("req_")}, extra)
        default_type, default_code, default_message = _OPENAI_ERRORS.get(
            status, ("invalid_request_error" if status < 500 else "server_error", None, _REASONS.get(status, "Error")))
        return self._send(status, {"error": {"message": message or default_message, "type": type_ or default_type,
                                             "param": param, "code": default_code if code == "" else code}}, extra)

    # -- the routes

    def _models(self, one: str | None) -> None:
        models = self.server.fake.models  # type: ignore[attr-defined]
        if self.anthropic:
            rows = [{"type": "model", "id": m, "display_name": m, "created_at": "2025-01-01T00:00:00Z"} for m in models]
        else:
            rows = [{"id": m, "object": "model", "created": 1700000000,
                     "owned_by": "anthropic" if m.startswith("claude") else "openai"} for m in models]
        if one is not None:
            for row in rows:
                if row["id"] == one:
                    return self._send(200, row)
            return self._error(404, f"The model '{one}' does not exist", code="model_not_found", param="model")
        if self.anthropic:
            return self._send(200, {"data": rows, "has_more": False, "first_id": models[0] if models else None,
                                    "last_id": models[-1] if models else None})
        return self._send(200, {"object": "list", "data": rows})

    def _cached(self) -> tuple[int, int]:
        fake = self.server.fake  # type: ignore[attr-defined]
        return int(self.fault.get("cached_tokens", fake.cached_tokens)), int(self.fault.get("cache_creation_tokens", 0))

    def _chat(self, body: Any) -> None:
        if not isinstance(body, dict):
            return self._error(400, "We could not parse the JSON body of your request.")
        if not body.get("model"):
            return self._error(400, "you must provide a model parameter")
        if not isinstance(body.get("messages"), list):
            return self._error(400, "Missing required parameter: 'messages'.", code="missing_required_parameter",
                               param="messages")
        fault = self.fault
        turn = _openai_turn(body, _last_user_text(body["messages"]), fault)
        finish = {"end": "stop", "stop": "stop", "length": "length", "tool": "tool_calls"}[turn.reason]
        counts = _usage_counts(turn.prompt_tokens, turn.completion_tokens, fault.get("wrong_usage"))
        usage = None
        if counts is not None:
            cached = min(self._cached()[0], counts[0])
            usage = {"prompt_tokens": counts[0], "completion_tokens": counts[1], "total_tokens": sum(counts),
                     "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
                     "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                                   "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}
        cid, created, model = _new_id("chatcmpl-"), int(time.time()), body["model"]
        call = {"id": _new_id("call_"), "type": "function",
                "function": {"name": turn.tool, "arguments": TOOL_ARGUMENTS}} if turn.tool else None

        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": None if call else turn.text, "refusal": None,
                                       "annotations": []}
            if call:
                message["tool_calls"] = [call]
            out = {"id": cid, "object": "chat.completion", "created": created, "model": model,
                   "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
                   "usage": usage, "service_tier": "default", "system_fingerprint": _FINGERPRINT}
            if usage is None:
                del out["usage"]
            return self._send(200, out)

        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        # Every chunk shares its envelope: encode it once and splice each delta in.
        envelope = _json({"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                          "service_tier": "default", "system_fingerprint": _FINGERPRINT})
        start = b"data: " + envelope[:-1] + b',"choices":[{"index":0,"delta":'
        tail = b"}]" + (b',"usage":null}\n\n' if include_usage and usage is not None else b"}\n\n")

        def chunk(delta: bytes, reason: bytes = b"null") -> bytes:
            return start + delta + b',"logprobs":null,"finish_reason":' + reason + tail

        pieces = _split(TOOL_ARGUMENTS if call else turn.text, fault.get("chunks"))
        if call:
            header = {"role": "assistant", "content": None, "tool_calls": [
                {"index": 0, "id": call["id"], "type": "function",
                 "function": {"name": turn.tool, "arguments": ""}}], "refusal": None}
            events = [chunk(_json(header))]
            events += [chunk(b'{"tool_calls":[{"index":0,"function":{"arguments":' + _json(p) + b"}}]}")
                       for p in pieces]
        else:
            events = [chunk(b'{"role":"assistant","content":"","refusal":null}')]
            events += [chunk(b'{"content":' + _json(p) + b"}") for p in pieces]
        events.append(chunk(b"{}", _json(finish)))
        if include_usage and usage is not None:
            events.append(b"data: " + envelope[:-1] + b',"choices":[],"usage":' + _json(usage) + b"}\n\n")
        if fault.get("error_after") is None:
            events.append(b"data: [DONE]\n\n")
        self._stream(self._with_error(events, openai=True))

    def _with_error(self, events: list[bytes], openai: bool) -> list[bytes]:
        """For `error_after`: the first N events, then the provider's in-stream error event."""
        after = self.fault.get("error_after")
        if after is None:
            return events
        message = self.fault.get("message")
        if openai:
            err = {"error": {"message": message or "The server had an error while processing your request.",
                             "type": self.fault.get("error_type") or "server_error", "param": None, "code": None}}
            return events[:after] + [b"data: " + _json(err) + b"\n\n"]
        err = {"type": "error", "error": {"type": self.fault.get("error_type") or "overloaded_error",
                                          "message": message or "Overloaded"}}
        return events[:after] + [b"event: error\ndata: " + _json(err) + b"\n\n"]

    def _responses(self, body: Any) -> None:
        """``POST /v1/responses``: a response object, or its stream of ``response.*`` events."""
        if not isinstance(body, dict):
            return self._error(400, "We could not parse the JSON body of your request.")
        if not body.get("model"):
            return self._error(400, "Missing required parameter: 'model'.", code="missing_required_parameter",
                               param="model")
        if not isinstance(body.get("input"), (str, list)):
            return self._error(400, "Missing required parameter: 'input'.", code="missing_required_parameter",
                               param="input")
        fault = self.fault
        turn = _responses_turn(body, fault)
        counts = _usage_counts(turn.prompt_tokens, turn.completion_tokens, fault.get("wrong_usage"))
        usage = None
        if counts is not None:
            read, created = self._cached()
            read = min(read, counts[0])
            created = min(created, counts[0] - read)
            # input_tokens includes the cached part (read from or written to the cache), as OpenAI reports it.
            usage = {"input_tokens": counts[0],
                     "input_tokens_details": {"cached_tokens": read, "cache_write_tokens": created},
                     "output_tokens": counts[1], "output_tokens_details": {"reasoning_tokens": 0},
                     "total_tokens": sum(counts)}
        incomplete = turn.reason == "length"
        status = "incomplete" if incomplete else "completed"
        rid, created_at = _new_id("resp_"), int(time.time())
        if turn.tool:
            item: dict[str, Any] = {"id": _new_id("fc_"), "type": "function_call", "status": "completed",
                                    "arguments": TOOL_ARGUMENTS, "call_id": _new_id("call_"), "name": turn.tool}
        else:
            item = {"id": _new_id("msg_"), "type": "message", "status": status, "role": "assistant",
                    "content": [{"type": "output_text", "text": turn.text, "annotations": [], "logprobs": []}]}

        def response(state: str, output: list, with_usage: dict | None) -> dict:
            return {"id": rid, "object": "response", "created_at": created_at, "status": state,
                    "background": False, "error": None,
                    "incomplete_details": {"reason": "max_output_tokens"} if incomplete and state != "in_progress"
                    else None,
                    "instructions": body.get("instructions"), "max_output_tokens": body.get("max_output_tokens"),
                    "metadata": body.get("metadata") or {}, "model": body["model"], "output": output,
                    "parallel_tool_calls": body.get("parallel_tool_calls", True), "previous_response_id": None,
                    "reasoning": {"effort": None, "summary": None}, "service_tier": "default",
                    "store": body.get("store", True), "temperature": body.get("temperature", 1.0),
                    "text": body.get("text") or {"format": {"type": "text"}},
                    "tool_choice": body.get("tool_choice", "auto"), "tools": body.get("tools") or [],
                    "top_p": body.get("top_p", 1.0), "truncation": body.get("truncation", "disabled"),
                    "usage": with_usage, "user": None}

        if not body.get("stream"):
            return self._send(200, response(status, [item], usage))

        pieces = _split(TOOL_ARGUMENTS if turn.tool else turn.text, fault.get("chunks"))
        events: list[tuple[str, dict]] = [("response.created", {"response": response("in_progress", [], None)}),
                                          ("response.in_progress", {"response": response("in_progress", [], None)})]
        at = {"item_id": item["id"], "output_index": 0}
        if turn.tool:
            events.append(("response.output_item.added",
                           {"output_index": 0, "item": {**item, "status": "in_progress", "arguments": ""}}))
            events += [("response.function_call_arguments.delta", {**at, "delta": p}) for p in pieces]
            events.append(("response.function_call_arguments.done", {**at, "arguments": TOOL_ARGUMENTS}))
        else:
            empty = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            events.append(("response.output_item.added",
                           {"output_index": 0, "item": {**item, "status": "in_progress", "content": []}}))
            events.append(("response.content_part.added", {**at, "content_index": 0, "part": empty}))
            events += [("response.output_text.delta", {**at, "content_index": 0, "delta": p, "logprobs": []})
                       for p in pieces]
            events.append(("response.output_text.done",
                           {**at, "content_index": 0, "text": turn.text, "logprobs": []}))
            events.append(("response.content_part.done", {**at, "content_index": 0, "part": item["content"][0]}))
        events.append(("response.output_item.done", {"output_index": 0, "item": item}))
        events.append(("response.incomplete" if incomplete else "response.completed",
                       {"response": response(status, [item], usage)}))
        after = fault.get("error_after")
        if after is not None:
            # What OpenAI sends at runtime: the error nested under "error" (its reference documents it flat).
            events = events[:after] + [("error", {"error": {
                "type": fault.get("error_type") or "server_error", "code": "server_error",
                "message": fault.get("message") or "The server had an error while processing your request.",
                "param": None}})]
        self._stream([b"event: " + kind.encode() + b"\ndata: "
                      + _json({"type": kind, "sequence_number": n, **fields}) + b"\n\n"
                      for n, (kind, fields) in enumerate(events)])

    def _messages(self, body: Any) -> None:
        if not isinstance(body, dict):
            return self._error(400, "There was an issue with your request body.")
        for field in ("model", "max_tokens", "messages"):
            if field not in body:
                return self._error(400, f"{field}: Field required")
        fault = self.fault
        turn = _anthropic_turn(body, _last_user_text(body["messages"]), fault)
        reason = {"end": "end_turn", "stop": "stop_sequence", "length": "max_tokens", "tool": "tool_use"}[turn.reason]
        counts = _usage_counts(turn.prompt_tokens, turn.completion_tokens, fault.get("wrong_usage"))
        read, created = self._cached()
        mid, model = _new_id("msg_"), body["model"]
        tool_id = _new_id("toolu_") if turn.tool else None

        def usage(output: int) -> dict | None:
            if counts is None:
                return None
            # Anthropic's input_tokens leaves out the cached part; the three add up to the prompt.
            return {"input_tokens": max(counts[0] - read - created, 0) if counts[0] else 0,
                    "cache_creation_input_tokens": created, "cache_read_input_tokens": read,
                    "output_tokens": output, "service_tier": "standard"}

        if not body.get("stream"):
            block = ({"type": "tool_use", "id": tool_id, "name": turn.tool, "input": json.loads(TOOL_ARGUMENTS)}
                     if turn.tool else {"type": "text", "text": turn.text})
            out = {"id": mid, "type": "message", "role": "assistant", "model": model, "content": [block],
                   "stop_reason": reason, "stop_sequence": turn.stop_hit,
                   "usage": usage(counts[1] if counts else 0)}
            if counts is None:
                del out["usage"]
            return self._send(200, out)

        def event(name: bytes, payload: bytes) -> bytes:
            return b"event: " + name + b"\ndata: " + payload + b"\n\n"

        start = {"id": mid, "type": "message", "role": "assistant", "model": model, "content": [],
                 "stop_reason": None, "stop_sequence": None, "usage": usage(1 if counts and counts[1] else 0)}
        if counts is None:
            del start["usage"]
        pieces = _split(TOOL_ARGUMENTS if turn.tool else turn.text, fault.get("chunks"))
        if turn.tool:
            block = {"type": "tool_use", "id": tool_id, "name": turn.tool, "input": {}}
            deltas = [event(b"content_block_delta",
                            b'{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta",'
                            b'"partial_json":' + _json(p) + b"}}") for p in [""] + pieces]
        else:
            block = {"type": "text", "text": ""}
            deltas = [event(b"content_block_delta",
                            b'{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":'
                            + _json(p) + b"}}") for p in pieces]
        end: dict[str, Any] = {"type": "message_delta",
                               "delta": {"stop_reason": reason, "stop_sequence": turn.stop_hit}}
        if counts is not None:
            end["usage"] = {"output_tokens": counts[1]}
        events = [event(b"message_start", _json({"type": "message_start", "message": start})),
                  event(b"content_block_start",
                        _json({"type": "content_block_start", "index": 0, "content_block": block})),
                  event(b"ping", b'{"type":"ping"}'),
                  *deltas,
                  event(b"content_block_stop", b'{"type":"content_block_stop","index":0}'),
                  event(b"message_delta", _json(end)),
                  event(b"message_stop", b'{"type":"message_stop"}')]
        self._stream(self._with_error(events, openai=False))

    def _count_tokens(self, body: Any) -> None:
        if not isinstance(body, dict) or "messages" not in body:
            return self._error(400, "messages: Field required")
        turn = _anthropic_turn({**body, "tools": None}, "", _NO_FAULT)
        return self._send(200, {"input_tokens": turn.prompt_tokens})

    def _embeddings(self, body: Any) -> None:
        if not isinstance(body, dict) or "input" not in body:
            return self._error(400, "Missing required parameter: 'input'.", code="missing_required_parameter",
                               param="input")
        if not body.get("model"):
            return self._error(400, "you must provide a model parameter")
        items = body["input"]
        if isinstance(items, str) or (isinstance(items, list) and items and isinstance(items[0], int)):
            items = [items]  # one text, or one list of token ids
        if not isinstance(items, list) or not items:
            return self._error(400, "'$.input' is invalid.", param="input")
        dims = body.get("dimensions") or EMBEDDING_DIMS
        as_base64 = body.get("encoding_format") == "base64"
        data, tokens = [], 0
        for i, item in enumerate(items):
            vector = _embedding(item, dims)
            tokens += max(_words(item), 1) if isinstance(item, str) else len(item)
            data.append({"object": "embedding", "index": i,
                         "embedding": base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode()
                         if as_base64 else vector})
        counts = _usage_counts(tokens, 0, self.fault.get("wrong_usage"))
        out = {"object": "list", "data": data, "model": body["model"]}
        if counts is not None:
            out["usage"] = {"prompt_tokens": counts[0], "total_tokens": counts[0]}
        return self._send(200, out)


# ----------------------------------------------------------------------------- the public face

class FakeProvider:
    """The fake provider: `FakeProvider().start()`, point a client at `.base_url`, `.stop()` when done.

    `record=False` keeps nothing (benchmarks); otherwise the last `max_records` requests are kept.
    `cached_tokens` is reported as OpenAI `cached_tokens` / Anthropic `cache_read_input_tokens`.
    """

    def __init__(self, api_key: str = DEFAULT_KEY, *, port: int = 0, record: bool = True, max_records: int = 1000,
                 cached_tokens: int = 0, models: tuple[str, ...] | list[str] = DEFAULT_MODELS):
        self.api_key = api_key
        self.port = port
        self.record = record
        self.cached_tokens = cached_tokens
        self.models = list(models)
        self.base_url = ""
        self._lock = threading.Lock()
        self._faults: collections.deque[dict] = collections.deque()
        self._default: dict[str, Any] = {}
        self._records: collections.deque[RecordedRequest] = collections.deque(maxlen=max_records)
        self._arrived = threading.Condition()
        self._stopping = threading.Event()
        self.streamed_bytes = 0  # stream bytes handed to the socket so far (back-pressure tests)
        self._httpd: LoopbackServer | None = None
        self._thread: threading.Thread | None = None

    # -- life cycle

    def start(self) -> FakeProvider:
        """Listen on 127.0.0.1 (a free port unless one was given); it accepts before this returns."""
        self._stopping.clear()
        self._httpd = LoopbackServer(("127.0.0.1", self.port), self, _Handler)
        self.port = self._httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"fake-provider-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop at once: sleeping, hanging and streaming handlers are woken and their sockets shut."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._stopping.set()
        httpd.shutdown()
        httpd.server_close()
        httpd.close_connections()
        if self._thread:
            self._thread.join(2)

    def __enter__(self) -> FakeProvider:
        return self.start() if self._httpd is None else self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- faults

    def push_fault(self, **fault: Any) -> None:
        """Queue a fault for the next request not yet claimed by an earlier one.

        status=429|500|503|...   answer that status with the provider's error body (+ Retry-After for
                                 429/503/529); message=, error_type= override its text and type;
                                 retry_after=seconds sets the header (on any status).
        slow_first_byte=s        sleep s seconds before the response headers.
        hang=True | s            never answer (until the client leaves or the server stops), or hold s
                                 seconds and then close without answering.
        drop_after=N             send N SSE events, then close the socket with no terminating chunk;
                                 on a non-streaming answer, close after half the body.
        error_after=N            send N SSE events, then the provider's in-stream error event, then end.
        chunk_delay=s            sleep s seconds between SSE events.
        chunks=N                 exactly N content (or tool-argument) deltas instead of one per word.
        wrong_usage="zero"|True|"absent"|"inflated"   usage of 0, none at all, or 1000 too many.
        cached_tokens=N, cache_creation_tokens=N      prompt-cache counts to report.
        reply="text"             answer this instead of the echo.
        """
        self._check(fault)
        with self._lock:
            self._faults.append(fault)

    def set_default_fault(self, **fault: Any) -> None:
        """Apply `fault` to every request (a queued fault is laid over it); no arguments clears it."""
        self._check(fault)
        with self._lock:
            self._default = fault

    def clear(self) -> None:
        """Forget the recorded requests, the queued faults and the default fault."""
        with self._lock:
            self._faults.clear()
            self._default = {}
        with self._arrived:
            self._records.clear()

    @staticmethod
    def _check(fault: dict) -> None:
        unknown = set(fault) - FAULTS
        if unknown:
            raise TypeError(f"unknown fault {sorted(unknown)}; known: {sorted(FAULTS)}")
        if fault.get("wrong_usage") not in (None, False, *WRONG_USAGE):
            raise ValueError(f"wrong_usage must be one of {WRONG_USAGE}")

    def _take_fault(self) -> dict:
        if not self._faults and not self._default:
            return _NO_FAULT
        with self._lock:
            if self._faults:
                queued = self._faults.popleft()
                return {**self._default, **queued} if self._default else queued
            return self._default

    # -- what arrived

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of the requests received, oldest first."""
        with self._arrived:
            return list(self._records)

    def wait_requests(self, count: int, timeout: float = 5.0) -> list[RecordedRequest]:
        """Wait until at least `count` requests have been recorded (since the last clear)."""
        with self._arrived:
            if not self._arrived.wait_for(lambda: len(self._records) >= count, timeout):
                raise AssertionError(f"{len(self._records)} requests arrived, expected {count}")
            return list(self._records)

    def _record(self, req: RecordedRequest) -> None:
        with self._arrived:
            self._records.append(req)
            self._arrived.notify_all()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.provider",
                                     description="Serve the fake OpenAI/Anthropic provider until killed.")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--api-key", default=DEFAULT_KEY)
    parser.add_argument("--quiet", action="store_true", help="do not print the address")
    parser.add_argument("--chunks", type=int, help="content deltas per streamed reply (default: one per word)")
    parser.add_argument("--chunk-delay", type=float, help="seconds between SSE events")
    parser.add_argument("--slow-first-byte", type=float, help="seconds before each response's headers")
    parser.add_argument("--record", action="store_true", help="keep requests (off: benchmarks)")
    args = parser.parse_args(argv)

    fake = FakeProvider(args.api_key, port=args.port, record=args.record).start()
    default = {"chunks": args.chunks, "chunk_delay": args.chunk_delay, "slow_first_byte": args.slow_first_byte}
    fake.set_default_fault(**{k: v for k, v in default.items() if v is not None})
    if not args.quiet:
        print(f"fake provider on {fake.base_url}", flush=True)
    # A plain flag, not an Event: Event.set() in a signal handler can deadlock
    # with the Event.wait() it interrupts (both take the same lock).
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(1))
    while not stopping:
        time.sleep(0.2)
    fake.stop()


if __name__ == "__main__":
    main()
