"""The relay: OpenAI- and Anthropic-compatible endpoints (P20-P23, P25).

Per request: one key lookup, the limit check, the upstream call (with fallback
across the model's targets), and a metadata row handed to the meter after the
last byte. Bodies live in local variables for the life of the request and are
never logged, stored or put into an exception message (P23): errors carry an
error class, and the only upstream text that goes anywhere goes to the client.
"""
from __future__ import annotations

import logging
import re
import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

import orjson
from flask import Flask
from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from app import keyauth
from app.extensions import db
from app.logsafe import where
from app.relay import translate as tr
from app.relay import upstream
from app.relay.limits import Limits
from app.relay.meter import init_app as init_meter
from app.relay.providers import Model, ProvidersFileError, Registry, Target, load
from app.services.keys import key_hasher

log = logging.getLogger(__name__)

ANTHROPIC_VERSION = "2023-06-01"
# Used with fullmatch: `$` alone would let a trailing newline through.
PROJECT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
TAG_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:=-]{0,31}")
UNKNOWN_MODEL = "(unknown model)"
MAX_TAGS = 10

# ---- per-request state ---------------------------------------------------------------

@dataclass
class Call:
    """What the relay knows about one request: only P22's fields and timings."""

    request_id: str
    api: str                      # the client's API shape: "openai" or "anthropic"
    req: Request = field(repr=False)
    started: datetime
    t0: float
    key: keyauth.KeyRow | None = None
    project: str | None = None
    tags: list[str] | None = None
    # The name the client sent: echoed to the client only, never recorded.
    requested: str = field(default="", repr=False)
    # What the usage row says: a name the registry knows, or UNKNOWN_MODEL (P23).
    model: str = UNKNOWN_MODEL
    resolved: Model | None = field(default=None, repr=False)  # the registry's entry for it
    provider: str | None = None
    usage: tr.Usage = field(default_factory=tr.Usage)
    usage_source: str = "none"
    cost: object = 0
    ttft_ms: int | None = None
    status: int = 200
    error_class: str | None = None
    trace: list[dict] = field(default_factory=list)
    limits: Limits | None = field(default=None, repr=False)
    meter: object = field(default=None, repr=False)

    def row(self) -> dict:
        u = self.usage
        return {
            "request_id": self.request_id, "user_id": self.key.user_id, "team_id": self.key.team_id,
            "api_key_id": self.key.id, "project": self.project,
            "tags": orjson.dumps(self.tags).decode() if self.tags else None,
            "started_at": self.started, "ended_at": datetime.now(timezone.utc),
            "model": self.model, "provider": self.provider,
            "input_tokens": u.input_tokens, "output_tokens": u.output_tokens,
            "cache_read_tokens": u.cache_read_tokens, "cache_write_tokens": u.cache_write_tokens,
            "cost_usd": self.cost, "ttft_ms": self.ttft_ms,
            "latency_ms": int((time.perf_counter() - self.t0) * 1000),
            "status_code": self.status, "error_class": self.error_class,
            "routing_trace": orjson.dumps(self.trace).decode(), "usage_source": self.usage_source,
        }


def _finish(call: Call, price=None) -> None:
    """Price the call, charge its tokens to the limits, queue its row. Runs after
    the last byte, possibly outside the request context (streams)."""
    if call.key is None:
        return
    u = call.usage
    if price is not None:
        call.cost = price.cost(u.input_tokens, u.output_tokens, u.cache_read_tokens, u.cache_write_tokens)
    call.limits.charge_tokens(call.key.id, call.key.user_id, call.key.rpm_limit, call.key.tpm_limit,
                              u.input_tokens + u.output_tokens + u.cache_read_tokens + u.cache_write_tokens)
    call.meter.record(call.row())


# ---- errors in the client's shape ------------------------------------------------------

def _error(call: Call, status: int, message: str, type_: str | None = None,
           headers: dict | None = None, record: bool = True) -> Response:
    call.status = status
    call.error_class = call.error_class or type_ or tr.error_type_for_status(status, call.api)
    if call.api == "anthropic":
        body = tr.anthropic_error(type_ or tr.error_type_for_status(status, "anthropic"), message,
                                  request_id=call.request_id)
    else:
        body = tr.openai_error(status, message, type_)
    resp = Response(orjson.dumps(body), status=status, mimetype="application/json", headers=headers)
    if record and call.key is not None:
        _finish(call)
    return resp


# ---- request parsing -------------------------------------------------------------------

def _authenticate(call: Call) -> Response | None:
    """The key and its account may be used now (app/keyauth.py, shared with the export API)."""
    ext = call.req.environ["relay.extensions"]
    key, refused = keyauth.authenticate(call.req.headers, ext["relay_engine"], ext["relay_hash_key"])
    if refused:
        status, type_, message = refused
        return _error(call, status, message, type_)
    call.key = key
    return None


def _labels(call: Call) -> Response | None:
    """Project and tags come from headers, validated and bounded (P22)."""
    project = call.req.headers.get("X-Relay-Project")
    if project is not None:
        if not PROJECT_RE.fullmatch(project):
            return _error(call, 400, "X-Relay-Project must be 1-64 letters, digits or . _ : -")
        call.project = project
    tags = call.req.headers.get("X-Relay-Tags")
    if tags is not None:
        items = [t.strip() for t in tags.split(",") if t.strip()]
        if len(items) > MAX_TAGS or not all(TAG_RE.fullmatch(t) for t in items):
            return _error(call, 400, f"X-Relay-Tags takes up to {MAX_TAGS} comma-separated tags of "
                                     "1-32 letters, digits or . _ : = -")
        call.tags = items or None
    return None


def _body(call: Call) -> tuple[dict | None, Response | None]:
    raw = call.req.get_data(cache=False)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None, _error(call, 400, "The request body is not valid JSON.")
    if not isinstance(body, dict):
        return None, _error(call, 400, "The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return None, _error(call, 400, "The request needs a 'model' string.")
    _name_model(call, model)
    return body, None


def _name_model(call: Call, name: str) -> None:
    """Note the model the client asked for. The usage row gets the name only
    if the registry knows it: anything else is client text (a prompt pasted
    into `model`), which no column may hold (P23)."""
    call.requested = name
    registry: Registry = call.req.environ["relay.extensions"]["relay_registry"]
    call.resolved = registry.model(name)
    call.model = name if call.resolved is not None else UNKNOWN_MODEL


def _model(call: Call, record: bool = True) -> tuple[Model | None, Response | None]:
    """The model named earlier (`_name_model`), if it exists and this key may use it."""
    model = call.resolved
    allowed = orjson.loads(call.key.allowed_models) if call.key.allowed_models else None
    if model is None or (allowed is not None and call.requested not in allowed):
        what = "is not available through this relay" if model is None else "is not allowed for this API key"
        message = f"The model '{call.requested[:100]}' {what}."  # to the client only
        return None, _error(call, 404, message, "not_found_error"
                            if call.api == "anthropic" else "invalid_request_error", record=record)
    return model, None


# ---- building the upstream request -----------------------------------------------------

def _upstream_request(call: Call, endpoint: str, body: dict, target: Target, stream: bool) -> tuple[str, bytes, dict]:
    prov = target.provider
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream" if stream else "application/json"}
    if prov.shape == "anthropic":
        client = call.req.headers
        headers["anthropic-version"] = client.get("anthropic-version") or ANTHROPIC_VERSION
        if client.get("anthropic-beta") and call.api == "anthropic":
            headers["anthropic-beta"] = client["anthropic-beta"]
        if prov.api_key:
            headers["x-api-key"] = prov.api_key
        path = "/v1/messages"
        if call.api == "anthropic":
            up = dict(body, model=target.model)
        else:
            up = tr.openai_to_anthropic_request(body, target.model)
    else:
        if prov.api_key:
            headers["Authorization"] = "Bearer " + prov.api_key
        if endpoint == "embeddings":
            return "/embeddings", orjson.dumps(dict(body, model=target.model)), headers
        path = "/chat/completions"
        up = dict(body, model=target.model) if call.api == "openai" else tr.anthropic_to_openai_request(body, target.model)
        if stream:
            up["stream"] = True
            up["stream_options"] = {**(up.get("stream_options") or {}), "include_usage": True}
    return path, orjson.dumps(up), headers


def _route(call: Call, endpoint: str, body: dict, model: Model, stream: bool):
    """Try each target in order. Returns (target, response) or an error Response."""
    classes = []
    for target in model.targets:
        prov = target.provider
        entry = {"provider": prov.name, "model": target.model}
        if endpoint == "embeddings" and prov.shape != "openai":
            call.trace.append({**entry, "outcome": "skipped", "error_class": "unsupported_endpoint", "ms": 0})
            continue
        if prov.kind != "openai_compatible" and not prov.api_key:
            call.trace.append({**entry, "outcome": "skipped", "error_class": "missing_credential", "ms": 0})
            classes.append("missing_credential")
            continue
        try:
            path, payload, headers = _upstream_request(call, endpoint, body, target, stream)
        except tr.TranslationError as exc:
            return None, _error(call, 400, str(exc))
        t = time.perf_counter()
        try:
            resp = upstream.send(prov, path, payload, headers)
        except upstream.UpstreamError as exc:
            call.trace.append({**entry, "outcome": "error", "error_class": exc.error_class,
                               "ms": int((time.perf_counter() - t) * 1000)})
            classes.append(exc.error_class)
            continue
        ms = int((time.perf_counter() - t) * 1000)
        if resp.status == 429 or resp.status >= 500:
            try:
                resp.read()  # drained and dropped: provider error bodies can quote the prompt
                resp.release()
            except upstream.UpstreamError:
                pass
            call.trace.append({**entry, "outcome": "error", "error_class": f"http_{resp.status}", "ms": ms})
            classes.append(f"http_{resp.status}")
            continue
        call.trace.append({**entry, "outcome": "ok" if resp.status < 400 else f"http_{resp.status}", "ms": ms})
        call.provider = prov.name
        return target, resp
    call.error_class = classes[-1] if classes else "no_target"
    if classes and all(c == "http_429" for c in classes):
        return None, _error(call, 429, "Every provider for this model is rate limited. Retry shortly.",
                            headers={"Retry-After": "1"})
    if classes and all(c == "timeout" for c in classes):
        return None, _error(call, 504, "No provider for this model answered in time.")
    if classes and all(c == "missing_credential" for c in classes):
        return None, _error(call, 503, "This model's providers are not configured with credentials.")
    return None, _error(call, 502, "No provider could serve this request (see the routing trace in your usage).")


def _upstream_client_error(call: Call, target: Target, resp: upstream.Response) -> Response:
    """A 4xx (not 429) from the provider: the request itself was refused. Pass the
    provider's message to the client in the client's shape; store nothing of it."""
    data = resp.read()
    resp.release()
    status = resp.status
    if status in (401, 403):
        # The provider refused *our* credential; the client's key is fine.
        call.error_class = f"upstream_{status}"
        return _error(call, 502, "The provider refused the relay's credentials for this model.")
    message = "The provider refused the request."
    try:
        obj = orjson.loads(data)
        err = obj.get("error") if isinstance(obj, dict) else None
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            message = err["message"]
    except orjson.JSONDecodeError:
        pass
    call.error_class = f"upstream_{status}"
    return _error(call, status, message)


# ---- usage -----------------------------------------------------------------------------

def _estimate(chars_in: int, chars_out: int) -> tr.Usage:
    """About four characters a token: an estimate, and labelled as one."""
    return tr.Usage(input_tokens=max(1, chars_in // 4), output_tokens=chars_out // 4)


def _settle_usage(call: Call, reported: tr.Usage | None, chars_in: int, chars_out: int) -> None:
    """Use the provider's counts when it gave plausible ones; otherwise estimate.
    Never a silent zero: zero input tokens, or zero output for a non-empty answer,
    is not believed."""
    if reported is not None and reported.reported:
        plausible = reported.prompt_tokens > 0 and (reported.output_tokens > 0 or chars_out == 0)
        if plausible:
            call.usage, call.usage_source = reported, "provider"
            return
    estimate = _estimate(chars_in, chars_out)
    if reported is not None and not reported.reported and reported.prompt_tokens > 0:
        # A stream cut short after the provider counted the prompt: its input and
        # cache counts are exact; only the output is estimated.
        estimate = tr.Usage(reported.input_tokens, max(reported.output_tokens, estimate.output_tokens),
                            reported.cache_read_tokens, reported.cache_write_tokens)
    call.usage, call.usage_source = estimate, "estimated"


def _text_chars_openai(obj: dict) -> int:
    n = 0
    for choice in obj.get("choices") or ():
        msg = choice.get("message") or choice.get("delta") or {}
        c = msg.get("content")
        if isinstance(c, str):
            n += len(c)
        for tc in msg.get("tool_calls") or ():
            n += len(((tc or {}).get("function") or {}).get("arguments") or "")
    return n


def _text_chars_anthropic(obj: dict) -> int:
    n = 0
    for block in obj.get("content") or ():
        if block.get("type") == "text":
            n += len(block.get("text") or "")
        elif block.get("type") == "tool_use":
            n += len(orjson.dumps(block.get("input") or {}))
    return n


# ---- the endpoints ---------------------------------------------------------------------

def _begin(req: Request, api: str) -> Call:
    ext = req.environ["relay.extensions"]
    call = Call(request_id=req.environ["relay.request_id"], api=api, req=req,
                started=datetime.now(timezone.utc), t0=time.perf_counter(),
                limits=ext["relay_limits"], meter=ext["meter"])
    return call


def _handle(req: Request, api: str, endpoint: str):
    call = _begin(req, api)
    failed = _authenticate(call) or _labels(call)
    if failed:
        return failed
    body, failed = _body(call)
    if failed:
        return failed
    max_tokens = body.get("max_tokens")
    if endpoint == "messages" and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool)):
        return _error(call, 400, "max_tokens: an integer is required.")
    if "stream" in body and not isinstance(body["stream"], bool):
        # Forwarded as sent, a truthy non-boolean makes the provider stream while
        # the relay waits for JSON: the client's error, answered before anything goes upstream.
        return _error(call, 400, "stream: true or false is required.")
    if endpoint in ("chat", "messages") and not isinstance(body.get("messages"), list):
        return _error(call, 400, "messages: a list is required.")
    if endpoint == "embeddings" and body.get("input") in (None, "", []):
        return _error(call, 400, "input: text or a list of texts is required.")
    model, failed = _model(call)
    if failed:
        return failed
    if endpoint == "embeddings" and not any(t.provider.shape == "openai" for t in model.targets):
        return _error(call, 400, f"The model '{call.model}' does not create embeddings.")
    refusal = call.limits.admit(call.key.id, call.key.user_id, call.key.rpm_limit, call.key.tpm_limit)
    if refusal:
        call.error_class = f"rate_limited_{refusal.scope}_{refusal.what}"
        return _error(call, 429, refusal.message, "rate_limit_error",
                      headers={"Retry-After": str(refusal.retry_after),
                               **call.limits.headers(call.key.id, call.key.rpm_limit)})
    stream = body.get("stream") is True and endpoint != "embeddings"
    target, result = _route(call, endpoint, body, model, stream)
    if target is None:
        return result
    if result.status >= 400:
        return _upstream_client_error(call, target, result)
    chars_in = req.content_length or 0
    if stream:
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return Response(_stream(call, target, result, model, chars_in, include_usage),
                        status=200, mimetype="text/event-stream",
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return _complete(call, endpoint, target, result, model, chars_in)


def _complete(call: Call, endpoint: str, target: Target, resp: upstream.Response, model: Model,
              chars_in: int) -> Response:
    """A whole (non-streamed) answer: read, translate if the shapes differ,
    count, and record once the response has been sent."""
    try:
        data = resp.read()
    except upstream.UpstreamError as exc:
        call.error_class = exc.error_class
        return _error(call, 502, "The provider's answer was cut short.")
    resp.release()
    call.ttft_ms = int((time.perf_counter() - call.t0) * 1000)
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        call.error_class = "upstream_bad_json"
        return _error(call, 502, "The provider sent an answer that is not valid JSON.")
    prov_shape = target.provider.shape
    try:
        if prov_shape == "anthropic":
            reported = tr.usage_from_anthropic(obj.get("usage"))
            chars_out = _text_chars_anthropic(obj)
            if call.api == "openai":
                data = orjson.dumps(tr.anthropic_to_openai_response(obj, call.model))
        else:
            reported = tr.usage_from_openai(obj.get("usage"))
            chars_out = _text_chars_openai(obj)
            if call.api == "anthropic":
                data = orjson.dumps(tr.openai_to_anthropic_response(obj, call.model))
    except tr.TranslationError:
        call.error_class = "upstream_untranslatable"
        return _error(call, 502, "The provider's answer could not be translated to this API.")
    if endpoint == "embeddings":
        chars_out = 0
    _settle_usage(call, reported, chars_in, chars_out)
    _finish(call, model.price)  # spooled before the first byte goes out: a killed worker loses no row
    return Response(data, status=200, mimetype="application/json")


def _sse_fields(event: bytes) -> tuple[str, bytes]:
    """(event name, data) of one server-sent event."""
    name, data = "", b""
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            data = line[5:].strip() if not data else data + b"\n" + line[5:].strip()
        elif line.startswith(b"event:"):
            name = line[6:].strip().decode()
    return name, data


def _stream(call: Call, target: Target, resp: upstream.Response, model: Model, chars_in: int,
            include_usage: bool):
    """Pass each event through as it arrives (translated when the shapes differ),
    note usage and the first token, and record the call just before the event
    that ends the stream for the client ([DONE], message_stop, an error event),
    or when the stream breaks or the client goes away (then the upstream call
    is dropped at once). Recorded before that last event, the row is in the
    spool by the time the client knows it has its answer."""
    prov_shape = target.provider.shape
    same = prov_shape == call.api
    to_openai = tr.AnthropicStreamToOpenAI(call.model, include_usage=include_usage) \
        if prov_shape == "anthropic" and not same else None
    to_anthropic = tr.OpenAIStreamToAnthropic(call.model) if prov_shape == "openai" and not same else None
    reported: tr.Usage | None = None
    chars_out = 0
    clean_end = False
    recorded = False

    def record() -> None:
        nonlocal recorded
        if not recorded:
            recorded = True
            _settle_usage(call, reported, chars_in, chars_out)
            _finish(call, model.price)

    try:
        for event in resp.events():
            name, data = _sse_fields(event)
            if not data:
                continue
            if data == b"[DONE]":
                clean_end = True
                if same:
                    record()
                    yield tr.SSE_OPENAI_DONE
                continue
            try:
                obj = orjson.loads(data)
            except orjson.JSONDecodeError:
                continue
            if prov_shape == "openai":
                if "error" in obj:
                    call.error_class = "upstream_stream_error"
                n = _text_chars_openai(obj)
                if obj.get("usage"):
                    reported = tr.usage_from_openai(obj["usage"])
                if same:
                    if not obj.get("choices") and obj.get("usage") and not include_usage:
                        continue  # asked upstream for our metering; the client did not ask
                    out = (event,)
                else:
                    out = tuple(tr.sse_anthropic(e, d) for e, d in to_anthropic.feed(obj))
            else:
                name = name or obj.get("type", "")
                if name == "message_start":
                    # Exact input and cache counts, but a provisional output count: not final
                    # until message_delta, so a stream cut before it is an estimate.
                    reported = tr.usage_from_anthropic((obj.get("message") or {}).get("usage"))
                    reported.reported = False
                elif name == "message_delta":
                    u = obj.get("usage") or {}
                    base = reported or tr.Usage()
                    reported = tr.Usage(
                        input_tokens=u.get("input_tokens", base.input_tokens) or base.input_tokens,
                        output_tokens=u.get("output_tokens", 0) or 0,
                        cache_read_tokens=u.get("cache_read_input_tokens") or base.cache_read_tokens,
                        cache_write_tokens=u.get("cache_creation_input_tokens") or base.cache_write_tokens,
                        reported=bool(u))
                elif name == "message_stop":
                    clean_end = True
                elif name == "error":
                    call.error_class = "upstream_stream_error"
                delta = obj.get("delta") or {}
                n = len(delta.get("text") or "") + len(delta.get("partial_json") or "")
                if same:
                    if name == "message_stop":
                        record()
                    out = (event,)
                else:
                    out = tuple(tr.sse_openai(c) for c in to_openai.feed(name, obj))
            if n:
                chars_out += n
                if call.ttft_ms is None:
                    call.ttft_ms = int((time.perf_counter() - call.t0) * 1000)
            for piece in out:
                yield piece
        if not clean_end and call.error_class is None:
            call.error_class = "upstream_incomplete"
        tail: list[bytes] = []
        if not same:
            tail = [tr.sse_anthropic(*piece) if to_anthropic else tr.sse_openai(piece)
                    for piece in (to_anthropic.finish() if to_anthropic else to_openai.finish())]
            if to_openai is not None:
                tail.append(tr.SSE_OPENAI_DONE)
        resp.release()
        record()
        for piece in tail:
            yield piece
    except upstream.UpstreamError as exc:
        call.error_class = exc.error_class
        message = "The provider's stream broke off; the answer is incomplete."
        record()
        if call.api == "anthropic":
            yield tr.sse_anthropic("error", tr.anthropic_error("api_error", message, request_id=call.request_id))
        else:
            yield tr.sse_openai(tr.openai_error(502, message))
    except GeneratorExit:
        # The client went away: drop the upstream call now, not when it finishes.
        # (After an upstream failure it was told, it may leave first: keep that cause.)
        resp.close()
        if call.error_class is None:
            call.error_class = "client_disconnected"
            call.status = 499
        raise
    finally:
        record()


def chat_completions(req: Request):
    return _handle(req, "openai", "chat")


def embeddings(req: Request):
    return _handle(req, "openai", "embeddings")


def messages(req: Request):
    return _handle(req, "anthropic", "messages")


_ENDPOINT_API = {"/v1/chat/completions": "openai", "/v1/embeddings": "openai", "/v1/messages": "anthropic"}


def api_of(req: Request) -> str:
    """The API a request speaks, hence the shape of every answer to it, errors
    included: the path names it for the endpoints of one API; on the shared
    ones (/v1/models, an unknown path) Anthropic's SDK says so with its
    `anthropic-version` header."""
    path = req.path.rstrip("/")
    api = _ENDPOINT_API.get(path)
    if api is None and path.startswith("/v1/messages/"):
        api = "anthropic"
    return api or ("anthropic" if req.headers.get("anthropic-version") else "openai")


def list_models(req: Request):
    """The models this key may use, in the shape of the SDK that asks."""
    call = _begin(req, api_of(req))
    failed = _authenticate(call)
    if failed:
        return failed
    registry: Registry = req.environ["relay.extensions"]["relay_registry"]
    allowed = orjson.loads(call.key.allowed_models) if call.key.allowed_models else None
    names = [m for m in registry.models if allowed is None or m in allowed]
    if call.api == "anthropic":
        data = [{"type": "model", "id": n, "display_name": n,
                 "created_at": datetime.fromtimestamp(registry.models[n].created, timezone.utc).isoformat()}
                for n in names]
        body = {"data": data, "has_more": False, "first_id": names[0] if names else None,
                "last_id": names[-1] if names else None}
    else:
        body = {"object": "list", "data": [{"id": n, "object": "model", "created": registry.models[n].created,
                                            "owned_by": "relay"} for n in names]}
    return Response(orjson.dumps(body), mimetype="application/json")


def get_model(req: Request, name: str):
    call = _begin(req, api_of(req))
    failed = _authenticate(call)
    if failed:
        return failed
    _name_model(call, name)
    # Looking a model up is not a model call: no usage row, found or not (as for the list).
    model, failed = _model(call, record=False)
    if failed:
        return failed
    if call.api == "anthropic":
        body = {"type": "model", "id": name, "display_name": name,
                "created_at": datetime.fromtimestamp(model.created, timezone.utc).isoformat()}
    else:
        body = {"id": name, "object": "model", "created": model.created, "owned_by": "relay"}
    return Response(orjson.dumps(body), mimetype="application/json")


# ---- mounting --------------------------------------------------------------------------

URLS = Map([
    Rule("/v1/chat/completions", endpoint=chat_completions, methods=["POST"]),
    Rule("/v1/embeddings", endpoint=embeddings, methods=["POST"]),
    Rule("/v1/messages", endpoint=messages, methods=["POST"]),
    Rule("/v1/models", endpoint=list_models, methods=["GET"]),
    Rule("/v1/models/<path:name>", endpoint=get_model, methods=["GET"]),
], strict_slashes=False)
_EXACT = {(r.rule, m): r.endpoint for r in URLS.iter_rules() if "<" not in r.rule for m in r.methods - {"HEAD"}}

_STATUS_TEXT = {404: "There is no API endpoint at this path.", 405: "This endpoint does not accept that method.",
                413: "The request body is too large.", 500: "The relay failed to handle this request."}


class RelayDispatch:
    """WSGI middleware that serves /v1/ itself and hands every other path to Flask.

    The relay is the hot path. Measured in-process, Flask's request dispatch for
    an API call (context push, session open/save, before/after hooks, the
    portal's extensions) cost ~0.3 ms of the relay's ~0.8 ms; the API needs none
    of it: no cookies, no CSRF, no templates, and its own limits (P25). So the
    endpoints are plain functions of a werkzeug Request, routed by a werkzeug
    Map, and errors, including the app's 404/405/413/500, are answered here in
    the shape of the client's SDK. Nothing in a body is logged (P23).
    """

    def __init__(self, app: Flask, wsgi_app):
        self.flask = app
        self.wsgi_app = wsgi_app
        self.max_body = app.config.get("MAX_CONTENT_LENGTH")

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if not path.startswith("/v1/"):
            return self.wsgi_app(environ, start_response)
        rid = "req_" + secrets.token_hex(12)
        environ["relay.request_id"] = rid
        environ["relay.extensions"] = self.flask.extensions
        req = Request(environ)
        req.max_content_length = self.max_body
        try:
            view = _EXACT.get((path, environ["REQUEST_METHOD"]))
            if view is not None:  # the hot endpoints: a dict lookup instead of the URL map
                resp = view(req)
            else:
                view, args = URLS.bind_to_environ(environ).match()
                resp = view(req, **args)
        except HTTPException as exc:
            resp = self._error(req, exc.code or 500)
        except Exception as exc:  # never a stack trace to a client; never a body in the log
            # The route, not the path: a path can hold client text (/v1/models/<name>).
            route = path if (path, environ["REQUEST_METHOD"]) in _EXACT else "/v1/…"
            log.error("unhandled %s at %s %s: %s", type(exc).__name__, req.method, route, where(exc))
            resp = self._error(req, 500)
        h = resp.headers
        h["x-request-id"] = rid
        h["request-id"] = rid
        h["X-Content-Type-Options"] = "nosniff"
        return resp(environ, start_response)

    @staticmethod
    def _error(req: Request, status: int) -> Response:
        message = _STATUS_TEXT.get(status, "The request could not be completed.")
        if api_of(req) == "anthropic":
            body = tr.anthropic_error(tr.error_type_for_status(status, "anthropic"), message,
                                      request_id=req.environ["relay.request_id"])
        else:
            body = tr.openai_error(status, message)
        return Response(orjson.dumps(body), status=status, mimetype="application/json")


def init_app(app: Flask) -> None:
    try:
        registry = load(app.config["PROVIDERS_FILE"])
    except ProvidersFileError as exc:
        raise RuntimeError(f"PROVIDERS_FILE: {exc}") from None
    app.extensions["relay_registry"] = registry
    app.extensions["relay_limits"] = Limits(app.config["RATELIMIT_STORAGE_URI"], app.config["RELAY_LIMITS"])
    with app.app_context():
        app.extensions["relay_engine"] = db.engine  # the key lookup runs outside Flask's app context
    app.extensions["relay_hash_key"] = key_hasher(app.config["SECRET_KEY"])
    init_meter(app)
    app.wsgi_app = RelayDispatch(app, app.wsgi_app)
