"""Account deletion: request, receipt, grace period, cancel (P52).

Three steps in the browser: the explanation with a typed word and a tick box,
an "are you sure?" page, then the POST that schedules the deletion and signs
the person out. The cancel link from the receipt shows a button; only its POST
uses the link, so a mail scanner opening it changes nothing.
"""
from __future__ import annotations

import time

from flask import Blueprint, current_app, flash, redirect, render_template, session, url_for
from flask_login import current_user, logout_user

from app.auth.forms import EmptyForm
from app.deletion.forms import CONFIRM_WORD, DeleteRequestForm
from app.extensions import db
from app.services import ServiceError, deletion, policy, teams
from app.web import fresh_login_required

bp = Blueprint("deletion", __name__)

# How long the typed confirmation stays good for the "are you sure?" step.
CONFIRM_SECONDS = 600
_STEP = "deletion_confirmed_at"


def _facts() -> dict:
    c = current_app.config
    sole_owner_of = teams.sole_owner_of(current_user.id) if current_user.is_authenticated else []
    return {"grace_days": c["DELETION_GRACE_DAYS"], "billing_years": policy.enforced("BILLING_RETENTION_YEARS"),
            "confirm_word": CONFIRM_WORD, "sole_owner_of": sole_owner_of}


@bp.route("/", methods=["GET", "POST"])
@fresh_login_required
def index():
    form = DeleteRequestForm()
    if form.validate_on_submit():
        session[_STEP] = time.time()
        return render_template("confirm.html", form=EmptyForm(), danger=True,
                               title="Are you sure you want to delete your account?",
                               message=(f"You will be logged out at once, your API keys stop working, and in "
                                        f"{current_app.config['DELETION_GRACE_DAYS']} days your account is "
                                        "erased. Until then you can cancel with the link we email you."),
                               action=url_for("deletion.confirm"), button="Yes, delete my account",
                               cancel=url_for("deletion.index"))
    return render_template("deletion/index.html", form=form, **_facts())


@bp.route("/confirm", methods=["POST"])
@fresh_login_required
def confirm():
    form = EmptyForm()
    started = session.get(_STEP)
    if not form.validate_on_submit() or not started or time.time() - started > CONFIRM_SECONDS:
        flash("Please confirm the deletion again.", "info")
        return redirect(url_for("deletion.index"))
    try:
        req = deletion.request_deletion(current_user, current_user, channel="portal")
    except ServiceError as exc:
        db.session.rollback()
        flash(str(exc), "error")
        return redirect(url_for("deletion.index"))
    email = current_user.email
    db.session.commit()
    # The session rows are already gone; forget the cookie too.
    logout_user()
    session.clear()
    return render_template("deletion/scheduled.html", email=email, execute_after=req.execute_after, **_facts())


@bp.route("/cancel/<token>", methods=["GET", "POST"])
def cancel(token: str):
    form = EmptyForm()
    try:
        req = deletion.peek_cancel(token)
    except ServiceError as exc:
        return render_template("deletion/link_problem.html", message=str(exc)), 400
    if form.validate_on_submit():
        try:
            deletion.cancel(token)
        except ServiceError as exc:
            db.session.rollback()
            return render_template("deletion/link_problem.html", message=str(exc)), 400
        db.session.commit()
        return render_template("deletion/cancelled.html")
    return render_template("deletion/cancel.html", form=form, execute_after=req.execute_after)
