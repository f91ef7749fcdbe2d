"""Which adapter serves a (client API, provider schema) pair.

Entries are import paths, so a provider's module (and whatever heavy library it needs)
is imported only when a config actually uses that schema. It is imported when the config is
made live (`load_adapters`, at start and on reload), never by a request: a package replaced on
disk under a running gateway (an upgrade) then cannot turn requests into import errors.
"""
from __future__ import annotations

import importlib

from tollway.core.providers.base import Adapter, ClientAPI

_OPENAI = "tollway.core.providers.openai_compat:OpenAIAdapter"
_AZURE = "tollway.core.providers.azure_openai:AzureOpenAIAdapter"

_PASS_THROUGH = (ClientAPI.CHAT, ClientAPI.COMPLETIONS, ClientAPI.EMBEDDINGS, ClientAPI.RESPONSES)
_MEDIA = (ClientAPI.IMAGES, ClientAPI.IMAGE_EDITS, ClientAPI.TRANSCRIPTIONS, ClientAPI.TRANSLATIONS, ClientAPI.SPEECH)

ADAPTERS: dict[tuple[str, str], str] = {
    **{(api, "openai"): _OPENAI for api in _PASS_THROUGH},
    **{(api, "fake"): _OPENAI for api in _PASS_THROUGH},
    **{(api, "azure_openai"): _AZURE for api in _PASS_THROUGH},
    # Endpoints beyond the model APIs (issue 17): OpenAI's own shapes, passed through.
    (ClientAPI.MODERATIONS, "openai"): _OPENAI,
    **{(api, "openai"): "tollway.core.providers.openai_media:OpenAIMedia" for api in _MEDIA},
    **{(api, "azure_openai"): "tollway.core.providers.openai_media:AzureMedia" for api in _MEDIA},
    # Rerank (the Cohere/Jina shape): as is to OpenAI-compatible servers, translated for the rest.
    (ClientAPI.RERANK, "openai"): "tollway.core.providers.rerank.openai_compat:RerankPassThrough",
    (ClientAPI.RERANK, "cohere"): "tollway.core.providers.rerank.cohere:RerankToCohere",
    (ClientAPI.RERANK, "bedrock"): "tollway.core.providers.rerank.bedrock:RerankToBedrock",
    # Provider translation pairs (issue 5): OpenAI chat -> each provider's native API.
    (ClientAPI.CHAT, "anthropic"): "tollway.core.providers.chat.anthropic:OpenAIToAnthropic",
    (ClientAPI.CHAT, "bedrock"): "tollway.core.providers.chat.bedrock:OpenAIToBedrock",
    (ClientAPI.MESSAGES, "bedrock"): "tollway.core.providers.messages.translate:AnthropicToBedrock",
    (ClientAPI.CHAT, "gemini"): "tollway.core.providers.chat.gemini:OpenAIToGemini",
    (ClientAPI.CHAT, "vertex"): "tollway.core.providers.chat.gemini:OpenAIToVertex",
    (ClientAPI.MESSAGES, "gemini"): "tollway.core.providers.messages.translate:AnthropicToGemini",
    (ClientAPI.MESSAGES, "vertex"): "tollway.core.providers.messages.translate:AnthropicToVertex",
    # The Responses API -> each provider, through its chat translator (issue 17).
    (ClientAPI.RESPONSES, "anthropic"): "tollway.core.providers.responses.anthropic:ResponsesToAnthropic",
    (ClientAPI.RESPONSES, "bedrock"): "tollway.core.providers.responses.bedrock:ResponsesToBedrock",
    (ClientAPI.RESPONSES, "gemini"): "tollway.core.providers.responses.gemini:ResponsesToGemini",
    (ClientAPI.RESPONSES, "vertex"): "tollway.core.providers.responses.gemini:ResponsesToVertex",
    # OpenAI embeddings -> each provider's embedding API.
    (ClientAPI.EMBEDDINGS, "bedrock"): "tollway.core.providers.embeddings.bedrock:OpenAIToBedrockEmbed",  # Titan or Cohere
    (ClientAPI.EMBEDDINGS, "vertex"): "tollway.core.providers.embeddings.google:OpenAIToVertexEmbed",
    (ClientAPI.EMBEDDINGS, "gemini"): "tollway.core.providers.embeddings.google:OpenAIToGeminiEmbed",
    # Anthropic Messages clients: pass-through to Anthropic, translated for everyone else.
    (ClientAPI.MESSAGES, "anthropic"): "tollway.core.providers.messages.native:AnthropicNative",
    (ClientAPI.COUNT_TOKENS, "anthropic"): "tollway.core.providers.messages.native:AnthropicNative",
    (ClientAPI.MESSAGES, "openai"): "tollway.core.providers.messages.translate:AnthropicOverChat",
    (ClientAPI.MESSAGES, "fake"): "tollway.core.providers.messages.translate:AnthropicOverChat",
    (ClientAPI.MESSAGES, "azure_openai"): "tollway.core.providers.messages.translate:AnthropicToAzure",
}

# The pairs whose answers carry the upstream's own thinking blocks, signed by it: the client sends
# them back in a later turn and the upstream refuses a changed one, so output guardrails leave
# them as they are (docs/guardrails.md). Every other pair's thinking blocks are the gateway's
# translation of a backend's reasoning (`signature: ""`): text like any other.
SIGNED_THINKING: frozenset[tuple[str, str]] = frozenset({(ClientAPI.MESSAGES, "anthropic")})

# The OpenTelemetry GenAI `gen_ai.provider.name` value of each schema.
OTEL_PROVIDER_NAMES: dict[str, str] = {
    "openai": "openai",
    "azure_openai": "azure.ai.openai",
    "anthropic": "anthropic",
    "bedrock": "aws.bedrock",
    "vertex": "gcp.vertex_ai",
    "gemini": "gcp.gemini",
    "cohere": "cohere",
    "fake": "tollway.fake",
}

_loaded: dict[str, Adapter] = {}


class AdapterUnavailable(ImportError):
    """An adapter a configured provider needs cannot be imported (an incomplete or half-replaced
    installation). Raised when the config is made live, so the gateway refuses to start, or a
    reload is rejected, instead of answering requests with 500s."""


def adapter_for(api: str, schema: str) -> Adapter | None:
    """The adapter instance for this pair, or None if the pair is not supported."""
    path = ADAPTERS.get((api, schema))
    if path is None:
        return None
    adapter = _loaded.get(path)
    if adapter is None:
        module, _, name = path.partition(":")
        made: Adapter = getattr(importlib.import_module(module), name)()
        adapter = _loaded[path] = made
    return adapter


def signs_thinking(api: str, schema: str | None) -> bool:
    """Whether the thinking blocks of an answer to `api` from a provider of `schema` are the
    upstream's signed ones (SIGNED_THINKING); False for no provider (none answered)."""
    return (api, schema) in SIGNED_THINKING


def load_adapters(schema: str) -> dict[str, Adapter]:
    """Every adapter a provider of `schema` can use, by client API, imported now.

    This includes the inner chat adapter an Anthropic-over-chat adapter hands its calls to: it
    is the (chat, schema) pair, or for `fake` the `openai` one, the same module."""
    adapters: dict[str, Adapter] = {}
    for api in supported_apis(schema):
        try:
            adapter = adapter_for(api, schema)
        except (ImportError, AttributeError) as exc:
            raise AdapterUnavailable(
                f"cannot load the {api} adapter of schema '{schema}' ({ADAPTERS[(api, schema)]}): {exc}; "
                "is the tollway installation complete?") from exc
        if adapter is not None:
            adapters[api] = adapter
    return adapters


def supported_apis(schema: str) -> list[str]:
    return [api for api, s in ADAPTERS if s == schema]
