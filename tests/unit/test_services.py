"""Services called directly, as the CLI or a later job would call them."""
from __future__ import annotations

import statistics
import time
from datetime import timedelta

import pytest
import sqlalchemy as sa

from app.extensions import db
from app.models import AuditEvent, OneTimeToken, User
from app.models.types import utcnow
from app.services import ServiceError, accounts, tokens
from app.services.audit import record_event, verify_chain


@pytest.fixture
def ctx(app):
    with app.app_context():
        yield app


def test_link_token_is_single_use(ctx, users):
    user = db.session.get(User, users.create())
    token = tokens.issue(user, tokens.RESET)
    db.session.commit()
    got, _ = tokens.consume(token, tokens.RESET)
    assert got.id == user.id
    with pytest.raises(ServiceError, match="already been used"):
        tokens.consume(token, tokens.RESET)


def test_link_token_for_one_purpose_is_refused_for_another(ctx, users):
    user = db.session.get(User, users.create())
    token = tokens.issue(user, tokens.MAGIC)
    with pytest.raises(ServiceError, match="not valid"):
        tokens.consume(token, tokens.RESET)


def test_newer_link_voids_the_older_one(ctx, users):
    user = db.session.get(User, users.create())
    first = tokens.issue(user, tokens.MAGIC)
    second = tokens.issue(user, tokens.MAGIC)
    db.session.commit()
    with pytest.raises(ServiceError, match="replaced"):
        tokens.consume(first, tokens.MAGIC)
    assert tokens.consume(second, tokens.MAGIC)[0].id == user.id


def test_link_token_expires_with_its_row(ctx, users):
    user = db.session.get(User, users.create())
    token = tokens.issue(user, tokens.MAGIC)
    db.session.execute(sa.update(OneTimeToken).values(expires_at=utcnow() - timedelta(seconds=1)))
    db.session.commit()
    assert not tokens.peek(token, tokens.MAGIC)
    with pytest.raises(ServiceError, match="expired"):
        tokens.consume(token, tokens.MAGIC)


def test_tampered_link_token_is_refused(ctx, users):
    user = db.session.get(User, users.create())
    token = tokens.issue(user, tokens.VERIFY)
    with pytest.raises(ServiceError, match="not valid"):
        tokens.consume(token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB"), tokens.VERIFY)


def test_only_a_hash_of_the_link_nonce_is_stored(ctx, users):
    user = db.session.get(User, users.create())
    token = tokens.issue(user, tokens.RESET)
    db.session.commit()
    row = db.session.scalar(sa.select(OneTimeToken))
    import itsdangerous
    nonce = itsdangerous.URLSafeTimedSerializer(ctx.config["SECRET_KEY"], salt="link:reset_password").loads(token)["n"]
    assert nonce not in row.nonce_hash and len(row.nonce_hash) == 64


@pytest.mark.promise("P01")
def test_unknown_email_costs_about_as_much_as_a_wrong_password(make_app, users):
    """With the production Argon2 parameters, a login for an address that has no
    account spends an Argon2 verification too, so timing does not reveal accounts."""
    app = make_app(ARGON2_TIME_COST="3", ARGON2_MEMORY_COST="65536", ARGON2_PARALLELISM="4")
    with app.app_context():
        from app.services.passwords import hash_password
        db.session.add(User(email="t@example.com", email_key="t@example.com",
                            password_hash=hash_password("right password here"), age_confirmed_at=utcnow()))
        db.session.commit()
        accounts.authenticate("nobody@example.com", "x" * 12)  # warm the decoy hash

        def timed(email):
            t = time.perf_counter()
            assert accounts.authenticate(email, "wrong password!!") is None
            return time.perf_counter() - t

        wrong = statistics.median(timed("t@example.com") for _ in range(5))
        unknown = statistics.median(timed("nobody@example.com") for _ in range(5))
        db.session.rollback()
    assert unknown > 0.5 * wrong, (unknown, wrong)
    assert unknown < 2.0 * wrong, (unknown, wrong)


@pytest.mark.promise("P55")
def test_audit_refuses_secret_details(ctx):
    for key in ("password", "token", "secret", "code"):
        with pytest.raises(ValueError):
            record_event(None, "account:test", **{key: "x"})


@pytest.mark.promise("P55")
def test_audit_chain_links_each_row_to_the_previous(ctx):
    a = record_event(None, "test:one", n=1)
    b = record_event(None, "test:two", n=2)
    db.session.commit()
    assert b.prev_hash == a.hash
    assert verify_chain().ok and verify_chain().checked == 2
    db.session.execute(sa.update(AuditEvent).where(AuditEvent.id == a.id).values(event="test:forged"))
    db.session.commit()
    report = verify_chain()
    assert not report.ok and report.broken_at == a.id


def test_normalize_email_is_case_insensitive_on_the_key(ctx):
    email, key = accounts.normalize_email("  Ada.Lovelace@EXAMPLE.com ")
    assert email == "Ada.Lovelace@example.com"
    assert key == "ada.lovelace@example.com"
    with pytest.raises(ServiceError, match="valid email"):
        accounts.normalize_email("not-an-address")


def test_a_device_label_keeps_printable_text_only():
    from app.services.sessions import device_label
    assert device_label("Mozilla/5.0\x00\r\n(X11)\x1b[31m") == "Mozilla/5.0(X11)[31m"
    assert device_label("\x00\x01") is None and device_label(None) is None
    assert len(device_label("a" * 500)) == 200
