"""Readable device names for the sessions list, from real User-Agent headers."""
from __future__ import annotations

import pytest

from app.account.devices import describe

CASES = [
    ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
     "Chrome on Linux"),
    ("Mozilla/5.0 (Android 14; Mobile; rv:125.0) Gecko/125.0 Firefox/125.0", "Firefox on Android"),
    (("Mozilla/5.0 (iPhone; CPU iPhone OS 17_4_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
      "Version/17.4.1 Mobile/15E148 Safari/604.1"), "Safari on iPhone"),
    (("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
      "Version/17.4 Safari/605.1.15"), "Safari on macOS"),
    (("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 "
      "Safari/537.36 Edg/124.0.2478.67"), "Edge on Windows"),
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0", "Firefox on Windows"),
    (("Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile "
      "Safari/537.36"), "Chrome on Android"),
    (("Mozilla/5.0 (Linux; Android 14; SAMSUNG SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) "
      "SamsungBrowser/24.0 Chrome/117.0.0.0 Mobile Safari/537.36"), "Samsung Internet on Android"),
    (("Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
      "CriOS/124.0.6367.88 Mobile/15E148 Safari/604.1"), "Chrome on iPhone"),
    (("Mozilla/5.0 (iPad; CPU OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) FxiOS/125.0 "
      "Mobile/15E148 Safari/605.1.15"), "Firefox on iPad"),
    (("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 "
      "Safari/537.36 OPR/109.0.0.0"), "Opera on Windows"),
    (("Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 "
      "Safari/537.36"), "Chrome on ChromeOS"),
    (("Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
      "Mobile/15E148"), "Unknown browser on iPhone"),
    ("curl/8.5.0", "curl"),
    ("Mozilla/5.0 (Windows NT 10.0) SomethingNew/1.0", "Unknown browser on Windows"),
    ("Werkzeug/3.0.1", "Unknown browser"),
    ("", "Unknown browser"),
    (None, "Unknown browser"),
]


@pytest.mark.parametrize(("ua", "expected"), CASES)
def test_describe(ua, expected):
    assert describe(ua) == expected
