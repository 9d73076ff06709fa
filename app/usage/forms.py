"""The usage filter: a GET form, so it is parsed here by hand rather than by WTForms.

A filter link is shared, bookmarked and edited by hand, so a bad value is never
an error page: it is dropped, and the person is told which one and why. The
same parse serves the page, its htmx fragment and both downloads, so a link
and a download of it always mean the same rows.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta

from werkzeug.datastructures import MultiDict

from app.numbers import MAX_ID, parse_int
from app.relay.pipeline import PROJECT_RE, TAG_RE
from app.services.usage import MAX_ROW_ID, Cursor, UsageFilters

STATUSES = {"ok": "Succeeded (2xx)", "error": "Failed"}
EARLIEST, LATEST = date(2000, 1, 1), date(9000, 12, 31)
DEFAULT_DAYS = 30  # the range when no dates are given: today and the 29 days before
CURSOR_RE = re.compile(r"([0-9]{8}T[0-9]{6}\.[0-9]{6}Z)_([0-9]{1,19})")


@dataclass
class ParsedQuery:
    filters: UsageFilters
    notes: list[str] = field(default_factory=list)
    after: Cursor | None = None       # show the rows older than this one
    before: Cursor | None = None      # show the rows newer than this one
    default_range: bool = False       # no dates were given: the last DEFAULT_DAYS days

    @property
    def narrowed(self) -> bool:
        """Whether the person chose any filter (the default range is not one)."""
        f = self.filters
        return replace(f, date_from=None, date_to=None).active or not self.default_range

    def params(self, **extra) -> dict:
        """The query string of this view (valid values only), for links that
        keep the filters: the pager, the downloads, the pushed address."""
        f = self.filters
        out = {"model": f.model, "key": f.api_key_id, "member": f.member_id, "project": f.project, "tag": f.tag,
               "status": f.status}
        if not self.default_range:
            out["from"] = f.date_from.isoformat() if f.date_from else None
            out["to"] = f.date_to.isoformat() if f.date_to else None
        out.update(extra)
        return {k: v for k, v in out.items() if v is not None}


def _date(raw: str, label: str, notes: list[str]) -> date | None:
    try:
        value = date.fromisoformat(raw)
    except ValueError:
        notes.append(f"The {label} date “{raw[:40]}” is not a date like 2025-01-31, so it was ignored.")
        return None
    if not EARLIEST <= value <= LATEST:
        notes.append(f"The {label} date {raw[:40]} is out of range, so it was ignored.")
        return None
    return value


def parse_cursor(raw: str | None) -> Cursor | None:
    """A pager position, `YYYYMMDDTHHMMSS.ffffffZ_<row id>`; anything else is None."""
    m = CURSOR_RE.fullmatch(raw or "")
    if not m:
        return None
    try:
        when = datetime.strptime(m.group(1), Cursor.FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None
    row_id = parse_int(m.group(2), minimum=1, maximum=MAX_ROW_ID)
    if row_id is None or not EARLIEST <= when.date() <= LATEST:
        return None
    return Cursor(when, row_id)


def _text(args: MultiDict, name: str) -> str:
    value = args.get(name)
    return value.strip() if isinstance(value, str) else ""


def parse(args: MultiDict, *, today: date, whole_team: bool = False) -> ParsedQuery:
    """The filters, the pager position and the notes about what was dropped.
    `whole_team`: the viewer sees every member's rows, so `member` applies."""
    notes: list[str] = []
    model = _text(args, "model") or None
    if model is not None and (len(model) > 100 or "\x00" in model):
        notes.append("That model name is not one the relay records, so it was ignored.")
        model = None

    key_raw = _text(args, "key")
    key_id = parse_int(key_raw, minimum=1, maximum=MAX_ID) if key_raw else None
    if key_raw and key_id is None:
        notes.append("That key is not one of yours, so it was ignored.")

    member_raw = _text(args, "member")
    member_id = parse_int(member_raw, minimum=1, maximum=MAX_ID) if member_raw else None
    if member_raw and not whole_team:
        notes.append("Only a team’s owners and admins can filter by member, so that filter was ignored.")
        member_id = None
    elif member_raw and member_id is None:
        notes.append("That member is not one of this team’s, so the filter was ignored.")

    project = _text(args, "project") or None
    if project is not None and not PROJECT_RE.fullmatch(project):
        notes.append("A project is 1–64 letters, digits or . _ : - (as the relay accepts it), so that one was ignored.")
        project = None

    tag = _text(args, "tag") or None
    if tag is not None and not TAG_RE.fullmatch(tag):
        notes.append("A tag is 1–32 letters, digits or . _ : = - (as the relay accepts it), so that one was ignored.")
        tag = None

    status = _text(args, "status") or None
    if status is not None and status not in STATUSES:
        notes.append("The status filter takes “ok” or “error”, so it was ignored.")
        status = None

    date_from = _date(_text(args, "from"), "start", notes) if _text(args, "from") else None
    date_to = _date(_text(args, "to"), "end", notes) if _text(args, "to") else None
    if date_from and date_to and date_from > date_to:
        date_from, date_to = date_to, date_from
        notes.append("The start date was after the end date, so the two were swapped.")
    default_range = date_from is None and date_to is None
    if default_range:
        date_from = today - timedelta(days=DEFAULT_DAYS - 1)

    after_raw, before_raw = _text(args, "after"), _text(args, "before")
    after, before = parse_cursor(after_raw), parse_cursor(before_raw)
    if (after_raw and after is None) or (before_raw and before is None) or (after and before):
        notes.append("That page link is not one this page made, so the newest requests are shown.")
        after = before = None

    filters = UsageFilters(model=model, api_key_id=key_id, member_id=member_id, project=project, tag=tag,
                           status=status, date_from=date_from, date_to=date_to)
    return ParsedQuery(filters, notes, after=after, before=before, default_range=default_range)
