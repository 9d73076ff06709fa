"""What the official SDKs send, through the relay served for real (issue 12).

On the same-shape route every field arrives at the provider untouched but for
`model` (P20): OpenAI image parts, structured outputs, `n`, logprobs,
`parallel_tool_calls`, `seed`, `user`; Anthropic image and document blocks,
`thinking`, `cache_control` markers, and the `anthropic-beta` and
`anthropic-version` headers. Across shapes (P21) a field the other API cannot
express is a 400 naming it, in the client's SDK, and nothing goes upstream.
`/v1/messages/count_tokens` goes to Anthropic-shaped providers only and is
never metered.

Not covered: streamed `thinking` deltas on the same-shape route. The fake
provider (tests/fakes/provider.py) answers text and tool calls only, so there
is no thinking block for the relay to pass on; what the relay does with an
Anthropic stream it passes through is covered event by event elsewhere.
"""
from __future__ import annotations

import base64

import anthropic
import openai
import pytest

from tests.relay.test_anthropic_api import WEATHER_TOOL as ANTHROPIC_TOOL
from tests.relay.test_openai_api import WEATHER_TOOL as OPENAI_TOOL

CANARY = "Canary 5e1d: the patient's private notes"
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 16).decode()
PDF = base64.b64encode(b"%PDF-1.4\n%%EOF\n").decode()
IMAGE_PART = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}", "detail": "high"}}
ANTHROPIC_IMAGE = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
ANTHROPIC_DOCUMENT = {"type": "document", "title": "report",
                      "source": {"type": "base64", "media_type": "application/pdf", "data": PDF},
                      "cache_control": {"type": "ephemeral"}}
JSON_SCHEMA = {"type": "json_schema", "json_schema": {"name": "city", "strict": True, "schema": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
    "additionalProperties": False}}}
THINKING = {"type": "enabled", "budget_tokens": 1024}


def only_request(fake):
    [req] = fake.requests
    return req


# ---- OpenAI SDK, OpenAI-shaped provider: untouched ------------------------------------

@pytest.mark.promise("P20")
def test_chat_fields_pass_through_untouched(relay, fake):
    params = {
        "messages": [{"role": "system", "content": "be brief"},
                     {"role": "user", "content": [{"type": "text", "text": "what city is this?"}, IMAGE_PART]}],
        "response_format": JSON_SCHEMA,
        "n": 2,
        "logprobs": True,
        "top_logprobs": 2,
        "tools": [OPENAI_TOOL],
        "parallel_tool_calls": False,
        "seed": 7,
        "user": "user-1234",
        "max_completion_tokens": 50,
    }
    reply = relay.openai().chat.completions.create(model="gpt-test", **params)
    assert reply.choices[0].message.content == "echo: what city is this?"
    req = only_request(fake)
    assert req.path == "/v1/chat/completions"
    assert req.body == {**params, "model": "gpt-upstream"}


@pytest.mark.promise("P20")
def test_chat_fields_pass_through_untouched_when_streamed(relay, fake):
    params = {"messages": [{"role": "user", "content": [{"type": "text", "text": "stream it"}, IMAGE_PART]}],
              "response_format": JSON_SCHEMA, "seed": 11, "logprobs": True, "top_logprobs": 1, "user": "u-9"}
    chunks = list(relay.openai().chat.completions.create(model="gpt-test", stream=True, **params))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo: stream it"
    body = only_request(fake).body
    # The relay asks for the usage chunk it meters by (and holds it back from this client): nothing else changes.
    assert body == {**params, "model": "gpt-upstream", "stream": True, "stream_options": {"include_usage": True}}


# ---- Anthropic SDK, Anthropic-shaped provider: untouched --------------------------------

def _anthropic_params() -> dict:
    return {
        "max_tokens": 2000,
        "system": [{"type": "text", "text": "You read documents.", "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": [
            ANTHROPIC_IMAGE,
            ANTHROPIC_DOCUMENT,
            {"type": "text", "text": "summarise both", "cache_control": {"type": "ephemeral", "ttl": "1h"}},
        ]}],
        "tools": [{**ANTHROPIC_TOOL, "cache_control": {"type": "ephemeral"}}],
        "thinking": THINKING,
    }


@pytest.mark.promise("P20")
def test_messages_fields_and_headers_pass_through_untouched(relay, fake):
    params = _anthropic_params()
    beta = "interleaved-thinking-2025-05-14,extended-cache-ttl-2025-04-11"
    msg = relay.anthropic().messages.create(
        model="claude-test", **params,
        extra_headers={"anthropic-beta": beta, "anthropic-version": "2023-01-01"})
    assert msg.content[0].text == "echo: summarise both"
    req = only_request(fake)
    assert req.path == "/v1/messages"
    assert req.body == {**params, "model": "claude-upstream"}
    assert req.headers["anthropic-beta"] == beta
    assert req.headers["anthropic-version"] == "2023-01-01"  # the client's, not the relay's default


@pytest.mark.promise("P20")
def test_messages_beta_client_and_stream_pass_through_untouched(relay, fake):
    params = _anthropic_params()
    with relay.anthropic().beta.messages.stream(
            model="claude-test", betas=["interleaved-thinking-2025-05-14"], **params) as stream:
        final = stream.get_final_message()
        sent = stream.response.request.headers
    assert final.content[0].text == "echo: summarise both"
    req = only_request(fake)
    assert req.path == "/v1/messages"
    assert req.body == {**params, "model": "claude-upstream", "stream": True}
    assert req.headers["anthropic-beta"] == sent["anthropic-beta"] == "interleaved-thinking-2025-05-14"
    assert req.headers["anthropic-version"] == sent["anthropic-version"]  # whatever version the SDK speaks


# ---- across shapes: a 400 naming the field, nothing upstream ----------------------------

HELLO = [{"role": "user", "content": CANARY}]


@pytest.mark.promise("P21", "P23")
@pytest.mark.parametrize("params, names", [
    ({"seed": 7}, "seed cannot be carried to an Anthropic-shaped model"),
    ({"logprobs": True}, "logprobs cannot be carried to an Anthropic-shaped model"),
    ({"top_logprobs": 2}, "top_logprobs cannot be carried to an Anthropic-shaped model"),
    ({"n": 2}, "n greater than 1 is not supported"),
    ({"response_format": JSON_SCHEMA}, "response_format 'json_schema' is not supported"),
    ({"frequency_penalty": 0.5}, "frequency_penalty cannot be carried to an Anthropic-shaped model"),
    ({"metadata": {"note": CANARY}}, "metadata cannot be carried to an Anthropic-shaped model"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": CANARY}, IMAGE_PART]}]},
     "messages[0].content[1] has an unsupported content part type 'image_url'"),
    ({"messages": [{"role": "user", "content": CANARY, "name": "alice"}]},
     "messages[0].name cannot be carried to an Anthropic-shaped model"),
    ({"extra_body": {"top_k": 40}}, "top_k cannot be carried to an Anthropic-shaped model"),
])
def test_openai_sdk_to_anthropic_provider_refuses_what_it_cannot_carry(relay, fake, params, names):
    params = {"messages": HELLO, **params}
    with pytest.raises(openai.BadRequestError) as info:
        relay.openai().chat.completions.create(model="claude-test", **params)
    assert info.value.status_code == 400
    assert names in info.value.body["message"]
    assert CANARY not in info.value.message
    assert fake.requests == []


@pytest.mark.promise("P21")
def test_openai_sdk_to_anthropic_provider_carries_user_and_parallel_tool_calls(relay, fake):
    relay.openai().chat.completions.create(model="claude-test", messages=[{"role": "user", "content": "hi"}],
                                           tools=[OPENAI_TOOL], parallel_tool_calls=False, user="user-1234",
                                           seed=None, logprobs=False, n=1)
    body = only_request(fake).body
    assert body["metadata"] == {"user_id": "user-1234"}
    assert body["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    assert not {"seed", "logprobs", "n", "user", "parallel_tool_calls"} & set(body)


@pytest.mark.promise("P21", "P23")
@pytest.mark.parametrize("params, names", [
    ({"thinking": THINKING}, "thinking cannot be carried to an OpenAI-shaped model"),
    ({"messages": [{"role": "user", "content": [ANTHROPIC_IMAGE, {"type": "text", "text": CANARY}]}]},
     "messages[0].content[0] has an unsupported block type 'image'"),
    ({"messages": [{"role": "user", "content": [ANTHROPIC_DOCUMENT, {"type": "text", "text": CANARY}]}]},
     "messages[0].content[0] has an unsupported block type 'document'"),
    ({"system": [{"type": "text", "text": CANARY, "cache_control": {"type": "ephemeral"}}]},
     "system[0].cache_control cannot be carried to an OpenAI-shaped model"),
    ({"messages": [{"role": "user", "content": [
        {"type": "text", "text": CANARY, "cache_control": {"type": "ephemeral"}}]}]},
     "messages[0].content[0].cache_control cannot be carried to an OpenAI-shaped model"),
    ({"tools": [{**ANTHROPIC_TOOL, "cache_control": {"type": "ephemeral"}}]},
     "tools[0].cache_control cannot be carried to an OpenAI-shaped model"),
    ({"extra_body": {"top_k": 40}}, "top_k cannot be carried to an OpenAI-shaped model"),
    ({"messages": [HELLO[0], {"role": "assistant", "content": [
        {"type": "thinking", "thinking": CANARY, "signature": "sig"}, {"type": "text", "text": "ok"}]},
        {"role": "user", "content": "go on"}]},
     "messages[1].content[0] has an unsupported block type 'thinking'"),
])
def test_anthropic_sdk_to_openai_provider_refuses_what_it_cannot_carry(relay, fake, params, names):
    params = {"max_tokens": 2000, "messages": HELLO, **params}
    with pytest.raises(anthropic.BadRequestError) as info:
        relay.anthropic().messages.create(model="gpt-test", **params)
    assert info.value.status_code == 400
    error = info.value.body["error"]
    assert error["type"] == "invalid_request_error" and names in error["message"]
    assert CANARY not in info.value.message
    assert fake.requests == []


# ---- /v1/messages/count_tokens --------------------------------------------------------------

@pytest.mark.promise("P20", "P22")
def test_count_tokens_goes_to_the_anthropic_provider_and_is_not_metered(relay, fake):
    mark = relay.mark()
    client = relay.anthropic()
    params = {"system": [{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}],
              "messages": [{"role": "user", "content": [ANTHROPIC_IMAGE,
                                                        {"type": "text", "text": "count these words"}]}],
              "thinking": THINKING, "tools": [ANTHROPIC_TOOL]}
    counted = client.messages.count_tokens(model="claude-test", **params,
                                           extra_headers={"anthropic-beta": "token-counting-2024-11-01"})
    assert counted.input_tokens == 5  # the fake's count: the words of the system and the messages
    req = only_request(fake)
    assert req.path == "/v1/messages/count_tokens"
    assert req.body == {**params, "model": "claude-upstream"}
    assert req.headers["anthropic-beta"] == "token-counting-2024-11-01"

    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.count_tokens(model="gpt-test", messages=[{"role": "user", "content": "hi"}])
    assert "The model 'gpt-test' cannot count tokens" in info.value.body["error"]["message"]
    assert len(fake.requests) == 1  # nothing more went upstream

    # A model call after both: once its row is in, the meter has flushed everything before it.
    raw = client.messages.with_raw_response.create(model="claude-test", max_tokens=10,
                                                   messages=[{"role": "user", "content": "and now a call"}])
    [row] = relay.new_rows(mark)
    assert row.request_id == raw.headers["x-request-id"]
    assert len(relay.rows()) == mark + 1


# ---- what cannot cross: said, with the field named ---------------------------------------------

@pytest.mark.promise("P21")
def test_a_beta_header_to_a_model_of_another_api_is_refused_naming_it(relay, fake):
    with pytest.raises(anthropic.BadRequestError) as info:
        relay.anthropic().messages.create(model="gpt-test", max_tokens=10,
                                          messages=[{"role": "user", "content": "hi"}],
                                          extra_headers={"anthropic-beta": "interleaved-thinking-2025-05-14"})
    assert "anthropic-beta" in info.value.body["error"]["message"]
    assert fake.requests == []
    # without the header, the same call is translated and answered
    assert relay.anthropic().messages.create(model="gpt-test", max_tokens=10,
                                             messages=[{"role": "user", "content": "hi"}]).content


@pytest.mark.promise("P21")
def test_the_refused_field_is_the_openai_errors_param(relay, fake):
    with pytest.raises(openai.BadRequestError) as info:
        relay.openai().chat.completions.create(model="claude-test", seed=7,
                                               messages=[{"role": "user", "content": "hi"}])
    assert info.value.param == "seed" and "seed" in info.value.message
    assert fake.requests == []
