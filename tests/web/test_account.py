"""The account page through the test client: profile (P04), the re-authentication
window, password and email changes, two-factor setup (P05) and the session list.

Every form is driven as a browser would: the page is fetched, its CSRF token
taken, the form posted. Mail goes over real SMTP to the loopback server.
"""
from __future__ import annotations

import re
import time
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pyotp
import pytest
import sqlalchemy as sa

from app.extensions import db
from app.models import AuditEvent, RecoveryCode, User, UserSession
from app.models.types import utcnow
from tests.conftest import Forms, csrf_from
from tests.fakes.smtp import body, link

EMAIL = "ada@example.com"
HX = {"HX-Request": "true"}
SECRET_RE = re.compile(r'id="totp-secret">([A-Z2-7]+)<')
CODE_RE = re.compile(r"<code>([0-9a-f]{5}-[0-9a-f]{5})</code>")


# ---- helpers -------------------------------------------------------------------------

def text(resp) -> str:
    return resp.get_data(as_text=True)


def path_of(url: str) -> str:
    """The path (and query) of an emailed absolute link, for the test client."""
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def age_logins(app, minutes: int = 60) -> None:
    """Move every session's last proof of identity into the past (the window passes)."""
    with app.app_context():
        db.session.execute(sa.update(UserSession).values(authenticated_at=utcnow() - timedelta(minutes=minutes)))
        db.session.commit()


def second_client(app, email=EMAIL, password="correct horse battery", agent="OtherBrowser/1.0"):
    """Another browser, logged in as the same person."""
    other = app.test_client()
    other.environ_base["HTTP_USER_AGENT"] = agent
    resp = Forms(other).post("/login", {"email": email, "password": password})
    assert resp.status_code == 302 and "/dashboard" in resp.headers["Location"]
    return other


def is_anonymous(c) -> bool:
    resp = c.get("/account/")
    return resp.status_code == 302 and "/login" in resp.headers["Location"]


def turn_on_2fa(client, forms) -> tuple[str, list[str]]:
    """Go through the setup page; return the secret and the recovery codes shown."""
    secret = SECRET_RE.search(text(client.get("/account/2fa/setup"))).group(1)
    resp = forms.post("/account/2fa/setup", {"code": pyotp.TOTP(secret).now()})
    assert resp.status_code == 200
    codes = CODE_RE.findall(text(resp))
    assert len(codes) == 10
    return secret, codes


def next_code(secret: str) -> str:
    """The next step's code: the current one was spent (replays are refused)."""
    return pyotp.TOTP(secret).at(time.time() + 30)


def events(app, user_id=None) -> list[str]:
    with app.app_context():
        q = sa.select(AuditEvent.event).order_by(AuditEvent.id)
        if user_id is not None:
            q = q.where(AuditEvent.subject_id == user_id)
        return list(db.session.scalars(q))


def wrong_code(secret: str) -> str:
    """A six-digit code that is valid for none of the accepted steps."""
    t = pyotp.TOTP(secret)
    valid = {t.at(time.time() + d) for d in (-60, -30, 0, 30, 60)}
    return next(c for c in ("000000", "111111", "222222", "333333", "444444", "555555") if c not in valid)


# ---- profile (P04) -------------------------------------------------------------------

@pytest.mark.promise("P04")
def test_profile_inline_edit_with_htmx(app, client, users, login):
    uid = users.create()
    login()

    resp = client.get("/account/profile/name?edit=1", headers=HX)
    assert resp.status_code == 200
    fragment = text(resp)
    assert "<html" not in fragment and "<body" not in fragment
    assert 'id="profile-name"' in fragment and 'name="value"' in fragment
    token = csrf_from(fragment)

    # htmx sends the token from <body hx-headers>; the fragment's own field works too.
    resp = client.post("/account/profile/name", data={"value": "  Ada Lovelace "},
                       headers={**HX, "X-CSRFToken": token})
    assert resp.status_code == 200
    fragment = text(resp)
    assert "<html" not in fragment
    assert "Ada Lovelace" in fragment and 'name="value"' not in fragment  # the display row again
    assert users.get(uid).name == "Ada Lovelace"

    resp = client.post("/account/profile/company", data={"csrf_token": token, "value": "Analytical Engines"},
                       headers=HX)
    assert "Analytical Engines" in text(resp)
    assert users.get(uid).company == "Analytical Engines"
    assert "account:profile:updated" in events(app, uid)


@pytest.mark.promise("P04")
def test_profile_value_too_long_saves_nothing(client, users, login):
    uid = users.create(name="Ada")
    login()
    token = csrf_from(text(client.get("/account/profile/name?edit=1", headers=HX)))
    resp = client.post("/account/profile/name", data={"csrf_token": token, "value": "x" * 121}, headers=HX)
    assert resp.status_code == 200
    fragment = text(resp)
    assert "Use at most 120 characters." in fragment
    assert 'aria-invalid="true"' in fragment and 'name="value"' in fragment  # still editing
    assert users.get(uid).name == "Ada"

    # 120 is the limit, not 119.
    client.post("/account/profile/name", data={"csrf_token": token, "value": "y" * 120}, headers=HX)
    assert users.get(uid).name == "y" * 120


@pytest.mark.promise("P04")
def test_clearing_a_profile_field_unsets_it(client, users, login):
    uid = users.create(company="Difference Ltd")
    login()
    token = csrf_from(text(client.get("/account/profile/company?edit=1", headers=HX)))
    resp = client.post("/account/profile/company", data={"csrf_token": token, "value": "   "}, headers=HX)
    assert "Not set" in text(resp)
    assert users.get(uid).company is None
    assert "Not set" in text(client.get("/account/"))


@pytest.mark.promise("P04")
def test_profile_edit_without_htmx_uses_full_pages(client, forms, users, login):
    uid = users.create()
    login()
    page = client.get("/account/profile/name?edit=1")
    assert "<html" in text(page) and 'name="value"' in text(page)

    resp = forms.post("/account/profile/name", {"value": "Augusta Ada King"}, page="/account/profile/name?edit=1")
    assert resp.status_code == 302 and resp.headers["Location"].endswith("/account/")
    account = text(client.get("/account/"))
    assert "Name saved." in account and "Augusta Ada King" in account
    assert users.get(uid).name == "Augusta Ada King"

    # A rejected value without htmx re-renders the full page with the message.
    resp = forms.post("/account/profile/name", {"value": "z" * 121}, page="/account/profile/name?edit=1")
    assert resp.status_code == 200 and "<html" in text(resp) and "Use at most 120 characters." in text(resp)
    assert users.get(uid).name == "Augusta Ada King"


def test_profile_unknown_field_and_missing_csrf(client, users, login):
    uid = users.create()
    login()
    assert client.get("/account/profile/email?edit=1").status_code == 404
    assert client.post("/account/profile/is_staff", data={"value": "1"}).status_code in (400, 404)
    resp = client.post("/account/profile/name", data={"value": "No Token"}, headers=HX)
    assert resp.status_code == 400
    assert users.get(uid).name is None


def test_account_pages_need_login(client):
    for url in ("/account/", "/account/profile/name?edit=1", "/account/password", "/account/2fa/setup"):
        resp = client.get(url)
        assert resp.status_code == 302 and "/login" in resp.headers["Location"], url


# ---- the re-authentication window --------------------------------------------------

DANGEROUS = ["/account/password", "/account/email", "/account/2fa/setup", "/account/2fa/disable"]


@pytest.mark.parametrize("url", DANGEROUS)
def test_dangerous_pages_need_a_recent_login(app, client, forms, users, login, url):
    users.create()
    login()
    secret = None
    if url == "/account/2fa/disable":
        secret, _ = turn_on_2fa(client, forms)

    resp = client.get(url)
    assert resp.status_code == 200, "a fresh login opens the page"

    age_logins(app)
    resp = client.get(url)
    assert resp.status_code == 302
    location = urlsplit(resp.headers["Location"])
    assert location.path == "/account/reauth"
    assert parse_qs(location.query)["next"] == [url]
    reauth = path_of(resp.headers["Location"])
    assert "confirm it is you" in text(client.get(reauth)).lower()

    resp = forms.post(reauth, {"password": "not my password"})
    assert resp.status_code == 200 and "That password is not correct." in text(resp)
    assert client.get(url).status_code == 302, "a failed attempt opens nothing"

    data = {"password": users.password}
    if secret:
        # With 2FA on, the password alone is not enough.
        resp = forms.post(reauth, data)
        assert resp.status_code == 200 and "Enter the current code" in text(resp)
        data["code"] = next_code(secret)
    resp = forms.post(reauth, data)
    assert resp.status_code == 302 and resp.headers["Location"] == url
    assert client.get(url).status_code == 200
    assert "account:reauth:failed" in events(app) and "account:reauthenticated" in events(app)


def test_reauth_never_redirects_off_site(app, client, forms, users, login):
    users.create()
    login()
    for target in ("https://evil.example/steal", "//evil.example/", "/\\evil.example"):
        resp = forms.post(f"/account/reauth?next={target}", {"password": users.password},
                          page="/account/reauth")
        assert resp.status_code == 302
        assert resp.headers["Location"] == "/account/", target


# ---- changing the password -----------------------------------------------------------

def test_change_password_messages(client, forms, users, login):
    users.create()
    login()
    new = "a brand new passphrase"

    resp = forms.post("/account/password", {"current": "", "password": new, "confirm": new})
    assert "Enter your current password." in text(resp)
    resp = forms.post("/account/password", {"current": "wrong password!", "password": new, "confirm": new})
    assert "Your current password is not correct." in text(resp)
    resp = forms.post("/account/password", {"current": users.password, "password": new, "confirm": new + "x"})
    assert "The two passwords do not match." in text(resp)
    resp = forms.post("/account/password", {"current": users.password, "password": "short", "confirm": "short"})
    assert "Use at least 10 characters." in text(resp)


def test_change_password_ends_other_sessions_and_sends_notice(app, client, forms, users, login, mail):
    uid = users.create()
    login()
    other = second_client(app)
    assert not is_anonymous(other)
    new = "a brand new passphrase"

    resp = forms.post("/account/password", {"current": users.password, "password": new, "confirm": new})
    assert resp.status_code == 302 and resp.headers["Location"].endswith("/account/")
    assert "Every other session was signed out." in text(client.get("/account/"))

    assert is_anonymous(other), "the other browser is signed out"
    assert not is_anonymous(client), "this browser stays in"
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(UserSession)
                                 .where(UserSession.user_id == uid)) == 1

    notice = mail.wait_for(EMAIL, "password was changed")
    assert "/forgot" in body(notice)  # tells the owner how to take it back
    assert "account:password:changed" in events(app, uid)

    # The old password no longer works; the new one does.
    third = app.test_client()
    resp = Forms(third).post("/login", {"email": EMAIL, "password": users.password})
    assert resp.status_code == 200 and "do not match" in text(resp)
    resp = Forms(third).post("/login", {"email": EMAIL, "password": new})
    assert resp.status_code == 302


# ---- changing the email (P04) ------------------------------------------------------

NEW = "lovelace@example.org"


@pytest.mark.promise("P04")
def test_change_email_messages(client, forms, users, login):
    uid = users.create()
    login()
    resp = forms.post("/account/email", {"email": NEW, "password": ""})
    assert "Enter your password." in text(resp)
    resp = forms.post("/account/email", {"email": NEW, "password": "not the password"})
    assert "Your password is not correct." in text(resp)
    resp = forms.post("/account/email", {"email": "not-an-address", "password": users.password})
    assert resp.status_code == 200 and "Enter a valid email address" in text(resp)
    resp = forms.post("/account/email", {"email": "ADA@example.com", "password": users.password})
    assert "That is already your email address." in text(resp)
    assert users.get(uid).email == EMAIL


@pytest.mark.promise("P04")
def test_change_email_is_confirmed_from_the_new_address(app, client, forms, users, login, mail):
    uid = users.create(verified=False)
    login()
    resp = forms.post("/account/email", {"email": NEW, "password": users.password})
    assert resp.status_code == 302
    assert f"We sent a confirmation link to {NEW}" in text(client.get("/account/"))

    confirm = mail.wait_for(NEW, "Confirm your new email")
    assert mail.to(EMAIL) == [], "the old address gets nothing until the change happens"
    assert users.get(uid).email == EMAIL, "nothing changes before the link is opened"

    url = path_of(link(confirm))
    # The link works only in a session of the account it changes.
    anonymous = app.test_client()
    resp = anonymous.get(url)
    assert resp.status_code == 302 and "/login" in resp.headers["Location"]
    assert users.get(uid).email == EMAIL

    resp = client.get(url)
    assert resp.status_code == 302 and resp.headers["Location"].endswith("/account/")
    user = users.get(uid)
    assert user.email == NEW and user.email_key == NEW and user.email_verified_at is not None
    page = text(client.get("/account/"))
    assert f"Your email address is now {NEW}" in page and "confirmed" in page

    notice = mail.wait_for(EMAIL, "email address was changed")
    assert NEW in body(notice)
    assert client.get(url).status_code == 400, "the link works once"
    assert {"account:email:change_requested", "account:email:changed"} <= set(events(app, uid))

    # The new address logs in; the old one no longer does.
    assert Forms(app.test_client()).post("/login", {"email": NEW, "password": users.password}).status_code == 302


@pytest.mark.promise("P04")
def test_change_to_a_taken_email_reveals_nothing_and_changes_nothing(app, client, forms, users, login, mail):
    uid = users.create()
    users.create(email=NEW)
    login()
    resp = forms.post("/account/email", {"email": NEW, "password": users.password})
    assert resp.status_code == 302 and resp.headers["Location"].endswith("/account/")
    assert f"We sent a confirmation link to {NEW}" in text(client.get("/account/"))  # same page as success
    mail.deliver()
    assert mail.to(NEW) == [] and mail.to(EMAIL) == []
    assert users.get(uid).email == EMAIL


@pytest.mark.promise("P04")
def test_email_link_opened_in_another_account_changes_nothing(app, client, forms, users, login, mail):
    """The notice queued while confirming is rolled back with the refused change."""
    uid = users.create()
    users.create(email="bob@example.net")
    login()
    forms.post("/account/email", {"email": NEW, "password": users.password})
    url = path_of(link(mail.wait_for(NEW, "Confirm your new email")))

    bob = app.test_client()
    assert Forms(bob).post("/login", {"email": "bob@example.net", "password": users.password}).status_code == 302
    resp = bob.get(url)
    assert resp.status_code == 400 and "belongs to another account" in text(resp)
    mail.deliver()
    assert mail.to(EMAIL) == [] and mail.to("bob@example.net") == []
    assert users.get(uid).email == EMAIL

    # The refusal did not spend the link: its owner can still use it.
    assert client.get(url).status_code == 302
    assert users.get(uid).email == NEW


# ---- two-factor authentication (P05) -----------------------------------------------

@pytest.mark.promise("P05")
def test_2fa_setup_shows_secret_and_qr_from_our_origin(client, users, login):
    users.create()
    login()
    page = text(client.get("/account/2fa/setup"))
    secret = SECRET_RE.search(page).group(1)
    assert len(secret) >= 16
    assert '<img src="/account/2fa/qr.svg"' in page

    qr = client.get("/account/2fa/qr.svg")
    assert qr.status_code == 200 and qr.mimetype == "image/svg+xml"
    assert b"<svg" in qr.data and b"http" not in qr.data.replace(b"http://www.w3.org", b"")
    assert "no-store" in qr.headers["Cache-Control"]

    # A reload keeps the same secret (what was scanned stays valid).
    assert SECRET_RE.search(text(client.get("/account/2fa/setup"))).group(1) == secret


@pytest.mark.promise("P05")
def test_2fa_setup_rejects_a_wrong_code(client, forms, users, login):
    uid = users.create()
    login()
    secret = SECRET_RE.search(text(client.get("/account/2fa/setup"))).group(1)
    resp = forms.post("/account/2fa/setup", {"code": wrong_code(secret)})
    assert resp.status_code == 200 and "That code is not right." in text(resp)
    resp = forms.post("/account/2fa/setup", {"code": ""})
    assert "Enter the 6-digit code." in text(resp)
    assert not users.get(uid).has_totp


@pytest.mark.promise("P05")
def test_2fa_turned_on_then_needed_at_login(app, client, forms, users, login, mail):
    uid = users.create()
    login()
    secret, codes = turn_on_2fa(client, forms)
    assert len(set(codes)) == 10
    assert users.get(uid).has_totp

    # Recovery codes are stored hashed only.
    with app.app_context():
        stored = [r.code_hash for r in db.session.scalars(sa.select(RecoveryCode).where(RecoveryCode.user_id == uid))]
        secret_enc = db.session.get(User, uid).totp_secret_enc
    assert len(stored) == 10
    dump = "\n".join(stored)
    for code in codes:
        assert code not in dump and code.replace("-", "") not in dump
    assert secret not in secret_enc

    notice = mail.wait_for(EMAIL, "Two-factor authentication was turned on")
    assert secret not in body(notice)
    page = text(client.get("/account/"))
    assert "10 recovery codes left" in page
    assert client.get("/account/2fa/qr.svg").status_code == 404, "the QR is gone once 2FA is on"
    resp = client.get("/account/2fa/setup")
    assert resp.status_code == 302  # already on

    forms.post("/logout", {}, page="/account/")
    assert is_anonymous(client)
    resp = forms.post("/login", {"email": EMAIL, "password": users.password})
    assert resp.status_code == 302 and resp.headers["Location"].endswith("/login/2fa")
    assert is_anonymous(client), "the password alone does not sign in"

    resp = forms.post("/login/2fa", {"code": wrong_code(secret)})
    assert resp.status_code == 200 and "That code is not right." in text(resp)
    assert is_anonymous(client)

    resp = forms.post("/login/2fa", {"code": next_code(secret)})
    assert resp.status_code == 302 and resp.headers["Location"].endswith("/dashboard")
    assert not is_anonymous(client)
    assert "account:2fa:enabled" in events(app, uid) and "account:2fa:failed" in events(app, uid)


@pytest.mark.promise("P05")
def test_regenerating_recovery_codes_voids_the_old_ones(app, client, forms, users, login):
    users.create()
    login()
    secret, old = turn_on_2fa(client, forms)

    resp = forms.post("/account/2fa/recovery-codes", {}, page="/account/")
    assert resp.status_code == 200
    new = CODE_RE.findall(text(resp))
    assert len(new) == 10 and not set(new) & set(old)
    assert "Your earlier codes no longer work." in text(resp)

    forms.post("/logout", {}, page="/account/")
    forms.post("/login", {"email": EMAIL, "password": users.password})
    resp = forms.post("/login/2fa", {"code": old[0]})
    assert resp.status_code == 200 and "That code is not right." in text(resp)
    resp = forms.post("/login/2fa", {"code": new[0].upper()})
    assert resp.status_code == 302
    assert "You used a recovery code; 9 remain." in text(client.get("/dashboard"))

    # A used recovery code cannot be used again.
    forms.post("/logout", {}, page="/account/")
    forms.post("/login", {"email": EMAIL, "password": users.password})
    resp = forms.post("/login/2fa", {"code": new[0]})
    assert resp.status_code == 200 and "That code is not right." in text(resp)
    assert "account:2fa:recovery_codes_regenerated" in events(app)


@pytest.mark.promise("P05")
def test_disabling_2fa_asks_first_and_sends_notice(app, client, forms, users, login, mail):
    uid = users.create()
    login()
    turn_on_2fa(client, forms)

    page = client.get("/account/2fa/disable")
    assert page.status_code == 200
    assert "Turn off two-factor authentication?" in text(page) and "Turn off 2FA" in text(page)
    assert users.get(uid).has_totp, "showing the confirmation changes nothing"

    resp = forms.post("/account/2fa/disable", {})
    assert resp.status_code == 302 and resp.headers["Location"].endswith("/account/")
    assert "Two-factor authentication is off." in text(client.get("/account/"))
    assert not users.get(uid).has_totp
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(RecoveryCode)) == 0
    mail.wait_for(EMAIL, "Two-factor authentication was turned off")
    assert "account:2fa:disabled" in events(app, uid)

    # The next login needs the password only.
    forms.post("/logout", {}, page="/account/")
    resp = forms.post("/login", {"email": EMAIL, "password": users.password})
    assert resp.headers["Location"].endswith("/dashboard")


# ---- sessions ------------------------------------------------------------------------

def test_sessions_list_ends_another_session(app, client, forms, users, login):
    uid = users.create()
    login()
    other = second_client(app)
    page = text(client.get("/account/"))
    assert page.count("this device") == 1
    assert "OtherBrowser/1.0" in page and "Sign out everywhere else" in page

    with app.app_context():
        other_id = db.session.scalar(sa.select(UserSession.id).where(UserSession.user_agent == "OtherBrowser/1.0"))
    assert f"/account/sessions/{other_id}/end" in page

    resp = forms.post(f"/account/sessions/{other_id}/end", {}, page="/account/")
    assert resp.status_code == 302 and resp.headers["Location"].endswith("/account/#sessions")
    assert "That session is signed out." in text(client.get("/account/"))
    assert is_anonymous(other)
    assert not is_anonymous(client)
    assert "account:session:ended" in events(app, uid)


def test_cannot_end_someone_elses_session(app, client, forms, users, login):
    users.create()
    users.create(email="bob@example.net")
    login()
    bob = second_client(app, email="bob@example.net")
    with app.app_context():
        bob_session = db.session.scalar(sa.select(UserSession.id).where(UserSession.user_agent == "OtherBrowser/1.0"))
    resp = forms.post(f"/account/sessions/{bob_session}/end", {}, page="/account/")
    assert resp.status_code == 404
    assert not is_anonymous(bob)


def test_ending_this_session_from_the_list_logs_out(app, client, forms, users, login):
    users.create()
    login()
    with app.app_context():
        mine = db.session.scalar(sa.select(UserSession.id))
    resp = forms.post(f"/account/sessions/{mine}/end", {}, page="/account/")
    assert resp.status_code == 302 and "/login" in resp.headers["Location"]
    assert is_anonymous(client)


def test_sign_out_everywhere_else(app, client, forms, users, login):
    uid = users.create()
    login()
    others = [second_client(app, agent=f"Browser{i}/1.0") for i in range(2)]
    resp = forms.post("/account/sessions/end-others", {}, page="/account/")
    assert resp.status_code == 302
    page = text(client.get("/account/"))
    assert "Signed out of 2 other sessions." in page
    assert "Sign out everywhere else" not in page  # only this one is left
    assert all(is_anonymous(o) for o in others)
    assert not is_anonymous(client)
    assert "account:session:ended_others" in events(app, uid)
