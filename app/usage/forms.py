"""The usage filter: a GET form, so it is parsed here by hand rather than by WTForms.

A filter link is shared, bookmarked and edited by hand, so a bad value is never
an error page: it is dropped, and the person is told which one and why.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

from werkzeug.datastructures import MultiDict

from app.numbers import MAX_ID, page_number, parse_int
from app.services.usage import UsageFilters

STATUSES = {"ok": "Succeeded (2xx)", "error": "Failed"}
EARLIEST, LATEST = date(2000, 1, 1), date(9000, 12, 31)


@dataclass
class ParsedQuery:
    filters: UsageFilters
    page: int
    notes: list[str] = field(default_factory=list)

    def params(self, **extra) -> dict:
        """The query string of this view, for pagination links (valid values only)."""
        f = self.filters
        out = {"model": f.model, "key": f.api_key_id, "status": f.status,
               "from": f.date_from.isoformat() if f.date_from else None,
               "to": f.date_to.isoformat() if f.date_to else None}
        out.update(extra)
        return {k: v for k, v in out.items() if v is not None}


def _date(raw: str, label: str, notes: list[str]) -> date | None:
    try:
        value = date.fromisoformat(raw)
    except ValueError:
        notes.append(f"The {label} date “{raw[:40]}” is not a date like 2025-01-31, so it was ignored.")
        return None
    if not EARLIEST <= value <= LATEST:
        notes.append(f"The {label} date {raw} is out of range, so it was ignored.")
        return None
    return value


def parse(args: MultiDict) -> ParsedQuery:
    notes: list[str] = []
    model = (args.get("model") or "").strip() or None
    if model is not None and (len(model) > 100 or "\x00" in model):
        notes.append("That model name is not one the relay records, so it was ignored.")
        model = None

    key_raw = (args.get("key") or "").strip()
    key_id = parse_int(key_raw, minimum=1, maximum=MAX_ID) if key_raw else None
    if key_raw and key_id is None:
        notes.append("That key is not one of yours, so it was ignored.")

    status = (args.get("status") or "").strip() or None
    if status is not None and status not in STATUSES:
        notes.append("The status filter takes “ok” or “error”, so it was ignored.")
        status = None

    date_from = _date(args["from"].strip(), "start", notes) if (args.get("from") or "").strip() else None
    date_to = _date(args["to"].strip(), "end", notes) if (args.get("to") or "").strip() else None
    if date_from and date_to and date_from > date_to:
        date_from, date_to = date_to, date_from
        notes.append("The start date was after the end date, so the two were swapped.")

    page = page_number(args.get("page"))
    return ParsedQuery(UsageFilters(model=model, api_key_id=key_id, status=status,
                                    date_from=date_from, date_to=date_to), page, notes)
