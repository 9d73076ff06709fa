"""Per-key and per-account limits on requests and tokens per minute (P25).

Both are fixed one-minute windows. Requests are counted before the call;
tokens are checked before it (is anything left this minute?) and charged after
it with the real count, since nobody knows a response's length in advance.

Two stores with the same behaviour: in one process, a dict of counters under a
lock (the `limits` library's memory store starts timer threads and keeps an
entry per request, which the benchmark showed costing ~0.5 ms a request); with
Redis (shared by every process), the `limits` library's fixed window.
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

from limits import RateLimitItemPerMinute, storage, strategies

WINDOW = 60


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


def _retry_after() -> int:
    return max(1, math.ceil(WINDOW - time.time() % WINDOW))


class _Memory:
    """Counters for the current minute, per name; old minutes are dropped."""

    def __init__(self):
        self.counts: dict[str, tuple[int, int]] = {}
        self.lock = threading.Lock()

    def add(self, name: str, limit: int, cost: int) -> int:
        window = int(time.time()) // WINDOW
        with self.lock:
            w, n = self.counts.get(name, (window, 0))
            n = (n if w == window else 0) + cost
            self.counts[name] = (window, n)
            if len(self.counts) > 100_000:
                self.counts = {k: v for k, v in self.counts.items() if v[0] == window}
        return n

    def reset(self) -> None:
        with self.lock:
            self.counts.clear()

    def used(self, name: str, limit: int) -> int:
        window = int(time.time()) // WINDOW
        w, n = self.counts.get(name, (window, 0))
        return n if w == window else 0


class _Shared:
    """The same counters in Redis, through the `limits` library."""

    def __init__(self, uri: str):
        self.storage = storage.storage_from_string(uri)
        self.limiter = strategies.FixedWindowRateLimiter(self.storage)
        self.items: dict[int, RateLimitItemPerMinute] = {}

    def _item(self, limit: int) -> RateLimitItemPerMinute:
        item = self.items.get(limit)
        if item is None:
            item = self.items[limit] = RateLimitItemPerMinute(limit)
        return item

    def add(self, name: str, limit: int, cost: int) -> int:
        # Redis reports what is left, floored at zero, so the verdict of hit()
        # is what tells "over": callers only compare the result with the limit.
        return limit if self.limiter.hit(self._item(limit), name, cost=cost) else limit + 1

    def reset(self) -> None:
        self.storage.reset()

    def used(self, name: str, limit: int) -> int:
        return limit - self.limiter.get_window_stats(self._item(limit), name).remaining


class Limits:
    def __init__(self, uri: str, defaults: dict[str, int]):
        self.store = _Memory() if uri.startswith("memory://") else _Shared(uri)
        self.defaults = defaults

    def reset(self) -> None:
        """Forget every count (tests, which reuse ids against one Redis)."""
        self.store.reset()

    def scopes(self, key_id: int, user_id: int, key_rpm: int | None, key_tpm: int | None):
        d = self.defaults
        return (("key", f"key:{key_id}", key_rpm or d["key_rpm"], key_tpm or d["key_tpm"]),
                ("account", f"account:{user_id}", d["account_rpm"], d["account_tpm"]))

    def admit(self, key_id: int, user_id: int, key_rpm: int | None, key_tpm: int | None) -> Refusal | None:
        """Count one request; refuse it if any request or token budget is spent."""
        for scope, name, rpm, tpm in self.scopes(key_id, user_id, key_rpm, key_tpm):
            if self.store.used("tpm:" + name, tpm) >= tpm:
                return Refusal(scope, "tokens", tpm, _retry_after())
            if self.store.add("rpm:" + name, rpm, 1) > rpm:
                return Refusal(scope, "requests", rpm, _retry_after())
        return None

    def charge_tokens(self, key_id: int, user_id: int, key_rpm, key_tpm, tokens: int) -> None:
        if tokens <= 0:
            return
        for _scope, name, _rpm, tpm in self.scopes(key_id, user_id, key_rpm, key_tpm):
            self.store.add("tpm:" + name, tpm, tokens)

    def headers(self, key_id: int, key_rpm: int | None) -> dict[str, str]:
        """OpenAI-style x-ratelimit-* headers for the key's request budget."""
        rpm = key_rpm or self.defaults["key_rpm"]
        used = self.store.used(f"rpm:key:{key_id}", rpm)
        return {"x-ratelimit-limit-requests": str(rpm),
                "x-ratelimit-remaining-requests": str(max(0, rpm - used)),
                "x-ratelimit-reset-requests": f"{_retry_after()}s"}
