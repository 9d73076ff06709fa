"""The person's privacy center: consents, preference cookies, what we keep,
who looked, and requests (P50, P53, P55).

The logic lives in app.services.privacy (consents, requests) and
app.privacy_center.inventory (read-only queries); these views parse a form,
call one of them, commit once and render. Consent toggles are POST forms that
htmx enhances: with htmx the consent panel is swapped in place, without it the
browser follows a redirect back to the page.
"""
from __future__ import annotations

import math

import sqlalchemy as sa
from flask import (
    Blueprint,
    abort,
    flash,
    has_request_context,
    make_response,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_login import current_user, login_required

from app.auth.forms import EmptyForm
from app.extensions import csrf, db
from app.models import PolicyVersion, PrivacyRequest, User
from app.models.privacy import CONSENT_PURPOSES
from app.models.types import utcnow
from app.numbers import page_number
from app.privacy_center import inventory, prefs
from app.privacy_center.forms import ConsentForm, PreferencesForm, RequestForm
from app.services import ServiceError, consent_links
from app.services.privacy import KIND_LABELS, OUTCOME_LABELS, consent_history, open_request, requests_for, set_consent
from app.web import is_htmx

bp = Blueprint("privacy_center", __name__)

ACCESS_PER_PAGE = 25
PURPOSES = {
    "marketing_email": ("Marketing email",
                        "Occasional news about new models and features. Off until you turn it on; "
                        "every such mail has a one-click link to turn it off again."),
    "preference_cookies": ("Preference cookies",
                           "Two cookies that remember your theme and usage chart range in this browser. "
                           "Without them everything works, with the defaults."),
}
STATE_TEXT = {"marketing_email": "Marketing email is {}.", "preference_cookies": "Preference cookies are {}."}
SOURCE_LABELS = {"privacy_center": "Privacy center", "email_link": "Link in an email", "signup": "Signup",
                 "restriction": "Account restricted", "staff": "Privacy staff"}


# ---- preference cookies on every page --------------------------------------------------

@bp.app_context_processor
def _theme():
    """`body_class` for base.html: the theme the person chose, if they allowed it."""
    if not has_request_context() or not _prefs_allowed():
        return {"body_class": ""}
    theme = prefs.preferred_theme(request)
    return {"body_class": f"theme-{theme}" if theme != prefs.DEFAULT_THEME else ""}


@bp.after_app_request
def _drop_unconsented(resp):
    """A preference cookie left in a browser after consent was withdrawn
    somewhere else is deleted on the next page this person opens."""
    if has_request_context() and request.endpoint != "static" and prefs.has_pref_cookies(request):
        already = any(h.startswith(prefs.COOKIES) for h in resp.headers.getlist("Set-Cookie"))
        if not already and current_user.is_authenticated and not current_user.preference_cookies:
            prefs.clear_prefs(resp)
    return resp


def _prefs_allowed() -> bool:
    return not current_user.is_authenticated or bool(current_user.preference_cookies)


# ---- the overview ----------------------------------------------------------------------

def _versions(events) -> dict[int, int]:
    ids = {e.policy_version_id for e in events if e.policy_version_id}
    if not ids:
        return {}
    return dict(db.session.execute(sa.select(PolicyVersion.id, PolicyVersion.number)
                                   .where(PolicyVersion.id.in_(ids))).all())


def _consent_ctx(message: str | None = None, error: str | None = None) -> dict:
    history = consent_history(current_user)
    return dict(purposes=PURPOSES, history=history, version_numbers=_versions(history),
                source_labels=SOURCE_LABELS, consent_message=message, consent_error=error,
                consent_form=ConsentForm(formdata=None))


def _overview(request_form: RequestForm | None = None, pref_form: PreferencesForm | None = None,
              pref_error: str | None = None, status: int = 200):
    if pref_form is None:
        pref_form = PreferencesForm(formdata=None, theme=prefs.preferred_theme(request),
                                    range_days=str(prefs.preferred_range(request)))
    ctx = dict(_consent_ctx(), requests=requests_for(current_user), kind_labels=KIND_LABELS,
               outcome_labels=OUTCOME_LABELS, request_form=request_form or RequestForm(formdata=None),
               pref_form=pref_form, pref_error=pref_error, default_range=prefs.DEFAULT_RANGE, now=utcnow())
    return render_template("privacy_center/index.html", **ctx), status


@bp.route("/", methods=["GET"])
@login_required
def index():
    return _overview()


# ---- consent (P50) ---------------------------------------------------------------------

@bp.route("/consent/<purpose>", methods=["POST"])
@login_required
def consent(purpose: str):
    if purpose not in CONSENT_PURPOSES:
        abort(404)
    form = ConsentForm()
    message = error = None
    changed = False
    if not form.validate_on_submit():
        error = "Choose on or off, then try again."
    else:
        granted = form.granted.data == "1"
        try:
            changed = set_consent(current_user, purpose, granted, source="privacy_center")
        except ServiceError as exc:
            db.session.rollback()
            error = str(exc)
        else:
            db.session.commit()
            message = STATE_TEXT[purpose].format("on" if granted else "off")
    if is_htmx() and not (purpose == "preference_cookies" and changed):
        resp = make_response(render_template("privacy_center/_consents.html",
                                             **_consent_ctx(message=message, error=error)))
    else:
        if error:
            flash(error, "error")
        elif message:
            flash(message, "success")
        resp = redirect(url_for("privacy_center.index") + "#consents")
        if is_htmx():
            # The preference form and the page's theme depend on this consent: reload the page.
            resp = make_response("", 204)
            resp.headers["HX-Refresh"] = "true"
    if purpose == "preference_cookies" and not current_user.preference_cookies:
        # Withdrawn (or never given): both cookies are deleted in this very response.
        prefs.clear_prefs(resp)
    return resp


@bp.route("/preferences", methods=["POST"])
@login_required
def preferences():
    form = PreferencesForm()
    if not current_user.preference_cookies:
        # Checked before anything else: without consent nothing is set, whatever was sent.
        return _overview(pref_form=PreferencesForm(formdata=None),
                         pref_error="Preference cookies are off, so nothing was saved. "
                                    "Allow preference cookies above to keep a theme and chart range.")
    if not form.validate_on_submit():
        return _overview(pref_form=form)
    resp = redirect(url_for("privacy_center.index") + "#preferences")
    prefs.set_prefs(resp, form.theme.data, int(form.range_days.data))
    flash("Preferences saved in this browser.", "success")
    return resp


# ---- one-click withdrawal from a marketing mail (no login) -----------------------------

def _link_problem():
    return render_template("privacy_center/unsubscribe.html", state="invalid"), 400


@bp.route("/unsubscribe/<token>", methods=["GET", "POST"])
@csrf.exempt
def unsubscribe(token: str):
    """GET only shows a button, so a mail scanner opening the link changes nothing.

    POST withdraws. It is exempt from CSRF because mail clients send it on
    their own (RFC 8058: body "List-Unsubscribe=One-Click", no cookies, no
    token): the signed token in the URL is what authorises it, and it can only
    ever turn marketing off. The page's button posts to the same place.
    """
    user_id = consent_links.read_token(token)
    user = db.session.get(User, user_id) if user_id is not None else None
    if user is None:
        return _link_problem()
    if request.method == "POST":
        changed = set_consent(user, "marketing_email", False, source="email_link")
        db.session.commit()
        return render_template("privacy_center/unsubscribe.html", state="done", changed=changed)
    # The button's form still carries the usual token; it is not what authorises the POST.
    return render_template("privacy_center/unsubscribe.html", state="confirm", form=EmptyForm(), token=token,
                           already=not user.marketing_email)


# ---- requests: access, rectify, restrict, object (P53) ---------------------------------

@bp.route("/requests", methods=["POST"])
@login_required
def new_request():
    form = RequestForm()
    if not form.validate_on_submit():
        return _overview(request_form=form)
    already = db.session.scalar(sa.select(PrivacyRequest).where(
        PrivacyRequest.user_id == current_user.id, PrivacyRequest.kind == form.kind.data,
        PrivacyRequest.status == "open"))
    if already is not None:
        form.kind.errors = [f"You already have an open request of this kind (#{already.id}); "
                            "we answer it by its due date."]
        return _overview(request_form=form)
    try:
        req = open_request(current_user, form.kind.data, "portal", details=form.details.data,
                           verified_method="signed_in")
    except ServiceError as exc:
        db.session.rollback()
        form.details.errors = [str(exc)]
        return _overview(request_form=form)
    db.session.commit()
    flash(f"Request #{req.id} received: {KIND_LABELS[req.kind]}. "
          f"We answer by {req.due_at:%Y-%m-%d} and write to {current_user.email}.", "success")
    return redirect(url_for("privacy_center.index") + "#requests")


# ---- what we keep, who looked ----------------------------------------------------------

@bp.route("/data", methods=["GET"])
@login_required
def data():
    return render_template("privacy_center/data.html", categories=inventory.inventory(current_user))


@bp.route("/access-log", methods=["GET"])
@login_required
def access_log():
    page = page_number(request.args.get("page"), last=100_000)
    entries, total = inventory.staff_access(current_user, page, ACCESS_PER_PAGE)
    pages = max(1, math.ceil(total / ACCESS_PER_PAGE))
    if page > pages:
        page = pages
        entries, total = inventory.staff_access(current_user, page, ACCESS_PER_PAGE)
    return render_template("privacy_center/access_log.html", entries=entries, total=total, page=page,
                           pages=pages)
