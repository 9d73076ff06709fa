"""Forms of the privacy center. Each bad input gets its own message next to its field."""
from __future__ import annotations

from wtforms import HiddenField, RadioField, SelectField, TextAreaField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import AnyOf, InputRequired, Length, ValidationError

from app.forms import Form
from app.privacy_center.prefs import RANGES, THEMES
from app.services.privacy import KIND_LABELS, MAX_DETAILS

# Export and deletion have their own pages; the rest are requests staff work.
FORM_KINDS = ("access", "rectify", "restrict", "object")
# What staff cannot act on without the person's own words.
DETAILS_NEEDED = {
    "rectify": "Tell us what is wrong and what it should say instead.",
    "object": "Tell us which processing you object to and why.",
}


class ConsentForm(Form):
    """The wanted state, not "toggle": a double click asks for the same state
    twice, and the second one changes nothing."""
    granted = HiddenField(validators=[AnyOf(["1", "0"], message="Choose on or off.")])


class PreferencesForm(Form):
    theme = RadioField("Theme", choices=[SelectChoice(k, v) for k, v in THEMES.items()],
                       validators=[InputRequired("Choose a theme.")])
    range_days = RadioField("Usage chart range", choices=[SelectChoice(str(d), f"{d} days") for d in RANGES],
                            validators=[InputRequired("Choose a chart range.")])


class RequestForm(Form):
    kind = SelectField("What are you asking for?", validate_choice=False,
                       choices=[SelectChoice("", "Choose…")] + [SelectChoice(k, KIND_LABELS[k]) for k in FORM_KINDS])
    details = TextAreaField("Details", validators=[
        Length(max=MAX_DETAILS, message=f"Keep the details under {MAX_DETAILS:,} characters.")],
        render_kw={"rows": 4, "maxlength": MAX_DETAILS})

    def validate_kind(self, field):
        if field.data not in FORM_KINDS:
            raise ValidationError("Choose what kind of request this is.")

    def validate_details(self, field):
        field.data = (field.data or "").strip()
        message = DETAILS_NEEDED.get(self.kind.data)
        if message and not field.data:
            raise ValidationError(message)
