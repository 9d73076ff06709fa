"""A team's owner at work (P31), in the browser: changes a member's role,
resends and withdraws an invitation, reads the activity page, is stopped from
leaving as the only owner, and deletes the team after typing its name."""
from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from app.extensions import db
from app.models import Team, TeamMember, User
from app.models.types import utcnow
from app.services.passwords import hash_password
from tests.e2e.flows import PASSWORD, sign_up_verified, unique_email


def a_colleague(live_server) -> str:
    email = unique_email("colleague")
    with live_server.app.app_context():
        db.session.add(User(email=email, email_key=email.lower(), password_hash=hash_password(PASSWORD),
                            age_confirmed_at=utcnow(), email_verified_at=utcnow()))
        db.session.commit()
    return email


@pytest.mark.promise("P31")
def test_owner_changes_a_role_manages_invitations_reads_activity_and_deletes_the_team(
        page: Page, live_server, smtp):
    sign_up_verified(page, live_server, smtp, name="owner")
    colleague = a_colleague(live_server)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Teams").click()
    page.get_by_label("Team name").fill("Orbit Works")
    page.get_by_role("button", name="Create team").click()
    expect(page.get_by_text("“Orbit Works” is ready.")).to_be_visible()
    with live_server.app.app_context():
        team = db.session.query(Team).filter_by(name="Orbit Works").one()
        uid = db.session.query(User.id).filter_by(email_key=colleague.lower()).scalar()
        db.session.add(TeamMember(team_id=team.id, user_id=uid, role="member", joined_at=utcnow()))
        db.session.commit()
    page.reload()

    # A role change, saved from the members table.
    row = page.locator("tr", has_text=colleague)
    row.get_by_label(re.compile("Role of")).select_option("admin")
    row.get_by_role("button", name="Save").click()
    expect(page.get_by_text(f"{colleague} is now admin.")).to_be_visible()

    # An invitation sent, sent again, then withdrawn.
    guest = unique_email("guest")
    page.get_by_label("Email address").fill(guest)
    page.get_by_role("button", name="Send invitation").click()
    invitations = page.locator("#invitations")
    invitations.locator("tr", has_text=guest).get_by_role("button", name="Resend").click()
    expect(page.get_by_text(f"Invitation to {guest} sent again.")).to_be_visible()
    expect(invitations.locator("tr", has_text=guest)).to_contain_text("sent 2×")
    invitations.locator("tr", has_text=guest).get_by_role("button", name="Withdraw").click()
    expect(page.get_by_text(f"Invitation to {guest} withdrawn.")).to_be_visible()
    expect(page.locator("#invitations")).not_to_contain_text(guest)

    # Everything above is on the activity page.
    page.get_by_role("link", name="Activity").click()
    activity = page.locator("main table")
    for what in ("created the team", "changed a role", "sent an invitation", "sent an invitation again",
                 "withdrew an invitation"):
        expect(activity.get_by_text(re.compile(f"^{what}"), exact=False).first).to_be_visible()

    # The only owner cannot leave.
    page.get_by_role("link", name="← Orbit Works").click()
    page.get_by_role("link", name="Leave team").click()
    expect(page.get_by_text("You are the team's only owner.")).to_be_visible()
    expect(page.get_by_role("button", name="Leave team")).to_have_count(0)

    # Deleting asks for the name, refuses a wrong one, then deletes.
    page.get_by_role("link", name="Back to the team").click()
    page.get_by_role("link", name="Delete team…").click()
    page.get_by_label("Type the team's name to confirm").fill("Orbit")
    page.get_by_role("button", name="Delete team").click()
    expect(page.get_by_text("Type “Orbit Works” exactly to confirm.")).to_be_visible()
    page.get_by_label("Type the team's name to confirm").fill("Orbit Works")
    page.get_by_role("button", name="Delete team").click()
    expect(page.get_by_text(re.compile("“Orbit Works” is deleted"))).to_be_visible()
    expect(page.get_by_role("link", name="Orbit Works")).to_have_count(0)
