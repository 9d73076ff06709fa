"""Routing with fallback (P21), failures before and after the first byte,
client disconnects, keys that stop working, bad requests and limits (P25):
every failure is a typed SDK error in the client's API shape, never a 500,
and every request that got past authentication leaves its row (P22)."""
from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import anthropic
import httpx2 as httpx
import openai
import orjson
import pytest

from app.extensions import db
from app.models.types import utcnow

HELLO = [{"role": "user", "content": "hello there"}]


def _text(stream) -> str:
    return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


def trace_of(row) -> list[tuple[str, str, str | None]]:
    return [(t["provider"], t["outcome"], t.get("error_class")) for t in json.loads(row.routing_trace)]


# ---- fallback (P21) --------------------------------------------------------------------

@pytest.mark.promise("P21", "P22")
def test_fallback_skips_a_dead_worker(relay, fake):
    mark = relay.mark()
    reply = relay.openai().chat.completions.create(model="fallback-test", messages=HELLO)
    assert reply.choices[0].message.content == "echo: hello there"
    assert [r.body["model"] for r in fake.requests] == ["gpt-primary"]
    [row] = relay.new_rows(mark)
    assert row.provider == "oai" and row.status_code == 200 and row.error_class is None
    assert trace_of(row) == [("dead", "error", "connect_refused"), ("oai", "ok", None)]
    assert all(isinstance(t["ms"], int) and t["model"] for t in json.loads(row.routing_trace))


@pytest.mark.promise("P21", "P22")
@pytest.mark.parametrize("fault,why", [
    ({"status": 500}, "http_500"),
    ({"status": 503}, "http_503"),
    ({"status": 429}, "http_429"),
])
def test_fallback_on_5xx_and_429(relay, fake, fault, why):
    fake.push_fault(**fault)
    mark = relay.mark()
    reply = relay.openai().chat.completions.create(model="fallback-test", messages=HELLO)
    assert reply.choices[0].message.content == "echo: hello there"
    assert [r.body["model"] for r in fake.requests] == ["gpt-primary", "gpt-backup"]
    [row] = relay.new_rows(mark)
    assert row.provider == "backup" and row.status_code == 200 and row.usage_source == "provider"
    assert trace_of(row) == [("dead", "error", "connect_refused"), ("oai", "error", why), ("backup", "ok", None)]


@pytest.mark.promise("P21", "P22")
def test_fallback_on_first_byte_timeout(relay, fake):
    fake.push_fault(slow_first_byte=4)  # the oai provider waits 2 s for the first byte
    mark = relay.mark()
    t0 = time.perf_counter()
    with relay.anthropic().messages.stream(model="fallback-test", max_tokens=50, messages=HELLO) as stream:
        final = stream.get_final_message()
    elapsed = time.perf_counter() - t0
    assert final.content[0].text == "echo: hello there"
    assert 1.8 < elapsed < 3.8
    [row] = relay.new_rows(mark)
    assert row.provider == "backup"
    assert trace_of(row) == [("dead", "error", "connect_refused"), ("oai", "error", "timeout"), ("backup", "ok", None)]
    oai_ms = json.loads(row.routing_trace)[1]["ms"]
    assert 1800 <= oai_ms < 3000


@pytest.mark.promise("P21", "P22")
def test_every_target_failing_is_a_typed_error_with_its_trace(relay, fake):
    fake.push_fault(status=500)
    fake.push_fault(status=503)
    mark = relay.mark()
    with pytest.raises(openai.APIStatusError) as info:
        relay.openai().chat.completions.create(model="fallback-test", messages=HELLO)
    assert info.value.status_code in (502, 503, 504)
    assert info.value.response.headers["x-request-id"]
    [row] = relay.new_rows(mark)
    assert row.request_id == info.value.response.headers["x-request-id"]
    assert row.status_code == info.value.status_code and row.error_class == "http_503"
    assert row.provider is None and row.usage_source == "none" and row.input_tokens == 0
    assert trace_of(row) == [("dead", "error", "connect_refused"), ("oai", "error", "http_500"),
                             ("backup", "error", "http_503")]

    fake.push_fault(status=500)
    fake.push_fault(status=500)
    with pytest.raises(anthropic.APIStatusError) as ainfo:
        relay.anthropic().messages.create(model="fallback-test", max_tokens=10, messages=HELLO)
    assert ainfo.value.status_code in (502, 503, 504)
    assert ainfo.value.body["type"] == "error"
    relay.new_rows(mark + 1)


@pytest.mark.promise("P21", "P25")
def test_all_targets_rate_limited_is_a_rate_limit_error(relay, fake):
    mark = relay.mark()
    fake.push_fault(status=429)
    with pytest.raises(openai.RateLimitError) as info:
        relay.openai().chat.completions.create(model="gpt-test", messages=HELLO)
    assert info.value.response.headers["retry-after"]
    fake.push_fault(status=429)
    with pytest.raises(anthropic.RateLimitError) as ainfo:
        relay.anthropic().messages.create(model="claude-test", max_tokens=10, messages=HELLO)
    assert ainfo.value.body["type"] == "error" and ainfo.value.body["error"]["type"] == "rate_limit_error"
    rows = relay.new_rows(mark, 2)
    assert [(r.status_code, r.error_class) for r in rows] == [(429, "http_429"), (429, "http_429")]


@pytest.mark.promise("P21")
def test_all_targets_timing_out_is_a_504(relay, fake):
    fake.push_fault(slow_first_byte=4)
    mark = relay.mark()
    with pytest.raises(openai.APIStatusError) as info:
        relay.openai().chat.completions.create(model="gpt-test", messages=HELLO)
    assert info.value.status_code == 504
    [row] = relay.new_rows(mark)
    assert row.error_class == "timeout" and trace_of(row) == [("oai", "error", "timeout")]


# ---- after the first byte: no fallback, an error event, a row (P21, P22) ---------------

@pytest.mark.promise("P21", "P22")
def test_drop_mid_stream_openai(relay, fake):
    fake.push_fault(drop_after=3)
    mark = relay.mark()
    got = []
    with pytest.raises(openai.APIError) as info:
        for chunk in relay.openai().chat.completions.create(
                model="fallback-test", messages=[{"role": "user", "content": "one two three four five"}],
                stream=True):
            got.append(chunk)
    assert got and not isinstance(info.value, openai.APIStatusError)
    assert [r.body["model"] for r in fake.requests] == ["gpt-primary"]  # no fallback once bytes went out
    [row] = relay.new_rows(mark)
    assert row.provider == "oai" and row.usage_source == "estimated"
    assert row.error_class == "upstream_disconnected"
    assert row.input_tokens > 0 and row.output_tokens >= 0 and row.ttft_ms is not None
    assert trace_of(row) == [("dead", "error", "connect_refused"), ("oai", "ok", None)]


@pytest.mark.promise("P21", "P22")
@pytest.mark.parametrize("model", ["claude-test", "gpt-test"])
def test_drop_mid_stream_anthropic(relay, fake, model):
    fake.push_fault(drop_after=4)
    mark = relay.mark()
    with pytest.raises(anthropic.APIError):
        with relay.anthropic().messages.stream(model=model, max_tokens=100,
                                               messages=[{"role": "user", "content": "a b c d e f"}]) as s:
            for _ in s.text_stream:
                pass
    assert len(fake.requests) == 1
    [row] = relay.new_rows(mark)
    assert row.usage_source == "estimated" and row.error_class == "upstream_disconnected"
    assert row.input_tokens > 0 and row.output_tokens > 0


@pytest.mark.promise("P21", "P22")
def test_drop_mid_stream_openai_sdk_to_anthropic_provider(relay, fake):
    fake.push_fault(drop_after=4)
    mark = relay.mark()
    with pytest.raises(openai.APIError):
        for _ in relay.openai().chat.completions.create(
                model="claude-test", messages=[{"role": "user", "content": "a b c d e f"}], stream=True):
            pass
    [row] = relay.new_rows(mark)
    assert row.usage_source == "estimated" and row.error_class == "upstream_disconnected"


@pytest.mark.promise("P22")
def test_non_streamed_answer_cut_short(relay, fake):
    fake.push_fault(drop_after=1)
    mark = relay.mark()
    with pytest.raises(openai.APIStatusError) as info:
        relay.openai().chat.completions.create(model="gpt-test", messages=HELLO)
    assert info.value.status_code == 502
    [row] = relay.new_rows(mark)
    assert row.status_code == 502 and row.error_class == "upstream_disconnected"


@pytest.mark.promise("P21", "P22")
@pytest.mark.parametrize("api,model", [("openai", "gpt-test"), ("openai", "claude-test"),
                                       ("anthropic", "claude-test"), ("anthropic", "gpt-test")])
def test_in_stream_provider_error(relay, fake, api, model):
    fake.push_fault(error_after=3, message="upstream overloaded")
    mark = relay.mark()
    if api == "openai":
        with pytest.raises(openai.APIError) as info:
            for _ in relay.openai().chat.completions.create(
                    model=model, messages=[{"role": "user", "content": "a b c d"}], stream=True):
                pass
    else:
        with pytest.raises(anthropic.APIError) as info:
            with relay.anthropic().messages.stream(model=model, max_tokens=50,
                                                   messages=[{"role": "user", "content": "a b c d"}]) as s:
                s.get_final_message()
    assert "upstream overloaded" in str(info.value)
    [row] = relay.new_rows(mark)
    assert row.error_class == "upstream_stream_error" and row.usage_source == "estimated"
    assert row.input_tokens > 0


# ---- usage the provider got wrong: estimated, never a silent zero (P22) -----------------

@pytest.mark.promise("P22")
@pytest.mark.parametrize("wrong", ["zero", "absent"])
@pytest.mark.parametrize("api,model,stream", [
    ("openai", "gpt-test", False), ("openai", "gpt-test", True),
    ("openai", "claude-test", False), ("openai", "claude-test", True),
    ("anthropic", "claude-test", False), ("anthropic", "claude-test", True),
    ("anthropic", "gpt-test", True),
])
def test_wrong_usage_is_estimated(relay, fake, wrong, api, model, stream):
    fake.push_fault(wrong_usage=wrong)
    mark = relay.mark()
    messages = [{"role": "user", "content": "please count these words for me"}]
    if api == "openai":
        out = relay.openai().chat.completions.create(model=model, messages=messages, stream=stream)
        text = "".join(c.choices[0].delta.content or "" for c in out if c.choices) if stream \
            else out.choices[0].message.content
    elif stream and model == "claude-test" and wrong == "absent":
        # Passed through as the provider sent it, and an Anthropic stream without
        # usage is one the SDK cannot fold: read the events raw.
        r = httpx.post(relay.url + "/v1/messages", headers={"x-api-key": relay.key},
                       json={"model": model, "max_tokens": 100, "messages": messages, "stream": True})
        text = "".join(json.loads(line[5:])["delta"]["text"] for line in r.text.splitlines()
                       if line.startswith("data:") and '"text_delta"' in line)
    elif stream:
        with relay.anthropic().messages.stream(model=model, max_tokens=100, messages=messages) as s:
            text = s.get_final_message().content[0].text
    else:
        text = relay.anthropic().messages.create(model=model, max_tokens=100, messages=messages).content[0].text
    assert text == "echo: please count these words for me"
    [row] = relay.new_rows(mark)
    assert row.usage_source == "estimated"
    assert row.input_tokens > 0 and row.output_tokens > 0 and row.cost_usd > 0
    assert row.status_code == 200


@pytest.mark.promise("P22")
def test_wrong_usage_embeddings(relay, fake):
    fake.push_fault(wrong_usage="absent")
    mark = relay.mark()
    relay.openai().embeddings.create(model="embed-test", input="some words to embed")
    [row] = relay.new_rows(mark)
    assert row.usage_source == "estimated" and row.input_tokens > 0


# ---- the client goes away (P21, P22) ---------------------------------------------------

@pytest.mark.promise("P21", "P22")
@pytest.mark.parametrize("path,body", [
    ("/v1/chat/completions", {"model": "gpt-test", "stream": True, "messages": HELLO}),
    ("/v1/messages", {"model": "claude-test", "stream": True, "max_tokens": 500, "messages": HELLO}),
    ("/v1/chat/completions", {"model": "claude-test", "stream": True, "messages": HELLO}),
])
def test_client_disconnect_drops_the_upstream_call(relay, fake, path, body):
    fake.push_fault(chunk_delay=0.2, chunks=50)  # a 10 s stream
    mark = relay.mark()
    from app.relay import aupstream
    aupstream.close_all_from_another_thread()  # no idle keep-alive connection to reuse: the
                                               # stream's upstream connection is a new socket
    conns = fake._httpd._conns  # the fake's open sockets
    before = set(conns)
    t0 = time.perf_counter()
    with httpx.Client(timeout=10) as client:
        with client.stream("POST", relay.url + path, json=body,
                           headers={"Authorization": f"Bearer {relay.key}"}) as resp:
            assert resp.status_code == 200
            assert resp.headers["x-request-id"]
            events = 0
            for line in resp.iter_lines():
                if line.startswith("data:"):
                    events += 1
                    if events == 2:
                        break
            streaming = set(conns) - before  # this request's upstream connection
    assert streaming, "the relay's upstream connection to the fake was not seen"
    # The relay notices at its next write and drops its upstream connection at once.
    # (Judged by that socket alone: an earlier test's pooled connection may close meanwhile.)
    deadline = time.monotonic() + 3
    while streaming & set(conns) and time.monotonic() < deadline:
        time.sleep(0.02)
    gone = time.perf_counter() - t0
    assert not streaming & set(conns), "the fake's streaming connection is still open"
    assert gone < 3, f"upstream dropped only after {gone:.1f} s"
    [row] = relay.new_rows(mark)
    assert row.error_class == "client_disconnected" and row.status_code == 499
    assert row.usage_source == "estimated" and row.input_tokens > 0
    assert row.latency_ms < 3000


# ---- keys that do not work (P10 via the relay) -----------------------------------------

@pytest.mark.promise("P20", "P10")
def test_revoked_key_fails_on_the_very_next_request(relay):
    key_id, raw = relay.make_key(name="to revoke")
    mark = relay.mark()
    assert relay.openai(raw).chat.completions.create(model="gpt-test", messages=HELLO).choices
    relay.new_rows(mark)
    relay.update_key(key_id, revoked_at=utcnow())
    with pytest.raises(openai.AuthenticationError) as info:
        relay.openai(raw).chat.completions.create(model="gpt-test", messages=HELLO)
    assert info.value.response.headers["x-request-id"]
    assert "revoked" in info.value.message
    with pytest.raises(anthropic.AuthenticationError) as ainfo:
        relay.anthropic(raw).messages.create(model="claude-test", max_tokens=10, messages=HELLO)
    assert ainfo.value.body["type"] == "error" and ainfo.value.body["error"]["type"] == "authentication_error"
    with pytest.raises(openai.AuthenticationError):
        relay.openai(raw).models.list()
    relay.new_rows(mark + 1, 0)  # a key that cannot be used is not metered against


@pytest.mark.promise("P53", "P20")
def test_a_restricted_account_is_refused_until_the_restriction_is_lifted(relay):
    """Restriction (P53) suspends the account's keys: both SDKs get their own
    permission error on the next request, nothing is metered, and lifting the
    restriction lets the same key work again."""
    from app.models import User
    from app.services import privacy

    key_id, raw = relay.make_key(name="restricted")

    def set_restricted(on: bool) -> None:
        with relay.app.app_context(), relay.app.test_request_context():
            user = db.session.get(User, relay.user_id)
            (privacy.restrict if on else privacy.lift_restriction)(user, None)
            db.session.commit()

    mark = relay.mark()
    set_restricted(True)
    try:
        with pytest.raises(openai.PermissionDeniedError) as info:
            relay.openai(raw).chat.completions.create(model="gpt-test", messages=HELLO)
        assert "restricted" in info.value.message
        with pytest.raises(anthropic.PermissionDeniedError) as ainfo:
            relay.anthropic(raw).messages.create(model="claude-test", max_tokens=10, messages=HELLO)
        assert ainfo.value.body["error"]["type"] == "permission_error"
        relay.new_rows(mark, 0)
    finally:
        set_restricted(False)
    assert relay.openai(raw).chat.completions.create(model="gpt-test", messages=HELLO).choices
    relay.new_rows(mark)


@pytest.mark.promise("P53")
def test_restriction_holds_for_every_key_of_the_account_even_one_never_suspended(relay):
    """Defect 3 of the hardening review: the relay checked only the key's own
    suspension, so a key made or rotated after the restriction (never
    suspended) went on working. The account's state is what counts: such a key
    gets each SDK's permission error, on /v1/ and on the export API, and
    nothing is metered."""
    import urllib.request
    from urllib.error import HTTPError

    from app.models import User
    from app.services import privacy

    key_id, raw = relay.make_key(name="made after the restriction")
    mark = relay.mark()
    with relay.app.app_context(), relay.app.test_request_context():
        privacy.restrict(db.session.get(User, relay.user_id), None)
        db.session.commit()
    relay.update_key(key_id, suspended_at=None)  # as a key made or rotated afterwards would be
    try:
        with pytest.raises(openai.PermissionDeniedError) as info:
            relay.openai(raw).chat.completions.create(model="gpt-test", messages=HELLO)
        assert "restricted" in info.value.message
        with pytest.raises(openai.PermissionDeniedError):
            relay.openai(raw).embeddings.create(model="embed-test", input="hi")
        with pytest.raises(anthropic.PermissionDeniedError) as ainfo:
            relay.anthropic(raw).messages.create(model="claude-test", max_tokens=10, messages=HELLO)
        assert ainfo.value.body["error"]["type"] == "permission_error"
        with pytest.raises(openai.PermissionDeniedError):
            relay.openai(raw).models.list()
        req = urllib.request.Request(relay.url + "/api/v1/export", headers={"Authorization": f"Bearer {raw}"})
        with pytest.raises(HTTPError) as export:
            urllib.request.urlopen(req, timeout=10)
        assert export.value.code == 403
        assert orjson.loads(export.value.read())["error"]["type"] == "permission_error"
        relay.new_rows(mark, 0)
    finally:
        with relay.app.app_context(), relay.app.test_request_context():
            privacy.lift_restriction(db.session.get(User, relay.user_id), None)
            db.session.commit()
    assert relay.openai(raw).chat.completions.create(model="gpt-test", messages=HELLO).choices


@pytest.mark.promise("P20", "P10")
def test_expired_key(relay):
    key_id, raw = relay.make_key(name="to expire", expires_at=utcnow() + timedelta(days=1))
    mark = relay.mark()
    assert relay.anthropic(raw).messages.create(model="claude-test", max_tokens=10, messages=HELLO).content
    relay.new_rows(mark)
    relay.update_key(key_id, expires_at=utcnow() - timedelta(seconds=1))
    with pytest.raises(anthropic.AuthenticationError):
        relay.anthropic(raw).messages.create(model="claude-test", max_tokens=10, messages=HELLO)
    with pytest.raises(openai.AuthenticationError) as info:
        relay.openai(raw).chat.completions.create(model="gpt-test", messages=HELLO)
    assert "expired" in info.value.message


@pytest.mark.promise("P20")
def test_unknown_and_missing_keys(relay, fake):
    with pytest.raises(openai.AuthenticationError):
        relay.openai("rk_not-a-real-key").chat.completions.create(model="gpt-test", messages=HELLO)
    with pytest.raises(anthropic.AuthenticationError):
        relay.anthropic("rk_not-a-real-key").messages.create(model="claude-test", max_tokens=10, messages=HELLO)
    r = httpx.post(relay.url + "/v1/chat/completions", json={"model": "gpt-test", "messages": HELLO})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    assert r.headers["x-request-id"]
    r = httpx.post(relay.url + "/v1/messages", json={"model": "claude-test", "max_tokens": 5, "messages": HELLO},
                   headers={"anthropic-version": "2023-06-01"})
    assert r.status_code == 401 and r.json()["type"] == "error"
    assert r.json()["error"]["type"] == "authentication_error" and r.headers["x-request-id"]
    assert fake.requests == []


# ---- bad requests: typed errors, never a 500 (P20) -------------------------------------

@pytest.mark.promise("P20")
def test_bad_json_body(relay, fake):
    mark = relay.mark()
    headers = {"Authorization": f"Bearer {relay.key}", "Content-Type": "application/json"}
    r = httpx.post(relay.url + "/v1/chat/completions", content=b'{"model": "gpt-test", "messages": [', headers=headers)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["message"] and "code" in err and "param" in err
    assert r.headers["x-request-id"]
    r = httpx.post(relay.url + "/v1/messages", content=b"{not json", headers=headers)
    assert r.status_code == 400 and r.json()["type"] == "error"
    assert r.json()["error"]["type"] == "invalid_request_error" and r.headers["x-request-id"]
    r = httpx.post(relay.url + "/v1/embeddings", content=b"\xff\xfe", headers=headers)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    assert fake.requests == []
    rows = relay.new_rows(mark, 3)
    assert all(r.status_code == 400 and r.usage_source == "none" for r in rows)


@pytest.mark.promise("P20")
def test_unknown_model_and_allowlist(relay, fake):
    mark = relay.mark()
    with pytest.raises(openai.NotFoundError) as info:
        relay.openai().chat.completions.create(model="no-such-model", messages=HELLO)
    assert info.value.response.headers["x-request-id"]
    with pytest.raises(anthropic.NotFoundError) as ainfo:
        relay.anthropic().messages.create(model="no-such-model", max_tokens=5, messages=HELLO)
    assert ainfo.value.body["error"]["type"] == "not_found_error"
    key_id, raw = relay.make_key(name="gpt only", models=["gpt-test"])
    assert relay.openai(raw).chat.completions.create(model="gpt-test", messages=HELLO).choices
    with pytest.raises(openai.NotFoundError):
        relay.openai(raw).chat.completions.create(model="claude-test", messages=HELLO)
    with pytest.raises(anthropic.NotFoundError):
        relay.anthropic(raw).messages.create(model="claude-test", max_tokens=5, messages=HELLO)
    assert [r.body["model"] for r in fake.requests] == ["gpt-upstream"]
    rows = relay.new_rows(mark, 5)
    assert [r.status_code for r in rows] == [404, 404, 200, 404, 404]
    # A name no route knows is the client's text, not metadata: it is not stored (P23).
    assert [r.model for r in rows] == ["(unknown model)", "(unknown model)", "gpt-test", "claude-test",
                                       "claude-test"]


@pytest.mark.promise("P20")
def test_the_apps_own_errors_under_messages_use_anthropics_shape(relay):
    with httpx.Client(base_url=relay.url) as http:
        missing = http.post("/v1/messages/nope", headers={"x-api-key": relay.key}, json={})
        wrong_method = http.get("/v1/messages", headers={"x-api-key": relay.key})
        openai_side = http.get("/v1/nope", headers={"Authorization": f"Bearer {relay.key}"})
    assert missing.status_code == 404 and missing.json()["type"] == "error"
    assert missing.json()["error"]["type"] == "not_found_error"
    assert wrong_method.status_code == 405 and wrong_method.json()["type"] == "error"
    assert openai_side.status_code == 404 and "type" in openai_side.json()["error"]
    assert missing.headers["x-request-id"]


@pytest.mark.promise("P20")
def test_missing_fields_are_bad_requests(relay, fake):
    mark = relay.mark()
    oai, ant = relay.openai(), relay.anthropic()
    with pytest.raises(openai.BadRequestError):
        oai.post("/chat/completions", body={"model": "gpt-test"}, cast_to=object)
    with pytest.raises(openai.BadRequestError):
        oai.post("/chat/completions", body={"messages": HELLO}, cast_to=object)
    with pytest.raises(openai.BadRequestError):
        oai.post("/embeddings", body={"model": "embed-test"}, cast_to=object)
    with pytest.raises(anthropic.BadRequestError):
        ant.post("/v1/messages", body={"model": "claude-test", "max_tokens": 5}, cast_to=object)
    with pytest.raises(anthropic.BadRequestError):
        ant.post("/v1/messages", body={"model": "claude-test", "messages": HELLO}, cast_to=object)
    assert fake.requests == []
    rows = relay.new_rows(mark, 5)  # the one without a model is counted too, under no model
    assert all(r.status_code == 400 and r.usage_source == "none" for r in rows)
    assert [r.model for r in rows] == ["gpt-test", "(unknown model)", "embed-test", "claude-test", "claude-test"]


@pytest.mark.promise("P20")
@pytest.mark.parametrize("path,body", [
    ("/v1/chat/completions", []),
    ("/v1/chat/completions", {"model": 5, "messages": HELLO}),
    ("/v1/chat/completions", {"model": "gpt-test", "messages": "hi"}),
    ("/v1/chat/completions", {"model": "claude-test", "messages": []}),
    ("/v1/chat/completions", {"model": "claude-test", "messages": [{"role": "wizard", "content": "x"}]}),
    ("/v1/chat/completions", {"model": "claude-test", "messages": HELLO, "max_tokens": "lots"}),
    ("/v1/chat/completions", {"model": "claude-test", "messages": HELLO, "tools": "nope"}),
    ("/v1/chat/completions", {"model": "claude-test", "messages": [1, 2]}),
    ("/v1/chat/completions", {"model": "claude-test", "messages": HELLO, "stream": True, "n": 3}),
    ("/v1/messages", {"model": "gpt-test", "max_tokens": 5, "messages": [{"role": "user", "content": 7}]}),
    ("/v1/messages", {"model": "gpt-test", "max_tokens": 5, "messages": [None]}),
    ("/v1/messages", {"model": "gpt-test", "max_tokens": 5, "messages": HELLO, "system": 12}),
    ("/v1/messages", {"model": "gpt-test", "max_tokens": 5, "messages": HELLO, "tools": [1]}),
    ("/v1/messages", {"model": "gpt-test", "max_tokens": 5, "messages": HELLO, "stop_sequences": "x"}),
    ("/v1/messages", {"model": "gpt-test", "max_tokens": True, "messages": HELLO}),
    ("/v1/embeddings", {"model": "claude-test", "input": "x"}),
    ("/v1/embeddings", {"model": "embed-test", "input": {"a": 1}}),
])
def test_odd_bodies_never_a_500(relay, fake, path, body):
    mark = relay.mark()
    r = httpx.post(relay.url + path, json=body, headers={"Authorization": f"Bearer {relay.key}"})
    assert 400 <= r.status_code < 500 or r.status_code in (502, 503), (r.status_code, r.text)
    data = r.json()
    if path == "/v1/messages":
        assert data["type"] == "error" and data["error"]["type"]
    else:
        assert data["error"]["type"] and data["error"]["message"]
    assert r.headers["x-request-id"]
    relay.new_rows(mark)


@pytest.mark.promise("P20")
def test_not_a_relay_route_still_answers_json_with_a_request_id(relay):
    headers = {"Authorization": f"Bearer {relay.key}"}
    r = httpx.get(relay.url + "/v1/chat/completions", headers=headers)
    assert r.status_code == 405 and r.json()["error"]["type"] and r.headers["x-request-id"]
    r = httpx.post(relay.url + "/v1/completions", json={}, headers=headers)
    assert r.status_code == 404 and r.json()["error"]["type"] and r.headers["x-request-id"]


@pytest.mark.promise("P20")
def test_provider_400_passed_through(relay, fake):
    mark = relay.mark()
    fake.push_fault(status=400, message="max_tokens is too large for this model")
    with pytest.raises(openai.BadRequestError) as info:
        relay.openai().chat.completions.create(model="fallback-test", messages=HELLO)
    assert "max_tokens is too large" in info.value.message
    assert len(fake.requests) == 1  # a refused request is not retried elsewhere
    fake.push_fault(status=400, message="bad stop sequence")
    with pytest.raises(anthropic.BadRequestError) as ainfo:
        relay.anthropic().messages.create(model="claude-test", max_tokens=5, messages=HELLO)
    assert ainfo.value.body["type"] == "error" and "bad stop sequence" in ainfo.value.body["error"]["message"]
    fake.push_fault(status=400, message="translated refusal")
    with pytest.raises(anthropic.BadRequestError) as ainfo:
        relay.anthropic().messages.create(model="gpt-test", max_tokens=5, messages=HELLO)
    assert "translated refusal" in ainfo.value.body["error"]["message"]
    fake.push_fault(status=400, message="stream refusal")
    with pytest.raises(openai.BadRequestError):
        relay.openai().chat.completions.create(model="claude-test", messages=HELLO, stream=True)
    rows = relay.new_rows(mark, 4)
    assert all(r.status_code == 400 and r.error_class == "upstream_400" for r in rows)
    assert all(r.usage_source == "none" for r in rows)


@pytest.mark.promise("P21")
def test_provider_refusing_our_credential_is_a_502(relay, fake):
    fake.push_fault(status=401)
    mark = relay.mark()
    with pytest.raises(openai.APIStatusError) as info:
        relay.openai().chat.completions.create(model="gpt-test", messages=HELLO)
    assert info.value.status_code == 502  # not the client's key's fault: not an AuthenticationError
    [row] = relay.new_rows(mark)
    assert row.error_class == "upstream_401"


# ---- limits (P25) ----------------------------------------------------------------------

@pytest.mark.promise("P25", "P22")
def test_key_rpm_from_settings(relay_factory, fake):
    r3 = relay_factory(RELAY_KEY_RPM="3")
    mark = r3.mark()
    for _ in range(3):
        r3.openai().chat.completions.create(model="gpt-test", messages=HELLO)
    with pytest.raises(openai.RateLimitError) as info:
        r3.openai().chat.completions.create(model="gpt-test", messages=HELLO)
    h = info.value.response.headers
    assert int(h["retry-after"]) >= 1
    assert h["x-ratelimit-limit-requests"] == "3" and h["x-ratelimit-remaining-requests"] == "0"
    assert h["x-ratelimit-reset-requests"].endswith("s") and h["x-request-id"]
    assert info.value.body["type"] == "rate_limit_error"
    with pytest.raises(anthropic.RateLimitError) as ainfo:
        r3.anthropic().messages.create(model="claude-test", max_tokens=5, messages=HELLO)
    assert ainfo.value.body["type"] == "error" and ainfo.value.body["error"]["type"] == "rate_limit_error"
    assert ainfo.value.response.headers["retry-after"]
    assert len(fake.requests) == 3
    rows = r3.new_rows(mark, 5)
    refused = rows[3:]
    assert all(r.status_code == 429 and r.usage_source == "none" and r.error_class == "rate_limited_key_requests"
               and r.input_tokens == 0 and r.provider is None for r in refused)
    assert [r.model for r in refused] == ["gpt-test", "claude-test"]
    # Another key of the same account has its own budget.
    _, other = r3.make_key(name="second")
    assert r3.openai(other).chat.completions.create(model="gpt-test", messages=HELLO).choices
    r3.new_rows(mark + 5)


@pytest.mark.promise("P25")
def test_key_rpm_from_the_key(relay, fake):
    key_id, raw = relay.make_key(name="two a minute", rpm_limit=2)
    mark = relay.mark()
    client = relay.openai(raw)
    client.chat.completions.create(model="gpt-test", messages=HELLO)
    client.embeddings.create(model="embed-test", input="x")
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="gpt-test", messages=HELLO)
    assert info.value.response.headers["x-ratelimit-limit-requests"] == "2"
    assert relay.openai().chat.completions.create(model="gpt-test", messages=HELLO).choices  # the default key
    rows = relay.new_rows(mark, 4)
    # Ordered by start: a refusal's row is written at once, a success's after its last byte.
    assert [r.status_code for r in sorted(rows, key=lambda r: r.started_at) if r.api_key_id == key_id] == \
        [200, 200, 429]


@pytest.mark.promise("P25")
def test_key_token_limit(relay, fake):
    key_id, raw = relay.make_key(name="five tokens", tpm_limit=5)
    mark = relay.mark()
    first = relay.anthropic(raw).messages.create(model="claude-test", max_tokens=50,
                                                 messages=[{"role": "user", "content": "one two three four"}])
    assert first.usage.input_tokens + first.usage.output_tokens > 5
    relay.new_rows(mark)  # tokens are charged when the row is written
    with pytest.raises(anthropic.RateLimitError) as info:
        relay.anthropic(raw).messages.create(model="claude-test", max_tokens=50, messages=HELLO)
    assert "tokens" in info.value.body["error"]["message"]
    assert int(info.value.response.headers["retry-after"]) >= 1
    with pytest.raises(openai.RateLimitError):
        relay.openai(raw).chat.completions.create(model="gpt-test", messages=HELLO)
    rows = relay.new_rows(mark, 3)
    assert [r.error_class for r in rows[1:]] == ["rate_limited_key_tokens"] * 2
    assert len(fake.requests) == 1


@pytest.mark.promise("P25")
def test_account_rpm_across_keys(relay_factory, fake):
    r = relay_factory(RELAY_ACCOUNT_RPM="3")
    _, second = r.make_key(name="second")
    mark = r.mark()
    r.openai().chat.completions.create(model="gpt-test", messages=HELLO)
    r.openai(second).chat.completions.create(model="gpt-test", messages=HELLO)
    r.anthropic().messages.create(model="claude-test", max_tokens=5, messages=HELLO)
    with pytest.raises(openai.RateLimitError) as info:
        r.openai(second).chat.completions.create(model="gpt-test", messages=HELLO)
    assert "account" in info.value.message
    with pytest.raises(anthropic.RateLimitError):
        r.anthropic().messages.create(model="claude-test", max_tokens=5, messages=HELLO)
    rows = r.new_rows(mark, 5)
    assert [x.error_class for x in rows[3:]] == ["rate_limited_account_requests"] * 2


# ---- metering under load (P22) ---------------------------------------------------------

@pytest.mark.promise("P22")
def test_many_requests_finishing_at_once_each_leave_a_row(relay, fake):
    mark = relay.mark()
    n = 40

    def one(i):
        if i % 4 == 1:
            assert _text(relay.openai().chat.completions.create(model="gpt-test", messages=HELLO, stream=True))
        elif i % 4 == 3:
            assert relay.openai().chat.completions.create(model="gpt-test", messages=HELLO).choices
        else:
            assert relay.anthropic().messages.create(model="claude-test", max_tokens=5, messages=HELLO).content

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(one, range(n)))
    rows = relay.new_rows(mark, n)
    assert len({r.request_id for r in rows}) == n
    assert [(r.status_code, r.usage_source, r.error_class) for r in rows] == [(200, "provider", None)] * n


@pytest.mark.promise("P10", "P53")
def test_the_relay_and_the_export_api_answer_every_key_state_alike(relay):
    """One check (app/keyauth.py) behind both doors a key opens: a missing,
    unknown, revoked or expired key gets the same status, type and message."""
    revoked_id, revoked = relay.make_key(name="revoked at both doors")
    relay.update_key(revoked_id, revoked_at=utcnow())
    expired_id, expired = relay.make_key(name="expired at both doors")
    relay.update_key(expired_id, expires_at=utcnow() - timedelta(minutes=1))
    cases = {"missing": {}, "unknown": {"Authorization": "Bearer rk_" + "x" * 40},
             "revoked": {"Authorization": f"Bearer {revoked}"}, "expired": {"x-api-key": expired}}
    for name, headers in cases.items():
        answers = []
        for path in ("/v1/models", "/api/v1/export"):
            resp = httpx.get(relay.url + path, headers=headers, timeout=10)
            error = resp.json()["error"]
            answers.append((resp.status_code, error["type"], error["message"]))
        assert answers[0] == answers[1], name
        assert answers[0][0] == 401, name
