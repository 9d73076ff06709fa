"""API keys (P10, P11, P12)."""
from __future__ import annotations

import json
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from app.extensions import db
from app.models.types import UTCDateTime, utcnow


class ApiKey(db.Model):
    """A key is found by the keyed hash of its secret; the secret itself is kept
    only as an envelope-encrypted copy for "reveal", and not at all when the
    deployment turns reveal off. `user_id` is the person who made the key and
    `team_id` the team it bills to, when it is a team key (P12)."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"), index=True)
    team_id: Mapped[int | None] = mapped_column(sa.Integer, index=True)
    name: Mapped[str] = mapped_column(sa.String(100))
    prefix: Mapped[str] = mapped_column(sa.String(16))
    last4: Mapped[str] = mapped_column(sa.String(4))
    lookup_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    # AES-GCM envelope: the secret under a per-key data key, that key under the master key.
    secret_ciphertext: Mapped[str | None] = mapped_column(sa.Text)
    wrapped_data_key: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    rotated_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Set while the owner's account is restricted (P53): refused by the relay, not revoked.
    suspended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # JSON list of public model names this key may call; NULL means every model.
    allowed_models: Mapped[str | None] = mapped_column(sa.Text)
    rpm_limit: Mapped[int | None] = mapped_column(sa.Integer)
    tpm_limit: Mapped[int | None] = mapped_column(sa.Integer)

    @property
    def models(self) -> list[str] | None:
        return json.loads(self.allowed_models) if self.allowed_models else None

    @property
    def display(self) -> str:
        return f"{self.prefix}…{self.last4}"

    def state(self, now: datetime | None = None) -> str:
        now = now or utcnow()
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        if self.suspended_at is not None:
            return "suspended"
        return "active"
