"""Who calls with an API key: the one check for every door a key opens (the
relay and the export API), so the two can never drift apart again.

It runs on the relay's hot path, outside Flask: one indexed query on a pooled
DBAPI connection (SQLAlchemy's Connection, compiler and Result layers cost
~0.2 ms there, more than the query itself), joined with the account, whose
restriction (P53) or deletion request holds for every key, old or new.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone

from app.models import ApiKey, Budget, User, Wallet
from app.services.keys import refusal

MISSING = "Missing API key. Send it as 'Authorization: Bearer <key>' or 'x-api-key'."
INVALID = "Invalid API key."

_COLUMNS = ("k.id", "k.user_id", "k.team_id", "k.revoked_at", "k.expires_at", "k.allowed_models", "k.rpm_limit",
            "k.tpm_limit", "k.suspended_at", "u.restricted_at", "u.deletion_requested_at",
            "bk.monthly_units", "bk.total_units", "bm.monthly_units", "bm.total_units",
            "bt.monthly_units", "bt.total_units", "ba.monthly_units", "ba.total_units", "COALESCE(wt.id, wu.id)")
# The budgets that apply to a key's requests (P26) and the wallet they bill to (P41)
# come with it: a key with none costs the relay no second query.
_B, _W = Budget.__tablename__, Wallet.__tablename__
_SQL = (f"SELECT {', '.join(_COLUMNS)} FROM {ApiKey.__tablename__} k "
        f"JOIN {User.__tablename__} u ON u.id = k.user_id "
        f"LEFT JOIN {_B} bk ON bk.target = 'key:' || k.id "
        f"LEFT JOIN {_B} bm ON bm.target = 'member:' || k.team_id || ':' || k.user_id "
        f"LEFT JOIN {_B} bt ON bt.target = 'team:' || k.team_id "
        f"LEFT JOIN {_B} ba ON k.team_id IS NULL AND ba.target = 'account:' || k.user_id "
        f"LEFT JOIN {_W} wt ON wt.team_id = k.team_id "
        f"LEFT JOIN {_W} wu ON k.team_id IS NULL AND wu.user_id = k.user_id "
        "WHERE k.lookup_hash = ")
_PLACEHOLDER = {"qmark": "?", "numeric": ":1", "named": ":h", "format": "%s", "pyformat": "%s"}


@dataclass(slots=True)
class KeyRow:
    """The key fields a caller needs, read once per request."""

    id: int
    user_id: int
    team_id: int | None
    revoked_at: object
    expires_at: datetime | None
    allowed_models: str | None
    rpm_limit: int | None
    tpm_limit: int | None
    suspended_at: object
    restricted_at: object
    deletion_requested_at: object
    budgets: list[tuple[str, int | None, int | None]]  # (target, monthly units, total units) that apply
    wallet_id: int | None


def raw_key(headers: Mapping[str, str]) -> str | None:
    """The key as sent: `Authorization: Bearer <key>` (OpenAI SDK) or `x-api-key` (Anthropic SDK)."""
    auth = headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    return headers.get("x-api-key", "").strip() or None


def _utc(value) -> datetime | None:
    """A UTCDateTime column read past SQLAlchemy: a string (SQLite) or a naive datetime."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


def lookup(engine, lookup_hash: str) -> KeyRow | None:
    """The key with this keyed hash, with its account's state, or None."""
    sql = _SQL + _PLACEHOLDER[engine.dialect.paramstyle]
    params = {"h": lookup_hash} if engine.dialect.paramstyle == "named" else (lookup_hash,)
    conn = engine.raw_connection()
    try:
        cur = conn.cursor()
        cur.execute(sql, params)
        row = cur.fetchone()
        cur.close()
    finally:
        conn.close()  # back to the pool (rolled back there, as with any checkout)
    if row is None:
        return None
    key = KeyRow(*row[:11], _budgets(row), row[19])
    key.expires_at = _utc(key.expires_at)
    return key


def _budgets(row) -> list[tuple[str, int | None, int | None]]:
    kid, uid, tid = row[0], row[1], row[2]
    out = []
    for target, (monthly, total) in ((f"key:{kid}", row[11:13]), (f"member:{tid}:{uid}", row[13:15]),
                                     (f"team:{tid}", row[15:17]), (f"account:{uid}", row[17:19])):
        if monthly is not None or total is not None:
            out.append((target, monthly, total))
    return out


def authenticate(headers: Mapping[str, str], engine, hash_key: Callable[[str], str],
                 now: datetime | None = None) -> tuple[KeyRow | None, tuple[int, str, str] | None]:
    """(the key, None) when it may be used now; otherwise (None, (status,
    error type, message)): missing or unknown 401, revoked or expired 401,
    restricted account or one being deleted 403 (P10, P53)."""
    raw = raw_key(headers)
    if not raw:
        return None, (401, "authentication_error", MISSING)
    key = lookup(engine, hash_key(raw))
    if key is None:
        return None, (401, "authentication_error", INVALID)
    refused = refusal(revoked_at=key.revoked_at, expires_at=key.expires_at, suspended_at=key.suspended_at,
                      restricted_at=key.restricted_at, deletion_requested_at=key.deletion_requested_at,
                      now=now or datetime.now(timezone.utc))
    return (None, refused) if refused else (key, None)
