"""Signed one-click unsubscribe links for marketing mail and their List-Unsubscribe headers (P50).

The token is the user id signed with SECRET_KEY under its own salt, so it
cannot be forged or reused as any other kind of link. It does not expire: a
withdrawal link in an old mail must keep working. It only ever turns consent
off, so holding it grants nothing else.
"""
from __future__ import annotations

from flask import current_app
from itsdangerous import BadSignature, URLSafeSerializer

from app.extensions import db
from app.models import User
from app.urls import public_base_url

SALT = "unsubscribe"


def _serializer() -> URLSafeSerializer:
    return URLSafeSerializer(current_app.config["SECRET_KEY"], salt=SALT)


def make_token(user: User) -> str:
    return _serializer().dumps(user.id)


def read_token(token: str) -> int | None:
    """The user id the token was made for, or None when it is not ours."""
    try:
        value = _serializer().loads(token)
    except BadSignature:
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def unsubscribe_url(user: User) -> str:
    """The absolute link for a marketing mail's footer (works outside a request)."""
    return f"{public_base_url()}/privacy-center/unsubscribe/{make_token(user)}"


def list_unsubscribe_headers(user_id: int | None, to_addr: str) -> dict[str, str]:
    """RFC 8058 one-click unsubscribe headers for a mail about account
    `user_id` sent to `to_addr`, or {}.

    No mail carries a marketing footer yet, so the headers go on every mail to
    an account whose marketing consent is on at the moment of sending: a mail
    client's "Unsubscribe" then withdraws it in one click (a POST with
    "List-Unsubscribe=One-Click" to the signed link). The account is the one
    the message belongs to, never one found by address (an address can change
    hands); and only mail to its current address carries them (not the notice
    to an old address after an email change, nor mail tied to no account).
    """
    user = db.session.get(User, user_id) if user_id is not None else None
    if user is not None and user.email_key != to_addr.lower():
        user = None
    if user is None or not user.marketing_email:
        return {}
    return {"List-Unsubscribe": f"<{unsubscribe_url(user)}>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}
