"""The Billing page (P26, P31, P40, P41, P42): the balance of the current
context's wallet, adding funds through Stripe Checkout, the low-balance alert,
spending limits, the alerts that fired, the ledger with its CSV and receipts.

Whose money: personal, the person's own wallet; in a team, the team's, which
only its owners and admins see (P31). A plain member sees a notice and their
own limits, read-only, and the ledger's CSV and receipts are not there for
them. The logic is in the services (wallets, budgets, stripe_billing); these
views parse, call one, commit once and render.

Every route here is @login_required one by one: the blueprint also serves
Stripe's webhook, which has no session.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from urllib.parse import urlsplit

import sqlalchemy as sa
from flask import (
    Response,
    abort,
    current_app,
    flash,
    make_response,
    redirect,
    render_template,
    request,
    stream_with_context,
    url_for,
)
from flask_login import current_user, login_required

from app.billing import bp
from app.billing.forms import (
    KIND_LABELS,
    BudgetForm,
    LedgerQuery,
    LowBalanceForm,
    RemoveBudgetForm,
    TopUpForm,
    bounds,
    parse_ledger,
)
from app.context import Context, current_context
from app.extensions import db
from app.models import ApiKey, BudgetAlert, LedgerEntry, Team, Wallet
from app.models.billing import to_usd
from app.models.types import utcnow
from app.numbers import parse_int
from app.security import csp_allowing_forms_to
from app.services import ServiceError, budgets, keys, stripe_billing, teams, wallets
from app.services.audit import record_event
from app.services.billing_mail import describe_target
from app.services.usage import csv_cell
from app.urls import public_url
from app.usage.routes import short_id, usd
from app.web import is_htmx

PER_PAGE = 50
ALERTS_SHOWN = 10
WAIT_TRIES = 30  # the page asks every 2 s for about a minute, then offers a Refresh link
MEMBER_NOTICE = "Only the team's owners and admins see its billing."
DEFAULT_LOW_BALANCE = Wallet.__table__.c.low_balance_units.default.arg  # what a new wallet starts with
THANKS = ("Thank you. Your balance goes up as soon as Stripe confirms the payment, usually within seconds.")


@dataclass(frozen=True)
class Seen:
    """What the signed-in person may see of the current context's billing."""
    ctx: Context
    team: Team | None
    sees_money: bool       # the balance, the ledger, receipts, top-ups
    wallet: Wallet | None  # made on the first top-up or setting, never by looking

    @property
    def owner(self) -> dict:
        return {"team_id": self.ctx.team_id} if self.ctx.is_team else {"user_id": self.ctx.user_id}


def _seen() -> Seen:
    ctx = current_context()
    team = db.session.get(Team, ctx.team_id) if ctx.is_team else None
    seen = Seen(ctx, team, not ctx.is_team or ctx.sees_team, None)
    if not seen.sees_money:
        return seen
    return Seen(ctx, team, True, wallets.of(**seen.owner))


def _money_only(seen: Seen) -> None:
    if not seen.sees_money:
        abort(403)


def signed(amount) -> str:
    """+$10.00 for a credit, -$0.0123 for a debit: a tiny charge is never $0.00."""
    return ("+" if amount > 0 else "-" if amount < 0 else "") + usd(abs(amount), 8)


def money(amount) -> str:
    return ("-" if amount < 0 else "") + usd(abs(amount), 8)


# ---- what the page shows ----------------------------------------------------------------------

def _members(ctx: Context) -> list[tuple[int, str]]:
    """(user id, name) of the members whose limits the context shows: all of
    them for owners and admins, the member alone otherwise."""
    if not ctx.is_team:
        return []
    names = teams.member_names(ctx.team_id)
    if ctx.sees_team:
        return list(names.items())
    return [(ctx.user_id, names.get(ctx.user_id) or current_user.name or current_user.email)]


def _lines(ctx: Context) -> tuple[list[budgets.Line], dict[int, ApiKey]]:
    listed = keys.list_for(current_user, ctx)
    shown = budgets.lines(ctx, listed, _members(ctx))
    if ctx.is_team and not ctx.sees_team:
        # budgets.lines gives a member the whole team's line (with the team's
        # spend); P31 shows a member only their own, so it is left out here.
        shown = [line for line in shown if line.scope != "team"]
    return shown, {k.id: k for k in listed}


def _alerts(ctx: Context) -> list[tuple[BudgetAlert, str]]:
    """The last alerts of the context, each with the words for it."""
    q = sa.select(BudgetAlert)
    if not ctx.is_team:
        q = q.where(BudgetAlert.user_id == ctx.user_id, BudgetAlert.team_id.is_(None))
    elif ctx.sees_team:
        q = q.where(BudgetAlert.team_id == ctx.team_id)
    else:
        q = q.where(BudgetAlert.team_id == ctx.team_id, BudgetAlert.user_id == ctx.user_id)
    rows = db.session.scalars(q.order_by(BudgetAlert.created_at.desc(), BudgetAlert.id.desc())
                              .limit(ALERTS_SHOWN)).all()
    out = []
    for a in rows:
        if a.kind == "low_balance":
            what = "Low balance"
        else:
            what = f"{a.threshold} % of the {a.kind} budget of {describe_target(a.target)}"
        out.append((a, what))
    return out


def _last_topup_id(wallet: Wallet | None) -> int:
    if wallet is None:
        return 0
    return db.session.scalar(sa.select(sa.func.max(LedgerEntry.id)).where(
        LedgerEntry.wallet_id == wallet.id, LedgerEntry.kind == "topup")) or 0


@dataclass(frozen=True)
class Wait:
    """Back from Stripe: waiting for the webhook's top-up after entry `after`."""
    after: int
    tries: int
    arrived: bool

    @property
    def polling(self) -> bool:
        return not self.arrived and self.tries < WAIT_TRIES

    def next_url(self) -> str:
        return url_for("billing.index", wait=self.after, tries=self.tries + 1)


def _wait(seen: Seen) -> Wait | None:
    after = parse_int(request.args.get("wait"), maximum=2**62)
    if after is None or not seen.sees_money:
        return None
    tries = parse_int(request.args.get("tries"), maximum=WAIT_TRIES) or 0
    return Wait(after, tries, _last_topup_id(seen.wallet) > after)


def _ledger(seen: Seen, query: LedgerQuery) -> dict:
    if seen.wallet is None:
        return {"entries": [], "total": 0, "pages": 1, "has_entries": False}
    rows, total = wallets.page(seen.wallet.id, query.page, PER_PAGE, **query.filters())
    pages = max(1, -(-total // PER_PAGE))
    if query.page > pages:  # an old link past the end: the last page
        query.page = pages
        rows, total = wallets.page(seen.wallet.id, query.page, PER_PAGE, **query.filters())
    has = bool(rows) or (query.narrowed and db.session.scalar(
        sa.select(LedgerEntry.id).where(LedgerEntry.wallet_id == seen.wallet.id).limit(1)) is not None)
    return {"entries": rows, "total": total, "pages": pages, "has_entries": has}


STRIPE_CHECKOUT_ORIGIN = "https://checkout.stripe.com"


def _checkout_csp() -> str:
    """The app's CSP, with Stripe's Checkout allowed as a form's destination.

    The top-up form is answered with a 303 to Stripe's page, and browsers
    apply `form-action` to a form's redirects too: under the app's
    `form-action 'self'` Chromium stops at that redirect and the person stays
    on this page with no word why. So the pages that carry the form name
    Checkout's origin (and, for a fake or a mock, STRIPE_API_BASE's)."""
    allowed = [STRIPE_CHECKOUT_ORIGIN]
    base = urlsplit(current_app.config.get("STRIPE_API_BASE") or "")
    if base.scheme in ("http", "https") and base.netloc:
        allowed.append(f"{base.scheme}://{base.netloc}")
    return csp_allowing_forms_to(*allowed)


def _page(seen: Seen, *, topup_form: TopUpForm | None = None, low_form: LowBalanceForm | None = None,
          budget_error: dict | None = None, status: int = 200, wait: Wait | None = None):
    ctx = seen.ctx
    lines, keys_by_id = _lines(ctx)
    shown = {"seen": seen, "ctx": ctx, "team": seen.team, "lines": lines, "keys_by_id": keys_by_id,
             "alerts": _alerts(ctx), "budget_error": budget_error or {},
             "member_notice": MEMBER_NOTICE, "wait": wait}
    if seen.sees_money:
        query = parse_ledger(request.args)
        wallet = seen.wallet
        low = low_form or LowBalanceForm(formdata=None)
        if low_form is None:
            units = wallet.low_balance_units if wallet is not None else DEFAULT_LOW_BALANCE
            low.threshold.data = f"{to_usd(units):.2f}"
        lo, hi = bounds()
        shown.update(
            wallet=wallet, balance=wallet.balance if wallet else to_usd(0),
            held=to_usd(wallet.reserved_units) if wallet else to_usd(0),
            card=wallet.payment_method if wallet else None, prepaid=current_app.config["PREPAID"],
            stripe_on=stripe_billing.configured(), topup_form=topup_form or TopUpForm(formdata=None),
            topup_min=lo, topup_max=hi, low_form=low, query=query, kinds=KIND_LABELS,
            webhook_url=public_url("billing.webhook"), **_ledger(seen, query))
    resp = make_response(render_template("billing/index.html", **shown), status)
    if seen.sees_money and stripe_billing.configured():
        resp.headers["Content-Security-Policy"] = _checkout_csp()
    return resp


# ---- the page ------------------------------------------------------------------------------------

@bp.get("/")
@login_required
def index():
    seen = _seen()
    wait = _wait(seen)
    if is_htmx() and wait is not None:
        if wait.arrived:  # the whole page again, with the new balance and its ledger row
            flash("Payment received: your balance is up to date.", "success")
            resp = make_response("", 200)
            resp.headers["HX-Redirect"] = url_for("billing.index")
            return resp
        return render_template("billing/_waiting.html", wait=wait)
    resp = _page(seen, wait=wait)
    resp.vary.add("HX-Request")
    return resp


@bp.get("/done")
@login_required
def done():
    """Where Stripe sends the browser after a payment. The ledger row comes
    with the webhook, so this only says thank you and waits for it; the
    session id Stripe appends is not needed (the webhook names the wallet)."""
    flash(THANKS, "success")
    after = parse_int(request.args.get("after"), maximum=2**62)
    return redirect(url_for("billing.index", wait=after if after is not None else 0))


@bp.post("/top-up")
@login_required
def top_up():
    seen = _seen()
    _money_only(seen)
    if not stripe_billing.configured():
        flash("Payments are not enabled on this deployment, so nothing was charged.", "warning")
        return redirect(url_for("billing.index"))
    form = TopUpForm()
    if not form.validate_on_submit():
        return _page(seen, topup_form=form, status=400)
    wallet = wallets.open_for(**seen.owner)
    db.session.commit()
    # The newest top-up before this payment: the page waits for one after it.
    after = _last_topup_id(wallet)
    try:
        url = stripe_billing.start_topup(
            wallet, form.usd,
            success_url=public_url("billing.done", after=after) + "&session_id={CHECKOUT_SESSION_ID}",
            cancel_url=public_url("billing.index"))
    except ServiceError as exc:
        db.session.rollback()
        form.amount.errors = [str(exc)]
        return _page(_seen(), topup_form=form, status=400)
    return redirect(url, 303)


@bp.post("/low-balance")
@login_required
def low_balance():
    seen = _seen()
    _money_only(seen)
    form = LowBalanceForm()
    if not form.validate_on_submit():
        return _page(seen, low_form=form, status=400)
    wallet = wallets.open_for(**seen.owner)
    wallet.low_balance_units = form.units
    record_event(current_user, "billing:low_balance:set", wallet=wallet.anon_ref, team_id=wallet.team_id,
                 threshold=str(to_usd(form.units)))
    db.session.commit()
    flash("Low-balance alert turned off." if form.units == 0
          else f"We will mail you when the balance falls below {usd(to_usd(form.units))}.", "success")
    return redirect(url_for("billing.index") + "#balance")


@bp.post("/budgets")
@login_required
def save_budget():
    """Set one line's limits; both amounts empty removes them, after a
    confirmation page."""
    seen = _seen()
    ctx = seen.ctx
    form = BudgetForm()
    if not form.validate_on_submit():
        return _page(seen, budget_error={"message": "This form could not be read. Reload the page and try again."},
                     status=400)
    scope, key_id, member_id = form.which()
    if scope is None:
        return _page(seen, budget_error={"message": "Choose which limit to set."}, status=400)
    lines, keys_by_id = _lines(ctx)
    line = next((ln for ln in lines if scope and ln.scope == scope
                 and (scope != "key" or ln.key_id == key_id)
                 and (scope != "member" or ln.member_id == member_id)), None)
    typed = {"target": line.target if line else None, "monthly": form.monthly.data or "",
             "total": form.total.data or ""}
    if form.empty and line is not None and line.editable and form.confirm.data != "1":
        if line.monthly_units is None and line.total_units is None:
            flash(f"{line.label} has no limit to remove.", "info")
            return redirect(url_for("billing.index") + "#limits")
        confirm = RemoveBudgetForm(formdata=None, scope=scope, key_id=key_id or "", member_id=member_id or "")
        return render_template("confirm.html", form=confirm, title=f"Remove the limits of {line.label}?",
                               message="Requests are then no longer stopped by this limit. What was spent so far "
                                       "still counts if you set a limit again.",
                               action=url_for("billing.save_budget"), button="Remove limits",
                               cancel=url_for("billing.index") + "#limits", danger=True)
    try:
        saved = budgets.set_budget(current_user, ctx, scope, form.monthly.data, form.total.data,
                                   key=keys_by_id.get(key_id) if line is not None and scope == "key" else None,
                                   member_id=member_id)
    except budgets.Forbidden as exc:
        db.session.rollback()
        return _page(_seen(), budget_error={**typed, "message": str(exc)}, status=403)
    except ServiceError as exc:
        db.session.rollback()
        return _page(_seen(), budget_error={**typed, "message": str(exc)}, status=400)
    db.session.commit()
    flash("Budget saved" if saved is not None else "Budget removed", "success")
    return redirect(url_for("billing.index") + "#limits")


# ---- the ledger's download and receipts -----------------------------------------------------------

CSV_FIELDS = ("date", "kind", "description", "reference", "amount_usd", "entry_id")


def describe(entry) -> str:
    """The words of an entry's Description (a LedgerEntry, or a row with its
    kind, memo and reference), for the page and the CSV."""
    if entry.kind == "charge":
        return f"{entry.memo or 'Request'} · request {entry.reference}"
    if entry.kind == "adjustment":
        return f"Adjustment by staff: {entry.memo}" if entry.memo else "Adjustment by staff"
    return entry.memo or KIND_LABELS.get(entry.kind, entry.kind)


def _ledger_rows(wallet_id: int, query: LedgerQuery, batch: int = 500):
    """Every entry of the filtered ledger, newest first, read in keyset batches
    of plain column tuples: the download holds one batch, however long the
    ledger, and no ORM object outlives its query."""
    e = LedgerEntry
    base = wallets.entries_query(wallet_id, **query.filters()).with_only_columns(
        e.created_at, e.kind, e.memo, e.reference, e.amount_units, e.id)
    last = None
    while True:
        stmt = base if last is None else base.where(sa.or_(
            e.created_at < last.created_at, sa.and_(e.created_at == last.created_at, e.id < last.id)))
        rows = db.session.execute(stmt.limit(batch)).all()
        yield from rows
        if len(rows) < batch:
            return
        last = rows[-1]


def _csv_chunks(rows, per_chunk: int = 200):
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(CSV_FIELDS)
    for n, e in enumerate(rows, 1):
        writer.writerow([e.created_at.strftime("%Y-%m-%dT%H:%M:%SZ"), e.kind, csv_cell(describe(e)),
                         csv_cell(e.reference), f"{to_usd(e.amount_units):f}", e.id])
        if n % per_chunk == 0:
            yield buf.getvalue()
            buf.seek(0)
            buf.truncate()
    yield buf.getvalue()


@bp.get("/ledger.csv")
@login_required
def ledger_csv():
    """Every entry of the filtered ledger (all pages), newest first, streamed."""
    seen = _seen()
    _money_only(seen)
    query = parse_ledger(request.args)
    rows = _ledger_rows(seen.wallet.id, query) if seen.wallet is not None else iter(())
    resp = Response(stream_with_context(_csv_chunks(rows)), mimetype="text/csv")
    resp.headers["Content-Disposition"] = f"attachment; filename=billing-{utcnow():%Y%m%d}.csv"
    resp.headers["Cache-Control"] = "no-store"
    return resp


@bp.get("/receipts/<int:entry_id>")
@login_required
def receipt(entry_id: int):
    """A printable receipt of a top-up or refund of the context's wallet;
    any other entry is not found, so ids reveal nothing."""
    seen = _seen()
    entry = db.session.get(LedgerEntry, entry_id)
    if (not seen.sees_money or seen.wallet is None or entry is None or entry.wallet_id != seen.wallet.id
            or entry.kind not in ("topup", "refund")):
        abort(404)
    return render_template("billing/receipt.html", entry=entry, seen=seen, team=seen.team,
                           account=current_user.email)


@bp.context_processor
def _helpers():
    return {"usd": usd, "signed": signed, "money": money, "short_id": short_id, "describe": describe,
            "to_usd": to_usd, "kind_label": lambda kind: KIND_LABELS.get(kind, kind)}
