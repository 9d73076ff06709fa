"""The home page and the signed-in dashboard."""
from flask import Blueprint, redirect, render_template, url_for
from flask_login import current_user, login_required

from app.auth.forms import EmptyForm
from app.context import current_context
from app.models.types import utcnow
from app.services import analytics, keys, teams
from app.usage.routes import usd

bp = Blueprint("main", __name__)


@bp.route("/")
def index():
    if current_user.is_authenticated:
        return redirect(url_for("main.dashboard"))
    return render_template("main/index.html")


@bp.route("/dashboard")
@login_required
def dashboard():
    """The current context's keys and last 30 days (from the analytics totals),
    and invitations waiting for the person."""
    ctx = current_context()
    now = utcnow()
    totals = analytics.totals(analytics.series(analytics.scope_for(ctx), analytics.preset_window("30d", now)))
    active = sum(1 for k in keys.list_for(current_user, ctx) if k.state(now) == "active")
    return render_template("main/dashboard.html", form=EmptyForm(), active_keys=active, ctx=ctx,
                           totals=totals, cost=usd(totals.cost_usd), days=30,
                           invitations=teams.invitations_for(current_user))


@bp.route("/healthz")
def healthz():
    return {"status": "ok"}
