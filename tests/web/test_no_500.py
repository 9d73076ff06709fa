"""No input gets a 500: generated requests to every route of the portal and the relay.

A review found odd inputs that crashed handlers (an out-of-range id in a URL, a
non-ASCII digit in a page number, a JSON body POSTed to a form). Patching those
instances is not enough, so this test walks `app.url_map` and the relay's own
URL map and sends each rule generated path parameters, query strings, bodies
(form, JSON of every type, raw bytes, multipart), headers and cookies, signed
out, signed in and signed in as staff, with and without a valid CSRF token.

For every answer it asserts what a client would notice:
- never a 5xx, and never a stack trace in the body;
- on /v1/ the error shape of the SDK that asked (OpenAI's
  ``{"error": {"message", "type"}}``; Anthropic's ``{"type": "error",
  "error": {"type", "message"}}`` on /v1/messages, and on the shared
  endpoints (/v1/models) when `anthropic-version` is sent); on /api/ the
  portal's JSON error; elsewhere an error page in the layout;
- a state-changing request without a valid CSRF token is refused with the
  400 CSRF page, never processed;
- nothing sent reaches a log line (P23), checked with a canary.

A fixed list of known-bad inputs goes to every route first (that part is
exhaustive); Hypothesis then draws a bounded number of examples per route
(`NO500_EXAMPLES`, default 10, so the whole file stays well under a minute).
The app runs on the real test database (SQLite or PostgreSQL) with a real
fake provider behind the relay, so bodies reach translation and upstream.
"""
from __future__ import annotations

import json
import logging
import os
import re
import types
from dataclasses import dataclass, field
from urllib.parse import quote

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wtforms.fields.core import UnboundField

from app.extensions import csrf, db
from app.models import User, UserSession
from app.models.types import utcnow
from tests.conftest import Forms, csrf_from
from tests.fakes import provider as provider_module
from tests.fakes.provider import FakeProvider

pytestmark = pytest.mark.promise("P23")

EXAMPLES = int(os.environ.get("NO500_EXAMPLES", "10"))
CANARY = "qx7-canary-no500"
PASSWORD = "correct horse battery"
UPSTREAM_KEY = "sk-fake-upstream-no500"
PROVIDERS = """
[providers.oai]
kind = "openai"
base_url = "{fake}/v1"
api_key_env = "NO500_UPSTREAM_KEY"
first_byte_timeout = 15
read_timeout = 20

[providers.claude]
kind = "anthropic"
base_url = "{fake}"
api_key_env = "NO500_UPSTREAM_KEY"
first_byte_timeout = 15
read_timeout = 20

[[models]]
name = "gpt-test"
targets = [ {{ provider = "oai", model = "gpt-upstream" }} ]
price = {{ input = 1.0, output = 2.0 }}

[[models]]
name = "claude-test"
targets = [ {{ provider = "claude", model = "claude-upstream" }} ]
price = {{ input = 3.0, output = 15.0 }}
"""
MODELS = ("gpt-test", "claude-test", "no-such-model")
LIMITS = "100000 per minute"

# ---- the known-bad inputs of the review, and their relatives -------------------------

HUGE_INTS = ["99999999999999999999", str(2**63), str(2**63 - 1), str(2**31), str(2**31 - 1), "9" * 5000]
ODD_DIGITS = ["²", "¹²", "١٢", "１２", "٣", "๑", "²²²²²²", "١٢٣٤٥٦", "１２３４５６"]
BAD_STRINGS = [*HUGE_INTS, *ODD_DIGITS, "-1", "0", "-0", "+5", " 7 ", "1e309", "NaN", "0x10", "1_000",
               "\x00", "a\x00b", "", " ", "%", "%00", "../../etc/passwd", "<script>x</script>", "x" * 5000,
               "é" * 300, "\u202e", "\ufeff", "null", "[]", "{}", CANARY]
# One request per value on every route and method: the review's kinds, one or two of each.
FIXED_VALUES = ["99999999999999999999", str(2**63), str(2**31), "9" * 5000, "²", "١٢", "１２", "١٢٣٤٥٦", "-1", " 7 ",
                "\x00", "a\x00b", "", "x" * 5000, CANARY]
BAD_JSON = [[], [1, 2], [["a", "b"]], [["email", 5]], 0, 12.5, -1, True, None, "text", CANARY,
            {"email": 5, "password": None, "code": ["1"], "csrf_token": 7},
            {"value": {"a": 1}, "name": [CANARY], "word": 2**70, "granted": 1.5, "theme": False},
            {"model": 5, "messages": "x"}, {"model": "gpt-test", "messages": [1, None, "x"]},
            {"model": "claude-test", "messages": [{"role": 5, "content": {"x": 1}}], "max_tokens": 2**70}]


# ---- the app, its data and the identities that call it -------------------------------

@dataclass
class Identity:
    """Who is calling: the session cookie (signed, holding the server-side
    session id) and the CSRF token that goes with it."""
    name: str
    cookie: str | None
    token: str
    email: str | None = None


@dataclass
class World:
    app: object
    client: object
    ids: dict = field(default_factory=dict)       # converter argument name -> real ids
    tokens: dict = field(default_factory=dict)    # rule -> a real link token for its <token>
    key: str = ""
    fields: tuple = ()
    identities: dict = field(default_factory=dict)
    fake_bugs: list = field(default_factory=list)  # one entry per request the fake provider failed on
    exempt: frozenset = frozenset()
    accounts: int = 0                             # made when a caller's own was lost


def form_field_names(app) -> tuple[str, ...]:
    """Every field name of every form in the app, so generated bodies reach
    the handlers' parsing instead of being ignored."""
    from flask_wtf import FlaskForm

    names: set[str] = {"csrf_token"}
    todo = list(FlaskForm.__subclasses__())
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        names.update(n for n in dir(cls) if isinstance(getattr(cls, n, None), UnboundField))
    return tuple(sorted(names))


def session_cookie(client) -> str:
    cookie = client.get_cookie("session")
    assert cookie is not None
    return cookie.value


def sign_in(app, email: str) -> Identity:
    """A real login through the form, then a page for the CSRF token; the
    cookie and token are reused by cookie-less clients for every request."""
    client = app.test_client()
    forms = Forms(client)
    resp = forms.post("/login", {"email": email, "password": PASSWORD})
    assert resp.status_code == 302, resp.get_data(as_text=True)[:300]
    token = csrf_from(client.get("/account/").get_data(as_text=True))
    return Identity("signed-in", session_cookie(client), token, email)


def anonymous(app) -> Identity:
    client = app.test_client()
    token = csrf_from(client.get("/login").get_data(as_text=True))
    return Identity("anonymous", session_cookie(client), token)


def make_user(app, email: str, staff: bool = False) -> int:
    from app.services.passwords import hash_password
    with app.app_context():
        u = User(email=email, email_key=email.lower(), password_hash=hash_password(PASSWORD),
                 age_confirmed_at=utcnow(), email_verified_at=utcnow(), is_staff=staff)
        db.session.add(u)
        db.session.commit()
        return u.id


@pytest.fixture(scope="module")
def fake():
    server = FakeProvider(api_key=UPSTREAM_KEY).start()
    yield server
    server.stop()


@pytest.fixture
def world(make_app, fake, tmp_path, monkeypatch) -> World:
    """An app with data behind every kind of id in a URL: a policy version,
    a key, a privacy request, an incident, sessions; and a relay with models."""
    from app.models import ApiKey, Incident, PolicyVersion, PrivacyRequest
    from app.services import consent_links, incidents, policy, tokens
    from app.services import keys as key_service

    monkeypatch.setenv("NO500_UPSTREAM_KEY", UPSTREAM_KEY)
    # Answers that must not reveal an account are padded to a time floor; this
    # test is about what comes back, not when, so the floor is made negligible.
    monkeypatch.setattr("app.web.ANSWER_FLOOR_SECONDS", 1e-6, raising=False)
    providers = tmp_path / "providers.toml"
    providers.write_text(PROVIDERS.format(fake=fake.base_url))
    bugs: list = []
    # The fake provider answers 500 ("fake provider bug") to bodies it cannot read, where a real
    # one would answer 400; the relay then honestly says 502. Counted, so such a 502 is told
    # apart from the relay's own failures.
    monkeypatch.setattr(provider_module, "traceback",
                        types.SimpleNamespace(print_exc=lambda *a, **k: bugs.append(1)))
    app = make_app(PROVIDERS_FILE=str(providers), RATELIMIT_AUTH=LIMITS, RATELIMIT_RESEND=LIMITS,
                   RATELIMIT_EXPORT_REQUEST=LIMITS, RATELIMIT_EXPORT_API=LIMITS,
                   RELAY_KEY_RPM="1000000", RELAY_KEY_TPM="100000000", RELAY_ACCOUNT_RPM="1000000",
                   RELAY_ACCOUNT_TPM="100000000")
    app.config["PROPAGATE_EXCEPTIONS"] = False  # a crash is answered as in production, and judged
    w = World(app=app, client=app.test_client(use_cookies=False), fields=form_field_names(app), fake_bugs=bugs)
    uid = make_user(app, "ada@example.com")
    sid = make_user(app, "grace@example.com", staff=True)
    lid = make_user(app, "lin@example.com")  # whose emailed links are followed: a reset must not lock ada out
    with app.app_context(), app.test_request_context():
        policy.current_version()
        user, staff, lin = db.session.get(User, uid), db.session.get(User, sid), db.session.get(User, lid)
        _, w.key = key_service.create(user, "fuzz key")
        w.tokens = {"/verify/<token>": tokens.issue(lin, tokens.VERIFY),
                    "/reset/<token>": tokens.issue(lin, tokens.RESET),
                    "/login/link/<token>": tokens.issue(lin, tokens.MAGIC),
                    "/account/email/confirm/<token>": tokens.issue(user, tokens.CHANGE_EMAIL,
                                                                   email="ada.new@example.com"),
                    "/privacy-center/unsubscribe/<token>": consent_links.make_token(lin)}
        db.session.add(PrivacyRequest(user_id=uid, kind="access", channel="portal", status="open",
                                      received_at=utcnow(), due_at=utcnow()))
        db.session.commit()
        incidents.record(staff, title="t", description="d", confirmed_at=utcnow(),
                         scope=incidents.Scope("all"), notice_subject="s", notice_body="b")
        db.session.commit()
    w.identities = {"anonymous": anonymous(app), "user": sign_in(app, "ada@example.com"),
                    "staff": sign_in(app, "grace@example.com")}
    w.identities["staff"].name = "staff"
    with app.app_context():
        w.ids = {
            "number": [v for v in db.session.scalars(sa.select(PolicyVersion.number))],
            "key_id": [v for v in db.session.scalars(sa.select(ApiKey.id))],
            "request_id": [v for v in db.session.scalars(sa.select(PrivacyRequest.id))],
            "incident_id": [v for v in db.session.scalars(sa.select(Incident.id))],
            "session_id": [v for v in db.session.scalars(sa.select(UserSession.id))],
        }
    w.exempt = frozenset(csrf._exempt_views)
    yield w
    assert app.extensions["meter"].flush(10)


# ---- requests: building, sending, judging ---------------------------------------------

ARG_RE = re.compile(r"<(?:(\w+)(?:\([^)]*\))?:)?(\w+)>")


@dataclass
class Rule:
    rule: str
    methods: tuple[str, ...]
    endpoint: str
    args: tuple[tuple[str, str], ...]   # (converter, name)


def portal_rules(app) -> list[Rule]:
    out = []
    for r in app.url_map.iter_rules():
        args = tuple((m.group(1) or "default", m.group(2)) for m in ARG_RE.finditer(r.rule))
        out.append(Rule(r.rule, tuple(sorted(r.methods - {"HEAD", "OPTIONS"})), r.endpoint, args))
    return sorted(out, key=lambda r: r.rule)


def relay_rules() -> list[Rule]:
    from app.relay.routes import URLS
    return [Rule(r.rule, tuple(sorted(r.methods - {"HEAD", "OPTIONS"})), r.endpoint.__name__,
                 tuple((m.group(1) or "default", m.group(2)) for m in ARG_RE.finditer(r.rule)))
            for r in URLS.iter_rules()]


@dataclass
class Sent:
    """One request, described so a failure message can show it."""
    method: str
    path: str
    query: dict = field(default_factory=dict)
    headers: dict = field(default_factory=dict)
    cookies: dict = field(default_factory=dict)
    body: object = None        # dict (form), bytes, or ("json", value) / ("multipart", dict)
    identity: str = "anonymous"
    csrf_valid: bool = False

    def short(self) -> str:
        """The request without the session cookie and token values (long, and the same every time)."""
        cookies = {k: (v if k != "session" or v.startswith("garbage") else "<valid>") for k, v in self.cookies.items()}
        headers = {k: ("<valid token>" if k == "X-CSRFToken" and self.csrf_valid else v)
                   for k, v in self.headers.items()}
        body = self.body
        if isinstance(body, dict):
            body = {k: v for k, v in body.items() if k != "csrf_token"}
        text = (f"{self.identity} {self.method} {self.path} query={self.query!r} headers={headers!r} "
                f"cookies={cookies!r} body={body!r}")
        return text if len(text) < 1200 else text[:1200] + "…"

    def kwargs(self) -> dict:
        headers = dict(self.headers)
        if self.cookies:
            # A browser sends cookie bytes; a WSGI server hands them over as latin-1.
            raw = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
            headers["Cookie"] = raw.encode("utf-8").decode("latin-1")
        kw: dict = {"method": self.method, "query_string": self.query, "headers": headers}
        if isinstance(self.body, dict):
            kw["data"] = self.body
        elif isinstance(self.body, bytes):
            kw["data"] = self.body
            kw["content_type"] = headers.pop("Content-Type", "application/octet-stream")
        elif isinstance(self.body, tuple) and self.body[0] == "json":
            kw["data"] = json.dumps(self.body[1])
            kw["content_type"] = "application/json"
        elif isinstance(self.body, tuple) and self.body[0] == "multipart":
            kw["data"] = self.body[1]
            kw["content_type"] = "multipart/form-data"
        return kw


TRACE_MARKERS = (b"Traceback (most recent call last)", b'File "/', b"sqlalchemy.exc", b"Werkzeug Debugger")


OPENAI_ONLY = ("/v1/chat/completions", "/v1/embeddings", "/v1/responses")


def anthropic_asked(sent: Sent) -> bool:
    """Which SDK a client is: the path says so on the endpoints of one API
    (an Anthropic SDK never calls /v1/chat/completions); on the shared ones
    (/v1/models, an unknown path) its `anthropic-version` header does."""
    path = sent.path.split("?")[0].rstrip("/")
    if path in OPENAI_ONLY:
        return False
    if path == "/v1/messages" or path.startswith("/v1/messages/"):
        return True
    return any(k.lower() == "anthropic-version" and v for k, v in sent.headers.items())


def judge(w: World, sent: Sent, resp, rule: Rule | None, upstream_broke: bool = False) -> None:
    """What a client would notice, asserted for one answer. `upstream_broke`:
    the fake provider failed on this request, so the relay's 502 is the truth."""
    body = resp.get_data()
    where = f"{sent.short()} -> {resp.status_code} {body[:200]!r}"
    assert resp.status_code < 500 or (upstream_broke and resp.status_code == 502), where
    for marker in TRACE_MARKERS:
        assert marker not in body, where
    if sent.path.startswith("/v1/"):
        if resp.status_code >= 400:
            assert resp.mimetype == "application/json", where
            data = json.loads(body)
            assert (data.get("type") == "error") == anthropic_asked(sent), where
            assert isinstance(data["error"]["type"], str) and isinstance(data["error"]["message"], str), where
        return
    if sent.path.startswith("/api/"):
        if resp.status_code >= 400:
            data = json.loads(body)
            assert isinstance(data["error"]["message"], str) and isinstance(data["error"]["type"], str), where
        return
    if resp.status_code >= 400 and resp.mimetype == "text/html" and resp.status_code != 422:
        assert b"<html" in body, where
    if (rule is not None and sent.method == "POST" and "POST" in rule.methods
            and not sent.csrf_valid and w.app.view_functions[rule.endpoint].__module__ + "."
            + w.app.view_functions[rule.endpoint].__name__ not in w.exempt):
        # Refused before any handler ran: CSRF stays on for every input (an id
        # out of range is a 404 before the CSRF check is reached).
        assert resp.status_code in (400, 404), where
        if resp.status_code == 400:
            assert b"expired or was not sent from this site" in body, where


def still_signed_in(w: World, ident: Identity) -> bool:
    from app.services import sessions
    serializer = w.app.session_interface.get_signing_serializer(w.app)
    with w.app.app_context():
        raw = serializer.loads(ident.cookie).get("sid")
        row = sessions.lookup(raw) if raw else None
        return row is not None and row.user.deletion_requested_at is None


def new_account(w: World, ident: Identity) -> str:
    w.accounts += 1
    email = f"fuzz{w.accounts}@example.com"
    make_user(w.app, email, staff=ident.name == "staff")
    return email


def restore(w: World, ident: Identity) -> Identity:
    """A generated request may sign its caller out (logout, end session,
    deletion): sign in again, as a new account if this one is gone."""
    if ident.email is None or still_signed_in(w, ident):
        return ident
    with w.app.app_context():
        gone = db.session.scalar(sa.select(User.deletion_requested_at).where(User.email_key == ident.email))
    email = ident.email
    if gone is not None:
        email = new_account(w, ident)
    try:
        fresh = sign_in(w.app, email)
    except AssertionError:  # its password was changed, or sign-in is blocked: use a new account
        fresh = sign_in(w.app, new_account(w, ident))
    fresh.name = ident.name
    w.identities[ident.name] = fresh
    return fresh


def send(w: World, sent: Sent, rule: Rule | None, caplog) -> None:
    caplog.clear()
    bugs = len(w.fake_bugs)
    resp = w.client.open(sent.path, **sent.kwargs())
    resp.get_data()  # a stream runs to its end here
    judge(w, sent, resp, rule, upstream_broke=len(w.fake_bugs) > bugs)
    resp.close()
    leaked = [r.getMessage() for r in caplog.records if CANARY in r.getMessage()]
    assert not leaked, f"{sent!r}: client input in a log line: {leaked[:1]}"


def fill(rule: Rule, values: dict[str, str]) -> str:
    def one(m):
        return quote(values[m.group(2)], safe="/" if (m.group(1) == "path") else "")
    return ARG_RE.sub(one, rule.rule)


# ---- strategies -----------------------------------------------------------------------

any_text = st.text(max_size=30)
digits = st.text(alphabet="0123456789٠١٢٣٤٥٦٧٨٩²³¹๑０１２", min_size=1, max_size=24)
odd_text = st.one_of(any_text, st.sampled_from(BAD_STRINGS), digits,
                     st.integers(min_value=-2**80, max_value=2**80).map(str))
header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, blacklist_characters="\x7f"),
                      max_size=40)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | odd_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(odd_text, inner, max_size=4),
    max_leaves=8)
QUERY_NAMES = ("page", "next", "edit", "status", "kind", "channel", "overdue", "sort", "event", "subject",
               "model", "key", "from", "to", "limit", "after_id", "before_id")


def cookie_safe(text: str) -> str:
    """What can reach a server inside a Cookie header: no control characters
    (a server refuses the header) and no `;` (it would start another cookie)."""
    return "".join(ch for ch in text if ch >= " " and ch not in ";\x7f")


def path_value(w: World, rule: Rule, conv: str, name: str):
    known = [str(i) for i in w.ids.get(name, [])]
    if conv == "int":
        return st.one_of(st.sampled_from(known or ["1"]), st.integers(0, 2**31 - 1).map(str),
                         st.sampled_from(HUGE_INTS + ODD_DIGITS), digits)
    real = [w.tokens[rule.rule]] if rule.rule in w.tokens else []
    base = st.one_of(odd_text.filter(bool), st.sampled_from(["name", "company", "marketing_email", "email",
                                                             "x" * 300, "a.b.c", *real]))
    return base if conv == "path" else base.map(lambda s: s.replace("/", "-") or "x")


@st.composite
def requests(draw, w: World, rule: Rule, ident: Identity) -> Sent:
    values = {name: draw(path_value(w, rule, conv, name)) for conv, name in rule.args}
    method = draw(st.sampled_from(rule.methods + ("PUT",))) if draw(st.integers(0, 9)) == 0 else \
        draw(st.sampled_from(rule.methods))
    sent = Sent(method=method, path=fill(rule, values), identity=ident.name)
    sent.query = draw(st.dictionaries(st.sampled_from(QUERY_NAMES) | any_text, odd_text, max_size=4))
    names = st.sampled_from(w.fields) | any_text
    kind = draw(st.sampled_from(["none", "form", "form", "json", "bytes", "multipart"]))
    if kind == "form":
        sent.body = draw(st.dictionaries(names, odd_text | st.lists(odd_text, max_size=3), max_size=6))
    elif kind == "json":
        sent.body = ("json", draw(json_values | st.dictionaries(names, json_values, max_size=6)))
    elif kind == "bytes":
        sent.body = draw(st.binary(max_size=200))
        sent.headers["Content-Type"] = draw(st.sampled_from(
            ["application/json", "application/x-www-form-urlencoded", "text/plain", "multipart/form-data",
             "multipart/form-data; boundary=x", "application/json; charset=latin-9"]))
    elif kind == "multipart":
        from io import BytesIO
        sent.body = ("multipart", {draw(names): (BytesIO(draw(st.binary(max_size=50))), "f.txt")
                                   for _ in range(draw(st.integers(1, 2)))})
    csrf_choice = draw(st.sampled_from(["header", "form", "none", "garbage"]))
    if csrf_choice == "header":
        sent.headers["X-CSRFToken"] = ident.token
    elif csrf_choice == "form" and isinstance(sent.body, dict):
        sent.body["csrf_token"] = ident.token
    elif csrf_choice == "garbage":
        sent.headers["X-CSRFToken"] = draw(header_text)
    form_token = sent.body.get("csrf_token") if isinstance(sent.body, dict) else None
    if isinstance(form_token, list):  # a repeated field: the server reads the first value
        form_token = form_token[0] if form_token else None
    if form_token:  # an empty one counts as absent: Flask-WTF then reads the header
        sent.csrf_valid = form_token == ident.token
    else:
        sent.csrf_valid = sent.headers.get("X-CSRFToken") == ident.token
    for name, value in (("HX-Request", st.just("true")), ("HX-History-Restore-Request", st.just("true")),
                        ("anthropic-version", st.sampled_from(["2023-06-01", ""]) | header_text),
                        ("Authorization", st.sampled_from([f"Bearer {w.key}", "Bearer rk_" + "x" * 40])
                         | header_text),
                        ("x-api-key", st.sampled_from([w.key]) | header_text),
                        ("X-Relay-Project", header_text), ("X-Relay-Tags", header_text),
                        ("User-Agent", header_text), ("Accept", header_text), ("Referer", header_text)):
        if draw(st.integers(0, 3)) == 0:
            sent.headers[name] = draw(value)
    session = draw(st.sampled_from(["valid", "valid", "valid", "garbage", "absent"]))
    if session == "valid" and ident.cookie:
        sent.cookies["session"] = ident.cookie
    elif session == "garbage":
        sent.cookies["session"] = cookie_safe(draw(header_text))
        sent.csrf_valid = False
    else:
        sent.csrf_valid = False
    for name in ("pref_theme", "pref_range"):
        if draw(st.booleans()):
            sent.cookies[name] = draw(odd_text.map(cookie_safe))
    if sent.path.startswith("/v1/") and method == "POST" and draw(st.booleans()):
        payload = draw(st.dictionaries(st.sampled_from(["messages", "max_tokens", "stream", "input", "system",
                                                        "stream_options", "tools", "temperature"]) | any_text,
                                       json_values, max_size=5))
        payload["model"] = draw(st.sampled_from(MODELS) | json_values)
        if draw(st.booleans()):
            payload["messages"] = draw(st.lists(st.fixed_dictionaries(
                {"role": st.sampled_from(["user", "assistant", "system", "tool"]) | json_values,
                 "content": odd_text | json_values}), min_size=1, max_size=3))
        if draw(st.booleans()):
            payload["stream"] = draw(st.booleans())  # the SDKs' own value, so bodies also reach the streams
        sent.body = ("json", payload)
        sent.headers.setdefault("Authorization", f"Bearer {w.key}")
    return sent


# ---- the fixed list -------------------------------------------------------------------

def known_bad(w: World, rule: Rule, ident: Identity) -> list[Sent]:
    """Each known-bad input of the review, sent to every route (no sampling)."""
    base = {name: (str(w.ids[name][0]) if w.ids.get(name) else w.tokens.get(rule.rule, "x"))
            for _, name in rule.args}
    cookies = {"session": ident.cookie} if ident.cookie else {}
    headers = {"X-CSRFToken": ident.token}
    if rule.rule.startswith("/v1/"):
        headers["Authorization"] = f"Bearer {w.key}"
    out = []
    for _, name in rule.args:   # every odd value in each path parameter
        for value in HUGE_INTS[:4] + ODD_DIGITS[:4] + ["\x00", "x" * 300]:
            out.append(Sent(rule.methods[0], fill(rule, {**base, name: value}), headers=dict(headers),
                            cookies=dict(cookies), identity=ident.name, csrf_valid=True))
    path = fill(rule, base)
    for method in rule.methods:
        for value in FIXED_VALUES:   # every query name, every field name and both cookies at once
            query = {q: value for q in QUERY_NAMES}
            body = {f: value for f in w.fields} | {"csrf_token": ident.token} if method != "GET" else None
            out.append(Sent(method, path, query=query, body=body, headers=dict(headers), cookies={
                **cookies, "pref_theme": cookie_safe(value), "pref_range": cookie_safe(value)},
                identity=ident.name, csrf_valid=True))
        if method != "GET":
            for value in BAD_JSON:
                out.append(Sent(method, path, body=("json", value), headers=dict(headers), cookies=dict(cookies),
                                identity=ident.name, csrf_valid=True))
            out.append(Sent(method, path, body=b"{not json", headers={**headers, "Content-Type": "application/json"},
                            cookies=dict(cookies), identity=ident.name, csrf_valid=True))
    garbage = {"session": "garbage." + CANARY, "pref_range": "²", "pref_theme": "\u202e"}
    out.append(Sent(rule.methods[0], path, cookies=garbage, identity=ident.name))
    return out


# ---- the tests ------------------------------------------------------------------------

IDENTITIES = ("anonymous", "user", "staff")


def failures_by_route(rules, attempt) -> list[str]:
    """Run `attempt(rule)` for every rule and report every route that failed,
    not only the first: one run shows the whole class of defect."""
    failed = []
    for rule in rules:
        try:
            attempt(rule)
        except AssertionError as exc:
            failed.append(f"{rule.rule}: {str(exc)[:1500]}")
    return failed


@pytest.mark.parametrize("who", IDENTITIES)
def test_known_bad_inputs_never_get_a_500(world, who, caplog):
    """The review's list (huge and non-ASCII numbers in URLs, query strings,
    form fields and cookies; JSON of every type POSTed to forms; a garbage
    session) on every route, for each kind of caller."""
    caplog.set_level(logging.INFO)

    def attempt(rule):
        for sent in known_bad(world, rule, world.identities[who]):
            ident = world.identities[who] = restore(world, world.identities[who])
            if sent.cookies.get("session", "").startswith("garbage"):
                pass
            elif ident.cookie:  # the caller may have been signed in again since the list was made
                sent.cookies["session"] = ident.cookie
                sent.headers["X-CSRFToken"] = ident.token
                if isinstance(sent.body, dict):
                    sent.body["csrf_token"] = ident.token
            send(world, sent, rule, caplog)

    failed = failures_by_route(portal_rules(world.app) + relay_rules(), attempt)
    assert not failed, f"{len(failed)} routes failed:\n" + "\n".join(failed)


@pytest.mark.parametrize("who", IDENTITIES)
def test_generated_requests_never_get_a_500(world, who, caplog):
    """Hypothesis draws `EXAMPLES` requests per route and caller: any path
    parameter, query string, body, header and cookie."""
    caplog.set_level(logging.INFO)

    def attempt(rule):
        @settings(max_examples=EXAMPLES, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                         HealthCheck.filter_too_much])
        @given(data=st.data())
        def run(data):
            ident = world.identities[who] = restore(world, world.identities[who])
            send(world, data.draw(requests(world, rule, ident), label="request"), rule, caplog)

        run()

    failed = failures_by_route(portal_rules(world.app) + relay_rules(), attempt)
    assert not failed, f"{len(failed)} routes failed:\n" + "\n".join(failed)
