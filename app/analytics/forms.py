"""The analytics range picker: a GET form parsed by hand (as the usage filter).

A range link is bookmarked, shared and edited by hand, so a bad value is
never an error page: the page shows the default range with a message next to
the field at fault, and the person's input stays in the form to correct.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime

from werkzeug.datastructures import MultiDict

from app.services.analytics import (
    MAX_CUSTOM_DAYS,
    RANGES,
    Window,
    custom_window,
    preset_window,
)

DEFAULT = "30d"
EARLIEST = date(2000, 1, 1)
MAX_LEN = 40  # of a date as typed; anything longer is not one


@dataclass
class RangeForm:
    window: Window
    choice: str                      # "24h", "7d", "30d", "90d" or "custom"
    raw_from: str = ""               # as typed, shown back in the form
    raw_to: str = ""
    errors: dict[str, str] = field(default_factory=dict)  # field -> message

    def params(self) -> dict:
        """The query string of this view (valid values only)."""
        if self.choice == "custom" and not self.errors:
            return {"range": "custom", "from": self.raw_from, "to": self.raw_to}
        return {"range": self.choice if self.choice in RANGES else DEFAULT}


def _date(raw: str, label: str, errors: dict[str, str], name: str, today: date) -> date | None:
    if not raw:
        errors[name] = f"Enter the {label} date, like {today.isoformat()}."
        return None
    try:
        value = date.fromisoformat(raw) if len(raw) <= MAX_LEN else None
    except ValueError:
        value = None
    if value is None:
        errors[name] = f"The {label} date is not a date like {today.isoformat()}."
        return None
    if not EARLIEST <= value <= today:
        errors[name] = f"The {label} date must be between {EARLIEST.isoformat()} and today."
        return None
    return value


def parse(args: MultiDict, now: datetime, hourly_days: int) -> RangeForm:
    """The window the query string asks for, or the default one with messages."""
    choice = (args.get("range") or "").strip()
    raw_from = (args.get("from") or "").strip()[:MAX_LEN * 2]
    raw_to = (args.get("to") or "").strip()[:MAX_LEN * 2]
    if not choice:
        choice = "custom" if raw_from or raw_to else DEFAULT
    if choice in RANGES:
        return RangeForm(preset_window(choice, now), choice, raw_from, raw_to)
    if choice != "custom":
        return RangeForm(preset_window(DEFAULT, now), DEFAULT, raw_from, raw_to,
                         {"range": "Choose one of the ranges listed."})
    errors: dict[str, str] = {}
    today = now.date()
    first = _date(raw_from, "start", errors, "from", today)
    last = _date(raw_to, "end", errors, "to", today)
    if first and last and first > last:
        errors["to"] = "The end date is before the start date."
    elif first and last and (last - first).days + 1 > MAX_CUSTOM_DAYS:
        errors["to"] = f"A custom range covers at most {MAX_CUSTOM_DAYS} days."
    if errors or first is None or last is None:
        return RangeForm(preset_window(DEFAULT, now), "custom", raw_from, raw_to, errors)
    return RangeForm(custom_window(first, last, now, hourly_days), "custom", raw_from, raw_to)
