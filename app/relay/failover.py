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
    if dirn is not None and call.req.headers.get("anthropic-beta"):
        # A beta feature asked of Anthropic cannot be asked of another API: said, not dropped.
        raise TranslationError("the anthropic-beta header cannot be carried to a model of another API",
                               "anthropic-beta")
    body = dict(call.body, model=target.model) if dirn is None else dirn.request(call.body, target.model)
    body = shape.prepare(body, call.stream)
    headers = shape.headers(target.provider, call.req.headers, dirn is None, call.stream)
    return shape.path, orjson.dumps(body), headers


class Failover:
    """The bookkeeping of one failover: which targets may be tried, what each
    attempt came to, and the refusal when none answered. The transport (a
    blocking loop below, an async one in app/relay/asgi.py) does the sending."""

    def __init__(self, call: Call) -> None:
        self.call = call
        self.classes: list[str] = []

    def candidates(self):
        """(target, shape, (path, body, headers)) for each target worth trying, in order."""
        call = self.call
        for target in call.resolved.targets:
            prov = target.provider
            shape = call.shape.upstream(prov)
            if shape is None:
                self._note(target, "skipped", "unsupported_endpoint", 0, counts=False)
                continue
            if prov.kind != "openai_compatible" and not prov.api_key:
                self._note(target, "skipped", "missing_credential", 0)
                continue
            try:
                request = build_request(call, target, shape)
            except TranslationError as exc:
                raise Refusal(400, str(exc), param=exc.param) from None
            yield target, shape, request

    def _note(self, target: Target, outcome: str, error_class: str | None, ms: int, counts: bool = True) -> None:
        entry = {"provider": target.provider.name, "model": target.model, "outcome": outcome}
        if error_class is not None:
            entry["error_class"] = error_class
            if counts:
                self.classes.append(error_class)
        self.call.trace.append({**entry, "ms": ms})

    def failed(self, target: Target, error_class: str, t0: float) -> None:
        """The attempt got no usable answer (connect error, timeout, 429, 5xx): try the next."""
        self._note(target, "error", error_class, int((time.perf_counter() - t0) * 1000))

    @staticmethod
    def retry(status: int) -> bool:
        """A status that sends the request on to the next target (its body is dropped unread)."""
        return status == 429 or status >= 500

    def answered(self, target: Target, shape: Shape, resp, t0: float) -> Answer:
        ms = int((time.perf_counter() - t0) * 1000)
        self._note(target, "ok" if resp.status < 400 else f"http_{resp.status}", None, ms)
        self.call.provider = target.provider.name
        return Answer(target, shape, direction(self.call.shape.name, shape.name), resp)

    def refusal(self) -> Refusal:
        """Why no target answered, summed up for the client."""
        classes = self.classes
        error_class = classes[-1] if classes else "no_target"
        if classes and all(c == "http_429" for c in classes):
            return Refusal(429, "Every provider for this model is rate limited. Retry shortly.",
                           error_class=error_class, headers={"Retry-After": "1"})
        if classes and all(c == "timeout" for c in classes):
            return Refusal(504, "No provider for this model answered in time.", error_class=error_class)
        if classes and all(c == "missing_credential" for c in classes):
            return Refusal(503, "This model's providers are not configured with credentials.",
                           error_class=error_class)
        return Refusal(502, "No provider could serve this request (see the routing trace in your usage).",
                       error_class=error_class)


def failover(call: Call) -> Answer:
    """The first target that answers (blocking transport), or a Refusal that sums up why none did."""
    f = Failover(call)
    for target, shape, (path, payload, headers) in f.candidates():
        t0 = time.perf_counter()
        try:
            resp = upstream.send(target.provider, path, payload, headers)
        except upstream.UpstreamError as exc:
            f.failed(target, exc.error_class, t0)
            continue
        if f.retry(resp.status):
            try:
                resp.read()  # drained and dropped: provider error bodies can quote the prompt
                resp.release()
            except upstream.UpstreamError:
                pass
            f.failed(target, f"http_{resp.status}", t0)
            continue
        return f.answered(target, shape, resp, t0)
    raise f.refusal()
