"""The relay served for real, in front of the fake provider, driven by the
official `openai` and `anthropic` SDKs.

Providers file (written per module): kind openai at the fake's /v1, kind
anthropic at the fake's root, a dead openai_compatible worker for fallback
tests, and models routing to each. A verified user owns a key made by the
keys service; tests get SDK clients that carry it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import anthropic
import openai
import pytest
from flask import Flask

from app import create_app
from app.extensions import db
from app.models import ApiKey, UsageRecord, User
from app.models.types import utcnow
from app.relay.asgi import App
from app.services import keys as key_service
from app.services.passwords import hash_password
from tests.asgi_server import AsgiServer
from tests.conftest import clean_database, settings
from tests.fakes.provider import FakeProvider
from tests.servers import free_port

UPSTREAM_KEY = "sk-fake-upstream-credential"

PROVIDERS = """
[providers.oai]
kind = "openai"
base_url = "{fake}/v1"
api_key_env = "RELAY_TEST_OPENAI_KEY"
first_byte_timeout = 2
read_timeout = 3

[providers.claude]
kind = "anthropic"
base_url = "{fake}"
api_key_env = "RELAY_TEST_ANTHROPIC_KEY"
first_byte_timeout = 2
read_timeout = 3

[providers.dead]
kind = "openai_compatible"
base_url = "http://127.0.0.1:{dead_port}/v1"
connect_timeout = 1

[providers.backup]
kind = "openai_compatible"
base_url = "{fake}/v1"
api_key_env = "RELAY_TEST_OPENAI_KEY"
first_byte_timeout = 2

[[models]]
name = "gpt-test"
targets = [ {{ provider = "oai", model = "gpt-upstream" }} ]
price = {{ input = 1.0, output = 2.0, cache_read = 0.5, cache_write = 1.25 }}

[[models]]
name = "claude-test"
targets = [ {{ provider = "claude", model = "claude-upstream" }} ]
price = {{ input = 3.0, output = 15.0, cache_read = 0.3, cache_write = 3.75 }}

[[models]]
name = "fallback-test"
targets = [
    {{ provider = "dead", model = "x" }},
    {{ provider = "oai", model = "gpt-primary" }},
    {{ provider = "backup", model = "gpt-backup" }},
]
price = {{ input = 1.0, output = 1.0 }}

[[models]]
name = "embed-test"
targets = [ {{ provider = "oai", model = "embed-upstream" }} ]
price = {{ input = 0.1 }}

[[models]]
name = "free-test"
targets = [ {{ provider = "oai", model = "gpt-free" }} ]

[[models]]
name = "pricey-test"
targets = [ {{ provider = "oai", model = "gpt-pricey" }} ]
price = {{ input = 1000.0, output = 4000.0, cache_read = 100.0, cache_write = 1250.0 }}
max_output = 200

[[models]]
name = "pricey-claude"
targets = [ {{ provider = "claude", model = "claude-pricey" }} ]
price = {{ input = 1000.0, output = 4000.0, cache_read = 100.0, cache_write = 1250.0 }}
"""


@dataclass
class Relay:
    app: Flask
    url: str
    fake: FakeProvider
    user_id: int
    key: str
    key_id: int

    def openai(self, key: str | None = None, **kw) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key or self.key, max_retries=0, **kw)

    def anthropic(self, key: str | None = None, **kw) -> anthropic.Anthropic:
        return anthropic.Anthropic(base_url=self.url, api_key=key or self.key, max_retries=0, **kw)

    def rows(self) -> list[UsageRecord]:
        """Every usage row of this relay's user written so far, oldest first."""
        assert self.app.extensions["meter"].flush(10)
        with self.app.app_context():
            rows = db.session.scalars(db.select(UsageRecord).where(UsageRecord.user_id == self.user_id)
                                      .order_by(UsageRecord.id)).all()
            for r in rows:
                db.session.expunge(r)
            return list(rows)

    def mark(self) -> int:
        """How many rows exist now; pass it to new_rows() after some requests."""
        return len(self.rows())

    def new_rows(self, mark: int, count: int = 1, timeout: float = 5.0) -> list[UsageRecord]:
        """Wait for `count` rows beyond `mark`. A row is queued after the last byte
        has gone to the client, so it can land a moment after the SDK returns."""
        deadline = time.monotonic() + timeout
        while True:
            rows = self.rows()
            if len(rows) >= mark + count or time.monotonic() > deadline:
                assert len(rows) == mark + count, f"expected {count} new usage rows, got {len(rows) - mark}"
                return rows[mark:]
            time.sleep(0.02)

    def make_key(self, **kw) -> tuple[int, str]:
        with self.app.app_context(), self.app.test_request_context():
            user = db.session.get(User, self.user_id)
            k, raw = key_service.create(user, kw.pop("name", "test key"), **kw)
            db.session.commit()
            return k.id, raw

    def update_key(self, key_id: int, **values) -> None:
        with self.app.app_context():
            db.session.execute(db.update(ApiKey).where(ApiKey.id == key_id).values(**values))
            db.session.commit()


@pytest.fixture(scope="module")
def fake():
    server = FakeProvider(api_key=UPSTREAM_KEY).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def relay_factory(database_url, smtp, ratelimit_storage, tmp_path_factory, fake):
    """Start relays with extra settings; all are stopped and the DB cleaned at module end."""
    started = []
    mp = pytest.MonkeyPatch()
    mp.setenv("RELAY_TEST_OPENAI_KEY", UPSTREAM_KEY)
    mp.setenv("RELAY_TEST_ANTHROPIC_KEY", UPSTREAM_KEY)

    def start(**extra) -> Relay:
        folder = tmp_path_factory.mktemp("relay")
        providers = folder / "providers.toml"
        providers.write_text(PROVIDERS.format(fake=fake.base_url, dead_port=free_port()))
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        app = create_app(settings(database_url, smtp, ratelimit_storage, folder, BASE_URL=url,
                                  PROVIDERS_FILE=str(providers), **extra))
        server = AsgiServer(App(app), port)
        if not started:
            # Rate-limit counters are keyed by key and account ids, which restart in
            # each module's clean database: start each module with none (Redis is shared).
            app.extensions["relay_limits"].reset()
        server.start()
        with app.app_context(), app.test_request_context():
            user = User(email=f"dev{port}@example.com", email_key=f"dev{port}@example.com",
                        password_hash=hash_password("correct horse battery"), age_confirmed_at=utcnow(),
                        email_verified_at=utcnow())
            db.session.add(user)
            db.session.flush()
            k, raw = key_service.create(user, "default")
            db.session.commit()
            relay = Relay(app, url, fake, user.id, raw, k.id)
        started.append((server, app))
        return relay

    yield start
    mp.undo()
    for server, app in started:
        server.stop()
        app.extensions["meter"].flush(10)
        app.extensions["meter"].stop(2)
    if started:
        clean_database(started[0][1])


@pytest.fixture(scope="module")
def relay(relay_factory) -> Relay:
    return relay_factory()


@pytest.fixture(autouse=True)
def _clean_fake(fake):
    fake.clear()
    yield
    fake.clear()
