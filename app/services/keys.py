"""API keys (P10, P11): create, rotate, revoke, reveal, and the relay's lookup.

A key is `KEY_PREFIX` + 40 random url-safe characters. The relay finds it by
HMAC-SHA-256 under a server secret; the database also keeps a display prefix,
the last four characters, and (unless KEY_REVEAL is off) an AES-GCM envelope
the owner may open after re-entering the password. The full key is returned
once, to the caller that created or rotated it, and never logged.
"""
from __future__ import annotations

import json
import secrets
from datetime import datetime

import sqlalchemy as sa
from flask import current_app

from app.context import readable
from app.extensions import db
from app.models import ApiKey, User
from app.models.types import utcnow
from app.services import ServiceError
from app.services.audit import record_event
from app.services.crypto import (
    envelope_decrypt,
    envelope_encrypt,
    token_hash,
    token_hasher,
)

MAX_KEYS_PER_ACCOUNT = 100


def hash_key(raw: str) -> str:
    return token_hash(raw, "api_key")


def key_hasher(secret_key: str):
    """hash_key for a given SECRET_KEY, usable without an app context (the relay)."""
    return token_hasher(secret_key, "api_key")


def _new_secret() -> str:
    return current_app.config["KEY_PREFIX"] + secrets.token_urlsafe(30)


def _secret_values(key_id: int, raw: str) -> dict:
    """The columns that hold (what we keep of) a secret."""
    values = {"lookup_hash": hash_key(raw), "prefix": raw[: len(current_app.config["KEY_PREFIX"]) + 4],
              "last4": raw[-4:], "secret_ciphertext": None, "wrapped_data_key": None}
    if current_app.config["KEY_REVEAL"]:
        values["secret_ciphertext"], values["wrapped_data_key"] = envelope_encrypt(raw, f"api_key:{key_id}")
    return values


def _store_secret(key: ApiKey, raw: str) -> None:
    for name, value in _secret_values(key.id, raw).items():
        setattr(key, name, value)


def _check_name(name: str) -> str:
    name = (name or "").strip()
    if not name:
        raise ServiceError("Give the key a name, such as the app that will use it.")
    if len(name) > 100:
        raise ServiceError("Use at most 100 characters for the name.")
    return name


def _check_limit(value: int | None, what: str) -> int | None:
    if value is None:
        return None
    if value < 1 or value > 10_000_000:
        raise ServiceError(f"{what} must be between 1 and 10,000,000, or empty for the account's limit.")
    return value


# ---- whether a key may be used now ------------------------------------------------------

RESTRICTED = "This account is restricted: its API keys are suspended until the restriction is lifted."


def refusal(*, revoked_at, expires_at, suspended_at, restricted_at, deletion_requested_at,
            now: datetime | None = None) -> tuple[int, str, str] | None:
    """Why a key may not be used now, as (status, error type, message), or None.

    The one rule for every door a key opens (the relay, the export API). It
    takes the account's state as well as the key's: restriction (P53) and a
    deletion request stop all processing for the account, whatever key is
    shown, including one made or rotated after the restriction was set.
    """
    if revoked_at is not None:
        return 401, "authentication_error", "This API key has been revoked."
    if expires_at is not None and expires_at <= (now or utcnow()):
        return 401, "authentication_error", "This API key has expired."
    if restricted_at is not None or suspended_at is not None:
        return 403, "permission_error", RESTRICTED
    if deletion_requested_at is not None:
        return 403, "permission_error", "This account is being deleted."
    return None


def _check_usable_account(user: User) -> None:
    if user.restricted_at is not None:
        raise ServiceError("Your account is restricted: no API key can be created or rotated until the "
                           "restriction is lifted.")
    if user.deletion_requested_at is not None:
        raise ServiceError("This account is scheduled for deletion.")


def create(user: User, name: str, *, expires_at: datetime | None = None, models: list[str] | None = None,
           rpm_limit: int | None = None, tpm_limit: int | None = None, team_id: int | None = None
           ) -> tuple[ApiKey, str]:
    """Create a key; return it and its secret (to be shown once). Only a
    confirmed address may hold keys: it is where security notices go."""
    if not user.is_verified:
        raise ServiceError("Confirm your email address before you create an API key.")
    _check_usable_account(user)
    if team_id is not None:
        from app.services import teams
        team = db.session.get(teams.Team, team_id)
        member = teams.membership(team_id, user.id) if team is not None else None
        if member is None or not teams.may_make_keys(team, member.role):
            raise ServiceError("Only the team's owners and admins can make keys for it"
                               " (members too, when the team allows it).")
    name = _check_name(name)
    if expires_at is not None and expires_at <= utcnow():
        raise ServiceError("The expiry date must be in the future.")
    count = db.session.scalar(sa.select(sa.func.count()).select_from(ApiKey).where(
        ApiKey.user_id == user.id, ApiKey.revoked_at.is_(None))) or 0
    if count >= MAX_KEYS_PER_ACCOUNT:
        raise ServiceError(f"You can have at most {MAX_KEYS_PER_ACCOUNT} active keys. Revoke one first.")
    models = sorted({m.strip() for m in models or [] if m.strip()}) or None
    key = ApiKey(user_id=user.id, team_id=team_id, name=name, prefix="", last4="",
                 lookup_hash=secrets.token_hex(32),  # placeholder until the id exists
                 created_at=utcnow(), expires_at=expires_at,
                 allowed_models=json.dumps(models) if models else None,
                 rpm_limit=_check_limit(rpm_limit, "Requests per minute"),
                 tpm_limit=_check_limit(tpm_limit, "Tokens per minute"))
    db.session.add(key)
    db.session.flush()  # the id is part of the envelope's associated data
    raw = _new_secret()
    _store_secret(key, raw)
    record_event(user, "account:api_key:created", key_id=key.id, team_id=team_id)
    return key, raw


def owned(user: User, key_id: int) -> ApiKey:
    key = db.session.get(ApiKey, key_id)
    if key is None or key.user_id != user.id:
        raise ServiceError("No such key.")
    return key


def rotate(user: User, key_id: int) -> tuple[ApiKey, str]:
    """Issue a new secret in place: same name, limits and history; the old
    secret stops working on its next request."""
    key = owned(user, key_id)
    _check_usable_account(user)
    if key.revoked_at is not None:
        raise ServiceError("A revoked key cannot be rotated. Create a new one.")
    if key.state() == "expired":
        # A new secret would be born expired; a new key gets a new expiry.
        raise ServiceError("An expired key cannot be rotated. Create a new one.")
    old_hash = key.lookup_hash
    raw = _new_secret()
    # Conditional on the key being as we read it: a revoke or another rotation
    # that committed meanwhile (another tab, another server process) wins, and
    # this one shows no secret rather than one that never works or refills a
    # revoked key's envelope.
    won = db.session.execute(
        sa.update(ApiKey).where(ApiKey.id == key.id, ApiKey.revoked_at.is_(None), ApiKey.lookup_hash == old_hash)
        .values(**_secret_values(key.id, raw), rotated_at=utcnow())).rowcount
    if not won:
        raise ServiceError("This key was rotated or revoked meanwhile, in another window. Check the list below.")
    db.session.refresh(key)
    record_event(user, "account:api_key:rotated", key_id=key.id)
    return key, raw


# Nothing of the secret stays once it can never be used again: every revocation
# (one key, or all of an account's) empties the envelope with the same statement.
_REVOKED = {"secret_ciphertext": None, "wrapped_data_key": None}


def revoke(user: User, key_id: int, ctx=None) -> ApiKey:
    key = revocable(user, key_id, ctx)
    if key.revoked_at is None:
        db.session.execute(sa.update(ApiKey).where(ApiKey.id == key.id, ApiKey.revoked_at.is_(None))
                           .values(revoked_at=utcnow(), **_REVOKED))
        db.session.refresh(key)
        record_event(user, "account:api_key:revoked", key_id=key.id, team_id=key.team_id,
                     **({"maker_id": key.user_id} if key.user_id != user.id else {}))
    return key


def revoke_all(user: User, now: datetime | None = None) -> int:
    """Revoke every live key of the account (a deletion request); how many."""
    return db.session.execute(
        sa.update(ApiKey).where(ApiKey.user_id == user.id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=now or utcnow(), **_REVOKED)).rowcount


def rename(user: User, key_id: int, name: str) -> ApiKey:
    """Names are the owner's labels; a revoked key keeps the one it died with."""
    key = owned(user, key_id)
    if key.revoked_at is not None:
        raise ServiceError("A revoked key cannot be renamed.")
    name = _check_name(name)
    if name != key.name:
        key.name = name
        record_event(user, "account:api_key:renamed", key_id=key.id)
    return key


def reveal(user: User, key_id: int) -> str:
    """Open the envelope. The caller has checked the password (and TOTP) just now."""
    key = owned(user, key_id)
    if not current_app.config["KEY_REVEAL"] or key.secret_ciphertext is None:
        raise ServiceError("This key cannot be shown again. Rotate it to get a new secret.")
    if key.revoked_at is not None:
        raise ServiceError("This key is revoked.")
    raw = envelope_decrypt(key.secret_ciphertext, key.wrapped_data_key, f"api_key:{key.id}")
    record_event(user, "account:api_key:revealed", key_id=key.id)
    return raw


def count_active(user: User) -> int:
    """Keys that would work on the next request (not revoked, not expired)."""
    now = utcnow()
    return db.session.scalar(sa.select(sa.func.count()).select_from(ApiKey).where(
        ApiKey.user_id == user.id, ApiKey.revoked_at.is_(None),
        sa.or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > now))) or 0


def list_for(user: User, ctx=None) -> list[ApiKey]:
    """The keys of a context (app.context.Context): personal keys; a team's
    keys for its owners and admins; a member's own keys for that team (P12, P31)."""
    where = ctx.rows_of(ApiKey) if ctx is not None else readable(ApiKey, user.id, None, False)
    return list(db.session.scalars(sa.select(ApiKey).where(*where)
                                   .order_by(ApiKey.revoked_at.is_not(None), ApiKey.created_at.desc())))


def revocable(user: User, key_id: int, ctx) -> ApiKey:
    """A key the person may revoke: their own, or, for a team's owners and
    admins, any key of that team."""
    key = db.session.get(ApiKey, key_id)
    if key is None:
        raise ServiceError("No such key.")
    if key.user_id == user.id:
        return key
    if ctx is not None and ctx.sees_team and key.team_id == ctx.team_id:
        return key
    raise ServiceError("No such key.")
