"""Zero-log in the portal (P23): no secret and no client text in any log line,
table, file or store, except what a person typed to be kept, in its column.

A different canary goes into every field of every form (signed out, signed in,
and as staff), into query strings, path parameters, cookies (the session,
pref_theme, pref_range, an arbitrary one) and headers, and into JSON bodies
POSTed to form endpoints; the error paths of the review are driven with them
(non-ASCII digits in page numbers, number fields, cookies and TOTP codes, ids
out of range, NUL characters, a JSON body to a form, a failed flush before the
error page, address variants at the per-account limits). Then everything is
scanned (tests.relay.test_zero_log.scan_all): every log record at DEBUG
(SQLAlchemy's engine included; its parameters are hidden), this process's
output, every column of every table, SQLite's files, Redis, every file under the
instance folder (exports included, inside the ZIP), and the mail that reached
the SMTP server.

Two kinds of canary:
- typed to be kept (a name, a company, a key's name, a privacy request's text,
  a staff note or reason, an incident's record, a policy summary, the address
  an account signs up with): found in its own column (asserted, so the scan is
  known to see it), in the database's files, in the person's own export, and in
  mail only where the mail is its purpose; nowhere else.
- everything else (passwords, codes, tokens, rejected input, search filters,
  headers, cookies): nowhere at all.

The User-Agent: the sessions list shows each signed-in device by its
User-Agent, so the header of the request that signs in is kept in
user_sessions.user_agent (cut to 200 characters) for as long as that login
lasts. It is metadata about a login that the person sees as its label, not a
request or response body, so P23 allows it there; the User-Agent of every
other request (failed sign-ins, pages, forms) is kept nowhere, and the one kept
goes with its session.
"""
from __future__ import annotations

import re
import time

import pyotp
import pytest
import sqlalchemy as sa

from app.extensions import db
from app.models import PrivacyRequest, User, UserSession
from app.models.types import utcnow
from app.numbers import IntConverter
from app.services.mail import deliver_pending
from app.services.passwords import hash_password
from tests.conftest import BACKEND, csrf_from
from tests.fakes.smtp import body as mail_body
from tests.relay.test_zero_log import Canaries, capture_all_logs, scan_all, unexpected

pytestmark = pytest.mark.promise("P23")


@pytest.fixture
def all_logs(caplog):
    """Every logger at DEBUG (tests.relay.test_zero_log)."""
    yield from capture_all_logs(caplog)


PASSWORD = "correct horse battery"
LIMITS = "100000 per minute"
PROVIDERS = """
[providers.oai]
kind = "openai_compatible"
base_url = "http://127.0.0.1:9/v1"

[[models]]
name = "gpt-test"
targets = [ { provider = "oai", model = "x" } ]
price = { input = 1.0 }
"""
HUGE = "99999999999999999999"
ODD_DIGITS = ("١٢", "１２", "²")

# Where a value typed to be kept may also be: the database's own files, and
# SQLAlchemy's DEBUG echo of the rows that hold it (see ROW_ECHO).
DATABASE = ("db-file:*", "log-row-echo")
EXPORT = ("file:exports/*",)  # the person's own copy of their data (P51)


# ---- the app and the people who use it ---------------------------------------------------

@pytest.fixture
def portal(make_app, tmp_path, monkeypatch, smtp):
    # Answers that must not tell whether an address has an account wait for a
    # time floor; that is not what this test is about.
    monkeypatch.setattr("app.web.ANSWER_FLOOR_SECONDS", 1e-6)
    providers = tmp_path / "providers.toml"
    providers.write_text(PROVIDERS)
    app = make_app(PROVIDERS_FILE=str(providers), RATELIMIT_AUTH=LIMITS, RATELIMIT_RESEND=LIMITS,
                   RATELIMIT_EXPORT_REQUEST=LIMITS, RATELIMIT_EXPORT_API=LIMITS)
    app.config["PROPAGATE_EXCEPTIONS"] = False  # a crash is answered (and logged) as in production
    return app


def make_user(app, email: str, **fields) -> int:
    with app.app_context():
        u = User(email=email, email_key=email.lower(), password_hash=hash_password(PASSWORD),
                 age_confirmed_at=utcnow(), email_verified_at=utcnow(), **fields)
        db.session.add(u)
        db.session.commit()
        return u.id


def deliver(app) -> None:
    with app.app_context():
        while deliver_pending(app):
            pass


class Browser:
    """One browser: a test client whose every request carries canary headers and
    cookies, and which submits forms with the CSRF token of its session."""

    def __init__(self, app, book: Canaries, who: str):
        self.app, self.c, self.who = app, book, who
        self.client = app.test_client()
        self.headers = {
            "User-Agent": book(f"{who}.header.user-agent"),
            "X-Zero-Log-Probe": book(f"{who}.header.arbitrary"),
            "Referer": "http://localhost/" + book(f"{who}.header.referer"),
            "Accept-Language": "en;q=0.9, " + book(f"{who}.header.accept-language"),
            "X-Forwarded-For": book(f"{who}.header.x-forwarded-for"),
        }
        self.client.set_cookie("zl_probe", book(f"{who}.cookie.arbitrary"))
        self.client.set_cookie("pref_theme", book(f"{who}.cookie.pref_theme"))
        self.client.set_cookie("pref_range", book(f"{who}.cookie.pref_range"))

    def get(self, url: str, **kw):
        resp = self.client.get(url, headers={**self.headers, **kw.pop("headers", {})}, **kw)
        assert resp.status_code < 500, (url, resp.status_code)
        return resp

    def token(self) -> str:
        page = self.get("/login")
        if page.status_code == 302:  # signed in
            page = self.get("/account/")
        return csrf_from(page.get_data(as_text=True))

    def post(self, url: str, data: dict | None = None, *, token: bool = True, **kw):
        form = {"csrf_token": self.token(), **(data or {})} if token else data
        resp = self.client.post(url, data=form, headers={**self.headers, **kw.pop("headers", {})}, **kw)
        assert resp.status_code < 500, (url, resp.status_code, resp.get_data(as_text=True)[:300])
        return resp

    def json(self, url: str, payload):
        """A JSON body to a form endpoint, with a valid token in the header."""
        resp = self.client.post(url, json=payload, headers={**self.headers, "X-CSRFToken": self.token()})
        assert resp.status_code < 500, (url, resp.status_code)
        return resp

    def login(self, email: str, password: str = PASSWORD, user_agent: str | None = None):
        headers = {"User-Agent": user_agent} if user_agent else {}
        resp = self.post("/login", {"email": email, "password": password}, headers=headers)
        assert resp.status_code == 302, resp.get_data(as_text=True)[:300]
        return resp


def odd_requests(b: Browser, where: str, pages: tuple[str, ...]) -> None:
    """Query strings full of canaries and odd digits, ids out of range, a NUL."""
    c = b.c
    for page in pages:
        b.get(page, query_string={"page": "١٢", "zl": c(f"{where}.query{page}"), "next": c(f"{where}.next{page}")})
        b.get(page, query_string={"page": c(f"{where}.page{page}")})
        b.get(page, query_string={"q": c(f"{where}.nul{page}") + "\x00"})
    for digits in ODD_DIGITS:
        b.get("/privacy/versions/" + digits)
    b.get(f"/privacy/versions/{HUGE}", query_string={"zl": c(f"{where}.huge-id")})


def check(book: Canaries, found, allowed: dict, must_find: dict, requests: bool = True) -> None:
    """Each canary only where its field allows; each kept one found where it is kept.
    (And the scan read what it should: a log, the tables, SQLite's file, or
    Redis once requests went through the limiter.)"""
    assert found.covered("log:") and found.covered("table:users.") and found.covered("table:audit_events.")
    if BACKEND == "sqlite":
        assert found.covered("db-file:.db")
    elif requests:
        assert found.covered("redis:"), "the rate-limit store was read"
    allow = {book.label_of(text): places for text, places in allowed.items()}
    bad = unexpected(found, allow)
    assert bad == {}, "client text where it must not be:\n" + "\n".join(f"  {k}: {v}" for k, v in sorted(bad.items()))
    missing = {label: place for text, place in must_find.items()
               if place not in found.get(label := book.label_of(text), set())}
    assert missing == {}, f"kept values not found where they are kept (the scan cannot see them?): {missing}"


# ---- signed out -------------------------------------------------------------------------

def test_signed_out_forms_keep_only_the_address_an_account_is_opened_with(portal, smtp, all_logs, capfd):
    app, book = portal, Canaries()
    c = book
    make_user(app, "ada@example.com")
    totp_secret = pyotp.random_base32()
    carol = make_user(app, "carol@example.com")
    with app.app_context():
        from app.services import totp
        totp.enable(db.session.get(User, carol), totp_secret, int(time.time()) // 30 - 5)
        db.session.commit()
    anon = Browser(app, book, "anon")

    # signup: refused, then accepted (the address is kept, the password nowhere), then a duplicate
    anon.post("/signup", {"email": c("signup.bad-email"), "password": c("signup.bad-password"),
                          "age_ok": c("signup.age_ok"), "accept_policy": c("signup.accept_policy"),
                          "marketing_email": c("signup.marketing_email")})
    anon.post("/signup", {"email": c("signup.refused-email") + "@example.com", "password": c("signup.short")[:5],
                          "age_ok": "y", "accept_policy": "y"})
    anon.post("/signup", {"email": c("signup.unticked-email") + "@example.com", "password": c("signup.unticked-pw")})
    address = c("signup.email") + "@example.com"
    r = anon.post("/signup", {"email": address, "password": c("signup.password") + "-long-enough",
                              "age_ok": "y", "accept_policy": "y", "marketing_email": "y"})
    assert r.status_code == 302, r.get_data(as_text=True)[:500]
    anon.post("/signup", {"email": "ADA@example.com", "password": c("signup.duplicate-password") + "-long-enough",
                          "age_ok": "y", "accept_policy": "y"})
    anon.get("/signup/check-email")

    # sign-in: an unknown address, a wrong password, a bad token, JSON bodies, odd digits in a code
    fresh = Browser(app, book, "signin")
    fresh.post("/login", {"email": c("login.unknown-email") + "@example.com", "password": c("login.unknown-pw")})
    fresh.post("/login", {"email": "ada@example.com", "password": c("login.wrong-password")})
    fresh.post("/login", {"email": c("login.not-an-address"), "password": c("login.pw-3")})
    fresh.post("/login", {"email": c("login.nul-email") + "\x00@example.com", "password": c("login.nul-pw") + "\x00"})
    fresh.post("/login", {"email": "ada@example.com", "password": c("login.bad-csrf-pw"),
                          "csrf_token": c("login.csrf_token")}, token=False)
    fresh.post("/login", {"email": "ada@example.com", "password": PASSWORD}, token=False)  # no token at all
    fresh.json("/login", {"email": c("json.email"), "password": 5, "csrf_token": [c("json.csrf")]})
    fresh.json("/login", [c("json.array-item"), {"email": c("json.array-email")}])
    fresh.json("/login", 12345)
    fresh.json("/signup", {"email": [c("json.signup-email")], "password": {"x": c("json.signup-pw")}})
    fresh.json("/forgot", {"email": None, "zl": c("json.forgot")})
    fresh.post("/forgot", {"email": c("forgot.unknown") + "@example.com"})
    fresh.post("/forgot", {"email": c("forgot.invalid")})
    fresh.post("/login/link", {"email": c("magic.unknown") + "@example.com"})
    fresh.post("/login/link", {"email": c("magic.invalid")})

    # a second factor: codes in other digits, a canary code, then the right one
    two = Browser(app, book, "twofactor")
    two.post("/login", {"email": "carol@example.com", "password": PASSWORD})
    for code in ("١٢٣٤٥٦", "１２３４５６", "²²²²²²", c("totp.code"), c("totp.code-nul") + "\x00"):
        r = two.post("/login/2fa", {"code": code})
        assert r.status_code in (200, 400), r.status_code
    book.secret("secret.totp", totp_secret)
    book.secret("secret.csrf", two.token())
    r = two.post("/login/2fa", {"code": pyotp.TOTP(totp_secret).now()},
                 headers={"User-Agent": c("ua.two-factor-login")})
    assert r.status_code == 302
    book.secret("secret.session-cookie", two.client.get_cookie("session").value)

    # links: tokens that are canaries, then real ones used with canary passwords
    for path in ("/verify/", "/reset/", "/login/link/", "/privacy-center/unsubscribe/", "/staff/verify/",
                 "/privacy-center/delete/cancel/", "/privacy-center/export/download/", "/account/email/confirm/"):
        anon.get(path + c(f"link-token{path}"))
        anon.post(path + c(f"link-token-post{path}"), {"password": c(f"link-pw{path}"),
                                                        "confirm": c(f"link-confirm{path}")})
    r = anon.get("/api/v1/export", headers={"Authorization": "Bearer " + c("api.export-key")})
    assert r.status_code == 401
    fresh.post("/forgot", {"email": "ada@example.com"})
    fresh.post("/login/link", {"email": "ada@example.com"})
    deliver(app)
    links = [u.replace("http://localhost", "") for m in smtp.mailbox.to("ada@example.com")
             for u in re.findall(r"https?://\S+", mail_body(m))]
    reset = next(u for u in links if u.startswith("/reset/"))
    magic = next(u for u in links if u.startswith("/login/link/"))
    book.secret("secret.reset-token", reset.rsplit("/", 1)[1])
    book.secret("secret.magic-token", magic.rsplit("/", 1)[1])
    linked = Browser(app, book, "magic")
    linked.get(magic)
    r = linked.post(magic, headers={"User-Agent": c("ua.magic-link-login")})
    assert r.status_code == 302
    anon.post(reset, {"password": c("reset.password") + "-long-enough", "confirm": c("reset.confirm")})
    r = anon.post(reset, {"password": c("reset.new-password") + "-long-enough",
                          "confirm": c("reset.new-password") + "-long-enough"})
    assert r.status_code == 302, r.get_data(as_text=True)[:300]

    # cookies a browser may carry: a garbage session, edited preferences, odd digits
    for session in (c("cookie.session"), "eyJ" + c("cookie.session-b64") + ".x.y", "١٢"):
        odd = app.test_client()
        odd.set_cookie("session", session)
        odd.set_cookie("pref_range", "١٢")
        odd.set_cookie("remember_token", c("cookie.remember_token"))
        assert odd.get("/", headers=anon.headers).status_code < 500
        assert odd.get("/dashboard", headers=anon.headers).status_code < 500
    odd_requests(anon, "anon", ("/", "/login", "/privacy", "/signup", "/usage/", "/privacy-center/access-log"))

    deliver(app)
    found = scan_all(book, [app], all_logs, capfd, mailbox=smtp.mailbox)
    with app.app_context():
        assert db.session.scalar(sa.select(User.id).where(User.email_key == address)) is not None
        # the sign-in link's session ended with the password reset, and its label with it
        assert {s.user_agent for s in db.session.scalars(sa.select(UserSession))} == {c("ua.two-factor-login")}
    assert "table:user_sessions.user_agent" not in found.get("ua.magic-link-login", set())
    check(book, found, allowed={
        address: ("table:users.email", "table:users.email_key", "table:outbox_messages.to_addr",
                  f"smtp:{address}", *DATABASE),
        c("ua.two-factor-login"): ("table:user_sessions.user_agent", *DATABASE),
        c("ua.magic-link-login"): ("table:user_sessions.user_agent", *DATABASE),
        # A link's token goes to its owner by mail. The outbox row holds it until the mail is
        # sent, then its body is emptied: in the table no more, in the database's files (an
        # older page in the WAL) until SQLite reuses the space.
        reset.rsplit("/", 1)[1]: ("smtp:ada@example.com", *DATABASE),
        magic.rsplit("/", 1)[1]: ("smtp:ada@example.com", *DATABASE),
    }, must_find={address: "table:users.email", c("ua.two-factor-login"): "table:user_sessions.user_agent"})


# ---- signed in ---------------------------------------------------------------------------

KEY_RE = re.compile(r"rk_[A-Za-z0-9_-]{40}")


def test_signed_in_forms_keep_typed_values_in_their_columns_only(portal, smtp, all_logs, capfd):
    app, book = portal, Canaries()
    c = book
    make_user(app, "ada@example.com")
    ada = Browser(app, book, "ada")
    ada.login("ada@example.com", user_agent=c("ua.login"))
    book.secret("secret.session-cookie", ada.client.get_cookie("session").value)

    # profile (P04): kept in its column; too long, a NUL, or not a form: kept nowhere
    htmx = {"HX-Request": "true"}
    ada.get("/account/profile/name", query_string={"edit": "1", "zl": c("profile.query")}, headers=htmx)
    r = ada.post("/account/profile/name", {"value": c("profile.name")})
    assert r.status_code == 302
    r = ada.post("/account/profile/company", {"value": c("profile.company")}, headers=htmx)
    assert r.status_code == 200 and c("profile.company") in r.get_data(as_text=True)
    ada.post("/account/profile/name", {"value": c("profile.too-long") + "x" * 130})
    ada.post("/account/profile/company", {"value": c("profile.nul") + "\x00"}, headers=htmx)
    ada.post("/account/profile/" + c("profile.field"), {"value": c("profile.unknown-field-value")})
    ada.json("/account/profile/name", {"value": c("json.profile")})
    ada.json("/account/profile/company", [c("json.profile-array")])

    # re-authentication, email and password: wrong passwords, odd codes
    ada.post("/account/reauth", {"password": c("reauth.password"), "code": c("reauth.code")},
             query_string={"next": "/" + c("reauth.next")})
    ada.post("/account/reauth", {"password": PASSWORD, "code": "١٢٣٤٥٦"})
    ada.post("/account/email", {"email": c("email.refused") + "@example.com", "password": c("email.wrong-password")})
    ada.post("/account/email", {"email": c("email.invalid"), "password": PASSWORD})
    new_address = c("email.new") + "@example.com"
    r = ada.post("/account/email", {"email": new_address, "password": PASSWORD})
    assert r.status_code == 302, r.get_data(as_text=True)[:300]
    ada.post("/account/password", {"current": c("password.wrong-current"), "password": c("password.a") + "-long",
                                   "confirm": c("password.b") + "-long"})
    ada.json("/account/password", {"current": PASSWORD, "password": c("json.password"), "confirm": 5})

    # two-factor setup: codes in other digits and a canary; the pending secret and the codes are secrets
    page = ada.get("/account/2fa/setup").get_data(as_text=True)
    pending = re.search(r"\b[A-Z2-7]{32}\b", page).group(0)
    book.secret("secret.totp-pending", pending)
    for code in ("١٢٣٤٥٦", "１２３４５６", "²²²²²²", c("totp.setup-code")):
        ada.post("/account/2fa/setup", {"code": code})
    r = ada.post("/account/2fa/setup", {"code": pyotp.TOTP(pending).now()})
    assert r.status_code == 200
    for i, code in enumerate(re.findall(r"<code>([a-z0-9-]{8,})</code>", r.get_data(as_text=True))):
        book.secret(f"secret.recovery-code-{i}", code)
    ada.get("/account/2fa/qr.svg")

    # API keys (P10, P11): a name is kept; a refused form keeps nothing; the secret is kept nowhere
    ada.post("/keys/", {"name": c("key.refused-name"), "models": c("key.models") + ", gpt-test",
                        "rpm_limit": "١٢", "tpm_limit": c("key.tpm"), "expires": c("key.expires")})
    ada.post("/keys/", {"name": c("key.refused-name-2"), "rpm_limit": HUGE, "tpm_limit": "１２",
                        "expires": "2020-01-01"})
    ada.post("/keys/", {"name": c("key.nul") + "\x00", "models": c("key.nul-models") + "\x00"})
    ada.json("/keys/", {"name": c("json.key-name"), "rpm_limit": 2**70, "models": [c("json.key-models")]})
    r = ada.post("/keys/", {"name": c("key.name"), "models": "gpt-test", "rpm_limit": "60", "tpm_limit": "1,000"},
                 headers=htmx)
    assert r.status_code == 200
    book.secret("secret.api-key", KEY_RE.search(r.get_data(as_text=True)).group(0))
    with app.app_context():
        from app.models import ApiKey
        key_id = db.session.scalar(sa.select(ApiKey.id))
    r = ada.post(f"/keys/{key_id}/name", {"name": c("key.renamed")}, headers=htmx)
    assert r.status_code == 200
    ada.post(f"/keys/{key_id}/name", {"name": c("key.rename-nul") + "\x00"})
    ada.post(f"/keys/{key_id}/name", {"name": c("key.rename-long") * 10})
    ada.post(f"/keys/{key_id}/reveal", {"password": c("key.reveal-password"), "code": c("key.reveal-code")})
    r = ada.post(f"/keys/{key_id}/reveal", {"password": PASSWORD, "code": pyotp.TOTP(pending).at(time.time() + 30)})
    assert r.status_code == 200
    for path in (f"/keys/{HUGE}/name", f"/keys/{HUGE}/rotate", "/keys/١٢/revoke", f"/keys/{2**31}/reveal",
                 f"/account/sessions/{HUGE}/end", "/account/sessions/１２/end"):
        ada.get(path, query_string={"zl": c(f"path.{path}")})
        ada.post(path, {"zl": c(f"path-post.{path}")})

    # privacy center: consents, preference cookies, requests (their text is kept), deletion refused
    ada.post("/privacy-center/consent/" + c("consent.purpose"), {"granted": "1"})
    ada.post("/privacy-center/consent/marketing_email", {"granted": c("consent.granted")})
    ada.post("/privacy-center/consent/preference_cookies", {"granted": "1"})
    ada.post("/privacy-center/preferences", {"theme": c("prefs.theme"), "range_days": c("prefs.range")})
    ada.post("/privacy-center/preferences", {"theme": "dark", "range_days": "١٢"})
    r = ada.post("/privacy-center/preferences", {"theme": "dark", "range_days": "7"})
    assert r.status_code == 302
    ada.client.set_cookie("pref_range", "١٢")
    ada.client.set_cookie("pref_theme", c("cookie.pref_theme-after-consent"))
    ada.get("/usage/")
    ada.post("/privacy-center/requests", {"kind": c("request.kind"), "details": c("request.refused-details")})
    ada.post("/privacy-center/requests", {"kind": "rectify", "details": c("request.nul") + "\x00"})
    ada.json("/privacy-center/requests", {"kind": "access", "details": c("json.request-details")})
    r = ada.post("/privacy-center/requests", {"kind": "rectify", "details": c("request.details")})
    assert r.status_code == 302
    ada.post("/privacy-center/delete/", {"word": c("delete.word"), "understand": c("delete.understand")})
    ada.post("/privacy-center/delete/confirm", {"word": c("delete.confirm-word")})

    # list pages with filters, page numbers and ids that are canaries or odd digits
    ada.get("/usage/", query_string={"model": c("usage.model"), "key": c("usage.key"), "status": c("usage.status"),
                                     "from": c("usage.from"), "to": c("usage.to"), "page": c("usage.page")})
    ada.get("/usage/", query_string={"key": HUGE, "page": HUGE, "from": "２０２５-01-01", "model": "\x00"})
    odd_requests(ada, "ada", ("/dashboard", "/account/", "/keys/", "/usage/", "/privacy-center/",
                              "/privacy-center/access-log", "/privacy-center/data", "/privacy-center/export/"))

    # the person's own export (P51), built as the background worker would
    ada.post("/privacy-center/export/")
    with app.app_context():
        from app.services import exports
        assert exports.run_pending(app) == 1

    # last: a new password that carries a canary (kept only as its hash)
    ada.post("/account/password", {"current": PASSWORD, "password": c("password.new") + "-long-enough",
                                   "confirm": c("password.new") + "-long-enough"})
    deliver(app)
    found = scan_all(book, [app], all_logs, capfd, mailbox=smtp.mailbox)
    kept = (*DATABASE, *EXPORT)
    check(book, found, allowed={
        c("profile.name"): ("table:users.name", *kept),
        c("profile.company"): ("table:users.company", *kept),
        # the confirmation goes to the new address; the outbox keeps where mail went (P60)
        new_address: ("table:outbox_messages.to_addr", f"smtp:{new_address}", *kept),
        c("key.name"): ("table:api_keys.name", *kept),  # until renamed
        c("key.renamed"): ("table:api_keys.name", *kept),
        c("request.details"): ("table:privacy_requests.details", *kept),
        c("ua.login"): ("table:user_sessions.user_agent", *kept),
    }, must_find={c("profile.name"): "table:users.name", c("profile.company"): "table:users.company",
                  c("key.renamed"): "table:api_keys.name", c("request.details"): "table:privacy_requests.details",
                  c("ua.login"): "table:user_sessions.user_agent", new_address: f"smtp:{new_address}"})
    assert any(p.startswith("file:exports/") and "!" in p for p in found.get("profile.name", ())), \
        "the export ZIP was read and holds the person's name"


# ---- as staff ----------------------------------------------------------------------------

def incident_form(**over) -> dict:
    data = {"title": "t", "description": "d", "confirmed_at": utcnow().strftime("%Y-%m-%dT%H:%M"), "scope": "emails",
            "emails": "ada@example.com", "notice_subject": "s", "notice_body": "b"}
    data.update(over)
    return data


def test_staff_forms_keep_their_records_in_their_columns_only(portal, make_app, smtp, all_logs, capfd):
    app, book = portal, Canaries()
    c = book
    ada_id = make_user(app, "ada@example.com")
    make_user(app, "grace@example.com", is_staff=True)
    staff = Browser(app, book, "staff")
    staff.login("grace@example.com", user_agent=c("ua.staff-login"))

    # filing a request received by mail: refused (unknown address, bad date), then filed
    staff.post("/staff/requests/new", {"email": c("file.unknown") + "@example.com", "kind": "rectify",
                                       "channel": "email", "details": c("file.refused-details")})
    staff.post("/staff/requests/new", {"email": "ada@example.com", "kind": c("file.kind"), "channel": c("file.channel"),
                                       "received": c("file.received"), "details": c("file.refused-details-2")})
    staff.post("/staff/requests/new", {"email": "ada@example.com", "kind": "rectify", "received": "２０２５-01-01",
                                       "details": c("file.refused-details-3")})
    staff.json("/staff/requests/new", {"email": c("json.file-email"), "details": [c("json.file-details")]})
    r = staff.post("/staff/requests/new", {"email": "ADA@Example.com", "kind": "rectify", "channel": "email",
                                           "details": c("file.details")})
    assert r.status_code == 302, r.get_data(as_text=True)[:500]
    with app.app_context():
        req_id = db.session.scalar(sa.select(PrivacyRequest.id).where(PrivacyRequest.user_id == ada_id))
    url = f"/staff/requests/{req_id}"

    # the queue and a request's page with canary filters; the staff check, extension, rectification, close
    staff.get("/staff/requests", query_string={"status": c("queue.status"), "kind": c("queue.kind"),
                                               "channel": c("queue.channel"), "sort": c("queue.sort"),
                                               "overdue": c("queue.overdue"), "page": "١٢"})
    staff.get("/staff/audit", query_string={"subject": c("audit.subject"), "page": c("audit.page")})
    staff.get("/staff/audit", query_string={"subject": "١٢", "page": HUGE})
    staff.get(url, query_string={"zl": c("request.query")})
    staff.post(url + "/verify/check", {"note": c("check.too-long") * 50})
    staff.post(url + "/verify/check", {"note": c("check.nul") + "\x00"})
    r = staff.post(url + "/verify/check", {"note": c("check.note")})
    assert r.status_code == 302
    staff.post(url + "/extend", {"reason": c("extend.nul") + "\x00"})
    r = staff.post(url + "/extend", {"reason": c("extend.reason")})
    assert r.status_code == 302
    staff.get(url + "/carry-out")
    staff.post(url + "/carry-out", {"name": c("rectify.too-long") * 10, "company": c("rectify.refused-company")})
    r = staff.post(url + "/carry-out", {"name": c("rectify.name"), "company": c("rectify.company")})
    assert r.status_code == 302
    staff.post(url + "/close", {"outcome": c("close.outcome"), "reason": c("close.refused-reason")})
    r = staff.post(url + "/close", {"outcome": "done", "reason": c("close.reason")})
    assert r.status_code == 302
    for path in (f"/staff/requests/{HUGE}", f"/staff/requests/{HUGE}/close", "/staff/requests/١٢/extend",
                 f"/staff/incidents/{HUGE}", f"/staff/policy/{HUGE}/notices", "/staff/incidents/１２/notify"):
        staff.get(path, query_string={"zl": c(f"staff-path.{path}")})
        staff.post(path, {"reason": c(f"staff-path-post.{path}")})

    # an incident: refused forms keep nothing; the recorded one keeps its record, and mails its notice
    staff.post("/staff/incidents/new", incident_form(title=c("incident.refused-title"),
                                                     description=c("incident.refused-description"),
                                                     confirmed_at=c("incident.confirmed_at"),
                                                     notice_body=c("incident.refused-body")))
    staff.post("/staff/incidents/new", incident_form(title=c("incident.refused-title-2"),
                                                     emails=c("incident.unknown") + "@example.com",
                                                     notice_subject=c("incident.refused-subject")))
    staff.post("/staff/incidents/new", incident_form(scope="usage", used_from=c("incident.used_from"),
                                                     used_to="١٢", description=c("incident.refused-3")))
    staff.json("/staff/incidents/new", {"title": c("json.incident-title"), "scope": 5})
    r = staff.post("/staff/incidents/new", incident_form(
        title=c("incident.title"), description=c("incident.description"), notice_subject=c("incident.subject"),
        notice_body=c("incident.body"), emails=f"ada@example.com\n{c('incident.unmatched')}@example.com"))
    assert r.status_code == 302, r.get_data(as_text=True)[-1500:]
    inc = r.headers["Location"].rstrip("/").rsplit("/", 1)[1]
    staff.get(f"/staff/incidents/{inc}", query_string={"page": "１２"})
    assert staff.post(f"/staff/incidents/{inc}/notify").status_code == 302

    # a policy change (P62): refused (a date too soon), then published with its summary, mailed to all
    with app.app_context():
        from app.services import policy
        policy.current_version()
        earliest = policy.earliest_effective(True)
    new = make_app(METADATA_RETENTION_DAYS="180", PROVIDERS_FILE=app.config["PROVIDERS_FILE"])
    editor = Browser(new, book, "policy-staff")
    editor.login("grace@example.com", user_agent=c("ua.policy-login"))
    editor.post("/staff/policy/publish", {"summary": c("policy.refused-summary"), "material": "y",
                                          "effective_on": utcnow().date().isoformat()})
    editor.post("/staff/policy/publish", {"summary": c("policy.refused-2"), "effective_on": c("policy.date")})
    editor.json("/staff/policy/publish", {"summary": c("json.policy-summary"), "confirmed": [1]})
    form = {"summary": c("policy.summary"), "material": "y", "effective_on": earliest.isoformat(), "confirmed": "1"}
    r = editor.post("/staff/policy/publish", form)
    assert r.status_code == 302, r.get_data(as_text=True)[-1500:]

    deliver(app)
    found = scan_all(book, [app, new], all_logs, capfd, mailbox=smtp.mailbox)
    check(book, found, allowed={
        c("file.details"): ("table:privacy_requests.details", *DATABASE),
        # how staff checked the person: "goes into the audit row, so the evidence is chained"
        c("check.note"): ("table:audit_events.details", *DATABASE),
        c("extend.reason"): ("table:privacy_requests.extension_reason", "smtp:ada@example.com", *DATABASE),
        c("close.reason"): ("table:privacy_requests.outcome_reason", "smtp:ada@example.com", *DATABASE),
        c("rectify.name"): ("table:users.name", *DATABASE),
        c("rectify.company"): ("table:users.company", *DATABASE),
        c("incident.title"): ("table:incidents.title", "smtp:ada@example.com", *DATABASE),
        c("incident.description"): ("table:incidents.description", *DATABASE),  # internal: never mailed
        c("incident.subject"): ("table:incidents.notice_subject", "table:outbox_messages.subject",
                                "smtp:ada@example.com", *DATABASE),
        c("incident.body"): ("table:incidents.notice_body", "smtp:ada@example.com", *DATABASE),
        c("policy.summary"): ("table:policy_versions.summary", "smtp:*", *DATABASE),
        c("ua.staff-login"): ("table:user_sessions.user_agent", *DATABASE),
        c("ua.policy-login"): ("table:user_sessions.user_agent", *DATABASE),
    }, must_find={c("file.details"): "table:privacy_requests.details", c("check.note"): "table:audit_events.details",
                  c("extend.reason"): "smtp:ada@example.com", c("close.reason"): "smtp:ada@example.com",
                  c("rectify.name"): "table:users.name", c("incident.description"): "table:incidents.description",
                  c("incident.body"): "smtp:ada@example.com", c("policy.summary"): "smtp:ada@example.com"})


def test_the_staff_audit_search_is_not_recorded(portal, all_logs, capfd):
    """A search filter is client text: the audit row that records a staff view of
    the audit log may say that a filter was used, not what was typed."""
    app, book = portal, Canaries()
    make_user(app, "grace@example.com", is_staff=True)
    staff = Browser(app, book, "staff")
    staff.login("grace@example.com", user_agent="Firefox")
    assert staff.get("/staff/audit", query_string={"event": book("audit.event")}).status_code == 200
    staff.get("/staff/audit", query_string={"event": "account:" + book("audit.event-prefixed")})
    found = scan_all(book, [app], all_logs, capfd)
    check(book, found, allowed={}, must_find={})


# ---- error paths of the review ------------------------------------------------------------

def test_address_variants_at_the_per_account_limits_keep_no_address(make_app, monkeypatch, all_logs, capfd):
    """Every spelling of one address shares one budget (the limiter's key is a
    keyed hash of the normalized address); past it, the 429 page. Neither the
    address nor any spelling of it is kept: not in Redis, not in a log line."""
    monkeypatch.setattr("app.web.ANSWER_FLOOR_SECONDS", 1e-6)
    app = make_app(RATELIMIT_AUTH="3 per hour")  # an hour: no window ends between the attempts
    app.config["PROPAGATE_EXCEPTIONS"] = False
    book = Canaries()
    make_user(app, "ada@example.com")
    for form, url in (("login", "/login"), ("forgot", "/forgot"), ("magic", "/login/link"), ("signup", "/signup")):
        local = book(f"limits.{form}.address")
        variants = [f"{local}@example.com", f"{local.upper()}@EXAMPLE.COM", f"  {local}@Example.com\t",
                    f"{local}@ｅｘａｍｐｌｅ.com", f"{local}@example.com\n"]
        statuses = []
        for i, typed in enumerate(variants):
            b = Browser(app, book, f"limits.{form}")
            b.client.environ_base["REMOTE_ADDR"] = f"192.0.2.{10 * len(statuses) + i + 1}"  # a new address each time
            token = b.token()
            # (signup refuses the short password: no account is opened, and the address is kept nowhere)
            password = "short" if form == "signup" else book(f"limits.{form}.pw")
            r = b.client.post(url, data={"csrf_token": token, "email": typed, "password": password,
                                         "age_ok": "y", "accept_policy": "y"}, headers=b.headers)
            statuses.append(r.status_code)
        assert statuses[-1] == 429 and 429 not in statuses[:3], (form, statuses)
    # the known address, spelled differently each time, from one client
    b = Browser(app, book, "limits.known")
    for typed in ("ADA@example.com", " ada@EXAMPLE.com", "ada@example.com\n", "Ada@Example.Com"):
        r = b.post("/login", {"email": typed, "password": book("limits.known.pw")})
    assert r.status_code == 429
    # a number where a code belongs, odd digits, at the limit too
    assert b.post("/login/2fa", {"code": "١٢٣٤٥٦"}).status_code in (302, 429)

    found = scan_all(book, [app], all_logs, capfd)
    check(book, found, allowed={}, must_find={})


def failed_flush(app, book: Canaries):
    """A signed-in POST to a view that fails mid-flush with client text in the
    rows it wrote: a change to the person's own row, and a new row the database
    refuses (NOT NULL). Returns the labels of that text."""
    make_user(app, "ada@example.com")

    @app.post("/test-only/failed-flush")
    def failed_flush():
        from flask import request
        from flask_login import current_user
        current_user.name = request.form["name"]          # a change the failure must undo
        db.session.add(User(email=request.form["email"], email_key=request.form["email"],
                            password_hash=request.form["pw"], name=request.form["name"],
                            company=request.form["company"]))  # no age_confirmed_at: refused
        db.session.flush()
        return "unreachable"

    ada = Browser(app, book, "flush")
    ada.login("ada@example.com", user_agent="Firefox")
    r = ada.client.post("/test-only/failed-flush", headers=ada.headers, data={
        "csrf_token": ada.token(), "name": book("flush.name"), "pw": book("flush.password"),
        "email": book("flush.email") + "@example.com", "company": book("flush.company") + "é" * 10})
    assert r.status_code == 500 and "Something went wrong" in r.get_data(as_text=True)
    assert book("flush.name") not in r.get_data(as_text=True)
    assert ada.get("/account/").status_code == 200  # the session goes on after the rollback
    return ("flush.name", "flush.password", "flush.email", "flush.company")


def test_a_failed_flush_and_its_error_page_keep_nothing_the_row_carried(portal, all_logs, capfd):
    """The 500 page in the layout, and nothing of the refused rows in a log line
    (SQLAlchemy's engine at DEBUG: statements, their parameters hidden), a table
    or the database's files. No route is known to fail so any more; one added
    for the test stands in for the next. (PostgreSQL's own server log is the
    next test.)"""
    app, book = portal, Canaries()
    labels = failed_flush(app, book)
    found = scan_all(book, [app], all_logs, capfd)
    assert any(rec.name.startswith("sqlalchemy.engine") and "INSERT INTO users" in rec.getMessage()
               for rec in all_logs.records), "the engine's statements were captured"
    check(book, found, allowed={book(label): ("postgres-log",) for label in labels}, must_find={})


@pytest.mark.skipif(BACKEND != "postgresql", reason="PostgreSQL's own server log")
def test_postgresql_logs_nothing_of_a_refused_row(portal, all_logs, capfd):
    app, book = portal, Canaries()
    labels = failed_flush(app, book)
    found = scan_all(book, [app], all_logs, capfd)
    assert found.covered("postgres-log")
    assert {label: found[label] for label in labels if "postgres-log" in found.get(label, ())} == {}


@pytest.mark.skipif(BACKEND != "postgresql", reason="only PostgreSQL's errors quote the row")
def test_a_background_step_that_fails_logs_no_value_of_the_row(portal, monkeypatch, all_logs, capfd):
    """A retention step the database refuses mid-way (here: an erasure-like
    UPDATE that breaks a NOT NULL constraint). The step is reported as failed
    and the next run tries again; the log says which step and why (the class),
    and nothing of the row: on PostgreSQL the error's own text quotes the whole
    refused row, the person's name and company among it."""
    from app import jobs

    app, book = portal, Canaries()
    uid = make_user(app, "ada@example.com", name=book("row.name"), company=book("row.company"))

    def refused_step(now):
        db.session.execute(sa.update(User).where(User.id == uid).values(email=None))
        return 1

    monkeypatch.setattr(jobs, "rollup_usage", refused_step)
    result = jobs.run_all(app)
    assert result["usage_rolled_up"] == "error: IntegrityError"
    found = scan_all(book, [app], all_logs, capfd)
    kept = ("table:users.*", "postgres-log", *DATABASE)  # the server's log: the test before
    check(book, found, allowed={book("row.name"): kept, book("row.company"): kept},
          must_find={book("row.name"): "table:users.name"}, requests=False)


# ---- every route, every field name --------------------------------------------------------

def form_field_names() -> list[str]:
    """Every field name of every form in the app."""
    from flask_wtf import FlaskForm
    from wtforms.fields.core import UnboundField

    names: set[str] = set()
    todo = list(FlaskForm.__subclasses__())
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        names.update(n for n in dir(cls) if isinstance(getattr(cls, n, None), UnboundField))
    return sorted(names - {"csrf_token"})


@pytest.mark.parametrize("who", ["signed-out", "staff"])
def test_every_route_with_a_canary_in_every_field_keeps_none(portal, who, all_logs, capfd):
    """Each rule of the URL map, with a canary for its path parameters (ids out
    of range), its query string and every form field name the app knows, sent
    as a form and as JSON: nothing of it is kept. (Every field that keeps what
    it is given needs a valid id or a valid neighbour, which the tests above
    give it; here each form is refused or names nothing.)"""
    app, book = portal, Canaries()
    make_user(app, "grace@example.com", is_staff=True)
    b = Browser(app, book, who)
    if who == "staff":
        b.login("grace@example.com", user_agent="Firefox")
    names = form_field_names()
    assert {"email", "password", "code", "value", "name", "details", "note", "reason", "summary",
            "notice_body", "description", "word", "theme", "range_days"} <= set(names)
    rules = sorted(app.url_map.iter_rules(), key=lambda r: (r.rule.startswith("/logout"), r.rule))
    for rule in rules:
        if rule.endpoint == "static" or rule.rule.startswith("/test-only"):
            continue
        path = rule.rule
        for arg, conv in rule._converters.items():
            value = HUGE if isinstance(conv, IntConverter) else book(f"{rule.endpoint}.path.{arg}")
            path = re.sub(rf"<(?:[a-z]+:)?{arg}>", value, path)
        query = {n: book(f"{rule.endpoint}.query.{n}") for n in ("page", "next", "q", *names[:8])}
        if "GET" in rule.methods:
            b.get(path, query_string=query)
        if "POST" in rule.methods:
            fields = {n: book(f"{rule.endpoint}.form.{n}") for n in names}
            b.post(path, fields, query_string={"next": book(f"{rule.endpoint}.post-next")})
            b.json(path, {n: book(f"{rule.endpoint}.json.{n}") for n in names})
    found = scan_all(book, [app], all_logs, capfd)
    # The one form that keeps what it is given without an id: a new team's name and
    # address, in their columns (a signed-in person creates a team).
    team_fields = {book(f"teams.index.form.{n}"): (f"table:teams.{n}", *DATABASE) for n in ("name", "slug")}
    check(book, found, allowed=team_fields if who == "staff" else {}, must_find={})
