"""Per-key and per-account limits on requests and tokens per minute (P25).

Requests are counted in a moving window before the call; tokens are checked
before the call (is anything left this minute?) and charged after it with the
real count, since nobody knows a response's length in advance. The storage is
the one Flask-Limiter uses (memory, or Redis shared by every process).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

from limits import RateLimitItemPerMinute, storage, strategies


@dataclass
class Refusal:
    scope: str          # "key" or "account"
    what: str           # "requests" or "tokens"
    limit: int
    retry_after: int    # seconds

    @property
    def message(self) -> str:
        return (f"Rate limit reached: {self.limit} {self.what} per minute for this "
                f"{'API key' if self.scope == 'key' else 'account'}. Retry after {self.retry_after} s.")


class Limits:
    def __init__(self, uri: str, defaults: dict[str, int]):
        self.storage = storage.storage_from_string(uri)
        self.requests = strategies.MovingWindowRateLimiter(self.storage)
        self.tokens = strategies.FixedWindowRateLimiter(self.storage)
        self.defaults = defaults
        self._items: dict[int, RateLimitItemPerMinute] = {}

    def _item(self, n: int) -> RateLimitItemPerMinute:
        item = self._items.get(n)
        if item is None:
            item = self._items[n] = RateLimitItemPerMinute(n)
        return item

    def _retry(self, limiter, item, *ids: str) -> int:
        reset = limiter.get_window_stats(item, *ids).reset_time
        return max(1, math.ceil(reset - time.time()))

    def scopes(self, key_id: int, user_id: int, key_rpm: int | None, key_tpm: int | None):
        d = self.defaults
        return (("key", str(key_id), key_rpm or d["key_rpm"], key_tpm or d["key_tpm"]),
                ("account", str(user_id), d["account_rpm"], d["account_tpm"]))

    def admit(self, key_id: int, user_id: int, key_rpm: int | None, key_tpm: int | None) -> Refusal | None:
        """Count one request; refuse it if any request or token budget is spent."""
        for scope, ident, rpm, tpm in self.scopes(key_id, user_id, key_rpm, key_tpm):
            titem = self._item(tpm)
            if not self.tokens.test(titem, "tpm", scope, ident):
                return Refusal(scope, "tokens", tpm, self._retry(self.tokens, titem, "tpm", scope, ident))
            ritem = self._item(rpm)
            if not self.requests.hit(ritem, "rpm", scope, ident):
                return Refusal(scope, "requests", rpm, self._retry(self.requests, ritem, "rpm", scope, ident))
        return None

    def charge_tokens(self, key_id: int, user_id: int, key_rpm, key_tpm, tokens: int) -> None:
        if tokens <= 0:
            return
        for scope, ident, _rpm, tpm in self.scopes(key_id, user_id, key_rpm, key_tpm):
            self.tokens.hit(self._item(tpm), "tpm", scope, ident, cost=tokens)

    def headers(self, key_id: int, key_rpm: int | None) -> dict[str, str]:
        """OpenAI-style x-ratelimit-* headers for the key's request budget."""
        rpm = key_rpm or self.defaults["key_rpm"]
        stats = self.requests.get_window_stats(self._item(rpm), "rpm", "key", str(key_id))
        return {"x-ratelimit-limit-requests": str(rpm),
                "x-ratelimit-remaining-requests": str(max(0, stats.remaining)),
                "x-ratelimit-reset-requests": f"{max(0, math.ceil(stats.reset_time - time.time()))}s"}
