"""Responses API -> Anthropic Messages, through the OpenAI-chat -> Anthropic translator.

What maps to what: `instructions` and system/developer messages become `system`; message
items become alternating user/assistant turns; `function_call` items become `tool_use` blocks
and `function_call_output` items `tool_result` blocks; function tools become Anthropic tools
and `tool_choice` its `auto`/`any`/`tool`/`none`; `reasoning.effort` turns on extended
thinking with a token budget (its text comes back as a reasoning item's summary); usage
counts cache reads and writes into `input_tokens`. Anthropic has no JSON mode, so a
`text.format` other than text is refused with a 400, as is everything that needs stored state.
"""
from __future__ import annotations

from tollway.core.providers.chat.anthropic import PROVIDER
from tollway.core.providers.responses.over_chat import ResponsesOverChat


class ResponsesToAnthropic(ResponsesOverChat):
    inner_schema = "anthropic"
    provider = PROVIDER
