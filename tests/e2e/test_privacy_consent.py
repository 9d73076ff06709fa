"""Consents in a real browser (P50): a new person opens Privacy, turns
marketing email on and off with htmx and sees both changes in the history,
then allows preference cookies, picks the dark theme and sees it applied;
withdrawing the consent removes the cookies and the theme."""
from __future__ import annotations

import re

import pytest
import sqlalchemy as sa
from playwright.sync_api import Page, expect

from app.extensions import db
from app.models import ConsentEvent, User
from tests.e2e.flows import sign_up_and_log_in

pytestmark = pytest.mark.e2e


def pref_cookies(page: Page) -> dict[str, str]:
    return {c["name"]: c["value"] for c in page.context.cookies() if c["name"].startswith("pref_")}


@pytest.mark.promise("P50")
def test_consents_history_and_dark_theme(page: Page, live_server):
    email = sign_up_and_log_in(page, live_server, "privacy")
    nav = page.get_by_role("navigation", name="Main")
    nav.get_by_role("link", name="Privacy").click()
    expect(page.get_by_role("heading", name="Privacy center", exact=True)).to_be_visible()
    expect(nav.get_by_role("link", name="Privacy")).to_have_attribute("aria-current", "page")
    consents = page.get_by_role("region", name="Your consents")
    history = page.get_by_role("region", name="Consent history")
    expect(history.get_by_text("No changes yet.")).to_be_visible()

    # Marketing email on, then off: htmx swaps the panel in place, no page load.
    page.evaluate("window.__noReload = true")
    consents.get_by_role("button", name="Turn on marketing email").click()
    expect(page.get_by_role("status").filter(has_text="Marketing email is on.")).to_be_visible()
    page.get_by_role("button", name="Turn off marketing email").click()
    expect(page.get_by_role("status").filter(has_text="Marketing email is off.")).to_be_visible()
    expect(page.get_by_role("button", name="Turn on marketing email")).to_be_visible()
    assert page.evaluate("window.__noReload") is True

    rows = page.get_by_role("region", name="Consent history").get_by_role("row")
    expect(rows).to_have_count(3)  # the header and two changes, newest first
    expect(rows.nth(1)).to_contain_text("withdrawn")
    expect(rows.nth(2)).to_contain_text("given")
    for i in (1, 2):
        expect(rows.nth(i)).to_contain_text("Marketing email")
        expect(rows.nth(i).get_by_role("link", name=re.compile(r"^Version \d+$"))).to_be_visible()
    with live_server.app.app_context():
        uid = db.session.scalar(sa.select(User.id).where(User.email_key == email.lower()))
        assert db.session.scalar(sa.select(sa.func.count()).select_from(ConsentEvent)
                                 .where(ConsentEvent.user_id == uid)) == 2

    # Without consent the preference form is disabled and no cookie exists.
    prefs = page.get_by_role("region", name="Display preferences")
    expect(prefs.get_by_text("Preference cookies are off, so these choices cannot be saved.")).to_be_visible()
    expect(prefs.get_by_role("radio", name="Dark")).to_be_disabled()
    assert pref_cookies(page) == {}

    # Allow preference cookies (the page reloads), then choose dark and 90 days.
    page.get_by_role("button", name="Turn on preference cookies").click()
    expect(page.get_by_text("Preference cookies are on.")).to_be_visible()
    prefs = page.get_by_role("region", name="Display preferences")
    expect(page.locator("body")).not_to_have_class(re.compile(r"theme-dark"))
    prefs.get_by_role("radio", name="Dark").check()
    prefs.get_by_role("radio", name="90 days").check()
    prefs.get_by_role("button", name="Save preferences").click()
    expect(page.get_by_text("Preferences saved in this browser.")).to_be_visible()
    expect(page.locator("body")).to_have_class(re.compile(r"\btheme-dark\b"))
    expect(page.get_by_role("region", name="Display preferences").get_by_role("radio", name="Dark")).to_be_checked()
    assert pref_cookies(page) == {"pref_theme": "dark", "pref_range": "90"}
    page.screenshot(path="/tmp/e2e-privacy-center-dark.png", full_page=True)

    # Withdraw: both cookies go and the theme with them.
    page.get_by_role("button", name="Turn off preference cookies").click()
    expect(page.get_by_text("Preference cookies are off.", exact=True)).to_be_visible()
    expect(page.locator("body")).not_to_have_class(re.compile(r"theme-dark"))
    assert pref_cookies(page) == {}
    expect(page.get_by_role("region", name="Consent history").get_by_role("row")).to_have_count(5)
    page.screenshot(path="/tmp/e2e-privacy-center.png", full_page=True)

    # The two read-only pages linked from the overview.
    your_data = page.get_by_role("navigation", name="Your data")  # a locator: found again on each page
    your_data.get_by_role("link", name=re.compile("What we keep about you")).click()
    expect(page.get_by_role("heading", name="What we keep about you")).to_be_visible()
    expect(page.get_by_role("row", name=re.compile(r"^Consent history"))).to_contain_text("4")
    page.screenshot(path="/tmp/e2e-privacy-data.png", full_page=True)
    page.get_by_role("link", name="← Privacy center").click()
    your_data.get_by_role("link", name=re.compile("Who looked at my data")).click()
    expect(page.get_by_text("No one from our staff has looked at your data.")).to_be_visible()
