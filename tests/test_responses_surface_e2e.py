"""The Responses API surface over translated providers, end to end: the official `openai` SDK
against a real gateway, the Anthropic fake (which records what it was sent) and the hostile
upstream's scripted Anthropic answers (its real SSE bytes). What the upstream is sent for a
Responses request (the text as the client wrote it), and what a Responses client is owed
whatever the upstream answers."""
from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.hostile_upstream import HostileUpstream
from tests.harness import TEST_KEY, UPSTREAM_SECRET, GatewayProcess, key_hash


@pytest.fixture(scope="module")
def gw(hostile: HostileUpstream, anthropic_upstream: FakeAnthropic) -> Iterator[GatewayProcess]:
    process = GatewayProcess(f"""
providers:
  - {{name: ant, schema: anthropic, base_url: {anthropic_upstream.url}, api_key: {UPSTREAM_SECRET}}}
  - {{name: hostile, schema: anthropic, base_url: {hostile.url}, api_key: {UPSTREAM_SECRET}}}
models:
  - {{name: claude, targets: [{{provider: ant, model: claude-sonnet-4-5}}]}}
  - {{name: scripted, targets: [{{provider: hostile, model: scripted}}]}}
keys:
  - {{name: test-key, key_hash: "{key_hash(TEST_KEY)}"}}
""")
    yield process
    process.stop()


# -- what the upstream is sent ------------------------------------------------------------

def test_text_parts_of_one_input_message_stay_apart(oai: openai.OpenAI, anthropic_upstream: FakeAnthropic):
    """A message's text parts, and a function_call_output's, are separate pieces of text:
    joined with nothing, "Hello" + "world" reached the model as "Helloworld"."""
    oai.responses.create(model="claude", input=[
        {"role": "system", "content": [{"type": "input_text", "text": "Be brief."},
                                       {"type": "input_text", "text": "Answer in French."}]},
        {"role": "user", "content": [{"type": "input_text", "text": "Hello"}, {"type": "input_text", "text": "world"}]},
        {"role": "assistant", "content": [{"type": "output_text", "text": "Let me check."},
                                          {"type": "output_text", "text": "One moment."}]},
        {"type": "function_call", "call_id": "call_w1", "name": "get_weather", "arguments": '{"city":"Paris"}'},
        {"type": "function_call_output", "call_id": "call_w1",
         "output": [{"type": "input_text", "text": "Sunny"}, {"type": "input_text", "text": "20 C"}]},
    ])
    body = anthropic_upstream.last()["body"]
    assert body["system"] == [{"type": "text", "text": "Be brief.\nAnswer in French."}]
    user, assistant, result = body["messages"]
    assert user["content"] == [{"type": "text", "text": "Hello\nworld"}]
    assert assistant["content"][0] == {"type": "text", "text": "Let me check.\nOne moment."}
    assert result["content"][0]["content"] == "Sunny\n20 C"

