"""What the privacy center reads about one person: the inventory of "what we
keep about you" and the list of "who looked at my data".

Read-only queries, no `request`: the retention windows come from the same
settings the scheduled job and the policy text use (P60, P61), so the dates
shown are the ones the code enforces.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

import sqlalchemy as sa
from flask import current_app
from sqlalchemy.orm import aliased

from app.extensions import db
from app.models import (
    ApiKey,
    AuditEvent,
    Budget,
    ConsentEvent,
    DataExport,
    LedgerEntry,
    OutboxMessage,
    PolicyAcceptance,
    PrivacyRequest,
    RecoveryCode,
    TeamMember,
    UsageDaily,
    UsageRecord,
    User,
    UserSession,
    Wallet,
)
from app.services import policy
from app.services.dates import add_months

UNTIL_DELETION = "until you delete your account"


def add_years(day: date, years: int) -> date:
    return add_months(day, 12 * years)


@dataclass
class Category:
    """One kind of record: how many there are and when they go."""
    key: str
    title: str
    what: str
    count: int
    facts: list[str] = field(default_factory=list)
    # The date the oldest row is deleted; None when kept until the account goes.
    deleted_on: date | None = None
    rule: str = UNTIL_DELETION


def _count(model, *where) -> int:
    return db.session.scalar(sa.select(sa.func.count()).select_from(model).where(*where)) or 0


def _oldest(column, *where):
    return db.session.scalar(sa.select(sa.func.min(column)).where(*where))


def _day(value: datetime | date | None) -> date | None:
    return value.date() if isinstance(value, datetime) else value


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def inventory(user: User) -> list[Category]:
    """Every category stored about `user`, in the order a person thinks of them."""
    cfg = current_app.config
    rule = policy.enforced  # the windows of the policy in effect, which the jobs apply
    days, months = rule("METADATA_RETENTION_DAYS"), rule("AGGREGATE_RETENTION_MONTHS")
    audit_days, billing_years = rule("AUDIT_RETENTION_DAYS"), rule("BILLING_RETENTION_YEARS")
    mail_days = rule("MAIL_RETENTION_DAYS")
    session_days = max(1, round(cfg["PERMANENT_SESSION_LIFETIME"] / 86400))
    out: list[Category] = []

    out.append(Category(
        "profile", "Profile", "Your email address, name and company, and when you signed up.", 1,
        facts=[f"Email: {user.email}", f"Name: {user.name or '—'}", f"Company: {user.company or '—'}",
               f"Signed up {user.created_at:%Y-%m-%d}"]))

    sessions = _count(UserSession, UserSession.user_id == user.id)
    codes = _count(RecoveryCode, RecoveryCode.user_id == user.id, RecoveryCode.used_at.is_(None))
    out.append(Category(
        "security", "Sign-in security",
        "Your password hash, your signed-in devices, and two-factor settings.", sessions,
        facts=[_plural(sessions, "signed-in session"),
               "Two-factor authentication " + ("on" if user.has_totp else "off"),
               _plural(codes, "recovery code") + " left" if user.has_totp else "No recovery codes"],
        rule=f"{UNTIL_DELETION}; a session ends when you sign out or after {session_days} days unused"))

    active = _count(ApiKey, ApiKey.user_id == user.id, ApiKey.revoked_at.is_(None))
    revoked = _count(ApiKey, ApiKey.user_id == user.id, ApiKey.revoked_at.is_not(None))
    out.append(Category(
        "keys", "API keys",
        "Each key's name, display prefix, limits and dates. Never the key itself in readable form.",
        active + revoked, facts=[f"{active:,} active", f"{revoked:,} revoked"]))

    teams = _count(TeamMember, TeamMember.user_id == user.id)
    team_keys = _count(ApiKey, ApiKey.user_id == user.id, ApiKey.team_id.is_not(None))
    out.append(Category(
        "teams", "Teams",
        "The teams you belong to and your role in each; the keys you made for a team. A team's owners and "
        "admins see your name, address, role and your usage totals in that team, never what you sent.",
        teams, facts=[_plural(teams, "team"), _plural(team_keys, "team key")],
        rule=("while you are a member; when you leave or are removed, your keys for that team are revoked. "
              "After your account is deleted, a team keeps its usage for billing, no longer tied to you")))

    usage = _count(UsageRecord, UsageRecord.user_id == user.id)
    oldest = _oldest(UsageRecord.started_at, UsageRecord.user_id == user.id)
    out.append(Category(
        "usage", "Request metadata",
        "One row per API request: model, tokens, cost, timing and status. Never prompts or answers.", usage,
        facts=[f"Oldest from {oldest:%Y-%m-%d}"] if oldest else [],
        deleted_on=_day(oldest + timedelta(days=days)) if oldest else None,
        rule=f"each row {days} days after its request, then only in daily totals"))

    daily = _count(UsageDaily, UsageDaily.user_id == user.id)
    first_day = _oldest(UsageDaily.day, UsageDaily.user_id == user.id)
    out.append(Category(
        "daily", "Daily usage totals", "Requests, tokens and cost per day and model.", daily,
        facts=[f"Oldest from {first_day:%Y-%m-%d}"] if first_day else [],
        deleted_on=add_months(first_day, months) if first_day else None,
        rule=f"each day's totals {months} months after that day"))

    consents = _count(ConsentEvent, ConsentEvent.user_id == user.id)
    out.append(Category(
        "consents", "Consent history", "Every time you gave or withdrew a consent, with the policy version.",
        consents, facts=[_plural(consents, "change")]))

    accepted = _count(PolicyAcceptance, PolicyAcceptance.user_id == user.id)
    out.append(Category(
        "policy", "Privacy policy acceptances", "Which version of the policy you accepted, and when.", accepted))

    requests = _count(PrivacyRequest, PrivacyRequest.user_id == user.id)
    open_ = _count(PrivacyRequest, PrivacyRequest.user_id == user.id, PrivacyRequest.status == "open")
    out.append(Category(
        "requests", "Privacy requests", "The requests you made to us and how we answered them.", requests,
        facts=[f"{open_:,} open"] if requests else [],
        rule="kept as the record of how we answered you, also after your account is deleted"))

    exports = _count(DataExport, DataExport.user_id == user.id)
    out.append(Category(
        "exports", "Data exports", "When you asked for a copy of your data, and its download status.", exports,
        rule=f"{UNTIL_DELETION}; each ZIP file is removed {cfg['EXPORT_LINK_HOURS']} hours after it is ready"))

    # By account, never by address: mail to this address before the account
    # existed was someone else's (P52).
    mine = OutboxMessage.user_id == user.id
    mails = _count(OutboxMessage, mine)
    waiting = _count(OutboxMessage, mine, OutboxMessage.sent_at.is_(None), OutboxMessage.failed_at.is_(None))
    first_done = _oldest(sa.func.coalesce(OutboxMessage.sent_at, OutboxMessage.failed_at), mine)
    out.append(Category(
        "mail", "Emails we sent you",
        "Each message's address, subject, kind and when it was sent. The text is emptied once it is sent, "
        "because links in it are secrets.", mails,
        facts=[f"{waiting:,} waiting to be sent"] if waiting else [],
        deleted_on=_day(first_done + timedelta(days=mail_days)) if first_done else None,
        rule=f"each message {mail_days} days after it was sent; unsent ones with your account"))

    audit = _count(AuditEvent, AuditEvent.subject_id == user.id)
    first_event = _oldest(AuditEvent.created_at, AuditEvent.subject_id == user.id)
    out.append(Category(
        "audit", "Security and audit events",
        "Sign-ins, key changes, consent changes and every time staff looked at your data.", audit,
        deleted_on=_day(first_event + timedelta(days=audit_days)) if first_event else None,
        rule=f"each event {audit_days} days after it happened"))

    out.append(_billing(user, billing_years))
    return out


def _billing(user: User, billing_years: int) -> Category:
    """The personal wallet and its ledger (a team's wallet is the team's)."""
    rule = (f"the ledger is kept indefinitely and the other billing records {billing_years} years, as the law "
            "requires; after you delete your account, both are tied only to an anonymous id, no longer to you. "
            "Budgets go with your account")
    wallet = db.session.scalar(sa.select(Wallet).where(Wallet.user_id == user.id, Wallet.team_id.is_(None)))
    budgets = _count(Budget, Budget.user_id == user.id)
    limits = [_plural(budgets, "budget")] if budgets else []
    if wallet is None:
        return Category("billing", "Billing records", "Your prepaid wallet and its ledger, and your budgets.", 0,
                        facts=["No billing records", *limits], rule=rule)
    entries = _count(LedgerEntry, LedgerEntry.wallet_id == wallet.id)
    return Category(
        "billing", "Billing records",
        "Your prepaid wallet: its balance, the display form of the card you paid with (never its number), your "
        "customer id at Stripe, and the ledger of every top-up, charge, refund and adjustment; your budgets.",
        entries,
        facts=[f"{entries:,} ledger {'entry' if entries == 1 else 'entries'}", f"Balance ${wallet.balance:,.2f}",
               f"Card: {wallet.payment_method} (display form only)" if wallet.payment_method
               else "No card details stored", f"Anonymous id: {wallet.anon_ref}", *limits],
        rule=rule)


# ---- who looked at my data (P55) -------------------------------------------------------

STAFF_VIEW = "staff:viewed:person"
EVENT_LABELS = {
    STAFF_VIEW: "Looked at your data",
    "privacy:request:opened": "Filed a privacy request for you",
    "privacy:request:verified": "Verified your identity for a request",
    "privacy:request:extended": "Extended the due date of a request",
    "privacy:request:closed": "Closed a privacy request",
    "privacy:restriction:set": "Restricted processing of your account",
    "privacy:restriction:lifted": "Lifted the restriction on your account",
    "privacy:request:verification_sent": "Sent you a link to confirm a request",
    "privacy:request:carried_out": "Carried out a privacy request",
    "privacy:request:rectified": "Corrected your data at your request",
    "privacy:request:objection_applied": "Applied your objection",
    "privacy:request:restriction_lifted": "Lifted the restriction on your account",
    "privacy:export:requested": "Prepared an export of your data",
    "privacy:deletion:requested": "Scheduled the deletion of your account",
    "billing:adjusted": "Adjusted your prepaid balance",
    "billing:refund:requested": "Refunded one of your top-ups",
}


@dataclass
class AccessEntry:
    at: datetime
    staff_id: int | None
    label: str
    detail: str | None


def _describe(row: AuditEvent) -> AccessEntry:
    try:
        details = json.loads(row.details or "{}")
    except ValueError:
        details = {}
    label = EVENT_LABELS.get(row.event) or row.event.replace(":", " ").replace("_", " ").capitalize()
    parts = []
    if row.event == STAFF_VIEW and details.get("what"):
        parts.append(str(details["what"])[:200])
    if details.get("request"):
        parts.append(f"request #{details['request']}")
    if row.event == "billing:adjusted" and details.get("amount"):
        parts.append(f"{str(details['amount'])[:20]} USD")
    return AccessEntry(row.created_at, row.actor_id, label, ", ".join(parts) or None)


def staff_access(user: User, page: int, per_page: int) -> tuple[list[AccessEntry], int]:
    """Staff views of `user`'s data, and other staff actions on them, newest
    first. The person's own actions are never here, even if they are staff."""
    actor = aliased(User)
    where = sa.and_(
        AuditEvent.subject_id == user.id,
        sa.or_(AuditEvent.actor_id.is_(None), AuditEvent.actor_id != user.id),
        sa.or_(AuditEvent.event == STAFF_VIEW, actor.is_staff.is_(True)),
    )
    base = sa.select(AuditEvent).outerjoin(actor, actor.id == AuditEvent.actor_id).where(where)
    total = db.session.scalar(sa.select(sa.func.count()).select_from(base.subquery())) or 0
    rows = db.session.scalars(base.order_by(AuditEvent.created_at.desc(), AuditEvent.id.desc())
                              .limit(per_page).offset((page - 1) * per_page))
    return [_describe(r) for r in rows], total
