"""The OpenAI <-> Anthropic translation the relay applies when a client's API shape differs from the provider's."""
from __future__ import annotations

import json
import traceback

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from app.relay import wire as tr
from app.relay.translate.chat_via_messages import (
    AnthropicStreamToOpenAI,
    anthropic_to_openai_response,
    openai_to_anthropic_request,
)
from app.relay.translate.messages_via_chat import (
    OpenAIStreamToAnthropic,
    anthropic_to_openai_request,
    openai_to_anthropic_response,
)
from app.relay.translate.responses_via_messages import responses_to_anthropic_request
from app.relay.wire import (
    TranslationError,
    Usage,
    anthropic_error,
    error_type_for_status,
    openai_error,
    sse_anthropic,
    sse_openai,
    usage_from_anthropic,
    usage_from_openai,
)

CANARY = "Canary 7f3a: my secret diagnosis"

WEATHER_TOOL_OPENAI = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
WEATHER_TOOL_ANTHROPIC = {
    "name": "get_weather",
    "description": "Current weather for a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


# --------------------------------------------------------------------------- helpers: what an SDK would rebuild


def accumulate_anthropic(events: list[tuple[str, dict]]) -> dict:
    """Rebuild the final Message as the anthropic SDK does, checking event order on the way."""
    names = [name for name, _ in events]
    assert names[0] == "message_start", names
    assert names[-1] == "message_stop", names
    assert names[-2] == "message_delta", names
    for name, data in events:
        assert data["type"] == name
    message = json.loads(json.dumps(events[0][1]["message"]))
    open_blocks: set[int] = set()
    closed: set[int] = set()
    partial: dict[int, str] = {}
    for name, data in events[1:]:
        if name == "content_block_start":
            index = data["index"]
            assert index == len(message["content"]), "blocks start in order"
            assert not open_blocks, "one block open at a time"
            open_blocks.add(index)
            message["content"].append(dict(data["content_block"]))
        elif name == "content_block_delta":
            index = data["index"]
            assert index in open_blocks, "delta for a block that is not open"
            delta = data["delta"]
            if delta["type"] == "text_delta":
                message["content"][index]["text"] += delta["text"]
            elif delta["type"] == "input_json_delta":
                partial[index] = partial.get(index, "") + delta["partial_json"]
        elif name == "content_block_stop":
            index = data["index"]
            assert index in open_blocks
            open_blocks.remove(index)
            closed.add(index)
            if message["content"][index]["type"] == "tool_use":
                message["content"][index]["input"] = json.loads(partial.get(index) or "{}")
        elif name == "message_delta":
            assert not open_blocks, "message_delta with a block still open"
            message["stop_reason"] = data["delta"]["stop_reason"]
            message["stop_sequence"] = data["delta"].get("stop_sequence")
            usage = data["usage"]
            message["usage"]["output_tokens"] = usage["output_tokens"]
            for key in ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"):
                if usage.get(key) is not None:
                    message["usage"][key] = usage[key]
    return message


def accumulate_openai(chunks: list[dict]) -> dict:
    """Rebuild the final assistant message as the openai SDK's stream helpers do."""
    message: dict = {"role": None, "content": "", "tool_calls": []}
    finish_reason = None
    usage = None
    ids = {c["id"] for c in chunks}
    assert len(ids) == 1, "every chunk carries the same id"
    for chunk in chunks:
        assert chunk["object"] == "chat.completion.chunk"
        if chunk.get("usage"):
            usage = chunk["usage"]
        for choice in chunk["choices"]:
            assert finish_reason is None, "nothing after the finish chunk"
            delta = choice["delta"]
            if delta.get("role"):
                message["role"] = delta["role"]
            if delta.get("content"):
                message["content"] += delta["content"]
            for call in delta.get("tool_calls") or []:
                index = call["index"]
                if index == len(message["tool_calls"]):
                    assert call["id"] and call["function"]["name"], "first fragment names the call"
                    message["tool_calls"].append({"id": call["id"], "type": "function",
                                                  "function": {"name": call["function"]["name"], "arguments": ""}})
                message["tool_calls"][index]["function"]["arguments"] += call["function"].get("arguments") or ""
            finish_reason = choice["finish_reason"] or finish_reason
    return {"message": message, "finish_reason": finish_reason, "usage": usage}


def feed_anthropic(translator: AnthropicStreamToOpenAI, events) -> list[dict]:
    out = []
    for name, data in events:
        out.extend(translator.feed(name, data))
    return out


def feed_openai(translator: OpenAIStreamToAnthropic, chunks) -> list[tuple[str, dict]]:
    out = []
    for chunk in chunks:
        out.extend(translator.feed(chunk))
    out.extend(translator.finish())
    return out


def assert_no_canary(exc: BaseException) -> None:
    """What an error handler could log: the message, the repr, the whole formatted traceback."""
    assert CANARY not in str(exc)
    assert CANARY not in repr(exc)
    assert CANARY not in "".join(traceback.format_exception(exc))
    assert CANARY not in str(getattr(exc, "param", "") or "")


# --------------------------------------------------------------------------- realistic upstream streams
# The shapes follow Anthropic's streaming docs and the SDK's event types: one
# message_start, blocks opened/closed by index, a ping, a cumulative
# message_delta, message_stop.

ANTHROPIC_TEXT_STREAM = [
    ("message_start", {"type": "message_start", "message": {
        "id": "msg_01RFuVPPnYCFGL9ucejc3Rd4", "type": "message", "role": "assistant",
        "model": "claude-sonnet-4-20250514", "content": [], "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": 16, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                  "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
                  "output_tokens": 5, "service_tier": "standard"}}}),
    ("content_block_start", {"type": "content_block_start", "index": 0,
                             "content_block": {"type": "text", "text": ""}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 0,
                             "delta": {"type": "text_delta", "text": "Olá! "}}),
    ("ping", {"type": "ping"}),
    ("content_block_delta", {"type": "content_block_delta", "index": 0,
                             "delta": {"type": "text_delta", "text": "That is hi in Portuguese."}}),
    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                       "usage": {"output_tokens": 19}}),
    ("message_stop", {"type": "message_stop"}),
]

ANTHROPIC_TOOL_STREAM = [
    ("message_start", {"type": "message_start", "message": {
        "id": "msg_014p7gG3wDgGV9EUtLvnow3U", "type": "message", "role": "assistant",
        "model": "claude-haiku-4-5-20251001", "content": [], "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": 472, "cache_creation_input_tokens": 100, "cache_read_input_tokens": 2048,
                  "output_tokens": 2}}}),
    ("content_block_start", {"type": "content_block_start", "index": 0,
                             "content_block": {"type": "thinking", "thinking": ""}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 0,
                             "delta": {"type": "thinking_delta", "thinking": "The user wants weather."}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 0,
                             "delta": {"type": "signature_delta", "signature": "EqQBCgIYAhIM"}}),
    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    ("content_block_start", {"type": "content_block_start", "index": 1,
                             "content_block": {"type": "text", "text": ""}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 1,
                             "delta": {"type": "text_delta", "text": "Let me check the weather."}}),
    ("content_block_stop", {"type": "content_block_stop", "index": 1}),
    ("content_block_start", {"type": "content_block_start", "index": 2, "content_block": {
        "type": "tool_use", "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "name": "get_weather", "input": {}}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 2,
                             "delta": {"type": "input_json_delta", "partial_json": ""}}),
    ("ping", {"type": "ping"}),
    ("content_block_delta", {"type": "content_block_delta", "index": 2,
                             "delta": {"type": "input_json_delta", "partial_json": "{\"city\": \"San"}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 2,
                             "delta": {"type": "input_json_delta", "partial_json": " Francisco\"}"}}),
    ("content_block_stop", {"type": "content_block_stop", "index": 2}),
    ("content_block_start", {"type": "content_block_start", "index": 3, "content_block": {
        "type": "tool_use", "id": "toolu_01Ab", "name": "get_weather", "input": {}}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 3,
                             "delta": {"type": "input_json_delta", "partial_json": "{\"city\": \"Paris\"}"}}),
    ("content_block_stop", {"type": "content_block_stop", "index": 3}),
    ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                       "usage": {"input_tokens": 472, "cache_creation_input_tokens": 100,
                                 "cache_read_input_tokens": 2048, "output_tokens": 89}}),
    ("message_stop", {"type": "message_stop"}),
]

# Shapes as openai-python's ChatCompletionChunk: a role chunk, content
# fragments, a finish chunk with an empty delta, then (include_usage) one
# chunk with choices [] and the usage.


def _oa_chunk(delta=None, finish=None, usage=None, choices=True):
    chunk = {"id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT", "object": "chat.completion.chunk",
             "created": 1741569952, "model": "gpt-4o-2024-08-06", "service_tier": "default",
             "system_fingerprint": "fp_eb9dce56a8", "usage": usage,
             "choices": [{"index": 0, "delta": delta or {}, "logprobs": None, "finish_reason": finish}]
             if choices else []}
    return chunk


OPENAI_TEXT_STREAM = [
    _oa_chunk({"role": "assistant", "content": "", "refusal": None}),
    _oa_chunk({"content": "The"}),
    _oa_chunk({"content": " planet"}),
    _oa_chunk({"content": " is Saturn."}),
    _oa_chunk({}, finish="stop"),
    _oa_chunk(usage={"prompt_tokens": 1200, "completion_tokens": 6, "total_tokens": 1206,
                     "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
                     "completion_tokens_details": {"reasoning_tokens": 0}}, choices=False),
]

OPENAI_TOOL_STREAM = [
    _oa_chunk({"role": "assistant", "content": None}),
    _oa_chunk({"tool_calls": [{"index": 0, "id": "call_hmrIezFrl0th5WCBCpmUj2pF", "type": "function",
                               "function": {"name": "get_weather", "arguments": ""}}]}),
    _oa_chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{\""}}]}),
    _oa_chunk({"tool_calls": [{"index": 0, "function": {"arguments": "city\":\"San Francisco\"}"}}]}),
    _oa_chunk({"tool_calls": [{"index": 1, "id": "call_kq2", "type": "function",
                               "function": {"name": "get_weather", "arguments": ""}}]}),
    _oa_chunk({"tool_calls": [{"index": 1, "function": {"arguments": "{\"city\":"}}]}),
    _oa_chunk({"tool_calls": [{"index": 1, "function": {"arguments": "\"Paris\"}"}}]}),
    _oa_chunk({}, finish="tool_calls"),
    _oa_chunk(usage={"prompt_tokens": 80, "completion_tokens": 40, "total_tokens": 120,
                     "prompt_tokens_details": {"cached_tokens": 0}}, choices=False),
]


# --------------------------------------------------------------------------- OpenAI request -> Anthropic


@pytest.mark.promise("P20")
def test_openai_request_text_system_and_sampling():
    body = {
        "model": "claude-public",
        "messages": [
            {"role": "system", "content": "Be terse."},
            {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
            {"role": "user", "content": "Hello"},
            {"role": "user", "content": [{"type": "text", "text": "Part one."}, {"type": "text", "text": "Part two."}]},
            {"role": "assistant", "content": "Bonjour."},
            {"role": "user", "content": "Again"},
        ],
        "max_tokens": 300,
        "temperature": 0.3,
        "top_p": 0.9,
        "stop": "END",
        "stream": True,
        "stream_options": {"include_usage": True},
        "user": "user-42",
        "presence_penalty": 0,  # the value that asks for nothing
    }
    out = openai_to_anthropic_request(body, "claude-sonnet-4-20250514")
    assert out == {
        "model": "claude-sonnet-4-20250514",
        "system": "Be terse.\n\nAnswer in French.",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Hello"},
                                         {"type": "text", "text": "Part one."},
                                         {"type": "text", "text": "Part two."}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Bonjour."}]},
            {"role": "user", "content": [{"type": "text", "text": "Again"}]},
        ],
        "max_tokens": 300,
        "temperature": 0.3,
        "top_p": 0.9,
        "stop_sequences": ["END"],
        "stream": True,
        "metadata": {"user_id": "user-42"},
    }


def test_openai_request_max_tokens_defaults_and_precedence():
    base = {"messages": [{"role": "user", "content": "hi"}]}
    assert openai_to_anthropic_request(base, "m")["max_tokens"] == tr.DEFAULT_MAX_TOKENS == 4096
    assert openai_to_anthropic_request(base, "m", default_max_tokens=1000)["max_tokens"] == 1000
    both = {**base, "max_tokens": 10, "max_completion_tokens": 20}
    assert openai_to_anthropic_request(both, "m")["max_tokens"] == 20
    assert openai_to_anthropic_request({**base, "max_completion_tokens": 33}, "m")["max_tokens"] == 33
    with pytest.raises(TranslationError, match="max_tokens"):
        openai_to_anthropic_request({**base, "max_tokens": 0}, "m")


def test_openai_request_stop_list_temperature_clamp_and_top_p_noop():
    base = {"messages": [{"role": "user", "content": "hi"}]}
    out = openai_to_anthropic_request({**base, "stop": ["\n\n", "Human:", ""]}, "m")
    assert out["stop_sequences"] == ["\n\n", "Human:"]
    assert "stop_sequences" not in openai_to_anthropic_request({**base, "stop": None}, "m")
    # OpenAI allows 0..2, Anthropic 0..1.
    assert openai_to_anthropic_request({**base, "temperature": 1.6}, "m")["temperature"] == 1.0
    # top_p=1 beside a temperature is a no-op that newer Claude models refuse.
    out = openai_to_anthropic_request({**base, "temperature": 0.2, "top_p": 1}, "m")
    assert "top_p" not in out and out["temperature"] == 0.2
    assert openai_to_anthropic_request({**base, "top_p": 1}, "m")["top_p"] == 1


def test_openai_request_tools_tool_calls_and_results():
    body = {
        "messages": [
            {"role": "user", "content": "Weather in SF and Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": "{\"city\":\"San Francisco\"}"}},
                {"id": "call.2", "type": "function", "function": {"name": "get_weather", "arguments": ""}},
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18C, fog"},
            {"role": "tool", "tool_call_id": "call.2", "content": [{"type": "text", "text": "22C"}]},
            {"role": "user", "content": "Thanks, which is warmer?"},
        ],
        "tools": [WEATHER_TOOL_OPENAI],
        "tool_choice": "required",
        "parallel_tool_calls": False,
    }
    out = openai_to_anthropic_request(body, "m")
    assert out["tools"] == [WEATHER_TOOL_ANTHROPIC]
    assert out["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    assert out["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Weather in SF and Paris?"}]},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "San Francisco"}},
            # "." is not allowed in an Anthropic id; the same mapping is applied to the result below.
            {"type": "tool_use", "id": "call_2", "name": "get_weather", "input": {}},
        ]},
        # consecutive tool results and the next user text merge into one user turn, results first
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "call_1", "content": "18C, fog"},
            {"type": "tool_result", "tool_use_id": "call_2", "content": "22C"},
            {"type": "text", "text": "Thanks, which is warmer?"},
        ]},
    ]


@pytest.mark.parametrize("choice, expected", [
    ("auto", {"type": "auto"}),
    ("none", {"type": "none"}),
    ("required", {"type": "any"}),
    ({"type": "function", "function": {"name": "get_weather"}}, {"type": "tool", "name": "get_weather"}),
    (None, None),
])
def test_openai_tool_choice_mapping(choice, expected):
    body = {"messages": [{"role": "user", "content": "x"}], "tools": [WEATHER_TOOL_OPENAI]}
    if choice is not None:
        body["tool_choice"] = choice
    out = openai_to_anthropic_request(body, "m")
    assert out.get("tool_choice") == expected


def test_openai_tool_choice_without_tools_is_dropped():
    body = {"messages": [{"role": "user", "content": "x"}], "tool_choice": "auto"}
    assert "tool_choice" not in openai_to_anthropic_request(body, "m")


def test_openai_request_assistant_text_and_tool_call_together_and_refusal_history():
    body = {"messages": [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "I can't."}]},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "call_9", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
    ]}
    out = openai_to_anthropic_request(body, "m")
    assert out["messages"][1] == {"role": "assistant", "content": [
        {"type": "text", "text": "I can't."},
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "call_9", "name": "f", "input": {}},
    ]}


@pytest.mark.parametrize("body, where", [
    ({"messages": []}, "messages"),
    ({"messages": "hi"}, "messages"),
    ({"messages": [{"role": "user", "content": "x"}], "n": 2}, "n"),
    ({"messages": [{"role": "user", "content": "x"}], "functions": [{"name": "f"}]}, "functions"),
    ({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"}}, "response_format"),
    ({"messages": [{"role": "function", "name": "f", "content": "x"}]}, "messages[0]"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0]"),
    ({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "custom", "custom": {"name": "g"}}]},
     "tools[0]"),
    ({"messages": [{"role": "user", "content": "x"}], "tools": [WEATHER_TOOL_OPENAI],
      "tool_choice": {"type": "allowed_tools", "allowed_tools": {}}}, "tool_choice"),
])
def test_openai_request_refusals_name_the_field(body, where):
    with pytest.raises(TranslationError) as info:
        openai_to_anthropic_request(body, "m")
    assert info.value.param == where


def test_openai_request_image_is_refused_with_its_path():
    body = {"messages": [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": [{"type": "text", "text": "what is this"},
                                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
    ]}
    with pytest.raises(TranslationError) as info:
        openai_to_anthropic_request(body, "m")
    assert str(info.value) == "messages[2].content[1] has an unsupported content part type 'image_url' for this model"
    assert info.value.param == "messages[2].content[1]"


# --------------------------------------------------------------------------- Anthropic request -> OpenAI


@pytest.mark.promise("P20")
def test_anthropic_request_text_system_stop_and_stream():
    body = {
        "model": "gpt-public",
        "max_tokens": 1024,
        "system": [{"type": "text", "text": "You are helpful.", "cache_control": None},
                   {"type": "text", "text": "Be brief."}],
        "messages": [
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": [{"type": "text", "text": "Hi."}]},
            {"role": "user", "content": [{"type": "text", "text": "One"}, {"type": "text", "text": "Two"}]},
        ],
        "stop_sequences": ["\n\nHuman:"],
        "temperature": 0.7,
        "top_p": 0.95,
        "stream": True,
        "metadata": {"user_id": "u-13"},
        "thinking": {"type": "disabled"},  # the value that asks for nothing
    }
    out = anthropic_to_openai_request(body, "gpt-4o")
    assert out == {
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "You are helpful.\n\nBe brief."},
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Hi."},
            {"role": "user", "content": [{"type": "text", "text": "One"}, {"type": "text", "text": "Two"}]},
        ],
        "max_tokens": 1024,
        "temperature": 0.7,
        "top_p": 0.95,
        "stop": ["\n\nHuman:"],
        "stream": True,
        "stream_options": {"include_usage": True},
        "user": "u-13",
    }


def test_anthropic_request_max_tokens_field_for_reasoning_models():
    body = {"max_tokens": 50, "messages": [{"role": "user", "content": "x"}]}
    out = anthropic_to_openai_request(body, "o3", max_tokens_field="max_completion_tokens")
    assert out["max_completion_tokens"] == 50 and "max_tokens" not in out
    assert "stream_options" not in anthropic_to_openai_request({**body, "stream": False}, "m")


def test_anthropic_request_tool_use_and_results():
    body = {
        "max_tokens": 100,
        "messages": [
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_01A", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "toolu_01B", "name": "get_weather", "input": {"city": "Rome"}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_01A", "content": "20C"},
                {"type": "tool_result", "tool_use_id": "toolu_01B", "is_error": False,
                 "content": [{"type": "text", "text": "timeout"}]},
                {"type": "text", "text": "And tomorrow?"},
            ]},
        ],
        "tools": [WEATHER_TOOL_ANTHROPIC],
        "tool_choice": {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
    }
    out = anthropic_to_openai_request(body, "gpt-4o")
    assert out["tools"] == [WEATHER_TOOL_OPENAI]
    assert out["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert out["parallel_tool_calls"] is False
    assert out["messages"][1:] == [
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "toolu_01A", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
            {"id": "toolu_01B", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\":\"Rome\"}"}},
        ]},
        {"role": "tool", "tool_call_id": "toolu_01A", "content": "20C"},
        {"role": "tool", "tool_call_id": "toolu_01B", "content": "timeout"},
        {"role": "user", "content": "And tomorrow?"},
    ]


@pytest.mark.parametrize("choice, expected", [
    ({"type": "auto"}, "auto"),
    ({"type": "any"}, "required"),
    ({"type": "none"}, "none"),
    ({"type": "tool", "name": "get_weather"}, {"type": "function", "function": {"name": "get_weather"}}),
])
def test_anthropic_tool_choice_mapping(choice, expected):
    body = {"max_tokens": 5, "messages": [{"role": "user", "content": "x"}],
            "tools": [WEATHER_TOOL_ANTHROPIC], "tool_choice": choice}
    out = anthropic_to_openai_request(body, "m")
    assert out["tool_choice"] == expected
    assert "parallel_tool_calls" not in out


@pytest.mark.parametrize("body, where", [
    ({"messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}]}]},
     "messages[0].content[0]"),
    ({"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]}, "messages[0].content[0]"),
    ({"messages": [{"role": "system", "content": "x"}]}, "messages[0]"),
    ({"messages": [{"role": "user", "content": "x"}],
      "tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools[0]"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": [
        {"type": "image", "source": {}}]}]}]}, "messages[0].content[0].content[0]"),
    ({"system": [{"type": "image"}], "messages": [{"role": "user", "content": "x"}]}, "system[0]"),
])
def test_anthropic_request_refusals_name_the_field(body, where):
    with pytest.raises(TranslationError) as info:
        anthropic_to_openai_request(body, "m")
    assert info.value.param == where


# --------------------------------------------------------------------------- fields that cannot be carried
# Issue 12: a request field the other API cannot express is refused with a 400
# naming it, never dropped. Unset (absent, null, empty) and neutral values ask
# for nothing and are accepted. Each refused body plants the canary in the
# conversation and, where the field holds text, in the field itself (P23).

OPENAI_UNCARRIED = [
    ({"seed": 7}, "seed"),
    ({"frequency_penalty": 0.5}, "frequency_penalty"),
    ({"presence_penalty": -1}, "presence_penalty"),
    ({"logprobs": True}, "logprobs"),
    ({"top_logprobs": 3}, "top_logprobs"),
    ({"logit_bias": {"50256": -100}}, "logit_bias"),
    ({"reasoning_effort": "high"}, "reasoning_effort"),
    ({"verbosity": "low"}, "verbosity"),
    ({"audio": {"voice": CANARY, "format": "wav"}}, "audio"),
    ({"modalities": ["text", "audio"]}, "modalities"),
    ({"prediction": {"type": "content", "content": CANARY}}, "prediction"),
    ({"web_search_options": {"search_context_size": "low"}}, "web_search_options"),
    ({"store": True}, "store"),
    ({"metadata": {"purpose": CANARY}}, "metadata"),
    ({"service_tier": "flex"}, "service_tier"),
    ({"prompt_cache_key": CANARY}, "prompt_cache_key"),
    ({"prompt_cache_retention": "24h"}, "prompt_cache_retention"),
    ({"prompt_cache_options": {"mode": "explicit"}}, "prompt_cache_options"),
    ({"moderation": {"model": CANARY}}, "moderation"),
    # not chat-completions fields at all: the official API refuses them too
    ({"top_k": 40}, "top_k"),
    ({"thinking": {"type": "enabled", "budget_tokens": 2000}}, "thinking"),
    ({"messages": [{"role": "user", "content": CANARY, "name": CANARY}]}, "messages[0].name"),
    ({"messages": [{"role": "system", "content": CANARY, "name": "narrator"}, {"role": "user", "content": CANARY}]},
     "messages[0].name"),
    ({"messages": [{"role": "user", "content": CANARY}, {"role": "assistant", "audio": {"id": CANARY}}]},
     "messages[1].audio"),
    ({"messages": [{"role": "user", "content": CANARY},
                   {"role": "assistant", "content": CANARY,
                    "annotations": [{"type": "url_citation", "url_citation": {"title": CANARY}}]}]},
     "messages[1].annotations"),
    ({"messages": [{"role": "user", "content": [
        {"type": "text", "text": CANARY, "prompt_cache_breakpoint": {"mode": "explicit"}}]}]},
     "messages[0].content[0].prompt_cache_breakpoint"),
    ({"tools": [{**WEATHER_TOOL_OPENAI, "cache_control": {"type": "ephemeral"}}]}, "tools[0].cache_control"),
]


@pytest.mark.promise("P21", "P23")
@pytest.mark.parametrize("extra, param", OPENAI_UNCARRIED)
def test_openai_request_refuses_each_field_messages_cannot_carry(extra, param):
    body = {"messages": [{"role": "user", "content": CANARY}], **extra}
    with pytest.raises(TranslationError) as info:
        openai_to_anthropic_request(body, "m")
    assert str(info.value) == f"{param} cannot be carried to an Anthropic-shaped model"
    assert info.value.param == param
    assert_no_canary(info.value)


def test_openai_request_unset_and_neutral_fields_ask_for_nothing():
    plain = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                          {"role": "user", "content": "again"}]}
    neutral = {
        "messages": [{"role": "user", "content": "hi", "name": None},
                     # an SDK message replayed with model_dump(): its unset fields are null or empty
                     {"role": "assistant", "content": "hello", "refusal": None, "audio": None,
                      "function_call": None, "tool_calls": None, "annotations": []},
                     {"role": "user", "content": "again"}],
        "seed": None, "logprobs": False, "top_logprobs": 0, "frequency_penalty": 0, "presence_penalty": 0.0,
        "logit_bias": {}, "store": False, "modalities": ["text"], "service_tier": "auto", "metadata": {},
        "n": 1, "response_format": {"type": "text"}, "audio": None, "prediction": None,
        "reasoning_effort": None, "user": None, "stream_options": {"include_usage": True},
        "tool_choice": "auto", "parallel_tool_calls": False,  # no tools: nothing to choose
    }
    assert openai_to_anthropic_request(neutral, "m") == openai_to_anthropic_request(plain, "m")


def test_openai_request_field_with_an_unsafe_name_is_refused_without_naming_it():
    body = {"messages": [{"role": "user", "content": "x", CANARY: "y"}], CANARY: 1}
    with pytest.raises(TranslationError) as info:
        openai_to_anthropic_request(body, "m")
    assert str(info.value) == "the request has a field that cannot be carried to an Anthropic-shaped model"
    assert info.value.param is None
    assert_no_canary(info.value)
    with pytest.raises(TranslationError) as info:
        openai_to_anthropic_request({"messages": body["messages"]}, "m")
    assert info.value.param == "messages[0]"
    assert_no_canary(info.value)


def test_openai_request_safety_identifier_strict_tools_and_replayed_refusal():
    base = {"messages": [{"role": "user", "content": "x"}]}
    out = openai_to_anthropic_request({**base, "safety_identifier": "hash-1"}, "m")
    assert out["metadata"] == {"user_id": "hash-1"}
    assert openai_to_anthropic_request({**base, "safety_identifier": "a", "user": "a"}, "m")["metadata"] == \
        {"user_id": "a"}
    with pytest.raises(TranslationError) as info:
        openai_to_anthropic_request({**base, "safety_identifier": "a", "user": CANARY}, "m")
    assert info.value.param == "user"
    assert_no_canary(info.value)

    strict = {"type": "function", "function": {**WEATHER_TOOL_OPENAI["function"], "strict": True}}
    assert openai_to_anthropic_request({**base, "tools": [strict]}, "m")["tools"] == [
        {**WEATHER_TOOL_ANTHROPIC, "strict": True}]
    loose = {"type": "function", "function": {**WEATHER_TOOL_OPENAI["function"], "strict": False}}
    assert openai_to_anthropic_request({**base, "tools": [loose]}, "m")["tools"] == [WEATHER_TOOL_ANTHROPIC]

    history = {"messages": [{"role": "user", "content": "x"},
                            {"role": "assistant", "content": None, "refusal": "I can't help with that."},
                            {"role": "user", "content": "ok"}]}
    assert openai_to_anthropic_request(history, "m")["messages"][1] == {
        "role": "assistant", "content": [{"type": "text", "text": "I can't help with that."}]}


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
def test_openai_tool_choice_for_a_call_without_tools_is_refused(choice):
    with pytest.raises(TranslationError) as info:
        openai_to_anthropic_request({"messages": [{"role": "user", "content": "x"}], "tool_choice": choice}, "m")
    assert info.value.param == "tool_choice"


ANTHROPIC_UNCARRIED = [
    ({"top_k": 40}, "top_k"),
    ({"thinking": {"type": "enabled", "budget_tokens": 2000}}, "thinking"),
    ({"thinking": {"type": "adaptive"}}, "thinking"),
    ({"cache_control": {"type": "ephemeral"}}, "cache_control"),
    ({"system": [{"type": "text", "text": CANARY, "cache_control": {"type": "ephemeral", "ttl": "1h"}}]},
     "system[0].cache_control"),
    ({"messages": [{"role": "user", "content": [
        {"type": "text", "text": CANARY, "cache_control": {"type": "ephemeral"}}]}]},
     "messages[0].content[0].cache_control"),
    ({"messages": [{"role": "user", "content": [
        {"type": "text", "text": CANARY, "citations": [{"type": "char_location", "cited_text": CANARY}]}]}]},
     "messages[0].content[0].citations"),
    ({"messages": [{"role": "user", "content": CANARY},
                   {"role": "assistant", "content": [
                       {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": CANARY}}]},
                   {"role": "user", "content": [
                       {"type": "tool_result", "tool_use_id": "toolu_1", "content": CANARY, "is_error": True}]}]},
     "messages[2].content[0].is_error"),
    ({"messages": [{"role": "user", "content": CANARY},
                   {"role": "assistant", "content": [
                       {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {},
                        "cache_control": {"type": "ephemeral"}}]}]},
     "messages[1].content[0].cache_control"),
    ({"messages": [{"role": "user", "content": CANARY},
                   {"role": "assistant", "content": [
                       {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {},
                        "caller": {"type": "code_execution_20250825", "tool_id": "srvtoolu_1"}}]}]},
     "messages[1].content[0].caller"),
    ({"messages": [{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": CANARY, "cache_control": {"type": "ephemeral"}}
    ]}]}, "messages[0].content[0].cache_control"),
    ({"tools": [{**WEATHER_TOOL_ANTHROPIC, "cache_control": {"type": "ephemeral"}}]}, "tools[0].cache_control"),
    ({"tools": [{**WEATHER_TOOL_ANTHROPIC, "defer_loading": True}]}, "tools[0].defer_loading"),
    ({"tools": [{**WEATHER_TOOL_ANTHROPIC, "input_examples": [{"city": CANARY}]}]}, "tools[0].input_examples"),
    ({"tools": [{**WEATHER_TOOL_ANTHROPIC, "eager_input_streaming": True}]}, "tools[0].eager_input_streaming"),
    ({"output_config": {"effort": "high"}}, "output_config"),
    ({"output_config": {"format": {"type": "json_schema", "schema": {"title": CANARY}}}}, "output_config"),
    ({"container": CANARY}, "container"),
    ({"diagnostics": {"previous_message_id": CANARY}}, "diagnostics"),
    ({"inference_geo": "us"}, "inference_geo"),
    ({"service_tier": "standard_only"}, "service_tier"),
    ({"speed": "fast"}, "speed"),
    ({"metadata": {"user_id": "u-1", "tenant": CANARY}}, "metadata.tenant"),
    ({"messages": [{"role": "user", "content": CANARY, "cache_control": {"type": "ephemeral"}}]},
     "messages[0].cache_control"),
    # not Messages fields at all: the official API refuses them too
    ({"seed": 7}, "seed"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
]


@pytest.mark.promise("P21", "P23")
@pytest.mark.parametrize("extra, param", ANTHROPIC_UNCARRIED)
def test_anthropic_request_refuses_each_field_chat_cannot_carry(extra, param):
    body = {"max_tokens": 10, "messages": [{"role": "user", "content": CANARY}], **extra}
    with pytest.raises(TranslationError) as info:
        anthropic_to_openai_request(body, "m")
    assert str(info.value) == f"{param} cannot be carried to an OpenAI-shaped model"
    assert info.value.param == param
    assert_no_canary(info.value)


@pytest.mark.promise("P21", "P23")
@pytest.mark.parametrize("block", [
    {"type": "thinking", "thinking": CANARY, "signature": CANARY},
    {"type": "redacted_thinking", "data": CANARY},
])
def test_anthropic_request_thinking_blocks_in_history_are_refused(block):
    body = {"max_tokens": 10, "messages": [
        {"role": "user", "content": CANARY},
        {"role": "assistant", "content": [block, {"type": "text", "text": CANARY}]},
        {"role": "user", "content": CANARY}]}
    with pytest.raises(TranslationError) as info:
        anthropic_to_openai_request(body, "m")
    assert str(info.value) == \
        f"messages[1].content[0] has an unsupported block type '{block['type']}' for this model"
    assert info.value.param == "messages[1].content[0]"
    assert_no_canary(info.value)


def test_anthropic_request_unset_and_neutral_fields_ask_for_nothing():
    plain = {"max_tokens": 10, "system": [{"type": "text", "text": "sys"}], "messages": [
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "20C"}]}],
        "tools": [WEATHER_TOOL_ANTHROPIC]}
    neutral = {
        "max_tokens": 10,
        "system": [{"type": "text", "text": "sys", "cache_control": None, "citations": None}],
        "messages": [
            {"role": "user", "content": "x"},
            # an SDK block replayed with model_dump(): its unset fields are null
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"},
                 "caller": {"type": "direct"}, "toolset_name": None, "cache_control": None}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "20C",
                                          "is_error": False}]}],
        "tools": [{**WEATHER_TOOL_ANTHROPIC, "allowed_callers": ["direct"], "cache_control": None,
                   "input_examples": []}],
        "thinking": {"type": "disabled"}, "service_tier": "auto", "speed": "standard", "top_k": None,
        "cache_control": None, "output_config": {}, "metadata": {},
    }
    assert anthropic_to_openai_request(neutral, "m") == anthropic_to_openai_request(plain, "m")
    # tool_choice without tools: auto and none ask for nothing; any and a named tool cannot be met
    base = {"max_tokens": 10, "messages": [{"role": "user", "content": "x"}]}
    assert anthropic_to_openai_request({**base, "tool_choice": {"type": "auto"}}, "m") == \
        anthropic_to_openai_request(base, "m")
    for choice in ({"type": "any"}, {"type": "tool", "name": "get_weather"}):
        with pytest.raises(TranslationError) as info:
            anthropic_to_openai_request({**base, "tool_choice": choice}, "m")
        assert info.value.param == "tool_choice"


def test_anthropic_request_strict_tool_and_unsafe_field_name():
    base = {"max_tokens": 10, "messages": [{"role": "user", "content": "x"}]}
    out = anthropic_to_openai_request({**base, "tools": [{**WEATHER_TOOL_ANTHROPIC, "strict": True}]}, "m")
    assert out["tools"] == [{"type": "function", "function": {**WEATHER_TOOL_OPENAI["function"], "strict": True}}]
    with pytest.raises(TranslationError) as info:
        anthropic_to_openai_request({**base, CANARY: True}, "m")
    assert str(info.value) == "the request has a field that cannot be carried to an OpenAI-shaped model"
    assert info.value.param is None
    assert_no_canary(info.value)


# --------------------------------------------------------------------------- round trips


@pytest.mark.promise("P20")
def test_request_round_trip_openai_anthropic_openai():
    original = {
        "messages": [
            {"role": "system", "content": "Be terse."},
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "20C"},
            {"role": "assistant", "content": "It is 20C."},
            {"role": "user", "content": "Thanks"},
        ],
        "max_tokens": 256,
        "temperature": 0.5,
        "top_p": 0.8,
        "stop": ["END", "STOP"],
        "tools": [WEATHER_TOOL_OPENAI],
        "tool_choice": "required",
        "user": "u-1",
        "stream": True,
    }
    anthropic = openai_to_anthropic_request(original, "claude")
    back = anthropic_to_openai_request(anthropic, "gpt")
    expected = {**original, "model": "gpt", "stream_options": {"include_usage": True}}
    assert back == expected


@pytest.mark.promise("P20")
def test_request_round_trip_anthropic_openai_anthropic():
    original = {
        "system": "Be terse.",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "20C"},
                                         {"type": "text", "text": "Thanks"}]},
        ],
        "max_tokens": 256,
        "temperature": 0.5,
        "top_p": 0.8,
        "stop_sequences": ["END"],
        "tools": [WEATHER_TOOL_ANTHROPIC],
        "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
        "metadata": {"user_id": "u-1"},
        "stream": False,
    }
    back = openai_to_anthropic_request(anthropic_to_openai_request(original, "gpt"), "claude")
    assert back == {**original, "model": "claude"}


# --------------------------------------------------------------------------- responses


ANTHROPIC_MESSAGE = {
    "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-20250514",
    "content": [
        {"type": "thinking", "thinking": "hmm", "signature": "x"},
        {"type": "text", "text": "Let me look that up."},
        {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "get_weather",
         "input": {"city": "San Francisco", "unit": "celsius"}},
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {"input_tokens": 120, "cache_creation_input_tokens": 30, "cache_read_input_tokens": 2000,
              "output_tokens": 55, "service_tier": "standard"},
}


@pytest.mark.promise("P20", "P22")
def test_anthropic_response_to_openai():
    out = anthropic_to_openai_response(ANTHROPIC_MESSAGE, "claude-public", created=1700000000)
    assert out == {
        "id": "chatcmpl-01XFDUDYJgAACzvnptvVoYEL",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "claude-public",
        "choices": [{
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Let me look that up.",
                "refusal": None,
                "tool_calls": [{"id": "toolu_01A09q90qw90lq917835lq9", "type": "function", "function": {
                    "name": "get_weather", "arguments": "{\"city\":\"San Francisco\",\"unit\":\"celsius\"}"}}],
            },
            "logprobs": None,
            "finish_reason": "tool_calls",
        }],
        "usage": {"prompt_tokens": 2150, "completion_tokens": 55, "total_tokens": 2205,
                  "prompt_tokens_details": {"cached_tokens": 2000}},
    }


@pytest.mark.parametrize("stop_reason, finish", [
    ("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"),
    ("tool_use", "tool_calls"), ("refusal", "content_filter"), (None, "stop"),
])
def test_stop_reason_to_finish_reason(stop_reason, finish):
    msg = {"id": "msg_1", "content": [{"type": "text", "text": "x"}], "stop_reason": stop_reason,
           "usage": {"input_tokens": 1, "output_tokens": 1}}
    assert anthropic_to_openai_response(msg, "m")["choices"][0]["finish_reason"] == finish


def test_anthropic_response_tool_only_has_null_content():
    msg = {**ANTHROPIC_MESSAGE, "content": [ANTHROPIC_MESSAGE["content"][2]]}
    assert anthropic_to_openai_response(msg, "m")["choices"][0]["message"]["content"] is None
    empty = {"id": "msg_2", "content": [], "stop_reason": "end_turn", "usage": {}}
    assert anthropic_to_openai_response(empty, "m")["choices"][0]["message"]["content"] == ""


OPENAI_COMPLETION = {
    "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
    "object": "chat.completion",
    "created": 1741570283,
    "model": "gpt-4o-2024-08-06",
    "choices": [{
        "index": 0,
        "message": {
            "role": "assistant",
            "content": "Sure.",
            "refusal": None,
            "tool_calls": [{"id": "call_abc123", "type": "function",
                            "function": {"name": "get_weather", "arguments": "{\"city\":\"Boston\"}"}}],
            "annotations": [],
        },
        "logprobs": None,
        "finish_reason": "tool_calls",
    }],
    "usage": {"prompt_tokens": 1117, "completion_tokens": 46, "total_tokens": 1163,
              "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
              "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                            "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}},
    "service_tier": "default",
    "system_fingerprint": "fp_fc9f1d7035",
}


@pytest.mark.promise("P20", "P22")
def test_openai_response_to_anthropic():
    out = openai_to_anthropic_response(OPENAI_COMPLETION, "gpt-public")
    assert out == {
        "id": "msg_B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
        "type": "message",
        "role": "assistant",
        "model": "gpt-public",
        "content": [
            {"type": "text", "text": "Sure."},
            {"type": "tool_use", "id": "call_abc123", "name": "get_weather", "input": {"city": "Boston"}},
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {"input_tokens": 93, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 1024,
                  "output_tokens": 46},
    }


@pytest.mark.parametrize("finish, stop_reason", [
    ("stop", "end_turn"), ("length", "max_tokens"), ("tool_calls", "tool_use"),
    ("content_filter", "refusal"), ("function_call", "tool_use"),
])
def test_finish_reason_to_stop_reason(finish, stop_reason):
    resp = {"id": "x", "choices": [{"index": 0, "message": {"role": "assistant", "content": "a"},
                                    "finish_reason": finish}]}
    assert openai_to_anthropic_response(resp, "m")["stop_reason"] == stop_reason


def test_openai_response_without_usage_or_choices():
    resp = {"choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}]}
    out = openai_to_anthropic_response(resp, "m")
    assert out["id"].startswith("msg_") and out["content"] == [{"type": "text", "text": "hi"}]
    assert out["usage"] == {"input_tokens": 0, "cache_creation_input_tokens": 0,
                            "cache_read_input_tokens": 0, "output_tokens": 0}
    with pytest.raises(TranslationError, match="no choices"):
        openai_to_anthropic_response({"choices": []}, "m")


@pytest.mark.promise("P22")
def test_response_round_trip_keeps_content_and_total_prompt():
    openai = anthropic_to_openai_response(ANTHROPIC_MESSAGE, "m")
    back = openai_to_anthropic_response(openai, "claude-public")
    assert back["content"] == ANTHROPIC_MESSAGE["content"][1:]  # thinking has no OpenAI form
    assert back["stop_reason"] == "tool_use"
    # OpenAI has no cache-write count, so writes fold into uncached input; the total is kept.
    assert back["usage"] == {"input_tokens": 150, "cache_creation_input_tokens": 0,
                             "cache_read_input_tokens": 2000, "output_tokens": 55}


# --------------------------------------------------------------------------- usage


@pytest.mark.promise("P22")
def test_usage_from_openai_separates_cached_tokens():
    usage = usage_from_openai(OPENAI_COMPLETION["usage"])
    assert usage == Usage(input_tokens=93, output_tokens=46, cache_read_tokens=1024,
                          cache_write_tokens=0, reported=True)
    assert usage.prompt_tokens == 1117
    assert usage_from_openai({"prompt_tokens": 10, "completion_tokens": 2}) == Usage(10, 2, 0, 0, True)
    assert usage_from_openai({"prompt_tokens": 10, "completion_tokens": 2,
                              "prompt_tokens_details": None}) == Usage(10, 2, 0, 0, True)
    # DeepSeek-style compatible servers
    assert usage_from_openai({"prompt_tokens": 10, "completion_tokens": 2, "prompt_cache_hit_tokens": 4,
                              "prompt_cache_miss_tokens": 6}) == Usage(6, 2, 4, 0, True)
    assert usage_from_openai(None) == Usage(reported=False)
    assert usage_from_openai({"prompt_tokens": "x", "completion_tokens": None}).input_tokens == 0


@pytest.mark.promise("P22")
def test_usage_from_anthropic_keeps_cache_reads_and_writes_apart():
    usage = usage_from_anthropic(ANTHROPIC_MESSAGE["usage"])
    assert usage == Usage(input_tokens=120, output_tokens=55, cache_read_tokens=2000,
                          cache_write_tokens=30, reported=True)
    assert usage.prompt_tokens == 2150
    assert usage_from_anthropic({"input_tokens": 5, "output_tokens": 1,
                                 "cache_read_input_tokens": None}) == Usage(5, 1, 0, 0, True)
    assert usage_from_anthropic(None) == Usage()


# --------------------------------------------------------------------------- Anthropic stream -> OpenAI chunks


@pytest.mark.promise("P20", "P22")
def test_anthropic_text_stream_to_openai_with_usage():
    translator = AnthropicStreamToOpenAI("claude-public", include_usage=True, created=1700000000)
    chunks = feed_anthropic(translator, ANTHROPIC_TEXT_STREAM)
    assert translator.done
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[0]["id"] == "chatcmpl-01RFuVPPnYCFGL9ucejc3Rd4"
    assert all(c["model"] == "claude-public" and c["created"] == 1700000000 for c in chunks)
    assert [c["choices"][0]["delta"].get("content") for c in chunks[1:3]] == ["Olá! ", "That is hi in Portuguese."]
    finish = chunks[-2]
    assert finish["choices"] == [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]
    last = chunks[-1]
    assert last["choices"] == []
    assert last["usage"] == {"prompt_tokens": 16, "completion_tokens": 19, "total_tokens": 35,
                             "prompt_tokens_details": {"cached_tokens": 0}}
    assert len(chunks) == 5
    assert translator.usage == Usage(16, 19, 0, 0, True)
    rebuilt = accumulate_openai(chunks)
    assert rebuilt["message"]["content"] == "Olá! That is hi in Portuguese."
    assert rebuilt["finish_reason"] == "stop"


def test_anthropic_stream_without_include_usage_sends_no_usage_chunk_but_records_it():
    translator = AnthropicStreamToOpenAI("m")
    chunks = feed_anthropic(translator, ANTHROPIC_TEXT_STREAM)
    assert all(c["choices"] for c in chunks)
    assert "usage" not in chunks[-1]
    assert translator.usage.output_tokens == 19 and translator.usage.reported


@pytest.mark.promise("P20", "P22")
def test_anthropic_tool_stream_to_openai_fragments_and_cache_usage():
    translator = AnthropicStreamToOpenAI("claude-public", include_usage=True)
    chunks = feed_anthropic(translator, ANTHROPIC_TOOL_STREAM)
    tool_deltas = [c["choices"][0]["delta"]["tool_calls"][0] for c in chunks
                   if c["choices"] and c["choices"][0]["delta"].get("tool_calls")]
    assert tool_deltas == [
        {"index": 0, "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "type": "function",
         "function": {"name": "get_weather", "arguments": ""}},
        {"index": 0, "function": {"arguments": "{\"city\": \"San"}},
        {"index": 0, "function": {"arguments": " Francisco\"}"}},
        {"index": 1, "id": "toolu_01Ab", "type": "function", "function": {"name": "get_weather", "arguments": ""}},
        {"index": 1, "function": {"arguments": "{\"city\": \"Paris\"}"}},
    ]
    rebuilt = accumulate_openai(chunks)
    assert rebuilt["message"]["content"] == "Let me check the weather."  # thinking left out
    assert [json.loads(c["function"]["arguments"]) for c in rebuilt["message"]["tool_calls"]] == [
        {"city": "San Francisco"}, {"city": "Paris"}]
    assert rebuilt["finish_reason"] == "tool_calls"
    assert rebuilt["usage"] == {"prompt_tokens": 2620, "completion_tokens": 89, "total_tokens": 2709,
                                "prompt_tokens_details": {"cached_tokens": 2048}}
    assert translator.usage == Usage(472, 89, 2048, 100, True)


def test_anthropic_stream_usage_is_provisional_until_message_delta():
    translator = AnthropicStreamToOpenAI("m", include_usage=True)
    feed_anthropic(translator, ANTHROPIC_TEXT_STREAM[:3])
    assert translator.usage.input_tokens == 16 and not translator.usage.reported
    # upstream cut off: finish() still closes the stream properly
    tail = translator.finish()
    assert tail[0]["choices"][0]["finish_reason"] == "stop"
    assert tail[1]["choices"] == [] and tail[1]["usage"]["prompt_tokens"] == 16
    assert translator.finish() == [] and translator.feed("message_stop", {}) == []


def test_anthropic_stream_error_event_becomes_openai_error_chunk():
    translator = AnthropicStreamToOpenAI("m", include_usage=True)
    feed_anthropic(translator, ANTHROPIC_TEXT_STREAM[:3])
    out = translator.feed("error", {"type": "error",
                                    "error": {"type": "overloaded_error", "message": "Overloaded"}})
    assert out == [{"error": {"message": "Overloaded", "type": "overloaded_error", "param": None, "code": None}}]
    assert translator.done and translator.feed("message_stop", {}) == []


def test_anthropic_stream_tolerates_missing_fields_and_unknown_events():
    translator = AnthropicStreamToOpenAI("m")
    assert translator.feed("ping", {}) == []
    out = translator.feed("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "hi"}})
    assert out[0]["choices"][0]["delta"]["role"] == "assistant"  # role chunk first even without message_start
    assert out[1]["choices"][0]["delta"] == {"content": "hi"}
    assert translator.feed("content_block_delta", {"index": 9, "delta": {"type": "input_json_delta",
                                                                          "partial_json": "{"}}) == []
    assert translator.feed("something_new", None) == []
    assert translator.feed("message_delta", {})[0]["choices"][0]["finish_reason"] == "stop"
    assert translator.feed("message_stop", {}) == []
    assert translator.done


# --------------------------------------------------------------------------- OpenAI chunks -> Anthropic stream


@pytest.mark.promise("P20", "P22")
def test_openai_text_stream_to_anthropic_exact_order():
    translator = OpenAIStreamToAnthropic("gpt-public")
    events = feed_openai(translator, OPENAI_TEXT_STREAM)
    assert [name for name, _ in events] == [
        "message_start", "content_block_start", "content_block_delta", "content_block_delta",
        "content_block_delta", "content_block_stop", "message_delta", "message_stop"]
    start = events[0][1]["message"]
    assert start["id"] == "msg_B9MBs8CjcvOU2jLn4n570S5qMJKcT" and start["model"] == "gpt-public"
    assert start["usage"]["input_tokens"] == 0 and start["usage"]["output_tokens"] == 0
    assert events[1][1] == {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    assert events[6][1] == {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                            "usage": {"input_tokens": 176, "cache_creation_input_tokens": 0,
                                      "cache_read_input_tokens": 1024, "output_tokens": 6}}
    assert events[7][1] == {"type": "message_stop"}
    message = accumulate_anthropic(events)
    assert message["content"] == [{"type": "text", "text": "The planet is Saturn."}]
    assert message["stop_reason"] == "end_turn"
    assert translator.usage == Usage(176, 6, 1024, 0, True)


@pytest.mark.promise("P20")
def test_openai_tool_stream_to_anthropic_blocks_and_fragments():
    translator = OpenAIStreamToAnthropic("gpt-public")
    events = feed_openai(translator, OPENAI_TOOL_STREAM)
    assert [name for name, _ in events] == [
        "message_start",
        "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
        "message_delta", "message_stop"]
    assert events[1][1]["content_block"] == {"type": "tool_use", "id": "call_hmrIezFrl0th5WCBCpmUj2pF",
                                             "name": "get_weather", "input": {}}
    assert events[2][1]["delta"] == {"type": "input_json_delta", "partial_json": "{\""}
    message = accumulate_anthropic(events)
    assert message["content"] == [
        {"type": "tool_use", "id": "call_hmrIezFrl0th5WCBCpmUj2pF", "name": "get_weather",
         "input": {"city": "San Francisco"}},
        {"type": "tool_use", "id": "call_kq2", "name": "get_weather", "input": {"city": "Paris"}},
    ]
    assert message["stop_reason"] == "tool_use"
    assert message["usage"]["input_tokens"] == 80 and message["usage"]["output_tokens"] == 40


def test_openai_stream_text_then_tool_switches_blocks():
    chunks = [
        _oa_chunk({"role": "assistant", "content": "Checking"}),
        _oa_chunk({"content": " now."}),
        _oa_chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                   "function": {"name": "f", "arguments": "{\"a\":1}"}}]}),
        _oa_chunk({}, finish="tool_calls"),
    ]
    events = feed_openai(OpenAIStreamToAnthropic("m"), chunks)
    names = [n for n, _ in events]
    assert names == ["message_start", "content_block_start", "content_block_delta", "content_block_delta",
                     "content_block_stop", "content_block_start", "content_block_delta", "content_block_stop",
                     "message_delta", "message_stop"]
    message = accumulate_anthropic(events)
    assert message["content"] == [{"type": "text", "text": "Checking now."},
                                  {"type": "tool_use", "id": "call_1", "name": "f", "input": {"a": 1}}]


def test_openai_stream_empty_choices_usage_chunk_and_missing_fields():
    translator = OpenAIStreamToAnthropic("m", message_id="msg_fixed")
    # usage-only chunk before anything else, with choices [] / null / absent
    first = translator.feed({"id": "x", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1}})
    assert [n for n, _ in first] == ["message_start"]
    assert first[0][1]["message"]["id"] == "msg_fixed"
    assert translator.feed({"choices": None}) == []
    assert translator.feed({}) == []
    assert translator.feed({"choices": [{"index": 0}]}) == []
    assert translator.feed({"choices": [{"index": 0, "delta": None, "finish_reason": None}]}) == []
    assert translator.feed("not a dict") == []
    tail = translator.finish()
    assert [n for n, _ in tail] == ["message_delta", "message_stop"]
    assert tail[0][1]["usage"]["input_tokens"] == 3
    assert translator.finish() == [] and translator.feed(_oa_chunk({"content": "late"})) == []


def test_openai_stream_without_finish_reason_or_usage_still_closes():
    translator = OpenAIStreamToAnthropic("m")
    events = feed_openai(translator, [_oa_chunk({"content": "partial"})])
    message = accumulate_anthropic(events)
    assert message["stop_reason"] == "end_turn"
    assert events[-2][1]["usage"] == {"output_tokens": 0}
    assert not translator.usage.reported


def test_openai_stream_with_nothing_at_all_is_still_a_valid_message():
    events = OpenAIStreamToAnthropic("m").finish()
    assert [n for n, _ in events] == ["message_start", "message_delta", "message_stop"]
    assert accumulate_anthropic(events)["content"] == []


def test_openai_stream_length_finish_and_usage_on_finish_chunk():
    chunks = [_oa_chunk({"content": "abc"}),
              _oa_chunk({}, finish="length", usage={"prompt_tokens": 9, "completion_tokens": 3})]
    events = feed_openai(OpenAIStreamToAnthropic("m"), chunks)
    assert events[-2][1]["delta"]["stop_reason"] == "max_tokens"
    assert events[-2][1]["usage"]["output_tokens"] == 3


def test_openai_stream_tool_calls_without_index():
    chunks = [
        _oa_chunk({"tool_calls": [{"id": "call_a", "function": {"name": "f", "arguments": "{\"x\":"}}]}),
        _oa_chunk({"tool_calls": [{"function": {"arguments": "1}"}}]}),
        _oa_chunk({"tool_calls": [{"id": "call_b", "function": {"name": "g", "arguments": "{}"}}]}),
        _oa_chunk({}, finish="tool_calls"),
    ]
    message = accumulate_anthropic(feed_openai(OpenAIStreamToAnthropic("m"), chunks))
    assert [(b["id"], b["name"], b["input"]) for b in message["content"]] == [
        ("call_a", "f", {"x": 1}), ("call_b", "g", {})]


def test_openai_stream_error_chunk_becomes_anthropic_error_event():
    translator = OpenAIStreamToAnthropic("m")
    translator.feed(_oa_chunk({"content": "a"}))
    out = translator.feed({"error": {"message": "worker crashed", "type": "server_error"}})
    assert out == [("error", {"type": "error", "error": {"type": "api_error", "message": "worker crashed"}})]
    assert translator.done and translator.finish() == []


@pytest.mark.promise("P20", "P22")
def test_stream_round_trip_anthropic_openai_anthropic():
    """Claude's stream -> OpenAI chunks -> back to Anthropic events gives the same message."""
    to_openai = AnthropicStreamToOpenAI("m", include_usage=True)
    chunks = feed_anthropic(to_openai, ANTHROPIC_TOOL_STREAM)
    to_anthropic = OpenAIStreamToAnthropic("m")
    events = feed_openai(to_anthropic, chunks)
    message = accumulate_anthropic(events)
    assert message["content"] == [
        {"type": "text", "text": "Let me check the weather."},
        {"type": "tool_use", "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "name": "get_weather",
         "input": {"city": "San Francisco"}},
        {"type": "tool_use", "id": "toolu_01Ab", "name": "get_weather", "input": {"city": "Paris"}},
    ]
    assert message["stop_reason"] == "tool_use"
    # cache writes have no OpenAI field: they come back as uncached input, totals kept
    assert to_anthropic.usage == Usage(572, 89, 2048, 0, True)


@pytest.mark.promise("P20")
def test_stream_round_trip_openai_anthropic_openai():
    to_anthropic = OpenAIStreamToAnthropic("m")
    events = feed_openai(to_anthropic, OPENAI_TOOL_STREAM)
    to_openai = AnthropicStreamToOpenAI("m", include_usage=True)
    chunks = feed_anthropic(to_openai, events)
    rebuilt = accumulate_openai(chunks)
    original = accumulate_openai(OPENAI_TOOL_STREAM)
    assert rebuilt["message"]["tool_calls"] == original["message"]["tool_calls"]
    assert rebuilt["finish_reason"] == "tool_calls"
    assert rebuilt["usage"]["prompt_tokens"] == 80 and rebuilt["usage"]["completion_tokens"] == 40


# --------------------------------------------------------------------------- zero-log: no content in errors


def _refusals():
    """Every kind of refusal, each with the canary planted in the content it refuses."""
    user = {"role": "user", "content": CANARY}
    yield openai_to_anthropic_request, {"messages": [user, {"role": "user", "content": [
        {"type": "text", "text": CANARY}, {"type": "image_url", "image_url": {"url": "https://x/" + CANARY}}]}]}
    yield openai_to_anthropic_request, {"messages": [user, {"role": "user", "content": [{"type": CANARY}]}]}
    yield openai_to_anthropic_request, {"messages": [{"role": CANARY, "content": CANARY}]}
    yield openai_to_anthropic_request, {"messages": [user, {"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{\"q\": \"" + CANARY}}]}]}
    yield openai_to_anthropic_request, {"messages": [user, {"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": json.dumps([CANARY])}}]}]}
    yield openai_to_anthropic_request, {"messages": [user], "response_format": {
        "type": "json_schema", "json_schema": {"name": CANARY}}}
    yield openai_to_anthropic_request, {"messages": [user], "tools": [WEATHER_TOOL_OPENAI],
                                        "tool_choice": {"type": CANARY}}
    yield openai_to_anthropic_request, {"messages": [user], "tools": [{"type": CANARY, "function": {}}]}
    yield openai_to_anthropic_request, {"messages": [user], "stop": [CANARY, 3]}
    yield openai_to_anthropic_request, {"messages": [user], "max_tokens": CANARY}
    yield anthropic_to_openai_request, {"messages": [user, {"role": "user", "content": [
        {"type": "text", "text": CANARY},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": CANARY}}]}]}
    yield anthropic_to_openai_request, {"messages": [{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t", "content": [{"type": "document", "title": CANARY}]}]}]}
    yield anthropic_to_openai_request, {"system": [{"type": CANARY, "text": CANARY}], "messages": [user]}
    yield anthropic_to_openai_request, {"messages": [user], "tools": [{"type": CANARY, "name": CANARY}]}
    yield anthropic_to_openai_request, {"messages": [{"role": "assistant", "content": [
        {"type": "tool_use", "id": "t", "name": "f", "input": CANARY}]}]}
    yield (lambda body, _model: openai_to_anthropic_response(body, "m")), {"choices": [{"message": {
        "content": CANARY, "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": CANARY}}]}}]}


@pytest.mark.promise("P23")
@pytest.mark.parametrize("translate, body", list(_refusals()))
def test_translation_errors_never_carry_content(translate, body):
    with pytest.raises(TranslationError) as info:
        translate(body, "model")
    assert_no_canary(info.value)


# --------------------------------------------------------------------------- errors and SSE framing


@pytest.mark.parametrize("status, openai_type, anthropic_type", [
    (400, "invalid_request_error", "invalid_request_error"),
    (401, "authentication_error", "authentication_error"),
    (402, "insufficient_quota", "billing_error"),
    (403, "permission_error", "permission_error"),
    (404, "not_found_error", "not_found_error"),
    (413, "invalid_request_error", "request_too_large"),
    (418, "invalid_request_error", "invalid_request_error"),
    (429, "rate_limit_error", "rate_limit_error"),
    (500, "server_error", "api_error"),
    (502, "server_error", "api_error"),
    (503, "server_error", "overloaded_error"),
    (504, "server_error", "timeout_error"),
    (529, "server_error", "overloaded_error"),
])
def test_error_type_for_status(status, openai_type, anthropic_type):
    assert error_type_for_status(status, "openai") == openai_type
    assert error_type_for_status(status, "anthropic") == anthropic_type


def test_error_bodies_match_the_sdks():
    assert openai_error(429, "Slow down.", code="rate_limit_exceeded") == {
        "error": {"message": "Slow down.", "type": "rate_limit_error", "param": None, "code": "rate_limit_exceeded"}}
    assert openai_error(400, "Bad", "invalid_request_error", param="messages[2]")["error"]["param"] == "messages[2]"
    assert anthropic_error("billing_error", "Budget reached.") == {
        "type": "error", "error": {"type": "billing_error", "message": "Budget reached."}}
    assert anthropic_error("api_error", "x", request_id="req_1")["request_id"] == "req_1"
    with pytest.raises(ValueError):
        error_type_for_status(400, "gemini")


def test_sse_encoders():
    assert sse_openai({"a": "é"}) == 'data: {"a":"é"}\n\n'.encode()
    assert sse_anthropic("ping", {"type": "ping"}) == b'event: ping\ndata: {"type":"ping"}\n\n'
    assert tr.SSE_OPENAI_DONE == b"data: [DONE]\n\n"


def test_works_without_orjson(monkeypatch):
    monkeypatch.setattr(tr, "_orjson", None)
    assert sse_anthropic("message_stop", {"type": "message_stop"}) == (
        b'event: message_stop\ndata: {"type":"message_stop"}\n\n')
    assert sse_openai({"a": "é"}) == 'data: {"a":"é"}\n\n'.encode()
    out = openai_to_anthropic_request({"messages": [{"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{\"x\": 1}"}}]}]}, "m")
    assert out["messages"][0]["content"][0]["input"] == {"x": 1}
    with pytest.raises(TranslationError) as info:
        openai_to_anthropic_request({"messages": [{"role": "assistant", "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{" + CANARY}}]}]}, "m")
    assert_no_canary(info.value)


# ---- any body: a TranslationError or a translation, never another exception ------------


_WORDS = ["user", "assistant", "system", "tool", "developer", "text", "image_url", "tool_use", "tool_result",
          "function", "input_text", "message", "function_call", "function_call_output", "auto", CANARY]
_KEYS = ["role", "content", "type", "text", "tool_calls", "tools", "tool_choice", "function", "name", "arguments",
         "id", "input", "messages", "system", "image_url", "source", "tool_call_id", "tool_use_id", "call_id",
         "output", "parameters", "max_tokens", "stop", "n", "instructions"]
_JSON = st.recursive(st.none() | st.booleans() | st.integers(-3, 3) | st.sampled_from(_WORDS),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(_KEYS), inner,
                                                                                 max_size=4),
                     max_leaves=12)
_BODY = st.fixed_dictionaries({"model": st.just("m")}, optional={
    k: st.lists(_JSON, max_size=3) | _JSON for k in ("messages", "input", "tools", "tool_choice", "system",
                                                     "instructions", "max_tokens", "stop")})


@pytest.mark.promise("P21", "P23")
@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(_BODY)
@example({"model": "m", "messages": [{"role": [], "content": ""}]})  # an unhashable role once gave a 500
def test_any_body_is_translated_or_refused_naming_no_content(body):
    for translate in (openai_to_anthropic_request, anthropic_to_openai_request, responses_to_anthropic_request):
        try:
            translate(body, "upstream")
        except TranslationError as exc:
            assert CANARY not in str(exc) and "7f3a" not in (exc.param or "")
