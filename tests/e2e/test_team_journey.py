"""A team as people meet it (P12, P30, P31), each in their own browser window:
an owner creates a team and invites two people; one accepts with the account
she has, the other signs up through the link and joins once his address is
confirmed; the admin makes a team key; the member makes his own and calls the
relay with it through the `openai` SDK; the owner sees the per-member figures,
the member only his own; the owner removes the member, whose next SDK call is
refused with AuthenticationError while the admin's team key still works."""
from __future__ import annotations

import os
import re
import time

import openai
import pytest
import sqlalchemy as sa
from playwright.sync_api import Browser, Page, expect

from app.extensions import db
from app.models import UsageRecord
from tests.e2e.flows import MAIL_TIMEOUT, fill_login, providers_file, sign_up_verified, unique_email
from tests.e2e.test_keys_page import create_key
from tests.fakes.provider import FakeProvider
from tests.fakes.smtp import link

UPSTREAM_KEY = "sk-e2e-team-upstream"


@pytest.fixture(scope="module")
def fake():
    server = FakeProvider(api_key=UPSTREAM_KEY).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def live_server_settings(fake, tmp_path_factory):
    path = providers_file(tmp_path_factory, fake, "gpt-team", "E2E_TEAM_UPSTREAM_KEY")
    os.environ["E2E_TEAM_UPSTREAM_KEY"] = UPSTREAM_KEY
    yield {"PROVIDERS_FILE": path}
    os.environ.pop("E2E_TEAM_UPSTREAM_KEY", None)


def window(browser: Browser) -> Page:
    page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    page.set_default_timeout(10_000)
    return page


def wait_for_rows(app, n: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        app.extensions["meter"].flush(timeout)
        with app.app_context():
            if (db.session.scalar(sa.select(sa.func.count()).select_from(UsageRecord)) or 0) >= n:
                return
        time.sleep(0.05)
    raise AssertionError("the usage rows were not written")


def switch_to(page: Page, team: str, role: str) -> None:
    """With the context switch in the top bar of whatever page is open."""
    page.get_by_label("Show").select_option(label=f"{team} ({role})")
    page.get_by_role("button", name="Switch").click()
    expect(page.get_by_text(f"Now showing: {team}.")).to_be_visible()


def invitation_link(smtp, email: str) -> str:
    return link(smtp.mailbox.wait_for(email, "invites you", timeout=MAIL_TIMEOUT))


@pytest.mark.promise("P12", "P30", "P31")
def test_owner_invites_admin_and_member_who_use_the_relay_and_the_member_is_removed(
        browser: Browser, live_server, smtp, fake):
    owner = window(browser)
    owner_email = sign_up_verified(owner, live_server, smtp, name="owner")
    admin = window(browser)
    admin_email = sign_up_verified(admin, live_server, smtp, name="admin")
    member_email = unique_email("member")

    # The owner creates the team and invites both.
    owner.get_by_role("navigation", name="Main").get_by_role("link", name="Teams").click()
    owner.get_by_label("Team name").fill("Lab Seven")
    owner.get_by_role("button", name="Create team").click()
    expect(owner.get_by_text("“Lab Seven” is ready.")).to_be_visible()
    owner.get_by_label("Email address").fill(admin_email)
    owner.get_by_label("Role", exact=True).select_option("admin")
    owner.get_by_role("button", name="Send invitation").click()
    expect(owner.get_by_text(f"Invitation sent to {admin_email}.")).to_be_visible()
    owner.get_by_label("Email address").fill(member_email)
    owner.get_by_role("button", name="Send invitation").click()
    expect(owner.locator("#invitations")).to_contain_text(member_email)

    # The admin accepts with her account.
    admin.goto(invitation_link(smtp, admin_email))
    expect(admin.get_by_role("heading", name="Join Lab Seven")).to_be_visible()
    admin.get_by_role("button", name="Join Lab Seven").click()
    expect(admin.get_by_text("You joined Lab Seven as admin.")).to_be_visible()

    # The member has no account: he signs up through the link and joins on confirming.
    member = window(browser)
    member.goto(invitation_link(smtp, member_email))
    member.get_by_role("link", name="Create an account").click()
    expect(member.get_by_label("Email", exact=True)).to_have_value(member_email)
    member.get_by_label("Password", exact=True).fill("correct horse battery staple")
    member.get_by_label(re.compile(r"I am at least \d+ years old")).check()
    member.get_by_label(re.compile(r"I have read and accept the privacy policy")).check()
    member.get_by_role("button", name="Create account").click()
    member.goto(link(smtp.mailbox.wait_for(member_email, "Confirm your email", timeout=MAIL_TIMEOUT)))
    expect(member.get_by_text("You joined Lab Seven.")).to_be_visible()
    fill_login(member, member_email)

    # The admin makes a team key; the owner lets members make keys; the member makes his.
    switch_to(admin, "Lab Seven", "admin")
    admin.get_by_role("navigation", name="Main").get_by_role("link", name="Keys").click()
    expect(admin.get_by_role("heading", name="Create a key for Lab Seven")).to_be_visible()
    team_key = create_key(admin, "team-ci")
    owner.goto(live_server("/teams/"))
    owner.get_by_role("link", name="Lab Seven").click()
    owner.get_by_label(re.compile("Members may make API keys")).check()
    owner.get_by_role("button", name="Save settings").click()
    expect(owner.get_by_text("Team settings saved.")).to_be_visible()
    switch_to(member, "Lab Seven", "member")
    member.get_by_role("navigation", name="Main").get_by_role("link", name="Keys").click()
    member_key = create_key(member, "member-laptop")
    expect(member.locator("#keys")).not_to_contain_text("team-ci")  # a member sees only his own keys

    # Both call the relay through the official SDK.
    member_sdk = openai.OpenAI(base_url=live_server("/v1"), api_key=member_key, max_retries=0)
    team_sdk = openai.OpenAI(base_url=live_server("/v1"), api_key=team_key, max_retries=0)
    for _ in range(2):
        assert member_sdk.chat.completions.create(
            model="gpt-team", messages=[{"role": "user", "content": "hello from the member"}]
        ).choices[0].message.content == "echo: hello from the member"
    team_sdk.chat.completions.create(model="gpt-team", messages=[{"role": "user", "content": "from ci"}])
    wait_for_rows(live_server.app, 3)
    with live_server.app.app_context():
        team_ids = set(db.session.scalars(sa.select(UsageRecord.team_id)))
    assert len(team_ids) == 1 and None not in team_ids  # every row names the team (P12)

    # The owner sees every member's figures; the member only his own.
    switch_to(owner, "Lab Seven", "owner")
    owner.get_by_role("navigation", name="Main").get_by_role("link", name="Analytics").click()
    expect(owner.get_by_role("heading", name=re.compile("Lab Seven"))).to_be_visible()
    expect(owner.locator("main")).to_contain_text(member_email)
    expect(owner.locator("main")).to_contain_text(admin_email)
    member.get_by_role("navigation", name="Main").get_by_role("link", name="Analytics").click()
    expect(member.get_by_role("heading", name=re.compile("Lab Seven"))).to_be_visible()
    expect(member.locator("main")).not_to_contain_text(admin_email)
    expect(member.locator("main")).not_to_contain_text("team-ci")
    member.get_by_role("navigation", name="Main").get_by_role("link", name="Usage").click()
    expect(member.locator("main")).to_contain_text("member-laptop")
    expect(member.locator("main")).not_to_contain_text("team-ci")

    # The owner removes the member: the page says which key stops, then it does.
    owner.goto(live_server("/teams/"))
    owner.get_by_role("link", name="Lab Seven").click()
    owner.locator("tr", has_text=member_email).get_by_role("link", name="Remove").click()
    expect(owner.locator("main")).to_contain_text("member-laptop")
    owner.get_by_role("button", name="Remove and revoke their keys").click()
    expect(owner.get_by_text(re.compile("was removed from Lab Seven; 1 of their keys"))).to_be_visible()
    with pytest.raises(openai.AuthenticationError):
        member_sdk.chat.completions.create(model="gpt-team", messages=[{"role": "user", "content": "again"}])
    assert team_sdk.chat.completions.create(
        model="gpt-team", messages=[{"role": "user", "content": "still here"}]).choices[0].message.content
    assert owner_email
