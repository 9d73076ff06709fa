"""Staff pages for policy changes (P62), mounted at /staff/policy.

Staff see what today's settings would change in the policy, publish it with a
summary and an effective date (a material change at least 14 days ahead),
confirm the mailing to every account, and follow its progress."""
from __future__ import annotations

import sqlalchemy as sa
from flask import Blueprint, abort, current_app, flash, redirect, render_template, url_for
from flask_login import current_user
from wtforms import BooleanField, DateField, HiddenField, TextAreaField
from wtforms.validators import DataRequired, Length

from app.auth.forms import EmptyForm
from app.extensions import db
from app.forms import Form
from app.models import PolicyVersion
from app.models.types import utcnow
from app.services import policy
from app.web import is_htmx, staff_required

bp = Blueprint("policy_staff", __name__)

FIRST_BATCHES = 5      # queued in the publishing request; the scheduled job does the rest
MORE_BATCHES = 25      # per click on "queue the rest now"


@bp.before_request
@staff_required
def _staff_only():
    pass


class PublishForm(Form):
    summary = TextAreaField("What changes, in plain words (goes into the email and the banner)",
                            validators=[DataRequired("Say what changes; people read this first."),
                                        Length(max=4000)])
    material = BooleanField("This is a material change: email every account and give them notice")
    effective_on = DateField("Takes effect on (00:00 UTC)",
                             validators=[DataRequired("Choose the date the new version takes effect.")])
    confirmed = HiddenField()


def _version(number: int) -> PolicyVersion:
    return db.session.scalar(sa.select(PolicyVersion).where(PolicyVersion.number == number)) or abort(404)


def _wake_scheduler() -> None:
    scheduler = current_app.extensions.get("jobs_scheduler")
    if scheduler is not None:
        scheduler.wake.set()


def _page(form: PublishForm, status: int = 200, error: str | None = None):
    now = utcnow()
    current = policy.current_version(now)
    waiting = policy.upcoming(now)
    draft = policy.draft()
    return render_template(
        "policy/staff.html", form=form, current=current, waiting=waiting, draft=draft,
        progress=policy.notice_progress(waiting) if waiting is not None and waiting.material else None,
        versions=policy.all_versions(), notice_days=policy.NOTICE_DAYS,
        earliest_material=policy.earliest_effective(True, now), today=now.date(),
        action_form=EmptyForm(), error=error), status


@bp.route("/")
def index():
    form = PublishForm()
    d = policy.draft()
    if d is not None:
        form.material.data = d.material_required or d.reworded
        form.effective_on.data = policy.earliest_effective(form.material.data)
    return _page(form)


@bp.get("/draft")
def draft():
    d = policy.draft()
    if d is None:
        flash("Today's settings produce the published text: there is no draft.", "info")
        return redirect(url_for("policy_staff.index"))
    return render_template("policy/draft.html", draft=d)


@bp.post("/publish")
def publish():
    form = PublishForm()
    if not form.validate_on_submit():
        return _page(form, 400)
    rules = dict(summary=form.summary.data, effective_on=form.effective_on.data, material=form.material.data)
    try:
        if not form.confirmed.data:
            # A mailing to every account cannot be taken back: say what will happen first.
            d = policy.check_publish(**rules)
            form.confirmed.data = "1"
            return render_template("policy/confirm_publish.html", form=form, draft=d,
                                   recipients=policy.recipient_count(), today=utcnow().date())
        version = policy.publish(current_user, **rules)
    except policy.PublishRefused as exc:
        db.session.rollback()
        form.confirmed.data = ""
        if exc.field:
            getattr(form, exc.field).errors = [*getattr(form, exc.field).errors, str(exc)]
            return _page(form, 400)
        return _page(form, 400, error=str(exc))
    if version.material:
        policy.queue_notices(version, max_batches=FIRST_BATCHES, staff=current_user)
        _wake_scheduler()
        flash(f"Version {version.number} is published and takes effect on {version.effective_at:%Y-%m-%d}. "
              "Every account is being emailed.", "success")
    else:
        flash(f"Version {version.number} is published and takes effect "
              f"{'now' if version.effective_at <= utcnow() else f'on {version.effective_at:%Y-%m-%d}'}.",
              "success")
    return redirect(url_for("policy_staff.index"))


@bp.post("/<int:number>/notices")
def notices(number: int):
    version = _version(number)
    if not version.material:
        abort(404)
    EmptyForm().validate_on_submit() or abort(400)
    queued = policy.queue_notices(version, max_batches=MORE_BATCHES, staff=current_user)
    _wake_scheduler()
    flash(f"{queued} more notices queued.", "success")
    return redirect(url_for("policy_staff.index"))


@bp.get("/<int:number>/progress")
def progress(number: int):
    version = _version(number)
    if not version.material:
        abort(404)
    p = policy.notice_progress(version)
    if not is_htmx():
        return redirect(url_for("policy_staff.index"))
    return render_template("policy/_progress.html", version=version, progress=p, action_form=EmptyForm(),
                           notice_days=policy.NOTICE_DAYS)
