"""Published privacy policy versions, who accepted which (P61), and the
notices mailed before a material change takes effect (P62)."""
from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.extensions import db
from app.models.types import UTCDateTime, utcnow


class PolicyVersion(db.Model):
    """A frozen copy of the policy as rendered from the settings of its day.

    A version is in effect from `effective_at` until the next one's. A material
    change is published at least 14 days ahead and mailed to every account;
    `notice_cursor` is the highest user id queued so far, so the mailing
    resumes where it stopped."""

    __tablename__ = "policy_versions"

    id: Mapped[int] = mapped_column(primary_key=True)
    number: Mapped[int] = mapped_column(sa.Integer, unique=True)
    # Not unique: settings changed back to an earlier text publish that text again, as a new version.
    digest: Mapped[str] = mapped_column(sa.String(64), index=True)
    published_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    effective_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    settings_json: Mapped[str] = mapped_column(sa.Text)
    body_html: Mapped[str] = mapped_column(sa.Text)
    material: Mapped[bool] = mapped_column(sa.Boolean, default=False, server_default=sa.false())
    summary: Mapped[str | None] = mapped_column(sa.Text)  # what changes, in plain words
    published_by_id: Mapped[int | None] = mapped_column(sa.Integer)  # staff; None when published automatically
    notices_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    notices_queued_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    notice_cursor: Mapped[int] = mapped_column(sa.Integer, default=0, server_default=sa.text("0"))


class PolicyAcceptance(db.Model):
    __tablename__ = "policy_acceptances"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"), index=True)
    policy_version_id: Mapped[int] = mapped_column(sa.ForeignKey("policy_versions.id"))
    accepted_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    context: Mapped[str] = mapped_column(sa.String(30))

    version: Mapped[PolicyVersion] = relationship()


class PolicyNotice(db.Model):
    """One account told about one material change (P62); the mail's sent_at
    is when the notice went out. Unique per version and person: nobody is
    mailed twice, however often the mailing is resumed."""

    __tablename__ = "policy_notices"
    __table_args__ = (sa.UniqueConstraint("policy_version_id", "user_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    policy_version_id: Mapped[int] = mapped_column(sa.ForeignKey("policy_versions.id", ondelete="CASCADE"),
                                                   index=True)
    user_id: Mapped[int] = mapped_column(sa.Integer, index=True)
    outbox_message_id: Mapped[int | None] = mapped_column(sa.Integer)
    queued_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
