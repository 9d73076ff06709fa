"""Forms of the staff area (the privacy queue, billing). Each bad input gets
its own message next to its field; the services re-check every rule."""
from __future__ import annotations

from datetime import date, datetime, time, timezone
from decimal import Decimal

from wtforms import EmailField, HiddenField, RadioField, SelectField, StringField, TextAreaField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, Length, ValidationError

from app.forms import Form
from app.models.privacy import OUTCOMES, REQUEST_KINDS
from app.models.types import utcnow
from app.numbers import NotDollars, parse_dollars
from app.services.privacy import KIND_LABELS, MAX_DETAILS, MAX_REASON, OUTCOME_LABELS
from app.services.wallets import MAX_ADJUSTMENT_USD
from app.staff.queue import MAX_NOTE, OFFLINE_CHANNELS


def today() -> date:
    return datetime.now(timezone.utc).date()


class FileRequestForm(Form):
    email = EmailField("The person's email address", validators=[
        DataRequired("Enter the address of the account the request is about.")],
        render_kw={"autocomplete": "off", "spellcheck": "false"})
    kind = SelectField("What they ask for",
                       choices=[SelectChoice("", "Choose…"),
                                *(SelectChoice(k, KIND_LABELS[k]) for k in REQUEST_KINDS)],
                       validators=[DataRequired("Choose what kind of request this is.")])
    channel = SelectField("Received by", choices=[SelectChoice(k, v) for k, v in OFFLINE_CHANNELS.items()],
                          default="email")
    received = StringField("Date received", render_kw={"type": "date"})
    details = TextAreaField("Their request, in their words (optional)", validators=[
        Length(max=MAX_DETAILS, message=f"Keep it under {MAX_DETAILS} characters.")], render_kw={"rows": 4})

    received_at: datetime | None = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.received.render_kw = {**self.received.render_kw, "max": today().isoformat()}
        if not self.received.data:
            self.received.data = today().isoformat()

    def validate_received(self, field):
        """The due date runs from receipt. Today means now; an earlier day
        means the start of that day (UTC), which never makes a request later."""
        raw = (field.data or "").strip()
        try:
            day = date.fromisoformat(raw)
        except ValueError:
            raise ValidationError("Enter the date received as YYYY-MM-DD.") from None
        if day > today():
            raise ValidationError("The date received cannot be in the future.")
        if day.year < 2000:
            raise ValidationError("Enter the date the request arrived.")
        self.received_at = utcnow() if day == today() else datetime.combine(day, time(0), tzinfo=timezone.utc)


class StaffCheckForm(Form):
    note = StringField("How you checked their identity", id="check-note", validators=[
        DataRequired("Say how you checked the person's identity."),
        Length(max=MAX_NOTE, message=f"Keep the note under {MAX_NOTE} characters.")],
        render_kw={"maxlength": MAX_NOTE})


class ExtendForm(Form):
    reason = TextAreaField("Reason for the extension (sent to the person)", id="extend-reason", validators=[
        DataRequired("Give the reason for the extension; the person is told."),
        Length(max=MAX_REASON, message=f"Keep the reason under {MAX_REASON} characters.")], render_kw={"rows": 3})


class CloseForm(Form):
    outcome = RadioField("Outcome", id="close-outcome",
                         choices=[SelectChoice(o, OUTCOME_LABELS[o].capitalize()) for o in OUTCOMES],
                         validate_choice=False)
    reason = TextAreaField("Reason (sent to the person)", id="close-reason", validators=[
        DataRequired("Give a reason; the person receives it by email."),
        Length(max=MAX_REASON, message=f"Keep the reason under {MAX_REASON} characters.")], render_kw={"rows": 3})

    def validate_outcome(self, field):
        if field.data not in OUTCOMES:
            raise ValidationError("Choose an outcome: done, refused or partly done.")


class RectifyForm(Form):
    name = StringField("Name", validators=[Length(max=120, message="Name can be at most 120 characters.")])
    company = StringField("Company", validators=[Length(max=120, message="Company can be at most 120 characters.")])


# ---- billing -------------------------------------------------------------------------

def dollars(raw: str | None) -> Decimal:
    """A typed dollar amount ("-2.50", "$5"), exact, in cents at most."""
    try:
        value = parse_dollars(raw)
    except NotDollars as exc:
        if exc.reason == "cents":
            raise ValidationError("Enter the amount in cents at most: two decimals, such as 2.50.") from None
        value = None
    if value is None:
        raise ValidationError("Enter an amount in dollars, such as 5 or -2.50.")
    return value


class BillingLookupForm(Form):
    who = StringField("Account email address or wallet id", validators=[
        DataRequired("Enter an account's email address, or a wallet id (w_ and 16 characters)."),
        Length(max=320, message="That is longer than any address.")],
        render_kw={"autocomplete": "off", "spellcheck": "false"})


MIN_ADJUST_REASON, MAX_ADJUST_REASON = 5, 200  # wallets.adjust's bounds: the owners see the reason


class AdjustForm(Form):
    amount = StringField("Amount in dollars (negative takes money out)", id="adjust-amount", validators=[
        DataRequired("Enter the amount, such as 5 or -2.50.")], render_kw={"inputmode": "decimal"})
    reason = TextAreaField("Reason (the wallet's owners see it)", id="adjust-reason", validators=[
        DataRequired("Give the reason for the adjustment; the wallet's owners see it."),
        Length(min=MIN_ADJUST_REASON, max=MAX_ADJUST_REASON,
               message=f"Give a reason of {MIN_ADJUST_REASON} to {MAX_ADJUST_REASON} characters.")],
        render_kw={"rows": 2, "maxlength": MAX_ADJUST_REASON})
    confirmed = HiddenField()

    value: Decimal | None = None

    def validate_amount(self, field):
        value = dollars(field.data)
        if value == 0:
            raise ValidationError("An adjustment of $0 changes nothing; enter a non-zero amount.")
        if abs(value) > MAX_ADJUSTMENT_USD:
            raise ValidationError(f"An adjustment is at most ${MAX_ADJUSTMENT_USD:,} either way.")
        self.value = value

    def validate_reason(self, field):
        if len((field.data or "").strip()) < MIN_ADJUST_REASON:
            raise ValidationError(f"Give a reason of {MIN_ADJUST_REASON} to {MAX_ADJUST_REASON} characters.")


class RefundForm(Form):
    amount = StringField("Amount to refund in dollars (empty: the whole top-up)", id="refund-amount",
                         render_kw={"inputmode": "decimal"})

    limit: Decimal = Decimal(0)  # the top-up's amount, set by the view
    value: Decimal | None = None  # None: all of it

    def validate_amount(self, field):
        if not (field.data or "").strip():
            self.value = None
            return
        value = dollars(field.data)
        if value <= 0 or value > self.limit:
            raise ValidationError(f"Refund more than $0 and at most the top-up's ${self.limit:,.2f}.")
        self.value = value
