"""The staff billing view (P40, P41, P55) through the test client: staff only;
a wallet found by the person's address or by its anonymous id; its balance and
ledger, each opening recorded as a staff view the person sees; an adjustment
checked (reason, non-zero, cents), confirmed, posted and audited; a refund of a
top-up asked of Stripe (the fake on loopback, driven by the official SDK),
whose ledger entry arrives with the signed webhook. Real forms with CSRF, the
real database."""
from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest
import sqlalchemy as sa

from app.extensions import db
from app.models import AuditEvent, LedgerEntry, UserSession, Wallet
from app.models.billing import to_units
from app.models.types import utcnow
from app.services import stripe_billing, wallets
from tests.conftest import Forms
from tests.fakes.stripe import FakeStripe

STAFF = "grace@example.com"
PERSON = "ada@example.com"


def text(resp) -> str:
    return resp.get_data(as_text=True)


def flat(resp) -> str:
    return re.sub(r"\s+", " ", text(resp))


class People:
    def __init__(self, app, users):
        self.app = app
        self.person_id = users.create(email=PERSON, name="Ada")
        self.staff_id = users.create(email=STAFF, staff=True)
        self.staff, self.person = app.test_client(), app.test_client()
        for client, email in ((self.staff, STAFF), (self.person, PERSON)):
            assert Forms(client).post("/login", {"email": email, "password": users.password}).status_code == 302
        self.staff_forms = Forms(self.staff)

    def post(self, url, data=None, page="/staff/billing/"):
        return self.staff_forms.post(url, data or {}, page=page)


@pytest.fixture
def people(app, users):
    return People(app, users)


def fund(app, user_id=None, team_id=None, topup="10"):
    with app.app_context():
        w = wallets.open_for(user_id=user_id, team_id=team_id)
        w.payment_method = "Visa ending in 4242"
        db.session.flush()
        wallets.post(w.id, "topup", to_units(topup), f"pi_test_{w.anon_ref}", "Card payment · Visa ending in 4242")
        wallets.post(w.id, "charge", -to_units("0.25"), f"req_{w.anon_ref}", "gpt-test")
        db.session.commit()
        return w.id, w.anon_ref


def balance(app, wallet_id) -> int:
    with app.app_context():
        return db.session.get(Wallet, wallet_id).balance_units


def entries(app, wallet_id) -> list[LedgerEntry]:
    with app.app_context():
        rows = list(db.session.scalars(sa.select(LedgerEntry).where(LedgerEntry.wallet_id == wallet_id)
                                       .order_by(LedgerEntry.id)))
        db.session.expunge_all()
        return rows


def events(app, name) -> list[AuditEvent]:
    with app.app_context():
        rows = list(db.session.scalars(sa.select(AuditEvent).where(AuditEvent.event == name).order_by(AuditEvent.id)))
        db.session.expunge_all()
        return rows


# ---- who may ----------------------------------------------------------------------------

@pytest.mark.promise("P55")
def test_staff_billing_is_for_staff_only(app, people):
    wallet_id, ref = fund(app, people.person_id)
    staff_wallet, _ = fund(app, people.staff_id)
    entry = entries(app, staff_wallet)[0]
    token = Forms(people.person).token("/account/")
    for url in ("/staff/billing/", f"/staff/billing/w/{ref}", f"/staff/billing/w/{ref}/refund/{entry.id}"):
        assert people.person.get(url).status_code == 403, url
    for url in ("/staff/billing/", f"/staff/billing/w/{ref}/adjust", f"/staff/billing/w/{ref}/refund/{entry.id}"):
        resp = people.person.post(url, data={"csrf_token": token, "amount": "100", "reason": "Free money please",
                                             "confirmed": "yes", "who": PERSON})
        assert resp.status_code == 403, url
    anonymous = app.test_client()
    resp = anonymous.get(f"/staff/billing/w/{ref}")
    assert resp.status_code == 302 and "/login" in resp.headers["Location"]
    assert len(entries(app, wallet_id)) == 2 and balance(app, wallet_id) == to_units("9.75")
    # Staff get in; unknown or malformed wallet ids and foreign entries are 404.
    assert people.staff.get("/staff/billing/").status_code == 200
    assert "/staff/billing/" in text(people.staff.get("/staff/"))
    assert people.staff.get("/staff/billing/w/w_0000000000000000").status_code == 404
    assert people.staff.get("/staff/billing/w/not-a-wallet").status_code == 404
    assert people.staff.get(f"/staff/billing/w/{ref}/refund/{entry.id}").status_code == 404  # another wallet's


# ---- lookup and the wallet page ----------------------------------------------------------

@pytest.mark.promise("P41", "P55")
def test_lookup_by_address_or_anonymous_id_and_the_view_is_in_the_persons_access_log(app, people):
    wallet_id, ref = fund(app, people.person_id)
    resp = people.post("/staff/billing/", {"who": " ADA@example.com "})
    assert resp.status_code == 302 and resp.headers["Location"].endswith(f"/staff/billing/w/{ref}")
    resp = people.post("/staff/billing/", {"who": ref.upper()})
    assert resp.status_code == 302 and resp.headers["Location"].endswith(f"/staff/billing/w/{ref}")
    missing = people.post("/staff/billing/", {"who": "nobody@example.com"})
    assert missing.status_code == 422 and "No account has that address." in text(missing)
    assert "No wallet has that id." in text(people.post("/staff/billing/", {"who": "w_0123456789abcdef"}))
    # What staff typed is not an audit fact.
    with app.app_context():
        details = " ".join(db.session.scalars(sa.select(AuditEvent.details)))
        assert "nobody@example.com" not in details and "w_0123456789abcdef" not in details

    page = people.staff.get(f"/staff/billing/w/{ref}")
    assert page.status_code == 200
    html = flat(page)
    assert f"account #{people.person_id} · {PERSON}" in html and "$9.75" in html and "Visa ending in 4242" in html
    assert f"pi_test_{ref}" in html and "gpt-test" in html and "-0.25000000" in html
    views = [e for e in events(app, "staff:viewed:person") if e.subject_id == people.person_id]
    assert views and views[-1].actor_id == people.staff_id
    assert json.loads(views[-1].details)["what"] == "billing: wallet and ledger"
    log = flat(people.person.get("/privacy-center/access-log"))
    assert "Looked at your data" in log and "billing: wallet and ledger" in log

    # An account without a wallet is said to have none (and looking is a view too).
    resp = people.post("/staff/billing/", {"who": STAFF})
    assert resp.status_code == 200 and f"Account #{people.staff_id} has no wallet" in text(resp)


def test_a_team_wallet_and_an_erased_accounts_wallet_are_shown_by_their_id(app, people):
    from app.models import Team
    with app.app_context():
        team = Team(name="Engines", slug="engines", created_at=utcnow())
        db.session.add(team)
        db.session.commit()
        team_id = team.id
    _, team_ref = fund(app, team_id=team_id)
    erased_id, erased_ref = fund(app, people.person_id)
    with app.app_context():
        db.session.execute(sa.update(Wallet).where(Wallet.id == erased_id).values(user_id=None))
        db.session.commit()
    assert "team “Engines”" in flat(people.staff.get(f"/staff/billing/w/{team_ref}"))
    assert "an erased account" in flat(people.staff.get(f"/staff/billing/w/{erased_ref}"))
    viewed = events(app, "staff:billing:viewed")
    assert [json.loads(e.details)["wallet"] for e in viewed] == [team_ref, erased_ref]
    assert viewed[0].team_id == team_id


# ---- adjustments ------------------------------------------------------------------------

@pytest.mark.promise("P41", "P55")
def test_an_adjustment_is_checked_confirmed_posted_and_audited(app, people):
    wallet_id, ref = fund(app, people.person_id)
    page = f"/staff/billing/w/{ref}"
    url = f"{page}/adjust"
    before = balance(app, wallet_id)
    bad = {
        (("amount", "-2.50"), ("reason", "")): "Give the reason",
        (("amount", "-2.50"), ("reason", "  no ")): "5 to 200 characters",
        (("amount", "-2.50"), ("reason", "x" * 201)): "5 to 200 characters",
        (("amount", "0"), ("reason", "Nothing at all")): "non-zero",
        (("amount", "-0.00"), ("reason", "Nothing at all")): "non-zero",
        (("amount", "1.234"), ("reason", "Too precise")): "in cents",
        (("amount", "abc"), ("reason", "Not a number")): "Enter an amount in dollars",
        (("amount", "NaN"), ("reason", "Not a number")): "Enter an amount in dollars",
        (("amount", "Infinity"), ("reason", "Not a number")): "Enter an amount in dollars",
        (("amount", "100001"), ("reason", "Far too much")): "at most $100,000",
        (("amount", ""), ("reason", "No amount")): "Enter the amount",
    }
    for fields, message in bad.items():
        for confirmed in ("", "yes"):
            resp = people.post(url, {**dict(fields), "confirmed": confirmed}, page=page)
            assert resp.status_code == 422, (fields, text(resp)[:300])
            assert message in text(resp), (fields, message)
    assert balance(app, wallet_id) == before and events(app, "billing:adjusted") == []

    # First the check: nothing is posted yet, the page asks to confirm.
    reason = "Double charge on 3 May"
    resp = people.post(url, {"amount": "-2.50", "reason": reason}, page=page)
    assert resp.status_code == 200 and "Post this adjustment?" in text(resp)
    confirm = flat(resp)
    assert "−$2.50" in confirm and "$9.75 → $7.25" in confirm and reason in confirm
    assert 'name="confirmed" value="yes"' in text(resp)
    assert balance(app, wallet_id) == before and len(entries(app, wallet_id)) == 2

    # Then the confirmation, with the fields the page carries.
    resp = people.staff.post(url, data={"csrf_token": re.search(r'name="csrf_token"[^>]*value="([^"]+)"',
                                                                text(resp)).group(1),
                                        "amount": "-2.50", "reason": reason, "confirmed": "yes"})
    assert resp.status_code == 302 and resp.headers["Location"].endswith(page)
    assert balance(app, wallet_id) == before - to_units("2.50")
    *_, entry = entries(app, wallet_id)
    assert (entry.kind, entry.amount_units, entry.memo) == ("adjustment", -to_units("2.50"), reason)
    (event,) = events(app, "billing:adjusted")
    assert (event.actor_id, event.subject_id) == (people.staff_id, people.person_id)
    assert json.loads(event.details) == {"wallet": ref, "team_id": None, "amount": "-2.50", "entry_id": entry.id}
    shown = flat(people.staff.get(page))
    assert f'id="entry-{entry.id}"' in shown and reason in shown and "$7.25" in shown
    assert f"Adjustment #{entry.id} of −$2.50 posted; the balance is now $7.25." in shown
    # The person sees it in who looked at my data, and the ledger stays in step.
    log = flat(people.person.get("/privacy-center/access-log"))
    assert "Adjusted your prepaid balance" in log and "-2.50 USD" in log
    with app.app_context():
        assert wallets.verify() == []
    # A credit works the same way.
    people.post(url, {"amount": "5", "reason": "Goodwill for the outage", "confirmed": "yes"}, page=page)
    assert balance(app, wallet_id) == before - to_units("2.50") + to_units(5)


def test_money_moves_only_after_a_fresh_sign_in(app, people):
    wallet_id, ref = fund(app, people.person_id)
    page = f"/staff/billing/w/{ref}"
    token = people.staff_forms.token(page)
    with app.app_context():
        db.session.execute(sa.update(UserSession).where(UserSession.user_id == people.staff_id)
                           .values(authenticated_at=utcnow() - timedelta(hours=3)))
        db.session.commit()
    resp = people.staff.post(f"{page}/adjust", data={"csrf_token": token, "amount": "5",
                                                     "reason": "Goodwill credit", "confirmed": "yes"})
    assert resp.status_code == 302 and "/account/reauth" in resp.headers["Location"]
    assert balance(app, wallet_id) == to_units("9.75")
    assert people.staff.get(page).status_code == 200  # looking needs no fresh sign-in


# ---- refunds through Stripe (the fake) -------------------------------------------------------

@pytest.fixture
def stripe_fake():
    fake = FakeStripe(retry_delays=(0.05,)).start()  # no webhook_url: events are recorded, posted by the test
    yield fake
    fake.stop()


@pytest.fixture
def paid(make_app, users, stripe_fake):
    app = make_app(STRIPE_SECRET_KEY=stripe_fake.api_key, STRIPE_API_BASE=stripe_fake.url,
                   STRIPE_WEBHOOK_SECRET=stripe_fake.webhook_secret)
    return app, People(app, users)


def deliver(app, fake: FakeStripe, seen: set) -> list[int]:
    """POST every event not yet delivered to the webhook, signed as Stripe signs."""
    client = app.test_client()
    statuses = []
    for event in fake.events:
        if event["id"] in seen:
            continue
        seen.add(event["id"])
        payload = json.dumps(event).encode()
        resp = client.post("/billing/webhook", data=payload, content_type="application/json",
                           headers={"Stripe-Signature": fake.signature(payload)})
        statuses.append(resp.status_code)
    return statuses


@pytest.mark.promise("P40", "P41", "P55")
def test_staff_refund_of_a_top_up_lands_with_stripes_webhook(paid, stripe_fake):
    app, people = paid
    seen: set = set()
    with app.app_context():
        wallet = wallets.open_for(user_id=people.person_id)
        db.session.commit()
        wallet_id, ref = wallet.id, wallet.anon_ref
        url = stripe_billing.start_topup(wallet, 10, "http://localhost/billing/done", "http://localhost/billing")
    stripe_fake.pay(url.rsplit("/", 1)[1])
    assert set(deliver(app, stripe_fake, seen)) == {200}
    assert balance(app, wallet_id) == to_units(10)
    (topup,) = entries(app, wallet_id)
    assert topup.kind == "topup" and topup.reference.startswith("pi_")

    page = f"/staff/billing/w/{ref}"
    refund_url = f"{page}/refund/{topup.id}"
    assert f'href="{refund_url}"' in text(people.staff.get(page))
    form = people.staff.get(refund_url)
    assert form.status_code == 200 and "Refund top-up" in text(form) and "$10.00" in text(form)
    for amount, message in (("10.01", "at most the top-up"), ("0", "more than $0"), ("1.001", "in cents"),
                            ("nope", "Enter an amount")):
        resp = people.post(refund_url, {"amount": amount}, page=refund_url)
        assert resp.status_code == 422 and message in text(resp), amount
    assert [e for e in stripe_fake.events if e["type"] == "refund.created"] == []

    resp = people.post(refund_url, {"amount": "4"}, page=refund_url)
    assert resp.status_code == 302 and resp.headers["Location"].endswith(page)
    shown = text(people.staff.get(page))
    assert "Refund requested; it appears when Stripe confirms." in shown
    # Nothing in the ledger until Stripe says so.
    assert balance(app, wallet_id) == to_units(10) and len(entries(app, wallet_id)) == 1
    (asked,) = events(app, "billing:refund:requested")
    assert asked.actor_id == people.staff_id
    refund_id = json.loads(asked.details)["refund"]

    assert set(deliver(app, stripe_fake, seen)) == {200}
    *_, refund = entries(app, wallet_id)
    assert (refund.kind, refund.amount_units, refund.reference) == ("refund", -to_units(4), refund_id)
    assert balance(app, wallet_id) == to_units(6)
    assert f'id="entry-{refund.id}"' in text(people.staff.get(page))
    # The rest, then nothing more: Stripe refuses a third refund of a refunded payment.
    people.post(refund_url, {"amount": ""}, page=refund_url)
    deliver(app, stripe_fake, seen)
    assert balance(app, wallet_id) == 0
    resp = people.post(refund_url, {"amount": ""}, page=refund_url)
    assert "Stripe refused this refund" in text(people.staff.get(page))
    with app.app_context():
        assert wallets.verify() == []
    log = flat(people.person.get("/privacy-center/access-log"))
    assert "Refunded one of your top-ups" in log
    # A charge is not refundable: no link, and the route says so.
    with app.app_context():
        charge = wallets.post(wallet_id, "adjustment", to_units(1), "adj_test", "Credit")
        db.session.commit()
        charge_id = charge.id
    resp = people.staff.get(f"{page}/refund/{charge_id}")
    assert resp.status_code == 302
    assert "Only a card top-up can be refunded." in text(people.staff.get(page))


def test_without_stripe_there_is_no_refund(app, people):
    wallet_id, ref = fund(app, people.person_id)
    (topup, _) = entries(app, wallet_id)
    page = f"/staff/billing/w/{ref}"
    assert "/refund/" not in text(people.staff.get(page))
    resp = people.staff.get(f"{page}/refund/{topup.id}")
    assert resp.status_code == 302
    assert "Payments are not configured" in text(people.staff.get(page))


def test_whatever_staff_type_into_the_billing_forms_is_never_a_5xx_nor_logged(app, people, caplog):
    """Lookup, adjustment (amount, reason, confirmation) and refund amount take
    any text: a form message or a 4xx, never a 5xx; the text never reaches a log,
    and a ledger entry only ever holds a checked amount."""
    import logging

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    wallet_id, ref = fund(app, people.person_id)
    topup = entries(app, wallet_id)[0]
    page = f"/staff/billing/w/{ref}"
    typed = st.text(max_size=60) | st.sampled_from(["", " ", "NaN", "-inf", "1e9", "0.001", "-0", "$5", "5,00",
                                                     "\u202e", "9" * 40, "-2.50", "ADA@EXAMPLE.COM"])
    caplog.set_level(logging.DEBUG)

    @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
    @given(who=typed, amount=typed, reason=typed, confirmed=st.sampled_from(["", "yes", "no"]), refund=typed)
    def run(who, amount, reason, confirmed, refund):
        canary = "zq9staffcanary"
        for url, data in (("/staff/billing/", {"who": who + canary}),
                          (f"{page}/adjust", {"amount": amount, "reason": reason + canary, "confirmed": confirmed}),
                          (f"{page}/refund/{topup.id}", {"amount": refund + canary})):
            resp = people.post(url, data, page=page)
            assert resp.status_code < 500, (url, data)
        assert canary not in caplog.text

    run()
    with app.app_context():
        assert wallets.verify() == []
        for e in entries(app, wallet_id):
            assert abs(e.amount_units) <= to_units(wallets.MAX_ADJUSTMENT_USD) and e.amount_units % 1_000_000 == 0 \
                or e.kind != "adjustment"
