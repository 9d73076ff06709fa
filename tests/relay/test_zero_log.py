"""Zero-log (P23): a canary string sent through every endpoint, streaming and
not, in both API shapes and both translation directions, on success and on
each error path, reaches the client and nothing else: not a log record, not a
database row or the database's files, not a file under the instance folder,
not the rate-limit store, not the server's stdout or stderr."""
from __future__ import annotations

import json
import logging
import os
import time
import uuid
from pathlib import Path

import anthropic
import httpx2 as httpx
import openai
import pytest
import sqlalchemy as sa

from app.extensions import db

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "x",
                                            "parameters": {"type": "object", "properties": {}}}}
A_WEATHER = {"name": "get_weather", "description": "x", "input_schema": {"type": "object", "properties": {}}}


# Loggers of the client side of these tests (the SDKs and their HTTP stack) run
# in this process too; they are the caller, not the relay.
CLIENT_LOGGERS = {"openai", "anthropic", "httpx", "httpx2", "httpcore", "httpcore2"}


class Canary:
    def __init__(self):
        self.hex = uuid.uuid4().hex
        self.text = "CANARY-" + self.hex
        # The distinctive part in the forms it could be stored in.
        self.needles = [self.hex.encode(), self.hex.upper().encode(), self.hex.encode("utf-16-le")]

    def found_in(self, data: bytes) -> bool:
        return any(n in data for n in self.needles)


def _drain(stream) -> str:
    text = ""
    for chunk in stream:
        for c in getattr(chunk, "choices", ()):
            text += c.delta.content or ""
    return text


def _all_paths(relay, fake, c: Canary) -> None:
    """Every endpoint and path, each with the canary in the request (and, where
    the fake can, in the provider's answer and error bodies)."""
    oai, ant = relay.openai(), relay.anthropic()
    msg = [{"role": "system", "content": f"system {c.text}"}, {"role": "user", "content": f"say {c.text}"}]
    amsg = [{"role": "user", "content": f"say {c.text}"}]
    heads = {"X-Relay-Project": "zero-log", "X-Relay-Tags": "canary-run"}

    # -- successes: OpenAI shape, to an OpenAI provider and (translated) to an Anthropic one
    for model in ("gpt-test", "claude-test", "fallback-test"):
        r = oai.chat.completions.create(model=model, messages=msg, stop=[c.text + "-STOP"], user=c.text[:60],
                                        extra_headers=heads)
        assert c.text in r.choices[0].message.content
        assert c.text in _drain(oai.chat.completions.create(model=model, messages=msg, stream=True))
        assert c.text in _drain(oai.chat.completions.create(model=model, messages=msg, stream=True,
                                                            stream_options={"include_usage": True}))
        # tools: the canary in a tool result and in the arguments the model returns
        call = oai.chat.completions.create(model=model, tools=[WEATHER], messages=[
            {"role": "user", "content": f"weather {c.text}"}]).choices[0].message.tool_calls[0]
        call.function.arguments = json.dumps({"city": c.text})
        r = oai.chat.completions.create(model=model, tools=[WEATHER], messages=[
            {"role": "user", "content": f"weather {c.text}"},
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": c.text}])
        assert r.choices[0].message.content
        _drain(oai.chat.completions.create(model=model, tools=[WEATHER], stream=True,
                                           messages=[{"role": "user", "content": f"weather {c.text}"}]))
    # the provider's answer itself carries the canary
    fake.push_fault(reply=f"answer {c.text}")
    assert c.text in oai.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}]) \
        .choices[0].message.content
    fake.push_fault(reply=f"answer {c.text}")
    assert c.text in _drain(oai.chat.completions.create(model="claude-test", stream=True,
                                                        messages=[{"role": "user", "content": "hi"}]))

    # -- successes: Anthropic shape, to an Anthropic provider and (translated) to an OpenAI one
    for model in ("claude-test", "gpt-test"):
        m = ant.messages.create(model=model, max_tokens=200, system=f"sys {c.text}", messages=amsg,
                                stop_sequences=[c.text + "-STOP"], extra_headers=heads)
        assert c.text in m.content[0].text
        with ant.messages.stream(model=model, max_tokens=200, system=f"sys {c.text}", messages=amsg) as s:
            assert c.text in s.get_final_message().content[0].text
        use = ant.messages.create(model=model, max_tokens=200, tools=[A_WEATHER],
                                  messages=[{"role": "user", "content": f"weather {c.text}"}]).content[0]
        ant.messages.create(model=model, max_tokens=200, tools=[A_WEATHER], messages=[
            {"role": "user", "content": f"weather {c.text}"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": use.id, "name": use.name,
                                               "input": {"city": c.text}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": c.text}]}])
        with ant.messages.stream(model=model, max_tokens=200, tools=[A_WEATHER],
                                 messages=[{"role": "user", "content": f"weather {c.text}"}]) as s:
            s.get_final_message()

    # -- the Responses API: passed through and translated, whole and streamed, with a tool,
    #    and the refusals that name a field (stored state, what Claude cannot carry)
    for model in ("gpt-test", "claude-test"):
        r = oai.responses.create(model=model, input=c.text, instructions=f"be brief {c.text}")
        assert c.text in r.output_text
        with oai.responses.stream(model=model, input=[{"role": "user", "content": c.text}]) as rs:
            assert c.text in rs.get_final_response().output_text
        oai.responses.create(model=model, input=f"weather in {c.text}", tools=[{
            "type": "function", "name": "get_weather", "description": c.text,
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}])
        with pytest.raises(openai.BadRequestError):
            oai.responses.create(model=model, input=c.text, previous_response_id=f"resp_{c.hex}")
    with pytest.raises(openai.BadRequestError):
        oai.responses.create(model="claude-test", input=c.text, tools=[{"type": "web_search"}])
    fake.push_fault(status=400, message=f"bad prompt: {c.text}")
    with pytest.raises(openai.BadRequestError):
        oai.responses.create(model="gpt-test", input=c.text)
    ant.messages.count_tokens(model="claude-test", messages=amsg)

    # -- models: listed, and looked up by a name that is the canary
    assert {m.id for m in oai.models.list()} >= {"gpt-test", "claude-test"}
    with pytest.raises(openai.NotFoundError):
        oai.models.retrieve(c.text)
    with pytest.raises(anthropic.NotFoundError):
        ant.models.retrieve(c.text)

    # -- embeddings
    oai.embeddings.create(model="embed-test", input=[c.text, f"more {c.text}"])
    oai.embeddings.create(model="embed-test", input=c.text, encoding_format="float")

    # -- the provider refuses, quoting the prompt back (passed to the client, kept nowhere)
    fake.push_fault(status=400, message=f"bad prompt: {c.text}")
    with pytest.raises(openai.BadRequestError) as e:
        oai.chat.completions.create(model="gpt-test", messages=msg)
    assert c.text in e.value.message
    fake.push_fault(status=400, message=f"bad prompt: {c.text}")
    with pytest.raises(openai.BadRequestError):
        oai.chat.completions.create(model="gpt-test", messages=msg, stream=True)
    fake.push_fault(status=400, message=f"bad prompt: {c.text}")
    with pytest.raises(openai.BadRequestError):
        oai.chat.completions.create(model="claude-test", messages=msg)
    fake.push_fault(status=400, message=f"bad prompt: {c.text}")
    with pytest.raises(anthropic.BadRequestError) as ae:
        ant.messages.create(model="claude-test", max_tokens=10, messages=amsg)
    assert c.text in ae.value.body["error"]["message"]
    fake.push_fault(status=400, message=f"bad prompt: {c.text}")
    with pytest.raises(anthropic.BadRequestError):
        ant.messages.create(model="gpt-test", max_tokens=10, messages=amsg, stream=True)
    fake.push_fault(status=400, message=f"bad input: {c.text}")
    with pytest.raises(openai.BadRequestError):
        oai.embeddings.create(model="embed-test", input=c.text)
    fake.push_fault(status=401, message=f"who are you {c.text}")
    with pytest.raises(openai.APIStatusError):
        oai.chat.completions.create(model="gpt-test", messages=msg)
    fake.push_fault(status=422, message=f"unprocessable {c.text}")
    with pytest.raises(anthropic.UnprocessableEntityError):
        ant.messages.create(model="claude-test", max_tokens=10, messages=amsg)

    # -- 5xx and 429 quoting the prompt: drained and dropped, then fallback
    fake.push_fault(status=500, message=f"crashed on {c.text}")
    assert c.text in oai.chat.completions.create(model="fallback-test", messages=msg).choices[0].message.content
    fake.push_fault(status=429, message=f"slow down {c.text}")
    with ant.messages.stream(model="fallback-test", max_tokens=100, messages=amsg) as s:
        assert c.text in s.get_final_message().content[0].text
    fake.push_fault(status=500, message=f"crashed on {c.text}")
    fake.push_fault(status=503, message=f"overloaded by {c.text}")
    with pytest.raises(openai.APIStatusError):
        oai.chat.completions.create(model="fallback-test", messages=msg, stream=True)
    fake.push_fault(status=429, message=f"slow down {c.text}")
    with pytest.raises(anthropic.RateLimitError):
        ant.messages.create(model="claude-test", max_tokens=10, messages=amsg)

    # -- broken streams: dropped mid-way, and the provider's own in-stream error quoting the prompt
    for model in ("gpt-test", "claude-test"):
        fake.push_fault(drop_after=3)
        with pytest.raises(openai.APIError):
            _drain(oai.chat.completions.create(model=model, messages=msg, stream=True))
        fake.push_fault(drop_after=3)
        with pytest.raises(anthropic.APIError):
            with ant.messages.stream(model=model, max_tokens=100, messages=amsg) as s:
                s.get_final_message()
        fake.push_fault(error_after=3, message=f"stream died at {c.text}")
        with pytest.raises(openai.APIError) as e:
            _drain(oai.chat.completions.create(model=model, messages=msg, stream=True))
        assert c.text in str(e.value)
        fake.push_fault(error_after=3, message=f"stream died at {c.text}")
        with pytest.raises(anthropic.APIError):
            with ant.messages.stream(model=model, max_tokens=100, messages=amsg) as s:
                s.get_final_message()
        fake.push_fault(drop_after=1)  # a non-streamed answer cut in half
        with pytest.raises(openai.APIStatusError):
            oai.chat.completions.create(model=model, messages=msg)

    # -- the client goes away mid-stream
    fake.push_fault(chunk_delay=0.05, chunks=40)
    with httpx.Client(timeout=10) as client:
        with client.stream("POST", relay.url + "/v1/chat/completions",
                           json={"model": "gpt-test", "stream": True, "messages": msg},
                           headers={"Authorization": f"Bearer {relay.key}"}) as resp:
            for line in resp.iter_lines():
                if line.startswith("data:"):
                    break

    # -- requests the relay refuses itself
    raw_headers = {"Authorization": f"Bearer {relay.key}", "Content-Type": "application/json"}
    for path in ("/v1/chat/completions", "/v1/messages", "/v1/embeddings"):
        cut_short = f'{{"model": "gpt-test", "messages": [{{"role": "user", "content": "{c.text}"'
        r = httpx.post(relay.url + path, headers=raw_headers, content=cut_short.encode())
        assert r.status_code == 400
        r = httpx.post(relay.url + path, headers=raw_headers, content=json.dumps([c.text]).encode())
        assert r.status_code == 400
    with pytest.raises(openai.BadRequestError):  # an invalid project header
        oai.chat.completions.create(model="gpt-test", messages=msg, extra_headers={"X-Relay-Project": f"{c.text} x"})
    with pytest.raises(openai.BadRequestError):  # invalid tags
        oai.chat.completions.create(model="gpt-test", messages=msg, extra_headers={"X-Relay-Tags": f"ok,{c.text}"})
    with pytest.raises(anthropic.BadRequestError):
        ant.messages.create(model="claude-test", max_tokens=5, messages=amsg,
                            extra_headers={"X-Relay-Tags": c.text + "!"})
    with pytest.raises(openai.BadRequestError):  # untranslatable: a role that is the canary
        oai.chat.completions.create(model="claude-test", messages=[{"role": c.text, "content": c.text}])
    with pytest.raises(anthropic.BadRequestError):
        ant.messages.create(model="gpt-test", max_tokens=5, messages=[{"role": c.text, "content": c.text}])
    with pytest.raises(openai.BadRequestError):  # missing messages, canary elsewhere in the body
        oai.post("/chat/completions", body={"model": "gpt-test", "prompt": c.text}, cast_to=object)
    with pytest.raises(anthropic.BadRequestError):  # missing max_tokens
        ant.post("/v1/messages", body={"model": "claude-test", "messages": amsg}, cast_to=object)
    _, allow = relay.make_key(name="allowlist", models=["gpt-test"])
    with pytest.raises(openai.NotFoundError):  # a model this key may not use
        relay.openai(allow).chat.completions.create(model="claude-test", messages=msg)
    _, slow = relay.make_key(name="limited", rpm_limit=1)
    relay.openai(slow).chat.completions.create(model="gpt-test", messages=msg)
    with pytest.raises(openai.RateLimitError):
        relay.openai(slow).chat.completions.create(model="gpt-test", messages=msg)
    with pytest.raises(openai.AuthenticationError):  # the canary as a key
        relay.openai(c.text).chat.completions.create(model="gpt-test", messages=msg)
    with pytest.raises(anthropic.AuthenticationError):
        relay.anthropic(c.text).messages.create(model="claude-test", max_tokens=5, messages=amsg)
    r = httpx.post(relay.url + "/v1/messages", json={"model": "claude-test", "max_tokens": 5, "messages": amsg},
                   headers={"x-api-key": c.text})
    assert r.status_code == 401


def _settle(relay, quiet: float = 0.3, timeout: float = 10) -> None:
    """Wait until every request's row is written (streams finish a moment after the client)."""
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        n = len(relay.rows())
        if n != last:
            last, since = n, time.monotonic()
        elif time.monotonic() - since > quiet:
            return
        time.sleep(0.05)


def read_locked_file(path: Path) -> bytes:
    """The bytes of a file SQLite has open, read by another process. SQLite's
    locks are POSIX record locks, which a process loses on *every* descriptor of
    the file when it closes any one of them: reading the database here would
    drop the locks of this process's open connections, and the next writer in
    another process (a served worker) would checkpoint the WAL under them."""
    import subprocess

    return subprocess.run(["cat", str(path)], capture_output=True, check=True).stdout


def _files(root: Path):
    for dirpath, _, names in os.walk(root):
        for name in names:
            p = Path(dirpath) / name
            if p.is_file() and not p.is_symlink():
                yield p


def _scan(apps, caplog, capfd, c: Canary) -> list[str]:
    """Everything the relay could have kept; returns where the canary was found."""
    leaks = []
    # every log record: message, arguments, exception text
    fmt = logging.Formatter()
    for rec in caplog.records:
        if rec.name.split(".")[0] in CLIENT_LOGGERS:
            continue  # the test's own SDK clients, which log what they send at DEBUG
        parts = [str(rec.msg), repr(rec.args), rec.getMessage(), rec.exc_text or "", rec.stack_info or ""]
        if rec.exc_info:
            parts.append(fmt.formatException(rec.exc_info))
        if c.found_in("\n".join(parts).encode()):
            leaks.append(f"log record {rec.name}:{rec.levelname}")
    out, err = capfd.readouterr()
    if c.found_in(out.encode()):
        leaks.append("stdout")
    if c.found_in(err.encode()):
        leaks.append("stderr")

    app = apps[0]
    with app.app_context():
        engine = db.engine
        # every table, every row (SQLite and PostgreSQL)
        with engine.connect() as conn:
            for table in db.metadata.sorted_tables:
                for row in conn.execute(sa.select(table)):
                    if c.found_in(repr(tuple(row)).encode()):
                        leaks.append(f"table {table.name}")
                        break
        url = sa.engine.make_url(app.config["SQLALCHEMY_DATABASE_URI"])
        if engine.dialect.name == "sqlite":
            base = Path(url.database)
            for p in (base, *(Path(str(base) + s) for s in ("-wal", "-journal", "-shm"))):
                if p.exists() and c.found_in(read_locked_file(p)):
                    leaks.append(f"database file {p}")
            assert base.exists() and base.stat().st_size > 0
        else:
            with engine.connect() as conn:
                conn.execute(sa.text("CHECKPOINT"))
                data_dir = Path(conn.execute(sa.text("SHOW data_directory")).scalar())
            for root in (data_dir, data_dir.parent):
                for p in (_files(root) if root == data_dir else [root / "log"]):
                    try:
                        if p.exists() and c.found_in(p.read_bytes()):
                            leaks.append(f"postgres file {p}")
                    except OSError:
                        pass
        storage = app.config["RATELIMIT_STORAGE_URI"]
        if storage.startswith("redis"):
            import redis
            r = redis.Redis.from_url(storage)
            for key in r.scan_iter():
                if c.found_in(key) or c.found_in(r.dump(key) or b""):
                    leaks.append(f"redis key {key!r}")
        db.engine.dispose()
    # every file under each app's instance folder
    for a in apps:
        for p in _files(Path(a.instance_path)):
            if c.found_in(p.read_bytes()):
                leaks.append(f"instance file {p}")
    return leaks


@pytest.fixture
def all_logs(caplog):
    """Every logger at DEBUG for the test, werkzeug's included."""
    yield from capture_all_logs(caplog)


def capture_all_logs(caplog):
    """The body of the `all_logs` fixture, for the other zero-log modules'
    own fixture of that name."""
    caplog.set_level(logging.DEBUG)
    for name in ["werkzeug", "app", "app.relay", "sqlalchemy", "urllib3", *logging.root.manager.loggerDict]:
        if name.split(".")[0] not in CLIENT_LOGGERS:
            caplog.set_level(logging.DEBUG, logger=name)
    # The clients quiet, so that they write nothing to stderr either. (Not with
    # caplog.set_level: that would also raise the capture handler's level.)
    saved = {name: logging.getLogger(name).level for name in CLIENT_LOGGERS}
    for name in CLIENT_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    yield caplog
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)


@pytest.mark.promise("P23")
def test_canary_reaches_the_client_and_nothing_else(relay, relay_factory, fake, all_logs, capfd):
    c = Canary()
    mark = relay.mark()
    _all_paths(relay, fake, c)

    # A body over the size limit, on a relay with a small one.
    small = relay_factory(RELAY_MAX_BODY_MB="1")
    big = json.dumps({"model": "gpt-test", "messages": [{"role": "user", "content": c.text * 30_000}]})
    try:
        r = httpx.post(small.url + "/v1/chat/completions", content=big.encode(),
                       headers={"Authorization": f"Bearer {small.key}", "Content-Type": "application/json"})
        assert r.status_code == 413 and r.headers["x-request-id"], (r.status_code, r.headers, r.text)
    except httpx.TransportError:
        pass  # the server may close before reading the whole upload; still nothing may be kept
    # and the same canary through a normal call on it
    assert c.text in small.anthropic().messages.create(
        model="claude-test", max_tokens=100, messages=[{"role": "user", "content": c.text}]).content[0].text

    _settle(relay)
    rows = relay.rows()[mark:]
    assert len(rows) == 81  # one row for each request above that got past authentication
    assert {r.usage_source for r in rows} == {"provider", "estimated", "none"}
    assert all(r.project in (None, "zero-log") for r in rows)
    assert caplog_sanity(all_logs)

    leaks = _scan([relay.app, small.app], all_logs, capfd, c)
    assert leaks == [], f"the canary leaked to: {leaks}"


def caplog_sanity(caplog) -> bool:
    """The capture works: a DEBUG record from an app logger is seen (so an empty
    scan is not an accident of log levels)."""
    logging.getLogger("app.relay.routes").debug("zero-log capture check")
    return any(r.getMessage() == "zero-log capture check" for r in caplog.records)


# ---- many canaries at once, for the field-by-field tests ---------------------------------
#
# tests/relay/test_zero_log_fields.py and tests/web/test_zero_log_portal.py put a
# different canary into every field, header, cookie and path segment, so that a
# leak names the field it came from and the place it went to. Every canary of one
# book shares a random run id: a scan looks for that id (in the encodings a store
# could use) and reads the field's number after it.

# The other end of the mail the app sends: the test's SMTP server logs what it
# receives at DEBUG, like a person's mailbox would keep it.
RECEIVER_LOGGERS = {"mail"}
# SQLAlchemy's DEBUG echo repeats result rows: what the database already holds,
# read back (production never runs the engine logger below WARNING). Rows are
# scanned in the tables themselves; a value meant to be stored (a name) is
# therefore allowed in these records, and nothing else is.
ROW_ECHO = ("Row ", "Col ")


class Canaries:
    """A book of canaries: `book("login.password")` gives the canary of that field
    (the same one each time it is asked for)."""

    def __init__(self):
        self.run = uuid.uuid4().hex[:12]
        self.labels: list[str] = []
        self.literals: dict[bytes, str] = {}
        self._forms = [(self.run.encode(), "ascii"), (self.run.upper().encode(), "ascii"),
                       (self.run.encode("utf-16-le"), "utf-16-le"),
                       (self.run.upper().encode("utf-16-le"), "utf-16-le")]

    def __call__(self, label: str) -> str:
        if label not in self.labels:
            self.labels.append(label)
        return f"zlc{self.run}{self.labels.index(label):04d}"  # lower case: survives address normalization

    def secret(self, label: str, text: str) -> str:
        """Also look for a value the app made (a key, a token, a code): found
        under `label`, like a canary."""
        assert len(text) >= 8, "too short to look for"
        self.literals[text.encode()] = label
        self.literals[text.encode("utf-16-le")] = label
        return text

    def label_of(self, text: str) -> str:
        """The label of the one canary in `text`."""
        (label,) = self.find(text.encode()) or {None}
        assert label is not None, f"no canary in {text!r}"
        return label

    def find(self, data: bytes) -> set[str]:
        """The labels of every canary in `data` ("?" for one cut short after the run id)."""
        found: set[str] = set()
        for needle, enc in self._forms:
            width = 2 if enc == "utf-16-le" else 1
            start = data.find(needle)
            while start >= 0:
                tail = data[start + len(needle): start + len(needle) + 4 * width].decode(enc, "replace")
                found.add(self.labels[int(tail)] if tail.isdigit() and int(tail) < len(self.labels) else "?")
                start = data.find(needle, start + 1)
        for literal, label in self.literals.items():
            if literal in data:
                found.add(label)
        return found


def _bytes(value) -> bytes:
    if value is None:
        return b""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    return str(value).encode("utf-8", "surrogatepass")


class Found(dict):
    """{label: {location, ...}}, and `scanned`: every location that was read."""

    def __init__(self):
        super().__init__()
        self.scanned: set[str] = set()

    def covered(self, prefix: str) -> bool:
        return any(s.startswith(prefix) for s in self.scanned)


def scan_all(book: Canaries, apps, caplog=None, capfd=None, *, mailbox=None, extra: dict | None = None,
             folders: dict | None = None, skip_loggers=frozenset()) -> Found:
    """Every place the app could have kept something, and the canaries found in each.

    Returns {label: {location, ...}}. Locations: ``log:<logger>`` (every captured
    record: message, arguments, exception and stack text), ``log-row-echo``
    (SQLAlchemy's DEBUG echo of result rows), ``stdout``/``stderr`` of this
    process, ``table:<table>.<column>`` (every row, every column, as text),
    ``db-file:<suffix>`` (SQLite's .db, -wal, -shm, -journal), ``redis:<key>``
    (key or value of the rate-limit store), ``file:<path under the instance
    folder>`` (zip members too, as ``file:<path>!<member>``; other folders as
    ``<name>:<path>`` for each name in `folders`), ``smtp:<to>`` (mail received by
    the test's SMTP server), and the names in `extra` (e.g. a served process's
    output)."""
    import zipfile

    found = Found()

    def note(where: str, data: bytes) -> None:
        found.scanned.add(where)
        for label in book.find(data):
            found.setdefault(label, set()).add(where)

    if caplog is not None:
        fmt = logging.Formatter()
        for rec in caplog.records:
            top = rec.name.split(".")[0]
            if top in CLIENT_LOGGERS or top in RECEIVER_LOGGERS or rec.name in skip_loggers:
                continue
            parts = [str(rec.msg), repr(rec.args), rec.getMessage(), rec.exc_text or "", rec.stack_info or ""]
            if rec.exc_info:
                parts.append(fmt.formatException(rec.exc_info))
            echo = rec.name.startswith("sqlalchemy.engine") and str(rec.msg).startswith(ROW_ECHO)
            note("log-row-echo" if echo else f"log:{rec.name}", "\n".join(parts).encode("utf-8", "replace"))
    if capfd is not None:
        out, err = capfd.readouterr()
        note("stdout", out.encode("utf-8", "replace"))
        note("stderr", err.encode("utf-8", "replace"))
    for name, data in (extra or {}).items():
        note(name, data if isinstance(data, bytes) else data.encode("utf-8", "replace"))

    app = apps[0]
    with app.app_context():
        engine = db.engine
        with engine.connect() as conn:
            for table in db.metadata.sorted_tables:
                for row in conn.execute(sa.select(table)):
                    for column, value in row._mapping.items():
                        note(f"table:{table.name}.{column}", _bytes(value))
        if engine.dialect.name == "sqlite":
            base = Path(sa.engine.make_url(app.config["SQLALCHEMY_DATABASE_URI"]).database)
            assert base.exists() and base.stat().st_size > 0
            for suffix in ("", "-wal", "-shm", "-journal"):
                p = Path(str(base) + suffix)
                if p.exists():
                    note(f"db-file:{suffix or '.db'}", read_locked_file(p))
        else:
            # The cluster's data files are not ours to read; its server log is a log.
            with engine.connect() as conn:
                data_dir = Path(conn.execute(sa.text("SHOW data_directory")).scalar())
            server_log = data_dir.parent / "log"  # where tests/servers.py's cluster writes it
            if server_log.exists():
                note("postgres-log", read_locked_file(server_log))
        storage = app.config["RATELIMIT_STORAGE_URI"]
        if storage.startswith("redis"):
            import redis
            r = redis.Redis.from_url(storage)
            for key in r.scan_iter():
                note(f"redis:{key.decode(errors='replace')}", key + b"\n" + (r.dump(key) or b""))
        db.engine.dispose()
    seen: set[Path] = set()
    roots = [("file", Path(a.instance_path)) for a in apps] + [(k, Path(v)) for k, v in (folders or {}).items()]
    for name, root in roots:
        for p in _files(root):
            if p in seen:
                continue
            seen.add(p)
            data = p.read_bytes()
            where = f"{name}:{p.relative_to(root)}"
            note(where, data)
            if zipfile.is_zipfile(p):
                with zipfile.ZipFile(p) as z:
                    for member in z.namelist():
                        note(f"{where}!{member}", z.read(member))
    if mailbox is not None:
        for msg in list(mailbox.messages):
            note(f"smtp:{msg['To']}", bytes(msg))
    return found


def unexpected(found: dict[str, set[str]], allowed: dict[str, tuple[str, ...]]) -> dict[str, list[str]]:
    """The places each canary was found that its field does not allow (fnmatch
    patterns; a label not in `allowed` is allowed nowhere)."""
    import fnmatch

    bad = {}
    for label, places in found.items():
        patterns = allowed.get(label, ())
        extra = sorted(p for p in places if not any(fnmatch.fnmatchcase(p, pat) for pat in patterns))
        if extra:
            bad[label] = extra
    return bad
