"""The one scheduled job (P60): retention, due deletions, expired exports,
sent mail and ended sessions, billing records past their years (never the
ledger), and the mailing about a material policy change (P62). It also does
what the web processes do in passing, so a deployment whose processes are idle
still catches up: stale budget holds are given back and unsent budget alerts
are mailed (P26, P42).

`run_all` is the entry point for `flask jobs run` (cron) and for the
in-process scheduler thread. It takes a named lease in `job_locks` with one
conditional UPDATE, so two runs at once, in one process or on many machines,
never overlap: the second returns {"skipped": "locked"}. Every step is
idempotent, so a run cut short is finished by the next one.

`now` moves the retention clock (tests use a controlled one); the lease
itself runs on real time, because it guards against real processes, and so
do the budget holds (a hold is stale when its process stopped renewing it).
"""
from __future__ import annotations

import logging
import os
import socket
import uuid
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal

import sqlalchemy as sa
from flask import Flask, current_app
from sqlalchemy.exc import IntegrityError

from app.extensions import db
from app.models import AuditCheckpoint, AuditEvent, JobLock, StripeEvent, UsageDaily, UsageRecord, UserSession
from app.models.types import utcnow
from app.services import policy
from app.services.dates import add_months
from app.services.worker import BackgroundWorker

log = logging.getLogger(__name__)

LOCK_NAME = "retention"
LEASE = timedelta(minutes=30)  # a crashed run frees the lock after this long
GROUP = ("user_id", "team_id", "api_key_id", "model", "provider")


# ---- the lease -------------------------------------------------------------------------

def _acquire(holder: str) -> bool:
    now = utcnow()
    if db.session.get(JobLock, LOCK_NAME) is None:
        try:
            db.session.add(JobLock(name=LOCK_NAME))
            db.session.commit()
        except IntegrityError:  # another run inserted it first: fine, compete on the UPDATE
            db.session.rollback()
    won = db.session.execute(
        sa.update(JobLock).where(JobLock.name == LOCK_NAME,
                                 sa.or_(JobLock.locked_until.is_(None), JobLock.locked_until < now))
        .values(holder=holder, locked_until=now + LEASE)).rowcount
    db.session.commit()
    return won == 1


def _release(holder: str) -> None:
    db.session.rollback()
    db.session.execute(sa.update(JobLock).where(JobLock.name == LOCK_NAME, JobLock.holder == holder)
                       .values(holder=None, locked_until=None, last_run_at=utcnow()))
    db.session.commit()


# ---- the steps -------------------------------------------------------------------------

def _midnight(d: date) -> datetime:
    return datetime.combine(d, time.min, tzinfo=timezone.utc)


def _same(col, value):
    return col.is_(None) if value is None else col == value


def rollup_usage(now: datetime) -> int:
    """Roll raw usage rows older than METADATA_RETENTION_DAYS into UsageDaily
    and delete them, one day per transaction. A day cut by the window edge is
    rolled in two runs; the second adds to the aggregate rows of the first.
    Returns the number of raw rows removed."""
    cutoff = now - timedelta(days=policy.enforced("METADATA_RETENTION_DAYS", now))
    removed = 0
    while True:
        oldest = db.session.scalar(sa.select(sa.func.min(UsageRecord.started_at))
                                   .where(UsageRecord.started_at < cutoff))
        if oldest is None:
            return removed
        day = oldest.date()
        in_batch = sa.and_(UsageRecord.started_at >= _midnight(day),
                           UsageRecord.started_at < min(_midnight(day + timedelta(days=1)), cutoff))
        cols = [getattr(UsageRecord, c) for c in GROUP]
        groups = db.session.execute(
            sa.select(*cols, sa.func.count(),
                      sa.func.sum(sa.case((UsageRecord.status_code >= 400, 1), else_=0)),
                      sa.func.sum(UsageRecord.input_tokens), sa.func.sum(UsageRecord.output_tokens),
                      sa.func.sum(UsageRecord.cache_read_tokens), sa.func.sum(UsageRecord.cache_write_tokens),
                      sa.func.sum(UsageRecord.cost_usd))
            .where(in_batch).group_by(*cols)).all()
        for g in groups:
            key = dict(zip(GROUP, g[:5], strict=True))
            n, errors, tin, tout, cread, cwrite, cost = g[5:]
            row = db.session.scalar(sa.select(UsageDaily).where(
                UsageDaily.day == day, *(_same(getattr(UsageDaily, c), v) for c, v in key.items())).limit(1))
            if row is None:
                row = UsageDaily(day=day, requests=0, errors=0, input_tokens=0, output_tokens=0,
                                 cache_read_tokens=0, cache_write_tokens=0, cost_usd=Decimal(0), **key)
                db.session.add(row)
            row.requests += n
            row.errors += int(errors or 0)
            row.input_tokens += int(tin or 0)
            row.output_tokens += int(tout or 0)
            row.cache_read_tokens += int(cread or 0)
            row.cache_write_tokens += int(cwrite or 0)
            row.cost_usd = Decimal(row.cost_usd or 0) + Decimal(str(cost or 0))
        removed += db.session.execute(sa.delete(UsageRecord).where(in_batch)
                                      .execution_options(synchronize_session=False)).rowcount
        db.session.commit()


def prune_aggregates(now: datetime) -> int:
    """Daily aggregates are kept AGGREGATE_RETENTION_MONTHS months."""
    cutoff = add_months(now.date(), -policy.enforced("AGGREGATE_RETENTION_MONTHS", now))
    n = db.session.execute(sa.delete(UsageDaily).where(UsageDaily.day < cutoff)
                           .execution_options(synchronize_session=False)).rowcount
    db.session.commit()
    return n


def prune_rollups(now: datetime) -> int:
    """Analytics cells: hourly ones go with the raw rows' window, daily ones
    with the aggregates' (app/services/rollups.py)."""
    from app.services import rollups

    n = rollups.prune(now)
    db.session.commit()
    return n


def prune_audit(now: datetime) -> int:
    """Remove audit rows older than AUDIT_RETENTION_DAYS, oldest first, after
    writing a checkpoint of the last removed row's hash: the chain that is kept
    still verifies from it (P55)."""
    from app.services.audit import _lock_chain, record_event

    cutoff = now - timedelta(days=policy.enforced("AUDIT_RETENTION_DAYS", now))
    _lock_chain()  # no writer appends while the prefix goes
    last = db.session.scalar(sa.select(AuditEvent).where(AuditEvent.created_at < cutoff)
                             .order_by(AuditEvent.id.desc()).limit(1))
    if last is None:
        db.session.commit()
        return 0
    # Everything up to `last` goes, so what is removed is always a prefix of the chain.
    n = db.session.execute(sa.delete(AuditEvent).where(AuditEvent.id <= last.id)
                           .execution_options(synchronize_session=False)).rowcount
    db.session.add(AuditCheckpoint(created_at=now, removed_through_id=last.id, last_removed_hash=last.hash,
                                   removed_count=n))
    db.session.expunge(last)
    record_event(None, "retention:audit:pruned", through=last.id, count=n)
    db.session.commit()
    return n


def erase_deletions(now: datetime) -> int:
    from app.services.deletion import erase_due

    return erase_due(now)


def purge_exports(now: datetime) -> int:
    from app.services.exports import purge_expired

    n = purge_expired(now)
    db.session.commit()
    return n


def prune_mail(now: datetime) -> int:
    """Sent or failed mail is kept MAIL_RETENTION_DAYS (P52, P60); an erased
    account's mail went with it already."""
    from app.services.mail import prune

    n = prune(now)
    db.session.commit()
    return n


def prune_sessions(now: datetime) -> int:
    """A login unused for SESSION_LIFETIME_HOURS is over: the next request with
    its cookie is anonymous anyway. Its row (device, user agent, times) goes
    here, also when that cookie never comes back."""
    cutoff = now - timedelta(seconds=current_app.config["PERMANENT_SESSION_LIFETIME"])
    n = db.session.execute(sa.delete(UserSession).where(UserSession.last_seen_at < cutoff)
                           .execution_options(synchronize_session=False)).rowcount
    db.session.commit()
    return n


def keep_billing(now: datetime) -> int:
    """Billing records are kept BILLING_RETENTION_YEARS years (P60): the ids of
    the Stripe events we handled go after that, counted from the day each
    arrived. The wallet ledger is kept indefinitely (P41) and is never touched
    here (the database refuses it anyway); neither are the wallets, which an
    erased account's ledger stays tied to by their anonymous id."""
    years = policy.enforced("BILLING_RETENTION_YEARS", now)
    cutoff = _midnight(add_months(now.date(), -12 * years))
    n = db.session.execute(sa.delete(StripeEvent).where(StripeEvent.received_at < cutoff)
                           .execution_options(synchronize_session=False)).rowcount
    db.session.commit()
    return n


def release_stale_holds(now: datetime) -> int:
    """Give back the budget holds of requests whose process stopped renewing
    them (killed mid-request), as each web process's sweeper does (P26). On
    real time, not the retention clock: a hold is stale by the wall clock."""
    from app.services import spend

    return spend.sweep(db.engine, utcnow(), current_app.config["RESERVATION_TIMEOUT_SECONDS"])


def queue_budget_alerts(now: datetime) -> int:
    """Queue the mail of every budget and low-balance alert not yet mailed (P42);
    the usage writer does it after each batch, this catches what a crash left."""
    from app.services import billing_mail

    return billing_mail.send_alerts()


def prune_invitations(now: datetime) -> int:
    """A team invitation holds an address that may belong to nobody here: it
    goes INVITATION_RETENTION_DAYS after it was accepted, withdrawn or expired."""
    from app.services import teams
    n = teams.prune_invitations(now)
    db.session.commit()
    return n


def queue_policy_notices(now: datetime) -> int:
    """Mail every account about a material policy change not yet announced (P62)."""
    return policy.run_notices(now)


def replay_usage_spool(now: datetime) -> int:
    """Usage rows left in the spool by server processes that ended (killed,
    crashed, stopped with the database down) and that no running process has
    replayed yet: a deployment whose crashed worker was never restarted still
    gets them. Idempotent (request ids are unique). Runs first, so the rollup
    sees them."""
    return current_app.extensions["meter"].recover_orphans()


def _steps():
    # Looked up at call time, so a test can replace one step.
    g = globals()
    return [("usage_spool_replayed", g["replay_usage_spool"]), ("usage_rolled_up", g["rollup_usage"]),
            ("aggregates_pruned", g["prune_aggregates"]), ("rollups_pruned", g["prune_rollups"]),
            ("audit_pruned", g["prune_audit"]), ("accounts_erased", g["erase_deletions"]),
            ("exports_purged", g["purge_exports"]), ("mail_pruned", g["prune_mail"]),
            ("sessions_pruned", g["prune_sessions"]), ("billing_pruned", g["keep_billing"]),
            ("holds_released", g["release_stale_holds"]), ("budget_alerts_queued", g["queue_budget_alerts"]),
            ("invitations_pruned", g["prune_invitations"]),
            ("policy_notices_queued", g["queue_policy_notices"])]


def run_all(app: Flask, now: datetime | None = None) -> dict:
    """Run every retention step once, under the lease. Returns counts per step;
    a step that fails is reported as "error: <class>" and the others still run."""
    with app.app_context():
        now = now or utcnow()
        holder = f"{socket.gethostname()[:30]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        if not _acquire(holder):
            return {"skipped": "locked"}
        result: dict = {}
        try:
            for name, step in _steps():
                try:
                    result[name] = step(now)
                except Exception as exc:
                    db.session.rollback()
                    log.exception("retention step %s failed; the next run tries again", name)
                    result[name] = f"error: {type(exc).__name__}"
        finally:
            _release(holder)
        return result


# ---- the in-process scheduler ----------------------------------------------------------

class Scheduler(BackgroundWorker):
    """A daemon thread running `run_all` every JOBS_INTERVAL_MINUTES. Several
    processes may each run one: the lease keeps their runs apart."""

    name = "retention-jobs"

    def __init__(self, app: Flask):
        super().__init__(app, app.config["JOBS_INTERVAL_MINUTES"] * 60)

    def first_delay(self) -> float:
        return min(60.0, self.interval)  # a short pause first, so a starting server is not slowed

    def work(self) -> None:
        try:
            result = run_all(self.app)
            log.info("retention job: %s", result)
        except Exception:
            log.exception("retention job failed; will try again")


def init_app(app: Flask) -> None:
    if app.config["JOBS_SCHEDULER"] != "thread":
        return
    scheduler = Scheduler(app)
    app.extensions["jobs_scheduler"] = scheduler

    scheduler.start_with(app)
