"""The base of every form in the app: it reads form fields and nothing else.

Flask-WTF's FlaskForm falls back to `request.get_json()` when a POST has no
form fields, and hands whatever JSON arrived to the fields: an array or a
number made `ImmutableMultiDict()` raise, and `{"email": 5}` gave a field a
non-string that every `.strip()` after it tripped on. A signed-out
`POST /login` with its own `X-CSRFToken` header and a JSON body was a 500,
on dozens of routes. No form here takes JSON, so `Form` reads only
`request.form`, and a submitted body that is not a form at all (JSON, text,
anything but urlencoded or multipart) is answered 415 before the view uses
the form: read as an empty form it would have passed where empty is valid
(clearing a profile field), and bad input must lose nothing.

Text that cannot be stored is refused on every field, too: a NUL character
is accepted by SQLite but refused by PostgreSQL mid-flush (and no name,
message or address has one), so it gets a field message instead of a 500.

`tests/web/test_odd_input.py` asserts that every form in the app derives
from `Form`.
"""
from __future__ import annotations

from flask import request
from flask_wtf import FlaskForm
from flask_wtf.form import _Auto
from werkzeug.exceptions import UnsupportedMediaType

FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")

NUL_MESSAGE = "This field contains a character that is not allowed."


class Form(FlaskForm):
    class Meta(FlaskForm.Meta):
        def wrap_formdata(self, form, formdata):
            if formdata is not _Auto:  # given by the caller (request.args for a GET form, or None)
                return formdata
            if not form.is_submitted():
                return None
            if request.mimetype not in FORM_TYPES and (request.content_length or request.mimetype):
                raise UnsupportedMediaType("This address takes a form sent by the page, not "
                                           f"{request.mimetype or 'a body of unknown type'}.")
            return request.form or None

    def validate(self, extra_validators=None) -> bool:
        """No field may hold a NUL character: such a form is refused with a
        message on each field that has one, before any validator or handler
        sees the text."""
        refused = False
        for field in self._fields.values():
            if any(isinstance(v, str) and "\x00" in v for v in (field.raw_data or ())):
                field.errors = [NUL_MESSAGE]
                refused = True
        if refused:
            return False
        return super().validate(extra_validators)


class EmptyForm(Form):
    """A submit-only form: every state-changing button still carries CSRF."""

