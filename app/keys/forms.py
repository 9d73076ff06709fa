"""Forms of the API keys pages. Each parses its raw text into the values the
keys service takes, so every bad input gets its own message next to its field."""
from __future__ import annotations

import re
from datetime import date, datetime, timedelta, timezone

from flask import current_app
from wtforms import PasswordField, StringField, TextAreaField
from wtforms.validators import DataRequired, InputRequired, Length, ValidationError

from app.forms import Form
from app.numbers import parse_int

MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,99}$")
MAX_MODELS = 50
MAX_LIMIT = 10_000_000


def tomorrow() -> date:
    return datetime.now(timezone.utc).date() + timedelta(days=1)


def public_models() -> list[str]:
    """The model names the relay serves (empty when no providers file is set)."""
    registry = current_app.extensions.get("relay_registry")
    return sorted(registry.models) if registry is not None else []


def _limit(field, what: str) -> int | None:
    raw = (field.data or "").strip().replace(",", "").replace("_", "")
    if not raw:
        return None
    value = parse_int(raw, maximum=2**63 - 1)
    if value is None:
        raise ValidationError(f"{what} must be a whole number, or empty for the account's limit.")
    if not 1 <= value <= MAX_LIMIT:
        raise ValidationError(f"{what} must be between 1 and {MAX_LIMIT:,}, or empty for the account's limit.")
    return value


class CreateKeyForm(Form):
    name = StringField("Name", validators=[
        DataRequired("Give the key a name, such as the app that will use it."),
        Length(max=100, message="Use at most 100 characters for the name.")],
        render_kw={"maxlength": 100, "autocomplete": "off", "spellcheck": "false"})
    expires = StringField("Expires on (optional)", render_kw={"type": "date"})
    models = TextAreaField("Allowed models (optional)", render_kw={"rows": 2, "spellcheck": "false"})
    rpm_limit = StringField("Requests per minute (optional)",
                            render_kw={"type": "number", "min": 1, "max": MAX_LIMIT, "inputmode": "numeric"})
    tpm_limit = StringField("Tokens per minute (optional)",
                            render_kw={"type": "number", "min": 1, "max": MAX_LIMIT, "inputmode": "numeric"})

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.expires.render_kw = {**self.expires.render_kw, "min": tomorrow().isoformat()}

    # Parsed values, set by the validators below.
    expires_at: datetime | None = None
    model_list: list[str] | None = None
    rpm: int | None = None
    tpm: int | None = None

    def validate_expires(self, field):
        raw = (field.data or "").strip()
        self.expires_at = None
        if not raw:
            return
        try:
            day = date.fromisoformat(raw)
        except ValueError:
            raise ValidationError("Enter the date as YYYY-MM-DD.") from None
        if day < tomorrow():
            raise ValidationError("The expiry date must be in the future.")
        # The key stops working as that day begins, in UTC.
        self.expires_at = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)

    def validate_models(self, field):
        names = [n.strip() for n in re.split(r"[,\n]", field.data or "") if n.strip()]
        names = list(dict.fromkeys(names))
        self.model_list = None
        if not names:
            return
        if len(names) > MAX_MODELS:
            raise ValidationError(f"List at most {MAX_MODELS} models.")
        bad = [n for n in names if not MODEL_NAME_RE.match(n)]
        if bad:
            raise ValidationError(f"“{bad[0][:40]}” is not a model name: use the names listed by /v1/models.")
        known = public_models()
        unknown = [n for n in names if known and n not in known]
        if unknown:
            raise ValidationError(f"Unknown model: {', '.join(unknown[:5])}. "
                                  f"Available: {', '.join(known)}.")
        self.model_list = names

    def validate_rpm_limit(self, field):
        self.rpm = _limit(field, "Requests per minute")

    def validate_tpm_limit(self, field):
        self.tpm = _limit(field, "Tokens per minute")


class RenameKeyForm(Form):
    name = StringField("Name", validators=[
        DataRequired("Give the key a name, such as the app that will use it."),
        Length(max=100, message="Use at most 100 characters for the name.")])


class RevealForm(Form):
    """Reveal asks for the password every time (P11), not only outside the
    re-authentication window: holding a session is not knowing the password."""
    password = PasswordField("Your password", validators=[InputRequired("Enter your password.")])
    code = StringField("Authentication code", render_kw={"autocomplete": "one-time-code",
                                                          "inputmode": "numeric"})
