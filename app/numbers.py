"""Whole numbers from clients: one rule for URL segments, query strings, form
fields and cookies.

Python's `int()` and `str.isdigit()` are the wrong test for client text: they
accept digits of every script ('١٢', '１２'), and `isdigit()` also accepts
superscripts ('²') that `int()` then refuses with a ValueError. A huge value
parses fine but overflows the database driver (SQLite raises OverflowError
beyond 64 bits, PostgreSQL's INTEGER holds 32). Each was a 500. So every
number a client sends is read here: ASCII digits only, bounded, and anything
else is "no number", which the caller turns into a default, a form message
or a 404.
"""
from __future__ import annotations

import re
from decimal import Decimal

from flask import Flask
from werkzeug.routing import BaseConverter, ValidationError

# Every id in the schema is an SQL INTEGER (32-bit on PostgreSQL): a larger id
# cannot exist, so a URL holding one is simply not found.
MAX_ID = 2**31 - 1
_DIGITS = re.compile(r"[0-9]{1,18}")  # 18 ASCII digits always fit in 63 bits


def parse_int(raw: object, *, minimum: int = 0, maximum: int = MAX_ID) -> int | None:
    """The number `raw` spells in ASCII digits (surrounding spaces allowed),
    if it lies in [minimum, maximum]; otherwise None. No sign, no `_`, no
    exponent: what a person types into a number field or a link carries."""
    if not isinstance(raw, str):
        return None
    text = raw.strip(" \t")
    if not _DIGITS.fullmatch(text):
        return None
    value = int(text)
    return value if minimum <= value <= maximum else None


def page_number(raw: object, last: int = 1_000_000) -> int:
    """A page number from a query string: a bad or missing one means page 1,
    one past the end means the last page (an old bookmark still works)."""
    value = parse_int(raw, minimum=1)
    return 1 if value is None else min(value, last)


_DOLLARS = re.compile(r"-?[0-9]{1,15}(\.[0-9]{1,15})?([eE][+-]?[0-9]{1,3})?")
_UNBOUNDED = re.compile(r"[+-]?(nan|snan|inf|infinity)", re.IGNORECASE)


class NotDollars(ValueError):
    """Typed text that is no dollar amount: `reason` is "number" (not one),
    "cents" (finer than a cent) or "range" (NaN, infinity: past any bound), so
    each form can say which in its own words."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def parse_dollars(raw: object) -> Decimal | None:
    """A typed dollar amount ("-2.50", "$5", "1,000", "1e3"), exactly; None when
    nothing was typed. ASCII digits only, as for whole numbers: no NaN, no
    infinity, no digits of other scripts. The caller checks the range."""
    text = raw.strip().lstrip("$").replace(",", "").strip() if isinstance(raw, str) else ""
    if not text:
        return None
    if not _DOLLARS.fullmatch(text):
        raise NotDollars("range" if _UNBOUNDED.fullmatch(text) else "number")
    value = Decimal(text)
    if value.as_tuple().exponent < -2:
        raise NotDollars("cents")
    return value


class IntConverter(BaseConverter):
    """The app's `<int:...>` URL converter. Werkzeug's own matches `\\d+`,
    which in Python means digits of every script, and hands any size to the
    view; this one matches ASCII digits only, and a value beyond `max`
    (MAX_ID by default) does not match, so the route answers 404 and no view
    can receive an id the database would refuse."""

    regex = r"[0-9]{1,19}"
    part_isolating = True

    def __init__(self, map, min: int = 0, max: int = MAX_ID) -> None:  # noqa: A002 (werkzeug's names)
        super().__init__(map)
        self.min, self.max = min, max

    def to_python(self, value: str) -> int:
        number = parse_int(value, minimum=self.min, maximum=self.max)
        if number is None:
            raise ValidationError()
        return number

    def to_url(self, value: int) -> str:
        return str(int(value))


def init_app(app: Flask) -> None:
    """Before any blueprint is registered: rules bind their converter when added."""
    app.url_map.converters["int"] = IntConverter
