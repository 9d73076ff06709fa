"""The account page: profile (P04), email, password, two-factor (P05), sessions."""
from __future__ import annotations

from flask import Blueprint, Response, abort, current_app, flash, redirect, render_template, request, session, url_for
from flask_login import current_user, login_required

from app.account.devices import describe as describe_device
from app.account.forms import ChangeEmailForm, ChangePasswordForm, ConfirmTotpForm, ProfileFieldForm, ReauthForm
from app.auth.forms import EmptyForm
from app.extensions import db
from app.models import UserSession
from app.models.types import utcnow
from app.services import ServiceError, accounts, sessions, totp
from app.services.audit import record_event
from app.services.crypto import decrypt, encrypt
from app.web import (
    current_session,
    end_login,
    fresh_login_required,
    is_htmx,
    limit_per_address,
    limit_per_own_account,
    safe_next,
    same_time_for_any_address,
)

bp = Blueprint("account", __name__)


def _now_text() -> str:
    return utcnow().strftime("%Y-%m-%d %H:%M")
PROFILE_FIELDS = {"name": "Name", "company": "Company"}


@bp.before_request
@login_required
def _require_login():
    """Every page here is the signed-in person's own (the email confirmation link
    too: it must be opened in a session of the account it changes)."""


@bp.route("/")
def index():
    return render_template("account/index.html", fields=PROFILE_FIELDS, form=EmptyForm(), device=describe_device,
                           sessions=sessions.active(current_user), this_session=current_session(),
                           codes_left=totp.recovery_codes_left(current_user) if current_user.has_totp else 0)


@bp.route("/profile/<field>", methods=["GET", "POST"])
def profile_field(field: str):
    """Inline editing with htmx: GET ?edit=1 gives the form fragment, POST saves
    and gives the display fragment. Without htmx the full page is used."""
    if field not in PROFILE_FIELDS:
        abort(404)
    form = ProfileFieldForm()
    if request.method == "GET":
        editing = request.args.get("edit") == "1"
        form.value.data = getattr(current_user, field)
    else:
        editing = True  # until saved: a refused value stays in the form, with its message
        if form.validate_on_submit():
            try:
                changed = accounts.update_profile(current_user, **{field: form.value.data or ""})
            except ServiceError as exc:
                form.value.errors = [str(exc)]
            else:
                db.session.commit()
                editing = False
                if not is_htmx():
                    if changed:
                        flash(f"{PROFILE_FIELDS[field]} saved.", "success")
                    return redirect(url_for("account.index"))
    ctx = dict(field=field, label=PROFILE_FIELDS[field], form=form, editing=editing)
    if is_htmx():
        return render_template("account/_profile_field.html", **ctx)
    return render_template("account/profile_field.html", **ctx)


@bp.route("/reauth", methods=["GET", "POST"])
@limit_per_address
@limit_per_own_account  # a password guess is one whichever browser or address it comes from
def reauth():
    form = ReauthForm()
    next_url = safe_next(request.args.get("next"), url_for("account.index"))
    if form.validate_on_submit():
        wrong = accounts.confirm_identity(current_user, form.password.data, form.code.data)
        if wrong == "password":
            form.password.errors = ["That password is not correct."]
        elif wrong == "code":
            form.code.errors = ["Enter the current code from your authenticator app."]
        else:
            sessions.reauthenticated(current_session())
            record_event(current_user, "account:reauthenticated")
            db.session.commit()
            return redirect(next_url)
        record_event(current_user, "account:reauth:failed")
        db.session.commit()
    return render_template("account/reauth.html", form=form,
                           minutes=current_app.config["REAUTH_WINDOW_MINUTES"])


@bp.route("/email", methods=["GET", "POST"])
@fresh_login_required
@limit_per_address
@limit_per_own_account  # it checks the password
@same_time_for_any_address  # a taken address gets no mail, and must not answer sooner
def change_email():
    form = ChangeEmailForm()
    if form.validate_on_submit():
        try:
            new = accounts.request_email_change(current_user, form.email.data, form.password.data)
        except ServiceError as exc:
            target = form.password if "password" in str(exc) else form.email
            target.errors = [str(exc)]
        else:
            db.session.commit()
            flash(f"We sent a confirmation link to {new}. Your address changes when you open it.", "success")
            return redirect(url_for("account.index"))
    return render_template("account/change_email.html", form=form)


@bp.route("/email/confirm/<token>")
def confirm_email(token: str):
    try:
        user = accounts.confirm_email_change(token, keep=current_session())  # ends every other session
        if user.id != current_user.id:
            raise ServiceError("This link belongs to another account. Log in to that account to use it.")
    except ServiceError as exc:
        db.session.rollback()
        return render_template("auth/link_problem.html", message=str(exc)), 400
    db.session.commit()
    flash(f"Your email address is now {user.email}.", "success")
    return redirect(url_for("account.index"))


@bp.route("/password", methods=["GET", "POST"])
@fresh_login_required
@limit_per_address
@limit_per_own_account  # it checks the current password
def change_password():
    form = ChangePasswordForm()
    if form.validate_on_submit():
        try:
            accounts.change_password(current_user, form.current.data, form.password.data, current_session())
        except ServiceError as exc:
            target = form.current if "current" in str(exc) else form.password
            target.errors = [str(exc)]
        else:
            db.session.commit()
            flash("Your password is changed. Every other session was signed out.", "success")
            return redirect(url_for("account.index"))
    return render_template("account/change_password.html", form=form)


@bp.route("/2fa/setup", methods=["GET", "POST"])
@fresh_login_required
def totp_setup():
    if current_user.has_totp:
        flash("Two-factor authentication is already on.", "info")
        return redirect(url_for("account.index"))
    if "totp_pending" not in session:
        # Kept across reloads, so a reload does not invalidate what was scanned.
        session["totp_pending"] = encrypt(totp.new_secret())
    secret = decrypt(session["totp_pending"])
    form = ConfirmTotpForm()
    if form.validate_on_submit():
        step = totp.check_code(secret, form.code.data, None)
        if step is None:
            form.code.errors = ["That code is not right. Check your device's clock and use the newest code."]
        else:
            codes = totp.enable(current_user, secret, step)
            session.pop("totp_pending", None)
            record_event(current_user, "account:2fa:enabled")
            accounts.security_notice(current_user, "on")
            db.session.commit()
            # Shown once, in this response only.
            return render_template("account/recovery_codes.html", codes=codes, fresh=True, made_at=_now_text())
    return render_template("account/totp_setup.html", form=form, secret=secret,
                           uri=totp.provisioning_uri(current_user, secret))


@bp.route("/2fa/qr.svg")
def totp_qr():
    pending = session.get("totp_pending")
    if not pending or current_user.has_totp:
        abort(404)
    svg = totp.qr_svg(totp.provisioning_uri(current_user, decrypt(pending)))
    return Response(svg, mimetype="image/svg+xml", headers={"Cache-Control": "no-store"})


@bp.route("/2fa/disable", methods=["GET", "POST"])
@fresh_login_required
def totp_disable():
    form = EmptyForm()
    if not current_user.has_totp:
        return redirect(url_for("account.index"))
    if form.validate_on_submit():
        totp.disable(current_user)
        record_event(current_user, "account:2fa:disabled")
        accounts.security_notice(current_user, "off")
        db.session.commit()
        flash("Two-factor authentication is off.", "warning")
        return redirect(url_for("account.index"))
    return render_template("confirm.html", form=form, title="Turn off two-factor authentication?",
                           message="Anyone who learns your password could then sign in. "
                                   "Your recovery codes stop working.",
                           action=url_for("account.totp_disable"), button="Turn off 2FA", danger=True)


@bp.route("/2fa/recovery-codes", methods=["POST"])
@fresh_login_required
def recovery_codes():
    form = EmptyForm()
    if not form.validate_on_submit() or not current_user.has_totp:
        return redirect(url_for("account.index"))
    codes = totp.regenerate_recovery_codes(current_user)
    record_event(current_user, "account:2fa:recovery_codes_regenerated")
    db.session.commit()
    return render_template("account/recovery_codes.html", codes=codes, fresh=False, made_at=_now_text())


@bp.route("/sessions/<int:session_id>/end", methods=["POST"])
def end_session(session_id: int):
    form = EmptyForm()
    row = db.session.get(UserSession, session_id)
    if row is None or row.user_id != current_user.id:
        abort(404)
    if form.validate_on_submit():
        if row.id == current_session().id:
            record_event(current_user, "account:logout")
            end_login()
            return redirect(url_for("auth.login"))
        sessions.end(row)
        record_event(current_user, "account:session:ended", session=session_id)
        db.session.commit()
        flash("That session is signed out.", "success")
    return redirect(url_for("account.index") + "#sessions")


@bp.route("/sessions/end-others", methods=["POST"])
def end_other_sessions():
    form = EmptyForm()
    if form.validate_on_submit():
        n = sessions.end_others(current_user, current_session())
        record_event(current_user, "account:session:ended_others", count=n)
        db.session.commit()
        flash(f"Signed out of {n} other session{'s' if n != 1 else ''}.", "success")
    return redirect(url_for("account.index") + "#sessions")
