"""Argon2id password hashing (P01): hash, verify with rehash, and a decoy.

The hasher's parameters come from settings; a hash made with older ones is
replaced on the next successful login. `burn_time()` verifies against a decoy
hash so that an unknown email costs the same as a wrong password.
"""
from __future__ import annotations

from functools import lru_cache

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError
from flask import current_app


@lru_cache(maxsize=8)
def _hasher(time_cost: int, memory_cost: int, parallelism: int) -> PasswordHasher:
    return PasswordHasher(time_cost=time_cost, memory_cost=memory_cost,
                          parallelism=parallelism, type=Type.ID)


def hasher() -> PasswordHasher:
    c = current_app.config
    return _hasher(c["ARGON2_TIME_COST"], c["ARGON2_MEMORY_COST"], c["ARGON2_PARALLELISM"])


def hash_password(password: str) -> str:
    return hasher().hash(password)


def verify_password(stored_hash: str, password: str) -> tuple[bool, str | None]:
    """Return (matches, new_hash). new_hash is set when the stored hash used
    other parameters and should be replaced."""
    ph = hasher()
    try:
        ph.verify(stored_hash, password)
    except (VerificationError, InvalidHashError):
        return False, None
    return True, (ph.hash(password) if ph.check_needs_rehash(stored_hash) else None)


@lru_cache(maxsize=8)
def _decoy(time_cost: int, memory_cost: int, parallelism: int) -> str:
    return _hasher(time_cost, memory_cost, parallelism).hash("decoy password, never matches")


def burn_time(password: str) -> None:
    """Spend one verification's worth of time for a login with an unknown email."""
    c = current_app.config
    verify_password(_decoy(c["ARGON2_TIME_COST"], c["ARGON2_MEMORY_COST"], c["ARGON2_PARALLELISM"]),
                    password)
