"""Preference cookies (P50): a theme and a chart range, kept only in the
browser and only after the person allowed preference cookies.

Nothing here is stored on the server. The cookies are optional, so they are
set only in the response to an explicit choice, and deleted in the response
that withdraws the consent (and on any later page if they survive elsewhere).
"""
from __future__ import annotations

from flask import Request, Response, current_app

from app.numbers import parse_int

THEME_COOKIE = "pref_theme"
RANGE_COOKIE = "pref_range"
COOKIES = (THEME_COOKIE, RANGE_COOKIE)
THEMES = {"light": "Light", "dark": "Dark"}
RANGES = (7, 30, 90)
DEFAULT_THEME = "light"
DEFAULT_RANGE = 30
MAX_AGE = 365 * 24 * 3600  # a year; the person can change or withdraw at any time


def preferred_theme(request: Request) -> str:
    value = request.cookies.get(THEME_COOKIE, "")
    return value if value in THEMES else DEFAULT_THEME


def preferred_range(request: Request) -> int:
    """The chart range in days the person chose, or the default. A cookie that
    is missing, edited or out of the allowed set counts as no choice."""
    value = parse_int(request.cookies.get(RANGE_COOKIE))
    return value if value in RANGES else DEFAULT_RANGE


def has_pref_cookies(request: Request) -> bool:
    return any(name in request.cookies for name in COOKIES)


def set_prefs(response: Response, theme: str, range_days: int) -> None:
    """Callers check consent first; this only writes the two cookies."""
    opts = dict(max_age=MAX_AGE, path="/", httponly=True, samesite="Lax",
                secure=current_app.config["SESSION_COOKIE_SECURE"])
    response.set_cookie(THEME_COOKIE, theme, **opts)
    response.set_cookie(RANGE_COOKIE, str(range_days), **opts)


def clear_prefs(response: Response) -> None:
    """Delete both cookies (an expired Set-Cookie for each)."""
    for name in COOKIES:
        response.delete_cookie(name, path="/", httponly=True, samesite="Lax",
                               secure=current_app.config["SESSION_COOKIE_SECURE"])
