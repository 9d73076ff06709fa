"""The privacy policy: rendered from the settings the code enforces (P61),
changed with notice (P62).

The policy text is a template filled from settings (minimum age, retention
windows, sub-processors, contact). Every text ever published is stored as a
numbered `PolicyVersion` with the date it takes effect, and the version in
effect is the newest whose date has come.

What the code enforces follows the version in effect: `enforced(key)` reads
the settings frozen in it, so /privacy never describes rules the code does not
apply, even while a change waits for its date. When the configured settings
produce a different text:

- a change that only protects people more (shorter retention, a higher
  minimum age, a sub-processor removed, a new contact address) is published
  at once, automatically;
- anything else (a longer retention, a new sub-processor, a new company name,
  a lower age, or reworded text) waits for staff, who publish it with a
  summary and an effective date. A material change takes effect at least
  NOTICE_DAYS days after it is published, and every account is mailed
  through the outbox in batches (`queue_notices`, resumable, run by the
  scheduled job); the portal shows a banner until it takes effect.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone

import sqlalchemy as sa
from flask import current_app, g, render_template
from sqlalchemy.exc import IntegrityError

from app.extensions import db
from app.models import OutboxMessage, PolicyNotice, PolicyVersion, User
from app.models.types import utcnow
from app.services import ServiceError

NOTICE_DAYS = 14
BATCH = 200

# The settings the policy text is made from; changing any of them makes a new version.
POLICY_SETTINGS = (
    "SITE_NAME", "COMPANY_NAME", "PRIVACY_CONTACT", "MIN_AGE", "SUB_PROCESSORS",
    "METADATA_RETENTION_DAYS", "AGGREGATE_RETENTION_MONTHS", "AUDIT_RETENTION_DAYS",
    "MAIL_RETENTION_DAYS", "BILLING_RETENTION_YEARS", "MAGIC_LINK_MINUTES",
)

# How each setting moves when a change is material (needs notice):
# "up" a larger value, "down" a smaller one, "any" every change, "added" a new list item.
MATERIAL_WHEN = {
    "SITE_NAME": "any", "COMPANY_NAME": "any", "PRIVACY_CONTACT": None, "MIN_AGE": "down",
    "SUB_PROCESSORS": "added", "METADATA_RETENTION_DAYS": "up", "AGGREGATE_RETENTION_MONTHS": "up",
    "AUDIT_RETENTION_DAYS": "up", "MAIL_RETENTION_DAYS": "up", "BILLING_RETENTION_YEARS": "up",
    "MAGIC_LINK_MINUTES": "up",
}

LABELS = {
    "SITE_NAME": "Service name", "COMPANY_NAME": "Company running the service",
    "PRIVACY_CONTACT": "Privacy contact", "MIN_AGE": "Minimum age",
    "SUB_PROCESSORS": "Sub-processors", "METADATA_RETENTION_DAYS": "Per-request metadata kept (days)",
    "AGGREGATE_RETENTION_MONTHS": "Daily totals kept (months)", "AUDIT_RETENTION_DAYS": "Audit log kept (days)",
    "MAIL_RETENTION_DAYS": "Sent emails kept (days)",
    "BILLING_RETENTION_YEARS": "Billing records kept (years)",
    "MAGIC_LINK_MINUTES": "Sign-in link valid (minutes)",
}


@dataclass
class Change:
    key: str
    old: object
    new: object
    material: bool

    @property
    def label(self) -> str:
        return LABELS.get(self.key, self.key)

    def show(self, value) -> str:
        if value is None:
            return "not stated"
        return "; ".join(value) if isinstance(value, list) else str(value)


@dataclass
class Draft:
    """The text today's settings produce, when it differs from the newest version."""
    settings: dict
    body: str
    digest: str
    base: PolicyVersion
    changes: list[Change] = field(default_factory=list)

    @property
    def reworded(self) -> bool:
        """The text changed with no setting changed (a template edit)."""
        return not self.changes

    @property
    def material_required(self) -> bool:
        return any(c.material for c in self.changes)

    @property
    def automatic(self) -> bool:
        """Only protective setting changes: published at once without staff."""
        return bool(self.changes) and not self.material_required


def classify(old: dict, new: dict) -> list[Change]:
    """What changes between two versions' settings, each marked material or not.

    A setting the old version did not state yet (one added to the policy since)
    is a change too. A retention window stated for the first time protects
    people (before, nothing promised the data would ever go), so it is not
    material; any other new setting is, unless that setting never is.
    """
    changes = []
    for key in POLICY_SETTINGS:
        rule, a, b = MATERIAL_WHEN.get(key, "any"), old.get(key), new[key]
        if key not in old:
            changes.append(Change(key, None, b, rule not in ("up", None)))
            continue
        if a == b:
            continue
        if rule == "up":
            material = b > a
        elif rule == "down":
            material = b < a
        elif rule == "added":
            material = bool(set(b) - set(a))
        else:
            material = rule == "any"
        changes.append(Change(key, a, b, material))
    return changes


# ---- reading ---------------------------------------------------------------------------

def policy_settings() -> dict:
    return {k: current_app.config[k] for k in POLICY_SETTINGS}


def render_body(settings: dict) -> str:
    return render_template("policy/_body.html", s=settings)


def _digest(body: str) -> str:
    return hashlib.sha256(body.encode()).hexdigest()


def latest_version() -> PolicyVersion | None:
    return db.session.scalar(sa.select(PolicyVersion).order_by(PolicyVersion.number.desc()).limit(1))


def upcoming(now: datetime | None = None) -> PolicyVersion | None:
    """The published version that has not taken effect yet, if any (at most one).
    Cheap: no rendering, so the banner can ask on every page."""
    return db.session.scalar(sa.select(PolicyVersion).where(PolicyVersion.effective_at > (now or utcnow()))
                             .order_by(PolicyVersion.number).limit(1))


def draft() -> Draft | None:
    base = latest_version()
    if base is None:
        return None
    settings = policy_settings()
    body = render_body(settings)
    digest = _digest(body)
    if digest == base.digest:
        return None
    return Draft(settings, body, digest, base, classify(json.loads(base.settings_json), settings))


def current_version(now: datetime | None = None) -> PolicyVersion:
    """The version in effect now. Publishes the first version, and any change
    that only protects people more, at once; other changes wait for staff."""
    if now is None and "policy_in_effect" in g:  # once per request: it renders the whole text
        return g.policy_in_effect
    version = _current_version(now)
    if now is None:
        g.policy_in_effect = version
    return version


def _current_version(now: datetime | None) -> PolicyVersion:
    real = utcnow()  # publishing happens now, whatever clock `now` reads (the jobs test a later one)
    now = now or real
    if latest_version() is None:
        settings = policy_settings()
        body = render_body(settings)
        _insert(settings, body, _digest(body), real, material=False, summary=None, staff=None)
    else:
        d = draft()
        if d is not None and d.automatic and upcoming(real) is None:
            summary = "; ".join(f"{c.label}: {c.show(c.old)} → {c.show(c.new)}" for c in d.changes)
            _insert(d.settings, d.body, d.digest, real, material=False, summary=summary, staff=None)
    in_effect = db.session.scalar(sa.select(PolicyVersion).where(PolicyVersion.effective_at <= now)
                                  .order_by(PolicyVersion.number.desc()).limit(1))
    # A clock set before the first version (a test's, or a backfill's) gets the first.
    return in_effect or db.session.scalar(sa.select(PolicyVersion).order_by(PolicyVersion.number).limit(1))


def enforced(key: str, now: datetime | None = None):
    """The value of a policy setting the code applies now: the one frozen in
    the version in effect (so a longer retention waits for its date)."""
    frozen = json.loads(current_version(now).settings_json)
    return frozen[key] if key in frozen else current_app.config[key]


def all_versions() -> list[PolicyVersion]:
    return list(db.session.scalars(sa.select(PolicyVersion).order_by(PolicyVersion.number.desc())))


# ---- publishing ------------------------------------------------------------------------

def _insert(settings: dict, body: str, digest: str, effective_at: datetime, *, material: bool,
            summary: str | None, staff: User | None, now: datetime | None = None) -> PolicyVersion:
    """Store a new version. Two processes racing to publish both compute the
    same next number; the unique number lets one win and the other re-read."""
    from app.services.audit import record_event

    number = (db.session.scalar(sa.select(sa.func.max(PolicyVersion.number))) or 0) + 1
    row = PolicyVersion(number=number, digest=digest, published_at=now or utcnow(), effective_at=effective_at,
                        settings_json=json.dumps(settings, sort_keys=True), body_html=body,
                        material=material, summary=summary, published_by_id=staff.id if staff else None)
    try:
        with db.session.begin_nested():
            db.session.add(row)
            record_event(staff, "policy:version:published", number=number, material=material,
                         effective=effective_at.strftime("%Y-%m-%dT%H:%M"))
    except IntegrityError:
        return db.session.scalar(sa.select(PolicyVersion).where(PolicyVersion.number == number))
    db.session.commit()
    g.pop("policy_in_effect", None)
    return row


def _midnight(d: date) -> datetime:
    return datetime.combine(d, time.min, tzinfo=timezone.utc)


def earliest_effective(material: bool, now: datetime | None = None) -> date:
    """The first date a change may take effect (at 00:00 UTC). A material one
    needs NOTICE_DAYS full days after publication, plus the rest of today for
    the mailing to go out, so no notice arrives later than NOTICE_DAYS ahead."""
    now = now or utcnow()
    return (now + timedelta(days=NOTICE_DAYS + 1)).date() if material else now.date()


class PublishRefused(ServiceError):
    """Why a change cannot be published; `field` names the form field it is about, if any."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


def check_publish(*, summary: str, effective_on: date, material: bool, now: datetime | None = None) -> Draft:
    """Every rule a publication must meet; returns the draft it would publish.
    The staff page runs it before its confirmation page, and `publish` again."""
    now = now or utcnow()
    d = draft()
    if d is None:
        raise PublishRefused("The policy text is the same as the newest version: there is nothing to publish.")
    waiting = upcoming(now)
    if waiting is not None:
        raise PublishRefused(f"Version {waiting.number} takes effect on {waiting.effective_at:%Y-%m-%d}; "
                             "publish the next change after that date.")
    if d.material_required and not material:
        raise PublishRefused("This change is material (see the list): it must be announced "
                             f"{NOTICE_DAYS} days ahead.", "material")
    if not (summary or "").strip():
        raise PublishRefused("Say in plain words what changes; it goes into the notice and the banner.", "summary")
    first = earliest_effective(material, now)
    if effective_on < first:
        if material:
            raise PublishRefused(f"A material change takes effect at least {NOTICE_DAYS} days after everyone "
                                 f"is told: choose {first:%Y-%m-%d} or later.", "effective_on")
        raise PublishRefused("The date it takes effect cannot be in the past.", "effective_on")
    return d


def publish(staff: User, *, summary: str, effective_on: date, material: bool,
            now: datetime | None = None) -> PolicyVersion:
    """Publish today's settings as the next version (staff), in effect from
    00:00 UTC on `effective_on` (or at once for a non-material change dated today)."""
    now = now or utcnow()
    d = check_publish(summary=summary, effective_on=effective_on, material=material, now=now)
    summary = summary.strip()
    effective_at = max(_midnight(effective_on), now)
    return _insert(d.settings, d.body, d.digest, effective_at, material=material, summary=summary,
                   staff=staff, now=now)


# ---- notices ---------------------------------------------------------------------------

def recipients() -> sa.Select:
    """Every account, except those already being erased (their deletion is
    due before any change could take effect on them)."""
    return sa.select(User).where(User.deletion_requested_at.is_(None))


def recipient_count(after_user_id: int = 0) -> int:
    return db.session.scalar(sa.select(sa.func.count()).select_from(
        recipients().where(User.id > after_user_id).subquery())) or 0


def queue_notices(version: PolicyVersion, max_batches: int | None = None, staff: User | None = None) -> int:
    """Queue the change notice for every account not yet told, in user-id
    order, one batch per commit (mails, notice rows and the cursor together),
    so a run cut short resumes where it stopped and never mails twice."""
    from app.services import mail
    from app.services.audit import record_event

    if not version.material or version.notices_queued_at is not None:
        return 0
    if version.notices_started_at is None:
        version.notices_started_at = utcnow()
        record_event(staff, "policy:notices:started", number=version.number)
        db.session.commit()
    queued = batches = 0
    subject = f"Our privacy policy changes on {version.effective_at:%Y-%m-%d}"
    while max_batches is None or batches < max_batches:
        users = db.session.scalars(recipients().where(User.id > version.notice_cursor)
                                   .order_by(User.id).limit(BATCH)).all()
        if not users:
            version.notices_queued_at = utcnow()
            record_event(staff, "policy:notices:queued", number=version.number, total=notice_count(version))
            db.session.commit()
            break
        for user in users:
            msg = mail.queue(user.email, "policy_change", subject, "policy_change", user=user, version=version)
            db.session.flush()
            db.session.add(PolicyNotice(policy_version_id=version.id, user_id=user.id,
                                        outbox_message_id=msg.id))
        version.notice_cursor = users[-1].id
        db.session.commit()
        queued += len(users)
        batches += 1
    return queued


def pending_notices() -> list[PolicyVersion]:
    return list(db.session.scalars(sa.select(PolicyVersion).where(PolicyVersion.material.is_(True),
                                                                  PolicyVersion.notices_queued_at.is_(None))
                                   .order_by(PolicyVersion.number)))


def run_notices(now: datetime | None = None) -> int:
    """The scheduled job's step: queue every pending mailing to the end."""
    return sum(queue_notices(v) for v in pending_notices())


def notice_count(version: PolicyVersion) -> int:
    return db.session.scalar(sa.select(sa.func.count()).select_from(PolicyNotice)
                             .where(PolicyNotice.policy_version_id == version.id)) or 0


def notice_progress(version: PolicyVersion) -> dict:
    base = (sa.select(sa.func.count()).select_from(PolicyNotice)
            .outerjoin(OutboxMessage, OutboxMessage.id == PolicyNotice.outbox_message_id)
            .where(PolicyNotice.policy_version_id == version.id))
    queued = db.session.scalar(base) or 0
    sent = db.session.scalar(base.where(OutboxMessage.sent_at.is_not(None))) or 0
    failed = db.session.scalar(base.where(OutboxMessage.failed_at.is_not(None))) or 0
    remaining = 0 if version.notices_queued_at else recipient_count(version.notice_cursor)
    deadline = version.effective_at - timedelta(days=NOTICE_DAYS)
    late = db.session.scalar(base.where(OutboxMessage.sent_at > deadline)) or 0
    return {"queued": queued, "sent": sent, "failed": failed, "remaining": remaining, "late": late,
            "done": version.notices_queued_at is not None and sent + failed >= queued,
            "percent": 100 if not queued + remaining else int(100 * sent / (queued + remaining))}
