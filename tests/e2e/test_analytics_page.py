"""The analytics page in a real browser (P30, P31): a team owner switches to
the team, opens Analytics, sees the spend chart and its data table and the
member breakdown, hovers a bar for its tooltip, picks a range, and on a
390 px wide phone the page never scrolls sideways."""
from __future__ import annotations

import secrets
from datetime import timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa
from playwright.sync_api import Page, expect

from app.extensions import db
from app.models import ApiKey, Team, TeamMember, User
from app.models.types import utcnow
from app.relay.meter import _encode, check_row
from tests.e2e.flows import sign_up_and_log_in

pytestmark = pytest.mark.e2e


def seed_team(app, owner_email: str) -> None:
    """A team with the owner and a colleague, two keys, and a week of usage
    written through the usage writer (so the rollups are the real ones)."""
    now = utcnow()
    with app.app_context():
        owner = db.session.scalar(sa.select(User).where(User.email == owner_email))
        colleague = User(email=f"colleague-{secrets.token_hex(3)}@example.com", email_key=secrets.token_hex(8),
                         password_hash="x", name="Colleague Chen", age_confirmed_at=now, email_verified_at=now)
        team = Team(name="Orbit Analytics", slug="orbit-" + secrets.token_hex(3))
        db.session.add_all([colleague, team])
        db.session.flush()
        db.session.add_all([TeamMember(team_id=team.id, user_id=owner.id, role="owner"),
                            TeamMember(team_id=team.id, user_id=colleague.id, role="member")])
        keys = [ApiKey(user_id=u.id, team_id=team.id, name=name, prefix="rk_e2e", last4=secrets.token_hex(2),
                       lookup_hash=secrets.token_hex(32), created_at=now)
                for u, name in ((owner, "orbit-backend"), (colleague, "chen-notebook"))]
        db.session.add_all(keys)
        db.session.commit()
        people = [(owner.id, keys[0].id), (colleague.id, keys[1].id)]
        team_id = team.id
    lines = []
    for i in range(120):
        user, key = people[i % 2]
        began = now - timedelta(hours=i * 1.3 + 0.5)
        ok = i % 11 != 5
        lines.append(_encode(check_row({
            "request_id": "req_" + secrets.token_hex(12), "user_id": user, "team_id": team_id, "api_key_id": key,
            "project": "web" if i % 3 else None, "tags": None, "started_at": began,
            "ended_at": began + timedelta(seconds=1), "model": "gpt-4o-mini" if i % 4 else "claude-sonnet-4-5",
            "provider": "openai", "input_tokens": 900 + i if ok else 0, "output_tokens": 120 if ok else 0,
            "cache_read_tokens": 0, "cache_write_tokens": 0,
            "cost_usd": Decimal("0.0021") * (1 + i % 5) if ok else Decimal(0),
            "ttft_ms": 200 + i, "latency_ms": 700 + 9 * i, "status_code": 200 if ok else 502,
            "error_class": None if ok else "upstream_error", "routing_trace": "[]", "usage_source": "provider"})))
    app.extensions["meter"]._write_lines(lines)


@pytest.mark.promise("P30", "P31")
def test_owner_sees_team_analytics_with_tooltip_and_no_sideways_scroll(page: Page, live_server):
    email = sign_up_and_log_in(page, live_server, "analytics")
    seed_team(live_server.app, email)
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto(live_server("/analytics/"))
    expect(page.get_by_role("heading", name="Analytics · Personal")).to_be_visible()
    expect(page.get_by_role("heading", name="No usage in this range")).to_be_visible()

    # Switch to the team in the top bar; the form comes back to this page.
    page.locator("#context-select").select_option(label="Orbit Analytics (owner)")
    page.locator(".context-switch").get_by_role("button", name="Switch").click()
    expect(page.get_by_role("heading", name="Analytics · Orbit Analytics")).to_be_visible()
    page.goto(live_server("/analytics/?range=7d"))
    expect(page.get_by_role("heading", name="Analytics · Orbit Analytics")).to_be_visible()

    spend = page.get_by_role("img", name="Bar chart: spend per hour", exact=False)
    expect(spend).to_be_visible()
    expect(page.get_by_role("heading", name="By member")).to_be_visible()
    members = page.locator("#by-member table")
    expect(members).to_contain_text("Colleague Chen")
    expect(page.locator("#by-key table")).to_contain_text("chen-notebook")
    expect(page.locator("#stat-requests .stat-value")).to_have_text("120")

    # The data table behind the time charts opens from its summary.
    page.get_by_text("Data table: spend, requests, errors and tokens per hour").click()
    expect(page.locator("#series-table table caption")).to_contain_text("Usage per hour")
    expect(page.locator("#series-table tbody tr").first).to_be_visible()

    # Hovering a bar shows its tooltip (the SVG <title>).
    bar = spend.locator("rect.bar").last
    bar.hover()
    assert bar.evaluate("e => e.matches(':hover')")
    tooltip = bar.locator("title").text_content()
    assert tooltip.count(":") >= 2 and "$" in tooltip, tooltip  # "YYYY-MM-DD HH:00: $…"
    page.screenshot(path="/tmp/analytics-owner.png", full_page=True)

    # A bad custom range is a message on the form, not an error page.
    page.get_by_label("Range", exact=True).select_option("custom")
    page.get_by_label("From (UTC day)").fill("2026-05-10")
    page.get_by_label("To (UTC day, inclusive)").fill("2026-05-01")
    page.get_by_role("button", name="Show").click()
    expect(page.get_by_role("alert")).to_contain_text("The end date is before the start date.")

    # On a phone: nothing wider than the screen.
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(live_server("/analytics/?range=30d"))
    expect(page.get_by_role("img", name="Bar chart: spend per day", exact=False)).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), \
        page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    page.screenshot(path="/tmp/analytics-390.png", full_page=True)
