"""Zero-log (P23), field by field: a different canary in every JSON field, header,
cookie, query string and path segment a client can send to /v1/, on the success
paths and on every error path (401, 400 after parsing, 404, 405, 413, the relay's
own 429, provider 4xx/5xx, streams that break or report an error), through the
official SDKs; then every place the relay could keep something is scanned
(tests.relay.test_zero_log.scan_all): log records of every logger at DEBUG, this
process's stdout/stderr, every column of every table, SQLite's files, Redis,
every file under the instance folder, and, in the served test, the output of
the granian processes that `make run` starts.

Client text is found only where it is meant to be: a valid X-Relay-Project or
X-Relay-Tags value is a label the client chose for its usage (P22) and is stored
in its column (and in the usage spool on its way there). Nothing else a client
sends is stored or logged: not the model name it asked for, not a header, not a
field of the body, not a rejected label.
"""
from __future__ import annotations

import json
import time

import anthropic
import httpx2 as httpx
import openai
import pytest
import sqlalchemy as sa

from app.extensions import db
from app.models import User
from app.models.types import utcnow
from app.services import keys as key_service
from app.services.passwords import hash_password
from tests.conftest import BACKEND
from tests.relay.conftest import PROVIDERS, UPSTREAM_KEY
from tests.relay.test_zero_log import Canaries, capture_all_logs, scan_all, unexpected
from tests.served import Served
from tests.servers import free_port


@pytest.fixture
def all_logs(caplog):
    """Every logger at DEBUG (tests.relay.test_zero_log)."""
    yield from capture_all_logs(caplog)


# A label the client chose, meant for its column (P22); on its way there a
# usage row waits in the spool file (app/relay/spool.py).
LABEL_PLACES = ("db-file:*", "file:spool/*")


def labels_allowed(book: Canaries, project: str, tag: str) -> dict[str, tuple[str, ...]]:
    # The analytics' running totals are kept per project and per tag (P30): the same label, by design.
    return {book.label_of(project): ("table:usage_records.project", "table:usage_rollups.value", *LABEL_PLACES),
            book.label_of(tag): ("table:usage_records.tags", "table:usage_rollups.value", *LABEL_PLACES)}


class Sender:
    """Canary-bearing requests to one relay (in-process or served), with the SDKs."""

    def __init__(self, url: str, key: str, book: Canaries):
        self.url, self.key, self.c = url, key, book
        c = book
        # Every header and cookie a client can add, on every request below.
        self.headers = {
            "User-Agent": c("header.user-agent"),
            "X-Zero-Log-Probe": c("header.arbitrary"),
            "Cookie": f"session={c('cookie.session')}; zl_probe={c('cookie.arbitrary')}",
            "Referer": "https://example.com/" + c("header.referer"),
            "X-Forwarded-For": "10.0.0.1, " + c("header.x-forwarded-for"),
            "OpenAI-Organization": c("header.openai-organization"),
        }
        self.query = {"zl": c("query.string")}
        # Valid labels: stored on purpose, in their columns only.
        self.project = c("label.project")
        self.tag = c("label.tag")
        self.labels = {"X-Relay-Project": self.project, "X-Relay-Tags": f"zero-log,{self.tag}"}

    def openai(self, key: str | None = None, **headers) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key or self.key, max_retries=0,
                             default_headers={**self.headers, **self.labels, **headers}, default_query=self.query)

    def anthropic(self, key: str | None = None, beta: bool = True, **headers) -> anthropic.Anthropic:
        """With a canary `anthropic-beta` header, unless `beta` is False (a beta feature asked of a
        model of another API is refused, naming the header)."""
        extra = {"anthropic-beta": self.c("header.anthropic-beta")} if beta else {}
        return anthropic.Anthropic(base_url=self.url, api_key=key or self.key, max_retries=0,
                                   default_headers={**self.headers, **self.labels, **extra, **headers},
                                   default_query=self.query)

    # -- bodies with a canary in every field ------------------------------------------

    def chat_body(self, where: str, *, model: str = "gpt-test", stream: bool = False, full: bool = False) -> dict:
        """Translated to an Anthropic-shaped model, the fields Messages has no place
        for are left out (they are refused, naming the field), unless `full`."""
        c = self.c
        body = {
            "model": model,
            "messages": [
                {"role": "system", "content": c(f"{where}.system")},
                {"role": "user", "content": c(f"{where}.messages.content"), "name": c(f"{where}.messages.name")},
            ],
            "tools": [{"type": "function", "function": {
                "name": "lookup_" + c(f"{where}.tools.name"), "description": c(f"{where}.tools.description"),
                "parameters": {"type": "object", "properties": {c(f"{where}.tools.property"): {
                    "type": "string", "description": c(f"{where}.tools.property-description")}}}}}],
            "tool_choice": "auto",
            "stop": [c(f"{where}.stop")],
            "user": c(f"{where}.user"),
            "metadata": {"zl": c(f"{where}.metadata")},
            "zl_unknown_field": c(f"{where}.extra-field"),
            "zl_unknown_object": {"nested": [c(f"{where}.extra-nested")]},
        }
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True, "zl_option": c(f"{where}.stream_options")}
        if model == "claude-test" and not full:
            for name in ("metadata", "zl_unknown_field", "zl_unknown_object"):
                del body[name]
            del body["messages"][1]["name"]
        return body

    def messages_body(self, where: str, *, model: str = "claude-test", stream: bool = False,
                      full: bool = False) -> dict:
        """Translated to an OpenAI-shaped model, the unknown fields are left out
        (they are refused, naming the field), unless `full`."""
        c = self.c
        body = {
            "model": model,
            "max_tokens": 200,
            "system": c(f"{where}.system"),
            "messages": [{"role": "user", "content": [{"type": "text", "text": c(f"{where}.messages.text")}]}],
            "tools": [{"name": "lookup_" + c(f"{where}.tools.name"), "description": c(f"{where}.tools.description"),
                       "input_schema": {"type": "object", "properties": {c(f"{where}.tools.property"): {
                           "type": "string"}}}}],
            "stop_sequences": [c(f"{where}.stop_sequences")],
            "metadata": {"user_id": c(f"{where}.metadata.user_id")},
            "zl_unknown_field": c(f"{where}.extra-field"),
            "zl_unknown_object": {"nested": [c(f"{where}.extra-nested")]},
        }
        if stream:
            body["stream"] = True
        if model == "gpt-test" and not full:
            for name in ("zl_unknown_field", "zl_unknown_object"):
                del body[name]
        return body

    # -- sending through the SDKs (`post` keeps every field, known or not) -------------

    def chat(self, body: dict, client=None, **headers):
        client = client or self.openai(**headers)
        if body.get("stream"):
            stream = client.post("/chat/completions", body=body, cast_to=object, stream=True,
                                 stream_cls=openai.Stream[object])
            return [chunk for chunk in stream]
        return client.post("/chat/completions", body=body, cast_to=object)

    def messages(self, body: dict, client=None, **headers):
        # Translated for an OpenAI-shaped model, the beta header goes only with a body that is refused anyway.
        beta = body.get("model") != "gpt-test" or "zl_unknown_field" in body
        client = client or self.anthropic(beta=beta, **headers)
        if body.get("stream"):
            stream = client.post("/v1/messages", body=body, cast_to=object, stream=True,
                                 stream_cls=anthropic.Stream[object])
            return [event for event in stream]
        return client.post("/v1/messages", body=body, cast_to=object)

    def raw(self, method: str, path: str, **kw) -> httpx.Response:
        headers = {**self.headers, "Authorization": f"Bearer {self.key}", **kw.pop("headers", {})}
        return httpx.request(method, self.url + path, headers=headers, params=self.query, timeout=10, **kw)


def drive(s: Sender, fake, make_key, *, small_url: str | None = None) -> None:
    """Every success and error path, each request full of canaries."""
    c = s.c

    # -- successes: both shapes, to the same shape and translated, streamed or not
    for model in ("gpt-test", "claude-test"):
        r = s.chat(s.chat_body(f"ok.chat.{model}", model=model))
        assert r["choices"][0]["message"]
        assert s.chat(s.chat_body(f"ok.chat-stream.{model}", model=model, stream=True))
        r = s.messages(s.messages_body(f"ok.messages.{model}", model=model))
        assert r["content"]
        assert s.messages(s.messages_body(f"ok.messages-stream.{model}", model=model, stream=True))
    # what a translation cannot carry: refused, naming the field and quoting nothing
    with pytest.raises(openai.BadRequestError):
        s.chat(s.chat_body("e400.untranslatable.chat", model="claude-test", full=True))
    with pytest.raises(anthropic.BadRequestError):
        s.messages(s.messages_body("e400.untranslatable.messages", model="gpt-test", stream=True, full=True))
    # the anthropic-version header, forwarded to the provider and kept nowhere
    s.messages(s.messages_body("ok.messages.version"), **{"anthropic-version": c("header.anthropic-version")})
    # embeddings: every field, the input a list and a string
    s.openai().post("/embeddings", cast_to=object, body={
        "model": "embed-test", "input": [c("ok.embeddings.input-list"), "more"], "user": c("ok.embeddings.user"),
        "encoding_format": "float", "zl_unknown_field": c("ok.embeddings.extra-field")})
    s.openai().post("/embeddings", cast_to=object, body={"model": "embed-test", "input": c("ok.embeddings.input")})
    # the provider's answer carries a canary too
    reply = c("ok.provider-reply")
    fake.push_fault(reply=reply)
    assert reply in json.dumps(s.chat(s.chat_body("ok.reply")))
    fake.push_fault(reply=c("ok.provider-reply-stream"))
    s.messages(s.messages_body("ok.reply-stream", model="gpt-test", stream=True))
    # the model list and one model, with canary headers and query
    assert {m.id for m in s.openai().models.list()} >= {"gpt-test", "claude-test"}
    assert s.openai().models.retrieve("gpt-test").id == "gpt-test"
    assert s.anthropic().models.retrieve("claude-test").id == "claude-test"

    # -- 401: a bad key that carries a canary, in either header
    with pytest.raises(openai.AuthenticationError):
        s.chat(s.chat_body("e401.chat"), client=s.openai(key="rk_" + c("auth.bearer")))
    with pytest.raises(anthropic.AuthenticationError):
        s.messages(s.messages_body("e401.messages"), client=s.anthropic(key=c("auth.x-api-key")))
    r = httpx.post(s.url + "/v1/messages", json=s.messages_body("e401.raw"),
                   headers={**s.headers, "x-api-key": c("auth.x-api-key-raw")}, params=s.query)
    assert r.status_code == 401
    r = httpx.get(s.url + "/v1/models", headers={**s.headers, "Authorization": c("auth.not-bearer")})
    assert r.status_code == 401

    # -- 400 after parsing, with client text in `model` (with and without a NUL)
    plain, nul = c("model.plain"), c("model.nul")
    for label, model in (("model.plain", plain), ("model.nul", "gpt-test\x00" + nul)):
        body = s.chat_body(f"e400.{label}", model=model)
        del body["messages"]
        with pytest.raises(openai.BadRequestError):
            s.chat(body)
        body = s.messages_body(f"e400.{label}.messages", model=model)
        body["max_tokens"] = c(f"e400.{label}.max_tokens")
        with pytest.raises(anthropic.BadRequestError):
            s.messages(body)
        # parsed and routed: unknown model, 404 (the name is echoed to the client only)
        with pytest.raises(openai.NotFoundError) as e:
            s.chat(s.chat_body(f"e404.{label}", model=model + "-404"))
        assert (plain if label == "model.plain" else nul) in str(e.value)  # echoed to the client only
        with pytest.raises(anthropic.NotFoundError):
            s.messages(s.messages_body(f"e404.{label}.messages", model=model + "-404"))
    with pytest.raises(openai.BadRequestError):  # not a list
        s.chat({**s.chat_body("e400.messages-type"), "messages": c("e400.messages-string")})
    with pytest.raises(openai.BadRequestError):  # a model that is not a string
        s.chat({**s.chat_body("e400.model-type"), "model": {"name": c("e400.model-object")}})
    with pytest.raises(openai.BadRequestError):  # embeddings without input
        s.openai().post("/embeddings", cast_to=object,
                        body={"model": "embed-test", "input": "", "user": c("e400.embeddings.user")})
    with pytest.raises(openai.BadRequestError):  # untranslatable: a role that is the canary
        s.chat({"model": "claude-test", "messages": [{"role": c("e400.role"), "content": c("e400.role-content")}]})
    # bodies that are not a JSON object, with canaries in them
    for path in ("/v1/chat/completions", "/v1/messages", "/v1/embeddings"):
        r = s.raw("POST", path, content=('{"model": "gpt-test", "messages": [{"content": "'
                                         + c(f"e400.invalid-json{path}")).encode(),
                  headers={"Content-Type": "application/json"})
        assert r.status_code == 400
        r = s.raw("POST", path, json=[c(f"e400.json-array{path}")])
        assert r.status_code == 400
        r = s.raw("POST", path, json=12.5)
        assert r.status_code == 400
    # rejected labels: a project or tags the relay refuses is stored nowhere
    with pytest.raises(openai.BadRequestError):
        s.chat(s.chat_body("e400.project"), **{"X-Relay-Project": c("e400.project-value") + " x"})
    with pytest.raises(openai.BadRequestError):
        s.chat(s.chat_body("e400.tags"), **{"X-Relay-Tags": f"ok,{c('e400.tags-value')}!"})
    with pytest.raises(anthropic.BadRequestError):
        s.messages(s.messages_body("e400.tags-many"),
                   **{"X-Relay-Tags": ",".join(c(f"e400.tags-many-{i}") for i in range(11))})

    # -- 404 and 405 at the path
    with pytest.raises(openai.NotFoundError):
        s.openai().models.retrieve(c("path.models-id"))
    with pytest.raises(anthropic.NotFoundError):
        s.anthropic().models.retrieve(c("path.models-id-anthropic"))
    assert s.raw("GET", "/v1/models/" + c("path.models-id-raw") + "/more").status_code == 404
    assert s.raw("POST", "/v1/" + c("path.unknown")).status_code == 404
    assert s.raw("GET", "/v1/chat/completions").status_code == 405
    _, allow = make_key(name="allowlist", models=["gpt-test"])
    with pytest.raises(openai.NotFoundError):  # a model this key may not use
        s.chat(s.chat_body("e404.not-allowed", model="claude-test"), client=s.openai(key=allow))

    # -- 429 from the relay's own limits: requests, then tokens
    # (One client per key: its kept-alive connection stays on one server process,
    # whose counters are its own unless the limits are in Redis. The windows are
    # whole minutes: not across the end of one.)
    while time.time() % 60 > 55:
        time.sleep(0.2)
    _, slow = make_key(name="limited", rpm_limit=1)
    slow = s.openai(key=slow)
    s.chat(s.chat_body("e429.first"), client=slow)
    with pytest.raises(openai.RateLimitError):
        s.chat(s.chat_body("e429.rpm"), client=slow)
    with pytest.raises(openai.RateLimitError):
        s.chat(s.chat_body("e429.rpm-stream", stream=True), client=slow)
    _, thin = make_key(name="few tokens", tpm_limit=1)
    thin = s.anthropic(key=thin)
    s.messages(s.messages_body("e429.tpm-first"), client=thin)
    with pytest.raises(anthropic.RateLimitError):
        s.messages(s.messages_body("e429.tpm"), client=thin)

    # -- the provider refuses (4xx quoting the prompt: to the client only) or fails (5xx, 429)
    fake.push_fault(status=400, message=c("provider.400-message"))
    with pytest.raises(openai.BadRequestError) as e:
        s.chat(s.chat_body("provider.400"))
    assert c("provider.400-message") in str(e.value)
    fake.push_fault(status=422, message=c("provider.422-message"))
    with pytest.raises(anthropic.UnprocessableEntityError):
        s.messages(s.messages_body("provider.422"))
    fake.push_fault(status=400, message=c("provider.400-translated-message"))
    with pytest.raises(anthropic.BadRequestError):
        s.messages(s.messages_body("provider.400-translated", model="gpt-test", stream=True))
    fake.push_fault(status=401, message=c("provider.401-message"))
    with pytest.raises(openai.APIStatusError):
        s.chat(s.chat_body("provider.401"))
    fake.push_fault(status=500, message=c("provider.500-message"))
    with pytest.raises(openai.APIStatusError):
        s.chat(s.chat_body("provider.500"))
    fake.push_fault(status=503, message=c("provider.503-message"))
    with pytest.raises(anthropic.APIStatusError):
        s.messages(s.messages_body("provider.503", stream=True))
    fake.push_fault(status=429, message=c("provider.429-message"))
    with pytest.raises(openai.RateLimitError):
        s.chat(s.chat_body("provider.429", stream=True))
    fake.push_fault(status=500, message=c("provider.500-fallback-message"))
    assert s.chat(s.chat_body("provider.500-fallback", model="fallback-test"))["choices"]

    # -- mid-stream failures: the provider's error event quoting the prompt, and a dropped stream
    for model in ("gpt-test", "claude-test"):
        fake.push_fault(error_after=2, message=c(f"stream.error-message.{model}"))
        with pytest.raises(openai.APIError):
            s.chat(s.chat_body(f"stream.error.{model}", model=model, stream=True))
        fake.push_fault(error_after=2, message=c(f"stream.error-message-anthropic.{model}"))
        with pytest.raises(anthropic.APIError):
            s.messages(s.messages_body(f"stream.error-anthropic.{model}", model=model, stream=True))
        fake.push_fault(drop_after=2)
        with pytest.raises((openai.APIError, httpx.TransportError)):
            s.chat(s.chat_body(f"stream.drop.{model}", model=model, stream=True))
        fake.push_fault(drop_after=1)
        with pytest.raises(anthropic.APIError):
            s.messages(s.messages_body(f"stream.cut.{model}", model=model))
    # the client goes away mid-stream
    fake.push_fault(chunk_delay=0.05, chunks=40)
    with httpx.Client(timeout=10) as client, client.stream(
            "POST", s.url + "/v1/chat/completions", json=s.chat_body("stream.client-gone", stream=True),
            headers={**s.headers, "Authorization": f"Bearer {s.key}"}) as resp:
        for line in resp.iter_lines():
            if line.startswith("data:"):
                break

    # -- 413: a body over the size limit, on a relay with a small one
    if small_url is not None:
        big = json.dumps({"model": "gpt-test", "messages": [{"role": "user", "content": c("e413.body") * 70_000}],
                          "user": c("e413.user")}).encode()
        try:
            r = httpx.post(small_url + "/v1/chat/completions", content=big, params=s.query,
                           headers={**s.headers, "Authorization": f"Bearer {s.key}",
                                    "Content-Type": "application/json"}, timeout=10)
            assert r.status_code == 413
        except httpx.TransportError:
            pass  # the server may close before reading the whole upload; still nothing may be kept


def settle(app, user_id: int, quiet: float = 0.3, timeout: float = 10) -> int:
    """Wait until every request's usage row is written (streams end a moment after the client)."""
    from app.models import UsageRecord

    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        if "meter" in app.extensions:
            app.extensions["meter"].flush(10)
        with app.app_context():
            n = db.session.scalar(sa.select(sa.func.count()).select_from(UsageRecord)
                                  .where(UsageRecord.user_id == user_id))
            db.session.remove()
        if n != last:
            last, since = n, time.monotonic()
        elif time.monotonic() - since > quiet:
            return n
        time.sleep(0.05)
    return last


def assert_scanned(found) -> None:
    assert found.covered("log:sqlalchemy.engine") and found.covered("table:usage_records.")
    if BACKEND == "sqlite":
        assert found.covered("db-file:.db")
    else:
        assert found.covered("redis:"), "the rate-limit store was read"


def assert_labels_kept_and_nothing_else(book: Canaries, found, s: Sender) -> None:
    assert_scanned(found)
    assert found.covered("file:spool/")
    allowed = labels_allowed(book, s.project, s.tag)
    bad = unexpected(found, allowed)
    assert bad == {}, f"client text kept where it must not be: {bad}"
    # the scan sees a canary where one is (so an empty result is not an accident)
    assert "table:usage_records.project" in found.get("label.project", set()), found
    assert "table:usage_records.tags" in found.get("label.tag", set()), found


@pytest.mark.promise("P23")
def test_every_field_header_and_path_reaches_the_client_only(relay, relay_factory, fake, all_logs, capfd):
    book = Canaries()
    small = relay_factory(RELAY_MAX_BODY_MB="1")
    s = Sender(relay.url, relay.key, book)
    drive(s, fake, relay.make_key, small_url=small.url)

    # Headers no HTTP client sends (a trailing newline in a label, a NUL), straight into the WSGI app.
    client = relay.app.test_client()
    for name, value in (("X-Relay-Project", book("e400.project-newline") + "\n"),
                        ("X-Relay-Project", book("e400.project-nul") + "\x00"),
                        ("X-Relay-Tags", f"ok,{book('e400.tags-newline')}\n,x y")):
        r = client.post("/v1/chat/completions", json=s.chat_body(f"wsgi.{name}"),
                        headers={"Authorization": f"Bearer {relay.key}", **s.headers},
                        environ_overrides={"HTTP_" + name.upper().replace("-", "_"): value})
        assert r.status_code == 400, (name, r.status_code, r.get_data(as_text=True))
    r = client.post("/v1/chat/completions", json=s.chat_body("wsgi.tags-trailing-newline"),
                    headers={"Authorization": f"Bearer {relay.key}", **s.headers},
                    environ_overrides={"HTTP_X_RELAY_TAGS": "fine\n"})
    assert r.status_code == 200

    assert settle(relay.app, relay.user_id) >= 40
    found = scan_all(book, [relay.app, small.app], all_logs, capfd)
    assert_labels_kept_and_nothing_else(book, found, s)


# ---- the same through the server processes `make run` starts --------------------------------

@pytest.mark.promise("P23")
def test_served_as_make_run_serves_it_nothing_reaches_its_output(make_app, database_url, tmp_path, fake,
                                                                  all_logs, capfd):
    """scripts/serve.sh (migrations, policy sync, the server with two workers) at
    LOG_LEVEL=DEBUG: the relay's paths and the portal's sign-in forms over real
    HTTP, then the server's own stdout and stderr are scanned with the rest."""
    from tests.conftest import csrf_from

    book = Canaries()
    app = make_app()
    with app.app_context(), app.test_request_context():
        user = User(email="served@example.com", email_key="served@example.com",
                    password_hash=hash_password("correct horse battery"), age_confirmed_at=utcnow(),
                    email_verified_at=utcnow())
        db.session.add(user)
        db.session.flush()
        user_id = user.id
        _, raw = key_service.create(user, "served")
        db.session.commit()

    def make_key(**kw):
        with app.app_context(), app.test_request_context():
            k, secret = key_service.create(db.session.get(User, user_id), kw.pop("name"), **kw)
            db.session.commit()
            return k.id, secret

    providers = tmp_path / "providers.toml"
    providers.write_text(PROVIDERS.format(fake=fake.base_url, dead_port=free_port()))
    served = Served(database_url, tmp_path / "served", PROVIDERS_FILE=str(providers), LOG_LEVEL="DEBUG",
                    RELAY_TEST_OPENAI_KEY=UPSTREAM_KEY, RELAY_TEST_ANTHROPIC_KEY=UPSTREAM_KEY,
                    RELAY_MAX_BODY_MB="1", MAIL_TRANSPORT="file", MAIL_WORKER="thread",
                    RATELIMIT_STORAGE_URI=app.config["RATELIMIT_STORAGE_URI"])
    served.start()
    try:
        s = Sender(served.url, raw, book)
        drive(s, fake, make_key, small_url=served.url)

        # The portal over real HTTP: sign-up with a typed address (stored, and mailed to it),
        # sign-in attempts, a JSON body to a form, odd numbers, cookies and headers.
        address = book("portal.signup-email") + "@example.com"
        # Canary cookies beside the session cookie (a Cookie header of our own would replace it).
        headers = {k: v for k, v in s.headers.items() if k != "Cookie"}
        cookies = {"zl_probe": book("portal.cookie-arbitrary"), "pref_theme": book("portal.cookie-theme"),
                   "pref_range": book("portal.cookie-range")}
        with httpx.Client(base_url=served.url, headers=headers, cookies=cookies, timeout=10) as web:
            token = csrf_from(web.get("/signup", params=s.query).text)
            r = web.post("/signup", data={"csrf_token": token, "email": address, "password": book("portal.password"),
                                          "age_ok": "y", "accept_policy": "y"})
            assert r.status_code == 302, r.text[:300]
            token = csrf_from(web.get("/login").text)
            r = web.post("/login", data={"csrf_token": token, "email": book("portal.login-email") + "@example.com",
                                         "password": book("portal.login-password")})
            assert r.status_code == 200 and "do not match" in r.text
            r = web.post("/login", json={"email": book("portal.json-email"), "password": [book("portal.json-pw")]},
                         headers={"X-CSRFToken": token})
            assert r.status_code == 415
            r = web.post("/forgot", data={"csrf_token": book("portal.csrf"), "email": book("portal.forgot")})
            assert r.status_code == 400
            assert web.get("/privacy/versions/99999999999999999999", params=s.query).status_code == 404
            assert web.get("/privacy-center/access-log", params={"page": "١٢"}).status_code in (200, 302)
            odd = f"pref_range=١٢{book('portal.cookie-digits')}; session={book('portal.cookie-session')}".encode()
            assert web.get("/privacy", headers={"Cookie": odd}).status_code == 200
            assert web.get("/reset/" + book("portal.reset-token")).status_code == 400
            assert web.get("/usage/", params={"model": book("portal.nul") + "\x00"}).status_code < 500
        deadline = time.monotonic() + 10
        while not list((served.instance / "mail").glob("*.eml")) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert list((served.instance / "mail").glob("*.eml")), "the signup mail was written"
        assert settle(app, user_id) >= 40
    finally:
        served.stop()
    log = served.log()
    assert served.started_workers() >= 2, log[-2000:]  # the server's own output was captured

    found = scan_all(book, [app], all_logs, capfd, extra={"server-output": log},
                     folders={"served": served.instance})
    assert_scanned(found)
    assert found.covered("server-output") and found.covered("served:spool/") and found.covered("served:mail/")
    allowed = labels_allowed(book, s.project, s.tag)
    allowed[book.label_of(s.project)] += ("served:spool/*",)  # the served processes' own spool
    allowed[book.label_of(s.tag)] += ("served:spool/*",)
    # An address typed at signup opens the account: kept in its columns, mailed to it
    # (MAIL_TRANSPORT=file writes the mail into the instance folder).
    allowed[book.label_of(address)] = ("table:users.email", "table:users.email_key",
                                       "table:outbox_messages.to_addr", "db-file:*", "served:mail/*")
    bad = unexpected(found, allowed)
    assert bad == {}, f"client text kept where it must not be: {bad}"
    assert "table:usage_records.project" in found.get("label.project", set()), found
    assert any(p.startswith("served:mail/") for p in found.get("portal.signup-email", ())), found


@pytest.mark.promise("P23")
def test_with_the_access_log_on_no_token_or_client_text_is_logged(make_app, database_url, tmp_path):
    """`ACCESS_LOG=1 make run` logs a line per request. A path can be a secret
    (/reset/<token>, /login/link/<token>, an export's download link) or client
    text (/v1/models/<anything>): the line may name the method, status and
    time, not the path."""
    book = Canaries()
    make_app()  # the database is emptied after the test
    served = Served(database_url, tmp_path / "served", workers=1, ACCESS_LOG="1").start()
    try:
        for path in ("/reset/", "/login/link/", "/verify/", "/privacy-center/export/download/",
                     "/privacy-center/unsubscribe/", "/staff/verify/", "/privacy-center/delete/cancel/",
                     "/v1/models/"):
            r = httpx.get(served.url + path + book(f"access-log{path}"), params={"next": book(f"query{path}")},
                          headers={"Authorization": "Bearer " + book(f"bearer{path}")}, timeout=10)
            assert r.status_code in (302, 400, 401, 404), (path, r.status_code)
    finally:
        served.stop()
    log = served.log()
    assert '" 400 ' in log or '" 401 ' in log, "the access log is on"
    found = book.find(log.encode())
    assert found == set(), f"in the server's access log: {sorted(found)}"
