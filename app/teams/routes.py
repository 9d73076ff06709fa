"""Teams (P12, P31): the list, each team's members, invitations and activity."""
from __future__ import annotations

from flask import Blueprint, redirect, render_template, request, url_for
from flask_login import login_required

from app import context
from app.forms import EmptyForm
from app.numbers import parse_int
from app.web import safe_next

bp = Blueprint("teams", __name__)


@bp.before_request
@login_required
def _require_login():
    """Teams are seen by their members only."""


@bp.route("/")
def index():
    return render_template("teams/index.html", teams=context.memberships(context.current_context().user_id))


@bp.route("/switch", methods=["POST"])
def switch():
    form = EmptyForm()
    if form.validate_on_submit():
        context.switch_to(parse_int(request.form.get("team")))
    return redirect(safe_next(request.form.get("next"), url_for("main.dashboard")))
