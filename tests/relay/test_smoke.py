import pytest


@pytest.mark.promise("P20")
def test_openai_chat_round_trip(relay):
    mark = relay.mark()
    reply = relay.openai().chat.completions.create(model="gpt-test",
                                                   messages=[{"role": "user", "content": "hello there"}])
    assert reply.choices[0].message.content == "echo: hello there"
    [row] = relay.new_rows(mark)
    assert row.model == "gpt-test" and row.provider == "oai" and row.usage_source == "provider"
