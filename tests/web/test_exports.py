"""Data export (P51) through the real HTTP stack: request in the portal, build
with run_pending, check the ZIP against the database (every category, JSON and
CSV agreeing, no secret anywhere), the progress fragment, the emailed
single-use link, expiry with a controlled clock, another person's link, the
API with a key, concurrent builders, and bounded memory for a large account.
"""
from __future__ import annotations

import csv
import io
import json
import threading
import time
import tracemalloc
import zipfile
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa

from app.extensions import db
from app.models import (
    ApiKey,
    AuditEvent,
    ConsentEvent,
    DataExport,
    OutboxMessage,
    UsageDaily,
    UsageRecord,
    User,
    UserSession,
)
from app.models.types import utcnow
from app.services import ServiceError, exports, keys
from app.services.audit import verify_chain
from tests.conftest import Forms
from tests.fakes.smtp import link

pytestmark = pytest.mark.promise("P51")

EMAIL = "ada@example.com"
HX = {"HX-Request": "true"}
CATEGORIES = ("profile", "sessions", "api_keys", "team_memberships", "usage", "usage_daily", "wallet", "ledger",
              "budgets", "consents", "privacy_requests", "policy_acceptances", "data_exports", "emails",
              "audit_events")
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)


# ---- helpers -------------------------------------------------------------------------

def text(resp) -> str:
    return resp.get_data(as_text=True)


def usage_row(uid: int, n: int, key_id: int | None = None, **extra) -> dict:
    return {"request_id": f"req_{uid}_{n:08d}", "user_id": uid, "team_id": None, "api_key_id": key_id,
            "project": "demo", "tags": json.dumps(["a", f"t{n % 7}"]), "started_at": T0 + timedelta(seconds=n),
            "ended_at": T0 + timedelta(seconds=n, milliseconds=420), "model": "gpt-4o-mini",
            "provider": "openai", "input_tokens": 10 + n % 100, "output_tokens": 20 + n % 50,
            "cache_read_tokens": 0, "cache_write_tokens": 0, "cost_usd": Decimal("0.00012345"),
            "ttft_ms": 120, "latency_ms": 420, "status_code": 200, "error_class": None,
            "routing_trace": json.dumps([{"provider": "openai", "status": 200, "ms": 400}]),
            "usage_source": "provider", **extra}


def seed_person(app, users, email=EMAIL) -> dict:
    """A person with a real key, usage rows (one with spreadsheet-formula text),
    a consent, a daily aggregate, and audit events."""
    uid = users.create(email=email, name="Ada", company="=HYPERLINK(\"x\")")
    with app.app_context():
        user = db.session.get(User, uid)
        key, raw = keys.create(user, "laptop")
        db.session.flush()
        rows = [usage_row(uid, n, key.id) for n in range(5)]
        rows.append(usage_row(uid, 99, key.id, status_code=429, error_class="rate_limited", project="+p",
                              tags=json.dumps(["=cmd", "b"]), ttft_ms=None))
        db.session.execute(sa.insert(UsageRecord), rows)
        db.session.execute(sa.insert(UsageRecord), [usage_row(uid + 1000, 1)])  # someone else's row
        db.session.add(ConsentEvent(user_id=uid, purpose="marketing_email", granted=True, source="account"))
        db.session.add(UsageDaily(day=T0.date(), user_id=uid, model="gpt-4o-mini", provider="openai", requests=5,
                                  errors=1, input_tokens=50, output_tokens=100, cache_read_tokens=0,
                                  cache_write_tokens=0, cost_usd=Decimal("0.5")))
        db.session.commit()
        return {"uid": uid, "key_id": key.id, "raw": raw}


def log_in(client, email=EMAIL, password="correct horse battery"):
    resp = Forms(client).post("/login", {"email": email, "password": password})
    assert resp.status_code == 302, text(resp)[:500]


def request_export(client) -> None:
    resp = Forms(client).post("/privacy-center/export/", {}, page="/privacy-center/export/")
    assert resp.status_code == 302, text(resp)[:500]
    assert resp.headers["Location"].endswith("/privacy-center/export/")


def only_export(app, uid: int) -> DataExport:
    with app.app_context():
        rows = db.session.scalars(sa.select(DataExport).where(DataExport.user_id == uid)).all()
        assert len(rows) == 1
        db.session.expunge(rows[0])
        return rows[0]


def events(app, name: str) -> list[AuditEvent]:
    with app.app_context():
        rows = db.session.scalars(sa.select(AuditEvent).where(AuditEvent.event == name)).all()
        db.session.expunge_all()
        return list(rows)


def link_path(msg) -> str:
    url = link(msg)
    assert url.startswith("http://localhost/privacy-center/export/download/"), url
    return url.removeprefix("http://localhost")


def read_zip(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.testzip() is None
        return {name: zf.read(name) for name in zf.namelist()}


def as_csv(value) -> str:
    """What the CSV cell must hold for a JSON value (written here independently)."""
    if value is None:
        return ""
    if value is True or value is False:
        return str(value).lower()
    s = str(value)
    return "'" + s if isinstance(value, str) and s[:1] in ("=", "+", "-", "@", "\t", "\r") else s


def check_json_csv_agree(files: dict[str, bytes]) -> dict[str, list[dict]]:
    parsed = {}
    for cat in CATEGORIES:
        rows = json.loads(files[f"{cat}.json"])
        table = list(csv.reader(io.StringIO(files[f"{cat}.csv"].decode("utf-8"), newline="")))
        header, body = table[0], table[1:]
        assert len(body) == len(rows), cat
        for obj, line in zip(rows, body, strict=True):
            assert list(obj) == header, cat
            for (name, value), cell in zip(obj.items(), line, strict=True):
                if isinstance(value, (list, dict)):  # JSON text in the CSV: the same value
                    assert json.loads(cell) == value, (cat, name)
                else:
                    assert as_csv(value) == cell, (cat, name, value, cell)
        parsed[cat] = rows
    return parsed


# ---- the portal flow -------------------------------------------------------------------

def test_request_build_email_download_once(app, client, users, mail):
    p = seed_person(app, users)
    log_in(client)
    page = client.get("/privacy-center/export/")
    assert page.status_code == 200
    assert "Request export" in text(page) and "You have not requested an export yet." in text(page)

    request_export(client)
    assert "We are preparing your export" in text(client.get("/privacy-center/export/"))
    exp = only_export(app, p["uid"])
    assert (exp.status, exp.source, exp.progress) == ("queued", "portal", 0)
    assert exports.run_pending(app) == 1
    exp = only_export(app, p["uid"])
    assert exp.status == "ready" and exp.progress == 100 and exp.token_hash and exp.size_bytes > 0
    assert exp.expires_at - exp.finished_at == timedelta(hours=app.config["EXPORT_LINK_HOURS"])
    path = Path(app.config["EXPORT_DIR"]) / exp.filename
    assert path.is_file() and path.stat().st_size == exp.size_bytes
    assert exports.run_pending(app) == 0

    # The email carries the link; the page shows the same one.
    msg = mail.wait_for(EMAIL, "Your data export is ready")
    url = link_path(msg)
    assert "works once" in msg.get_body().get_content()
    assert f'href="{url}"' in text(client.get("/privacy-center/export/"))

    resp = client.get(url)
    assert resp.status_code == 200, text(resp)[:500]
    assert resp.mimetype == "application/zip"
    assert resp.headers["Content-Disposition"].startswith("attachment;")
    assert resp.headers["Cache-Control"] == "no-store"
    data = resp.get_data()
    resp.close()
    assert not path.exists(), "the file is deleted once downloaded"
    exp = only_export(app, p["uid"])
    assert exp.status == "downloaded" and exp.downloaded_at is not None

    check_zip(app, data, p)

    # Single use: the second click explains, with 410.
    again = client.get(url)
    assert again.status_code == 410
    assert "already downloaded" in text(again) and "Request a new export" in text(again)
    assert "Downloaded" in text(client.get("/privacy-center/export/"))

    assert len(events(app, "privacy:export:requested")) == 1
    assert len(events(app, "privacy:export:ready")) == 1
    assert len(events(app, "privacy:export:downloaded")) == 1
    with app.app_context():
        assert verify_chain().ok


def check_zip(app, data: bytes, p: dict) -> None:
    files = read_zip(data)
    expected = {"README.txt"} | {f"{c}.{ext}" for c in CATEGORIES for ext in ("json", "csv")}
    assert set(files) == expected
    readme = files["README.txt"].decode()
    for cat in CATEGORIES:
        assert f"{cat}.json / {cat}.csv" in readme
    parsed = check_json_csv_agree(files)

    with app.app_context():
        user = db.session.get(User, p["uid"])
        key = db.session.get(ApiKey, p["key_id"])
        sessions = db.session.scalars(sa.select(UserSession).where(UserSession.user_id == user.id)).all()
        usage = db.session.scalars(sa.select(UsageRecord).where(UsageRecord.user_id == user.id)
                                   .order_by(UsageRecord.started_at, UsageRecord.id)).all()
        audit = db.session.scalars(sa.select(AuditEvent).where(
            sa.or_(AuditEvent.subject_id == user.id, AuditEvent.actor_id == user.id)).order_by(AuditEvent.id)).all()

        # Profile and keys: the person's facts, display forms only.
        (profile,) = parsed["profile"]
        assert profile["email"] == EMAIL and profile["name"] == "Ada"
        assert profile["company"] == '=HYPERLINK("x")'
        (k,) = parsed["api_keys"]
        assert k["name"] == "laptop" and k["key"] == key.display and k["state"] == "active"
        assert len(parsed["sessions"]) == len(sessions) >= 1
        assert parsed["sessions"][0]["method"] == sessions[0].method

        # Every usage row of this person, with every P22 column, and no one else's.
        assert [r["request_id"] for r in parsed["usage"]] == [u.request_id for u in usage]
        assert len(usage) == 6
        for got, row in zip(parsed["usage"], usage, strict=True):
            assert got["input_tokens"] == row.input_tokens and got["output_tokens"] == row.output_tokens
            assert Decimal(got["cost_usd"]) == row.cost_usd
            assert got["tags"] == json.loads(row.tags)
            assert got["routing_trace"] == json.loads(row.routing_trace)
            assert datetime.fromisoformat(got["started_at"]) == row.started_at
            assert got["status_code"] == row.status_code and got["error_class"] == row.error_class
            assert got["api_key_id"] == key.id and got["user_id"] == user.id
        assert set(parsed["usage"][0]) == {c.name for c in UsageRecord.__table__.columns}
        (daily,) = parsed["usage_daily"]
        assert daily["requests"] == 5 and Decimal(daily["cost_usd"]) == Decimal("0.5")
        (consent,) = parsed["consents"]
        assert consent["purpose"] == "marketing_email" and consent["granted"] is True
        # The log as it stood while the file was written (the ready and download events come after).
        exported = [e["id"] for e in parsed["audit_events"]]
        assert exported == [a.id for a in audit if a.id <= exported[-1]]
        assert [a.event for a in audit if a.id > exported[-1]] in (
            ["privacy:export:ready"], ["privacy:export:ready", "privacy:export:downloaded"])
        assert "account:api_key:created" in [e["event"] for e in parsed["audit_events"]]
        assert parsed["data_exports"][0]["status"] == "running"  # as it was while being built

        # Spreadsheet formulas are neutralised in the CSV only.
        csv_text = files["usage.csv"].decode()
        assert "'+p" in csv_text and '"[""=cmd"", ""b""]"' in csv_text

        # No secret anywhere, in any file.
        blob = b"\n".join(files.values())
        secrets_ = [user.password_hash, key.lookup_hash, key.secret_ciphertext, key.wrapped_data_key,
                    p["raw"], *(s.token_hash for s in sessions)]
        for s in secrets_:
            assert s and s.encode() not in blob, s[:12]
        assert b"$argon2" not in blob
        for forbidden in ("password_hash", "lookup_hash", "secret_ciphertext", "wrapped_data_key", "token_hash",
                          "totp_secret", "code_hash", "nonce_hash", "filename"):
            assert forbidden.encode() not in blob, forbidden


def test_progress_fragment_polls_until_ready(app, client, users):
    uid = users.create()
    log_in(client)
    assert client.get("/privacy-center/export/status").status_code == 302  # htmx only
    request_export(client)

    frag = text(client.get("/privacy-center/export/status", headers=HX))
    assert 'hx-trigger="every 2s"' in frag and 'hx-get="/privacy-center/export/status"' in frag
    assert "<progress" in frag and "Waiting to start" in frag
    assert "<html" not in frag
    page = text(client.get("/privacy-center/export/"))
    assert "<progress" in page and "disabled" in page

    with app.app_context():
        db.session.execute(sa.update(DataExport).values(status="running", progress=40, started_at=utcnow()))
        db.session.commit()
    frag = text(client.get("/privacy-center/export/status", headers=HX))
    assert 'value="40"' in frag and "Preparing your export: 40 %" in frag
    assert '<label for="export-progress-' in frag

    exports.build(app, only_export(app, uid).id)  # what the worker that claimed it does
    frag = text(client.get("/privacy-center/export/status", headers=HX))
    assert "hx-trigger" not in frag and "<progress" not in frag
    assert ">Download</a>" in frag and "Ready to download" in frag
    assert only_export(app, uid).status == "ready"


def test_one_export_at_a_time_and_csrf(app, client, users):
    uid = users.create()
    log_in(client)
    bad = client.post("/privacy-center/export/", data={})
    assert bad.status_code == 400 and "expired or was not sent from this site" in text(bad)
    request_export(client)
    request_export(client)
    page = text(client.get("/privacy-center/export/"))
    assert "An export is already being prepared" in page
    only_export(app, uid)
    with app.app_context():
        with pytest.raises(ServiceError):
            exports.request_export(db.session.get(User, uid), "staff")


@pytest.mark.promise("P51")
def test_two_requests_racing_past_the_check_still_make_one_export(app, users, monkeypatch):
    # Both requests read "nothing in flight" before either wrote: the partial
    # unique index refuses the second, which the person sees as the usual message.
    uid = users.create()
    with app.app_context():
        user = db.session.get(User, uid)
        first = exports.request_export(user, "portal")
        db.session.commit()
        real_scalar = db.session.scalar
        monkeypatch.setattr(db.session, "scalar", lambda stmt, *a, **kw: None
                            if "data_exports" in str(stmt) else real_scalar(stmt, *a, **kw))
        with pytest.raises(ServiceError, match="already being prepared"):
            exports.request_export(user, "api")
        monkeypatch.undo()
        db.session.commit()  # the caller's transaction goes on unharmed
        rows = db.session.scalars(sa.select(DataExport.id).where(DataExport.user_id == uid)).all()
        assert rows == [first.id]


def test_login_required(client, app, users):
    assert client.get("/privacy-center/export/").status_code == 302
    resp = client.get("/privacy-center/export/download/abc")
    assert resp.status_code == 302 and "/login" in resp.headers["Location"]


def test_expiry_with_controlled_clock(app, client, users, mail):
    uid = users.create()
    log_in(client)
    request_export(client)
    exports.run_pending(app)
    url = link_path(mail.wait_for(EMAIL, "export is ready"))
    exp = only_export(app, uid)
    path = Path(app.config["EXPORT_DIR"]) / exp.filename
    with app.app_context():
        assert exports.purge_expired(now=exp.expires_at - timedelta(minutes=1)) == 0
        db.session.commit()
    assert path.exists()
    with app.app_context():
        assert exports.purge_expired(now=exp.expires_at + timedelta(seconds=1)) == 1
        db.session.commit()
        assert exports.purge_expired(now=exp.expires_at + timedelta(seconds=2)) == 0
    assert not path.exists()
    exp = only_export(app, uid)
    assert exp.status == "expired" and exp.filename is None
    resp = client.get(url)
    assert resp.status_code == 410 and "has expired" in text(resp)
    assert "Expired" in text(client.get("/privacy-center/export/"))
    assert len(events(app, "privacy:export:expired")) == 1


def test_a_link_past_its_expiry_is_refused_before_the_job_runs(app, client, users, mail):
    uid = users.create()
    log_in(client)
    request_export(client)
    exports.run_pending(app)
    url = link_path(mail.wait_for(EMAIL, "export is ready"))
    with app.app_context():
        db.session.execute(sa.update(DataExport).values(expires_at=utcnow() - timedelta(seconds=1)))
        db.session.commit()
    assert client.get(url).status_code == 410
    assert only_export(app, uid).status == "ready"  # the job tidies it later


def test_purge_removes_downloaded_and_orphan_files(app, client, users, mail):
    uid = users.create()
    log_in(client)
    request_export(client)
    exports.run_pending(app)
    folder = Path(app.config["EXPORT_DIR"])
    orphan = folder / "left-behind-by-an-erased-account.zip"
    orphan.write_bytes(b"PK")
    keep = folder / only_export(app, uid).filename
    with app.app_context():
        exports.purge_expired()
        db.session.commit()
    assert not orphan.exists() and keep.exists()


def test_another_persons_link_is_refused(app, client, users, mail):
    uid = users.create()
    users.create(email="bob@example.com")
    log_in(client)
    request_export(client)
    exports.run_pending(app)
    url = link_path(mail.wait_for(EMAIL, "export is ready"))

    bob = app.test_client()
    log_in(bob, "bob@example.com")
    resp = bob.get(url)
    assert resp.status_code == 404 and "not valid for your account" in text(resp)
    # No ZIP (checked by its signature: a random token in the page may hold "PK").
    assert not resp.get_data().startswith(b"PK\x03\x04") and resp.mimetype == "text/html"
    assert only_export(app, uid).status == "ready"
    assert len(events(app, "privacy:export:download_refused")) == 1
    assert bob.get("/privacy-center/export/download/" + "0" * 64).status_code == 404

    # Still works for its owner.
    resp = client.get(url)
    assert resp.status_code == 200
    resp.close()


def test_failed_build_is_shown(make_app, tmp_path, users):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    app = make_app(EXPORT_DIR=str(blocker / "exports"))
    client = app.test_client()
    with app.app_context():
        from app.services.passwords import hash_password
        u = User(email=EMAIL, email_key=EMAIL, password_hash=hash_password("correct horse battery"),
                 age_confirmed_at=utcnow(), email_verified_at=utcnow())
        db.session.add(u)
        db.session.commit()
        uid = u.id
    log_in(client)
    request_export(client)
    assert exports.run_pending(app) == 1
    exp = only_export(app, uid)
    assert exp.status == "failed" and exp.filename is None and exp.token_hash is None
    assert "Something went wrong while preparing it" in text(client.get("/privacy-center/export/"))
    request_export(client)  # a new one may be requested at once
    assert len(events(app, "privacy:export:failed")) == 1


def test_two_workers_build_an_export_once(app, users):
    uid = users.create()
    with app.app_context():
        exports.request_export(db.session.get(User, uid), "portal")
        db.session.commit()
    results, errors = [], []
    barrier = threading.Barrier(2)

    def work():
        try:
            barrier.wait()
            results.append(exports.run_pending(app))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors and sorted(results) == [0, 1]
    assert len(events(app, "privacy:export:ready")) == 1
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(OutboxMessage)
                                 .where(OutboxMessage.kind == "export_ready")) == 1
    assert len(list(Path(app.config["EXPORT_DIR"]).glob("*.zip"))) == 1


# ---- the API ---------------------------------------------------------------------------

def test_api_export_with_a_key(app, client, users):
    p = seed_person(app, users)
    auth = {"Authorization": f"Bearer {p['raw']}"}
    resp = client.get("/api/v1/export", headers=auth)
    assert resp.status_code == 200, text(resp)[:500]
    assert resp.mimetype == "application/zip"
    assert resp.headers["Content-Disposition"].startswith("attachment; filename=")
    files = read_zip(resp.get_data())
    parsed = check_json_csv_agree(files)
    assert len(parsed["usage"]) == 6 and parsed["profile"][0]["email"] == EMAIL
    assert p["raw"].encode() not in b"".join(files.values())
    (ev,) = events(app, "privacy:export:api")
    assert json.loads(ev.details) == {"key_id": p["key_id"]}

    # Rate limited per key, in the API's JSON shape.
    for _ in range(2):
        assert client.get("/api/v1/export", headers=auth).status_code == 200
    limited = client.get("/api/v1/export", headers=auth)
    assert limited.status_code == 429 and limited.get_json()["error"]["type"] == "rate_limit_error"


def test_api_refuses_bad_keys(app, client, users):
    p = seed_person(app, users)

    def call(raw):
        resp = client.get("/api/v1/export", headers={"Authorization": f"Bearer {raw}"} if raw else {})
        body = resp.get_json()
        assert set(body["error"]) == {"type", "message"}, body
        return resp.status_code, body["error"]["type"], body["error"]["message"]

    assert call(None)[:2] == (401, "authentication_error")
    assert call("rk_" + "x" * 40)[:2] == (401, "authentication_error")
    with app.app_context():
        user = db.session.get(User, p["uid"])
        expired, expired_raw = keys.create(user, "old")
        suspended, suspended_raw = keys.create(user, "paused")
        expired.expires_at = utcnow() - timedelta(seconds=1)
        suspended.suspended_at = utcnow()
        keys.revoke(user, p["key_id"])
        db.session.commit()
    assert call(p["raw"]) == (401, "authentication_error", "This API key has been revoked.")
    assert call(expired_raw) == (401, "authentication_error", "This API key has expired.")
    assert call(suspended_raw)[:2] == (403, "permission_error")
    assert events(app, "privacy:export:api") == []


# ---- bounded memory --------------------------------------------------------------------

def insert_usage(app, uid: int, n: int, batch: int = 20_000) -> None:
    """Many rows fast: one executemany per batch through the Core insert."""
    table = UsageRecord.__table__
    template = usage_row(uid, 0)
    second, latency = timedelta(seconds=1), timedelta(milliseconds=420)
    with app.app_context():
        with db.engine.begin() as conn:
            for start in range(0, n, batch):
                rows = []
                for i in range(start, min(n, start + batch)):
                    started = T0 + i * second
                    rows.append({**template, "request_id": f"req_{uid}_{i:08d}", "started_at": started,
                                 "ended_at": started + latency, "input_tokens": 10 + i % 100})
                conn.execute(sa.insert(table), rows)


def test_iter_zip_memory_stays_bounded(app, users, tmp_path):
    # 60,000 rows held at once would take well over 30 MB; a streamed export stays
    # near its 5,000-row page. bench/export_memory.py runs the 1,000,000-row case.
    rows = 60_000
    uid = users.create()
    t0 = time.perf_counter()
    insert_usage(app, uid, rows)
    inserted = time.perf_counter() - t0
    out = tmp_path / "export.zip"
    with app.app_context():
        user = db.session.get(User, uid)
        tracemalloc.start()
        try:
            with out.open("wb") as fh:
                for chunk in exports.iter_zip(user):
                    fh.write(chunk)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    print(f"inserted {rows} rows in {inserted:.1f}s; export {out.stat().st_size / 1e6:.1f} MB, "
          f"peak traced {peak / 1e6:.1f} MB, total {time.perf_counter() - t0:.1f}s")
    assert peak < 30 * 1024 * 1024
    with zipfile.ZipFile(out) as zf:
        with zf.open("usage.csv") as fh:
            lines = sum(1 for _ in io.TextIOWrapper(fh, encoding="utf-8", newline=""))
        assert lines == rows + 1
        with zf.open("usage.json") as fh:
            head = fh.read(200).decode()
        assert head.startswith('[\n{"id":') and f"req_{uid}_00000000" in head
