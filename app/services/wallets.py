"""Prepaid wallets and their ledger (P41).

A wallet's balance is the sum of its ledger entries. Each entry is inserted
with the balance's change in one transaction, and `verify` checks the cached
balance (and what requests in flight hold) against the entries and holds
they come from. Entries are never changed or removed: the database refuses
it (app/models/billing.py), so a wrong entry is answered by a new one (a staff
adjustment with its reason, audited).

Request charges are written by the usage writer with the usage rows
(app/services/spend.py); top-ups and refunds by the Stripe webhook
(app/services/stripe_billing.py).
"""
from __future__ import annotations

import secrets
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from app.extensions import db
from app.models import BudgetReservation, LedgerEntry, SpendCounter, Wallet
from app.models.billing import LEDGER_KINDS, to_units, to_usd
from app.models.types import utcnow
from app.numbers import NotDollars, parse_dollars
from app.services import ServiceError, audit

MAX_ADJUSTMENT_USD = 100_000


def of(user_id: int | None = None, team_id: int | None = None) -> Wallet | None:
    if team_id is not None:
        return db.session.scalar(sa.select(Wallet).where(Wallet.team_id == team_id))
    return db.session.scalar(sa.select(Wallet).where(Wallet.user_id == user_id))


def open_for(user_id: int | None = None, team_id: int | None = None) -> Wallet:
    """The wallet of an account (or a team), made on first use. Two requests
    making it at once: the unique column lets one win, the other reads it."""
    found = of(user_id, team_id)
    if found is not None:
        return found
    wallet = Wallet(user_id=None if team_id is not None else user_id, team_id=team_id,
                    anon_ref="w_" + secrets.token_hex(8), balance_units=0, reserved_units=0)
    try:
        with db.session.begin_nested():
            db.session.add(wallet)
    except sa.exc.IntegrityError:
        found = of(user_id, team_id)
        if found is None:
            raise
        return found
    return wallet


def by_ref(anon_ref: str) -> Wallet | None:
    return db.session.scalar(sa.select(Wallet).where(Wallet.anon_ref == anon_ref))


def post(wallet_id: int, kind: str, amount_units: int, reference: str, memo: str | None,
         now: datetime | None = None) -> LedgerEntry | None:
    """Add one entry and move the balance with it, in the caller's transaction.
    None when an entry of this kind and reference is already there (a replay)."""
    if kind not in LEDGER_KINDS:
        raise ValueError(kind)
    exists = db.session.scalar(sa.select(LedgerEntry.id).where(LedgerEntry.kind == kind,
                                                                LedgerEntry.reference == reference))
    if exists is not None:
        return None
    entry = LedgerEntry(wallet_id=wallet_id, kind=kind, amount_units=amount_units, reference=reference,
                        memo=memo, created_at=now or utcnow())
    db.session.add(entry)
    db.session.flush()  # the unique (kind, reference) decides here, before the balance moves
    db.session.execute(sa.update(Wallet).where(Wallet.id == wallet_id)
                       .values(balance_units=Wallet.balance_units + amount_units)
                       .execution_options(synchronize_session=False))
    return entry


def adjust(staff, wallet: Wallet, amount_usd: str, reason: str) -> LedgerEntry:
    """A staff member's correction, with the reason shown to the wallet's owners, audited."""
    reason = (reason or "").strip()
    if not 5 <= len(reason) <= 200:
        raise ServiceError("Give a reason of 5 to 200 characters; the account's owners see it.")
    bounds = f"The amount must be non-zero, in cents, and at most ${MAX_ADJUSTMENT_USD:,}."
    try:
        amount = parse_dollars(str(amount_usd))
    except NotDollars as exc:
        raise ServiceError(bounds if exc.reason == "cents"
                           else "The amount must be a number of dollars, such as 5 or -2.50.") from None
    if amount is None:
        raise ServiceError("The amount must be a number of dollars, such as 5 or -2.50.")
    if amount == 0 or abs(amount) > MAX_ADJUSTMENT_USD:
        raise ServiceError(bounds)
    entry = post(wallet.id, "adjustment", to_units(amount), "adj_" + secrets.token_hex(10), reason)
    audit.record_event(staff, "billing:adjusted", subject=wallet.user_id, wallet=wallet.anon_ref,
                       team_id=wallet.team_id, amount=str(amount), entry_id=entry.id)
    return entry


def entries_query(wallet_id: int, kind: str | None = None, start: datetime | None = None,
                  end: datetime | None = None) -> sa.Select:
    q = sa.select(LedgerEntry).where(LedgerEntry.wallet_id == wallet_id)
    if kind:
        q = q.where(LedgerEntry.kind == kind)
    if start is not None:
        q = q.where(LedgerEntry.created_at >= start)
    if end is not None:
        q = q.where(LedgerEntry.created_at < end)
    return q.order_by(LedgerEntry.created_at.desc(), LedgerEntry.id.desc())


def page(wallet_id: int, page_no: int, per_page: int = 50, **filters) -> tuple[list[LedgerEntry], int]:
    q = entries_query(wallet_id, **filters)
    total = db.session.scalar(sa.select(sa.func.count()).select_from(q.order_by(None).subquery())) or 0
    rows = list(db.session.scalars(q.limit(per_page).offset((page_no - 1) * per_page)))
    return rows, total


def totals(wallet_id: int) -> dict[str, object]:
    """Sums by kind, for the page's summary."""
    out = {k: to_usd(0) for k in LEDGER_KINDS}
    for kind, units in db.session.execute(sa.select(LedgerEntry.kind, sa.func.sum(LedgerEntry.amount_units))
                                          .where(LedgerEntry.wallet_id == wallet_id).group_by(LedgerEntry.kind)):
        out[kind] = to_usd(int(units or 0))
    return out


# ---- verification -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Drift:
    what: str        # "wallet 3 balance", "counter key:5|2026-12 reserved"
    cached: int
    derived: int

    def __str__(self) -> str:
        return f"{self.what}: cached {to_usd(self.cached):f} USD, derived {to_usd(self.derived):f} USD"


def verify() -> list[Drift]:
    """Every cached figure against what it is derived from: each wallet's balance
    against the sum of its entries, and what each wallet and counter holds
    against the holds of requests in flight. Empty: no drift."""
    drifts = []
    sums = dict(db.session.execute(sa.select(LedgerEntry.wallet_id, sa.func.sum(LedgerEntry.amount_units))
                                   .group_by(LedgerEntry.wallet_id)).all())
    held_wallet: dict[int, int] = defaultdict(int)
    held_counter: dict[str, int] = defaultdict(int)
    for amount, counters, wallet_id in db.session.execute(
            sa.select(BudgetReservation.amount_units, BudgetReservation.counters, BudgetReservation.wallet_id)):
        if wallet_id is not None:
            held_wallet[wallet_id] += amount
        for name in filter(None, counters.split(",")):
            held_counter[name] += amount
    for w in db.session.scalars(sa.select(Wallet).order_by(Wallet.id)):
        derived = int(sums.get(w.id) or 0)
        if w.balance_units != derived:
            drifts.append(Drift(f"wallet {w.anon_ref} balance", w.balance_units, derived))
        if w.reserved_units != held_wallet.get(w.id, 0):
            drifts.append(Drift(f"wallet {w.anon_ref} reserved", w.reserved_units, held_wallet.get(w.id, 0)))
    for c in db.session.scalars(sa.select(SpendCounter).where(SpendCounter.reserved_units != 0)):
        name = f"{c.target}|{c.period}"
        if c.reserved_units != held_counter.get(name, 0):
            drifts.append(Drift(f"counter {name} reserved", c.reserved_units, held_counter.get(name, 0)))
    seen = {f"{c.target}|{c.period}" for c in db.session.scalars(sa.select(SpendCounter))}
    for name, amount in held_counter.items():
        if name not in seen:
            drifts.append(Drift(f"counter {name} reserved", 0, amount))
    return drifts
