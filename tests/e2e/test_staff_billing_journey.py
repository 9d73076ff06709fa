"""Staff correct a person's prepaid balance in the browser (P41, P55): find the
wallet by the person's address, post an adjustment with a reason, confirm it;
the person sees the new balance and the reason in their own ledger, and the
adjustment in their access log."""
from __future__ import annotations

import re

import pytest
import sqlalchemy as sa
from playwright.sync_api import Page, expect

from app.extensions import db
from app.models import User
from app.models.billing import to_units
from app.services import wallets
from tests.e2e.flows import sign_up_verified, staff_window

pytestmark = pytest.mark.e2e


@pytest.mark.promise("P41", "P55")
def test_staff_post_a_confirmed_adjustment_the_person_sees_with_its_reason(page: Page, browser, live_server, smtp):
    person = sign_up_verified(page, live_server, smtp, name="wallet-owner")
    with live_server.app.app_context():  # a paid top-up (the Stripe journey is test_billing_journey.py)
        user_id = db.session.scalar(sa.select(User.id).where(User.email == person))
        w = wallets.open_for(user_id=user_id)
        db.session.flush()
        wallets.post(w.id, "topup", to_units(10), f"pi_e2e_{w.anon_ref}", "Card payment · Visa ending in 4242")
        db.session.commit()

    staff = staff_window(browser, live_server)
    staff.locator("#billing-link").click()
    staff.get_by_label("Account email address or wallet id").fill(person)
    staff.get_by_role("button", name="Find").click()
    expect(staff.get_by_role("heading", name=re.compile(r"^Wallet w_"))).to_be_visible()
    expect(staff.locator("#wallet-balance")).to_contain_text("$10.00")

    # A bad amount is a message on the form; nothing moves.
    staff.get_by_label("Amount in dollars (negative takes money out)").fill("2.505")
    staff.get_by_label("Reason (the wallet's owners see it)").fill("Goodwill credit for the outage")
    staff.get_by_role("button", name="Check the adjustment").click()
    expect(staff.get_by_text("Enter the amount in cents at most")).to_be_visible()
    expect(staff.locator("#wallet-balance")).to_contain_text("$10.00")

    staff.get_by_label("Amount in dollars (negative takes money out)").fill("2.50")
    staff.get_by_label("Reason (the wallet's owners see it)").fill("Goodwill credit for the outage")
    staff.get_by_role("button", name="Check the adjustment").click()
    expect(staff.get_by_role("heading", name="Post this adjustment?")).to_be_visible()
    staff.get_by_role("button", name="Post the adjustment").click()
    expect(staff.get_by_text(re.compile(r"Adjustment #\d+ of \$2\.50 posted; the balance is now \$12\.50"))
           ).to_be_visible()
    expect(staff.locator("#wallet-balance")).to_contain_text("$12.50")

    page.goto(live_server("/billing/"))
    expect(page.get_by_text("$12.50").first).to_be_visible()
    expect(page.get_by_text("Goodwill credit for the outage")).to_be_visible()
    page.goto(live_server("/privacy-center/access-log"))
    expect(page.get_by_text("Adjusted your prepaid balance")).to_be_visible()
