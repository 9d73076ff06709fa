"""Mail through a durable outbox.

`queue()` adds a message to the current transaction, so it is sent if and only
if the change that caused it commits. A sender (`deliver_pending`) claims due
rows, hands them to the configured transport (SMTP, a folder of .eml files, or
the log) and retries failures with exponential backoff. Each web process runs
one sender thread that wakes on commit and every few seconds; `flask mail send`
does the same from cron or by hand.

Every message belongs to the account it is about (`user_id`), so erasure takes
it away with the account and the retention job (`prune`) removes sent or
failed mail after MAIL_RETENTION_DAYS (P52, P60), both through `forget`.
"""
from __future__ import annotations

import logging
import smtplib
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path

import sqlalchemy as sa
from flask import Flask, current_app, has_app_context, render_template
from sqlalchemy import event
from sqlalchemy.orm import Session

from app.extensions import db
from app.models import IncidentNotice, OutboxMessage, PolicyNotice
from app.models.types import utcnow
from app.services import consent_links, policy
from app.services.worker import BackgroundWorker
from app.urls import public_base_url

log = logging.getLogger(__name__)
CLAIM = timedelta(seconds=120)


_UNSET = object()


def queue(to_addr: str, kind: str, subject: str, template: str, *, user=_UNSET, user_id=_UNSET,
          **context) -> OutboxMessage:
    """Render `mail/<template>.txt` and add it to the outbox in this transaction.

    `user=` (or `user_id=`) is the account the message is about, and must be
    given: erasure removes the account's mail and the export and "What we
    keep" find it by account, never by address, since an address can pass to
    a new owner who must not see the old one's mail. `user=None` is only for
    mail to an address that belongs to no account.
    """
    if (user is _UNSET) == (user_id is _UNSET):
        raise TypeError("mail.queue() takes exactly one of user= or user_id= (None: no account)")
    if user is not _UNSET:
        if user is not None and user.id is None:
            db.session.flush()  # a new account: its id, so its first mail is tied to it
        user_id = user.id if user is not None else None
    context.setdefault("site_name", current_app.config["SITE_NAME"])
    context.setdefault("base_url", public_base_url())
    body = render_template(f"mail/{template}.txt", **context)
    msg = OutboxMessage(kind=kind, user_id=user_id, to_addr=to_addr, subject=subject, body_text=body)
    db.session.add(msg)
    db.session.info["mail_queued"] = True
    return msg


def _build(app: Flask, row: OutboxMessage) -> EmailMessage:
    em = EmailMessage()
    em["From"] = app.config["MAIL_FROM"]
    em["To"] = row.to_addr
    em["Subject"] = row.subject
    em["Date"] = formatdate(localtime=False)
    em["Message-ID"] = make_msgid(domain="relay.local")
    em["Auto-Submitted"] = "auto-generated"
    # Mail tied to no account (an erased one's receipt) withdraws nobody's
    # consent: the address may have a new owner by the time it goes.
    extra = consent_links.list_unsubscribe_headers(row.user_id, row.to_addr)
    if extra:
        # Stored as given, on one line each: folded, a long URL would turn into an
        # RFC 2047 encoded word that no mail client reads as a link.
        em.policy = em.policy.clone(refold_source="none")
        for name, value in extra.items():
            em.set_raw(name, value)
    em.set_content(row.body_text)
    return em


def _send(app: Flask, em: EmailMessage) -> None:
    transport = app.config["MAIL_TRANSPORT"]
    if transport == "smtp":
        with smtplib.SMTP(app.config["SMTP_HOST"], app.config["SMTP_PORT"], timeout=20) as smtp:
            if app.config["SMTP_STARTTLS"]:
                smtp.starttls()
            if app.config["SMTP_USERNAME"]:
                smtp.login(app.config["SMTP_USERNAME"], app.config["SMTP_PASSWORD"])
            smtp.send_message(em)
    elif transport == "file":
        folder = Path(app.config["MAIL_DIR"])
        folder.mkdir(parents=True, exist_ok=True)
        stamp = utcnow().strftime("%Y%m%dT%H%M%S%f")
        path = folder / f"{stamp}-{em['Message-ID'].strip('<>').split('@')[0]}.eml"
        path.write_bytes(bytes(em))
    elif transport == "console":
        # Only the envelope: the body may hold a sign-in link.
        log.info("mail to=%s subject=%r (console transport; body not shown)", em["To"], em["Subject"])
    else:
        raise RuntimeError(f"unknown MAIL_TRANSPORT {transport!r}")


def deliver_pending(app: Flask, limit: int = 50) -> int:
    """Send due messages; return how many were sent. Safe to run in several
    processes at once: a row is claimed with a conditional update first."""
    sent = 0
    now = utcnow()
    ids = db.session.scalars(
        sa.select(OutboxMessage.id).where(
            OutboxMessage.sent_at.is_(None), OutboxMessage.failed_at.is_(None),
            OutboxMessage.next_attempt_at <= now,
            sa.or_(OutboxMessage.claimed_until.is_(None), OutboxMessage.claimed_until < now),
        ).order_by(OutboxMessage.id).limit(limit)).all()
    for msg_id in ids:
        claimed = db.session.execute(
            sa.update(OutboxMessage).where(
                OutboxMessage.id == msg_id, OutboxMessage.sent_at.is_(None),
                sa.or_(OutboxMessage.claimed_until.is_(None), OutboxMessage.claimed_until < now))
            .values(claimed_until=now + CLAIM)).rowcount
        db.session.commit()
        if not claimed:
            continue
        row = db.session.get(OutboxMessage, msg_id)
        if row is None:  # erased with its account since the claim
            continue
        attempts = row.attempts + 1
        done: dict = {"attempts": attempts}
        try:
            _send(app, _build(app, row))
        except Exception as exc:  # any transport failure is retried
            # The class and errno only: an SMTP error can quote the message.
            done["last_error"] = (f"{type(exc).__name__}: "
                                  f"{getattr(exc, 'smtp_code', '') or getattr(exc, 'errno', '') or ''}")[:200]
            done["claimed_until"] = None
            if attempts >= app.config["MAIL_MAX_ATTEMPTS"]:
                done["failed_at"] = utcnow()
                log.warning("mail %s failed for good after %s attempts", msg_id, attempts)
            else:
                done["next_attempt_at"] = utcnow() + timedelta(seconds=min(3600, 5 * 2 ** attempts))
                log.info("mail %s attempt %s failed (%s); will retry", msg_id, attempts, done["last_error"])
        else:
            done["sent_at"] = utcnow()
            done["body_text"] = ""  # links are secrets; the sent copy is the person's
            sent += 1
        # One statement, so an account erased meanwhile leaves nothing to fail on.
        db.session.execute(sa.update(OutboxMessage).where(OutboxMessage.id == msg_id).values(**done))
        db.session.commit()
    return sent


# ---- erasure and retention --------------------------------------------------------------

def _notice_mail() -> sa.Select:
    """Outbox ids that are the record of a notice: an incident notice (P63) or a
    policy-change notice (P62), whose delivery time proves when it went out."""
    return sa.union(
        sa.select(IncidentNotice.outbox_message_id).where(IncidentNotice.outbox_message_id.is_not(None)),
        sa.select(PolicyNotice.outbox_message_id).where(PolicyNotice.outbox_message_id.is_not(None)))


def forget(*where) -> int:
    """Remove the outbox rows matching `where` (an erased account's, or past
    the retention window). Returns how many rows went or were emptied.

    A notice that went out stays as the proof that it did: its row keeps its
    id, kind and delivery times, with the address, subject, body and account
    emptied. Every other matching row is deleted, and a notice row pointing at
    unsent mail that goes stops pointing at it. The caller commits.
    """
    finished = sa.or_(OutboxMessage.sent_at.is_not(None), OutboxMessage.failed_at.is_not(None))
    proof = sa.and_(finished, OutboxMessage.id.in_(_notice_mail()))
    matching = sa.and_(*where, OutboxMessage.to_addr != "")  # "" : already emptied
    emptied = db.session.execute(
        sa.update(OutboxMessage).where(matching, proof)
        .values(to_addr="", subject="", body_text="", user_id=None, last_error=None)
        .execution_options(synchronize_session=False)).rowcount
    doomed = sa.select(OutboxMessage.id).where(matching, sa.not_(proof))
    for model in (IncidentNotice, PolicyNotice):
        db.session.execute(sa.update(model).where(model.outbox_message_id.in_(doomed))
                           .values(outbox_message_id=None).execution_options(synchronize_session=False))
    deleted = db.session.execute(sa.delete(OutboxMessage).where(matching, sa.not_(proof))
                                 .execution_options(synchronize_session=False)).rowcount
    return emptied + deleted


def forget_account(user_id: int) -> int:
    """Erasure (P52): the account's mail goes, sent or not; unsent mail is
    never delivered to an address whose account no longer exists."""
    return forget(OutboxMessage.user_id == user_id)


def retention_cutoff(now: datetime) -> datetime:
    return now - timedelta(days=policy.enforced("MAIL_RETENTION_DAYS", now))


def prune(now: datetime) -> int:
    """Retention (P60): sent or failed mail older than MAIL_RETENTION_DAYS
    (the window of the policy in effect) goes. Mail still waiting to be sent
    stays until it is sent or fails for good. The caller commits."""
    cutoff = retention_cutoff(now)
    return forget(sa.or_(OutboxMessage.sent_at < cutoff, OutboxMessage.failed_at < cutoff))


class MailWorker(BackgroundWorker):
    """One background sender thread per process, woken after a commit that queued mail."""

    name = "mail-outbox"

    def __init__(self, app: Flask, interval: float = 5.0):
        super().__init__(app, interval)

    def work(self) -> None:
        with self.app.app_context():
            try:
                while deliver_pending(self.app):
                    pass
            except Exception:
                log.exception("mail sender pass failed; will try again")
                db.session.rollback()
            finally:
                db.session.remove()


def init_app(app: Flask) -> None:
    if app.config["MAIL_WORKER"] != "thread":
        return
    worker = MailWorker(app)
    app.extensions["mail_worker"] = worker

    worker.start_with(app)


@event.listens_for(Session, "after_commit")
def _kick(session):
    """One listener for the process: wake the sender of the app whose session
    just committed mail (every app made in a test process would otherwise
    leave a listener of its own behind)."""
    if session.info.pop("mail_queued", False) and has_app_context():
        worker = current_app.extensions.get("mail_worker")
        if worker is not None:
            worker.wake.set()
