"""The API keys pages through the test client (P10, P11): create, list, rotate,
revoke and reveal, with real forms and CSRF.

A secret must appear in the response to the POST that made it and nowhere
else: not in a later page, a flash, the session, the log, the audit log or any
column of the api_keys table. The relay (mounted in the same app) proves that a
rotated or revoked key stops working on its next request.
"""
from __future__ import annotations

import logging
import re
from datetime import date, timedelta

import pytest
import sqlalchemy as sa

from app.extensions import db
from app.models import ApiKey, AuditEvent, User
from app.models.types import utcnow
from app.services.audit import verify_chain
from app.services.keys import hash_key
from app.services.passwords import hash_password
from tests.conftest import Forms, csrf_from
from tests.web.test_account import next_code, turn_on_2fa, wrong_code

EMAIL = "ada@example.com"
PASSWORD = "correct horse battery"
HX = {"HX-Request": "true"}
KEY_RE = re.compile(r'id="new-key"[^>]*>(rk_[A-Za-z0-9_-]{40})<')


# ---- helpers -------------------------------------------------------------------------

def text(resp) -> str:
    return resp.get_data(as_text=True)


def secret_in(resp) -> str:
    """The one-time secret a response shows (it must show exactly one)."""
    found = KEY_RE.findall(text(resp))
    assert len(found) == 1, text(resp)[:2000]
    return found[0]


def create_key(forms, name="ci runner", **fields):
    resp = forms.post("/keys/", {"name": name, **fields}, page="/keys/")
    assert resp.status_code == 200, text(resp)[:1000]
    return secret_in(resp)


def key_rows(app) -> list[ApiKey]:
    with app.app_context():
        rows = list(db.session.scalars(sa.select(ApiKey).order_by(ApiKey.id)))
        db.session.expunge_all()
        return rows


def table_dump(app, table: str) -> str:
    """Every value of every row of one table, as text."""
    with app.app_context():
        t = db.metadata.tables[table]
        return "\n".join(str(v) for row in db.session.execute(sa.select(t)) for v in row)


def events(app) -> list[tuple[str, str]]:
    with app.app_context():
        return [(r.event, r.details) for r in db.session.scalars(sa.select(AuditEvent).order_by(AuditEvent.id))]


def relay_status(client, raw: str) -> int:
    """What the relay answers this key on its next request."""
    return client.get("/v1/models", headers={"Authorization": f"Bearer {raw}"}).status_code


def sign_in(app, email=EMAIL, verified=True):
    """A person and a logged-in browser on an app built with other settings."""
    with app.app_context():
        db.session.add(User(email=email, email_key=email, password_hash=hash_password(PASSWORD),
                            age_confirmed_at=utcnow(), email_verified_at=utcnow() if verified else None))
        db.session.commit()
    client = app.test_client()
    forms = Forms(client)
    assert forms.post("/login", {"email": email, "password": PASSWORD}).status_code == 302
    return client, forms


# ---- create and list -----------------------------------------------------------------

def test_keys_pages_need_login(client):
    for url in ("/keys/", "/keys/1/rotate", "/keys/1/revoke", "/keys/1/reveal", "/keys/1/name"):
        resp = client.get(url)
        assert resp.status_code == 302 and "/login" in resp.headers["Location"], url


@pytest.mark.promise("P10", "P11")
def test_a_new_key_is_shown_once_and_stored_only_as_hash_and_envelope(app, client, forms, users, login, caplog):
    caplog.set_level(logging.DEBUG)
    users.create()
    login()
    page = text(client.get("/keys/"))
    assert "You have no API keys yet." in page and 'name="name"' in page

    resp = forms.post("/keys/", {"name": "ci runner"}, page="/keys/")
    assert resp.status_code == 200 and "<html" in text(resp)
    raw = secret_in(resp)
    assert raw.startswith("rk_") and len(raw) == len("rk_") + 40
    assert "Copy it now. You can reveal it again later with your password." in text(resp)
    assert "http://localhost/v1" in text(resp)  # BASE_URL + /v1, where to point the SDK
    assert text(resp).count(raw) == 1

    [row] = key_rows(app)
    with app.app_context():
        assert row.lookup_hash == hash_key(raw) and row.lookup_hash != raw
    assert row.name == "ci runner" and row.display == raw[:7] + "…" + raw[-4:]
    assert row.secret_ciphertext and row.wrapped_data_key  # reveal is on by default
    # No column holds the key, or any run of it longer than the display prefix.
    stored = table_dump(app, "api_keys")
    assert raw not in stored and raw[3:] not in stored and raw[5:25] not in stored

    # Later pages show the display form only; no flash, session or log carries it.
    listing = text(client.get("/keys/"))
    assert raw not in listing and row.display in listing and "ci runner" in listing
    assert raw not in text(client.get("/dashboard"))
    with client.session_transaction() as sess:
        assert raw not in repr(dict(sess))
    assert raw not in caplog.text
    assert raw not in table_dump(app, "audit_events")

    # And it works at the relay.
    assert relay_status(client, raw) == 200


@pytest.mark.promise("P10")
def test_create_with_htmx_returns_the_new_key_and_the_refreshed_list(app, client, users, login):
    users.create()
    login()
    token = csrf_from(text(client.get("/keys/")))
    resp = client.post("/keys/", data={"name": "notebook"}, headers={**HX, "X-CSRFToken": token})
    assert resp.status_code == 200
    fragment = text(resp)
    assert "<html" not in fragment and fragment.lstrip().startswith('<div id="keys-panel">')
    raw = secret_in(resp)
    [row] = key_rows(app)
    assert f'id="key-{row.id}"' in fragment and row.display in fragment  # the list, refreshed
    assert 'name="name"' in fragment and 'value="notebook"' not in fragment  # an empty form again
    assert raw not in text(client.get("/keys/"))


@pytest.mark.promise("P10")
def test_create_with_expiry_models_and_limits(app, client, forms, users, login):
    users.create()
    login()
    day = date.today() + timedelta(days=30)
    raw = create_key(forms, "batch jobs", expires=day.isoformat(), models="gpt-4o-mini, claude-3-haiku\nllama3:8b",
                     rpm_limit="60", tpm_limit="100,000")
    [row] = key_rows(app)
    assert row.models == ["claude-3-haiku", "gpt-4o-mini", "llama3:8b"]
    assert (row.rpm_limit, row.tpm_limit) == (60, 100_000)
    assert row.expires_at.date() == day and row.expires_at.hour == 0
    listing = text(client.get("/keys/"))
    for shown in ("batch jobs", day.isoformat(), "gpt-4o-mini", "llama3:8b", "60 req/min", "100,000 tokens/min"):
        assert shown in listing, shown
    assert raw not in listing


@pytest.mark.promise("P10")
@pytest.mark.parametrize("fields, message", [
    ({"name": ""}, "Give the key a name, such as the app that will use it."),
    ({"name": "   "}, "Give the key a name, such as the app that will use it."),
    ({"name": "x" * 101}, "Use at most 100 characters for the name."),
    ({"expires": date.today().isoformat()}, "The expiry date must be in the future."),
    ({"expires": "2001-01-01"}, "The expiry date must be in the future."),
    ({"expires": "next tuesday"}, "Enter the date as YYYY-MM-DD."),
    ({"models": "gpt-4o, <script>"}, "is not a model name"),
    ({"rpm_limit": "fast"}, "Requests per minute must be a whole number"),
    ({"rpm_limit": "0"}, "Requests per minute must be between 1 and 10,000,000"),
    ({"tpm_limit": "10000001"}, "Tokens per minute must be between 1 and 10,000,000"),
    ({"tpm_limit": "-5"}, "Tokens per minute must be a whole number"),
])
def test_each_bad_input_gets_its_message(app, client, forms, users, login, fields, message):
    users.create()
    login()
    resp = forms.post("/keys/", {"name": "ok", **fields}, page="/keys/")
    assert resp.status_code == 200
    page = text(resp)
    assert message in page or message.replace("<", "&lt;") in page
    assert 'aria-invalid="true"' in page
    assert not KEY_RE.search(page)
    assert key_rows(app) == []


def test_a_100_character_name_is_accepted(app, forms, users, login):
    users.create()
    login()
    create_key(forms, "n" * 100)
    assert key_rows(app)[0].name == "n" * 100


def test_models_must_be_ones_the_relay_serves_when_it_has_a_list(app, forms, users, login):
    from app.relay.providers import Model, Price, Registry
    app.extensions["relay_registry"] = Registry(models={n: Model(n, (), Price()) for n in ("gpt-test", "claude-test")})
    users.create()
    login()
    page = text(forms.post("/keys/", {"name": "k", "models": "gpt-test\nnot-served"}, page="/keys/"))
    assert "Unknown model: not-served. Available: claude-test, gpt-test." in page
    assert key_rows(app) == []
    create_key(forms, "k", models="gpt-test")
    assert key_rows(app)[0].models == ["gpt-test"]


@pytest.mark.promise("P10")
def test_an_unconfirmed_account_cannot_create_keys(app, client, forms, users, login):
    users.create(verified=False)
    login()
    page = text(client.get("/keys/"))
    assert "Confirm your email address to create API keys." in page
    assert 'action="/verify/resend"' in page  # a way to get the link again
    assert 'name="name"' not in page
    resp = forms.post("/keys/", {"name": "sneaky"}, page="/keys/")
    assert resp.status_code == 403
    assert "Confirm your email address" in text(resp) and not KEY_RE.search(text(resp))
    assert key_rows(app) == []


@pytest.mark.promise("P10")
def test_list_shows_each_key_by_display_form_and_the_dashboard_counts_them(app, client, forms, users, login):
    users.create()
    login()
    assert "You have no active API keys yet." in text(client.get("/dashboard"))
    raws = [create_key(forms, "first"), create_key(forms, "second")]
    listing = text(client.get("/keys/"))
    for raw, row in zip(raws, key_rows(app), strict=True):
        assert raw not in listing and row.display in listing
    assert listing.count("never") >= 4  # last used and expires, per key
    assert listing.count('class="badge ok">active<') == 2
    dash = text(client.get("/dashboard"))
    assert re.search(r'class="figure">2<', dash) and 'href="/keys/"' in dash

    # An expired key is shown as such and no longer counted.
    with app.app_context():
        db.session.execute(sa.update(ApiKey).where(ApiKey.name == "first")
                           .values(expires_at=utcnow() - timedelta(minutes=1)))
        db.session.commit()
    listing = text(client.get("/keys/"))
    expired = key_rows(app)[0]
    row = re.search(rf'<tr id="key-{expired.id}" class="key-row expired">.*?</tr>', listing, re.S).group(0)
    assert 'class="badge warn">expired<' in row and "Revoke" in row and "Rotate" not in row
    assert re.search(r'class="figure">1<', text(client.get("/dashboard")))
    assert relay_status(client, raws[0]) == 401
    # A new secret would be born expired: rotating is refused, revoking still works.
    assert client.get(f"/keys/{expired.id}/rotate").status_code == 302
    assert forms.post(f"/keys/{expired.id}/rotate", {}, page="/keys/").status_code == 302
    assert "An expired key cannot be rotated." in text(client.get("/keys/"))
    assert key_rows(app)[0].lookup_hash == expired.lookup_hash


@pytest.mark.promise("P10")
def test_rename_in_place_with_htmx(app, client, forms, users, login):
    users.create()
    login()
    raw = create_key(forms, "old name")
    [key] = key_rows(app)
    url = f"/keys/{key.id}/name"
    assert f'hx-get="{url}?edit=1"' in text(client.get("/keys/"))

    fragment = text(client.get(f"{url}?edit=1", headers=HX))
    assert "<html" not in fragment and 'value="old name"' in fragment
    token = csrf_from(fragment)
    for bad, message in (("  ", "Give the key a name"), ("x" * 101, "Use at most 100 characters")):
        fragment = text(client.post(url, data={"name": bad}, headers={**HX, "X-CSRFToken": token}))
        assert message in fragment and 'aria-invalid="true"' in fragment
    assert key_rows(app)[0].name == "old name"

    fragment = text(client.post(url, data={"name": " new name "}, headers={**HX, "X-CSRFToken": token}))
    assert "<html" not in fragment and re.search(r'<strong class="key-name"[^>]*>new name</strong>', fragment)
    assert 'name="name"' not in fragment and raw not in fragment
    assert key_rows(app)[0].name == "new name"
    assert [e for e, _ in events(app)].count("account:api_key:renamed") == 1

    # Without htmx: a full page, then back to the list with a flash.
    assert "<html" in text(client.get(f"{url}?edit=1"))
    resp = forms.post(url, {"name": "third name"}, page=f"{url}?edit=1")
    assert resp.status_code == 302 and resp.headers["Location"].endswith("/keys/")
    assert "Name saved." in text(client.get("/keys/")) and key_rows(app)[0].name == "third name"

    # A revoked key keeps its name.
    forms.post(f"/keys/{key.id}/revoke", {})
    resp = client.post(url, data={"name": "renamed after death"}, headers={**HX, "X-CSRFToken": token})
    assert "A revoked key cannot be renamed." in text(resp)
    assert key_rows(app)[0].name == "third name"


# ---- rotate, revoke -------------------------------------------------------------------

@pytest.mark.promise("P10", "P11")
def test_rotate_issues_a_new_secret_once_and_the_old_one_stops_working(app, client, forms, users, login):
    users.create()
    login()
    old = create_key(forms, "web app", rpm_limit="30")
    [before] = key_rows(app)
    url = f"/keys/{before.id}/rotate"

    confirm = text(client.get(url))
    assert "Rotate “web app”?" in confirm and f'action="{url}"' in confirm and "stops working" in confirm
    resp = forms.post(url, {})
    assert resp.status_code == 200
    new = secret_in(resp)
    assert new != old and "The previous secret no longer works." in text(resp)

    [after] = key_rows(app)
    assert after.id == before.id and after.name == "web app" and after.rpm_limit == 30
    with app.app_context():
        assert after.lookup_hash == hash_key(new) != before.lookup_hash
        assert db.session.scalar(sa.select(ApiKey).where(ApiKey.lookup_hash == hash_key(old))) is None
    assert after.secret_ciphertext != before.secret_ciphertext and after.rotated_at is not None
    stored = table_dump(app, "api_keys")
    assert old not in stored and new not in stored

    assert relay_status(client, old) == 401
    assert relay_status(client, new) == 200
    listing = text(client.get("/keys/"))
    assert new not in listing and after.display in listing and "rotated" in listing


@pytest.mark.promise("P10", "P53")
def test_revoke_through_the_confirm_page(app, client, forms, users, login):
    users.create()
    login()
    raw = create_key(forms, "old laptop")
    [key] = key_rows(app)
    assert relay_status(client, raw) == 200

    confirm = text(client.get(f"/keys/{key.id}/revoke"))
    assert "Revoke “old laptop”?" in confirm and "Revoke key" in confirm and 'href="/keys/"' in confirm
    assert key_rows(app)[0].revoked_at is None  # the GET changes nothing
    resp = forms.post(f"/keys/{key.id}/revoke", {})
    assert resp.status_code == 302 and resp.headers["Location"].endswith("/keys/")

    [key] = key_rows(app)
    assert key.revoked_at is not None and key.state() == "revoked"
    assert key.secret_ciphertext is None and key.wrapped_data_key is None
    assert relay_status(client, raw) == 401  # the very next request

    listing = text(client.get("/keys/"))
    assert "is revoked" in listing  # the flash
    row = re.search(rf'<tr id="key-{key.id}" class="key-row revoked">.*?</tr>', listing, re.S).group(0)
    assert 'class="badge bad">revoked<' in row and key.display in row
    assert "Rotate" not in row and "Reveal" not in row and "Revoke" not in row
    assert "You have no active API keys yet." in text(client.get("/dashboard"))

    # Nothing more can be done with it.
    resp = client.get(f"/keys/{key.id}/rotate")
    assert resp.status_code == 302
    assert "cannot be rotated" in text(client.get("/keys/"))
    assert "cannot be shown again" in text(client.get(f"/keys/{key.id}/reveal"))
    assert not KEY_RE.search(text(forms.post(f"/keys/{key.id}/reveal", {"password": PASSWORD},
                                             page="/keys/")))


# ---- reveal (P11) ---------------------------------------------------------------------

@pytest.mark.promise("P11")
def test_reveal_asks_for_the_password_every_time(app, client, forms, users, login):
    users.create()
    login()  # a fresh login: the re-auth window is open, and still the password is asked
    raw = create_key(forms)
    [key] = key_rows(app)
    url = f"/keys/{key.id}/reveal"
    assert f'href="{url}"' in text(client.get("/keys/"))

    page = text(client.get(url))
    assert 'name="password"' in page and raw not in page
    resp = forms.post(url, {"password": "not my password"})
    assert resp.status_code == 200
    assert "That password is not correct." in text(resp) and raw not in text(resp)
    assert raw not in text(forms.post(url, {"password": ""}))

    resp = forms.post(url, {"password": PASSWORD})
    assert secret_in(resp) == raw

    # Right after, the next reveal asks again.
    page = text(client.get(url))
    assert 'name="password"' in page and raw not in page
    assert raw not in text(client.get("/keys/"))
    names = [e for e, _ in events(app)]
    assert names.count("account:api_key:reveal_failed") == 1 and names.count("account:api_key:revealed") == 1


@pytest.mark.promise("P11", "P05")
def test_reveal_with_two_factor_needs_a_current_code(app, client, forms, users, login):
    users.create()
    login()
    secret, recovery = turn_on_2fa(client, forms)
    raw = create_key(forms)
    [key] = key_rows(app)
    url = f"/keys/{key.id}/reveal"
    assert 'name="code"' in text(client.get(url))

    resp = forms.post(url, {"password": PASSWORD})
    assert "Enter the current code from your authenticator app." in text(resp) and raw not in text(resp)
    resp = forms.post(url, {"password": PASSWORD, "code": wrong_code(secret)})
    assert "Enter the current code" in text(resp) and raw not in text(resp)
    resp = forms.post(url, {"password": "wrong", "code": next_code(secret)})
    assert "That password is not correct." in text(resp) and raw not in text(resp)

    code = next_code(secret)
    assert secret_in(forms.post(url, {"password": PASSWORD, "code": code})) == raw
    # The code is spent: replaying it reveals nothing.
    assert raw not in text(forms.post(url, {"password": PASSWORD, "code": code}))


@pytest.mark.promise("P11")
def test_reveal_attempts_are_rate_limited(make_app):
    app = make_app(RATELIMIT_AUTH="3 per minute")
    client, forms = sign_in(app)
    create_key(forms)
    [key] = key_rows(app)
    url = f"/keys/{key.id}/reveal"
    for _ in range(3):
        assert forms.post(url, {"password": "guess"}).status_code == 200
    resp = forms.post(url, {"password": PASSWORD})
    assert resp.status_code == 429 and not KEY_RE.search(text(resp))


@pytest.mark.promise("P11")
def test_with_reveal_off_only_the_hash_is_kept_and_reveal_is_not_offered(make_app):
    app = make_app(KEY_REVEAL="false")
    client, forms = sign_in(app)
    raw = create_key(forms)
    [key] = key_rows(app)
    assert key.secret_ciphertext is None and key.wrapped_data_key is None
    with app.app_context():
        assert key.lookup_hash == hash_key(raw)
    assert raw not in table_dump(app, "api_keys")

    listing = text(client.get("/keys/"))
    assert "/reveal" not in listing and "Reveal" not in listing and "Rotate" in listing
    page = text(client.get(f"/keys/{key.id}/reveal"))
    assert "This key cannot be shown again" in page and f'href="/keys/{key.id}/rotate"' in page
    assert 'name="password"' not in page
    resp = forms.post(f"/keys/{key.id}/reveal", {"password": PASSWORD}, page="/keys/")
    assert "cannot be shown again" in text(resp) and raw not in text(resp)

    # Rotating still shows the new secret once, and keeps no copy of it either.
    new = secret_in(forms.post(f"/keys/{key.id}/rotate", {}, page="/keys/"))
    assert key_rows(app)[0].secret_ciphertext is None and new not in table_dump(app, "api_keys")


# ---- ownership, audit, CSRF -----------------------------------------------------------

@pytest.mark.promise("P10")
def test_someone_elses_key_is_not_found(app, client, forms, users, login):
    users.create()
    login()
    raw = create_key(forms, "ada's key")
    [key] = key_rows(app)

    users.create("grace@example.com")
    other = app.test_client()
    other_forms = Forms(other)
    assert other_forms.post("/login", {"email": "grace@example.com", "password": PASSWORD}).status_code == 302
    assert "ada's key" not in text(other.get("/keys/"))
    for action in ("rotate", "revoke", "reveal", "name"):
        url = f"/keys/{key.id}/{action}"
        assert other.get(url).status_code == 404, url
        assert other_forms.post(url, {"password": PASSWORD, "name": "mine now"}, page="/keys/").status_code == 404, url
    assert other.get("/keys/99999/revoke").status_code == 404

    [after] = key_rows(app)
    assert after.revoked_at is None and after.lookup_hash == key.lookup_hash and after.name == "ada's key"
    assert relay_status(client, raw) == 200


@pytest.mark.promise("P10", "P11", "P55")
def test_every_action_is_in_the_audit_log_without_the_secret(app, client, forms, users, login):
    uid = users.create()
    login()
    raws = [create_key(forms)]
    [key] = key_rows(app)
    raws.append(secret_in(forms.post(f"/keys/{key.id}/rotate", {})))
    forms.post(f"/keys/{key.id}/reveal", {"password": "wrong"})
    assert secret_in(forms.post(f"/keys/{key.id}/reveal", {"password": PASSWORD})) == raws[-1]
    forms.post(f"/keys/{key.id}/revoke", {})

    key_events = [(e, d) for e, d in events(app) if e.startswith("account:api_key:")]
    assert [e for e, _ in key_events] == [
        "account:api_key:created", "account:api_key:rotated", "account:api_key:reveal_failed",
        "account:api_key:revealed", "account:api_key:revoked"]
    assert all(f'"key_id":{key.id}' in d for _, d in key_events)
    with app.app_context():
        rows = db.session.scalars(sa.select(AuditEvent).where(AuditEvent.event.like("account:api_key:%"))).all()
        assert {(r.actor_id, r.subject_id) for r in rows} == {(uid, uid)}
        assert verify_chain().ok
    audit = table_dump(app, "audit_events")
    for raw in raws:
        assert raw not in audit and raw[3:] not in audit


def test_every_state_change_needs_csrf(app, client, forms, users, login):
    users.create()
    login()
    create_key(forms)
    [key] = key_rows(app)
    assert client.post("/keys/", data={"name": "no token"}).status_code == 400
    assert client.post("/keys/", data={"name": "no token"}, headers=HX).status_code == 400
    for action in ("rotate", "revoke", "reveal", "name"):
        resp = client.post(f"/keys/{key.id}/{action}", data={"password": PASSWORD, "name": "x", "csrf_token": "forged"})
        assert resp.status_code == 400 and not KEY_RE.search(text(resp))
    [after] = key_rows(app)
    assert len(key_rows(app)) == 1 and after.revoked_at is None and after.lookup_hash == key.lookup_hash
    assert after.name == key.name


@pytest.mark.promise("P53", "P10")
def test_a_restricted_account_cannot_create_or_rotate_a_key(app, client, forms, users, login):
    """Defect 3: while restricted, the keys page explains the pause instead of
    offering the form; a POST made anyway (an old tab) creates nothing, and
    rotation is refused with the same reason. Every key stays refused."""
    from app.services import privacy

    users.create()
    login()
    raw = create_key(forms, "before")
    [key] = key_rows(app)
    with app.app_context(), app.test_request_context():
        privacy.restrict(db.session.get(User, key.user_id), None)
        db.session.commit()

    page = text(client.get("/keys/"))
    assert "Your account is restricted." in page and 'action="/keys/"' not in page
    resp = forms.post("/keys/", {"name": "after"}, page="/privacy")
    assert resp.status_code == 200 and "restricted" in text(resp) and not KEY_RE.search(text(resp))
    assert [k.name for k in key_rows(app)] == ["before"]

    resp = forms.post(f"/keys/{key.id}/rotate", {}, page="/privacy")
    assert resp.status_code == 302
    assert "no API key can be created or rotated" in text(client.get("/keys/"))
    with app.app_context():
        assert key_rows(app)[0].lookup_hash == hash_key(raw)  # the same secret, still refused
    assert relay_status(client, raw) == 403
