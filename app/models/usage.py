"""One metadata row per relayed request (P22) — and nothing else about it (P23)."""
from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from app.extensions import db
from app.models.types import UTCDateTime

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


class UsageRecord(db.Model):
    """Exactly the fields of P22. User, team and key are plain ids: usage rows
    are anonymized, not cascaded, when an account goes (P52)."""

    __tablename__ = "usage_records"
    __table_args__ = (sa.Index("ix_usage_records_user_started", "user_id", "started_at"),
                      sa.Index("ix_usage_records_team_started", "team_id", "started_at"))

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    request_id: Mapped[str] = mapped_column(sa.String(40), unique=True)
    user_id: Mapped[int | None] = mapped_column(sa.Integer)
    team_id: Mapped[int | None] = mapped_column(sa.Integer, index=True)
    api_key_id: Mapped[int | None] = mapped_column(sa.Integer, index=True)
    project: Mapped[str | None] = mapped_column(sa.String(64))
    tags: Mapped[str | None] = mapped_column(sa.String(600))  # JSON list, bounded at the edge
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    ended_at: Mapped[datetime] = mapped_column(UTCDateTime())
    model: Mapped[str] = mapped_column(sa.String(100))
    provider: Mapped[str | None] = mapped_column(sa.String(64))
    input_tokens: Mapped[int] = mapped_column(sa.Integer, default=0)
    output_tokens: Mapped[int] = mapped_column(sa.Integer, default=0)
    cache_read_tokens: Mapped[int] = mapped_column(sa.Integer, default=0)
    cache_write_tokens: Mapped[int] = mapped_column(sa.Integer, default=0)
    cost_usd: Mapped[Decimal] = mapped_column(sa.Numeric(16, 8), default=0)
    ttft_ms: Mapped[int | None] = mapped_column(sa.Integer)
    latency_ms: Mapped[int] = mapped_column(sa.Integer)
    status_code: Mapped[int] = mapped_column(sa.Integer)
    error_class: Mapped[str | None] = mapped_column(sa.String(64))
    routing_trace: Mapped[str] = mapped_column(sa.Text, default="[]")
    # provider: the provider reported the counts; estimated: the relay counted
    # (stream cut short, provider silent); none: nothing was sent upstream.
    usage_source: Mapped[str] = mapped_column(sa.String(12))


class UsageQuarantine(db.Model):
    """A usage row the database refused for good (a constraint, a value it
    cannot store). The writer sets it aside so every other row is still
    written; only the request's ids and the error's class are kept, never the
    refused values, which could be client text (P23)."""

    __tablename__ = "usage_quarantine"

    id: Mapped[int] = mapped_column(primary_key=True)
    request_id: Mapped[str | None] = mapped_column(sa.String(40), index=True)
    user_id: Mapped[int | None] = mapped_column(sa.Integer)
    api_key_id: Mapped[int | None] = mapped_column(sa.Integer)
    error_class: Mapped[str] = mapped_column(sa.String(64))
    quarantined_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class UsageRollup(db.Model):
    """Running totals the usage writer keeps in the same transaction as the
    rows it inserts (P30, P31), so the analytics pages never scan raw rows.

    One row per (scope, grain, dimension, bucket, value):
      - scope: `team_id` 0 with `user_id` U is U's personal usage; `team_id` T
        with `user_id` 0 is the whole team T, with `user_id` M member M's part
        of it;
      - grain: "h" (bucket = the hour) or "d" (bucket = midnight UTC);
      - dim: "" (the scope's total, value ""), "model", "key" (value: key id),
        "member" (value: user id; team scope only), "project", "tag", and the
        latency histograms "lat" and "ttft" (value: bucket number).
    Zeroes instead of NULLs, so the unique index is the upsert's target."""

    __tablename__ = "usage_rollups"
    __table_args__ = (sa.UniqueConstraint("team_id", "user_id", "grain", "dim", "bucket", "value",
                                          name="uq_usage_rollups_cell"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    team_id: Mapped[int] = mapped_column(sa.Integer)
    user_id: Mapped[int] = mapped_column(sa.Integer)
    grain: Mapped[str] = mapped_column(sa.String(1))
    dim: Mapped[str] = mapped_column(sa.String(8))
    bucket: Mapped[datetime] = mapped_column(UTCDateTime())
    value: Mapped[str] = mapped_column(sa.String(100), default="")
    requests: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    errors: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    input_tokens: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    cache_read_tokens: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    cache_write_tokens: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    cost_usd: Mapped[Decimal] = mapped_column(sa.Numeric(20, 8), default=0)
    latency_ms_sum: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    ttft_ms_sum: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    ttft_count: Mapped[int] = mapped_column(sa.BigInteger, default=0)
