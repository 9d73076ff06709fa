"""The relay as a person meets it: make a key in the browser, call the relay
with the official SDK, see the request in the usage table, revoke the key,
and watch the SDK refuse."""
from __future__ import annotations

import os
import time

import openai
import pytest
import sqlalchemy as sa
from playwright.sync_api import Page, expect

from app.extensions import db
from app.models import UsageRecord
from tests.e2e.flows import providers_file, sign_up_verified
from tests.e2e.test_keys_page import create_key
from tests.fakes.provider import FakeProvider

UPSTREAM_KEY = "sk-e2e-upstream"


@pytest.fixture(scope="module")
def fake():
    server = FakeProvider(api_key=UPSTREAM_KEY).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def live_server_settings(fake, tmp_path_factory):
    path = providers_file(tmp_path_factory, fake, "gpt-e2e", "E2E_RELAY_UPSTREAM_KEY")
    os.environ["E2E_RELAY_UPSTREAM_KEY"] = UPSTREAM_KEY
    yield {"PROVIDERS_FILE": path}
    os.environ.pop("E2E_RELAY_UPSTREAM_KEY", None)


def wait_for_row(app, request_id: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        app.extensions["meter"].flush(timeout)
        with app.app_context():
            if db.session.scalar(sa.select(UsageRecord.id).where(UsageRecord.request_id == request_id)):
                return
        time.sleep(0.05)
    raise AssertionError("the usage row was not written")


@pytest.mark.promise("P10", "P20", "P22")
def test_key_sdk_usage_revoke(page: Page, live_server, smtp, fake):
    sign_up_verified(page, live_server, smtp, name="relay")
    nav = page.get_by_role("navigation", name="Main")
    nav.get_by_role("link", name="Keys").click()
    key = create_key(page, "notebook")

    client = openai.OpenAI(base_url=live_server("/v1"), api_key=key, max_retries=0)
    reply = client.chat.completions.with_raw_response.create(
        model="gpt-e2e", messages=[{"role": "user", "content": "ping from the browser test"}])
    request_id = reply.headers["x-request-id"]
    assert reply.parse().choices[0].message.content == "echo: ping from the browser test"

    # The row is queued just after the last byte (so possibly after the SDK has
    # returned) and written by the background writer; wait for it, then look.
    wait_for_row(live_server.app, request_id)
    nav.get_by_role("link", name="Usage").click()
    table = page.locator("#usage-table")
    expect(table).to_contain_text("gpt-e2e")
    expect(table).to_contain_text(request_id[:12])
    expect(table).to_contain_text("notebook")
    expect(table.get_by_text("provider", exact=True).first).to_be_visible()

    # Revoke through the confirmation page; the very next SDK call is refused.
    nav.get_by_role("link", name="Keys").click()
    page.get_by_role("link", name="Revoke notebook").click()
    page.get_by_role("button", name="Revoke key").click()
    expect(page.locator("tr", has_text="notebook")).to_contain_text("revoked")
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="gpt-e2e", messages=[{"role": "user", "content": "again"}])
