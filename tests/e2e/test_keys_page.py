"""The API keys page in a real browser (P10, P11): a confirmed person creates
a key, sees it once, reloads to find only its display form, and revokes it
through the confirmation page."""
from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from tests.e2e.flows import PASSWORD, sign_up_verified

pytestmark = pytest.mark.e2e

KEY_RE = re.compile(r"rk_[A-Za-z0-9_-]{40}")


def create_key(page: Page, name: str, **options: str) -> str:
    """Fill the create form on /keys/ (htmx) and return the key shown once."""
    form = page.locator("#create")
    form.get_by_label("Name", exact=True).fill(name)
    for label, value in options.items():
        form.get_by_label(label).fill(value)
    form.get_by_role("button", name="Create key").click()
    expect(page.locator(".secret-card .eyebrow")).to_have_text(f"New key · {name}")
    shown = page.locator("#new-key")
    expect(shown).to_be_visible()
    value = shown.inner_text().strip()
    assert KEY_RE.fullmatch(value), value
    return value


@pytest.mark.promise("P10", "P11")
def test_create_see_once_reload_and_revoke(page: Page, live_server, smtp):
    sign_up_verified(page, live_server, smtp)
    expect(page.get_by_text("You have no active API keys yet.")).to_be_visible()

    nav = page.get_by_role("navigation", name="Main")
    nav.get_by_role("link", name="Keys").click()
    expect(page.get_by_role("heading", name="API keys", exact=True)).to_be_visible()
    expect(nav.get_by_role("link", name="Keys")).to_have_attribute("aria-current", "page")
    expect(page.get_by_text("You have no API keys yet.")).to_be_visible()

    # Create one; htmx swaps the panel in place (no page load).
    page.evaluate("window.__noReload = true")
    api_key = create_key(page, "e2e laptop", **{"Requests per minute (optional)": "120"})
    assert page.evaluate("window.__noReload") is True
    expect(page.get_by_text("Copy it now. You can reveal it again later with your password.")).to_be_visible()
    expect(page.locator("#base-url")).to_have_text(live_server.url + "/v1")
    row = page.locator("tr.key-row", has_text="e2e laptop")
    display = f"{api_key[:7]}…{api_key[-4:]}"
    expect(row.locator(".key-display")).to_have_text(display)
    expect(row.locator(".badge")).to_have_text("active")
    expect(row).to_contain_text("120 req/min")
    expect(page.locator("#create").get_by_label("Name", exact=True)).to_have_value("")
    page.screenshot(path="/tmp/e2e-keys-created.png", full_page=True)

    # A second key, so the list has more than one row.
    second = create_key(page, "staging server", **{"Allowed models (optional)": "gpt-4o-mini, claude-3-haiku"})
    assert second != api_key

    # Reload: the secret is gone for good; only prefix…last4 remains.
    page.reload()
    expect(page.locator("#new-key")).to_have_count(0)
    assert api_key not in page.content() and second not in page.content()
    expect(row.locator(".key-display")).to_have_text(display)
    expect(page.locator("tr.key-row")).to_have_count(2)
    page.screenshot(path="/tmp/e2e-keys-list.png", full_page=True)

    # Rename in place (htmx), no page load.
    page.evaluate("window.__noReload = true")
    staging = page.locator("#" + page.locator("tr.key-row", has_text="staging server").get_attribute("id"))
    staging.get_by_role("link", name="Rename staging server").click()
    staging.get_by_role("textbox").fill("staging API")
    staging.get_by_role("button", name="Save").click()
    expect(staging.locator(".key-name")).to_have_text("staging API")
    assert page.evaluate("window.__noReload") is True

    # Reveal asks for the password, then shows the key once (P11).
    staging.get_by_role("link", name="Reveal staging API").click()
    expect(page.get_by_role("heading", name="Reveal “staging API”")).to_be_visible()
    page.get_by_label("Your password").fill("not the password")
    page.get_by_role("button", name="Reveal key").click()
    expect(page.get_by_text("That password is not correct.")).to_be_visible()
    page.get_by_label("Your password").fill(PASSWORD)
    page.get_by_role("button", name="Reveal key").click()
    expect(page.locator("#new-key")).to_have_text(second)
    page.get_by_role("link", name="Done, back to API keys").click()
    expect(page.locator("#new-key")).to_have_count(0)

    # Revoke through the confirm page.
    row.get_by_role("link", name="Revoke e2e laptop").click()
    expect(page.get_by_role("heading", name="Revoke “e2e laptop”?")).to_be_visible()
    page.get_by_role("button", name="Revoke key").click()
    expect(page.get_by_text("“e2e laptop” is revoked.")).to_be_visible()
    expect(row.locator(".badge")).to_have_text("revoked")
    expect(row).to_have_class(re.compile(r"\brevoked\b"))
    expect(row.get_by_role("link", name="Rotate e2e laptop")).to_have_count(0)
    expect(staging.locator(".badge")).to_have_text("active")
    page.screenshot(path="/tmp/e2e-keys-revoked.png", full_page=True)

    # The dashboard counts only the key that still works.
    nav.get_by_role("link", name="Dashboard").click()
    card = page.locator(".card", has=page.get_by_role("heading", name="API keys"))
    expect(card.locator(".figure")).to_have_text("1")
