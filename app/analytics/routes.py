"""The analytics page (P30, P31): placeholder until the charts land."""
from __future__ import annotations

from flask import Blueprint, render_template
from flask_login import login_required

from app.context import current_context

bp = Blueprint("analytics", __name__)


@bp.before_request
@login_required
def _require_login():
    """Analytics show the current context's usage only."""


@bp.route("/")
def index():
    return render_template("analytics/index.html", ctx=current_context())
