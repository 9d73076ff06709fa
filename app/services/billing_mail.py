"""Billing's essential mail (P42): a receipt for each top-up and refund, and
each budget or low-balance alert, all through the outbox.

An alert row (app/models/billing.py) is recorded by the usage writer in the
transaction that charges the spend; `send_alerts` claims each unsent one
with a conditional update and queues its mail in the same transaction, so an
alert is mailed once however many processes run it, and a crash between the
two leaves it for the next pass (the writer after its next batch, or the job).
"""
from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from flask import current_app

from app.extensions import db
from app.models import BudgetAlert, LedgerEntry, Team, TeamMember, User, Wallet
from app.models.billing import to_usd
from app.models.types import utcnow
from app.services import mail

SCOPE_WORDS = {"key": "API key", "member": "team member", "team": "team", "account": "account"}


def recipients(user_id: int | None, team_id: int | None) -> list[User]:
    """The account, or the team's owners and admins (and the member, for a member's budget)."""
    ids: set[int] = set()
    if user_id is not None:
        ids.add(user_id)
    if team_id is not None:
        ids.update(db.session.scalars(sa.select(TeamMember.user_id).where(
            TeamMember.team_id == team_id, TeamMember.role.in_(("owner", "admin")))))
    if not ids:
        return []
    return list(db.session.scalars(sa.select(User).where(User.id.in_(ids), User.email_verified_at.is_not(None))
                                   .order_by(User.id)))


def describe_target(target: str) -> str:
    """"key:12" -> 'the API key “build bot”', without any client text (names are the owner's own)."""
    from app.models import ApiKey
    scope, _, rest = target.partition(":")
    if scope == "key":
        key = db.session.get(ApiKey, int(rest))
        return f"the API key “{key.name}”" if key else "a deleted API key"
    if scope == "team":
        team = db.session.get(Team, int(rest))
        return f"the team “{team.name}”" if team else "a deleted team"
    if scope == "member":
        team_id, user_id = (int(x) for x in rest.split(":"))
        team, user = db.session.get(Team, team_id), db.session.get(User, user_id)
        who = (user.name or user.email) if user else "a former member"
        return f"{who}'s part of the team “{team.name if team else 'deleted'}”"
    if scope == "wallet":
        return "the prepaid balance"
    return "your account"


def send_alerts(now: datetime | None = None) -> int:
    """Queue the mail of every alert not yet mailed; returns how many alerts went out."""
    now = now or utcnow()
    sent = 0
    pending = list(db.session.scalars(sa.select(BudgetAlert).where(BudgetAlert.notified_at.is_(None))
                                      .order_by(BudgetAlert.id).limit(200)))
    for alert in pending:
        claimed = db.session.execute(
            sa.update(BudgetAlert).where(BudgetAlert.id == alert.id, BudgetAlert.notified_at.is_(None))
            .values(notified_at=now).execution_options(synchronize_session=False)).rowcount
        if claimed != 1:
            continue
        what = describe_target(alert.target)
        for person in recipients(alert.user_id, alert.team_id):
            if alert.kind == "low_balance":
                subject = "Your prepaid balance is running low"
            elif alert.threshold >= 100:
                subject = f"Budget reached: {what}"
            else:
                subject = f"{alert.threshold}% of a budget used: {what}"
            mail.queue(person.email, f"billing:alert:{alert.kind}", subject, "budget_alert", user=person,
                       alert=alert, what=what, limit=to_usd(alert.limit_units), team_id=alert.team_id)
        sent += 1
    db.session.commit()
    return sent


def queue_receipt(entry: LedgerEntry, wallet: Wallet) -> int:
    """A receipt for a top-up or a refund, to the account or the team's owners and admins."""
    people = recipients(None, wallet.team_id) if wallet.team_id is not None else recipients(wallet.user_id, None)
    team = db.session.get(Team, wallet.team_id) if wallet.team_id is not None else None
    for person in people:
        subject = ("Receipt: " if entry.kind == "topup" else "Refund: ") + f"${abs(entry.amount):,.2f}"
        mail.queue(person.email, f"billing:receipt:{entry.kind}", subject, "billing_receipt", user=person,
                   entry=entry, amount=abs(entry.amount), team=team, balance=wallet.balance,
                   payment_method=wallet.payment_method, site=current_app.config["SITE_NAME"])
    return len(people)
