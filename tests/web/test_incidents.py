"""Security incidents (P63): staff record one, choose who is affected, send the
notice through the outbox, and the record shows when each notice went out and
whether that was within 72 hours of confirmation."""
from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from app.extensions import db
from app.models import Incident, IncidentNotice, OutboxMessage, UsageRecord
from app.models.types import utcnow

pytestmark = pytest.mark.promise("P63")


def text(resp) -> str:
    return resp.get_data(as_text=True)


@pytest.fixture
def staff(users, login):
    users.create("ada@example.com")
    users.create("bob@example.com")
    users.create("cy@example.com")
    users.create("staff@example.com", staff=True)
    login("staff@example.com")


def form(**over) -> dict:
    base = {"title": "Leaked log file", "description": "A debug log was readable for an hour.",
            "confirmed_at": utcnow().strftime("%Y-%m-%dT%H:%M"), "scope": "all",
            "notice_subject": "Security notice about your account",
            "notice_body": "Your email address was in a log file that was readable for an hour."}
    base.update(over)
    return base


def incident(app) -> Incident:
    with app.app_context():
        inc = db.session.scalars(sa.select(Incident).order_by(Incident.id.desc())).first()
        db.session.expunge(inc)
        return inc


def test_only_staff_see_incidents(client, users, login):
    users.create("ada@example.com")
    login("ada@example.com")
    assert client.get("/staff/incidents/").status_code == 403
    assert client.get("/staff/incidents/new").status_code == 403


def test_record_notify_and_see_every_notice_sent_within_72_hours(app, client, forms, staff, mail):
    resp = forms.post("/staff/incidents/new", form(), page="/staff/incidents/new")
    assert resp.status_code == 302
    inc = incident(app)
    page = text(client.get(f"/staff/incidents/{inc.id}"))
    assert "Affected accounts" in page and "4 (all)" in page  # three people and the staff account
    assert "not sent yet" in page

    resp = forms.post(f"/staff/incidents/{inc.id}/notify", {}, page=f"/staff/incidents/{inc.id}")
    assert resp.status_code == 302
    for addr in ("ada@example.com", "bob@example.com", "cy@example.com"):
        msg = mail.wait_for(addr, "Security notice about your account")
        assert "readable for an hour" in msg.get_content()
    page = text(client.get(f"/staff/incidents/{inc.id}"))
    assert "all 4 sent within 72 hours" in page
    # Sending again queues nobody twice.
    forms.post(f"/staff/incidents/{inc.id}/notify", {}, page=f"/staff/incidents/{inc.id}")
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(OutboxMessage)
                                 .where(OutboxMessage.kind == "incident_notice")) == 4


def test_notices_sent_after_72_hours_are_marked_late(app, client, forms, staff, mail):
    confirmed = (utcnow() - timedelta(hours=80)).strftime("%Y-%m-%dT%H:%M")
    forms.post("/staff/incidents/new", form(confirmed_at=confirmed, scope="emails", emails="ada@example.com"),
               page="/staff/incidents/new")
    inc = incident(app)
    page = text(client.get(f"/staff/incidents/{inc.id}"))
    assert "past the deadline" in page
    forms.post(f"/staff/incidents/{inc.id}/notify", {}, page=f"/staff/incidents/{inc.id}")
    mail.wait_for("ada@example.com", "Security notice")
    page = text(client.get(f"/staff/incidents/{inc.id}"))
    assert "1 late" in page and re.search(r'badge bad">no<', page)
    assert "1 late" in text(client.get("/staff/incidents/"))


def test_scope_by_usage_window_and_by_address_list(app, client, forms, staff, users):
    now = utcnow()
    with app.app_context():
        bob = db.session.scalar(sa.text("SELECT id FROM users WHERE email_key='bob@example.com'"))
        db.session.add(UsageRecord(request_id="req_in_window", user_id=bob, started_at=now - timedelta(hours=2),
                                   ended_at=now - timedelta(hours=2), model="m", latency_ms=5, status_code=200,
                                   usage_source="provider"))
        db.session.commit()
    window = form(scope="usage", used_from=(now - timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M"),
                  used_to=(now - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M"))
    assert forms.post("/staff/incidents/new", window, page="/staff/incidents/new").status_code == 302
    with app.app_context():
        assert db.session.scalars(sa.select(IncidentNotice.user_id)).all() == [bob]

    listed = form(scope="emails", emails="ADA@example.com\ncy@example.com, nobody@example.com")
    assert forms.post("/staff/incidents/new", listed, page="/staff/incidents/new").status_code == 302
    inc = incident(app)
    assert "2 (emails)" in text(client.get(f"/staff/incidents/{inc.id}"))


@pytest.mark.parametrize("over,message", [
    ({"title": ""}, "Give the incident a short title."),
    ({"confirmed_at": (datetime.now(timezone.utc) + timedelta(days=2)).strftime("%Y-%m-%dT%H:%M")},
     "cannot be in the future"),
    ({"scope": "emails", "emails": "not-an-address"}, "is not a valid email address"),
    ({"scope": "emails", "emails": "nobody@example.com"}, "No account matches this scope"),
    ({"scope": "usage"}, "Give both ends of the usage window."),
])
def test_bad_input_is_a_form_message(app, forms, staff, over, message):
    resp = forms.post("/staff/incidents/new", form(**over), page="/staff/incidents/new")
    assert resp.status_code == 422 and message in text(resp)
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(Incident)) == 0


def test_incident_actions_are_audited(app, client, forms, staff, mail):
    from app.models import AuditEvent

    forms.post("/staff/incidents/new", form(), page="/staff/incidents/new")
    inc = incident(app)
    forms.post(f"/staff/incidents/{inc.id}/notify", {}, page=f"/staff/incidents/{inc.id}")
    with app.app_context():
        events = db.session.scalars(sa.select(AuditEvent.event)).all()
    assert {"incident:recorded", "incident:notices:started", "incident:notices:queued",
            "staff:incident:viewed"} <= set(events)


def test_a_future_confirmation_time_is_shown_on_its_own_field(app, forms, staff):
    future = (datetime.now(timezone.utc) + timedelta(days=2)).strftime("%Y-%m-%dT%H:%M")
    page = text(forms.post("/staff/incidents/new", form(confirmed_at=future), page="/staff/incidents/new"))
    field = re.search(r'<input[^>]*id="confirmed_at"[^>]*>', page).group(0)
    assert 'aria-invalid="true"' in field
    assert 'id="confirmed_at-error">The confirmation time cannot be in the future.' in page
    assert 'id="scope-error"' not in page


def test_notice_list_is_paged_and_the_send_button_goes_once_all_are_queued(app, client, forms, staff):
    forms.post("/staff/incidents/new", form(), page="/staff/incidents/new")
    inc = incident(app)
    with app.app_context():  # notices beyond the four accounts, to need a second page
        db.session.execute(sa.insert(IncidentNotice), [{"incident_id": inc.id, "user_id": 100_000 + n}
                                                        for n in range(56)])
        db.session.commit()
    first = text(client.get(f"/staff/incidents/{inc.id}"))
    assert 'aria-label="Notice pages"' in first and "Page 1 of 2" in first
    assert f'rel="next" href="/staff/incidents/{inc.id}?page=2"' in first and 'rel="prev"' not in first
    assert "Send the notices to 60 people" in first

    second = text(client.get(f"/staff/incidents/{inc.id}?page=2"))
    assert "Page 2 of 2" in second and len(re.findall(r'<tr id="notice-', second)) == 10
    assert f'rel="prev" href="/staff/incidents/{inc.id}"' in second and 'rel="next"' not in second
    assert "Page 2 of 2" in text(client.get(f"/staff/incidents/{inc.id}?page=99"))

    forms.post(f"/staff/incidents/{inc.id}/notify", {}, page=f"/staff/incidents/{inc.id}")
    queued = text(client.get(f"/staff/incidents/{inc.id}"))
    assert 'id="notices-queued"' in queued
    assert "Queue the remaining notices" not in queued and "Send the notices" not in queued
