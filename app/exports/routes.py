"""Data export: a ZIP of everything about the person, in the portal and through the API (P51).

Portal: /privacy-center/export/ queues an export (built in the background,
progress polled with htmx) and lists the person's exports; a ready export is
fetched once from /privacy-center/export/download/<token>, by its owner only.
API: GET /api/v1/export with one of the person's keys streams the same ZIP.
The logic lives in app/services/exports.py; these views parse, call, commit.
"""
from __future__ import annotations

import re

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    flash,
    jsonify,
    redirect,
    render_template,
    request,
    send_file,
    stream_with_context,
    url_for,
)
from flask_login import current_user, login_required

from app import keyauth
from app.auth.forms import EmptyForm
from app.extensions import db, limiter
from app.models import User
from app.models.types import utcnow
from app.services import ServiceError, exports
from app.services.audit import record_event
from app.services.keys import hash_key
from app.web import is_htmx

bp = Blueprint("exports", __name__)


@bp.record_once
def _setup(state) -> None:
    exports.init_app(state.app)


def _download_url(exp) -> str | None:
    token = exports.download_token(exp) if exp.status == "ready" else None
    return url_for("exports.download", token=token) if token else None


def _context() -> dict:
    items = exports.exports_for(current_user)
    return dict(form=EmptyForm(), exports=items, busy=any(e.status in exports.IN_FLIGHT for e in items),
                download_url=_download_url, labels=exports.STATUS_LABELS, now=utcnow(),
                hours=current_app.config["EXPORT_LINK_HOURS"])


# ---- the portal -----------------------------------------------------------------------

@bp.route("/privacy-center/export/", methods=["GET"])
@login_required
def index():
    return render_template("exports/index.html", **_context())


@bp.route("/privacy-center/export/", methods=["POST"])
@login_required
@limiter.limit(lambda: current_app.config["RATELIMIT_EXPORT_REQUEST"],
               key_func=lambda: f"export-request:{current_user.get_id()}")
def create():
    form = EmptyForm()
    if not form.validate_on_submit():
        abort(400)
    try:
        exports.request_export(current_user, "portal")
    except ServiceError as exc:
        db.session.rollback()
        flash(str(exc), "warning")
    else:
        db.session.commit()
        flash("We are preparing your export. This page shows its progress, and we will email you "
              "when it is ready.", "success")
    return redirect(url_for("exports.index"))


@bp.route("/privacy-center/export/status", methods=["GET"])
@login_required
def status():
    """The list of exports alone: polled by htmx while one is being prepared."""
    if not is_htmx():
        return redirect(url_for("exports.index"))
    return render_template("exports/_panel.html", **_context())


@bp.route("/privacy-center/export/download/<token>", methods=["GET"])
@login_required
def download(token: str):
    """Single use: the row is marked downloaded before the first byte, and the
    file is unlinked once opened (it lives on only as the open handle we stream)."""
    exp = exports.find_by_token(token)
    if exp is None:
        return render_template("exports/gone.html", reason="unknown"), 404
    if exp.user_id != current_user.id:
        record_event(current_user, "privacy:export:download_refused", subject=exp.user_id, export=exp.id)
        db.session.commit()
        return render_template("exports/gone.html", reason="other"), 404
    path = exports.claim_download(exp, current_user)
    if path is None:
        db.session.rollback()
        reason = "used" if exp.status == "downloaded" else "expired"
        return render_template("exports/gone.html", reason=reason, exp=exp), 410
    fh = open(path, "rb")
    db.session.commit()
    path.unlink(missing_ok=True)  # the open handle keeps the bytes until the response ends
    resp = send_file(fh, mimetype="application/zip", as_attachment=True,
                     download_name=_file_name(exp.finished_at or utcnow()),
                     max_age=0, conditional=False, etag=False)
    resp.headers["Cache-Control"] = "no-store"
    return resp


# ---- the API --------------------------------------------------------------------------

def _file_name(when) -> str:
    site = re.sub(r"[^a-z0-9]+", "-", current_app.config["SITE_NAME"].lower()).strip("-") or "relay"
    return f"{site}-data-export-{when.strftime('%Y-%m-%d')}.zip"


def _api_error(status: int, type_: str, message: str):
    return jsonify({"error": {"type": type_, "message": message}}), status


def _limit_key() -> str:
    """Per key (its keyed hash, never the key); per address when none is sent."""
    raw = keyauth.raw_key(request.headers)
    return f"export-api:{hash_key(raw)}" if raw else f"export-api-ip:{request.remote_addr}"


@bp.route("/api/v1/export", methods=["GET"])
@limiter.limit(lambda: current_app.config["RATELIMIT_EXPORT_API"], key_func=_limit_key)
def api_export():
    """The same checks as the relay: unknown, revoked or expired key 401,
    suspended (restricted account) 403."""
    key, refused = keyauth.authenticate(request.headers, db.engine, hash_key)
    if refused:  # the relay's rule, by the relay's code (P10, P53)
        status, type_, message = refused
        return _api_error(status, type_, message)
    user = db.session.get(User, key.user_id)
    record_event(user, "privacy:export:api", key_id=key.id)
    db.session.commit()
    name = _file_name(utcnow())
    return Response(stream_with_context(exports.iter_zip(user)), mimetype="application/zip",
                    headers={"Content-Disposition": f'attachment; filename="{name}"',
                             "Cache-Control": "no-store"})
