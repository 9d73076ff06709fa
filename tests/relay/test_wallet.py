"""P40, P41, P42: a prepaid wallet topped up through Stripe Checkout (the fake
Stripe on loopback, driven by the official SDK), webhooks verified and handled
once in any order, charges from the usage rows, refusal at zero, receipts by
mail, and a ledger whose cached balance never drifts from its entries.

The relay under test is the real server (ASGI, uvicorn): the webhook reaches
the portal through it, as it would in production.
"""
from __future__ import annotations

import json
import random
import threading
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import sqlalchemy as sa

from app.extensions import db
from app.models import LedgerEntry, OutboxMessage, StripeEvent, UsageRecord, Wallet
from app.models.billing import to_units
from app.services import stripe_billing, wallets
from tests.fakes.stripe import FakeStripe


@pytest.fixture(scope="module")
def stripe_fake():
    fake = FakeStripe(retry_delays=(0.1, 0.3)).start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def paid(relay_factory, stripe_fake):
    """A relay whose accounts are prepaid, with Stripe (the fake) configured."""
    relay = relay_factory(STRIPE_SECRET_KEY=stripe_fake.api_key, STRIPE_WEBHOOK_SECRET=stripe_fake.webhook_secret,
                          STRIPE_API_BASE=stripe_fake.url, PREPAID="true")
    stripe_fake.webhook_url = relay.url + "/billing/webhook"
    return relay


def wallet_of(relay) -> Wallet:
    with relay.app.app_context():
        w = wallets.open_for(user_id=relay.user_id)
        db.session.commit()
        db.session.refresh(w)
        db.session.expunge(w)
        return w


def top_up(relay, fake: FakeStripe, dollars: int, card: str = "4242424242424242") -> str:
    """Checkout through the app's billing module, paid on the fake's page; returns the session id."""
    with relay.app.app_context():
        wallet = wallets.open_for(user_id=relay.user_id)
        db.session.commit()
        url = stripe_billing.start_topup(wallet, dollars, relay.url + "/billing/done", relay.url + "/billing")
    cs_id = url.rsplit("/", 1)[1]
    fake.pay(cs_id, card=card)
    return cs_id


def entries(relay, kind: str | None = None) -> list[LedgerEntry]:
    with relay.app.app_context():
        q = sa.select(LedgerEntry).join(Wallet, Wallet.id == LedgerEntry.wallet_id).where(
            Wallet.user_id == relay.user_id)
        if kind:
            q = q.where(LedgerEntry.kind == kind)
        rows = list(db.session.scalars(q.order_by(LedgerEntry.id)))
        for r in rows:
            db.session.expunge(r)
        return rows


def balance(relay) -> int:
    with relay.app.app_context():
        return db.session.scalar(sa.select(Wallet.balance_units).where(Wallet.user_id == relay.user_id)) or 0


def drift(relay) -> list:
    with relay.app.app_context():
        return [str(d) for d in wallets.verify()]


@pytest.fixture(autouse=True)
def _quiet(stripe_fake):
    stripe_fake.drain(10)
    yield
    stripe_fake.drain(10)


@pytest.mark.promise("P26")
@pytest.mark.promise("P41")
def test_p41_prepaid_account_without_balance_is_refused_until_it_tops_up(paid, stripe_fake):
    oai = paid.openai()
    with pytest.raises(openai.APIStatusError) as refused:
        oai.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}])
    assert refused.value.status_code == 402
    assert "prepaid balance" in refused.value.response.json()["error"]["message"]
    assert paid.fake.requests == []

    top_up(paid, stripe_fake, 10)
    stripe_fake.drain(10)
    assert balance(paid) == to_units(10)
    w = wallet_of(paid)
    assert w.payment_method == "Visa ending in 4242" and w.stripe_customer_id.startswith("cus_")
    [topup] = entries(paid, "topup")
    assert topup.amount_units == to_units(10) and topup.reference.startswith("pi_")

    answer = oai.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hello there"}])
    assert answer.choices[0].message.content.startswith("echo:")
    assert paid.app.extensions["meter"].flush(10)
    [charge] = entries(paid, "charge")
    with paid.app.app_context():
        row = db.session.scalar(sa.select(UsageRecord).where(UsageRecord.request_id == charge.reference))
        assert charge.amount_units == -to_units(row.cost_usd) < 0  # the charge is the usage row's cost
        assert charge.memo == "gpt-test"
    assert balance(paid) == to_units(10) + charge.amount_units
    assert drift(paid) == []


@pytest.mark.promise("P42")
def test_p42_a_receipt_is_mailed_for_a_top_up_and_a_refund(paid, stripe_fake, smtp):
    top_up(paid, stripe_fake, 7, card="5555555555554444")
    stripe_fake.drain(10)
    with paid.app.app_context():
        topup = db.session.scalar(sa.select(LedgerEntry).where(LedgerEntry.kind == "topup")
                                  .order_by(LedgerEntry.id.desc()))
        stripe_billing.refund(None, topup, amount_usd=2)
        db.session.commit()
    stripe_fake.drain(10)
    [refund] = [e for e in entries(paid, "refund") if e.amount_units == -to_units(2)]
    with paid.app.app_context():
        kinds = [m.kind for m in db.session.scalars(sa.select(OutboxMessage).where(
            OutboxMessage.user_id == paid.user_id, OutboxMessage.kind.like("billing:receipt:%")))]
        from app.services.mail import deliver_pending
        deliver_pending(paid.app)
    assert "billing:receipt:topup" in kinds and "billing:receipt:refund" in kinds
    addr = f"dev{paid.url.rsplit(':', 1)[1]}@example.com"
    smtp.mailbox.wait_for(addr, "Refund: $2.00")
    body = smtp.mailbox.wait_for(addr, "Receipt: $7.00").get_body(("plain",)).get_content()
    assert "Mastercard ending in 4444" in body and "5555555555554444" not in body
    assert refund.memo == "Refund to card"
    assert drift(paid) == []


@pytest.mark.promise("P40")
def test_p40_forged_unsigned_or_stale_webhooks_are_refused_and_write_nothing(paid, stripe_fake):
    with paid.app.app_context():
        before = db.session.scalar(sa.select(sa.func.count()).select_from(StripeEvent))
    cs_id = top_up(paid, stripe_fake, 5)
    stripe_fake.drain(10)
    event = next(e for e in stripe_fake.events if e["type"] == "checkout.session.completed"
                 and e["data"]["object"]["id"] == cs_id)
    forged = dict(event, id="evt_forged_" + cs_id[-8:])
    forged["data"] = {"object": dict(event["data"]["object"], amount_total=999_999)}
    payload = json.dumps(forged).encode()
    assert stripe_fake.deliver_raw(payload, None) == 400
    assert stripe_fake.deliver_raw(payload, stripe_fake.signature(payload, secret="whsec_wrong")) == 400
    assert stripe_fake.deliver_raw(payload, stripe_fake.signature(payload, t=1_000_000)) == 400  # too old
    tampered = payload.replace(b"999999", b"999998")
    assert stripe_fake.deliver_raw(tampered, stripe_fake.signature(payload)) == 400
    with paid.app.app_context():
        after = db.session.scalar(sa.select(sa.func.count()).select_from(StripeEvent))
    assert after == before + 2  # the genuine checkout.session.completed and payment_intent.succeeded only
    assert all(e.amount_units != to_units(9999.99) for e in entries(paid))


@pytest.mark.promise("P40")
@pytest.mark.promise("P41")
def test_p40_the_same_event_ten_times_at_once_makes_one_ledger_entry(paid, stripe_fake):
    before = balance(paid)
    stripe_fake.hold()
    cs_id = top_up(paid, stripe_fake, 20)
    [event] = [e for e in stripe_fake.held if e["type"] == "checkout.session.completed"]
    codes = stripe_fake.redeliver(event["id"], times=10, concurrent=True)
    stripe_fake.release()
    stripe_fake.drain(10)
    assert codes == [200] * 10
    assert balance(paid) == before + to_units(20)
    pi = stripe_fake.get(cs_id)["payment_intent"]
    assert len([e for e in entries(paid, "topup") if e.reference == pi]) == 1
    # Days later Stripe retries the same event: still nothing new.
    assert stripe_fake.redeliver(event["id"], times=1) == [200]
    assert balance(paid) == before + to_units(20)
    assert drift(paid) == []


@pytest.mark.promise("P40")
def test_p40_events_out_of_order_give_the_same_balance(paid, stripe_fake):
    before = balance(paid)
    stripe_fake.hold()
    cs_id = top_up(paid, stripe_fake, 30)
    pi = stripe_fake.get(cs_id)["payment_intent"]
    with paid.app.app_context():
        stripe_billing.client().v1.refunds.create(params={"payment_intent": pi, "amount": 1000})
    stripe_fake.release(order="reverse")  # the refund lands before the payment it refunds
    stripe_fake.drain(10)
    assert balance(paid) == before + to_units(30) - to_units(10)
    assert [e.kind for e in entries(paid) if e.reference == pi] == ["topup"]
    assert drift(paid) == []


@pytest.mark.promise("P41")
@pytest.mark.parametrize("seed", [1, 2])
def test_p41_no_drift_after_a_concurrent_mix_of_charges_top_ups_refunds_and_replays(paid, stripe_fake, seed):
    """Charges (plain and streamed requests), top-ups, refunds and replayed
    webhooks, all at once from many threads: every cached balance still equals
    the sum of its entries, and nothing is held afterwards."""
    rng = random.Random(seed)
    top_up(paid, stripe_fake, 50)
    stripe_fake.drain(10)
    oai = paid.openai()
    lock = threading.Lock()
    topups: list[str] = []

    def op(kind: str) -> str:
        if kind == "chat":
            oai.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "a b c d"}])
        elif kind == "stream":
            list(oai.chat.completions.create(model="claude-test", stream=True, max_tokens=30,
                                             messages=[{"role": "user", "content": "e f g"}]))
        elif kind == "topup":
            cs = top_up(paid, stripe_fake, rng.choice((5, 6, 7)))
            with lock:
                topups.append(stripe_fake.get(cs)["payment_intent"])
        elif kind == "refund":
            with lock:
                pi = topups.pop() if topups else None
            if pi:
                with paid.app.app_context():
                    stripe_billing.client().v1.refunds.create(params={"payment_intent": pi, "amount": 100})
        elif kind == "replay":
            events = [e for e in stripe_fake.events if e["type"] in ("checkout.session.completed", "refund.created")]
            if events:
                stripe_fake.redeliver(rng.choice(events)["id"], times=3)
        return kind

    plan = [rng.choice(("chat", "chat", "stream", "topup", "refund", "replay")) for _ in range(60)]
    with ThreadPoolExecutor(12) as pool:
        done = list(pool.map(op, plan))
    assert done == plan
    stripe_fake.drain(15)
    assert paid.app.extensions["meter"].flush(10)
    assert drift(paid) == []
    with paid.app.app_context():
        w = db.session.scalar(sa.select(Wallet).where(Wallet.user_id == paid.user_id))
        total = db.session.scalar(sa.select(sa.func.sum(LedgerEntry.amount_units)).where(
            LedgerEntry.wallet_id == w.id))
        assert w.balance_units == total and w.reserved_units == 0
        charges = db.session.scalar(sa.select(sa.func.count()).select_from(LedgerEntry).where(
            LedgerEntry.wallet_id == w.id, LedgerEntry.kind == "charge"))
        charged_rows = db.session.scalar(sa.select(sa.func.count()).select_from(UsageRecord).where(
            UsageRecord.user_id == paid.user_id, UsageRecord.cost_usd > 0))
        assert charges == charged_rows  # one charge per priced request, none twice


@pytest.mark.promise("P40")
def test_p40_no_card_number_reaches_a_column_or_a_log(paid, stripe_fake, caplog, database_url):
    caplog.set_level("DEBUG")
    top_up(paid, stripe_fake, 5, card="4242424242424242")
    top_up(paid, stripe_fake, 5, card="5555555555554444")
    stripe_fake.drain(10)
    assert paid.app.extensions["meter"].flush(10)
    with paid.app.app_context():
        for table in db.metadata.sorted_tables:
            for row in db.session.execute(sa.select(table)).all():
                text = " ".join(str(v) for v in row)
                assert "4242424242424242" not in text and "5555555555554444" not in text, table.name
    assert "4242424242424242" not in caplog.text and "5555555555554444" not in caplog.text
    if database_url.startswith("sqlite:///"):
        from pathlib import Path

        from tests.relay.test_zero_log import read_locked_file  # never open() a file SQLite has open here
        for suffix in ("", "-wal"):
            path = Path(database_url[len("sqlite:///"):] + suffix)
            if path.exists():
                raw = read_locked_file(path)
                assert b"4242424242424242" not in raw and b"5555555555554444" not in raw


def _call(relay, api: str, stream: bool):
    text = "the same five words here"
    if api == "chat":
        out = relay.openai().chat.completions.create(model="gpt-test", stream=stream, max_tokens=50,
                                                      messages=[{"role": "user", "content": text}])
    elif api == "chat-via-claude":
        out = relay.openai().chat.completions.create(model="claude-test", stream=stream, max_tokens=50,
                                                      messages=[{"role": "user", "content": text}])
    elif api == "messages":
        out = relay.anthropic().messages.create(model="claude-test", stream=stream, max_tokens=50,
                                                messages=[{"role": "user", "content": text}])
    else:
        out = relay.openai().responses.create(model="gpt-test", stream=stream, max_output_tokens=50, input=text)
    if stream:
        list(out)


@pytest.mark.promise("P41")
@pytest.mark.parametrize("api", ["chat", "chat-via-claude", "messages", "responses"])
def test_p41_streamed_and_whole_answers_of_the_same_tokens_are_charged_the_same(paid, stripe_fake, api):
    """Golden: for each provider shape, with prompt-cache reads and writes
    reported, the streamed call and the whole one give the same tokens, the
    same cost and the same ledger charge."""
    if balance(paid) < to_units(5):
        top_up(paid, stripe_fake, 20)
        stripe_fake.drain(10)
    paid.fake.set_default_fault(cached_tokens=3, cache_creation_tokens=2)
    try:
        mark = paid.mark()
        _call(paid, api, stream=False)
        _call(paid, api, stream=True)
        whole, streamed = paid.new_rows(mark, 2)
    finally:
        paid.fake.set_default_fault()
    assert whole.usage_source == streamed.usage_source == "provider"
    tokens = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")
    assert [getattr(whole, t) for t in tokens] == [getattr(streamed, t) for t in tokens]
    assert whole.cache_read_tokens == 3 and whole.output_tokens > 0
    if api != "chat":  # OpenAI chat reports no cache writes; the others do
        assert whole.cache_write_tokens == 2
    assert whole.cost_usd == streamed.cost_usd > 0
    charges = {e.reference: e.amount_units for e in entries(paid, "charge")}
    assert charges[whole.request_id] == charges[streamed.request_id] == -to_units(whole.cost_usd)


@pytest.mark.promise("P42")
def test_p42_low_balance_alert_once_per_top_up(paid, stripe_fake):
    from app.models import BudgetAlert
    if balance(paid) < to_units(1):
        top_up(paid, stripe_fake, 5)
        stripe_fake.drain(10)
    with paid.app.app_context():
        w = db.session.scalar(sa.select(Wallet).where(Wallet.user_id == paid.user_id))
        w.low_balance_units = w.balance_units + to_units(100)  # already "low": the next charge alerts
        db.session.commit()
        first_mail = db.session.scalar(sa.select(sa.func.max(OutboxMessage.id))) or 0
    oai = paid.openai()
    for _ in range(3):
        oai.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}])
        assert paid.app.extensions["meter"].flush(10)
    with paid.app.app_context():
        lows = db.session.scalars(sa.select(BudgetAlert).where(BudgetAlert.kind == "low_balance")).all()
        mails = db.session.scalars(sa.select(OutboxMessage.subject).where(
            OutboxMessage.id > first_mail, OutboxMessage.kind == "billing:alert:low_balance")).all()
    assert len([a for a in lows if a.notified_at is not None]) == len(lows) >= 1
    assert mails == ["Your prepaid balance is running low"]  # once, not once per charge
    top_up(paid, stripe_fake, 5)  # a top-up re-arms it
    stripe_fake.drain(10)
    oai.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}])
    assert paid.app.extensions["meter"].flush(10)
    with paid.app.app_context():
        mails = db.session.scalars(sa.select(OutboxMessage.subject).where(
            OutboxMessage.id > first_mail, OutboxMessage.kind == "billing:alert:low_balance")).all()
        w = db.session.scalar(sa.select(Wallet).where(Wallet.user_id == paid.user_id))
        w.low_balance_units = to_units(5)
        db.session.commit()
    assert len(mails) == 2
