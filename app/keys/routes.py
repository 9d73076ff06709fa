"""The API keys pages (P10, P11).

A new, rotated or revealed secret is rendered in the response to the POST that
produced it and nowhere else: never flashed, put in the session or logged.
The keys service holds the logic and writes the audit log; these views parse,
call it, commit once and render.
"""
from __future__ import annotations

from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_login import current_user, login_required

from app.auth.forms import EmptyForm
from app.context import current_context
from app.extensions import db, limiter
from app.keys.forms import CreateKeyForm, RenameKeyForm, RevealForm, public_models
from app.models import ApiKey, Team
from app.services import ServiceError, accounts, keys, teams
from app.services.audit import record_event
from app.urls import relay_urls
from app.web import is_htmx

bp = Blueprint("keys", __name__)


@bp.before_request
@login_required
def _require_login():
    """Every key here belongs to the signed-in person."""


def _owned(key_id: int) -> ApiKey:
    """Someone else's key, or none: the same 404, so ids reveal nothing."""
    try:
        return keys.owned(current_user, key_id)
    except ServiceError:
        abort(404)


def _urls() -> dict:
    """Where clients point: the OpenAI SDK takes .../v1, the Anthropic SDK the root."""
    return relay_urls()


def _team_rules() -> dict:
    """In a team context: the team, whether this person may make keys for it,
    and the makers' names (owners and admins see every member's keys)."""
    ctx = current_context()
    if not ctx.is_team:
        return {"ctx": ctx, "team": None, "may_create": True, "makers": {}}
    team = db.session.get(Team, ctx.team_id)
    return {"ctx": ctx, "team": team, "may_create": teams.may_make_keys(team, ctx.role),
            "makers": teams.member_names(team.id) if ctx.sees_team else {}}


def _page(form: CreateKeyForm, *, new_key: ApiKey | None = None, secret: str | None = None, status: int = 200):
    """The keys page, or only its panel (new key, list, form) for htmx."""
    rules = _team_rules()
    ctx = dict(form=form, keys=keys.list_for(current_user, rules["ctx"]), new_key=new_key, secret=secret,
               reveal_on=current_app.config["KEY_REVEAL"], models=public_models(), **rules, **_urls())
    template = "keys/_panel.html" if is_htmx() else "keys/index.html"
    return render_template(template, **ctx), status


@bp.route("/", methods=["GET"])
def index():
    return _page(CreateKeyForm(formdata=None))


@bp.route("/", methods=["POST"])
def create():
    form = CreateKeyForm()
    if not current_user.is_verified:
        # The page explains why and offers to resend the link (CSRF was checked already).
        return _page(form, status=403)
    rules = _team_rules()
    if not rules["may_create"]:
        # Members make team keys only when the team allows it (owners decide).
        return _page(form, status=403)
    if not form.validate_on_submit():
        return _page(form)
    try:
        key, secret = keys.create(current_user, form.name.data, expires_at=form.expires_at,
                                  models=form.model_list, rpm_limit=form.rpm, tpm_limit=form.tpm,
                                  team_id=rules["ctx"].team_id)
    except ServiceError as exc:
        db.session.rollback()
        form.name.errors = [str(exc)]
        return _page(form)
    db.session.commit()
    # Shown in this response only; a fresh, empty form below it.
    return _page(CreateKeyForm(formdata=None), new_key=key, secret=secret)


@bp.route("/<int:key_id>/name", methods=["GET", "POST"])
def rename(key_id: int):
    """Inline rename with htmx: GET ?edit=1 gives the form fragment, POST saves
    and gives the display fragment. Without htmx the full page is used."""
    key = _owned(key_id)
    form = RenameKeyForm()
    editing = request.args.get("edit") == "1"
    if request.method == "POST":
        editing = True
        if form.validate_on_submit():
            try:
                keys.rename(current_user, key.id, form.name.data)
            except ServiceError as exc:
                db.session.rollback()
                form.name.errors = [str(exc)]
            else:
                db.session.commit()
                editing = False
                if not is_htmx():
                    flash("Name saved.", "success")
                    return redirect(url_for("keys.index"))
    elif editing:
        form.name.data = key.name
    ctx = dict(key=key, form=form, editing=editing)
    if is_htmx():
        return render_template("keys/_name.html", **ctx)
    if not editing:
        return redirect(url_for("keys.index"))
    return render_template("keys/name.html", **ctx)


@bp.route("/<int:key_id>/rotate", methods=["GET", "POST"])
def rotate(key_id: int):
    key = _owned(key_id)
    form = EmptyForm()
    if key.state() in ("revoked", "expired"):
        flash(f"A{'n' if key.state() == 'expired' else ''} {key.state()} key cannot be rotated. "
              "Create a new one.", "warning")
        return redirect(url_for("keys.index"))
    if form.validate_on_submit():
        try:
            key, secret = keys.rotate(current_user, key.id)
        except ServiceError as exc:
            db.session.rollback()
            flash(str(exc), "warning")
            return redirect(url_for("keys.index"))
        db.session.commit()
        return render_template("keys/secret.html", key=key, secret=secret, reason="rotated",
                               **_urls())
    return render_template("confirm.html", form=form, title=f"Rotate “{key.name}”?",
                           message=f"You get a new secret for this key, shown once. The current secret "
                                   f"({key.display}) stops working at once: update every app that uses it. "
                                   "Name, limits and usage history stay.",
                           action=url_for("keys.rotate", key_id=key.id), button="Rotate key",
                           cancel=url_for("keys.index"), danger=True)


@bp.route("/<int:key_id>/revoke", methods=["GET", "POST"])
def revoke(key_id: int):
    try:
        key = keys.revocable(current_user, key_id, current_context())
    except ServiceError:
        abort(404)
    form = EmptyForm()
    if key.revoked_at is not None:
        flash(f"“{key.name}” is already revoked.", "info")
        return redirect(url_for("keys.index"))
    if form.validate_on_submit():
        keys.revoke(current_user, key.id, current_context())
        db.session.commit()
        flash(f"“{key.name}” is revoked. Requests with it are refused from now on.", "success")
        return redirect(url_for("keys.index"))
    return render_template("confirm.html", form=form, title=f"Revoke “{key.name}”?",
                           message=f"Requests with {key.display} are refused from the next one on. "
                                   "This cannot be undone; the key stays in your list, greyed out, "
                                   "with its usage history.",
                           action=url_for("keys.revoke", key_id=key.id), button="Revoke key",
                           cancel=url_for("keys.index"), danger=True)


def _identity_ok(form: RevealForm) -> bool:
    """Password, and the second factor when 2FA is on, checked on every reveal."""
    wrong = accounts.confirm_identity(current_user, form.password.data, form.code.data)
    if wrong == "password":
        form.password.errors = ["That password is not correct."]
    elif wrong == "code":
        form.code.errors = ["Enter the current code from your authenticator app."]
    return wrong is None


@bp.route("/<int:key_id>/reveal", methods=["GET", "POST"])
@limiter.limit(lambda: current_app.config["RATELIMIT_AUTH"], methods=["POST"])
@limiter.limit(lambda: current_app.config["RATELIMIT_AUTH"], methods=["POST"],
               key_func=lambda: f"reveal:{current_user.get_id()}")
def reveal(key_id: int):
    key = _owned(key_id)
    if not current_app.config["KEY_REVEAL"] or key.secret_ciphertext is None or key.revoked_at is not None:
        return render_template("keys/no_reveal.html", key=key)
    form = RevealForm()
    if form.validate_on_submit():
        if _identity_ok(form):
            secret = keys.reveal(current_user, key.id)
            db.session.commit()
            return render_template("keys/secret.html", key=key, secret=secret, reason="revealed",
                                   **_urls())
        record_event(current_user, "account:api_key:reveal_failed", key_id=key.id)
        db.session.commit()
    return render_template("keys/reveal.html", form=form, key=key)
