"""P40: whatever reaches the Stripe webhook (bytes from anyone, or validly
signed events of any shape, as a leaked secret would allow) is never a 5xx,
never logged, and writes nothing unless it is a genuine event about our wallet."""
from __future__ import annotations

import json
import logging
import time

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.extensions import db
from app.models import LedgerEntry, StripeEvent
from tests.fakes.stripe import sign

SECRET = "whsec_property_test"
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=30),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                                       max_size=4), max_leaves=12)


@pytest.fixture
def hook(make_app):
    app = make_app(STRIPE_SECRET_KEY="sk_test_unreachable", STRIPE_API_BASE="http://127.0.0.1:9",
                   STRIPE_WEBHOOK_SECRET=SECRET)
    return app, app.test_client()


def _counts(app) -> tuple[int, int]:
    with app.app_context():
        return (db.session.scalar(sa.select(sa.func.count()).select_from(StripeEvent)),
                db.session.scalar(sa.select(sa.func.count()).select_from(LedgerEntry)))


@pytest.mark.promise("P40")
def test_p40_unsigned_bytes_of_any_kind_are_400_and_write_nothing(hook, caplog):
    app, client = hook
    caplog.set_level(logging.DEBUG)

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(body=st.binary(max_size=300) | st.text(max_size=300).map(str.encode),
           header=st.none() | st.text(max_size=80) | st.just("t=1,v1=00"))
    def run(body, header):
        canary = b"zq9hookcanary"
        headers = {"Content-Type": "application/json"}
        if header is not None:
            headers["Stripe-Signature"] = header.replace("\n", " ").replace("\r", " ")
        resp = client.post("/billing/webhook", data=body + canary, headers=headers)
        assert resp.status_code == 400
        assert "zq9hookcanary" not in caplog.text

    run()
    assert _counts(app) == (0, 0)


@pytest.mark.promise("P40")
def test_p40_signed_events_of_any_shape_are_never_a_5xx(hook, caplog):
    """Signed with the real secret: the shape of the event is still not trusted."""
    app, client = hook
    caplog.set_level(logging.DEBUG)
    seen = []

    @settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
    @given(kind=st.sampled_from(["checkout.session.completed", "refund.created", "charge.refunded", "other"]),
           obj=st.dictionaries(st.sampled_from(["mode", "payment_status", "amount_total", "currency", "metadata",
                                                "payment_intent", "client_reference_id", "object", "status",
                                                "amount", "id"]), json_values | st.just({"wallet": "w_x"}),
                               max_size=8),
           event_id=st.from_regex(r"[A-Za-z0-9]{1,20}", fullmatch=True) | st.text(max_size=20))
    def run(kind, obj, event_id):
        event = {"id": "evt_" + event_id, "object": "event", "type": kind, "data": {"object": obj}}
        payload = json.dumps(event).encode()
        resp = client.post("/billing/webhook", data=payload, headers={
            "Content-Type": "application/json", "Stripe-Signature": sign(payload, SECRET, int(time.time()))})
        assert resp.status_code in (200, 400, 503), resp.status_code
        seen.append(resp.status_code)

    run()
    assert _counts(app)[1] == 0  # no wallet of ours was named: nothing credited or debited
    assert 200 in seen
