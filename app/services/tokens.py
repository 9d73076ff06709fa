"""Emailed links: signed and expiring (itsdangerous) and single-use (a row).

The link carries a signed payload {user, nonce, extra}; the database keeps only
a keyed hash of the nonce. A link is refused when the signature is wrong, when
it is older than its purpose allows, when its row is used or gone, or when it
was issued for another user.
"""
from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from flask import current_app
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from app.extensions import db
from app.models import OneTimeToken, User
from app.models.types import utcnow
from app.services import ServiceError, policy
from app.services.crypto import token_hash

VERIFY = "verify_email"
RESET = "reset_password"
MAGIC = "magic_link"
CHANGE_EMAIL = "change_email"


def _lifetime(purpose: str) -> timedelta:
    c = current_app.config
    return {
        VERIFY: timedelta(hours=c["VERIFY_LINK_HOURS"]),
        CHANGE_EMAIL: timedelta(hours=c["VERIFY_LINK_HOURS"]),
        RESET: timedelta(minutes=c["RESET_LINK_MINUTES"]),
    }[purpose] if purpose != MAGIC else timedelta(minutes=policy.enforced("MAGIC_LINK_MINUTES"))


def _serializer(purpose: str) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.config["SECRET_KEY"], salt=f"link:{purpose}")


def issue(user: User, purpose: str, **extra: Any) -> str:
    """Create a link token for `user`. Earlier unused tokens of the same purpose
    are voided, so only the newest link in a person's inbox works."""
    now = utcnow()
    db.session.execute(
        sa.update(OneTimeToken)
        .where(OneTimeToken.user_id == user.id, OneTimeToken.purpose == purpose,
               OneTimeToken.used_at.is_(None))
        .values(used_at=now))
    nonce = secrets.token_urlsafe(24)
    db.session.add(OneTimeToken(user_id=user.id, purpose=purpose, nonce_hash=token_hash(nonce, purpose),
                                created_at=now, expires_at=now + _lifetime(purpose)))
    return _serializer(purpose).dumps({"u": user.id, "n": nonce, **({"x": extra} if extra else {})})


def consume(token: str, purpose: str) -> tuple[User, dict[str, Any]]:
    """Check and use up a link token; return its user and extra data."""
    # `from None` below: itsdangerous's errors carry the token's payload and quote its signature.
    try:
        data = _serializer(purpose).loads(token, max_age=int(_lifetime(purpose).total_seconds()))
    except SignatureExpired:
        raise ServiceError("This link has expired. Ask for a new one.") from None
    except BadSignature:
        raise ServiceError("This link is not valid. Check that you copied all of it, or ask for a new one.") from None
    row = db.session.scalar(sa.select(OneTimeToken).where(
        OneTimeToken.nonce_hash == token_hash(data["n"], purpose), OneTimeToken.purpose == purpose))
    now = utcnow()
    if row is None or row.user_id != data["u"]:
        raise ServiceError("This link is not valid. Ask for a new one.")
    if row.used_at is not None:
        raise ServiceError("This link has already been used or replaced by a newer one.")
    if row.expires_at <= now:
        raise ServiceError("This link has expired. Ask for a new one.")
    # Conditional update: of two simultaneous clicks only one wins.
    won = db.session.execute(sa.update(OneTimeToken).where(
        OneTimeToken.id == row.id, OneTimeToken.used_at.is_(None)).values(used_at=now)).rowcount
    if not won:
        raise ServiceError("This link has already been used.")
    user = db.session.get(User, row.user_id)
    return user, data.get("x", {})


def peek(token: str, purpose: str) -> bool:
    """True when the token would be accepted now (for showing a form before use)."""
    try:
        data = _serializer(purpose).loads(token, max_age=int(_lifetime(purpose).total_seconds()))
    except BadSignature:
        return False
    row = db.session.scalar(sa.select(OneTimeToken).where(
        OneTimeToken.nonce_hash == token_hash(data["n"], purpose)))
    return bool(row and row.used_at is None and row.expires_at > utcnow() and row.user_id == data["u"])
