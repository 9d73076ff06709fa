"""The usage spool's recovery (P22): rows wait on disk while the database is
unavailable and survive SIGKILL; a dead process's segment is replayed once;
unreadable lines are quarantined without their content (P23).

These tests build their own apps on the suite's database (make_app), whose
cleanup empties every table, so they live apart from the module-scoped relay.
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import contextmanager
from datetime import timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa

from app.extensions import db
from app.models import UsageQuarantine, UsageRecord
from app.models.types import utcnow
from tests.conftest import BACKEND, settings

CANARY = "CANARY-recovery-" + secrets.token_hex(6)


# ---- the database unavailable, then the process killed ---------------------------------------

CHILD = r"""
import json, sys, time
from app import create_app
from app.relay.meter import check_row
cfg = json.loads(sys.argv[1])
rows = json.loads(sys.argv[2])
app = create_app(cfg)
meter = app.extensions["meter"]
from datetime import datetime
from decimal import Decimal
for r in rows:
    r["started_at"] = datetime.fromisoformat(r["started_at"])
    r["ended_at"] = datetime.fromisoformat(r["ended_at"])
    r["cost_usd"] = Decimal(r["cost_usd"])
    meter.record(r)
print("spooled", flush=True)
time.sleep(600)
"""


def make_rows(n: int, user_id: int = 1) -> list[dict]:
    now = utcnow()
    return [{"request_id": "req_" + secrets.token_hex(12), "user_id": user_id, "team_id": None, "api_key_id": None,
             "project": None, "tags": None, "started_at": (now - timedelta(seconds=1)).isoformat(),
             "ended_at": now.isoformat(), "model": "gpt-test", "provider": "oai", "input_tokens": 3,
             "output_tokens": 2, "cache_read_tokens": 0, "cache_write_tokens": 0, "cost_usd": "0.00000700",
             "ttft_ms": 5, "latency_ms": 9, "status_code": 200, "error_class": None, "routing_trace": "[]",
             "usage_source": "provider"} for _ in range(n)]


@contextmanager
def database_held(database_url: str):
    """Nobody else can write usage rows meanwhile: on SQLite an exclusive
    transaction (writers get 'database is locked'), on PostgreSQL an exclusive
    lock on the table (writers wait). Yields a function counting rows by id."""
    if BACKEND == "postgresql":
        engine = sa.create_engine(database_url)
        conn = engine.connect()
        conn.execute(sa.text("LOCK TABLE usage_records IN ACCESS EXCLUSIVE MODE"))

        def count(ids):
            return conn.execute(sa.select(sa.func.count()).select_from(UsageRecord)
                                .where(UsageRecord.request_id.in_(ids))).scalar()
        try:
            yield count
        finally:
            conn.rollback()
            conn.close()
            engine.dispose()
    else:
        conn = sqlite3.connect(database_url.removeprefix("sqlite:///"), isolation_level=None)
        conn.execute("BEGIN EXCLUSIVE")

        def count(ids):
            marks = ",".join("?" * len(ids))
            return conn.execute(f"SELECT count(*) FROM usage_records WHERE request_id IN ({marks})", ids).fetchone()[0]
        try:
            yield count
        finally:
            conn.execute("ROLLBACK")
            conn.close()


@pytest.mark.promise("P22")
def test_rows_wait_on_disk_while_the_database_is_unavailable_and_survive_sigkill(
        make_app, database_url, smtp, ratelimit_storage, tmp_path):
    """Read as likely in the review, and confirmed on the old writer (an
    in-memory queue): rows were lost when a worker died with the database
    down. Now a killed process's rows are in its spool, and the next process
    that can lock the spool replays them, exactly once."""
    instance = tmp_path / "instance"
    cfg = settings(database_url, smtp, ratelimit_storage, instance)
    app = make_app()  # the same database and spool folder
    rows = make_rows(50)
    ids = [r["request_id"] for r in rows]
    with database_held(database_url) as count:
        child = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(cfg), json.dumps(rows)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
        try:
            assert child.stdout.readline().strip() == "spooled", child.stderr.read()
            time.sleep(0.5)  # its writer is now failing (SQLite) or waiting (PostgreSQL)
            child.send_signal(signal.SIGKILL)
            child.wait(10)
        finally:
            if child.poll() is None:
                child.kill()
        assert count(ids) == 0
    spools = list((instance / "spool").glob("usage-*.log"))
    assert spools, "the killed process left its rows in a spool segment"
    meter = app.extensions["meter"]
    assert meter.recover_orphans() == 50
    assert meter.recover_orphans() == 0  # replayed once, then removed
    assert not list((instance / "spool").glob("usage-*.log"))
    with app.app_context():
        got = db.session.execute(sa.select(UsageRecord.request_id, UsageRecord.cost_usd)
                                 .where(UsageRecord.request_id.in_(ids))).all()
    assert sorted(r for r, _ in got) == sorted(ids)
    assert {c for _, c in got} == {Decimal("0.00000700")}


@pytest.mark.promise("P22")
def test_a_replayed_segment_writes_each_row_once(make_app, tmp_path):
    """A segment replayed after some of its rows were already written (the
    process died between its commit and retiring the segment) adds only the
    missing ones: request ids are unique and inserts skip a conflict."""
    app = make_app()
    meter = app.extensions["meter"]
    rows = make_rows(10)
    from app.relay.meter import _decode, _encode
    lines = [_encode(_decode(json.dumps(r).encode())) for r in rows]
    meter._write_lines(lines[:4])
    spool = tmp_path / "instance" / "spool"
    spool.mkdir(parents=True, exist_ok=True)
    (spool / f"usage-{meter.spool.db}-1-dead-000000.log").write_bytes(b"\n".join(lines) + b"\n")
    assert meter.recover_orphans() == 10
    with app.app_context():
        n = db.session.execute(sa.select(UsageRecord.request_id, sa.func.count())
                               .group_by(UsageRecord.request_id)).all()
    assert len(n) == 10 and all(c == 1 for _, c in n)


@pytest.mark.promise("P22", "P23")
def test_an_unreadable_spool_line_is_quarantined_without_its_content(make_app, tmp_path):
    app = make_app()
    meter = app.extensions["meter"]
    spool = tmp_path / "instance" / "spool"
    spool.mkdir(parents=True, exist_ok=True)
    good = make_rows(1)[0]
    bad = dict(make_rows(1)[0], model=CANARY + "\x00")
    torn = json.dumps(make_rows(1)[0])[:40]
    (spool / f"usage-{meter.spool.db}-1-dead-000000.log").write_text(
        "\n".join([json.dumps(good), json.dumps(bad), torn]) + "\n")
    assert meter.recover_orphans() == 3
    with app.app_context():
        assert db.session.scalars(sa.select(UsageRecord.request_id)).all() == [good["request_id"]]
        q = db.session.scalars(sa.select(UsageQuarantine).order_by(UsageQuarantine.id)).all()
        assert sorted(x.error_class for x in q) == ["unreadable_line", "unreadable_model"]
        dump = repr([vars(x) for x in q])
    assert CANARY not in dump


@pytest.mark.promise("P22", "P60")
def test_the_retention_job_replays_a_dead_processs_spool(make_app, tmp_path):
    """A deployment whose crashed worker was never restarted still gets its
    rows: `flask jobs run` replays orphan segments first, then rolls up."""
    from app import jobs
    from app.relay.meter import _decode, _encode

    app = make_app()
    rows = make_rows(3)
    spool = tmp_path / "instance" / "spool"
    spool.mkdir(parents=True, exist_ok=True)
    lines = [_encode(_decode(json.dumps(r).encode())) for r in rows]
    (spool / f"usage-{app.extensions['meter'].spool.db}-1-dead-000000.log").write_bytes(b"\n".join(lines) + b"\n")
    assert jobs.run_all(app)["usage_spool_replayed"] == 3
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(UsageRecord)) == 3
