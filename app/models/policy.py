"""Published privacy policy versions and who accepted which (P61)."""
from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.extensions import db
from app.models.types import UTCDateTime, utcnow


class PolicyVersion(db.Model):
    """A frozen copy of the policy as rendered from the settings of its day."""

    __tablename__ = "policy_versions"

    id: Mapped[int] = mapped_column(primary_key=True)
    number: Mapped[int] = mapped_column(sa.Integer, unique=True)
    digest: Mapped[str] = mapped_column(sa.String(64), unique=True)
    published_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    effective_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    settings_json: Mapped[str] = mapped_column(sa.Text)
    body_html: Mapped[str] = mapped_column(sa.Text)


class PolicyAcceptance(db.Model):
    __tablename__ = "policy_acceptances"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"), index=True)
    policy_version_id: Mapped[int] = mapped_column(sa.ForeignKey("policy_versions.id"))
    accepted_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    context: Mapped[str] = mapped_column(sa.String(30))

    version: Mapped[PolicyVersion] = relationship()
