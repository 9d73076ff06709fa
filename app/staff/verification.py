"""Identity verification of a privacy request by a link to the account's own
address (P54): whoever can open that mailbox confirms the request is theirs.

The same construction as app.services.tokens: a signed, expiring payload
{user, nonce, request, staff} in the link, and the keyed hash of the nonce in
a OneTimeToken row that is spent on first use. The link's GET only shows a
button, so a mail scanner that opens links cannot spend it.
"""
from __future__ import annotations

import secrets
from datetime import timedelta

import sqlalchemy as sa
from flask import current_app
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from app.extensions import db
from app.models import OneTimeToken, PrivacyRequest, User
from app.models.types import utcnow
from app.services import ServiceError, mail, privacy
from app.services.audit import record_event
from app.services.crypto import token_hash
from app.urls import public_url

PURPOSE = "privacy_verify"


def _lifetime() -> timedelta:
    return timedelta(hours=current_app.config["VERIFY_LINK_HOURS"])


def _serializer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.config["SECRET_KEY"], salt=f"link:{PURPOSE}")


def send_link(req: PrivacyRequest, staff: User) -> None:
    """Mail a confirmation link for `req` to its account's address. An earlier
    unused link of the same person is voided: only the newest one works."""
    if not req.is_open:
        raise ServiceError("This request is closed.")
    if req.verified_at is not None:
        raise ServiceError("This request is already verified.")
    user = db.session.get(User, req.user_id) if req.user_id else None
    if user is None:
        raise ServiceError("The account of this request no longer exists.")
    now = utcnow()
    db.session.execute(sa.update(OneTimeToken).where(
        OneTimeToken.user_id == user.id, OneTimeToken.purpose == PURPOSE, OneTimeToken.used_at.is_(None))
        .values(used_at=now))
    nonce = secrets.token_urlsafe(24)
    db.session.add(OneTimeToken(user_id=user.id, purpose=PURPOSE, nonce_hash=token_hash(nonce, PURPOSE),
                                created_at=now, expires_at=now + _lifetime()))
    token = _serializer().dumps({"u": user.id, "n": nonce, "r": req.id, "s": staff.id})
    link = public_url("staff.verify_link", token=token)
    mail.queue(user.email, "privacy:request:verify", f"Confirm your privacy request #{req.id}",
               "privacy_verify", user=user, req=req, kind_label=privacy.KIND_LABELS[req.kind], link=link,
               hours=current_app.config["VERIFY_LINK_HOURS"])
    record_event(staff, "privacy:request:verification_sent", subject=user, request=req.id)


def _load(token: str) -> dict:
    # `from None` below: itsdangerous's errors carry the token's payload and quote its signature.
    try:
        return _serializer().loads(token, max_age=int(_lifetime().total_seconds()))
    except SignatureExpired:
        raise ServiceError("This link has expired. Reply to our message and we will send a new one.") from None
    except BadSignature:
        raise ServiceError("This link is not valid. Check that you copied all of it.") from None


def _row(data: dict) -> OneTimeToken | None:
    return db.session.scalar(sa.select(OneTimeToken).where(
        OneTimeToken.nonce_hash == token_hash(data["n"], PURPOSE), OneTimeToken.purpose == PURPOSE))


def peek(token: str) -> PrivacyRequest:
    """The request a link would confirm, or a ServiceError saying why not."""
    data = _load(token)
    row = _row(data)
    if row is None or row.user_id != data["u"]:
        raise ServiceError("This link is not valid.")
    if row.used_at is not None:
        raise ServiceError("This link has already been used or replaced by a newer one.")
    if row.expires_at <= utcnow():
        raise ServiceError("This link has expired. Reply to our message and we will send a new one.")
    req = db.session.get(PrivacyRequest, data["r"])
    if req is None or req.user_id != row.user_id:
        raise ServiceError("This link is not valid.")
    if not req.is_open:
        raise ServiceError("This request is already closed; there is nothing to confirm.")
    return req


def confirm(token: str) -> PrivacyRequest:
    """Spend the link and mark its request verified by "email_link"."""
    req = peek(token)
    data = _load(token)
    row = _row(data)
    won = db.session.execute(sa.update(OneTimeToken).where(
        OneTimeToken.id == row.id, OneTimeToken.used_at.is_(None)).values(used_at=utcnow())).rowcount
    if not won:  # of two simultaneous clicks only one wins
        raise ServiceError("This link has already been used.")
    if req.verified_at is None:
        # The staff member who sent the link is recorded as verifier; the method
        # says the person confirmed it from their mailbox.
        sender = db.session.get(User, data.get("s")) or db.session.get(User, req.user_id)
        privacy.verify(req, sender, "email_link")
    return req
