"""The usage writer: one metadata row per request (P22), durable before the
client's last byte, in the database soon after, and never stalled by one bad row.

The relay hands `Meter.record()` a finished row (P22's fields, nothing else).
`record()` checks every field against the column it goes to (types, lengths,
ranges, no NUL: nothing a client typed can reach a column, P23), then appends
the row to this process's spool file (app/relay/spool.py) and returns: a few
µs on the request thread, and the row now outlives the process.

A background OS thread (never a greenlet: its commits must not stall streams)
reads the spool back in batches and inserts them with ON CONFLICT
(request_id) DO NOTHING, moving each used key's `last_used_at` forward and
adding the rows it did insert to the running totals of `usage_rollups`
(app/services/rollups.py) in the same transaction. Failures are sorted by kind:

* transient (the database is down, locked, a connection dropped, the schema
  is missing): the batch stays where it is and is retried with backoff; rows
  wait on disk, not in memory;
* refused for good by the database (a DataError or IntegrityError: a value it
  cannot store): the batch is retried row by row, and each refused row is set
  aside in `usage_quarantine` with its ids and the error's class, never its
  values. Every other row is written.

The same thread replays the segments of processes that died (SIGKILL, the
OOM killer, a crash at start-up) once it can lock them, so a respawned worker,
or any other process, picks up what a killed one left. `flush()` waits until
every row this process recorded is in the database (tests, shutdown).
"""
from __future__ import annotations

import atexit
import logging
import re
import threading
import time
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path

import orjson
import sqlalchemy as sa
from flask import Flask

from app.extensions import db
from app.models import ApiKey, UsageQuarantine, UsageRecord
from app.models.types import insert_for, utcnow
from app.relay.spool import Claim, Spool, read_lines
from app.services import billing_mail, rollups, spend
from app.services.worker import BackgroundWorker

log = logging.getLogger(__name__)
BATCH = 500
RECOVER_EVERY = 2.0  # seconds between looks for dead processes' segments
# Rows gather for up to this long into one transaction (unless someone waits on
# `flush`): a transaction per handful of rows costs the worker more CPU than
# its streams do, and the rows are safe in the spool meanwhile.
GATHER = 0.25
INT32 = 2**31 - 1
REQUEST_ID_RE = re.compile(r"req_[0-9a-f]{24}")

# ---- what a row may hold ---------------------------------------------------------------
# Each column of usage_records, with the check its value must pass. A value
# that fails is not stored: the row is quarantined with the column's name as
# its error class (a bug of ours, since the relay only builds rows from
# validated values, and a row that would leak client text if written).


def _length(column: sa.Column) -> int | None:
    return getattr(column.type, "length", None)


_TABLE = UsageRecord.__table__
_STR = {c.name: _length(c) for c in _TABLE.columns if isinstance(c.type, (sa.String, sa.Text))}
_INT = {c.name for c in _TABLE.columns if isinstance(c.type, sa.Integer) and c.name != "id"}
_TIME = {"started_at", "ended_at"}
_NULLABLE = {c.name for c in _TABLE.columns if c.nullable}
COLUMNS = [c.name for c in _TABLE.columns if c.name != "id"]


class InvalidRow(ValueError):
    """A row that must not be written as it is; `column` names the field (never its value)."""

    def __init__(self, column: str):
        super().__init__(column)
        self.column = column


_IDS = {"user_id", "team_id", "api_key_id"}


def check_row(row: dict) -> dict:
    """The row as it will be stored, or InvalidRow. Counts and times beyond an
    int32 column are clamped to it (no real request reaches 2^31 tokens; a
    provider that reports it, or a negative count, must not cost the batch)."""
    out = {}
    for name in COLUMNS:
        value = row.get(name)
        if value is None:
            if name not in _NULLABLE:
                raise InvalidRow(name)
        elif name in _TIME:
            if not isinstance(value, datetime) or value.tzinfo is None:
                raise InvalidRow(name)
        elif name == "cost_usd":
            if not isinstance(value, (Decimal, int)) or isinstance(value, bool) or not Decimal(value).is_finite() \
                    or value < 0:
                raise InvalidRow(name)
        elif name in _INT:
            if not isinstance(value, int) or isinstance(value, bool):
                raise InvalidRow(name)
            if name in _IDS:
                if not 0 < value <= INT32:
                    raise InvalidRow(name)
            elif name == "status_code":
                if not 100 <= value <= 599:
                    raise InvalidRow(name)
            else:
                value = max(0, min(value, INT32))
        elif name in _STR:
            limit = _STR[name]
            if not isinstance(value, str) or "\x00" in value or (limit is not None and len(value) > limit):
                raise InvalidRow(name)
            if name == "request_id" and not REQUEST_ID_RE.fullmatch(value):
                raise InvalidRow(name)
        out[name] = value
    return out


def _encode(row: dict) -> bytes:
    return orjson.dumps({**row, "cost_usd": str(row["cost_usd"])})


def _decode(line: bytes) -> dict:
    """A spooled line back into column values; InvalidRow / ValueError if it is not one of ours."""
    obj = orjson.loads(line)
    if not isinstance(obj, dict):
        raise InvalidRow("line")
    for name in _TIME:
        if not isinstance(obj.get(name), str):
            raise InvalidRow(name)
        obj[name] = datetime.fromisoformat(obj[name])
    try:
        obj["cost_usd"] = Decimal(str(obj.get("cost_usd", "0")))
    except InvalidOperation:
        raise InvalidRow("cost_usd") from None
    return check_row(obj)


# ---- sorting database failures ---------------------------------------------------------

class Transient(Exception):
    """The database could not take the batch now; try again later."""


def _refused_for_good(exc: Exception) -> bool:
    """A value the database will never store (the row's fault), as opposed to
    the database being unavailable or misconfigured (nobody's row's fault)."""
    if isinstance(exc, sa.exc.DBAPIError):
        return not exc.connection_invalidated and isinstance(exc, (sa.exc.DataError, sa.exc.IntegrityError))
    return isinstance(exc, sa.exc.StatementError)  # a value the driver could not even bind


def _error_class(exc: Exception) -> str:
    orig = getattr(exc, "orig", None)
    return type(orig if orig is not None else exc).__name__[:64]


# ---- the writer -----------------------------------------------------------------------

class Meter(BackgroundWorker):
    name = "usage-writer"

    def __init__(self, app: Flask):
        super().__init__(app, interval=RECOVER_EVERY)
        self.spool = Spool(app.config["USAGE_SPOOL_DIR"], app.config["SQLALCHEMY_DATABASE_URI"])
        self.offsets: dict[Path, int] = {}  # own segment -> bytes already in the database
        self.next_recovery = 0.0
        self.next_renewal = 0.0
        self.backoff = 0.5
        self._insert = None
        self.hurry = threading.Event()  # set by flush: write now, do not gather
        # At exit, a short wait for the last rows; what is not written by then
        # stays in the spool for the next process (so a database outage does
        # not hold a stopping worker for long).
        atexit.register(self.flush, 3.0)

    # ---- the request side -------------------------------------------------------------

    def record(self, row: dict) -> None:
        """Check the row and spool it. Never raises into the request: a row that
        cannot be stored is quarantined (ids and reason only), and the answer goes
        to the client either way."""
        try:
            line = _encode(check_row(row))
        except InvalidRow as exc:
            log.error("usage writer: row refused before spooling (invalid %s)", exc.column)
            self._quarantine_now(row, f"invalid_{exc.column}"[:64])
            return
        try:
            self.spool.append(line)
        except OSError as exc:
            # The disk refused: write this one row straight to the database instead.
            log.error("usage writer: spool append failed (%s); writing the row directly", type(exc).__name__)
            self._direct(line)
            return
        self.ensure_started()
        self.wake.set()

    def _quarantine_now(self, row: dict, error_class: str) -> None:
        try:
            self._store_quarantine([(row, error_class)])
        except Exception as exc:  # never into the request
            log.error("usage writer: quarantine failed (%s)", type(exc).__name__)

    def _direct(self, line: bytes) -> None:
        try:
            self._write_lines([line])
        except Exception as exc:
            log.error("usage writer: row lost, spool and database both refused (%s)", type(exc).__name__)

    # ---- waiting for it ---------------------------------------------------------------

    def pending(self) -> int:
        """Bytes of this process's spool not yet in the database."""
        return sum(max(0, size - self.offsets.get(path, 0)) for path, size, _ in self.spool.own())

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every recorded row is in the database (or quarantined)."""
        deadline = time.monotonic() + timeout
        if self.stopping.is_set():  # stopped: what is left waits in the spool for the next process
            return not self.pending()
        if self.pending():
            self.ensure_started()
        while time.monotonic() < deadline:
            if not self.pending():
                return True
            self.hurry.set()
            self.wake.set()
            time.sleep(0.005)
        return not self.pending()

    # ---- the thread ---------------------------------------------------------------------

    def first_delay(self) -> float:
        return 0.0  # look for orphans at once: a respawned worker picks up its predecessor's rows

    def work(self) -> None:
        self.hurry.wait(GATHER)
        self.hurry.clear()
        try:
            self._drain_own()
            if time.monotonic() >= self.next_recovery:
                self.recover_orphans()
                self.next_recovery = time.monotonic() + RECOVER_EVERY
            if time.monotonic() >= self.next_renewal:
                self.renew_holds()
            self.backoff = 0.5
        except Transient as exc:
            log.warning("usage writer: database unavailable (%s); rows wait in the spool, retrying in %.1fs",
                        exc, self.backoff)
            self.stopping.wait(self.backoff)
            self.backoff = min(self.backoff * 2, 30.0)
            self.wake.set()  # go round again at once after the pause
        except Exception as exc:  # a bug must not end the thread: rows wait on disk
            log.error("usage writer: unexpected %s; retrying", type(exc).__name__)
            self.stopping.wait(self.backoff)
            self.backoff = min(self.backoff * 2, 30.0)

    def renew_holds(self) -> None:
        """Keep this process's budget holds alive, and give back those of processes
        that stopped renewing theirs (app/services/spend.py)."""
        timeout = self.app.config["RESERVATION_TIMEOUT_SECONDS"]
        self.next_renewal = time.monotonic() + timeout / 3
        try:
            with self.app.app_context():
                now = utcnow()
                spend.renew(db.engine, now)
                spend.sweep(db.engine, now, timeout)
        except Exception as exc:  # never the rows' backoff: they go on being written
            log.warning("budgets: could not renew or sweep holds (%s); next try in %.0f s", type(exc).__name__,
                        timeout / 3)

    def _drain_own(self) -> None:
        for path, size, active in self.spool.own():
            offset = self.offsets.get(path, 0)
            while offset < size:
                lines, after = read_lines(path, offset, BATCH)
                if not lines:
                    break
                self._write_lines(lines)
                offset = self.offsets[path] = after
            if not active and offset >= size:
                self.spool.retire(path)
                self.offsets.pop(path, None)

    def recover_orphans(self) -> int:
        """Replay the segments whose writers are gone; how many rows were read."""
        total = 0
        for path in self.spool.orphans():
            claim = Claim(path)
            if not claim.take():
                continue
            try:
                offset = 0
                while True:
                    lines, offset = read_lines(path, offset, BATCH)
                    if not lines:
                        break
                    self._write_lines(lines)
                    total += len(lines)
                claim.done()
                log.info("usage writer: replayed %d rows left by a process that ended", total)
            finally:
                claim.release()
        return total

    # ---- the database side ----------------------------------------------------------------

    def _write_lines(self, lines: list[bytes]) -> None:
        rows, refused = [], []
        for line in lines:
            if not line.strip():
                continue
            try:
                rows.append(_decode(line))
            except (ValueError, TypeError, orjson.JSONDecodeError) as exc:
                refused.append(({}, f"unreadable_{getattr(exc, 'column', 'line')}"[:64]))
        if rows:
            try:
                self._insert_rows(rows)
            except Exception as exc:
                if not _refused_for_good(exc):
                    raise Transient(_error_class(exc)) from None
                # Some row is refused: one at a time, so only that one is set aside.
                for row in rows:
                    try:
                        self._insert_rows([row])
                    except Exception as one:
                        if not _refused_for_good(one):
                            raise Transient(_error_class(one)) from None
                        refused.append((row, _error_class(one)))
        if refused:
            log.error("usage writer: %d row(s) refused by the database, quarantined (%s)",
                      len(refused), ", ".join(sorted({c for _, c in refused})))
            try:
                self._store_quarantine(refused)
            except Exception as exc:
                if not _refused_for_good(exc):
                    raise Transient(_error_class(exc)) from None
                log.error("usage writer: quarantine refused too (%s)", _error_class(exc))

    def _insert_statement(self):
        if self._insert is None:
            with self.app.app_context():
                insert = insert_for(db.engine)
            # RETURNING names the rows this statement inserted: a replayed row
            # (already there) comes back absent, so the rollups never count it twice.
            self._insert = (insert(_TABLE).on_conflict_do_nothing(index_elements=["request_id"])
                            .returning(_TABLE.c.request_id))
        return self._insert

    def _insert_rows(self, rows: list[dict]) -> None:
        last_used: dict[int, datetime] = {}
        for r in rows:
            kid = r.get("api_key_id")
            if kid is not None and (kid not in last_used or r["started_at"] > last_used[kid]):
                last_used[kid] = r["started_at"]
        keys = ApiKey.__table__
        with self.app.app_context():
            with db.engine.begin() as conn:
                inserted = set(conn.execute(self._insert_statement(), rows).scalars())
                new = [r for r in rows if r["request_id"] in inserted]
                rollups.apply(conn, new)
                # Budgets, wallets and alerts move with the rows, in this transaction (P26, P41, P42).
                alerts = spend.settle_rows(conn, new)
                for kid, when in sorted(last_used.items()):
                    conn.execute(sa.update(keys).where(
                        keys.c.id == kid, sa.or_(keys.c.last_used_at.is_(None), keys.c.last_used_at < when))
                        .values(last_used_at=when))
            if alerts:
                billing_mail.send_alerts()

    def _store_quarantine(self, refused: list[tuple[dict, str]]) -> None:
        now = utcnow()

        def ident(value, pattern=None):
            if pattern is not None:
                return value if isinstance(value, str) and pattern.fullmatch(value) else None
            return value if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= INT32 else None

        with self.app.app_context():
            with db.engine.begin() as conn:
                conn.execute(sa.insert(UsageQuarantine.__table__), [
                    {"request_id": ident(row.get("request_id"), REQUEST_ID_RE), "user_id": ident(row.get("user_id")),
                     "api_key_id": ident(row.get("api_key_id")), "error_class": error_class, "quarantined_at": now}
                    for row, error_class in refused])


def init_app(app: Flask) -> Meter:
    meter = Meter(app)
    app.extensions["meter"] = meter
    return meter
