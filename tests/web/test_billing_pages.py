"""The Billing page through the test client on the real database (P26, P31,
P40, P41, P42): the balance card with and without Stripe, top-ups sent to the
fake Stripe's hosted page, the amount rules, the low-balance alert, spending
limits (save, remove after a confirmation, refused input, refused roles), the
alerts, the ledger's pages, filters, CSV and receipts, and what each role of a
team sees of its billing. Stripe is tests/fakes/stripe.py on loopback."""
from __future__ import annotations

import csv
import html
import io
import logging
import re
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa

from app.extensions import db
from app.models import Budget, BudgetAlert, Team, TeamMember, User, Wallet
from app.models.billing import to_units
from app.models.types import utcnow
from app.services import keys as key_service
from app.services import wallets
from tests.conftest import Forms
from tests.fakes.stripe import FakeStripe

MEMBER_NOTICE = "Only the team's owners and admins see its billing."
PASSWORD = "correct horse battery"


def text(resp) -> str:
    return html.unescape(resp.get_data(as_text=True))


class Person:
    """One browser: a test client signed in as one account."""

    def __init__(self, app, users, email, name=None):
        self.app, self.email = app, email
        self.client = app.test_client()
        self.forms = Forms(self.client)
        self.id = users.create(email=email, name=name)
        assert self.forms.post("/login", {"email": email, "password": users.password}).status_code == 302

    def get(self, url, **kw):
        return self.client.get(url, **kw)

    def post(self, url, data=None, page="/billing/", **kw):
        return self.forms.post(url, data or {}, page=page, **kw)

    def switch(self, team_id):
        resp = self.forms.post("/teams/switch", {"team": str(team_id or ""), "next": "/billing/"}, page="/teams/")
        assert resp.status_code == 302

    def save_budget(self, scope, monthly="", total="", **ids):
        data = {"scope": scope, "monthly": monthly, "total": total, **{k: str(v) for k, v in ids.items()}}
        return self.post("/billing/budgets", data)


@pytest.fixture
def people(app, users):
    return lambda email, **kw: Person(app, users, email, **kw)


@pytest.fixture(scope="module")
def stripe():
    fake = FakeStripe().start()
    yield fake
    fake.stop()


@pytest.fixture
def paid_app(make_app, stripe):
    """The app with Stripe configured and pointed at the fake."""
    stripe.reset()
    return make_app(STRIPE_SECRET_KEY=stripe.api_key, STRIPE_WEBHOOK_SECRET=stripe.webhook_secret,
                    STRIPE_API_BASE=stripe.url)


@pytest.fixture
def paid_person(paid_app, users):
    return Person(paid_app, users, "ada@example.com", name="Ada")


def wallet_of(app, **owner) -> Wallet | None:
    with app.app_context():
        w = wallets.of(**owner)
        if w is not None:
            db.session.expunge(w)
        return w


def post_entries(app, owner: dict, entries: list[tuple]) -> list[int]:
    """(kind, units, reference, memo, when) rows into the wallet of `owner`."""
    with app.app_context():
        w = wallets.open_for(**owner)
        db.session.flush()
        ids = [wallets.post(w.id, kind, units, ref, memo, now=when).id for kind, units, ref, memo, when in entries]
        db.session.commit()
        return ids


def make_team(app, roles: dict[int, str], name="Lab Seven") -> int:
    with app.app_context():
        team = Team(name=name, slug=re.sub(r"[^a-z0-9]+", "-", name.lower()), created_at=utcnow(),
                    members_make_keys=True)
        db.session.add(team)
        db.session.flush()
        for uid, role in roles.items():
            db.session.add(TeamMember(team_id=team.id, user_id=uid, role=role, joined_at=utcnow()))
        db.session.commit()
        return team.id


def make_key(app, user_id, name="build bot", team_id=None) -> int:
    with app.app_context():
        key, _ = key_service.create(db.session.get(User, user_id), name, team_id=team_id)
        db.session.commit()
        return key.id


def budget(app, target) -> Budget | None:
    with app.app_context():
        b = db.session.scalar(sa.select(Budget).where(Budget.target == target))
        if b is not None:
            db.session.expunge(b)
        return b


# ---- the page, with and without Stripe ---------------------------------------------------------

@pytest.mark.promise("P40", "P41")
def test_without_stripe_the_page_says_how_an_operator_enables_payments(app, people):
    ada = people("ada@example.com")
    assert ada.get("/billing").status_code == 308  # the mails' link, /billing, reaches the page
    resp = ada.get("/billing/")
    body = text(resp)
    assert resp.status_code == 200
    assert "Payments are not enabled on this deployment." in body
    assert "STRIPE_SECRET_KEY" in body and "STRIPE_WEBHOOK_SECRET" in body
    assert "http://localhost/billing/webhook" in body
    assert 'name="amount"' not in body and "/billing/top-up" not in body
    assert "No card yet" in body and 'id="balance-amount">$0.00<' in body
    assert "This deployment does not stop requests at zero" in body
    assert "No top-ups or charges yet" in body
    assert "Your account (personal keys)" in body  # the limits still work
    assert 'aria-current="page">Billing</a>' in body
    # A top-up posted anyway is refused without a wallet or a charge.
    resp = ada.post("/billing/top-up", {"amount": "25"})
    assert resp.status_code == 302
    assert "Payments are not enabled" in text(ada.get("/billing/"))
    assert wallet_of(app, user_id=ada.id) is None


def test_billing_pages_need_a_login(client):
    for url in ("/billing/", "/billing/done", "/billing/ledger.csv", "/billing/receipts/1"):
        resp = client.get(url)
        assert resp.status_code == 302 and "/login" in resp.headers["Location"], url


@pytest.mark.promise("P40", "P41")
def test_with_stripe_the_page_offers_presets_and_another_amount(paid_app, paid_person, stripe):
    resp = paid_person.get("/billing/")
    body = text(resp)
    # The form's 303 goes to Stripe's page: the page's form-action allows it (browsers check redirects too).
    csp = resp.headers["Content-Security-Policy"]
    assert f"form-action 'self' https://checkout.stripe.com {stripe.url};" in csp
    assert "script-src 'self';" in csp
    assert "Payments are not enabled" not in body
    for amount in ("10", "25", "50", "100"):
        assert f'value="{amount}"' in body
    assert 'value="other"' in body and "Other amount ($)" in body
    assert 'min="5"' in body and 'max="1000"' in body
    assert "Requests are paid from this balance and refused when it runs out." in body  # PREPAID=auto


@pytest.mark.promise("P40", "P41", "P42")
def test_a_top_up_goes_to_stripe_and_lands_in_the_ledger_with_its_receipt(paid_app, paid_person, stripe, mail):
    ada = paid_person
    resp = ada.post("/billing/top-up", {"amount": "25", "other": ""})
    assert resp.status_code == 303
    pay_url = resp.headers["Location"]
    assert pay_url.startswith(stripe.url + "/pay/cs_")
    wallet = wallet_of(paid_app, user_id=ada.id)
    assert wallet is not None and wallet.stripe_customer_id.startswith("cus_")
    assert wallet.payment_method is None and wallet.balance_units == 0
    session = stripe.get(pay_url.rsplit("/", 1)[1])
    assert session["amount_total"] == 2500 and session["customer"] == wallet.stripe_customer_id
    assert session["success_url"] == "http://localhost/billing/done?after=0&session_id={CHECKOUT_SESSION_ID}"
    assert session["cancel_url"] == "http://localhost/billing/"

    # Paid on the hosted page; back on /billing/done before the webhook landed: waiting.
    stripe.pay(session["id"])
    back = session["success_url"].replace("{CHECKOUT_SESSION_ID}", session["id"])
    resp = ada.get(urlsplit(back).path + "?" + urlsplit(back).query)
    assert resp.status_code == 302 and resp.headers["Location"] == "/billing/?wait=0"
    body = text(ada.get("/billing/?wait=0"))
    assert "Thank you. Your balance goes up as soon as Stripe confirms the payment, usually within seconds." in body
    assert "Waiting for Stripe to confirm your payment" in body and 'hx-get="/billing/?wait=0&amp;tries=1"' in \
        ada.get("/billing/?wait=0").get_data(as_text=True)
    fragment = ada.get("/billing/?wait=0&tries=3", headers={"HX-Request": "true"})
    assert fragment.status_code == 200 and "<html" not in text(fragment)
    assert "tries=4" in text(fragment)
    gave_up = text(ada.get("/billing/?wait=0&tries=30", headers={"HX-Request": "true"}))
    assert "hx-get" not in gave_up and "Refresh" in gave_up

    # The webhook (delivered here by hand: the test client has no port) credits the wallet.
    event = next(e for e in stripe.events if e["type"] == "checkout.session.completed")
    payload = __import__("json").dumps(event).encode()
    hook = ada.client.post("/billing/webhook", data=payload, content_type="application/json",
                           headers={"Stripe-Signature": stripe.signature(payload)})
    assert hook.status_code == 200, hook.get_data(as_text=True)
    arrived = ada.get("/billing/?wait=0&tries=4", headers={"HX-Request": "true"})
    assert arrived.headers["HX-Redirect"] == "/billing/"
    body = text(ada.get("/billing/"))
    assert "Payment received" in body
    assert 'id="balance-amount">$25.00<' in body
    assert "Visa ending in 4242" in body
    assert "Top-up" in body and "+$25.00" in body and "Card payment · Visa ending in 4242" in body
    assert "Waiting for Stripe" not in body
    entry_id = int(re.search(r"/billing/receipts/(\d+)", body).group(1))
    receipt = text(ada.get(f"/billing/receipts/{entry_id}"))
    assert "Receipt" in receipt and "$25.00" in receipt and "ada@example.com" in receipt
    assert f"R-{entry_id}" in receipt
    assert mail.wait_for("ada@example.com", "Receipt: $25.00")


@pytest.mark.promise("P40")
@pytest.mark.parametrize(("amount", "other", "message"), [
    ("other", "4", "Choose an amount from $5 to $1,000, in whole dollars."),
    ("other", "1001", "Choose an amount from $5 to $1,000, in whole dollars."),
    ("other", "12.5", "Enter the amount as a whole number of dollars, such as 20."),
    ("other", "ten", "Enter the amount as a whole number of dollars, such as 20."),
    ("other", "١٢", "Enter the amount as a whole number of dollars, such as 20."),
    ("other", "", "Enter the amount to add."),
    ("", "", "Choose an amount to add."),
    ("7", "", "Choose one of the amounts shown"),
    ("25", "40", "You chose $25 and also typed another amount"),
])
def test_a_top_up_amount_out_of_bounds_or_not_a_number_gets_a_message_and_charges_nothing(
        paid_app, paid_person, stripe, amount, other, message):
    resp = paid_person.post("/billing/top-up", {"amount": amount, "other": other})
    body = text(resp)
    assert resp.status_code == 400
    assert message in body
    if other:
        assert f'value="{other}"' in body  # what was typed is still there
    assert stripe.requests == [] and wallet_of(paid_app, user_id=paid_person.id) is None


@pytest.mark.promise("P40")
@pytest.mark.parametrize(("amount", "other", "cents"), [("other", "20", 2000), ("", "1000", 100000),
                                                        ("100", "100", 10000), ("10", "", 1000)])
def test_an_accepted_amount_is_the_checkout_amount(paid_app, paid_person, stripe, amount, other, cents):
    resp = paid_person.post("/billing/top-up", {"amount": amount, "other": other})
    assert resp.status_code == 303
    assert stripe.get(resp.headers["Location"].rsplit("/", 1)[1])["amount_total"] == cents


def test_stripe_refusing_the_checkout_is_a_message_on_the_form(make_app, users, stripe):
    app = make_app(STRIPE_SECRET_KEY="sk_test_not_the_fakes_key", STRIPE_API_BASE=stripe.url)
    ada = Person(app, users, "ada@example.com")
    resp = ada.post("/billing/top-up", {"amount": "other", "other": "30"})
    body = text(resp)
    assert resp.status_code == 400
    assert "Payments are not reachable right now. Nothing was charged; try again in a minute." in body
    assert 'value="30"' in body


# ---- the low-balance alert ----------------------------------------------------------------------

@pytest.mark.promise("P42")
def test_the_low_balance_threshold_is_set_validated_and_turned_off(paid_app, paid_person):
    ada = paid_person
    assert 'value="5.00"' in text(ada.get("/billing/"))  # a new wallet's default
    resp = ada.post("/billing/low-balance", {"threshold": "2.50"})
    assert resp.status_code == 302
    assert wallet_of(paid_app, user_id=ada.id).low_balance_units == to_units("2.50")
    assert "We will mail you when the balance falls below $2.50." in text(ada.get("/billing/"))
    for bad, message in (("abc", "Enter an amount in dollars, such as 5 or 2.50"), ("-1", "from $0 to"),
                         ("1.234", "in cents"), ("", "or 0 to turn the alert off"), ("1e9", "from $0 to")):
        resp = ada.post("/billing/low-balance", {"threshold": bad})
        assert resp.status_code == 400 and message in text(resp), bad
    assert wallet_of(paid_app, user_id=ada.id).low_balance_units == to_units("2.50")
    assert ada.post("/billing/low-balance", {"threshold": "0"}).status_code == 302
    assert wallet_of(paid_app, user_id=ada.id).low_balance_units == 0
    assert "Low-balance alert turned off." in text(ada.get("/billing/"))


# ---- spending limits ---------------------------------------------------------------------------

@pytest.mark.promise("P26")
def test_an_account_budget_is_saved_shown_and_removed_after_a_confirmation(app, people):
    ada = people("ada@example.com")
    resp = ada.save_budget("account", monthly="25", total="$1,000")
    assert resp.status_code == 302
    body = text(ada.get("/billing/"))
    assert "Budget saved" in body
    assert 'value="25.00"' in body and 'value="1000.00"' in body
    b = budget(app, f"account:{ada.id}")
    assert (b.monthly_units, b.total_units) == (to_units(25), to_units(1000))

    # Both empty: a confirmation first, which changes nothing until it is answered.
    resp = ada.save_budget("account")
    assert resp.status_code == 200
    page = text(resp)
    assert "Remove the limits of Your account (personal keys)?" in page
    assert budget(app, f"account:{ada.id}") is not None
    token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page).group(1)
    hidden = dict(re.findall(r'<input[^>]*name="(scope|key_id|member_id|confirm)"[^>]*value="([^"]*)"', page))
    assert hidden["scope"] == "account" and hidden["confirm"] == "1"
    resp = ada.client.post("/billing/budgets", data={"csrf_token": token, **hidden})
    assert resp.status_code == 302
    assert budget(app, f"account:{ada.id}") is None
    assert "Budget removed" in text(ada.get("/billing/"))
    # Nothing to remove: said so, nothing else.
    resp = ada.save_budget("account")
    assert resp.status_code == 302 and "has no limit to remove" in text(ada.get("/billing/"))


@pytest.mark.promise("P26")
@pytest.mark.parametrize(("monthly", "total", "message"), [
    ("abc", "", "Monthly limit: enter an amount in dollars, such as 25 or 9.50."),
    ("0.001", "", "Monthly limit: enter an amount from $0.01 to $1,000,000, in cents."),
    ("", "-5", "Total limit: enter an amount from $0.01 to $1,000,000, in cents."),
    ("", "2000000", "Total limit: enter an amount from $0.01 to $1,000,000, in cents."),
    ("NaN", "", "Monthly limit: enter an amount from $0.01"),
])
def test_a_bad_limit_gets_its_message_on_its_line_and_keeps_what_was_typed(app, people, monthly, total, message):
    ada = people("ada@example.com")
    key_id = make_key(app, ada.id)
    resp = ada.save_budget("key", monthly=monthly, total=total, key_id=key_id)
    body = text(resp)
    assert resp.status_code == 400
    assert message in body
    row = re.search(rf'<tr id="(budget-\d+)-row" data-target="key:{key_id}">.*?</tr>\s*<tr class="line-error">.*?</tr>',
                    body, re.S)
    assert row and message in row.group(0)
    if monthly:
        assert f'value="{monthly}"' in row.group(0)
    assert budget(app, f"key:{key_id}") is None


@pytest.mark.promise("P26")
def test_a_key_budget_is_set_on_its_line_and_someone_elses_key_is_refused(app, people):
    ada, bob = people("ada@example.com"), people("bob@example.com")
    key_id = make_key(app, ada.id, "build bot")
    body = text(ada.get("/billing/"))
    assert "Key “build bot”" in body
    assert ada.save_budget("key", monthly="0.05", key_id=key_id).status_code == 302
    assert budget(app, f"key:{key_id}").monthly_units == to_units("0.05")
    assert "0 % of the monthly limit" in text(ada.get("/billing/"))
    # Bob cannot set (or remove) a limit on Ada's key, and learns nothing about it.
    for data in ({"monthly": "100"}, {}):
        resp = bob.save_budget("key", key_id=key_id, **data)
        assert resp.status_code == 403
        assert "build bot" not in text(resp)
    assert budget(app, f"key:{key_id}").monthly_units == to_units("0.05")
    # A scope that is not one, or a team's from a personal context.
    assert ada.save_budget("planet", monthly="5").status_code == 400
    assert ada.save_budget("team", monthly="5").status_code == 403


@pytest.mark.promise("P26", "P42")
def test_spend_and_holds_show_on_each_line_with_a_progress_bar(app, people):
    ada = people("ada@example.com")
    key_id = make_key(app, ada.id)
    ada.save_budget("key", monthly="2", total="10", key_id=key_id)
    from app.models import SpendCounter
    from app.services.spend import month_of
    with app.app_context():
        db.session.add_all([SpendCounter(target=f"key:{key_id}", period=month_of(utcnow()), spent_units=to_units(1),
                                         reserved_units=to_units("0.25")),
                            SpendCounter(target=f"key:{key_id}", period="total", spent_units=to_units(4),
                                         reserved_units=0)])
        db.session.commit()
    body = text(ada.get("/billing/"))
    assert '<progress max="100" value="50"' in body and "50 % of the monthly limit" in body
    assert '<progress max="100" value="40"' in body and "40 % of the total limit" in body
    assert "+ $0.25 held by requests in flight" in body and "$4.00 in total" in body


# ---- alerts --------------------------------------------------------------------------------------

@pytest.mark.promise("P42")
def test_the_last_ten_alerts_of_the_context_are_listed(app, people):
    ada, bob = people("ada@example.com"), people("bob@example.com")
    key_id = make_key(app, ada.id, "notebook")
    now = utcnow()
    with app.app_context():
        for i, threshold in enumerate((50, 80, 100)):
            db.session.add(BudgetAlert(target=f"key:{key_id}", period="2026-12", kind="monthly", threshold=threshold,
                                       limit_units=to_units("0.05"), user_id=ada.id, created_at=now + timedelta(
                                           seconds=i)))
        db.session.add(BudgetAlert(target="wallet:1", period="after:0", kind="low_balance", threshold=0,
                                   limit_units=to_units(5), user_id=ada.id, created_at=now + timedelta(seconds=5)))
        for i in range(12):
            db.session.add(BudgetAlert(target=f"account:{bob.id}", period=f"p{i}", kind="total", threshold=50,
                                       limit_units=to_units(1), user_id=bob.id, created_at=now))
        db.session.commit()
    body = text(ada.get("/billing/"))
    alerts = re.search(r'<section class="card" id="alerts".*?</section>', body, re.S).group(0)
    assert "50 % of the monthly budget of the API key “notebook”" in alerts
    assert "100 % of the monthly budget of the API key “notebook”" in alerts
    assert "Low balance" in alerts and "$0.05" in alerts
    assert alerts.index("Low balance") < alerts.index("100 %") < alerts.index("80 %")  # newest first
    assert "account" not in alerts.lower().replace("your account", "")
    bobs = re.search(r'<section class="card" id="alerts".*?</section>', text(bob.get("/billing/")), re.S).group(0)
    assert bobs.count("<tr>") == 10 + 1  # ten rows and the header


# ---- the ledger --------------------------------------------------------------------------------

def fill_ledger(app, user_id, n=120):
    start = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    rows = [("topup", to_units(10), "pi_first", "Card payment · Visa ending in 4242", start)]
    rows += [("charge", -123, f"req_{i:024d}", "gpt-test", start + timedelta(days=1, minutes=i)) for i in range(n)]
    rows += [("refund", -to_units(2), "re_1", "Refund to card", start + timedelta(days=30))]
    rows += [("adjustment", to_units("0.5"), "adj_1", 'Goodwill, for the "outage" =SUM(1)', start + timedelta(days=31))]
    return post_entries(app, {"user_id": user_id}, rows)


@pytest.mark.promise("P41")
def test_the_ledger_pages_newest_first_fifty_to_a_page(app, people):
    ada = people("ada@example.com")
    fill_ledger(app, ada.id)
    body = text(ada.get("/billing/"))
    ledger = re.search(r'<section class="card" id="ledger".*?</section>', body, re.S).group(0)
    assert "Page 1 of 3" in ledger and ledger.count("data-entry=") == 50
    assert ledger.index('data-kind="adjustment"') < ledger.index('data-kind="refund"')  # newest first
    assert "-$0.00000123" in ledger  # a tiny charge is not $0.00
    assert "+$0.50" in ledger and "-$2.00" in ledger
    assert "Adjustment by staff: Goodwill" in ledger
    assert ">req_00000000…<" in ledger  # shortened, the whole id in its title
    assert "/usage/?model=gpt-test&amp;from=2026-01-02&amp;to=2026-01-02" in ada.get("/billing/").get_data(
        as_text=True)
    assert 'rel="next" href="/billing/?page=2#ledger"' in ledger
    page3 = text(ada.get("/billing/?page=3"))
    assert "Page 3 of 3" in page3 and page3.count("data-entry=") == 23 and "+$10.00" in page3
    assert "Page 3 of 3" in text(ada.get("/billing/?page=99"))  # an old link past the end
    assert "Page 1 of 3" in text(ada.get("/billing/?page=abc"))


@pytest.mark.promise("P41")
def test_the_ledger_filters_by_kind_and_dates_and_bad_values_are_notes(app, people):
    ada = people("ada@example.com")
    fill_ledger(app, ada.id, n=3)
    only = text(ada.get("/billing/?kind=topup"))
    assert only.count("data-entry=") == 1 and 'data-kind="topup"' in only
    dated = text(ada.get("/billing/?from=2026-01-31&to=2026-02-28"))
    assert dated.count("data-entry=") == 2 and 'data-kind="refund"' in dated and 'data-kind="adjustment"' in dated
    swapped = text(ada.get("/billing/?from=2026-01-02&to=2026-01-01"))
    assert "swapped" in swapped and swapped.count("data-entry=") == 4
    for query, note in (("from=2026-13-01", "is not a date like 2025-01-31"), ("to=yesterday", "not a date"),
                        ("from=1900-01-01", "out of range"), ("kind=gift", "The kind filter takes"),
                        ("page=%00", "")):
        resp = ada.get(f"/billing/?{query}")
        assert resp.status_code == 200, query
        assert note in text(resp)
    none = text(ada.get("/billing/?from=2030-01-01"))
    assert "No entries match these filters." in none
    assert ada.get("/billing/?from=2026-01-01&kind=all").status_code == 200


@pytest.mark.promise("P41")
def test_the_ledger_csv_has_every_filtered_row_quoted(app, people):
    ada = people("ada@example.com")
    ids = fill_ledger(app, ada.id, n=60)
    resp = ada.get("/billing/ledger.csv")
    assert resp.status_code == 200 and resp.mimetype == "text/csv"
    assert resp.headers["Content-Disposition"].startswith("attachment; filename=billing-")
    rows = list(csv.reader(io.StringIO(resp.get_data(as_text=True))))
    assert rows[0] == ["date", "kind", "description", "reference", "amount_usd", "entry_id"]
    assert len(rows) == 1 + 63
    assert rows[1] == ["2026-02-01T12:00:00Z", "adjustment",
                       'Adjustment by staff: Goodwill, for the "outage" =SUM(1)', "adj_1", "0.50000000", str(ids[-1])]
    assert rows[-1][1:] == ["topup", "Card payment · Visa ending in 4242", "pi_first", "10.00000000", str(ids[0])]
    charge = rows[3]
    assert charge[1] == "charge" and charge[2] == "gpt-test · request req_000000000000000000000059"
    assert charge[4] == "-0.00000123"
    topups = list(csv.reader(io.StringIO(ada.get("/billing/ledger.csv?kind=topup&from=bad").get_data(as_text=True))))
    assert [r[1] for r in topups[1:]] == ["topup"]
    # A memo that a spreadsheet would run is written as text.
    post_entries(app, {"user_id": ada.id}, [("adjustment", 1, "adj_2", "=HYPERLINK(1)", utcnow())])
    rows = list(csv.reader(io.StringIO(ada.get("/billing/ledger.csv?kind=adjustment").get_data(as_text=True))))
    assert rows[1][2] == "Adjustment by staff: =HYPERLINK(1)"
    post_entries(app, {"user_id": ada.id}, [("charge", -1, "req_x", "=cmd", utcnow())])
    rows = list(csv.reader(io.StringIO(ada.get("/billing/ledger.csv?kind=charge").get_data(as_text=True))))
    assert rows[1][2] == "'=cmd · request req_x"


@pytest.mark.promise("P41")
def test_an_empty_ledger_downloads_a_header(app, people):
    ada = people("ada@example.com")
    assert ada.get("/billing/ledger.csv").get_data(as_text=True) == \
        "date,kind,description,reference,amount_usd,entry_id\r\n"


@pytest.mark.promise("P41")
def test_receipts_are_for_the_contexts_own_top_ups_and_refunds_only(app, people):
    ada, bob = people("ada@example.com"), people("bob@example.com")
    ids = fill_ledger(app, ada.id, n=1)
    topup, charge, refund = ids[0], ids[1], ids[2]
    page = text(ada.get(f"/billing/receipts/{topup}"))
    assert "Receipt" in page and "$10.00" in page and "pi_first" in page and "Visa ending in 4242" in page
    assert "Refund receipt" in text(ada.get(f"/billing/receipts/{refund}"))
    assert ada.get(f"/billing/receipts/{charge}").status_code == 404
    assert ada.get(f"/billing/receipts/{ids[-1]}").status_code == 404  # an adjustment
    assert ada.get("/billing/receipts/999999").status_code == 404
    assert ada.get("/billing/receipts/99999999999999").status_code == 404
    assert bob.get(f"/billing/receipts/{topup}").status_code == 404


# ---- teams (P31) -----------------------------------------------------------------------------------

@pytest.fixture
def team(app, people):
    owner, admin, member = (people("olivia@example.com", name="Olivia"), people("adam@example.com", name="Adam"),
                            people("mia@example.com", name="Mia"))
    tid = make_team(app, {owner.id: "owner", admin.id: "admin", member.id: "member"})
    for p in (owner, admin, member):
        p.switch(tid)
    ids = post_entries(app, {"team_id": tid}, [
        ("topup", to_units("12.34"), "pi_team", "Card payment · Visa ending in 4242", utcnow()),
        ("charge", -to_units("0.0421"), "req_team_0001", "gpt-team", utcnow())])
    member_key = make_key(app, member.id, "mia-laptop", team_id=tid)
    admin_key = make_key(app, admin.id, "team-ci", team_id=tid)
    post_entries(app, {"user_id": member.id}, [("topup", to_units("77.77"), "pi_mia", "Card payment", utcnow())])
    return {"owner": owner, "admin": admin, "member": member, "id": tid, "entries": ids,
            "member_key": member_key, "admin_key": admin_key}


@pytest.mark.promise("P31", "P41")
@pytest.mark.parametrize("role", ["owner", "admin"])
def test_owners_and_admins_see_the_teams_balance_ledger_csv_and_receipts(team, role):
    who = team[role]
    body = text(who.get("/billing/"))
    assert re.search(r"<h1>Billing · <span[^>]*>Lab Seven</span></h1>", body)
    assert 'id="balance-amount">$12.2979<' in body
    assert "+$12.34" in body and "-$0.0421" in body and "gpt-team" in body
    assert "$77.77" not in body  # the member's personal wallet is not the team's
    assert MEMBER_NOTICE not in body
    assert "The whole team" in body and "Mia" in body and "Key “mia-laptop”" in body and "Key “team-ci”" in body
    csv_rows = who.get("/billing/ledger.csv").get_data(as_text=True).splitlines()
    assert len(csv_rows) == 3 and "pi_team" in csv_rows[2]
    assert who.get(f"/billing/receipts/{team['entries'][0]}").status_code == 200


@pytest.mark.promise("P31")
def test_a_member_sees_only_the_notice_and_their_own_limits(app, team):
    mia = team["member"]
    resp = mia.get("/billing/")
    body = text(resp)
    assert resp.status_code == 200
    assert MEMBER_NOTICE in body
    for amount in ("12.34", "12.2979", "0.0421", "77.77"):
        assert amount not in body
    for hidden in ("Billing history", "Add funds", "balance-amount", "gpt-team", "team-ci", "The whole team",
                   "Adam", "Olivia", 'name="monthly"', "/billing/receipts/", "ledger.csv"):
        assert hidden not in body, hidden
    assert "Mia" in body and "Key “mia-laptop”" in body and "Read-only" not in body
    assert mia.get("/billing/ledger.csv").status_code == 403
    assert mia.get(f"/billing/receipts/{team['entries'][0]}").status_code == 404
    assert mia.get("/billing/?wait=0", headers={"HX-Request": "true"}).status_code == 200
    assert MEMBER_NOTICE in text(mia.get("/billing/?wait=0&page=2&kind=topup"))
    # Nothing to change either: top-ups, the alert and every limit are refused.
    assert mia.post("/billing/top-up", {"amount": "25"}).status_code == 403
    assert mia.post("/billing/low-balance", {"threshold": "1"}).status_code == 403
    for scope, ids in (("team", {}), ("member", {"member_id": mia.id}), ("key", {"key_id": team["member_key"]})):
        resp = mia.save_budget(scope, monthly="1", **ids)
        assert resp.status_code == 403, scope
        assert "Only a team's owners and admins set its budgets" in text(resp)
        assert "12.34" not in text(resp)
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(Budget)) == 0
    # Back in her personal context, her own wallet.
    mia.switch(None)
    assert "+$77.77" in text(mia.get("/billing/"))


@pytest.mark.promise("P26", "P31")
def test_an_admin_sets_team_member_and_key_limits_and_the_member_sees_hers(app, team):
    adam, mia, tid = team["admin"], team["member"], team["id"]
    assert adam.save_budget("team", monthly="100").status_code == 302
    assert adam.save_budget("member", monthly="5", member_id=mia.id).status_code == 302
    assert adam.save_budget("key", total="3", key_id=team["member_key"]).status_code == 302
    assert budget(app, f"team:{tid}").monthly_units == to_units(100)
    assert budget(app, f"member:{tid}:{mia.id}").monthly_units == to_units(5)
    assert budget(app, f"key:{team['member_key']}").total_units == to_units(3)
    # Not a member of this team: refused by the service.
    resp = adam.save_budget("member", monthly="5", member_id=999)
    assert resp.status_code == 400 and "That person is not a member of this team." in text(resp)
    # An account limit is personal, never set from a team.
    assert adam.save_budget("account", monthly="5").status_code == 403
    body = text(mia.get("/billing/"))
    assert "$5.00" in body and "$3.00" in body and "$100.00" not in body
    assert 'name="monthly"' not in body


@pytest.mark.promise("P31", "P42")
def test_team_alerts_show_to_managers_and_a_members_own_to_her(app, team):
    tid, mia = team["id"], team["member"]
    with app.app_context():
        db.session.add_all([
            BudgetAlert(target=f"team:{tid}", period="2026-12", kind="monthly", threshold=80, limit_units=to_units(9),
                        team_id=tid, created_at=utcnow()),
            BudgetAlert(target=f"member:{tid}:{mia.id}", period="2026-12", kind="monthly", threshold=50,
                        limit_units=to_units(2), user_id=mia.id, team_id=tid, created_at=utcnow()),
        ])
        db.session.commit()
    owner_alerts = text(team["owner"].get("/billing/"))
    assert "80 % of the monthly budget of the team “Lab Seven”" in owner_alerts
    assert "50 % of the monthly budget of Mia's part of the team “Lab Seven”" in owner_alerts
    hers = text(mia.get("/billing/"))
    assert "50 % of the monthly budget of Mia's part" in hers and "the team “Lab Seven”" in hers
    assert "80 %" not in hers and "$9.00" not in hers


# ---- anything typed ----------------------------------------------------------------------------------

def dump_database(app) -> str:
    parts = []
    with app.app_context():
        for table in db.metadata.sorted_tables:
            for row in db.session.execute(sa.select(table)):
                parts.extend(str(v) for v in row)
    return "\n".join(parts)


@pytest.mark.promise("P23", "P26", "P40")
def test_whatever_is_typed_into_the_billing_forms_is_never_a_5xx_nor_kept(paid_app, paid_person, stripe, caplog):
    """Hypothesis: any text in the top-up, low-balance and budget fields, and
    in which limit they name: never a 5xx, and the text is in no log line and
    no column (a valid amount is kept only as a number of units)."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    caplog.set_level(logging.DEBUG)
    ada = paid_person
    key_id = make_key(paid_app, ada.id)
    token = ada.forms.token("/billing/")
    canary = "zq7billingcanary"
    typed = st.text(max_size=40) | st.sampled_from(["", " ", "25", "5", "$1,000.00", "0.01", "1e3", "NaN", "-0",
                                                    "١٢", "9" * 30, "other", "account", "key", str(key_id)])
    marked = st.tuples(typed, st.booleans()).map(lambda t: t[0] + canary if t[1] else t[0])

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    @given(amount=marked, other=marked, threshold=marked, scope=marked, key=marked, monthly=marked, total=marked,
           confirm=st.sampled_from(["", "1"]) | typed)
    def run(amount, other, threshold, scope, key, monthly, total, confirm):
        for url, data in (("/billing/top-up", {"amount": amount, "other": other}),
                          ("/billing/low-balance", {"threshold": threshold}),
                          ("/billing/budgets", {"scope": scope, "key_id": key, "member_id": key, "monthly": monthly,
                                                "total": total, "confirm": confirm})):
            resp = ada.client.post(url, data={"csrf_token": token, **data})
            assert resp.status_code < 500, (url, data, resp.status_code)
        assert canary not in caplog.text

    run()
    assert canary not in dump_database(paid_app)
    assert not any(canary in str(r.params) for r in stripe.requests)
