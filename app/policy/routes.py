"""The privacy policy (P61): the version in effect, every archived one, and
the next one while it waits for its date (P62)."""
import sqlalchemy as sa
from flask import Blueprint, abort, render_template

from app.extensions import db
from app.models import PolicyVersion
from app.models.types import utcnow
from app.services import policy

bp = Blueprint("policy", __name__)


def _show(row: PolicyVersion, in_effect: PolicyVersion):
    return render_template("policy/show.html", version=row, in_effect=in_effect,
                           current=row.id == in_effect.id, future=row.effective_at > utcnow(),
                           upcoming=policy.upcoming(), versions=policy.all_versions())


@bp.route("/privacy")
def current():
    version = policy.current_version()
    return _show(version, version)


@bp.route("/privacy/versions/<int:number>")
def version(number: int):
    in_effect = policy.current_version()
    row = db.session.scalar(sa.select(PolicyVersion).where(PolicyVersion.number == number))
    if row is None:
        abort(404)
    return _show(row, in_effect)
