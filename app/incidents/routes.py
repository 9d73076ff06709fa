"""Staff pages for security incidents (P63), mounted at /staff/incidents."""
from __future__ import annotations

import math
from datetime import timedelta, timezone

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user
from wtforms import DateTimeLocalField, RadioField, StringField, TextAreaField
from wtforms.validators import DataRequired, Length, Optional, ValidationError

from app.auth.forms import EmptyForm
from app.extensions import db
from app.forms import Form
from app.models import Incident
from app.models.types import utcnow
from app.numbers import page_number
from app.services import ServiceError
from app.services import incidents as svc
from app.services.audit import record_event
from app.web import staff_required

bp = Blueprint("incidents", __name__)

NOTICES_PER_PAGE = 50


@bp.before_request
@staff_required
def _staff_only():
    pass


class IncidentForm(Form):
    title = StringField("Title", validators=[DataRequired("Give the incident a short title."), Length(max=200)])
    description = TextAreaField("What happened (internal record)",
                                validators=[DataRequired("Describe what happened."), Length(max=20000)])
    confirmed_at = DateTimeLocalField("Confirmed at (UTC)", format="%Y-%m-%dT%H:%M",
                                      validators=[DataRequired("Enter when the incident was confirmed.")])
    scope = RadioField("Affected accounts", choices=[
        ("all", "Every account"),
        ("usage", "Accounts that used the relay in a time window"),
        ("emails", "A list of addresses"),
    ], default="all")
    used_from = DateTimeLocalField("Window start (UTC)", format="%Y-%m-%dT%H:%M", validators=[Optional()])
    used_to = DateTimeLocalField("Window end (UTC)", format="%Y-%m-%dT%H:%M", validators=[Optional()])
    emails = TextAreaField("Addresses (one per line)", validators=[Optional(), Length(max=400000)])
    notice_subject = StringField("Notice subject", default="Security notice about your account",
                                 validators=[DataRequired("Give the notice a subject."), Length(max=200)])
    notice_body = TextAreaField("Notice text (sent to each affected person)",
                                validators=[DataRequired("Write the notice people will receive."),
                                            Length(max=20000)])

    def validate_confirmed_at(self, field):
        # The service refuses this too, but its message would land beside the
        # scope; checked here, it sits under the field that needs fixing.
        if field.data and _utc(field.data) > utcnow() + timedelta(minutes=5):
            raise ValidationError("The confirmation time cannot be in the future.")


def _utc(value):
    return value.replace(tzinfo=timezone.utc) if value is not None else None


def _scope(form: IncidentForm) -> svc.Scope:
    if form.scope.data == "usage":
        if not form.used_from.data or not form.used_to.data:
            raise ServiceError("Give both ends of the usage window.")
        return svc.Scope("usage", _utc(form.used_from.data), _utc(form.used_to.data))
    if form.scope.data == "emails":
        return svc.Scope("emails", emails=svc.parse_emails(form.emails.data))
    return svc.Scope("all")


@bp.route("/")
def index():
    rows = [(inc, svc.summary(inc)) for inc in svc.all_incidents()]
    return render_template("incidents/index.html", rows=rows)


@bp.route("/new", methods=["GET", "POST"])
def new():
    form = IncidentForm()
    if request.method == "GET":
        form.confirmed_at.data = utcnow().replace(tzinfo=None, second=0, microsecond=0)
    if form.validate_on_submit():
        try:
            inc = svc.record(current_user, title=form.title.data, description=form.description.data,
                             confirmed_at=_utc(form.confirmed_at.data), scope=_scope(form),
                             notice_subject=form.notice_subject.data, notice_body=form.notice_body.data)
        except ServiceError as exc:
            db.session.rollback()
            form.scope.errors = [*form.scope.errors, str(exc)]
        else:
            db.session.commit()
            flash(f"Incident recorded with {svc.summary(inc)['total']} affected accounts. "
                  "Review it, then send the notices.", "success")
            return redirect(url_for(".show", incident_id=inc.id))
    return render_template("incidents/new.html", form=form), 422 if form.errors else 200


@bp.route("/<int:incident_id>")
def show(incident_id: int):
    inc = db.session.get(Incident, incident_id) or abort(404)
    s = svc.summary(inc)
    pages = max(1, math.ceil(s["total"] / NOTICES_PER_PAGE))
    page = page_number(request.args.get("page"), last=pages)
    record_event(current_user, "staff:incident:viewed", subject=None, incident=inc.id)
    db.session.commit()
    return render_template("incidents/show.html", inc=inc, s=s, page=page, pages=pages,
                           notices=svc.notice_rows(inc, page, NOTICES_PER_PAGE), form=EmptyForm())


@bp.post("/<int:incident_id>/notify")
def notify(incident_id: int):
    inc = db.session.get(Incident, incident_id) or abort(404)
    if not EmptyForm().validate_on_submit():
        abort(400)
    n = svc.queue_notices(current_user, inc)
    flash(f"{n} notices queued; they go out through the mail outbox." if n else
          "Every affected person already has a notice queued.", "success")
    return redirect(url_for(".show", incident_id=inc.id))
