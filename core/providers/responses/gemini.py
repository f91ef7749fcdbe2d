"""Responses API -> Google Gemini `generateContent` (the Gemini API and Vertex AI), through the
OpenAI-chat -> Gemini translator.

What maps to what: `instructions` and system/developer messages become `systemInstruction`;
message items `contents` turns (user/model); `function_call` items `functionCall` parts and
`function_call_output` items `functionResponse` parts (Gemini matches a result to its call by
function name, found from the latest call with the same `call_id` before it in `input`); function tools
`functionDeclarations`; `text.format` json_schema/json_object Gemini's JSON mode;
`reasoning.effort` a `thinkingConfig` budget with thought summaries, which come back as a
reasoning item; thought tokens count as output and reasoning tokens, cached content as cached
input tokens. The Gemini API takes the key in `x-goog-api-key`, Vertex AI an OAuth token.
"""
from __future__ import annotations

from tollway.core.providers.chat.gemini import PROVIDER
from tollway.core.providers.responses.over_chat import ResponsesOverChat


class ResponsesToGemini(ResponsesOverChat):
    inner_schema = "gemini"
    provider = PROVIDER
    json_mode = True


class ResponsesToVertex(ResponsesToGemini):
    inner_schema = "vertex"
    provider = "Vertex AI"
