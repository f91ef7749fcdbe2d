"""OpenAI embeddings client API -> Amazon Titan text embeddings on AWS Bedrock (`InvokeModel`).

Titan embeds one text per call, and an adapter makes one upstream call per request, so a
list of more than one input is a 400 naming `input` (send one request per input) rather
than a hidden fan-out whose partial failures and usage no single upstream answer could
report. The call is signed like every Bedrock call (SigV4, service `bedrock`, by the
gateway's credential) or carries a Bedrock API key; Bedrock's error rules are Converse's.
The body is Titan's: Cohere Embed models on Bedrock take another, built by `openai_cohere.py`
(`openai_bedrock_embed.py` picks which of the two serves a model).
"""
from __future__ import annotations

from typing import NoReturn
from urllib.parse import quote

import msgspec

from tollway.core.errors import GatewayError, internal, upstream_malformed_embeddings
from tollway.core.providers.base import CallContext, UpstreamCall
from tollway.core.providers.chat.bedrock import OpenAIToBedrock, endpoint
from tollway.core.providers.embeddings.api import decode_embeddings, embeddings_body, input_texts, prompt_usage
from tollway.core.providers.wire import titan as wire
from tollway.ext.usage import Usage

PROVIDER = "Bedrock Titan"


class OpenAIToTitan:
    """Adapter: OpenAI embeddings served by a Titan embeddings model on Bedrock."""

    converse = OpenAIToBedrock()  # the same service: its error mapping holds for InvokeModel too

    def build(self, ctx: CallContext) -> UpstreamCall:
        req = decode_embeddings(ctx.body)
        (text,) = input_texts(req, PROVIDER, max_inputs=1)
        url = f"{endpoint(ctx)}/model/{quote(ctx.upstream_model, safe='')}/invoke"
        headers = [("content-type", "application/json"), ("accept", "application/json")]
        if ctx.provider.api_key:  # a Bedrock API key; otherwise SigV4 signs the call later
            headers.append(("authorization", "Bearer " + ctx.provider.api_key))
        return UpstreamCall("POST", url, headers, wire.encode(wire.EmbeddingRequest(text, req.dimensions)))

    def response(self, ctx: CallContext, status: int, body: bytes) -> tuple[bytes, Usage | None]:
        try:
            done = wire.decode_response(body)
        except msgspec.MsgspecError:
            raise upstream_malformed_embeddings(ctx.provider.name) from None
        usage = prompt_usage(done.input_text_token_count)
        fmt = decode_embeddings(ctx.body).encoding_format
        return embeddings_body(ctx.upstream_model, [done.embedding], usage, fmt, ctx.provider.name), usage

    def stream(self, ctx: CallContext) -> NoReturn:
        raise internal("Embeddings are never streamed.")  # build() never asks for a stream

    def error(self, ctx: CallContext, status: int, headers: list[tuple[str, str]], body: bytes) -> GatewayError:
        return self.converse.error(ctx, status, headers, body)
