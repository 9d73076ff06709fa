"""Accounts: signup, verification, passwords, email changes, profile.

Every function takes explicit arguments, adds its changes (and any mail and
audit rows) to the session, and leaves the commit to the caller: a view
commits once, so the change, its notice and its audit row land together.
"""
from __future__ import annotations

import unicodedata

import sqlalchemy as sa
from email_validator import EmailNotValidError, validate_email
from flask import current_app

from app.extensions import db
from app.models import PolicyAcceptance, PolicyVersion, User, UserSession
from app.models.types import utcnow
from app.services import ServiceError, mail, sessions, tokens
from app.services.audit import record_event
from app.services.passwords import burn_time, hash_password, verify_password
from app.services.policy import enforced
from app.services.privacy import set_consent
from app.urls import public_url


def normalize_email(raw: str) -> tuple[str, str]:
    """Return (normalized address, case-insensitive key) or raise with a message."""
    try:
        info = validate_email((raw or "").strip(), check_deliverability=False)
    except EmailNotValidError as exc:
        raise ServiceError(f"Enter a valid email address: {exc}") from None  # its reason is in the message
    return info.normalized, info.normalized.lower()


def account_key(typed: str | None) -> str:
    """The one key for whatever a person typed as an address: what signup stores
    in `email_key` and lookup compares, so every spelling of one address (case,
    surrounding space, Unicode composition, full-width letters in the domain)
    names one account, and per-account limits cannot be split into several
    budgets by retyping the address.

    Text that is no valid address names no account, but it still needs one
    budget per spelling, or each variant of it would be a fresh one: it falls
    back to NFKC with whitespace removed and case folded, marked so that it can
    never equal the key of a real address."""
    try:
        return normalize_email(typed or "")[1]
    except ServiceError:
        folded = "".join(unicodedata.normalize("NFKC", typed or "").split()).casefold()
        return "unparsed:" + folded


def check_password_rules(password: str) -> None:
    c = current_app.config
    if len(password) < c["PASSWORD_MIN_LENGTH"]:
        raise ServiceError(f"Use at least {c['PASSWORD_MIN_LENGTH']} characters.")
    if len(password) > c["PASSWORD_MAX_LENGTH"]:
        raise ServiceError(f"Use at most {c['PASSWORD_MAX_LENGTH']} characters.")


def find_by_email(raw: str) -> User | None:
    try:
        _, key = normalize_email(raw)
    except ServiceError:
        return None
    return db.session.scalar(sa.select(User).where(User.email_key == key))


def _link(endpoint: str, token: str) -> str:
    return public_url(endpoint, token=token)


def signup(email: str, password: str, policy: PolicyVersion, marketing_email: bool = False) -> User | None:
    """Create an account and queue its verification mail.

    When the address already has an account, nothing is created and its owner is
    told by mail instead; the caller shows the same page either way, so signup
    does not reveal which addresses have accounts.

    `marketing_email` is the opt-in box of the form (P50): ticked, the consent
    is recorded in the new account's history with source "signup" under the
    policy version just accepted (set_consent stamps the version in effect,
    which is the one the caller passes); unticked, nothing is recorded. It never
    touches an existing account: whoever typed its address may not own it.
    """
    normalized, key = normalize_email(email)
    check_password_rules(password)
    existing = db.session.scalar(sa.select(User).where(User.email_key == key))
    if existing is not None:
        burn_time(password)  # same cost as the path that hashes
        mail.queue(existing.email, "account:signup:existing", "Someone tried to sign up with your address",
                   "signup_existing", user=existing, login_url=public_url("auth.login"),
                   reset_url=public_url("auth.forgot"))
        record_event(None, "account:signup:duplicate", subject=existing)
        return None
    now = utcnow()
    user = User(email=normalized, email_key=key, password_hash=hash_password(password),
                age_confirmed_at=now, created_at=now)
    db.session.add(user)
    db.session.flush()
    db.session.add(PolicyAcceptance(user_id=user.id, policy_version_id=policy.id, accepted_at=now,
                                    context="signup"))
    record_event(user, "account:created", policy_version=policy.number,
                 min_age=enforced("MIN_AGE"))
    if marketing_email:
        set_consent(user, "marketing_email", True, source="signup", now=now)
    send_verification(user)
    return user


def send_verification(user: User) -> None:
    token = tokens.issue(user, tokens.VERIFY)
    mail.queue(user.email, "account:verify", f"Confirm your email for {current_app.config['SITE_NAME']}",
               "verify_email", user=user, link=_link("auth.verify", token),
               hours=current_app.config["VERIFY_LINK_HOURS"])


def _address_proven(user: User, keep: UserSession | None) -> int:
    """The owner of the address has just proven it (a verification, sign-in,
    reset or email-change link opened from their inbox). Every session opened
    before then may belong to someone else: whoever signed up with the address
    before its owner, or could sign in to it before it was theirs (a
    pre-hijacked account). All of them end, except `keep` when it is this
    account's session in the browser that opened the link. Every code path
    that marks an address verified goes through here. Returns how many ended."""
    if keep is not None and keep.user_id != user.id:
        keep = None
    user.email_verified_at = utcnow()
    return sessions.end_others(user, keep)


def verify_email(token: str, keep: UserSession | None = None) -> User:
    """Use a verification link. The first one proves the address (see
    `_address_proven`); a later one, for an address already proven, changes nothing."""
    user, _ = tokens.consume(token, tokens.VERIFY)
    if user.email_verified_at is None:
        ended = _address_proven(user, keep)
        record_event(user, "account:email:verified", sessions_ended=ended)
    return user


def authenticate(email: str, password: str) -> User | None:
    """Check a password login. Unknown addresses burn the same time as a wrong
    password. A hash made with old Argon2 parameters is replaced (P01)."""
    user = find_by_email(email)
    if user is None:
        burn_time(password)
        # The same audit write as a wrong password (no subject: nobody's data),
        # so the two answers also cost the same database work.
        record_event(None, "account:login:failed")
        return None
    ok, new_hash = verify_password(user.password_hash, password)
    if not ok:
        record_event(None, "account:login:failed", subject=user)
        return None
    if new_hash:
        user.password_hash = new_hash
        record_event(user, "account:password:rehashed")
    # Only now, after a correct password, may the page say the account is
    # scheduled for deletion: an unknown address learns nothing (P52).
    _check_not_scheduled(user)
    return user


def _check_not_scheduled(user: User) -> None:
    from app.services.deletion import check_sign_in_allowed

    check_sign_in_allowed(user)


def change_password(user: User, current: str, new: str, keep: UserSession | None) -> None:
    ok, _ = verify_password(user.password_hash, current)
    if not ok:
        raise ServiceError("Your current password is not correct.")
    check_password_rules(new)
    _set_password(user, new, keep, "changed")


def _set_password(user: User, new: str, keep: UserSession | None, how: str) -> None:
    user.password_hash = hash_password(new)
    ended = sessions.end_others(user, keep)
    record_event(user, f"account:password:{how}", sessions_ended=ended)
    mail.queue(user.email, f"account:password:{how}", "Your password was changed", "notice_password", user=user,
               how=how, reset_url=public_url("auth.forgot"))


def request_reset(email: str) -> None:
    """Mail a reset link if the address has an account; silently nothing if not."""
    user = find_by_email(email)
    if user is None:
        return
    token = tokens.issue(user, tokens.RESET)
    mail.queue(user.email, "account:reset", "Reset your password", "reset_password", user=user,
               link=_link("auth.reset", token), minutes=current_app.config["RESET_LINK_MINUTES"])
    record_event(None, "account:password:reset_requested", subject=user)


def reset_password(token: str, new: str) -> User:
    check_password_rules(new)
    user, _ = tokens.consume(token, tokens.RESET)
    _set_password(user, new, None, "reset")  # ends every session already
    if user.email_verified_at is None:  # the link proved the address
        _address_proven(user, None)
    return user


def request_magic_link(email: str) -> None:
    user = find_by_email(email)
    if user is None or user.deletion_requested_at is not None:  # same page either way
        return
    token = tokens.issue(user, tokens.MAGIC)
    mail.queue(user.email, "account:magic_link", f"Your sign-in link for {current_app.config['SITE_NAME']}",
               "magic_link", user=user, link=_link("auth.magic", token), minutes=enforced("MAGIC_LINK_MINUTES"))
    record_event(None, "account:magic_link:requested", subject=user)


def consume_magic_link(token: str) -> User:
    """Use a sign-in link. When it is the first proof of the address, every
    session opened before ends (`_address_proven`; the caller then starts a new
    one). For an address already proven it is one more login, like a password,
    and other devices stay signed in: the sessions that could be someone
    else's were ended when the address was first proven."""
    user, _ = tokens.consume(token, tokens.MAGIC)
    _check_not_scheduled(user)
    if user.email_verified_at is None:
        ended = _address_proven(user, None)
        record_event(user, "account:email:verified", method="magic_link", sessions_ended=ended)
    return user


def request_email_change(user: User, new_email: str, password: str) -> str:
    ok, _ = verify_password(user.password_hash, password)
    if not ok:
        raise ServiceError("Your password is not correct.")
    normalized, key = normalize_email(new_email)
    if key == user.email_key:
        raise ServiceError("That is already your email address.")
    taken = db.session.scalar(sa.select(User.id).where(User.email_key == key))
    token = tokens.issue(user, tokens.CHANGE_EMAIL, email=normalized)
    if taken is None:
        mail.queue(normalized, "account:email:confirm_change", "Confirm your new email address",
                   "confirm_email_change", user=user, link=_link("account.confirm_email", token),
                   hours=current_app.config["VERIFY_LINK_HOURS"])
    # When taken, no link is sent and the page says the same: no account probing.
    record_event(user, "account:email:change_requested")
    return normalized


def confirm_email_change(token: str, keep: UserSession | None = None) -> User:
    """Use an email-change link: the new address is proven, so every other
    session ends (`_address_proven`); `keep` is the browser confirming."""
    user, extra = tokens.consume(token, tokens.CHANGE_EMAIL)
    normalized, key = normalize_email(extra["email"])
    if db.session.scalar(sa.select(User.id).where(User.email_key == key, User.id != user.id)):
        raise ServiceError("That address now belongs to another account.")
    old = user.email
    user.email, user.email_key = normalized, key
    ended = _address_proven(user, keep)
    record_event(user, "account:email:changed", sessions_ended=ended)
    mail.queue(old, "account:email:changed", "Your email address was changed", "notice_email_changed", user=user,
               new_email=normalized, contact=current_app.config["PRIVACY_CONTACT"])
    return user


def update_profile(user: User, name: str | None = None, company: str | None = None) -> list[str]:
    """Rectification of optional profile fields (P04). Returns the fields changed."""
    changed = []
    for field, value in (("name", name), ("company", company)):
        if value is None:
            continue
        value = value.strip() or None
        if value is not None and len(value) > 120:
            raise ServiceError(f"{field.capitalize()} can be at most 120 characters.")
        if getattr(user, field) != value:
            setattr(user, field, value)
            changed.append(field)
    if changed:
        record_event(user, "account:profile:updated", fields=changed)
    return changed


def confirm_identity(user: User, password: str, code: str | None) -> str | None:
    """Check a fresh proof of identity: the password, and a TOTP or recovery
    code when 2FA is on. Returns None when it holds, otherwise the name of the
    field that is wrong ("password" or "code")."""
    ok, _ = verify_password(user.password_hash, password or "")
    if not ok:
        return "password"
    if user.has_totp:
        from app.services import totp

        if not code or totp.verify_second_factor(user, code) is None:
            return "code"
    return None


def security_notice(user: User, what: str) -> None:
    """Tell the owner by mail that 2FA was turned on or off."""
    mail.queue(user.email, f"account:2fa:{what}", f"Two-factor authentication was turned {what}",
               "notice_2fa", user=user, what=what)
