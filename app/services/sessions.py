"""Server-side login sessions: the cookie holds a random id, the table its hash.

Ending a session is deleting its row; the next request carrying that cookie is
anonymous. A password change or reset and "sign out everywhere" delete rows.
"""
from __future__ import annotations

import secrets
from datetime import timedelta

import sqlalchemy as sa
from flask import current_app

from app.extensions import db
from app.models import User, UserSession
from app.models.types import utcnow
from app.services.crypto import token_hash

TOUCH_EVERY = timedelta(minutes=5)  # write last_seen at most this often


def device_label(user_agent: str | None) -> str | None:
    """The sign-in's User-Agent as the device label the person sees: printable
    characters only (a NUL or control character is not storable text), 200 at most."""
    text = "".join(ch for ch in (user_agent or "") if ch.isprintable())
    return text.strip()[:200] or None


def start(user: User, method: str, user_agent: str | None) -> str:
    """Create a session and return its raw id for the cookie (never stored)."""
    raw = secrets.token_urlsafe(32)
    now = utcnow()
    db.session.add(UserSession(user_id=user.id, token_hash=token_hash(raw, "session"),
                               created_at=now, last_seen_at=now, authenticated_at=now,
                               method=method, user_agent=device_label(user_agent)))
    return raw


def lookup(raw: str) -> UserSession | None:
    row = db.session.scalar(sa.select(UserSession).where(UserSession.token_hash == token_hash(raw, "session")))
    if row is None:
        return None
    now = utcnow()
    lifetime = timedelta(seconds=current_app.config["PERMANENT_SESSION_LIFETIME"])
    if row.last_seen_at + lifetime < now:
        db.session.delete(row)
        db.session.commit()
        return None
    if now - row.last_seen_at > TOUCH_EVERY:
        row.last_seen_at = now
        db.session.commit()
    return row


def end(row: UserSession) -> None:
    db.session.delete(row)


def end_others(user: User, keep: UserSession | None) -> int:
    q = sa.delete(UserSession).where(UserSession.user_id == user.id)
    if keep is not None:
        q = q.where(UserSession.id != keep.id)
    return db.session.execute(q).rowcount


def active(user: User) -> list[UserSession]:
    return list(db.session.scalars(sa.select(UserSession).where(UserSession.user_id == user.id)
                                   .order_by(UserSession.last_seen_at.desc())))


def reauthenticated(row: UserSession) -> None:
    row.authenticated_at = utcnow()


def is_fresh(row: UserSession | None) -> bool:
    if row is None:
        return False
    window = timedelta(minutes=current_app.config["REAUTH_WINDOW_MINUTES"])
    return utcnow() - row.authenticated_at < window
