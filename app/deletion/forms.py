"""Forms for asking to delete an account: a typed word and a ticked box, so a
stray click cannot start it."""
from wtforms import BooleanField, StringField
from wtforms.validators import ValidationError

from app.forms import Form

CONFIRM_WORD = "DELETE"


class DeleteRequestForm(Form):
    word = StringField(f"Type {CONFIRM_WORD} to confirm",
                       render_kw={"autocomplete": "off", "autocapitalize": "characters", "spellcheck": "false"})
    understand = BooleanField("I understand that my account, keys and personal data will be erased "
                              "when the grace period ends")

    def validate_word(self, field):
        if (field.data or "").strip() != CONFIRM_WORD:
            raise ValidationError(f"Type the word {CONFIRM_WORD} in capital letters.")

    def validate_understand(self, field):
        if not field.data:
            raise ValidationError("Tick the box to confirm that you understand.")
