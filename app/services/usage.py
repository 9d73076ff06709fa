"""Reading the per-request usage rows (P22) back for the context that may see
them (P30, P31): the table, its summary, its filter choices and its download.

Whose rows is decided once, by `scope_for(context)`, and every query starts
from it: personal usage is `user_id = me AND team_id IS NULL`; an owner or
admin of team T sees `team_id = T` (every member's rows); a member of T sees
`team_id = T AND user_id = me`. A filter only narrows that set, so a key or
member id from elsewhere simply matches nothing.

Every raw-row query is bounded by the scope and a time range, so PostgreSQL
and SQLite walk the (user_id, started_at) or (team_id, started_at) index. The
table is read by keyset on (started_at, id), never by OFFSET, and never with
a COUNT of the raw rows: how many requests match comes from `usage_rollups`
when the filters are ones it is kept by (see `summary`).
"""
from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

import sqlalchemy as sa

from app.context import readable, rollup_cell
from app.extensions import db
from app.models import ApiKey, UsageRecord, UsageRollup
from app.services import teams

MAX_PER_PAGE = 200
MAX_MODELS_LISTED = 200
MAX_LABELS_LISTED = 200
DOWNLOAD_BATCH = 1000
MAX_ROW_ID = 2**63 - 1
U, R = UsageRecord, UsageRollup


@dataclass(frozen=True)
class Scope:
    """Whose rows a context sees: `team_id` None is personal usage."""

    user_id: int
    team_id: int | None = None
    whole_team: bool = False  # an owner or admin: every member's rows of the team

    @property
    def rollup_cell(self) -> tuple[int, int]:
        """The (team_id, user_id) of the rollup scope holding exactly these rows."""
        return rollup_cell(self.user_id, self.team_id, self.whole_team)


def scope_for(ctx) -> Scope:
    """The rows a context (app.context.Context) may read (P31)."""
    if not ctx.is_team:
        return Scope(ctx.user_id)
    return Scope(ctx.user_id, ctx.team_id, whole_team=ctx.sees_team)


@dataclass(frozen=True)
class UsageFilters:
    """What the usage table can be narrowed by; None means "any"."""

    model: str | None = None
    api_key_id: int | None = None
    member_id: int | None = None       # whole-team scopes only
    project: str | None = None
    tag: str | None = None
    status: str | None = None          # "ok" (2xx) or "error" (anything else)
    date_from: date | None = None      # UTC day, inclusive
    date_to: date | None = None        # UTC day, inclusive

    @property
    def active(self) -> bool:
        return any(getattr(self, f.name) is not None for f in fields(self))

    def dimensions(self) -> list[tuple[str, str]]:
        """The filters that are also rollup dimensions, as (dim, value)."""
        pairs = [("model", self.model), ("key", self.api_key_id), ("member", self.member_id),
                 ("project", self.project), ("tag", self.tag)]
        return [(dim, str(value)) for dim, value in pairs if value is not None]


@dataclass(frozen=True)
class UsageTotals:
    requests: int
    errors: int
    input_tokens: int        # uncached input, as the relay stores it
    output_tokens: int
    cost_usd: Decimal
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    source: str = "rows"     # "rollups" or "rows": where the figures were read

    @property
    def cached_tokens(self) -> int:
        return self.cache_read_tokens + self.cache_write_tokens

    @property
    def total_input_tokens(self) -> int:
        """Everything the model read: uncached input + cache read + cache write."""
        return self.input_tokens + self.cached_tokens


@dataclass(frozen=True)
class Cursor:
    """A position in the newest-first order: the row (started_at, id)."""

    started_at: datetime
    id: int

    FORMAT = "%Y%m%dT%H%M%S.%fZ"

    def encode(self) -> str:
        return f"{self.started_at.astimezone(UTC).strftime(self.FORMAT)}_{self.id}"

    @classmethod
    def of(cls, row) -> Cursor:
        return cls(row.started_at, row.id)


@dataclass
class Page:
    rows: list
    newer: Cursor | None   # the first row shown, when newer rows exist
    older: Cursor | None   # the last row shown, when older rows exist


# ---- which rows ----------------------------------------------------------------------------

def _day_start(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


def _contains(column, text: str):
    """`text` occurs in `column`, case-sensitively on both engines (SQLite's
    LIKE ignores ASCII case, so it uses instr)."""
    if db.engine.dialect.name == "sqlite":
        return sa.func.instr(column, text) > 0
    return column.contains(text, autoescape=True)


def _scope_conditions(scope: Scope) -> list:
    return readable(U, scope.user_id, scope.team_id, scope.whole_team)


def conditions(scope: Scope, filters: UsageFilters | None) -> list:
    """The WHERE of every raw-row query: the scope first, then the filters."""
    f = filters or UsageFilters()
    where = _scope_conditions(scope)
    if f.model is not None:
        where.append(U.model == f.model)
    if f.api_key_id is not None:
        where.append(U.api_key_id == f.api_key_id)
    if f.member_id is not None:
        # Only a whole-team scope is filtered by member; elsewhere the scope
        # already names the one person, and another id matches nothing.
        where.append(U.user_id == f.member_id)
    if f.project is not None:
        where.append(U.project == f.project)
    if f.tag is not None:
        # Tags are stored as a JSON list of strings that cannot hold a quote
        # (the relay's TAG_RE), so the quoted tag is exactly one element.
        where.append(_contains(U.tags, json.dumps(f.tag)))
    ok = U.status_code.between(200, 299)
    if f.status == "ok":
        where.append(ok)
    elif f.status == "error":
        where.append(sa.not_(ok))
    if f.date_from is not None:
        where.append(U.started_at >= _day_start(f.date_from))
    if f.date_to is not None:
        # Inclusive of the whole last day: before midnight of the day after.
        where.append(U.started_at < _day_start(f.date_to + timedelta(days=1)))
    return where


def _at(c: Cursor):
    # Typed like the columns, so the time is bound as the column stores it.
    return sa.tuple_(sa.literal(c.started_at, U.started_at.type), sa.literal(c.id, U.id.type))


def _older_than(c: Cursor) -> list:
    # The plain `started_at <= ?` beside the row comparison lets both engines
    # seek the (…, started_at) index (see bench/usage_scale.py).
    return [U.started_at <= c.started_at, sa.tuple_(U.started_at, U.id) < _at(c)]


def _newer_than(c: Cursor) -> list:
    return [U.started_at >= c.started_at, sa.tuple_(U.started_at, U.id) > _at(c)]


# ---- the table -----------------------------------------------------------------------------

def page(scope: Scope, filters: UsageFilters | None, per_page: int = 50, *,
         after: Cursor | None = None, before: Cursor | None = None) -> Page:
    """One page of the scope's requests, newest first, by keyset.

    `after`: the rows just older than that one (the "Older" link); `before`:
    the rows just newer (the "Newer" link). With neither, the newest. One row
    more than the page is read to know whether the next page exists; nothing
    is counted. A "Newer" page that reaches the newest row is the first page.
    """
    per_page = max(1, min(per_page, MAX_PER_PAGE))
    where = conditions(scope, filters)
    newest_first = (U.started_at.desc(), U.id.desc())
    if before is not None:
        found = list(db.session.scalars(sa.select(U).where(*where, *_newer_than(before))
                                        .order_by(U.started_at.asc(), U.id.asc()).limit(per_page + 1)))
        if len(found) > per_page:
            rows = found[:per_page][::-1]
            return Page(rows, newer=Cursor.of(rows[0]), older=Cursor.of(rows[-1]))
        # Nothing newer beyond these: show the first page, full.
        after = None
    cond = where + (_older_than(after) if after is not None else [])
    found = list(db.session.scalars(sa.select(U).where(*cond).order_by(*newest_first).limit(per_page + 1)))
    rows = found[:per_page]
    older = Cursor.of(rows[-1]) if len(found) > per_page else None
    newer = Cursor.of(rows[0]) if after is not None and rows else None
    return Page(rows, newer=newer, older=older)


# Every P22 column a download carries (the routing trace stays on the page).
EXPORT_COLUMNS = (U.id, U.request_id, U.user_id, U.api_key_id, U.project, U.tags, U.started_at, U.ended_at,
                  U.model, U.provider, U.input_tokens, U.output_tokens, U.cache_read_tokens,
                  U.cache_write_tokens, U.cost_usd, U.ttft_ms, U.latency_ms, U.status_code, U.error_class,
                  U.usage_source)


def iter_rows(scope: Scope, filters: UsageFilters | None, batch: int = DOWNLOAD_BATCH) -> Iterator:
    """Every matching row, newest first, read in keyset batches of `batch`.

    Plain column tuples, not ORM objects, so the session's identity map does
    not grow with the download: memory stays one batch, whatever the count."""
    where = conditions(scope, filters)
    cursor: Cursor | None = None
    while True:
        cond = where + (_older_than(cursor) if cursor is not None else [])
        rows = db.session.execute(sa.select(*EXPORT_COLUMNS).where(*cond)
                                  .order_by(U.started_at.desc(), U.id.desc()).limit(batch)).all()
        yield from rows
        if len(rows) < batch:
            return
        cursor = Cursor.of(rows[-1])


# ---- the summary ---------------------------------------------------------------------------

def rollups_can_answer(filters: UsageFilters) -> bool:
    """`usage_rollups` keeps totals by scope, UTC day and one dimension at a
    time, counting failures with the rest: so it answers a date range with at
    most one of model, key, member, project or tag, and no status filter."""
    return filters.status is None and len(filters.dimensions()) <= 1


def _rollup_totals(scope: Scope, filters: UsageFilters) -> UsageTotals:
    team_id, user_id = scope.rollup_cell
    dims = filters.dimensions()
    dim, value = dims[0] if dims else ("", "")
    where = [R.team_id == team_id, R.user_id == user_id, R.grain == "d", R.dim == dim, R.value == value]
    if dim == "member" and not scope.whole_team:
        return _zero("rollups")  # only a whole-team scope has members
    if filters.date_from is not None:
        where.append(R.bucket >= _day_start(filters.date_from))
    if filters.date_to is not None:
        where.append(R.bucket < _day_start(filters.date_to + timedelta(days=1)))
    s = sa.func.sum
    row = db.session.execute(sa.select(s(R.requests), s(R.errors), s(R.input_tokens), s(R.output_tokens),
                                       s(R.cost_usd), s(R.cache_read_tokens), s(R.cache_write_tokens))
                             .where(*where)).one()
    return _totals(row, "rollups")


def _row_totals(scope: Scope, filters: UsageFilters) -> UsageTotals:
    failed = sa.case((U.status_code.between(200, 299), 0), else_=1)
    s = sa.func.sum
    row = db.session.execute(sa.select(sa.func.count(), s(failed), s(U.input_tokens), s(U.output_tokens),
                                       s(U.cost_usd), s(U.cache_read_tokens), s(U.cache_write_tokens))
                             .where(*conditions(scope, filters))).one()
    return _totals(row, "rows")


def _totals(row, source: str) -> UsageTotals:
    n = [int(v or 0) for v in (row[0], row[1], row[2], row[3], row[5], row[6])]
    return UsageTotals(requests=n[0], errors=n[1], input_tokens=n[2], output_tokens=n[3],
                       cost_usd=Decimal(str(row[4] or 0)), cache_read_tokens=n[4], cache_write_tokens=n[5],
                       source=source)


def _zero(source: str) -> UsageTotals:
    return UsageTotals(0, 0, 0, 0, Decimal(0), source=source)


def summary(scope: Scope, filters: UsageFilters) -> UsageTotals:
    """Requests, failures, tokens and spend of the filtered set in its date range.

    From the daily rollups when they can answer (a few dozen cells whatever
    the row count); otherwise a sum over the raw rows in the range, which the
    scope's index bounds. Rollups that hold nothing for the range are checked
    against the rows once: rows written before the rollups were kept (or by
    hand) must not read as no usage, and an empty range costs an index probe."""
    if rollups_can_answer(filters):
        totals = _rollup_totals(scope, filters)
        if totals.requests:
            return totals
    return _row_totals(scope, filters)


# ---- the filter's choices ------------------------------------------------------------------

def has_usage(scope: Scope) -> bool:
    """Whether the scope has any request at all (first-run help vs "no match")."""
    return db.session.scalar(sa.select(sa.exists().where(*_scope_conditions(scope)))) or False


def _rollup_values(scope: Scope, dim: str, limit: int) -> list[str]:
    team_id, user_id = scope.rollup_cell
    return list(db.session.scalars(
        sa.select(R.value).where(R.team_id == team_id, R.user_id == user_id, R.grain == "d", R.dim == dim,
                                 R.value != "")
        .group_by(R.value).order_by(R.value).limit(limit)))


def models_for(scope: Scope, filters: UsageFilters | None = None) -> list[str]:
    """The models the scope has called, for the filter's choices: from the
    rollups, else from the rows of the date range."""
    found = _rollup_values(scope, "model", MAX_MODELS_LISTED)
    if found:
        return found
    f = filters or UsageFilters()
    where = conditions(scope, UsageFilters(date_from=f.date_from, date_to=f.date_to))
    return list(db.session.scalars(sa.select(U.model).where(*where).group_by(U.model).order_by(U.model)
                                   .limit(MAX_MODELS_LISTED)))


def projects_for(scope: Scope) -> list[str]:
    """Projects seen in the scope (the rollups' values), as suggestions."""
    return _rollup_values(scope, "project", MAX_LABELS_LISTED)


def tags_for(scope: Scope) -> list[str]:
    return _rollup_values(scope, "tag", MAX_LABELS_LISTED)


def keys_for(scope: Scope) -> list[ApiKey]:
    """The keys of the scope, revoked ones too (their past requests still
    count): personal keys, the team's keys, or a member's own team keys."""
    where = readable(ApiKey, scope.user_id, scope.team_id, scope.whole_team)
    return list(db.session.scalars(sa.select(ApiKey).where(*where)
                                   .order_by(ApiKey.created_at.desc(), ApiKey.id.desc())))


def members_for(scope: Scope) -> dict[int, str]:
    """Current members' display names by user id; only a whole-team scope has any."""
    return teams.member_names(scope.team_id) if scope.whole_team else {}


# ---- downloads -----------------------------------------------------------------------------

FORMER_MEMBER = "Former member"
COST_STEP = Decimal("0.00000001")  # the column's scale: every cost has exactly 8 decimals
EXPORT_FIELDS = ("request_id", "started_at", "ended_at", "model", "provider", "key_name", "key_id", "member",
                 "project", "tags", "input_tokens", "cache_read_tokens", "cache_write_tokens",
                 "total_input_tokens", "output_tokens", "cost_usd", "ttft_ms", "latency_ms", "status_code",
                 "error_class", "usage_source")
CSV_RISKY = ("=", "+", "-", "@", "\t", "\r")


def export_record(row, key_names: dict[int, str], members: dict[int, str] | None) -> dict:
    """One download row: the P22 metadata, the key's name (empty for a key
    that is gone), the member's name for whole-team views only (`members`
    None leaves the field out), and the cost as an exact decimal string."""
    out = {
        "request_id": row.request_id, "started_at": row.started_at.isoformat(),
        "ended_at": row.ended_at.isoformat(), "model": row.model, "provider": row.provider,
        "key_name": key_names.get(row.api_key_id, "") if row.api_key_id else "", "key_id": row.api_key_id,
        "member": None if members is None else members.get(row.user_id, FORMER_MEMBER),
        "project": row.project, "tags": tags(row), "input_tokens": row.input_tokens,
        "cache_read_tokens": row.cache_read_tokens, "cache_write_tokens": row.cache_write_tokens,
        "total_input_tokens": row.input_tokens + row.cache_read_tokens + row.cache_write_tokens,
        "output_tokens": row.output_tokens, "cost_usd": format(Decimal(row.cost_usd or 0).quantize(COST_STEP), "f"),
        "ttft_ms": row.ttft_ms, "latency_ms": row.latency_ms, "status_code": row.status_code,
        "error_class": row.error_class, "usage_source": row.usage_source,
    }
    if members is None:
        del out["member"]
    return out


def csv_cell(value) -> str:
    """A CSV cell that a spreadsheet will not run: text starting with = + - @
    (or a tab or CR) gets a leading apostrophe. Key names, member names,
    projects and tags are people's text."""
    if value is None:
        return ""
    if isinstance(value, list):
        value = ",".join(value)
    text = str(value)
    return "'" + text if text.startswith(CSV_RISKY) else text


def csv_chunks(rows: Iterable, key_names: dict[int, str], members: dict[int, str] | None,
               per_chunk: int = 200) -> Iterator[str]:
    """The header line, then the rows, a few hundred lines per chunk."""
    names = [n for n in EXPORT_FIELDS if members is not None or n != "member"]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(names)
    for n, row in enumerate(rows, 1):
        rec = export_record(row, key_names, members)
        writer.writerow([csv_cell(rec[name]) for name in names])
        if n % per_chunk == 0:
            yield buf.getvalue()
            buf.seek(0)
            buf.truncate()
    yield buf.getvalue()


def json_chunks(rows: Iterable, key_names: dict[int, str], members: dict[int, str] | None,
                per_chunk: int = 200) -> Iterator[str]:
    """One JSON array, written element by element (a few hundred per chunk)."""
    parts, first = ["["], True
    for row in rows:
        parts.append(("\n" if first else ",\n") + json.dumps(export_record(row, key_names, members)))
        first = False
        if len(parts) >= per_chunk:
            yield "".join(parts)
            parts = []
    parts.append("\n]\n")
    yield "".join(parts)


# ---- reading a row -------------------------------------------------------------------------

def routing_trace(record: UsageRecord) -> list[dict]:
    """The attempts the relay made, oldest first. The column is written by the
    relay only, but a row from an older relay (or a hand edit) must not break
    the page, so anything that is not a list of objects reads as no trace."""
    try:
        trace = json.loads(record.routing_trace or "[]")
    except (TypeError, ValueError):
        return []
    return [a for a in trace if isinstance(a, dict)] if isinstance(trace, list) else []


def tags(record) -> list[str]:
    """The tags the caller set on the request (a JSON list), as strings."""
    try:
        value = json.loads(record.tags) if record.tags else []
    except (TypeError, ValueError):
        return []
    return [str(t) for t in value] if isinstance(value, list) else []
