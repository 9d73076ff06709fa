"""The analytics page through the real test client (P30, P31): personal usage,
a team owner's view with the member breakdown, a member's view that holds
only their own figures (another member's key name or email never appears),
range validation as form messages, the empty state, and no 5xx for any
query string.
"""
from __future__ import annotations

import json
import re
import secrets
from datetime import timedelta
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.extensions import db
from app.models import ApiKey, Team, TeamMember
from app.models.types import utcnow
from app.relay.meter import _encode, check_row
from tests.conftest import csrf_from

OWNER, MEMBER, OTHER = "olga@example.com", "max@example.com", "nina@example.com"


def make_key(app, user_id: int, name: str, team_id: int | None = None, revoked: bool = False) -> int:
    with app.app_context():
        k = ApiKey(user_id=user_id, team_id=team_id, name=name, prefix="rk_test", last4=secrets.token_hex(2),
                   lookup_hash=secrets.token_hex(32), created_at=utcnow(), revoked_at=utcnow() if revoked else None)
        db.session.add(k)
        db.session.commit()
        return k.id


def make_team(app, name: str, members: dict[int, str]) -> int:
    with app.app_context():
        team = Team(name=name, slug=name.lower().replace(" ", "-") + secrets.token_hex(3))
        db.session.add(team)
        db.session.flush()
        db.session.add_all(TeamMember(team_id=team.id, user_id=u, role=role) for u, role in members.items())
        db.session.commit()
        return team.id


def usage(app, user_id: int, key_id: int, n: int = 3, team_id: int | None = None, model: str = "gpt-test",
          cost: str = "0.0125", hours_ago: float = 1, status: int = 200, project: str | None = None,
          tags: list[str] | None = None) -> None:
    """Rows written through the usage writer's own path, so the rollups are the real ones."""
    began = utcnow() - timedelta(hours=hours_ago)
    lines = []
    for i in range(n):
        lines.append(_encode(check_row({
            "request_id": "req_" + secrets.token_hex(12), "user_id": user_id, "team_id": team_id,
            "api_key_id": key_id, "project": project, "tags": json.dumps(tags) if tags else None,
            "started_at": began + timedelta(seconds=i), "ended_at": began + timedelta(seconds=i + 1),
            "model": model, "provider": "oai", "input_tokens": 1000, "output_tokens": 200,
            "cache_read_tokens": 50, "cache_write_tokens": 0,
            "cost_usd": Decimal(cost) if status == 200 else Decimal(0),
            "ttft_ms": 180 + i, "latency_ms": 900 + 10 * i, "status_code": status,
            "error_class": None if status == 200 else "rate_limit_error", "routing_trace": "[]",
            "usage_source": "provider"})))
    app.extensions["meter"]._write_lines(lines)


def switch(client, team_id: int | None):
    token = csrf_from(client.get("/analytics/").get_data(as_text=True))
    resp = client.post("/teams/switch", data={"csrf_token": token, "team": "" if team_id is None else str(team_id)})
    assert resp.status_code == 302


def body(client, query: str = "") -> str:
    resp = client.get("/analytics/" + query)
    assert resp.status_code == 200, resp.status_code
    return resp.get_data(as_text=True)


@pytest.fixture
def team_setup(app, users):
    """A team of three: Olga owns it, Max and Nina are members; each has a team key,
    Max has a personal key too."""
    owner = users.create(OWNER, name="Olga Owner")
    member = users.create(MEMBER, name="Max Member")
    other = users.create(OTHER, name="Nina Neighbour")
    team = make_team(app, "Acme Labs", {owner: "owner", member: "member", other: "member"})
    keys = {"owner": make_key(app, owner, "olga-team-key", team), "member": make_key(app, member, "max-team-key", team),
            "other": make_key(app, other, "nina-secret-pipeline", team, revoked=True),
            "personal": make_key(app, member, "max-personal-key")}
    usage(app, owner, keys["owner"], 2, team, cost="1.00", project="website")
    usage(app, member, keys["member"], 3, team, cost="0.10", model="claude-test", tags=["beta"])
    usage(app, other, keys["other"], 4, team, cost="0.25", project="nina-research")
    usage(app, other, keys["other"], 1, team, status=429)
    usage(app, member, keys["personal"], 5, None, cost="0.01", hours_ago=30)
    return {"owner": owner, "member": member, "other": other, "team": team, "keys": keys}


@pytest.mark.promise("P30")
def test_P30_personal_context_shows_own_usage_with_charts_and_tables(client, login, team_setup):
    login(MEMBER)
    html = body(client, "?range=7d")
    assert "<h1>Analytics · Personal</h1>" in html
    assert 'id="stat-spend"' in html and "$0.05" in html            # 5 × $0.01
    assert 'role="img"' in html and "<title>" in html and "<caption" in html and 'scope="col"' in html
    assert "max-personal-key" in html
    assert "max-team-key" not in html and "Acme" not in html.split("<main", 1)[1].split("</h1>")[0]
    assert "By member" not in html
    assert "charts.css" in html


@pytest.mark.promise("P30", "P31")
def test_P31_team_owner_sees_team_totals_and_each_members_share(client, login, team_setup):
    login(OWNER)
    switch(client, team_setup["team"])
    html = body(client, "?range=24h")
    assert "<h1>Analytics · Acme Labs</h1>" in html
    # 2 × $1.00 + 3 × $0.10 + 4 × $0.25 = $3.30; 10 requests, 1 failed.
    assert "$3.30" in html and re.search(r'id="stat-requests">.*?10<', html, re.DOTALL)
    assert "By member" in html
    for name in ("Olga Owner", "Max Member", "Nina Neighbour", OTHER):
        assert name in html
    assert "nina-secret-pipeline" in html and "revoked" in html
    assert "nina-research" in html and "beta" in html
    assert "max-personal-key" not in html  # a member's personal usage is not the team's


@pytest.mark.promise("P31")
def test_P31_a_member_sees_only_their_own_part_of_the_team(client, login, team_setup):
    login(MEMBER)
    switch(client, team_setup["team"])
    for query in ("", "?range=24h", "?range=7d", "?range=90d", "?range=30d"):
        html = body(client, query)
        assert "<h1>Analytics · Acme Labs</h1>" in html
        assert "$0.30" in html  # Max's 3 × $0.10
        for foreign in ("nina-secret-pipeline", OTHER, "Nina Neighbour", "olga-team-key", OWNER, "Olga Owner",
                        "nina-research", "website", "$3.30", "By member"):
            assert foreign not in html, foreign
        assert "max-team-key" in html


@pytest.mark.promise("P30")
@pytest.mark.parametrize("query,message", [
    ("?range=custom&from=2026-05-10&to=2026-05-01", "The end date is before the start date."),
    ("?range=custom&from=2024-01-01&to=2025-06-01", "A custom range covers at most 366 days."),
    ("?range=custom&from=yesterday&to=2025-06-01", "The start date is not a date like"),
    ("?range=custom&from=2025-01-01", "Enter the end date"),
    ("?range=custom&from=1999-12-31&to=2000-01-02", "The start date must be between"),
    ("?range=custom&from=2025-01-01&to=9999-01-01", "The end date must be between"),
    ("?range=lifetime", "Choose one of the ranges listed."),
])
def test_P30_a_bad_range_is_a_form_message_not_an_error(client, login, users, query, message):
    users.create()
    login()
    html = body(client, query)
    assert message in html and 'role="alert"' in html and 'aria-invalid="true"' in html


@pytest.mark.promise("P30")
def test_P30_a_custom_range_of_whole_days_by_hour_and_by_day(client, login, team_setup):
    login(MEMBER)
    today = utcnow().date()
    html = body(client, f"?range=custom&from={(today - timedelta(days=2)).isoformat()}&to={today.isoformat()}")
    assert "$0.05" in html and "Usage per hour" in html
    html = body(client, f"?from={(today - timedelta(days=40)).isoformat()}&to={today.isoformat()}")
    assert "$0.05" in html and "Usage per day" in html
    html = body(client, f"?from={(today - timedelta(days=40)).isoformat()}"
                        f"&to={(today - timedelta(days=10)).isoformat()}")
    assert "No usage in this range" in html and "Try a longer range" in html


@pytest.mark.promise("P30")
def test_P30_empty_state_before_any_request(client, login, users):
    users.create()
    login()
    html = body(client)
    assert "No usage in this range" in html and "Charts appear here once requests go through the relay" in html
    assert 'role="img"' not in html


QUERY_VALUES = st.one_of(st.text(max_size=30), st.sampled_from(
    ["24h", "7d", "30d", "90d", "custom", "2025-01-01", "2025-13-40", "2026-02-29", "0001-01-01", "9999-12-31",
     "20250101", "²", "\x00", "%00", "9" * 400]))


@pytest.mark.promise("P30")
def test_P30_no_query_string_makes_a_5xx(client, login, team_setup):
    """Any values for the range form's fields (and others) give a page, never a 5xx."""
    login(OWNER)
    switch(client, team_setup["team"])

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(params=st.dictionaries(st.sampled_from(["range", "from", "to", "page", "x"]), QUERY_VALUES))
    def check(params):
        resp = client.get("/analytics/", query_string=params)
        assert resp.status_code == 200, (params, resp.status_code)

    check()
