"""The OpenAI-compatible endpoints, driven by the official `openai` SDK against
the relay served for real (P20), routed to OpenAI- and Anthropic-shaped
providers (P21), each request metered with exactly P22's fields (P22)."""
from __future__ import annotations

import json
import time
from decimal import Decimal

import openai
import pytest

from tests.relay.conftest import UPSTREAM_KEY

PRICES = {  # USD per million tokens: input, output, cache read, cache write (the conftest's TOML)
    "gpt-test": ("1.0", "2.0", "0.5", "1.25"),
    "claude-test": ("3.0", "15.0", "0.3", "3.75"),
    "embed-test": ("0.1", "0", "0", "0"),
    "fallback-test": ("1.0", "1.0", "0", "0"),
}
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def cost(model: str, input_tokens: int, output_tokens: int, cache_read: int = 0, cache_write: int = 0) -> Decimal:
    p = [Decimal(x) for x in PRICES[model]]
    total = p[0] * input_tokens + p[1] * output_tokens + p[2] * cache_read + p[3] * cache_write
    return (total / Decimal(1_000_000)).quantize(Decimal("0.00000001"))


def assert_row(row, relay, request_id: str, *, model: str, provider: str, input_tokens: int, output_tokens: int,
               cache_read: int = 0, cache_write: int = 0, trace_len: int = 1):
    """Every P22 field of a successful request's row, exactly."""
    assert row.request_id == request_id
    assert row.user_id == relay.user_id and row.api_key_id == relay.key_id and row.team_id is None
    assert row.model == model and row.provider == provider
    assert (row.input_tokens, row.output_tokens, row.cache_read_tokens, row.cache_write_tokens) == \
        (input_tokens, output_tokens, cache_read, cache_write)
    assert Decimal(row.cost_usd) == cost(model, input_tokens, output_tokens, cache_read, cache_write)
    assert row.cost_usd > 0
    assert row.ttft_ms is not None and row.ttft_ms >= 0
    assert row.latency_ms is not None and row.latency_ms >= row.ttft_ms
    assert row.started_at <= row.ended_at
    assert row.status_code == 200 and row.error_class is None
    assert row.usage_source == "provider"
    trace = json.loads(row.routing_trace)
    assert isinstance(trace, list) and len(trace) == trace_len
    assert trace[-1]["provider"] == provider and trace[-1]["outcome"] == "ok" and isinstance(trace[-1]["ms"], int)
    return trace


@pytest.mark.promise("P22", "P23")
def test_usage_rows_hold_exactly_the_p22_fields():
    from app.models import UsageRecord
    assert set(UsageRecord.__table__.columns.keys()) == {
        "id", "request_id", "user_id", "team_id", "api_key_id", "project", "tags", "started_at", "ended_at",
        "model", "provider", "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
        "cost_usd", "ttft_ms", "latency_ms", "status_code", "error_class", "routing_trace", "usage_source"}


# ---- chat completions, OpenAI-shaped provider ----------------------------------------

@pytest.mark.promise("P20", "P22")
def test_chat_non_streaming_and_its_row(relay, fake):
    mark = relay.mark()
    raw = relay.openai().chat.completions.with_raw_response.create(
        model="gpt-test", messages=[{"role": "user", "content": "hello there"}])
    reply = raw.parse()
    assert reply.choices[0].message.content == "echo: hello there"
    assert reply.choices[0].finish_reason == "stop"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (2, 3)
    rid = raw.headers["x-request-id"]
    assert rid.startswith("req_")
    [row] = relay.new_rows(mark)
    trace = assert_row(row, relay, rid, model="gpt-test", provider="oai", input_tokens=2, output_tokens=3)
    assert trace[0]["model"] == "gpt-upstream"
    assert row.project is None and row.tags is None
    # The upstream got the upstream model name and the relay's own credential, not the client's key.
    [req] = fake.requests
    assert req.path == "/v1/chat/completions" and req.body["model"] == "gpt-upstream"
    assert req.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"


@pytest.mark.promise("P22")
def test_cached_tokens_are_cache_reads_not_input(relay, fake):
    fake.push_fault(cached_tokens=3)
    mark = relay.mark()
    raw = relay.openai().chat.completions.with_raw_response.create(
        model="gpt-test", messages=[{"role": "user", "content": "one two three four five"}])
    reply = raw.parse()
    assert reply.usage.prompt_tokens == 5 and reply.usage.prompt_tokens_details.cached_tokens == 3
    [row] = relay.new_rows(mark)
    # 5 prompt tokens, 3 of them from the cache: input excludes the cached part.
    assert_row(row, relay, raw.headers["x-request-id"], model="gpt-test", provider="oai",
               input_tokens=2, output_tokens=6, cache_read=3)


@pytest.mark.promise("P20", "P22")
def test_chat_streaming_without_include_usage(relay, fake):
    mark = relay.mark()
    raw = relay.openai().chat.completions.with_raw_response.create(
        model="gpt-test", messages=[{"role": "user", "content": "stream me some words"}], stream=True)
    assert raw.headers["content-type"].startswith("text/event-stream")
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: stream me some words"
    # The relay asked upstream for usage (to meter), but the client did not ask: no usage chunk.
    assert all(c.choices for c in chunks)
    assert all(getattr(c, "usage", None) is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert fake.requests[0].body["stream_options"] == {"include_usage": True}
    [row] = relay.new_rows(mark)
    assert_row(row, relay, raw.headers["x-request-id"], model="gpt-test", provider="oai",
               input_tokens=4, output_tokens=5)


@pytest.mark.promise("P20", "P22")
def test_chat_streaming_with_include_usage(relay, fake):
    mark = relay.mark()
    raw = relay.openai().chat.completions.with_raw_response.create(
        model="gpt-test", messages=[{"role": "user", "content": "stream me"}], stream=True,
        stream_options={"include_usage": True})
    chunks = list(raw.parse())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo: stream me"
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (2, 3)
    assert sum(1 for c in chunks if c.usage) == 1
    [row] = relay.new_rows(mark)
    assert_row(row, relay, raw.headers["x-request-id"], model="gpt-test", provider="oai",
               input_tokens=2, output_tokens=3)


@pytest.mark.promise("P20")
def test_chat_stream_is_passed_through_event_by_event(relay, fake):
    """Not buffered: with 0.3 s between upstream events the first one reaches
    the client long before the last one is sent."""
    fake.push_fault(chunk_delay=0.3, chunks=4)
    mark = relay.mark()
    t0 = time.perf_counter()
    stream = relay.openai().chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": "a b c d"}], stream=True)
    arrivals = [time.perf_counter() - t0 for _ in stream]
    assert arrivals[0] < 0.6
    assert arrivals[-1] > 1.2
    relay.new_rows(mark)


@pytest.mark.promise("P20", "P22")
def test_embeddings(relay, fake):
    mark = relay.mark()
    raw = relay.openai().embeddings.with_raw_response.create(model="embed-test", input=["one two", "three"])
    result = raw.parse()
    assert [d.index for d in result.data] == [0, 1]
    assert all(len(d.embedding) == 8 for d in result.data)
    assert result.usage.prompt_tokens == 3
    assert fake.requests[0].path == "/v1/embeddings" and fake.requests[0].body["model"] == "embed-upstream"
    [row] = relay.new_rows(mark)
    assert_row(row, relay, raw.headers["x-request-id"], model="embed-test", provider="oai",
               input_tokens=3, output_tokens=0)

    one = relay.openai().embeddings.create(model="embed-test", input="just one text", encoding_format="float")
    assert len(one.data) == 1 and len(one.data[0].embedding) == 8
    [row] = relay.new_rows(mark + 1)
    assert row.input_tokens == 3 and row.usage_source == "provider"


@pytest.mark.promise("P20")
def test_models_list_and_retrieve(relay):
    mark = relay.mark()
    client = relay.openai()
    ids = sorted(m.id for m in client.models.list())
    assert ids == ["claude-test", "embed-test", "fallback-test", "free-test", "gpt-test", "pricey-claude",
                   "pricey-test"]
    model = client.models.retrieve("gpt-test")
    assert model.id == "gpt-test" and model.object == "model"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")
    assert relay.new_rows(mark, 0) == []  # listing models is not a metered request


@pytest.mark.promise("P20", "P10")
def test_models_list_only_shows_the_keys_allowlist(relay, fake):
    key_id, raw_key = relay.make_key(name="allowlisted", models=["gpt-test", "claude-test"])
    mark = relay.mark()
    client = relay.openai(raw_key)
    assert sorted(m.id for m in client.models.list()) == ["claude-test", "gpt-test"]
    assert client.models.retrieve("claude-test").id == "claude-test"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("embed-test")
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="embed-test", input="hi")
    assert fake.requests == []  # refused before any upstream call
    [row] = relay.new_rows(mark)  # the refused call is metered, with nothing used
    assert row.api_key_id == key_id and row.model == "embed-test" and row.status_code == 404
    assert row.usage_source == "none" and row.error_class and row.input_tokens == 0 and row.cost_usd == 0


@pytest.mark.promise("P20")
def test_tool_call_not_streamed(relay, fake):
    mark = relay.mark()
    reply = relay.openai().chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": "what is the weather today"}], tools=[WEATHER_TOOL])
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    # The tool result goes back and the model answers in text.
    reply2 = relay.openai().chat.completions.create(
        model="gpt-test", tools=[WEATHER_TOOL], messages=[
            {"role": "user", "content": "what is the weather today"},
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": "sunny"}])
    assert reply2.choices[0].message.content and reply2.choices[0].finish_reason == "stop"
    rows = relay.new_rows(mark, 2)
    assert rows[0].output_tokens == 2 and all(r.usage_source == "provider" for r in rows)


@pytest.mark.promise("P20")
def test_tool_call_streamed(relay, fake):
    mark = relay.mark()
    stream = relay.openai().chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": "weather please"}], tools=[WEATHER_TOOL],
        stream=True)
    name, args, finish = "", "", None
    for chunk in stream:
        for c in chunk.choices:
            for tc in c.delta.tool_calls or ():
                name += tc.function.name or "" if tc.function else ""
                args += tc.function.arguments or "" if tc.function else ""
            finish = c.finish_reason or finish
    assert name == "get_weather" and json.loads(args) == {"city": "Paris"} and finish == "tool_calls"
    [row] = relay.new_rows(mark)
    assert row.output_tokens == 2 and row.usage_source == "provider" and row.error_class is None


# ---- OpenAI SDK -> Anthropic provider (translation) ----------------------------------

@pytest.mark.promise("P20", "P21", "P22")
def test_openai_sdk_to_anthropic_provider(relay, fake):
    mark = relay.mark()
    raw = relay.openai().chat.completions.with_raw_response.create(
        model="claude-test", max_tokens=50, temperature=0.3, stop=["NEVER"],
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello from openai"}])
    reply = raw.parse()
    assert reply.object == "chat.completion" and reply.model == "claude-test"
    assert reply.choices[0].message.content == "echo: hello from openai"
    assert reply.choices[0].finish_reason == "stop"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (5, 4)
    [req] = fake.requests
    assert req.path == "/v1/messages"
    assert req.headers["x-api-key"] == UPSTREAM_KEY and req.headers["anthropic-version"]
    body = req.body
    assert body["model"] == "claude-upstream"
    assert body["system"] == "be brief"
    assert body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hello from openai"}]}] or \
        body["messages"] == [{"role": "user", "content": "hello from openai"}]
    assert body["max_tokens"] == 50 and body["temperature"] == 0.3 and body["stop_sequences"] == ["NEVER"]
    [row] = relay.new_rows(mark)
    assert_row(row, relay, raw.headers["x-request-id"], model="claude-test", provider="claude",
               input_tokens=5, output_tokens=4)


@pytest.mark.promise("P20")
def test_openai_sdk_to_anthropic_stop_and_max_tokens(relay, fake):
    mark = relay.mark()
    client = relay.openai()
    stopped = client.chat.completions.create(
        model="claude-test", stop="STOP", messages=[{"role": "user", "content": "one STOP two"}])
    assert stopped.choices[0].message.content == "echo: one " and stopped.choices[0].finish_reason == "stop"
    cut = client.chat.completions.create(
        model="claude-test", max_tokens=2, messages=[{"role": "user", "content": "one two three four"}])
    assert cut.choices[0].message.content == "echo: one" and cut.choices[0].finish_reason == "length"
    assert fake.requests[1].body["max_tokens"] == 2
    assert fake.requests[0].body["stop_sequences"] == ["STOP"]
    assert [r.output_tokens for r in relay.new_rows(mark, 2)] == [2, 2]


@pytest.mark.promise("P20", "P22")
def test_openai_sdk_to_anthropic_streaming(relay, fake):
    mark = relay.mark()
    client = relay.openai()
    raw = client.chat.completions.with_raw_response.create(
        model="claude-test", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "system", "content": "sys"}, {"role": "user", "content": "stream from claude"}])
    chunks = list(raw.parse())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo: stream from claude"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens == 4
    assert chunks[-1].usage.completion_tokens == 4
    assert fake.requests[0].body["stream"] is True and fake.requests[0].path == "/v1/messages"

    plain = list(client.chat.completions.create(
        model="claude-test", stream=True, messages=[{"role": "user", "content": "no usage please"}]))
    assert all(c.choices for c in plain) and all(c.usage is None for c in plain)
    assert "".join(c.choices[0].delta.content or "" for c in plain) == "echo: no usage please"

    first, second = relay.new_rows(mark, 2)
    assert_row(first, relay, raw.headers["x-request-id"], model="claude-test", provider="claude",
               input_tokens=4, output_tokens=4)
    assert second.usage_source == "provider" and (second.input_tokens, second.output_tokens) == (3, 4)


@pytest.mark.promise("P20")
def test_openai_sdk_to_anthropic_tool_calls(relay, fake):
    mark = relay.mark()
    client = relay.openai()
    reply = client.chat.completions.create(
        model="claude-test", tools=[WEATHER_TOOL], messages=[{"role": "user", "content": "weather in Paris?"}])
    assert reply.choices[0].finish_reason == "tool_calls"
    [call] = reply.choices[0].message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    assert fake.requests[0].body["tools"][0]["name"] == "get_weather"
    assert "input_schema" in fake.requests[0].body["tools"][0]

    name, args, finish = "", "", None
    for chunk in client.chat.completions.create(
            model="claude-test", tools=[WEATHER_TOOL], stream=True,
            messages=[{"role": "user", "content": "weather in Paris?"}]):
        for c in chunk.choices:
            for tc in c.delta.tool_calls or ():
                if tc.function:
                    name += tc.function.name or ""
                    args += tc.function.arguments or ""
            finish = c.finish_reason or finish
    assert name == "get_weather" and json.loads(args) == {"city": "Paris"} and finish == "tool_calls"

    # The result goes back as an Anthropic tool_result and the answer is text.
    done = client.chat.completions.create(model="claude-test", tools=[WEATHER_TOOL], messages=[
        {"role": "user", "content": "weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "sunny"}])
    assert done.choices[0].finish_reason == "stop" and done.choices[0].message.content
    sent = fake.requests[-1].body["messages"]
    assert sent[-1]["role"] == "user" and sent[-1]["content"][0]["type"] == "tool_result"
    assert sent[-1]["content"][0]["tool_use_id"] == call.id
    assert all(r.usage_source == "provider" and r.provider == "claude" for r in relay.new_rows(mark, 3))


# ---- project and tags ----------------------------------------------------------------

@pytest.mark.promise("P22")
def test_project_and_tags_from_headers_are_stored(relay, fake):
    mark = relay.mark()
    relay.openai().chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": "hi"}],
        extra_headers={"X-Relay-Project": "billing-svc", "X-Relay-Tags": "env=prod, team:search,v1.2"})
    [row] = relay.new_rows(mark)
    assert row.project == "billing-svc"
    assert json.loads(row.tags) == ["env=prod", "team:search", "v1.2"]


@pytest.mark.promise("P22")
@pytest.mark.parametrize("headers", [
    {"X-Relay-Project": "has spaces"},
    {"X-Relay-Project": "x" * 65},
    {"X-Relay-Tags": ",".join(f"t{i}" for i in range(11))},
    {"X-Relay-Tags": "ok,not ok"},
    {"X-Relay-Tags": "y" * 33},
])
def test_invalid_project_or_tags_is_a_400(relay, fake, headers):
    mark = relay.mark()
    with pytest.raises(openai.BadRequestError) as info:
        relay.openai().chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": "hi"}], extra_headers=headers)
    assert info.value.status_code == 400
    rid = info.value.response.headers["x-request-id"]
    assert fake.requests == []
    [row] = relay.new_rows(mark)
    assert row.request_id == rid and row.status_code == 400 and row.usage_source == "none"
    assert row.project is None and row.tags is None  # nothing of the invalid header is kept
