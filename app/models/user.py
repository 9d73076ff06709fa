"""People, their login sessions, recovery codes and one-time emailed tokens."""
from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from flask_login import UserMixin
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.extensions import db
from app.models.types import UTCDateTime, utcnow


class User(UserMixin, db.Model):
    __tablename__ = "users"
    # SQLite would give an erased account's id to the next signup, and with it
    # every row kept by id (requests, audit trail); PostgreSQL never reuses one.
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(primary_key=True)
    # The address as the person typed it, normalized by email-validator.
    email: Mapped[str] = mapped_column(sa.String(320))
    # Lower-cased copy that makes addresses unique case-insensitively.
    email_key: Mapped[str] = mapped_column(sa.String(320), unique=True)
    password_hash: Mapped[str] = mapped_column(sa.String(255))
    name: Mapped[str | None] = mapped_column(sa.String(120))
    company: Mapped[str | None] = mapped_column(sa.String(120))
    email_verified_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    age_confirmed_at: Mapped[datetime] = mapped_column(UTCDateTime())
    is_staff: Mapped[bool] = mapped_column(sa.Boolean, default=False, server_default=sa.false())
    # TOTP secret, encrypted with a key derived from SECRET_KEY (never stored in clear).
    totp_secret_enc: Mapped[str | None] = mapped_column(sa.String(255))
    totp_enabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Last accepted TOTP time step, so a code cannot be replayed inside its window.
    totp_last_step: Mapped[int | None] = mapped_column(sa.BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # Current consents (P50); every change is also a ConsentEvent row.
    marketing_email: Mapped[bool] = mapped_column(sa.Boolean, default=False, server_default=sa.false())
    preference_cookies: Mapped[bool] = mapped_column(sa.Boolean, default=False, server_default=sa.false())
    # Restriction (P53): keys suspended and no marketing until lifted.
    restricted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Deletion requested (P52): sign-in blocked until cancelled or erased.
    deletion_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    sessions: Mapped[list[UserSession]] = relationship(
        back_populates="user", cascade="all, delete-orphan", passive_deletes=True)

    @property
    def is_verified(self) -> bool:
        return self.email_verified_at is not None

    @property
    def has_totp(self) -> bool:
        return self.totp_enabled_at is not None

    def __repr__(self) -> str:  # never the email: reprs end up in logs
        return f"<User {self.id}>"


class UserSession(db.Model):
    """A server-side login. The cookie carries a random id; only its hash is here,
    so deleting a row ends that login on its next request."""

    __tablename__ = "user_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # When the person last proved who they are (password, TOTP or magic link).
    authenticated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    method: Mapped[str] = mapped_column(sa.String(20))
    user_agent: Mapped[str | None] = mapped_column(sa.String(200))

    user: Mapped[User] = relationship(back_populates="sessions")


class RecoveryCode(db.Model):
    __tablename__ = "recovery_codes"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"), index=True)
    code_hash: Mapped[str] = mapped_column(sa.String(64))
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class OneTimeToken(db.Model):
    """The single-use half of an emailed link: the link is signed and carries a
    random nonce; this row holds the nonce's hash and is marked used on first use."""

    __tablename__ = "one_time_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"), index=True)
    purpose: Mapped[str] = mapped_column(sa.String(30))
    nonce_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
