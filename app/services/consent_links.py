"""Signed one-click unsubscribe links for marketing mail (P50).

The token is the user id signed with SECRET_KEY under its own salt, so it
cannot be forged or reused as any other kind of link. It does not expire: a
withdrawal link in an old mail must keep working. It only ever turns consent
off, so holding it grants nothing else.
"""
from __future__ import annotations

from flask import current_app
from itsdangerous import BadSignature, URLSafeSerializer

from app.models import User

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
    return f"{current_app.config['BASE_URL']}/privacy-center/unsubscribe/{make_token(user)}"
