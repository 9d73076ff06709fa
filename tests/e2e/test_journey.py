"""A person's whole way through the portal, in a real browser (P04, P05):
sign up, confirm by email, turn on 2FA, and sign in every way there is."""
from __future__ import annotations

import re
import time

import pyotp
import pytest
from playwright.sync_api import Page, expect

from tests.e2e.flows import MAIL_TIMEOUT, PASSWORD, expect_dashboard, sign_up_and_log_in, unique_email
from tests.fakes.smtp import link

pytestmark = pytest.mark.e2e

NEW_PASSWORD = "a brand new passphrase, longer"


def log_out(page: Page) -> None:
    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_text("You are logged out.")).to_be_visible()


def log_in(page: Page, email: str, password: str) -> None:
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Log in").click()
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    page.get_by_label("Email", exact=True).fill(email)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Log in").click()


def enter_code(page: Page, code: str) -> None:
    expect(page.get_by_role("heading", name="Enter your code")).to_be_visible()
    page.get_by_label("Authentication code").fill(code)
    page.get_by_role("button", name="Verify").click()


@pytest.mark.promise("P03", "P05")
def test_signup_verify_2fa_and_every_way_to_sign_in(page: Page, live_server, smtp):
    email = unique_email("ada")
    mailbox = smtp.mailbox

    # Sign up.
    page.goto(live_server("/"))
    page.get_by_role("link", name="Sign up").click()
    expect(page.get_by_role("heading", name="Create your account")).to_be_visible()
    page.get_by_label("Email", exact=True).fill(email)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_label(re.compile(r"I am at least \d+ years old")).check()
    page.get_by_label(re.compile(r"I have read and accept the privacy policy")).check()
    page.screenshot(path="/tmp/e2e-signup.png", full_page=True)
    page.get_by_role("button", name="Create account").click()
    expect(page.get_by_role("heading", name="Check your email")).to_be_visible()
    expect(page.get_by_text(email)).to_be_visible()

    # Confirm the address from the mail.
    msg = mailbox.wait_for(email, "Confirm your email", timeout=MAIL_TIMEOUT)
    verify_url = link(msg)
    assert verify_url.startswith(live_server.url + "/")
    page.goto(verify_url)
    expect(page.get_by_text("Thank you, your email address is confirmed.")).to_be_visible()
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()

    # Log in with the password: no 2FA yet, straight to the dashboard.
    page.get_by_label("Email", exact=True).fill(email)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect_dashboard(page)
    expect(page.get_by_text("Confirm your email address")).to_have_count(0)

    # Turn on two-factor authentication.
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Account").click()
    expect(page.get_by_role("heading", name="Your account", exact=True)).to_be_visible()
    twofa_row = page.locator(".row", has_text="Two-factor authentication")
    expect(twofa_row.locator(".badge")).to_have_text("off")
    twofa_row.get_by_role("link", name="Turn on").click()
    expect(page.get_by_role("heading", name="Turn on two-factor authentication")).to_be_visible()
    expect(page.get_by_role("img", name="QR code for your authenticator app")).to_be_visible()
    secret = page.locator("#totp-secret").inner_text().strip()
    assert re.fullmatch(r"[A-Z2-7]{16,}", secret), secret
    totp = pyotp.TOTP(secret)
    page.screenshot(path="/tmp/e2e-totp-setup.png", full_page=True)
    page.get_by_label("Code from your app").fill(totp.now())
    page.get_by_role("button", name="Turn on").click()

    # The recovery codes, shown once.
    expect(page.get_by_role("heading", name="Save your recovery codes")).to_be_visible()
    expect(page.get_by_text("Two-factor authentication is on.")).to_be_visible()
    codes = page.get_by_role("list", name="Recovery codes").locator("code").all_inner_texts()
    assert len(codes) == 10 and len(set(codes)) == 10, codes
    assert all(re.fullmatch(r"[0-9a-f]{5}-[0-9a-f]{5}", c) for c in codes), codes
    page.screenshot(path="/tmp/e2e-recovery-codes.png", full_page=True)
    page.get_by_role("link", name="I have saved them").click()
    expect(twofa_row.locator(".badge")).to_have_text("on")
    expect(twofa_row).to_contain_text("10 recovery codes left")
    page.screenshot(path="/tmp/e2e-account.png", full_page=True)
    mailbox.wait_for(email, "Two-factor authentication was turned on", timeout=MAIL_TIMEOUT)

    # Password + TOTP. The current step was spent turning 2FA on (replays are
    # refused); the server accepts one step of drift, so use the next one.
    log_out(page)
    log_in(page, email, PASSWORD)
    enter_code(page, totp.at(time.time() + 30))
    expect_dashboard(page)
    expect(page.get_by_text(re.compile(r"Two-factor authentication is\s+on"))).to_be_visible()

    # Magic link + a recovery code.
    log_out(page)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Log in").click()
    page.get_by_role("link", name="Email me a sign-in link instead").click()
    expect(page.get_by_role("heading", name="Sign in with an email link")).to_be_visible()
    page.get_by_label("Email", exact=True).fill(email)
    page.get_by_role("button", name="Email me a sign-in link").click()
    expect(page.get_by_role("heading", name="Check your email")).to_be_visible()
    msg = mailbox.wait_for(email, "Your sign-in link", timeout=MAIL_TIMEOUT)
    page.goto(link(msg))
    expect(page.get_by_role("heading", name=re.compile(r"^Sign in to "))).to_be_visible()
    page.get_by_role("button", name="Sign in").click()
    enter_code(page, codes[0])
    expect_dashboard(page)
    expect(page.get_by_text("You used a recovery code; 9 remain.")).to_be_visible()

    # Forgotten password: reset by email, then password + another recovery code.
    log_out(page)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Log in").click()
    page.get_by_role("link", name="Forgot your password?").click()
    expect(page.get_by_role("heading", name="Reset your password")).to_be_visible()
    page.get_by_label("Email", exact=True).fill(email)
    page.get_by_role("button", name="Email me a reset link").click()
    expect(page.get_by_role("heading", name="Check your email")).to_be_visible()
    msg = mailbox.wait_for(email, "Reset your password", timeout=MAIL_TIMEOUT)
    page.goto(link(msg))
    expect(page.get_by_role("heading", name="Choose a new password")).to_be_visible()
    page.get_by_label("New password", exact=True).fill(NEW_PASSWORD)
    page.get_by_label("Repeat the new password", exact=True).fill(NEW_PASSWORD)
    page.get_by_role("button", name="Save new password").click()
    expect(page.get_by_text(re.compile(r"Your password is reset"))).to_be_visible()
    mailbox.wait_for(email, "Your password was changed", timeout=MAIL_TIMEOUT)

    # The old password no longer works; the new one does.
    page.get_by_label("Email", exact=True).fill(email)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_text("That email and password do not match an account.")).to_be_visible()
    page.get_by_label("Password", exact=True).fill(NEW_PASSWORD)
    page.get_by_role("button", name="Log in").click()
    enter_code(page, codes[1])
    expect_dashboard(page)
    expect(page.get_by_text("You used a recovery code; 8 remain.")).to_be_visible()

    # A spent recovery code is refused.
    log_out(page)
    log_in(page, email, NEW_PASSWORD)
    enter_code(page, codes[0])
    expect(page.get_by_text("That code is not right.")).to_be_visible()


@pytest.mark.promise("P04")
def test_edit_profile_name_in_place(page: Page, live_server, smtp):
    sign_up_and_log_in(page, live_server, "grace")

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Account").click()
    row = page.locator("#profile-name")
    expect(row).to_contain_text("Not set")
    # A marker on the window survives htmx swaps but not a full page load.
    page.evaluate("window.__noReload = true")

    row.get_by_role("link", name="Edit name").click()
    name_input = page.get_by_label("Name", exact=True)
    expect(name_input).to_be_focused()
    expect(name_input).to_have_attribute("maxlength", "120")
    name_input.fill("Grace Hopper")
    row.get_by_role("button", name="Save").click()
    expect(row.locator(".value")).to_have_text("Grace Hopper")
    assert page.evaluate("window.__noReload") is True
    assert page.url.endswith("/account/")

    # 121 characters: the browser stops at 120; a request that gets past it is refused.
    row.get_by_role("link", name="Edit name").click()
    name_input = page.get_by_label("Name", exact=True)
    name_input.evaluate("el => el.removeAttribute('maxlength')")
    name_input.fill("x" * 121)
    row.get_by_role("button", name="Save").click()
    expect(row.get_by_text("Use at most 120 characters.")).to_be_visible()
    name_input = page.get_by_label("Name", exact=True)
    expect(name_input).to_have_attribute("aria-invalid", "true")
    page.screenshot(path="/tmp/e2e-profile-error.png", full_page=True)
    row.get_by_role("link", name="Cancel").click()
    expect(row.locator(".value")).to_have_text("Grace Hopper")
    assert page.evaluate("window.__noReload") is True

    # An htmx save that the server refuses (here: a stale CSRF token) says so
    # instead of doing nothing, and keeps what was typed.
    row.get_by_role("link", name="Edit name").click()
    page.get_by_label("Name", exact=True).fill("Rear Admiral Hopper")
    page.evaluate("""() => {
        document.body.setAttribute('hx-headers', '{"X-CSRFToken": "stale"}');
        document.querySelectorAll('input[name=csrf_token]').forEach(el => el.value = 'stale');
    }""")
    row.get_by_role("button", name="Save").click()
    expect(page.get_by_role("alert")).to_contain_text("This form has expired")
    expect(page.get_by_label("Name", exact=True)).to_have_value("Rear Admiral Hopper")
    page.reload()
    expect(page.locator("#profile-name .value")).to_have_text("Grace Hopper")

    # The saved name is the one the rest of the portal uses.
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Dashboard").click()
    expect(page.get_by_role("heading", name="Welcome, Grace Hopper")).to_be_visible()
