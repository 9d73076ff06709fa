"""Data export in a real browser (P51): a person with usage rows requests an
export, watches the htmx progress finish (the live server builds it in its
background thread), downloads the ZIP once, and the test checks usage.json
against the database."""
from __future__ import annotations

import json
import zipfile
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
import sqlalchemy as sa
from playwright.sync_api import Page, expect

from app.extensions import db
from app.models import DataExport, UsageRecord, User
from tests.e2e.flows import sign_up_and_log_in

pytestmark = pytest.mark.e2e

T0 = datetime(2026, 2, 1, 9, 30, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def live_server_settings():
    return {"EXPORT_WORKER": "thread"}


@pytest.fixture(scope="module", autouse=True)
def _stop_export_worker(live_server):
    """The builder thread must not outlive this module's server: later tests
    share the database and build their own exports."""
    yield
    worker = live_server.app.extensions.get("export_worker")
    if worker is not None:
        worker.stop()


def add_usage(app, email: str) -> int:
    with app.app_context():
        uid = db.session.scalar(sa.select(User.id).where(User.email_key == email.lower()))
        for n, (model, status) in enumerate((("gpt-4o-mini", 200), ("claude-sonnet-4-5", 429))):
            db.session.add(UsageRecord(
                request_id=f"req_e2e_{uid}_{n}", user_id=uid, api_key_id=None, project="e2e",
                tags=json.dumps(["journey"]), started_at=T0 + timedelta(minutes=n),
                ended_at=T0 + timedelta(minutes=n, seconds=2), model=model, provider="fake",
                input_tokens=100 + n, output_tokens=50 + n, cache_read_tokens=0, cache_write_tokens=0,
                cost_usd=Decimal("0.00123400"), ttft_ms=150, latency_ms=2000, status_code=status,
                error_class=None if status == 200 else "rate_limited", routing_trace="[]",
                usage_source="provider"))
        db.session.commit()
        return uid


@pytest.mark.promise("P51")
def test_request_wait_download_and_check(page: Page, live_server, tmp_path):
    email = sign_up_and_log_in(page, live_server, "export")
    uid = add_usage(live_server.app, email)

    page.goto(live_server("/privacy-center/export/"))
    expect(page.get_by_role("heading", name="Export your data")).to_be_visible()
    expect(page.get_by_text("You have not requested an export yet.")).to_be_visible()
    page.get_by_role("button", name="Request export").click()
    expect(page.get_by_text("We are preparing your export")).to_be_visible()

    # The list polls itself (htmx, every 2 s) until the Download link appears.
    download = page.get_by_role("link", name="Download")
    expect(download).to_be_visible(timeout=20_000)
    expect(page.locator("progress")).to_have_count(0)
    expect(page.get_by_role("button", name="Request export")).to_be_enabled()

    with page.expect_download() as info:
        download.click()
    path = tmp_path / "export.zip"
    info.value.save_as(path)
    assert info.value.suggested_filename.endswith(".zip")

    with zipfile.ZipFile(path) as zf:
        assert {"README.txt", "usage.json", "usage.csv", "profile.json"} <= set(zf.namelist())
        usage = json.loads(zf.read("usage.json"))
        profile = json.loads(zf.read("profile.json"))
    assert profile[0]["email"] == email
    with live_server.app.app_context():
        rows = db.session.scalars(sa.select(UsageRecord).where(UsageRecord.user_id == uid)
                                  .order_by(UsageRecord.started_at)).all()
        assert [r["request_id"] for r in usage] == [r.request_id for r in rows]
        for got, row in zip(usage, rows, strict=True):
            assert (got["model"], got["status_code"], got["input_tokens"], got["output_tokens"]) == \
                (row.model, row.status_code, row.input_tokens, row.output_tokens)
            assert Decimal(got["cost_usd"]) == row.cost_usd
            assert datetime.fromisoformat(got["started_at"]) == row.started_at
            assert got["tags"] == ["journey"] and got["error_class"] == row.error_class
        exp = db.session.scalar(sa.select(DataExport).where(DataExport.user_id == uid))
        assert exp.status == "downloaded"

    # The link worked once.
    page.reload()
    expect(page.get_by_text("Downloaded", exact=False).first).to_be_visible()
    expect(page.get_by_role("link", name="Download")).to_have_count(0)
