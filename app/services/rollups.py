"""Running usage totals (P30, P31): what the usage writer adds to `usage_rollups`
for every batch of rows it inserts, what account erasure folds away, and what
retention prunes.

The analytics pages read only these cells, so they cost the same at ten rows
or ten million. A batch's deltas are summed here in Python first: 500 rows
made in the same hour by a few keys and models become one upsert statement
of a few dozen cells, not 500 × 30 row updates.

Scopes (see UsageRollup): a personal row of user U counts in (0, U); a team
row of team T made by member M counts in (T, 0), the whole team, with a
"member" dimension, and in (T, M), the member's own part, without one (so a
member's view never holds another member's figures, P31). Every row counts
in both grains, "h" (its hour) and "d" (its UTC day).

Latency and time to first token go to a fixed log-scale histogram of 24
buckets (`LATENCY_BOUNDS`, in ms): bucket 0 is under 10 ms, bucket 23 is
250 s or more, and each bucket in between spans a factor of at most 5/3
(10, 15, 25, 40, 60, 100, …). A percentile read from it is placed inside the
right bucket by interpolation, so it is within that factor of the true value
(usually far closer); means are exact (the sums are kept).
"""
from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import orjson
import sqlalchemy as sa

from app.models import UsageRecord, UsageRollup
from app.models.types import insert_for

TABLE = UsageRollup.__table__
CELL = ("team_id", "user_id", "grain", "dim", "bucket", "value")
SUMS = ("requests", "errors", "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
        "cost_usd", "latency_ms_sum", "ttft_ms_sum", "ttft_count")
GRAINS = ("h", "d")
DIMS = ("", "model", "key", "member", "project", "tag", "lat", "ttft")
FORMER = "former"  # the value an erased member's or key's team figures are folded into
VALUE_LEN = 100

# Upper bounds (exclusive) of histogram buckets 0..22; bucket 23 is everything above.
LATENCY_BOUNDS: tuple[int, ...] = (10, 15, 25, 40, 60, 100, 150, 250, 400, 600, 1_000, 1_500, 2_500, 4_000,
                                   6_000, 10_000, 15_000, 25_000, 40_000, 60_000, 100_000, 150_000, 250_000)
HIST_BUCKETS = len(LATENCY_BOUNDS) + 1

Cell = tuple[int, int, str, str, datetime, str]


def hist_bucket(ms: int) -> str:
    """The histogram value of a duration: a zero-padded index, so values sort as numbers."""
    return f"{bisect.bisect_right(LATENCY_BOUNDS, max(0, ms)):02d}"


def bucket_range(index: int) -> tuple[int, int | None]:
    """[low, high) in ms of histogram bucket `index`; high None for the last one."""
    low = 0 if index == 0 else LATENCY_BOUNDS[index - 1]
    high = LATENCY_BOUNDS[index] if index < len(LATENCY_BOUNDS) else None
    return low, high


def hour_of(when: datetime) -> datetime:
    return when.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def day_of(when: datetime) -> datetime:
    return datetime.combine(when.astimezone(UTC).date(), time.min, tzinfo=UTC)


def is_error(status_code: int) -> bool:
    return not 200 <= status_code <= 299


def _tags(raw: str | None) -> list[str]:
    """The row's tags (a JSON list, validated at the edge); each counted once."""
    if not raw:
        return []
    try:
        items = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return []
    if not isinstance(items, list):
        return []
    return sorted({str(t)[:VALUE_LEN] for t in items if isinstance(t, str) and t})


def _scopes(row: dict) -> list[tuple[int, int, bool]]:
    """(team_id, user_id, with member dimension) for every scope the row counts in."""
    user = row.get("user_id") or 0
    team = row.get("team_id")
    if team is None:
        return [(0, user, False)]
    scopes = [(team, 0, True)]
    if user:
        scopes.append((team, user, False))
    return scopes


def _dims(row: dict, with_member: bool) -> list[tuple[str, str]]:
    """(dim, value) pairs the row adds to within one scope and grain."""
    key = row.get("api_key_id")
    dims = [("", ""), ("model", str(row["model"])[:VALUE_LEN]), ("key", str(key) if key else ""),
            ("project", (row.get("project") or "")[:VALUE_LEN]), ("lat", hist_bucket(row["latency_ms"]))]
    if row.get("ttft_ms") is not None:
        dims.append(("ttft", hist_bucket(row["ttft_ms"])))
    dims.extend(("tag", t) for t in _tags(row.get("tags")))
    if with_member and row.get("user_id"):
        dims.append(("member", str(row["user_id"])))
    return dims


def _amounts(row: dict) -> list:
    """The row's contribution to each of SUMS, in that order."""
    ttft = row.get("ttft_ms")
    return [1, 1 if is_error(row["status_code"]) else 0, row.get("input_tokens") or 0,
            row.get("output_tokens") or 0, row.get("cache_read_tokens") or 0, row.get("cache_write_tokens") or 0,
            Decimal(row.get("cost_usd") or 0), row.get("latency_ms") or 0, ttft or 0, 0 if ttft is None else 1]


def deltas(rows: Iterable[dict]) -> dict[Cell, list]:
    """Sum a batch of usage rows (as the meter inserts them) into rollup cells."""
    out: dict[Cell, list] = defaultdict(lambda: [0] * len(SUMS))
    for row in rows:
        amounts = _amounts(row)
        buckets = (("h", hour_of(row["started_at"])), ("d", day_of(row["started_at"])))
        for team, user, with_member in _scopes(row):
            dims = _dims(row, with_member)
            for grain, bucket in buckets:
                for dim, value in dims:
                    acc = out[(team, user, grain, dim, bucket, value)]
                    for i, amount in enumerate(amounts):
                        acc[i] += amount
    return out


_UPSERTS: dict[str, object] = {}


def _upsert_statement(conn):
    """INSERT … ON CONFLICT (the cell) DO UPDATE adding the delta to what is there.
    Built once per dialect: building it costs more than running it for a small batch."""
    stmt = _UPSERTS.get(conn.dialect.name)
    if stmt is None:
        insert = insert_for(conn)(TABLE)
        stmt = _UPSERTS[conn.dialect.name] = insert.on_conflict_do_update(
            index_elements=list(CELL),
            set_={name: TABLE.c[name] + insert.excluded[name] for name in SUMS})
    return stmt


def upsert(conn, cells: dict[Cell, list]) -> int:
    """Add the cells to the table in one executemany; how many cells. Sorted,
    so two writers touching the same cells lock them in the same order and
    cannot deadlock each other on PostgreSQL."""
    if not cells:
        return 0
    params = [{**dict(zip(CELL, cell, strict=True)), **dict(zip(SUMS, sums, strict=True))}
              for cell, sums in sorted(cells.items())]
    conn.execute(_upsert_statement(conn), params)
    return len(params)


def apply(conn, rows: Iterable[dict]) -> int:
    """Count inserted usage rows in the rollups, on the caller's connection (so
    in the same transaction as the rows). The caller passes only rows that were
    actually inserted: a replayed row must not be counted twice."""
    return upsert(conn, deltas(rows))


# ---- erasure -----------------------------------------------------------------------------

def forget_user(conn, user_id: int, key_ids: Iterable[int]) -> int:
    """Erase a person from the rollups (P52) while every team's totals stay the same.

    Their own scopes, personal (0, U) and their part of each team (T, U), are
    deleted. In whole-team scopes (T, 0), the cells of dimension "member" for
    U and "key" for their keys are added into a cell of value "former" and
    then deleted, so the team still sees what was spent, not by whom.
    `conn` is a Connection or a Session; the caller commits. Returns the
    number of cells removed."""
    removed = conn.execute(sa.delete(TABLE).where(TABLE.c.user_id == user_id)).rowcount or 0
    keys = [str(k) for k in key_ids]
    pick = sa.and_(TABLE.c.dim == "member", TABLE.c.value == str(user_id))
    if keys:
        pick = sa.or_(pick, sa.and_(TABLE.c.dim == "key", TABLE.c.value.in_(keys)))
    where = sa.and_(TABLE.c.team_id != 0, TABLE.c.user_id == 0, pick)
    found = conn.execute(sa.select(TABLE.c.id, *(TABLE.c[c] for c in CELL), *(TABLE.c[s] for s in SUMS))
                         .where(where)).all()
    if not found:
        return removed
    folded: dict[Cell, list] = defaultdict(lambda: [0] * len(SUMS))
    for r in found:
        acc = folded[(r.team_id, 0, r.grain, r.dim, r.bucket, FORMER)]
        for i, name in enumerate(SUMS):
            acc[i] += getattr(r, name) or 0
    ids = [r.id for r in found]
    for start in range(0, len(ids), 500):
        conn.execute(sa.delete(TABLE).where(TABLE.c.id.in_(ids[start:start + 500])))
    upsert(conn, folded)
    return removed + len(ids)


# ---- retention ---------------------------------------------------------------------------

def prune(now: datetime, session: Any = None) -> int:
    """Hourly cells go after METADATA_RETENTION_DAYS (like the raw rows they
    summarize), daily cells after AGGREGATE_RETENTION_MONTHS (like UsageDaily),
    both as the policy in effect says (P60). The caller commits."""
    from app.extensions import db
    from app.services import policy
    from app.services.dates import add_months

    session = session or db.session
    hours_before = hour_of(now) - timedelta(days=policy.enforced("METADATA_RETENTION_DAYS", now))
    days_before = datetime.combine(add_months(now.date(), -policy.enforced("AGGREGATE_RETENTION_MONTHS", now)),
                                   time.min, tzinfo=UTC)
    n = session.execute(sa.delete(TABLE).where(TABLE.c.grain == "h", TABLE.c.bucket < hours_before)).rowcount
    n += session.execute(sa.delete(TABLE).where(TABLE.c.grain == "d", TABLE.c.bucket < days_before)).rowcount
    return n or 0


# ---- rebuilding ----------------------------------------------------------------------------

REBUILD_BATCH = 5000


def rebuild(session: Any) -> int:
    """Recount the cells from the raw usage rows kept now: for a deployment
    upgraded from before the rollups existed, or after a hand edit; safe to run
    again. Only the days the raw rows wholly cover are recounted: from the
    oldest raw row's day on, or from the day after when retention already
    moved part of that day into usage_daily. Cells of earlier days (whose raw
    rows are gone) stay as they are. Rows of an erased account (no user, no
    team) belong to nobody's view and are skipped. One transaction; returns
    the number of rows counted."""
    from app.models import UsageDaily

    conn = session.connection()
    rec = UsageRecord.__table__
    oldest = conn.execute(sa.select(sa.func.min(rec.c.started_at))).scalar()
    if oldest is None:
        return 0
    since = day_of(oldest)
    if conn.execute(sa.select(UsageDaily.__table__.c.id).where(UsageDaily.__table__.c.day == since.date())
                    .limit(1)).first() is not None:
        since += timedelta(days=1)
    conn.execute(sa.delete(TABLE).where(TABLE.c.bucket >= since))
    cols = [rec.c[name] for name in ("id", "user_id", "team_id", "api_key_id", "model", "project", "tags",
                                     "started_at", "status_code", "input_tokens", "output_tokens",
                                     "cache_read_tokens", "cache_write_tokens", "cost_usd", "latency_ms", "ttft_ms")]
    last, counted = 0, 0
    while True:
        rows = [dict(r._mapping) for r in conn.execute(
            sa.select(*cols).where(rec.c.id > last, rec.c.started_at >= since).order_by(rec.c.id)
            .limit(REBUILD_BATCH))]
        if not rows:
            return counted
        last = rows[-1]["id"]
        mine = [r for r in rows if r["user_id"] is not None or r["team_id"] is not None]
        apply(conn, mine)
        counted += len(mine)
