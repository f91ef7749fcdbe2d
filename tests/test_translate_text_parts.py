"""A chat message's text parts, where a provider takes the message as one string: they keep a
newline between them, as vLLM's chat templates join them, so "Hello" and "world" do not reach
the model as "Helloworld" (the Anthropic and Responses surfaces join theirs the same way)."""
from __future__ import annotations

import json
from typing import Any

import pytest

from tests import test_translate_anthropic as anthropic
from tests import test_translate_bedrock as bedrock
from tests import test_translate_gemini as gemini


def parts(*texts: str) -> list[dict[str, str]]:
    return [{"type": "text", "text": t} for t in texts]


CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
BODY = {"messages": [
    {"role": "system", "content": parts("Be brief.", "Answer in French.")},
    {"role": "user", "content": "weather?"},
    {"role": "assistant", "content": parts("Let me", "check."), "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "call_1", "content": parts("18C", "sunny")},
]}


def _sent(module: Any) -> str:
    return json.dumps(json.loads(module.ADAPTER.build(module.ctx(BODY)).body))


@pytest.mark.parametrize("module", [anthropic, bedrock, gemini], ids=["anthropic", "bedrock", "gemini"])
def test_text_parts_of_one_message_keep_a_newline_between_them(module):
    sent = _sent(module)
    for joined in ("Be brief.\\nAnswer in French.", "Let me\\ncheck.", "18C\\nsunny"):
        assert joined in sent, (joined, sent)
    assert "Be brief.Answer" not in sent and "Let mecheck." not in sent and "18Csunny" not in sent
