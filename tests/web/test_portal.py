"""The rest of the portal through the test client: the staff area, the audit log
(P55), the privacy policy (P61), security headers and the no-external-origin rule
(P02), error pages, and the mail outbox's delivery guarantees.
"""
from __future__ import annotations

import json
import re
from datetime import timedelta
from urllib.parse import urljoin, urlsplit

import pyotp
import pytest
import sqlalchemy as sa

from app.extensions import db
from app.models import AuditEvent, OutboxMessage
from app.models.types import utcnow
from app.services import mail as mail_service
from tests.conftest import Forms
from tests.fakes.smtp import link
from tests.servers import free_port

EMAIL = "ada@example.com"


def text(resp) -> str:
    return resp.get_data(as_text=True)


def audit_rows(app) -> list[AuditEvent]:
    with app.app_context():
        rows = list(db.session.scalars(sa.select(AuditEvent).order_by(AuditEvent.id)))
        db.session.expunge_all()
        return rows


def cli(app, *args):
    return app.test_cli_runner().invoke(args=list(args))


# ---- the staff area ------------------------------------------------------------------

def test_staff_area_is_for_staff_only(app, client, users, login):
    users.create()
    users.create(email="grace@example.com", staff=True)

    resp = client.get("/staff/")
    assert resp.status_code == 302
    assert urlsplit(resp.headers["Location"]).path == "/login"

    login()
    resp = client.get("/staff/")
    assert resp.status_code == 403
    assert "Not allowed" in text(resp) and "<html" in text(resp)
    assert 'href="/staff/"' not in text(client.get("/dashboard")), "no staff link for non-staff"

    staff = app.test_client()
    Forms(staff).post("/login", {"email": "grace@example.com", "password": users.password})
    resp = staff.get("/staff/")
    assert resp.status_code == 200
    page = text(resp)
    assert "chain intact" in page and "Recent audit events" in page
    assert "staff:dashboard:viewed" in [r.event for r in audit_rows(app)]


def test_grant_staff_from_the_cli(app, client, users, login):
    uid = users.create()
    login()
    assert client.get("/staff/").status_code == 403

    result = cli(app, "users", "grant-staff", "ADA@example.com")
    assert result.exit_code == 0, result.output
    assert f"{EMAIL} is now staff" in result.output
    assert users.get(uid).is_staff
    assert client.get("/staff/").status_code == 200

    granted = [r for r in audit_rows(app) if r.event == "staff:role:granted"]
    assert len(granted) == 1
    assert granted[0].subject_id == uid and granted[0].actor_id is None
    assert json.loads(granted[0].details) == {"via": "cli"}

    result = cli(app, "users", "revoke-staff", EMAIL)
    assert result.exit_code == 0 and not users.get(uid).is_staff
    assert client.get("/staff/").status_code == 403
    assert "staff:role:revoked" in [r.event for r in audit_rows(app)]


def test_grant_staff_to_an_unknown_address_fails_clearly(app):
    result = cli(app, "users", "grant-staff", "nobody@example.com")
    assert result.exit_code != 0
    assert "no account with the address nobody@example.com" in result.output
    assert audit_rows(app) == []


# ---- the audit log (P55) -------------------------------------------------------------

PW1, PW2 = "first-Audit-passphrase", "second-Audit-passphrase"


def account_life(app, client, forms, mail) -> None:
    """Sign up, confirm, log in, change the password, log out."""
    resp = forms.post("/signup", {"email": EMAIL, "password": PW1, "age_ok": "y", "accept_policy": "y"})
    assert resp.status_code == 302
    client.get(urlsplit(link(mail.wait_for(EMAIL, "Confirm"))).path)
    assert forms.post("/login", {"email": EMAIL, "password": "wrong-" + PW1}).status_code == 200
    assert forms.post("/login", {"email": EMAIL, "password": PW1}).status_code == 302
    resp = forms.post("/account/password", {"current": PW1, "password": PW2, "confirm": PW2})
    assert resp.status_code == 302
    forms.post("/logout", {}, page="/account/")


@pytest.mark.promise("P55")
def test_account_actions_are_audited_without_secrets(app, client, forms, mail):
    account_life(app, client, forms, mail)
    rows = audit_rows(app)
    tags = [r.event for r in rows]
    for expected in ("account:created", "account:email:verified", "account:login:failed", "account:login:succeeded",
                     "account:password:changed", "account:logout", "policy:version:published"):
        assert expected in tags, expected
    assert all(re.fullmatch(r"[a-z0-9_]+(:[a-z0-9_]+)+", t) for t in tags), tags

    changed = rows[tags.index("account:password:changed")]
    assert changed.actor_id == changed.subject_id is not None
    assert json.loads(changed.details) == {"sessions_ended": 0}
    login_row = rows[tags.index("account:login:succeeded")]
    assert json.loads(login_row.details) == {"method": "password"}

    # Nothing a person typed as a password is in any column of the log.
    with app.app_context():
        dump = "\n".join(str(v) for row in db.session.execute(sa.select(AuditEvent.__table__)) for v in row)
    for secret in (PW1, PW2, "wrong-" + PW1):
        assert secret not in dump


@pytest.mark.promise("P55")
def test_audit_refuses_secret_details(app):
    from app.services.audit import record_event

    with app.app_context():
        for key in ("password", "Token", "secret", "code"):
            with pytest.raises(ValueError):
                record_event(None, "test:leak", **{key: "hunter2"})
        db.session.rollback()


@pytest.mark.promise("P55")
def test_audit_verify_detects_an_edited_row(app, client, forms, mail):
    account_life(app, client, forms, mail)
    result = cli(app, "audit", "verify")
    rows = audit_rows(app)
    assert len(rows) >= 5
    assert result.exit_code == 0, result.output
    assert f"audit log OK: {len(rows)} events" in result.output

    victim = rows[len(rows) // 2]
    with app.app_context():
        db.session.execute(sa.text("UPDATE audit_events SET details = :d WHERE id = :i"),
                           {"d": '{"sessions_ended":99}', "i": victim.id})
        db.session.commit()
    result = cli(app, "audit", "verify")
    assert result.exit_code == 1
    assert f"BROKEN at event {victim.id}:" in result.output and "edited" in result.output

    # The staff page says so too.
    from app.models import User
    with app.app_context():
        db.session.execute(sa.update(User).values(is_staff=True))
        db.session.commit()
    forms.post("/login", {"email": EMAIL, "password": PW2})
    assert f"broken at event {victim.id}" in text(client.get("/staff/"))

    # Putting the text back restores the chain: the hash covers exactly the content.
    with app.app_context():
        db.session.execute(sa.text("UPDATE audit_events SET details = :d WHERE id = :i"),
                           {"d": victim.details, "i": victim.id})
        db.session.commit()
    assert cli(app, "audit", "verify").exit_code == 0


@pytest.mark.promise("P55")
@pytest.mark.parametrize("column", ["event", "actor_id", "created_at"])
def test_audit_verify_detects_other_edited_columns(app, users, column):
    from app.services.audit import record_event

    uid = users.create()
    with app.app_context():
        for i in range(4):
            record_event(uid, f"test:event:n{i}")
        db.session.commit()
    victim = audit_rows(app)[2]
    value = {"event": "test:event:forged", "actor_id": uid + 1,
             "created_at": victim.created_at - timedelta(days=1)}[column]
    with app.app_context():
        db.session.execute(sa.update(AuditEvent.__table__).where(AuditEvent.id == victim.id)
                           .values({column: value}))
        db.session.commit()
    result = cli(app, "audit", "verify")
    assert result.exit_code == 1 and f"BROKEN at event {victim.id}" in result.output


@pytest.mark.promise("P55")
def test_audit_verify_detects_a_deleted_row(app, client, forms, mail):
    account_life(app, client, forms, mail)
    rows = audit_rows(app)
    middle = len(rows) // 2
    with app.app_context():
        db.session.execute(sa.text("DELETE FROM audit_events WHERE id = :i"), {"i": rows[middle].id})
        db.session.commit()
    result = cli(app, "audit", "verify")
    assert result.exit_code == 1
    assert f"BROKEN at event {rows[middle + 1].id}:" in result.output
    assert "removed or edited" in result.output


@pytest.mark.promise("P55")
def test_audit_chain_continues_after_retention_trims_the_head(app, users):
    """Retention (P60) removes the oldest rows after writing a checkpoint of the
    last removed hash; the rest must still verify. Without the checkpoint, a
    trimmed head is a break."""
    from app.models import AuditCheckpoint
    from app.services.audit import record_event

    uid = users.create()
    with app.app_context():
        for i in range(5):
            record_event(uid, f"test:event:n{i}")
        db.session.commit()
    rows = audit_rows(app)
    first_two = [r.id for r in rows[:2]]
    with app.app_context():
        db.session.execute(sa.delete(AuditEvent).where(AuditEvent.id.in_(first_two)))
        db.session.commit()
    result = cli(app, "audit", "verify")
    assert result.exit_code != 0 and f"BROKEN at event {rows[2].id}" in result.output

    with app.app_context():
        db.session.add(AuditCheckpoint(removed_through_id=rows[1].id, last_removed_hash=rows[1].hash,
                                       removed_count=2))
        db.session.commit()
    result = cli(app, "audit", "verify")
    assert result.exit_code == 0 and "audit log OK: 3 events" in result.output


# ---- the privacy policy (P61) -----------------------------------------------------------

POLICY_V1 = dict(MIN_AGE="21", METADATA_RETENTION_DAYS="30", AUDIT_RETENTION_DAYS="45",
                 SUB_PROCESSORS="Acme Mail (email delivery, EU);Bytes GPU (inference, DE)",
                 PRIVACY_CONTACT="dpo@example.org")


@pytest.mark.promise("P61")
def test_privacy_page_is_rendered_from_the_settings(make_app):
    app = make_app(**POLICY_V1)
    page = text(app.test_client().get("/privacy"))
    assert "Version 1" in page
    assert "at least <strong>21</strong> years old" in page
    assert "<td>30 days, then rolled into daily totals</td>" in page
    assert "<td>45 days</td>" in page
    assert "<li>Acme Mail (email delivery, EU)</li>" in page and "<li>Bytes GPU (inference, DE)</li>" in page
    assert "Stripe" not in page  # the default list is replaced, not appended to
    assert 'href="mailto:dpo@example.org"' in page
    assert "<strong>archived</strong>" not in page

    # The signup page asks for the same age the policy states.
    assert "21" in text(app.test_client().get("/signup"))


@pytest.mark.promise("P61")
def test_protective_setting_change_publishes_a_new_version_at_once_and_archives_the_old(make_app):
    # A higher minimum age and a shorter audit retention only protect people more:
    # no notice needed (P62 covers the other kind, tests/web/test_policy_changes.py).
    first = make_app(**POLICY_V1)
    assert "Version 1" in text(first.test_client().get("/privacy"))
    again = text(first.test_client().get("/privacy"))
    assert "Version 2" not in again, "the same settings do not publish again"

    second = make_app(**{**POLICY_V1, "MIN_AGE": "25", "AUDIT_RETENTION_DAYS": "20"})
    c = second.test_client()
    page = text(c.get("/privacy"))
    assert "Version 2" in page and "<strong>25</strong>" in page and "<td>20 days</td>" in page
    assert "<strong>archived</strong>" not in page
    assert 'href="/privacy/versions/1"' in page and 'href="/privacy/versions/2"' in page

    old = c.get("/privacy/versions/1")
    assert old.status_code == 200
    old_page = text(old)
    assert "Version 1" in old_page and "<strong>archived</strong>" in old_page
    assert "<strong>21</strong>" in old_page and "<td>45 days</td>" in old_page
    assert "<strong>25</strong>" not in old_page
    assert 'href="/privacy"' in old_page  # points to the current version

    current = text(c.get("/privacy/versions/2"))
    assert "<strong>archived</strong>" not in current and "<strong>25</strong>" in current

    assert c.get("/privacy/versions/3").status_code == 404
    assert c.get("/privacy/versions/0").status_code == 404
    assert c.get("/privacy/versions/abc").status_code == 404
    with second.app_context():
        published = db.session.scalars(sa.select(AuditEvent.details)
                                       .where(AuditEvent.event == "policy:version:published")).all()
    assert [json.loads(d)["number"] for d in published] == [1, 2]


# ---- security headers and P02 ---------------------------------------------------------

LOGGED_OUT_PAGES = ["/", "/signup", "/login", "/forgot", "/login/link", "/privacy", "/no/such/page", "/healthz",
                    "/static/app.css", "/static/htmx.min.js"]
LOGGED_IN_PAGES = ["/dashboard", "/account/", "/account/password", "/account/email", "/account/2fa/setup",
                   "/account/2fa/qr.svg", "/account/profile/name?edit=1", "/privacy", "/staff/"]


def check_headers(resp, url: str) -> None:
    h = resp.headers
    csp = h.get("Content-Security-Policy", "")
    assert "default-src 'self'" in csp, url
    assert "frame-ancestors 'none'" in csp, url
    assert "script-src 'self'" in csp and "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp, url
    assert not re.search(r"https?://|\*", csp), f"{url}: CSP allows another origin: {csp}"
    assert h.get("X-Content-Type-Options") == "nosniff", url
    assert h.get("Referrer-Policy") in ("same-origin", "no-referrer", "strict-origin-when-cross-origin"), url
    assert h.get("X-Frame-Options") == "DENY", url


def test_security_headers_on_every_page(client, users, login):
    users.create(staff=True)
    for url in LOGGED_OUT_PAGES:
        resp = client.get(url)
        check_headers(resp, url)
        assert "Strict-Transport-Security" not in resp.headers, f"{url}: HSTS over plain http"
    login()
    for url in LOGGED_IN_PAGES:
        resp = client.get(url)
        assert resp.status_code == 200, url
        check_headers(resp, url)
        if resp.mimetype == "text/html":
            assert "no-store" in resp.headers.get("Cache-Control", ""), url


def test_hsts_only_over_https(client):
    for url in ("/", "/privacy", "/no/such/page"):
        resp = client.get(url, base_url="https://localhost")
        hsts = resp.headers.get("Strict-Transport-Security", "")
        assert "max-age=" in hsts and int(re.search(r"max-age=(\d+)", hsts).group(1)) >= 31536000, url
        check_headers(resp, url)
    assert "Strict-Transport-Security" not in client.get("/").headers


@pytest.mark.promise("P02")
def test_session_cookie_flags(client, users, login):
    users.create()
    resp = login()
    cookies = [v for k, v in resp.headers.items() if k.lower() == "set-cookie"]
    assert len(cookies) == 1, cookies  # one cookie
    cookie = cookies[0]
    assert cookie.startswith("session=")
    assert "HttpOnly" in cookie and "Secure" in cookie and "SameSite=Lax" in cookie


URL_ATTR = re.compile(r"""\s(src|href|action|hx-get|hx-post|formaction|poster|data)\s*=\s*["']([^"']*)["']""", re.I)
SCRIPT = re.compile(r"<script\b([^>]*)>(.*?)</script\s*>", re.I | re.S)


def external_refs(html: str, base: str = "http://localhost/") -> list[str]:
    """Every URL in the page that points to another origin (mailto: is not a load)."""
    bad = []
    for _, value in URL_ATTR.findall(html):
        value = value.strip()
        if value.lower().startswith("mailto:") or value.startswith("#"):
            continue
        target = urlsplit(urljoin(base, value))
        if (target.scheme, target.netloc) != ("http", "localhost"):
            bad.append(value)
    for m in re.finditer(r"srcset\s*=|url\(\s*['\"]?(?:https?:)?//", html, re.I):
        bad.append(m.group(0))
    return bad


def crawl(client, seeds: list[str], limit: int = 60) -> dict[str, str]:
    """Follow every same-origin link (GET only) from the seeds; return url -> html."""
    seen: dict[str, str] = {}
    todo = list(seeds)
    while todo and len(seen) < limit:
        url = todo.pop(0)
        if url in seen or url.startswith("/static/"):
            continue
        resp = client.get(url)
        if resp.status_code != 200 or resp.mimetype != "text/html":
            seen[url] = ""
            continue
        html = text(resp)
        seen[url] = html
        for attr, value in URL_ATTR.findall(html):
            if attr.lower() in ("href", "hx-get") and value.startswith("/") and not value.startswith("//"):
                todo.append(value.split("#")[0])
    return seen


def check_page_is_self_contained(url: str, html: str) -> None:
    assert not external_refs(html), f"{url} refers to another origin: {external_refs(html)}"
    for attrs, content in SCRIPT.findall(html):
        assert "src=" in attrs and content.strip() == "", f"{url} has an inline script"
        src = re.search(r'src="([^"]+)"', attrs).group(1)
        assert src.startswith("/static/"), f"{url} loads a script from {src}"
    assert not re.search(r"<style\b", html, re.I), f"{url} has an inline <style> (CSP would block it)"
    assert not re.search(r"""\sstyle\s*=\s*["']""", html, re.I), f"{url} has a style attribute"
    assert not re.search(r"""\son[a-z]+\s*=\s*["']""", html, re.I), f"{url} has an inline event handler"
    assert not re.search(r"javascript:", html, re.I), f"{url} has a javascript: URL"


@pytest.mark.promise("P02")
def test_no_page_loads_anything_from_another_origin(app, client, users, login):
    users.create(staff=True, name="Ada")
    logged_out = crawl(client, ["/", "/signup", "/login", "/forgot", "/login/link", "/privacy"])
    for url in ["/", "/signup", "/login", "/forgot", "/login/link", "/privacy"]:
        assert logged_out.get(url), f"{url} did not render"
    for url, html in logged_out.items():
        check_page_is_self_contained(url, html)

    login()
    seeds = ["/dashboard", "/account/", "/account/password", "/account/email", "/account/2fa/setup",
             "/account/profile/name?edit=1", "/account/profile/company?edit=1", "/account/reauth", "/privacy",
             "/staff/"]
    logged_in = crawl(client, seeds)
    for url in seeds:
        assert logged_in.get(url), f"{url} did not render"
    for url, html in logged_in.items():
        check_page_is_self_contained(url, html)
    # htmx fragments too.
    for field in ("name", "company"):
        html = text(client.get(f"/account/profile/{field}?edit=1", headers={"HX-Request": "true"}))
        check_page_is_self_contained(f"fragment {field}", html)
    # The pages that exist only with 2FA on, and the error page.
    forms = Forms(client)
    secret = re.search(r'id="totp-secret">([A-Z2-7]+)<', logged_in["/account/2fa/setup"]).group(1)
    codes = forms.post("/account/2fa/setup", {"code": pyotp.TOTP(secret).now()})
    assert "Save your recovery codes" in text(codes)
    check_page_is_self_contained("recovery codes", text(codes))
    check_page_is_self_contained("/account/2fa/disable", text(client.get("/account/2fa/disable")))
    check_page_is_self_contained("404", text(client.get("/no/such/page")))
    forms.post("/logout", {}, page="/account/")
    forms.post("/login", {"email": "ada@example.com", "password": users.password})
    page = client.get("/login/2fa")
    assert page.status_code == 200
    check_page_is_self_contained("/login/2fa", text(page))
    # The static files the pages load exist and are ours.
    for asset in ("/static/app.css", "/static/htmx.min.js", "/static/favicon.svg"):
        resp = client.get(asset)
        assert resp.status_code == 200, asset
        assert not re.search(rb"url\(\s*['\"]?(https?:)?//|@import", resp.data), asset


def test_external_reference_detector_catches_offenders():
    """The checks above must fail on the things they look for."""
    assert external_refs('<img src="https://cdn.example/x.png">')
    assert external_refs('<script src="//cdn.example/x.js"></script>')
    assert external_refs('<a href="http://other.example/">x</a>')
    assert not external_refs('<a href="/privacy">x</a> <a href="mailto:a@b.c">m</a> <a href="#top">t</a>')
    assert not external_refs('<a href="http://localhost/account/">x</a>')
    with pytest.raises(AssertionError):
        check_page_is_self_contained("x", "<script>alert(1)</script>")
    with pytest.raises(AssertionError):
        check_page_is_self_contained("x", '<button onclick="go()">')


# ---- error pages ---------------------------------------------------------------------

def test_404_page_is_helpful_and_in_the_layout(client):
    resp = client.get("/no/such/page")
    assert resp.status_code == 404 and resp.mimetype == "text/html"
    page = text(resp)
    assert "<html" in page and 'href="/privacy"' in page  # the layout, with its footer
    assert "Page not found" in page and "There is nothing at this address" in page
    assert 'href="/"' in page


def test_405_for_get_logout(client):
    resp = client.get("/logout")
    assert resp.status_code == 405
    assert "Method not allowed" in text(resp) and "<html" in text(resp)


def test_500_page_shows_no_traceback(make_app, caplog):
    app = make_app()

    def explode():
        raise RuntimeError("internal-detail-canary in /srv/app/secret.py")

    app.add_url_rule("/test-only/explode", "explode", explode)
    resp = app.test_client().get("/test-only/explode")
    assert resp.status_code == 500 and resp.mimetype == "text/html"
    page = text(resp)
    assert "Something went wrong" in page and "<html" in page
    for leak in ("Traceback", "RuntimeError", "internal-detail-canary", "secret.py", 'File "'):
        assert leak not in page, leak
    # Logged for the operator by type and place, not by message.
    assert "RuntimeError" in caplog.text and "internal-detail-canary" not in caplog.text


def test_500_on_an_api_path_is_json(make_app):
    app = make_app()

    def explode():
        raise ValueError("body-canary")

    app.add_url_rule("/api/test-only/explode", "explode_api", explode)
    resp = app.test_client().get("/api/test-only/explode")
    assert resp.status_code == 500 and resp.is_json
    assert resp.get_json() == {"error": {"type": "api_error", "message": resp.get_json()["error"]["message"]}}
    assert "body-canary" not in text(resp)


@pytest.mark.parametrize("path,shape", [("/v1/chat/completions", "openai"), ("/v1/messages", "anthropic")])
def test_500_in_the_relay_is_the_sdks_error_shape(make_app, monkeypatch, caplog, path, shape):
    """The relay is served in front of Flask: its own crash answer is JSON in the
    client's SDK shape, with a request id, and neither the answer nor the log
    holds the exception's message (it could quote a body, P23)."""
    from app.relay import routes

    def explode(req):
        raise ValueError("body-canary")

    monkeypatch.setitem(routes._EXACT, (path, "POST"), explode)
    resp = make_app().test_client().post(path, json={"model": "m"})
    assert resp.status_code == 500 and resp.is_json
    body = resp.get_json()
    if shape == "anthropic":
        assert body["type"] == "error" and body["error"]["type"] == "api_error"
    else:
        assert body["error"]["type"] == "server_error"
    assert resp.headers["x-request-id"].startswith("req_")
    assert "body-canary" not in text(resp)
    assert "ValueError" in caplog.text and "body-canary" not in caplog.text


@pytest.mark.parametrize("url", ["/v1/anything", "/api/anything", "/v1/chat/nope"])
def test_api_paths_answer_json_errors(client, url):
    resp = client.get(url)
    assert resp.status_code == 404 and resp.is_json
    err = resp.get_json()["error"]
    if url.startswith("/v1/"):  # the relay's own answer: OpenAI's full error shape, with a request id
        assert set(err) == {"type", "message", "param", "code"} and resp.headers["x-request-id"]
    else:
        assert set(err) == {"type", "message"}
    assert err["type"] in ("not_found_error", "invalid_request_error") and err["message"]
    assert "<html" not in text(resp)


def test_csrf_failure_is_a_friendly_400(client):
    resp = client.post("/login", data={"email": EMAIL, "password": "whatever-it-is"})
    assert resp.status_code == 400
    assert "This form has expired" in text(resp) and "<html" in text(resp)


# ---- the mail outbox -------------------------------------------------------------------

def outbox(app) -> list[OutboxMessage]:
    with app.app_context():
        rows = list(db.session.scalars(sa.select(OutboxMessage).order_by(OutboxMessage.id)))
        db.session.expunge_all()
        return rows


def test_mail_in_a_rolled_back_transaction_is_never_sent(app, mail):
    with app.app_context():
        mail_service.queue("ghost@example.com", "test:rollback", "Never sent", "notice_2fa", user=None, what="on")
        db.session.rollback()
        mail_service.queue("real@example.com", "test:commit", "Sent", "notice_2fa", user=None, what="on")
        db.session.commit()
    assert mail.deliver() == 1
    assert mail.to("ghost@example.com") == []
    assert mail.wait_for("real@example.com", "Sent")
    assert [m.to_addr for m in outbox(app)] == ["real@example.com"]


def test_mail_waits_while_smtp_is_down_then_goes_once(make_app, smtp):
    closed = free_port()  # bound and released: nothing listens there
    app = make_app(SMTP_PORT=str(closed))
    with app.app_context():
        mail_service.queue("patient@example.com", "test:retry", "Eventually", "notice_2fa", user=None, what="on")
        db.session.commit()
        assert mail_service.deliver_pending(app) == 0

    (row,) = outbox(app)
    assert row.attempts == 1 and row.sent_at is None and row.failed_at is None
    assert row.next_attempt_at > utcnow()
    assert row.claimed_until is None
    assert row.last_error.startswith("ConnectionRefusedError")
    assert "Eventually" not in row.last_error and "patient" not in row.last_error
    assert row.body_text, "the body is kept until it is sent"

    app.config["SMTP_PORT"] = smtp.port  # the server is back
    with app.app_context():
        assert mail_service.deliver_pending(app) == 0, "not retried before its time"
        db.session.execute(sa.update(OutboxMessage).values(next_attempt_at=utcnow() - timedelta(seconds=1)))
        db.session.commit()
        assert mail_service.deliver_pending(app) == 1
        assert mail_service.deliver_pending(app) == 0, "sent once"

    msg = smtp.mailbox.wait_for("patient@example.com", "Eventually", timeout=5)
    assert "turned on" in msg.get_body(preferencelist=("plain",)).get_content()
    assert len(smtp.mailbox.to("patient@example.com")) == 1
    (row,) = outbox(app)
    assert row.attempts == 2 and row.sent_at is not None
    assert row.body_text == "", "the sent body (it may hold a link) is not kept"


def test_mail_gives_up_after_max_attempts(make_app):
    app = make_app(SMTP_PORT=str(free_port()), MAIL_MAX_ATTEMPTS="2")
    with app.app_context():
        mail_service.queue("lost@example.com", "test:fail", "Lost", "notice_2fa", user=None, what="on")
        db.session.commit()
        for _ in range(2):
            db.session.execute(sa.update(OutboxMessage).values(next_attempt_at=utcnow() - timedelta(seconds=1)))
            db.session.commit()
            mail_service.deliver_pending(app)
    (row,) = outbox(app)
    assert row.attempts == 2 and row.failed_at is not None and row.sent_at is None
