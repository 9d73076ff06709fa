"""Anthropic's /v1/messages through the relay, driven by the official
`anthropic` SDK (P20), to an Anthropic-shaped provider and, translated, to an
OpenAI-shaped one (P21), metered per P22."""
from __future__ import annotations

import json

import anthropic
import httpx2 as httpx
import pytest

from tests.relay.conftest import UPSTREAM_KEY
from tests.relay.test_openai_api import assert_row

WEATHER_TOOL = {"name": "get_weather", "description": "The weather in a city.",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


@pytest.mark.promise("P20", "P22")
def test_messages_non_streaming(relay, fake):
    mark = relay.mark()
    raw = relay.anthropic().messages.with_raw_response.create(
        model="claude-test", max_tokens=100, messages=[{"role": "user", "content": "hello claude"}])
    msg = raw.parse()
    assert msg.type == "message" and msg.role == "assistant"
    assert msg.content[0].type == "text" and msg.content[0].text == "echo: hello claude"
    assert msg.stop_reason == "end_turn"
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == (2, 3)
    [req] = fake.requests
    assert req.path == "/v1/messages" and req.body["model"] == "claude-upstream"
    assert req.headers["x-api-key"] == UPSTREAM_KEY  # the relay's credential, not the client's key
    assert relay.key not in json.dumps(req.headers)
    [row] = relay.new_rows(mark)
    assert_row(row, relay, raw.headers["x-request-id"], model="claude-test", provider="claude",
               input_tokens=2, output_tokens=3)
    assert raw.headers["request-id"] == row.request_id


@pytest.mark.promise("P20", "P22")
def test_messages_streaming_text(relay, fake):
    mark = relay.mark()
    with relay.anthropic().messages.stream(
            model="claude-test", max_tokens=100, system="be nice",
            messages=[{"role": "user", "content": "stream it to me"}]) as stream:
        texts = list(stream.text_stream)
        final = stream.get_final_message()
        rid = stream.response.headers["x-request-id"]
    assert "".join(texts) == "echo: stream it to me" and len(texts) > 1
    assert final.content[0].text == "echo: stream it to me" and final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 5
    assert fake.requests[0].body["stream"] is True
    [row] = relay.new_rows(mark)
    assert_row(row, relay, rid, model="claude-test", provider="claude", input_tokens=6, output_tokens=5)


@pytest.mark.promise("P20")
def test_messages_tool_use_streamed_and_not(relay, fake):
    mark = relay.mark()
    client = relay.anthropic()
    msg = client.messages.create(model="claude-test", max_tokens=100, tools=[WEATHER_TOOL],
                                 messages=[{"role": "user", "content": "weather in Paris?"}])
    assert msg.stop_reason == "tool_use"
    [block] = msg.content
    assert block.type == "tool_use" and block.name == "get_weather" and block.input == {"city": "Paris"}

    with client.messages.stream(model="claude-test", max_tokens=100, tools=[WEATHER_TOOL],
                                messages=[{"role": "user", "content": "weather in Paris?"}]) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert final.content[0].type == "tool_use" and final.content[0].input == {"city": "Paris"}
    assert [r.output_tokens for r in relay.new_rows(mark, 2)] == [2, 2]


@pytest.mark.promise("P22")
@pytest.mark.parametrize("stream", [False, True])
def test_messages_cache_read_and_write_tokens(relay, fake, stream):
    fake.push_fault(cached_tokens=2, cache_creation_tokens=3)
    mark = relay.mark()
    client = relay.anthropic()
    words = "a b c d e f g h"  # 8 prompt tokens: 2 read from the cache, 3 written to it, 3 uncached
    if stream:
        with client.messages.stream(model="claude-test", max_tokens=100,
                                    messages=[{"role": "user", "content": words}]) as s:
            msg = s.get_final_message()
            rid = s.response.headers["x-request-id"]
    else:
        raw = client.messages.with_raw_response.create(model="claude-test", max_tokens=100,
                                                       messages=[{"role": "user", "content": words}])
        msg, rid = raw.parse(), raw.headers["x-request-id"]
    assert msg.usage.cache_read_input_tokens == 2 and msg.usage.cache_creation_input_tokens == 3
    assert msg.usage.input_tokens == 3
    [row] = relay.new_rows(mark)
    assert_row(row, relay, rid, model="claude-test", provider="claude", input_tokens=3, output_tokens=9,
               cache_read=2, cache_write=3)


# ---- Anthropic SDK -> OpenAI provider (translation) ----------------------------------

@pytest.mark.promise("P20", "P21", "P22")
def test_anthropic_sdk_to_openai_provider(relay, fake):
    mark = relay.mark()
    raw = relay.anthropic().messages.with_raw_response.create(
        model="gpt-test", max_tokens=40, stop_sequences=["NEVER"], system="be brief",
        extra_body={"temperature": 0.2},  # this SDK version has no temperature argument
        messages=[{"role": "user", "content": "hello from anthropic"}])
    msg = raw.parse()
    assert msg.type == "message" and msg.model == "gpt-test"
    assert msg.content[0].text == "echo: hello from anthropic" and msg.stop_reason == "end_turn"
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == (5, 4)
    [req] = fake.requests
    assert req.path == "/v1/chat/completions" and req.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    body = req.body
    assert body["model"] == "gpt-upstream"
    assert body["messages"][0] == {"role": "system", "content": "be brief"}
    assert body["messages"][1]["role"] == "user"
    assert body["max_tokens"] == 40 and body["temperature"] == 0.2 and body["stop"] == ["NEVER"]
    [row] = relay.new_rows(mark)
    assert_row(row, relay, raw.headers["x-request-id"], model="gpt-test", provider="oai",
               input_tokens=5, output_tokens=4)


@pytest.mark.promise("P20")
def test_anthropic_sdk_to_openai_stop_and_max_tokens(relay, fake):
    mark = relay.mark()
    client = relay.anthropic()
    stopped = client.messages.create(model="gpt-test", max_tokens=100, stop_sequences=["STOP"],
                                     messages=[{"role": "user", "content": "one STOP two"}])
    assert stopped.content[0].text == "echo: one " and stopped.stop_reason in ("stop_sequence", "end_turn")
    cut = client.messages.create(model="gpt-test", max_tokens=2,
                                 messages=[{"role": "user", "content": "one two three"}])
    assert cut.content[0].text == "echo: one" and cut.stop_reason == "max_tokens"
    relay.new_rows(mark, 2)


@pytest.mark.promise("P20", "P22")
def test_anthropic_sdk_to_openai_streaming(relay, fake):
    fake.push_fault(cached_tokens=1)
    mark = relay.mark()
    with relay.anthropic().messages.stream(
            model="gpt-test", max_tokens=100, system="sys prompt",
            messages=[{"role": "user", "content": "stream via openai"}]) as stream:
        texts = list(stream.text_stream)
        final = stream.get_final_message()
        rid = stream.response.headers["x-request-id"]
    assert "".join(texts) == "echo: stream via openai"
    assert final.content[0].text == "echo: stream via openai" and final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 4 and final.usage.input_tokens == 4
    assert final.usage.cache_read_input_tokens == 1
    up = fake.requests[0].body
    assert up["stream"] is True and up["stream_options"] == {"include_usage": True}
    [row] = relay.new_rows(mark)
    assert_row(row, relay, rid, model="gpt-test", provider="oai", input_tokens=4, output_tokens=4, cache_read=1)


@pytest.mark.promise("P20")
def test_anthropic_sdk_to_openai_tool_use(relay, fake):
    mark = relay.mark()
    client = relay.anthropic()
    msg = client.messages.create(model="gpt-test", max_tokens=100, tools=[WEATHER_TOOL],
                                 messages=[{"role": "user", "content": "weather in Paris?"}])
    assert msg.stop_reason == "tool_use"
    [block] = msg.content
    assert block.type == "tool_use" and block.name == "get_weather" and block.input == {"city": "Paris"}
    assert fake.requests[0].body["tools"][0]["function"]["name"] == "get_weather"

    with client.messages.stream(model="gpt-test", max_tokens=100, tools=[WEATHER_TOOL],
                                messages=[{"role": "user", "content": "weather in Paris?"}]) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert final.content[0].type == "tool_use" and final.content[0].input == {"city": "Paris"}

    done = client.messages.create(model="gpt-test", max_tokens=100, tools=[WEATHER_TOOL], messages=[
        {"role": "user", "content": "weather in Paris?"},
        {"role": "assistant", "content": [block.model_dump()]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": block.id, "content": "sunny"}]}])
    assert done.stop_reason == "end_turn" and done.content[0].type == "text"
    sent = fake.requests[-1].body["messages"]
    assert sent[-1] == {"role": "tool", "tool_call_id": block.id, "content": "sunny"}
    relay.new_rows(mark, 3)


@pytest.mark.promise("P20")
def test_models_via_anthropic_sdk(relay):
    client = relay.anthropic()
    ids = sorted(m.id for m in client.models.list())
    assert ids == ["claude-test", "embed-test", "fallback-test", "free-test", "gpt-test", "pricey-claude",
                   "pricey-test"]
    model = client.models.retrieve("claude-test")
    assert model.id == "claude-test" and model.type == "model"
    with pytest.raises(anthropic.NotFoundError):
        client.models.retrieve("nope")
    _, raw_key = relay.make_key(name="claude only", models=["claude-test"])
    assert [m.id for m in relay.anthropic(raw_key).models.list()] == ["claude-test"]


@pytest.mark.promise("P20")
def test_x_api_key_header_and_bearer_both_work(relay, fake):
    mark = relay.mark()
    body = {"model": "claude-test", "max_tokens": 20, "messages": [{"role": "user", "content": "raw call"}]}
    r = httpx.post(relay.url + "/v1/messages", json=body,
                   headers={"x-api-key": relay.key, "anthropic-version": "2023-06-01"})
    assert r.status_code == 200, r.text
    assert r.json()["content"][0]["text"] == "echo: raw call"
    assert r.headers["x-request-id"]
    r = httpx.post(relay.url + "/v1/messages", json=body, headers={"Authorization": f"Bearer {relay.key}"})
    assert r.status_code == 200
    # The same two ways for the OpenAI shape.
    chat = {"model": "gpt-test", "messages": [{"role": "user", "content": "raw"}]}
    r = httpx.post(relay.url + "/v1/chat/completions", json=chat, headers={"x-api-key": relay.key})
    assert r.status_code == 200
    # Only the key was checked, not a wrong one in the other header.
    r = httpx.post(relay.url + "/v1/messages", json=body, headers={"x-api-key": "rk_wrong"})
    assert r.status_code == 401 and r.json()["type"] == "error"
    assert r.json()["error"]["type"] == "authentication_error"
    # The SDK (2.x) sends Bearer; with api_key it authenticates.
    assert relay.anthropic().messages.create(**body).content[0].text == "echo: raw call"
    relay.new_rows(mark, 4)
