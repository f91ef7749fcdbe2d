"""Which adapter serves a (client API, provider schema) pair.

Entries are import paths, so a provider's module (and whatever heavy library it needs)
is imported only when a config actually uses that schema.
"""
from __future__ import annotations

import importlib
from typing import Any

from core.providers.base import ClientAPI

_OPENAI = "core.providers.openai_compat:OpenAIAdapter"
_AZURE = "core.providers.azure_openai:AzureOpenAIAdapter"

ADAPTERS: dict[tuple[str, str], str] = {
    **{(api, "openai"): _OPENAI for api in (ClientAPI.CHAT, ClientAPI.COMPLETIONS, ClientAPI.EMBEDDINGS, ClientAPI.RESPONSES)},
    **{(api, "fake"): _OPENAI for api in (ClientAPI.CHAT, ClientAPI.COMPLETIONS, ClientAPI.EMBEDDINGS, ClientAPI.RESPONSES)},
    **{(api, "azure_openai"): _AZURE for api in (ClientAPI.CHAT, ClientAPI.COMPLETIONS, ClientAPI.EMBEDDINGS, ClientAPI.RESPONSES)},
    # Provider translation pairs (issue 5): OpenAI chat -> each provider's native API.
    (ClientAPI.CHAT, "anthropic"): "core.providers.openai_anthropic:OpenAIToAnthropic",
    (ClientAPI.CHAT, "bedrock"): "core.providers.openai_bedrock:OpenAIToBedrock",
    (ClientAPI.MESSAGES, "bedrock"): "core.providers.anthropic_openai:AnthropicToBedrock",
    (ClientAPI.CHAT, "gemini"): "core.providers.openai_gemini:OpenAIToGemini",
    (ClientAPI.CHAT, "vertex"): "core.providers.openai_gemini:OpenAIToVertex",
    (ClientAPI.MESSAGES, "gemini"): "core.providers.anthropic_openai:AnthropicToGemini",
    (ClientAPI.MESSAGES, "vertex"): "core.providers.anthropic_openai:AnthropicToVertex",
    # OpenAI embeddings -> each provider's embedding API.
    (ClientAPI.EMBEDDINGS, "bedrock"): "core.providers.openai_bedrock_embed:OpenAIToBedrockEmbed",  # Titan or Cohere
    (ClientAPI.EMBEDDINGS, "vertex"): "core.providers.openai_google_embed:OpenAIToVertexEmbed",
    (ClientAPI.EMBEDDINGS, "gemini"): "core.providers.openai_google_embed:OpenAIToGeminiEmbed",
    # Anthropic Messages clients: pass-through to Anthropic, translated for everyone else.
    (ClientAPI.MESSAGES, "anthropic"): "core.providers.anthropic_native:AnthropicNative",
    (ClientAPI.COUNT_TOKENS, "anthropic"): "core.providers.anthropic_native:AnthropicNative",
    (ClientAPI.MESSAGES, "openai"): "core.providers.anthropic_openai:AnthropicOverChat",
    (ClientAPI.MESSAGES, "fake"): "core.providers.anthropic_openai:AnthropicOverChat",
    (ClientAPI.MESSAGES, "azure_openai"): "core.providers.anthropic_openai:AnthropicToAzure",
}

# The OpenTelemetry GenAI `gen_ai.provider.name` value of each schema.
OTEL_PROVIDER_NAMES: dict[str, str] = {
    "openai": "openai",
    "azure_openai": "azure.ai.openai",
    "anthropic": "anthropic",
    "bedrock": "aws.bedrock",
    "vertex": "gcp.vertex_ai",
    "gemini": "gcp.gemini",
    "fake": "tollway.fake",
}

_loaded: dict[str, Any] = {}


def adapter_for(api: str, schema: str) -> Any | None:
    """The adapter instance for this pair, or None if the pair is not supported."""
    path = ADAPTERS.get((api, schema))
    if path is None:
        return None
    adapter = _loaded.get(path)
    if adapter is None:
        module, _, name = path.partition(":")
        adapter = _loaded[path] = getattr(importlib.import_module(module), name)()
    return adapter


def supported_apis(schema: str) -> list[str]:
    return [api for api, s in ADAPTERS if s == schema]
