"""Failover: try a model's targets in order until one answers (P21).

The next target is tried only when the previous one failed before any byte
reached the client: a connect error, a timeout, a 429 or a 5xx. Each attempt
goes into the routing trace with its outcome and an error class, never with
anything the provider said (its error bodies can quote the prompt, P23).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import orjson

from app.relay import upstream
from app.relay.call import Call, Refusal
from app.relay.providers import Target
from app.relay.shapes import Shape
from app.relay.translate import Direction, direction
from app.relay.wire import TranslationError


@dataclass
class Answer:
    """The target that answered, the shape it answered in, and its response (headers read)."""
    target: Target
    shape: Shape
    direction: Direction | None
    resp: upstream.Response


def build_request(call: Call, target: Target, shape: Shape) -> tuple[str, bytes, dict]:
    """The provider call for `target` in `shape`: path, body bytes and headers."""
    dirn = direction(call.shape.name, shape.name)
    body = dict(call.body, model=target.model) if dirn is None else dirn.request(call.body, target.model)
    body = shape.prepare(body, call.stream)
    headers = shape.headers(target.provider, call.req.headers, dirn is None, call.stream)
    return shape.path, orjson.dumps(body), headers


def failover(call: Call) -> Answer:
    """The first target that answers, or a Refusal that sums up why none did."""
    classes = []
    for target in call.resolved.targets:
        prov = target.provider
        entry = {"provider": prov.name, "model": target.model}
        shape = call.shape.upstream(prov)
        if shape is None:
            call.trace.append({**entry, "outcome": "skipped", "error_class": "unsupported_endpoint", "ms": 0})
            continue
        if prov.kind != "openai_compatible" and not prov.api_key:
            call.trace.append({**entry, "outcome": "skipped", "error_class": "missing_credential", "ms": 0})
            classes.append("missing_credential")
            continue
        try:
            path, payload, headers = build_request(call, target, shape)
        except TranslationError as exc:
            raise Refusal(400, str(exc)) from None
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
        return Answer(target, shape, direction(call.shape.name, shape.name), resp)
    error_class = classes[-1] if classes else "no_target"
    if classes and all(c == "http_429" for c in classes):
        raise Refusal(429, "Every provider for this model is rate limited. Retry shortly.",
                      error_class=error_class, headers={"Retry-After": "1"})
    if classes and all(c == "timeout" for c in classes):
        raise Refusal(504, "No provider for this model answered in time.", error_class=error_class)
    if classes and all(c == "missing_credential" for c in classes):
        raise Refusal(503, "This model's providers are not configured with credentials.", error_class=error_class)
    raise Refusal(502, "No provider could serve this request (see the routing trace in your usage).",
                  error_class=error_class)
