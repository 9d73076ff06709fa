"""The staff side of the privacy request queue (P54, P55): listing and
filtering requests, filing one that came by email, the notices staff actions
send, and the summary of a person's data shown beside a request.

It builds on app.services.privacy (due dates, verification, closing,
restriction), which writes the audit rows. Like every service here it takes
explicit arguments, never touches `request`, and leaves the commit to the view.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime

import sqlalchemy as sa

from app.extensions import db
from app.models import ApiKey, AuditEvent, ConsentEvent, DataExport, PrivacyRequest, UsageRecord, User
from app.models.privacy import REQUEST_KINDS
from app.models.types import utcnow
from app.numbers import page_number
from app.services import ServiceError, accounts, mail, privacy
from app.services.audit import record_event

PER_PAGE = 25
AUDIT_PER_PAGE = 50
STATUSES = ("open", "closed", "cancelled", "all")
SORTS = {"due": "Due date, soonest first", "received": "Received, newest first"}
# Channels staff may file by hand: requests made in the portal or through the
# API file themselves.
OFFLINE_CHANNELS = {"email": "Email"}
MAX_NOTE = 300


# ---- the queue -------------------------------------------------------------------------

@dataclass
class QueueFilters:
    status: str = "open"
    kind: str = ""
    channel: str = ""
    overdue: bool = False
    sort: str = "due"
    page: int = 1

    @classmethod
    def parse(cls, args) -> QueueFilters:
        """Read the query string; anything unknown falls back to the default
        rather than failing, since these URLs are hand-edited and bookmarked."""
        f = cls()
        status = args.get("status", "open")
        f.status = status if status in STATUSES else "open"
        kind = args.get("kind", "")
        f.kind = kind if kind in REQUEST_KINDS else ""
        channel = args.get("channel", "")
        f.channel = channel if channel in privacy.REQUEST_CHANNELS else ""
        f.overdue = args.get("overdue") in ("1", "on", "true")
        sort = args.get("sort", "due")
        f.sort = sort if sort in SORTS else "due"
        f.page = page_number(args.get("page"))
        return f

    def params(self, **override) -> dict:
        """Query-string values for links (pager, sort), defaults left out."""
        values = {"status": self.status if self.status != "open" else None, "kind": self.kind or None,
                  "channel": self.channel or None, "overdue": "1" if self.overdue else None,
                  "sort": self.sort if self.sort != "due" else None, "page": self.page if self.page > 1 else None}
        values.update(override)
        return {k: v for k, v in values.items() if v is not None}

    @property
    def active(self) -> bool:
        return bool(self.status != "open" or self.kind or self.channel or self.overdue)


@dataclass
class Page:
    rows: list
    total: int
    page: int
    per_page: int

    @property
    def pages(self) -> int:
        return max(1, math.ceil(self.total / self.per_page))

    @property
    def first(self) -> int:
        return (self.page - 1) * self.per_page + 1


def _paginate(query, page: int, per_page: int) -> Page:
    total = db.session.scalar(sa.select(sa.func.count()).select_from(query.order_by(None).subquery())) or 0
    pages = max(1, math.ceil(total / per_page))
    page = min(page, pages)  # a page past the end (old link): show the last one
    rows = db.session.execute(query.limit(per_page).offset((page - 1) * per_page)).all()
    return Page(rows=rows, total=total, page=page, per_page=per_page)


def queue_page(filters: QueueFilters, now: datetime | None = None) -> Page:
    """One page of requests with their person's email, as (request, email) rows."""
    now = now or utcnow()
    q = sa.select(PrivacyRequest, User.email).outerjoin(User, User.id == PrivacyRequest.user_id)
    if filters.status != "all":
        q = q.where(PrivacyRequest.status == filters.status)
    if filters.kind:
        q = q.where(PrivacyRequest.kind == filters.kind)
    if filters.channel:
        q = q.where(PrivacyRequest.channel == filters.channel)
    if filters.overdue:
        q = q.where(PrivacyRequest.status == "open", PrivacyRequest.due_at < now)
    if filters.sort == "received":
        q = q.order_by(PrivacyRequest.received_at.desc(), PrivacyRequest.id.desc())
    else:
        q = q.order_by(PrivacyRequest.due_at.asc(), PrivacyRequest.id.asc())
    return _paginate(q, filters.page, PER_PAGE)


def queue_counts(now: datetime | None = None) -> dict:
    now = now or utcnow()
    count = lambda *where: db.session.scalar(  # noqa: E731
        sa.select(sa.func.count(PrivacyRequest.id)).where(*where)) or 0
    return {"open": count(PrivacyRequest.status == "open"),
            "overdue": count(PrivacyRequest.status == "open", PrivacyRequest.due_at < now)}


# ---- filing a request received by email ------------------------------------------------

def file_offline(staff: User, email: str, kind: str, channel: str, received_at: datetime,
                 details: str | None, now: datetime | None = None) -> PrivacyRequest:
    """File a request that reached us outside the portal. It must belong to an
    account: the queue acts on accounts, and verification mails the account's
    own address. Raises ServiceError with a message for the email field."""
    accounts.normalize_email(email)  # a malformed address gets its own message
    user = accounts.find_by_email(email)
    if user is None:
        raise ServiceError("No account uses this address. Check it with the person; "
                           "a request must belong to an account.")
    if channel not in OFFLINE_CHANNELS:
        raise ServiceError("Unknown channel.")
    return privacy.open_request(user, kind, channel, details=details, actor=staff,
                                received_at=received_at, now=now)


# ---- notices ---------------------------------------------------------------------------

def extend(req: PrivacyRequest, staff: User, reason: str, now: datetime | None = None) -> None:
    """Extend once (the service enforces it) and tell the person the new due
    date and the reason, in the same transaction."""
    privacy.extend(req, staff, reason, now=now)
    user = db.session.get(User, req.user_id) if req.user_id else None
    if user is not None:
        mail.queue(user.email, "privacy:request:extended", f"Your privacy request #{req.id} needs more time",
                   "privacy_request_extended", user=user, req=req, kind_label=privacy.KIND_LABELS[req.kind])


def verify_by_staff_check(req: PrivacyRequest, staff: User, note: str, now: datetime | None = None) -> None:
    """Staff checked the person's identity themselves; how is required and
    goes into the audit row."""
    note = (note or "").strip()
    if not note:
        raise ServiceError("Say how you checked the person's identity.")
    if len(note) > MAX_NOTE:
        raise ServiceError(f"Keep the note under {MAX_NOTE} characters.")
    privacy.verify(req, staff, "staff_check", now=now, note=note)


# ---- carrying a request out ------------------------------------------------------------

def open_request_of(req: PrivacyRequest) -> User:
    """The account a request acts on, once the request may be carried out."""
    if not req.is_open:
        raise ServiceError("This request is closed.")
    privacy.require_verified(req)
    user = db.session.get(User, req.user_id) if req.user_id else None
    if user is None:
        raise ServiceError("The account of this request no longer exists.")
    return user


def rectify(req: PrivacyRequest, staff: User, name: str, company: str) -> list[str]:
    user = open_request_of(req)
    changed = accounts.update_profile(user, name=name, company=company)
    record_event(staff, "privacy:request:rectified", subject=user, request=req.id, fields=changed)
    return changed


def apply_objection(req: PrivacyRequest, staff: User) -> bool:
    """Objection to marketing: the consent is withdrawn with source "objection"."""
    user = open_request_of(req)
    changed = privacy.set_consent(user, "marketing_email", False, "objection")
    record_event(staff, "privacy:request:objection_applied", subject=user, request=req.id,
                 marketing_was_on=changed)
    return changed


# ---- what staff see about the person ---------------------------------------------------

@dataclass
class PersonSummary:
    user: User | None
    keys_active: int = 0
    keys_suspended: int = 0
    keys_revoked: int = 0
    usage_rows: int = 0
    consent_events: int = 0
    exports: int = 0
    other_requests: list = field(default_factory=list)


def person_summary(req: PrivacyRequest) -> PersonSummary:
    user = db.session.get(User, req.user_id) if req.user_id else None
    s = PersonSummary(user=user)
    if user is None:
        return s
    count = lambda q: db.session.scalar(q) or 0  # noqa: E731
    n_keys = sa.select(sa.func.count(ApiKey.id)).where(ApiKey.user_id == user.id)
    s.keys_revoked = count(n_keys.where(ApiKey.revoked_at.is_not(None)))
    s.keys_suspended = count(n_keys.where(ApiKey.revoked_at.is_(None), ApiKey.suspended_at.is_not(None)))
    s.keys_active = count(n_keys.where(ApiKey.revoked_at.is_(None), ApiKey.suspended_at.is_(None)))
    s.usage_rows = count(sa.select(sa.func.count(UsageRecord.id)).where(UsageRecord.user_id == user.id))
    s.consent_events = count(sa.select(sa.func.count(ConsentEvent.id)).where(ConsentEvent.user_id == user.id))
    s.exports = count(sa.select(sa.func.count(DataExport.id)).where(DataExport.user_id == user.id))
    s.other_requests = [r for r in privacy.requests_for(user) if r.id != req.id]
    return s


def request_history(req: PrivacyRequest) -> list[tuple[AuditEvent, dict]]:
    """The audit rows about this request, oldest first, with their details."""
    if req.user_id is None:
        return []
    rows = db.session.scalars(sa.select(AuditEvent).where(
        AuditEvent.subject_id == req.user_id, AuditEvent.event.like("privacy:%")).order_by(AuditEvent.id))
    out = []
    for row in rows:
        details = _details(row)
        if details.get("request") == req.id:
            out.append((row, details))
    return out


def _details(row: AuditEvent) -> dict:
    try:
        value = json.loads(row.details or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


# ---- the audit page --------------------------------------------------------------------

def audit_page(prefix: str, subject_id: int | None, page: int) -> Page:
    q = sa.select(AuditEvent)
    if prefix:
        escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        q = q.where(AuditEvent.event.like(escaped + "%", escape="\\"))
    if subject_id is not None:
        q = q.where(AuditEvent.subject_id == subject_id)
    return _paginate(q.order_by(AuditEvent.id.desc()), page, AUDIT_PER_PAGE)
