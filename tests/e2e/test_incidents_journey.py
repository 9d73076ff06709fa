"""A security incident recorded and notified from the staff pages in a real
browser (P63): staff describe it, choose the affected accounts by a usage
window (after a first try whose scope matched nobody), send the notices, the
affected people receive them by SMTP and nobody else does, and the incident
page shows when each notice went out and that it was within 72 hours."""
from __future__ import annotations

import re
import time
import uuid
from datetime import timedelta

import pytest
import sqlalchemy as sa
from playwright.sync_api import Page, expect

from app.extensions import db
from app.models import Incident, IncidentNotice, OutboxMessage, UsageRecord, User
from app.models.types import utcnow
from app.services.passwords import hash_password
from tests.e2e.flows import PASSWORD, fill_login, unique_email
from tests.fakes.smtp import body

pytestmark = pytest.mark.e2e

# Sending is asynchronous (the outbox thread); a busy machine may take a while.
SENT_TIMEOUT = 30
TITLE = "Debug log readable by other tenants"
NOTICE_BODY = ("A debug log holding your email address and request times was readable by other "
               "customers for two hours. We removed it and rotated the affected credentials.")


def add_account(live_server, name: str, *, staff: bool = False, used_hours_ago: float | None = None) -> tuple[str, int]:
    """An account made directly (signup is not what this test is about),
    optionally with one relay request `used_hours_ago`; returns (email, id)."""
    email = unique_email(name)
    now = utcnow()
    with live_server.app.app_context():
        user = User(email=email, email_key=email.lower(), password_hash=hash_password(PASSWORD),
                    age_confirmed_at=now, email_verified_at=now, is_staff=staff)
        db.session.add(user)
        db.session.flush()
        if used_hours_ago is not None:
            at = now - timedelta(hours=used_hours_ago)
            db.session.add(UsageRecord(request_id=f"req_{uuid.uuid4().hex[:20]}", user_id=user.id, started_at=at,
                                       ended_at=at, model="gpt-4o-mini", latency_ms=120, status_code=200,
                                       usage_source="provider"))
        db.session.commit()
        return email, user.id


def minutes(dt) -> str:
    """The value a datetime-local input holds."""
    return dt.strftime("%Y-%m-%dT%H:%M")


def reload_until_text(page: Page, locator, text: str, timeout: float = SENT_TIMEOUT) -> None:
    """Reload until `locator` shows `text`: the page is server-rendered and
    the outbox marks a notice sent a moment after the SMTP server took it."""
    deadline = time.monotonic() + timeout
    while text not in locator.inner_text() and time.monotonic() < deadline:
        page.wait_for_timeout(300)
        page.reload()
    expect(locator).to_contain_text(text)


@pytest.mark.promise("P63")
def test_staff_record_an_incident_and_notify_the_affected_people_within_72_hours(page: Page, live_server, smtp):
    # Two people used the relay during the exposure window, one only before it.
    ada, ada_id = add_account(live_server, "ada", used_hours_ago=2)
    bob, bob_id = add_account(live_server, "bob", used_hours_ago=2.5)
    cy, cy_id = add_account(live_server, "cy", used_hours_ago=6)
    staff_email, _ = add_account(live_server, "staff", staff=True)
    now = utcnow()
    confirmed, window_from, window_to = now - timedelta(hours=1), now - timedelta(hours=3), now - timedelta(hours=1)

    page.goto(live_server("/login"))
    fill_login(page, staff_email)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Staff").click()
    page.get_by_role("link", name="Security incidents").click()
    expect(page.get_by_role("heading", name="Security incidents")).to_be_visible()
    page.get_by_role("link", name="Record an incident").click()
    expect(page.get_by_role("heading", name="Record a security incident")).to_be_visible()

    # First try: a list of addresses that has no account behind it.
    nobody = "nobody-" + ada
    page.get_by_label("Title", exact=True).fill(TITLE)
    page.get_by_label("What happened (internal record)").fill("Log shipper misconfigured; bucket was public.")
    page.get_by_label("Confirmed at (UTC)").fill(minutes(confirmed))
    page.get_by_label("A list of addresses").check()
    page.get_by_label("Addresses (one per line)").fill(nobody)
    page.get_by_label("Notice subject").fill("Security notice: a log file was exposed")
    page.get_by_label("Notice text (sent to each affected person)").fill(NOTICE_BODY)
    page.get_by_role("button", name="Record incident").click()

    expect(page.locator("#scope-error")).to_have_text("No account matches this scope: nobody would be notified.")
    # Nothing typed is lost.
    expect(page.get_by_label("Title", exact=True)).to_have_value(TITLE)
    expect(page.get_by_label("What happened (internal record)")).to_have_value(
        "Log shipper misconfigured; bucket was public.")
    expect(page.get_by_label("Confirmed at (UTC)")).to_have_value(minutes(confirmed))
    expect(page.get_by_label("A list of addresses")).to_be_checked()
    expect(page.get_by_label("Addresses (one per line)")).to_have_value(nobody)
    expect(page.get_by_label("Notice subject")).to_have_value("Security notice: a log file was exposed")
    expect(page.get_by_label("Notice text (sent to each affected person)")).to_have_value(NOTICE_BODY)
    with live_server.app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(Incident)) == 0

    # Second try: everyone who used the relay during the exposure.
    page.get_by_label("Accounts that used the relay in a time window").check()
    page.get_by_label("Window start (UTC)").fill(minutes(window_from))
    page.get_by_label("Window end (UTC)").fill(minutes(window_to))
    page.get_by_label("Addresses (one per line)").fill("")
    page.get_by_role("button", name="Record incident").click()

    heading = page.get_by_role("heading", name=re.compile(r"^Incident #\d+: " + re.escape(TITLE) + "$"))
    expect(heading).to_be_visible()
    inc_id = int(re.search(r"#(\d+)", heading.inner_text()).group(1))
    expect(page.get_by_text("Incident recorded with 2 affected accounts.")).to_be_visible()
    expect(page.locator(".row", has_text="Affected accounts")).to_contain_text("2 (usage:")
    expect(page.locator("#notice-status")).to_contain_text("0 sent")
    for uid in (ada_id, bob_id):
        expect(page.locator(f"#notice-{uid}")).to_contain_text("not yet")
    expect(page.locator(f"#notice-{cy_id}")).to_have_count(0)

    # Send them.
    page.get_by_role("button", name="Send the notices to 2 people").click()
    expect(page.get_by_text("2 notices queued; they go out through the mail outbox.")).to_be_visible()
    expect(page.locator("#notices-queued")).to_be_visible()
    expect(page.get_by_role("button", name=re.compile(r"notices", re.I))).to_have_count(0)

    for addr in (ada, bob):
        msg = smtp.mailbox.wait_for(addr, "Security notice: a log file was exposed", timeout=SENT_TIMEOUT)
        text = body(msg)
        assert NOTICE_BODY in text and f"What happened: {TITLE}" in text
        assert "bucket was public" not in text  # the internal record stays internal

    # Each notice shows when it went out, and that it was within the 72 hours.
    reload_until_text(page, page.locator("#notice-status"), "all 2 sent within 72 hours")
    with live_server.app.app_context():
        sent = dict(db.session.execute(
            sa.select(IncidentNotice.user_id, OutboxMessage.sent_at)
            .join(OutboxMessage, OutboxMessage.id == IncidentNotice.outbox_message_id)
            .where(IncidentNotice.incident_id == inc_id)).all())
        deadline = db.session.get(Incident, inc_id).confirmed_at + timedelta(hours=72)
        notified = set(db.session.scalars(sa.select(OutboxMessage.to_addr)
                                          .where(OutboxMessage.kind == "incident_notice")))
    assert notified == {ada, bob}
    assert set(sent) == {ada_id, bob_id}
    for uid, sent_at in sent.items():
        row = page.locator(f"#notice-{uid}")
        expect(row).to_contain_text(sent_at.strftime("%Y-%m-%d %H:%M:%S"))
        expect(row.locator(".badge")).to_have_text("yes")
        assert sent_at <= deadline
    expect(page.locator(".row", has_text="Notice deadline")).to_contain_text(deadline.strftime("%Y-%m-%d %H:%M"))
    page.screenshot(path="/tmp/e2e-incident-notified.png", full_page=True)

    # Nobody outside the scope was written to: not the earlier user, not staff.
    assert smtp.mailbox.to(cy) == [] and smtp.mailbox.to(staff_email) == []

    page.get_by_role("link", name="← Incidents").click()
    row = page.get_by_role("row").filter(has_text=TITLE)
    expect(row).to_contain_text("2 / 2")
    expect(row).to_contain_text("all within 72 h")
