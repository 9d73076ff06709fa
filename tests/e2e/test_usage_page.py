"""The usage page in a real browser (P22, P30): the first-run help, then a
history of requests filtered by model, paged by keyset (Newer / Older), a
routing trace opened and a CSV download; once with htmx swapping the summary
and table in place, once with JavaScript off; and at phone width."""
from __future__ import annotations

import json
import re
import secrets
from datetime import timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa
from playwright.sync_api import Browser, Page, expect

from app.extensions import db
from app.models import ApiKey, UsageRecord, User
from app.models.types import utcnow
from app.services import rollups
from tests.e2e.flows import sign_up_and_log_in

pytestmark = pytest.mark.e2e


def settled(page: Page) -> None:
    """Wait until htmx has finished its request and swap (the table is dimmed meanwhile)."""
    expect(page.locator("#usage-table")).not_to_have_class(re.compile(r"htmx-(request|swapping|settling)"))


def seed(app, email: str) -> None:
    """A realistic history, written as the relay's usage writer would: 60 calls
    to gpt-4o-mini (one failed over to a second provider), 15 to Claude."""
    now = utcnow()
    with app.app_context():
        uid = db.session.scalar(sa.select(User.id).where(User.email == email))
        keys = [ApiKey(user_id=uid, name=name, prefix="rk_Q8d2", last4=last4, lookup_hash=f"e2e-{email}-{last4}",
                       created_at=now) for name, last4 in (("checkout-service", "9f3c"), ("notebook", "71ab"))]
        db.session.add_all(keys)
        db.session.flush()
        rows = []
        for i in range(75):
            claude = i % 5 == 2
            model = "claude-sonnet-4-5" if claude else "gpt-4o-mini"
            provider = "anthropic" if claude else "openai"
            began = now - timedelta(minutes=7 * i + 1)
            trace = [{"provider": provider, "model": model, "outcome": "ok", "ms": 640 + i}]
            status, error_class, source = 200, None, "provider"
            if i == 68:  # page 2 of the gpt-4o-mini filter: a failover
                trace.insert(0, {"provider": "azure-eu", "model": "gpt-4o-mini", "outcome": "error",
                                 "error_class": "http_503", "ms": 41})
            if i == 3:
                status, error_class, source, trace = 429, "rate_limit_error", "none", []
            if i == 8:
                source = "estimated"
            rows.append({
                "request_id": f"req_{i:02d}{secrets.token_hex(11)}", "user_id": uid, "api_key_id": keys[i % 2].id,
                "project": "checkout" if i % 3 == 0 else None,
                "tags": json.dumps(["beta", "eu"]) if i % 4 == 0 else None,
                "started_at": began, "ended_at": began + timedelta(milliseconds=900 + i),
                "model": model, "provider": provider,
                "input_tokens": 0 if status != 200 else 1200 + 37 * i, "output_tokens": 0 if status != 200 else 180 + i,
                "cache_read_tokens": 1024 if claude else 0, "cache_write_tokens": 256 if claude and i < 10 else 0,
                "cost_usd": Decimal(0) if status != 200 else Decimal("0.000318") + Decimal(i) / 100000,
                "ttft_ms": None if status != 200 else 210 + i, "latency_ms": 900 + i, "status_code": status,
                "error_class": error_class, "routing_trace": json.dumps(trace), "usage_source": source})
        db.session.commit()
        # As the usage writer does: the rows and their rollup cells in one transaction.
        with db.engine.begin() as conn:
            conn.execute(sa.insert(UsageRecord.__table__), rows)
            rollups.apply(conn, rows)


@pytest.mark.promise("P22", "P30")
def test_usage_history_filter_page_and_trace(page: Page, live_server):
    email = sign_up_and_log_in(page, live_server, "usage")

    # First run: how to send a request, with this relay's address filled in.
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Usage").click()
    expect(page.get_by_role("heading", name="Usage", exact=True)).to_be_visible()
    expect(page.get_by_role("heading", name="No requests yet")).to_be_visible()
    expect(page.locator("#base-url")).to_have_text(live_server.url + "/v1")
    expect(page.get_by_text(f'base_url="{live_server.url}/v1"')).to_be_visible()
    page.set_viewport_size({"width": 1280, "height": 900})
    page.screenshot(path="/tmp/usage-empty.png", full_page=True)

    seed(live_server.app, email)
    page.reload()
    expect(page.locator("#stat-requests .stat-value")).to_have_text("75")
    expect(page.locator("#summary-h")).to_have_text("Last 30 days")
    expect(page.locator(".results-count")).to_contain_text("Showing 50 requests, newest first")
    expect(page.locator(".results-count")).to_contain_text("75 requests in range")
    first = page.locator("tbody.rec").first
    expect(first).to_contain_text("gpt-4o-mini")
    expect(first).to_contain_text("checkout-service")
    expect(first.locator(".source")).to_have_text("provider")
    expect(page.locator("tbody.rec").nth(8).locator(".source")).to_have_text("estimated")
    # Input is the total read; a Claude row shows its cached part beneath.
    expect(page.locator("tbody.rec").nth(2).locator(".cached")).to_have_text("1,280 cached")
    page.screenshot(path="/tmp/usage-rows.png", full_page=False)
    page.locator(".pager").scroll_into_view_if_needed()
    page.screenshot(path="/tmp/usage-pager.png", full_page=False)

    # Filter by model: htmx swaps the cards and the table in place and the address follows.
    page.evaluate("window.__noReload = true")
    page.get_by_label("Model").select_option("gpt-4o-mini")
    settled(page)
    expect(page.locator(".results-count")).to_contain_text("60 requests in range")
    expect(page.locator("#stat-requests .stat-value")).to_have_text("60")
    expect(page.locator("#summary-h")).to_contain_text("matching your filters")
    expect(page).to_have_url(re.compile(r"/usage/\?model=gpt-4o-mini$"))
    expect(page.locator("tbody.rec", has_text="claude-sonnet-4-5")).to_have_count(0)

    # Older keeps the filter, by cursor.
    page.get_by_role("link", name="Older →").click()
    settled(page)
    expect(page.locator("tbody.rec")).to_have_count(10)
    expect(page).to_have_url(re.compile(r"/usage/\?model=gpt-4o-mini&after=\d{8}T\d{6}\.\d{6}Z_\d+$"))
    expect(page.get_by_role("link", name="← Newer")).to_be_visible()
    expect(page.locator(".pager").get_by_text("Older →")).to_have_attribute("aria-disabled", "true")
    assert page.evaluate("window.__noReload") is True

    # The download is every filtered row, not only this page.
    with page.expect_download() as info:
        page.get_by_role("link", name="Download CSV").click()
    download = info.value
    assert re.fullmatch(r"usage-\d{8}\.csv", download.suggested_filename)
    with open(download.path(), encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    assert lines[0].startswith("request_id,started_at") and len(lines) == 61
    assert all(",gpt-4o-mini," in line for line in lines[1:])

    # Open the routing trace of the request that failed over.
    rec = page.locator("tbody.rec", has_text="req_68")
    trace = rec.locator("details.trace")
    expect(trace.locator(".attempts")).to_be_hidden()
    trace.locator("summary").click()
    attempts = trace.locator(".attempts tbody tr")
    expect(attempts).to_have_count(2)
    expect(attempts.nth(0)).to_contain_text("azure-eu")
    expect(attempts.nth(0)).to_contain_text("http_503")
    expect(attempts.nth(0)).to_contain_text("41 ms")
    expect(attempts.nth(1)).to_contain_text("openai")
    expect(attempts.nth(1)).to_contain_text("ok")
    rec.scroll_into_view_if_needed()
    page.screenshot(path="/tmp/usage-trace.png", full_page=False)

    # Back goes to the first page of the filtered list.
    page.go_back()
    expect(page.locator("tbody.rec")).to_have_count(50)
    expect(page.get_by_label("Model")).to_have_value("gpt-4o-mini")
    expect(page.locator(".pager").get_by_text("← Newer")).to_have_attribute("aria-disabled", "true")


@pytest.mark.promise("P30")
def test_usage_filters_and_pages_work_without_javascript(browser: Browser, live_server):
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    page.set_default_timeout(10_000)
    try:
        email = sign_up_and_log_in(page, live_server, "nojs")
        seed(live_server.app, email)
        page.goto(live_server("/usage/"))
        page.get_by_label("Model").select_option("gpt-4o-mini")
        page.get_by_label("Status").select_option("ok")
        page.get_by_role("button", name="Apply").click()
        expect(page.locator(".results-count")).to_contain_text("59 requests in range")
        page.get_by_label("Project").fill("checkout")
        page.get_by_role("button", name="Apply").click()
        expect(page.locator(".results-count")).to_contain_text("19 requests in range")
        page.get_by_label("Project").fill("")
        page.get_by_role("button", name="Apply").click()
        page.get_by_role("link", name="Older →").click()
        expect(page.locator("tbody.rec")).to_have_count(9)
        assert "model=gpt-4o-mini" in page.url and "status=ok" in page.url and "after=" in page.url
        trace = page.locator("tbody.rec", has_text="req_68").locator("details.trace")
        trace.locator("summary").click()
        expect(trace.locator(".attempts tbody tr")).to_have_count(2)
        page.get_by_role("link", name="Reset").click()
        expect(page.locator(".results-count")).to_contain_text("75 requests in range")
    finally:
        context.close()


@pytest.mark.promise("P30")
def test_usage_page_at_phone_width_does_not_scroll_sideways(page: Page, live_server):
    email = sign_up_and_log_in(page, live_server, "phone")
    seed(live_server.app, email)
    page.set_viewport_size({"width": 390, "height": 844})
    for path in ("/usage/", "/usage/?model=gpt-4o-mini&project=checkout&tag=beta"):
        page.goto(live_server(path))
        expect(page.locator("#stat-requests")).to_be_visible()
        wide = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert wide <= 0, (path, wide)
    page.screenshot(path="/tmp/usage-390.png", full_page=True)
