"""Nobody reads across tenants (P12, P30, P31): every team, key, usage,
analytics, export and invitation route, as each kind of person, against their
own team and another team — the expected status, and no foreign row in any
answer (owners' views included).

The world: team Alpha (owner, admin, member) and team Bravo (owner, member),
plus a person in no team, a staff member and a signed-out visitor. Every
person has keys and usage rows whose names and projects are canaries; a body
may only contain the canaries its reader is allowed to see.
"""
from __future__ import annotations

import html
from datetime import timedelta

import pytest
import sqlalchemy as sa

from app.extensions import db
from app.models import ApiKey, Team, TeamInvitation, TeamMember, UsageRecord, User
from app.models.types import utcnow
from app.services import keys as key_service
from tests.conftest import Forms

pytestmark = pytest.mark.promise("P12", "P30", "P31")

PEOPLE = {  # name -> (team, role)
    "alpha_owner": ("alpha", "owner"), "alpha_admin": ("alpha", "admin"), "alpha_member": ("alpha", "member"),
    "bravo_owner": ("bravo", "owner"), "bravo_member": ("bravo", "member"),
    "loner": (None, None), "staff": (None, None),
}


def canary(who: str) -> str:
    return f"canary-{who.replace('_', '-')}"


class World:
    def __init__(self, app, users):
        self.app, self.clients, self.ids, self.teams, self.keys, self.rows, self.invites = app, {}, {}, {}, {}, {}, {}
        with app.app_context():
            for name in ("alpha", "bravo"):
                t = Team(name=f"Team {name.capitalize()}", slug=name, created_at=utcnow(), members_make_keys=True)
                db.session.add(t)
                db.session.flush()
                self.teams[name] = t.id
            db.session.commit()
        for who, (team, role) in PEOPLE.items():
            uid = users.create(email=f"{who}@example.com", name=canary(who) + "-name", staff=who == "staff")
            self.ids[who] = uid
            with app.app_context():
                user = db.session.get(User, uid)
                if team:
                    db.session.add(TeamMember(team_id=self.teams[team], user_id=uid, role=role, joined_at=utcnow()))
                    db.session.flush()
                personal, _ = key_service.create(user, canary(who) + "-personal-key")
                self.keys[(who, None)] = personal.id
                self._usage(uid, None, personal.id, canary(who) + "-personal-project")
                if team:
                    tkey, _ = key_service.create(user, canary(who) + "-team-key", team_id=self.teams[team])
                    self.keys[(who, team)] = tkey.id
                    self._usage(uid, self.teams[team], tkey.id, canary(who) + "-team-project")
                db.session.commit()
        with app.app_context():
            for name in ("alpha", "bravo"):
                inv = TeamInvitation(team_id=self.teams[name], email=f"guest-{name}@example.com",
                                     email_key=f"guest-{name}@example.com", role="member",
                                     invited_by=self.ids[f"{name}_owner"], token_hash=f"{name:0<64}",
                                     created_at=utcnow(), last_sent_at=utcnow(), sent_count=1,
                                     expires_at=utcnow() + timedelta(days=7))
                db.session.add(inv)
                db.session.flush()
                self.invites[name] = inv.id
            self.members = {who: db.session.scalar(sa.select(TeamMember.id).where(
                TeamMember.user_id == self.ids[who])) for who, (team, _) in PEOPLE.items() if team}
            db.session.commit()
        for who in PEOPLE:
            client = app.test_client()
            forms = Forms(client)
            assert forms.post("/login", {"email": f"{who}@example.com", "password": users.password}
                              ).status_code == 302
            self.clients[who] = client
        self.clients["anonymous"] = app.test_client()

    def _usage(self, uid, team_id, key_id, project):
        now = utcnow()
        row = dict(request_id=f"req_{project}"[:40], user_id=uid, team_id=team_id, api_key_id=key_id, project=project,
                   tags=None, started_at=now - timedelta(minutes=5), ended_at=now - timedelta(minutes=5),
                   model="house-chat", provider="fake", input_tokens=10, output_tokens=5, cache_read_tokens=0,
                   cache_write_tokens=0, cost_usd=0.001, ttft_ms=20, latency_ms=40, status_code=200,
                   error_class=None, routing_trace="[]", usage_source="provider")
        db.session.add(UsageRecord(**row))
        try:
            from app.services import rollups
        except ImportError:  # analytics not built yet in this checkout
            return
        rollups.apply(db.session.connection(), [row])

    def switch(self, who, team):
        client = self.clients[who]
        token = Forms(client).token("/teams/")
        client.post("/teams/switch", data={"csrf_token": token, "team": str(self.teams[team]) if team else ""})

    def csrf(self, who):
        return Forms(self.clients[who]).token("/teams/") if who != "anonymous" else "none"


@pytest.fixture
def world(app, users):
    return World(app, users)


def visible(reader: str, team: str | None) -> set[str]:
    """The canaries a reader may see on usage, key and analytics pages in a context."""
    if team is None:
        return {canary(reader)}
    mine = PEOPLE[reader]
    if mine[0] != team:
        return set()
    if mine[1] in ("owner", "admin"):
        return {canary(w) for w, (t, _) in PEOPLE.items() if t == team}
    return {canary(reader)}


def foreign_in(body: str, allowed: set[str], kinds=("-personal-", "-team-")) -> list[str]:
    """Canaries of key names and projects in `body` that the reader may not see."""
    found = []
    for who in PEOPLE:
        c = canary(who)
        for kind in kinds:
            if f"{c}{kind}" in body and c not in allowed:
                found.append(f"{c}{kind}")
    return found


ACTORS = ["alpha_owner", "alpha_admin", "alpha_member", "bravo_member", "loner", "staff", "anonymous"]


def team_routes(w: World, team: str):
    """(method, url, data, {actor-kind: status}) for team `team`; actor kinds are
    owner/admin/member of that team, or 'outsider'."""
    member = w.members[f"{team}_member"]
    inv = w.invites[team]
    return [
        ("GET", f"/teams/{team}/", None, dict(owner=200, admin=200, member=200)),
        ("GET", f"/teams/{team}/activity", None, dict(owner=200, admin=200, member=403)),
        ("GET", f"/teams/{team}/delete", None, dict(owner=200, admin=403, member=403)),
        ("POST", f"/teams/{team}/settings", {"name": f"Team {team.capitalize()}", "members_make_keys": "y"},
         dict(owner=302, admin=403, member=403)),
        ("GET", f"/teams/{team}/members/{member}/remove", None, dict(owner=200, admin=200, member=403)),
        ("POST", f"/teams/{team}/members/{member}/role", {"role": "member"}, dict(owner=302, admin=403, member=403)),
        ("POST", f"/teams/{team}/invitations/{inv}/resend", {}, dict(owner=302, admin=302, member=403)),
        # An admin's form offers no owner role: the choice is refused as invalid.
        ("POST", f"/teams/{team}/invitations", {"email": "x@example.com", "role": "owner"},
         dict(owner=302, admin=400, member=403)),
    ]


def kind_of(actor: str, team: str) -> str:
    if actor == "anonymous":
        return "anonymous"
    t, role = PEOPLE[actor]
    return role if t == team else "outsider"


def test_P31_team_routes_answer_by_role_and_leak_nothing_across_teams(world):
    failures = []
    for team in ("alpha", "bravo"):
        for method, url, data, expected in team_routes(world, team):
            for actor in ACTORS:
                kind = kind_of(actor, team)
                # Signed out: a page sends to the login, a form without a session's token is refused.
                want = (302 if method == "GET" else 400) if kind == "anonymous" else expected.get(kind, 404)
                client = world.clients[actor]
                if method == "GET":
                    resp = client.get(url)
                else:
                    resp = client.post(url, data={"csrf_token": world.csrf(actor), **data})
                if resp.status_code != want:
                    failures.append(f"{actor} {method} {url}: {resp.status_code}, expected {want}")
                body = html.unescape(resp.get_data(as_text=True))
                other = "bravo" if team == "alpha" else "alpha"
                if f"Team {other.capitalize()}" in body and PEOPLE.get(actor, (None,))[0] != other:
                    failures.append(f"{actor} {method} {url}: another team's name in the body")
                # No personal key ever shows on a team page; a team key only to that team's managers
                # (the removal page lists the keys that will stop).
                leaked = foreign_in(body, set(), ("-personal-",)) + foreign_in(
                    body, visible(actor, team) if kind in ("owner", "admin") else set(), ("-team-",))
                if leaked:
                    failures.append(f"{actor} {method} {url}: key or project canary {leaked}")
    # An id from another team under this team's address is simply not found.
    a_owner = world.clients["alpha_owner"]
    assert a_owner.get(f"/teams/alpha/members/{world.members['bravo_member']}/remove").status_code == 404
    resp = a_owner.post(f"/teams/alpha/invitations/{world.invites['bravo']}/withdraw",
                        data={"csrf_token": world.csrf("alpha_owner")})
    with world.app.app_context():
        assert db.session.get(TeamInvitation, world.invites["bravo"]).withdrawn_at is None
    assert not failures, "\n".join(failures)


def portal_pages(app) -> list[str]:
    """Every GET page that shows keys, usage or analytics (and the export page)."""
    wanted = ["/keys/", "/usage/", "/usage/download.csv", "/usage/download.json", "/analytics/",
              "/analytics/?range=90d", "/privacy-center/export/", "/teams/", "/dashboard"]
    rules = {r.rule for r in app.url_map.iter_rules()}
    for rule in sorted(rules):
        if rule.startswith(("/usage/", "/analytics/")) and "<" not in rule and rule not in wanted:
            wanted.append(rule)
    return wanted


@pytest.mark.parametrize("actor", [a for a in ACTORS if a != "anonymous"])
def test_P30_P31_usage_keys_and_analytics_show_only_the_context_each_reader_may_see(world, actor):
    """Personal context, then each team context the person claims (their own,
    and another team by id: that falls back to personal)."""
    failures = []
    contexts = [None, "alpha", "bravo"]
    for ctx in contexts:
        world.switch(actor, ctx)
        mine = PEOPLE[actor][0]
        effective = ctx if ctx == mine else None
        allowed = visible(actor, effective)
        for url in portal_pages(world.app):
            resp = world.clients[actor].get(url)
            if resp.status_code != 200:
                failures.append(f"{url} in {ctx}: {resp.status_code}")
                continue
            body = html.unescape(resp.get_data(as_text=True))
            kinds = ("-personal-",) if effective is None else ("-team-",)
            leaked = foreign_in(body, allowed, kinds)
            # In a team context no personal rows show; in personal no team rows.
            wrong_kind = [c for c in (canary(w) for w in PEOPLE)
                          if f"{c}{'-team-' if effective is None else '-personal-'}" in body
                          and url != "/privacy-center/export/"]
            if leaked or wrong_kind:
                failures.append(f"{actor} {url} in context {ctx}: {leaked or wrong_kind}")
    assert not failures, "\n".join(failures)


def test_P12_key_actions_only_on_keys_the_reader_may_manage(world):
    """Rotate, reveal and rename are the maker's; revoke also the team's owners
    and admins, in that team's context. Anything else: 404."""
    failures = []
    world.switch("alpha_owner", "alpha")
    world.switch("alpha_admin", "alpha")
    world.switch("alpha_member", "alpha")
    cases = []
    for (maker, team), key_id in world.keys.items():
        for actor in ACTORS:
            for action in ("rotate", "reveal", "revoke", "name?edit=1"):
                if actor == "anonymous":
                    want = 302
                elif actor == maker:
                    want = 200
                elif action == "revoke" and team == PEOPLE[actor][0] and PEOPLE[actor][1] in ("owner", "admin"):
                    want = 200
                else:
                    want = 404
                cases.append((actor, f"/keys/{key_id}/{action}", want))
    for actor, url, want in cases:
        got = world.clients[actor].get(url).status_code
        if got != want:
            failures.append(f"{actor} GET {url}: {got}, expected {want}")
    assert not failures, "\n".join(failures)


def test_P31_invitation_routes_only_for_the_invited_address(world):
    """Accepting or declining someone else's invitation is not found; the join
    link of another address is refused (tested with real links in test_teams)."""
    for actor in ACTORS[:-1]:
        for team in ("alpha", "bravo"):
            resp = world.clients[actor].post(f"/teams/invitations/{world.invites[team]}/accept",
                                             data={"csrf_token": world.csrf(actor)})
            assert resp.status_code == 404, (actor, team, resp.status_code)
    assert world.clients["anonymous"].post(f"/teams/invitations/{world.invites['alpha']}/accept").status_code in (
        302, 400)
    with world.app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(TeamMember)) == 5
        assert db.session.scalar(sa.select(sa.func.count()).select_from(ApiKey).where(
            ApiKey.revoked_at.is_not(None))) == 0


def test_P31_P41_billing_shows_a_wallet_only_to_whom_it_belongs(world):
    """Every person and both teams have a wallet whose top-up names a canary. On
    the Billing page, its CSV and its receipts, a person sees their own wallet in
    the personal context, a team's owners and admins the team's in that team's
    context, and nobody anything else; another wallet's receipt is not found."""
    from app.services import wallets

    topups = {}
    with world.app.app_context():
        owners = [(who, {"user_id": world.ids[who]}) for who in PEOPLE] + \
                 [(f"team-{t}", {"team_id": world.teams[t]}) for t in ("alpha", "bravo")]
        for owner, where in owners:
            w = wallets.open_for(**where)
            db.session.flush()
            topups[owner] = wallets.post(w.id, "topup", 10 * 100_000_000, f"pi_{owner}",
                                         f"Card payment · wallet-canary-{owner}").id
        db.session.commit()

    def shown(body: str) -> set[str]:  # no owner's name is the start of another's
        return {o for o in topups if f"wallet-canary-{o}" in body}

    failures = []
    for actor in ACTORS:
        if actor == "anonymous":
            assert world.clients[actor].get("/billing/").status_code == 302
            continue
        team, role = PEOPLE[actor]
        for context in [None, team] if team else [None]:
            world.switch(actor, context)
            mine = f"team-{context}" if context else actor
            allowed = {mine} if context is None or role in ("owner", "admin") else set()
            client = world.clients[actor]
            for url in ("/billing/", "/billing/ledger.csv"):
                resp = client.get(url)
                seen = shown(html.unescape(resp.get_data(as_text=True)))
                if seen != (allowed if resp.status_code == 200 else set()):
                    failures.append(f"{actor} in {context or 'personal'} {url}: {resp.status_code}, saw {seen}")
            for owner, entry_id in topups.items():
                resp = client.get(f"/billing/receipts/{entry_id}")
                want = 200 if owner in allowed else 404
                if resp.status_code != want:
                    failures.append(f"{actor} in {context or 'personal'}: receipt of {owner} {resp.status_code}")
        world.switch(actor, None)
    assert not failures, "\n".join(failures)
