"""One error handler: an HTML page in the layout for the portal, the provider's
JSON error shape for API paths. Never a stack trace to a user.

An error page must never fail itself. A handler that raised after a failed
flush left the session unusable: the layout's first query (the signed-in user,
the policy banner) raised PendingRollbackError inside the error handler, Flask
answered a bare 500 outside the layout and logged the whole exception chain,
the original statement's parameters (a name, a message) included. So every
error is answered after a rollback, and if the page still cannot be drawn, a
plain one is sent instead, naming only the exception's type in the log.
"""
from __future__ import annotations

import logging

from flask import Flask, Response, jsonify, render_template, request
from flask_wtf.csrf import CSRFError
from markupsafe import escape
from werkzeug.exceptions import HTTPException

from app.extensions import db
from app.logsafe import where

log = logging.getLogger(__name__)

MESSAGES = {
    400: ("Bad request", "The request could not be understood. Go back and try again."),
    403: ("Not allowed", "You do not have access to this page."),
    404: ("Page not found", "There is nothing at this address. Check the link, or start from the home page."),
    405: ("Method not allowed", "This address does not accept that kind of request."),
    415: ("Not a form", "This address takes a form sent from its page. Reload the page and try again."),
    429: ("Too many attempts", "Too many requests in a short time. Wait a few minutes, then try again."),
    500: ("Something went wrong", "An unexpected error happened on our side. It has been logged; please try again."),
}
API_TYPES = {400: "invalid_request_error", 403: "permission_error", 404: "not_found_error",
             405: "invalid_request_error", 415: "invalid_request_error", 429: "rate_limit_error", 500: "api_error"}


def wants_json() -> bool:
    # /v1/ never reaches Flask: RelayDispatch answers its errors in each SDK's shape.
    return request.path.startswith("/api/")


def _rollback() -> None:
    """Whatever the failed request had pending is dropped, so the page can
    query again (and nothing half-done is committed by a later step)."""
    try:
        db.session.rollback()
    except Exception as exc:  # a dead connection: the page below copes without it
        log.error("rollback before an error page failed: %s", type(exc).__name__)


def _plain_page(code: int, title: str, message: str) -> Response:
    """The error page without the layout (no database, no template), for when
    the layout itself cannot be drawn."""
    body = (f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{escape(title)}</title>"
            f"</head><body><main><p>Error {code}</p><h1>{escape(title)}</h1><p>{escape(message)}</p>"
            f"<p><a href=\"/\">Go to the home page</a></p></main></body></html>")
    return Response(body, status=code, mimetype="text/html")


def render_error(code: int, detail: str | None = None):
    _rollback()
    title, message = MESSAGES.get(code, (f"Error {code}", "The request could not be completed."))
    if wants_json():
        type_ = API_TYPES.get(code, "api_error")
        return jsonify({"error": {"type": type_, "message": detail or message}}), code
    try:
        return render_template("errors/error.html", code=code, title=title, message=detail or message), code
    except Exception as exc:
        log.error("error page %s failed: %s at %s", code, type(exc).__name__, where(exc))
        _rollback()
        return _plain_page(code, title, detail or message)


def init_app(app: Flask) -> None:
    @app.errorhandler(CSRFError)
    def csrf_error(exc):
        return render_error(400, "This form has expired or was not sent from this site. "
                                 "Reload the page and try again.")

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        if exc.code == 429:
            return render_error(429)
        return render_error(exc.code or 500, None if exc.code in MESSAGES else exc.description)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        if isinstance(exc, HTTPException):
            return http_error(exc)
        # The route's rule, not the path: paths carry link tokens (/reset/<token>).
        rule = request.url_rule.rule if request.url_rule is not None else "(no route)"
        log.error("unhandled %s at %s %s: %s", type(exc).__name__, request.method, rule, where(exc))
        return render_error(500)
