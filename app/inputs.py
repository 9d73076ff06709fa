"""What every request may carry, made safe once for the whole portal.

Two defects of the same kind, each a 500 before any view could help:

- werkzeug's multipart parser hands a part with a malformed Content-Disposition
  to `request.form` under the key `None`; Flask-WTF's CSRF check then calls
  `key.endswith(...)` on it, for anyone, signed in or not. `request.form` and
  `request.files` keep only named parts.
- A NUL character is stored by SQLite but refused by PostgreSQL mid-query: a
  `%00` in a query string (the staff audit search) was a 500 there. No query
  parameter of ours can hold one, so `request.args` leaves out any parameter
  whose name or value has a NUL; the view sees it as absent, which is how the
  portal already treats a bad filter in a hand-edited link (it falls back).
  (Form fields get a message on the field instead: app/forms.py.)
"""
from __future__ import annotations

from flask import Flask
from flask import Request as FlaskRequest
from werkzeug.formparser import FormDataParser
from werkzeug.utils import cached_property


class _NamedPartsOnly(FormDataParser):
    def parse(self, *args, **kwargs):
        stream, form, files = super().parse(*args, **kwargs)
        if None in form:
            form = self.cls((k, v) for k, v in form.items(multi=True) if isinstance(k, str))
        if None in files:
            files = self.cls((k, v) for k, v in files.items(multi=True) if isinstance(k, str))
        return stream, form, files


class Request(FlaskRequest):
    """Flask's request, whose form holds only named fields and whose query
    string holds no NUL."""
    form_data_parser_class = _NamedPartsOnly

    @cached_property
    def args(self):
        parsed = FlaskRequest.args.fget(self)
        if not any("\x00" in k or "\x00" in v for k, v in parsed.items(multi=True)):
            return parsed
        return self.parameter_storage_class(
            (k, v) for k, v in parsed.items(multi=True) if "\x00" not in k and "\x00" not in v)


def init_app(app: Flask) -> None:
    app.request_class = Request
