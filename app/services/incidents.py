"""Security incidents (P63): record one, choose the affected accounts, notify
them through the outbox, and show whether every notice went out within 72
hours of confirmation.

Notices are queued in batches, each batch committed with its notice rows, so a
run that stops half way resumes where it stopped (`queue_notices` again) and
never mails a person twice (one notice row per person and incident, claimed
by whichever caller flips its queued_at first).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa

from app.extensions import db
from app.models import Incident, IncidentNotice, OutboxMessage, UsageRecord, User
from app.models.types import utcnow
from app.services import ServiceError, mail
from app.services.accounts import normalize_email
from app.services.audit import record_event

DEADLINE = timedelta(hours=72)
BATCH = 200
MAX_EMAILS = 5000


@dataclass
class Scope:
    kind: str                       # all | usage | emails
    used_from: datetime | None = None
    used_to: datetime | None = None
    emails: tuple[str, ...] = ()

    def label(self) -> str:
        if self.kind == "usage":
            return f"usage:{self.used_from:%Y-%m-%dT%H:%M}..{self.used_to:%Y-%m-%dT%H:%M}"
        return self.kind

    def user_ids(self) -> sa.Select:
        if self.kind == "all":
            return sa.select(User.id)
        if self.kind == "usage":
            return (sa.select(UsageRecord.user_id).where(UsageRecord.user_id.is_not(None),
                                                         UsageRecord.started_at >= self.used_from,
                                                         UsageRecord.started_at < self.used_to).distinct())
        keys = [e.lower() for e in self.emails]
        return sa.select(User.id).where(User.email_key.in_(keys))


def parse_emails(text: str) -> tuple[str, ...]:
    """One address per line or comma-separated; each must be valid."""
    items = [x.strip() for chunk in (text or "").splitlines() for x in chunk.split(",") if x.strip()]
    if not items:
        raise ServiceError("List at least one email address.")
    if len(items) > MAX_EMAILS:
        raise ServiceError(f"List at most {MAX_EMAILS} addresses; use another scope for more.")
    out = []
    for item in items:
        try:
            out.append(normalize_email(item)[1])
        except ServiceError:
            raise ServiceError(f"“{item[:80]}” is not a valid email address.") from None
    return tuple(dict.fromkeys(out))


def count_affected(scope: Scope) -> int:
    return db.session.scalar(sa.select(sa.func.count()).select_from(scope.user_ids().subquery())) or 0


def record(staff: User, *, title: str, description: str, confirmed_at: datetime, scope: Scope,
           notice_subject: str, notice_body: str, now: datetime | None = None) -> Incident:
    now = now or utcnow()
    if confirmed_at > now + timedelta(minutes=5):
        raise ServiceError("The confirmation time cannot be in the future.")
    if scope.kind == "usage" and not (scope.used_from and scope.used_to and scope.used_from < scope.used_to):
        raise ServiceError("Give a usage window whose start is before its end.")
    inc = Incident(title=title.strip(), description=description.strip(), confirmed_at=confirmed_at,
                   created_at=now, created_by_id=staff.id, scope=scope.label(),
                   notice_subject=notice_subject.strip(), notice_body=notice_body.strip())
    db.session.add(inc)
    db.session.flush()
    ids = db.session.scalars(scope.user_ids()).all()
    if not ids:
        raise ServiceError("No account matches this scope: nobody would be notified.")
    db.session.execute(sa.insert(IncidentNotice), [{"incident_id": inc.id, "user_id": uid} for uid in ids])
    record_event(staff, "incident:recorded", subject=None, incident=inc.id, affected=len(ids))
    return inc


def queue_notices(staff: User | None, inc: Incident, now: datetime | None = None) -> int:
    """Queue the notice mail for every affected person not yet queued, a batch
    per commit. Returns how many were queued by this call.

    Safe to run twice at once (a double click, two server processes): each
    notice is claimed by one conditional UPDATE that only one caller wins, in
    the transaction that queues its mail, so nobody is mailed twice; the
    start and the end of the mailing are claimed the same way, so each is
    recorded once."""
    now = now or utcnow()
    if _claim(inc, Incident.notices_started_at, now):
        record_event(staff, "incident:notices:started", subject=None, incident=inc.id)
    db.session.commit()
    queued = 0
    while True:
        batch = db.session.execute(
            sa.select(IncidentNotice.id, User).join(User, User.id == IncidentNotice.user_id)
            .where(IncidentNotice.incident_id == inc.id, IncidentNotice.queued_at.is_(None))
            .order_by(IncidentNotice.id).limit(BATCH)).all()
        if not batch:
            break
        for notice_id, user in batch:
            won = db.session.execute(
                sa.update(IncidentNotice).where(IncidentNotice.id == notice_id, IncidentNotice.queued_at.is_(None))
                .values(queued_at=utcnow()).execution_options(synchronize_session=False)).rowcount
            if not won:  # another caller queued this one
                continue
            msg = mail.queue(user.email, "incident_notice", inc.notice_subject, "incident_notice", user=user,
                             incident=inc, body=inc.notice_body)
            db.session.flush()
            db.session.execute(sa.update(IncidentNotice).where(IncidentNotice.id == notice_id)
                               .values(outbox_message_id=msg.id).execution_options(synchronize_session=False))
            queued += 1
        db.session.commit()
    # Accounts erased since the incident was recorded have no address left: nothing to send.
    if _claim(inc, Incident.notices_queued_at, utcnow()):
        total = db.session.scalar(sa.select(sa.func.count()).select_from(IncidentNotice).where(
            IncidentNotice.incident_id == inc.id, IncidentNotice.queued_at.is_not(None)))
        record_event(staff, "incident:notices:queued", subject=None, incident=inc.id, queued=total)
    db.session.commit()
    return queued


def _claim(inc: Incident, column, now: datetime) -> bool:
    """Set a still-empty timestamp of the incident; True for the one caller that did."""
    won = db.session.execute(sa.update(Incident).where(Incident.id == inc.id, column.is_(None))
                             .values({column: now}).execution_options(synchronize_session=False)).rowcount
    return won == 1


@dataclass
class NoticeStatus:
    user_id: int
    queued_at: datetime | None
    sent_at: datetime | None
    failed: bool
    within_deadline: bool | None   # None: not sent yet


def notice_rows(inc: Incident, page: int = 1, per_page: int = 50) -> list[NoticeStatus]:
    rows = db.session.execute(
        sa.select(IncidentNotice, OutboxMessage.sent_at, OutboxMessage.failed_at)
        .outerjoin(OutboxMessage, OutboxMessage.id == IncidentNotice.outbox_message_id)
        .where(IncidentNotice.incident_id == inc.id).order_by(IncidentNotice.id)
        .offset((page - 1) * per_page).limit(per_page)).all()
    deadline = inc.confirmed_at + DEADLINE
    return [NoticeStatus(n.user_id, n.queued_at, sent, failed is not None,
                         None if sent is None else sent <= deadline) for n, sent, failed in rows]


def summary(inc: Incident, now: datetime | None = None) -> dict:
    now = now or utcnow()
    deadline = inc.confirmed_at + DEADLINE
    base = (sa.select(sa.func.count()).select_from(IncidentNotice)
            .outerjoin(OutboxMessage, OutboxMessage.id == IncidentNotice.outbox_message_id)
            .where(IncidentNotice.incident_id == inc.id))
    total = db.session.scalar(base) or 0
    sent = db.session.scalar(base.where(OutboxMessage.sent_at.is_not(None))) or 0
    on_time = db.session.scalar(base.where(OutboxMessage.sent_at <= deadline)) or 0
    last_sent = db.session.scalar(
        sa.select(sa.func.max(OutboxMessage.sent_at)).select_from(IncidentNotice)
        .join(OutboxMessage, OutboxMessage.id == IncidentNotice.outbox_message_id)
        .where(IncidentNotice.incident_id == inc.id))
    return {"total": total, "sent": sent, "on_time": on_time, "late": sent - on_time,
            "unsent": total - sent, "deadline": deadline, "overdue": total > sent and now > deadline,
            "all_on_time": total > 0 and on_time == total, "last_sent": last_sent}


def all_incidents() -> list[Incident]:
    return list(db.session.scalars(sa.select(Incident).order_by(Incident.confirmed_at.desc())))
