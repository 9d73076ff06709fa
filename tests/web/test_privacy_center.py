"""The person's privacy center through the test client (P50, P53, P55):
consents and their history, the one-click unsubscribe link, preference cookies,
the inventory of what we keep, who looked, and requests — with real forms and
CSRF, as a browser sends them."""
from __future__ import annotations

import re
from datetime import date, timedelta

import pytest
import sqlalchemy as sa
from itsdangerous import URLSafeSerializer

from app.extensions import db
from app.models import ApiKey, AuditEvent, ConsentEvent, DataExport, PrivacyRequest, UsageDaily, UsageRecord, User
from app.models.types import utcnow
from app.privacy_center.prefs import preferred_range
from app.services import privacy
from app.services.consent_links import unsubscribe_url
from app.services.dates import add_months
from app.services.passwords import hash_password
from app.services.policy import current_version
from tests.conftest import Forms, csrf_from

EMAIL = "ada@example.com"
PASSWORD = "correct horse battery"
HX = {"HX-Request": "true"}
PC = "/privacy-center/"


# ---- helpers -------------------------------------------------------------------------

def text(resp) -> str:
    return resp.get_data(as_text=True)


def set_cookies(resp, name: str) -> list[str]:
    return [h for h in resp.headers.getlist("Set-Cookie") if h.startswith(name + "=")]


def is_deletion(header: str) -> bool:
    return "Max-Age=0" in header or "Expires=Thu, 01 Jan 1970" in header


def toggle(forms, purpose: str, on: bool, **kw):
    return forms.post(f"/privacy-center/consent/{purpose}", {"granted": "1" if on else "0"}, page=PC, **kw)


def consent_rows(app, user_id) -> list[ConsentEvent]:
    with app.app_context():
        rows = list(db.session.scalars(sa.select(ConsentEvent).where(ConsentEvent.user_id == user_id)
                                       .order_by(ConsentEvent.id)))
        db.session.expunge_all()
        return rows


def row_html(page: str, row_id: str) -> str:
    m = re.search(rf'<tr id="{row_id}">(.*?)</tr>', page, re.S)
    assert m, f"no row {row_id}"
    return re.sub(r"\s+", " ", m.group(1))


def sign_in(app, email=EMAIL, **fields):
    """A person and a logged-in browser on an app built with other settings."""
    with app.app_context():
        u = User(email=email, email_key=email, password_hash=hash_password(PASSWORD),
                 age_confirmed_at=utcnow(), email_verified_at=utcnow(), **fields)
        db.session.add(u)
        db.session.commit()
        uid = u.id
    client = app.test_client()
    forms = Forms(client)
    assert forms.post("/login", {"email": email, "password": PASSWORD}).status_code == 302
    return uid, client, forms


@pytest.fixture
def person(users, login):
    uid = users.create()
    login()
    return uid


def usage_row(user_id, started_at, n=0) -> UsageRecord:
    return UsageRecord(request_id=f"req_{user_id}_{n}_{started_at.timestamp()}", user_id=user_id,
                       started_at=started_at, ended_at=started_at + timedelta(seconds=1), model="gpt-4o-mini",
                       provider="openai", latency_ms=1000, status_code=200, usage_source="provider")


# ---- login everywhere ----------------------------------------------------------------

def test_every_page_needs_login(client, forms):
    for url in (PC, "/privacy-center/data", "/privacy-center/access-log"):
        resp = client.get(url)
        assert resp.status_code == 302 and "/login" in resp.headers["Location"], url
    for url, data in (("/privacy-center/consent/marketing_email", {"granted": "1"}),
                      ("/privacy-center/preferences", {"theme": "dark", "range_days": "7"}),
                      ("/privacy-center/requests", {"kind": "restrict"})):
        resp = forms.post(url, data, page="/login")
        assert resp.status_code == 302 and "/login" in resp.headers["Location"], url


def test_forms_carry_csrf(app, client, person):
    resp = client.post("/privacy-center/consent/marketing_email", data={"granted": "1"})
    assert resp.status_code == 400 and "This form has expired" in text(resp)
    assert consent_rows(app, person) == []


# ---- consent (P50) -------------------------------------------------------------------

@pytest.mark.promise("P50")
def test_consents_are_off_until_chosen(app, client, person):
    page = text(client.get(PC))
    assert "Privacy center" in page
    assert "Turn on marketing email" in page and "Turn on preference cookies" in page
    assert "Turn off" not in page
    assert "No changes yet." in page
    with app.app_context():
        u = db.session.get(User, person)
        assert u.marketing_email is False and u.preference_cookies is False
    assert consent_rows(app, person) == []


@pytest.mark.promise("P50")
def test_give_and_withdraw_are_recorded_with_time_source_and_policy_version(app, client, forms, person):
    before = utcnow()
    resp = toggle(forms, "marketing_email", True)
    assert resp.status_code == 302 and resp.headers["Location"].endswith("/privacy-center/#consents")
    page = text(client.get(PC))
    assert "Marketing email is on." in page and "Turn off marketing email" in page

    assert toggle(forms, "marketing_email", False).status_code == 302
    rows = consent_rows(app, person)
    with app.app_context():
        version = current_version()
        number = version.number
        assert [(r.purpose, r.granted, r.source) for r in rows] == [
            ("marketing_email", True, "privacy_center"), ("marketing_email", False, "privacy_center")]
        assert all(r.policy_version_id == version.id for r in rows)
        assert all(before - timedelta(seconds=1) <= r.created_at <= utcnow() for r in rows)
        assert db.session.get(User, person).marketing_email is False

    page = text(client.get(PC))
    history = page[page.index('id="consent-history"'):]
    assert history.count("<tr>") == 2 + 1  # header row + two changes
    assert "given" in history and "withdrawn" in history and "Privacy center" in history
    link = f'href="/privacy/versions/{number}"'
    assert history.count(link) == 2
    assert client.get(f"/privacy/versions/{number}").status_code == 200


@pytest.mark.promise("P50")
def test_a_double_click_records_one_change(app, client, forms, person):
    token = csrf_from(text(client.get(PC)))
    for _ in range(2):  # the same form, sent twice
        resp = client.post("/privacy-center/consent/marketing_email", data={"csrf_token": token, "granted": "1"},
                           headers=HX)
        assert resp.status_code == 200
        assert "<html" not in text(resp) and 'id="consents-panel"' in text(resp)  # the htmx fragment
    assert len(consent_rows(app, person)) == 1
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(AuditEvent).where(
            AuditEvent.event == "consent:marketing_email:given")) == 1


@pytest.mark.promise("P50")
def test_bad_consent_requests_get_a_message_not_a_500(app, client, forms, person):
    assert forms.post("/privacy-center/consent/telemetry", {"granted": "1"}, page=PC).status_code == 404
    resp = forms.post("/privacy-center/consent/marketing_email", {"granted": "maybe"}, page=PC,
                      follow_redirects=True)
    assert resp.status_code == 200 and "Choose on or off" in text(resp)
    assert consent_rows(app, person) == []


@pytest.mark.promise("P50")
def test_unsubscribe_link_works_without_login_and_records_email_link(app, person):
    with app.app_context():
        user = db.session.get(User, person)
        privacy.set_consent(user, "marketing_email", True, source="privacy_center")
        db.session.commit()
        url = unsubscribe_url(user)
    assert url.startswith("http://localhost/privacy-center/unsubscribe/")
    path = url.removeprefix("http://localhost")

    anonymous = app.test_client()
    page = anonymous.get(path)
    assert page.status_code == 200 and "Stop marketing email?" in text(page)
    assert len(consent_rows(app, person)) == 1  # opening the link changes nothing (mail scanners)

    resp = anonymous.post(path, data={"csrf_token": csrf_from(text(page))})
    assert resp.status_code == 200 and "You are unsubscribed" in text(resp)
    rows = consent_rows(app, person)
    assert [(r.granted, r.source) for r in rows] == [(True, "privacy_center"), (False, "email_link")]
    with app.app_context():
        assert db.session.get(User, person).marketing_email is False

    # Again: nothing more is recorded.
    again = anonymous.post(path, data={"csrf_token": csrf_from(text(anonymous.get(path)))})
    assert "already off" in text(again) and len(consent_rows(app, person)) == 2


@pytest.mark.promise("P50")
def test_a_tampered_unsubscribe_token_is_refused_with_a_clear_page(app, person):
    with app.app_context():
        user = db.session.get(User, person)
        privacy.set_consent(user, "marketing_email", True, source="privacy_center")
        db.session.commit()
        path = unsubscribe_url(user).removeprefix("http://localhost")
        token = path.rsplit("/", 1)[1]
        other_salt = URLSafeSerializer(app.config["SECRET_KEY"], salt="email-verify").dumps(person)
        forged = URLSafeSerializer("not-our-secret", salt="unsubscribe").dumps(person)
    anonymous = app.test_client()
    good_csrf = csrf_from(text(anonymous.get(path)))
    for bad in (token[:-2] + ("AA" if not token.endswith("AA") else "BB"), other_salt, forged, "nonsense"):
        page = anonymous.get(f"/privacy-center/unsubscribe/{bad}")
        assert page.status_code == 400 and "This unsubscribe link is not valid" in text(page), bad
        post = anonymous.post(f"/privacy-center/unsubscribe/{bad}", data={"csrf_token": good_csrf})
        assert post.status_code == 400 and "Nothing was changed" in text(post)
    assert len(consent_rows(app, person)) == 1
    with app.app_context():
        assert db.session.get(User, person).marketing_email is True


ONE_CLICK = "List-Unsubscribe=One-Click"


@pytest.mark.promise("P50")
def test_one_click_post_from_a_mail_client_withdraws_without_csrf_or_cookies(app, client, person):
    with app.app_context():
        user = db.session.get(User, person)
        privacy.set_consent(user, "marketing_email", True, source="privacy_center")
        db.session.commit()
        path = unsubscribe_url(user).removeprefix("http://localhost")

    # What a mail client sends (RFC 8058): the body below, no CSRF token, no session cookie.
    mail_client = app.test_client(use_cookies=False)
    resp = mail_client.post(path, data=ONE_CLICK, content_type="application/x-www-form-urlencoded")
    assert resp.status_code == 200 and "You are unsubscribed" in text(resp)
    rows = consent_rows(app, person)
    assert [(r.granted, r.source) for r in rows] == [(True, "privacy_center"), (False, "email_link")]
    with app.app_context():
        assert db.session.get(User, person).marketing_email is False
        assert rows[-1].policy_version_id == current_version().id

    # The same as multipart/form-data, which RFC 8058 prefers: nothing more to withdraw, nothing recorded.
    again = mail_client.post(path, data={"List-Unsubscribe": "One-Click"}, content_type="multipart/form-data")
    assert again.status_code == 200 and "already off" in text(again)
    assert len(consent_rows(app, person)) == 2

    # The person's history shows it.
    history = text(client.get(PC))
    history = history[history.index('id="consent-history"'):]
    assert "withdrawn" in history and "Link in an email" in history

    # Only this endpoint is exempt: the privacy center's own forms still need their token.
    refused = client.post("/privacy-center/consent/marketing_email", data={"granted": "1"})
    assert refused.status_code == 400 and len(consent_rows(app, person)) == 2


@pytest.mark.promise("P50")
def test_one_click_post_with_a_bad_token_changes_nothing_and_says_so(app, users, person):
    gone = users.create("gone@example.com")
    with app.app_context():
        user = db.session.get(User, person)
        privacy.set_consent(user, "marketing_email", True, source="privacy_center")
        token = unsubscribe_url(user).rsplit("/", 1)[1]
        forged = URLSafeSerializer("not-our-secret", salt="unsubscribe").dumps(person)
        other_salt = URLSafeSerializer(app.config["SECRET_KEY"], salt="email-verify").dumps(person)
        deleted = unsubscribe_url(db.session.get(User, gone)).rsplit("/", 1)[1]
        db.session.delete(db.session.get(User, gone))
        db.session.commit()
    mail_client = app.test_client(use_cookies=False)
    for bad in (forged, other_salt, token[:-2] + ("AA" if not token.endswith("AA") else "BB"), deleted,
                "nonsense", "%00", "x" * 3000):
        resp = mail_client.post(f"/privacy-center/unsubscribe/{bad}", data=ONE_CLICK,
                                content_type="application/x-www-form-urlencoded")
        assert resp.status_code == 400, bad[:40]
        assert "This unsubscribe link is not valid" in text(resp) and "Nothing was changed" in text(resp)
    assert len(consent_rows(app, person)) == 1
    with app.app_context():
        assert db.session.get(User, person).marketing_email is True


@pytest.mark.promise("P50")
def test_mail_to_a_person_with_marketing_consent_carries_one_click_unsubscribe_headers(app, client, forms, users,
                                                                                         person, mail):
    bob = users.create("bob@example.com")  # no marketing consent
    toggle(forms, "marketing_email", True)
    anonymous = Forms(app.test_client())
    for addr in (EMAIL, "bob@example.com"):
        assert anonymous.post("/forgot", {"email": addr}).status_code == 200

    msg = mail.wait_for(EMAIL, "Reset your password")
    header = msg["List-Unsubscribe"]
    with app.app_context():
        assert header == f"<{unsubscribe_url(db.session.get(User, person))}>"
    assert msg["List-Unsubscribe-Post"] == ONE_CLICK
    assert "=?" not in str(header)  # one plain URL, not an encoded word mail clients cannot follow
    assert mail.wait_for("bob@example.com", "Reset your password")["List-Unsubscribe"] is None
    assert users.get(bob).marketing_email is False

    # The mail client's one-click POST to that header's URL withdraws the consent.
    path = header.strip("<>").removeprefix("http://localhost")
    resp = app.test_client(use_cookies=False).post(path, data=ONE_CLICK,
                                                   content_type="application/x-www-form-urlencoded")
    assert resp.status_code == 200
    assert [(r.granted, r.source) for r in consent_rows(app, person)] == [
        (True, "privacy_center"), (False, "email_link")]

    # With the consent withdrawn, the next mail carries no unsubscribe header.
    assert anonymous.post("/forgot", {"email": EMAIL}).status_code == 200
    later = mail.wait_for(EMAIL, "Reset your password", after=1)
    assert later["List-Unsubscribe"] is None and later["List-Unsubscribe-Post"] is None


@pytest.mark.promise("P50")
def test_marketing_stays_off_while_restricted_with_a_message_and_a_banner(app, client, forms, users, person):
    staff = users.create("staff@example.com", staff=True)
    with app.app_context():
        privacy.restrict(db.session.get(User, person), db.session.get(User, staff))
        db.session.commit()
    page = text(client.get(PC))
    assert "Processing of your account is restricted" in page and "API keys are suspended" in page
    resp = toggle(forms, "marketing_email", True, headers=HX)
    assert resp.status_code == 200
    assert "Marketing email stays off while your account is restricted." in text(resp)
    assert consent_rows(app, person) == []


# ---- preference cookies (P50) --------------------------------------------------------

@pytest.mark.promise("P50")
def test_preference_cookies_are_never_set_without_consent(app, client, forms, person):
    for url in (PC, "/privacy-center/data", "/dashboard"):
        assert not set_cookies(client.get(url), "pref_theme")
    resp = forms.post("/privacy-center/preferences", {"theme": "dark", "range_days": "90"}, page=PC)
    assert resp.status_code == 200
    assert "Preference cookies are off, so nothing was saved." in text(resp)
    assert not set_cookies(resp, "pref_theme") and not set_cookies(resp, "pref_range")
    assert client.get_cookie("pref_theme") is None and client.get_cookie("pref_range") is None
    assert 'class="theme-dark"' not in text(client.get(PC))


@pytest.mark.promise("P50")
def test_preference_cookies_after_consent_and_deleted_on_withdrawal(app, client, forms, person):
    toggle(forms, "preference_cookies", True)
    page = text(client.get(PC))
    assert "Preference cookies are on." in page and "Turn off preference cookies" in page

    resp = forms.post("/privacy-center/preferences", {"theme": "dark", "range_days": "90"}, page=PC)
    assert resp.status_code == 302
    [theme] = set_cookies(resp, "pref_theme")
    [range_] = set_cookies(resp, "pref_range")
    assert theme.startswith("pref_theme=dark;") and range_.startswith("pref_range=90;")
    assert "HttpOnly" in theme and "SameSite=Lax" in theme and "Path=/" in theme
    page = text(client.get(PC))
    assert '<body hx-headers' in page and 'class="theme-dark"' in page
    with app.test_request_context(headers={"Cookie": "pref_range=90"}):
        from flask import request
        assert preferred_range(request) == 90
    with app.test_request_context(headers={"Cookie": "pref_range=12"}):
        from flask import request
        assert preferred_range(request) == 30

    # A bad value is a form message.
    resp = forms.post("/privacy-center/preferences", {"theme": "neon", "range_days": "90"}, page=PC)
    assert resp.status_code == 200 and "Not a valid choice" in text(resp)
    assert not set_cookies(resp, "pref_theme")

    # Withdrawal deletes both cookies in that very response (htmx or not).
    resp = toggle(forms, "preference_cookies", False, headers=HX)
    assert resp.headers.get("HX-Refresh") == "true"
    assert all(is_deletion(h) for h in set_cookies(resp, "pref_theme") + set_cookies(resp, "pref_range"))
    assert len(set_cookies(resp, "pref_theme")) == 1 and len(set_cookies(resp, "pref_range")) == 1
    assert client.get_cookie("pref_theme") is None and client.get_cookie("pref_range") is None
    assert 'class="theme-dark"' not in text(client.get(PC))
    assert [(r.purpose, r.granted) for r in consent_rows(app, person)] == [
        ("preference_cookies", True), ("preference_cookies", False)]


@pytest.mark.promise("P50")
def test_a_left_over_preference_cookie_is_deleted_and_ignored(app, client, forms, person):
    """Consent withdrawn in another browser: this one's cookies go on its next page."""
    client.set_cookie("pref_theme", "dark")
    resp = client.get("/dashboard")
    assert 'class="theme-dark"' not in text(resp)
    assert set_cookies(resp, "pref_theme") and all(is_deletion(h) for h in set_cookies(resp, "pref_theme"))


# ---- what we keep (P60 settings, shown to the person) --------------------------------

@pytest.mark.promise("P50", "P53")
def test_inventory_counts_and_deletion_dates_follow_the_settings(make_app, users):
    app = make_app(METADATA_RETENTION_DAYS="30", AUDIT_RETENTION_DAYS="60", AGGREGATE_RETENTION_MONTHS="6",
                   BILLING_RETENTION_YEARS="10")
    uid, client, forms = sign_in(app, name="Ada", company="Analytical")
    now = utcnow()
    oldest = now - timedelta(days=20)
    with app.app_context():
        other = User(email="bob@example.com", email_key="bob@example.com", password_hash="x",
                     age_confirmed_at=now)
        db.session.add(other)
        db.session.flush()
        db.session.add_all([usage_row(uid, oldest, 1), usage_row(uid, now - timedelta(days=2), 2),
                            usage_row(uid, now - timedelta(hours=1), 3), usage_row(other.id, now - timedelta(days=25))])
        db.session.add_all([UsageDaily(day=date(2025, 8, 31), user_id=uid, model="m"),
                            UsageDaily(day=date(2025, 9, 30), user_id=uid, model="m"),
                            UsageDaily(day=date(2025, 1, 1), user_id=other.id, model="m")])
        db.session.add_all([ApiKey(user_id=uid, name=f"k{i}", prefix="rk_abcd", last4=f"{i:04d}",
                                   lookup_hash=f"{i:064d}", revoked_at=now if i == 2 else None) for i in range(3)])
        db.session.add(DataExport(user_id=uid, source="portal"))
        db.session.commit()
        first_audit = db.session.scalar(sa.select(sa.func.min(AuditEvent.created_at))
                                        .where(AuditEvent.subject_id == uid))
        audits = db.session.scalar(sa.select(sa.func.count()).select_from(AuditEvent)
                                   .where(AuditEvent.subject_id == uid))
    toggle(forms, "marketing_email", True)
    audits += 1

    resp = client.get("/privacy-center/data")
    assert resp.status_code == 200
    page = text(resp)
    usage = row_html(page, "inv-usage")
    assert "<strong>3</strong>" in usage
    assert (oldest + timedelta(days=30)).date().isoformat() in usage and "30 days after" in usage
    daily = row_html(page, "inv-daily")
    assert "<strong>2</strong>" in daily and "2026-02-28" in daily  # Aug 31 + 6 months, clamped
    assert add_months(date(2025, 8, 31), 6) == date(2026, 2, 28)
    keys = row_html(page, "inv-keys")
    assert "<strong>3</strong>" in keys and "2 active" in keys and "1 revoked" in keys
    assert "until you delete your account" in keys.lower()
    assert "lookup_hash" not in page and "0" * 64 not in page
    audit = row_html(page, "inv-audit")
    assert f"<strong>{audits}</strong>" in audit
    assert (first_audit + timedelta(days=60)).date().isoformat() in audit
    assert "<strong>1</strong>" in row_html(page, "inv-consents")
    assert "<strong>1</strong>" in row_html(page, "inv-exports")
    profile = row_html(page, "inv-profile")
    assert EMAIL in profile and "Ada" in profile and "Analytical" in profile
    billing = row_html(page, "inv-billing")
    assert "No billing records" in billing and "10 years" in billing
    security = row_html(page, "inv-security")
    assert "1 signed-in session" in security and "Two-factor authentication off" in security


def test_inventory_of_a_new_account_has_no_dates(client, person):
    page = text(client.get("/privacy-center/data"))
    assert "<strong>0</strong>" in row_html(page, "inv-usage") and "Nothing kept" in row_html(page, "inv-usage")
    assert "7 years" in row_html(page, "inv-billing")


# ---- who looked at my data (P55) -----------------------------------------------------

@pytest.mark.promise("P55")
def test_access_log_shows_staff_views_and_not_the_persons_own_actions(app, client, forms, users, person):
    staff = users.create("privacy-officer@example.com", staff=True)
    other = users.create("bob@example.com")
    page = text(client.get("/privacy-center/access-log"))
    assert "No one from our staff has looked at your data." in page

    toggle(forms, "marketing_email", True)  # the person's own action, audited
    with app.app_context():
        s, me = db.session.get(User, staff), db.session.get(User, person)
        privacy.record_staff_view(s, me, "account overview")
        privacy.record_staff_view(s, other, "account overview")  # someone else's data
        req = privacy.open_request(me, "access", "portal", verified_method="signed_in")
        privacy.verify(req, s, "staff_check")
        db.session.commit()
        rid = req.id

    page = text(client.get("/privacy-center/access-log"))
    rows = re.findall(r"<tr>(.*?)</tr>", page, re.S)[1:]
    assert len(rows) == 2
    assert "Verified your identity" in rows[0] and f"request #{rid}" in rows[0]  # newest first
    assert "Looked at your data" in rows[1] and "account overview" in rows[1]
    assert all(f"Privacy staff #{staff}" in r for r in rows)
    assert "privacy-officer@example.com" not in page
    assert "Filed a privacy request" not in page  # the person filed it themselves
    assert not any("arketing" in r or "onsent" in r for r in rows)


@pytest.mark.promise("P55")
def test_access_log_pages_by_25_newest_first(app, client, users, person):
    staff = users.create("staff@example.com", staff=True)
    with app.app_context():
        s = db.session.get(User, staff)
        for i in range(30):
            privacy.record_staff_view(s, person, f"view {i:02d}")
        db.session.commit()
    first = text(client.get("/privacy-center/access-log"))
    assert first.count("Looked at your data") == 25 and "view 29" in first and "view 05" in first
    assert "view 04" not in first and "Page 1 of 2" in first
    second = text(client.get("/privacy-center/access-log?page=2"))
    assert second.count("Looked at your data") == 5 and "view 00" in second and "view 29" not in second
    assert client.get("/privacy-center/access-log?page=99").status_code == 200
    assert client.get("/privacy-center/access-log?page=x").status_code == 200


# ---- requests (P53) ------------------------------------------------------------------

@pytest.mark.promise("P53")
def test_request_form_validates_with_messages(app, client, forms, person):
    page = text(client.get(PC))
    assert "You have made no privacy requests." in page
    assert 'value="restrict"' in page and 'value="object"' in page
    assert 'value="delete"' not in page and 'value="export"' not in page
    assert 'href="/privacy-center/export/"' in page and 'href="/privacy-center/delete/"' in page

    cases = [
        ({"kind": "", "details": ""}, "Choose what kind of request this is."),
        ({"kind": "delete", "details": "bye"}, "Choose what kind of request this is."),
        ({"kind": "object", "details": "   "}, "Tell us which processing you object to and why."),
        ({"kind": "rectify", "details": ""}, "Tell us what is wrong and what it should say instead."),
        ({"kind": "restrict", "details": "x" * 2001}, "Keep the details under 2,000 characters."),
    ]
    for data, message in cases:
        resp = forms.post("/privacy-center/requests", data, page=PC)
        assert resp.status_code == 200, data
        assert message in text(resp), data
        assert 'aria-invalid="true"' in text(resp)
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(PrivacyRequest)) == 0


@pytest.mark.promise("P53")
def test_restrict_and_object_requests_appear_with_a_due_date_30_days_out(app, client, forms, person):
    resp = forms.post("/privacy-center/requests", {"kind": "restrict", "details": "While I check my invoices."},
                      page=PC)
    assert resp.status_code == 302 and resp.headers["Location"].endswith("#requests")
    resp = forms.post("/privacy-center/requests", {"kind": "object", "details": "No marketing analysis."},
                      page=PC)
    assert resp.status_code == 302
    with app.app_context():
        reqs = list(db.session.scalars(sa.select(PrivacyRequest).order_by(PrivacyRequest.id)))
        assert [(r.kind, r.channel, r.status, r.verification_method) for r in reqs] == [
            ("restrict", "portal", "open", "signed_in"), ("object", "portal", "open", "signed_in")]
        assert all(r.user_id == person for r in reqs)
        assert all(r.due_at - r.received_at == timedelta(days=30) for r in reqs)
        due = [r.due_at.date().isoformat() for r in reqs]
        ids = [r.id for r in reqs]
    page = text(client.get(PC))
    assert "You have made no privacy requests." not in page
    assert f"Request #{ids[1]} received" in page  # the flash
    restrict_row = row_html(page, f"request-{ids[0]}")
    assert "Restrict processing" in restrict_row and due[0] in restrict_row and "open" in restrict_row
    assert "While I check my invoices." in restrict_row
    assert (utcnow() + timedelta(days=30)).date().isoformat() == due[0]
    assert "Object to processing" in row_html(page, f"request-{ids[1]}")

    # A second open restriction request is refused with a message.
    resp = forms.post("/privacy-center/requests", {"kind": "restrict"}, page=PC)
    assert resp.status_code == 200 and f"You already have an open request of this kind (#{ids[0]})" in text(resp)


@pytest.mark.promise("P53")
def test_closed_requests_show_their_outcome(app, client, users, person):
    staff = users.create("staff@example.com", staff=True)
    with app.app_context():
        me, s = db.session.get(User, person), db.session.get(User, staff)
        req = privacy.open_request(me, "access", "portal", verified_method="signed_in")
        privacy.close(req, s, "done", "We sent you everything we hold.")
        db.session.commit()
        rid = req.id
    row = row_html(text(client.get(PC)), f"request-{rid}")
    assert "closed" in row and "done" in row and "We sent you everything we hold." in row
