"""POST /billing/webhook: Stripe's events, verified by signature (not by a
session or a CSRF token: Stripe has neither), handled once (P40)."""
from __future__ import annotations

from flask import Response, request

from app.billing import bp
from app.extensions import csrf, limiter
from app.services import stripe_billing

MAX_EVENT_BYTES = 512 * 1024


@bp.post("/webhook")
@csrf.exempt
@limiter.exempt
def webhook():
    if (request.content_length or 0) > MAX_EVENT_BYTES:
        return Response("too large", status=413, mimetype="text/plain")
    status, reason = stripe_billing.handle_webhook(request.get_data(cache=False),
                                                   request.headers.get("Stripe-Signature"))
    return Response(reason, status=status, mimetype="text/plain")
