"""The staff area. Only accounts with the staff role get in; everyone else 403,
except the one public page a person reaches from a verification mail.

It shows the health of what staff answer for (the audit chain, the mail
outbox, the policy), the privacy request queue (P54), the audit log (P55) and
the wallets and their ledger (app/staff/billing.py: P41).
Opening a request's page is a view of that person's data and is itself logged,
so the person can see it. The services write every audit row; these views
parse, call them, commit once and render or redirect.
"""
from __future__ import annotations

import sqlalchemy as sa
from flask import Blueprint, abort, current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user

from app.auth.forms import EmptyForm
from app.extensions import db, limiter, login_manager
from app.models import AuditEvent, OutboxMessage, PrivacyRequest, User
from app.models.privacy import REQUEST_CHANNELS, REQUEST_KINDS
from app.models.types import utcnow
from app.numbers import page_number, parse_int
from app.services import ServiceError, deletion, exports, policy, privacy
from app.services.audit import record_event, verify_chain
from app.staff import queue, verification
from app.staff.forms import CloseForm, ExtendForm, FileRequestForm, RectifyForm, StaffCheckForm
from app.web import fresh_login_required

bp = Blueprint("staff", __name__)

# Reached from a mail by the person the request is about, who is not staff.
PUBLIC_ENDPOINTS = {"staff.verify_link"}


@bp.before_request
def _staff_only():
    if request.endpoint in PUBLIC_ENDPOINTS:
        return None
    if not current_user.is_authenticated:
        return login_manager.unauthorized()
    if not current_user.is_staff:
        abort(403)
    return None


@bp.route("/")
def index():
    count = lambda q: db.session.scalar(sa.select(sa.func.count()).select_from(q)) or 0  # noqa: E731
    stats = {
        "accounts": count(sa.select(User.id).subquery()),
        "mail_pending": count(sa.select(OutboxMessage.id).where(
            OutboxMessage.sent_at.is_(None), OutboxMessage.failed_at.is_(None)).subquery()),
        "mail_failed": count(sa.select(OutboxMessage.id).where(OutboxMessage.failed_at.is_not(None)).subquery()),
        "audit_rows": count(sa.select(AuditEvent.id).subquery()),
    }
    chain = verify_chain()
    recent = db.session.scalars(sa.select(AuditEvent).order_by(AuditEvent.id.desc()).limit(20)).all()
    record_event(current_user, "staff:dashboard:viewed")
    db.session.commit()
    return render_template("staff/index.html", stats=stats, chain=chain, recent=recent,
                           requests=queue.queue_counts(), policy_version=policy.current_version())


# ---- the queue -------------------------------------------------------------------------

@bp.route("/requests")
def requests():
    filters = queue.QueueFilters.parse(request.args)
    now = utcnow()
    page = queue.queue_page(filters, now)
    filters.page = page.page
    return render_template("staff/requests.html", page=page, filters=filters, now=now,
                           kinds=REQUEST_KINDS, channels=REQUEST_CHANNELS, statuses=queue.STATUSES,
                           sorts=queue.SORTS, kind_labels=privacy.KIND_LABELS,
                           counts=queue.queue_counts(now))


@bp.route("/requests/new", methods=["GET", "POST"])
def new_request():
    form = FileRequestForm()
    if form.validate_on_submit():
        try:
            req = queue.file_offline(current_user, form.email.data, form.kind.data, form.channel.data,
                                     form.received_at, form.details.data)
        except ServiceError as exc:
            db.session.rollback()
            form.email.errors = [*form.email.errors, str(exc)]
        else:
            db.session.commit()
            flash(f"Request #{req.id} filed. It is due on {req.due_at:%Y-%m-%d}.", "success")
            return redirect(url_for("staff.request_detail", request_id=req.id))
    return render_template("staff/new_request.html", form=form,
                           due_days=current_app.config["REQUEST_DUE_DAYS"])


def _request(request_id: int) -> PrivacyRequest:
    req = db.session.get(PrivacyRequest, request_id)
    if req is None:
        abort(404)
    return req


def _detail(req: PrivacyRequest, status: int = 200, **forms):
    """The request's page. Rendering it shows the person's data, so every
    rendering is recorded as a staff view of that person (P55)."""
    summary = queue.person_summary(req)
    if req.user_id is not None:
        privacy.record_staff_view(current_user, req.user_id, what=f"request #{req.id}")
    ctx = dict(req=req, person=summary.user, summary=summary, now=utcnow(),
               history=queue.request_history(req), kind_labels=privacy.KIND_LABELS,
               outcome_labels=privacy.OUTCOME_LABELS, methods=privacy.VERIFICATION_METHODS,
               check_form=forms.get("check_form") or StaffCheckForm(formdata=None),
               extend_form=forms.get("extend_form") or ExtendForm(formdata=None),
               close_form=forms.get("close_form") or CloseForm(formdata=None), extend_days=60)
    html = render_template("staff/request.html", **ctx)
    db.session.commit()
    return html, status


def _back(req: PrivacyRequest):
    return redirect(url_for("staff.request_detail", request_id=req.id))


@bp.route("/requests/<int:request_id>")
def request_detail(request_id: int):
    return _detail(_request(request_id))


def _apply(req: PrivacyRequest, action, success: str):
    """Run a service action on the request: commit and say so, or roll back and
    show the service's message. Then back to the request's page."""
    try:
        action()
    except ServiceError as exc:
        db.session.rollback()
        flash(str(exc), "error")
    else:
        db.session.commit()
        flash(success() if callable(success) else success, "success")
    return _back(req)


@bp.route("/requests/<int:request_id>/verify/link", methods=["POST"])
def send_verification(request_id: int):
    req = _request(request_id)
    if not EmptyForm().validate_on_submit():
        abort(400)
    return _apply(req, lambda: verification.send_link(req, current_user),
                  "A confirmation link was sent to the account's address. The request is verified when "
                  "the person confirms it.")


@bp.route("/requests/<int:request_id>/verify/check", methods=["POST"])
def staff_check(request_id: int):
    req = _request(request_id)
    form = StaffCheckForm()
    if not form.validate_on_submit():
        return _detail(req, status=422, check_form=form)
    return _apply(req, lambda: queue.verify_by_staff_check(req, current_user, form.note.data),
                  "Identity verification recorded.")


@bp.route("/requests/<int:request_id>/extend", methods=["POST"])
def extend(request_id: int):
    req = _request(request_id)
    form = ExtendForm()
    if not form.validate_on_submit():
        return _detail(req, status=422, extend_form=form)
    return _apply(req, lambda: queue.extend(req, current_user, form.reason.data),
                  lambda: f"Extended: now due on {req.due_at:%Y-%m-%d}. The person was told why by email.")


@bp.route("/requests/<int:request_id>/close", methods=["POST"])
def close(request_id: int):
    req = _request(request_id)
    form = CloseForm()
    if not form.validate_on_submit():
        return _detail(req, status=422, close_form=form)
    return _apply(req, lambda: privacy.close(req, current_user, form.outcome.data, form.reason.data),
                  f"Request #{req.id} is closed. The person was sent the outcome and reason.")


# ---- carrying a request out ------------------------------------------------------------

CONFIRM = {
    "export": ("Build an export for request #{id}?",
               "A ZIP of all of this person's data is built in the background and they receive a "
               "single-use download link by email.", "Build and send the export", False),
    "access": ("Send a copy of the data for request #{id}?",
               "The copy of the person's data is their export: a ZIP is built in the background and they "
               "receive a single-use download link by email.", "Build and send the copy", False),
    "delete": ("Delete the account of request #{id}?",
               "At once: the person's sessions end, their keys are revoked and sign-in is blocked; they are "
               "emailed a receipt. The account data is erased after the grace period unless they cancel.",
               "Delete the account", True),
    "restrict": ("Restrict the account of request #{id}?",
                 "All of this account's API keys are suspended and marketing email stops until the "
                 "restriction is lifted.", "Restrict processing", True),
    "object": ("Apply the objection of request #{id}?",
               "Marketing email is turned off for this account and the change is recorded with the source "
               "“objection”.", "Turn marketing off", True),
}


@bp.route("/requests/<int:request_id>/carry-out", methods=["GET", "POST"])
@fresh_login_required
def carry_out(request_id: int):
    req = _request(request_id)
    try:
        user = queue.open_request_of(req)
    except ServiceError as exc:
        flash(str(exc), "error")
        return _back(req)
    if req.kind == "rectify":
        return _rectify(req, user)
    form = EmptyForm()
    if not form.validate_on_submit():
        title, message, button, danger = CONFIRM[req.kind]
        return render_template("confirm.html", form=form, title=title.format(id=req.id), message=message,
                               action=url_for("staff.carry_out", request_id=req.id), button=button,
                               cancel=url_for("staff.request_detail", request_id=req.id), danger=danger)
    if req.kind in ("export", "access"):
        try:
            exports.request_export(user, "staff", request_id=req.id)
        except ServiceError as exc:
            db.session.rollback()
            flash(str(exc), "error")
            return _back(req)
        record_event(current_user, "privacy:request:carried_out", subject=user, request=req.id, kind=req.kind)
        done = "The export is being built; the person gets a download link by email when it is ready."
    elif req.kind == "delete":
        try:
            deletion.request_deletion(user, current_user, channel=req.channel, request=req)
        except ServiceError as exc:
            db.session.rollback()
            flash(str(exc), "error")
            return _back(req)
        record_event(current_user, "privacy:request:carried_out", subject=user, request=req.id, kind=req.kind)
        done = "Deletion is scheduled: sign-in is blocked and the person was sent a receipt."
    elif req.kind == "restrict":
        n = privacy.restrict(user, current_user)
        record_event(current_user, "privacy:request:carried_out", subject=user, request=req.id, kind=req.kind,
                     keys=n)
        done = f"The account is restricted: {n} key{'s' if n != 1 else ''} suspended, marketing off."
    else:  # object
        changed = queue.apply_objection(req, current_user)
        done = "Marketing email is now off." if changed else "Marketing email was already off; recorded."
    db.session.commit()
    flash(done + " Close the request when you have told the person.", "success")
    return _back(req)


def _rectify(req: PrivacyRequest, user: User):
    form = RectifyForm()
    if request.method == "GET":
        form = RectifyForm(formdata=None, data={"name": user.name, "company": user.company})
    elif form.validate_on_submit():
        try:
            changed = queue.rectify(req, current_user, form.name.data, form.company.data)
        except ServiceError as exc:
            db.session.rollback()
            form.name.errors = [*form.name.errors, str(exc)]
        else:
            db.session.commit()
            flash(f"Corrected: {', '.join(changed)}." if changed else "Nothing changed.", "success")
            return _back(req)
    # The form shows the person's profile: a view of their data.
    privacy.record_staff_view(current_user, user, what=f"request #{req.id} (rectification)")
    db.session.commit()
    return render_template("staff/rectify.html", form=form, req=req, person=user)


@bp.route("/requests/<int:request_id>/lift", methods=["GET", "POST"])
@fresh_login_required
def lift(request_id: int):
    req = _request(request_id)
    user = db.session.get(User, req.user_id) if req.user_id else None
    if user is None or req.kind != "restrict" or user.restricted_at is None:
        flash("This account is not restricted.", "info")
        return _back(req)
    try:
        privacy.require_verified(req)
    except ServiceError as exc:
        flash(str(exc), "error")
        return _back(req)
    form = EmptyForm()
    if form.validate_on_submit():
        n = privacy.lift_restriction(user, current_user)
        record_event(current_user, "privacy:request:restriction_lifted", subject=user, request=req.id, keys=n)
        db.session.commit()
        flash(f"Restriction lifted: {n} key{'s' if n != 1 else ''} work again.", "success")
        return _back(req)
    return render_template("confirm.html", form=form, title=f"Lift the restriction of request #{req.id}?",
                           message="The account's suspended keys work again from their next request, and "
                                   "marketing may be turned back on by the person.",
                           action=url_for("staff.lift", request_id=req.id), button="Lift restriction",
                           cancel=url_for("staff.request_detail", request_id=req.id), danger=False)


# ---- the confirmation link, for the person ---------------------------------------------

@bp.route("/verify/<token>", methods=["GET", "POST"])
@limiter.limit(lambda: current_app.config["RATELIMIT_AUTH"], methods=["POST"])
def verify_link(token: str):
    form = EmptyForm()
    try:
        req = verification.peek(token)
    except ServiceError as exc:
        return render_template("staff/verify_link.html", error=str(exc), form=form), 400
    if form.validate_on_submit():
        try:
            verification.confirm(token)
        except ServiceError as exc:
            db.session.rollback()
            return render_template("staff/verify_link.html", error=str(exc), form=form), 400
        db.session.commit()
        return render_template("staff/verify_link.html", done=True, req=req, form=form,
                               kind_label=privacy.KIND_LABELS[req.kind])
    return render_template("staff/verify_link.html", req=req, form=form,
                           kind_label=privacy.KIND_LABELS[req.kind])


# ---- the audit log ---------------------------------------------------------------------

@bp.route("/audit")
def audit():
    prefix = (request.args.get("event") or "").strip()[:60]
    raw_subject = (request.args.get("subject") or "").strip()
    subject_id, subject_error = None, None
    if raw_subject:
        subject_id = parse_int(raw_subject, minimum=1)
        if subject_id is None:
            subject_error = "Enter an account id (a whole number)."
    chain = verify_chain()  # before this page adds its own rows
    page = queue.audit_page(prefix, subject_id, page_number(request.args.get("page")))
    # What staff typed is kept only when it is the start of a real event tag: a
    # name or an address typed into the filter is not an audit fact (P23).
    known = bool(prefix) and db.session.scalar(
        sa.select(AuditEvent.id).where(AuditEvent.event.startswith(prefix, autoescape=True)).limit(1)) is not None
    record_event(current_user, "staff:audit:viewed",
                 **({"event_prefix": prefix} if known else {"filtered": True} if prefix else {}))
    if subject_id is not None and db.session.get(User, subject_id) is not None:
        # Audit rows about a person are their data too.
        privacy.record_staff_view(current_user, subject_id, what="audit events")
    db.session.commit()
    params = {k: v for k, v in (("event", prefix), ("subject", raw_subject)) if v}
    return render_template("staff/audit.html", chain=chain, page=page, prefix=prefix, subject=raw_subject,
                           subject_error=subject_error, params=params)


from app.staff import billing  # noqa: E402,F401  (its routes join bp: /staff/billing/...)
