"""A material privacy-policy change in a real browser (P62, P61): the operator
lengthens a retention window; the code keeps the published rules; staff
publish the change 14 days ahead after a confirmation page; every account is
mailed; people see a banner and can read the new version before it applies."""
from __future__ import annotations

import re

import pytest
import sqlalchemy as sa
from playwright.sync_api import Page, expect

from app.extensions import db
from app.models import PolicyVersion
from app.models.types import utcnow
from app.services import policy
from tests.e2e.flows import MAIL_TIMEOUT, sign_up_verified, staff_window
from tests.fakes.smtp import body

pytestmark = pytest.mark.e2e


@pytest.mark.promise("P62", "P61")
def test_staff_announce_a_longer_retention_and_people_are_told(page: Page, browser, live_server, smtp):
    app = live_server.app
    with app.app_context():
        # Version 1 says 90 days; then the operator sets 180 and restarts.
        app.config["METADATA_RETENTION_DAYS"] = 90
        assert policy.current_version().number == 1
        app.config["METADATA_RETENTION_DAYS"] = 180

    person = sign_up_verified(page, live_server, smtp, name="reader")
    page.goto(live_server("/privacy"))
    expect(page.get_by_text("Version 1 ·")).to_be_visible()
    expect(page.get_by_role("cell", name="90 days, then rolled into daily totals")).to_be_visible()

    staff = staff_window(browser, live_server)
    staff.get_by_role("link", name="Policy versions").click()
    expect(staff.get_by_role("heading", name="Privacy policy versions")).to_be_visible()
    changes = staff.locator("#changes")
    expect(changes).to_contain_text("Per-request metadata kept (days)")
    expect(changes).to_contain_text("yes, 14 days")
    expect(staff.get_by_text("the code keeps enforcing version 1")).to_be_visible()

    # Too soon is refused, and what was typed stays.
    summary = "We now keep per-request metadata for 180 days instead of 90."
    staff.get_by_label("What changes, in plain words").fill(summary)
    expect(staff.get_by_label(re.compile("This is a material change"))).to_be_checked()
    first = policy.earliest_effective(True)
    staff.get_by_label("Takes effect on (00:00 UTC)").fill(utcnow().date().isoformat())
    staff.get_by_role("button", name="Review and publish…").click()
    expect(staff.get_by_text(f"choose {first.isoformat()} or later")).to_be_visible()
    expect(staff.get_by_label("What changes, in plain words")).to_have_value(summary)

    staff.get_by_label("Takes effect on (00:00 UTC)").fill(first.isoformat())
    staff.get_by_role("button", name="Review and publish…").click()
    expect(staff.get_by_role("heading", name="Publish the policy change?")).to_be_visible()
    with app.app_context():
        accounts = db.session.scalar(sa.select(sa.func.count()).select_from(policy.recipients().subquery()))
    button = staff.get_by_role("button", name=f"Publish and email {accounts} accounts")
    expect(button).to_be_visible()
    button.click()
    expect(staff.get_by_text("Version 2 is published")).to_be_visible()
    expect(staff.locator("#notice-progress")).to_contain_text(f"all {accounts} notices sent", timeout=20_000)

    # The person is mailed, and sees a banner until the date.
    msg = smtp.mailbox.wait_for(person, f"Our privacy policy changes on {first.isoformat()}", timeout=MAIL_TIMEOUT)
    assert summary in body(msg) and "/privacy/versions/2" in body(msg)
    page.goto(live_server("/dashboard"))
    banner = page.get_by_role("region", name="Privacy policy change")
    expect(banner).to_contain_text(f"Our privacy policy changes on {first.isoformat()}")
    banner.get_by_role("link", name="Read what changes").click()
    expect(page.get_by_text(f"takes effect on {first.isoformat()}")).to_be_visible()
    expect(page.get_by_text(summary)).to_be_visible()
    expect(page.get_by_role("cell", name="180 days, then rolled into daily totals")).to_be_visible()

    # Until then the rules of version 1 apply.
    page.goto(live_server("/privacy"))
    expect(page.get_by_text("Version 1 ·")).to_be_visible()
    with app.app_context():
        assert policy.enforced("METADATA_RETENTION_DAYS") == 90
        v2 = db.session.scalar(sa.select(PolicyVersion).where(PolicyVersion.number == 2))
        assert v2.material and v2.effective_at.date() == first
