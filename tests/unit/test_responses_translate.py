"""The Responses API: the shape (app/relay/responses.py: checks, usage with cached tokens;
shapes.RESPONSES: the pass-through body), the translation to and from Anthropic Messages
(app/relay/translate/responses_via_messages.py, streams event by event), the stream meter
(meters.ResponsesStreamMeter); and the fake provider's /v1/responses, driven by the official
openai SDK. Every refusal names its field and never the content (P23)."""
from __future__ import annotations

import json
import uuid

import httpx2
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.types.responses import Response

from app.relay import responses as rs
from app.relay.meters import ResponsesStreamMeter
from app.relay.shapes import RESPONSES
from app.relay.translate import responses_via_messages as rvm
from app.relay.wire import DEFAULT_MAX_TOKENS, TranslationError, Usage, openai_error, usage_from_anthropic
from tests.fakes.provider import DEFAULT_KEY, TOOL_ARGUMENTS, FakeProvider

CANARY = "CANARY-" + uuid.uuid4().hex
WEATHER = {"type": "function", "name": "get_weather", "description": "The weather in a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
           "strict": True}


def refused(body: dict, *, target: str = "claude-upstream") -> TranslationError:
    """The TranslationError the translation to Anthropic raises for `body`; it never quotes the canary."""
    with pytest.raises(TranslationError) as info:
        rvm.responses_to_anthropic_request(body, target)
    exc = info.value
    assert CANARY not in str(exc) and CANARY not in (exc.param or "")
    return exc


def refused_everywhere(body: dict) -> TranslationError:
    with pytest.raises(TranslationError) as info:
        rs.check_request(body)
    exc = info.value
    assert CANARY not in str(exc) and CANARY not in (exc.param or "")
    assert refused(body).param == exc.param  # the translation checks first, the same way
    return exc


def text_message(msg_id: str = "msg_01abc", text: str = "hello", stop: str = "end_turn", **usage) -> dict:
    return {"id": msg_id, "type": "message", "role": "assistant", "model": "claude-upstream",
            "content": [{"type": "text", "text": text}], "stop_reason": stop, "stop_sequence": None,
            "usage": {"input_tokens": 3, "output_tokens": 2, **usage}}


# ----------------------------------------------------------------------------- usage

def test_usage_from_responses_subtracts_the_cached_tokens():
    u = rs.usage_from_responses({"input_tokens": 10, "input_tokens_details": {"cached_tokens": 4},
                                 "output_tokens": 3, "output_tokens_details": {"reasoning_tokens": 1},
                                 "total_tokens": 13})
    assert (u.input_tokens, u.output_tokens, u.cache_read_tokens, u.cache_write_tokens, u.reported) == \
        (6, 3, 4, 0, True)
    assert u.prompt_tokens == 10
    # cache writes are part of input_tokens too, counted apart
    u = rs.usage_from_responses({"input_tokens": 10, "output_tokens": 1,
                                 "input_tokens_details": {"cached_tokens": 4, "cache_write_tokens": 5}})
    assert (u.input_tokens, u.cache_read_tokens, u.cache_write_tokens) == (1, 4, 5)


def test_usage_from_responses_with_odd_values():
    assert rs.usage_from_responses(None) == Usage()
    assert rs.usage_from_responses("x") == Usage()
    assert rs.usage_from_responses({}).reported is False
    u = rs.usage_from_responses({"input_tokens": 2, "input_tokens_details": {"cached_tokens": 9}})
    assert (u.input_tokens, u.cache_read_tokens, u.reported) == (0, 2, True)  # never negative
    u = rs.usage_from_responses({"input_tokens": "7", "output_tokens": True, "input_tokens_details": None})
    assert (u.input_tokens, u.output_tokens) == (0, 0)
    assert rs.usage_from_responses({"output_tokens": 4}).output_tokens == 4


def test_usage_to_responses_reports_input_including_the_cache():
    out = rs.usage_to_responses(Usage(input_tokens=6, output_tokens=3, cache_read_tokens=4, cache_write_tokens=2))
    assert out == {"input_tokens": 12, "input_tokens_details": {"cached_tokens": 4, "cache_write_tokens": 2},
                   "output_tokens": 3, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 15}
    back = rs.usage_from_responses(out)
    assert (back.input_tokens, back.output_tokens, back.cache_read_tokens, back.cache_write_tokens) == (6, 3, 4, 2)


# ----------------------------------------------------------------------------- check_request

@pytest.mark.promise("P23")
@pytest.mark.parametrize("body, param", [
    ({"previous_response_id": "resp_" + CANARY}, "previous_response_id"),
    ({"store": True}, "store"),
    ({"store": CANARY}, "store"),
    ({"conversation": {"id": "conv_" + CANARY}}, "conversation"),
    ({"conversation": CANARY}, "conversation"),
    ({"background": True}, "background"),
    ({"background": CANARY}, "background"),
])
def test_stateful_features_are_refused_for_every_target(body, param):
    exc = refused_everywhere({"model": "m", "input": f"say {CANARY}", **body})
    assert exc.param == param and param in exc.message


def test_stateful_refusals_say_why():
    with pytest.raises(TranslationError, match="keeps no responses"):
        rs.check_request({"model": "m", "input": "hi", "previous_response_id": "resp_1"})
    with pytest.raises(TranslationError, match="store: true"):
        rs.check_request({"model": "m", "input": "hi", "store": True})


@pytest.mark.promise("P23")
@pytest.mark.parametrize("input_, param", [
    (None, "input"),
    (42, "input"),
    ({"role": "user", "content": CANARY}, "input"),
    ([CANARY], "input[0]"),
    ([{"role": "user", "content": "ok"}, {"type": "item_reference", "id": "msg_" + CANARY}], "input[1]"),
])
def test_malformed_input_is_refused(input_, param):
    body = {"model": "m", "instructions": CANARY}
    if input_ is not None:
        body["input"] = input_
    assert refused_everywhere(body).param == param


def test_check_request_accepts_what_the_relay_serves():
    for body in ({"model": "m", "input": "hi"}, {"model": "m", "input": [], "store": False, "background": False},
                 {"model": "m", "input": [{"role": "user", "content": "x"}], "store": None,
                  "previous_response_id": None, "conversation": None}):
        assert rs.check_request(body) is None
    with pytest.raises(TranslationError):
        rs.check_request([{"model": "m"}])  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- pass-through

def test_prepare_adds_store_false_and_leaves_the_rest():
    body = {"model": "gpt-upstream", "input": "hi", "stream": True, "tools": [WEATHER],
            "reasoning": {"effort": "low"}, "include": ["reasoning.encrypted_content"], "metadata": {"k": "v"}}
    assert RESPONSES.prepare(dict(body), True) == {**body, "store": False}
    assert RESPONSES.prepare({"model": "b", "input": "x", "store": False}, False) == \
        {"model": "b", "input": "x", "store": False}
    assert RESPONSES.prepare({"model": "b", "input": "x", "store": None}, False)["store"] is False


# ----------------------------------------------------------------------------- request to Anthropic

def test_string_input_and_instructions():
    out = rvm.responses_to_anthropic_request({"model": "claude-test", "input": "hello", "instructions": "be brief"},
                                            "claude-upstream")
    assert out == {"model": "claude-upstream", "system": "be brief", "max_tokens": DEFAULT_MAX_TOKENS,
                   "messages": [{"role": "user", "content": [{"type": "text", "text": "hello"}]}]}


def test_message_items_system_and_developer_roles():
    out = rvm.responses_to_anthropic_request({"model": "m", "instructions": "first", "input": [
        {"role": "system", "content": "second"},
        {"role": "developer", "content": [{"type": "input_text", "text": "third"}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "a"},
                                                         {"type": "input_text", "text": "b"}]},
        {"role": "user", "content": "c"},
        {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
         "content": [{"type": "output_text", "text": "d", "annotations": []}, {"type": "refusal", "refusal": "e"}]},
        {"role": "user", "content": ""},  # empty text is dropped, as Anthropic refuses it
        {"role": "user", "content": "f"},
    ]}, "up")
    assert out["system"] == "first\n\nsecond\n\nthird"
    assert out["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"},
                                     {"type": "text", "text": "c"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "d"}, {"type": "text", "text": "e"}]},
        {"role": "user", "content": [{"type": "text", "text": "f"}]},
    ]


def test_sampling_knobs_map():
    base = {"model": "m", "input": "x"}
    out = rvm.responses_to_anthropic_request({**base, "max_output_tokens": 50, "temperature": 1.7, "top_p": 0.5,
                                             "stream": True}, "up")
    assert (out["max_tokens"], out["temperature"], out["top_p"], out["stream"]) == (50, 1.0, 0.5, True)
    out = rvm.responses_to_anthropic_request({**base, "temperature": 0.2, "top_p": 1}, "up")
    assert out["temperature"] == 0.2 and "top_p" not in out  # newer Claude models refuse both
    out = rvm.responses_to_anthropic_request({**base, "stream": False, "user": "u1"}, "up")
    assert out["stream"] is False and out["metadata"] == {"user_id": "u1"}
    out = rvm.responses_to_anthropic_request({**base, "user": "u1", "safety_identifier": "s1"}, "up")
    assert out["metadata"] == {"user_id": "s1"}
    for bad in ({"max_output_tokens": 0}, {"max_output_tokens": "5"}, {"max_output_tokens": True},
                {"temperature": "hot"}, {"top_p": [1]}, {"stream": "yes"}, {"user": 5}):
        key = next(iter(bad))
        assert refused({**base, **bad}).param == key


def test_defaults_and_harmless_fields_are_accepted():
    out = rvm.responses_to_anthropic_request({
        "model": "m", "input": "x", "store": False, "metadata": {"run": "1"}, "prompt_cache_key": "k",
        "prompt_cache_retention": "24h", "stream_options": {"include_obfuscation": False}, "service_tier": "auto",
        "truncation": "disabled", "text": {"format": {"type": "text"}, "verbosity": "medium"},
        "reasoning": {"effort": "none"}, "include": [], "top_logprobs": 0, "parallel_tool_calls": True,
        "tool_choice": "auto", "background": False, "previous_response_id": None}, "up")
    assert set(out) == {"model", "messages", "max_tokens"}


def test_function_tools_and_tool_choice():
    base = {"model": "m", "input": "weather?", "tools": [WEATHER, {"type": "function", "name": "bare"}]}
    out = rvm.responses_to_anthropic_request(base, "up")
    assert out["tools"] == [
        {"name": "get_weather", "description": "The weather in a city.", "input_schema": WEATHER["parameters"]},
        {"name": "bare", "input_schema": {"type": "object", "properties": {}}}]
    assert "tool_choice" not in out
    cases = {"auto": {"type": "auto"}, "required": {"type": "any"}, "none": {"type": "none"},
             json.dumps({"type": "function", "name": "bare"}): {"type": "tool", "name": "bare"}}
    for choice, expected in cases.items():
        value = json.loads(choice) if choice.startswith("{") else choice
        assert rvm.responses_to_anthropic_request({**base, "tool_choice": value}, "up")["tool_choice"] == expected
    out = rvm.responses_to_anthropic_request({**base, "parallel_tool_calls": False}, "up")
    assert out["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    out = rvm.responses_to_anthropic_request({**base, "tool_choice": "required", "parallel_tool_calls": False}, "up")
    assert out["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}


def test_a_function_call_round_trip():
    out = rvm.responses_to_anthropic_request({"model": "m", "tools": [WEATHER], "input": [
        {"role": "user", "content": "weather in Paris?"},
        {"type": "function_call", "id": "fc_1", "call_id": "toolu_01", "name": "get_weather",
         "arguments": '{"city": "Paris"}', "status": "completed"},
        {"type": "function_call", "call_id": "call.2", "name": "get_weather", "arguments": ""},
        {"type": "function_call_output", "call_id": "toolu_01", "output": "sunny"},
        {"type": "function_call_output", "call_id": "call.2",
         "output": [{"type": "input_text", "text": "rain"}, {"type": "input_text", "text": "later"}]},
        {"role": "user", "content": "thanks"},
    ]}, "up")
    assert out["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "weather in Paris?"}]},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "call_2", "name": "get_weather", "input": {}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_01", "content": "sunny"},
            {"type": "tool_result", "tool_use_id": "call_2", "content": "rain\nlater"},
            {"type": "text", "text": "thanks"}]},
    ]


@pytest.mark.promise("P23")
@pytest.mark.parametrize("extra, param", [
    ({"tools": [{"type": "web_search"}]}, "tools[0]"),
    ({"tools": [WEATHER, {"type": "file_search", "vector_store_ids": [CANARY]}]}, "tools[1]"),
    ({"tools": [{"type": "mcp", "server_label": CANARY}]}, "tools[0]"),
    ({"tools": [{"type": CANARY, "name": "x"}]}, "tools[0]"),
    ({"tools": [{"type": "function"}]}, "tools[0]"),
    ({"tools": [{"type": "function", "name": "f", "parameters": CANARY}]}, "tools[0]"),
    ({"tools": [{"type": "function", "name": "f", CANARY: 1}]}, "tools[0]"),
    ({"tools": CANARY}, "tools"),
    ({"tools": [WEATHER], "tool_choice": {"type": "allowed_tools", "mode": "auto", "tools": []}}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": {"type": "web_search_preview"}}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": CANARY}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function"}}, "tool_choice"),
    ({"tools": [WEATHER], "parallel_tool_calls": CANARY}, "parallel_tool_calls"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"text": {"format": {"type": "json_schema", "name": "x", "schema": {"title": CANARY}}}}, "text.format"),
    ({"text": {"format": {"type": "json_object"}}}, "text.format"),
    ({"text": {"verbosity": "low"}}, "text.verbosity"),
    ({"text": CANARY}, "text"),
    ({"include": ["file_search_call.results"]}, "include"),
    ({"reasoning": {"effort": "high"}}, "reasoning"),
    ({"reasoning": {"summary": "auto"}}, "reasoning"),
    ({"reasoning": CANARY}, "reasoning"),
    ({"truncation": "auto"}, "truncation"),
    ({"service_tier": "flex"}, "service_tier"),
    ({"top_logprobs": 5}, "top_logprobs"),
    ({"max_tool_calls": 3}, "max_tool_calls"),
    ({"prompt": {"id": "pmpt_" + CANARY}}, "prompt"),
    ({"stop": [CANARY]}, "stop"),
    ({CANARY: "x"}, None),
    ({"instructions": [CANARY]}, "instructions"),
    ({"metadata": CANARY}, "metadata"),
])
def test_what_anthropic_cannot_carry_is_refused_naming_the_field(extra, param):
    exc = refused({"model": "m", "input": f"hello {CANARY}", **extra})
    assert exc.param == param
    if param:
        assert param.split("[")[0].split(".")[0] in exc.message


@pytest.mark.promise("P23")
@pytest.mark.parametrize("item, param", [
    ({"role": "user", "content": [{"type": "input_image", "image_url": "data:image/png;base64," + CANARY}]},
     "input[1].content[0]"),
    ({"role": "user", "content": [{"type": "input_file", "file_id": "file-" + CANARY}]}, "input[1].content[0]"),
    ({"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": CANARY}}]},
     "input[1].content[0]"),
    ({"role": "user", "content": [{"type": "input_text", "text": 5}]}, "input[1].content[0]"),
    ({"role": "user", "content": [{"type": "refusal", "refusal": CANARY}]}, "input[1].content[0]"),
    ({"role": "user", "content": [CANARY]}, "input[1].content[0]"),
    ({"role": "user", "content": {"text": CANARY}}, "input[1].content"),
    ({"role": CANARY, "content": CANARY}, "input[1]"),
    ({"content": CANARY}, "input[1]"),
    ({"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": CANARY}]}, "input[1]"),
    ({"type": CANARY, "content": CANARY}, "input[1]"),
    ({"type": "web_search_call", "id": "ws_1", "status": "completed"}, "input[1]"),
    ({"type": "function_call", "name": "f", "arguments": CANARY}, "input[1]"),
    ({"type": "function_call", "call_id": "c1", "arguments": "{}"}, "input[1]"),
    ({"type": "function_call", "call_id": "c1", "name": "f", "arguments": '{"a": "' + CANARY}, "input[1].arguments"),
    ({"type": "function_call", "call_id": "c1", "name": "f", "arguments": json.dumps([CANARY])},
     "input[1].arguments"),
    ({"type": "function_call", "call_id": "c1", "name": "f", "arguments": {"a": CANARY}}, "input[1].arguments"),
    ({"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}", "namespace": "ns"}, "input[1]"),
    ({"type": "function_call_output", "output": CANARY}, "input[1]"),
    ({"type": "function_call_output", "call_id": "c1",
      "output": [{"type": "input_image", "image_url": "https://x/" + CANARY}]}, "input[1].output[0]"),
])
def test_input_items_anthropic_cannot_carry_are_refused_naming_where(item, param):
    assert refused({"model": "m", "input": [{"role": "user", "content": "hi"}, item]}).param == param


def test_input_with_nothing_for_the_model_is_refused():
    assert refused({"model": "m", "input": ""}).param == "input"
    assert refused({"model": "m", "input": [{"role": "system", "content": CANARY}]}).param == "input"


# A JSON-ish body: the known fields (and a few odd ones) with values that are sometimes
# plausible, often not; the canary is in the strings, as content would be.
_json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-3, 10**6), st.floats(allow_nan=False),
                       st.text(max_size=8), st.just(CANARY), st.just(f"say {CANARY}"))
_json = st.recursive(_json_leaf, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                        st.dictionaries(st.text(max_size=6), inner, max_size=4)),
                     max_leaves=12)
_word = st.sampled_from(["message", "user", "assistant", "system", "developer", "input_text", "output_text",
                         "refusal", "function_call", "function_call_output", "function", "input_image",
                         "reasoning", "item_reference", "text", "auto", "none", "required", CANARY])
_part = st.fixed_dictionaries({}, optional={"type": _word, "text": st.one_of(st.just(CANARY), _json),
                                            "refusal": _json})
_item = st.fixed_dictionaries({}, optional={
    "type": _word, "role": _word, "content": st.one_of(st.just(CANARY), st.lists(_part, max_size=3), _json),
    "call_id": st.one_of(st.just("call_1"), _json), "name": st.one_of(st.just("get_weather"), _json),
    "arguments": st.one_of(st.just('{"city": "' + CANARY + '"}'), st.just("{"), _json),
    "output": st.one_of(st.just(CANARY), st.lists(_part, max_size=2), _json)})
_tool = st.one_of(st.just(WEATHER), st.fixed_dictionaries({}, optional={
    "type": _word, "name": _json, "parameters": _json, "description": _json, "strict": _json}))
_body = st.fixed_dictionaries({"model": st.just("m")}, optional={
    "input": st.one_of(st.just(CANARY), st.lists(_item, max_size=5), _json),
    "instructions": st.one_of(st.just(CANARY), _json),
    "tools": st.one_of(st.lists(_tool, max_size=3), _json),
    "tool_choice": st.one_of(_word, st.fixed_dictionaries({"type": _word, "name": _json}), _json),
    "parallel_tool_calls": _json, "max_output_tokens": _json, "temperature": _json, "top_p": _json,
    "stream": _json, "store": _json, "background": _json, "previous_response_id": _json,
    "conversation": _json, "text": _json, "reasoning": _json, "include": _json, "metadata": _json,
    "user": _json, "truncation": _json, "service_tier": _json, "top_logprobs": _json,
    CANARY: _json, "odd": _json})

# Bodies that get further: mostly well-formed items and tools, with the odd bad value.
_text = st.one_of(st.just(CANARY), st.just(f"say {CANARY}"), st.text(max_size=5), _json)
_good_part = st.fixed_dictionaries({"type": st.sampled_from(["input_text", "output_text", "refusal", "input_image"]),
                                    "text": _text}, optional={"refusal": _text})
_good_item = st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "developer"]),
                           "content": st.one_of(_text, st.lists(_good_part, max_size=3))},
                          optional={"type": st.just("message"), "id": _text}),
    st.fixed_dictionaries({"type": st.just("function_call"), "call_id": st.sampled_from(["call_1", "c.2", ""]),
                           "name": st.sampled_from(["get_weather", ""]),
                           "arguments": st.one_of(st.just('{"city": "' + CANARY + '"}'), st.just("{"), _text)}),
    st.fixed_dictionaries({"type": st.just("function_call_output"), "call_id": st.sampled_from(["call_1", "c.2"]),
                           "output": st.one_of(_text, st.lists(_good_part, max_size=2))}),
    _item)
_good_body = st.fixed_dictionaries({"model": st.just("m"), "input": st.one_of(_text, st.lists(_good_item, max_size=6))},
                                   optional={"instructions": _text, "tools": st.lists(_tool, max_size=3),
                                             "tool_choice": st.one_of(_word, st.fixed_dictionaries(
                                                 {"type": _word, "name": st.sampled_from(["get_weather", CANARY])})),
                                             "max_output_tokens": st.one_of(st.integers(-1, 100), _json),
                                             "temperature": _json, "stream": st.booleans()})


@pytest.mark.promise("P23")
@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.one_of(_body, _good_body))
def test_any_body_raises_only_translation_errors_that_never_quote_it(body):
    for step in (rs.check_request, lambda b: rvm.responses_to_anthropic_request(b, "claude-upstream")):
        try:
            step(body)
        except TranslationError as exc:
            assert CANARY not in str(exc) and CANARY not in exc.message
            assert exc.param is None or CANARY not in exc.param
            assert exc.__cause__ is None and (exc.__context__ is None or exc.__suppress_context__)


# ----------------------------------------------------------------------------- response from Anthropic

def test_a_text_answer_becomes_a_completed_response():
    out = rvm.anthropic_to_responses_response(
        text_message("msg_01abc", "hello there", cache_read_input_tokens=4, cache_creation_input_tokens=1),
        "claude-test", created_at=1700000000)
    assert out["id"] == "resp_01abc" and out["object"] == "response" and out["model"] == "claude-test"
    assert out["status"] == "completed" and out["incomplete_details"] is None and out["error"] is None
    assert out["created_at"] == 1700000000
    [item] = out["output"]
    assert item["type"] == "message" and item["role"] == "assistant" and item["status"] == "completed"
    assert item["id"].startswith("msg_")
    assert item["content"] == [{"type": "output_text", "text": "hello there", "annotations": [], "logprobs": []}]
    assert out["usage"] == {"input_tokens": 8, "input_tokens_details": {"cached_tokens": 4, "cache_write_tokens": 1},
                            "output_tokens": 2, "output_tokens_details": {"reasoning_tokens": 0},
                            "total_tokens": 10}
    parsed = Response.model_validate(out)  # the SDK's own type, strictly validated
    assert parsed.output_text == "hello there" and parsed.usage.input_tokens_details.cached_tokens == 4


def test_tool_use_becomes_function_calls_and_text_runs_become_messages():
    msg = {"id": "msg_2", "type": "message", "role": "assistant", "stop_reason": "tool_use",
           "content": [{"type": "thinking", "thinking": "hmm", "signature": "s"},
                       {"type": "text", "text": "Let me "}, {"type": "text", "text": "check."},
                       {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris"}},
                       {"type": "tool_use", "id": "toolu_02", "name": "noargs", "input": None},
                       {"type": "text", "text": "done"}],
           "usage": {"input_tokens": 5, "output_tokens": 9}}
    out = rvm.anthropic_to_responses_response(msg, "claude-test")
    kinds = [i["type"] for i in out["output"]]
    assert kinds == ["message", "function_call", "function_call", "message"]
    assert [p["text"] for p in out["output"][0]["content"]] == ["Let me ", "check."]
    call = out["output"][1]
    assert (call["call_id"], call["name"], json.loads(call["arguments"]), call["status"]) == \
        ("toolu_01", "get_weather", {"city": "Paris"}, "completed")
    assert call["id"].startswith("fc_") and out["output"][2]["arguments"] == "{}"
    assert out["status"] == "completed"
    parsed = Response.model_validate(out)
    assert parsed.output_text == "Let me check.done"
    assert rs.responses_text_chars(out) == len("Let me check.done") + len(call["arguments"]) + 2


def test_a_max_tokens_stop_is_incomplete():
    out = rvm.anthropic_to_responses_response(text_message(stop="max_tokens"), "claude-test")
    assert out["status"] == "incomplete" and out["incomplete_details"] == {"reason": "max_output_tokens"}
    assert out["output"][0]["status"] == "incomplete"
    out = rvm.anthropic_to_responses_response(text_message(stop="refusal"), "claude-test")
    assert out["incomplete_details"] == {"reason": "content_filter"}
    Response.model_validate(out)


def test_the_request_is_echoed_when_given():
    request = {"model": "claude-test", "input": "x", "instructions": "be brief", "tools": [WEATHER],
               "tool_choice": "required", "parallel_tool_calls": False, "temperature": 0.5, "top_p": 0.9,
               "max_output_tokens": 99, "metadata": {"run": "7"}}
    out = rvm.anthropic_to_responses_response(text_message(), "claude-test", request=request)
    assert (out["instructions"], out["tools"], out["tool_choice"], out["parallel_tool_calls"]) == \
        ("be brief", [WEATHER], "required", False)
    assert (out["temperature"], out["top_p"], out["max_output_tokens"], out["metadata"]) == (0.5, 0.9, 99, {"run": "7"})
    assert out["store"] is False
    Response.model_validate(out)
    bare = rvm.anthropic_to_responses_response({"content": None}, "claude-test")
    assert bare["output"] == [] and bare["id"].startswith("resp_") and bare["usage"]["total_tokens"] == 0


def test_an_untranslatable_upstream_answer_raises():
    with pytest.raises(TranslationError):
        rvm.anthropic_to_responses_response("nope", "m")  # type: ignore[arg-type]
    with pytest.raises(TranslationError):
        rvm.anthropic_to_responses_response({"content": "text"}, "m")
    with pytest.raises(TranslationError):
        rvm.anthropic_to_responses_response({"content": ["text"]}, "m")


def test_responses_text_chars():
    assert rs.responses_text_chars({"output": [
        {"type": "message", "content": [{"type": "output_text", "text": "abc"},
                                        {"type": "refusal", "refusal": "no"}]},
        {"type": "function_call", "arguments": '{"a":1}'},
        {"type": "reasoning", "summary": [{"text": "not counted"}]},
        "junk", {"type": "message", "content": None}]}) == 3 + 2 + 7
    assert rs.responses_text_chars({}) == 0
    assert rs.responses_text_chars({"output": "x"}) == 0


# ----------------------------------------------------------------------------- the stream translator

def anthropic_events(blocks: list[tuple[str, object]], stop: str = "end_turn", msg_id: str = "msg_01s") -> list:
    """An Anthropic stream: each block is ("text", [pieces]) or ("tool", (id, name, [json pieces]))."""
    events = [("message_start", {"type": "message_start", "message": {
        "id": msg_id, "type": "message", "role": "assistant", "content": [], "model": "claude-upstream",
        "stop_reason": None, "usage": {"input_tokens": 5, "output_tokens": 1, "cache_read_input_tokens": 2}}})]
    for i, (kind, spec) in enumerate(blocks):
        if kind == "text":
            events.append(("content_block_start", {"type": "content_block_start", "index": i,
                                                   "content_block": {"type": "text", "text": ""}}))
            events.append(("ping", {"type": "ping"}))
            events += [("content_block_delta", {"type": "content_block_delta", "index": i,
                                                "delta": {"type": "text_delta", "text": p}}) for p in spec]
        elif kind == "thinking":
            events.append(("content_block_start", {"type": "content_block_start", "index": i,
                                                   "content_block": {"type": "thinking", "thinking": ""}}))
            events.append(("content_block_delta", {"type": "content_block_delta", "index": i,
                                                   "delta": {"type": "thinking_delta", "thinking": "hmm"}}))
        else:
            call_id, name, pieces = spec
            events.append(("content_block_start", {"type": "content_block_start", "index": i, "content_block": {
                "type": "tool_use", "id": call_id, "name": name, "input": {}}}))
            events += [("content_block_delta", {"type": "content_block_delta", "index": i,
                                                "delta": {"type": "input_json_delta", "partial_json": p}})
                       for p in pieces]
        events.append(("content_block_stop", {"type": "content_block_stop", "index": i}))
    events.append(("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
                                     "usage": {"output_tokens": 7}}))
    events.append(("message_stop", {"type": "message_stop"}))
    return events


class Counted:
    """A usage_of() that records how often it is asked."""

    def __init__(self, usage: Usage):
        self.usage, self.calls = usage, 0

    def __call__(self) -> Usage:
        self.calls += 1
        return self.usage


def translate_stream(events: list, usage: Usage | None = None, finish: bool = True, **kw):
    usage_of = Counted(usage or Usage(3, 7, 2, 0, True))
    t = rvm.AnthropicStreamToResponses("claude-test", usage_of, **kw)
    out = []
    for name, data in events:
        out += t.feed(name, data)
    if finish:
        out += t.finish()
    return out, usage_of, t


def sdk_final(out: list, **stream_kw):
    """What the official SDK makes of these events: the final response via responses.stream()."""
    body = b"".join(rs.sse_responses(name, data) for name, data in out)
    transport = httpx2.MockTransport(lambda request: httpx2.Response(
        200, headers={"content-type": "text/event-stream"}, content=body))
    client = openai.OpenAI(api_key="x", base_url="http://relay.invalid/v1", max_retries=0,
                           http_client=httpx2.Client(transport=transport))
    with client.responses.stream(model="claude-test", input="x", **stream_kw) as stream:
        events = list(stream)
        try:
            final = stream.get_final_response()
        except RuntimeError:  # "Didn't receive a `response.completed` event."
            final = None
        return final, events


def test_a_text_stream_event_by_event():
    out, usage_of, t = translate_stream(anthropic_events([("text", ["Hel", "lo"])]))
    names = [n for n, _ in out]
    assert names == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.content_part.added", "response.output_text.delta", "response.output_text.delta",
                     "response.output_text.done", "response.content_part.done", "response.output_item.done",
                     "response.completed"]
    assert [d["sequence_number"] for _, d in out] == list(range(len(out)))
    assert all(d["type"] == n for n, d in out)
    created, in_progress = out[0][1]["response"], out[1][1]["response"]
    assert created["id"] == "resp_01s" == in_progress["id"] and created["status"] == "in_progress"
    assert created["output"] == [] and created["usage"] is None
    added = out[2][1]
    assert added["output_index"] == 0 and added["item"]["type"] == "message" and added["item"]["content"] == []
    item_id = added["item"]["id"]
    assert out[3][1]["part"] == {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
    assert [(d["item_id"], d["content_index"], d["delta"]) for _, d in out[4:6]] == \
        [(item_id, 0, "Hel"), (item_id, 0, "lo")]
    assert out[6][1]["text"] == "Hello" and out[7][1]["part"]["text"] == "Hello"
    assert out[8][1]["item"]["status"] == "completed" and out[8][1]["item"]["content"][0]["text"] == "Hello"
    done = out[9][1]["response"]
    assert done["status"] == "completed" and done["output"] == [out[8][1]["item"]]
    assert done["usage"] == rs.usage_to_responses(Usage(3, 7, 2, 0, True))
    assert usage_of.calls == 1  # asked once, for the closing event; never counted here
    assert t.done and t.feed("message_stop", {}) == [] and t.finish() == []

    final, events = sdk_final(out)
    assert final.output_text == "Hello" and final.status == "completed" and final.id == "resp_01s"
    assert (final.usage.input_tokens, final.usage.input_tokens_details.cached_tokens, final.usage.output_tokens) == \
        (5, 2, 7)
    assert [e.delta for e in events if e.type == "response.output_text.delta"] == ["Hel", "lo"]


def test_a_tool_call_stream_event_by_event():
    out, usage_of, _ = translate_stream(anthropic_events(
        [("tool", ("toolu_01", "get_weather", ["", '{"city": ', '"Paris"}']))], stop="tool_use"))
    names = [n for n, _ in out]
    assert names == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.function_call_arguments.delta", "response.function_call_arguments.delta",
                     "response.function_call_arguments.done", "response.output_item.done", "response.completed"]
    item = out[2][1]["item"]
    assert (item["type"], item["call_id"], item["name"], item["arguments"], item["status"]) == \
        ("function_call", "toolu_01", "get_weather", "", "in_progress")
    assert [d["delta"] for n, d in out if n.endswith("arguments.delta")] == ['{"city": ', '"Paris"}']
    assert out[5][1]["arguments"] == '{"city": "Paris"}' and out[5][1]["item_id"] == item["id"]
    assert out[6][1]["item"]["status"] == "completed" and out[6][1]["item"]["arguments"] == '{"city": "Paris"}'
    final, _ = sdk_final(out, tools=[WEATHER])
    [call] = final.output
    assert call.type == "function_call" and call.call_id == "toolu_01" and call.parsed_arguments == {"city": "Paris"}


def test_text_then_tools_then_text_in_one_stream():
    out, _, _ = translate_stream(anthropic_events([
        ("thinking", None), ("text", ["a", "b"]), ("text", ["c"]), ("tool", ("toolu_1", "f", ['{"x":1}'])),
        ("tool", ("toolu_2", "g", [])), ("text", ["d"])], stop="tool_use"))
    added = [d for n, d in out if n == "response.output_item.added"]
    assert [(d["output_index"], d["item"]["type"]) for d in added] == \
        [(0, "message"), (1, "function_call"), (2, "function_call"), (3, "message")]
    parts = [(d["output_index"], d["content_index"]) for n, d in out if n == "response.content_part.added"]
    assert parts == [(0, 0), (0, 1), (3, 0)]  # consecutive text blocks: one item, two parts
    # a call with no input says "{}", as a delta too, so the deltas add up to the arguments
    assert [d["delta"] for n, d in out if n.endswith("arguments.delta") and d["output_index"] == 2] == ["{}"]
    dones = [d["output_index"] for n, d in out if n == "response.output_item.done"]
    assert dones == [0, 1, 2, 3]
    final, _ = sdk_final(out)
    assert final.output_text == "abcd" and [o.type for o in final.output] == \
        ["message", "function_call", "function_call", "message"]
    assert final.output[2].arguments == "{}"
    assert rs.responses_text_chars(out[-1][1]["response"]) == len("abcd") + len('{"x":1}') + 2


def test_a_max_tokens_stop_ends_incomplete():
    out, usage_of, _ = translate_stream(anthropic_events([("text", ["cut"])], stop="max_tokens"))
    assert out[-1][0] == "response.incomplete"
    response = out[-1][1]["response"]
    assert response["status"] == "incomplete" and response["incomplete_details"] == {"reason": "max_output_tokens"}
    assert response["output"][0]["status"] == "incomplete" and response["usage"]["output_tokens"] == 7
    assert usage_of.calls == 1
    final, events = sdk_final(out)
    assert events[-1].type == "response.incomplete" and events[-1].response.output[0].content[0].text == "cut"
    assert events[-1].response.incomplete_details.reason == "max_output_tokens"
    assert final is None  # the SDK's final response is only a completed one's


def test_an_upstream_error_becomes_an_error_event():
    events = anthropic_events([("text", ["par", "tial"])])[:5]
    events.append(("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}))
    events.append(("content_block_delta", {"type": "content_block_delta", "index": 0,
                                           "delta": {"type": "text_delta", "text": "late"}}))
    out, usage_of, t = translate_stream(events, finish=False)
    name, data = out[-1]
    assert name == "error" and data["type"] == "error" and data["sequence_number"] == len(out) - 1
    assert (data["code"], data["message"], data["param"]) == ("overloaded_error", "Overloaded", None)
    assert data["error"] == {"type": "overloaded_error", "code": "overloaded_error", "message": "Overloaded",
                             "param": None}
    assert t.done and t.finish() == [] and usage_of.calls == 0
    with pytest.raises(openai.APIError, match="Overloaded"):  # the SDK raises it, as it does OpenAI's own
        sdk_final(out)


def test_a_stream_that_stops_without_a_reason_fails():
    events = anthropic_events([("text", ["par", "tial"])])[:5]  # no block stop, no message_delta/stop
    out, usage_of, _ = translate_stream(events, usage=Usage(5, 2, 0, 0, False))
    names = [n for n, _ in out]
    assert names[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.failed"]
    response = out[-1][1]["response"]
    assert response["status"] == "failed" and response["error"]["code"] == "server_error"
    assert response["output"][0]["content"][0]["text"] == "partial" and response["usage"]["output_tokens"] == 2
    assert usage_of.calls == 1
    # a message_stop with no message_delta before it still completes
    out, _, _ = translate_stream([e for e in anthropic_events([("text", ["x"])]) if e[0] != "message_delta"])
    assert out[-1][0] == "response.completed"


def test_odd_upstream_events_are_tolerated():
    out, _, _ = translate_stream([
        ("", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": "pre"}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 9, "delta": {"type": "text_delta"}}),
        ("content_block_delta", "not a dict"),
        ("content_block_start", {"index": 1, "content_block": {"type": "tool_use", "name": "f",
                                                              "input": {"a": 1}}}),
        ("mystery", {}),
        ("message_delta", {"delta": {"stop_reason": "end_turn"}}),
    ])
    names = [n for n, _ in out]
    assert names[:2] == ["response.created", "response.in_progress"]  # created even without message_start
    assert out[-1][0] == "response.completed"
    final, _ = sdk_final(out)
    assert final.output_text == "pre" and final.output[1].arguments == '{"a":1}'
    assert final.output[1].call_id.startswith("toolu_")


def test_a_response_id_can_be_given():
    out, _, _ = translate_stream(anthropic_events([("text", ["x"])]), response_id="resp_fixed",
                                 request={"instructions": "be brief", "tools": [WEATHER]})
    assert {d["response"]["id"] for n, d in out if "response" in d} == {"resp_fixed"}
    assert out[-1][1]["response"]["instructions"] == "be brief"


def test_sse_responses_frame():
    frame = rs.sse_responses("response.created", {"type": "response.created", "text": "é"})
    assert frame == b'event: response.created\ndata: {"type":"response.created","text":"\xc3\xa9"}\n\n'


# ----------------------------------------------------------------------------- the stream meter

def test_the_meter_counts_a_completed_stream():
    meter = ResponsesStreamMeter()
    assert (meter.usage, meter.chars_out, meter.clean_end, meter.error) == (None, 0, False, False)
    assert meter.feed("response.created", {"type": "response.created", "response": {"usage": None}}) == 0
    assert meter.usage is None
    assert meter.feed("response.output_text.delta", {"delta": "hello"}) == 5
    assert meter.feed("", {"type": "response.function_call_arguments.delta", "delta": '{"a":1}'}) == 7
    assert meter.feed("response.refusal.delta", {"delta": "no"}) == 2
    assert meter.feed("response.output_text.done", {"text": "hello"}) == 0
    assert meter.feed("response.output_text.delta", {"delta": None}) == 0
    assert meter.feed("response.x", None) == 0  # type: ignore[arg-type]
    assert meter.chars_out == 14 and not meter.clean_end
    meter.feed("response.completed", {"response": {"usage": {
        "input_tokens": 10, "input_tokens_details": {"cached_tokens": 4}, "output_tokens": 3}}})
    assert meter.clean_end and not meter.error
    u = meter.usage
    assert (u.input_tokens, u.cache_read_tokens, u.output_tokens, u.reported) == (6, 4, 3, True)


def test_the_meter_on_incomplete_failed_and_error():
    meter = ResponsesStreamMeter()
    meter.feed("response.incomplete", {"response": {"usage": {"input_tokens": 2, "output_tokens": 1}}})
    assert meter.clean_end and not meter.error and meter.usage.output_tokens == 1
    meter = ResponsesStreamMeter()
    meter.feed("response.failed", {"response": {"status": "failed", "usage": None}})
    assert meter.clean_end and meter.error and meter.usage is None
    meter = ResponsesStreamMeter()
    meter.feed("error", {"type": "error", "error": {"message": "boom"}})
    assert meter.error and not meter.clean_end


# ----------------------------------------------------------------------------- the fake's /v1/responses

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


def sse_events(resp):
    """(event name, data) of each event of an SSE body read with httpx2, as it arrives."""
    name = ""
    for line in resp.iter_lines():
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            yield name, json.loads(line[5:])
            name = ""


def test_fake_responses_create(fake, oai):
    r = oai.responses.create(model="gpt-4o", instructions="be brief", input=f"{CANARY} hello", store=False)
    assert r.object == "response" and r.model == "gpt-4o" and r.status == "completed" and r.id.startswith("resp_")
    assert r.output_text == f"echo: {CANARY} hello"
    assert (r.usage.input_tokens, r.usage.output_tokens, r.usage.total_tokens) == (4, 3, 7)
    assert r.usage.input_tokens_details.cached_tokens == 0 and r.usage.output_tokens_details.reasoning_tokens == 0
    seen = fake.requests[-1]
    assert (seen.method, seen.path) == ("POST", "/v1/responses")
    assert seen.body["store"] is False and seen.body["input"] == f"{CANARY} hello"
    # input items: the last user message is echoed; every item's words are prompt tokens
    r = oai.responses.create(model="gpt-4o", input=[
        {"role": "developer", "content": "one two"},
        {"role": "user", "content": [{"type": "input_text", "text": "three four"}]},
        {"role": "assistant", "content": "five"},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "six"}]}])
    assert r.output_text == "echo: six" and r.usage.input_tokens == 6


def test_fake_responses_max_output_tokens_and_cached_tokens(fake, oai):
    r = oai.responses.create(model="m", input="one two three four", max_output_tokens=2)
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.output_text == "echo: one" and r.usage.output_tokens == 2
    fake.push_fault(cached_tokens=3, cache_creation_tokens=1)
    r = oai.responses.create(model="m", input="one two three four five")
    assert r.usage.input_tokens == 5 and r.usage.input_tokens_details.cached_tokens == 3
    assert r.usage.input_tokens_details.cache_write_tokens == 1
    u = rs.usage_from_responses(r.usage.model_dump())
    assert (u.input_tokens, u.cache_read_tokens, u.cache_write_tokens) == (1, 3, 1)


def test_fake_responses_stream(fake, oai):
    fake.push_fault(chunks=3)
    with oai.responses.stream(model="gpt-4o", input="stream me some words") as stream:
        events = list(stream)
        final = stream.get_final_response()
    names = [e.type for e in events]
    assert names[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert names[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]
    assert names.count("response.output_text.delta") == 3
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert final.output_text == "echo: stream me some words" and final.usage.output_tokens == 5
    assert fake.requests[-1].body["stream"] is True


def test_fake_responses_tool_call(fake, oai):
    r = oai.responses.create(model="gpt-4o", input="what is the weather in Paris?", tools=[WEATHER])
    [call] = r.output
    assert call.type == "function_call" and call.name == "get_weather" and call.arguments == TOOL_ARGUMENTS
    assert call.call_id.startswith("call_") and r.usage.output_tokens == 2
    with oai.responses.stream(model="gpt-4o", input="weather?", tools=[WEATHER]) as stream:
        deltas = [e.delta for e in stream if e.type == "response.function_call_arguments.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == TOOL_ARGUMENTS and final.output[0].parsed_arguments == {"city": "Paris"}
    # after the result the model answers in text, so an agent loop ends
    r = oai.responses.create(model="gpt-4o", tools=[WEATHER], input=[
        {"role": "user", "content": "weather in Paris?"},
        {"type": "function_call", "call_id": call.call_id, "name": "get_weather", "arguments": TOOL_ARGUMENTS},
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}])
    assert r.output[0].type == "message" and r.output_text == "echo: weather in Paris?"
    # tool_choice forces a call; "none" forbids one
    r = oai.responses.create(model="m", input="hi", tools=[WEATHER], tool_choice="required")
    assert r.output[0].type == "function_call"
    r = oai.responses.create(model="m", input="weather", tools=[WEATHER], tool_choice="none")
    assert r.output[0].type == "message"


def test_fake_responses_records_store_as_sent(fake, oai):
    r = oai.responses.create(model="m", input="hi", store=True)  # OpenAI accepts it; the fake records it
    assert r.status == "completed" and fake.requests[-1].body["store"] is True
    oai.responses.create(model="m", input="hi")
    assert "store" not in fake.requests[-1].body


def test_fake_responses_faults(fake, oai):
    fake.push_fault(status=429)
    with pytest.raises(openai.RateLimitError):
        oai.responses.create(model="m", input="hi")
    fake.push_fault(status=500, message="nope")
    with pytest.raises(openai.InternalServerError, match="nope"):
        oai.responses.create(model="m", input="hi")
    fake.push_fault(wrong_usage="absent")
    assert oai.responses.create(model="m", input="hi").usage is None
    fake.push_fault(wrong_usage="inflated")
    assert oai.responses.create(model="m", input="hi").usage.input_tokens == 1001
    fake.push_fault(error_after=3, message="mid-stream failure")
    with pytest.raises(openai.APIError, match="mid-stream failure"):
        with oai.responses.stream(model="m", input="a b c") as stream:
            list(stream)
    with pytest.raises(openai.BadRequestError):
        oai.post("/responses", body={"model": "m"}, cast_to=object)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=fake.base_url + "/v1", api_key="wrong", max_retries=0).responses.create(
            model="m", input="hi")


def test_the_meter_reads_the_fakes_real_streams(fake):
    headers = {"Authorization": f"Bearer {DEFAULT_KEY}"}

    def metered(**fault) -> ResponsesStreamMeter:
        if fault:
            fake.push_fault(**fault)
        meter = ResponsesStreamMeter()
        try:
            with httpx2.stream("POST", fake.base_url + "/v1/responses", headers=headers, timeout=5,
                               json={"model": "m", "input": "count these words", "stream": True}) as resp:
                for name, data in sse_events(resp):
                    meter.feed(name, data)
        except httpx2.HTTPError:
            pass  # a dropped stream
        return meter

    meter = metered(cached_tokens=1)
    assert meter.clean_end and not meter.error and meter.chars_out == len("echo: count these words")
    assert (meter.usage.input_tokens, meter.usage.cache_read_tokens, meter.usage.output_tokens) == (2, 1, 4)
    meter = metered(error_after=5)
    assert meter.error and not meter.clean_end and meter.usage is None
    meter = metered(drop_after=6)
    assert not meter.clean_end and not meter.error and meter.usage is None and meter.chars_out > 0
    meter = metered(wrong_usage="absent")
    assert meter.clean_end and meter.usage is None


def test_fake_count_tokens_is_anthropics_shape(fake):
    r = httpx2.post(fake.base_url + "/v1/messages/count_tokens", headers={"x-api-key": DEFAULT_KEY},
                    json={"model": "claude-sonnet-4-5", "system": "be brief",
                          "messages": [{"role": "user", "content": "one two three"}]})
    assert r.status_code == 200 and r.json() == {"input_tokens": 5}


# ----------------------------------------------------------------------------- the whole translation, SDK to fake

def mini_relay(fake, upstream_model: str = "claude-upstream") -> openai.OpenAI:
    """An openai client whose /responses is served the way the relay serves an Anthropic
    target: check, translate, call the fake's /v1/messages, translate back (streams too)."""
    headers = {"x-api-key": DEFAULT_KEY, "anthropic-version": "2023-06-01"}

    def handle(request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content)
        try:
            upstream = rvm.responses_to_anthropic_request(body, upstream_model)
        except TranslationError as exc:
            return httpx2.Response(400, json=openai_error(400, exc.message, param=exc.param))
        if not body.get("stream"):
            msg = httpx2.post(fake.base_url + "/v1/messages", headers=headers, json=upstream, timeout=5).json()
            return httpx2.Response(200, json=rvm.anthropic_to_responses_response(msg, body["model"], request=body))
        usage = Usage()

        def usage_of() -> Usage:
            return usage

        t = rvm.AnthropicStreamToResponses(body["model"], usage_of, request=body)
        out = []
        with httpx2.stream("POST", fake.base_url + "/v1/messages", headers=headers, json=upstream,
                           timeout=5) as resp:
            for name, data in sse_events(resp):
                if name == "message_start":
                    usage = usage_from_anthropic(data["message"]["usage"])
                elif name == "message_delta":
                    usage.output_tokens = data["usage"]["output_tokens"]
                out += t.feed(name, data)
        out += t.finish()
        return httpx2.Response(200, headers={"content-type": "text/event-stream"},
                               content=b"".join(rs.sse_responses(n, d) for n, d in out))

    return openai.OpenAI(api_key="x", base_url="http://relay.invalid/v1", max_retries=0,
                         http_client=httpx2.Client(transport=httpx2.MockTransport(handle)))


def test_the_sdk_through_the_translation_to_the_fake(fake):
    client = mini_relay(fake)
    fake.push_fault(cached_tokens=2)
    r = client.responses.create(model="claude-test", instructions="be brief", input="hello from responses",
                                max_output_tokens=50, temperature=0.3)
    assert r.output_text == "echo: hello from responses" and r.model == "claude-test" and r.status == "completed"
    assert (r.usage.input_tokens, r.usage.input_tokens_details.cached_tokens, r.usage.output_tokens) == (5, 2, 4)
    sent = fake.requests[-1].body
    assert sent["model"] == "claude-upstream" and sent["system"] == "be brief" and sent["max_tokens"] == 50
    assert sent["temperature"] == 0.3

    with client.responses.stream(model="claude-test", input="stream from claude") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text == "echo: stream from claude"
    assert final.usage.input_tokens == 3 and final.usage.output_tokens == 4

    # a function-tool round trip
    r = client.responses.create(model="claude-test", input="weather in Paris?", tools=[WEATHER])
    [call] = r.output
    assert call.type == "function_call" and json.loads(call.arguments) == {"city": "Paris"}
    with client.responses.stream(model="claude-test", input="weather in Paris?", tools=[WEATHER]) as stream:
        streamed = stream.get_final_response().output[0]
    assert streamed.parsed_arguments == {"city": "Paris"} and streamed.call_id.startswith("toolu_")
    r = client.responses.create(model="claude-test", tools=[WEATHER], input=[
        {"role": "user", "content": "weather in Paris?"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}])
    assert r.output[0].type == "message" and r.output_text == "echo: sunny"  # the tool result is the last user turn
    tool_result = fake.requests[-1].body["messages"][-1]["content"][0]
    assert tool_result == {"type": "tool_result", "tool_use_id": call.call_id, "content": "sunny"}

    n = len(fake.requests)
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model="claude-test", input=CANARY, tools=[{"type": "web_search"}])
    assert info.value.body["param"] == "tools[0]" and CANARY not in info.value.message
    assert len(fake.requests) == n  # nothing went upstream
