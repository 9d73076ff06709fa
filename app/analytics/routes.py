"""The analytics page (P30, P31): spend, requests, tokens and errors over
time, breakdowns and latency percentiles for the current context, drawn as
server-side SVG with a data table for every chart. It reads only the rollup
cells (app/services/analytics.py), so it is as fast at millions of requests
as at ten; which cells a person may read is `analytics.scope_for(context)`."""
from __future__ import annotations

from flask import Blueprint, current_app, render_template, request, url_for
from flask_login import login_required

from app.analytics import charts
from app.analytics.forms import parse
from app.context import current_context
from app.models.types import utcnow
from app.services import analytics, policy
from app.usage.routes import usd

bp = Blueprint("analytics", __name__)


@bp.before_request
@login_required
def _require_login():
    """Analytics show the current context's usage only."""


def duration(ms: float | None) -> str:
    if ms is None:
        return "–"
    if ms < 1000:
        return f"{ms:,.0f} ms"
    return f"{ms / 1000:,.2f} s" if ms < 10_000 else f"{ms / 1000:,.1f} s"


def count(n: int) -> str:
    return f"{n:,}"


def percent(x: float) -> str:
    return f"{x * 100:.1f} %" if x else "0 %"


@bp.context_processor
def _helpers():
    return {"usd": usd, "duration": duration, "count": count, "percent": percent,
            "bucket_label": charts.bucket_label}


def _charts(report: analytics.Report) -> dict:
    grain = report.window.grain
    spend = charts.columns(report.points, grain, lambda p: p.cost_usd, lambda p: usd(p.cost_usd))
    spend.peak = usd(max((p.cost_usd for p in report.points), default=0))
    traffic = charts.columns(report.points, grain, lambda p: p.requests,
                             lambda p: f"{p.requests:,} requests, {p.errors:,} failed", bad=lambda p: p.errors)
    traffic.peak = count(max((p.requests for p in report.points), default=0))
    bars = {dim: charts.rows(slices, lambda s: s.cost_usd if report.total.cost_usd else s.requests,
                             lambda s: f"{usd(s.cost_usd)}, {s.requests:,} requests")
            for dim, slices in report.breakdowns.items()}
    return {"spend": spend, "traffic": traffic, "bars": bars}


@bp.route("/")
def index():
    ctx = current_context()
    now = utcnow()
    form = parse(request.args, now, policy.enforced("METADATA_RETENTION_DAYS", now))
    scope = analytics.scope_for(ctx)
    report = analytics.report(scope, form.window)
    return render_template(
        "analytics/index.html", ctx=ctx, form=form, report=report, ranges=analytics.RANGES,
        breakdown_names=analytics.BREAKDOWNS, percentiles=analytics.PERCENTILES,
        ever_used=not report.empty or analytics.has_any(scope), charts=_charts(report),
        max_days=analytics.MAX_CUSTOM_DAYS, usage_url=_url("usage.index", "/usage/"),
        keys_url=_url("keys.index", "/keys/"))


def _url(endpoint: str, fallback: str) -> str:
    """A sibling page's address, whether or not its blueprint is in this build."""
    return url_for(endpoint) if endpoint in current_app.view_functions else fallback
