"""Forms of the staff privacy queue. Each bad input gets its own message next
to its field; the services re-check every rule."""
from __future__ import annotations

from datetime import date, datetime, time, timezone

from wtforms import EmailField, RadioField, SelectField, StringField, TextAreaField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, Length, ValidationError

from app.forms import Form
from app.models.privacy import OUTCOMES, REQUEST_KINDS
from app.models.types import utcnow
from app.services.privacy import KIND_LABELS, MAX_DETAILS, MAX_REASON, OUTCOME_LABELS
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
