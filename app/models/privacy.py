"""The privacy center's records: consents (P50), exports (P51), the request
queue (P52-P54), usage aggregates and audit checkpoints for retention (P60),
and the lock that keeps the scheduled job single (P60)."""
from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from app.extensions import db
from app.models.types import UTCDateTime, utcnow

BigInt = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

CONSENT_PURPOSES = ("marketing_email", "preference_cookies")
REQUEST_KINDS = ("access", "export", "rectify", "delete", "restrict", "object")
REQUEST_CHANNELS = ("portal", "email", "api")
OUTCOMES = ("done", "refused", "partly")


class ConsentEvent(db.Model):
    """One change of one consent: what, given or withdrawn, from where, and
    under which policy version (P50). The user's current choice is the latest."""

    __tablename__ = "consent_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"), index=True)
    purpose: Mapped[str] = mapped_column(sa.String(30))
    granted: Mapped[bool] = mapped_column(sa.Boolean)
    source: Mapped[str] = mapped_column(sa.String(30))
    policy_version_id: Mapped[int | None] = mapped_column(sa.ForeignKey("policy_versions.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class PrivacyRequest(db.Model):
    """A data-subject request in the staff queue (P54). `user_id` is a plain id:
    the record of a deletion outlives the account it deleted."""

    __tablename__ = "privacy_requests"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int | None] = mapped_column(sa.Integer, index=True)
    kind: Mapped[str] = mapped_column(sa.String(12))
    channel: Mapped[str] = mapped_column(sa.String(10))
    status: Mapped[str] = mapped_column(sa.String(12), default="open", index=True)  # open, closed, cancelled
    # What the person asked for, in their words (their own data, bounded).
    details: Mapped[str | None] = mapped_column(sa.Text)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    due_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    extended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    extension_reason: Mapped[str | None] = mapped_column(sa.Text)
    verified_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    verification_method: Mapped[str | None] = mapped_column(sa.String(60))
    verified_by_id: Mapped[int | None] = mapped_column(sa.Integer)
    filed_by_id: Mapped[int | None] = mapped_column(sa.Integer)
    outcome: Mapped[str | None] = mapped_column(sa.String(10))
    outcome_reason: Mapped[str | None] = mapped_column(sa.Text)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    closed_by_id: Mapped[int | None] = mapped_column(sa.Integer)
    # Deletion: when the grace period ends and the erasure job may run.
    execute_after: Mapped[datetime | None] = mapped_column(UTCDateTime())
    executed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    @property
    def is_open(self) -> bool:
        return self.status == "open"

    def overdue(self, now: datetime) -> bool:
        return self.is_open and self.due_at < now


class DataExport(db.Model):
    """A ZIP of everything about one person (P51), built in the background.
    The download link's token is stored as a keyed hash and works once."""

    __tablename__ = "data_exports"
    # One export in flight per person, even when two requests race past the service's check.
    __table_args__ = (sa.Index("uq_data_exports_in_flight", "user_id", unique=True,
                               sqlite_where=sa.text("status IN ('queued', 'running')"),
                               postgresql_where=sa.text("status IN ('queued', 'running')")),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"), index=True)
    request_id: Mapped[int | None] = mapped_column(sa.Integer)
    source: Mapped[str] = mapped_column(sa.String(10))  # portal, api, staff
    # queued, running, ready, failed, downloaded, expired
    status: Mapped[str] = mapped_column(sa.String(12), default="queued")
    progress: Mapped[int] = mapped_column(sa.Integer, default=0)  # percent
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    downloaded_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    token_hash: Mapped[str | None] = mapped_column(sa.String(64), unique=True)
    filename: Mapped[str | None] = mapped_column(sa.String(80))
    size_bytes: Mapped[int | None] = mapped_column(BigInt)


class UsageDaily(db.Model):
    """Daily roll-up of usage rows, kept after the raw rows go (P60)."""

    __tablename__ = "usage_daily"
    __table_args__ = (sa.Index("ix_usage_daily_user_day", "user_id", "day"),)

    id: Mapped[int] = mapped_column(BigInt, primary_key=True)
    day: Mapped[date] = mapped_column(sa.Date, index=True)
    user_id: Mapped[int | None] = mapped_column(sa.Integer)
    team_id: Mapped[int | None] = mapped_column(sa.Integer)
    api_key_id: Mapped[int | None] = mapped_column(sa.Integer)
    model: Mapped[str] = mapped_column(sa.String(100))
    provider: Mapped[str | None] = mapped_column(sa.String(64))
    requests: Mapped[int] = mapped_column(sa.Integer, default=0)
    errors: Mapped[int] = mapped_column(sa.Integer, default=0)
    input_tokens: Mapped[int] = mapped_column(BigInt, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInt, default=0)
    cache_read_tokens: Mapped[int] = mapped_column(BigInt, default=0)
    cache_write_tokens: Mapped[int] = mapped_column(BigInt, default=0)
    cost_usd: Mapped[Decimal] = mapped_column(sa.Numeric(18, 8), default=0)


class AuditCheckpoint(db.Model):
    """Written when retention removes the oldest audit rows (P60): the hash of
    the last removed row, so the chain that is kept still verifies (P55)."""

    __tablename__ = "audit_checkpoints"

    id: Mapped[int] = mapped_column(primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    removed_through_id: Mapped[int] = mapped_column(sa.Integer)
    last_removed_hash: Mapped[str] = mapped_column(sa.String(64))
    removed_count: Mapped[int] = mapped_column(sa.Integer)


class JobLock(db.Model):
    """A named lease: the retention job takes it with one conditional UPDATE,
    so two runs at once on any number of machines do not overlap."""

    __tablename__ = "job_locks"

    name: Mapped[str] = mapped_column(sa.String(40), primary_key=True)
    holder: Mapped[str | None] = mapped_column(sa.String(64))
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_run_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
