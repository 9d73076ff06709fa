"""Policy changes with notice (P62): a material change waits for staff, is
published at least 14 days ahead, is mailed to every account in resumable
batches, shows a banner until its date, and only then does the code apply it.

Two apps share one database here: the first with the settings of version 1,
the second with the operator's new settings, as after a restart."""
from __future__ import annotations

from datetime import datetime, time, timedelta, timezone
from decimal import Decimal

import pytest
import sqlalchemy as sa

from app import jobs
from app.extensions import db
from app.models import OutboxMessage, PolicyNotice, PolicyVersion, UsageRecord, User
from app.models.types import utcnow
from app.services import mail as mail_service
from app.services import policy
from app.services.mail import deliver_pending
from tests.conftest import Forms
from tests.fakes.smtp import body

pytestmark = pytest.mark.promise("P62")

LONGER = {"METADATA_RETENTION_DAYS": "180"}   # keeping data longer: material
PEOPLE = ["ada@example.com", "bob@example.com", "cy@example.com"]


def text(resp) -> str:
    return resp.get_data(as_text=True)


@pytest.fixture
def v1(app, users):
    """Version 1 in effect, three people and a staff member."""
    for addr in PEOPLE:
        users.create(addr)
    users.create("staff@example.com", staff=True)
    assert "Version 1" in text(app.test_client().get("/privacy"))
    return app


def signed_in(app, users, email) -> Forms:
    f = Forms(app.test_client())
    resp = f.post("/login", {"email": email, "password": users.password})
    assert resp.status_code == 302
    return f


def publish_form(**over) -> dict:
    data = {"summary": "We now keep per-request metadata for 180 days instead of 90.", "material": "y",
            "effective_on": policy.earliest_effective(True).isoformat()}
    data.update(over)
    return {k: v for k, v in data.items() if v is not None}


def version(app, number) -> PolicyVersion:
    with app.app_context():
        row = db.session.scalar(sa.select(PolicyVersion).where(PolicyVersion.number == number))
        if row is not None:
            db.session.expunge(row)
        return row


def test_only_staff_manage_policy_versions(v1, users):
    person = signed_in(v1, users, "ada@example.com")
    assert person.client.get("/staff/policy/").status_code == 403
    assert person.client.post("/staff/policy/publish", data={}).status_code in (400, 403)


def test_a_material_change_waits_for_staff_and_the_code_keeps_the_old_rules(v1, make_app, users):
    new = make_app(**LONGER)
    assert "Version 1" in text(new.test_client().get("/privacy"))
    assert "<td>90 days, then rolled into daily totals</td>" in text(new.test_client().get("/privacy"))
    assert version(new, 2) is None, "a longer retention is not published without notice"

    # The retention job still deletes raw rows after 90 days, not the configured 180.
    with new.app_context():
        assert policy.enforced("METADATA_RETENTION_DAYS") == 90
        now = utcnow()
        db.session.add(UsageRecord(
            request_id="old-row", user_id=None, api_key_id=None, team_id=None, project=None, tags="[]",
            started_at=now - timedelta(days=120), ended_at=now - timedelta(days=120), model="m", provider="p",
            input_tokens=1, output_tokens=1, cache_read_tokens=0, cache_write_tokens=0, cost_usd=Decimal("0"),
            latency_ms=1, status_code=200, routing_trace="[]", usage_source="provider"))
        db.session.commit()
        assert jobs.run_all(new)["usage_rolled_up"] == 1

    staff = signed_in(new, users, "staff@example.com")
    page = text(staff.client.get("/staff/policy/"))
    assert "Per-request metadata kept (days)" in page and "yes, 14 days" in page
    assert "the code keeps enforcing version 1" in page
    draft = text(staff.client.get("/staff/policy/draft"))
    assert "<td>180 days, then rolled into daily totals</td>" in draft and "Draft" in draft


def test_a_material_change_needs_14_days_and_the_material_box(v1, make_app, users):
    new = make_app(**LONGER)
    staff = signed_in(new, users, "staff@example.com")
    too_soon = (utcnow() + timedelta(days=10)).date().isoformat()
    resp = staff.post("/staff/policy/publish", publish_form(effective_on=too_soon), page="/staff/policy/")
    assert resp.status_code == 400
    first = policy.earliest_effective(True)
    assert f"choose {first.isoformat()} or later" in text(resp)
    assert "We now keep per-request metadata for 180 days" in text(resp), "what was typed is kept"

    resp = staff.post("/staff/policy/publish", publish_form(material=None), page="/staff/policy/")
    assert resp.status_code == 400 and "must be announced 14 days ahead" in text(resp)

    resp = staff.post("/staff/policy/publish", publish_form(summary=""), page="/staff/policy/")
    assert resp.status_code == 400 and "Say what changes" in text(resp)
    assert version(new, 2) is None


def test_publish_mails_every_account_shows_a_banner_and_applies_on_its_date(v1, make_app, users, mail):
    users.create("leaving@example.com", deletion_requested_at=utcnow())  # being erased: not mailed
    new = make_app(**LONGER)
    staff = signed_in(new, users, "staff@example.com")
    effective = policy.earliest_effective(True)

    # First a confirmation page says how many people will be mailed; nothing is sent yet.
    resp = staff.post("/staff/policy/publish", publish_form(), page="/staff/policy/")
    assert resp.status_code == 200
    page = text(resp)
    assert "<strong>4</strong> accounts will be emailed" in page and effective.isoformat() in page
    assert version(new, 2) is None

    confirm = {"confirmed": "1", **publish_form()}
    resp = staff.post("/staff/policy/publish", confirm, page="/staff/policy/")
    assert resp.status_code == 302
    v2 = version(new, 2)
    assert v2.material and v2.effective_at == datetime.combine(effective, time.min, tzinfo=timezone.utc)

    # Every account but the one being erased gets the notice, at least 14 days ahead.
    mail.deliver()
    for addr in [*PEOPLE, "staff@example.com"]:
        msg = mail.wait_for(addr, f"Our privacy policy changes on {effective.isoformat()}")
        content = body(msg)
        assert "180 days instead of 90" in content and "/privacy/versions/2" in content
    assert mail.to("leaving@example.com") == []
    with new.app_context():
        sent = db.session.scalars(sa.select(OutboxMessage.sent_at).join(
            PolicyNotice, PolicyNotice.outbox_message_id == OutboxMessage.id)).all()
        assert len(sent) == 4 and all(s <= v2.effective_at - timedelta(days=14) for s in sent)
    assert "all 4 notices sent" in text(staff.client.get("/staff/policy/"))
    fragment = text(staff.client.get("/staff/policy/2/progress", headers={"HX-Request": "true"}))
    assert "all 4 notices sent" in fragment and "hx-get" not in fragment, "done: the fragment stops polling"

    # Until the date: a banner on every page, the old rules in force, the new text readable.
    person = signed_in(new, users, "ada@example.com")
    dash = text(person.client.get("/dashboard"))
    assert f"Our privacy policy changes on <strong>{effective.isoformat()}</strong>" in dash
    assert 'href="/privacy/versions/2"' in dash
    current = text(person.client.get("/privacy"))
    assert "Version 1" in current and "<td>90 days, then rolled into daily totals</td>" in current
    upcoming = text(person.client.get("/privacy/versions/2"))
    assert f"takes effect on {effective.isoformat()}" in upcoming and "180 days instead of 90" in upcoming
    with new.app_context():
        assert policy.enforced("METADATA_RETENTION_DAYS") == 90
        later = v2.effective_at + timedelta(minutes=1)
        assert policy.current_version(later).number == 2
        assert policy.enforced("METADATA_RETENTION_DAYS", later) == 180

    # Another change cannot be published while this one waits.
    newer = make_app(**{**LONGER, "AUDIT_RETENTION_DAYS": "365"})
    staff2 = signed_in(newer, users, "staff@example.com")
    resp = staff2.post("/staff/policy/publish", {**confirm, "summary": "Audit log kept a year."},
                       page="/staff/policy/")
    assert resp.status_code == 400 and "Version 2 takes effect on" in text(resp), text(resp)[-2500:]

    # The date comes: version 2 is in force, the banner goes.
    with new.app_context():
        db.session.execute(sa.update(PolicyVersion).where(PolicyVersion.number == 2)
                           .values(effective_at=utcnow() - timedelta(seconds=1)))
        db.session.commit()
    assert "Our privacy policy changes" not in text(person.client.get("/dashboard"))
    current = text(person.client.get("/privacy"))
    assert "Version 2" in current and "<td>180 days, then rolled into daily totals</td>" in current
    assert "<strong>archived</strong>" in text(person.client.get("/privacy/versions/1"))


def test_the_mailing_resumes_after_a_crash_and_never_mails_twice(v1, make_app, users, monkeypatch):
    for i in range(4):
        users.create(f"extra{i}@example.com")            # 8 accounts in all
    new = make_app(**LONGER)
    monkeypatch.setattr(policy, "BATCH", 3)
    with new.app_context():
        staff = db.session.scalar(sa.select(User).where(User.is_staff.is_(True)))
        v2 = policy.publish(staff, summary="Longer metadata retention.", material=True,
                            effective_on=policy.earliest_effective(True))
        assert policy.queue_notices(v2, max_batches=1) == 3

        # The next batch fails half way: none of it is kept, the cursor stays.
        real, calls = mail_service.queue, []

        def flaky(*a, **kw):
            calls.append(1)
            if len(calls) == 2:
                raise RuntimeError("disk full")
            return real(*a, **kw)

        monkeypatch.setattr(mail_service, "queue", flaky)
        with pytest.raises(RuntimeError):
            policy.queue_notices(v2)
        db.session.rollback()
        monkeypatch.setattr(mail_service, "queue", real)
        assert db.session.scalar(sa.select(sa.func.count()).select_from(PolicyNotice)) == 3

        # The scheduled job finishes it; running it again mails nobody twice.
        assert jobs.run_all(new)["policy_notices_queued"] == 5
        assert jobs.run_all(new)["policy_notices_queued"] == 0
        addrs = db.session.scalars(sa.select(OutboxMessage.to_addr)
                                   .where(OutboxMessage.kind == "policy_change")).all()
        assert sorted(addrs) == sorted([*PEOPLE, "staff@example.com", *[f"extra{i}@example.com" for i in range(4)]])
        assert policy.notice_progress(db.session.get(PolicyVersion, v2.id))["remaining"] == 0


def test_a_protective_change_applies_at_once_without_mail(v1, make_app, mail):
    new = make_app(PRIVACY_CONTACT="dpo@example.org", METADATA_RETENTION_DAYS="30")
    page = text(new.test_client().get("/privacy"))
    assert "Version 2" in page and "<td>30 days, then rolled into daily totals</td>" in page
    v2 = version(new, 2)
    assert not v2.material and v2.published_by_id is None
    assert "Privacy contact" in v2.summary and "90 → 30" in v2.summary
    with new.app_context():
        assert policy.enforced("METADATA_RETENTION_DAYS") == 30
        assert deliver_pending(new) == 0
    assert "Our privacy policy changes" not in page


def test_adding_a_sub_processor_cannot_be_published_as_minor(v1, make_app, users):
    new = make_app(SUB_PROCESSORS="Stripe (payments, US);OpenAI (model provider, US);"
                                  "Anthropic (model provider, US);Mistral (model provider, FR)")
    staff = signed_in(new, users, "staff@example.com")
    page = text(staff.client.get("/staff/policy/"))
    assert "Mistral (model provider, FR)" in page and "yes, 14 days" in page
    assert version(new, 2) is None
    today = utcnow().date().isoformat()
    resp = staff.post("/staff/policy/publish", publish_form(material=None, effective_on=today,
                                                            summary="Mistral added."), page="/staff/policy/")
    assert resp.status_code == 400 and "must be announced 14 days ahead" in text(resp)
    assert version(new, 2) is None


def test_staff_publish_a_reworded_text_at_once_as_a_minor_change(v1, users, monkeypatch, mail):
    # A template edit changes no setting: staff decide; a minor one may apply today.
    real = policy.render_body
    monkeypatch.setattr(policy, "render_body", lambda s: real(s) + "<p>We fixed a typo.</p>")
    staff = signed_in(v1, users, "staff@example.com")
    page = text(staff.client.get("/staff/policy/"))
    assert "the template was edited" in page
    today = utcnow().date().isoformat()
    data = publish_form(material=None, effective_on=today, summary="Typo fixed.")
    resp = staff.post("/staff/policy/publish", data, page="/staff/policy/")
    assert resp.status_code == 200 and "nobody is emailed" in text(resp)
    resp = staff.post("/staff/policy/publish", {"confirmed": "1", **data}, page="/staff/policy/")
    assert resp.status_code == 302
    current = text(v1.test_client().get("/privacy"))
    assert "Version 2" in current and "We fixed a typo." in current
    assert "Our privacy policy changes" not in current
    with v1.app_context():
        assert deliver_pending(v1) == 0
