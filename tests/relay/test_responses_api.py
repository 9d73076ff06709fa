"""OpenAI's Responses API (POST /v1/responses), driven by the official `openai` SDK
against the relay served for real (P20): passed through to an OpenAI-shaped
provider's /responses with the public model swapped for the upstream one and
`store: false`, and translated to and from an Anthropic-shaped provider (P21),
each request metered with its input, output and cached tokens and its cost (P22).
What needs a stored response is refused before anything goes upstream, and no
content reaches a usage row (P23)."""
from __future__ import annotations

import json
import uuid
from decimal import Decimal

import openai
import pytest

from tests.relay.conftest import UPSTREAM_KEY

PRICES = {  # USD per million tokens: input, output, cache read, cache write (the conftest's TOML)
    "gpt-test": ("1.0", "2.0", "0.5", "1.25"),
    "claude-test": ("3.0", "15.0", "0.3", "3.75"),
}
WEATHER = {"type": "function", "name": "get_weather", "description": "The weather in a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def cost(model: str, input_tokens: int, output_tokens: int, cache_read: int = 0, cache_write: int = 0) -> Decimal:
    p = [Decimal(x) for x in PRICES[model]]
    total = p[0] * input_tokens + p[1] * output_tokens + p[2] * cache_read + p[3] * cache_write
    return (total / Decimal(1_000_000)).quantize(Decimal("0.00000001"))


def assert_row(row, relay, *, model: str, provider: str, input_tokens: int, output_tokens: int,
               cache_read: int = 0, request_id: str | None = None) -> None:
    """A successful request's row: who, what, the provider's token counts and their cost."""
    if request_id is not None:
        assert row.request_id == request_id
    assert row.user_id == relay.user_id and row.api_key_id == relay.key_id
    assert row.model == model and row.provider == provider
    assert (row.input_tokens, row.output_tokens, row.cache_read_tokens, row.cache_write_tokens) == \
        (input_tokens, output_tokens, cache_read, 0)
    assert Decimal(row.cost_usd) == cost(model, input_tokens, output_tokens, cache_read) and row.cost_usd > 0
    assert row.status_code == 200 and row.error_class is None and row.usage_source == "provider"
    assert row.ttft_ms is not None and row.latency_ms is not None and row.latency_ms >= row.ttft_ms
    trace = json.loads(row.routing_trace)
    assert trace[-1]["provider"] == provider and trace[-1]["outcome"] == "ok"


def assert_refused(info, field: str) -> None:
    """A 400 in the Responses API's (OpenAI's) error shape that names the field."""
    err = info.value
    assert err.status_code == 400 and field in err.message
    assert err.body["type"] == "invalid_request_error" and "param" in err.body and "code" in err.body


# ---- pass-through to an OpenAI-shaped provider ----------------------------------------

@pytest.mark.promise("P20", "P22")
def test_create_passes_through_with_the_upstream_model_and_store_false(relay, fake):
    mark = relay.mark()
    raw = relay.openai().responses.with_raw_response.create(model="gpt-test", input="hello there",
                                                            instructions="be brief")
    r = raw.parse()
    assert r.object == "response" and r.status == "completed" and r.output_text == "echo: hello there"
    assert (r.usage.input_tokens, r.usage.output_tokens) == (4, 3)
    [req] = fake.requests
    assert req.path == "/v1/responses" and req.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert req.body["model"] == "gpt-upstream" and req.body["store"] is False
    assert req.body["input"] == "hello there" and req.body["instructions"] == "be brief"
    [row] = relay.new_rows(mark)
    assert_row(row, relay, model="gpt-test", provider="oai", input_tokens=4, output_tokens=3,
               request_id=raw.headers["x-request-id"])
    assert json.loads(row.routing_trace)[0]["model"] == "gpt-upstream"


@pytest.mark.promise("P20")
def test_store_false_is_kept_and_the_rest_untouched(relay, fake):
    mark = relay.mark()
    relay.openai().responses.create(model="gpt-test", input=[{"role": "user", "content": "hi"}], store=False,
                                    temperature=0.5, metadata={"run": "7"}, tools=[WEATHER],
                                    include=["reasoning.encrypted_content"])
    [req] = fake.requests
    assert req.body == {"model": "gpt-upstream", "input": [{"role": "user", "content": "hi"}], "store": False,
                        "temperature": 0.5, "metadata": {"run": "7"}, "tools": [WEATHER],
                        "include": ["reasoning.encrypted_content"]}
    relay.new_rows(mark)


@pytest.mark.promise("P22")
def test_passthrough_cached_tokens_are_cache_reads_not_input(relay, fake):
    fake.push_fault(cached_tokens=3)
    mark = relay.mark()
    r = relay.openai().responses.create(model="gpt-test", input="one two three four five")
    assert r.usage.input_tokens == 5 and r.usage.input_tokens_details.cached_tokens == 3
    [row] = relay.new_rows(mark)
    # 5 input tokens, 3 of them from the cache: the row's input excludes the cached part.
    assert_row(row, relay, model="gpt-test", provider="oai", input_tokens=2, output_tokens=6, cache_read=3)


@pytest.mark.promise("P20", "P22")
def test_stream_passes_through(relay, fake):
    fake.push_fault(cached_tokens=1)
    mark = relay.mark()
    with relay.openai().responses.stream(model="gpt-test", input="stream me some words") as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == \
        final.output_text == "echo: stream me some words"
    assert [e.sequence_number for e in events] == sorted(e.sequence_number for e in events)
    [req] = fake.requests
    assert req.path == "/v1/responses" and req.body["stream"] is True
    assert req.body["model"] == "gpt-upstream" and req.body["store"] is False
    [row] = relay.new_rows(mark)
    assert_row(row, relay, model="gpt-test", provider="oai", input_tokens=3, output_tokens=5, cache_read=1)


@pytest.mark.promise("P20")
def test_passthrough_tool_call(relay, fake):
    mark = relay.mark()
    client = relay.openai()
    r = client.responses.create(model="gpt-test", input="weather in Paris?", tools=[WEATHER])
    [call] = r.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Paris"}
    with client.responses.stream(model="gpt-test", input="weather in Paris?", tools=[WEATHER]) as stream:
        streamed = stream.get_final_response().output[0]
    assert streamed.type == "function_call" and json.loads(streamed.arguments) == {"city": "Paris"}
    rows = relay.new_rows(mark, 2)
    assert [r.output_tokens for r in rows] == [2, 2]


# ---- translated to an Anthropic-shaped provider ---------------------------------------

@pytest.mark.promise("P20", "P21", "P22")
def test_create_translated_to_anthropic(relay, fake):
    mark = relay.mark()
    raw = relay.openai().responses.with_raw_response.create(
        model="claude-test", instructions="be brief", input="hello from responses", max_output_tokens=50,
        temperature=0.3)
    r = raw.parse()
    assert r.object == "response" and r.model == "claude-test" and r.status == "completed"
    assert r.id.startswith("resp_") and r.output_text == "echo: hello from responses"
    assert (r.usage.input_tokens, r.usage.output_tokens, r.usage.total_tokens) == (5, 4, 9)
    [req] = fake.requests
    assert req.path == "/v1/messages" and req.headers["x-api-key"] == UPSTREAM_KEY
    assert req.body["model"] == "claude-upstream" and req.body["system"] == "be brief"
    assert req.body["max_tokens"] == 50 and req.body["temperature"] == 0.3
    assert req.body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hello from responses"}]}]
    assert "store" not in req.body
    [row] = relay.new_rows(mark)
    assert_row(row, relay, model="claude-test", provider="claude", input_tokens=5, output_tokens=4,
               request_id=raw.headers["x-request-id"])


@pytest.mark.promise("P21", "P22")
def test_translated_cached_tokens_and_system_items(relay, fake):
    fake.push_fault(cached_tokens=2)
    mark = relay.mark()
    r = relay.openai().responses.create(model="claude-test", input=[
        {"role": "developer", "content": "answer briefly"},
        {"role": "user", "content": [{"type": "input_text", "text": "one two three"}]}])
    # OpenAI's input_tokens includes the cached part; the row's does not.
    assert r.usage.input_tokens == 5 and r.usage.input_tokens_details.cached_tokens == 2
    assert r.output_text == "echo: one two three"
    assert fake.requests[0].body["system"] == "answer briefly"
    assert fake.requests[0].body["max_tokens"] == 4096  # the relay's default: Anthropic requires one
    [row] = relay.new_rows(mark)
    assert_row(row, relay, model="claude-test", provider="claude", input_tokens=3, output_tokens=4, cache_read=2)


@pytest.mark.promise("P20", "P21", "P22")
def test_stream_translated_to_anthropic(relay, fake):
    mark = relay.mark()
    with relay.openai().responses.stream(model="claude-test", instructions="sys",
                                         input="stream from claude") as stream:
        events = list(stream)
        final = stream.get_final_response()
    names = [e.type for e in events]
    assert names[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert names[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == \
        final.output_text == "echo: stream from claude"
    assert final.model == "claude-test" and (final.usage.input_tokens, final.usage.output_tokens) == (4, 4)
    [req] = fake.requests
    assert req.path == "/v1/messages" and req.body["stream"] is True and req.body["system"] == "sys"
    [row] = relay.new_rows(mark)
    assert_row(row, relay, model="claude-test", provider="claude", input_tokens=4, output_tokens=4)


@pytest.mark.promise("P20", "P21")
def test_translated_max_output_tokens_is_incomplete(relay, fake):
    mark = relay.mark()
    client = relay.openai()
    r = client.responses.create(model="claude-test", input="one two three four", max_output_tokens=2)
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.output_text == "echo: one" and fake.requests[0].body["max_tokens"] == 2
    with client.responses.stream(model="claude-test", input="one two three four", max_output_tokens=2) as stream:
        last = list(stream)[-1]
    assert last.type == "response.incomplete" and last.response.incomplete_details.reason == "max_output_tokens"
    relay.new_rows(mark, 2)


@pytest.mark.promise("P20", "P21")
def test_function_tool_round_trip_through_anthropic(relay, fake):
    mark = relay.mark()
    client = relay.openai()
    r = client.responses.create(model="claude-test", input="weather in Paris?", tools=[WEATHER])
    [call] = r.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Paris"} and call.call_id
    sent = fake.requests[0].body
    assert sent["tools"] == [{"name": "get_weather", "description": "The weather in a city.",
                              "input_schema": WEATHER["parameters"]}]

    with client.responses.stream(model="claude-test", input="weather in Paris?", tools=[WEATHER]) as stream:
        deltas = [e.delta for e in stream if e.type == "response.function_call_arguments.delta"]
        streamed = stream.get_final_response().output[0]
    assert streamed.type == "function_call" and json.loads("".join(deltas)) == {"city": "Paris"}
    assert json.loads(streamed.arguments) == {"city": "Paris"}

    # The result goes back as an Anthropic tool_result and the answer is text.
    done = client.responses.create(model="claude-test", tools=[WEATHER], input=[
        {"role": "user", "content": "weather in Paris?"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}])
    assert done.output[0].type == "message" and done.output_text == "echo: sunny"
    messages = fake.requests[-1].body["messages"]
    assert messages[1] == {"role": "assistant", "content": [
        {"type": "tool_use", "id": call.call_id, "name": "get_weather", "input": {"city": "Paris"}}]}
    assert messages[2] == {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": call.call_id, "content": "sunny"}]}
    rows = relay.new_rows(mark, 3)
    assert all(r.usage_source == "provider" and r.status_code == 200 for r in rows)


# ---- refused: stored state, and what Anthropic cannot carry ---------------------------

@pytest.mark.promise("P20", "P23")
@pytest.mark.parametrize("model", ["gpt-test", "claude-test"])
@pytest.mark.parametrize("extra, field", [
    ({"previous_response_id": "resp_abc123"}, "previous_response_id"),
    ({"store": True}, "store"),
    ({"conversation": "conv_abc123"}, "conversation"),
    ({"background": True}, "background"),
])
def test_stateful_features_are_refused_before_going_upstream(relay, fake, model, extra, field):
    mark = relay.mark()
    with pytest.raises(openai.BadRequestError) as info:
        relay.openai().responses.create(model=model, input="hello", **extra)
    assert_refused(info, field)
    assert info.value.param == field
    assert fake.requests == []
    [row] = relay.new_rows(mark)
    assert row.status_code == 400 and row.usage_source == "none" and row.cost_usd == 0


@pytest.mark.promise("P20", "P21")
@pytest.mark.parametrize("extra, field", [
    ({"tools": [{"type": "web_search"}]}, "tools[0]"),
    ({"tools": [{"type": "file_search", "vector_store_ids": ["vs_1"]}]}, "tools[0]"),
    ({"text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}}}}, "text.format"),
    ({"include": ["message.output_text.logprobs"]}, "include"),
    ({"reasoning": {"effort": "high"}}, "reasoning"),
])
def test_what_anthropic_cannot_carry_is_refused(relay, fake, extra, field):
    mark = relay.mark()
    with pytest.raises(openai.BadRequestError) as info:
        relay.openai().responses.create(model="claude-test", input="hello", **extra)
    assert_refused(info, field)
    assert fake.requests == []
    [row] = relay.new_rows(mark)
    assert row.status_code == 400 and row.cost_usd == 0


@pytest.mark.promise("P20", "P21")
def test_an_image_input_to_anthropic_is_refused_naming_where(relay, fake):
    with pytest.raises(openai.BadRequestError) as info:
        relay.openai().responses.create(model="claude-test", input=[{"role": "user", "content": [
            {"type": "input_text", "text": "what is this?"},
            {"type": "input_image", "image_url": "https://example.com/cat.png"}]}])
    assert_refused(info, "input[0].content[1]")
    assert fake.requests == []


# ---- zero-log ------------------------------------------------------------------------

@pytest.mark.promise("P22", "P23")
def test_a_canary_in_the_input_never_reaches_a_usage_row(relay, fake):
    canary = "CANARY-" + uuid.uuid4().hex
    mark = relay.mark()
    client = relay.openai()
    for model in ("gpt-test", "claude-test"):
        r = client.responses.create(model=model, instructions=f"sys {canary}", input=f"say {canary}")
        assert canary in r.output_text  # the answer reaches the client
        with client.responses.stream(model=model, input=[{"role": "user", "content": f"say {canary}"}]) as stream:
            assert canary in stream.get_final_response().output_text
        with pytest.raises(openai.BadRequestError) as info:
            client.responses.create(model=model, input=f"say {canary}", previous_response_id="resp_" + canary[7:])
        assert canary not in info.value.message and canary[7:] not in info.value.message
    with pytest.raises(openai.BadRequestError) as info:  # untranslatable, with the canary as a tool type
        client.responses.create(model="claude-test", input=canary, tools=[{"type": canary}])
    assert canary not in json.dumps(info.value.body)
    rows = relay.new_rows(mark, 7)
    for row in rows:
        values = {c: getattr(row, c) for c in row.__table__.columns.keys()}
        assert canary[7:] not in repr(values)
    assert [r.status_code for r in rows].count(200) == 4
