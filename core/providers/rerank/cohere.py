"""Rerank -> Cohere's v2 rerank (`POST /v2/rerank`, bearer key).

Cohere v2 takes documents as strings and returns only indexes and scores, best first, with
`meta.billed_units.search_units` (what it bills by: a search of up to 100 documents). The
answer gets the client's shape: the documents' texts put back (unless `return_documents` is
false), Cohere's `meta` kept.
"""
from __future__ import annotations

from typing import Any

import msgspec

from tollway.core.errors import GatewayError
from tollway.core.providers.base import CallContext, StreamTranslator, UpstreamCall
from tollway.core.providers.rerank.api import RerankAnswer, decode_request, encode, result
from tollway.core.providers.upstream_errors import provider_error
from tollway.ext.usage import Usage

DEFAULT_BASE_URL = "https://api.cohere.com"


class _CohereRequest(msgspec.Struct, omit_defaults=True):
    model: str
    query: str
    documents: list[str]
    top_n: int | None = None


class _CohereResult(msgspec.Struct):
    index: int
    relevance_score: float


class _BilledUnits(msgspec.Struct):
    search_units: float | None = None


class _Meta(msgspec.Struct):
    billed_units: _BilledUnits | None = None


class _CohereAnswer(msgspec.Struct):
    results: list[_CohereResult]
    id: str = ""
    meta: dict[str, Any] | None = None


class _CohereError(msgspec.Struct):
    message: str | None = None


_decode_answer = msgspec.json.Decoder(_CohereAnswer).decode
_decode_meta = msgspec.convert
_decode_error = msgspec.json.Decoder(_CohereError).decode


class RerankToCohere:
    def build(self, ctx: CallContext) -> UpstreamCall:
        req = decode_request(ctx.body)
        body = encode(_CohereRequest(ctx.upstream_model, req.query, req.texts(), req.top_n))
        headers = [("content-type", "application/json"), ("accept", "application/json")]
        if ctx.provider.api_key:
            headers.append(("authorization", "Bearer " + ctx.provider.api_key))
        headers.extend((ctx.provider.headers or {}).items())
        base = (ctx.provider.base_url or DEFAULT_BASE_URL).rstrip("/")
        return UpstreamCall("POST", base + "/v2/rerank", headers, body)

    def response(self, ctx: CallContext, status: int, body: bytes) -> tuple[bytes, Usage | None]:
        req = decode_request(ctx.body)
        answer = _decode_answer(body)
        texts = req.texts()
        results = [result(req, texts, r.index, r.relevance_score) for r in answer.results]
        out = RerankAnswer(answer.id, ctx.head.model or ctx.upstream_model, results, answer.meta)
        return encode(out), Usage(units=_search_units(answer.meta), unit="search_unit")

    def stream(self, ctx: CallContext) -> StreamTranslator:
        raise NotImplementedError("rerank answers are never streamed")  # (build never asks for a stream)

    def error(self, ctx: CallContext, status: int, headers: list[tuple[str, str]], body: bytes) -> GatewayError:
        try:
            message = _decode_error(body).message
        except msgspec.MsgspecError:
            message = None
        return provider_error(ctx.provider, status, headers, message)


def _search_units(meta: dict[str, Any] | None) -> float:
    if not meta:
        return 1.0
    try:
        billed = _decode_meta(meta, _Meta).billed_units
    except msgspec.ValidationError:
        return 1.0
    return float(billed.search_units) if billed is not None and billed.search_units is not None else 1.0
