"""A readable name for a signed-in device ("Firefox on Android") from its
User-Agent header, for the sessions list. Only the coarse family of browser and
system: enough to recognise one's own devices, no version to fingerprint. A
small table in order, most specific first (Edge and Opera say "Chrome" too,
Chrome says "Safari", every Android says "Linux"), instead of a dependency."""
from __future__ import annotations

UNKNOWN = "Unknown browser"

# (token in the header, name). The first match wins.
BROWSERS = (
    ("EdgA/", "Edge"), ("EdgiOS/", "Edge"), ("Edg/", "Edge"), ("Edge/", "Edge"),
    ("OPR/", "Opera"), ("OPiOS/", "Opera"), ("Opera", "Opera"),
    ("SamsungBrowser/", "Samsung Internet"), ("YaBrowser/", "Yandex Browser"), ("Vivaldi/", "Vivaldi"),
    ("FxiOS/", "Firefox"), ("Firefox/", "Firefox"),
    ("CriOS/", "Chrome"), ("Chromium/", "Chromium"), ("HeadlessChrome/", "Headless Chrome"), ("Chrome/", "Chrome"),
    ("Version/", "Safari"),  # only Safari names its version this way (the others matched above)
    ("curl/", "curl"), ("python-requests/", "Python requests"), ("python-httpx/", "Python httpx"),
    ("Wget/", "Wget"),
)
SYSTEMS = (
    ("iPhone", "iPhone"), ("iPad", "iPad"), ("iPod", "iPod"),
    ("Android", "Android"), ("CrOS", "ChromeOS"),
    ("Windows Phone", "Windows Phone"), ("Windows", "Windows"),
    ("Macintosh", "macOS"), ("Mac OS X", "macOS"),
    ("Ubuntu", "Linux"), ("Fedora", "Linux"), ("Linux", "Linux"), ("X11", "Unix"),
)


def _first(table: tuple[tuple[str, str], ...], ua: str) -> str | None:
    return next((name for token, name in table if token in ua), None)


def describe(user_agent: str | None) -> str:
    """"Chrome on Linux", "Safari on iPhone", "Unknown browser on Windows" or "Unknown browser"."""
    ua = (user_agent or "").strip()
    if not ua:
        return UNKNOWN
    browser = _first(BROWSERS, ua)
    if browser is None and "Safari/" in ua and "Mobile/" in ua:
        browser = "Safari"  # an iOS web view: WebKit without a Version/ token
    system = _first(SYSTEMS, ua)
    if browser and system:
        return f"{browser} on {system}"
    if system:
        return f"{UNKNOWN} on {system}"
    return browser or UNKNOWN
