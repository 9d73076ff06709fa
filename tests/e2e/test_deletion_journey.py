"""Account deletion in a real browser (P52, P60): a person signs up, makes a
key, asks for deletion (re-entering the password, typing DELETE, ticking the
box, confirming), is logged out and cannot sign in; after the grace period the
retention job erases the account, sign-in fails like for any unknown address,
and the person's usage rows remain, anonymized, with their counts."""
from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa
from playwright.sync_api import Page, expect

from app.extensions import db
from app.jobs import run_all
from app.models import ApiKey, PrivacyRequest, UsageRecord, User, UserSession
from app.models.types import utcnow
from tests.e2e.flows import PASSWORD, fill_login, sign_up_verified
from tests.e2e.test_keys_page import create_key
from tests.fakes.smtp import body

pytestmark = pytest.mark.e2e


@pytest.mark.promise("P52", "P60")
def test_delete_account_then_the_job_erases_it(page: Page, live_server, smtp):
    app = live_server.app
    email = sign_up_verified(page, live_server, smtp, "delete")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Keys").click()
    create_key(page, "doomed laptop")

    with app.app_context():
        user = db.session.scalar(sa.select(User).where(User.email == email))
        uid = user.id
        key_id = db.session.scalar(sa.select(ApiKey.id).where(ApiKey.user_id == uid))
        # Usage they made earlier, and a sign-in long enough ago that deleting asks for the password.
        start = utcnow() - timedelta(days=2)
        for i in range(3):
            db.session.add(UsageRecord(
                request_id=f"e2e-del-{uid}-{i}", user_id=uid, api_key_id=key_id, project="mine", tags='["x"]',
                started_at=start, ended_at=start + timedelta(seconds=2), model="gpt-test", provider="oai",
                input_tokens=100, output_tokens=50, cache_read_tokens=0, cache_write_tokens=0,
                cost_usd=Decimal("0.02"), latency_ms=2000, status_code=200, routing_trace="[]",
                usage_source="provider"))
        db.session.execute(sa.update(UserSession).where(UserSession.user_id == uid)
                           .values(authenticated_at=utcnow() - timedelta(hours=3)))
        db.session.commit()

    page.goto(live_server("/privacy-center/delete/"))
    expect(page.get_by_role("heading", name="Confirm it is you")).to_be_visible()
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_role("button", name="Continue").click()

    expect(page.get_by_role("heading", name="Delete your account")).to_be_visible()
    expect(page.get_by_text("the other billing records for 7 years")).to_be_visible()
    page.get_by_label("Type DELETE to confirm").fill("delete")
    page.get_by_role("button", name="Continue").click()
    expect(page.get_by_text("Type the word DELETE in capital letters.")).to_be_visible()
    page.get_by_label("Type DELETE to confirm").fill("DELETE")
    page.get_by_label(re.compile("I understand that my account")).check()
    page.get_by_role("button", name="Continue").click()

    expect(page.get_by_role("heading", name="Are you sure you want to delete your account?")).to_be_visible()
    page.get_by_role("button", name="Yes, delete my account").click()
    expect(page.get_by_role("heading", name="Your account is scheduled for deletion")).to_be_visible()
    page.screenshot(path="/tmp/e2e-deletion-scheduled.png", full_page=True)

    # Logged out: the navigation offers "Log in" again, and the dashboard sends there.
    nav = page.get_by_role("navigation", name="Main")
    expect(nav.get_by_role("link", name="Log in")).to_be_visible()
    page.goto(live_server("/dashboard"))
    expect(page).to_have_url(re.compile(r"/login"))

    receipt = smtp.mailbox.wait_for(email, "scheduled for deletion", timeout=15)
    assert "/privacy-center/delete/cancel/" in body(receipt)

    fill_login(page, email)
    expect(page.get_by_text(re.compile(r"This account is scheduled for deletion on \d{4}-\d{2}-\d{2}\. "
                                       r"Use the cancel link in the email we sent to keep it\."))).to_be_visible()
    expect(page).to_have_url(re.compile(r"/login"))

    with app.app_context():
        assert db.session.get(ApiKey, key_id).revoked_at is not None
        req = db.session.scalar(sa.select(PrivacyRequest).where(PrivacyRequest.user_id == uid))
        after_grace = req.execute_after + timedelta(hours=1)
    result = run_all(app, now=after_grace)
    assert result["accounts_erased"] == 1, result

    page.goto(live_server("/login"))
    fill_login(page, email)
    expect(page.get_by_text("That email and password do not match an account.")).to_be_visible()
    expect(page.get_by_text("scheduled for deletion")).to_have_count(0)

    with app.app_context():
        assert db.session.get(User, uid) is None
        assert db.session.scalar(sa.select(sa.func.count()).select_from(ApiKey).where(ApiKey.user_id == uid)) == 0
        rows = db.session.scalars(sa.select(UsageRecord).where(UsageRecord.request_id.like(f"e2e-del-{uid}-%"))).all()
        assert len(rows) == 3
        for r in rows:
            assert (r.user_id, r.api_key_id, r.project, r.tags) == (None, None, None, None)
            assert (r.input_tokens, r.output_tokens, r.cost_usd) == (100, 50, Decimal("0.02"))
        assert db.session.get(PrivacyRequest, req.id).outcome == "done"
