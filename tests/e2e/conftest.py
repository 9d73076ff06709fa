"""A real portal on loopback for Playwright: a werkzeug server in a thread,
sending its mail in the background over SMTP to the suite's aiosmtpd server,
as a deployed process would. The browser is Debian's Chromium (see
tests/conftest.py)."""
from __future__ import annotations

import threading
from dataclasses import dataclass

import pytest
from flask import Flask
from werkzeug.serving import WSGIRequestHandler, make_server

from app import create_app
from app.extensions import limiter
from tests.conftest import clean_database, settings
from tests.servers import free_port, wait_port

DEFAULT_TIMEOUT_MS = 10_000


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/e2e/" in item.nodeid.replace("\\", "/"):
            item.add_marker(pytest.mark.e2e)


class QuietHandler(WSGIRequestHandler):
    """Log only the requests that failed: they are what a failing test needs."""

    def log_request(self, code="-", size="-"):
        if isinstance(code, int) and code >= 400:
            super().log_request(code, size)


@dataclass
class LiveServer:
    app: Flask
    url: str

    def __call__(self, path: str = "/") -> str:
        return self.url + path


@pytest.fixture(scope="module")
def live_server_settings() -> dict:
    """Extra settings for this module's live server; a test module overrides it
    (e.g. to give the relay a providers file)."""
    return {}


@pytest.fixture(scope="module")
def live_server(database_url, smtp, ratelimit_storage, tmp_path_factory, live_server_settings):
    """The app on a real port. Module-scoped, and stopped (mail thread too) at
    the end, so it never sends mail that other tests queue in the same database."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    app = create_app(settings(database_url, smtp, ratelimit_storage, tmp_path_factory.mktemp("instance"),
                              MAIL_WORKER="thread", SESSION_COOKIE_SECURE="false", BASE_URL=url,
                              **live_server_settings))
    with app.app_context():
        limiter.reset()
    server = make_server("127.0.0.1", port, app, threaded=True, request_handler=QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name="e2e-server", daemon=True)
    thread.start()
    wait_port(port)
    yield LiveServer(app, url)
    server.shutdown()
    thread.join(10)
    server.server_close()
    for name in ("mail_worker", "meter"):  # background threads: not for a server that is done
        worker = app.extensions.get(name)
        if worker is not None:
            worker.stop(5)
    clean_database(app)
    smtp.mailbox.clear()


@pytest.fixture(autouse=True)
def _fresh_rate_limits(live_server):
    """Each test starts with its own budget of login attempts from 127.0.0.1."""
    with live_server.app.app_context():
        limiter.reset()


@pytest.fixture
def page(page):
    page.set_default_timeout(DEFAULT_TIMEOUT_MS)
    return page
