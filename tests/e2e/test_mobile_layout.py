"""Every page at a phone's width (390 px): nothing is wider than the screen,
even with a very long unbroken name, a key in the list and a long team name in
the context switch; the top bar folds its links into a Menu button that opens,
closes with Escape, and leads to every link."""
from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from app.extensions import db
from app.models import Team, TeamMember, User
from tests.e2e.flows import sign_up_verified

pytestmark = pytest.mark.e2e

PHONE = {"width": 390, "height": 844}
LONG_NAME = "Bartholomew" * 10  # 110 characters (the column holds 120), no space to break at
LONG_TEAM = "Internationalisation" * 4

PROVIDERS = """
[providers.openai]
kind = "openai"
api_key_env = "MOBILE_TEST_OPENAI_KEY"

[providers.workers]
kind = "openai_compatible"
base_url = "http://127.0.0.1:9/v1"

[[models]]
name = "a-rather-long-model-name-for-the-phone-layout-2025-12-01"
targets = [ { provider = "openai", model = "gpt-4o-mini" }, { provider = "workers", model = "llama3.1:8b" } ]
price = { input = 0.15, output = 0.60, cache_read = 0.075, cache_write = 0.0 }

[[models]]
name = "small-embed"
targets = [ { provider = "openai", model = "text-embedding-3-small" } ]
price = { input = 0.02 }
"""

SIGNED_IN_PAGES = [
    "/dashboard", "/keys/", "/usage/", "/analytics/", "/billing/", "/teams/", "/models",
    "/account/", "/account/email", "/account/password", "/account/2fa/setup",
    "/privacy-center/", "/privacy-center/data", "/privacy-center/access-log", "/privacy-center/export/",
    "/privacy-center/delete/", "/privacy", "/privacy/versions/1",
]
PUBLIC_PAGES = ["/", "/login", "/signup", "/privacy", "/models"]


@pytest.fixture(scope="module")
def live_server_settings(tmp_path_factory):
    path = tmp_path_factory.mktemp("providers") / "providers.toml"
    path.write_text(PROVIDERS)
    return {"PROVIDERS_FILE": str(path)}


def assert_fits(page: Page, path: str) -> None:
    width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    if width[0] > width[1]:
        page.screenshot(path=f"/tmp/mobile-overflow{path.replace('/', '_')}.png", full_page=True)
    assert width[0] <= width[1], f"{path} is {width[0]} px wide on a {width[1]} px screen"


def visit(page: Page, live_server, path: str) -> None:
    resp = page.goto(live_server(path))
    assert resp is not None and resp.status < 400, f"{path}: {resp and resp.status}"
    assert_fits(page, path)


def test_public_pages_fit_a_phone(browser, live_server):
    context = browser.new_context(viewport=PHONE)
    page = context.new_page()
    page.set_default_timeout(10_000)
    for path in PUBLIC_PAGES:
        visit(page, live_server, path)
    # Every field error at once on signup, still within the screen.
    page.goto(live_server("/signup"))
    page.get_by_label("Email", exact=True).fill("x" * 120)
    page.get_by_label("Password", exact=True).fill("short")
    page.get_by_role("button", name="Create account").click()
    expect(page.locator("#email-error")).to_be_visible()
    expect(page.locator("#password-error")).to_be_visible()
    expect(page.locator("#age_ok-error")).to_be_visible()
    assert_fits(page, "/signup (errors)")
    context.close()


def test_every_signed_in_page_fits_a_phone_and_the_menu_works(browser, live_server, smtp):
    context = browser.new_context(viewport=PHONE)
    page = context.new_page()
    page.set_default_timeout(10_000)
    email = sign_up_verified(page, live_server, smtp, "mobile")
    with live_server.app.app_context():
        user = db.session.query(User).filter_by(email=email).one()
        user.name, user.company = LONG_NAME, LONG_NAME
        team = Team(name=LONG_TEAM, slug=f"t-{uuid.uuid4().hex[:10]}")
        db.session.add(team)
        db.session.flush()
        db.session.add(TeamMember(team_id=team.id, user_id=user.id, role="owner"))
        db.session.commit()

    # A key, made on the phone, with a long name: the list and the secret card must fit too.
    page.goto(live_server("/keys/"))
    form = page.locator("#create")
    form.get_by_label("Name", exact=True).fill("K" * 100)
    form.get_by_role("button", name="Create key").click()
    expect(page.locator("#new-key")).to_be_visible()
    assert_fits(page, "/keys/ (new key)")
    page.screenshot(path="/tmp/mobile-keys.png", full_page=True)

    for path in SIGNED_IN_PAGES:
        visit(page, live_server, path)

    # The account page names the device, and the long name wraps instead of widening the page.
    page.goto(live_server("/account/"))
    expect(page.locator(".device-name").first).to_have_text(re.compile(r"^(Chrome|Headless Chrome|Chromium) on Linux$"))
    expect(page.get_by_text(LONG_NAME).first).to_be_visible()
    assert_fits(page, "/account/")

    # The menu: links hidden behind one button, which opens, closes with Escape and reaches every link.
    nav = page.get_by_role("navigation", name="Main")
    toggle = page.get_by_role("button", name="Menu")
    expect(toggle).to_be_visible()
    expect(toggle).to_have_attribute("aria-expanded", "false")
    expect(nav).to_be_hidden()
    topbar = page.locator(".topbar").bounding_box()
    assert topbar and topbar["height"] < 80, topbar  # one row, not links wrapped over two
    toggle.focus()
    page.keyboard.press("Enter")
    expect(toggle).to_have_attribute("aria-expanded", "true")
    for name in ("Dashboard", "Keys", "Usage", "Analytics", "Billing", "Teams", "Models", "Account", "Privacy"):
        link = nav.get_by_role("link", name=name, exact=True)
        expect(link).to_be_visible()
        box = link.bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], (name, box)
    expect(nav.get_by_role("button", name="Log out")).to_be_visible()
    switch = page.get_by_label("Show")
    expect(switch).to_be_visible()
    box = switch.bounding_box()
    assert box and box["x"] + box["width"] <= PHONE["width"], box
    assert_fits(page, "/account/ (menu open)")
    page.screenshot(path="/tmp/mobile-menu-open.png")
    page.keyboard.press("Tab")  # the first thing after the button is in the menu
    assert page.evaluate("document.activeElement.closest('#nav-panel') !== null")
    page.keyboard.press("Escape")
    expect(toggle).to_have_attribute("aria-expanded", "false")
    expect(toggle).to_be_focused()
    expect(nav).to_be_hidden()
    page.screenshot(path="/tmp/mobile-account.png", full_page=True)

    # Following a link from the menu.
    toggle.click()
    nav.get_by_role("link", name="Models", exact=True).click()
    expect(page.get_by_role("heading", name="Models and prices")).to_be_visible()
    expect(page.get_by_text("a-rather-long-model-name-for-the-phone-layout-2025-12-01")).to_be_visible()
    assert_fits(page, "/models")
    page.screenshot(path="/tmp/mobile-models.png", full_page=True)
    context.close()


def test_the_menu_is_not_used_on_a_wide_screen(browser, live_server, smtp):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(10_000)
    email = sign_up_verified(page, live_server, smtp, "wide")
    with live_server.app.app_context():  # the context switch shares the top bar's row
        user = db.session.query(User).filter_by(email=email).one()
        team = Team(name=LONG_TEAM, slug=f"t-{uuid.uuid4().hex[:10]}")
        db.session.add(team)
        db.session.flush()
        db.session.add(TeamMember(team_id=team.id, user_id=user.id, role="owner"))
        db.session.commit()
    page.reload()
    expect(page.get_by_label("Show")).to_be_visible()
    expect(page.get_by_role("button", name="Menu")).to_be_hidden()
    nav = page.get_by_role("navigation", name="Main")
    expect(nav.get_by_role("link", name="Models", exact=True)).to_be_visible()
    brand = page.locator(".brand").bounding_box()
    logout = nav.get_by_role("button", name="Log out").bounding_box()
    assert brand and logout and abs(brand["y"] - logout["y"]) < 20, (brand, logout)  # one row
    assert_fits(page, "/dashboard (wide)")
    page.screenshot(path="/tmp/wide-dashboard.png", full_page=True)
    page.goto(live_server("/models"))
    page.screenshot(path="/tmp/wide-models.png", full_page=True)
    page.goto(live_server("/account/"))
    page.screenshot(path="/tmp/wide-account.png", full_page=True)
    context.close()


def test_recovery_codes_copy_all_and_download(browser, live_server, smtp):
    import pyotp

    context = browser.new_context(viewport=PHONE)
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live_server.url)
    page = context.new_page()
    page.set_default_timeout(10_000)
    sign_up_verified(page, live_server, smtp, "codes")
    page.goto(live_server("/account/2fa/setup"))
    secret = page.locator("#totp-secret").inner_text().strip()
    page.get_by_label(re.compile("code", re.IGNORECASE)).first.fill(pyotp.TOTP(secret).now())
    page.get_by_role("button", name="Turn on").click()
    expect(page.get_by_role("heading", name="Save your recovery codes")).to_be_visible()
    codes = [c.strip() for c in page.locator("#recovery-codes code").all_inner_texts()]
    assert len(codes) == 10
    assert_fits(page, "/account/2fa/setup (codes)")

    page.get_by_role("button", name="Copy all").click()
    expect(page.get_by_role("button", name="Copied")).to_be_visible()
    assert page.evaluate("navigator.clipboard.readText()") == "\n".join(codes)

    with page.expect_download() as info:
        page.get_by_role("button", name="Download as text file").click()
    download = info.value
    assert download.suggested_filename == "relay-recovery-codes.txt"
    body = Path(download.path()).read_text(encoding="utf-8")
    assert body.splitlines()[2:] == codes
    assert "recovery codes for" in body.splitlines()[0]
    page.screenshot(path="/tmp/mobile-codes.png", full_page=True)
    context.close()
