"""The analytics page's figures (P30, P31), read from `usage_rollups` only.

Every query names one scope (team_id, user_id), one grain and one dimension,
and a bucket range: an index range walk on uq_usage_rollups_cell, whose cost
depends on the range and the number of distinct values, never on how many
requests there were. Raw usage rows are never read here.

Which scope a person sees is decided once, by `scope_for(context)`: personal
usage is (0, me); an owner or admin of team T sees (T, 0), the whole team with
its member breakdown; a member of T sees (T, me), their own part, which holds
no other member's figures at all (P31).

Ranges: "24h" and "7d" are the last 24 / 168 whole hours up to and including
the current one, in hourly cells; "30d" and "90d" are the last 30 / 90 UTC
days including today, in daily cells; a custom range is whole UTC days from
one date to another, inclusive, in hourly cells when it spans at most 7 days
and its hours are still kept, daily otherwise. Every range is a whole number
of its cells, so the totals are exact (no partial day is guessed at), and the
current hour or day simply holds what has happened so far.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

import sqlalchemy as sa

from app.extensions import db
from app.models import ApiKey, UsageRollup, User
from app.numbers import parse_int
from app.services.rollups import FORMER, HIST_BUCKETS, bucket_range, day_of, hour_of

RANGES = {"24h": "Last 24 hours", "7d": "Last 7 days", "30d": "Last 30 days", "90d": "Last 90 days"}
MAX_CUSTOM_DAYS = 366
HOURLY_MAX_DAYS = 7
TOP = 15  # breakdown rows shown; the rest are summed into one "Other" row
BREAKDOWNS = {"model": "Model", "key": "API key", "member": "Member", "project": "Project", "tag": "Tag"}
PERCENTILES = (50, 90, 99)
R = UsageRollup


@dataclass(frozen=True)
class Scope:
    team_id: int
    user_id: int

    @property
    def whole_team(self) -> bool:
        """Only a whole-team scope has the per-member dimension (P31)."""
        return self.team_id != 0 and self.user_id == 0


def scope_for(ctx) -> Scope:
    """The cells a context may read: personal (0, me), team (T, 0) for owners
    and admins, (T, me) for a member."""
    return Scope(*ctx.rollup_cell)


@dataclass(frozen=True)
class Window:
    """[start, end) in whole cells of one grain."""

    start: datetime
    end: datetime
    grain: str
    label: str

    @property
    def step(self) -> timedelta:
        return timedelta(hours=1) if self.grain == "h" else timedelta(days=1)

    def buckets(self) -> list[datetime]:
        out, at = [], self.start
        while at < self.end:
            out.append(at)
            at += self.step
        return out


def _midnight(d: date) -> datetime:
    return datetime.combine(d, time.min, tzinfo=UTC)


def preset_window(key: str, now: datetime) -> Window:
    """One of RANGES, ending with the current hour (24h, 7d) or day (30d, 90d)."""
    if key in ("24h", "7d"):
        end = hour_of(now) + timedelta(hours=1)
        return Window(end - timedelta(hours=24 if key == "24h" else 168), end, "h", RANGES[key])
    days = 30 if key == "30d" else 90
    end = day_of(now) + timedelta(days=1)
    return Window(end - timedelta(days=days), end, "d", RANGES[key])


def custom_window(first: date, last: date, now: datetime, hourly_days: int) -> Window:
    """Whole UTC days first..last inclusive (the caller checked the order and
    length). Hourly cells only if the span is short and they are still kept
    (they go after METADATA_RETENTION_DAYS, `hourly_days`)."""
    start, end = _midnight(first), _midnight(last) + timedelta(days=1)
    hourly_kept_from = hour_of(now) - timedelta(days=hourly_days)
    grain = "h" if end - start <= timedelta(days=HOURLY_MAX_DAYS) and start >= hourly_kept_from else "d"
    label = f"{first.isoformat()} to {last.isoformat()}" if first != last else first.isoformat()
    return Window(start, end, grain, label)


# ---- the figures ----------------------------------------------------------------------

@dataclass
class Figures:
    requests: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost_usd: Decimal = Decimal(0)

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens + self.cache_read_tokens + self.cache_write_tokens

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def add(self, other: Figures) -> None:
        for name in ("requests", "errors", "input_tokens", "output_tokens", "cache_read_tokens",
                     "cache_write_tokens", "cost_usd"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class Point(Figures):
    bucket: datetime | None = None


@dataclass
class Slice(Figures):
    value: str = ""
    label: str = ""
    detail: str = ""  # e.g. "revoked", the person's email


@dataclass
class Quantiles:
    count: int = 0
    mean_ms: float | None = None
    values: dict[int, float] = field(default_factory=dict)  # percentile -> ms (estimate)


SUM_COLUMNS = (sa.func.sum(R.requests), sa.func.sum(R.errors), sa.func.sum(R.input_tokens),
               sa.func.sum(R.output_tokens), sa.func.sum(R.cache_read_tokens), sa.func.sum(R.cache_write_tokens),
               sa.func.sum(R.cost_usd))


def _figures(cls, row, **extra):
    req, err, tin, tout, cread, cwrite, cost = row
    return cls(requests=int(req or 0), errors=int(err or 0), input_tokens=int(tin or 0),
               output_tokens=int(tout or 0), cache_read_tokens=int(cread or 0), cache_write_tokens=int(cwrite or 0),
               cost_usd=Decimal(str(cost or 0)), **extra)


def _cells(scope: Scope, window: Window, dim: str) -> list:
    """The WHERE of every query: equality on the index's first four columns, a range on the fifth."""
    return [R.team_id == scope.team_id, R.user_id == scope.user_id, R.grain == window.grain, R.dim == dim,
            R.bucket >= window.start, R.bucket < window.end]


def series_statement(scope: Scope, window: Window):
    return sa.select(R.bucket, *SUM_COLUMNS).where(*_cells(scope, window, "")).group_by(R.bucket).order_by(R.bucket)


def series(scope: Scope, window: Window) -> list[Point]:
    """One point per cell of the window, zero where nothing happened, oldest first."""
    found = {b: _figures(Point, rest, bucket=b) for b, *rest in db.session.execute(series_statement(scope, window))}
    return [found.get(b) or Point(bucket=b) for b in window.buckets()]


def totals(points: Iterable[Point]) -> Figures:
    out = Figures()
    for p in points:
        out.add(p)
    return out


def breakdown_statement(scope: Scope, window: Window, dim: str):
    return sa.select(R.value, *SUM_COLUMNS).where(*_cells(scope, window, dim)).group_by(R.value)


def breakdown(scope: Scope, window: Window, dim: str, top: int = TOP) -> list[Slice]:
    """Spend and counts per value of a dimension, largest spend first; beyond
    `top`, one "Other" row. "member" only for a whole-team scope (P31)."""
    if dim not in BREAKDOWNS or (dim == "member" and not scope.whole_team):
        return []
    slices = [_figures(Slice, rest, value=value) for value, *rest in
              db.session.execute(breakdown_statement(scope, window, dim))]
    slices.sort(key=lambda s: (-s.cost_usd, -s.requests, s.value))
    if len(slices) > top:
        rest = Slice(value="", label=f"Other ({len(slices) - top + 1})")
        for s in slices[top - 1:]:
            rest.add(s)
        slices = slices[:top - 1]
        _label(dim, slices, scope)
        return [*slices, rest]
    _label(dim, slices, scope)
    return slices


def _as_id(value: str) -> int | None:
    return parse_int(value, minimum=1)


def _ids(values: Iterable[str]) -> list[int]:
    return [i for i in map(_as_id, values) if i is not None]


def _label(dim: str, slices: list[Slice], scope: Scope) -> None:
    """Names for ids: keys by their name (revoked ones too), members by name
    and email. Only values found in the scope's own cells are looked up, so a
    member's view can only ever name their own keys."""
    if dim == "key":
        keys = {k.id: k for k in db.session.execute(
            sa.select(ApiKey.id, ApiKey.name, ApiKey.revoked_at).where(ApiKey.id.in_(_ids(s.value for s in slices))))}
        for s in slices:
            k = keys.get(_as_id(s.value))
            if s.value == FORMER:
                s.label = "Deleted keys"
            elif not s.value:
                s.label = "No key"
            elif k is None:
                s.label = "Deleted key"
            else:
                s.label, s.detail = k.name, "revoked" if k.revoked_at else ""
    elif dim == "member":
        people = {u.id: u for u in db.session.execute(
            sa.select(User.id, User.name, User.email).where(User.id.in_(_ids(s.value for s in slices))))}
        for s in slices:
            u = people.get(_as_id(s.value))
            if u is None:
                s.label = "Former members" if s.value == FORMER else "Former member"
            else:
                s.label, s.detail = (u.name or u.email), (u.email if u.name else "")
    else:
        empty = {"project": "No project", "model": "(no model)", "tag": "(no tag)"}[dim]
        for s in slices:
            s.label = s.value or empty


def histogram_statement(scope: Scope, window: Window, dim: str):
    return (sa.select(R.value, sa.func.sum(R.requests), sa.func.sum(R.latency_ms_sum),
                      sa.func.sum(R.ttft_ms_sum), sa.func.sum(R.ttft_count))
            .where(*_cells(scope, window, dim)).group_by(R.value))


def quantiles(scope: Scope, window: Window, dim: str) -> Quantiles:
    """p50/p90/p99 of latency ("lat") or time to first token ("ttft") from the
    histogram, and the exact mean from the kept sums. A percentile falls in a
    bucket; inside it, the estimate is interpolated on a log scale by rank, so
    it is within that bucket's bounds (a factor of at most 5/3) of the truth."""
    counts = [0] * HIST_BUCKETS
    total_ms = 0
    for value, n, lat_sum, ttft_sum, _ttft_n in db.session.execute(histogram_statement(scope, window, dim)):
        index = parse_int(value, maximum=HIST_BUCKETS - 1)
        if index is not None:
            counts[index] += int(n or 0)
            total_ms += int((lat_sum if dim == "lat" else ttft_sum) or 0)
    n = sum(counts)
    if not n:
        return Quantiles()
    return Quantiles(count=n, mean_ms=total_ms / n, values={p: _percentile(counts, n, p) for p in PERCENTILES})


def _percentile(counts: list[int], n: int, p: int) -> float:
    rank = p / 100 * n
    seen = 0
    for index, c in enumerate(counts):
        if c and seen + c >= rank:
            low, high = bucket_range(index)
            low = max(low, 1)
            if high is None:
                return float(low)
            share = (rank - seen) / c
            return low * (high / low) ** share
        seen += c
    return float(bucket_range(HIST_BUCKETS - 1)[0])


@dataclass
class Report:
    """Everything the page shows for one scope and window."""

    scope: Scope
    window: Window
    points: list[Point]
    total: Figures
    breakdowns: dict[str, list[Slice]]
    latency: Quantiles
    ttft: Quantiles

    @property
    def empty(self) -> bool:
        return self.total.requests == 0


def report(scope: Scope, window: Window) -> Report:
    points = series(scope, window)
    dims = [d for d in BREAKDOWNS if d != "member" or scope.whole_team]
    return Report(scope, window, points, totals(points), {d: breakdown(scope, window, d) for d in dims},
                  quantiles(scope, window, "lat"), quantiles(scope, window, "ttft"))


def has_any(scope: Scope) -> bool:
    """Whether the scope ever had a request (within the daily cells kept)."""
    return db.session.scalar(sa.select(R.id).where(R.team_id == scope.team_id, R.user_id == scope.user_id,
                                                   R.grain == "d", R.dim == "").limit(1)) is not None
