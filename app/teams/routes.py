"""Teams (P12, P31): the list, each team's members, invitations, settings and
activity, and the invitation link.

A team someone is not in answers 404, whatever it is (no ids or names leak);
an action their role does not allow answers 403. The service holds the rules
and writes the audit log; the views parse, call it, commit once and render.
"""
from __future__ import annotations

import math

import sqlalchemy as sa
from flask import (
    Blueprint,
    abort,
    flash,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_login import current_user, login_required

from app import context
from app.extensions import db, limiter
from app.forms import EmptyForm
from app.models import Team, TeamInvitation, TeamMember, User
from app.models.types import utcnow
from app.numbers import page_number, parse_int
from app.services import ServiceError, accounts, teams
from app.teams.forms import (
    CreateTeamForm,
    DeleteTeamForm,
    InviteForm,
    RoleForm,
    TeamSettingsForm,
)
from app.web import safe_next

bp = Blueprint("teams", __name__)
INVITE_SESSION_KEY = "team_invite"
EVENT_TEXT = {
    "team:created": "created the team",
    "team:updated": "changed the team's settings",
    "team:deleted": "deleted the team",
    "team:member:role_changed": "changed a role",
    "team:member:removed": "removed a member",
    "team:member:left": "left the team",
    "team:member:joined": "joined the team",
    "team:invitation:sent": "sent an invitation",
    "team:invitation:resent": "sent an invitation again",
    "team:invitation:withdrawn": "withdrew an invitation",
    "team:invitation:declined": "declined an invitation",
    "account:api_key:created": "made a team key",
    "account:api_key:revoked": "revoked a team key",
}


@bp.before_request
def _require_login():
    """Teams are seen by their members only; an invitation link opens signed out too."""
    if request.endpoint == "teams.join":
        return None
    return login_required(lambda: None)()


def _team(slug: str, roles: tuple[str, ...] = ("owner", "admin", "member")) -> tuple[Team, TeamMember]:
    team = teams.by_slug(slug)
    member = teams.membership(team.id, current_user.id) if team is not None else None
    if member is None:
        abort(404)
    if member.role not in roles:
        abort(403)
    return team, member


def _invite_form(me: TeamMember, **kw) -> InviteForm:
    form = InviteForm(**kw)
    if me.role != "owner":  # only an owner can make an owner
        form.role.choices = [c for c in form.role.choices if c[0] != "owner"]
    return form


def _fail(exc: ServiceError) -> None:
    db.session.rollback()
    if isinstance(exc, teams.Forbidden):
        abort(403)
    flash(str(exc), "warning")


@bp.route("/", methods=["GET", "POST"])
def index():
    form = CreateTeamForm()
    if request.method == "POST" and form.validate_on_submit():
        try:
            team = teams.create(current_user, form.name.data, form.slug.data)
        except ServiceError as exc:
            db.session.rollback()
            (form.slug if "address" in str(exc).lower() else form.name).errors = [str(exc)]
        else:
            db.session.commit()
            context.switch_to(team.id)
            flash(f"“{team.name}” is ready. You are its owner; invite people below.", "success")
            return redirect(url_for("teams.show", slug=team.slug))
    status = 200 if request.method == "GET" or not form.errors else 400
    return render_template("teams/index.html", form=form, teams=context.memberships(current_user.id),
                           invitations=teams.invitations_for(current_user)), status


@bp.route("/switch", methods=["POST"])
def switch():
    form = EmptyForm()
    if form.validate_on_submit():
        ctx = context.switch_to(parse_int(request.form.get("team")))
        flash(f"Now showing: {ctx.label}.", "info")
    return redirect(safe_next(request.form.get("next"), url_for("main.dashboard")))


@bp.route("/<slug>/")
def show(slug: str):
    team, me = _team(slug)
    return _team_page(team, me, _invite_form(me, formdata=None))


def _team_page(team: Team, me: TeamMember, invite_form: InviteForm, status: int = 200):
    """The team page: members, invitations (for managers), settings (for owners)."""
    rows = teams.members(team.id)
    return render_template(
        "teams/show.html", team=team, me=me, members=rows, owners=sum(1 for m, _ in rows if m.role == "owner"),
        invitations=teams.pending_invitations(team.id) if me.role in teams.MANAGERS else [],
        invite_form=invite_form, settings_form=TeamSettingsForm(formdata=None, obj=team),
        inviters={u.id: u for _, u in rows}, now=utcnow()), status


@bp.route("/<slug>/settings", methods=["POST"])
def settings(slug: str):
    team, _ = _team(slug, ("owner",))
    form = TeamSettingsForm()
    if form.validate_on_submit():
        try:
            teams.update(current_user, team, name=form.name.data, members_make_keys=form.members_make_keys.data)
        except ServiceError as exc:
            _fail(exc)
        else:
            db.session.commit()
            flash("Team settings saved.", "success")
    else:
        for errors in form.errors.values():
            flash(" ".join(errors), "warning")
    return redirect(url_for("teams.show", slug=team.slug))


@bp.route("/<slug>/invitations", methods=["POST"])
@limiter.limit("30 per hour", key_func=lambda: f"team-invite:{current_user.get_id()}")
def invite(slug: str):
    team, me = _team(slug, teams.MANAGERS)
    form = _invite_form(me)
    if form.validate_on_submit():
        try:
            inv = teams.invite(current_user, team, form.email.data, form.role.data)
        except ServiceError as exc:
            if isinstance(exc, teams.Forbidden):
                _fail(exc)
            db.session.rollback()
            form.email.errors = [str(exc)]
        else:
            db.session.commit()
            flash(f"Invitation sent to {inv.email}.", "success")
            return redirect(url_for("teams.show", slug=team.slug) + "#invitations")
    return _team_page(team, me, form, 400)


@bp.route("/<slug>/invitations/<int:invitation_id>/<any(resend, withdraw):action>", methods=["POST"])
def invitation_action(slug: str, invitation_id: int, action: str):
    team, _ = _team(slug, teams.MANAGERS)
    if EmptyForm().validate_on_submit():
        try:
            inv = getattr(teams, action)(current_user, team, invitation_id)
        except ServiceError as exc:
            _fail(exc)
        else:
            db.session.commit()
            flash(f"Invitation to {inv.email} " + ("sent again." if action == "resend" else "withdrawn."), "success")
    return redirect(url_for("teams.show", slug=team.slug) + "#invitations")


def _member(team: Team, member_id: int) -> tuple[TeamMember, User]:
    member = db.session.get(TeamMember, member_id)
    if member is None or member.team_id != team.id:
        abort(404)
    return member, db.session.get(User, member.user_id)


@bp.route("/<slug>/members/<int:member_id>/role", methods=["POST"])
def role(slug: str, member_id: int):
    team, _ = _team(slug, ("owner",))
    member, user = _member(team, member_id)
    form = RoleForm()
    if form.validate_on_submit():
        try:
            teams.set_role(current_user, team, member, form.role.data)
        except ServiceError as exc:
            _fail(exc)
        else:
            db.session.commit()
            flash(f"{user.name or user.email} is now {member.role}.", "success")
    return redirect(url_for("teams.show", slug=team.slug))


@bp.route("/<slug>/members/<int:member_id>/remove", methods=["GET", "POST"])
def remove(slug: str, member_id: int):
    team, me = _team(slug, teams.MANAGERS)
    member, user = _member(team, member_id)
    if member.user_id == current_user.id:
        return redirect(url_for("teams.leave", slug=team.slug))
    if me.role == "admin" and member.role == "owner":
        abort(403)
    form = EmptyForm()
    if form.validate_on_submit():
        try:
            revoked = teams.remove(current_user, team, member)
        except ServiceError as exc:
            _fail(exc)
            return redirect(url_for("teams.show", slug=team.slug))
        db.session.commit()
        flash(f"{user.name or user.email} was removed from {team.name}"
              + (f"; {revoked} of their keys for the team {'was' if revoked == 1 else 'were'} revoked." if revoked
                 else "."), "success")
        return redirect(url_for("teams.show", slug=team.slug))
    made = teams.keys_made_by(team.id, member.user_id)
    return render_template("teams/remove.html", form=form, team=team, member=member, user=user, keys=made)


@bp.route("/<slug>/leave", methods=["GET", "POST"])
def leave(slug: str):
    team, me = _team(slug)
    form = EmptyForm()
    sole_owner = me.role == "owner" and teams.owners_count(team.id) <= 1
    if form.validate_on_submit() and not sole_owner:
        try:
            teams.leave(current_user, team)
        except ServiceError as exc:
            _fail(exc)
            return redirect(url_for("teams.show", slug=team.slug))
        db.session.commit()
        context.switch_to(None)
        flash(f"You left {team.name}.", "success")
        return redirect(url_for("teams.index"))
    return render_template("teams/leave.html", form=form, team=team, sole_owner=sole_owner,
                           keys=teams.keys_made_by(team.id, current_user.id))


@bp.route("/<slug>/delete", methods=["GET", "POST"])
def delete(slug: str):
    team, _ = _team(slug, ("owner",))
    form = DeleteTeamForm()
    if form.validate_on_submit():
        if " ".join(form.confirm_name.data.split()) != team.name:
            form.confirm_name.errors = [f"Type “{team.name}” exactly to confirm."]
        else:
            name = team.name
            revoked = teams.delete(current_user, team)
            db.session.commit()
            context.switch_to(None)
            flash(f"“{name}” is deleted; {revoked} team key{'' if revoked == 1 else 's'} revoked. "
                  "Its usage stays on record for billing.", "success")
            return redirect(url_for("teams.index"))
    live_keys = teams.live_key_count(team.id)
    return render_template("teams/delete.html", form=form, team=team, live_keys=live_keys,
                           members=len(teams.members(team.id))), (400 if form.errors else 200)


@bp.route("/<slug>/activity")
def activity(slug: str):
    team, _ = _team(slug, teams.MANAGERS)
    per_page = 50
    page = page_number(request.args.get("page"))
    rows, total = teams.activity(team.id, page, per_page)
    pages = max(1, math.ceil(total / per_page))
    ids = {r.actor_id for r in rows} | {r.subject_id for r in rows}
    people = {u.id: u for u in db.session.scalars(sa.select(User).where(User.id.in_(ids - {None})))}
    return render_template("teams/activity.html", team=team, rows=rows, page=min(page, pages), pages=pages,
                           people=people, text=EVENT_TEXT)


# ---- the invitation link --------------------------------------------------------------------

@bp.route("/join/<token>", methods=["GET", "POST"])
def join(token: str):
    try:
        inv = teams.open_link(token)
    except ServiceError as exc:
        return render_template("teams/join_problem.html", message=str(exc)), 400
    team = db.session.get(Team, inv.team_id)
    if not current_user.is_authenticated:
        # Kept so that someone who signs up through the link joins once their
        # address is confirmed (teams.join_on_verification).
        session[INVITE_SESSION_KEY] = inv.id
        has_account = accounts.find_by_email(inv.email) is not None
        return render_template("teams/join.html", inv=inv, team=team, has_account=has_account,
                               here=request.path)
    if current_user.email_key != inv.email_key:
        return render_template("teams/join_problem.html", wrong_account=True, message=(
            f"This invitation was sent to {inv.email}, but you are signed in as {current_user.email}. "
            "Sign out and sign in with the invited address to accept it.")), 403
    form = EmptyForm()
    if form.validate_on_submit():
        try:
            team = teams.accept(current_user, inv)
        except ServiceError as exc:
            db.session.rollback()
            return render_template("teams/join_problem.html", message=str(exc)), 400
        db.session.commit()
        context.switch_to(team.id)
        flash(f"You joined {team.name} as {inv.role}.", "success")
        return redirect(url_for("teams.show", slug=team.slug))
    return render_template("teams/join.html", inv=inv, team=team, form=form, signed_in=True)


@bp.route("/invitations/<int:invitation_id>/<any(accept, decline):action>", methods=["POST"])
def my_invitation(invitation_id: int, action: str):
    """Accept or decline an invitation to one's own confirmed address (Teams page)."""
    if EmptyForm().validate_on_submit():
        inv = db.session.get(TeamInvitation, invitation_id)
        if inv is None or inv.email_key != current_user.email_key:
            abort(404)
        try:
            if action == "accept":
                team = teams.accept(current_user, inv)
            else:
                teams.decline(current_user, inv)
        except ServiceError as exc:
            _fail(exc)
        else:
            db.session.commit()
            if action == "accept":
                context.switch_to(team.id)
                flash(f"You joined {team.name} as {inv.role}.", "success")
                return redirect(url_for("teams.show", slug=team.slug))
            flash("Invitation declined.", "info")
    return redirect(url_for("teams.index"))
