"""Small keyed primitives derived from SECRET_KEY, so one secret is all a
deployment must keep: HMAC for lookups of random tokens, Fernet for secrets
that must be read back (TOTP seeds)."""
from __future__ import annotations

import base64
import hashlib
import hmac

from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from flask import current_app


def _derive(purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(
        current_app.config["SECRET_KEY"].encode())


def token_hash(value: str, purpose: str = "token") -> str:
    """Keyed hash of a random token: a stolen database cannot be replayed."""
    return hmac.new(_derive(b"lookup:" + purpose.encode()), value.encode(), hashlib.sha256).hexdigest()


def _fernet() -> Fernet:
    return Fernet(base64.urlsafe_b64encode(_derive(b"fernet:totp")))


def encrypt(plain: str) -> str:
    return _fernet().encrypt(plain.encode()).decode()


def decrypt(token: str) -> str:
    return _fernet().decrypt(token.encode()).decode()
