"""Forms of the Billing page, and the parse of its ledger filter.

Each form turns what was typed into the value its service takes, so every bad
input gets its own message next to its field and nothing typed is lost. The
ledger filter is a GET form, shared and bookmarked, so a bad value in it is
dropped with a note rather than answered with an error page (as on the usage
page).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

from flask import current_app
from werkzeug.datastructures import MultiDict
from wtforms import HiddenField, RadioField, StringField
from wtforms.validators import ValidationError

from app.forms import Form
from app.models.billing import BUDGET_SCOPES, LEDGER_KINDS, to_units
from app.numbers import MAX_ID, NotDollars, page_number, parse_dollars, parse_int
from app.usage.forms import _date  # the same date filter as the usage page

PRESETS = (10, 25, 50, 100)
OTHER = "other"
MAX_LOW_BALANCE_USD = Decimal(100_000)
KIND_LABELS = {"topup": "Top-up", "charge": "Charge", "refund": "Refund", "adjustment": "Adjustment"}


def bounds() -> tuple[int, int]:
    """The deployment's smallest and largest top-up, in whole dollars."""
    return current_app.config["TOPUP_MIN_USD"], current_app.config["TOPUP_MAX_USD"]


def presets() -> list[int]:
    """The preset amounts this deployment accepts."""
    lo, hi = bounds()
    return [p for p in PRESETS if lo <= p <= hi]


def _money_text(raw: str | None) -> str:
    return (raw or "").strip().lstrip("$").replace(",", "").strip()


class TopUpForm(Form):
    """A preset amount or another one, in whole dollars within the bounds."""

    amount = RadioField("Amount", choices=[], validate_choice=False)
    other = StringField("Other amount ($)", render_kw={"type": "number", "inputmode": "numeric", "step": 1,
                                                       "autocomplete": "off"})

    usd: int | None = None  # the amount chosen, once validated

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        lo, hi = bounds()
        self.amount.choices = [(str(p), f"${p}") for p in presets()] + [(OTHER, "Other amount")]
        self.other.render_kw = {**self.other.render_kw, "min": lo, "max": hi}

    def _range_message(self) -> str:
        lo, hi = bounds()
        return f"Choose an amount from ${lo:,} to ${hi:,}, in whole dollars."

    def validate(self, extra_validators=None) -> bool:
        """A preset, or the other amount when "Other amount" is chosen (or
        nothing is and it was typed); both at once, differing, is asked about."""
        self.usd = None
        if not super().validate(extra_validators):
            return False
        choice = self.amount.data if isinstance(self.amount.data, str) else ""
        typed = _money_text(self.other.data)
        if choice and choice != OTHER:
            if choice not in {str(p) for p in presets()}:
                self.amount.errors = ["Choose one of the amounts shown, or “Other amount”."]
                return False
            if typed and typed != choice:
                self.amount.errors = [f"You chose ${choice} and also typed another amount: choose "
                                      "“Other amount” to pay that instead, or clear it."]
                return False
            self.usd = int(choice)
            return True
        if not typed:
            if choice == OTHER:
                self.other.errors = [f"Enter the amount to add. {self._range_message()}"]
            else:
                self.amount.errors = ["Choose an amount to add."]
            return False
        value = parse_int(typed.removesuffix(".00"), maximum=10**12)
        if value is None:
            self.other.errors = [f"Enter the amount as a whole number of dollars, such as 20. "
                                 f"{self._range_message()}"]
            return False
        lo, hi = bounds()
        if not lo <= value <= hi:
            self.other.errors = [self._range_message()]
            return False
        self.usd = value
        return True


class LowBalanceForm(Form):
    """The balance under which a low-balance alert is mailed; 0 turns it off."""

    threshold = StringField("Alert me when the balance falls below ($)",
                            render_kw={"type": "number", "inputmode": "decimal", "step": "0.01", "min": 0,
                                       "max": int(MAX_LOW_BALANCE_USD), "autocomplete": "off"})

    units: int | None = None

    def validate_threshold(self, field):
        out_of_range = f"Enter an amount from $0 to ${MAX_LOW_BALANCE_USD:,.0f}, in cents (0 turns the alert off)."
        try:
            value = parse_dollars(field.data)
        except NotDollars as exc:
            raise ValidationError(out_of_range if exc.reason in ("cents", "range") else
                                  "Enter an amount in dollars, such as 5 or 2.50, or 0 to turn the alert off.") \
                from None
        if value is None:
            raise ValidationError("Enter an amount in dollars, or 0 to turn the alert off.")
        if not 0 <= value <= MAX_LOW_BALANCE_USD:
            raise ValidationError(out_of_range)
        self.units = to_units(value)


class BudgetForm(Form):
    """One line of the spending limits: which limit, and its two amounts. The
    amounts are parsed by the budgets service, which words its own messages."""

    scope = HiddenField()
    key_id = HiddenField()
    member_id = HiddenField()
    monthly = StringField("Monthly limit ($)")
    total = StringField("Total limit ($)")
    confirm = HiddenField()

    def which(self) -> tuple[str | None, int | None, int | None]:
        """(scope, key id, member id) as sent; a scope or id that cannot be one is None."""
        scope = self.scope.data if self.scope.data in BUDGET_SCOPES else None
        return (scope, parse_int(self.key_id.data, minimum=1, maximum=MAX_ID),
                parse_int(self.member_id.data, minimum=1, maximum=MAX_ID))

    @property
    def empty(self) -> bool:
        return not _money_text(self.monthly.data) and not _money_text(self.total.data)


class RemoveBudgetForm(Form):
    """The confirmation page's form: it names the limit and says "yes"."""

    scope = HiddenField()
    key_id = HiddenField()
    member_id = HiddenField()
    confirm = HiddenField(default="1")


# ---- the ledger filter ----------------------------------------------------------------------

@dataclass
class LedgerQuery:
    kind: str | None = None
    date_from: date | None = None
    date_to: date | None = None
    page: int = 1
    notes: list[str] = field(default_factory=list)

    @property
    def start(self) -> datetime | None:
        return datetime.combine(self.date_from, time(), UTC) if self.date_from else None

    @property
    def end(self) -> datetime | None:
        """The first instant after the last day shown (the filter's days are whole UTC days)."""
        return datetime.combine(self.date_to + timedelta(days=1), time(), UTC) if self.date_to else None

    @property
    def narrowed(self) -> bool:
        return bool(self.kind or self.date_from or self.date_to)

    def filters(self) -> dict:
        return {"kind": self.kind, "start": self.start, "end": self.end}

    def params(self, **extra) -> dict:
        """The query string of this view (valid values only), for links that keep the filters."""
        out = {"kind": self.kind, "from": self.date_from.isoformat() if self.date_from else None,
               "to": self.date_to.isoformat() if self.date_to else None}
        out.update(extra)
        return {k: v for k, v in out.items() if v is not None}


def _arg(args: MultiDict, name: str) -> str:
    value = args.get(name)
    return value.strip() if isinstance(value, str) else ""


def parse_ledger(args: MultiDict) -> LedgerQuery:
    """The ledger's filters and page, with a note for each value that was dropped."""
    q = LedgerQuery()
    kind = _arg(args, "kind")
    if kind and kind != "all":
        if kind in LEDGER_KINDS:
            q.kind = kind
        else:
            q.notes.append("The kind filter takes topup, charge, refund or adjustment, so it was ignored.")
    if _arg(args, "from"):
        q.date_from = _date(_arg(args, "from"), "start", q.notes)
    if _arg(args, "to"):
        q.date_to = _date(_arg(args, "to"), "end", q.notes)
    if q.date_from and q.date_to and q.date_from > q.date_to:
        q.date_from, q.date_to = q.date_to, q.date_from
        q.notes.append("The start date was after the end date, so the two were swapped.")
    q.page = page_number(_arg(args, "page"))
    return q
