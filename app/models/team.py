"""Teams, their members and invitations (P12, P31)."""
from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from app.extensions import db
from app.models.types import UTCDateTime, utcnow

ROLES = ("owner", "admin", "member")


class Team(db.Model):
    """A team bills its keys' usage to itself (P12). Usage rows keep the team's
    id after the team is deleted, so SQLite must never hand an id out twice."""

    __tablename__ = "teams"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(100))
    slug: Mapped[str] = mapped_column(sa.String(48), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # Whether members (not only owners and admins) may make keys for the team.
    members_make_keys: Mapped[bool] = mapped_column(sa.Boolean, default=False, server_default=sa.false())


class TeamMember(db.Model):
    __tablename__ = "team_members"
    __table_args__ = (sa.UniqueConstraint("team_id", "user_id", name="uq_team_members_team_user"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    team_id: Mapped[int] = mapped_column(sa.ForeignKey("teams.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"), index=True)
    role: Mapped[str] = mapped_column(sa.String(8))
    joined_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class TeamInvitation(db.Model):
    """An emailed invitation. The link carries a random token whose hash is
    here; it works once, until `expires_at`, unless withdrawn."""

    __tablename__ = "team_invitations"
    __table_args__ = (sa.Index("ix_team_invitations_team_email", "team_id", "email_key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    team_id: Mapped[int] = mapped_column(sa.ForeignKey("teams.id", ondelete="CASCADE"))
    email: Mapped[str] = mapped_column(sa.String(320))
    email_key: Mapped[str] = mapped_column(sa.String(320), index=True)
    role: Mapped[str] = mapped_column(sa.String(8))
    invited_by: Mapped[int | None] = mapped_column(sa.ForeignKey("users.id", ondelete="SET NULL"), index=True)
    token_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_sent_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    sent_count: Mapped[int] = mapped_column(sa.Integer, default=1)
    accepted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    accepted_by: Mapped[int | None] = mapped_column(sa.Integer)
    withdrawn_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    def state(self, now: datetime | None = None) -> str:
        if self.accepted_at is not None:
            return "accepted"
        if self.withdrawn_at is not None:
            return "withdrawn"
        if self.expires_at <= (now or utcnow()):
            return "expired"
        return "pending"
