"""OpenAI embeddings client API -> Google text embeddings, on Vertex AI or the Gemini API.

Both take a whole list of texts in one call, so a list `input` is one upstream call:
Vertex AI's `:predict` (one instance per text; some models, such as gemini-embedding-001,
take a single instance, and Vertex says so with a 400 the client gets) and the Gemini API's
`:batchEmbedContents` (one request per text). `dimensions` becomes `outputDimensionality`.
URLs, credentials and error rules are those of the same service's chat adapter. Usage:
Vertex counts tokens per text; the Gemini API reports none, so the gateway counts them
with tiktoken (an estimate: Google's tokenizer is not public).
"""
from __future__ import annotations

from typing import NoReturn

import msgspec

from tollway.core.errors import GatewayError, internal, upstream_malformed_embeddings
from tollway.core.providers.base import CallContext, UpstreamCall
from tollway.core.providers.chat.gemini import OpenAIToGemini, OpenAIToVertex
from tollway.core.providers.embeddings.api import EmbeddingRequest, decode_embeddings, embeddings_body, input_texts, prompt_usage
from tollway.core.providers.wire import gemini
from tollway.core.providers.wire import google_embed as wire
from tollway.ext.usage import Usage


class _GoogleEmbed:
    service: OpenAIToGemini  # the chat adapter of the same service: URL, key header, errors
    method = ""
    provider_label = ""

    def build(self, ctx: CallContext) -> UpstreamCall:
        req = decode_embeddings(ctx.body)
        texts = input_texts(req, self.provider_label)
        url = self.service.base(ctx) + self.service.model_path(ctx) + self.method
        headers = [("content-type", "application/json")]
        if ctx.provider.api_key:
            headers.append(("x-goog-api-key", ctx.provider.api_key))
        return UpstreamCall("POST", url, headers, wire.encode(self.request(ctx, req, texts)))

    def response(self, ctx: CallContext, status: int, body: bytes) -> tuple[bytes, Usage | None]:
        req = decode_embeddings(ctx.body)
        try:
            vectors, usage = self.answer(ctx, req, body)
        except msgspec.MsgspecError:
            raise upstream_malformed_embeddings(ctx.provider.name) from None
        if len(vectors) != len(input_texts(req, self.provider_label)):
            raise upstream_malformed_embeddings(ctx.provider.name)
        return embeddings_body(ctx.upstream_model, vectors, usage, req.encoding_format, ctx.provider.name), usage

    def stream(self, ctx: CallContext) -> NoReturn:
        raise internal("Embeddings are never streamed.")  # build() never asks for a stream

    def error(self, ctx: CallContext, status: int, headers: list[tuple[str, str]], body: bytes) -> GatewayError:
        return self.service.error(ctx, status, headers, body)

    def request(self, ctx: CallContext, req: EmbeddingRequest, texts: list[str]) -> msgspec.Struct:
        raise NotImplementedError

    def answer(self, ctx: CallContext, req: EmbeddingRequest, body: bytes) -> tuple[list[list[float]], Usage]:
        raise NotImplementedError


class OpenAIToVertexEmbed(_GoogleEmbed):
    """Adapter: OpenAI embeddings served by a Vertex AI text embedding model (`:predict`)."""

    service = OpenAIToVertex()
    method = ":predict"
    provider_label = "Vertex AI"

    def request(self, ctx: CallContext, req: EmbeddingRequest, texts: list[str]) -> wire.PredictRequest:
        params = wire.Parameters(req.dimensions) if req.dimensions is not None else None
        return wire.PredictRequest([wire.Instance(t) for t in texts], params)

    def answer(self, ctx: CallContext, req: EmbeddingRequest, body: bytes) -> tuple[list[list[float]], Usage]:
        predictions = wire.decode_predict(body).predictions
        tokens = sum(int(p.embeddings.statistics.token_count) for p in predictions if p.embeddings.statistics)
        return [p.embeddings.values for p in predictions], prompt_usage(tokens)


class OpenAIToGeminiEmbed(_GoogleEmbed):
    """Adapter: OpenAI embeddings served by the Gemini API (`:batchEmbedContents`)."""

    service = OpenAIToGemini()
    method = ":batchEmbedContents"
    provider_label = "the Gemini API"

    def request(self, ctx: CallContext, req: EmbeddingRequest, texts: list[str]) -> wire.BatchEmbedContentsRequest:
        model = "models/" + ctx.upstream_model
        return wire.BatchEmbedContentsRequest([
            wire.EmbedContentRequest(model, gemini.Content([gemini.Part(text=t)]), req.dimensions) for t in texts])

    def answer(self, ctx: CallContext, req: EmbeddingRequest, body: bytes) -> tuple[list[list[float]], Usage]:
        from tollway.core.accounting.tokens import count_tokens  # noqa: PLC0415 - tiktoken loads only when counting

        vectors = [e.values for e in wire.decode_batch(body).embeddings]
        texts = input_texts(req, self.provider_label)
        return vectors, prompt_usage(sum(count_tokens(t, ctx.upstream_model) for t in texts))
