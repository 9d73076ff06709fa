"""Wallets, their append-only ledger, budgets and what holds them (P26, P40, P41, P42).

Money is counted in *units* of 10⁻⁸ USD, the precision of a usage row's cost,
as integers in both engines: SQLite has no exact decimal type, and a balance
summed from floats would drift from its entries.
"""
from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from app.extensions import db
from app.models.types import UTCDateTime, utcnow

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
UNIT = Decimal("0.00000001")
UNITS_PER_USD = 100_000_000


def to_units(usd) -> int:
    """A dollar amount (Decimal, str, int) as whole units, rounded half up to the unit."""
    return int((Decimal(str(usd)) / UNIT).to_integral_value(rounding="ROUND_HALF_UP"))


def to_usd(units: int | None) -> Decimal:
    return (Decimal(units or 0) * UNIT).quantize(UNIT)


class Wallet(db.Model):
    """The prepaid balance of one account or one team (P41). Kept for ever, like
    its ledger: an erased account's wallet loses `user_id` and is known only by
    `anon_ref` from then on (P52). The balance is a cache of the ledger's sum,
    written in the same transaction as each entry (`flask billing verify`)."""

    __tablename__ = "wallets"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int | None] = mapped_column(sa.ForeignKey("users.id", ondelete="SET NULL"), unique=True)
    team_id: Mapped[int | None] = mapped_column(sa.Integer, unique=True)  # kept after the team is deleted
    anon_ref: Mapped[str] = mapped_column(sa.String(24), unique=True)
    # What P40 lets us keep of Stripe: the customer's id and the card's display form, never its number.
    stripe_customer_id: Mapped[str | None] = mapped_column(sa.String(64), unique=True)
    payment_method: Mapped[str | None] = mapped_column(sa.String(64))
    subscription_state: Mapped[str | None] = mapped_column(sa.String(32))  # no plans are sold yet
    balance_units: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    reserved_units: Mapped[int] = mapped_column(sa.BigInteger, default=0)  # held by requests in flight
    low_balance_units: Mapped[int] = mapped_column(sa.BigInteger, default=5 * UNITS_PER_USD)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    @property
    def balance(self) -> Decimal:
        return to_usd(self.balance_units)

    @property
    def available(self) -> Decimal:
        return to_usd(self.balance_units - self.reserved_units)


LEDGER_KINDS = ("topup", "charge", "refund", "adjustment")


class LedgerEntry(db.Model):
    """One movement of a wallet's money. The database refuses UPDATE and
    DELETE on these rows (triggers below, on SQLite and PostgreSQL): a
    mistake is corrected by another entry. `reference` makes each entry
    happen once: a payment's PaymentIntent, a refund's id, a request's id."""

    __tablename__ = "ledger_entries"
    __table_args__ = (sa.UniqueConstraint("kind", "reference", name="uq_ledger_entries_kind_reference"),
                      sa.Index("ix_ledger_entries_wallet_created", "wallet_id", "created_at"))

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    wallet_id: Mapped[int] = mapped_column(sa.ForeignKey("wallets.id"))
    kind: Mapped[str] = mapped_column(sa.String(12))
    amount_units: Mapped[int] = mapped_column(sa.BigInteger)  # credit > 0, debit < 0
    reference: Mapped[str] = mapped_column(sa.String(80))
    # Our words, never a client's: "Card payment", a model's name, a staff member's reason.
    memo: Mapped[str | None] = mapped_column(sa.String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    @property
    def amount(self) -> Decimal:
        return to_usd(self.amount_units)


# The append-only rule, in each engine's words; the migration and the test
# suite's table cleanup (which must empty the table) use the same text.
APPEND_ONLY_SQLITE = [
    "CREATE TRIGGER ledger_entries_no_update BEFORE UPDATE ON ledger_entries "
    "BEGIN SELECT RAISE(ABORT, 'ledger entries are append-only'); END",
    "CREATE TRIGGER ledger_entries_no_delete BEFORE DELETE ON ledger_entries "
    "BEGIN SELECT RAISE(ABORT, 'ledger entries are append-only'); END",
]
DROP_APPEND_ONLY_SQLITE = ["DROP TRIGGER IF EXISTS ledger_entries_no_update",
                           "DROP TRIGGER IF EXISTS ledger_entries_no_delete"]
APPEND_ONLY_POSTGRESQL = [
    "CREATE FUNCTION ledger_entries_append_only() RETURNS trigger LANGUAGE plpgsql AS "
    "$$ BEGIN RAISE EXCEPTION 'ledger entries are append-only' USING ERRCODE = 'insufficient_privilege'; END $$",
    "CREATE TRIGGER ledger_entries_append_only BEFORE UPDATE OR DELETE ON ledger_entries "
    "FOR EACH ROW EXECUTE FUNCTION ledger_entries_append_only()",
]
DROP_APPEND_ONLY_POSTGRESQL = ["DROP TRIGGER IF EXISTS ledger_entries_append_only ON ledger_entries",
                               "DROP FUNCTION IF EXISTS ledger_entries_append_only()"]


class StripeEvent(db.Model):
    """A webhook event handled once (P40): its id is the primary key, inserted in
    the transaction that acts on it, so a replay finds it and does nothing. A
    billing record: kept BILLING_RETENTION_YEARS."""

    __tablename__ = "stripe_events"

    id: Mapped[str] = mapped_column(sa.String(255), primary_key=True)
    type: Mapped[str] = mapped_column(sa.String(64))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)


BUDGET_SCOPES = ("key", "member", "team", "account")


class Budget(db.Model):
    """A spending limit (P26): a monthly amount (UTC calendar month) and/or a
    total, on one target: "key:<id>", "member:<team>:<user>", "team:<id>" or
    "account:<user>" (the account's own keys; team keys bill to the team)."""

    __tablename__ = "budgets"

    id: Mapped[int] = mapped_column(primary_key=True)
    target: Mapped[str] = mapped_column(sa.String(40), unique=True)
    scope: Mapped[str] = mapped_column(sa.String(8))
    user_id: Mapped[int | None] = mapped_column(sa.Integer, index=True)
    team_id: Mapped[int | None] = mapped_column(sa.Integer, index=True)
    api_key_id: Mapped[int | None] = mapped_column(sa.Integer, index=True)
    monthly_units: Mapped[int | None] = mapped_column(sa.BigInteger)
    total_units: Mapped[int | None] = mapped_column(sa.BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class SpendCounter(db.Model):
    """What a target has spent in a period ("2026-12", or "total") and what
    requests in flight hold of it. Admission adds to `reserved_units` with a
    conditional update (spent + reserved + this request's most <= limit); the
    usage writer moves a request's hold into `spent_units` with its row."""

    __tablename__ = "spend_counters"

    target: Mapped[str] = mapped_column(sa.String(40), primary_key=True)
    period: Mapped[str] = mapped_column(sa.String(8), primary_key=True)
    spent_units: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    reserved_units: Mapped[int] = mapped_column(sa.BigInteger, default=0)


class BudgetReservation(db.Model):
    """The hold of one request in flight: released by the usage writer when the
    request's row is written, or by the sweeper once its process stops
    renewing it (a killed worker)."""

    __tablename__ = "budget_reservations"

    request_id: Mapped[str] = mapped_column(sa.String(40), primary_key=True)
    amount_units: Mapped[int] = mapped_column(sa.BigInteger)
    counters: Mapped[str] = mapped_column(sa.String(400))  # "target|period" joined by ","
    wallet_id: Mapped[int | None] = mapped_column(sa.Integer)
    holder: Mapped[str] = mapped_column(sa.String(64), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    renewed_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)


ALERT_THRESHOLDS = (50, 80, 100)


class BudgetAlert(db.Model):
    """An alert that fired (P42): unique per target, period, kind and threshold,
    so concurrent charges send it once. `notified_at` is set in the
    transaction that queues its mail (the outbox)."""

    __tablename__ = "budget_alerts"
    __table_args__ = (sa.UniqueConstraint("target", "period", "kind", "threshold", name="uq_budget_alerts_once"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    target: Mapped[str] = mapped_column(sa.String(40))
    period: Mapped[str] = mapped_column(sa.String(24))
    kind: Mapped[str] = mapped_column(sa.String(12))  # monthly | total | low_balance
    threshold: Mapped[int] = mapped_column(sa.Integer)
    limit_units: Mapped[int] = mapped_column(sa.BigInteger)
    user_id: Mapped[int | None] = mapped_column(sa.Integer, index=True)
    team_id: Mapped[int | None] = mapped_column(sa.Integer, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    notified_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), index=True)
