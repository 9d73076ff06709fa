"""record_event(): the one way to write the audit log (P55), and its verifier.

Each row's hash is SHA-256 over the previous row's hash and this row's fields
in a canonical JSON form. Two writers that read the same chain head would both
link to it and fork the chain, so a writer holds the chain's write lock before
it reads the head: it inserts its own row first and only then reads the row
before it. On SQLite that INSERT takes the database's write lock, held until
commit (a SELECT takes none); on PostgreSQL an INSERT locks nothing others
wait for, so writers take a transaction advisory lock before it.
"""
from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from app.extensions import db
from app.models import AuditEvent
from app.models.types import utcnow

GENESIS = "0" * 64
_LOCK_ID = 0x5E1A7  # arbitrary constant shared by every writer
_PENDING = "pending"  # a row's links while it is being appended
# Keys that must never be written, whatever a caller passes.
_FORBIDDEN = {"password", "new_password", "current_password", "token", "secret", "code", "totp"}


def _digest(prev_hash: str, row: AuditEvent) -> str:
    payload = json.dumps({
        "prev": prev_hash,
        "at": row.created_at.isoformat(),
        "actor": row.actor_id,
        "subject": row.subject_id,
        "event": row.event,
        "details": row.details,
    }, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


def record_event(actor, event: str, *, subject=None, **details: Any) -> AuditEvent:
    """Append `event` (a colon-separated tag like "account:password:changed").

    `actor` and `subject` are users, ids or None (the system). Details are small
    facts (ids, a method name); secrets are refused so a careless caller cannot
    leak one. The row is added to the current transaction: it commits with the
    change it describes, or not at all.
    """
    leaked = _FORBIDDEN & {k.lower() for k in details}
    if leaked:
        raise ValueError(f"audit details may not carry {sorted(leaked)}")
    actor_id = getattr(actor, "id", actor)
    subject_id = getattr(subject, "id", subject) if subject is not None else actor_id
    _lock_chain()
    # Inserted before the head is read: from here until commit no other writer
    # can append (SQLite's write lock, or the advisory lock on PostgreSQL). The
    # placeholder is unique, as the column is, and never outlives this function.
    team_id = details.get("team_id")
    row = AuditEvent(created_at=utcnow(), actor_id=actor_id, subject_id=subject_id, event=event,
                     team_id=team_id if isinstance(team_id, int) else None,
                     details=json.dumps(details, sort_keys=True, default=str, separators=(",", ":")),
                     prev_hash=_PENDING, hash=f"{_PENDING}:{secrets.token_hex(16)}")
    db.session.add(row)
    db.session.flush()
    prev = db.session.scalar(sa.select(AuditEvent.hash).where(AuditEvent.id < row.id)
                             .order_by(AuditEvent.id.desc()).limit(1))
    if prev is None:  # every row was pruned (P60): the chain goes on from the checkpoint
        prev = _checkpoint_hash()
    row.created_at = utcnow()  # taken under the lock, so times follow the chain's order
    row.prev_hash = prev
    row.hash = _digest(prev, row)
    db.session.flush()
    return row


def _lock_chain() -> None:
    """Serialize appends on PostgreSQL until this transaction ends; `prune_audit`
    takes the same lock. SQLite needs nothing here: the INSERT that follows
    takes its database-wide write lock."""
    if db.engine.dialect.name == "postgresql":
        db.session.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_ID})


@dataclass
class ChainReport:
    checked: int
    broken_at: int | None = None
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.broken_at is None


def _checkpoint_hash() -> str:
    """The hash the oldest kept row must chain from: the last row retention
    removed (P60), or GENESIS when nothing was ever removed."""
    from app.models import AuditCheckpoint

    cp = db.session.scalar(sa.select(AuditCheckpoint.last_removed_hash)
                           .order_by(AuditCheckpoint.id.desc()).limit(1))
    return cp or GENESIS


def verify_chain(batch: int = 1000) -> ChainReport:
    """Walk the log in id order and report the first row whose link is broken.

    The first row kept must chain from the latest retention checkpoint (the
    hash of the last removed row, P60), or from GENESIS when nothing was ever
    pruned, so removing the oldest rows by hand shows as a break too.
    """
    checked = 0
    prev: str | None = _checkpoint_hash()
    last_id = 0
    while True:
        rows = db.session.scalars(
            sa.select(AuditEvent).where(AuditEvent.id > last_id).order_by(AuditEvent.id).limit(batch)
        ).all()
        if not rows:
            return ChainReport(checked)
        for row in rows:
            if row.prev_hash != prev:
                return ChainReport(checked, row.id, "previous hash does not match (a row was removed or edited)")
            if _digest(row.prev_hash, row) != row.hash:
                return ChainReport(checked, row.id, "row content does not match its hash (edited)")
            prev = row.hash
            checked += 1
            last_id = row.id
