"""The home page and the signed-in dashboard."""
from flask import Blueprint, redirect, render_template, url_for
from flask_login import current_user, login_required

from datetime import timedelta

from app.auth.forms import EmptyForm
from app.models.types import utcnow
from app.services import keys, usage
from app.usage.routes import SUMMARY_DAYS, usd

bp = Blueprint("main", __name__)


@bp.route("/")
def index():
    if current_user.is_authenticated:
        return redirect(url_for("main.dashboard"))
    return render_template("main/index.html")


@bp.route("/dashboard")
@login_required
def dashboard():
    totals = usage.totals_for_user(current_user.id, utcnow() - timedelta(days=SUMMARY_DAYS))
    return render_template("main/dashboard.html", form=EmptyForm(), active_keys=keys.count_active(current_user),
                           totals=totals, cost=usd(totals.cost_usd), days=SUMMARY_DAYS)


@bp.route("/healthz")
def healthz():
    return {"status": "ok"}
