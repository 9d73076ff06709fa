"""Billing (P26, P40, P41, P42): the Billing page of an account or team
(app/billing/pages.py) and Stripe's webhook (app/billing/webhook.py)."""
from __future__ import annotations

from flask import Blueprint

bp = Blueprint("billing", __name__)

from app.billing import pages, webhook  # noqa: E402,F401  (their routes join bp)
