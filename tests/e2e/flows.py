"""Steps that several browser tests share: signing up and signing in, as a person or as staff."""
from __future__ import annotations

import re
import uuid

from playwright.sync_api import Browser, Page, expect

from app.extensions import db
from app.models import User
from app.models.types import utcnow
from app.services.passwords import hash_password
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


def make_staff(live_server) -> str:
    """A staff account, made directly in the database; returns its email."""
    email = unique_email("staff")
    with live_server.app.app_context():
        db.session.add(User(email=email, email_key=email.lower(), password_hash=hash_password(PASSWORD),
                            age_confirmed_at=utcnow(), email_verified_at=utcnow(), is_staff=True))
        db.session.commit()
    return email


def staff_window(browser: Browser, live_server) -> Page:
    """A staff member signed in in a browser window of their own, on the Staff page."""
    staff = browser.new_context().new_page()
    staff.set_default_timeout(10_000)
    staff.goto(live_server("/login"))
    fill_login(staff, make_staff(live_server))
    staff.get_by_role("navigation", name="Main").get_by_role("link", name="Staff").click()
    expect(staff.get_by_role("heading", name="Staff", exact=True)).to_be_visible()
    return staff


def providers_file(tmp_path_factory, fake, model: str, env_name: str) -> str:
    """A providers file with one OpenAI-kind provider (the fake) serving `model`
    at $2 / $4 per million tokens; its key is read from `env_name`."""
    path = tmp_path_factory.mktemp("providers") / "providers.toml"
    path.write_text(f"""
[providers.upstream]
kind = "openai"
base_url = "{fake.base_url}/v1"
api_key_env = "{env_name}"

[[models]]
name = "{model}"
targets = [ {{ provider = "upstream", model = "gpt-upstream" }} ]
price = {{ input = 2.0, output = 4.0 }}
""")
    return str(path)
