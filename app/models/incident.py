"""Security incidents and the notices sent about them (P63)."""
from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from app.extensions import db
from app.models.types import UTCDateTime, utcnow


class Incident(db.Model):
    """A confirmed security incident. The deadline for notices is 72 hours
    after `confirmed_at`; each notice row says when its mail went out."""

    __tablename__ = "incidents"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(sa.String(200))
    description: Mapped[str] = mapped_column(sa.Text)
    confirmed_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    created_by_id: Mapped[int | None] = mapped_column(sa.Integer)
    # How the affected accounts were chosen: "all", "usage:<from>..<to>" or "emails".
    scope: Mapped[str] = mapped_column(sa.String(120))
    notice_subject: Mapped[str] = mapped_column(sa.String(200))
    notice_body: Mapped[str] = mapped_column(sa.Text)
    notices_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    notices_queued_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class IncidentNotice(db.Model):
    """One affected account of one incident. `outbox_message_id` links the
    mail, whose sent_at is when the notice went out."""

    __tablename__ = "incident_notices"
    __table_args__ = (sa.UniqueConstraint("incident_id", "user_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    incident_id: Mapped[int] = mapped_column(sa.ForeignKey("incidents.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(sa.Integer, index=True)
    outbox_message_id: Mapped[int | None] = mapped_column(sa.Integer)
    queued_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
