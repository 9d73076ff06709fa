"""The sign-up, sign-in and recovery flows, driven through real forms.

Every test goes through the Flask test client with real CSRF tokens, a real
database (SQLite or PostgreSQL) and real SMTP to a loopback server, and checks
what a person would notice: status codes, redirects, page text, mail, and the
rows left behind.
"""
from __future__ import annotations

import html
import logging
import re
import time
from datetime import datetime, timedelta, timezone
from urllib.parse import urlsplit

import argon2
import pyotp
import pytest
import sqlalchemy as sa
from itsdangerous import TimestampSigner, URLSafeTimedSerializer

from app.extensions import db
from app.models import (
    AuditEvent,
    ConsentEvent,
    OneTimeToken,
    OutboxMessage,
    PolicyAcceptance,
    PolicyVersion,
    User,
    UserSession,
)
from tests.conftest import Forms
from tests.fakes.smtp import body, link

PASSWORD = "correct horse battery"
CSRF_VALUE_RE = re.compile(r'(name="csrf_token"[^>]*value=")[^"]+|("X-CSRFToken": ")[^"]+')


# ---- helpers ---------------------------------------------------------------------------

def text(resp) -> str:
    return html.unescape(resp.get_data(as_text=True))


def without_tokens(page: str) -> str:
    """A page with its CSRF tokens blanked, so two renders can be compared."""
    return CSRF_VALUE_RE.sub(lambda m: (m.group(1) or m.group(2)) + "<csrf>", page)


def path_of(url: str) -> str:
    return urlsplit(url).path


def location(resp) -> str:
    return path_of(resp.headers["Location"])


def signup_data(**over) -> dict:
    data = {"email": "ada@example.com", "password": PASSWORD, "age_ok": "y", "accept_policy": "y"}
    data.update(over)
    return {k: v for k, v in data.items() if v is not None}


def count(app, model, *where) -> int:
    with app.app_context():
        return db.session.scalar(sa.select(sa.func.count()).select_from(model).where(*where)) or 0


def user_by_email(app, email: str) -> User | None:
    with app.app_context():
        u = db.session.scalar(sa.select(User).where(User.email_key == email.lower()))
        if u is not None:
            db.session.expunge(u)
        return u


def is_logged_in(client) -> bool:
    resp = client.get("/dashboard")
    if resp.status_code == 200:
        return True
    assert resp.status_code == 302 and location(resp) == "/login", resp.status_code
    return False


def expire_tokens(app, purpose: str) -> None:
    """Move every link of `purpose` past its expiry, as if it had sat in the inbox."""
    with app.app_context():
        db.session.execute(sa.update(OneTimeToken).where(OneTimeToken.purpose == purpose)
                           .values(expires_at=datetime.now(timezone.utc) - timedelta(minutes=1)))
        db.session.commit()


def resign_old(app, token: str, purpose: str, age: timedelta) -> str:
    """The same link payload, signed as if it had been issued `age` ago."""
    secret = app.config["SECRET_KEY"]
    payload = URLSafeTimedSerializer(secret, salt=f"link:{purpose}").loads(token)

    class OldSigner(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(time.time() - age.total_seconds())

    return URLSafeTimedSerializer(secret, salt=f"link:{purpose}", signer=OldSigner).dumps(payload)


def enable_totp(app, user_id: int) -> tuple[str, list[str]]:
    """Turn on 2FA as the account page would after a confirmed code; the
    current step counts as used, so the next valid code is the next step's."""
    from app.services import totp

    secret = pyotp.random_base32()
    with app.app_context():
        user = db.session.get(User, user_id)
        codes = totp.enable(user, secret, int(time.time()) // 30)
        db.session.commit()
    return secret, codes


def next_code(secret: str) -> str:
    return pyotp.TOTP(secret).at(time.time() + 30)


@pytest.fixture
def other(app):
    """A second browser."""
    return app.test_client()


# ---- signup ----------------------------------------------------------------------------

@pytest.mark.promise("P01")
def test_signup_creates_unverified_account_with_argon2id_hash_and_mails_a_link(app, client, forms, mail, caplog):
    caplog.set_level(logging.DEBUG)
    form_page = text(client.get("/signup"))
    m = re.search(r"\(version (\d+)\)", form_page)
    assert m, "signup page names the policy version"
    shown_version = int(m.group(1))
    before = datetime.now(timezone.utc) - timedelta(seconds=1)

    resp = forms.post("/signup", signup_data())

    assert resp.status_code == 302 and location(resp) == "/signup/check-email"
    page = text(client.get("/signup/check-email"))
    assert "Check your email" in page and "ada@example.com" in page

    user = user_by_email(app, "ada@example.com")
    assert user is not None and user.email == "ada@example.com"
    assert user.email_verified_at is None
    assert user.password_hash.startswith("$argon2id$")
    assert PASSWORD not in user.password_hash
    assert user.age_confirmed_at is not None

    with app.app_context():
        acc = db.session.scalars(sa.select(PolicyAcceptance).where(PolicyAcceptance.user_id == user.id)).all()
        latest = db.session.scalar(sa.select(sa.func.max(PolicyVersion.number)))
        assert len(acc) == 1
        assert acc[0].version.number == shown_version == latest
        assert before <= acc[0].accepted_at <= datetime.now(timezone.utc) + timedelta(seconds=1)
        assert acc[0].context == "signup"

    msg = mail.wait_for("ada@example.com", "Confirm your email")
    assert path_of(link(msg)).startswith("/verify/")

    # No plaintext password anywhere: not in the audit log, the outbox or the logs.
    with app.app_context():
        details = db.session.scalars(sa.select(AuditEvent.details)).all()
        outbox = db.session.scalars(sa.select(OutboxMessage.body_text)).all()
    assert details and not any(PASSWORD in d for d in details)
    assert not any(PASSWORD in b for b in outbox)
    assert PASSWORD not in caplog.text


@pytest.mark.parametrize("over, message, field", [
    ({"email": "not-an-email"}, "Enter a valid email address", "email"),
    ({"email": ""}, "Enter your email address.", "email"),
    ({"password": "short"}, "Use at least 10 characters.", "password"),
    ({"password": "x" * 129}, "Use at most 128 characters.", "password"),
    ({"accept_policy": None}, "Please accept the privacy policy to continue.", "accept_policy"),
])
def test_signup_rejects_bad_input_with_a_message_on_the_form(app, client, forms, mail, over, message, field):
    resp = forms.post("/signup", signup_data(**over))

    assert resp.status_code == 200
    page = text(resp)
    assert "Create your account" in page
    assert re.search(rf'<p class="error" id="{field}-error">[^<]*{re.escape(message)}', page), page
    assert count(app, User) == 0
    assert mail.to("ada@example.com") == []


@pytest.mark.promise("P03")
def test_signup_requires_confirming_the_minimum_age(app, client, forms):
    assert "I am at least 18 years old." in text(client.get("/signup"))

    resp = forms.post("/signup", signup_data(age_ok=None))

    assert resp.status_code == 200
    assert "You must be at least 18 to open an account." in text(resp)
    assert count(app, User) == 0


@pytest.mark.promise("P03")
def test_minimum_age_follows_the_setting(make_app):
    app21 = make_app(MIN_AGE="21")
    client = app21.test_client()
    assert "I am at least 21 years old." in text(client.get("/signup"))

    resp = Forms(client).post("/signup", signup_data(age_ok=None))

    assert resp.status_code == 200
    assert "You must be at least 21 to open an account." in text(resp)
    assert count(app21, User) == 0


def test_signup_with_a_taken_address_looks_the_same_and_tells_the_owner(app, client, other, forms, mail):
    first = forms.post("/signup", signup_data())
    assert first.status_code == 302
    mail.wait_for("ada@example.com", "Confirm your email")
    first_page = text(client.get(first.headers["Location"]))

    again = Forms(other).post("/signup", signup_data(email="ADA@EXAMPLE.COM", password="another good password"))

    assert again.status_code == 302 and again.headers["Location"] == first.headers["Location"]
    again_page = text(other.get(again.headers["Location"]))
    assert without_tokens(again_page).replace("ADA@EXAMPLE.COM", "ada@example.com") == without_tokens(first_page)
    assert count(app, User) == 1
    notice = mail.wait_for("ada@example.com", "Someone tried to sign up")
    assert "No new account was made" in body(notice)
    assert len([m for m in mail.to("ada@example.com") if "Confirm your email" in m["Subject"]]) == 1


def test_signup_normalizes_the_address(app, forms):
    forms.post("/signup", signup_data(email="  Ada@Example.COM "))
    user = user_by_email(app, "ada@example.com")
    assert user is not None
    assert user.email_key == "ada@example.com"
    assert user.email == "Ada@example.com"  # the domain is case-folded, the local part kept


def consent_events(app, user_id) -> list[tuple[str, bool, str, int]]:
    with app.app_context():
        return [(e.purpose, e.granted, e.source, e.policy_version_id) for e in db.session.scalars(
            sa.select(ConsentEvent).where(ConsentEvent.user_id == user_id).order_by(ConsentEvent.id))]


@pytest.mark.promise("P50")
def test_signup_asks_for_marketing_email_unticked_and_records_nothing_when_left_alone(app, client, forms, mail):
    page = text(client.get("/signup"))
    box = re.search(r'<input[^>]*name="marketing_email"[^>]*>', page)
    assert box and 'type="checkbox"' in box.group(0) and "checked" not in box.group(0)
    assert "Email me product news" in page

    assert forms.post("/signup", signup_data()).status_code == 302

    user = user_by_email(app, "ada@example.com")
    assert user.marketing_email is False and user.preference_cookies is False
    assert consent_events(app, user.id) == []
    assert count(app, AuditEvent, AuditEvent.event.like("consent:%")) == 0


@pytest.mark.promise("P50")
def test_ticking_marketing_email_at_signup_records_it_with_source_and_accepted_policy_version(app, client, forms,
                                                                                               mail):
    before = datetime.now(timezone.utc) - timedelta(seconds=1)
    assert forms.post("/signup", signup_data(marketing_email="y")).status_code == 302

    user = user_by_email(app, "ada@example.com")
    assert user.marketing_email is True and user.preference_cookies is False
    with app.app_context():
        accepted = db.session.scalar(sa.select(PolicyAcceptance).where(PolicyAcceptance.user_id == user.id))
        event = db.session.scalar(sa.select(ConsentEvent).where(ConsentEvent.user_id == user.id))
        number = accepted.version.number
        assert before <= event.created_at <= datetime.now(timezone.utc) + timedelta(seconds=1)
        assert db.session.scalar(sa.select(sa.func.count()).select_from(AuditEvent).where(
            AuditEvent.event == "consent:marketing_email:given")) == 1
    assert consent_events(app, user.id) == [("marketing_email", True, "signup", accepted.policy_version_id)]

    # The person sees it in their consent history: given, at signup, under the version they accepted.
    client.get(path_of(link(mail.wait_for("ada@example.com", "Confirm your email"))))
    assert forms.post("/login", {"email": "ada@example.com", "password": PASSWORD}).status_code == 302
    page = text(client.get("/privacy-center/"))
    history = page[page.index('id="consent-history"'):]
    assert "given" in history and "Signup" in history
    assert f'href="/privacy/versions/{number}"' in history
    assert "Turn off marketing email" in page


@pytest.mark.promise("P50")
def test_signup_with_a_taken_address_never_changes_that_accounts_consent(app, client, other, forms, users, mail):
    uid = users.create()

    again = Forms(other).post("/signup", signup_data(marketing_email="y", password="another good password"))

    assert again.status_code == 302 and location(again) == "/signup/check-email"
    mail.wait_for("ada@example.com", "Someone tried to sign up")
    assert users.get(uid).marketing_email is False
    assert consent_events(app, uid) == []


# ---- email verification ----------------------------------------------------------------

def _signed_up(forms, mail) -> str:
    assert forms.post("/signup", signup_data()).status_code == 302
    return path_of(link(mail.wait_for("ada@example.com", "Confirm your email")))


def test_verification_link_confirms_once(app, client, forms, mail):
    verify = _signed_up(forms, mail)

    resp = client.get(verify)
    assert resp.status_code == 302 and location(resp) == "/login"
    assert "your email address is confirmed" in text(client.get("/login"))
    assert user_by_email(app, "ada@example.com").email_verified_at is not None

    again = client.get(verify)
    assert again.status_code == 400
    assert "This link has already been used" in text(again)


def test_tampered_verification_link_is_refused(app, client, forms, mail):
    verify = _signed_up(forms, mail)
    token = verify.rsplit("/", 1)[1]
    tampered = ("A" if token[0] != "A" else "B") + token[1:]

    resp = client.get("/verify/" + tampered)

    assert resp.status_code == 400
    assert "This link is not valid" in text(resp)
    assert user_by_email(app, "ada@example.com").email_verified_at is None


def test_expired_verification_link_is_refused(app, client, forms, mail):
    verify = _signed_up(forms, mail)
    expire_tokens(app, "verify_email")

    resp = client.get(verify)

    assert resp.status_code == 400
    assert "This link has expired" in text(resp)
    assert user_by_email(app, "ada@example.com").email_verified_at is None


def test_verification_link_older_than_its_lifetime_is_refused_by_its_signature(app, client, forms, mail):
    verify = _signed_up(forms, mail)
    old = resign_old(app, verify.rsplit("/", 1)[1], "verify_email", timedelta(hours=49))

    resp = client.get("/verify/" + old)

    assert resp.status_code == 400
    assert "This link has expired" in text(resp)


def test_resending_the_verification_mail_is_limited(app, client, forms, users, login, mail):
    users.create(verified=False)
    login()
    assert "Send the link again" in text(client.get("/dashboard"))

    for _ in range(3):
        resp = forms.post("/verify/resend", {}, page="/dashboard")
        assert resp.status_code == 302 and location(resp) == "/dashboard"
    mail.wait_for("ada@example.com", "Confirm your email", after=2)

    fourth = forms.post("/verify/resend", {}, page="/dashboard")
    assert fourth.status_code == 429
    assert "Too many" in text(fourth)
    mail.deliver()
    assert len(mail.to("ada@example.com")) == 3

    # Only the newest link works: each resend voided the one before.
    links = [path_of(link(m)) for m in mail.to("ada@example.com")]
    assert client.get(links[0]).status_code == 400
    assert client.get(links[-1]).status_code == 302


# ---- login, sessions, logout -----------------------------------------------------------

def test_login_with_the_right_password_opens_the_dashboard(client, forms, users):
    users.create()
    resp = forms.post("/login", {"email": "ada@example.com", "password": PASSWORD})
    assert resp.status_code == 302 and location(resp) == "/dashboard"
    page = text(client.get("/dashboard"))
    assert "Welcome" in page and "Log out" in page


def test_login_accepts_the_address_in_any_case(client, forms, users):
    users.create()
    resp = forms.post("/login", {"email": "ADA@Example.com", "password": PASSWORD})
    assert resp.status_code == 302 and location(resp) == "/dashboard"


def test_wrong_password_and_unknown_email_look_the_same(client, other, forms, users):
    users.create()
    wrong = forms.post("/login", {"email": "ada@example.com", "password": "not the password"})
    unknown = Forms(other).post("/login", {"email": "ghost@example.com", "password": "not the password"})

    assert wrong.status_code == unknown.status_code == 200
    errors = [re.findall(r'<p class="error"[^>]*>([^<]*)</p>', text(r)) for r in (wrong, unknown)]
    assert errors[0] == errors[1] == ["That email and password do not match an account."]
    assert (without_tokens(text(wrong)).replace("ada@example.com", "X")
            == without_tokens(text(unknown)).replace("ghost@example.com", "X"))
    assert not is_logged_in(client) and not is_logged_in(other)


@pytest.mark.promise("P02")
def test_login_sets_one_httponly_secure_lax_cookie_with_a_new_session(app, client, forms, users):
    users.create()
    client.get("/login")
    before = client.get_cookie("session").value

    resp = forms.post("/login", {"email": "ada@example.com", "password": PASSWORD})

    cookies = resp.headers.getlist("Set-Cookie")
    assert len(cookies) == 1, cookies
    parts = [p.strip() for p in cookies[0].split(";")]
    assert parts[0].startswith("session=")
    flags = {p.split("=")[0].lower(): p for p in parts[1:]}
    assert "httponly" in flags and "secure" in flags
    assert flags["samesite"].lower() == "samesite=lax"

    after = client.get_cookie("session").value
    assert after != before
    # The anonymous session's contents (its CSRF token) did not survive the login:
    # a planted session cannot be carried into an authenticated one.
    serializer = app.session_interface.get_signing_serializer(app)
    old, new = serializer.loads(before), serializer.loads(after)
    assert "csrf_token" in old and "csrf_token" not in new
    assert "sid" in new and "sid" not in old

    # A second login gets a server-side session of its own.
    forms.post("/logout", {}, page="/dashboard")
    forms.post("/login", {"email": "ada@example.com", "password": PASSWORD})
    assert serializer.loads(client.get_cookie("session").value)["sid"] != new["sid"]

    # Pages set no other cookie, logged in or not.
    for url in ("/", "/dashboard", "/account/", "/privacy", "/signup", "/login"):
        for header in client.get(url).headers.getlist("Set-Cookie"):
            assert header.startswith("session="), (url, header)


def test_logout_needs_a_post_and_ends_the_session_on_the_server(app, client, forms, users, login):
    users.create()
    login()
    assert is_logged_in(client)
    stolen = client.get_cookie("session").value

    assert client.get("/logout").status_code == 405
    assert is_logged_in(client)

    resp = forms.post("/logout", {}, page="/dashboard")
    assert resp.status_code == 302
    assert not is_logged_in(client)
    assert count(app, UserSession) == 0

    client.set_cookie("session", stolen)
    resp = client.get("/dashboard")
    assert resp.status_code == 302 and location(resp) == "/login"


@pytest.mark.promise("P01")
def test_login_rehashes_a_password_hashed_with_other_parameters(app, client, forms, users):
    uid = users.create()
    old_hash = argon2.PasswordHasher(time_cost=2, memory_cost=4096, parallelism=1,
                                     type=argon2.Type.ID).hash(PASSWORD)
    with app.app_context():
        db.session.get(User, uid).password_hash = old_hash
        db.session.commit()

    resp = forms.post("/login", {"email": "ada@example.com", "password": PASSWORD})
    assert resp.status_code == 302 and location(resp) == "/dashboard"

    new_hash = users.get(uid).password_hash
    assert new_hash != old_hash
    assert new_hash.startswith("$argon2id$")
    c = app.config
    assert f"m={c['ARGON2_MEMORY_COST']},t={c['ARGON2_TIME_COST']},p={c['ARGON2_PARALLELISM']}$" in new_hash
    assert argon2.PasswordHasher().verify(new_hash, PASSWORD)

    # A hash with current parameters is left alone.
    forms.post("/logout", {}, page="/dashboard")
    forms.post("/login", {"email": "ada@example.com", "password": PASSWORD})
    assert users.get(uid).password_hash == new_hash


def test_wrong_password_does_not_rehash(app, forms, users):
    uid = users.create()
    old_hash = argon2.PasswordHasher(time_cost=2, memory_cost=4096, parallelism=1,
                                     type=argon2.Type.ID).hash(PASSWORD)
    with app.app_context():
        db.session.get(User, uid).password_hash = old_hash
        db.session.commit()
    forms.post("/login", {"email": "ada@example.com", "password": "not the password"})
    assert users.get(uid).password_hash == old_hash


def test_next_parameter_is_followed_only_within_the_site(client, users):
    users.create()
    forms = Forms(client)
    ok = forms.post("/login?next=/account/", {"email": "ada@example.com", "password": PASSWORD})
    assert location(ok) == "/account/"
    forms.post("/logout", {}, page="/dashboard")
    evil = forms.post("/login?next=https://evil.example/", {"email": "ada@example.com", "password": PASSWORD})
    assert evil.headers["Location"] in ("/dashboard", "http://localhost/dashboard")


# ---- throttling ------------------------------------------------------------------------

def test_login_is_throttled_per_address(make_app):
    app = make_app(RATELIMIT_AUTH="3 per minute")
    client = app.test_client()
    forms = Forms(client)
    for n in range(3):
        resp = forms.post("/login", {"email": f"someone{n}@example.com", "password": "wrong password"})
        assert resp.status_code == 200

    resp = forms.post("/login", {"email": "someone3@example.com", "password": "wrong password"})
    assert resp.status_code == 429
    assert "Too many" in text(resp)

    # Another address is not affected.
    resp = forms.post("/login", {"email": "someone4@example.com", "password": "wrong password"},
                      environ_base={"REMOTE_ADDR": "10.9.9.9"})
    assert resp.status_code == 200


def test_login_is_throttled_per_account_and_says_the_same_for_unknown_accounts(make_app, users):
    app = make_app(RATELIMIT_AUTH="3 per minute")
    users.create()
    client = app.test_client()
    forms = Forms(client)

    pages = {}
    for email, net in (("ada@example.com", 1), ("ghost@example.com", 2)):
        for n in range(1, 4):
            resp = forms.post("/login", {"email": email, "password": "wrong password"},
                              environ_base={"REMOTE_ADDR": f"10.0.{net}.{n}"})
            assert resp.status_code == 200, (email, n)
        # From a fourth, fresh address, still refused: the limit follows the account,
        # and the address is spelled differently to show it is normalized first.
        resp = forms.post("/login", {"email": email.upper(), "password": PASSWORD},
                          environ_base={"REMOTE_ADDR": f"10.0.{net}.4"})
        assert resp.status_code == 429, email
        pages[email] = without_tokens(text(resp))

    assert "Too many" in pages["ada@example.com"]
    assert pages["ada@example.com"] == pages["ghost@example.com"]
    # The right password was refused too, and no session was made.
    assert count(app, UserSession) == 0


def test_signup_forgot_and_magic_link_requests_are_throttled(make_app):
    app = make_app(RATELIMIT_AUTH="3 per minute")
    client = app.test_client()
    forms = Forms(client)
    for url, data in (("/signup", signup_data(password="short")),
                      ("/forgot", {"email": "ada@example.com"}),
                      ("/login/link", {"email": "ada@example.com"})):
        codes = [forms.post(url, data).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429], url


# ---- CSRF ------------------------------------------------------------------------------

@pytest.mark.parametrize("url, data", [
    ("/login", {"email": "ada@example.com", "password": PASSWORD}),
    ("/signup", signup_data(email="new@example.com")),
    ("/forgot", {"email": "ada@example.com"}),
    ("/login/link", {"email": "ada@example.com"}),
])
def test_forms_without_csrf_token_are_refused(app, client, users, mail, url, data):
    users.create()
    client.get(url)  # a session exists; only the token is missing

    resp = client.post(url, data=data)

    assert resp.status_code == 400
    assert "Reload the page and try again" in text(resp)
    assert not is_logged_in(client)
    assert count(app, User) == 1
    assert count(app, OutboxMessage) == 0
    assert count(app, OneTimeToken) == 0
    assert mail.deliver() == 0


def test_forms_with_a_token_from_another_session_are_refused(app, client, other, users):
    users.create()
    foreign = Forms(other).token("/login")
    client.get("/login")
    resp = client.post("/login", data={"csrf_token": foreign, "email": "ada@example.com", "password": PASSWORD})
    assert resp.status_code == 400
    assert not is_logged_in(client)


def test_logout_without_csrf_token_is_refused(app, client, users, login):
    users.create()
    login()

    resp = client.post("/logout")

    assert resp.status_code == 400
    assert is_logged_in(client)
    assert count(app, UserSession) == 1


# ---- password reset --------------------------------------------------------------------

def test_forgot_password_looks_the_same_for_known_and_unknown_addresses(app, client, other, forms, users, mail):
    users.create()
    known = forms.post("/forgot", {"email": "ada@example.com"})
    unknown = Forms(other).post("/forgot", {"email": "ghost@example.com"})

    assert known.status_code == unknown.status_code == 200
    assert "If that address has an account, we sent it a link to reset your password" in text(known)
    assert without_tokens(text(known)) == without_tokens(text(unknown))

    msg = mail.wait_for("ada@example.com", "Reset your password")
    assert path_of(link(msg)).startswith("/reset/")
    assert mail.to("ghost@example.com") == []
    assert count(app, OutboxMessage, OutboxMessage.to_addr == "ghost@example.com") == 0


def test_password_reset_end_to_end(app, client, other, forms, users, mail):
    uid = users.create()
    # Another browser is logged in; the reset must sign it out.
    other_forms = Forms(other)
    assert other_forms.post("/login", {"email": "ada@example.com", "password": PASSWORD}).status_code == 302
    assert is_logged_in(other)

    forms.post("/forgot", {"email": "ada@example.com"})
    reset = path_of(link(mail.wait_for("ada@example.com", "Reset your password")))

    page = client.get(reset)
    assert page.status_code == 200 and "Choose a new password" in text(page)

    resp = forms.post(reset, {"password": "a brand new password", "confirm": "a different password"})
    assert resp.status_code == 200 and "The two passwords do not match." in text(resp)
    resp = forms.post(reset, {"password": "short", "confirm": "short"})
    assert resp.status_code == 200 and "Use at least 10 characters." in text(resp)
    assert is_logged_in(other)  # failed attempts change nothing

    resp = forms.post(reset, {"password": "a brand new password", "confirm": "a brand new password"})
    assert resp.status_code == 302 and location(resp) == "/login"
    assert "every session is signed out" in text(client.get("/login"))

    assert not is_logged_in(other)
    assert count(app, UserSession, UserSession.user_id == uid) == 0
    notice = mail.wait_for("ada@example.com", "Your password was changed")
    assert "/forgot" in body(notice)

    used = client.get(reset)
    assert used.status_code == 400 and "expired or was already used" in text(used)
    assert client.post(reset, data={"csrf_token": forms.token("/login"), "password": "yet another password",
                                    "confirm": "yet another password"}).status_code == 400

    old = forms.post("/login", {"email": "ada@example.com", "password": PASSWORD})
    assert old.status_code == 200 and "do not match an account" in text(old)
    new = forms.post("/login", {"email": "ada@example.com", "password": "a brand new password"})
    assert new.status_code == 302 and location(new) == "/dashboard"


def test_expired_reset_link_is_refused(app, client, forms, users, mail):
    users.create()
    forms.post("/forgot", {"email": "ada@example.com"})
    reset = path_of(link(mail.wait_for("ada@example.com", "Reset your password")))
    expire_tokens(app, "reset_password")

    resp = client.get(reset)
    assert resp.status_code == 400 and "expired or was already used" in text(resp)


def test_only_the_newest_reset_link_works(app, client, forms, users, mail):
    users.create()
    forms.post("/forgot", {"email": "ada@example.com"})
    forms.post("/forgot", {"email": "ada@example.com"})
    first = path_of(link(mail.wait_for("ada@example.com", "Reset your password")))
    second = path_of(link(mail.wait_for("ada@example.com", "Reset your password", after=1)))
    assert client.get(first).status_code == 400
    assert client.get(second).status_code == 200


# ---- magic link (P05) ------------------------------------------------------------------

def _magic_link(forms, mail, after=0) -> str:
    resp = forms.post("/login/link", {"email": "ada@example.com"})
    assert resp.status_code == 200 and "we sent it a sign-in link" in text(resp)
    return path_of(link(mail.wait_for("ada@example.com", "sign-in link", after=after)))


@pytest.mark.promise("P05")
def test_magic_link_signs_in_on_post_only_and_once(app, client, other, forms, users, mail):
    users.create()
    magic = _magic_link(forms, mail)
    assert magic.startswith("/login/link/")

    # Opening the link (as a mail scanner would) neither logs in nor spends it.
    for _ in range(2):
        page = client.get(magic)
        assert page.status_code == 200
        assert re.search(r'<button type="submit"[^>]*>Sign in</button>', text(page))
    assert not is_logged_in(client)
    assert count(app, OneTimeToken, OneTimeToken.used_at.is_(None)) == 1

    resp = forms.post(magic, {})
    assert resp.status_code == 302 and location(resp) == "/dashboard"
    assert is_logged_in(client)

    spent = other.get(magic)
    assert spent.status_code == 400 and "expired or was already used" in text(spent)
    replay = other.post(magic, data={"csrf_token": Forms(other).token("/login")})
    assert replay.status_code == 400 and "already been used" in text(replay)
    assert not is_logged_in(other)


@pytest.mark.promise("P05")
def test_magic_link_expires(app, client, forms, users, mail):
    users.create()
    magic = _magic_link(forms, mail)
    token_csrf = forms.token(magic)
    expire_tokens(app, "magic_link")

    assert client.get(magic).status_code == 400
    resp = client.post(magic, data={"csrf_token": token_csrf})
    assert resp.status_code == 400 and "This link has expired" in text(resp)
    assert not is_logged_in(client)


@pytest.mark.promise("P05")
def test_magic_link_older_than_its_lifetime_is_refused_even_if_its_row_is_live(app, client, forms, users, mail):
    users.create()
    magic = _magic_link(forms, mail)
    minutes = app.config["MAGIC_LINK_MINUTES"]
    old = "/login/link/" + resign_old(app, magic.rsplit("/", 1)[1], "magic_link", timedelta(minutes=minutes + 1))

    assert client.get(old).status_code == 400
    resp = client.post(old, data={"csrf_token": forms.token("/login")})
    assert resp.status_code == 400 and "This link has expired" in text(resp)
    assert not is_logged_in(client)
    # The genuine, recent link still works.
    assert forms.post(magic, {}).status_code == 302


@pytest.mark.promise("P05")
def test_magic_link_request_for_unknown_address_looks_the_same_and_sends_nothing(app, client, other, forms,
                                                                                 users, mail):
    users.create()
    known = forms.post("/login/link", {"email": "ada@example.com"})
    unknown = Forms(other).post("/login/link", {"email": "ghost@example.com"})
    assert known.status_code == unknown.status_code == 200
    assert without_tokens(text(known)) == without_tokens(text(unknown))
    mail.wait_for("ada@example.com", "sign-in link")
    assert mail.to("ghost@example.com") == []
    assert count(app, OutboxMessage, OutboxMessage.to_addr == "ghost@example.com") == 0


@pytest.mark.promise("P05")
def test_magic_link_for_an_account_with_totp_asks_for_the_code(app, client, forms, users, mail):
    uid = users.create()
    secret, _ = enable_totp(app, uid)
    magic = _magic_link(forms, mail)

    resp = forms.post(magic, {})
    assert resp.status_code == 302 and location(resp) == "/login/2fa"
    assert not is_logged_in(client)

    resp = forms.post("/login/2fa", {"code": next_code(secret)})
    assert resp.status_code == 302 and location(resp) == "/dashboard"
    assert is_logged_in(client)
    with app.app_context():
        assert db.session.scalar(sa.select(UserSession.method)) == "magic_link+totp"


# ---- two-factor login (P05) ------------------------------------------------------------

@pytest.mark.promise("P05")
def test_password_login_with_totp(app, client, forms, users):
    uid = users.create()
    secret, _ = enable_totp(app, uid)

    resp = forms.post("/login", {"email": "ada@example.com", "password": PASSWORD})
    assert resp.status_code == 302 and location(resp) == "/login/2fa"
    assert "Enter your code" in text(client.get("/login/2fa"))
    assert not is_logged_in(client)

    # A code from a step already used (or long past) is not accepted.
    stale = pyotp.TOTP(secret).at(time.time() - 150)
    resp = forms.post("/login/2fa", {"code": stale})
    assert resp.status_code == 200
    assert "That code is not right." in text(resp)
    assert not is_logged_in(client)

    resp = forms.post("/login/2fa", {"code": next_code(secret)})
    assert resp.status_code == 302 and location(resp) == "/dashboard"
    assert is_logged_in(client)


@pytest.mark.promise("P05")
def test_totp_code_cannot_be_replayed(app, client, other, forms, users):
    uid = users.create()
    secret, _ = enable_totp(app, uid)
    code = next_code(secret)
    forms.post("/login", {"email": "ada@example.com", "password": PASSWORD})
    assert location(forms.post("/login/2fa", {"code": code})) == "/dashboard"

    other_forms = Forms(other)
    other_forms.post("/login", {"email": "ada@example.com", "password": PASSWORD})
    resp = other_forms.post("/login/2fa", {"code": code})
    assert resp.status_code == 200 and "That code is not right." in text(resp)
    assert not is_logged_in(other)


@pytest.mark.promise("P05")
def test_recovery_code_works_once(app, client, other, forms, users):
    uid = users.create()
    _, codes = enable_totp(app, uid)

    forms.post("/login", {"email": "ada@example.com", "password": PASSWORD})
    resp = forms.post("/login/2fa", {"code": codes[0].upper()})
    assert resp.status_code == 302 and location(resp) == "/dashboard"
    assert "You used a recovery code; 9 remain" in text(client.get("/dashboard"))

    other_forms = Forms(other)
    other_forms.post("/login", {"email": "ada@example.com", "password": PASSWORD})
    resp = other_forms.post("/login/2fa", {"code": codes[0]})
    assert resp.status_code == 200 and "That code is not right." in text(resp)
    assert not is_logged_in(other)
    assert location(other_forms.post("/login/2fa", {"code": codes[1]})) == "/dashboard"


def test_second_factor_page_needs_a_first_factor(client):
    resp = client.get("/login/2fa")
    assert resp.status_code == 302 and location(resp) == "/login"
