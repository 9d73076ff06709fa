"""Fixtures for the whole suite.

TEST_DB=sqlite (default) or postgresql picks the engine; for PostgreSQL the
suite starts a private cluster and a Redis (rate-limit storage) of its own.
The schema is made once per run by `alembic upgrade head`, as in production;
each test gets a fresh app on that database and leaves the tables empty.
Mail goes over real SMTP to an aiosmtpd server on loopback.
"""
from __future__ import annotations

import os
import re

import pytest
import sqlalchemy as sa

from app import create_app
from app.extensions import db, limiter
from app.models.billing import APPEND_ONLY_SQLITE, DROP_APPEND_ONLY_SQLITE
from tests.fakes.smtp import SMTPServer
from tests.servers import Postgres, Redis

BACKEND = os.environ.get("TEST_DB", "sqlite")
FAST_ARGON2 = {"ARGON2_TIME_COST": "1", "ARGON2_MEMORY_COST": "8192", "ARGON2_PARALLELISM": "1"}


def pytest_report_header(config):
    return f"database backend: {BACKEND}"


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    """Debian's Chromium: Playwright cannot download its own browser here."""
    return {**browser_type_launch_args, "executable_path": "/usr/bin/chromium",
            "args": ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--no-first-run",
                     "--disable-quic"]}


@pytest.fixture(scope="session")
def database_url(tmp_path_factory):
    pg = None
    if BACKEND == "postgresql":
        url = os.environ.get("TEST_DATABASE_URL")
        if not url:
            pg = Postgres()
            url = pg.start()
    else:
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'test.db'}"
    boot = create_app({"DATABASE_URL": url, "INSTANCE_PATH": str(tmp_path_factory.mktemp("instance")),
                       "SECRET_KEY": "migrate", "MAIL_WORKER": "off"})
    with boot.app_context():
        from flask_migrate import upgrade
        upgrade()
        db.engine.dispose()
    yield url
    if pg:
        pg.stop()


@pytest.fixture(scope="session")
def ratelimit_storage():
    if BACKEND != "postgresql":
        yield "memory://"
        return
    redis = Redis()
    url = redis.start()
    yield url
    redis.stop()


@pytest.fixture(scope="session")
def smtp():
    server = SMTPServer().start()
    yield server
    server.stop()


def settings(database_url, smtp, ratelimit_storage, instance, **extra) -> dict:
    base = {
        "DATABASE_URL": database_url,
        "INSTANCE_PATH": str(instance),
        "SECRET_KEY": "test-secret-key-that-is-long-enough-for-hkdf",
        "BASE_URL": "http://localhost",
        "MAIL_TRANSPORT": "smtp",
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(smtp.port),
        "MAIL_WORKER": "off",
        "EXPORT_WORKER": "off",
        "JOBS_SCHEDULER": "off",
        "RATELIMIT_STORAGE_URI": ratelimit_storage,
        "LOG_LEVEL": "WARNING",
        **FAST_ARGON2,
    }
    base.update(extra)
    return base


def clean_database(app) -> None:
    with app.app_context():
        db.session.remove()
        tables = [t for t in reversed(db.metadata.sorted_tables)]
        with db.engine.begin() as conn:
            if db.engine.dialect.name == "postgresql":
                conn.execute(sa.text("TRUNCATE " + ", ".join(t.name for t in tables) + " RESTART IDENTITY CASCADE"))
            else:
                # The ledger refuses DELETE (P41): its triggers step aside for the cleanup only.
                for statement in DROP_APPEND_ONLY_SQLITE:
                    conn.execute(sa.text(statement))
                for t in tables:
                    conn.execute(t.delete())
                for statement in APPEND_ONLY_SQLITE:
                    conn.execute(sa.text(statement))
        db.engine.dispose()


@pytest.fixture
def make_app(database_url, smtp, ratelimit_storage, tmp_path):
    """Build an app with extra settings; every app made is cleaned up after the test."""
    made = []

    def factory(**extra):
        app = create_app(settings(database_url, smtp, ratelimit_storage, tmp_path / "instance", **extra))
        app.config["TESTING"] = True
        with app.app_context():
            limiter.reset()
        made.append(app)
        return app

    yield factory
    for app in made:
        meter = app.extensions.get("meter")
        if meter is not None:  # its thread renews and sweeps budget holds: not for an app that is done
            meter.stop(2)
        clean_database(app)
    smtp.mailbox.clear()


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def mail(app, smtp):
    """The loopback SMTP mailbox; `mail.deliver()` runs the outbox sender first."""
    from app.services.mail import deliver_pending

    class Mail:
        mailbox = smtp.mailbox

        def deliver(self) -> int:
            with app.app_context():
                return deliver_pending(app)

        def wait_for(self, addr, subject="", after=0):
            self.deliver()
            return smtp.mailbox.wait_for(addr, subject, timeout=5, after=after)

        def to(self, addr):
            self.deliver()
            return smtp.mailbox.to(addr)

    return Mail()


# ---- helpers for driving real forms -------------------------------------------------

CSRF_RE = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"|value="([^"]+)"[^>]*name="csrf_token"')


def csrf_from(html: str) -> str:
    m = CSRF_RE.search(html)
    assert m, "page has no CSRF token"
    return m.group(1) or m.group(2)


class Forms:
    """Submit forms the way a browser does: GET the page, take its token, POST."""

    def __init__(self, client):
        self.client = client

    def token(self, page: str = "/privacy") -> str:
        return csrf_from(self.client.get(page).get_data(as_text=True))

    def post(self, url: str, data: dict, page: str | None = None, **kw):
        token = self.token(page or url)
        return self.client.post(url, data={"csrf_token": token, **data}, **kw)


@pytest.fixture
def forms(client):
    return Forms(client)


@pytest.fixture
def users(app):
    """Make accounts directly (for tests that are not about signup)."""
    from app.models import User
    from app.models.types import utcnow
    from app.services.passwords import hash_password

    class Users:
        password = "correct horse battery"

        def create(self, email="ada@example.com", password=None, verified=True, staff=False, **fields):
            with app.app_context():
                u = User(email=email, email_key=email.lower(), password_hash=hash_password(password or self.password),
                         age_confirmed_at=utcnow(), email_verified_at=utcnow() if verified else None,
                         is_staff=staff, **fields)
                db.session.add(u)
                db.session.commit()
                return u.id

        def get(self, user_id):
            with app.app_context():
                u = db.session.get(User, user_id)
                db.session.expunge(u)
                return u

    return Users()


@pytest.fixture
def login(forms, users):
    def do(email="ada@example.com", password=None):
        resp = forms.post("/login", {"email": email, "password": password or users.password})
        assert resp.status_code == 302, resp.get_data(as_text=True)[:500]
        return resp
    return do
