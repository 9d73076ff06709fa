"""Signup, email verification, login (password, TOTP, magic link), reset, logout."""
from __future__ import annotations

import time

from flask import Blueprint, current_app, flash, redirect, render_template, request, session, url_for
from flask_login import current_user, login_required

from app.auth.forms import CodeForm, EmailOnlyForm, EmptyForm, LoginForm, NewPasswordForm, SignupForm
from app.extensions import db, limiter
from app.models import User
from app.services import ServiceError, accounts, policy, teams, tokens, totp
from app.services.audit import record_event
from app.web import (
    begin_login,
    current_session,
    end_login,
    limit_per_address,
    limit_per_named_account,
    limit_per_own_account,
    own_account_key,
    safe_next,
    same_time_for_any_address,
)

bp = Blueprint("auth", __name__)

PENDING_2FA_SECONDS = 300


@bp.route("/signup", methods=["GET", "POST"])
@limit_per_address
@limit_per_named_account
@same_time_for_any_address
def signup():
    if current_user.is_authenticated:
        return redirect(url_for("main.dashboard"))
    form = SignupForm()
    if request.method == "GET" and isinstance(request.args.get("email"), str):
        form.email.data = request.args["email"][:320]  # an invitation link names the invited address
    version = policy.current_version()
    if form.validate_on_submit():
        try:
            accounts.signup(form.email.data, form.password.data, version,
                            marketing_email=form.marketing_email.data)
        except ServiceError as exc:
            target = form.password if "characters" in str(exc) else form.email
            target.errors = [*target.errors, str(exc)]
        else:
            db.session.commit()
            session["signup_email"] = form.email.data.strip()
            return redirect(url_for("auth.check_email"))
    return render_template("auth/signup.html", form=form, policy_version=version,
                           min_age=policy.enforced("MIN_AGE"))


@bp.route("/signup/check-email")
def check_email():
    return render_template("auth/check_email.html", email=session.get("signup_email"))


@bp.route("/verify/<token>")
def verify(token: str):
    mine = current_session() if current_user.is_authenticated else None
    try:
        user = accounts.verify_email(token, keep=mine)  # ends every other session of the account
    except ServiceError as exc:
        db.session.rollback()
        return render_template("auth/link_problem.html", message=str(exc)), 400
    joined = teams.join_on_verification(user, session.pop("team_invite", None))
    db.session.commit()
    flash("Thank you, your email address is confirmed."
          + (f" You joined {joined.name}." if joined else ""), "success")
    if current_user.is_authenticated and current_user.id == user.id:
        return redirect(url_for("main.dashboard"))
    return redirect(url_for("auth.login"))


@bp.route("/verify/resend", methods=["POST"])
@login_required
@limiter.limit(lambda: current_app.config["RATELIMIT_RESEND"], key_func=own_account_key)
def resend_verification():
    form = EmptyForm()
    if form.validate_on_submit() and not current_user.is_verified:
        accounts.send_verification(current_user)
        record_event(current_user, "account:email:verification_resent")
        db.session.commit()
        flash(f"We sent a new confirmation link to {current_user.email}.", "success")
    return redirect(url_for("main.dashboard"))


def _finish_first_factor(user: User, method: str, next_url: str):
    """Password or magic link accepted: either log in or ask for the TOTP code."""
    if user.has_totp:
        session.clear()
        session["pending_2fa"] = {"uid": user.id, "method": method, "at": time.time(), "next": next_url}
        db.session.commit()
        return redirect(url_for("auth.two_factor"))
    record_event(user, "account:login:succeeded", method=method)
    begin_login(user, method)
    return redirect(next_url)


@bp.route("/login", methods=["GET", "POST"])
@limit_per_address
@limit_per_named_account
def login():
    if current_user.is_authenticated:
        return redirect(url_for("main.dashboard"))
    form = LoginForm()
    next_url = safe_next(request.args.get("next"), url_for("main.dashboard"))
    if form.validate_on_submit():
        try:
            user = accounts.authenticate(form.email.data, form.password.data)
        except ServiceError as exc:  # a correct password on an account scheduled for deletion
            db.session.commit()
            form.password.errors = [str(exc)]
            return render_template("auth/login.html", form=form)
        if user is not None:
            return _finish_first_factor(user, "password", next_url)
        db.session.commit()  # keeps the failed-login audit row
        form.password.errors = ["That email and password do not match an account."]
    return render_template("auth/login.html", form=form)


@bp.route("/login/2fa", methods=["GET", "POST"])
@limit_per_own_account
@limit_per_address
def two_factor():
    pending = session.get("pending_2fa")
    if not pending:
        return redirect(url_for("auth.login"))
    if time.time() - pending["at"] > PENDING_2FA_SECONDS:
        session.pop("pending_2fa", None)
        flash("Your sign-in took too long. Please start again.", "info")
        return redirect(url_for("auth.login"))
    user = db.session.get(User, pending["uid"])
    if user is None or not user.has_totp:
        session.clear()
        return redirect(url_for("auth.login"))
    form = CodeForm()
    if form.validate_on_submit():
        used = totp.verify_second_factor(user, form.code.data)
        if used:
            record_event(user, "account:login:succeeded", method=pending["method"], second_factor=used)
            next_url = safe_next(pending.get("next"), url_for("main.dashboard"))
            begin_login(user, pending["method"] + "+" + used)  # clears the session, so flash after it
            if used == "recovery":
                left = totp.recovery_codes_left(user)
                flash(f"You used a recovery code; {left} remain. Make new ones from your account page.",
                      "warning")
            return redirect(next_url)
        record_event(None, "account:2fa:failed", subject=user)
        db.session.commit()
        form.code.errors = ["That code is not right. Use the current code from your app, or a recovery code."]
    return render_template("auth/two_factor.html", form=form)


@bp.route("/logout", methods=["POST"])
def logout():
    form = EmptyForm()
    if form.validate_on_submit() and current_user.is_authenticated:
        record_event(current_user, "account:logout")
        end_login()
        flash("You are logged out.", "info")
    return redirect(url_for("main.index"))


@bp.route("/forgot", methods=["GET", "POST"])
@limit_per_address
@limit_per_named_account
@same_time_for_any_address
def forgot():
    form = EmailOnlyForm()
    if form.validate_on_submit():
        accounts.request_reset(form.email.data)
        db.session.commit()
        return render_template("auth/link_sent.html", what="a link to reset your password",
                               minutes=current_app.config["RESET_LINK_MINUTES"])
    return render_template("auth/forgot.html", form=form)


@bp.route("/reset/<token>", methods=["GET", "POST"])
@limit_per_address
def reset(token: str):
    if not tokens.peek(token, tokens.RESET):
        return render_template("auth/link_problem.html",
                               message="This reset link has expired or was already used. Ask for a new one.",
                               retry=url_for("auth.forgot")), 400
    form = NewPasswordForm()
    if form.validate_on_submit():
        try:
            accounts.reset_password(token, form.password.data)
        except ServiceError as exc:
            db.session.rollback()
            form.password.errors = [str(exc)]
        else:
            db.session.commit()
            if current_user.is_authenticated:
                end_login()
            flash("Your password is reset and every session is signed out. Log in with the new password.",
                  "success")
            return redirect(url_for("auth.login"))
    return render_template("auth/reset.html", form=form)


@bp.route("/login/link", methods=["GET", "POST"])
@limit_per_address
@limit_per_named_account
@same_time_for_any_address
def magic_request():
    form = EmailOnlyForm()
    if form.validate_on_submit():
        accounts.request_magic_link(form.email.data)
        db.session.commit()
        return render_template("auth/link_sent.html", what="a sign-in link",
                               minutes=policy.enforced("MAGIC_LINK_MINUTES"))
    return render_template("auth/magic_request.html", form=form,
                           minutes=policy.enforced("MAGIC_LINK_MINUTES"))


@bp.route("/login/link/<token>", methods=["GET", "POST"])
@limit_per_address
def magic(token: str):
    """GET shows a button; only the POST uses the link, so a mail scanner that
    opens links cannot spend it."""
    form = EmptyForm()
    if request.method == "POST" and form.validate_on_submit():
        try:
            user = accounts.consume_magic_link(token)
        except ServiceError as exc:
            db.session.rollback()
            return render_template("auth/link_problem.html", message=str(exc),
                                   retry=url_for("auth.magic_request")), 400
        return _finish_first_factor(user, "magic_link", url_for("main.dashboard"))
    if not tokens.peek(token, tokens.MAGIC):
        return render_template("auth/link_problem.html",
                               message="This sign-in link has expired or was already used. Ask for a new one.",
                               retry=url_for("auth.magic_request")), 400
    return render_template("auth/magic_confirm.html", form=form)
