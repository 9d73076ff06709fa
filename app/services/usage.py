"""Reading the per-request usage rows (P22) back for the person who made them (P30).

Every query here starts from one user id and a time range, so PostgreSQL and
SQLite walk the (user_id, started_at) index rather than the table. Only the
caller's own rows are ever selected: team views (P31) will get their own
functions with their own permission checks, not a flag on these.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, fields
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal

import sqlalchemy as sa

from app.extensions import db
from app.models import ApiKey, UsageRecord

MAX_PER_PAGE = 200
MAX_MODELS_LISTED = 200


@dataclass(frozen=True)
class UsageFilters:
    """What the usage table can be narrowed by; None means "any"."""

    model: str | None = None
    api_key_id: int | None = None
    status: str | None = None          # "ok" (2xx) or "error" (anything else)
    date_from: date | None = None      # UTC day, inclusive
    date_to: date | None = None        # UTC day, inclusive

    @property
    def active(self) -> bool:
        return any(getattr(self, f.name) is not None for f in fields(self))


@dataclass(frozen=True)
class UsageTotals:
    requests: int
    errors: int
    input_tokens: int
    output_tokens: int
    cost_usd: Decimal


def _conditions(user_id: int, filters: UsageFilters | None) -> list:
    f = filters or UsageFilters()
    where = [UsageRecord.user_id == user_id]
    if f.model is not None:
        where.append(UsageRecord.model == f.model)
    if f.api_key_id is not None:
        where.append(UsageRecord.api_key_id == f.api_key_id)
    ok = UsageRecord.status_code.between(200, 299)
    if f.status == "ok":
        where.append(ok)
    elif f.status == "error":
        where.append(sa.not_(ok))
    if f.date_from is not None:
        where.append(UsageRecord.started_at >= _day_start(f.date_from))
    if f.date_to is not None:
        # Inclusive of the whole last day: before midnight of the day after.
        where.append(UsageRecord.started_at < _day_start(f.date_to + timedelta(days=1)))
    return where


def _day_start(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=timezone.utc)


def page_for_user(user_id: int, page: int, per_page: int = 50,
                  filters: UsageFilters | None = None) -> tuple[list[UsageRecord], int]:
    """One page of the person's requests, newest first, and how many match in all.

    The count is its own COUNT query (not a window function over the page), so
    the page query stays an index walk with LIMIT/OFFSET. `page` starts at 1; a
    page past the end is simply empty, and the caller decides what to show.
    """
    page = max(1, page)
    per_page = max(1, min(per_page, MAX_PER_PAGE))
    where = _conditions(user_id, filters)
    total = db.session.scalar(sa.select(sa.func.count()).select_from(UsageRecord).where(*where)) or 0
    if total == 0 or (page - 1) * per_page >= total:
        return [], total
    rows = db.session.scalars(
        sa.select(UsageRecord).where(*where)
        .order_by(UsageRecord.started_at.desc(), UsageRecord.id.desc())
        .limit(per_page).offset((page - 1) * per_page)).all()
    return list(rows), total


def totals_for_user(user_id: int, since: datetime) -> UsageTotals:
    """Requests, failures, tokens and spend since a moment, for the summary strip."""
    failed = sa.case((UsageRecord.status_code.between(200, 299), 0), else_=1)
    row = db.session.execute(
        sa.select(sa.func.count(),
                  sa.func.coalesce(sa.func.sum(failed), 0),
                  sa.func.coalesce(sa.func.sum(UsageRecord.input_tokens), 0),
                  sa.func.coalesce(sa.func.sum(UsageRecord.output_tokens), 0),
                  sa.func.coalesce(sa.func.sum(UsageRecord.cost_usd), 0))
        .where(UsageRecord.user_id == user_id, UsageRecord.started_at >= since)).one()
    return UsageTotals(requests=int(row[0]), errors=int(row[1]), input_tokens=int(row[2]),
                       output_tokens=int(row[3]), cost_usd=Decimal(str(row[4])))


def has_usage(user_id: int) -> bool:
    """Whether the person has any request at all (first-run help vs "no match")."""
    return db.session.scalar(sa.select(sa.exists().where(UsageRecord.user_id == user_id))) or False


def models_for_user(user_id: int) -> list[str]:
    """The models the person has called, for the filter's choices."""
    return list(db.session.scalars(
        sa.select(UsageRecord.model).where(UsageRecord.user_id == user_id)
        .group_by(UsageRecord.model).order_by(UsageRecord.model).limit(MAX_MODELS_LISTED)))


def keys_for_user(user_id: int) -> list[ApiKey]:
    """Every key the person made, revoked ones too: their past requests still count."""
    return list(db.session.scalars(
        sa.select(ApiKey).where(ApiKey.user_id == user_id).order_by(ApiKey.created_at.desc(), ApiKey.id.desc())))


def routing_trace(record: UsageRecord) -> list[dict]:
    """The attempts the relay made, oldest first. The column is written by the
    relay only, but a row from an older relay (or a hand edit) must not break
    the page, so anything that is not a list of objects reads as no trace."""
    try:
        trace = json.loads(record.routing_trace or "[]")
    except (TypeError, ValueError):
        return []
    return [a for a in trace if isinstance(a, dict)] if isinstance(trace, list) else []


def tags(record: UsageRecord) -> list[str]:
    """The tags the caller set on the request (a JSON list), as strings."""
    try:
        value = json.loads(record.tags) if record.tags else []
    except (TypeError, ValueError):
        return []
    return [str(t) for t in value] if isinstance(value, list) else []
