"""A fake Stripe on loopback: the v1 API the portal's billing uses, a hosted checkout page and signed webhooks.

The billing tests point the app at this server instead of api.stripe.com (a real
server, not a mock of our own code). It follows Stripe's wire format closely
enough that the official ``stripe`` SDK works against it unchanged::

    client = stripe.StripeClient(fake.api_key, base_addresses={"api": fake.url})
    # or, module-level: stripe.api_key = fake.api_key; stripe.api_base = fake.url

What it speaks:

* requests are form-encoded with nested keys (``metadata[wallet_id]=5``,
  ``line_items[0][price_data][currency]=usd``, ``expand[0]=payment_method``),
  in the body of a POST and the query string of a GET;
* ``Authorization: Bearer <api_key>``; anything else is Stripe's 401 (the key is
  masked in the message). Unknown ids are 404 ``resource_missing``; bad params
  are 400 ``invalid_request_error`` naming the ``param``. Unknown params are
  ignored rather than refused (real Stripe knows many this fake does not model);
* a POST's ``Idempotency-Key`` replays the stored 2xx answer (with
  ``Idempotent-Replayed: true``); the same key with other parameters is a 400
  ``idempotency_error``;
* ``POST /v1/customers``, ``GET /v1/customers/{id}``;
  ``POST /v1/checkout/sessions`` (mode=payment with ``price_data`` line items),
  ``GET /v1/checkout/sessions/{id}``; ``GET`` of ``/v1/payment_intents/{id}``,
  ``/v1/payment_methods/{id}``, ``/v1/charges/{id}``, ``/v1/events/{id}``;
  ``POST /v1/refunds`` (of a payment intent or charge, whole or partial),
  ``GET /v1/refunds/{id}``. ``expand`` follows ids (``payment_intent``,
  ``payment_intent.payment_method``, ``latest_charge``, ``customer``,
  ``line_items``...).

The hosted page is ``GET /pay/{cs_id}`` (the session's ``url``): an accessible
form prefilled with the test card ``4242 4242 4242 4242``. Its POST (or
``fake.pay(cs_id)``) charges the card: 4242424242424242 (visa) and
5555555555554444 (mastercard) succeed, 4000000000000002 is declined and
4000000000009995 has insufficient funds (the page is shown again and the
session stays open); any other number is "incorrect". A success makes a
PaymentMethod, a PaymentIntent and a Charge, completes the session, queues the
events ``checkout.session.completed`` then ``payment_intent.succeeded`` and
redirects (303) to ``success_url`` with ``{CHECKOUT_SESSION_ID}`` filled in. A
refund queues ``refund.created`` then ``charge.refunded``. Only a card's brand
and last four digits are kept: the full number is in no object, event, record
or page.

Webhooks go to ``webhook_url`` (events made while it is None are recorded but
never sent) from one background thread, in order, as Stripe sends them:
``Content-Type: application/json; charset=utf-8`` and ``Stripe-Signature:
t=<unix>,v1=<HMAC-SHA256 of "<t>.<payload>" keyed with the webhook secret>``,
signed afresh at each attempt, so ``stripe.Webhook.construct_event`` verifies
them. A non-2xx answer or a connection error is retried after each of
``retry_delays``; every attempt is a ``Delivery`` in ``fake.deliveries``.
``hold``/``release`` (optionally in reverse), ``redeliver`` (N copies at once),
``deliver_raw`` (forgeries) and ``pay`` are the test controls; see FakeStripe.

For local development it runs on its own and prints the settings to use:
``python -m tests.fakes.stripe --port 12111 --webhook-url http://127.0.0.1:5000/billing/webhook``.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import hmac
import html
import itertools
import json
import re
import signal
import threading
import time
import traceback
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from tests.fakes.loopback import LoopbackServer

DEFAULT_API_KEY = "sk_test_fake"
DEFAULT_WEBHOOK_SECRET = "whsec_test_fake"
DEFAULT_PORT = 12111  # stripe-mock's port, for the standalone server
API_VERSION = "2026-10-28.endive"  # the version stripe-python 16.1 pins
MERCHANT = "Relay"
DEFAULT_EXPIRY = "12 / 34"
DEFAULT_CVC = "123"

# The test cards this fake knows: number -> (brand, decline code or None).
CARDS: dict[str, tuple[str, str | None]] = {
    "4242424242424242": ("visa", None),
    "5555555555554444": ("mastercard", None),
    "4000000000000002": ("visa", "card_declined"),
    "4000000000009995": ("visa", "insufficient_funds"),
}
_CARD_MESSAGES = {
    "card_declined": "Your card was declined.",
    "insufficient_funds": "Your card has insufficient funds.",
    "incorrect_number": "Your card number is incorrect.",
    "invalid_expiry": "Your card's expiration date is invalid.",
    "expired_card": "Your card has expired.",
    "invalid_cvc": "Your card's security code is invalid.",
    "already_paid": "This checkout session is already paid.",
}

_B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_ids = itertools.count(1)
_KEY_PATH = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")
_SEGMENT = re.compile(r"\[([^\[\]]*)\]")
_MAX_BODY = 1 << 20
_SYMBOLS = {"usd": "$", "eur": "€", "gbp": "£", "jpy": "¥"}
_ZERO_DECIMAL = frozenset({"bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd",
                           "vuv", "xaf", "xof", "xpf"})
_MINIMUM_CHARGE = {"usd": 50, "eur": 50, "gbp": 30}
_REFUND_REASONS = frozenset({"duplicate", "fraudulent", "requested_by_customer"})
# Which fields `expand` may follow, per object type.
_EXPANDABLE = {
    "checkout.session": {"customer", "payment_intent", "line_items"},
    "payment_intent": {"customer", "payment_method", "latest_charge"},
    "charge": {"customer", "payment_intent"},
    "refund": {"charge", "payment_intent"},
    "payment_method": {"customer"},
    "customer": set(),
    "event": set(),
}
# How a 404 names each type, as Stripe words it.
_MISSING_NAME = {"customer": "customer", "checkout.session": "checkout.session", "payment_intent": "payment_intent",
                 "payment_method": "PaymentMethod", "charge": "charge", "refund": "refund", "event": "event"}


def _new_id(prefix: str, length: int = 24) -> str:
    """A Stripe-looking id: the prefix and `length` base-62 characters, unique in the process."""
    num = int.from_bytes(hashlib.sha512(f"{prefix}{next(_ids)}".encode()).digest(), "big")
    chars = []
    for _ in range(length):
        num, r = divmod(num, 62)
        chars.append(_B62[r])
    return prefix + "".join(chars)


def _json(obj: Any) -> bytes:
    return json.dumps(obj, indent=2, ensure_ascii=False).encode()


def _now() -> int:
    return int(time.time())


def format_amount(amount: int, currency: str) -> str:
    """``1250, "usd"`` -> ``"$12.50"``; an unknown currency is written after the number."""
    currency = currency.lower()
    text = f"{amount:,}" if currency in _ZERO_DECIMAL else f"{amount / 100:,.2f}"
    symbol = _SYMBOLS.get(currency)
    return f"{symbol}{text}" if symbol else f"{text} {currency.upper()}"


def sign(payload: bytes | str, secret: str, t: int | None = None) -> str:
    """The ``Stripe-Signature`` header for `payload`: ``t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<payload>">``."""
    if isinstance(payload, bytes):
        payload = payload.decode()
    t = _now() if t is None else int(t)
    mac = hmac.new(secret.encode(), f"{t}.{payload}".encode(), hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


# ----------------------------------------------------------------------------- form parameters

class StripeError(Exception):
    """An API error as Stripe answers it: the status and the ``error`` object."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status = status
        self.body: dict[str, Any] = {"type": type, "message": message}
        if code:
            self.body["code"] = code
            self.body["doc_url"] = f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}"
        if param:
            self.body["param"] = param


def _bad(message: str, param: str | None = None, code: str | None = None) -> StripeError:
    return StripeError(400, message, param=param, code=code)


def parse_params(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Nested dicts and lists from form pairs: ``a[b][0][c]=1`` -> ``{"a": {"b": [{"c": "1"}]}}``.

    A key ``x[]`` appends to the list ``x``. Dicts whose keys are all indices become
    lists (in index order), except under ``metadata``, whose keys are free text.
    """
    root: dict[str, Any] = {}
    for key, value in pairs:
        m = _KEY_PATH.match(key)
        parts = [m.group(1), *_SEGMENT.findall(m.group(2))] if m else [key]
        node: Any = root
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):  # reached through "[]"
                if last:
                    node.append(value)
                    break
                node.append({})
                node = node[-1]
                continue
            if part == "":
                raise _bad(f"Invalid array: {key}", param=parts[0])
            nxt = parts[i + 1] if not last else None
            if last:
                if isinstance(node.get(part), (dict, list)):
                    raise _bad(f"Invalid request: {key} is given both as a value and as an object", param=key)
                node[part] = value
            else:
                want: type = list if nxt == "" else dict
                child = node.setdefault(part, want())
                if not isinstance(child, want):
                    raise _bad(f"Invalid request: {key} is given both as a value and as an object", param=key)
                node = child
    return _listify(root, keep_dict=True)


def _listify(node: Any, keep_dict: bool) -> Any:
    """Index-keyed dicts as lists; `keep_dict` for the top level and ``metadata``, whose keys are names."""
    if isinstance(node, list):
        return [_listify(v, False) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _listify(v, k == "metadata") for k, v in node.items()}
    if out and not keep_dict and all(k.isdigit() for k in out):
        return [out[k] for k in sorted(out, key=int)]
    return out


def _str(params: dict, name: str, param: str, *, required: bool = False, max_len: int = 5000) -> str | None:
    value = params.get(name)
    if value is None or value == "":
        if required:
            raise _bad(f"Missing required param: {param}.", param=param)
        return None
    if not isinstance(value, str):
        raise _bad(f"Invalid string: {param}", param=param)
    if len(value) > max_len:
        raise _bad(f"Invalid string: {param}; must be at most {max_len} characters", param=param)
    return value


def _int(params: dict, name: str, param: str, *, required: bool = False, minimum: int = 0) -> int | None:
    value = params.get(name)
    if value is None or value == "":
        if required:
            raise _bad(f"Missing required param: {param}.", param=param)
        return None
    if not isinstance(value, str) or not re.fullmatch(r"-?\d+", value):
        raise _bad(f"Invalid integer: {value if isinstance(value, str) else 'object'}", param=param)
    number = int(value)
    if number < minimum:
        raise _bad("Invalid positive integer" if minimum > 0 else "Invalid non-negative integer", param=param)
    return number


def _dict(params: dict, name: str, param: str) -> dict:
    value = params.get(name)
    if value is None or value == "":
        return {}
    if not isinstance(value, dict):
        raise _bad("Invalid object", param=param)
    return value


def _metadata(params: dict, param: str = "metadata") -> dict[str, str]:
    meta = _dict(params, "metadata", param)
    if len(meta) > 50:
        raise _bad("Metadata can have up to 50 keys", param=param)
    out = {}
    for k, v in meta.items():
        if not isinstance(v, str):
            raise _bad("Invalid string", param=f"{param}[{k}]")
        if len(k) > 40:
            raise _bad("Metadata keys can have up to 40 characters", param=f"{param}[{k}]")
        if len(v) > 500:
            raise _bad("Metadata values can have up to 500 characters", param=f"{param}[{k}]")
        if v != "":  # an empty value unsets a key
            out[k] = v
    return out


def _url(params: dict, name: str, *, required: bool = False) -> str | None:
    value = _str(params, name, name, required=required)
    if value is not None:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise _bad("Not a valid URL", param=name)
    return value


def _expand_list(params: dict) -> list[str]:
    value = params.get("expand")
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _bad("Invalid array", param="expand")
    return value


def _mask(key: str) -> str:
    """An API key as Stripe quotes it back: its prefix and last four characters, the rest starred."""
    m = re.match(r"^[a-z]{2,4}_(?:test_|live_)?", key)
    prefix = m.group(0) if m else ""
    rest = key[len(prefix):]
    return prefix + ("*" * (len(rest) - 4) + rest[-4:] if len(rest) > 8 else "*" * len(rest))


# ----------------------------------------------------------------------------- records

@dataclass(slots=True)
class Delivery:
    """One attempt to send an event: ``status`` is the HTTP status, or None with ``error`` set."""
    event_id: str | None
    type: str | None
    attempt: int  # 1 for the first try of a queued event, 2.. for its retries; 1 for redeliver/raw sends
    source: str  # "queue", "redeliver" or "raw"
    url: str | None
    status: int | None
    error: str | None = None
    body: str = ""  # the start of the receiver's answer
    at: float = field(default_factory=time.time)

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


@dataclass(slots=True)
class RecordedRequest:
    """One API request as the fake understood it (no Authorization header, no card data)."""
    method: str
    path: str
    params: dict[str, Any]
    idempotency_key: str | None
    status: int


@dataclass(slots=True)
class _Outgoing:
    event_id: str
    type: str
    payload: bytes
    generation: int


class PaymentError(Exception):
    """The hosted page refused a payment; ``code`` is Stripe's (card_declined, incorrect_number...)."""

    def __init__(self, code: str):
        super().__init__(_CARD_MESSAGES[code])
        self.code = code


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:  # a 3xx is an answer, as Stripe sees it
        return None


# No proxy from the environment: deliveries go straight to loopback.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())


# ----------------------------------------------------------------------------- HTTP

class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-stripe"
    server: LoopbackServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        fake = self.server.fake
        length = int(self.headers.get("Content-Length") or 0)
        if length > _MAX_BODY:
            self.close_connection = True
            return self._send(413, {"Content-Type": "text/plain"}, b"request too large\n")
        body = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        if parts.path.startswith("/v1/"):
            status, headers, out = fake._api(method, parts.path, parts.query, self.headers, body)
        elif parts.path.startswith("/pay/") and method in ("GET", "POST"):
            status, headers, out = fake._page(method, parts.path[len("/pay/"):], body)
        else:
            status, headers, out = 404, {"Content-Type": "text/plain"}, b"not found\n"
        fake._log(f"{method} {parts.path} -> {status}")
        self._send(status, headers, out)

    def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status, HTTPStatus(status).phrase)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


# ----------------------------------------------------------------------------- the hosted page

_PAGE_STYLE = ("body{font-family:system-ui,sans-serif;max-width:28rem;margin:2rem auto;padding:0 1rem}"
               "label{display:block;margin-top:1rem}input{font-size:1rem;padding:.4rem;width:100%}"
               "button{margin-top:1.5rem;font-size:1rem;padding:.5rem 2rem}"
               "[role=alert]{color:#b00020;font-weight:bold}.test{color:#8a5a00}")


def _page_html(title: str, body: str) -> bytes:
    return (f'<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{html.escape(title)}</title>\n<style>{_PAGE_STYLE}</style>\n</head>\n"
            f"<body>\n<main>\n{body}</main>\n</body>\n</html>\n").encode()


# ----------------------------------------------------------------------------- the public face

class FakeStripe:
    """The fake Stripe: ``FakeStripe(webhook_url=...).start()``, point the SDK at ``.url``, ``.stop()`` when done.

    Thread-safe: API requests, page posts and the test controls share one lock;
    webhooks leave from one background thread, in the order the events were made.
    """

    def __init__(self, api_key: str = DEFAULT_API_KEY, webhook_secret: str = DEFAULT_WEBHOOK_SECRET,
                 webhook_url: str | None = None, *, port: int = 0,
                 retry_delays: tuple[float, ...] | list[float] = (0.2, 0.5, 1.0), delivery_timeout: float = 5.0,
                 merchant: str = MERCHANT, api_version: str = API_VERSION,
                 log: Callable[[str], None] | None = None):
        self.api_key = api_key
        self.webhook_secret = webhook_secret
        self.webhook_url = webhook_url
        self.port = port
        self.retry_delays = tuple(retry_delays)
        self.delivery_timeout = delivery_timeout
        self.merchant = merchant
        self.api_version = api_version
        self.log = log
        self.url = ""
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)  # queue, deliveries and hold state changes
        self._stopping = threading.Event()
        self._httpd: LoopbackServer | None = None
        self._threads: list[threading.Thread] = []
        self._in_flight = 0  # events the sender has taken and not finished
        self._clear()

    def _clear(self) -> None:
        self._objects: dict[str, dict[str, Any]] = {}
        self._line_items: dict[str, list[dict[str, Any]]] = {}
        self._pi_metadata: dict[str, dict[str, str]] = {}  # session id -> payment_intent_data[metadata]
        self._idempotent: dict[str, tuple[str, dict, int, bytes]] = {}
        self._events: list[dict[str, Any]] = []
        self._requests: list[RecordedRequest] = []
        self._deliveries: list[Delivery] = []
        self._queue: deque[_Outgoing] = deque()
        self._held: list[_Outgoing] = []
        self._holding = False
        self._generation = getattr(self, "_generation", 0) + 1

    # -- life cycle

    def start(self) -> FakeStripe:
        """Listen on 127.0.0.1 (a free port unless one was given) and start the webhook sender."""
        self._stopping.clear()
        self._httpd = LoopbackServer(("127.0.0.1", self.port), self, _Handler)
        self.port = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._threads = [
            threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                             name=f"fake-stripe-{self.port}", daemon=True),
            threading.Thread(target=self._sender, name=f"fake-stripe-webhooks-{self.port}", daemon=True),
        ]
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        """Stop serving and sending; undelivered events are dropped."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()
        httpd.shutdown()
        httpd.server_close()
        httpd.close_connections()
        for t in self._threads:
            t.join(2)

    def __enter__(self) -> FakeStripe:
        return self.start() if self._httpd is None else self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def reset(self) -> None:
        """Forget every object, event, request and delivery; drop queued and held events; stop holding."""
        with self._cond:
            self._clear()
            self._cond.notify_all()

    # -- what happened

    @property
    def events(self) -> list[dict[str, Any]]:
        """Every event made so far (delivered or not), oldest first, as copies."""
        with self._lock:
            return copy.deepcopy(self._events)

    @property
    def deliveries(self) -> list[Delivery]:
        """Every webhook attempt so far, oldest first."""
        with self._lock:
            return list(self._deliveries)

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every /v1 API request so far, oldest first (no keys, no card data)."""
        with self._lock:
            return list(self._requests)

    @property
    def held(self) -> list[dict[str, Any]]:
        """The events waiting for ``release()``, in the order they were made."""
        with self._lock:
            return [self._event(o.event_id) for o in self._held]

    def get(self, object_id: str) -> dict[str, Any]:
        """A copy of any object by id (customer, session, payment intent, event...); KeyError if unknown."""
        with self._lock:
            return copy.deepcopy(self._objects[object_id])

    def _event(self, event_id: str) -> dict[str, Any]:
        return copy.deepcopy(self._objects[event_id])

    # -- webhook controls

    def signature(self, payload: bytes | str, t: int | None = None, secret: str | None = None) -> str:
        """The ``Stripe-Signature`` header for `payload`, signed now (or at `t`) with the secret (or `secret`)."""
        return sign(payload, self.webhook_secret if secret is None else secret, t)

    def hold(self) -> None:
        """Keep events (new ones and those still queued) back until ``release()``."""
        with self._cond:
            self._holding = True
            self._held.extend(self._queue)
            self._queue.clear()

    def release(self, order: str = "forward") -> None:
        """Send the held events, in the order they were made or (``order="reverse"``) newest first."""
        if order not in ("forward", "reverse"):
            raise ValueError("order must be 'forward' or 'reverse'")
        with self._cond:
            held, self._held, self._holding = self._held, [], False
            self._queue.extend(reversed(held) if order == "reverse" else held)
            self._cond.notify_all()

    def wait_delivered(self, count: int, timeout: float = 5.0) -> list[Delivery]:
        """Wait until `count` queued events have been answered 2xx; returns those successful attempts."""
        def done() -> list[Delivery]:
            return [d for d in self._deliveries if d.source == "queue" and d.ok]

        with self._cond:
            if not self._cond.wait_for(lambda: len(done()) >= count, timeout):
                raise AssertionError(f"{len(done())} events delivered, expected {count}; attempts: "
                                     f"{[(d.type, d.status, d.error) for d in self._deliveries]}")
            return done()

    def drain(self, timeout: float = 5.0) -> None:
        """Wait until nothing is queued or being sent (held events stay held)."""
        with self._cond:
            if not self._cond.wait_for(lambda: not self._queue and not self._in_flight, timeout):
                raise AssertionError(f"{len(self._queue)} events still queued after {timeout}s")

    def redeliver(self, event_id: str, times: int = 10, concurrent: bool = True) -> list[int | None]:
        """POST the event `times` times (all at once from as many threads, or one after another), unretried.

        Returns the status of each (None for a connection error), in send order.
        """
        if self.webhook_url is None:
            raise RuntimeError("no webhook_url to deliver to")
        with self._lock:
            payload = _json(self._objects[event_id])
            etype = self._objects[event_id]["type"]
        statuses: list[int | None] = [None] * times

        def one(i: int, barrier: threading.Barrier | None) -> None:
            if barrier is not None:
                barrier.wait()
            statuses[i] = self._post(payload, None, event_id, etype, "redeliver", 1).status

        if not concurrent:
            for i in range(times):
                one(i, None)
            return statuses
        barrier = threading.Barrier(times)
        threads = [threading.Thread(target=one, args=(i, barrier), daemon=True) for i in range(times)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(self.delivery_timeout + 5)
        return statuses

    def deliver_raw(self, payload: bytes, signature_header: str | None, url: str | None = None) -> int | None:
        """POST `payload` with this ``Stripe-Signature`` (None: no header) to `url` or webhook_url, unretried."""
        event_id = etype = None
        try:
            parsed = json.loads(payload)
            event_id, etype = parsed.get("id"), parsed.get("type")
        except (ValueError, AttributeError):
            pass
        headers = {} if signature_header is None else {"Stripe-Signature": signature_header}
        return self._post(payload, headers, event_id, etype, "raw", 1, url=url).status

    # -- payments without a browser

    def pay(self, cs_id: str, card: str = "4242424242424242", exp: str = DEFAULT_EXPIRY,
            cvc: str = DEFAULT_CVC) -> dict[str, Any]:
        """Do what the hosted page's POST does; returns the completed session.

        Raises PaymentError (``.code``: card_declined, incorrect_number, already_paid...)
        or KeyError for an unknown session.
        """
        with self._lock:
            return copy.deepcopy(self._charge_session(cs_id, card, exp, cvc))

    # -- the sender

    def _sender(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._stopping.is_set())
                if self._stopping.is_set():
                    return
                item = self._queue.popleft()
                self._in_flight += 1
            try:
                self._deliver(item)
            finally:
                with self._cond:
                    self._in_flight -= 1
                    self._cond.notify_all()

    def _deliver(self, item: _Outgoing) -> None:
        for attempt, delay in enumerate((*self.retry_delays, None), 1):
            if item.generation != self._generation or self._stopping.is_set():
                return
            if self.webhook_url is None:
                return
            if self._post(item.payload, None, item.event_id, item.type, "queue", attempt,
                          generation=item.generation).ok:
                return
            if delay is None or self._stopping.wait(delay):
                return

    def _post(self, payload: bytes, headers: dict[str, str] | None, event_id: str | None, etype: str | None,
              source: str, attempt: int, *, url: str | None = None, generation: int | None = None) -> Delivery:
        url = url or self.webhook_url
        if url is None:
            raise RuntimeError("no webhook_url to deliver to")
        if headers is None:
            headers = {"Stripe-Signature": self.signature(payload)}
        req = urllib.request.Request(url, data=payload, method="POST", headers={
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)", **headers})
        status, error, body = None, None, b""
        try:
            with _opener.open(req, timeout=self.delivery_timeout) as resp:
                status, body = resp.status, resp.read(500)
        except urllib.error.HTTPError as e:
            status, body = e.code, e.read(500)
            e.close()
        except (OSError, ValueError) as e:
            error = f"{type(e).__name__}: {e}"
        delivery = Delivery(event_id, etype, attempt, source, url, status, error,
                            body.decode("utf-8", "replace"))
        with self._cond:
            if generation is None or generation == self._generation:
                self._deliveries.append(delivery)
                self._cond.notify_all()
        self._log(f"webhook {etype} {event_id} attempt {attempt} -> {status if status is not None else error}")
        return delivery

    def _log(self, line: str) -> None:
        if self.log is not None:
            self.log(line)

    # -- the API

    def _api(self, method: str, path: str, query: str, headers: Any, body: bytes) -> tuple[int, dict, bytes]:
        request_id = _new_id("req_", 14)
        out_headers = {"Content-Type": "application/json", "Request-Id": request_id,
                       "Stripe-Version": headers.get("Stripe-Version") or self.api_version}
        key = headers.get("Idempotency-Key") if method == "POST" else None
        params: dict[str, Any] = {}
        try:
            self._authenticate(headers.get("Authorization"))
            content_type = (headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if method == "POST" and body and content_type not in ("", "application/x-www-form-urlencoded"):
                raise _bad(f"Invalid request: unsupported Content-Type {content_type}. "
                           "The v1 API takes application/x-www-form-urlencoded.")
            raw = body.decode("utf-8", "replace") if method == "POST" else query
            params = parse_params(parse_qsl(raw, keep_blank_values=True))
            handler, arg = self._route(method, path)
            with self._lock:
                if key:
                    replay = self._replay(key, f"{method} {path}", params)
                    if replay is not None:
                        self._record(method, path, params, key, replay[0])
                        return replay[0], {**out_headers, "Idempotent-Replayed": "true"}, replay[1]
                obj = handler(params, arg, {"id": request_id, "idempotency_key": key})
                out = _json(self._expand(obj, _expand_list(params)))
                if key:
                    self._idempotent[key] = (f"{method} {path}", params, 200, out)
                self._record(method, path, params, key, 200)
            return 200, out_headers, out
        except StripeError as e:
            if e.status == 401:
                out_headers["WWW-Authenticate"] = 'Bearer realm="Stripe"'
            with self._lock:
                self._record(method, path, params, key, e.status)
            return e.status, out_headers, _json({"error": e.body})
        except Exception:  # a bug in the fake: say so as Stripe would, and show it
            traceback.print_exc()
            return 500, out_headers, _json({"error": {"type": "api_error", "message": "The fake Stripe failed."}})

    def _authenticate(self, header: str | None) -> None:
        scheme, _, key = (header or "").partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise StripeError(401, "You did not provide an API key. You need to provide your API key in the "
                                   "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer "
                                   "YOUR_SECRET_KEY').")
        if not hmac.compare_digest(key.encode(), self.api_key.encode()):
            raise StripeError(401, f"Invalid API Key provided: {_mask(key)}")

    def _route(self, method: str, path: str) -> tuple[Callable[[dict, str | None, dict], dict], str | None]:
        routes: list[tuple[str, str, Callable[[dict, str | None, dict], dict]]] = [
            ("POST", r"/v1/customers", self._create_customer),
            ("GET", r"/v1/customers/([^/]+)", self._retrieve("customer")),
            ("POST", r"/v1/checkout/sessions", self._create_session),
            ("GET", r"/v1/checkout/sessions/([^/]+)", self._retrieve("checkout.session")),
            ("GET", r"/v1/payment_intents/([^/]+)", self._retrieve("payment_intent")),
            ("GET", r"/v1/payment_methods/([^/]+)", self._retrieve("payment_method")),
            ("GET", r"/v1/charges/([^/]+)", self._retrieve("charge")),
            ("POST", r"/v1/refunds", self._create_refund),
            ("GET", r"/v1/refunds/([^/]+)", self._retrieve("refund")),
            ("GET", r"/v1/events/([^/]+)", self._retrieve("event")),
        ]
        for verb, pattern, handler in routes:
            m = re.fullmatch(pattern, path.rstrip("/"))
            if m and verb == method:
                return handler, (m.group(1) if m.groups() else None)
        raise StripeError(404, f"Unrecognized request URL ({method}: {path}). Please see https://stripe.com/docs "
                               "or we can help at https://support.stripe.com/.")

    def _replay(self, key: str, endpoint: str, params: dict) -> tuple[int, bytes] | None:
        stored = self._idempotent.get(key)
        if stored is None:
            return None
        if stored[0] != endpoint or stored[1] != params:
            raise StripeError(400, "Keys for idempotent requests can only be used with the same parameters they "
                                   f"were first used with. Try using a key other than '{key}' if you meant to "
                                   "execute a different request.", type="idempotency_error")
        return stored[2], stored[3]

    def _record(self, method: str, path: str, params: dict, key: str | None, status: int) -> None:
        self._requests.append(RecordedRequest(method, path, copy.deepcopy(params), key, status))

    def _retrieve(self, kind: str) -> Callable[[dict, str | None, dict], dict]:
        def retrieve(params: dict, object_id: str | None, request: dict) -> dict:
            return self._find(kind, object_id or "", "id", status=404)
        return retrieve

    def _find(self, kind: str, object_id: str, param: str, status: int = 400) -> dict[str, Any]:
        obj = self._objects.get(object_id)
        if obj is None or obj["object"] != kind:
            raise StripeError(status, f"No such {_MISSING_NAME[kind]}: '{object_id}'", code="resource_missing",
                              param=param)
        return obj

    def _expand(self, obj: dict[str, Any], paths: list[str]) -> dict[str, Any]:
        obj = copy.deepcopy(obj)
        for path in paths:
            self._expand_path(obj, path.split("."), path)
        return obj

    def _expand_path(self, obj: dict[str, Any], parts: list[str], path: str) -> None:
        name = parts[0]
        if name not in _EXPANDABLE.get(obj.get("object", ""), ()):
            raise _bad(f"This property cannot be expanded ({path}).", param="expand")
        if name == "line_items":
            if len(parts) > 1:
                raise _bad(f"This property cannot be expanded ({path}).", param="expand")
            items = self._line_items.get(obj["id"], [])
            obj["line_items"] = {"object": "list", "data": copy.deepcopy(items), "has_more": False,
                                 "url": f"/v1/checkout/sessions/{obj['id']}/line_items"}
            return
        value = obj.get(name)
        if isinstance(value, str) and value in self._objects:
            value = obj[name] = copy.deepcopy(self._objects[value])
        if len(parts) > 1 and isinstance(value, dict):
            self._expand_path(value, parts[1:], path)

    def _base(self, kind: str, object_id: str) -> dict[str, Any]:
        return {"id": object_id, "object": kind, "created": _now(), "livemode": False}

    def _store(self, obj: dict[str, Any]) -> dict[str, Any]:
        self._objects[obj["id"]] = obj
        return obj

    def _emit(self, etype: str, obj: dict[str, Any], request: dict | None = None,
              previous: dict[str, Any] | None = None) -> None:
        """Make an event with a snapshot of `obj` and queue it (or hold it) for the webhook."""
        data: dict[str, Any] = {"object": copy.deepcopy(obj)}
        if previous is not None:
            data["previous_attributes"] = previous
        event = {**self._base("event", _new_id("evt_")), "type": etype, "api_version": self.api_version,
                 "data": data, "pending_webhooks": 1 if self.webhook_url else 0,
                 "request": request or {"id": None, "idempotency_key": None}}
        self._store(event)
        self._events.append(event)
        if self.webhook_url is None:
            return
        item = _Outgoing(event["id"], etype, _json(event), self._generation)
        with self._cond:
            (self._held if self._holding else self._queue).append(item)
            self._cond.notify_all()

    # -- customers

    def _create_customer(self, params: dict, _: str | None, request: dict) -> dict:
        email = _str(params, "email", "email", max_len=512)
        if email is not None and "@" not in email:
            raise _bad(f"Invalid email address: {email}", param="email", code="email_invalid")
        return self._store({
            **self._base("customer", _new_id("cus_", 14)), "address": None, "balance": 0, "currency": None,
            "default_source": None, "delinquent": False, "description": _str(params, "description", "description"),
            "email": email, "invoice_prefix": _new_id("", 8).upper(),
            "invoice_settings": {"custom_fields": None, "default_payment_method": None, "footer": None,
                                 "rendering_options": None},
            "metadata": _metadata(params), "name": _str(params, "name", "name", max_len=256),
            "phone": _str(params, "phone", "phone", max_len=20), "preferred_locales": [], "shipping": None,
            "tax_exempt": "none", "test_clock": None})

    # -- checkout sessions

    def _create_session(self, params: dict, _: str | None, request: dict) -> dict:
        mode = _str(params, "mode", "mode", required=True)
        if mode not in ("payment", "setup", "subscription"):
            raise _bad("Invalid mode: must be one of payment, setup, or subscription", param="mode")
        if mode != "payment":
            raise _bad("This fake Stripe supports only mode=payment.", param="mode")
        customer = _str(params, "customer", "customer")
        customer_email = _str(params, "customer_email", "customer_email", max_len=512)
        if customer and customer_email:
            raise _bad("You may only specify one of these parameters: customer, customer_email.",
                       param="customer_email")
        if customer:
            self._find("customer", customer, "customer")
        success_url = _url(params, "success_url", required=True)
        cancel_url = _url(params, "cancel_url")
        items, currency, total = self._session_items(params)
        minimum = _MINIMUM_CHARGE.get(currency)
        if minimum and total < minimum:
            raise _bad("The Checkout Session's total amount due must add up to at least "
                       f"{format_amount(minimum, currency)} {currency}", param="line_items")
        pi_data = _dict(params, "payment_intent_data", "payment_intent_data")
        cs_id = _new_id("cs_test_a1", 56)
        session = {
            **self._base("checkout.session", cs_id), "amount_subtotal": total, "amount_total": total,
            "cancel_url": cancel_url,
            "client_reference_id": _str(params, "client_reference_id", "client_reference_id", max_len=200),
            "currency": currency, "customer": customer, "customer_details": None, "customer_email": customer_email,
            "expires_at": _now() + 24 * 3600, "locale": None, "metadata": _metadata(params), "mode": mode,
            "payment_intent": None, "payment_method_types": ["card"], "payment_status": "unpaid",
            "status": "open", "submit_type": None, "success_url": success_url,
            "total_details": {"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0},
            "ui_mode": "hosted", "url": f"{self.url}/pay/{cs_id}"}
        self._line_items[cs_id] = items
        self._pi_metadata[cs_id] = _metadata(pi_data, "payment_intent_data[metadata]")
        return self._store(session)

    def _session_items(self, params: dict) -> tuple[list[dict], str, int]:
        raw = params.get("line_items")
        if raw is None or raw == "":
            raise _bad("Missing required param: line_items.", param="line_items")
        if not isinstance(raw, list) or not raw:
            raise _bad("Invalid array", param="line_items")
        items, currency, total = [], "", 0
        for i, item in enumerate(raw):
            p = f"line_items[{i}]"
            if not isinstance(item, dict):
                raise _bad("Invalid object", param=p)
            if item.get("price"):
                raise _bad(f"No such price: '{item['price']}'", param=f"{p}[price]", code="resource_missing")
            if "price_data" not in item:
                raise _bad("You must specify either `price` or `price_data` for each line item.", param=p)
            price_data = _dict(item, "price_data", f"{p}[price_data]")
            cur = (_str(price_data, "currency", f"{p}[price_data][currency]", required=True) or "").lower()
            if not re.fullmatch(r"[a-z]{3}", cur):
                raise _bad(f"Invalid currency: {cur}", param=f"{p}[price_data][currency]")
            if currency and cur != currency:
                raise _bad("All line items must use the same currency.", param=f"{p}[price_data][currency]")
            currency = cur
            unit = _int(price_data, "unit_amount", f"{p}[price_data][unit_amount]", required=True)
            if price_data.get("product"):
                raise _bad(f"No such product: '{price_data['product']}'", param=f"{p}[price_data][product]",
                           code="resource_missing")
            product = _dict(price_data, "product_data", f"{p}[price_data][product_data]")
            name = _str(product, "name", f"{p}[price_data][product_data][name]", required=True)
            quantity = _int(item, "quantity", f"{p}[quantity]", required=True, minimum=1)
            assert unit is not None and quantity is not None
            amount = unit * quantity
            total += amount
            items.append({"id": _new_id("li_"), "object": "item", "amount_discount": 0, "amount_subtotal": amount,
                          "amount_tax": 0, "amount_total": amount, "currency": cur, "description": name,
                          "price": {"id": _new_id("price_"), "object": "price", "active": False, "currency": cur,
                                    "livemode": False, "product": _new_id("prod_", 14), "type": "one_time",
                                    "unit_amount": unit, "unit_amount_decimal": str(unit)},
                          "quantity": quantity})
        return items, currency, total

    def _charge_session(self, cs_id: str, card: str, exp: str, cvc: str) -> dict[str, Any]:
        """Pay an open session with a test card: the hosted page's POST. The number is not kept."""
        session = self._objects.get(cs_id)
        if session is None or session["object"] != "checkout.session":
            raise KeyError(cs_id)
        if session["status"] != "open":
            raise PaymentError("already_paid")
        digits = re.sub(r"[\s-]", "", card or "")
        brand, decline = CARDS.get(digits, (None, None))
        if brand is None:
            raise PaymentError("incorrect_number")
        last4 = digits[-4:]
        del digits
        m = re.fullmatch(r"\s*(\d{1,2})\s*/\s*(\d{2}|\d{4})\s*", exp or "")
        if not m or not 1 <= int(m.group(1)) <= 12:
            raise PaymentError("invalid_expiry")
        exp_month, exp_year = int(m.group(1)), int(m.group(2)) + (2000 if len(m.group(2)) == 2 else 0)
        today = time.gmtime()
        if (exp_year, exp_month) < (today.tm_year, today.tm_mon):
            raise PaymentError("expired_card")
        if not re.fullmatch(r"\d{3,4}", (cvc or "").strip()):
            raise PaymentError("invalid_cvc")
        if decline:
            raise PaymentError(decline)

        customer_id = session["customer"]
        customer = self._objects.get(customer_id) if customer_id else None
        email = (customer or {}).get("email") or session["customer_email"]
        amount, currency = session["amount_total"], session["currency"]
        card_info = {"brand": brand, "checks": {"address_line1_check": None, "address_postal_code_check": None,
                                                "cvc_check": "pass"},
                     "country": "US", "display_brand": brand, "exp_month": exp_month, "exp_year": exp_year,
                     "funding": "credit", "last4": last4}
        billing = {"address": None, "email": email, "name": None, "phone": None}
        pm = self._store({**self._base("payment_method", _new_id("pm_")), "billing_details": billing,
                          "card": card_info, "customer": None, "metadata": {}, "type": "card"})
        pi_id, ch_id = _new_id("pi_"), _new_id("ch_")
        pi = self._store({
            **self._base("payment_intent", pi_id), "amount": amount, "amount_capturable": 0,
            "amount_received": amount, "capture_method": "automatic_async",
            "client_secret": f"{pi_id}_secret_{_new_id('', 25)}", "confirmation_method": "automatic",
            "currency": currency, "customer": customer_id, "description": None, "latest_charge": ch_id,
            "metadata": dict(self._pi_metadata.get(cs_id, {})), "payment_method": pm["id"],
            "payment_method_types": ["card"], "receipt_email": None, "status": "succeeded"})
        self._store({
            **self._base("charge", ch_id), "amount": amount, "amount_captured": amount, "amount_refunded": 0,
            "balance_transaction": None, "billing_details": billing, "captured": True, "currency": currency,
            "customer": customer_id, "description": None, "disputed": False, "failure_code": None,
            "failure_message": None, "metadata": {},
            "outcome": {"network_status": "approved_by_network", "reason": None, "risk_level": "normal",
                        "seller_message": "Payment complete.", "type": "authorized"},
            "paid": True, "payment_intent": pi_id, "payment_method": pm["id"],
            "payment_method_details": {"card": {k: card_info[k] for k in ("brand", "last4", "exp_month",
                                                                         "exp_year", "funding", "country")},
                                       "type": "card"},
            "receipt_url": None, "refunded": False, "status": "succeeded"})
        session.update(status="complete", payment_status="paid", payment_intent=pi_id, url=None,
                       customer_details={"address": None, "email": email, "name": None, "phone": None,
                                         "tax_exempt": "none", "tax_ids": []})
        self._emit("checkout.session.completed", session)
        self._emit("payment_intent.succeeded", pi)
        return session

    # -- refunds

    def _create_refund(self, params: dict, _: str | None, request: dict) -> dict:
        pi_id = _str(params, "payment_intent", "payment_intent")
        ch_id = _str(params, "charge", "charge")
        if not pi_id and not ch_id:
            raise _bad("One of the following params should be provided for this request: payment_intent or "
                       "charge.")
        if pi_id:
            pi = self._find("payment_intent", pi_id, "payment_intent")
            if ch_id and ch_id != pi["latest_charge"]:
                raise _bad(f"The charge '{ch_id}' does not belong to the payment intent '{pi_id}'.", param="charge")
            ch_id = pi["latest_charge"]
        charge = self._find("charge", ch_id or "", "charge")
        left = charge["amount"] - charge["amount_refunded"]
        if left <= 0:
            raise _bad(f"Charge {charge['id']} has already been refunded.", code="charge_already_refunded")
        amount = _int(params, "amount", "amount", minimum=1)
        if amount is None:
            amount = left
        if amount > left:
            cur = charge["currency"]
            raise _bad(f"Refund amount ({format_amount(amount, cur)}) is greater than unrefunded amount on charge "
                       f"({format_amount(left, cur)})", param="amount")
        reason = _str(params, "reason", "reason")
        if reason is not None and reason not in _REFUND_REASONS:
            raise _bad("Invalid reason: must be one of duplicate, fraudulent, or requested_by_customer",
                       param="reason")
        refund = self._store({
            **self._base("refund", _new_id("re_")), "amount": amount, "balance_transaction": None,
            "charge": charge["id"], "currency": charge["currency"], "metadata": _metadata(params),
            "payment_intent": charge["payment_intent"], "reason": reason, "receipt_number": None,
            "status": "succeeded"})
        previous = {"amount_refunded": charge["amount_refunded"], "refunded": charge["refunded"]}
        charge["amount_refunded"] += amount
        charge["refunded"] = charge["amount_refunded"] >= charge["amount"]
        if previous["refunded"] == charge["refunded"]:
            del previous["refunded"]
        self._emit("refund.created", refund, request)
        self._emit("charge.refunded", charge, request, previous)
        return refund

    # -- the hosted page

    def _page(self, method: str, cs_id: str, body: bytes) -> tuple[int, dict, bytes]:
        headers = {"Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-store"}
        with self._lock:
            session = self._objects.get(cs_id)
            if session is None or session["object"] != "checkout.session":
                return 404, headers, _page_html("Not found", "<h1>This checkout session does not exist</h1>\n")
            if method == "GET":
                return 200, headers, self._page_body(session, None)
            form = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
            try:
                session = self._charge_session(cs_id, form.get("cardNumber", ""), form.get("cardExpiry", ""),
                                               form.get("cardCvc", ""))
            except PaymentError as e:
                status = {"already_paid": 409, "card_declined": 402, "insufficient_funds": 402}.get(e.code, 400)
                return status, headers, self._page_body(session, e)
            location = session["success_url"].replace("{CHECKOUT_SESSION_ID}", cs_id)
            return 303, {**headers, "Location": location}, b""

    def _page_body(self, session: dict[str, Any], error: PaymentError | None) -> bytes:
        amount = format_amount(session["amount_total"], session["currency"])
        title = f"Pay {amount} to {self.merchant}"
        esc = html.escape
        if session["status"] != "open":
            back = session["success_url"].replace("{CHECKOUT_SESSION_ID}", session["id"])
            return _page_html(title, f"<h1>{esc(title)}</h1>\n<p role=\"status\">This checkout session is already "
                                     f"paid.</p>\n<p><a href=\"{esc(back)}\">Return to {esc(self.merchant)}</a></p>\n")
        items = "".join(f"<li>{esc(i['description'])} × {i['quantity']}: "
                        f"{esc(format_amount(i['amount_total'], i['currency']))}</li>\n"
                        for i in self._line_items.get(session["id"], []))
        # After a failure the number field is left empty: what was typed is never echoed.
        number = "" if error else "4242 4242 4242 4242"
        alert = invalid = ""
        if error:
            alert = f'<p id="card-error" role="alert">{esc(str(error))}</p>\n'
            invalid = ' aria-invalid="true" aria-describedby="card-error"'
        cancel = (f'<p><a href="{esc(session["cancel_url"])}">Cancel</a></p>\n' if session["cancel_url"] else "")
        return _page_html(title, (
            f"<h1>{esc(title)}</h1>\n<p class=\"test\">Test mode: fake Stripe Checkout.</p>\n<ul>\n{items}</ul>\n"
            f"{alert}<form method=\"post\" action=\"/pay/{esc(session['id'])}\">\n"
            f'<label for="cardNumber">Card number</label>\n'
            f'<input id="cardNumber" name="cardNumber" inputmode="numeric" autocomplete="cc-number" '
            f'value="{number}" required{invalid}>\n'
            f'<label for="cardExpiry">Expiry date (MM / YY)</label>\n'
            f'<input id="cardExpiry" name="cardExpiry" autocomplete="cc-exp" value="{DEFAULT_EXPIRY}" required>\n'
            f'<label for="cardCvc">CVC</label>\n'
            f'<input id="cardCvc" name="cardCvc" inputmode="numeric" autocomplete="cc-csc" value="{DEFAULT_CVC}" '
            f"required>\n"
            f'<button type="submit">Pay</button>\n</form>\n{cancel}'))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fakes.stripe",
        description="Serve the fake Stripe API, hosted checkout and webhooks until killed.")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"port on 127.0.0.1 (default {DEFAULT_PORT}; 0: a free one)")
    parser.add_argument("--webhook-url", help="where to POST events (default: nowhere)")
    parser.add_argument("--api-key", default=DEFAULT_API_KEY)
    parser.add_argument("--webhook-secret", default=DEFAULT_WEBHOOK_SECRET)
    parser.add_argument("--quiet", action="store_true", help="print only the settings, not each request")
    args = parser.parse_args(argv)

    fake = FakeStripe(args.api_key, args.webhook_secret, args.webhook_url, port=args.port,
                      log=None if args.quiet else lambda line: print(line, flush=True)).start()
    print(f"fake Stripe on {fake.url}\n"
          f"  API base:       {fake.url}  (stripe.StripeClient(key, base_addresses={{'api': ...}}) "
          f"or stripe.api_base)\n"
          f"  secret key:     {fake.api_key}\n"
          f"  webhook secret: {fake.webhook_secret}\n"
          f"  webhooks to:    {fake.webhook_url or '(none: --webhook-url)'}\n"
          f"  test cards:     4242 4242 4242 4242 (visa), 5555 5555 5555 4444 (mastercard), "
          f"4000 0000 0000 0002 (declined)", flush=True)
    # A plain flag, not an Event: Event.set() in a signal handler can deadlock
    # with the Event.wait() it interrupts (both take the same lock).
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(1))
    while not stopping:
        time.sleep(0.2)
    fake.stop()


if __name__ == "__main__":
    main()
