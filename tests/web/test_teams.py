"""Teams (P12, P31): create, invite by email, roles, the last-owner rule, team
keys attributed to team and maker and revoked when the maker leaves, the
activity page, deletion, and the invitation edge cases.

Each person has their own test client (their own cookies), as in a browser.
"""
from __future__ import annotations

import html
import re
from datetime import timedelta
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa

from app.extensions import db
from app.models import (
    ApiKey,
    AuditEvent,
    Team,
    TeamInvitation,
    TeamMember,
    UsageRecord,
    User,
)
from app.models.types import utcnow
from tests.conftest import Forms
from tests.fakes.smtp import link

pytestmark = pytest.mark.promise("P12", "P31")

def text(resp) -> str:
    return html.unescape(resp.get_data(as_text=True))


class Person:
    """One browser: a test client signed in as one account."""

    def __init__(self, app, users, email, name=None, create=True, verified=True):
        self.app, self.email = app, email
        self.client = app.test_client()
        self.forms = Forms(self.client)
        self.id = users.create(email=email, name=name, verified=verified) if create else None
        if create:
            resp = self.forms.post("/login", {"email": email, "password": users.password})
            assert resp.status_code == 302

    def get(self, url):
        return self.client.get(url)

    def post(self, url, data=None, page=None):
        return self.forms.post(url, data or {}, page=page or "/teams/")

    def create_team(self, name="Acme Research", slug=""):
        resp = self.post("/teams/", {"name": name, "slug": slug})
        assert resp.status_code == 302, text(resp)[:2000]
        return resp.headers["Location"].rstrip("/").rsplit("/", 1)[-1]

    def invite(self, slug, email, role="member"):
        return self.post(f"/teams/{slug}/invitations", {"email": email, "role": role}, page=f"/teams/{slug}/")

    def switch(self, team_id):
        return self.post("/teams/switch", {"team": str(team_id) if team_id else "", "next": "/keys/"})


def q(app, stmt):
    with app.app_context():
        return db.session.execute(stmt).all()


def team_id(app, slug) -> int:
    with app.app_context():
        return db.session.scalar(sa.select(Team.id).where(Team.slug == slug))


def role_of(app, slug, user_id):
    with app.app_context():
        return db.session.scalar(sa.select(TeamMember.role).join(Team, Team.id == TeamMember.team_id)
                                 .where(Team.slug == slug, TeamMember.user_id == user_id))


def invite_path(mail, addr, after=0) -> str:
    msg = mail.wait_for(addr, "invites you", after=after)
    url = link(msg)
    assert url.startswith("http://localhost/teams/join/"), url
    return urlsplit(url).path


def make_key(person, name="ci"):
    resp = person.forms.post("/keys/", {"name": name}, page="/keys/")
    assert resp.status_code == 200, resp.status_code
    page = text(resp)
    m = re.search(r"(rk_[A-Za-z0-9_-]{40})", page)
    assert m, "no secret on the page"
    return m.group(1)


@pytest.fixture
def people(app, users):
    def make(email, **kw):
        return Person(app, users, email, **kw)
    return make


# ---- create, invite, join ----------------------------------------------------------------

def test_P31_owner_creates_a_team_and_an_invited_account_joins_as_its_role(app, people, mail):
    owner, bob = people("olivia@example.com", name="Olivia"), people("bob@example.com", name="Bob")
    slug = owner.create_team("Acme Research")
    assert slug == "acme-research"
    assert role_of(app, slug, owner.id) == "owner"
    page = text(owner.get(f"/teams/{slug}/"))
    assert "Acme Research" in page and "Olivia" in page

    resp = owner.invite(slug, "Bob@Example.com", "admin")
    assert resp.status_code == 302
    path = invite_path(mail, "bob@example.com")
    # The invitation names the team and the role, and bob is a member only once he accepts.
    assert role_of(app, slug, bob.id) is None
    landing = text(bob.get(path))
    assert "Join Acme Research" in landing and "admin" in landing
    resp = bob.forms.post(path, {}, page=path)
    assert resp.status_code == 302 and role_of(app, slug, bob.id) == "admin"
    # Used once: the same link is refused afterwards.
    again = bob.get(path)
    assert again.status_code == 400 and "already used" in text(again)
    events = [e for (e,) in q(app, sa.select(AuditEvent.event).where(AuditEvent.team_id == team_id(app, slug)))]
    assert {"team:created", "team:invitation:sent", "team:member:joined"} <= set(events)
    activity = text(owner.get(f"/teams/{slug}/activity"))
    assert "joined the team" in activity and "sent an invitation" in activity


def test_P31_an_invitee_without_an_account_signs_up_through_the_link_and_joins_on_verification(app, people, mail):
    owner = people("olivia@example.com")
    slug = owner.create_team("Acme")
    owner.invite(slug, "newcomer@example.com")
    path = invite_path(mail, "newcomer@example.com")
    browser = app.test_client()
    landing = text(browser.get(path))
    assert "Create an account" in landing
    signup = text(browser.get("/signup?email=newcomer@example.com"))
    assert 'value="newcomer@example.com"' in signup
    forms = Forms(browser)
    resp = forms.post("/signup", {"email": "newcomer@example.com", "password": "correct horse battery",
                                  "age_ok": "y", "accept_policy": "y"})
    assert resp.status_code == 302
    with app.app_context():
        newcomer = db.session.scalar(sa.select(User.id).where(User.email_key == "newcomer@example.com"))
    assert role_of(app, slug, newcomer) is None  # not before the address is proven
    verify = urlsplit(link(mail.wait_for("newcomer@example.com", "Confirm"))).path
    resp = browser.get(verify, follow_redirects=True)
    assert "You joined Acme" in text(resp)
    assert role_of(app, slug, newcomer) == "member"


def test_P31_invitation_edge_cases_expired_withdrawn_resent_reused_and_wrong_account(app, people, mail):
    owner = people("olivia@example.com")
    carol, mallory = people("carol@example.com"), people("mallory@example.com")
    slug = owner.create_team("Acme")
    tid = team_id(app, slug)

    # Already invited: says so; already a member: says so.
    owner.invite(slug, "carol@example.com")
    first = invite_path(mail, "carol@example.com")
    again = owner.invite(slug, "carol@example.com")
    assert again.status_code == 400 and "already invited" in text(again)
    mine = owner.invite(slug, "olivia@example.com")
    assert mine.status_code == 400 and "already belongs to the team" in text(mine)

    # Another signed-in account cannot use carol's link.
    wrong = mallory.get(first)
    assert wrong.status_code == 403 and "sent to carol@example.com" in text(wrong)
    assert mallory.forms.client.post(first, data={}).status_code in (400, 403)
    assert role_of(app, slug, mallory.id) is None

    # Resend: a new link; the old one no longer works.
    with app.app_context():
        inv_id = db.session.scalar(sa.select(TeamInvitation.id).where(TeamInvitation.email_key == "carol@example.com"))
    n = len(mail.to("carol@example.com"))
    assert owner.post(f"/teams/{slug}/invitations/{inv_id}/resend", page=f"/teams/{slug}/").status_code == 302
    second = invite_path(mail, "carol@example.com", after=n)
    assert second != first
    assert "replaced by a newer one" in text(carol.get(first))

    # Expired.
    with app.app_context():
        db.session.execute(sa.update(TeamInvitation).where(TeamInvitation.id == inv_id)
                           .values(expires_at=utcnow() - timedelta(minutes=1)))
        db.session.commit()
    assert "expired" in text(carol.get(second))
    with app.app_context():
        db.session.execute(sa.update(TeamInvitation).where(TeamInvitation.id == inv_id)
                           .values(expires_at=utcnow() + timedelta(days=1)))
        db.session.commit()

    # Withdrawn.
    assert owner.post(f"/teams/{slug}/invitations/{inv_id}/withdraw", page=f"/teams/{slug}/").status_code == 302
    resp = carol.get(second)
    assert resp.status_code == 400 and "withdrawn" in text(resp)
    assert role_of(app, slug, carol.id) is None
    # A tampered link.
    assert "not valid" in text(carol.get(second[:-3] + "xyz"))
    assert tid


def test_P31_invitee_who_deletes_their_account_leaves_no_invitation_behind(app, people, mail):
    from app.services import deletion

    owner, dan = people("olivia@example.com"), people("dan@example.com")
    slug = owner.create_team("Acme")
    owner.invite(slug, "dan@example.com")
    path = invite_path(mail, "dan@example.com")
    with app.app_context():
        deletion.erase(dan.id)
        db.session.commit()
        left = db.session.scalar(sa.select(sa.func.count()).select_from(TeamInvitation)
                                 .where(TeamInvitation.email_key == "dan@example.com"))
    assert left == 0
    assert "no longer exists" in text(app.test_client().get(path))


def test_invitations_are_limited_per_team(app, people, mail, monkeypatch):
    from app.services import teams

    monkeypatch.setattr(teams, "MAX_PENDING_PER_TEAM", 2)
    owner = people("olivia@example.com")
    slug = owner.create_team("Acme")
    assert owner.invite(slug, "a@example.com").status_code == 302
    assert owner.invite(slug, "b@example.com").status_code == 302
    third = owner.invite(slug, "c@example.com")
    assert third.status_code == 400 and "invitations waiting" in text(third)


# ---- roles --------------------------------------------------------------------------------

def join(app, slug, user_id, role):
    with app.app_context():
        tid = db.session.scalar(sa.select(Team.id).where(Team.slug == slug))
        db.session.add(TeamMember(team_id=tid, user_id=user_id, role=role, joined_at=utcnow()))
        db.session.commit()
        return tid


def test_P31_roles_decide_who_may_do_what(app, people):
    owner = people("olivia@example.com")
    admin, member, outsider = people("adam@example.com"), people("mia@example.com"), people("oscar@example.com")
    slug = owner.create_team("Acme")
    join(app, slug, admin.id, "admin")
    join(app, slug, member.id, "member")
    with app.app_context():
        member_row = db.session.scalar(sa.select(TeamMember.id).where(TeamMember.user_id == member.id))
        owner_row = db.session.scalar(sa.select(TeamMember.id).where(TeamMember.user_id == owner.id))

    # Someone outside the team: 404 everywhere, so names and slugs leak nothing.
    for url in (f"/teams/{slug}/", f"/teams/{slug}/activity", f"/teams/{slug}/delete"):
        assert outsider.get(url).status_code == 404
    # A member sees the team but cannot invite, remove, see activity or change settings.
    assert member.get(f"/teams/{slug}/").status_code == 200
    assert member.get(f"/teams/{slug}/activity").status_code == 403
    assert member.invite(slug, "x@example.com").status_code == 403
    assert member.get(f"/teams/{slug}/members/{owner_row}/remove").status_code == 403
    # An admin invites and removes members, but cannot make an owner, remove one, or change roles.
    assert admin.invite(slug, "x@example.com").status_code == 302
    assert admin.invite(slug, "y@example.com", "owner").status_code in (400, 403)
    assert admin.get(f"/teams/{slug}/members/{owner_row}/remove").status_code == 403
    assert admin.post(f"/teams/{slug}/members/{member_row}/role", {"role": "admin"},
                      page=f"/teams/{slug}/").status_code == 403
    assert admin.get(f"/teams/{slug}/delete").status_code == 403
    # The owner changes roles.
    assert owner.post(f"/teams/{slug}/members/{member_row}/role", {"role": "admin"},
                      page=f"/teams/{slug}/").status_code == 302
    assert role_of(app, slug, member.id) == "admin"


def test_P31_a_team_always_keeps_an_owner(app, people):
    owner, other = people("olivia@example.com"), people("otto@example.com")
    slug = owner.create_team("Acme")
    join(app, slug, other.id, "member")
    with app.app_context():
        owner_row = db.session.scalar(sa.select(TeamMember.id).where(TeamMember.user_id == owner.id))
    # The only owner cannot demote themselves...
    resp = owner.post(f"/teams/{slug}/members/{owner_row}/role", {"role": "member"}, page=f"/teams/{slug}/")
    assert "at least one owner" in text(owner.get(resp.headers["Location"]))
    assert role_of(app, slug, owner.id) == "owner"
    # ...cannot leave...
    leave = text(owner.get(f"/teams/{slug}/leave"))
    assert "only owner" in leave
    owner.post(f"/teams/{slug}/leave", page=f"/teams/{slug}/leave")
    assert role_of(app, slug, owner.id) == "owner"
    # ...and cannot delete their account: the deletion flow says so.
    page = text(owner.get("/privacy-center/delete/"))
    assert "only owner of" in page and "Acme" in page
    with app.app_context():
        from app.services import ServiceError, deletion
        with pytest.raises(ServiceError, match="only owner"):
            deletion.request_deletion(db.session.get(User, owner.id), owner.id)
        db.session.rollback()
    # With a second owner, the first may step down and leave.
    with app.app_context():
        db.session.execute(sa.update(TeamMember).where(TeamMember.user_id == other.id).values(role="owner"))
        db.session.commit()
    assert owner.post(f"/teams/{slug}/leave", page=f"/teams/{slug}/leave").status_code == 302
    assert role_of(app, slug, owner.id) is None


# ---- team keys (P12) ---------------------------------------------------------------------

def test_P12_team_keys_are_attributed_to_team_and_maker_and_revoked_when_the_maker_is_removed(app, people):
    owner, admin, member = people("olivia@example.com"), people("adam@example.com"), people("mia@example.com")
    slug = owner.create_team("Acme")
    tid = join(app, slug, admin.id, "admin")
    join(app, slug, member.id, "member")

    personal = make_key(member, "personal one")  # before switching: a personal key
    admin.switch(tid)
    make_key(admin, "team ci")
    member.switch(tid)
    # Members make team keys only when the team allows it.
    refused = member.forms.post("/keys/", {"name": "mine"}, page="/keys/")
    assert refused.status_code == 403 and "owners and admins make the team's keys" in text(refused)
    owner.post(f"/teams/{slug}/settings", {"name": "Acme", "members_make_keys": "y"}, page=f"/teams/{slug}/")
    make_key(member, "member laptop")
    rows = {name: (t, u) for name, t, u in q(app, sa.select(ApiKey.name, ApiKey.team_id, ApiKey.user_id))}
    assert rows["team ci"] == (tid, admin.id)
    assert rows["member laptop"] == (tid, member.id)
    assert rows["personal one"] == (None, member.id)

    # The owner's team keys page lists every team key with its maker; the member sees only their own.
    owner.switch(tid)
    owner_keys = text(owner.get("/keys/"))
    assert "team ci" in owner_keys and "member laptop" in owner_keys and "personal one" not in owner_keys
    member_keys = text(member.get("/keys/"))
    assert "member laptop" in member_keys and "team ci" not in member_keys and "personal one" not in member_keys
    member.switch(None)
    assert "personal one" in text(member.get("/keys/"))

    # Removing the member says which keys stop, then revokes them (not the personal one).
    with app.app_context():
        row = db.session.scalar(sa.select(TeamMember.id).where(TeamMember.user_id == member.id))
    confirm = text(owner.get(f"/teams/{slug}/members/{row}/remove"))
    assert "member laptop" in confirm and "stops working" in confirm
    assert owner.post(f"/teams/{slug}/members/{row}/remove", page=f"/teams/{slug}/members/{row}/remove"
                      ).status_code == 302
    states = {name: revoked for name, revoked in q(app, sa.select(ApiKey.name, ApiKey.revoked_at))}
    assert states["member laptop"] is not None and states["personal one"] is None and states["team ci"] is None
    # The removed member's context falls back to personal.
    member.switch(tid)
    assert "personal one" in text(member.get("/keys/"))
    assert personal


def test_P12_deleting_a_team_revokes_its_keys_and_keeps_its_usage(app, people):
    owner = people("olivia@example.com")
    slug = owner.create_team("Acme")
    tid = team_id(app, slug)
    owner.switch(tid)
    make_key(owner, "team ci")
    with app.app_context():
        key = db.session.scalar(sa.select(ApiKey).where(ApiKey.name == "team ci"))
        now = utcnow()
        db.session.add(UsageRecord(request_id="req_team_1", user_id=owner.id, team_id=tid, api_key_id=key.id,
                                   started_at=now, ended_at=now, model="m", latency_ms=5, status_code=200,
                                   usage_source="provider", cost_usd=0))
        db.session.commit()
    page = text(owner.get(f"/teams/{slug}/delete"))
    assert "1 team key stops working" in page
    wrong = owner.post(f"/teams/{slug}/delete", {"confirm_name": "Acme!"}, page=f"/teams/{slug}/delete")
    assert wrong.status_code == 400 and "exactly" in text(wrong)
    assert owner.post(f"/teams/{slug}/delete", {"confirm_name": "Acme"}, page=f"/teams/{slug}/delete"
                      ).status_code == 302
    assert team_id(app, slug) is None
    assert q(app, sa.select(ApiKey.revoked_at))[0][0] is not None
    assert q(app, sa.select(UsageRecord.team_id))[0][0] == tid
    assert owner.get(f"/teams/{slug}/").status_code == 404


def test_team_slugs_are_unique_and_validated(app, people):
    owner = people("olivia@example.com")
    assert owner.create_team("Acme") == "acme"
    assert owner.create_team("Acme") == "acme-2"
    taken = owner.post("/teams/", {"name": "Other", "slug": "acme"})
    assert taken.status_code == 400 and "is taken" in text(taken)
    bad = owner.post("/teams/", {"name": "Other", "slug": "-Bad Slug"})
    assert bad.status_code == 400 and "lower-case letters" in text(bad)
    empty = owner.post("/teams/", {"name": "  "})
    assert empty.status_code == 400 and "Give the team a name" in text(empty)


# ---- the privacy center covers team data -----------------------------------------------

def test_P31_export_and_what_we_keep_cover_team_data_and_erasure_keeps_the_teams_rows(app, people):
    import io
    import json
    import zipfile

    from app.services import deletion, exports

    owner, member = people("olivia@example.com"), people("mia@example.com")
    slug = owner.create_team("Acme")
    tid = join(app, slug, member.id, "admin")
    member.switch(tid)
    make_key(member, "team laptop")
    with app.app_context():
        key_id = db.session.scalar(sa.select(ApiKey.id).where(ApiKey.name == "team laptop"))
        now = utcnow()
        for i, team in enumerate((tid, None)):
            db.session.add(UsageRecord(request_id=f"req_{i}", user_id=member.id, team_id=team, api_key_id=key_id,
                                       started_at=now, ended_at=now, model="m", latency_ms=5, status_code=200,
                                       usage_source="provider", cost_usd=0, project="proj"))
        db.session.commit()
        user = db.session.get(User, member.id)
        files = dict((n, z) for n, z in ((n, zipfile.ZipFile(io.BytesIO(b"".join(exports.iter_zip(user))))
                                         .read(n)) for n in ("team_memberships.json", "api_keys.json")))
    (membership,) = json.loads(files["team_memberships.json"])
    assert (membership["team_name"], membership["role"], membership["team_id"]) == ("Acme", "admin", tid)
    (key,) = json.loads(files["api_keys.json"])
    assert key["team_id"] == tid
    keep = text(member.get("/privacy-center/data"))
    assert "Teams" in keep and "1 team key" in keep

    with app.app_context():
        deletion.erase(member.id)
        db.session.commit()
        rows = sorted(db.session.execute(sa.select(UsageRecord.request_id, UsageRecord.team_id, UsageRecord.user_id,
                                                   UsageRecord.api_key_id, UsageRecord.project)).all())
    # The team's row stays with the team, the member anonymized; the personal row loses everything.
    assert rows == [("req_0", tid, None, None, None), ("req_1", None, None, None, None)]
    assert role_of(app, slug, member.id) is None


# ---- anything a person types --------------------------------------------------------------

def test_what_an_owner_types_into_team_forms_never_gives_a_5xx_or_reaches_a_log(app, people, caplog):
    """Hypothesis: team names, addresses, invited emails, roles and the delete
    confirmation, as an owner of a real team; never a 5xx, never in a log line."""
    import logging

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    owner = people("olivia@example.com")
    slug = owner.create_team("Acme")
    token = owner.forms.token(f"/teams/{slug}/")
    typed = st.text(max_size=120) | st.sampled_from(["", " ", "a" * 500, "-", "x@y", "\u202e", "Acme", "owner"])
    caplog.set_level(logging.DEBUG)

    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
    @given(name=typed, slug_typed=typed, email=typed, role=typed)
    def run(name, slug_typed, email, role):
        canary = "zq9canary"
        for url, data in (("/teams/", {"name": name + canary, "slug": slug_typed}),
                          (f"/teams/{slug}/invitations", {"email": email + canary, "role": role}),
                          (f"/teams/{slug}/settings", {"name": name + canary}),
                          (f"/teams/{slug}/delete", {"confirm_name": name + canary})):
            resp = owner.client.post(url, data={"csrf_token": token, **data})
            assert resp.status_code < 500, (url, data)
        assert canary not in caplog.text

    run()


def test_ended_invitations_are_deleted_after_thirty_days(app, people, mail):
    """The address in an invitation may belong to nobody here: the retention job
    removes it 30 days after the invitation ended, never while it is pending."""
    from app import jobs

    owner = people("olivia@example.com")
    slug = owner.create_team("Acme")
    for email in ("old@example.com", "recent@example.com", "pending@example.com"):
        owner.invite(slug, email)
    with app.app_context():
        now = utcnow()
        db.session.execute(sa.update(TeamInvitation).where(TeamInvitation.email_key == "old@example.com")
                           .values(withdrawn_at=now - timedelta(days=31)))
        db.session.execute(sa.update(TeamInvitation).where(TeamInvitation.email_key == "recent@example.com")
                           .values(withdrawn_at=now - timedelta(days=29)))
        db.session.commit()
        assert jobs.run_all(app)["invitations_pruned"] == 1
        left = set(db.session.scalars(sa.select(TeamInvitation.email_key)))
    assert left == {"recent@example.com", "pending@example.com"}


def test_an_inviters_name_with_a_line_break_cannot_break_the_invitation_mail(app, people, mail):
    owner = people("olivia@example.com", name="Olivia\r\nBcc: everyone@example.com")
    slug = owner.create_team("Acme")
    assert owner.invite(slug, "bob@example.com").status_code == 302
    msg = mail.wait_for("bob@example.com", "invites you")
    assert msg["Subject"] == "Olivia Bcc: everyone@example.com invites you to Acme"
    assert msg["Bcc"] is None and not mail.to("everyone@example.com")
