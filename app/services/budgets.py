"""Setting and reading spending limits (P26), for the Billing page.

Who may set what: a person sets their account's budget and those of their
personal keys; a team's owners and admins set the team's, each member's and
each team key's. Members see their own member budget and the team keys they
made, read-only. Enforcement is app/relay/budget.py and app/services/spend.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import sqlalchemy as sa

from app.extensions import db
from app.models import ApiKey, Budget, SpendCounter, TeamMember
from app.models.billing import to_units, to_usd
from app.models.types import utcnow
from app.numbers import NotDollars, parse_dollars
from app.services import ServiceError, audit
from app.services.spend import TOTAL, month_of

MAX_USD = Decimal(1_000_000)


class Forbidden(ServiceError):
    pass


def parse_usd(text: str | None, label: str) -> int | None:
    """A form's dollar amount -> units; empty -> None (no limit)."""
    out_of_range = f"{label}: enter an amount from $0.01 to ${MAX_USD:,.0f}, in cents."
    try:
        value = parse_dollars(text)
    except NotDollars as exc:
        raise ServiceError(out_of_range if exc.reason in ("cents", "range")
                           else f"{label}: enter an amount in dollars, such as 25 or 9.50.") from None
    if value is None:
        return None
    if not Decimal("0.01") <= value <= MAX_USD:
        raise ServiceError(out_of_range)
    return to_units(value)


def target_of(scope: str, *, key: ApiKey | None = None, user_id: int | None = None,
              team_id: int | None = None) -> tuple[str, int | None, int | None, int | None]:
    """(target, user id, team id, key id) of a budget."""
    if scope == "key":
        return f"key:{key.id}", key.user_id, key.team_id, key.id
    if scope == "member":
        return f"member:{team_id}:{user_id}", user_id, team_id, None
    if scope == "team":
        return f"team:{team_id}", None, team_id, None
    if scope == "account":
        return f"account:{user_id}", user_id, None, None
    raise ValueError(scope)


def may_set(ctx, scope: str, key: ApiKey | None = None) -> bool:
    if ctx.is_team:
        if scope == "account":
            return False
        if scope == "key" and (key is None or key.team_id != ctx.team_id):
            return False
        return ctx.sees_team
    if scope == "key":
        return key is not None and key.team_id is None and key.user_id == ctx.user_id
    return scope == "account"


def set_budget(actor, ctx, scope: str, monthly: str | None, total: str | None, *, key: ApiKey | None = None,
               member_id: int | None = None) -> Budget | None:
    """Set (or, with both amounts empty, remove) one budget; audited."""
    if not may_set(ctx, scope, key):
        raise Forbidden("Only a team's owners and admins set its budgets; you set your own account's.")
    if scope == "member":
        if db.session.scalar(sa.select(TeamMember.id).where(TeamMember.team_id == ctx.team_id,
                                                             TeamMember.user_id == member_id)) is None:
            raise ServiceError("That person is not a member of this team.")
    target, user_id, team_id, key_id = target_of(scope, key=key, user_id=member_id if scope == "member"
                                                 else ctx.user_id, team_id=ctx.team_id)
    monthly_units, total_units = parse_usd(monthly, "Monthly limit"), parse_usd(total, "Total limit")
    budget = db.session.scalar(sa.select(Budget).where(Budget.target == target))
    if monthly_units is None and total_units is None:
        if budget is not None:
            db.session.delete(budget)
            audit.record_event(actor, "billing:budget:removed", target=target, team_id=team_id)
        return None
    if budget is None:
        budget = Budget(target=target, scope=scope, user_id=user_id, team_id=team_id, api_key_id=key_id)
        db.session.add(budget)
    budget.monthly_units, budget.total_units, budget.updated_at = monthly_units, total_units, utcnow()
    audit.record_event(actor, "billing:budget:set", target=target, team_id=team_id,
                       monthly=str(to_usd(monthly_units)) if monthly_units is not None else None,
                       total=str(to_usd(total_units)) if total_units is not None else None)
    return budget


@dataclass(frozen=True)
class Line:
    """One budget as the page shows it."""
    scope: str
    target: str
    label: str
    monthly_units: int | None
    total_units: int | None
    month_spent: int
    month_held: int
    total_spent: int
    editable: bool
    key_id: int | None = None
    member_id: int | None = None

    @property
    def monthly_pct(self) -> int | None:
        return None if not self.monthly_units else min(100, self.month_spent * 100 // self.monthly_units)

    @property
    def total_pct(self) -> int | None:
        return None if not self.total_units else min(100, self.total_spent * 100 // self.total_units)

    def usd(self, units: int | None) -> Decimal | None:
        return None if units is None else to_usd(units)


def lines(ctx, keys: list[ApiKey], members: list[tuple[int, str]], now: datetime | None = None) -> list[Line]:
    """The budgets a context shows: its own scope, its members (owners and
    admins), the member's own part (members), and each key it lists."""
    now = now or utcnow()
    wanted: list[tuple[str, str, str, bool, int | None, int | None]] = []
    if ctx.is_team:
        if ctx.sees_team:  # a member sees only her own part (P31)
            wanted.append(("team", f"team:{ctx.team_id}", "The whole team", True, None, None))
        for uid, name in members:
            if ctx.sees_team or uid == ctx.user_id:
                label = f"You ({name})" if uid == ctx.user_id else name
                wanted.append(("member", f"member:{ctx.team_id}:{uid}", label, ctx.sees_team, None, uid))
    else:
        wanted.append(("account", f"account:{ctx.user_id}", "Your account (personal keys)", True, None, None))
    for k in keys:
        if k.revoked_at is None:
            wanted.append(("key", f"key:{k.id}", f"Key “{k.name}”", may_set(ctx, "key", k), k.id, None))
    targets = [w[1] for w in wanted]
    budgets = {b.target: b for b in db.session.scalars(sa.select(Budget).where(Budget.target.in_(targets)))}
    month = month_of(now)
    counters = {(c.target, c.period): c for c in db.session.scalars(
        sa.select(SpendCounter).where(SpendCounter.target.in_(targets), SpendCounter.period.in_((month, TOTAL))))}
    out = []
    for scope, target, label, editable, key_id, member_id in wanted:
        b = budgets.get(target)
        m, t = counters.get((target, month)), counters.get((target, TOTAL))
        out.append(Line(scope, target, label, b.monthly_units if b else None, b.total_units if b else None,
                        m.spent_units if m else 0, m.reserved_units if m else 0, t.spent_units if t else 0,
                        editable, key_id, member_id))
    return out
