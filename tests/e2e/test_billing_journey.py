"""Billing as people meet it (P26, P31, P40, P41, P42), in the browser against
the fake Stripe (hosted pay page, signed webhooks) and the fake provider:

a. a person tops up $25 on Stripe's page and, once the webhook lands, sees the
   balance, the ledger row and the card, and gets the receipt by mail;
b. they set a $0.05 monthly limit on a key, call the relay with the `openai`
   SDK until it answers 402 naming that limit, and get the 50/80/100 % alerts
   by mail and on the page;
c. a team's owner tops up for the team; the admin sees the team's billing
   history, the member only the notice.

`gpt-billing` costs nothing for input and $2,000 per million output tokens,
so a request capped at 5 output tokens holds exactly what it then costs
($0.01): five fill the $0.05 limit to 100 % and the sixth is refused.
"""
from __future__ import annotations

import os
import re
import time

import openai
import pytest
from playwright.sync_api import Browser, Page, expect

from tests.e2e.flows import MAIL_TIMEOUT, sign_up_verified
from tests.e2e.test_keys_page import create_key
from tests.e2e.test_mobile_layout import PHONE, assert_fits
from tests.e2e.test_team_journey import invitation_link, switch_to, window
from tests.fakes.provider import FakeProvider
from tests.fakes.stripe import FakeStripe

UPSTREAM_KEY = "sk-e2e-billing-upstream"
MODEL = "gpt-billing"
MEMBER_NOTICE = "Only the team's owners and admins see its billing."
SHOTS = os.environ.get("BILLING_SCREENSHOTS")  # a folder: screenshots of the page for a look at the layout


@pytest.fixture(scope="module")
def fake():
    server = FakeProvider(api_key=UPSTREAM_KEY).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stripe():
    server = FakeStripe(retry_delays=(0.2, 0.5, 1.0)).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def live_server_settings(fake, stripe, tmp_path_factory):
    path = tmp_path_factory.mktemp("providers") / "providers.toml"
    path.write_text(f"""
[providers.upstream]
kind = "openai"
base_url = "{fake.base_url}/v1"
api_key_env = "E2E_BILLING_UPSTREAM_KEY"

[[models]]
name = "{MODEL}"
targets = [ {{ provider = "upstream", model = "gpt-upstream" }} ]
price = {{ input = 0.0, output = 2000.0 }}
""")
    os.environ["E2E_BILLING_UPSTREAM_KEY"] = UPSTREAM_KEY
    yield {"PROVIDERS_FILE": str(path), "STRIPE_SECRET_KEY": stripe.api_key,
           "STRIPE_WEBHOOK_SECRET": stripe.webhook_secret, "STRIPE_API_BASE": stripe.url, "PREPAID": "true"}
    os.environ.pop("E2E_BILLING_UPSTREAM_KEY", None)


@pytest.fixture(scope="module", autouse=True)
def _webhooks_to_the_portal(stripe, live_server):
    stripe.webhook_url = live_server("/billing/webhook")


def shot(page: Page, name: str) -> None:
    """The whole page, in parts of at most 1,200 px (an image viewer shrinks a tall one to a blur)."""
    if not SHOTS:
        return
    width, height = page.evaluate("[document.documentElement.clientWidth, document.documentElement.scrollHeight]")
    for n, top in enumerate(range(0, height, 1200)):
        page.screenshot(path=os.path.join(SHOTS, f"billing-{name}-{n}.png"), full_page=True,
                        clip={"x": 0, "y": top, "width": width, "height": min(1200, height - top)})


def pay(page: Page, amount: str) -> None:
    """On the Billing page: choose an amount, pay on the fake Stripe page with
    the test card, and come back to Billing."""
    page.get_by_label(amount, exact=True).check()
    page.get_by_role("button", name="Continue to payment").click()
    expect(page.get_by_role("heading", name=re.compile(r"^Pay \$"))).to_be_visible()
    page.get_by_label("Card number").fill("4242 4242 4242 4242")
    page.get_by_role("button", name="Pay").click()
    expect(page.get_by_text("Thank you. Your balance goes up as soon as Stripe confirms the payment")).to_be_visible()


def open_billing(page: Page) -> None:
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Billing").click()
    expect(page.get_by_role("heading", level=1, name=re.compile(r"^Billing"))).to_be_visible()


@pytest.mark.promise("P26", "P40", "P41", "P42")
def test_top_up_then_a_key_budget_stops_the_sdk_with_402_and_alerts(page: Page, live_server, smtp, stripe):
    email = sign_up_verified(page, live_server, smtp, name="payer")
    open_billing(page)
    expect(page.locator("#balance-amount")).to_have_text("$0.00")
    expect(page.locator("#card-on-file")).to_have_text("No card yet")
    expect(page.get_by_text("Requests are paid from this balance and refused when it runs out.")).to_be_visible()
    expect(page.get_by_text("No top-ups or charges yet")).to_be_visible()
    shot(page, "empty-desktop")

    # a. $25 on Stripe's page; back here, the page waits for the webhook by itself.
    pay(page, "$25")
    expect(page.locator("#balance-amount")).to_have_text("$25.00", timeout=15_000)
    expect(page.locator("#card-on-file")).to_have_text("Visa ending in 4242")
    row = page.locator("#ledger tr[data-kind=topup]")
    expect(row).to_contain_text("Top-up")
    expect(row).to_contain_text("+$25.00")
    receipt = smtp.mailbox.wait_for(email, "Receipt: $25.00", timeout=MAIL_TIMEOUT)
    assert "4242 4242" not in receipt.as_string()
    row.get_by_role("link", name="Receipt").click()
    expect(page.get_by_role("heading", name="Receipt")).to_be_visible()
    expect(page.locator("#receipt-amount")).to_contain_text("$25.00")
    page.go_back()

    # b. A key with a $0.05 monthly limit, set on its line of the Billing page.
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Keys").click()
    key = create_key(page, "billing-bot")
    open_billing(page)
    line = page.locator("#limits tr", has_text="Key “billing-bot”")
    line.get_by_label("Monthly limit ($)").fill("0.05")
    line.get_by_role("button", name="Save").click()
    expect(page.get_by_text("Budget saved")).to_be_visible()
    expect(page.locator("#limits tr", has_text="Key “billing-bot”").get_by_label("Monthly limit ($)")
           ).to_have_value("0.05")

    sdk = openai.OpenAI(base_url=live_server("/v1"), api_key=key, max_retries=0)
    meter = live_server.app.extensions["meter"]
    answered = 0
    with pytest.raises(openai.APIStatusError) as refused:
        for _ in range(10):
            sdk.chat.completions.create(model=MODEL, max_tokens=5,
                                        messages=[{"role": "user", "content": "one two three four five six"}])
            answered += 1
            assert meter.flush(10)  # written and settled: the next request sees the spend
    assert answered == 5
    assert refused.value.status_code == 402
    message = refused.value.response.json()["error"]["message"]
    assert "monthly budget of this API key" in message and "of $0.05" in message, message
    for subject in ("50% of a budget used: the API key “billing-bot”", "80% of a budget used: the API key",
                    "Budget reached: the API key “billing-bot”"):
        smtp.mailbox.wait_for(email, subject, timeout=MAIL_TIMEOUT)

    page.reload()
    alerts = page.locator("#alerts")
    for pct in (50, 80, 100):
        expect(alerts).to_contain_text(f"{pct} % of the monthly budget of the API key “billing-bot”")
    line = page.locator("#limits tr", has_text="Key “billing-bot”")
    expect(line).to_contain_text("100 % of the monthly limit")
    expect(line.get_by_role("progressbar")).to_have_attribute("value", "100")
    expect(page.locator("#balance-amount")).to_have_text("$24.95")
    expect(page.locator("#ledger tr[data-kind=charge]")).to_have_count(5)
    expect(page.locator("#ledger tr[data-kind=charge]").first).to_contain_text("-$0.01")
    shot(page, "full-desktop")

    # The page at a phone's width, with every section filled: nothing wider than the screen.
    page.set_viewport_size(PHONE)
    page.reload()
    assert_fits(page, "/billing/")
    shot(page, "full-phone")


@pytest.mark.promise("P31", "P40", "P41")
def test_a_team_tops_up_and_only_its_owner_and_admin_see_its_billing(browser: Browser, live_server, smtp, stripe):
    started = time.monotonic()
    owner, admin, member = window(browser), window(browser), window(browser)
    sign_up_verified(owner, live_server, smtp, name="t-owner")
    admin_email = sign_up_verified(admin, live_server, smtp, name="t-admin")
    member_email = sign_up_verified(member, live_server, smtp, name="t-member")

    owner.get_by_role("navigation", name="Main").get_by_role("link", name="Teams").click()
    owner.get_by_label("Team name").fill("Paying Lab")
    owner.get_by_role("button", name="Create team").click()
    expect(owner.get_by_text("“Paying Lab” is ready.")).to_be_visible()
    for email, role in ((admin_email, "admin"), (member_email, "member")):
        owner.get_by_label("Email address").fill(email)
        owner.get_by_label("Role", exact=True).select_option(role)
        owner.get_by_role("button", name="Send invitation").click()
        expect(owner.get_by_text(f"Invitation sent to {email}.")).to_be_visible()
    for person, email in ((admin, admin_email), (member, member_email)):
        person.goto(invitation_link(smtp, email))
        person.get_by_role("button", name="Join Paying Lab").click()
        expect(person.get_by_text(re.compile(r"You joined Paying Lab"))).to_be_visible()

    switch_to(owner, "Paying Lab", "owner")
    open_billing(owner)
    expect(owner.get_by_role("heading", name=re.compile("Billing · Paying Lab"))).to_be_visible()
    pay(owner, "$10")
    expect(owner.locator("#balance-amount")).to_have_text("$10.00", timeout=15_000)
    smtp.mailbox.wait_for(admin_email, "Receipt: $10.00", timeout=MAIL_TIMEOUT)  # owners and admins get it

    switch_to(admin, "Paying Lab", "admin")
    open_billing(admin)
    expect(admin.locator("#balance-amount")).to_have_text("$10.00")
    history = admin.locator("#ledger")
    expect(history.get_by_role("heading", name="Billing history")).to_be_visible()
    expect(history.locator("tr[data-kind=topup]")).to_contain_text("+$10.00")
    expect(admin.locator("#limits")).to_contain_text("The whole team")
    shot(admin, "team-admin")

    switch_to(member, "Paying Lab", "member")
    open_billing(member)
    expect(member.get_by_text(MEMBER_NOTICE)).to_be_visible()
    main = member.locator("main")
    expect(main).not_to_contain_text("$10.00")
    expect(main).not_to_contain_text("Billing history")
    expect(member.locator("#balance-amount")).to_have_count(0)
    expect(member.locator("#limits")).not_to_contain_text("The whole team")
    assert member.request.get(live_server("/billing/ledger.csv")).status == 403
    shot(member, "team-member")
    assert not smtp.mailbox.to(member_email) or all("Receipt" not in m["Subject"]
                                                    for m in smtp.mailbox.to(member_email))
    assert time.monotonic() - started < 45
