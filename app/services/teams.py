"""Teams (P12, P31): create, rename, delete; members and their roles; emailed
invitations; the keys a member made for a team.

Roles: owners manage everything (roles, settings, deletion); admins invite,
remove members and manage the team's keys; members use the team and see their
own usage. A team always has an owner: the last one cannot leave, be demoted,
be removed or erase their account (the deletion flow asks them to transfer
ownership or delete the team first).

Every change is one audit event carrying `team_id`, which is also what the
team's activity page reads. Invitations are links signed with itsdangerous and
backed by a row holding only the keyed hash of their nonce: a link works once,
until it expires or is withdrawn, and only for the address it was sent to.
"""
from __future__ import annotations

import re
import secrets
import unicodedata
from datetime import timedelta

import sqlalchemy as sa
from flask import current_app
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer
from sqlalchemy.orm.exc import ObjectDeletedError

from app.extensions import db
from app.models import ApiKey, Team, TeamInvitation, TeamMember, User
from app.models.team import ROLES
from app.models.types import utcnow
from app.services import ServiceError, accounts, mail
from app.services.audit import record_event
from app.services.crypto import token_hash
from app.urls import public_url

INVITE_DAYS = 7
MAX_PENDING_PER_TEAM = 50
MAX_INVITES_PER_INVITER_PER_DAY = 30
MAX_RESENDS = 5
MAX_TEAMS_PER_PERSON = 20
SLUG_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,46}[a-z0-9])?")
RESERVED_SLUGS = {"new", "join", "switch", "invitations"}
MANAGERS = ("owner", "admin")


class Forbidden(ServiceError):
    """The person is in the team but their role does not allow this."""


# ---- reading ------------------------------------------------------------------------------

def by_slug(slug: str) -> Team | None:
    """The team at an address; anything that could not be an address is none
    (and never reaches the database: PostgreSQL refuses a NUL in a string)."""
    if not isinstance(slug, str) or not SLUG_RE.fullmatch(slug):
        return None
    return db.session.scalar(sa.select(Team).where(Team.slug == slug))


def membership(team_id: int, user_id: int) -> TeamMember | None:
    return db.session.scalar(sa.select(TeamMember).where(TeamMember.team_id == team_id,
                                                         TeamMember.user_id == user_id))


def members(team_id: int) -> list[tuple[TeamMember, User]]:
    order = sa.case({"owner": 0, "admin": 1}, value=TeamMember.role, else_=2)
    return [(m, u) for m, u in db.session.execute(
        sa.select(TeamMember, User).join(User, User.id == TeamMember.user_id)
        .where(TeamMember.team_id == team_id).order_by(order, TeamMember.joined_at, TeamMember.id)).all()]


def member_names(team_id: int) -> dict[int, str]:
    """Current members' display names (name, else address), by user id."""
    return {u.id: (u.name or u.email) for _, u in members(team_id)}


def owners_count(team_id: int) -> int:
    return db.session.scalar(sa.select(sa.func.count()).select_from(TeamMember).where(
        TeamMember.team_id == team_id, TeamMember.role == "owner")) or 0


def sole_owner_of(user_id: int) -> list[Team]:
    """Teams where the person is the only owner (they cannot leave or be erased)."""
    mine = sa.select(TeamMember.team_id).where(TeamMember.user_id == user_id, TeamMember.role == "owner")
    others = (sa.select(TeamMember.team_id).where(TeamMember.role == "owner", TeamMember.user_id != user_id))
    return list(db.session.scalars(sa.select(Team).where(Team.id.in_(mine), Team.id.not_in(others))
                                   .order_by(Team.name)))


def require(team: Team, user: User, roles: tuple[str, ...] = ROLES) -> TeamMember:
    """The person's membership, if their role is one of `roles`."""
    m = membership(team.id, user.id)
    if m is None:
        raise ServiceError("No such team.")
    if m.role not in roles:
        raise Forbidden("Your role in this team does not allow that.")
    return m


def may_make_keys(team: Team, role: str | None) -> bool:
    return role in MANAGERS or (role == "member" and team.members_make_keys)


# ---- teams --------------------------------------------------------------------------------

def _check_name(name: str) -> str:
    name = " ".join((name or "").split())
    if not name:
        raise ServiceError("Give the team a name.")
    if len(name) > 100:
        raise ServiceError("Use at most 100 characters for the name.")
    return name


def slug_for(name: str) -> str:
    text = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().lower()
    text = re.sub(r"[^a-z0-9]+", "-", text).strip("-")[:40].strip("-")
    return text or "team"


def _free_slug(base: str) -> str:
    taken = set(db.session.scalars(sa.select(Team.slug).where(
        sa.or_(Team.slug == base, Team.slug.like(f"{base}-%")))))
    if base not in taken and base not in RESERVED_SLUGS:
        return base
    n = 2
    while f"{base}-{n}" in taken:
        n += 1
    return f"{base}-{n}"


def create(user: User, name: str, slug: str | None = None) -> Team:
    if not user.is_verified:
        raise ServiceError("Confirm your email address before you create a team.")
    name = _check_name(name)
    count = db.session.scalar(sa.select(sa.func.count()).select_from(TeamMember)
                              .where(TeamMember.user_id == user.id)) or 0
    if count >= MAX_TEAMS_PER_PERSON:
        raise ServiceError(f"You can be in at most {MAX_TEAMS_PER_PERSON} teams.")
    slug = (slug or "").strip().lower()
    if slug:
        if not SLUG_RE.fullmatch(slug) or slug in RESERVED_SLUGS:
            raise ServiceError("The address may use lower-case letters, digits and hyphens (up to 48), "
                               "not starting or ending with a hyphen.", )
        if by_slug(slug) is not None:
            raise ServiceError(f"The address “{slug}” is taken. Try another.")
    else:
        slug = _free_slug(slug_for(name))
    team = Team(name=name, slug=slug, created_at=utcnow())
    db.session.add(team)
    db.session.flush()
    db.session.add(TeamMember(team_id=team.id, user_id=user.id, role="owner", joined_at=utcnow()))
    db.session.flush()
    record_event(user, "team:created", team_id=team.id)
    return team


def update(actor: User, team: Team, *, name: str | None = None, members_make_keys: bool | None = None) -> None:
    require(team, actor, ("owner",))
    changed = []
    if name is not None:
        name = _check_name(name)
        if name != team.name:
            team.name = name
            changed.append("name")
    if members_make_keys is not None and members_make_keys != team.members_make_keys:
        team.members_make_keys = members_make_keys
        changed.append("members_make_keys")
    if changed:
        record_event(actor, "team:updated", team_id=team.id, changed=",".join(changed))


def _revoke_keys(where) -> int:
    return db.session.execute(
        sa.update(ApiKey).where(ApiKey.revoked_at.is_(None), where)
        .values(revoked_at=utcnow(), secret_ciphertext=None, wrapped_data_key=None)
        .execution_options(synchronize_session=False)).rowcount


def delete(actor: User, team: Team) -> int:
    """Delete the team: its keys are revoked at once; its usage rows stay,
    attributed to the team's id, for billing. Returns the keys revoked."""
    require(team, actor, ("owner",))
    revoked = _revoke_keys(ApiKey.team_id == team.id)
    record_event(actor, "team:deleted", team_id=team.id, keys_revoked=revoked)
    db.session.execute(sa.delete(TeamInvitation).where(TeamInvitation.team_id == team.id))
    db.session.execute(sa.delete(TeamMember).where(TeamMember.team_id == team.id))
    db.session.delete(team)
    return revoked


# ---- members ------------------------------------------------------------------------------

def live_key_count(team_id: int) -> int:
    """The team's keys that are not revoked (deleting the team revokes them)."""
    return db.session.scalar(sa.select(sa.func.count()).select_from(ApiKey).where(
        ApiKey.team_id == team_id, ApiKey.revoked_at.is_(None))) or 0


def keys_made_by(team_id: int, user_id: int) -> list[ApiKey]:
    """The live keys a member made for the team (revoked when they leave)."""
    return list(db.session.scalars(sa.select(ApiKey).where(
        ApiKey.team_id == team_id, ApiKey.user_id == user_id, ApiKey.revoked_at.is_(None))
        .order_by(ApiKey.created_at)))


def _lock(team: Team) -> None:
    """Serialize the changes that could leave a team without an owner (two
    owners stepping down at once). A no-op UPDATE takes the row's write lock
    on PostgreSQL and the database's on SQLite, before the owners are counted,
    so the second change counts after the first has committed."""
    db.session.execute(sa.update(Team).where(Team.id == team.id).values(id=Team.id)
                       .execution_options(synchronize_session=False))


def set_role(actor: User, team: Team, member: TeamMember, role: str) -> None:
    _lock(team)
    require(team, actor, ("owner",))
    _fresh(member)
    if role not in ROLES:
        raise ServiceError("Choose owner, admin or member.")
    if member.team_id != team.id:
        raise ServiceError("No such member.")
    if member.role == role:
        return
    if member.role == "owner" and owners_count(team.id) <= 1:
        raise ServiceError("A team needs at least one owner: make someone else owner first.")
    old, member.role = member.role, role
    db.session.flush()
    record_event(actor, "team:member:role_changed", subject=member.user_id, team_id=team.id,
                 old_role=old, new_role=role)


def _fresh(member: TeamMember) -> None:
    """Read the membership again, under the team's lock."""
    try:
        db.session.refresh(member)
    except ObjectDeletedError:
        raise ServiceError("That person is no longer in the team.") from None


def _leave(team: Team, member: TeamMember) -> int:
    if member.role == "owner" and owners_count(team.id) <= 1:
        raise ServiceError("You are the team's only owner. Make someone else owner, or delete the team.")
    revoked = _revoke_keys(sa.and_(ApiKey.team_id == team.id, ApiKey.user_id == member.user_id))
    db.session.delete(member)
    db.session.flush()
    return revoked


def remove(actor: User, team: Team, member: TeamMember) -> int:
    """Remove a member; the keys they made for the team are revoked with it."""
    _lock(team)
    mine = require(team, actor, MANAGERS)
    _fresh(member)
    if member.team_id != team.id:
        raise ServiceError("No such member.")
    if member.user_id == actor.id:
        raise ServiceError("To leave the team, use “Leave team”.")
    if mine.role == "admin" and member.role == "owner":
        raise Forbidden("Only an owner can remove an owner.")
    user_id = member.user_id
    revoked = _leave(team, member)
    record_event(actor, "team:member:removed", subject=user_id, team_id=team.id, keys_revoked=revoked)
    return revoked


def leave(user: User, team: Team) -> int:
    _lock(team)
    member = require(team, user)
    revoked = _leave(team, member)
    record_event(user, "team:member:left", team_id=team.id, keys_revoked=revoked)
    return revoked


# ---- invitations --------------------------------------------------------------------------

def _serializer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.config["SECRET_KEY"], salt="link:team_invite")


def _new_link(inv: TeamInvitation) -> str:
    nonce = secrets.token_urlsafe(24)
    inv.token_hash = token_hash(nonce, "team_invite")
    token = _serializer().dumps({"i": inv.id, "n": nonce})
    return public_url("teams.join", token=token)


def _send(inv: TeamInvitation, team: Team, inviter: User, link: str) -> None:
    invitee = accounts.find_by_email(inv.email)
    # One line: a name is typed text, and a line break in a subject is a broken (or injected) header.
    who = " ".join((inviter.name or inviter.email).split())
    mail.queue(inv.email, "team:invitation", f"{who} invites you to {team.name}",
               "team_invitation", user=invitee, team_name=team.name, role=inv.role,
               inviter=who, link=link, days=INVITE_DAYS, has_account=invitee is not None)


def invite(actor: User, team: Team, email: str, role: str = "member") -> TeamInvitation:
    mine = require(team, actor, MANAGERS)
    if role not in ROLES:
        raise ServiceError("Choose owner, admin or member.")
    if role == "owner" and mine.role != "owner":
        raise Forbidden("Only an owner can invite an owner.")
    normalized, key = accounts.normalize_email(email)
    now = utcnow()
    existing = accounts.find_by_email(normalized)
    if existing is not None and membership(team.id, existing.id) is not None:
        raise ServiceError(f"{normalized} already belongs to the team.")
    pending = db.session.scalar(sa.select(TeamInvitation).where(
        TeamInvitation.team_id == team.id, TeamInvitation.email_key == key,
        TeamInvitation.accepted_at.is_(None), TeamInvitation.withdrawn_at.is_(None),
        TeamInvitation.expires_at > now))
    if pending is not None:
        raise ServiceError(f"{normalized} is already invited. Resend the invitation below if it got lost.")
    waiting = db.session.scalar(sa.select(sa.func.count()).select_from(TeamInvitation).where(
        TeamInvitation.team_id == team.id, TeamInvitation.accepted_at.is_(None),
        TeamInvitation.withdrawn_at.is_(None), TeamInvitation.expires_at > now)) or 0
    if waiting >= MAX_PENDING_PER_TEAM:
        raise ServiceError(f"The team has {MAX_PENDING_PER_TEAM} invitations waiting. "
                           "Withdraw some, or wait for them to be accepted.")
    today = db.session.scalar(sa.select(sa.func.count()).select_from(TeamInvitation).where(
        TeamInvitation.invited_by == actor.id, TeamInvitation.created_at > now - timedelta(days=1))) or 0
    if today >= MAX_INVITES_PER_INVITER_PER_DAY:
        raise ServiceError(f"You have sent {MAX_INVITES_PER_INVITER_PER_DAY} invitations today. "
                           "Try again tomorrow.")
    inv = TeamInvitation(team_id=team.id, email=normalized, email_key=key, role=role, invited_by=actor.id,
                         token_hash=secrets.token_hex(32), created_at=now, last_sent_at=now, sent_count=1,
                         expires_at=now + timedelta(days=INVITE_DAYS))
    db.session.add(inv)
    db.session.flush()
    _send(inv, team, actor, _new_link(inv))
    record_event(actor, "team:invitation:sent", team_id=team.id, invitation_id=inv.id, role=role)
    return inv


def _own_invitation(team: Team, invitation_id: int) -> TeamInvitation:
    inv = db.session.get(TeamInvitation, invitation_id)
    if inv is None or inv.team_id != team.id:
        raise ServiceError("No such invitation.")
    return inv


def resend(actor: User, team: Team, invitation_id: int) -> TeamInvitation:
    """A new link (the old one stops working) and a fresh expiry."""
    require(team, actor, MANAGERS)
    inv = _own_invitation(team, invitation_id)
    if inv.state() in ("accepted", "withdrawn"):
        raise ServiceError(f"That invitation was {inv.state()}; it cannot be sent again.")
    if inv.sent_count >= MAX_RESENDS + 1:
        raise ServiceError("That invitation was sent too many times. Withdraw it and invite again later.")
    now = utcnow()
    inv.last_sent_at, inv.expires_at, inv.sent_count = now, now + timedelta(days=INVITE_DAYS), inv.sent_count + 1
    _send(inv, team, actor, _new_link(inv))
    record_event(actor, "team:invitation:resent", team_id=team.id, invitation_id=inv.id)
    return inv


def withdraw(actor: User, team: Team, invitation_id: int) -> TeamInvitation:
    require(team, actor, MANAGERS)
    inv = _own_invitation(team, invitation_id)
    if inv.state() == "accepted":
        raise ServiceError("That invitation was already accepted. Remove the member instead.")
    if inv.withdrawn_at is None:
        inv.withdrawn_at = utcnow()
        record_event(actor, "team:invitation:withdrawn", team_id=team.id, invitation_id=inv.id)
    return inv


def pending_invitations(team_id: int) -> list[TeamInvitation]:
    now = utcnow()
    return list(db.session.scalars(sa.select(TeamInvitation).where(
        TeamInvitation.team_id == team_id, TeamInvitation.accepted_at.is_(None),
        TeamInvitation.withdrawn_at.is_(None), TeamInvitation.expires_at > now - timedelta(days=30))
        .order_by(TeamInvitation.created_at.desc())))


def invitations_for(user: User) -> list[tuple[TeamInvitation, Team]]:
    """Pending invitations to the person's confirmed address."""
    if not user.is_verified:
        return []
    now = utcnow()
    return [(i, t) for i, t in db.session.execute(
        sa.select(TeamInvitation, Team).join(Team, Team.id == TeamInvitation.team_id).where(
            TeamInvitation.email_key == user.email_key, TeamInvitation.accepted_at.is_(None),
            TeamInvitation.withdrawn_at.is_(None), TeamInvitation.expires_at > now)
        .order_by(TeamInvitation.created_at)).all()]


def open_link(token: str) -> TeamInvitation:
    """The invitation a link stands for, if the link is still good."""
    try:
        data = _serializer().loads(token, max_age=(MAX_RESENDS + 1) * INVITE_DAYS * 86400)
        inv = db.session.get(TeamInvitation, int(data["i"]))
        nonce = str(data["n"])
    except SignatureExpired:
        raise ServiceError("This invitation has expired. Ask the team for a new one.") from None
    except (BadSignature, KeyError, TypeError, ValueError):
        raise ServiceError("This invitation link is not valid. Check that you copied all of it.") from None
    if inv is None:
        raise ServiceError("This invitation no longer exists: the team may have been deleted.")
    if not secrets.compare_digest(inv.token_hash, token_hash(nonce, "team_invite")):
        raise ServiceError("This invitation link was replaced by a newer one. Use the latest email.")
    state = inv.state()
    if state == "accepted":
        raise ServiceError("This invitation was already used.")
    if state == "withdrawn":
        raise ServiceError("This invitation was withdrawn by the team.")
    if state == "expired":
        raise ServiceError("This invitation has expired. Ask the team for a new one.")
    return inv


def accept(user: User, inv: TeamInvitation) -> Team:
    """Join the team the invitation is for: only the account with the invited,
    confirmed address may."""
    if inv.state() != "pending":
        raise ServiceError(f"This invitation is {inv.state()}.")
    if user.email_key != inv.email_key:
        raise ServiceError(f"This invitation was sent to {inv.email}, not to the address you are signed in "
                           "with. Sign in with that address to accept it.")
    if not user.is_verified:
        raise ServiceError("Confirm your email address first; then open the invitation again.")
    team = db.session.get(Team, inv.team_id)
    now = utcnow()
    # Conditional on the row still being pending: two tabs accepting at once join once.
    won = db.session.execute(sa.update(TeamInvitation).where(
        TeamInvitation.id == inv.id, TeamInvitation.accepted_at.is_(None), TeamInvitation.withdrawn_at.is_(None))
        .values(accepted_at=now, accepted_by=user.id)).rowcount
    if not won:
        raise ServiceError("This invitation was already used.")
    if membership(team.id, user.id) is None:
        db.session.add(TeamMember(team_id=team.id, user_id=user.id, role=inv.role, joined_at=now))
        db.session.flush()
        record_event(user, "team:member:joined", team_id=team.id, invitation_id=inv.id, role=inv.role)
    return team


def decline(user: User, inv: TeamInvitation) -> None:
    if user.email_key != inv.email_key or inv.state() != "pending":
        raise ServiceError("No such invitation.")
    inv.withdrawn_at = utcnow()
    record_event(user, "team:invitation:declined", team_id=inv.team_id, invitation_id=inv.id)


def join_on_verification(user: User, invitation_id: int | None) -> Team | None:
    """Someone who signed up through an invitation joins once their address is
    confirmed (the invitation's id was kept in their browser session)."""
    if invitation_id is None:
        return None
    inv = db.session.get(TeamInvitation, invitation_id)
    if inv is None or inv.state() != "pending" or inv.email_key != user.email_key:
        return None
    try:
        return accept(user, inv)
    except ServiceError:  # used meanwhile: the Teams page lists what is left
        return None


# ---- erasure ------------------------------------------------------------------------------

def forget_user(user_id: int, email_key: str) -> None:
    """An erased account's memberships and the invitations to its address go
    (explicitly: SQLite enforces no cascade here). Usage rows keep the team's id."""
    db.session.execute(sa.delete(TeamMember).where(TeamMember.user_id == user_id))
    db.session.execute(sa.delete(TeamInvitation).where(TeamInvitation.email_key == email_key))
    db.session.execute(sa.update(TeamInvitation).where(TeamInvitation.invited_by == user_id).values(invited_by=None))


INVITATION_RETENTION_DAYS = 30


def prune_invitations(now) -> int:
    """Delete invitations that ended (accepted, withdrawn, expired) over
    INVITATION_RETENTION_DAYS ago: the address in them is not kept longer."""
    cutoff = now - timedelta(days=INVITATION_RETENTION_DAYS)
    ended = sa.or_(TeamInvitation.accepted_at < cutoff, TeamInvitation.withdrawn_at < cutoff,
                   TeamInvitation.expires_at < cutoff)
    return db.session.execute(sa.delete(TeamInvitation).where(ended)
                              .execution_options(synchronize_session=False)).rowcount


def activity(team_id: int, page: int, per_page: int = 50):
    from app.models import AuditEvent

    q = sa.select(AuditEvent).where(AuditEvent.team_id == team_id)
    total = db.session.scalar(sa.select(sa.func.count()).select_from(q.subquery())) or 0
    rows = db.session.scalars(q.order_by(AuditEvent.id.desc()).limit(per_page).offset((page - 1) * per_page)).all()
    return list(rows), total
