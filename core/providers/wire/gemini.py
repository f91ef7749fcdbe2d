"""Google Gemini `generateContent` wire schema, shared by Vertex AI and the Gemini API.

Both serve the same JSON (camelCase) at different URLs with different credentials; a
streamed answer (`:streamGenerateContent?alt=sse`) is SSE whose every `data:` is a whole
GenerateContentResponse carrying the next parts and the cumulative `usageMetadata`.
"""
from __future__ import annotations

from typing import Any

import msgspec


class _Wire(msgspec.Struct, omit_defaults=True, rename="camel"):
    pass


class Blob(_Wire):
    mime_type: str
    data: str  # base64


class FileData(_Wire):
    mime_type: str
    file_uri: str


class FunctionCall(_Wire):
    name: str
    args: dict[str, Any] | None = None
    id: str | None = None


class FunctionResponse(_Wire):
    name: str
    response: dict[str, Any]
    id: str | None = None


class Part(_Wire):
    text: str | None = None
    thought: bool | None = None
    inline_data: Blob | None = None
    file_data: FileData | None = None
    function_call: FunctionCall | None = None
    function_response: FunctionResponse | None = None
    thought_signature: str | None = None


class Content(_Wire):
    parts: list[Part] = []
    role: str | None = None


class FunctionDeclaration(_Wire):
    name: str
    description: str | None = None
    parameters_json_schema: dict[str, Any] | None = None


class Tool(_Wire):
    function_declarations: list[FunctionDeclaration]


class FunctionCallingConfig(_Wire):
    mode: str  # AUTO | ANY | NONE
    allowed_function_names: list[str] | None = None


class ToolConfig(_Wire):
    function_calling_config: FunctionCallingConfig


class ThinkingConfig(_Wire):
    thinking_budget: int | None = None  # 0 turns thinking off (where the model allows it)
    include_thoughts: bool | None = None  # send thought summaries back as `thought` parts


class GenerationConfig(_Wire):
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop_sequences: list[str] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    response_mime_type: str | None = None
    response_json_schema: dict[str, Any] | None = None
    thinking_config: ThinkingConfig | None = None


class GenerateContentRequest(_Wire):
    contents: list[Content]
    system_instruction: Content | None = None
    generation_config: GenerationConfig | None = None
    tools: list[Tool] | None = None
    tool_config: ToolConfig | None = None


class UsageMetadata(_Wire):
    prompt_token_count: int = 0
    candidates_token_count: int = 0
    total_token_count: int = 0
    cached_content_token_count: int = 0
    thoughts_token_count: int = 0
    tool_use_prompt_token_count: int = 0


class Candidate(_Wire):
    content: Content | None = None
    finish_reason: str | None = None
    index: int = 0


class PromptFeedback(_Wire):
    block_reason: str | None = None


class ErrorDetail(msgspec.Struct):
    code: int = 0
    message: str = ""
    status: str = ""


class GenerateContentResponse(_Wire):
    candidates: list[Candidate] = []
    usage_metadata: UsageMetadata | None = None
    prompt_feedback: PromptFeedback | None = None
    model_version: str | None = None
    response_id: str | None = None
    error: ErrorDetail | None = None  # an error sent inside a stream


class ErrorBody(msgspec.Struct):
    error: ErrorDetail


decode_response = msgspec.json.Decoder(GenerateContentResponse).decode
# Google's streaming endpoint sends its HTTP errors as a JSON array of one such object.
decode_error = msgspec.json.Decoder(ErrorBody | list[ErrorBody]).decode
encode = msgspec.json.Encoder().encode
