"""A privacy request received by email, worked from the staff queue in a real
browser (P53, P54, P55): staff file it, send a confirmation link, the person
confirms from their mailbox, staff restrict the account and close the request,
the person is emailed the outcome and their keys page says processing is paused."""
from __future__ import annotations

import re

import pytest
import sqlalchemy as sa
from playwright.sync_api import Page, expect

from app.extensions import db
from app.models import AuditEvent, PrivacyRequest, User
from tests.e2e.flows import MAIL_TIMEOUT, sign_up_verified, staff_window
from tests.fakes.smtp import body, link

pytestmark = pytest.mark.e2e


@pytest.mark.promise("P53", "P54", "P55")
def test_staff_work_an_emailed_restriction_request(page: Page, browser, live_server, smtp):
    person = sign_up_verified(page, live_server, smtp, name="subject")

    staff = staff_window(browser, live_server)

    # File the request that came by email.
    staff.get_by_role("link", name="File an emailed request").click()
    expect(staff.get_by_role("heading", name="File an emailed request")).to_be_visible()
    staff.get_by_label("The person's email address").fill("nobody-" + person)
    staff.get_by_label("What they ask for").select_option("restrict")
    staff.get_by_role("button", name="File request").click()
    expect(staff.get_by_text("No account uses this address")).to_be_visible()
    staff.get_by_label("The person's email address").fill(person)
    staff.get_by_label("Their request, in their words (optional)").fill("Please stop using my account for now.")
    staff.get_by_role("button", name="File request").click()
    heading = staff.get_by_role("heading", name=re.compile(r"^Request #\d+: Restrict processing$"))
    expect(heading).to_be_visible()
    req_id = int(re.search(r"#(\d+)", heading.inner_text()).group(1))
    expect(staff.locator("#req-verified")).to_contain_text("not verified")
    expect(staff.locator("#person-account")).to_contain_text(person)

    # It is in the queue, due 30 days after receipt.
    staff.get_by_role("link", name="← All requests").click()
    row = staff.locator(f"#request-{req_id}")
    expect(row).to_contain_text(person)
    expect(row).to_contain_text("not yet")
    row.get_by_role("link", name=f"#{req_id}").click()

    # Verify by a link to the account's address; the person confirms it.
    staff.get_by_role("button", name="Send a confirmation link to the account's address").click()
    expect(staff.get_by_text("A confirmation link was sent")).to_be_visible()
    msg = smtp.mailbox.wait_for(person, f"Confirm your privacy request #{req_id}", timeout=MAIL_TIMEOUT)
    page.goto(link(msg))
    expect(page.get_by_role("heading", name="Confirm your privacy request")).to_be_visible()
    page.get_by_role("button", name="Yes, this request is mine").click()
    expect(page.get_by_text(f"Your privacy request #{req_id} (Restrict processing) is confirmed.")).to_be_visible()

    staff.reload()
    expect(staff.locator("#req-verified")).to_contain_text("Confirmation link sent to the account's address")

    # Carry it out through the confirmation page.
    staff.locator("#carry-out").get_by_role("link", name="Restrict processing").click()
    expect(staff.get_by_role("heading", name=f"Restrict the account of request #{req_id}?")).to_be_visible()
    staff.get_by_role("button", name="Restrict processing").click()
    expect(staff.get_by_text("The account is restricted")).to_be_visible()
    expect(staff.locator("#person-restriction")).to_contain_text("restricted since")

    # Close with an outcome and a reason.
    staff.get_by_label("Done", exact=True).check()
    staff.get_by_label("Reason (sent to the person)").fill("Your keys are suspended until you ask us to lift it.")
    staff.get_by_role("button", name="Close request").click()
    expect(staff.get_by_text(f"Request #{req_id} is closed.")).to_be_visible()
    expect(staff.locator("#req-status")).to_contain_text("closed: done")
    staff.screenshot(path="/tmp/e2e-staff-request-closed.png", full_page=True)

    closing = smtp.mailbox.wait_for(person, f"Your privacy request #{req_id} is closed", timeout=MAIL_TIMEOUT)
    assert "Your keys are suspended until you ask us to lift it." in body(closing)

    # The person's keys page says processing is paused and offers no new key (P53).
    page.goto(live_server("/keys/"))
    expect(page.get_by_text("Your account is restricted.")).to_be_visible()
    expect(page.get_by_role("button", name="Create key")).to_have_count(0)
    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path="/tmp/e2e-keys-restricted-390.png", full_page=True)

    with live_server.app.app_context():
        req = db.session.get(PrivacyRequest, req_id)
        assert (req.channel, req.status, req.outcome, req.verification_method) == ("email", "closed", "done",
                                                                                    "email_link")
        user = db.session.scalar(sa.select(User).where(User.email_key == person.lower()))
        assert user.restricted_at is not None
        views = db.session.scalars(sa.select(AuditEvent).where(AuditEvent.event == "staff:viewed:person",
                                                               AuditEvent.subject_id == user.id)).all()
        assert views, "opening the request was not logged as a view of the person"

    # The audit page shows the chain intact.
    staff.goto(live_server("/staff/audit"))
    expect(staff.locator("#chain-status")).to_contain_text("Chain intact")
    staff.context.close()
