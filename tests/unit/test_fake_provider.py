"""The fake provider speaks the real wire formats: the official openai and anthropic SDKs work against it."""
from __future__ import annotations

import http.client
import json
import threading
import time

import anthropic
import httpx2 as httpx
import openai
import pytest

from tests.fakes.provider import DEFAULT_KEY, FakeProvider

TOOLS_OPENAI = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
TOOLS_ANTHROPIC = [{"name": "get_weather", "description": "Weather for a city",
                    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]


@pytest.fixture(scope="module")
def server():
    fake = FakeProvider().start()
    yield fake
    fake.stop()


@pytest.fixture
def fake(server):
    server.clear()
    yield server
    server.clear()


@pytest.fixture
def oai(fake):
    with openai.OpenAI(base_url=fake.base_url + "/v1", api_key=DEFAULT_KEY, max_retries=0, timeout=10) as client:
        yield client


@pytest.fixture
def claude(fake):
    with anthropic.Anthropic(base_url=fake.base_url, api_key=DEFAULT_KEY, max_retries=0, timeout=10) as client:
        yield client


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


# ----------------------------------------------------------------------------- OpenAI

def test_chat_echoes_the_last_user_message_and_counts_words(fake, oai):
    r = oai.chat.completions.create(model="gpt-4o-mini", messages=[
        {"role": "system", "content": "be brief"}, *user("canary-7f3a hello")])
    assert r.object == "chat.completion" and r.model == "gpt-4o-mini"
    assert r.choices[0].message.content == "echo: canary-7f3a hello"
    assert r.choices[0].finish_reason == "stop"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (4, 3, 7)
    assert r.usage.prompt_tokens_details.cached_tokens == 0
    seen = fake.requests[-1]
    assert (seen.method, seen.path) == ("POST", "/v1/chat/completions")
    assert seen.headers["authorization"] == f"Bearer {DEFAULT_KEY}"
    assert seen.body["messages"][-1]["content"] == "canary-7f3a hello"


def test_chat_honours_max_tokens_and_stop(oai):
    r = oai.chat.completions.create(model="m", messages=user("one two three four"), max_tokens=2)
    assert (r.choices[0].message.content, r.choices[0].finish_reason) == ("echo: one", "length")
    assert r.usage.completion_tokens == 2
    r = oai.chat.completions.create(model="m", messages=user("one two three four"), stop=["three"])
    assert (r.choices[0].message.content, r.choices[0].finish_reason) == ("echo: one two ", "stop")


def test_chat_stream_with_usage(oai):
    stream = oai.chat.completions.create(model="gpt-4o", messages=user("a b c"), stream=True,
                                         stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    content = [c.choices[0].delta.content for c in chunks[1:] if c.choices and c.choices[0].delta.content]
    assert content == ["echo:", " a", " b", " c"]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 4
    assert chunks[-1].usage.prompt_tokens == 3 and chunks[-1].model == "gpt-4o"


def test_chunks_override_and_cached_tokens(fake, oai):
    fake.push_fault(chunks=64, cached_tokens=2)
    chunks = list(oai.chat.completions.create(model="m", messages=user("short"), stream=True,
                                              stream_options={"include_usage": True}))
    deltas = [c.choices[0].delta.content for c in chunks[1:] if c.choices and c.choices[0].finish_reason is None]
    assert len(deltas) == 64 and "".join(deltas) == "echo: short"
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens == 1  # never more than the prompt


def test_tool_call(oai):
    r = oai.chat.completions.create(model="m", messages=user("what is the weather like?"), tools=TOOLS_OPENAI)
    call = r.choices[0].message.tool_calls[0]
    assert r.choices[0].finish_reason == "tool_calls" and r.choices[0].message.content is None
    assert (call.function.name, call.function.arguments) == ("get_weather", '{"city": "Paris"}')
    # After the tool result the model answers in text, so an agent loop ends.
    r = oai.chat.completions.create(model="m", tools=TOOLS_OPENAI, messages=[
        *user("what is the weather like?"), r.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "18C"}])
    assert r.choices[0].finish_reason == "stop" and r.choices[0].message.content.startswith("echo:")


def test_tool_call_streamed(oai):
    chunks = list(oai.chat.completions.create(model="m", messages=user("weather?"), tools=TOOLS_OPENAI,
                                              stream=True))
    first = chunks[0].choices[0].delta.tool_calls[0]
    assert (first.index, first.function.name, first.function.arguments) == (0, "get_weather", "")
    assert first.id.startswith("call_")
    args = "".join(c.choices[0].delta.tool_calls[0].function.arguments for c in chunks
                   if c.choices and c.choices[0].delta.tool_calls)
    assert json.loads(args) == {"city": "Paris"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_embeddings_and_models(oai):
    one = oai.embeddings.create(model="text-embedding-3-small", input="hello world")  # the SDK asks for base64
    floats = oai.embeddings.create(model="text-embedding-3-small", input=["hello world", "other"],
                                   encoding_format="float")
    assert len(one.data[0].embedding) == 8 and one.data[0].embedding == floats.data[0].embedding
    assert floats.data[0].embedding != floats.data[1].embedding
    assert floats.usage.prompt_tokens == 3
    ids = [m.id for m in oai.models.list()]
    assert "gpt-4o-mini" in ids


# ----------------------------------------------------------------------------- Anthropic

def test_messages(fake, claude):
    m = claude.messages.create(model="claude-sonnet-4-5", max_tokens=100, system=[{"type": "text", "text": "sys"}],
                               messages=user("canary-9b1c here"))
    assert m.type == "message" and m.model == "claude-sonnet-4-5"
    assert m.content[0].type == "text" and m.content[0].text == "echo: canary-9b1c here"
    assert m.stop_reason == "end_turn"
    assert (m.usage.input_tokens, m.usage.output_tokens, m.usage.cache_read_input_tokens) == (3, 3, 0)
    # anthropic SDK 2.x sends the key as a Bearer token; x-api-key (the documented header) is tested raw below.
    assert fake.requests[-1].headers["authorization"] == f"Bearer {DEFAULT_KEY}"
    assert "anthropic-version" in fake.requests[-1].headers

    m = claude.messages.create(model="c", max_tokens=2, messages=user("a b c"))
    assert (m.content[0].text, m.stop_reason) == ("echo: a", "max_tokens")
    m = claude.messages.create(model="c", max_tokens=50, messages=user("a b STOP c"), stop_sequences=["STOP"])
    assert (m.content[0].text, m.stop_reason, m.stop_sequence) == ("echo: a b ", "stop_sequence", "STOP")


def test_messages_tool_use(claude):
    m = claude.messages.create(model="c", max_tokens=50, tools=TOOLS_ANTHROPIC, messages=user("weather in France?"))
    block = m.content[0]
    assert m.stop_reason == "tool_use" and block.type == "tool_use"
    assert (block.name, block.input) == ("get_weather", {"city": "Paris"})


def test_messages_stream_text(claude):
    with claude.messages.stream(model="c", max_tokens=100, messages=user("x y z")) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "echo: x y z" == final.content[0].text
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (3, 4)


def test_messages_stream_tool_use(claude):
    with claude.messages.stream(model="c", max_tokens=100, tools=TOOLS_ANTHROPIC,
                                messages=user("the weather")) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert final.content[0].type == "tool_use" and final.content[0].input == {"city": "Paris"}


# ----------------------------------------------------------------------------- faults

def test_rate_limit(fake, oai, claude):
    fake.push_fault(status=429)
    with pytest.raises(openai.RateLimitError) as err:
        oai.chat.completions.create(model="m", messages=user("hi"))
    assert err.value.response.headers["retry-after"] == "1"
    assert err.value.body["code"] == "rate_limit_exceeded"
    fake.push_fault(status=429, retry_after=7)
    with pytest.raises(anthropic.RateLimitError) as err:
        claude.messages.create(model="c", max_tokens=5, messages=user("hi"))
    assert err.value.response.headers["retry-after"] == "7"
    assert err.value.body["error"]["type"] == "rate_limit_error"
    assert oai.chat.completions.create(model="m", messages=user("ok")).choices[0].message.content == "echo: ok"


def test_server_error(fake, oai, claude):
    fake.push_fault(status=500)
    fake.push_fault(status=500)
    with pytest.raises(openai.InternalServerError):
        oai.chat.completions.create(model="m", messages=user("hi"), stream=True)
    with pytest.raises(anthropic.InternalServerError):
        claude.messages.create(model="c", max_tokens=5, messages=user("hi"))


def test_sticky_default_fault(fake, oai):
    fake.set_default_fault(status=503)
    fake.push_fault(reply="queued wins over the default", status=None)
    assert oai.chat.completions.create(model="m", messages=user("hi")).choices[0].message.content \
        == "queued wins over the default"
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            oai.chat.completions.create(model="m", messages=user("hi"))
    fake.set_default_fault()
    assert oai.chat.completions.create(model="m", messages=user("hi")).choices


def test_drop_after(fake, oai, claude):
    fake.push_fault(drop_after=2)
    stream = oai.chat.completions.create(model="m", messages=user("a b c d"), stream=True)
    got = []
    with pytest.raises(openai.APIConnectionError):
        for chunk in stream:
            got.append(chunk)
    assert len(got) == 2
    fake.push_fault(drop_after=3)
    with pytest.raises(httpx.RemoteProtocolError):  # the SDK does not wrap an error mid-stream
        with claude.messages.stream(model="c", max_tokens=50, messages=user("a b c d")) as s:
            s.get_final_message()


def test_error_after_and_wrong_usage(fake, oai, claude):
    fake.push_fault(error_after=2)
    with pytest.raises(openai.APIError):
        list(oai.chat.completions.create(model="m", messages=user("a b c"), stream=True))
    fake.push_fault(error_after=2)
    with pytest.raises(anthropic.APIStatusError):
        with claude.messages.stream(model="c", max_tokens=50, messages=user("a b")) as s:
            s.get_final_message()
    fake.push_fault(wrong_usage="zero")
    assert oai.chat.completions.create(model="m", messages=user("a b")).usage.total_tokens == 0
    fake.push_fault(wrong_usage="absent")
    assert oai.chat.completions.create(model="m", messages=user("a b")).usage is None
    fake.push_fault(wrong_usage="absent")
    chunks = list(oai.chat.completions.create(model="m", messages=user("a"), stream=True,
                                              stream_options={"include_usage": True}))
    assert all(c.usage is None for c in chunks)
    with pytest.raises(TypeError):
        fake.push_fault(dropafter=1)


def test_wrong_key(fake):
    with openai.OpenAI(base_url=fake.base_url + "/v1", api_key="sk-wrong", max_retries=0) as client:
        with pytest.raises(openai.AuthenticationError) as err:
            client.models.list()
    assert err.value.body["code"] == "invalid_api_key"
    with anthropic.Anthropic(base_url=fake.base_url, api_key="sk-wrong", max_retries=0) as client:
        with pytest.raises(anthropic.AuthenticationError) as err:
            client.messages.create(model="c", max_tokens=5, messages=user("hi"))
    assert err.value.body == {"type": "error", "error": {"type": "authentication_error",
                                                         "message": "invalid x-api-key"},
                              "request_id": err.value.body["request_id"]}


def test_slow_first_byte_and_chunk_delay(fake, oai):
    fake.push_fault(slow_first_byte=0.2, chunk_delay=0.05)
    t0 = time.perf_counter()
    stream = oai.chat.completions.create(model="m", messages=user("a b"), stream=True)
    first = time.perf_counter() - t0
    list(stream)
    assert 0.2 <= first < 1.0
    assert time.perf_counter() - t0 >= 0.2 + 4 * 0.05  # role, 3 words, finish, [DONE]: 5 gaps


def test_raw_http_keep_alive_and_chunking(fake):
    conn = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=5)
    headers = {"Authorization": f"Bearer {DEFAULT_KEY}", "Content-Type": "application/json"}
    body = json.dumps({"model": "m", "messages": user("hi"), "stream": True})
    for _ in range(2):  # the same socket serves both
        conn.request("POST", "/v1/chat/completions", body, headers)
        r = conn.getresponse()
        assert r.status == 200 and r.getheader("Transfer-Encoding") == "chunked"
        assert r.getheader("Content-Type").startswith("text/event-stream")
        events = r.read().decode().split("\n\n")
        assert events[-2:] == ["data: [DONE]", ""]
    assert conn.sock is not None
    conn.request("GET", "/v1/nope", headers=headers)
    r = conn.getresponse()
    assert r.status == 404 and set(json.loads(r.read())["error"]) == {"message", "type", "param", "code"}

    anthropic_headers = {"x-api-key": DEFAULT_KEY, "anthropic-version": "2023-06-01"}
    conn.request("POST", "/v1/messages", json.dumps({"model": "c", "max_tokens": 9, "messages": user("hi"),
                                                     "stream": True}), anthropic_headers)
    r = conn.getresponse()
    names = [line[len("event: "):] for line in r.read().decode().splitlines() if line.startswith("event: ")]
    assert names == ["message_start", "content_block_start", "ping", "content_block_delta", "content_block_delta",
                     "content_block_stop", "message_delta", "message_stop"]
    conn.request("GET", "/v1/models", headers=anthropic_headers)
    assert json.loads(conn.getresponse().read())["data"][0]["type"] == "model"
    conn.request("POST", "/v1/messages", "{}", {**anthropic_headers, "x-api-key": "sk-wrong"})
    r = conn.getresponse()
    assert r.status == 401 and json.loads(r.read())["error"]["type"] == "authentication_error"
    conn.close()


def test_record_off():
    fake = FakeProvider(record=False).start()
    try:
        with openai.OpenAI(base_url=fake.base_url + "/v1", api_key=DEFAULT_KEY, max_retries=0) as client:
            client.models.list()
        assert fake.requests == []
    finally:
        fake.stop()


def test_hang_times_out_and_stop_is_fast():
    fake = FakeProvider().start()
    streaming = threading.Thread(target=lambda: _open_slow_stream(fake), daemon=True)
    try:
        fake.push_fault(hang=True)
        with openai.OpenAI(base_url=fake.base_url + "/v1", api_key=DEFAULT_KEY, max_retries=0, timeout=1) as c:
            with pytest.raises(openai.APITimeoutError):
                c.chat.completions.create(model="m", messages=user("hi"))
        fake.push_fault(hang=True)
        fake.push_fault(chunk_delay=30)
        with anthropic.Anthropic(base_url=fake.base_url, api_key=DEFAULT_KEY, max_retries=0, timeout=30) as c:
            threading.Thread(target=lambda: _swallow(lambda: c.messages.create(
                model="c", max_tokens=5, messages=user("hi"))), daemon=True).start()
            fake.wait_requests(2)
            streaming.start()
            fake.wait_requests(3)
            time.sleep(0.1)
    finally:
        t0 = time.perf_counter()
        fake.stop()
        elapsed = time.perf_counter() - t0
    assert elapsed < 0.5
    streaming.join(2)
    assert not streaming.is_alive()


def _open_slow_stream(fake):
    with anthropic.Anthropic(base_url=fake.base_url, api_key=DEFAULT_KEY, max_retries=0) as client:
        _swallow(lambda: list(client.messages.create(model="c", max_tokens=9, messages=user("a b"), stream=True)))


def _swallow(call):
    try:
        call()
    except Exception:
        pass
