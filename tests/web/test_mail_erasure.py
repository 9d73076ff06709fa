"""Mail is the account's data (P52, P60, P61): erased with the account, found
by account and never by address, pruned after MAIL_RETENTION_DAYS once sent,
and that window is stated on /privacy.

An address is not a person: after an account is erased, someone else may sign
up with the same address, and nothing of the first owner's may reach them.
Mail goes over real SMTP to the loopback server; the retention clock is the
job's `now`.
"""
from __future__ import annotations

import io
import json
import zipfile
from datetime import timedelta
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa

from app import jobs
from app.extensions import db
from app.models import AuditEvent, IncidentNotice, OutboxMessage, PolicyVersion, PrivacyRequest, User
from app.models.types import utcnow
from app.services import exports, incidents, policy
from app.services import mail as mail_service
from app.services.audit import verify_chain
from tests.conftest import Forms
from tests.fakes.smtp import link

EMAIL = "ada@example.com"
PASSWORD = "correct horse battery"


def text(resp) -> str:
    return resp.get_data(as_text=True)


def path_of(url: str) -> str:
    return urlsplit(url).path


def outbox(app, *where) -> list[OutboxMessage]:
    with app.app_context():
        rows = db.session.scalars(sa.select(OutboxMessage).where(*where).order_by(OutboxMessage.id)).all()
        db.session.expunge_all()
        return list(rows)


def table_text(app, table: str) -> str:
    with app.app_context():
        t = db.metadata.tables[table]
        return "\n".join(str(v) for row in db.session.execute(sa.select(t)) for v in row)


def ask_for_deletion(forms) -> None:
    resp = forms.post("/privacy-center/delete/", {"word": "DELETE", "understand": "y"})
    assert resp.status_code == 200 and "Are you sure" in text(resp), text(resp)[:400]
    resp = forms.post("/privacy-center/delete/confirm", {}, page="/privacy-center/delete/")
    assert "scheduled for deletion" in text(resp), text(resp)[:400]


def erase_after_grace(app, user_id: int) -> None:
    """Run the retention job at the end of the account's grace period."""
    with app.app_context():
        req = db.session.scalar(sa.select(PrivacyRequest).where(PrivacyRequest.user_id == user_id,
                                                                PrivacyRequest.kind == "delete"))
        when = req.execute_after + timedelta(minutes=1)
    assert jobs.run_all(app, now=when)["accounts_erased"] == 1


def row_html(page: str, row_id: str) -> str:
    start = page.index(f'id="{row_id}"')
    return page[start:page.index("</tr>", start)]


def export_of(app, client, mail, after: int = 0) -> dict[str, list[dict]]:
    """Request an export in the portal, build it, follow the mailed link, read the ZIP."""
    resp = Forms(client).post("/privacy-center/export/", {}, page="/privacy-center/export/")
    assert resp.status_code == 302
    assert exports.run_pending(app) == 1
    url = link(mail.wait_for(EMAIL, "Your data export is ready", after=after))
    resp = client.get(url.removeprefix(app.config["BASE_URL"]))
    assert resp.status_code == 200
    with zipfile.ZipFile(io.BytesIO(resp.get_data())) as zf:
        return {n[:-5]: json.loads(zf.read(n)) for n in zf.namelist() if n.endswith(".json")}


# ---- erasure --------------------------------------------------------------------------

def test_mail_cannot_be_queued_without_saying_whose_it_is(app, users):
    """Mail that belongs to nobody would outlive its account's erasure: a
    caller must name the account, or say there is none."""
    ada = users.create(EMAIL)
    with app.app_context(), app.test_request_context():
        with pytest.raises(TypeError):
            mail_service.queue(EMAIL, "test:x", "Hello", "notice_2fa", what="on")
        with pytest.raises(TypeError):
            mail_service.queue(EMAIL, "test:x", "Hello", "notice_2fa", user=None, user_id=ada, what="on")
        mail_service.queue(EMAIL, "test:x", "Hello", "notice_2fa", user=db.session.get(User, ada), what="on")
        mail_service.queue("visitor@example.org", "test:x", "Hello", "notice_2fa", user=None, what="on")
        db.session.commit()
    assert [(r.to_addr, r.user_id) for r in outbox(app)] == [(EMAIL, ada), ("visitor@example.org", None)]


@pytest.mark.promise("P52")
def test_a_new_account_on_an_erased_address_sees_none_of_the_old_owners_mail(app, client, forms, users, login,
                                                                             mail):
    """Ada gets mail, deletes her account and is erased; Bea signs up with the
    same address. Bea's "What we keep" and her export show her own mail only,
    and nothing else of Ada's either (her privacy requests, her audit trail)."""
    ada = users.create(EMAIL)
    forms.post("/forgot", {"email": EMAIL})
    login()
    ask_for_deletion(forms)
    mail.wait_for(EMAIL, "scheduled for deletion")
    ada_subjects = {m["Subject"] for m in mail.mailbox.to(EMAIL)}
    assert {"Reset your password", "Your account is scheduled for deletion"} <= ada_subjects
    erase_after_grace(app, ada)
    closing = mail.wait_for(EMAIL, "is closed")  # the erasure's own receipt still reaches the address
    ada_subjects.add(closing["Subject"])

    bea_browser = app.test_client()
    bea = Forms(bea_browser)
    resp = bea.post("/signup", {"email": EMAIL, "password": PASSWORD, "age_ok": "y", "accept_policy": "y"})
    assert resp.status_code == 302
    confirm = mail.wait_for(EMAIL, "Confirm your email", after=0)
    assert bea_browser.get(path_of(link(confirm))).status_code == 302
    assert bea.post("/login", {"email": EMAIL, "password": PASSWORD}).status_code == 302
    with app.app_context():
        bea_id = db.session.scalar(sa.select(User.id).where(User.email_key == EMAIL))

    data = export_of(app, bea_browser, mail, after=0)
    assert not {m["subject"] for m in data["emails"]} & ada_subjects, "Bea's export lists Ada's mail"
    assert [m["subject"] for m in data["emails"]] == ["Confirm your email for Relay"]
    assert data["privacy_requests"] == [], "Bea's export lists Ada's deletion request"
    assert not [e for e in data["audit_events"] if e["event"].startswith("privacy:deletion")]
    assert data["profile"][0]["id"] == bea_id != ada, "an erased account's id is never given to a new one"

    page = text(bea_browser.get("/privacy-center/data"))
    # The confirmation link and the export's mail: nothing of Ada's.
    assert "<strong>2</strong>" in row_html(page, "inv-mail")
    assert "<strong>0</strong>" in row_html(page, "inv-requests")


@pytest.mark.promise("P52")
def test_erasure_removes_the_accounts_mail_and_unsent_mail_never_goes(app, client, forms, users, login, mail):
    """Sent and unsent mail of the erased account go with it; what was still
    waiting is never delivered; other people's mail stays. A security notice
    that went out stays as the record that it did, without the address."""
    ada = users.create(EMAIL)
    bob = users.create("bob@example.com")
    staff = users.create("staff@example.com", staff=True)
    with app.app_context(), app.test_request_context():
        inc = incidents.record(db.session.get(User, staff), title="t", description="d", confirmed_at=utcnow(),
                               scope=incidents.Scope("emails", emails=(EMAIL, "bob@example.com")),
                               notice_subject="Security notice", notice_body="Something happened.")
        db.session.commit()
        incidents.queue_notices(None, inc)
        inc_id = inc.id
    mail.deliver()
    login()
    ask_for_deletion(forms)  # the receipt is queued, and is sent
    mail.deliver()
    with app.app_context(), app.test_request_context():
        # Two more, still waiting when the erasure runs.
        mail_service.queue(EMAIL, "test:waiting", "Waiting one", "notice_2fa", user_id=ada, what="on")
        mail_service.queue(EMAIL, "test:waiting", "Waiting two", "notice_2fa", user_id=ada, what="off")
        mail_service.queue("bob@example.com", "test:waiting", "For Bob", "notice_2fa", user_id=bob, what="on")
        db.session.commit()
    assert len(outbox(app, OutboxMessage.user_id == ada)) == 4

    erase_after_grace(app, ada)
    assert outbox(app, OutboxMessage.user_id == ada) == []
    mail.deliver()
    subjects = [m["Subject"] for m in mail.mailbox.to(EMAIL)]
    assert "Waiting one" not in subjects and "Waiting two" not in subjects
    assert any("is closed" in s for s in subjects), "the erasure receipt is the one mail that still goes"
    assert "For Bob" in [m["Subject"] for m in mail.mailbox.to("bob@example.com")]
    # Only the receipt is left with the address, tied to no account; it goes with the window.
    left = [r for r in outbox(app) if r.to_addr == EMAIL]
    assert [(r.kind, r.user_id) for r in left] == [("privacy_request_closed", None)]

    # The incident still shows both notices sent within 72 hours; Ada's by id only.
    with app.app_context():
        s = incidents.summary(db.session.get(incidents.Incident, inc_id))
        assert (s["total"], s["sent"], s["on_time"]) == (2, 2, 2)
        kept = db.session.scalar(sa.select(OutboxMessage).join(
            IncidentNotice, IncidentNotice.outbox_message_id == OutboxMessage.id).where(IncidentNotice.user_id == ada))
        assert kept.sent_at is not None and (kept.to_addr, kept.subject, kept.user_id) == ("", "", None)
        assert verify_chain().ok


@pytest.mark.promise("P52", "P63")
def test_an_account_erased_before_its_notice_went_out_leaves_no_unsendable_notice(app, users):
    """The incident does not wait forever for a notice nobody can receive."""
    ada = users.create(EMAIL)
    users.create("bob@example.com")
    staff = users.create("staff@example.com", staff=True)
    with app.app_context(), app.test_request_context():
        from app.services import deletion

        inc = incidents.record(db.session.get(User, staff), title="t", description="d", confirmed_at=utcnow(),
                               scope=incidents.Scope("emails", emails=(EMAIL, "bob@example.com")),
                               notice_subject="Security notice", notice_body="Something happened.")
        db.session.commit()
        incidents.queue_notices(None, inc)  # queued, not sent yet
        deletion.request_deletion(db.session.get(User, ada), None)
        db.session.commit()
        assert deletion.erase(ada, now=utcnow() + timedelta(days=8))
        db.session.commit()
        s = incidents.summary(db.session.get(incidents.Incident, inc.id))
        assert (s["total"], s["unsent"]) == (1, 1)
        assert db.session.scalar(sa.select(sa.func.count()).select_from(OutboxMessage)
                                 .where(OutboxMessage.kind == "incident_notice")) == 1


# ---- retention ------------------------------------------------------------------------

@pytest.mark.promise("P60")
def test_sent_and_failed_mail_is_pruned_after_the_window_and_waiting_mail_stays(make_app, users, smtp):
    app = make_app(MAIL_RETENTION_DAYS="10")
    ada = users.create(EMAIL)
    staff = users.create("staff@example.com", staff=True)
    with app.app_context(), app.test_request_context():
        inc = incidents.record(db.session.get(User, staff), title="t", description="d", confirmed_at=utcnow(),
                               scope=incidents.Scope("emails", emails=(EMAIL,)),
                               notice_subject="Security notice", notice_body="Something happened.")
        db.session.commit()
        incidents.queue_notices(None, inc)
        mail_service.queue(EMAIL, "test:a", "Sent one", "notice_2fa", user_id=ada, what="on")
        failed = mail_service.queue(EMAIL, "test:b", "Failed one", "notice_2fa", user_id=ada, what="on")
        db.session.commit()
        assert mail_service.deliver_pending(app) == 3
        db.session.execute(sa.update(OutboxMessage).where(OutboxMessage.id == failed.id)
                           .values(sent_at=None, failed_at=utcnow()))
        mail_service.queue(EMAIL, "test:c", "Still waiting", "notice_2fa", user_id=ada, what="on")
        db.session.commit()
        inc_id = inc.id
    now = utcnow()

    assert jobs.run_all(app, now=now + timedelta(days=9, hours=23))["mail_pruned"] == 0
    assert len(outbox(app, OutboxMessage.user_id == ada)) == 4
    assert jobs.run_all(app, now=now + timedelta(days=10, minutes=1))["mail_pruned"] == 3
    assert [r.subject for r in outbox(app, OutboxMessage.user_id == ada)] == ["Still waiting"]
    assert "Sent one" not in table_text(app, "outbox_messages")
    # The notice's record keeps its delivery time, nothing else.
    with app.app_context():
        s = incidents.summary(db.session.get(incidents.Incident, inc_id))
        assert (s["total"], s["sent"], s["on_time"]) == (1, 1, 1)
    assert EMAIL in table_text(app, "outbox_messages")  # only the waiting one
    assert [r.to_addr for r in outbox(app) if r.to_addr] == [EMAIL]
    # A later run has nothing left to do.
    assert jobs.run_all(app, now=now + timedelta(days=30))["mail_pruned"] == 0


@pytest.mark.promise("P52", "P60")
def test_what_we_keep_lists_mail_with_its_deletion_date(make_app, users, mail):
    app = make_app(MAIL_RETENTION_DAYS="21")
    ada = users.create(EMAIL)
    client = app.test_client()
    assert Forms(client).post("/login", {"email": EMAIL, "password": PASSWORD}).status_code == 302
    with app.app_context(), app.test_request_context():
        mail_service.queue(EMAIL, "test:a", "Sent one", "notice_2fa", user_id=ada, what="on")
        db.session.commit()
        mail_service.deliver_pending(app)
        sent_at = outbox(app, OutboxMessage.user_id == ada)[0].sent_at
        mail_service.queue(EMAIL, "test:b", "Waiting", "notice_2fa", user_id=ada, what="on")
        db.session.commit()
    row = row_html(text(client.get("/privacy-center/data")), "inv-mail")
    assert "<strong>2</strong>" in row and "1 waiting to be sent" in row
    assert (sent_at + timedelta(days=21)).date().isoformat() in row and "21 days after it was sent" in row


# ---- the policy states the window -----------------------------------------------------

@pytest.mark.promise("P61")
def test_privacy_page_states_the_mail_window_and_a_longer_one_waits_for_notice(make_app):
    first = make_app(MAIL_RETENTION_DAYS="21")
    page = text(first.test_client().get("/privacy"))
    assert "Emails we sent you" in page and "<td>21 days after sending;" in page

    longer = make_app(MAIL_RETENTION_DAYS="60")
    assert "<td>21 days after sending;" in text(longer.test_client().get("/privacy"))
    with longer.app_context():
        assert policy.enforced("MAIL_RETENTION_DAYS") == 21
        [change] = policy.draft().changes
        assert change.key == "MAIL_RETENTION_DAYS" and change.material

    shorter = make_app(MAIL_RETENTION_DAYS="14")
    page = text(shorter.test_client().get("/privacy"))
    assert "Version 2" in page and "<td>14 days after sending;" in page
    with shorter.app_context():
        assert policy.enforced("MAIL_RETENTION_DAYS") == 14


@pytest.mark.promise("P61")
def test_a_policy_published_before_mail_had_a_window_gains_it_at_once(app):
    """A deployment whose published versions predate the setting: stating a
    window where none was stated only protects people, so it is published
    at once, and the job applies it."""
    with app.app_context():
        v1 = policy.current_version()
        settings = json.loads(v1.settings_json)
        del settings["MAIL_RETENTION_DAYS"]
        v1.settings_json = json.dumps(settings, sort_keys=True)
        v1.digest = "an older text"
        db.session.commit()
    page = text(app.test_client().get("/privacy"))
    assert "Version 2" in page and "<td>30 days after sending;" in page
    with app.app_context():
        v2 = db.session.scalar(sa.select(PolicyVersion).where(PolicyVersion.number == 2))
        assert not v2.material and "Sent emails kept (days): not stated → 30" in v2.summary
        assert db.session.scalar(sa.select(sa.func.count()).select_from(AuditEvent)
                                 .where(AuditEvent.event == "policy:version:published")) == 2
