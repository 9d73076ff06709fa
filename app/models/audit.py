"""The append-only, hash-chained audit log (P55)."""
from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from app.extensions import db
from app.models.types import UTCDateTime, utcnow


class AuditEvent(db.Model):
    """One security or administrative action. `hash` covers this row's fields and
    the previous row's hash, so editing or deleting a row breaks the chain.
    Actor and subject are plain ids, not foreign keys: the log outlives accounts."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    actor_id: Mapped[int | None] = mapped_column(sa.Integer)
    subject_id: Mapped[int | None] = mapped_column(sa.Integer, index=True)
    event: Mapped[str] = mapped_column(sa.String(80), index=True)
    details: Mapped[str] = mapped_column(sa.Text, default="{}")
    # The team an event belongs to (also in `details`, which the hash covers),
    # so a team's activity page is an index walk.
    team_id: Mapped[int | None] = mapped_column(sa.Integer, index=True)
    prev_hash: Mapped[str] = mapped_column(sa.String(64))
    hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
