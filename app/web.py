"""Glue between Flask-Login and our server-side sessions, plus view helpers."""
from __future__ import annotations

import math
import time
from functools import wraps
from urllib.parse import urlsplit

from flask import Flask, abort, current_app, flash, g, redirect, request, session, url_for
from flask_login import current_user, login_user, logout_user

from app.extensions import db, limiter, login_manager
from app.models import User, UserSession
from app.services import accounts, sessions
from app.services.crypto import token_hash

# Every answer to a form that must not tell whether an address has an account
# takes a whole number of these (see same_time_for_any_address).
ANSWER_FLOOR_SECONDS = 0.15


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


# ---- per-account limits -------------------------------------------------------------

def _account_limit_key(email_key: str) -> str:
    """Limiter keys are keyed hashes, so the rate-limit store (Redis) never
    holds the addresses people typed, known or not."""
    return "account:" + token_hash(email_key, "ratelimit:account")


def named_account_key() -> str:
    """The account a form names in its `email` field, however it is spelled
    (accounts.account_key: the normalization signup and lookup use)."""
    return _account_limit_key(accounts.account_key(request.form.get("email")))


def own_account_key() -> str:
    """The account acting: the signed-in one, or the one half-way through its
    second factor. Same key as when its address is typed into a form."""
    if current_user.is_authenticated:
        return _account_limit_key(current_user.email_key)
    pending = session.get("pending_2fa") or {}
    user = db.session.get(User, pending["uid"]) if pending.get("uid") else None
    if user is not None:
        return _account_limit_key(user.email_key)
    return "anonymous:" + (request.remote_addr or "")  # no account: the address limit is the one that counts


def _auth_limit() -> str:
    return current_app.config["RATELIMIT_AUTH"]


# The sign-in limits (RATELIMIT_AUTH), on POSTs only: per client address (behind
# a trusted proxy, the client's own; see security.init_app) and per account.
limit_per_address = limiter.limit(_auth_limit, methods=["POST"])
limit_per_named_account = limiter.limit(_auth_limit, key_func=named_account_key, methods=["POST"])
limit_per_own_account = limiter.limit(_auth_limit, key_func=own_account_key, methods=["POST"])


# ---- no enumeration by timing ------------------------------------------------------------

def same_time_for_any_address(view):
    """POSTs to this view answer after a whole number of ANSWER_FLOOR_SECONDS.

    For forms that give the same page whether or not an address has an account
    (forgot password, sign-in link, signup, email change), the work behind the
    page differs: a known address gets a token, an outbox row and an audit row
    in one commit, an unknown one nothing, so it answered in about half the
    time. Making the work identical cannot be exact (a commit with writes costs
    more than one without, the audit chain takes a lock, and a decoy outbox row
    for an unknown address would store an address we must not keep), and moving
    the work to a background thread would lose the outbox's promise that a mail
    commits with the change that caused it. So both paths are padded to the
    same floor, which is many times the known path's cost; on an overloaded
    machine where the work overruns it, the answer waits for the next multiple,
    so an overrun still says little. The cost is a held worker thread for that
    long, on POSTs that are rate-limited per address and per account."""
    @wraps(view)
    def wrapper(*args, **kwargs):
        if request.method != "POST":
            return view(*args, **kwargs)
        start = time.perf_counter()
        try:
            return view(*args, **kwargs)
        finally:
            elapsed = time.perf_counter() - start
            target = ANSWER_FLOOR_SECONDS * max(1, math.ceil(elapsed / ANSWER_FLOOR_SECONDS))
            time.sleep(max(0.0, target - elapsed))
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
