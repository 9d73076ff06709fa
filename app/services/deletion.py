"""Account deletion (P52): the request, its receipt, the grace period, the
cancel link, and the erasure the scheduled job carries out.

A request takes effect at once (sessions ended, keys revoked, sign-in
blocked) but erases nothing until the grace period (DELETION_GRACE_DAYS) has
passed, so a person who changes their mind, or whose account was hijacked,
can keep it with the link in the receipt. Erasure keeps only what the law or
the integrity of other records needs: the personal prepaid wallet and its
ledger (P41: kept indefinitely; the wallet loses `user_id` and is known only
by its anonymous `anon_ref` from then on, with its balance), the other
billing records for BILLING_RETENTION_YEARS (Stripe's event ids, which name
no one), usage rows and daily aggregates without anything that points at the
person, the audit trail (plain ids), and the delivery times of security and
policy notices that went out (no address). The account's mail goes with it,
and so do its budgets, their alerts and its spend counters. A team's wallet
is the team's, and stays as it is.

Every function takes `now` for a controlled clock and, like the other
services, leaves the commit to the caller, except `erase_due`, which is the
job's loop and commits each erasure on its own.
"""
from __future__ import annotations

import logging
import secrets
from datetime import datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from flask import current_app
from itsdangerous import BadSignature, URLSafeSerializer

from app.extensions import db
from app.models import (
    ApiKey,
    Budget,
    BudgetAlert,
    BudgetReservation,
    ConsentEvent,
    DataExport,
    IncidentNotice,
    OneTimeToken,
    OutboxMessage,
    PolicyAcceptance,
    PolicyNotice,
    PrivacyRequest,
    RecoveryCode,
    SpendCounter,
    UsageDaily,
    UsageRecord,
    User,
    UserSession,
    Wallet,
)
from app.models.types import utcnow
from app.services import ServiceError, keys, mail, policy, rollups, spend, teams
from app.services import privacy as privacy_core
from app.services.audit import record_event
from app.services.crypto import token_hash
from app.urls import public_url

log = logging.getLogger(__name__)

CANCEL = "deletion_cancel"  # OneTimeToken.purpose of the cancel link
BAD_LINK = "This cancel link is not valid. Check that you copied all of it."


class ScheduledForDeletion(ServiceError):
    """Raised by sign-in paths for an account waiting to be erased."""


def grace() -> timedelta:
    return timedelta(days=current_app.config["DELETION_GRACE_DAYS"])


def open_deletion(user_id: int) -> PrivacyRequest | None:
    """The account's pending deletion request (open, not yet carried out)."""
    return db.session.scalar(
        sa.select(PrivacyRequest).where(PrivacyRequest.user_id == user_id, PrivacyRequest.kind == "delete",
                                        PrivacyRequest.status == "open", PrivacyRequest.executed_at.is_(None),
                                        PrivacyRequest.execute_after.is_not(None))
        .order_by(PrivacyRequest.id.desc()).limit(1))


def scheduled_for(user: User) -> datetime | None:
    """When the account will be erased, or None when no deletion is pending."""
    if user.deletion_requested_at is None:
        return None
    req = open_deletion(user.id)
    return req.execute_after if req is not None else user.deletion_requested_at + grace()


def blocked_message(user: User) -> str:
    when = scheduled_for(user)
    return (f"This account is scheduled for deletion on {when:%Y-%m-%d}. "
            "Use the cancel link in the email we sent to keep it.")


def check_sign_in_allowed(user: User) -> None:
    """Every way in (password, magic link, an existing session) calls this."""
    if user.deletion_requested_at is not None:
        raise ScheduledForDeletion(blocked_message(user))


def _url(endpoint: str, **values) -> str:
    """An absolute link for a mail, also from the CLI or the job (no request)."""
    return public_url(endpoint, **values)


# ---- the cancel link -------------------------------------------------------------------

def _serializer() -> URLSafeSerializer:
    # Not a timed serializer: the link's life is the grace period, enforced by
    # the row's expires_at against the (controllable) clock.
    return URLSafeSerializer(current_app.config["SECRET_KEY"], salt=f"link:{CANCEL}")


def _issue_cancel_token(user: User, req: PrivacyRequest, now: datetime) -> str:
    db.session.execute(sa.update(OneTimeToken).where(
        OneTimeToken.user_id == user.id, OneTimeToken.purpose == CANCEL, OneTimeToken.used_at.is_(None))
        .values(used_at=now))
    nonce = secrets.token_urlsafe(24)
    db.session.add(OneTimeToken(user_id=user.id, purpose=CANCEL, nonce_hash=token_hash(nonce, CANCEL),
                                created_at=now, expires_at=req.execute_after))
    return _serializer().dumps({"u": user.id, "r": req.id, "n": nonce})


def _check_cancel_token(token: str, now: datetime) -> tuple[OneTimeToken, User, PrivacyRequest]:
    try:
        data = _serializer().loads(token)
    except BadSignature:
        raise ServiceError(BAD_LINK) from None  # the error carries the token's payload
    if not isinstance(data, dict) or not {"u", "r", "n"} <= data.keys():
        raise ServiceError(BAD_LINK)
    row = db.session.scalar(sa.select(OneTimeToken).where(
        OneTimeToken.nonce_hash == token_hash(str(data["n"]), CANCEL), OneTimeToken.purpose == CANCEL))
    req = db.session.get(PrivacyRequest, data["r"]) if isinstance(data["r"], int) else None
    user = db.session.get(User, row.user_id) if row is not None else None
    if row is None or user is None or req is None or row.user_id != data["u"] or req.user_id != user.id:
        # The account may already be erased: the link died with it.
        raise ServiceError("This cancel link is no longer valid: the account it belongs to no longer exists "
                           "or the link was replaced.")
    if req.status == "cancelled" or row.used_at is not None:
        raise ServiceError("This deletion was already cancelled. You can log in as usual.")
    if req.executed_at is not None or not req.is_open:
        raise ServiceError("This deletion has already been carried out; it can no longer be cancelled.")
    if req.execute_after is None or now >= req.execute_after or row.expires_at <= now:
        raise ServiceError(f"The grace period ended on {req.execute_after:%Y-%m-%d %H:%M} UTC, so the deletion "
                           "can no longer be cancelled.")
    return row, user, req


def peek_cancel(token: str, now: datetime | None = None) -> PrivacyRequest:
    """Check a cancel link without using it (for the page that shows the button)."""
    _, _, req = _check_cancel_token(token, now or utcnow())
    return req


# ---- request and cancel ----------------------------------------------------------------

def request_deletion(user: User, actor, *, channel: str = "portal", request: PrivacyRequest | None = None,
                     now: datetime | None = None) -> PrivacyRequest:
    """Schedule the account's erasure and take its effects at once.

    `request` is a delete request from the staff queue (verified first); when
    None, a new one is filed, verified by the fresh login the page required.
    """
    now = now or utcnow()
    if user.deletion_requested_at is not None:
        raise ServiceError(f"This account is already scheduled for deletion on {scheduled_for(user):%Y-%m-%d}.")
    check_no_sole_ownership(user)
    if request is None:
        request = privacy_core.open_request(user, "delete", channel, actor=actor,
                                            verified_method="fresh_login", now=now)
    else:
        if request.kind != "delete" or not request.is_open or request.user_id != user.id:
            raise ServiceError("That is not an open deletion request for this account.")
        privacy_core.require_verified(request)
    request.execute_after = now + grace()

    sessions_ended = db.session.execute(sa.delete(UserSession).where(UserSession.user_id == user.id)).rowcount
    keys_revoked = keys.revoke_all(user, now)
    # Links already in the inbox (sign-in, reset, verify) stop working too.
    db.session.execute(sa.update(OneTimeToken).where(OneTimeToken.user_id == user.id,
                                                     OneTimeToken.used_at.is_(None)).values(used_at=now))
    user.deletion_requested_at = now

    token = _issue_cancel_token(user, request, now)
    c = current_app.config
    mail.queue(user.email, "privacy:deletion:receipt", "Your account is scheduled for deletion",
               "deletion_receipt", user=user, req=request, requested_at=now, execute_after=request.execute_after,
               grace_days=c["DELETION_GRACE_DAYS"], billing_years=policy.enforced("BILLING_RETENTION_YEARS"),
               keys_revoked=keys_revoked,
               cancel_url=_url("deletion.cancel", token=token))
    record_event(actor, "privacy:deletion:requested", subject=user, request=request.id, channel=channel,
                 sessions_ended=sessions_ended, keys_revoked=keys_revoked,
                 execute_after=request.execute_after.isoformat())
    return request


def cancel(token: str, now: datetime | None = None) -> User:
    """Use a cancel link within the grace period: sign-in works again. The
    keys stay revoked (their secrets may have leaked with the account)."""
    now = now or utcnow()
    row, user, req = _check_cancel_token(token, now)
    won = db.session.execute(sa.update(OneTimeToken).where(
        OneTimeToken.id == row.id, OneTimeToken.used_at.is_(None)).values(used_at=now)).rowcount
    if not won:
        raise ServiceError("This deletion was already cancelled. You can log in as usual.")
    user.deletion_requested_at = None
    req.status = "cancelled"
    req.closed_at = now
    req.outcome_reason = "Cancelled by the person with the link in the receipt, within the grace period."
    record_event(user, "privacy:deletion:cancelled", request=req.id)
    mail.queue(user.email, "privacy:deletion:cancelled", "Your account will not be deleted",
               "deletion_cancelled", user=user, req=req,
               login_url=_url("auth.login"), keys_url=_url("keys.index"))
    return user


# ---- erasure ---------------------------------------------------------------------------

def _remove_export_files(user_id: int) -> int:
    folder = Path(current_app.config["EXPORT_DIR"])
    removed = 0
    for name in db.session.scalars(sa.select(DataExport.filename).where(
            DataExport.user_id == user_id, DataExport.filename.is_not(None))):
        path = folder / Path(name).name  # only a bare file name, never a path out of the folder
        try:
            path.with_name(path.name + ".part").unlink(missing_ok=True)
            path.unlink()
            removed += 1
        except FileNotFoundError:
            pass
        except OSError:
            # The job's export purge removes files no export points to, so it goes then.
            log.warning("could not remove an export file of an erased account; the next purge will")
    return removed


def check_no_sole_ownership(user: User) -> None:
    """A team always has an owner: its only owner transfers ownership or
    deletes the team before their account can go."""
    sole = teams.sole_owner_of(user.id)
    if sole:
        names = ", ".join(f"“{t.name}”" for t in sole)
        raise ServiceError(f"You are the only owner of {names}. Make another member owner, or delete the "
                           "team, before you delete your account.")


def _anonymize(model, user_id: int, key_ids: list[int]) -> int:
    """The person's usage rows lose everything that points at them. A team's
    rows keep the team's id, for the team's billing and totals (P12, P31)."""
    who = model.user_id == user_id
    if key_ids:
        who = sa.or_(who, model.api_key_id.in_(key_ids))
    values = {"user_id": None, "api_key_id": None}
    if model is UsageRecord:
        values.update(project=None, tags=None)
    n = db.session.execute(sa.update(model).where(who, model.team_id.is_not(None)).values(**values)
                           .execution_options(synchronize_session=False)).rowcount
    return n + db.session.execute(sa.update(model).where(who, model.team_id.is_(None))
                                  .values(**values, team_id=None)
                                  .execution_options(synchronize_session=False)).rowcount


def _forget_mail(user_id: int) -> int:
    """The account's outbox rows go (mail.forget_account). A security or
    policy notice that never went out can no longer reach anyone, so its
    notice row goes too, rather than waiting forever as "not sent"; one that
    went out stays as the record that it did, by id only."""
    unsent = sa.select(OutboxMessage.id).where(OutboxMessage.user_id == user_id, OutboxMessage.sent_at.is_(None),
                                               OutboxMessage.failed_at.is_(None))
    for model in (IncidentNotice, PolicyNotice):
        db.session.execute(sa.delete(model).where(
            model.user_id == user_id,
            sa.or_(model.outbox_message_id.is_(None), model.outbox_message_id.in_(unsent)))
            .execution_options(synchronize_session=False))
    return mail.forget_account(user_id)


def _keep_wallet(user_id: int) -> int:
    """The personal wallet stays, with its balance and its ledger (which the
    database would not let us delete anyway, P41), tied from now on only to its
    anonymous reference. Explicit: SQLite does not run ON DELETE SET NULL here.
    A team's wallet has no user_id and is not touched."""
    return db.session.execute(sa.update(Wallet).where(Wallet.user_id == user_id, Wallet.team_id.is_(None))
                              .values(user_id=None).execution_options(synchronize_session=False)).rowcount


def _forget_budgets(user_id: int, key_ids: list[int]) -> dict[str, int]:
    """The person's budgets and alerts go, and so do the spend counters of their
    account, their keys and their part of each team: each counter is this
    person's spend per month, the same fact erasure takes out of the usage rows
    (a counter keyed by their id would tie it to them again through any record
    that still names that id). A team's own counters (team:<id>) stay, so its
    budgets keep counting. Holds of requests still naming those counters (only
    a process that died mid-request leaves one) are given back first, so the
    counters and wallets they reserved stay in step (`flask billing verify`)."""
    own = [f"account:{user_id}", *(f"key:{k}" for k in key_ids)]

    def of_person(target):
        return sa.or_(target.in_(own), sa.and_(target.like("member:%"), target.like(f"%:{user_id}")))

    names = set(own)
    member_suffix = f":{user_id}"
    stale = [request_id for request_id, counters in db.session.execute(
        sa.select(BudgetReservation.request_id, BudgetReservation.counters))
        if any(t in names or (t.startswith("member:") and t.endswith(member_suffix))
               for t in (c.split("|", 1)[0] for c in filter(None, (counters or "").split(","))))]
    if stale:
        conn = db.session.connection()
        spend.release(conn, conn.execute(sa.delete(BudgetReservation).where(BudgetReservation.request_id.in_(stale))
                                         .returning(BudgetReservation.amount_units, BudgetReservation.counters,
                                                    BudgetReservation.wallet_id)).all())
    wallet_ids = list(db.session.scalars(sa.select(Wallet.id).where(Wallet.user_id == user_id)))
    alerts = db.session.execute(sa.delete(BudgetAlert).where(sa.or_(
        BudgetAlert.user_id == user_id, of_person(BudgetAlert.target),
        BudgetAlert.target.in_([f"wallet:{w}" for w in wallet_ids])))
        .execution_options(synchronize_session=False)).rowcount
    budgets = db.session.execute(sa.delete(Budget).where(sa.or_(
        Budget.user_id == user_id, Budget.api_key_id.in_(key_ids),
        of_person(Budget.target))).execution_options(synchronize_session=False)).rowcount
    counters = db.session.execute(sa.delete(SpendCounter).where(of_person(SpendCounter.target))
                                  .execution_options(synchronize_session=False)).rowcount
    return {"budgets": budgets, "budget_alerts": alerts, "spend_counters": counters, "holds_released": len(stale)}


def erase(user_id: int, now: datetime | None = None) -> bool:
    """Erase an account: its row and every personal row hanging from it go,
    usage rows and aggregates lose everything that points at the person but
    keep their counts and cost, the personal wallet and its ledger stay under
    the wallet's anonymous reference only (same entries, same balance), the
    audit log keeps its plain ids. Returns False when there is nothing left to
    do, so running it twice is harmless."""
    now = now or utcnow()
    user = db.session.get(User, user_id)
    req = open_deletion(user_id)
    if user is None and req is None:
        return False
    key_ids = list(db.session.scalars(sa.select(ApiKey.id).where(ApiKey.user_id == user_id)))
    counts = {
        "usage_rows": _anonymize(UsageRecord, user_id, key_ids),
        "daily_rows": _anonymize(UsageDaily, user_id, key_ids),
    }
    rollups.forget_user(db.session, user_id, key_ids)
    counts.update(_forget_budgets(user_id, key_ids))  # before the wallet loses its user_id (its alerts)
    counts["wallets_kept"] = _keep_wallet(user_id)
    if user is not None:
        teams.forget_user(user_id, user.email_key)
    if user is not None:
        # Before the closing mail below is queued: that one must still go out.
        counts["mail"] = _forget_mail(user_id)
    if req is not None:
        req.executed_at = now
        if user is not None:
            # Closed while the address still exists, so the closing mail reaches it.
            privacy_core.close(req, None, "done", (
                f"Your account was erased on {now:%Y-%m-%d}. We kept only what the law or the integrity of "
                "other records requires: the ledger of your prepaid balance (top-ups, charges, refunds and "
                "adjustments, kept indefinitely) and the other billing records "
                f"({policy.enforced('BILLING_RETENTION_YEARS')} years), both tied only to an anonymous id and "
                "no longer to you; usage totals that no longer point at you (a team keeps the usage of keys "
                "you made for it); and the audit trail by number only."), now=now)
        else:
            req.status, req.outcome, req.closed_at = "closed", "done", now
            req.outcome_reason = "The account no longer existed when the deletion ran."
    if user is not None:
        counts["export_files"] = _remove_export_files(user_id)
        # Explicit deletes: SQLite does not enforce ON DELETE CASCADE unless asked.
        for model in (UserSession, OneTimeToken, RecoveryCode, ConsentEvent, DataExport, PolicyAcceptance,
                      ApiKey):
            db.session.execute(sa.delete(model).where(model.user_id == user_id)
                               .execution_options(synchronize_session=False))
        db.session.execute(sa.delete(User).where(User.id == user_id).execution_options(synchronize_session=False))
        db.session.expunge(user)
        # The closing mail is the one message left: it goes to the address, tied to no account.
        db.session.execute(sa.update(OutboxMessage).where(OutboxMessage.user_id == user_id).values(user_id=None))
    record_event(None, "privacy:deletion:erased", subject=user_id, request=req.id if req else None, **counts)
    return True


def due(now: datetime | None = None) -> list[int]:
    """Accounts whose grace period has passed and that still wait for erasure."""
    now = now or utcnow()
    return list(db.session.scalars(
        sa.select(PrivacyRequest.user_id).where(
            PrivacyRequest.kind == "delete", PrivacyRequest.status == "open",
            PrivacyRequest.executed_at.is_(None), PrivacyRequest.execute_after.is_not(None),
            PrivacyRequest.execute_after <= now, PrivacyRequest.user_id.is_not(None))
        .distinct()))


def erase_due(now: datetime | None = None) -> int:
    """Erase every account whose grace period has passed. Each erasure commits
    on its own, so one failure neither undoes nor blocks the others."""
    now = now or utcnow()
    done = 0
    for user_id in due(now):
        try:
            if erase(user_id, now=now):
                done += 1
            db.session.commit()
        except Exception:
            db.session.rollback()
            log.exception("erasing account %s failed; the next run tries again", user_id)
    return done
