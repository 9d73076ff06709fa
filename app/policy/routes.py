"""The privacy policy (P61): the current version and every archived one."""
from flask import Blueprint, abort, render_template
import sqlalchemy as sa

from app.extensions import db
from app.models import PolicyVersion
from app.services import policy

bp = Blueprint("policy", __name__)


@bp.route("/privacy")
def current():
    version = policy.current_version()
    return render_template("policy/show.html", version=version, current=True,
                           versions=policy.all_versions())


@bp.route("/privacy/versions/<int:number>")
def version(number: int):
    row = db.session.scalar(sa.select(PolicyVersion).where(PolicyVersion.number == number))
    if row is None:
        abort(404)
    latest = policy.current_version()
    return render_template("policy/show.html", version=row, current=row.id == latest.id,
                           versions=policy.all_versions())
