"""OpenAI embeddings client API -> Cohere Embed models on AWS Bedrock (`InvokeModel`).

Cohere takes a batch, so a list `input` is one upstream call of up to 96 `texts` (OpenAI
allows 2048: more than 96 is a 400 naming `input`, rather than a hidden fan-out whose partial
failures no single answer could report). Cohere requires `input_type`, which OpenAI lacks:
a client may send it beside the OpenAI fields (the SDK's `extra_body={"input_type":
"search_query"}`); otherwise the gateway sends `search_document`, what an index of documents
needs. `dimensions` becomes Embed v4's
`output_dimension`. Usage: Bedrock reports the input token count only in a response header,
which adapters do not see, so the gateway counts the texts with tiktoken (an estimate:
Cohere's tokenizer differs). Signing, URL and error rules are those of every Bedrock call.
"""
from __future__ import annotations

import re
from typing import Any, NoReturn
from urllib.parse import quote

import msgspec

from tollway.core.errors import GatewayError, bad_request, internal, upstream_malformed_embeddings
from tollway.core.providers.base import CallContext, UpstreamCall
from tollway.core.providers.chat.bedrock import OpenAIToBedrock, endpoint
from tollway.core.providers.embeddings.api import decode_embeddings, embeddings_body, input_texts, prompt_usage
from tollway.core.providers.wire import cohere as wire
from tollway.ext.usage import Usage

PROVIDER = "Bedrock Cohere Embed"
INPUT_TYPE = "search_document"  # when the client names none
V3_DIMENSIONS = 1024

# A Cohere Embed model id: bare (`cohere.embed-v4:0`), behind a cross-region inference profile
# (`us.cohere.embed-v4:0`, `global.…`) or the last segment of a foundation-model or system
# inference-profile ARN. An application inference profile's ARN names no model: it is Titan's.
_COHERE_EMBED = re.compile(r"(?:^|[./])cohere\.embed-")
_V3 = re.compile(r"cohere\.embed-[a-z-]*v3")


def is_cohere_embed(model_id: str) -> bool:
    return _COHERE_EMBED.search(model_id) is not None


class OpenAIToCohere:
    """Adapter: OpenAI embeddings served by a Cohere Embed model on Bedrock."""

    converse = OpenAIToBedrock()  # the same service: its error mapping holds for InvokeModel too

    def build(self, ctx: CallContext) -> UpstreamCall:
        req = decode_embeddings(ctx.body)
        texts = input_texts(req, PROVIDER, max_inputs=wire.MAX_TEXTS)
        # embedding_types is always sent so the answer has one known shape ({"float": [...]}).
        body = wire.EmbedRequest(texts, input_type(req.input_type), ["float"],
                                 output_dimension(ctx.upstream_model, req.dimensions))
        url = f"{endpoint(ctx)}/model/{quote(ctx.upstream_model, safe='')}/invoke"
        headers = [("content-type", "application/json"), ("accept", "application/json")]
        if ctx.provider.api_key:  # a Bedrock API key; otherwise SigV4 signs the call later
            headers.append(("authorization", "Bearer " + ctx.provider.api_key))
        return UpstreamCall("POST", url, headers, wire.encode(body))

    def response(self, ctx: CallContext, status: int, body: bytes) -> tuple[bytes, Usage | None]:
        from tollway.core.accounting.tokens import count_tokens  # noqa: PLC0415 - tiktoken loads only when counting

        req = decode_embeddings(ctx.body)
        texts = input_texts(req, PROVIDER, max_inputs=wire.MAX_TEXTS)
        try:
            vectors = wire.decode_response(body).floats()
        except msgspec.MsgspecError:
            raise upstream_malformed_embeddings(ctx.provider.name) from None
        if vectors is None or len(vectors) != len(texts):
            raise upstream_malformed_embeddings(ctx.provider.name)
        usage = prompt_usage(sum(count_tokens(t, ctx.upstream_model) for t in texts))
        return embeddings_body(ctx.upstream_model, vectors, usage, req.encoding_format, ctx.provider.name), usage

    def stream(self, ctx: CallContext) -> NoReturn:
        raise internal("Embeddings are never streamed.")  # build() never asks for a stream

    def error(self, ctx: CallContext, status: int, headers: list[tuple[str, str]], body: bytes) -> GatewayError:
        return self.converse.error(ctx, status, headers, body)


def input_type(requested: Any) -> str:
    """The client's `input_type`, checked here so a typo is a 400 naming the field rather than
    Bedrock's validation text; search_document when it sent none."""
    if requested is None:
        return INPUT_TYPE
    if requested not in wire.INPUT_TYPES:
        raise bad_request(f"input_type must be one of {', '.join(wire.INPUT_TYPES)} for Cohere Embed models.",
                          param="input_type")
    return str(requested)


def output_dimension(model_id: str, dimensions: int | None) -> int | None:
    """Embed v4's `output_dimension` for OpenAI's `dimensions`. Embed v3 has a fixed 1024 and
    refuses the key: Bedrock's refusal would name `output_dimension`, a field the client never
    sent, so the gateway answers the 400 itself, naming `dimensions` (1024 is what v3 gives
    anyway, so it is accepted and left out). v4's values are Bedrock's to check."""
    if dimensions is None or not _V3.search(model_id):
        return dimensions
    if dimensions != V3_DIMENSIONS:
        raise bad_request(f"Cohere Embed v3 models return {V3_DIMENSIONS} dimensions; omit 'dimensions' or set it "
                          f"to {V3_DIMENSIONS}.", param="dimensions")
    return None
