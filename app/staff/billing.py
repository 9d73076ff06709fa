"""Staff billing (P40, P41, P55): look up a person's wallet by their address, or
any wallet by its anonymous id; see its balance and ledger; post an adjustment
with a reason (checked, then confirmed); refund a card top-up through Stripe.

These routes join the staff blueprint, so its rule holds: staff only, everyone
else 403. Money moves only after a fresh sign-in (like carrying out a
request), and every page that shows a person's wallet is recorded as a staff
view of that person, which they see under "who looked at my data". What staff
type into the lookup is never recorded: an address is not an audit fact.
"""
from __future__ import annotations

import math
import re

from flask import abort, flash, redirect, render_template, request, url_for
from flask_login import current_user

from app.extensions import db
from app.models import LedgerEntry, Team, User, Wallet
from app.numbers import page_number
from app.services import ServiceError, privacy, stripe_billing, wallets
from app.services.accounts import find_by_email
from app.services.audit import record_event
from app.staff.forms import AdjustForm, BillingLookupForm, RefundForm
from app.staff.routes import bp
from app.web import fresh_login_required

PER_PAGE = 50
ANON_REF = re.compile(r"w_[0-9a-f]{16}")  # wallets.open_for's form; nothing else reaches the database
REFUND_REQUESTED = "Refund requested; it appears when Stripe confirms."


def _wallet(anon_ref: str) -> Wallet:
    wallet = wallets.by_ref(anon_ref) if ANON_REF.fullmatch(anon_ref or "") else None
    if wallet is None:
        abort(404)
    return wallet


def _owner(wallet: Wallet) -> dict:
    """Whose wallet this is, as staff need to see it."""
    if wallet.user_id is not None:
        return {"kind": "person", "user": db.session.get(User, wallet.user_id), "team": None}
    if wallet.team_id is not None:
        return {"kind": "team", "user": None, "team": db.session.get(Team, wallet.team_id)}
    return {"kind": "erased", "user": None, "team": None}


def _record_view(wallet: Wallet, what: str) -> None:
    """A person's wallet is their data: the view goes into their access log.
    A team's wallet, or an erased account's, is recorded under its anonymous id."""
    if wallet.user_id is not None:
        privacy.record_staff_view(current_user, wallet.user_id, what=what)
    else:
        record_event(current_user, "staff:billing:viewed", wallet=wallet.anon_ref, team_id=wallet.team_id,
                     what=what)


def _back(wallet: Wallet):
    return redirect(url_for("staff.billing_wallet", anon_ref=wallet.anon_ref))


def _money(amount) -> str:
    return f"−${-amount:,.2f}" if amount < 0 else f"${amount:,.2f}"


def _refundable(entry: LedgerEntry) -> bool:
    return entry.kind == "topup" and entry.reference.startswith("pi_")


# ---- lookup ------------------------------------------------------------------------------

@bp.route("/billing/", methods=["GET", "POST"])
def billing_lookup():
    """A POST, so an address never sits in a URL (history, proxies)."""
    form = BillingLookupForm()
    found = None  # an account without a wallet
    if form.validate_on_submit():
        text = form.who.data.strip()
        if ANON_REF.fullmatch(text.lower()):
            wallet = wallets.by_ref(text.lower())
            if wallet is not None:
                return _back(wallet)
            form.who.errors = ["No wallet has that id."]
        else:
            user = find_by_email(text)
            wallet = wallets.of(user_id=user.id) if user is not None else None
            if wallet is not None:
                return _back(wallet)
            if user is None:
                form.who.errors = ["No account has that address."]
            else:
                found = user
                privacy.record_staff_view(current_user, user, what="billing (no wallet)")
                db.session.commit()
    return render_template("staff/billing.html", form=form, found=found), 422 if form.errors else 200


# ---- one wallet ----------------------------------------------------------------------------

def _wallet_page(wallet: Wallet, status: int = 200, adjust_form: AdjustForm | None = None):
    page_no = page_number(request.args.get("page"))
    rows, total = wallets.page(wallet.id, page_no, PER_PAGE)
    pages = max(1, math.ceil(total / PER_PAGE))
    if page_no > pages:  # an old link past the end: the last page
        page_no = pages
        rows, total = wallets.page(wallet.id, page_no, PER_PAGE)
    _record_view(wallet, "billing: wallet and ledger")
    html = render_template("staff/billing_wallet.html", wallet=wallet, owner=_owner(wallet), rows=rows,
                           total=total, page=page_no, pages=pages, totals=wallets.totals(wallet.id),
                           adjust_form=adjust_form or AdjustForm(formdata=None),
                           can_refund=stripe_billing.configured(), refundable=_refundable, money=_money)
    db.session.commit()
    return html, status


@bp.route("/billing/w/<anon_ref>")
def billing_wallet(anon_ref: str):
    return _wallet_page(_wallet(anon_ref))


@bp.route("/billing/w/<anon_ref>/adjust", methods=["POST"])
@fresh_login_required
def billing_adjust(anon_ref: str):
    """Two steps: the form is checked and shown back for confirmation; only the
    confirmed post moves the balance (wallets.adjust re-checks and audits)."""
    wallet = _wallet(anon_ref)
    form = AdjustForm()
    if not form.validate_on_submit():
        return _wallet_page(wallet, 422, adjust_form=form)
    if form.confirmed.data != "yes":
        _record_view(wallet, "billing: adjustment to confirm")
        html = render_template("staff/billing_adjust.html", form=form, wallet=wallet, owner=_owner(wallet),
                               amount=form.value, after=wallet.balance + form.value, money=_money)
        db.session.commit()
        return html
    try:
        entry = wallets.adjust(current_user, wallet, str(form.value), form.reason.data)
    except ServiceError as exc:
        db.session.rollback()
        flash(str(exc), "error")
        return _back(wallet)
    db.session.commit()
    db.session.refresh(wallet)
    flash(f"Adjustment #{entry.id} of {_money(entry.amount)} posted; the balance is now {_money(wallet.balance)}.",
          "success")
    return _back(wallet)


@bp.route("/billing/w/<anon_ref>/refund/<int:entry_id>", methods=["GET", "POST"])
@fresh_login_required
def billing_refund(anon_ref: str, entry_id: int):
    """The page is the confirmation: the top-up, and how much of it to refund.
    Stripe refunds; the ledger entry comes with its webhook, as for a refund
    made in Stripe's own dashboard."""
    wallet = _wallet(anon_ref)
    entry = db.session.get(LedgerEntry, entry_id)
    if entry is None or entry.wallet_id != wallet.id:
        abort(404)
    if not _refundable(entry):
        flash("Only a card top-up can be refunded.", "error")
        return _back(wallet)
    if not stripe_billing.configured():
        flash("Payments are not configured here, so nothing can be refunded.", "error")
        return _back(wallet)
    form = RefundForm()
    form.limit = entry.amount
    if form.validate_on_submit():
        try:
            stripe_billing.refund(current_user, entry, form.value)
        except ServiceError as exc:
            db.session.rollback()
            flash(str(exc), "error")
            return _back(wallet)
        db.session.commit()  # stripe_billing's audit row names the person: it is in their access log
        flash(REFUND_REQUESTED, "success")
        return _back(wallet)
    _record_view(wallet, f"billing: top-up #{entry.id}, to refund")
    html = render_template("staff/billing_refund.html", form=form, wallet=wallet, owner=_owner(wallet),
                           entry=entry, money=_money)
    db.session.commit()
    return html, 422 if form.errors else 200
