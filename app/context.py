"""Which hat the signed-in person wears: personal, or one of their teams (P31).

The top bar's switch stores a team id in the session; every page that shows
keys, usage or analytics reads `current_context()` and nothing else to decide
whose rows it shows. The membership is read again on every request, so a
person removed from a team (or a deleted team) falls back to personal at once.
"""
from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from flask import g, session
from flask_login import current_user

from app.extensions import db
from app.models import Team, TeamMember

SESSION_KEY = "team_id"


def readable(model, user_id: int, team_id: int | None, whole_team: bool) -> list:
    """The WHERE of rows of `model` (a table with user_id and team_id, such as
    api_keys or usage_records) that a context may read (P31): the person's
    personal rows; every row of the team for its owners and admins; a
    member's own rows of the team. The one rule for keys, usage and downloads."""
    if team_id is None:
        return [model.user_id == user_id, model.team_id.is_(None)]
    if whole_team:
        return [model.team_id == team_id]
    return [model.team_id == team_id, model.user_id == user_id]


def rollup_cell(user_id: int, team_id: int | None, whole_team: bool) -> tuple[int, int]:
    """The (team_id, user_id) of the usage_rollups scope holding exactly the
    rows `readable` selects: (0, me) personal, (T, 0) a whole team, (T, me) a
    member's part of it (0 stands for "none" there, see UsageRollup)."""
    if team_id is None:
        return 0, user_id
    return team_id, 0 if whole_team else user_id


@dataclass(frozen=True)
class Context:
    user_id: int
    team_id: int | None = None
    team_name: str | None = None
    team_slug: str | None = None
    role: str | None = None  # "owner", "admin" or "member" when team_id is set

    @property
    def is_team(self) -> bool:
        return self.team_id is not None

    @property
    def sees_team(self) -> bool:
        """Owners and admins see the whole team's usage; members their own (P31)."""
        return self.role in ("owner", "admin")

    def rows_of(self, model) -> list:
        return readable(model, self.user_id, self.team_id, self.sees_team)

    @property
    def rollup_cell(self) -> tuple[int, int]:
        return rollup_cell(self.user_id, self.team_id, self.sees_team)

    @property
    def label(self) -> str:
        return self.team_name if self.is_team else "Personal"


def memberships(user_id: int) -> list[tuple[Team, str]]:
    """The person's teams with their role, by name."""
    rows = db.session.execute(
        sa.select(Team, TeamMember.role).join(TeamMember, TeamMember.team_id == Team.id)
        .where(TeamMember.user_id == user_id).order_by(Team.name, Team.id)).all()
    return [(team, role) for team, role in rows]


def context_for(user_id: int, team_id: int | None) -> Context:
    """The context for a person and a team they claim; personal if they are
    not (or no longer) a member."""
    if team_id is not None:
        row = db.session.execute(
            sa.select(Team.name, Team.slug, TeamMember.role).join(TeamMember, TeamMember.team_id == Team.id)
            .where(Team.id == team_id, TeamMember.user_id == user_id)).first()
        if row is not None:
            return Context(user_id=user_id, team_id=team_id, team_name=row.name, team_slug=row.slug, role=row.role)
    return Context(user_id=user_id)


def current_context() -> Context:
    """The signed-in person's context for this request (call after login_required)."""
    if "context" not in g:
        claimed = session.get(SESSION_KEY)
        ctx = context_for(current_user.id, claimed if isinstance(claimed, int) else None)
        if claimed is not None and not ctx.is_team:
            session.pop(SESSION_KEY, None)
        g.context = ctx
    return g.context


def switch_to(team_id: int | None) -> Context:
    """Set the context; a team the person is not in leaves them personal."""
    ctx = context_for(current_user.id, team_id)
    if ctx.is_team:
        session[SESSION_KEY] = ctx.team_id
    else:
        session.pop(SESSION_KEY, None)
    g.context = ctx
    return ctx


def init_app(app) -> None:
    @app.context_processor
    def _inject():
        def my_teams():
            if "my_teams" not in g:
                g.my_teams = memberships(current_user.id) if current_user.is_authenticated else []
            return g.my_teams

        def ctx():
            return current_context() if current_user.is_authenticated else None

        return {"current_context": ctx, "my_teams": my_teams}
