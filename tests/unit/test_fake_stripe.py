"""The fake Stripe speaks Stripe's wire format: the official stripe SDK works against it and its webhooks verify."""
from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from socketserver import TCPServer

import pytest
import stripe

from tests.fakes.stripe import FakeStripe, PaymentError, parse_params

VISA, MASTERCARD, DECLINED = "4242424242424242", "5555555555554444", "4000000000000002"
SECRET = "whsec_test_fake"
ROOT = Path(__file__).resolve().parents[2]


class Receiver:
    """A webhook endpoint on loopback that checks each delivery as the app must: stripe.Webhook.construct_event."""

    def __init__(self, secret: str = SECRET):
        self.secret = secret
        self.lock = threading.Lock()
        self.received: list[tuple[dict[str, str], bytes]] = []  # (headers, body) of every POST
        self.events: list[stripe.Event] = []  # the ones that verified
        self.rejected = 0
        self.script: list[int] = []  # statuses to answer first, one per request, before verifying
        self.delay = 0.0
        self.active = self.max_active = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = receiver.handle(dict(self.headers.items()), body)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 64  # ten deliveries at once overflow the default backlog of 5

            def server_bind(self):  # skip HTTPServer's getfqdn, which can stall without DNS
                TCPServer.server_bind(self)
                self.server_name, self.server_port = self.server_address[:2]

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/billing/webhook"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def handle(self, headers: dict[str, str], body: bytes) -> int:
        with self.lock:
            self.received.append((headers, body))
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            scripted = self.script.pop(0) if self.script else None
        try:
            time.sleep(self.delay)
            if scripted is not None:
                return scripted
            try:
                event = stripe.Webhook.construct_event(body, headers.get("Stripe-Signature"), self.secret)
            except (stripe.SignatureVerificationError, ValueError):
                with self.lock:
                    self.rejected += 1
                return 400
            with self.lock:
                self.events.append(event)
            return 200
        finally:
            with self.lock:
                self.active -= 1

    def types(self) -> list[str]:
        with self.lock:
            return [e.type for e in self.events]

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.stop()


@pytest.fixture
def fake(receiver):
    f = FakeStripe(webhook_url=receiver.url, retry_delays=(0.01, 0.02, 0.05), delivery_timeout=2).start()
    yield f
    f.stop()


@pytest.fixture
def client(fake):
    return stripe.StripeClient(fake.api_key, base_addresses={"api": fake.url}, max_network_retries=0)


def new_session(client: stripe.StripeClient, customer: str | None = None, quantity: int = 1) -> stripe.checkout.Session:
    return client.v1.checkout.sessions.create(params={
        "mode": "payment", "customer": customer, "client_reference_id": "5",
        "line_items": [{"price_data": {"currency": "usd", "unit_amount": 1250, "product_data": {"name": "Credit"}},
                        "quantity": quantity}],
        "success_url": "http://app.test/billing/done?session={CHECKOUT_SESSION_ID}",
        "cancel_url": "http://app.test/billing", "metadata": {"wallet_id": "5"},
        "payment_intent_data": {"metadata": {"wallet_id": "5"}}})


def raw(fake: FakeStripe, method: str, path: str, body: str | None = None,
        headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=5)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def form(**fields: str) -> tuple[str, dict[str, str]]:
    return urllib.parse.urlencode(fields), {"Content-Type": "application/x-www-form-urlencoded"}


# ----------------------------------------------------------------------------- objects

def test_customer_and_checkout_session_round_trip(client, fake):
    cus = client.v1.customers.create(params={"email": "ada@example.com", "name": "Ada", "metadata": {"user_id": "7"}})
    assert cus.id.startswith("cus_") and cus.object == "customer" and cus.livemode is False
    assert (cus.email, cus.name, cus.metadata.to_dict()) == ("ada@example.com", "Ada", {"user_id": "7"})
    assert client.v1.customers.retrieve(cus.id).to_dict() == cus.to_dict()

    session = new_session(client, cus.id, quantity=2)
    assert session.id.startswith("cs_test_") and session.object == "checkout.session"
    assert session.url == f"{fake.url}/pay/{session.id}"
    assert (session.status, session.payment_status, session.payment_intent) == ("open", "unpaid", None)
    assert (session.amount_total, session.currency, session.customer) == (2500, "usd", cus.id)
    assert session.client_reference_id == "5" and session.metadata.to_dict() == {"wallet_id": "5"}
    assert isinstance(session.created, int) and session.expires_at > session.created
    assert client.v1.checkout.sessions.retrieve(session.id).to_dict() == session.to_dict()

    sent = fake.requests[-2]  # what the SDK's form encoding became, parsed back
    assert (sent.method, sent.path, sent.status) == ("POST", "/v1/checkout/sessions", 200)
    assert sent.params["line_items"] == [{"price_data": {"currency": "usd", "unit_amount": "1250",
                                                         "product_data": {"name": "Credit"}}, "quantity": "2"}]
    assert sent.params["payment_intent_data"] == {"metadata": {"wallet_id": "5"}}
    assert sent.idempotency_key  # the SDK sends one with every POST

    items = client.v1.checkout.sessions.retrieve(session.id, params={"expand": ["line_items"]}).line_items
    assert [(i.description, i.quantity, i.amount_total) for i in items.data] == [("Credit", 2, 2500)]


def test_parse_params_nests_keys_and_lists():
    pairs = [("line_items[0][price_data][currency]", "usd"), ("line_items[0][quantity]", "1"),
             ("line_items[1][quantity]", "2"), ("metadata[wallet_id]", "5"), ("metadata[0]", "kept as a key"),
             ("expand[0]", "payment_method"), ("expand[1]", "customer"), ("tags[]", "a"), ("tags[]", "b"),
             ("payment_intent_data[metadata][wallet_id]", "5"), ("mode", "payment")]
    assert parse_params(pairs) == {
        "line_items": [{"price_data": {"currency": "usd"}, "quantity": "1"}, {"quantity": "2"}],
        "metadata": {"wallet_id": "5", "0": "kept as a key"}, "expand": ["payment_method", "customer"],
        "tags": ["a", "b"], "payment_intent_data": {"metadata": {"wallet_id": "5"}}, "mode": "payment"}


def test_module_level_api_base_works_too(fake, monkeypatch):
    monkeypatch.setattr(stripe, "api_key", fake.api_key)
    monkeypatch.setattr(stripe, "api_base", fake.url)
    cus = stripe.Customer.create(email="bob@example.com")
    session = stripe.checkout.Session.create(
        mode="payment", customer=cus.id, success_url="http://app.test/ok", cancel_url="http://app.test/no",
        line_items=[{"price_data": {"currency": "eur", "unit_amount": 999, "product_data": {"name": "Credit"}},
                     "quantity": 1}])
    fake.pay(session.id)
    again = stripe.checkout.Session.retrieve(session.id, expand=["payment_intent"])
    assert again.payment_intent.object == "payment_intent" and again.payment_intent.amount == 999
    assert again.payment_intent.currency == "eur"


# ----------------------------------------------------------------------------- paying

def test_pay_completes_the_session_and_sends_verified_webhooks(client, fake, receiver):
    cus = client.v1.customers.create(params={"email": "ada@example.com"})
    session = new_session(client, cus.id)
    paid = fake.pay(session.id)
    assert (paid["status"], paid["payment_status"], paid["url"]) == ("complete", "paid", None)

    fake.wait_delivered(2)
    assert receiver.types() == ["checkout.session.completed", "payment_intent.succeeded"]
    completed, succeeded = receiver.events
    assert completed.id.startswith("evt_") and completed.livemode is False and completed.pending_webhooks == 1
    assert completed.api_version == fake.api_version and completed.request.to_dict() == {
        "id": None, "idempotency_key": None}
    assert completed.data.object.id == session.id and completed.data.object.payment_intent.startswith("pi_")
    assert completed.data.object.customer_details.email == "ada@example.com"
    assert succeeded.data.object.metadata.to_dict() == {"wallet_id": "5"}
    headers, _ = receiver.received[0]
    assert headers["Content-Type"].startswith("application/json")
    assert headers["Stripe-Signature"].startswith("t=") and ",v1=" in headers["Stripe-Signature"]
    assert [(d.type, d.attempt, d.status) for d in fake.deliveries] == [
        ("checkout.session.completed", 1, 200), ("payment_intent.succeeded", 1, 200)]

    s = client.v1.checkout.sessions.retrieve(session.id, params={"expand": ["payment_intent"]})
    pi = s.payment_intent
    assert pi.object == "payment_intent" and pi.id == completed.data.object.payment_intent
    assert (pi.amount, pi.currency, pi.status, pi.customer) == (1250, "usd", "succeeded", cus.id)
    assert pi.metadata.to_dict() == {"wallet_id": "5"} and pi.payment_method.startswith("pm_")

    pi = client.v1.payment_intents.retrieve(pi.id, params={"expand": ["payment_method"]})
    assert pi.payment_method.object == "payment_method" and pi.payment_method.type == "card"
    assert (pi.payment_method.card.brand, pi.payment_method.card.last4) == ("visa", "4242")
    pm = client.v1.payment_methods.retrieve(pi.payment_method.id)
    assert (pm.card.exp_month, pm.card.exp_year) == (12, 2034)
    charge = client.v1.charges.retrieve(pi.latest_charge)
    assert charge.id.startswith("ch_") and charge.payment_intent == pi.id and charge.payment_method == pm.id
    assert (charge.amount, charge.amount_refunded, charge.refunded, charge.paid) == (1250, 0, False, True)
    assert charge.payment_method_details.card.brand == "visa" and charge.payment_method_details.card.last4 == "4242"
    assert client.v1.events.retrieve(completed.id).type == "checkout.session.completed"

    # The full number is nowhere: objects, events, deliveries, what the receiver got, what was recorded.
    everything = json.dumps([fake.get(i) for i in (cus.id, session.id, pi.id, pm.id, charge.id)])
    everything += json.dumps(fake.events) + repr(fake.deliveries) + repr(fake.requests)
    everything += repr(receiver.received) + str(s) + str(pi) + str(charge)
    assert VISA not in everything and "4242 4242 4242 4242" not in everything


def test_hosted_page_form_pays_with_mastercard_and_redirects(client, fake):
    session = new_session(client)
    status, headers, page = raw(fake, "GET", f"/pay/{session.id}")
    page = page.decode()
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "<h1>Pay $12.50 to Relay</h1>" in page
    assert '<label for="cardNumber">Card number</label>' in page and 'value="4242 4242 4242 4242"' in page
    assert '<label for="cardExpiry">' in page and '<label for="cardCvc">CVC</label>' in page
    assert '<button type="submit">Pay</button>' in page and '<a href="http://app.test/billing">Cancel</a>' in page

    body, hdrs = form(cardNumber="5555 5555 5555 4444", cardExpiry="11 / 31", cardCvc="321")
    status, headers, _ = raw(fake, "POST", f"/pay/{session.id}", body, hdrs)
    assert status == 303 and headers["Location"] == f"http://app.test/billing/done?session={session.id}"
    s = client.v1.checkout.sessions.retrieve(session.id, params={"expand": ["payment_intent.payment_method"]})
    assert (s.status, s.payment_status) == ("complete", "paid")
    card = s.payment_intent.payment_method.card
    assert (card.brand, card.last4, card.exp_month, card.exp_year) == ("mastercard", "4444", 11, 2031)

    status, _, page = raw(fake, "GET", f"/pay/{session.id}")
    assert status == 200 and "already paid" in page.decode()
    status, _, page = raw(fake, "POST", f"/pay/{session.id}", body, hdrs)
    assert status == 409 and "already paid" in page.decode()
    with pytest.raises(PaymentError) as e:
        fake.pay(session.id)
    assert e.value.code == "already_paid"
    assert len(fake.events) == 2 and MASTERCARD not in json.dumps(fake.events)
    assert raw(fake, "GET", "/pay/cs_test_nope")[0] == 404


def test_declined_card_reshows_the_page_and_leaves_the_session_open(client, fake):
    session = new_session(client)
    body, hdrs = form(cardNumber=DECLINED, cardExpiry="12 / 34", cardCvc="123")
    status, _, page = raw(fake, "POST", f"/pay/{session.id}", body, hdrs)
    page = page.decode()
    assert status == 402 and 'role="alert">Your card was declined.</p>' in page
    assert DECLINED not in page and '<button type="submit">Pay</button>' in page
    s = client.v1.checkout.sessions.retrieve(session.id)
    assert (s.status, s.payment_status, s.payment_intent) == ("open", "unpaid", None)
    assert fake.events == []

    for card, code in [(DECLINED, "card_declined"), ("4000000000009995", "insufficient_funds"),
                       ("1234567812345678", "incorrect_number")]:
        with pytest.raises(PaymentError) as e:
            fake.pay(session.id, card=card)
        assert e.value.code == code and card not in str(e.value)
    with pytest.raises(PaymentError, match="expired"):
        fake.pay(session.id, exp="01 / 20")
    assert fake.pay(session.id)["payment_status"] == "paid"


# ----------------------------------------------------------------------------- webhooks

def test_signatures_follow_stripes_scheme(client, fake, receiver):
    fake.pay(new_session(client).id)
    fake.wait_delivered(2)
    headers, payload = receiver.received[0]
    header = headers["Stripe-Signature"]
    assert stripe.Webhook.construct_event(payload, header, SECRET).type == "checkout.session.completed"
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(payload.replace(b'"paid"', b'"unpaid"'), header, SECRET)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(payload, header, "whsec_someone_else")
    with pytest.raises(stripe.SignatureVerificationError, match="tolerance"):
        stripe.Webhook.construct_event(payload, fake.signature(payload, t=int(time.time()) - 3600), SECRET)

    t = int(time.time())
    assert fake.signature(payload, t=t) == stripe.WebhookSignature.generate_signature_header(
        payload.decode(), SECRET, t)
    assert fake.deliver_raw(payload, fake.signature(payload)) == 200
    assert fake.deliver_raw(payload, fake.signature(payload, secret="whsec_forged")) == 400
    assert fake.deliver_raw(b'{"id": "evt_forged", "object": "event"}', header) == 400
    assert fake.deliver_raw(payload, None) == 400
    assert receiver.rejected == 3
    assert [(d.source, d.status) for d in fake.deliveries[-4:]] == [("raw", 200), ("raw", 400), ("raw", 400),
                                                                   ("raw", 400)]
    assert fake.deliveries[-2].event_id == "evt_forged"


def test_failed_deliveries_are_retried_then_given_up_in_order(client, fake, receiver):
    receiver.script = [500, 503]
    fake.pay(new_session(client).id)
    fake.wait_delivered(2)
    assert [(d.type, d.attempt, d.status) for d in fake.deliveries] == [
        ("checkout.session.completed", 1, 500), ("checkout.session.completed", 2, 503),
        ("checkout.session.completed", 3, 200), ("payment_intent.succeeded", 1, 200)]
    assert receiver.types() == ["checkout.session.completed", "payment_intent.succeeded"]

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    fake.webhook_url = f"http://127.0.0.1:{dead}/billing/webhook"
    fake.pay(new_session(client).id)
    fake.drain()
    failed = fake.deliveries[4:]
    assert [(d.type, d.attempt, d.status) for d in failed] == [
        ("checkout.session.completed", n, None) for n in (1, 2, 3, 4)] + [
        ("payment_intent.succeeded", n, None) for n in (1, 2, 3, 4)]
    assert all(d.error and not d.ok for d in failed)


def test_hold_then_release_in_reverse(client, fake, receiver):
    fake.hold()
    first, second = new_session(client), new_session(client)
    fake.pay(first.id)
    fake.pay(second.id)
    fake.drain()
    assert fake.deliveries == [] and receiver.received == []
    made = [(e["type"], e["data"]["object"]["id"]) for e in fake.held]
    assert [t for t, _ in made] == ["checkout.session.completed", "payment_intent.succeeded"] * 2
    assert [e["id"] for e in fake.held] == [e["id"] for e in fake.events]

    fake.release(order="reverse")
    fake.wait_delivered(4)
    got = [(e.type, e.data.object.id) for e in receiver.events]
    assert got == made[::-1] and fake.held == []


def test_redeliver_sends_the_same_event_ten_times_at_once(client, fake, receiver):
    fake.pay(new_session(client).id)
    fake.wait_delivered(2)
    event_id = fake.events[0]["id"]
    receiver.delay = 0.05
    assert fake.redeliver(event_id, times=10) == [200] * 10
    assert [e.id for e in receiver.events].count(event_id) == 11
    assert receiver.max_active >= 2  # they overlapped
    again = [d for d in fake.deliveries if d.source == "redeliver"]
    assert len(again) == 10 and {d.event_id for d in again} == {event_id}
    assert fake.redeliver(event_id, times=2, concurrent=False) == [200, 200]


# ----------------------------------------------------------------------------- refunds

def test_refunds_partial_over_and_full(client, fake, receiver):
    fake.pay(new_session(client).id)
    pi_id = fake.events[1]["data"]["object"]["id"]
    ch_id = fake.events[1]["data"]["object"]["latest_charge"]

    part = client.v1.refunds.create(params={"payment_intent": pi_id, "amount": 500, "metadata": {"reason": "x"}})
    assert part.id.startswith("re_") and (part.amount, part.status, part.currency) == (500, "succeeded", "usd")
    assert (part.charge, part.payment_intent, part.metadata.to_dict()) == (ch_id, pi_id, {"reason": "x"})
    charge = client.v1.charges.retrieve(ch_id)
    assert (charge.amount_refunded, charge.refunded) == (500, False)

    with pytest.raises(stripe.InvalidRequestError) as e:
        client.v1.refunds.create(params={"charge": ch_id, "amount": 1000})
    assert e.value.http_status == 400 and e.value.param == "amount"
    assert "greater than unrefunded amount on charge ($7.50)" in e.value.user_message

    rest = client.v1.refunds.create(params={"charge": ch_id})
    assert rest.amount == 750 and client.v1.refunds.retrieve(rest.id).to_dict() == rest.to_dict()
    charge = client.v1.charges.retrieve(ch_id, params={"expand": ["payment_intent"]})
    assert (charge.amount_refunded, charge.refunded, charge.payment_intent.id) == (1250, True, pi_id)
    with pytest.raises(stripe.InvalidRequestError) as e:
        client.v1.refunds.create(params={"payment_intent": pi_id, "amount": 1})
    assert e.value.code == "charge_already_refunded"

    fake.wait_delivered(6)
    assert receiver.types()[2:] == ["refund.created", "charge.refunded"] * 2
    refunded = receiver.events[3]
    assert refunded.data.object.amount_refunded == 500 and refunded.data.previous_attributes.amount_refunded == 0
    assert receiver.events[5].data.object.refunded is True
    assert receiver.events[2].request.id.startswith("req_") and receiver.events[2].request.idempotency_key


# ----------------------------------------------------------------------------- errors

def test_wrong_or_missing_api_key(fake):
    wrong = "sk_test_not_the_right_key_9876"
    with pytest.raises(stripe.AuthenticationError) as e:
        stripe.StripeClient(wrong, base_addresses={"api": fake.url}).v1.customers.create(params={"email": "a@b.c"})
    assert e.value.http_status == 401 and wrong not in str(e.value) and "9876" in e.value.user_message
    status, headers, body = raw(fake, "GET", "/v1/customers/cus_x")
    assert status == 401 and json.loads(body)["error"]["type"] == "invalid_request_error"
    assert "did not provide an API key" in json.loads(body)["error"]["message"]


@pytest.mark.parametrize(("change", "param", "message"), [
    ({"success_url": None}, "success_url", "Missing required param: success_url."),
    ({"line_items": [{"price_data": {"currency": "usd", "unit_amount": "abc", "product_data": {"name": "C"}},
                      "quantity": 1}]}, "line_items[0][price_data][unit_amount]", "Invalid integer: abc"),
    ({"line_items": [{"price_data": {"currency": "usd", "unit_amount": 100, "product_data": {"name": "C"}}}]},
     "line_items[0][quantity]", "Missing required param: line_items[0][quantity]."),
    ({"customer": "cus_missing"}, "customer", "No such customer: 'cus_missing'"),
    ({"mode": "subscription"}, "mode", "only mode=payment"),
    ({"line_items": [{"price_data": {"currency": "usd", "unit_amount": 10, "product_data": {"name": "C"}},
                      "quantity": 1}]}, "line_items", "at least $0.50 usd"),
])
def test_bad_params_are_400_naming_the_param(client, change, param, message):
    params = {"mode": "payment", "success_url": "http://app.test/ok",
              "line_items": [{"price_data": {"currency": "usd", "unit_amount": 100, "product_data": {"name": "C"}},
                              "quantity": 1}], **change}
    with pytest.raises(stripe.InvalidRequestError) as e:
        client.v1.checkout.sessions.create(params=params)
    assert (e.value.http_status, e.value.param) == (400, param) and message in e.value.user_message


def test_unknown_ids_are_404_resource_missing(client, fake):
    with pytest.raises(stripe.InvalidRequestError) as e:
        client.v1.checkout.sessions.retrieve("cs_test_nope")
    assert (e.value.http_status, e.value.code, e.value.param) == (404, "resource_missing", "id")
    assert e.value.user_message == "No such checkout.session: 'cs_test_nope'"
    for call in (client.v1.payment_intents.retrieve, client.v1.charges.retrieve, client.v1.refunds.retrieve,
                 client.v1.customers.retrieve, client.v1.payment_methods.retrieve):
        with pytest.raises(stripe.InvalidRequestError) as e:
            call("x_nope")
        assert e.value.http_status == 404
    with pytest.raises(stripe.InvalidRequestError) as e:
        client.v1.refunds.create(params={"payment_intent": "pi_nope"})
    assert (e.value.http_status, e.value.param) == (400, "payment_intent")


def test_idempotency_key_returns_the_same_object(client, fake):
    params = {"email": "ada@example.com", "metadata": {"n": "1"}}
    first = client.v1.customers.create(params=params, options={"idempotency_key": "signup-7"})
    again = client.v1.customers.create(params=params, options={"idempotency_key": "signup-7"})
    assert again.id == first.id and again.to_dict() == first.to_dict()
    assert again.last_response.headers["Idempotent-Replayed"] == "true"
    with pytest.raises(stripe.IdempotencyError):
        client.v1.customers.create(params={"email": "bob@example.com"}, options={"idempotency_key": "signup-7"})
    assert client.v1.customers.create(params=params).id != first.id  # a fresh key is a fresh customer

    body, hdrs = form(email="eve@example.com")
    hdrs |= {"Authorization": f"Bearer {fake.api_key}", "Idempotency-Key": "raw-1"}
    one, two = raw(fake, "POST", "/v1/customers", body, hdrs), raw(fake, "POST", "/v1/customers", body, hdrs)
    assert one[0] == two[0] == 200 and one[2] == two[2]


def test_reset_forgets_everything(client, fake):
    session = new_session(client)
    fake.pay(session.id)
    fake.wait_delivered(2)
    fake.hold()
    fake.pay(new_session(client).id)
    fake.reset()
    assert fake.events == [] and fake.deliveries == [] and fake.requests == [] and fake.held == []
    with pytest.raises(stripe.InvalidRequestError) as e:
        client.v1.checkout.sessions.retrieve(session.id)
    assert e.value.http_status == 404
    fake.pay(new_session(client).id)  # no longer holding
    fake.wait_delivered(2)


def test_runs_standalone_and_prints_its_settings():
    proc = subprocess.Popen([sys.executable, "-m", "tests.fakes.stripe", "--port", "0", "--quiet",
                             "--webhook-url", "http://127.0.0.1:5000/billing/webhook", "--api-key", "sk_test_dev"],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        lines = [proc.stdout.readline() for _ in range(6)]
        url = lines[0].split()[-1]
        client = stripe.StripeClient("sk_test_dev", base_addresses={"api": url}, max_network_retries=0)
        assert client.v1.customers.create(params={"name": "dev"}).name == "dev"
        assert "sk_test_dev" in lines[2] and "whsec_test_fake" in lines[3] and "/billing/webhook" in lines[4]
    finally:
        proc.terminate()
        assert proc.wait(5) == 0
