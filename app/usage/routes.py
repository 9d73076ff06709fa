"""The usage page (P22, P30): the signed-in person's own requests, newest first,
with a 30-day summary, filters and pagination. Metadata only: the relay never
stored a request's content, so there is none to show (P23)."""
from __future__ import annotations

import math
from datetime import timedelta
from decimal import ROUND_HALF_UP, Decimal

from flask import Blueprint, current_app, render_template, request, url_for
from flask_login import current_user, login_required

from app.models.types import utcnow
from app.services import usage
from app.usage.forms import STATUSES, parse
from app.web import is_htmx

bp = Blueprint("usage", __name__)
PER_PAGE = 50
SUMMARY_DAYS = 30


@bp.before_request
@login_required
def _require_login():
    """Every page here shows the signed-in person's own requests, and only those."""


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


@bp.route("/")
def index():
    query = parse(request.args)
    user_id = current_user.id
    rows, total = usage.page_for_user(user_id, query.page, PER_PAGE, query.filters)
    pages = max(1, math.ceil(total / PER_PAGE))
    if query.page > pages:
        # A page past the end (an old link, a hand-edited URL): show the last one.
        query.page = pages
        rows, total = usage.page_for_user(user_id, query.page, PER_PAGE, query.filters)
    keys = usage.keys_for_user(user_id)
    ctx = dict(
        rows=rows, total=total, page=query.page, pages=pages, per_page=PER_PAGE, query=query,
        filters=query.filters, notes=query.notes, keys_by_id={k.id: k for k in keys},
        first_run=total == 0 and (not query.filters.active or not usage.has_usage(user_id)),
        base_url=current_app.config["BASE_URL"].rstrip("/"), keys_url=keys_url(),
    )
    if _wants_fragment():
        resp = current_app.make_response(render_template("usage/_table.html", **ctx))
        # Push the tidy address (no empty fields, the page actually shown).
        resp.headers["HX-Push-Url"] = url_for(
            "usage.index", **query.params(page=query.page if query.page > 1 else None))
    else:
        resp = current_app.make_response(render_template(
            "usage/index.html", keys=keys, models=usage.models_for_user(user_id),
            totals=usage.totals_for_user(user_id, utcnow() - timedelta(days=SUMMARY_DAYS)),
            summary_days=SUMMARY_DAYS, **ctx))
    # The same URL answers a fragment or a page: caches must tell them apart.
    resp.vary.add("HX-Request")
    return resp
