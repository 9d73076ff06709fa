"""The core of the privacy center, shared by the person's pages, the staff
queue and the scheduled job: consents (P50), the request queue with its due
dates, verification and closing rules (P54), and restriction (P53).

Every function takes `now` so tests can run a controlled clock, adds its
audit row to the caller's transaction (P55), and leaves the commit to the
caller. Nothing here stores anything but the person's own data.
"""
from __future__ import annotations

from datetime import datetime, timedelta

import sqlalchemy as sa
from flask import current_app

from app.extensions import db
from app.models import ApiKey, ConsentEvent, PrivacyRequest, User
from app.models.privacy import CONSENT_PURPOSES, OUTCOMES, REQUEST_CHANNELS, REQUEST_KINDS
from app.models.types import utcnow
from app.services import ServiceError
from app.services.audit import record_event

MAX_DETAILS = 2000
MAX_REASON = 2000

KIND_LABELS = {
    "access": "See my data (access)",
    "export": "Export my data",
    "rectify": "Correct my data (rectification)",
    "delete": "Delete my account",
    "restrict": "Restrict processing",
    "object": "Object to processing",
}
OUTCOME_LABELS = {"done": "done", "refused": "refused", "partly": "partly done"}
VERIFICATION_METHODS = {
    "signed_in": "Made while signed in to the account",
    "fresh_login": "Confirmed with a fresh sign-in",
    "email_link": "Confirmation link sent to the account's address",
    "staff_check": "Checked by staff (method recorded in the note)",
}


# ---- consent (P50) ---------------------------------------------------------------------

def set_consent(user: User, purpose: str, granted: bool, source: str, now: datetime | None = None) -> bool:
    """Record a consent choice. Returns False (and records nothing) when it is
    already the current choice, so double clicks make no history noise."""
    if purpose not in CONSENT_PURPOSES:
        raise ServiceError("Unknown consent.")
    if getattr(user, purpose) == granted:
        return False
    if granted and purpose == "marketing_email" and user.restricted_at is not None:
        raise ServiceError("Marketing email stays off while your account is restricted.")
    from app.services.policy import current_version

    now = now or utcnow()
    setattr(user, purpose, granted)
    db.session.add(ConsentEvent(user_id=user.id, purpose=purpose, granted=granted, source=source,
                                policy_version_id=current_version().id, created_at=now))
    record_event(user, f"consent:{purpose}:{'given' if granted else 'withdrawn'}", source=source)
    return True


def consent_history(user: User) -> list[ConsentEvent]:
    return list(db.session.scalars(sa.select(ConsentEvent).where(ConsentEvent.user_id == user.id)
                                   .order_by(ConsentEvent.created_at.desc(), ConsentEvent.id.desc())))


# ---- the request queue (P54) -----------------------------------------------------------

def due_date(received_at: datetime) -> datetime:
    return received_at + timedelta(days=current_app.config["REQUEST_DUE_DAYS"])


def open_request(user: User | None, kind: str, channel: str, *, details: str | None = None,
                 actor=None, received_at: datetime | None = None, verified_method: str | None = None,
                 now: datetime | None = None) -> PrivacyRequest:
    """File a request. `received_at` may be earlier than now for one that came
    by email (the due date runs from receipt). A request made while signed in
    is verified by that session (`verified_method="signed_in"`)."""
    if kind not in REQUEST_KINDS:
        raise ServiceError("Choose what kind of request this is.")
    if channel not in REQUEST_CHANNELS:
        raise ServiceError("Unknown channel.")
    details = (details or "").strip() or None
    if details and len(details) > MAX_DETAILS:
        raise ServiceError(f"Keep the description under {MAX_DETAILS} characters.")
    now = now or utcnow()
    received_at = received_at or now
    if received_at > now + timedelta(minutes=5):
        raise ServiceError("The date received cannot be in the future.")
    req = PrivacyRequest(user_id=user.id if user else None, kind=kind, channel=channel, status="open",
                         details=details, received_at=received_at, due_at=due_date(received_at),
                         filed_by_id=getattr(actor, "id", None))
    if verified_method:
        req.verified_at = now
        req.verification_method = verified_method
    db.session.add(req)
    db.session.flush()
    record_event(actor if actor is not None else user, "privacy:request:opened",
                 subject=user, request=req.id, kind=kind, channel=channel)
    return req


def verify(req: PrivacyRequest, staff: User, method: str, now: datetime | None = None,
           note: str | None = None) -> None:
    """Record how the person's identity was checked. `note` (how staff checked,
    for "staff_check") goes into the audit row, so the evidence is chained."""
    if not req.is_open:
        raise ServiceError("This request is closed.")
    if method not in VERIFICATION_METHODS:
        raise ServiceError("Choose how the person's identity was verified.")
    if req.user_id is None:
        raise ServiceError("Link the request to an account before verifying it.")
    req.verified_at = now or utcnow()
    req.verification_method = method
    req.verified_by_id = staff.id
    record_event(staff, "privacy:request:verified", subject=req.user_id, request=req.id, method=method,
                 **({"note": note} if note else {}))


def extend(req: PrivacyRequest, staff: User, reason: str, days: int = 60, now: datetime | None = None) -> None:
    """Extend the due date once, with a reason the person is told."""
    if not req.is_open:
        raise ServiceError("This request is closed.")
    if req.extended_at is not None:
        raise ServiceError("A request can be extended only once.")
    reason = (reason or "").strip()
    if not reason:
        raise ServiceError("Give the reason for the extension; the person is told.")
    if len(reason) > MAX_REASON:
        raise ServiceError(f"Keep the reason under {MAX_REASON} characters.")
    req.extended_at = now or utcnow()
    req.extension_reason = reason
    req.due_at = req.due_at + timedelta(days=days)
    record_event(staff, "privacy:request:extended", subject=req.user_id, request=req.id, days=days)


def require_verified(req: PrivacyRequest) -> None:
    """No request is carried out unverified (P54)."""
    if req.verified_at is None:
        raise ServiceError("Verify the person's identity before carrying out this request.")


def close(req: PrivacyRequest, actor, outcome: str, reason: str, now: datetime | None = None) -> None:
    """Close with an outcome and a reason; the person is told by email."""
    if not req.is_open:
        raise ServiceError("This request is already closed.")
    if outcome not in OUTCOMES:
        raise ServiceError("Choose an outcome: done, refused or partly done.")
    reason = (reason or "").strip()
    if not reason:
        raise ServiceError("Give a reason; the person receives it by email.")
    if len(reason) > MAX_REASON:
        raise ServiceError(f"Keep the reason under {MAX_REASON} characters.")
    if outcome != "refused":
        require_verified(req)
    req.status = "closed"
    req.outcome = outcome
    req.outcome_reason = reason
    req.closed_at = now or utcnow()
    req.closed_by_id = getattr(actor, "id", None)
    record_event(actor, "privacy:request:closed", subject=req.user_id, request=req.id, outcome=outcome)
    user = db.session.get(User, req.user_id) if req.user_id else None
    if user is not None:
        from app.services import mail

        mail.queue(user.email, "privacy_request_closed", f"Your privacy request #{req.id} is closed",
                   "privacy_request_closed", user=user, req=req, kind_label=KIND_LABELS[req.kind],
                   outcome_label=OUTCOME_LABELS[outcome])


def requests_for(user: User) -> list[PrivacyRequest]:
    return list(db.session.scalars(sa.select(PrivacyRequest).where(PrivacyRequest.user_id == user.id)
                                   .order_by(PrivacyRequest.received_at.desc(), PrivacyRequest.id.desc())))


# ---- restriction (P53) -----------------------------------------------------------------

def restrict(user: User, actor, now: datetime | None = None) -> int:
    """Suspend the account's keys and its marketing until lifted. Returns the
    number of keys suspended."""
    now = now or utcnow()
    if user.restricted_at is not None:
        return 0
    user.restricted_at = now
    if user.marketing_email:
        set_consent(user, "marketing_email", False, "restriction", now=now)
    n = db.session.execute(sa.update(ApiKey).where(ApiKey.user_id == user.id, ApiKey.revoked_at.is_(None),
                                                   ApiKey.suspended_at.is_(None))
                           .values(suspended_at=now)).rowcount
    record_event(actor, "privacy:restriction:set", subject=user, keys=n)
    return n


def lift_restriction(user: User, actor) -> int:
    if user.restricted_at is None:
        return 0
    user.restricted_at = None
    n = db.session.execute(sa.update(ApiKey).where(ApiKey.user_id == user.id, ApiKey.suspended_at.is_not(None))
                           .values(suspended_at=None)).rowcount
    record_event(actor, "privacy:restriction:lifted", subject=user, keys=n)
    return n


# ---- staff views of a person's data (P55, "who looked at my data") --------------------

def record_staff_view(staff: User, subject: User | int, what: str) -> None:
    """Every time staff open a person's data, the person can see it."""
    record_event(staff, "staff:viewed:person", subject=subject, what=what)
