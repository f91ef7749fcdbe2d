"""Responses API -> AWS Bedrock Converse, through the OpenAI-chat -> Bedrock translator.

What maps to what: `instructions` and system/developer messages become Converse `system`
blocks; message items alternating user/assistant turns (images inline only, as Converse takes
them); `function_call` items `toolUse` blocks and `function_call_output` items `toolResult`
blocks; function tools a `toolConfig`; `reasoning.effort` Claude's `thinking` budget through
`additionalModelRequestFields` (Claude models only: other Bedrock models get a 400); usage
counts cache reads and writes into `input_tokens`. Calls are SigV4-signed (or carry a Bedrock
API key), and a stream's AWS eventstream frames become Responses events. Converse has no JSON
mode here, so a `text.format` other than text is a 400.
"""
from __future__ import annotations

from tollway.core.providers.chat.bedrock import PROVIDER
from tollway.core.providers.responses.over_chat import ResponsesOverChat


class ResponsesToBedrock(ResponsesOverChat):
    inner_schema = "bedrock"
    provider = PROVIDER
