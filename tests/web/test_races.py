"""Invariants that two requests can race, raced for real: two clicks at once
as threads of one process (the test client), and as two server processes of
one deployment (tests/served.py, each as `make run` serves it) behind which
one browser's requests land on either, on SQLite and on PostgreSQL.

- an incident's notices (P63): one notice, one mail per person, however many
  clicks on "Send notices";
- one export in flight per person (P51);
- key rotation (P10): two rotations of one key leave exactly one working
  secret, and no response shows a secret that does not work.

(The audit chain has its own file, test_audit_concurrency.py; the usage
writer is raced in tests/relay/.)
"""
from __future__ import annotations

import re

import pytest
import sqlalchemy as sa

from app.extensions import db
from app.models import (
    ApiKey,
    AuditEvent,
    DataExport,
    IncidentNotice,
    OutboxMessage,
    User,
)
from app.models.types import utcnow
from app.services import exports, incidents, keys
from tests.conftest import Forms
from tests.served import Served
from tests.web.real_http import Browser, at_once

EMAIL = "ada@example.com"
STAFF = "staff@example.com"
PEOPLE = [f"p{i:02d}@example.com" for i in range(40)]
KEY_RE = re.compile(r'id="new-key"[^>]*>(rk_[A-Za-z0-9_-]{40})<')


@pytest.fixture(scope="module")
def servers(database_url, smtp, tmp_path_factory):
    """Two server processes on the suite's database, one worker each, so two
    requests sent to them are certainly handled by two processes."""
    env = {"RATELIMIT_AUTH": "1000 per minute", "RATELIMIT_EXPORT_REQUEST": "1000 per day",
           "MAIL_TRANSPORT": "smtp", "SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(smtp.port)}
    started = []
    try:
        for name in ("a", "b"):
            started.append(Served(database_url, tmp_path_factory.mktemp(f"served-{name}"), workers=1,
                                  **env).start())
        yield started
    finally:
        for server in started:
            server.stop()


def count(app, model, *where) -> int:
    with app.app_context():
        return db.session.scalar(sa.select(sa.func.count()).select_from(model).where(*where)) or 0


def same_browser_in_threads(app, client):
    """A function making clients that carry `client`'s cookie as it is now
    (so after the page that gave the CSRF token): one browser's clicks
    arriving on several threads."""
    cookie = client.get_cookie("session").value

    def make():
        c = app.test_client()
        c.set_cookie("session", cookie)
        return c
    return make


# ---- incident notices (P63) -----------------------------------------------------------

@pytest.fixture
def incident(app, users):
    """An incident affecting 40 people and the staff member, recorded, not yet sent."""
    for addr in PEOPLE:
        users.create(addr)
    staff = users.create(STAFF, staff=True)
    with app.app_context(), app.test_request_context():
        inc = incidents.record(db.session.get(User, staff), title="Leaked log", description="A log was readable.",
                               confirmed_at=utcnow(), scope=incidents.Scope("all"),
                               notice_subject="Security notice about your account",
                               notice_body="Your address was in a log file.")
        db.session.commit()
        return inc.id


def assert_one_notice_each(app, mail, inc_id: int) -> None:
    with app.app_context():
        per_addr = dict(db.session.execute(
            sa.select(OutboxMessage.to_addr, sa.func.count()).where(OutboxMessage.kind == "incident_notice")
            .group_by(OutboxMessage.to_addr)).all())
        linked = db.session.scalar(sa.select(sa.func.count(sa.distinct(IncidentNotice.outbox_message_id)))
                                   .where(IncidentNotice.incident_id == inc_id))
    assert per_addr == {addr: 1 for addr in [*PEOPLE, STAFF]}, "someone's notice was queued twice"
    assert linked == len(PEOPLE) + 1
    mail.deliver()
    for addr in PEOPLE:
        assert [m["Subject"] for m in mail.mailbox.to(addr)] == ["Security notice about your account"]
    for event in ("incident:notices:started", "incident:notices:queued"):
        assert count(app, AuditEvent, AuditEvent.event == event) == 1, event


@pytest.mark.promise("P63")
def test_a_double_click_on_send_queues_each_notice_once(app, client, login, incident, mail):
    login(STAFF)
    page = f"/staff/incidents/{incident}"
    token = Forms(client).token(page)
    browser = same_browser_in_threads(app, client)

    def click():
        return browser().post(f"{page}/notify", data={"csrf_token": token}).status_code

    assert at_once(click, click, click) == [302, 302, 302]
    assert_one_notice_each(app, mail, incident)


@pytest.mark.promise("P63")
def test_two_server_processes_sending_at_once_queue_each_notice_once(app, users, incident, servers, mail):
    a, b = servers
    staff = Browser(a.url)
    staff.login(STAFF, users.password)
    page = f"/staff/incidents/{incident}"
    token = staff.token(page)
    other = staff.on(b.url)
    res = at_once(lambda: staff.post(f"{page}/notify", token=token), lambda: other.post(f"{page}/notify", token=token))
    assert [r.status for r in res] == [302, 302]
    assert_one_notice_each(app, mail, incident)
    assert "all 41 sent within 72 hours" in staff.get(page).text


# ---- one export in flight (P51) -------------------------------------------------------

def exports_of(app, uid: int) -> list[str]:
    with app.app_context():
        return list(db.session.scalars(sa.select(DataExport.status).where(DataExport.user_id == uid)))


@pytest.mark.promise("P51")
def test_export_requests_on_many_threads_at_once_leave_one_export(app, client, users, login):
    uid = users.create(EMAIL)
    login(EMAIL)
    token = Forms(client).token("/privacy-center/export/")
    browser = same_browser_in_threads(app, client)

    def click():
        return browser().post("/privacy-center/export/", data={"csrf_token": token}).status_code

    assert at_once(*[click] * 4) == [302] * 4
    assert exports_of(app, uid) == ["queued"]
    assert client.get("/privacy-center/export/").get_data(as_text=True).count(">Waiting to start</span>") == 1


@pytest.mark.promise("P51")
def test_export_requests_at_once_on_two_server_processes_leave_one_export(app, users, servers):
    uid = users.create(EMAIL)
    a, b = servers
    person = Browser(a.url)
    person.login(EMAIL, users.password)
    token = person.token("/privacy-center/export/")
    other = person.on(b.url)
    res = at_once(*[lambda br=br: br.post("/privacy-center/export/", token=token) for br in (person, other) * 2])
    assert [r.status for r in res] == [302] * 4
    assert exports_of(app, uid) == ["queued"]
    assert other.get("/privacy-center/export/").text.count(">Waiting to start</span>") == 1


@pytest.mark.promise("P51", "P55")
def test_an_export_request_is_part_of_its_callers_transaction(app, users):
    """The staff "carry out" path requests the export, then records its own
    audit row and commits; if it fails and rolls back, no export may be left
    behind without its audit trail (on SQLite a savepoint that opened the
    transaction used to commit it on release)."""
    uid = users.create(EMAIL)
    with app.app_context():
        exports.request_export(db.session.get(User, uid), "staff")
        db.session.rollback()
    assert exports_of(app, uid) == []
    assert count(app, AuditEvent, AuditEvent.event == "privacy:export:requested") == 0


# ---- key rotation (P10) ---------------------------------------------------------------

def a_key(app, users, n: int = 1) -> tuple[list[int], str]:
    """`n` keys of one person; the ids and the first key's secret."""
    uid = users.create(EMAIL)
    with app.app_context():
        made = [keys.create(db.session.get(User, uid), f"ci runner {i}") for i in range(n)]
        db.session.commit()
        return [k.id for k, _ in made], made[0][1]


def stored_secret(app, key_id: int) -> str | None:
    """What "reveal" would open: the secret in the key's envelope, if any."""
    from app.services.crypto import envelope_decrypt

    with app.app_context():
        key = db.session.get(ApiKey, key_id)
        if key.secret_ciphertext is None:
            return None
        return envelope_decrypt(key.secret_ciphertext, key.wrapped_data_key, f"api_key:{key.id}")


def check_rotations(app, key_id: int, old: str, results: list[tuple[int, str]], works) -> None:
    """After rotations racing each other: the old secret is dead, exactly one
    secret works, it is one a response showed, it is the one in the key's
    envelope, and every secret shown is a rotation the audit log records
    (a later one replaced it), never one that silently lost."""
    assert all(status in (200, 302) for status, _ in results), [status for status, _ in results]
    shown = [s for _, page in results for s in KEY_RE.findall(page)]
    assert shown and not works(old)
    working = [s for s in shown if works(s)]
    assert len(working) == 1, f"{len(working)} of the {len(shown)} secrets shown work"
    assert stored_secret(app, key_id) == working[0], "the envelope holds another secret than the one that works"
    assert count(app, AuditEvent, AuditEvent.event == "account:api_key:rotated") == len(shown)


@pytest.mark.promise("P10")
def test_two_rotations_at_once_leave_one_working_secret(app, client, users, login):
    [key_id], old = a_key(app, users)
    login(EMAIL)
    url = f"/keys/{key_id}/rotate"
    token = Forms(client).token(url)
    browser = same_browser_in_threads(app, client)

    def rotate():
        resp = browser().post(url, data={"csrf_token": token})
        return resp.status_code, resp.get_data(as_text=True)

    def works(raw: str) -> bool:
        return client.get("/v1/models", headers={"Authorization": f"Bearer {raw}"}).status_code == 200

    check_rotations(app, key_id, old, at_once(rotate, rotate), works)


def works_everywhere(browsers):
    def works(raw: str) -> bool:
        # Both processes must agree, whichever one the SDK's next request reaches.
        answers = {br.get("/v1/models", headers={"Authorization": f"Bearer {raw}"}).status for br in browsers}
        assert len(answers) == 1, answers
        return answers == {200}
    return works


@pytest.mark.promise("P10")
def test_two_rotations_at_once_on_two_server_processes_leave_one_working_secret(app, users, servers):
    [key_id], old = a_key(app, users)
    a, b = servers
    person = Browser(a.url)
    person.login(EMAIL, users.password)
    url = f"/keys/{key_id}/rotate"
    token = person.token(url)
    other = person.on(b.url)
    res = at_once(lambda: person.post(url, token=token), lambda: other.post(url, token=token))
    check_rotations(app, key_id, old, [(r.status, r.text) for r in res], works_everywhere((person, other)))


@pytest.mark.promise("P10", "P53")
def test_a_rotation_racing_a_revoke_never_shows_a_dead_secret_or_refills_the_envelope(app, client, users, login,
                                                                                     monkeypatch):
    """The rotation is held after it read the key until the revoke has
    committed: the interleaving two processes produce by chance, made certain."""
    import threading

    [key_id], old = a_key(app, users)
    login(EMAIL)
    rotate_url, revoke_url = f"/keys/{key_id}/rotate", f"/keys/{key_id}/revoke"
    rotate_token, revoke_token = Forms(client).token(rotate_url), Forms(client).token(revoke_url)
    browser = same_browser_in_threads(app, client)
    revoked, reading = threading.Event(), threading.Event()
    new_secret = keys._new_secret

    def held_new_secret():
        reading.set()
        assert revoked.wait(10)
        return new_secret()

    monkeypatch.setattr(keys, "_new_secret", held_new_secret)

    def rotate():
        resp = browser().post(rotate_url, data={"csrf_token": rotate_token})
        return resp.status_code, resp.get_data(as_text=True)

    def revoke():
        assert reading.wait(10)
        status = browser().post(revoke_url, data={"csrf_token": revoke_token}).status_code
        revoked.set()
        return status, ""

    (rot_status, rot_page), (rev_status, _) = at_once(rotate, revoke)
    assert rev_status == 302
    with app.app_context():
        key = db.session.get(ApiKey, key_id)
        assert key.revoked_at is not None
        assert key.secret_ciphertext is None and key.wrapped_data_key is None, "a revoked key's envelope was refilled"
    assert not KEY_RE.findall(rot_page), "the rotation showed a secret for a key revoked before it was stored"
    assert rot_status == 302


# ---- a team always keeps an owner (P31) --------------------------------------------------

def two_owner_team(app, users):
    from app.models import Team, TeamMember

    a, b = users.create("owner-a@example.com"), users.create("owner-b@example.com")
    with app.app_context():
        team = Team(name="Race", slug="race", created_at=utcnow())
        db.session.add(team)
        db.session.flush()
        for uid in (a, b):
            db.session.add(TeamMember(team_id=team.id, user_id=uid, role="owner", joined_at=utcnow()))
        db.session.commit()
        return team.id


def owners_left(app, team_id: int) -> int:
    from app.models import TeamMember

    return count(app, TeamMember, TeamMember.team_id == team_id, TeamMember.role == "owner")


@pytest.mark.promise("P31")
def test_two_owners_leaving_at_once_leave_one_owner(app, users):
    team_id = two_owner_team(app, users)
    clients = []
    for email in ("owner-a@example.com", "owner-b@example.com"):
        c = app.test_client()
        f = Forms(c)
        assert f.post("/login", {"email": email, "password": users.password}).status_code == 302
        clients.append((c, f.token("/teams/race/leave")))
    res = at_once(*[lambda c=c, t=t: c.post("/teams/race/leave", data={"csrf_token": t}).status_code
                    for c, t in clients])
    # One left; the other is told they are now the only owner (the page again, or back to the team).
    assert sorted(res) in ([200, 302], [302, 302])
    assert owners_left(app, team_id) == 1


@pytest.mark.promise("P31")
def test_two_owners_stepping_down_at_once_on_two_server_processes_leave_one_owner(app, users, servers):
    from app.models import TeamMember

    team_id = two_owner_team(app, users)
    with app.app_context():
        rows = dict(db.session.execute(sa.select(TeamMember.user_id, TeamMember.id)).all())
        ids = {db.session.scalar(sa.select(User.email).where(User.id == uid)): mid for uid, mid in rows.items()}
    calls = []
    for email, server in zip(("owner-a@example.com", "owner-b@example.com"), servers, strict=True):
        person = Browser(server.url)
        person.login(email, users.password)
        token = person.token("/teams/race/")
        calls.append(lambda p=person, t=token, m=ids[email]: p.post(f"/teams/race/members/{m}/role",
                                                                   {"role": "member"}, token=t).status)
    assert at_once(*calls) == [302, 302]
    assert owners_left(app, team_id) == 1


def invitation_for(app, users, mail):
    """A team with an invitation to EMAIL (an account); returns (team id, the link's path)."""
    from urllib.parse import urlsplit

    from app.models import Team, TeamMember
    from app.services import teams
    from tests.fakes.smtp import link

    owner = users.create("owner-a@example.com")
    users.create(EMAIL)
    with app.app_context():
        team = Team(name="Race", slug="race", created_at=utcnow())
        db.session.add(team)
        db.session.flush()
        db.session.add(TeamMember(team_id=team.id, user_id=owner, role="owner", joined_at=utcnow()))
        db.session.flush()
        teams.invite(db.session.get(User, owner), team, EMAIL, "admin")
        db.session.commit()
        team_id = team.id
    return team_id, urlsplit(link(mail.wait_for(EMAIL, "invites you"))).path


def joined(app, team_id):
    from app.models import TeamMember

    return (count(app, TeamMember, TeamMember.team_id == team_id),
            count(app, AuditEvent, AuditEvent.event == "team:member:joined"))


@pytest.mark.promise("P31")
def test_an_invitation_accepted_in_two_tabs_at_once_joins_once(app, client, users, login, mail):
    team_id, path = invitation_for(app, users, mail)
    login(EMAIL)
    token = Forms(client).token(path)
    browser = same_browser_in_threads(app, client)
    res = at_once(*[lambda: browser().post(path, data={"csrf_token": token}).status_code] * 4)
    assert res.count(302) == 1 and all(s in (302, 400) for s in res)  # the others: "already used"
    assert joined(app, team_id) == (2, 1)


@pytest.mark.promise("P31")
def test_an_invitation_accepted_at_once_on_two_server_processes_joins_once(app, users, mail, servers):
    team_id, path = invitation_for(app, users, mail)
    a, b = servers
    person = Browser(a.url)
    person.login(EMAIL, users.password)
    token = person.token(path)
    other = person.on(b.url)
    res = at_once(*[lambda br=br: br.post(path, token=token).status for br in (person, other) * 2])
    assert res.count(302) == 1 and all(s in (302, 400) for s in res)
    assert joined(app, team_id) == (2, 1)
