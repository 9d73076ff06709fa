"""One error handler: an HTML page in the layout for the portal, the provider's
JSON error shape for API paths. Never a stack trace to a user."""
from __future__ import annotations

import logging
import traceback

from flask import Flask, jsonify, render_template, request
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)

MESSAGES = {
    400: ("Bad request", "The request could not be understood. Go back and try again."),
    403: ("Not allowed", "You do not have access to this page."),
    404: ("Page not found", "There is nothing at this address. Check the link, or start from the home page."),
    405: ("Method not allowed", "This address does not accept that kind of request."),
    429: ("Too many attempts", "Too many requests in a short time. Wait a few minutes, then try again."),
    500: ("Something went wrong", "An unexpected error happened on our side. It has been logged; please try again."),
}
API_TYPES = {400: "invalid_request_error", 403: "permission_error", 404: "not_found_error",
             405: "invalid_request_error", 429: "rate_limit_error", 500: "api_error"}


def wants_json() -> bool:
    # /v1/ never reaches Flask: RelayDispatch answers its errors in each SDK's shape.
    return request.path.startswith("/api/")


def render_error(code: int, detail: str | None = None):
    title, message = MESSAGES.get(code, (f"Error {code}", "The request could not be completed."))
    if wants_json():
        type_ = API_TYPES.get(code, "api_error")
        return jsonify({"error": {"type": type_, "message": detail or message}}), code
    return render_template("errors/error.html", code=code, title=title, message=detail or message), code


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
        # Type and stack frames only: an exception's message could quote a body (P23).
        frames = " <- ".join(f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno} {f.name}"
                             for f in reversed(traceback.extract_tb(exc.__traceback__)))
        log.error("unhandled %s at %s %s: %s", type(exc).__name__, request.method, request.path, frames)
        return render_error(500)
