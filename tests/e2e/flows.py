"""Steps that several browser tests share: signing up and signing in."""
from __future__ import annotations

import re
import uuid

from playwright.sync_api import Page, expect

from tests.fakes.smtp import link

PASSWORD = "correct horse battery staple"
MAIL_TIMEOUT = 15


def unique_email(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}@example.com"


def expect_dashboard(page: Page) -> None:
    expect(page.get_by_role("heading", name=re.compile(r"^Welcome"))).to_be_visible()
    expect(page).to_have_url(re.compile(r"/dashboard$"))


def submit_signup(page: Page, live_server, email: str, password: str = PASSWORD) -> None:
    """Fill and send the signup form; land on "Check your email"."""
    page.goto(live_server("/signup"))
    page.get_by_label("Email", exact=True).fill(email)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_label(re.compile(r"I am at least \d+ years old")).check()
    page.get_by_label(re.compile(r"I have read and accept the privacy policy")).check()
    page.get_by_role("button", name="Create account").click()
    expect(page.get_by_role("heading", name="Check your email")).to_be_visible()


def fill_login(page: Page, email: str, password: str = PASSWORD) -> None:
    """On the login page: type the credentials and send them."""
    page.get_by_label("Email", exact=True).fill(email)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Log in").click()


def sign_up_and_log_in(page: Page, live_server, name: str) -> str:
    """A new account, logged in without confirming the address; returns the email."""
    email = unique_email(name)
    submit_signup(page, live_server, email)
    page.get_by_role("link", name="Go to log in").click()
    fill_login(page, email)
    expect_dashboard(page)
    return email


def sign_up_verified(page: Page, live_server, smtp, name: str = "keys") -> str:
    """A new account with its address confirmed from the mail, logged in."""
    email = unique_email(name)
    submit_signup(page, live_server, email)
    page.goto(link(smtp.mailbox.wait_for(email, "Confirm your email", timeout=MAIL_TIMEOUT)))
    expect(page.get_by_text("Thank you, your email address is confirmed.")).to_be_visible()
    fill_login(page, email)
    expect_dashboard(page)
    return email
