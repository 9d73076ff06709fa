"""The usage writer under attack and under failure (P22, P23): one bad request
cannot stop metering, client text never reaches a column, a row the database
refuses is set aside while every other row is written, and rows wait on disk,
surviving SIGKILL, while the database is unavailable.
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

import httpx2 as httpx
import pytest
import sqlalchemy as sa

from app import create_app
from app.extensions import db
from app.models import UsageQuarantine, UsageRecord
from app.models.types import utcnow
from tests.conftest import BACKEND, settings

HELLO = [{"role": "user", "content": "hello there"}]
CANARY = "CANARY-metering-" + secrets.token_hex(6)


def post(relay, path: str, body: dict, **headers) -> httpx.Response:
    return httpx.post(relay.url + path, json=body, timeout=10,
                      headers={"Authorization": f"Bearer {relay.key}", **headers})


def all_rows(app) -> list[UsageRecord]:
    with app.app_context():
        rows = list(db.session.scalars(sa.select(UsageRecord).order_by(UsageRecord.id)))
        db.session.expunge_all()
        return rows


def wait_for(predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


@pytest.mark.promise("P22", "P23")
def test_a_client_string_in_model_never_reaches_a_column_and_cannot_stall_metering(relay):
    """Defects 1 and 2 of the hardening review: a 400 after parsing stored the
    client's `model` string raw; on PostgreSQL a NUL in it made every batch
    fail, and no row of any account was written again by that process. Now the
    row names only a model the registry knows, and the next request is metered."""
    mark = relay.mark()
    poison = f"gpt-test\x00{CANARY} please summarise my medical records"
    assert post(relay, "/v1/chat/completions", {"model": poison}).status_code == 400  # no messages
    assert post(relay, "/v1/messages", {"model": poison, "messages": HELLO},
                **{"anthropic-version": "2023-06-01"}).status_code == 400  # no max_tokens
    assert post(relay, "/v1/chat/completions", {"model": CANARY, "messages": HELLO}).status_code == 404
    assert post(relay, "/v1/embeddings", {"model": "embed-test\x00" + CANARY}).status_code == 400
    ok = post(relay, "/v1/chat/completions", {"model": "gpt-test", "messages": HELLO})
    assert ok.status_code == 200
    rows = relay.new_rows(mark, 5)
    assert [r.model for r in rows] == ["(unknown model)"] * 4 + ["gpt-test"]
    assert rows[-1].request_id == ok.headers["x-request-id"] and rows[-1].status_code == 200
    for r in rows:
        assert CANARY not in repr(vars(r)) and "\x00" not in repr(vars(r))
    with relay.app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(UsageQuarantine)) == 0


@contextmanager
def refusing_project(app, project: str):
    """Make the database refuse, for good, any usage row with this project: a
    trigger raising a data error (PostgreSQL) or a constraint error (SQLite),
    as a value it cannot store would."""
    with app.app_context():
        with db.engine.begin() as conn:
            if BACKEND == "postgresql":
                conn.execute(sa.text(f"""
                    CREATE FUNCTION refuse_row() RETURNS trigger AS $$
                    BEGIN IF NEW.project = '{project}' THEN
                        RAISE EXCEPTION 'refused' USING ERRCODE = '22023'; END IF; RETURN NEW; END
                    $$ LANGUAGE plpgsql"""))
                conn.execute(sa.text("CREATE TRIGGER refuse BEFORE INSERT ON usage_records "
                                     "FOR EACH ROW EXECUTE FUNCTION refuse_row()"))
            else:
                conn.execute(sa.text(f"CREATE TRIGGER refuse BEFORE INSERT ON usage_records "
                                     f"WHEN NEW.project = '{project}' BEGIN SELECT RAISE(ABORT, 'refused'); END"))
    try:
        yield
    finally:
        with app.app_context():
            with db.engine.begin() as conn:
                conn.execute(sa.text("DROP TRIGGER refuse" + (" ON usage_records" if BACKEND == "postgresql" else "")))
                if BACKEND == "postgresql":
                    conn.execute(sa.text("DROP FUNCTION refuse_row()"))


@pytest.mark.promise("P22", "P23")
def test_a_row_the_database_refuses_is_quarantined_and_every_other_row_written(relay):
    mark = relay.mark()
    with refusing_project(relay.app, "poison"):
        with relay.app.app_context():
            before = db.session.scalar(sa.select(sa.func.count()).select_from(UsageQuarantine))
        a = post(relay, "/v1/chat/completions", {"model": "gpt-test", "messages": HELLO})
        b = post(relay, "/v1/chat/completions", {"model": "gpt-test", "messages": HELLO}, **{"X-Relay-Project": "poison"})
        c = post(relay, "/v1/chat/completions", {"model": "gpt-test", "messages": HELLO})
        assert a.status_code == b.status_code == c.status_code == 200  # the client is answered either way
        rows = relay.new_rows(mark, 2)
        assert [r.request_id for r in rows] == [a.headers["x-request-id"], c.headers["x-request-id"]]
        with relay.app.app_context():
            q = db.session.scalars(sa.select(UsageQuarantine).order_by(UsageQuarantine.id)).all()[before:]
        assert [x.request_id for x in q] == [b.headers["x-request-id"]]
        assert q[0].user_id == relay.user_id and q[0].api_key_id == relay.key_id
        assert q[0].error_class in ("IntegrityError", "InvalidParameterValue")
    # Later rows are written as usual.
    d = post(relay, "/v1/chat/completions", {"model": "gpt-test", "messages": HELLO})
    assert relay.new_rows(mark, 3)[-1].request_id == d.headers["x-request-id"]


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
        n = db.session.execute(sa.select(UsageRecord.request_id, sa.func.count()).group_by(UsageRecord.request_id)).all()
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


def spooled(app, request_id: str) -> bool:
    from pathlib import Path
    return any(request_id.encode() in p.read_bytes()
               for p in Path(app.config["USAGE_SPOOL_DIR"]).glob("usage-*.log"))


@pytest.mark.promise("P22")
@pytest.mark.parametrize("path,body", [
    ("/v1/chat/completions", {"model": "gpt-test", "stream": True, "messages": HELLO}),
    ("/v1/chat/completions", {"model": "claude-test", "stream": True, "messages": HELLO}),
    ("/v1/messages", {"model": "claude-test", "stream": True, "max_tokens": 50, "messages": HELLO}),
    ("/v1/messages", {"model": "gpt-test", "stream": True, "max_tokens": 50, "messages": HELLO}),
    ("/v1/chat/completions", {"model": "gpt-test", "messages": HELLO}),
])
def test_the_row_is_on_disk_before_the_client_has_the_last_byte(relay, path, body):
    """A stream's row is spooled before the event that ends it for the client
    ([DONE] or message_stop), a whole answer's before its first byte: when the
    client knows it has its answer, a SIGKILL can no longer lose the row."""
    headers = {"Authorization": f"Bearer {relay.key}", "anthropic-version": "2023-06-01"}
    with httpx.Client(timeout=10) as client:
        with client.stream("POST", relay.url + path, json=body, headers=headers) as resp:
            assert resp.status_code == 200
            rid = resp.headers["x-request-id"]
            if not body.get("stream"):
                assert spooled(relay.app, rid)
                return
            last = None
            for line in resp.iter_lines():
                if line in ("data: [DONE]", "event: message_stop"):
                    last = line
                    assert spooled(relay.app, rid), f"the row was not spooled when {line!r} arrived"
            assert last is not None
