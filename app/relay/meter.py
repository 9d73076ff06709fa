"""The usage writer: one metadata row per request, off the client's path (P22).

The relay hands a finished row (a dict of P22 fields, nothing else) to
`Meter.record()`, which only enqueues it. A background OS thread (never a
greenlet: its commits must not stall streams) inserts rows in batches and, in
the same transaction, moves each used key's `last_used_at` forward, so "last
used" costs no write per request. A failed batch is retried, not dropped;
`flush()` waits until everything queued is written (tests, shutdown).
"""
from __future__ import annotations

import atexit
import logging
import queue
import threading
import time

import sqlalchemy as sa
from flask import Flask

from app.extensions import db
from app.models import ApiKey, UsageRecord

log = logging.getLogger(__name__)
BATCH = 500
MAX_BACKLOG = 200_000  # rows held in memory while the database is unreachable


class Meter:
    def __init__(self, app: Flask):
        self.app = app
        self.q: queue.Queue[dict] = queue.Queue()
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()
        self.pending: list[dict] = []
        atexit.register(self.flush, 10.0)

    def record(self, row: dict) -> None:
        self.q.put(row)
        if self.thread is None or not self.thread.is_alive():
            self._start()

    def _start(self) -> None:
        with self.lock:
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._run, name="usage-writer", daemon=True)
                self.thread.start()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every recorded row is in the database."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.q.unfinished_tasks == 0:
                return True
            time.sleep(0.005)
        return False

    def _take(self) -> list[dict]:
        rows = [self.q.get()]
        time.sleep(0.02)  # let a burst gather into one transaction
        while len(rows) < BATCH:
            try:
                rows.append(self.q.get_nowait())
            except queue.Empty:
                break
        return rows

    def _write(self, rows: list[dict]) -> None:
        last_used: dict[int, object] = {}
        for r in rows:
            kid = r.get("api_key_id")
            if kid is not None and (kid not in last_used or r["started_at"] > last_used[kid]):
                last_used[kid] = r["started_at"]
        with self.app.app_context():
            with db.engine.begin() as conn:
                conn.execute(sa.insert(UsageRecord.__table__), rows)
                for kid, when in last_used.items():
                    conn.execute(sa.update(ApiKey.__table__).where(
                        ApiKey.__table__.c.id == kid,
                        sa.or_(ApiKey.__table__.c.last_used_at.is_(None),
                               ApiKey.__table__.c.last_used_at < when)).values(last_used_at=when))

    def _run(self) -> None:
        backoff = 0.5
        while True:
            rows = self._take()
            while True:
                try:
                    self._write(rows)
                    backoff = 0.5
                    break
                except Exception as exc:  # the database is down or busy: keep the rows, retry
                    log.warning("usage writer: batch of %d rows not written (%s); retrying",
                                len(rows), type(exc).__name__)
                    time.sleep(backoff)
                    backoff = min(backoff * 2, 30)
                    if self.q.qsize() > MAX_BACKLOG:
                        log.error("usage writer: backlog over %d rows", MAX_BACKLOG)
            for _ in rows:
                self.q.task_done()


def init_app(app: Flask) -> Meter:
    meter = Meter(app)
    app.extensions["meter"] = meter
    return meter
