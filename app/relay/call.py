"""What the relay knows about one request while it runs, and the one way a stage says no.

A `Call` holds only P22's fields and timings plus what the stages hand each
other. The request body lives in `Call.body` for the life of the request and
goes nowhere else (P23): `row()` is what reaches the database, and it has no
content column.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import orjson

from app import keyauth
from app.relay.wire import Usage

if TYPE_CHECKING:
    from werkzeug.wrappers import Request

    from app.relay.limits import Limits
    from app.relay.providers import Model
    from app.relay.shapes import Shape

UNKNOWN_MODEL = "(unknown model)"


class Refusal(Exception):
    """A stage's "no": answered to the client as an error in its API's shape.

    The message goes to the client only; it never quotes what the client sent
    beyond a model name, and it is never logged (P23)."""

    def __init__(self, status: int, message: str, type_: str | None = None, *,
                 error_class: str | None = None, headers: dict | None = None, param: str | None = None):
        super().__init__(error_class or type_ or status)
        self.status, self.message, self.type_ = status, message, type_
        self.error_class, self.headers, self.param = error_class, headers, param


@dataclass
class Call:
    request_id: str
    shape: Shape                  # the API shape the client speaks (app/relay/shapes.py)
    req: Request = field(repr=False)
    started: datetime
    t0: float
    limits: Limits = field(repr=False)
    meter: object = field(repr=False)
    metered: bool = True          # a model call gets a usage row; a model lookup does not
    key: keyauth.KeyRow | None = None
    project: str | None = None
    tags: list[str] | None = None
    body: dict | None = field(default=None, repr=False)
    body_bytes: int = 0           # the body's size: the input bound of a budget hold
    stream: bool = False
    # The name the client sent: echoed to the client only, never recorded.
    requested: str = field(default="", repr=False)
    # What the usage row says: a name the registry knows, or UNKNOWN_MODEL (P23).
    model: str = UNKNOWN_MODEL
    resolved: Model | None = field(default=None, repr=False)  # the registry's entry for it
    provider: str | None = None
    usage: Usage = field(default_factory=Usage)
    usage_source: str = "none"
    cost: object = 0
    ttft_ms: int | None = None
    status: int = 200
    error_class: str | None = None
    trace: list[dict] = field(default_factory=list)
    output_cap: int | None = None  # the most output tokens a budget hold allowed for
    # (limits, wallet id, units) a budget wants held, and once it is held (app/relay/budget.py)
    hold_wanted: tuple | None = field(default=None, repr=False)
    hold: tuple | None = field(default=None, repr=False)
    settled: bool = False

    @property
    def api(self) -> str:
        """The client's API family, "openai" or "anthropic": the shape of every answer."""
        return self.shape.family.name

    def first_token(self) -> None:
        if self.ttft_ms is None:
            self.ttft_ms = int((time.perf_counter() - self.t0) * 1000)

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
