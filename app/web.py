"""Glue between Flask-Login and our server-side sessions, plus view helpers."""
from __future__ import annotations

from functools import wraps
from urllib.parse import urlsplit

from flask import Flask, abort, flash, g, redirect, request, session, url_for
from flask_login import current_user, login_user, logout_user

from app.extensions import db, login_manager
from app.models import User, UserSession
from app.services import sessions


def init_app(app: Flask) -> None:
    login_manager.login_view = "auth.login"
    login_manager.login_message = "Please log in to see that page."
    login_manager.login_message_category = "info"
    # Our session table already binds a login to its cookie; Flask-Login's own
    # protection would add nothing but a second fingerprint.
    login_manager.session_protection = None

    @login_manager.user_loader
    def load_user(user_id: str) -> User | None:
        raw = session.get("sid")
        if not raw:
            return None
        row = sessions.lookup(raw)
        if row is None or str(row.user_id) != user_id:
            session.clear()
            return None
        if row.user.deletion_requested_at is not None:  # P52: sign-in blocked, sessions ended
            sessions.end(row)
            db.session.commit()
            session.clear()
            return None
        g.user_session = row
        return row.user

    @app.context_processor
    def inject():
        return {"site_name": app.config["SITE_NAME"], "upcoming_policy": _upcoming_policy}


def _upcoming_policy():
    """The policy version waiting for its date, for the banner on every page
    (P62); once per request, and never the reason an error page fails."""
    if "upcoming_policy" not in g:
        from app.services.policy import upcoming
        try:
            g.upcoming_policy = upcoming()
        except Exception:  # a broken database must not break the error page too
            db.session.rollback()
            g.upcoming_policy = None
    return g.upcoming_policy


def is_htmx() -> bool:
    return request.headers.get("HX-Request") == "true"


def current_session() -> UserSession | None:
    current_user._get_current_object()  # make Flask-Login load the user (sets g.user_session)
    return g.get("user_session")


def begin_login(user: User, method: str) -> None:
    """Start a new server-side session with a new identifier (no fixation)."""
    session.clear()
    raw = sessions.start(user, method, request.headers.get("User-Agent"))
    db.session.commit()
    session["sid"] = raw
    session.permanent = True
    login_user(user, remember=False)


def end_login() -> None:
    row = current_session()
    if row is not None:
        sessions.end(row)
        db.session.commit()
    logout_user()
    session.clear()


def safe_next(target: str | None, default: str) -> str:
    """Only same-site relative paths: never an open redirect."""
    if not target:
        return default
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return default
    return target


def fresh_login_required(view):
    """Dangerous actions need a recent proof of identity (the re-auth window)."""
    @wraps(view)
    def wrapper(*args, **kwargs):
        if not current_user.is_authenticated:
            return login_manager.unauthorized()
        if not sessions.is_fresh(current_session()):
            flash("For your security, confirm it is you before continuing.", "info")
            return redirect(url_for("account.reauth", next=request.full_path.rstrip("?")))
        return view(*args, **kwargs)
    return wrapper


def staff_required(view):
    @wraps(view)
    def wrapper(*args, **kwargs):
        if not current_user.is_authenticated:
            return login_manager.unauthorized()
        if not current_user.is_staff:
            abort(403)
        return view(*args, **kwargs)
    return wrapper
