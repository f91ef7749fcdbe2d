"""OpenAI embeddings client API -> AWS Bedrock `InvokeModel`: which model family's body.

InvokeModel takes each model family's own body, and the registry keys adapters by (client
API, schema), so the `(embeddings, bedrock)` entry is this adapter: it hands each call to
Cohere's translator when the upstream model id is a Cohere Embed one (see `is_cohere_embed`)
and to Titan's otherwise, which is what the entry served before Cohere was added.
"""
from __future__ import annotations

from typing import NoReturn

from tollway.core.errors import GatewayError
from tollway.core.providers.base import CallContext, UpstreamCall
from tollway.core.providers.embeddings.cohere import OpenAIToCohere, is_cohere_embed
from tollway.core.providers.embeddings.titan import OpenAIToTitan
from tollway.ext.usage import Usage


class OpenAIToBedrockEmbed:
    """Adapter: OpenAI embeddings served by a Titan or Cohere Embed model on Bedrock."""

    titan = OpenAIToTitan()
    cohere = OpenAIToCohere()

    def family(self, ctx: CallContext) -> OpenAIToTitan | OpenAIToCohere:
        return self.cohere if is_cohere_embed(ctx.upstream_model) else self.titan

    def build(self, ctx: CallContext) -> UpstreamCall:
        return self.family(ctx).build(ctx)

    def response(self, ctx: CallContext, status: int, body: bytes) -> tuple[bytes, Usage | None]:
        return self.family(ctx).response(ctx, status, body)

    def stream(self, ctx: CallContext) -> NoReturn:
        self.family(ctx).stream(ctx)  # raises: embeddings are never streamed

    def error(self, ctx: CallContext, status: int, headers: list[tuple[str, str]], body: bytes) -> GatewayError:
        return self.family(ctx).error(ctx, status, headers, body)
