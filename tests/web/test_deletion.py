"""Account deletion (P52) through the test client and the service: the request
needs a fresh login and two confirmations; at once sessions end, keys are
revoked and sign-in is blocked; the receipt carries a single-use cancel link
that works during the grace period only; erasure after it removes the account
and its personal rows, keeps usage anonymized and the audit trail, and is
harmless twice. The clock is controlled through the services' `now`."""
from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa

from app.extensions import db
from app.models import (
    ApiKey,
    AuditEvent,
    ConsentEvent,
    DataExport,
    OneTimeToken,
    PrivacyRequest,
    RecoveryCode,
    UsageDaily,
    UsageRecord,
    User,
    UserSession,
)
from app.models.types import utcnow
from app.services import ServiceError, deletion
from app.services import keys as key_service
from app.services.audit import verify_chain
from tests.fakes.smtp import body

EMAIL = "ada@example.com"
CANCEL_RE = re.compile(r"https?://\S+/privacy-center/delete/cancel/\S+")
BLOCKED = "This account is scheduled for deletion on"


def text(resp) -> str:
    return resp.get_data(as_text=True)


def path_of(url: str) -> str:
    return urlsplit(url).path


def make_key(app, user_id: int) -> tuple[int, str]:
    with app.app_context():
        key, raw = key_service.create(db.session.get(User, user_id), "laptop")
        db.session.commit()
        return key.id, raw


def add_usage(app, user_id: int, key_id: int | None, n: int = 3, *, started=None, status=200) -> None:
    with app.app_context():
        start = started or utcnow() - timedelta(days=1)
        for i in range(n):
            db.session.add(UsageRecord(
                request_id=f"req-{user_id}-{i}-{start.timestamp()}", user_id=user_id, api_key_id=key_id, team_id=None,
                project="secret-project", tags='["ada"]', started_at=start, ended_at=start + timedelta(seconds=1),
                model="gpt-test", provider="oai", input_tokens=10, output_tokens=20, cache_read_tokens=1,
                cache_write_tokens=2, cost_usd=Decimal("0.00100000"), latency_ms=1000, status_code=status,
                routing_trace="[]", usage_source="provider"))
        db.session.commit()


def ask_for_deletion(forms):
    """Drive both confirmation steps; return the final response."""
    resp = forms.post("/privacy-center/delete/", {"word": "DELETE", "understand": "y"})
    assert resp.status_code == 200 and "Are you sure" in text(resp), text(resp)[:400]
    return forms.post("/privacy-center/delete/confirm", {}, page="/privacy-center/delete/")


def cancel_link(mail) -> str:
    msg = mail.wait_for(EMAIL, "scheduled for deletion")
    m = CANCEL_RE.search(body(msg))
    assert m, body(msg)
    return path_of(m.group(0))


def the_request(app, user_id) -> PrivacyRequest:
    with app.app_context():
        req = db.session.scalar(sa.select(PrivacyRequest).where(PrivacyRequest.user_id == user_id,
                                                                PrivacyRequest.kind == "delete"))
        db.session.expunge(req)
        return req


# ---- asking -------------------------------------------------------------------------

@pytest.mark.promise("P52")
def test_deletion_page_needs_login_and_a_fresh_login(app, client, users, login):
    assert "/login" in client.get("/privacy-center/delete/").headers["Location"]
    users.create()
    login()
    assert client.get("/privacy-center/delete/").status_code == 200
    with app.app_context():
        db.session.execute(sa.update(UserSession).values(authenticated_at=utcnow() - timedelta(hours=2)))
        db.session.commit()
    resp = client.get("/privacy-center/delete/")
    assert resp.status_code == 302 and "/account/reauth" in resp.headers["Location"]


@pytest.mark.promise("P52")
def test_deletion_needs_the_word_the_box_and_the_are_you_sure_page(app, client, forms, users, login):
    uid = users.create()
    login()
    page = text(client.get("/privacy-center/delete/"))
    assert "What we keep" in page and "7 years" in page and 'for="word"' in page
    resp = forms.post("/privacy-center/delete/", {"word": "delete", "understand": "y"})
    assert resp.status_code == 200 and "Type the word DELETE" in text(resp)
    resp = forms.post("/privacy-center/delete/", {"word": "DELETE"})
    assert "Tick the box" in text(resp)
    # The final POST without the typed confirmation first does nothing.
    resp = forms.post("/privacy-center/delete/confirm", {}, page="/privacy-center/delete/")
    assert resp.status_code == 302 and users.get(uid).deletion_requested_at is None
    # Nor without CSRF.
    assert forms.post("/privacy-center/delete/", {"word": "DELETE", "understand": "y"}).status_code == 200
    resp = client.post("/privacy-center/delete/confirm", data={})
    assert users.get(uid).deletion_requested_at is None


@pytest.mark.promise("P52")
def test_request_takes_effect_at_once(app, client, forms, users, login, mail):
    uid = users.create()
    key_id, raw = make_key(app, uid)
    assert client.get("/v1/models", headers={"Authorization": f"Bearer {raw}"}).status_code == 200
    login()
    other = app.test_client()
    from tests.conftest import Forms
    Forms(other).post("/login", {"email": EMAIL, "password": users.password})
    assert other.get("/dashboard").status_code == 200

    resp = ask_for_deletion(forms)
    assert resp.status_code == 200 and "scheduled for deletion" in text(resp)
    # Logged out here and in the other browser; every session row is gone.
    assert client.get("/dashboard").status_code == 302
    assert other.get("/dashboard").status_code == 302
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(UserSession)) == 0
        key = db.session.get(ApiKey, key_id)
        assert key.revoked_at is not None
        # A revoked key keeps nothing of its secret, however it was revoked.
        assert key.secret_ciphertext is None and key.wrapped_data_key is None
        req = db.session.scalar(sa.select(PrivacyRequest).where(PrivacyRequest.user_id == uid))
        assert req.kind == "delete" and req.status == "open" and req.verification_method == "fresh_login"
        assert req.execute_after - req.received_at == timedelta(days=app.config["DELETION_GRACE_DAYS"])
        assert "privacy:deletion:requested" in db.session.scalars(sa.select(AuditEvent.event)).all()
    # The relay refuses the key.
    resp = client.get("/v1/models", headers={"Authorization": f"Bearer {raw}"})
    assert resp.status_code == 401 and "revoked" in text(resp)

    # Sign-in is blocked with the message, after a correct password only.
    resp = forms.post("/login", {"email": EMAIL, "password": users.password})
    assert resp.status_code == 200 and BLOCKED in text(resp) and "cancel link" in text(resp)
    assert client.get("/dashboard").status_code == 302
    resp = forms.post("/login", {"email": EMAIL, "password": "wrong password here"})
    assert BLOCKED not in text(resp) and "do not match" in text(resp)

    # The receipt says what happens when and what is kept, with the cancel link.
    msg = mail.wait_for(EMAIL, "scheduled for deletion")
    b = body(msg)
    assert "7 years" in b and "audit trail" in b and "Usage totals" in b and "stays with that team" in b
    assert "ledger" in b and "anonymous id" in b  # the wallet's ledger stays, tied to no one (P41)
    assert f"{req.execute_after:%Y-%m-%d}" in b and CANCEL_RE.search(b)
    assert "stay revoked" in b


@pytest.mark.promise("P52")
def test_magic_link_and_old_sessions_refused(app, client, forms, users, login, mail):
    uid = users.create()
    login()
    anon = app.test_client()
    from tests.conftest import Forms
    # A sign-in link asked for before the deletion dies with it.
    Forms(anon).post("/login/link", {"email": EMAIL})
    old = path_of(re.search(r"https?://\S+", body(mail.wait_for(EMAIL, "sign-in link"))).group(0))
    ask_for_deletion(forms)
    assert anon.get(old).status_code == 400
    assert Forms(anon).post(old, {}, page="/login").status_code == 400
    with app.app_context():
        user = db.session.get(User, uid)
        # The service refuses the account even with a fresh, valid link.
        from app.services import accounts, tokens
        token = tokens.issue(user, tokens.MAGIC)
        db.session.commit()
        with pytest.raises(ServiceError, match=BLOCKED):
            accounts.consume_magic_link(token)
        db.session.rollback()
    # Through the page, too.
    resp = Forms(anon).post(f"/login/link/{token}", {})
    assert resp.status_code == 400 and BLOCKED in text(resp)
    # Asking for a new link sends nothing (and says the same as for anyone).
    before = len(mail.to(EMAIL))
    resp = Forms(anon).post("/login/link", {"email": EMAIL})
    assert resp.status_code == 200
    assert len(mail.to(EMAIL)) == before


# ---- cancelling ---------------------------------------------------------------------

@pytest.mark.promise("P52")
def test_cancel_within_grace_restores_sign_in(app, client, forms, users, login, mail):
    uid = users.create()
    key_id, _ = make_key(app, uid)
    login()
    ask_for_deletion(forms)
    url = cancel_link(mail)
    page = client.get(url)
    assert page.status_code == 200 and "Cancel the deletion" in text(page)
    assert users.get(uid).deletion_requested_at is not None, "the GET changes nothing"
    resp = forms.post(url, {})
    assert resp.status_code == 200 and "will not be deleted" in text(resp)
    assert users.get(uid).deletion_requested_at is None
    req = the_request(app, uid)
    assert req.status == "cancelled" and req.closed_at is not None and req.executed_at is None
    with app.app_context():
        assert db.session.get(ApiKey, key_id).revoked_at is not None, "keys stay revoked"
    msg = mail.wait_for(EMAIL, "will not be deleted")
    assert "stay revoked" in body(msg)
    login()
    assert client.get("/dashboard").status_code == 200
    # The link works once.
    forms.post("/logout", {}, page="/dashboard")
    assert forms.post(url, {}, page="/login").status_code == 400
    # And the job has nothing to erase.
    with app.app_context():
        assert deletion.erase_due(utcnow() + timedelta(days=60)) == 0
        assert db.session.get(User, uid) is not None


@pytest.mark.promise("P52")
def test_cancel_after_grace_is_refused(app, client, forms, users, login, mail):
    uid = users.create()
    login()
    ask_for_deletion(forms)
    url = cancel_link(mail)
    token = url.rsplit("/", 1)[1]
    req = the_request(app, uid)
    with app.app_context():
        with pytest.raises(ServiceError, match="grace period ended"):
            deletion.cancel(token, now=req.execute_after + timedelta(seconds=1))
        db.session.rollback()
        # Within grace (controlled clock) it would have worked: the check is the clock.
        assert deletion.peek_cancel(token, now=req.execute_after - timedelta(minutes=1)).id == req.id
        # Move the real deadline into the past: the page refuses too.
        db.session.execute(sa.update(PrivacyRequest).values(execute_after=utcnow() - timedelta(minutes=1)))
        db.session.commit()
    resp = client.get(url)
    assert resp.status_code == 400 and "grace period ended" in text(resp)
    assert forms.post(url, {}, page="/login").status_code == 400
    assert users.get(uid).deletion_requested_at is not None


def test_bad_cancel_link_is_a_clear_400(client):
    resp = client.get("/privacy-center/delete/cancel/not-a-token")
    assert resp.status_code == 400 and "not valid" in text(resp)


# ---- erasing ------------------------------------------------------------------------

@pytest.mark.promise("P52", "P60")
def test_erase_after_grace_removes_the_person_and_keeps_anonymized_usage(app, client, forms, users, login, mail,
                                                                        tmp_path):
    uid = users.create()
    other_id = users.create("bob@example.com")
    key_id, _ = make_key(app, uid)
    add_usage(app, uid, key_id, n=3)
    add_usage(app, other_id, None, n=2)
    export_dir = Path(app.config["EXPORT_DIR"])
    export_dir.mkdir(parents=True, exist_ok=True)
    (export_dir / "ada-export.zip").write_bytes(b"PK")
    with app.app_context():
        db.session.add(UsageDaily(day=utcnow().date() - timedelta(days=100), user_id=uid, api_key_id=key_id,
                                  model="gpt-test", provider="oai", requests=5, errors=1, input_tokens=50,
                                  output_tokens=60, cache_read_tokens=0, cache_write_tokens=0,
                                  cost_usd=Decimal("0.5")))
        db.session.add(RecoveryCode(user_id=uid, code_hash="x" * 64))
        db.session.add(ConsentEvent(user_id=uid, purpose="marketing_email", granted=True, source="test"))
        db.session.add(DataExport(user_id=uid, source="portal", status="ready", filename="ada-export.zip"))
        db.session.commit()
    login()
    ask_for_deletion(forms)
    req = the_request(app, uid)

    with app.app_context():
        # Not yet: the grace period is still running.
        assert deletion.erase_due(req.execute_after - timedelta(minutes=1)) == 0
        assert db.session.get(User, uid) is not None
        assert deletion.erase_due(req.execute_after + timedelta(minutes=1)) == 1

        assert db.session.get(User, uid) is None
        for model in (UserSession, OneTimeToken, RecoveryCode, ConsentEvent, DataExport, ApiKey):
            assert db.session.scalar(sa.select(sa.func.count()).select_from(model)
                                     .where(model.user_id == uid)) == 0, model
        assert not (export_dir / "ada-export.zip").exists()
        rows = db.session.scalars(sa.select(UsageRecord).where(UsageRecord.user_id.is_(None))).all()
        assert len(rows) == 3
        for r in rows:
            assert r.api_key_id is None and r.team_id is None and r.project is None and r.tags is None
            assert (r.input_tokens, r.output_tokens, r.cost_usd) == (10, 20, Decimal("0.001"))
        assert db.session.scalar(sa.select(sa.func.count()).select_from(UsageRecord)
                                 .where(UsageRecord.user_id == other_id)) == 2, "other people untouched"
        daily = db.session.scalars(sa.select(UsageDaily)).one()
        assert daily.user_id is None and daily.api_key_id is None and daily.requests == 5
        closed = db.session.get(PrivacyRequest, req.id)
        assert closed.status == "closed" and closed.outcome == "done" and closed.executed_at is not None
        events = db.session.scalars(sa.select(AuditEvent.event).where(AuditEvent.subject_id == uid)).all()
        assert "privacy:deletion:requested" in events and "privacy:deletion:erased" in events
        assert verify_chain().ok

        # Twice is harmless.
        assert deletion.erase(uid, now=req.execute_after + timedelta(days=1)) is False
        assert deletion.erase_due(req.execute_after + timedelta(days=2)) == 0
        db.session.commit()
    # The closing mail went to the address before it was erased.
    assert "is closed" in mail.wait_for(EMAIL, "privacy request").get("Subject")
    # Sign-in now fails like for any unknown address.
    resp = forms.post("/login", {"email": EMAIL, "password": users.password})
    assert "do not match" in text(resp) and BLOCKED not in text(resp)


@pytest.mark.promise("P52")
def test_staff_filed_request_must_be_verified_and_is_used(app, users):
    uid = users.create()
    staff_id = users.create("staff@example.com", staff=True)
    with app.app_context():
        from app.services import privacy
        user, staff = db.session.get(User, uid), db.session.get(User, staff_id)
        req = privacy.open_request(user, "delete", "email", actor=staff)
        with pytest.raises(ServiceError, match="Verify"):
            deletion.request_deletion(user, staff, channel="email", request=req)
        privacy.verify(req, staff, "email_link")
        got = deletion.request_deletion(user, staff, channel="email", request=req)
        db.session.commit()
        assert got.id == req.id and got.execute_after is not None and user.deletion_requested_at is not None
        with pytest.raises(ServiceError, match="already scheduled"):
            deletion.request_deletion(user, staff)
