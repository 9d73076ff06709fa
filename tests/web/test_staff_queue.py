"""The privacy staff area through the test client (P53, P54, P55): the request
queue, filing an emailed request, verification by link or by staff check,
extension, carrying requests out, closing, and the audit page with the chain.
Real forms with CSRF, real SMTP on loopback, the real database."""
from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest
import sqlalchemy as sa

from app.extensions import db
from app.models import ApiKey, AuditEvent, PrivacyRequest, User
from app.models.types import utcnow
from tests.conftest import Forms
from tests.fakes.smtp import body, link

STAFF = "grace@example.com"
PERSON = "ada@example.com"


def text(resp) -> str:
    return resp.get_data(as_text=True)


@pytest.fixture
def people(app, users):
    """A staff member and a person, each with their own logged-in client."""
    class People:
        person_id = users.create(email=PERSON, name="Ada", company="Engines Ltd")
        staff_id = users.create(email=STAFF, staff=True)
        staff = app.test_client()
        person = app.test_client()

    p = People()
    for client, email in ((p.staff, STAFF), (p.person, PERSON)):
        resp = Forms(client).post("/login", {"email": email, "password": users.password})
        assert resp.status_code == 302
    p.staff_forms = Forms(p.staff)
    return p


def add_request(app, user_id, kind="export", channel="portal", received_days_ago=0, verified=False, **fields):
    """A request row written directly, with a controlled receipt date."""
    with app.app_context():
        received = utcnow() - timedelta(days=received_days_ago)
        req = PrivacyRequest(user_id=user_id, kind=kind, channel=channel, status=fields.pop("status", "open"),
                             received_at=received, due_at=received + timedelta(days=30),
                             verified_at=utcnow() if verified else None,
                             verification_method="staff_check" if verified else None, **fields)
        db.session.add(req)
        db.session.commit()
        return req.id


def get_request(app, req_id) -> PrivacyRequest:
    with app.app_context():
        req = db.session.get(PrivacyRequest, req_id)
        db.session.expunge(req)
        return req


def audit_rows(app) -> list[AuditEvent]:
    with app.app_context():
        rows = list(db.session.scalars(sa.select(AuditEvent).order_by(AuditEvent.id)))
        db.session.expunge_all()
        return rows


def post(people, url, data=None, page=None):
    """POST a staff form with the CSRF token of the page it lives on."""
    return people.staff_forms.post(url, data or {}, page=page or "/staff/requests/new")


def add_key(app, user_id, name="k"):
    with app.app_context():
        key = ApiKey(user_id=user_id, name=name, prefix="rk_test", last4=name[-4:].rjust(4, "x"),
                     lookup_hash=f"{user_id}-{name}".ljust(64, "0"))
        db.session.add(key)
        db.session.commit()
        return key.id


# ---- access --------------------------------------------------------------------------

NEW_PAGES = ["/staff/requests", "/staff/requests/new", "/staff/requests/{id}", "/staff/audit",
             "/staff/requests/{id}/carry-out", "/staff/requests/{id}/lift"]
NEW_POSTS = ["/staff/requests/new", "/staff/requests/{id}/verify/link", "/staff/requests/{id}/verify/check",
             "/staff/requests/{id}/extend", "/staff/requests/{id}/close", "/staff/requests/{id}/carry-out"]


@pytest.mark.promise("P54")
def test_every_staff_page_is_for_staff_only(app, people):
    req_id = add_request(app, people.person_id)
    token = Forms(people.person).token("/account/")
    for url in NEW_PAGES:
        assert people.person.get(url.format(id=req_id)).status_code == 403, url
    for url in NEW_POSTS:
        assert people.person.post(url.format(id=req_id), data={"csrf_token": token}).status_code == 403, url
    anonymous = app.test_client()
    resp = anonymous.get("/staff/requests")
    assert resp.status_code == 302 and "/login" in resp.headers["Location"]
    assert people.staff.get("/staff/requests").status_code == 200
    assert people.staff.get("/staff/requests/999999").status_code == 404


# ---- filing an emailed request ---------------------------------------------------------

@pytest.mark.promise("P54")
def test_file_an_emailed_request(app, people):
    today = utcnow().date()
    resp = post(people, "/staff/requests/new", {"email": " ADA@example.com ", "kind": "access", "channel": "email",
                                                "received": (today - timedelta(days=3)).isoformat(),
                                                "details": "Please send me everything you have."})
    assert resp.status_code == 302, text(resp)[:2000]
    req_id = int(resp.headers["Location"].rsplit("/", 1)[1])
    req = get_request(app, req_id)
    assert (req.user_id, req.kind, req.channel, req.status) == (people.person_id, "access", "email", "open")
    assert req.received_at.date() == today - timedelta(days=3)
    assert req.due_at - req.received_at == timedelta(days=30)
    assert req.filed_by_id == people.staff_id and req.verified_at is None
    opened = [r for r in audit_rows(app) if r.event == "privacy:request:opened"]
    assert opened[-1].actor_id == people.staff_id and opened[-1].subject_id == people.person_id

    page = text(people.staff.get(resp.headers["Location"]))
    assert f"Request #{req_id}" in page and "Please send me everything you have." in page
    assert (req.received_at + timedelta(days=30)).strftime("%Y-%m-%d") in page


@pytest.mark.promise("P54")
def test_filing_received_today_is_due_in_thirty_days(app, people):
    resp = post(people, "/staff/requests/new", {"email": PERSON, "kind": "delete", "channel": "email",
                                                "received": utcnow().date().isoformat()})
    req = get_request(app, int(resp.headers["Location"].rsplit("/", 1)[1]))
    assert req.due_at - req.received_at == timedelta(days=30)
    assert abs((req.received_at - utcnow()).total_seconds()) < 60


@pytest.mark.promise("P54")
def test_filing_errors_are_shown_on_the_form(app, people):
    def attempt(**over):
        data = {"email": PERSON, "kind": "export", "channel": "email", "received": utcnow().date().isoformat(),
                **over}
        resp = post(people, "/staff/requests/new", data)
        assert resp.status_code == 200
        return text(resp)

    assert "No account uses this address" in attempt(email="nobody@example.com")
    assert "Enter a valid email address" in attempt(email="not an address")
    assert "cannot be in the future" in attempt(received=(utcnow().date() + timedelta(days=2)).isoformat())
    assert "Enter the date received as YYYY-MM-DD" in attempt(received="yesterday")
    assert "Choose what kind of request this is." in attempt(kind="")
    assert 'aria-invalid="true"' in attempt(email="nobody@example.com")
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count(PrivacyRequest.id))) == 0


# ---- the queue -------------------------------------------------------------------------

def row_ids(html: str) -> list[int]:
    return [int(i) for i in re.findall(r'<tr id="request-(\d+)"', html)]


@pytest.mark.promise("P54")
def test_queue_sorts_by_due_date_and_marks_overdue(app, people):
    late = add_request(app, people.person_id, kind="delete", received_days_ago=31)
    soon = add_request(app, people.person_id, kind="access", received_days_ago=20)
    fresh = add_request(app, people.person_id, kind="export", received_days_ago=0)
    html = text(people.staff.get("/staff/requests"))
    assert row_ids(html) == [late, soon, fresh]
    late_row = re.search(rf'<tr id="request-{late}" class="([^"]+)">(.*?)</tr>', html, re.S)
    assert "overdue" in late_row.group(1).split() and "Overdue" in late_row.group(2)
    soon_row = re.search(rf'<tr id="request-{soon}" class="([^"]+)">(.*?)</tr>', html, re.S)
    assert "overdue" not in soon_row.group(1) and "Overdue" not in soon_row.group(2)
    assert PERSON in html and f"(account {people.person_id})" in html

    assert row_ids(text(people.staff.get("/staff/requests?sort=received"))) == [fresh, soon, late]
    assert row_ids(text(people.staff.get("/staff/requests?overdue=1"))) == [late]

    dashboard = text(people.staff.get("/staff/"))
    assert re.search(r"<strong>3</strong> open requests", dashboard)
    assert "1 overdue" in dashboard and 'href="/staff/requests"' in dashboard


@pytest.mark.promise("P54")
def test_queue_filters_and_empty_state(app, people):
    assert "No open requests" in text(people.staff.get("/staff/requests"))
    a = add_request(app, people.person_id, kind="restrict", channel="email")
    b = add_request(app, people.person_id, kind="object", channel="portal")
    c = add_request(app, people.person_id, kind="restrict", channel="portal", status="closed", outcome="done")
    d = add_request(app, people.person_id, kind="export", channel="api", status="cancelled")
    get = lambda q: row_ids(text(people.staff.get("/staff/requests" + q)))  # noqa: E731
    assert sorted(get("")) == [a, b]
    assert get("?kind=restrict") == [a]
    assert get("?channel=portal") == [b]
    assert get("?status=closed") == [c]
    assert get("?status=cancelled") == [d]
    assert sorted(get("?status=all")) == [a, b, c, d]
    assert get("?status=all&kind=restrict&channel=portal") == [c]
    assert "No requests match these filters" in text(people.staff.get("/staff/requests?kind=delete"))
    # Nonsense in the query string falls back to defaults instead of failing.
    assert people.staff.get("/staff/requests?status=x&kind=y&sort=z&page=abc").status_code == 200


@pytest.mark.promise("P54")
def test_queue_is_paginated(app, people):
    ids = [add_request(app, people.person_id, received_days_ago=n % 28) for n in range(27)]
    first = row_ids(text(people.staff.get("/staff/requests")))
    second = row_ids(text(people.staff.get("/staff/requests?page=2")))
    assert len(first) == 25 and len(second) == 2
    assert sorted(first + second) == sorted(ids)
    assert row_ids(text(people.staff.get("/staff/requests?page=99"))) == second


# ---- the detail page is a logged view of the person (P55) ------------------------------

@pytest.mark.promise("P55")
def test_opening_a_request_is_a_logged_view_of_the_person(app, people):
    req_id = add_request(app, people.person_id, kind="access")
    add_key(app, people.person_id)
    before = len([r for r in audit_rows(app) if r.event == "staff:viewed:person"])
    page = text(people.staff.get(f"/staff/requests/{req_id}"))
    assert PERSON in page and "Engines Ltd" in page and "1 active" in page
    views = [r for r in audit_rows(app) if r.event == "staff:viewed:person"]
    assert len(views) == before + 1
    assert views[-1].actor_id == people.staff_id and views[-1].subject_id == people.person_id
    assert json.loads(views[-1].details)["what"] == f"request #{req_id}"
    # Opening the queue lists people but is not a view of one person's data.
    people.staff.get("/staff/requests")
    assert len([r for r in audit_rows(app) if r.event == "staff:viewed:person"]) == before + 1


# ---- verification ----------------------------------------------------------------------

@pytest.mark.promise("P54")
def test_carrying_out_before_verification_is_refused(app, people):
    req_id = add_request(app, people.person_id, kind="restrict")
    key_id = add_key(app, people.person_id)
    resp = people.staff.get(f"/staff/requests/{req_id}/carry-out", follow_redirects=True)
    assert "Verify the person&#39;s identity before carrying out this request." in text(resp)
    resp = post(people, f"/staff/requests/{req_id}/carry-out", page=f"/staff/requests/{req_id}")
    assert resp.status_code == 302
    assert "Verify the person" in text(people.staff.get(resp.headers["Location"]))
    with app.app_context():
        assert db.session.get(ApiKey, key_id).suspended_at is None
        assert db.session.get(User, people.person_id).restricted_at is None
    # Closing as done needs verification too; only a refusal may close it.
    resp = post(people, f"/staff/requests/{req_id}/close", {"outcome": "done", "reason": "Done."},
                page=f"/staff/requests/{req_id}")
    assert get_request(app, req_id).status == "open"


@pytest.mark.promise("P54")
def test_verification_by_email_link_end_to_end(app, people, mail):
    req_id = add_request(app, people.person_id, kind="export", channel="email")
    resp = post(people, f"/staff/requests/{req_id}/verify/link", page=f"/staff/requests/{req_id}")
    assert resp.status_code == 302
    msg = mail.wait_for(PERSON, f"Confirm your privacy request #{req_id}")
    url = link(msg).replace("http://localhost", "")
    assert url.startswith("/staff/verify/")
    assert get_request(app, req_id).verified_at is None

    # The person, not signed in, opens the link: a page with a button; GET spends nothing.
    visitor = app.test_client()
    page = visitor.get(url)
    assert page.status_code == 200 and "Yes, this request is mine" in text(page)
    assert visitor.get(url).status_code == 200
    resp = Forms(visitor).post(url, {}, page=url)
    assert resp.status_code == 200 and "is confirmed" in text(resp)
    req = get_request(app, req_id)
    assert req.verification_method == "email_link" and req.verified_at is not None
    verified = [r for r in audit_rows(app) if r.event == "privacy:request:verified"]
    assert verified[-1].subject_id == people.person_id
    assert json.loads(verified[-1].details)["method"] == "email_link"
    # Single use.
    again = visitor.get(url)
    assert again.status_code == 400 and "already been used" in text(again)
    # A forged link is refused, never a 500.
    assert visitor.get("/staff/verify/not-a-token").status_code == 400


@pytest.mark.promise("P54")
def test_staff_check_needs_a_note(app, people):
    req_id = add_request(app, people.person_id, kind="object")
    resp = post(people, f"/staff/requests/{req_id}/verify/check", {"note": "  "}, page=f"/staff/requests/{req_id}")
    assert resp.status_code == 422 and "Say how you checked the person&#39;s identity." in text(resp)
    assert get_request(app, req_id).verified_at is None
    resp = post(people, f"/staff/requests/{req_id}/verify/check",
                {"note": "Replied from the account address with the last 4 of a key"},
                page=f"/staff/requests/{req_id}")
    assert resp.status_code == 302
    req = get_request(app, req_id)
    assert req.verification_method == "staff_check" and req.verified_by_id == people.staff_id
    row = [r for r in audit_rows(app) if r.event == "privacy:request:verified"][-1]
    assert row.actor_id == people.staff_id
    assert "last 4 of a key" in json.loads(row.details)["note"]
    assert "last 4 of a key" in text(people.staff.get(f"/staff/requests/{req_id}"))


# ---- extension -------------------------------------------------------------------------

@pytest.mark.promise("P54")
def test_extend_once_and_the_person_is_told(app, people, mail):
    req_id = add_request(app, people.person_id, kind="access", received_days_ago=10)
    due = get_request(app, req_id).due_at
    resp = post(people, f"/staff/requests/{req_id}/extend", {"reason": ""}, page=f"/staff/requests/{req_id}")
    assert resp.status_code == 422 and "Give the reason for the extension" in text(resp)
    resp = post(people, f"/staff/requests/{req_id}/extend", {"reason": "Many years of usage to gather."},
                page=f"/staff/requests/{req_id}")
    assert resp.status_code == 302
    req = get_request(app, req_id)
    assert req.due_at == due + timedelta(days=60) and req.extension_reason == "Many years of usage to gather."
    msg = body(mail.wait_for(PERSON, f"Your privacy request #{req_id} needs more time"))
    assert req.due_at.strftime("%Y-%m-%d") in msg and "Many years of usage to gather." in msg
    assert [r for r in audit_rows(app) if r.event == "privacy:request:extended"][-1].actor_id == people.staff_id

    resp = post(people, f"/staff/requests/{req_id}/extend", {"reason": "Again"}, page=f"/staff/requests/{req_id}")
    assert "A request can be extended only once." in text(people.staff.get(resp.headers["Location"]))
    assert get_request(app, req_id).due_at == due + timedelta(days=60)


# ---- carrying out ----------------------------------------------------------------------

@pytest.mark.promise("P53", "P54")
def test_restrict_suspends_keys_and_lift_clears(app, people):
    req_id = add_request(app, people.person_id, kind="restrict", verified=True)
    k1, k2 = add_key(app, people.person_id, "key1"), add_key(app, people.person_id, "key2")
    confirm = people.staff.get(f"/staff/requests/{req_id}/carry-out")
    assert confirm.status_code == 200 and "Restrict processing" in text(confirm)
    resp = post(people, f"/staff/requests/{req_id}/carry-out", page=f"/staff/requests/{req_id}/carry-out")
    assert resp.status_code == 302
    with app.app_context():
        assert all(db.session.get(ApiKey, k).suspended_at is not None for k in (k1, k2))
        assert db.session.get(User, people.person_id).restricted_at is not None
    events = [r.event for r in audit_rows(app)]
    assert "privacy:restriction:set" in events and "privacy:request:carried_out" in events
    assert "restricted since" in text(people.staff.get(f"/staff/requests/{req_id}"))

    resp = post(people, f"/staff/requests/{req_id}/lift", page=f"/staff/requests/{req_id}/lift")
    assert resp.status_code == 302
    with app.app_context():
        assert all(db.session.get(ApiKey, k).suspended_at is None for k in (k1, k2))
        assert db.session.get(User, people.person_id).restricted_at is None
    assert "privacy:restriction:lifted" in [r.event for r in audit_rows(app)]


@pytest.mark.promise("P53", "P54")
def test_object_turns_marketing_off(app, people):
    from app.services import privacy

    with app.app_context():
        privacy.set_consent(db.session.get(User, people.person_id), "marketing_email", True, "test")
        db.session.commit()
    req_id = add_request(app, people.person_id, kind="object", verified=True)
    resp = post(people, f"/staff/requests/{req_id}/carry-out", page=f"/staff/requests/{req_id}/carry-out")
    assert resp.status_code == 302
    with app.app_context():
        assert db.session.get(User, people.person_id).marketing_email is False
    events = audit_rows(app)
    withdrawn = [r for r in events if r.event == "consent:marketing_email:withdrawn"][-1]
    assert json.loads(withdrawn.details)["source"] == "objection"
    applied = [r for r in events if r.event == "privacy:request:objection_applied"][-1]
    assert applied.actor_id == people.staff_id and applied.subject_id == people.person_id


@pytest.mark.promise("P54")
def test_rectify_corrects_name_and_company(app, people):
    req_id = add_request(app, people.person_id, kind="rectify", verified=True)
    form = people.staff.get(f"/staff/requests/{req_id}/carry-out")
    assert 'value="Engines Ltd"' in text(form) and "made by the person in Account" in text(form)
    resp = post(people, f"/staff/requests/{req_id}/carry-out", {"name": "Ada Lovelace", "company": ""},
                page=f"/staff/requests/{req_id}/carry-out")
    assert resp.status_code == 302
    user = people_user(app, people.person_id)
    assert (user.name, user.company) == ("Ada Lovelace", None)
    row = [r for r in audit_rows(app) if r.event == "privacy:request:rectified"][-1]
    assert row.actor_id == people.staff_id and json.loads(row.details)["fields"] == ["name", "company"]
    resp = post(people, f"/staff/requests/{req_id}/carry-out", {"name": "x" * 121, "company": ""},
                page=f"/staff/requests/{req_id}/carry-out")
    assert resp.status_code == 200 and "at most 120 characters" in text(resp)


def people_user(app, user_id) -> User:
    with app.app_context():
        u = db.session.get(User, user_id)
        db.session.expunge(u)
        return u


@pytest.mark.promise("P51", "P54")
def test_export_from_the_queue(app, people):
    from app.models import DataExport

    req_id = add_request(app, people.person_id, kind="export", verified=True)
    resp = post(people, f"/staff/requests/{req_id}/carry-out", page=f"/staff/requests/{req_id}/carry-out")
    assert resp.status_code == 302
    with app.app_context():
        row = db.session.scalar(sa.select(DataExport).where(DataExport.user_id == people.person_id))
        assert row is not None and row.source == "staff" and row.request_id == req_id


@pytest.mark.promise("P52", "P54")
def test_delete_from_the_queue(app, people):
    req_id = add_request(app, people.person_id, kind="delete", channel="email", verified=True)
    resp = post(people, f"/staff/requests/{req_id}/carry-out", page=f"/staff/requests/{req_id}/carry-out")
    assert resp.status_code == 302
    assert people_user(app, people.person_id).deletion_requested_at is not None


# ---- closing ---------------------------------------------------------------------------

@pytest.mark.promise("P54")
def test_close_needs_outcome_and_reason_and_emails_the_person(app, people, mail):
    req_id = add_request(app, people.person_id, kind="access", verified=True)
    url, page = f"/staff/requests/{req_id}/close", f"/staff/requests/{req_id}"
    resp = post(people, url, {"reason": "Sent."}, page=page)
    assert resp.status_code == 422 and "Choose an outcome" in text(resp)
    resp = post(people, url, {"outcome": "done", "reason": " "}, page=page)
    assert resp.status_code == 422 and "Give a reason; the person receives it by email." in text(resp)
    assert get_request(app, req_id).status == "open"

    resp = post(people, url, {"outcome": "partly", "reason": "Usage older than 90 days is gone."}, page=page)
    assert resp.status_code == 302
    req = get_request(app, req_id)
    assert (req.status, req.outcome, req.closed_by_id) == ("closed", "partly", people.staff_id)
    msg = body(mail.wait_for(PERSON, f"Your privacy request #{req_id} is closed"))
    assert "Usage older than 90 days is gone." in msg and "partly done" in msg
    # Closed: no more actions.
    resp = post(people, url, {"outcome": "done", "reason": "again"}, page=page)
    assert "already closed" in text(people.staff.get(resp.headers["Location"]))


# ---- the audit page --------------------------------------------------------------------

@pytest.mark.promise("P55")
def test_audit_page_shows_chain_and_finds_tampering(app, people):
    req_id = add_request(app, people.person_id, kind="access")
    people.staff.get(f"/staff/requests/{req_id}")
    html = text(people.staff.get("/staff/audit"))
    assert re.search(r"Chain intact: \d+ rows checked", html)
    assert "staff:viewed:person" in html

    filtered = text(people.staff.get(f"/staff/audit?event=staff:viewed&subject={people.person_id}"))
    events = set(re.findall(r"<code>([a-z_:]+)</code>", filtered))
    assert events == {"staff:viewed:person"}
    assert "Enter an account id" in text(people.staff.get("/staff/audit?subject=abc"))

    with app.app_context():
        target = db.session.scalar(sa.select(AuditEvent.id).where(AuditEvent.event == "staff:viewed:person")
                                   .order_by(AuditEvent.id).limit(1))
        db.session.execute(sa.text("UPDATE audit_events SET details = :d WHERE id = :i"),
                           {"d": '{"what":"nothing"}', "i": target})
        db.session.commit()
    html = text(people.staff.get("/staff/audit"))
    assert f"Broken at row #{target}" in html and "Chain intact" not in html


@pytest.mark.promise("P55")
def test_audit_page_is_paginated_newest_first(app, people):
    from app.services.audit import record_event

    with app.app_context():
        for n in range(60):
            record_event(None, "test:filler", n=n)
        db.session.commit()
    first = text(people.staff.get("/staff/audit?event=test:"))
    ids = [int(i) for i in re.findall(r'<tr id="event-(\d+)"', first)]
    assert len(ids) == 50 and ids == sorted(ids, reverse=True)
    page2 = text(people.staff.get("/staff/audit?event=test:&page=2"))
    second = [int(i) for i in re.findall(r'<tr id="event-(\d+)"', page2)]
    assert len(second) == 10 and max(second) < min(ids)
