"""A chat message's text parts, where a provider takes the message as one string: they keep a
newline between them, as vLLM's chat templates join them, so "Hello" and "world" do not reach
the model as "Helloworld" (the Anthropic and Responses surfaces join theirs the same way, with
the one joiner, tollway.core.providers.wire.openai.join_texts); an empty part adds nothing."""
from __future__ import annotations

import json

import pytest

from tollway.core.config import Provider
from tollway.core.providers.base import Adapter, CallContext
from tollway.core.providers.chat.anthropic import OpenAIToAnthropic
from tollway.core.providers.chat.bedrock import OpenAIToBedrock
from tollway.core.providers.chat.gemini import OpenAIToGemini
from tollway.core.request import parse_head

TARGETS = {
    "anthropic": (OpenAIToAnthropic(), Provider(name="c", schema="anthropic", api_key="sk-ant-secret"),
                  "claude-sonnet-4-5"),
    "bedrock": (OpenAIToBedrock(), Provider(name="aws", schema="bedrock", region="eu-west-1"),
                "anthropic.claude-3-5-sonnet-20240620-v1:0"),
    "gemini": (OpenAIToGemini(), Provider(name="g", schema="gemini", api_key="AIza-secret"), "gemini-2.5-flash"),
}


def parts(*texts: str) -> list[dict[str, str]]:
    return [{"type": "text", "text": t} for t in texts]


CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
BODY = {"model": "m", "messages": [
    {"role": "system", "content": parts("Be brief.", "", "Answer in French.")},
    {"role": "user", "content": "weather?"},
    {"role": "assistant", "content": parts("Let me", "check."), "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "call_1", "content": parts("18C", "sunny")},
]}


def _sent(adapter: Adapter, provider: Provider, model: str) -> str:
    raw = json.dumps(BODY).encode()
    return json.dumps(json.loads(adapter.build(CallContext("chat", raw, parse_head(raw), model, provider, 1.7e9)).body))


@pytest.mark.parametrize("target", TARGETS)
def test_text_parts_of_one_message_keep_a_newline_between_them(target):
    sent = _sent(*TARGETS[target])
    for joined in ("Be brief.\\nAnswer in French.", "Let me\\ncheck.", "18C\\nsunny"):
        assert joined in sent, (joined, sent)
    assert "Be brief.Answer" not in sent and "Let mecheck." not in sent and "18Csunny" not in sent
