"""Payments through Stripe, behind one module (P40, P41, P42).

The official `stripe` SDK, with the deployment's secret key and, for local
runs and tests, STRIPE_API_BASE pointing it at the fake (tests/fakes/stripe.py).
What we keep of Stripe is what P40 allows: the customer's id and the card's
display form ("Visa ending in 4242") on the wallet; never a card number, and
no event body (the card form lives on Stripe's page, so no card number ever
reaches this server). A customer is made with no name and no address: Stripe
needs neither to take a payment, and we send it nothing it does not need.

A top-up is a Checkout Session in payment mode whose PaymentIntent carries the
wallet's anonymous reference in its metadata. The webhook credits the wallet
when Checkout reports the session paid, and debits it when a refund is made,
each as one ledger entry:

* verified: `stripe.Webhook.construct_event` checks the signature and its
  age; anything else is 400 and nothing is written;
* once: the event's id is a primary key inserted in the transaction that acts
  on it, and each ledger entry is unique by (kind, reference): the payment's
  PaymentIntent, the refund's id. Ten deliveries of one event at once make one
  entry; so do two different events about one payment;
* in any order, however late: a refund finds its wallet through its
  PaymentIntent's metadata, not through the top-up's entry, so it can land
  before the payment's own event; the balance is the sum either way.
"""
from __future__ import annotations

import json
import logging
import re
from decimal import Decimal

import sqlalchemy as sa
from flask import current_app

from app.extensions import db
from app.models import LedgerEntry, StripeEvent, Wallet
from app.services import ServiceError, audit, billing_mail, wallets

log = logging.getLogger(__name__)
EVENT_ID = re.compile(r"evt_[A-Za-z0-9_]{1,250}")
CENT_UNITS = 1_000_000  # 10⁻⁸ USD units in one cent
BRANDS = {"visa": "Visa", "mastercard": "Mastercard", "amex": "American Express", "discover": "Discover",
          "diners": "Diners Club", "jcb": "JCB", "unionpay": "UnionPay"}


def _sdk():
    """The `stripe` package, imported on first use: it costs a server worker ~30 MiB,
    which a worker that never touches billing should not pay."""
    import stripe
    return stripe


def configured() -> bool:
    return bool(current_app.config.get("STRIPE_SECRET_KEY"))


def client():
    """The StripeClient of this app (its secret key; STRIPE_API_BASE for the fake)."""
    stripe = _sdk()
    ext = current_app.extensions
    made = ext.get("stripe_client")
    if made is None:
        base = current_app.config["STRIPE_API_BASE"]
        made = stripe.StripeClient(current_app.config["STRIPE_SECRET_KEY"], max_network_retries=2,
                                   **({"base_addresses": {"api": base}} if base else {}))
        ext["stripe_client"] = made
    return made


def card_display(pm) -> str | None:
    """'Visa ending in 4242' from a PaymentMethod (or a charge's payment_method_details)."""
    card = pm.get("card") if isinstance(pm, dict) else None
    if not isinstance(card, dict):
        return None
    brand, last4 = card.get("brand"), card.get("last4")
    if not last4 or not str(last4).isdigit() or len(str(last4)) != 4:
        return None
    return f"{BRANDS.get(brand, (brand or 'Card').title())} ending in {last4}"


def start_topup(wallet: Wallet, amount_usd: int, success_url: str, cancel_url: str) -> str:
    """A Checkout Session for `amount_usd` whole dollars; returns the URL of Stripe's page."""
    lo, hi = current_app.config["TOPUP_MIN_USD"], current_app.config["TOPUP_MAX_USD"]
    if not isinstance(amount_usd, int) or not lo <= amount_usd <= hi:
        raise ServiceError(f"Choose an amount from ${lo} to ${hi:,}, in whole dollars.")
    c, stripe = client(), _sdk()
    try:
        if wallet.stripe_customer_id is None:
            customer = c.v1.customers.create(params={"metadata": {"wallet": wallet.anon_ref}},
                                             options={"idempotency_key": f"customer-{wallet.anon_ref}"})
            wallet.stripe_customer_id = customer.id
            db.session.commit()
        session = c.v1.checkout.sessions.create(params={
            "mode": "payment", "customer": wallet.stripe_customer_id, "client_reference_id": wallet.anon_ref,
            "line_items": [{"quantity": 1, "price_data": {
                "currency": "usd", "unit_amount": amount_usd * 100,
                "product_data": {"name": f"{current_app.config['SITE_NAME']} prepaid balance"}}}],
            "success_url": success_url, "cancel_url": cancel_url,
            "metadata": {"wallet": wallet.anon_ref},
            "payment_intent_data": {"metadata": {"wallet": wallet.anon_ref}},
        })
    except stripe.StripeError as exc:
        log.warning("stripe: could not start a checkout (%s)", type(exc).__name__)
        raise ServiceError("Payments are not reachable right now. Nothing was charged; try again in a minute.") \
            from None
    return session.url


def refund(actor, entry: LedgerEntry, amount_usd: Decimal | None = None) -> str:
    """Ask Stripe to refund (part of) a top-up. The ledger entry comes with Stripe's
    webhook, as for a refund made in Stripe's own dashboard."""
    if entry.kind != "topup" or not entry.reference.startswith("pi_"):
        raise ServiceError("Only a card top-up can be refunded.")
    params: dict = {"payment_intent": entry.reference, "metadata": {"entry": str(entry.id)}}
    if amount_usd is not None:
        cents = int(Decimal(amount_usd) * 100)
        if cents <= 0 or cents * CENT_UNITS > entry.amount_units:
            raise ServiceError("A refund is more than nothing and at most the top-up's amount.")
        params["amount"] = cents
    stripe = _sdk()
    try:
        made = client().v1.refunds.create(params=params)
    except stripe.InvalidRequestError:
        raise ServiceError("Stripe refused this refund (already refunded in full?).") from None
    except stripe.StripeError as exc:
        log.warning("stripe: could not refund (%s)", type(exc).__name__)
        raise ServiceError("Payments are not reachable right now; nothing was refunded.") from None
    wallet = db.session.get(Wallet, entry.wallet_id)
    audit.record_event(actor, "billing:refund:requested", subject=wallet.user_id, entry_id=entry.id,
                       refund=made.id, team_id=wallet.team_id)
    return made.id


# ---- the webhook ----------------------------------------------------------------------------

def handle_webhook(payload: bytes, signature: str | None) -> tuple[int, str]:
    """(status, short reason) for one delivery."""
    secret = current_app.config["STRIPE_WEBHOOK_SECRET"]
    if not secret:
        return 404, "webhooks are not configured"
    if not signature:
        return 400, "missing signature"
    stripe = _sdk()
    try:
        stripe.Webhook.construct_event(payload, signature, secret)
        event = json.loads(payload)  # verified: read as plain data
    except (stripe.SignatureVerificationError, ValueError):
        return 400, "bad signature"
    if not isinstance(event, dict) or not isinstance(event.get("data"), dict) \
            or not isinstance(event["data"].get("object"), dict):
        return 400, "bad event"
    event_id, kind = event.get("id"), event.get("type")
    if not isinstance(event_id, str) or not EVENT_ID.fullmatch(event_id) or not isinstance(kind, str):
        return 400, "bad event"
    if db.session.get(StripeEvent, event_id) is not None:
        return 200, "already handled"
    obj = event["data"]["object"]
    receipts: list[LedgerEntry] = []
    try:
        db.session.add(StripeEvent(id=event_id, type=str(kind)[:64]))
        db.session.flush()  # a concurrent delivery of the same event stops here
        if kind in ("checkout.session.completed", "checkout.session.async_payment_succeeded"):
            receipts += _paid(obj)
        elif kind in ("refund.created", "refund.updated", "charge.refund.updated"):
            receipts += _refunded(obj)
        for entry in receipts:  # in the same transaction: a receipt for each entry, and only then
            wallet = db.session.get(Wallet, entry.wallet_id)
            db.session.refresh(wallet)
            billing_mail.queue_receipt(entry, wallet)
        db.session.commit()
    except sa.exc.IntegrityError:
        db.session.rollback()
        return 200, "already handled"
    except _Retry as exc:  # Stripe delivers again later
        db.session.rollback()
        return 503, str(exc)
    return 200, "ok"


class _Retry(Exception):
    """Stripe could not be asked about the event now; answering non-2xx makes it retry."""


def _wallet_of(metadata, fallback_ref=None) -> Wallet | None:
    ref = (metadata if isinstance(metadata, dict) else {}).get("wallet") or fallback_ref
    return wallets.by_ref(ref) if isinstance(ref, str) else None


def _paid(session) -> list[LedgerEntry]:
    if session.get("mode") != "payment" or session.get("payment_status") != "paid":
        return []  # an async payment still pending: its own "succeeded" event follows
    wallet = _wallet_of(session.get("metadata"), session.get("client_reference_id"))
    pi_id = session.get("payment_intent")
    pi_id = pi_id.get("id") if isinstance(pi_id, dict) else pi_id
    amount = session.get("amount_total")
    if wallet is None or not isinstance(pi_id, str) or not isinstance(amount, int) or amount <= 0:
        log.warning("stripe: a paid checkout session names no wallet of ours; ignored")
        return []
    if session.get("currency") != "usd":
        log.warning("stripe: a paid checkout session is not in USD; ignored")
        return []
    stripe = _sdk()
    try:
        pi = client().v1.payment_intents.retrieve(pi_id, params={"expand": ["payment_method"]}).to_dict()
        shown = card_display(pi.get("payment_method"))
    except stripe.StripeError as exc:
        raise _Retry(f"payment intent unavailable ({type(exc).__name__})") from None
    if shown:
        wallet.payment_method = shown
    memo = f"Card payment · {shown}" if shown else "Card payment"
    entry = wallets.post(wallet.id, "topup", amount * CENT_UNITS, pi_id, memo)
    return [entry] if entry else []


def _refunded(refund_obj) -> list[LedgerEntry]:
    if refund_obj.get("object") != "refund" or refund_obj.get("status") != "succeeded":
        return []
    pi_id, amount, refund_id = refund_obj.get("payment_intent"), refund_obj.get("amount"), refund_obj.get("id")
    if not isinstance(pi_id, str) or not isinstance(amount, int) or amount <= 0 or not isinstance(refund_id, str):
        return []
    stripe = _sdk()
    try:
        pi = client().v1.payment_intents.retrieve(pi_id).to_dict()
    except stripe.StripeError as exc:
        raise _Retry(f"payment intent unavailable ({type(exc).__name__})") from None
    wallet = _wallet_of(pi.get("metadata"))
    if wallet is None:
        return []
    entry = wallets.post(wallet.id, "refund", -amount * CENT_UNITS, refund_id, "Refund to card")
    return [entry] if entry else []
