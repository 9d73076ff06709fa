"""The usage page (P22, P30, P31): the requests of the current context, newest
first, with a summary of the filtered set, filters, keyset pages and CSV/JSON
downloads. Personal usage is the person's own; in a team, owners and admins
see every member's requests and members their own. Metadata only: the relay
never stored a request's content, so there is none to show (P23)."""
from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

from flask import (
    Blueprint,
    Response,
    current_app,
    render_template,
    request,
    stream_with_context,
    url_for,
)
from flask_login import login_required

from app.context import current_context
from app.models.types import utcnow
from app.services import usage
from app.usage.forms import DEFAULT_DAYS, STATUSES, parse
from app.web import is_htmx

bp = Blueprint("usage", __name__)
PER_PAGE = 50
SUMMARY_DAYS = DEFAULT_DAYS  # the dashboard's strip uses the same window
MIMETYPES = {"csv": "text/csv", "json": "application/json"}


@bp.before_request
@login_required
def _require_login():
    """Every page here shows the current context's requests, and only those."""


def usd(value, places: int = 6) -> str:
    """Dollars to at most six decimals, trailing zeros trimmed but never below
    cents: $0.000123, $0.50, $12.3456. A tiny non-zero cost is not shown as $0."""
    value = Decimal(value or 0)
    step = Decimal(1).scaleb(-places)
    if 0 < abs(value) < step:
        return f"<${step}"
    text = f"{value.quantize(step, rounding=ROUND_HALF_UP):,.{places}f}".rstrip("0")
    whole, _, frac = text.partition(".")
    return f"${whole}.{frac.ljust(2, '0')}"


def short_id(request_id: str) -> str:
    return request_id if len(request_id) <= 14 else request_id[:12] + "…"


def keys_url() -> str:
    """The keys page, whether or not its blueprint is registered in this build."""
    return url_for("keys.index") if "keys.index" in current_app.view_functions else "/keys/"


@bp.context_processor
def _helpers():
    return {"usd": usd, "short_id": short_id, "trace_of": usage.routing_trace, "tags_of": usage.tags,
            "STATUSES": STATUSES}


def _wants_fragment() -> bool:
    # A history restore (back button, cache miss) needs the whole page.
    return is_htmx() and request.headers.get("HX-History-Restore-Request") != "true"


def _query(scope: usage.Scope):
    return parse(request.args, today=utcnow().date(), whole_team=scope.whole_team)


@bp.route("/")
def index():
    ctx = current_context()
    scope = usage.scope_for(ctx)
    query = _query(scope)
    page = usage.page(scope, query.filters, PER_PAGE, after=query.after, before=query.before)
    keys = usage.keys_for(scope)
    shown = {
        "rows": page.rows, "newer": page.newer, "older": page.older, "query": query, "filters": query.filters,
        "notes": query.notes, "totals": usage.summary(scope, query.filters), "scope": scope, "context": ctx,
        "keys_by_id": {k.id: k for k in keys}, "members": usage.members_for(scope),
        "first_run": not page.rows and not usage.has_usage(scope), "default_days": DEFAULT_DAYS,
        "keys_url": keys_url(),
    }
    if _wants_fragment():
        resp = current_app.make_response(render_template("usage/_table.html", **shown))
        # Push the tidy address: valid filters only, and the position actually shown.
        resp.headers["HX-Push-Url"] = url_for("usage.index", **query.params(**_position(query, page)))
    else:
        resp = current_app.make_response(render_template(
            "usage/index.html", keys=keys, models=usage.models_for(scope, query.filters),
            projects=usage.projects_for(scope), tags=usage.tags_for(scope), **shown))
    # The same URL answers a fragment or a page: caches must tell them apart.
    resp.vary.add("HX-Request")
    return resp


def _position(query, page) -> dict:
    """The cursor of the page shown; none for the first page (a "Newer" link
    that reached the newest rows is the first page)."""
    if query.after is not None:
        return {"after": query.after.encode()}
    if query.before is not None and page.newer is not None:
        return {"before": query.before.encode()}
    return {}


@bp.route("/download.<any(csv, json):fmt>")
def download(fmt: str):
    """Every row of the filtered set (all pages), streamed as it is read in
    keyset batches, so neither the process nor the response holds them all.
    JSON is one array, written element by element."""
    scope = usage.scope_for(current_context())
    query = _query(scope)
    key_names = {k.id: k.name for k in usage.keys_for(scope)}
    members = usage.members_for(scope) if scope.whole_team else None
    rows = usage.iter_rows(scope, query.filters)
    body = (usage.csv_chunks if fmt == "csv" else usage.json_chunks)(rows, key_names, members)
    resp = Response(stream_with_context(body), mimetype=MIMETYPES[fmt])
    resp.headers["Content-Disposition"] = f"attachment; filename=usage-{utcnow():%Y%m%d}.{fmt}"
    resp.headers["Cache-Control"] = "no-store"
    return resp
