"""Rerank -> Bedrock's rerank (`POST /rerank` on the agent runtime, SigV4 service `bedrock`).

Bedrock takes a text query and inline text sources with the model's ARN (a bare model id is made
the region's foundation-model ARN), and returns `results` (`index`, `relevanceScore`) best first.
It reports no usage; it bills a query per 100 documents, recorded as search units.
"""
from __future__ import annotations

import hashlib

import msgspec

from tollway.core.errors import GatewayError
from tollway.core.providers.base import CallContext, StreamTranslator, UpstreamCall
from tollway.core.providers.rerank.api import RerankAnswer, decode_request, encode, result
from tollway.core.providers.upstream_errors import provider_error
from tollway.ext.usage import Usage

DOCUMENTS_PER_QUERY = 100  # Bedrock bills one query per this many documents


class _TextQuery(msgspec.Struct):
    text: str


class _Query(msgspec.Struct):
    textQuery: _TextQuery  # noqa: N815 - Bedrock's field names
    type: str = "TEXT"


class _TextDocument(msgspec.Struct):
    text: str


class _InlineSource(msgspec.Struct):
    textDocument: _TextDocument  # noqa: N815
    type: str = "TEXT"


class _Source(msgspec.Struct):
    inlineDocumentSource: _InlineSource  # noqa: N815
    type: str = "INLINE"


class _ModelConfiguration(msgspec.Struct):
    modelArn: str  # noqa: N815


class _BedrockRerankingConfiguration(msgspec.Struct, omit_defaults=True):
    modelConfiguration: _ModelConfiguration  # noqa: N815
    numberOfResults: int | None = None  # noqa: N815


class _RerankingConfiguration(msgspec.Struct):
    bedrockRerankingConfiguration: _BedrockRerankingConfiguration  # noqa: N815
    type: str = "BEDROCK_RERANKING_MODEL"


class _BedrockRequest(msgspec.Struct):
    queries: list[_Query]
    sources: list[_Source]
    rerankingConfiguration: _RerankingConfiguration  # noqa: N815


class _BedrockResult(msgspec.Struct):
    index: int
    relevanceScore: float  # noqa: N815


class _BedrockAnswer(msgspec.Struct):
    results: list[_BedrockResult]


class _BedrockError(msgspec.Struct):
    message: str | None = None
    Message: str | None = None  # noqa: N815 - some of its errors capitalize it


_decode_answer = msgspec.json.Decoder(_BedrockAnswer).decode
_decode_error = msgspec.json.Decoder(_BedrockError).decode


def model_arn(ctx: CallContext) -> str:
    model = ctx.upstream_model
    return model if model.startswith("arn:") else f"arn:aws:bedrock:{ctx.provider.region}::foundation-model/{model}"


class RerankToBedrock:
    def build(self, ctx: CallContext) -> UpstreamCall:
        req = decode_request(ctx.body)
        texts = req.texts()
        top_n = min(req.top_n, len(texts)) if req.top_n is not None else len(texts)
        config = _BedrockRerankingConfiguration(_ModelConfiguration(model_arn(ctx)), top_n)
        body = encode(_BedrockRequest([_Query(_TextQuery(req.query))],
                                      [_Source(_InlineSource(_TextDocument(t))) for t in texts],
                                      _RerankingConfiguration(config)))
        headers = [("content-type", "application/json"), ("accept", "application/json")]
        if ctx.provider.api_key:  # a Bedrock API key; otherwise SigV4 signs the call later
            headers.append(("authorization", "Bearer " + ctx.provider.api_key))
        base = (ctx.provider.base_url or f"https://bedrock-agent-runtime.{ctx.provider.region}.amazonaws.com")
        return UpstreamCall("POST", base.rstrip("/") + "/rerank", headers, body)

    def response(self, ctx: CallContext, status: int, body: bytes) -> tuple[bytes, Usage | None]:
        req = decode_request(ctx.body)
        texts = req.texts()
        results = [result(req, texts, r.index, r.relevanceScore) for r in _decode_answer(body).results]
        rid = "rerank-" + hashlib.blake2b(ctx.body + repr(ctx.now).encode(), digest_size=12).hexdigest()  # Bedrock gives none
        out = RerankAnswer(rid, ctx.head.model or ctx.upstream_model, results)
        queries = -(-len(texts) // DOCUMENTS_PER_QUERY)
        return encode(out), Usage(units=float(queries), unit="search_unit")

    def stream(self, ctx: CallContext) -> StreamTranslator:
        raise NotImplementedError("rerank answers are never streamed")  # (build never asks for a stream)

    def error(self, ctx: CallContext, status: int, headers: list[tuple[str, str]], body: bytes) -> GatewayError:
        try:
            parsed = _decode_error(body)
            message = parsed.message or parsed.Message
        except msgspec.MsgspecError:
            message = None
        return provider_error(ctx.provider, status, headers, message)
