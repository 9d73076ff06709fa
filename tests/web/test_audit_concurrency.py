"""The audit chain stays one chain while many writers append at once (P55).

Each row's hash covers the previous row's hash, so two writers that read the
same chain head both link to it: the log forks, and `flask audit verify` (and
the staff dashboard) then report tampering that never happened. These tests
make writers race for real, as threads of one process and as the worker
processes of the server `make run` starts, on SQLite and on PostgreSQL.
"""
from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import sqlalchemy as sa

from app.extensions import db
from app.models import AuditEvent
from app.services.audit import verify_chain
from tests.served import Served
from tests.web.real_http import Browser

pytestmark = pytest.mark.promise("P55")

ROOT = Path(__file__).resolve().parents[2]
STAFF = "staff@example.com"


def chain_state(app) -> tuple[int, int, bool, str]:
    """(rows, distinct previous hashes, verified, reason): a fork shows as two
    rows sharing a previous hash, and as a broken chain."""
    with app.app_context():
        rows = db.session.execute(sa.select(AuditEvent.prev_hash)).scalars().all()
        report = verify_chain()
        return len(rows), len(set(rows)), report.ok, report.reason


def assert_one_chain(app, at_least: int) -> None:
    rows, distinct, ok, reason = chain_state(app)
    assert rows >= at_least
    assert distinct == rows, f"{rows - distinct} rows link to a previous row another row already links to"
    assert ok, reason


def test_threads_appending_at_once_keep_one_chain(app, users, login, client):
    """Eight browsers of one staff member open the staff dashboard at once,
    each view appending "staff:dashboard:viewed"; the dashboard they all see
    afterwards says the chain is intact."""
    users.create(STAFF, staff=True)
    login(STAFF)
    cookie = client.get_cookie("session").value

    def browse(_):
        c = app.test_client()
        c.set_cookie("session", cookie)
        for _ in range(15):
            assert c.get("/staff/").status_code == 200

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(browse, range(8)))
    assert_one_chain(app, 8 * 15)
    assert "intact" in client.get("/staff/").get_data(as_text=True)


@pytest.fixture
def served(app, database_url, tmp_path):
    """The app as `make run` serves it, with two worker processes, on the suite's database."""
    server = Served(database_url, tmp_path / "served", workers=2, RATELIMIT_AUTH="1000 per minute").start()
    server.wait_ready(workers=2)
    yield server
    server.stop()


def test_two_server_processes_and_cli_processes_keep_one_chain(app, users, served):
    """Two granian workers serve 200 dashboard views from 16 connections at
    once while two `flask users grant-staff` processes append from the side:
    every row links to a different predecessor and the chain verifies, the
    way `flask audit verify` checks it."""
    users.create(STAFF, staff=True)
    users.create("bob@example.com")
    browser = Browser(served.url)
    browser.login(STAFF, users.password)
    env = {**served.env, "FLASK_APP": "wsgi"}
    flask = str(Path(sys.executable).parent / "flask")

    def cli(_):
        for _ in range(5):
            subprocess.run([flask, "users", "grant-staff", "bob@example.com"], cwd=ROOT, env=env, check=True,
                           capture_output=True)

    def view(_):
        assert browser.get("/staff/").status == 200

    with ThreadPoolExecutor(18) as pool:
        side = [pool.submit(cli, i) for i in range(2)]
        list(pool.map(view, range(200)))
        for f in side:
            f.result()
    assert_one_chain(app, 200 + 10)
    verify = subprocess.run([flask, "audit", "verify"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr
