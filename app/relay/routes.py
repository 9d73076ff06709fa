"""The relay's endpoints, their URL map, and the WSGI dispatcher that serves /v1/.

Each model endpoint runs one request through the pipeline (app/relay/pipeline.py)
in its API shape (app/relay/shapes.py); the model lookups answer from the
registry. Errors at this layer (no such path, wrong method, a body too large,
an unexpected failure) are answered here, in the shape of the client's SDK,
and nothing in a body is logged (P23).
"""
from __future__ import annotations

import logging
import secrets

import orjson
from flask import Flask
from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from app.extensions import db
from app.logsafe import where
from app.relay import pipeline
from app.relay.call import Refusal
from app.relay.limits import Limits
from app.relay.meter import init_app as init_meter
from app.relay.providers import ProvidersFileError, Registry, load
from app.relay.shapes import CHAT, COUNT_TOKENS, EMBEDDINGS, FAMILIES, MESSAGES, RESPONSES
from app.services.keys import key_hasher

log = logging.getLogger(__name__)

# The model endpoints: each runs the pipeline in its API shape.
MODEL_ENDPOINTS = {"/v1/chat/completions": CHAT, "/v1/embeddings": EMBEDDINGS, "/v1/responses": RESPONSES,
                   "/v1/messages": MESSAGES, "/v1/messages/count_tokens": COUNT_TOKENS}


def _model_endpoint(shape):
    def view(req: Request):
        return pipeline.run(req, shape)
    view.__name__ = shape.name
    return view


_VIEWS = {path: _model_endpoint(shape) for path, shape in MODEL_ENDPOINTS.items()}
_ENDPOINT_API = {path: shape.family.name for path, shape in MODEL_ENDPOINTS.items()}
# The shape a shared endpoint's errors and model objects take, by API family.
_LOOKUP_SHAPE = {"openai": CHAT, "anthropic": MESSAGES}


def api_of(req: Request) -> str:
    """The API a request speaks, hence the shape of every answer to it, errors
    included: the path names it for the endpoints of one API; on the shared
    ones (/v1/models, an unknown path) Anthropic's SDK says so with its
    `anthropic-version` header."""
    path = req.path.rstrip("/")
    api = _ENDPOINT_API.get(path)
    if api is None and path.startswith("/v1/messages/"):
        api = "anthropic"
    return api or ("anthropic" if req.headers.get("anthropic-version") else "openai")


def list_models(req: Request):
    """The models this key may use, in the shape of the SDK that asks. A lookup
    is not a model call: its key is checked, but it gets no usage row."""
    call = pipeline.begin(req, _LOOKUP_SHAPE[api_of(req)], metered=False)
    try:
        pipeline.authenticate(call)
    except Refusal as refusal:
        return pipeline.refuse(call, refusal)
    registry: Registry = req.environ["relay.extensions"]["relay_registry"]
    allowed = orjson.loads(call.key.allowed_models) if call.key.allowed_models else None
    entries = [(n, m.created) for n, m in registry.models.items() if allowed is None or n in allowed]
    return Response(orjson.dumps(call.shape.family.models(entries)), mimetype="application/json")


def get_model(req: Request, name: str):
    call = pipeline.begin(req, _LOOKUP_SHAPE[api_of(req)], metered=False)
    try:
        pipeline.authenticate(call)
        pipeline.name_model(call, name)
        pipeline.model(call)
    except Refusal as refusal:
        return pipeline.refuse(call, refusal)
    body = call.shape.family.model(name, call.resolved.created)
    return Response(orjson.dumps(body), mimetype="application/json")


# ---- mounting --------------------------------------------------------------------------

URLS = Map([
    *(Rule(path, endpoint=view, methods=["POST"]) for path, view in _VIEWS.items()),
    Rule("/v1/models", endpoint=list_models, methods=["GET"]),
    Rule("/v1/models/<path:name>", endpoint=get_model, methods=["GET"]),
], strict_slashes=False)
_EXACT = {(r.rule, m): r.endpoint for r in URLS.iter_rules() if "<" not in r.rule for m in r.methods - {"HEAD"}}

_STATUS_TEXT = {404: "There is no API endpoint at this path.", 405: "This endpoint does not accept that method.",
                413: "The request body is too large.", 500: "The relay failed to handle this request."}


def status_error(req, status: int) -> Response:
    """An error of the transport's own (no such path, wrong method, too large, a crash),
    in the shape of the SDK that asked; both transports answer with it."""
    message = _STATUS_TEXT.get(status, "The request could not be completed.")
    body = FAMILIES[api_of(req)].error(status, message, None, req.environ["relay.request_id"])
    return Response(orjson.dumps(body), status=status, mimetype="application/json")


class RelayDispatch:
    """WSGI middleware that serves /v1/ itself and hands every other path to Flask.

    The relay is the hot path. Measured in-process, Flask's request dispatch for
    an API call (context push, session open/save, before/after hooks, the
    portal's extensions) cost ~0.3 ms of the relay's ~0.8 ms; the API needs none
    of it: no cookies, no CSRF, no templates, and its own limits (P25). So the
    endpoints are plain functions of a werkzeug Request, routed by a werkzeug
    Map, and errors, including the app's 404/405/413/500, are answered here in
    the shape of the client's SDK. Nothing in a body is logged (P23).
    """

    def __init__(self, app: Flask, wsgi_app):
        self.flask = app
        self.wsgi_app = wsgi_app
        self.max_body = app.config.get("MAX_CONTENT_LENGTH")

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if not path.startswith("/v1/"):
            return self.wsgi_app(environ, start_response)
        rid = "req_" + secrets.token_hex(12)
        environ["relay.request_id"] = rid
        environ["relay.extensions"] = self.flask.extensions
        req = Request(environ)
        req.max_content_length = self.max_body
        try:
            view = _EXACT.get((path, environ["REQUEST_METHOD"]))
            if view is not None:  # the hot endpoints: a dict lookup instead of the URL map
                resp = view(req)
            else:
                view, args = URLS.bind_to_environ(environ).match()
                resp = view(req, **args)
        except HTTPException as exc:
            resp = status_error(req, exc.code or 500)
        except Exception as exc:  # never a stack trace to a client; never a body in the log
            # The route, not the path: a path can hold client text (/v1/models/<name>).
            route = path if (path, environ["REQUEST_METHOD"]) in _EXACT else "/v1/…"
            log.error("unhandled %s at %s %s: %s", type(exc).__name__, req.method, route, where(exc))
            resp = status_error(req, 500)
        h = resp.headers
        h["x-request-id"] = rid
        h["request-id"] = rid
        h["X-Content-Type-Options"] = "nosniff"
        return resp(environ, start_response)

def init_app(app: Flask) -> None:
    try:
        registry = load(app.config["PROVIDERS_FILE"])
    except ProvidersFileError as exc:
        raise RuntimeError(f"PROVIDERS_FILE: {exc}") from None
    app.extensions["relay_registry"] = registry
    app.extensions["relay_limits"] = Limits(app.config["RATELIMIT_STORAGE_URI"], app.config["RELAY_LIMITS"])
    with app.app_context():
        app.extensions["relay_engine"] = db.engine  # the key lookup runs outside Flask's app context
    app.extensions["relay_hash_key"] = key_hasher(app.config["SECRET_KEY"])
    app.extensions["billing_prepaid"] = app.config["PREPAID"]
    app.extensions["billing_default_max_output"] = app.config["BUDGET_DEFAULT_MAX_OUTPUT"]
    init_meter(app)
    app.wsgi_app = RelayDispatch(app, app.wsgi_app)
