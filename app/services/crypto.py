"""Keyed primitives derived from the deployment's secrets, so a database copy
alone reveals nothing: HMAC for looking up random tokens and API keys, Fernet
for TOTP seeds, and AES-GCM envelopes for API keys the owner may reveal (P11)."""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
from functools import lru_cache

from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from flask import current_app


@lru_cache(maxsize=64)
def _hkdf(secret: str, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(secret.encode())


def _derive(purpose: bytes) -> bytes:
    return _hkdf(current_app.config["SECRET_KEY"], purpose)


def token_hash(value: str, purpose: str = "token") -> str:
    """Keyed hash of a random token: a stolen database cannot be replayed."""
    return token_hasher(current_app.config["SECRET_KEY"], purpose)(value)


def token_hasher(secret: str, purpose: str):
    """`token_hash` with its key derived once, for callers outside an app context (the relay)."""
    key = _hkdf(secret, b"lookup:" + purpose.encode())
    return lambda value: hmac.new(key, value.encode(), hashlib.sha256).hexdigest()


def _fernet() -> Fernet:
    return Fernet(base64.urlsafe_b64encode(_derive(b"fernet:totp")))


def encrypt(plain: str) -> str:
    return _fernet().encrypt(plain.encode()).decode()


def decrypt(token: str) -> str:
    return _fernet().decrypt(token.encode()).decode()


def _master_key() -> bytes:
    """KEY_ENCRYPTION_KEY (base64, 32 bytes) when set, so it can live apart from
    SECRET_KEY (a KMS, a mounted file); otherwise derived from SECRET_KEY."""
    configured = current_app.config.get("KEY_ENCRYPTION_KEY")
    if configured:
        key = base64.urlsafe_b64decode(configured + "=" * (-len(configured) % 4))
        if len(key) != 32:
            raise RuntimeError("KEY_ENCRYPTION_KEY must be 32 bytes, base64-encoded")
        return key
    return _derive(b"master:api-keys")


def _seal(key: bytes, plain: bytes, aad: bytes) -> str:
    nonce = os.urandom(12)
    return base64.b64encode(nonce + AESGCM(key).encrypt(nonce, plain, aad)).decode()


def _open(key: bytes, sealed: str, aad: bytes) -> bytes:
    raw = base64.b64decode(sealed)
    return AESGCM(key).decrypt(raw[:12], raw[12:], aad)


def envelope_encrypt(plain: str, context: str) -> tuple[str, str]:
    """Encrypt under a fresh data key, and the data key under the master key.
    Returns (ciphertext, wrapped data key). `context` (e.g. "api_key:42") is bound
    as associated data, so a ciphertext cannot be moved to another row."""
    data_key = AESGCM.generate_key(bit_length=256)
    aad = context.encode()
    return _seal(data_key, plain.encode(), aad), _seal(_master_key(), data_key, aad)


def envelope_decrypt(ciphertext: str, wrapped_key: str, context: str) -> str:
    aad = context.encode()
    return _open(_open(_master_key(), wrapped_key, aad), ciphertext, aad).decode()
