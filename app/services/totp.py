"""Two-factor authentication (P05): TOTP secrets, QR codes, recovery codes."""
from __future__ import annotations

import io
import secrets
import string
import time

import pyotp
import qrcode
import qrcode.image.svg
import sqlalchemy as sa
from flask import current_app

from app.extensions import db
from app.models import RecoveryCode, User
from app.models.types import utcnow
from app.services.crypto import decrypt, encrypt, token_hash

RECOVERY_CODES = 10


def new_secret() -> str:
    return pyotp.random_base32()


def provisioning_uri(user: User, secret: str) -> str:
    return pyotp.TOTP(secret).provisioning_uri(name=user.email, issuer_name=current_app.config["SITE_NAME"])


def qr_svg(uri: str) -> bytes:
    """The otpauth URI as an SVG QR code, made here: no third-party QR service."""
    img = qrcode.make(uri, image_factory=qrcode.image.svg.SvgPathImage, box_size=8, border=2)
    buf = io.BytesIO()
    img.save(buf)
    return buf.getvalue()


_CODE_CHARS = frozenset(string.ascii_letters + string.digits)


def _clean(code: str) -> str:
    """The code without the spaces and dashes people type or paste, or "" if
    it holds a letter or digit outside ASCII: `str.isalnum()` and `isdigit()`
    also accept '١' or '²', which then made `compare_digest` raise TypeError
    (a 500 at sign-in). A code in other digits is simply a wrong code."""
    if not isinstance(code, str):
        return ""
    kept = [ch for ch in code if ch.isalnum()]
    if not all(ch in _CODE_CHARS for ch in kept):
        return ""
    return "".join(kept).lower()


def check_code(secret: str, code: str, last_step: int | None) -> int | None:
    """Return the accepted time step, or None. One step of drift either way is
    allowed; a step at or before `last_step` is a replay and is refused."""
    code = _clean(code)
    if not (len(code) == 6 and code.isdigit()):
        return None
    totp = pyotp.TOTP(secret)
    now_step = int(time.time()) // totp.interval
    for step in (now_step - 1, now_step, now_step + 1):
        if last_step is not None and step <= last_step:
            continue
        if secrets.compare_digest(totp.generate_otp(step), code):
            return step
    return None


def enable(user: User, secret: str, step: int) -> list[str]:
    """Turn 2FA on with a confirmed secret; return fresh recovery codes (shown once)."""
    user.totp_secret_enc = encrypt(secret)
    user.totp_enabled_at = utcnow()
    user.totp_last_step = step
    return regenerate_recovery_codes(user)


def disable(user: User) -> None:
    user.totp_secret_enc = None
    user.totp_enabled_at = None
    user.totp_last_step = None
    db.session.execute(sa.delete(RecoveryCode).where(RecoveryCode.user_id == user.id))


def regenerate_recovery_codes(user: User) -> list[str]:
    db.session.execute(sa.delete(RecoveryCode).where(RecoveryCode.user_id == user.id))
    codes = [f"{secrets.token_hex(5)[:5]}-{secrets.token_hex(5)[:5]}" for _ in range(RECOVERY_CODES)]
    for code in codes:
        db.session.add(RecoveryCode(user_id=user.id, code_hash=token_hash(_clean(code), "recovery")))
    return codes


def verify_second_factor(user: User, code: str) -> str | None:
    """Accept a TOTP code or an unused recovery code. Returns "totp",
    "recovery" or None, and records the use so neither can be replayed."""
    step = check_code(decrypt(user.totp_secret_enc), code, user.totp_last_step)
    if step is not None:
        user.totp_last_step = step
        return "totp"
    cleaned = _clean(code)
    if len(cleaned) == 10:
        row = db.session.scalar(sa.select(RecoveryCode).where(
            RecoveryCode.user_id == user.id, RecoveryCode.used_at.is_(None),
            RecoveryCode.code_hash == token_hash(cleaned, "recovery")))
        if row is not None:
            row.used_at = utcnow()
            return "recovery"
    return None


def recovery_codes_left(user: User) -> int:
    return db.session.scalar(sa.select(sa.func.count()).select_from(RecoveryCode).where(
        RecoveryCode.user_id == user.id, RecoveryCode.used_at.is_(None))) or 0
