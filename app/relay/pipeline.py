"""One relay request, top to bottom (P20-P23, P25).

    authenticate -> labels -> body -> model -> admit -> budget -> failover -> deliver (whole or stream) -> settle

Each stage is a small function of the `Call` with one job: it fills in what
it learned, or raises `Refusal`, which `run` answers in the client's API shape.
A later stage (budget admission, bring-your-own-key routing, payload capture)
is one more function in `STAGES`, or one more step in `run`, touching none of
the others. `settle` is the only place a call is metered: after an answer, or
after a refusal of a request whose key was good; never from an error helper.

Bodies live in the `Call` for the life of the request and are never logged,
stored or put into an exception message (P23): errors carry an error class,
and the only upstream text that goes anywhere goes to the client.
"""
from __future__ import annotations

import dataclasses
import re
import time
from datetime import datetime, timezone

import orjson
from werkzeug.wrappers import Request, Response

from app import keyauth
from app.relay import budget, deliver
from app.relay.call import UNKNOWN_MODEL, Call, Refusal
from app.relay.failover import failover
from app.relay.providers import Registry
from app.relay.shapes import Shape
from app.relay.wire import TranslationError, Usage

# Used with fullmatch: `$` alone would let a trailing newline through.
PROJECT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
TAG_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:=-]{0,31}")
MAX_TAGS = 10


def begin(req: Request, shape: Shape, metered: bool | None = None) -> Call:
    ext = req.environ["relay.extensions"]
    return Call(request_id=req.environ["relay.request_id"], shape=shape, req=req,
                started=datetime.now(timezone.utc), t0=time.perf_counter(),
                limits=ext["relay_limits"], meter=ext["meter"],
                metered=shape.metered if metered is None else metered)


# ---- the stages ------------------------------------------------------------------------

def authenticate(call: Call) -> None:
    """The key and its account may be used now (app/keyauth.py, shared with the export API)."""
    ext = call.req.environ["relay.extensions"]
    key, refused = keyauth.authenticate(call.req.headers, ext["relay_engine"], ext["relay_hash_key"])
    if refused:
        status, type_, message = refused
        raise Refusal(status, message, type_)
    call.key = key


def labels(call: Call) -> None:
    """Project and tags come from headers, validated and bounded (P22)."""
    project = call.req.headers.get("X-Relay-Project")
    if project is not None:
        if not PROJECT_RE.fullmatch(project):
            raise Refusal(400, "X-Relay-Project must be 1-64 letters, digits or . _ : -")
        call.project = project
    tags = call.req.headers.get("X-Relay-Tags")
    if tags is not None:
        items = [t.strip() for t in tags.split(",") if t.strip()]
        if len(items) > MAX_TAGS or not all(TAG_RE.fullmatch(t) for t in items):
            raise Refusal(400, f"X-Relay-Tags takes up to {MAX_TAGS} comma-separated tags of "
                               "1-32 letters, digits or . _ : = -")
        call.tags = items or None


def body(call: Call) -> None:
    """A JSON object naming a model, in the form the client's shape requires."""
    data = call.req.get_data(cache=False)
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise Refusal(400, "The request body is not valid JSON.") from None
    if not isinstance(parsed, dict):
        raise Refusal(400, "The request body must be a JSON object.")
    model = parsed.get("model")
    if not isinstance(model, str) or not model:
        raise Refusal(400, "The request needs a 'model' string.")
    name_model(call, model)
    try:
        problem = call.shape.check(parsed)
    except TranslationError as exc:
        raise Refusal(400, str(exc), param=exc.param) from None
    if problem is None and "stream" in parsed and not isinstance(parsed["stream"], bool):
        # Forwarded as sent, a truthy non-boolean makes the provider stream while
        # the relay waits for JSON: the client's error, answered before anything goes upstream.
        problem = "stream: true or false is required."
    if problem:
        raise Refusal(400, problem)
    call.body = parsed
    call.body_bytes = len(data)
    call.stream = parsed.get("stream") is True and call.shape.streams


def name_model(call: Call, name: str) -> None:
    """Note the model the client asked for. The usage row gets the name only
    if the registry knows it: anything else is client text (a prompt pasted
    into `model`), which no column may hold (P23)."""
    call.requested = name
    registry: Registry = call.req.environ["relay.extensions"]["relay_registry"]
    call.resolved = registry.model(name)
    call.model = name if call.resolved is not None else UNKNOWN_MODEL


def model(call: Call) -> None:
    """The model named earlier exists, this key may use it, and it can serve this shape."""
    found = call.resolved
    allowed = orjson.loads(call.key.allowed_models) if call.key.allowed_models else None
    if found is None or (allowed is not None and call.requested not in allowed):
        what = "is not available through this relay" if found is None else "is not allowed for this API key"
        raise Refusal(404, f"The model '{call.requested[:100]}' {what}.",  # to the client only
                      call.shape.family.not_found_type)
    if not any(call.shape.upstream(t.provider) for t in found.targets):
        raise Refusal(400, call.shape.unsupported.format(model=call.model))


def admit(call: Call) -> None:
    """The key's and the account's request and token budgets (P25)."""
    key = call.key
    refusal = call.limits.admit(key.id, key.user_id, key.rpm_limit, key.tpm_limit)
    if refusal:
        raise Refusal(429, refusal.message, "rate_limit_error",
                      error_class=f"rate_limited_{refusal.scope}_{refusal.what}",
                      headers={"Retry-After": str(refusal.retry_after),
                               **call.limits.headers(key.id, key.rpm_limit)})


STAGES = (authenticate, labels, body, model, admit, budget.admit)


# ---- the run ----------------------------------------------------------------------------

def run(req: Request, shape: Shape) -> Response:
    call = begin(req, shape)
    try:
        for stage in STAGES:
            stage(call)
        if call.hold_wanted:
            budget.hold(call)
        answer = failover(call)
        if answer.resp.status >= 400:
            raise deliver.refused_by_provider(call, answer)
        if call.stream:
            return deliver.stream(call, answer, settle)
        return deliver.whole(call, answer, settle)
    except Refusal as refusal:
        return refuse(call, refusal)
    except Exception:
        abandon(call)
        raise


def abandon(call: Call) -> None:
    """A bug ended the call before it was answered: metered as the 500 the client gets,
    so its budget hold goes back with its row instead of waiting for the sweeper."""
    call.status, call.error_class = 500, "relay_error"
    settle(call)


def refuse(call: Call, refusal: Refusal) -> Response:
    """The error in the client's shape; a model call with a good key is metered as refused."""
    call.status = refusal.status
    if refusal.error_class:
        call.error_class = refusal.error_class
    family = call.shape.family
    call.error_class = call.error_class or refusal.type_ or family.error_type(refusal.status)
    body = family.error(refusal.status, refusal.message, refusal.type_, call.request_id, refusal.param)
    settle(call)
    return Response(orjson.dumps(body), status=refusal.status, mimetype="application/json",
                    headers=refusal.headers)


# ---- settle: the one place a call is metered ----------------------------------------------

def settle(call: Call, reported: Usage | None = None, chars_out: int | None = None) -> None:
    """Count the call once: its usage (the provider's counts when plausible, else an
    estimate; none when no answer came back), its cost, the tokens charged to
    its limits, and its row queued for the meter. Runs after the last byte,
    possibly outside the request context (streams)."""
    if call.settled or call.key is None or not call.metered:
        return
    call.settled = True
    if chars_out is not None:  # an answer came back
        call.usage, call.usage_source = counted(reported, call.body_bytes, chars_out)
        if call.usage_source == "estimated" and call.output_cap is not None:
            # The provider was told to stop at the cap: an estimate above it is the estimate's error.
            call.usage = dataclasses.replace(call.usage, output_tokens=min(call.usage.output_tokens, call.output_cap))
        u = call.usage
        call.cost = call.resolved.price.cost(u.input_tokens, u.output_tokens, u.cache_read_tokens,
                                             u.cache_write_tokens)
    u, key = call.usage, call.key
    call.limits.charge_tokens(key.id, key.user_id, key.rpm_limit, key.tpm_limit,
                              u.input_tokens + u.output_tokens + u.cache_read_tokens + u.cache_write_tokens)
    if call.hold is not None:
        budget.settled(call)
    call.meter.record(call.row())


def counted(reported: Usage | None, chars_in: int, chars_out: int) -> tuple[Usage, str]:
    """Use the provider's counts when it gave plausible ones; otherwise estimate
    (about four characters a token, and labelled as an estimate). Never a
    silent zero: zero input tokens, or zero output for a non-empty answer, is
    not believed."""
    if reported is not None and reported.reported:
        if reported.prompt_tokens > 0 and (reported.output_tokens > 0 or chars_out == 0):
            return reported, "provider"
    estimate = Usage(input_tokens=max(1, chars_in // 4), output_tokens=chars_out // 4)
    if reported is not None and not reported.reported and reported.prompt_tokens > 0:
        # A stream cut short after the provider counted the prompt: its input and
        # cache counts are exact; only the output is estimated.
        estimate = Usage(reported.input_tokens, max(reported.output_tokens, estimate.output_tokens),
                         reported.cache_read_tokens, reported.cache_write_tokens)
    return estimate, "estimated"
