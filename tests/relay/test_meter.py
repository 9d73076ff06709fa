"""The usage writer under attack and under failure (P22, P23): one bad request
cannot stop metering, client text never reaches a column, a row the database
refuses is set aside while every other row is written, and a row is on disk
before the client has its answer. (Recovery after SIGKILL: test_meter_recovery.py.)
"""
from __future__ import annotations

import secrets
import time
from contextlib import contextmanager

import httpx2 as httpx
import pytest
import sqlalchemy as sa

from app.extensions import db
from app.models import UsageQuarantine, UsageRecord
from tests.conftest import BACKEND

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
        b = post(relay, "/v1/chat/completions", {"model": "gpt-test", "messages": HELLO},
                 **{"X-Relay-Project": "poison"})
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
