"""The client's rerank request and answer (the Cohere/Jina shape vLLM serves), typed.

Request: `model`, `query`, `documents` (strings, or objects with `text` as Jina sends them),
`top_n`, `return_documents`. Answer: `id`, `model`, `results` (`index`, `relevance_score`, and
`document: {text}` unless `return_documents` is false), best first; `usage` or `meta` as the
provider reports them.
"""
from __future__ import annotations

from typing import Any

import msgspec

from tollway.core.errors import bad_request
from tollway.core.request import decode_body


class TextDocument(msgspec.Struct):
    text: str


class RerankRequest(msgspec.Struct):
    query: str
    documents: list[str | TextDocument]
    model: str | None = None
    top_n: int | None = None
    return_documents: bool | None = None

    def texts(self) -> list[str]:
        return [d if isinstance(d, str) else d.text for d in self.documents]

    @property
    def with_documents(self) -> bool:
        return self.return_documents is not False  # vLLM's and Jina's default: documents come back


class ResultDocument(msgspec.Struct):
    text: str


class RerankResult(msgspec.Struct, omit_defaults=True):
    index: int
    relevance_score: float
    document: ResultDocument | None = None


class RerankAnswer(msgspec.Struct, omit_defaults=True):
    id: str
    model: str
    results: list[RerankResult]
    meta: dict[str, Any] | None = None  # Cohere's, as it sent it (api_version, billed_units)


_decode_request = msgspec.json.Decoder(RerankRequest).decode
encode = msgspec.json.Encoder().encode


def decode_request(body: bytes) -> RerankRequest:
    """The client's request, typed. Raises GatewayError(400) naming a field of the wrong type."""
    req = decode_body(_decode_request, body)
    if not req.documents:
        raise bad_request("'documents' must list at least one document to rerank.", param="documents")
    return req


def result(req: RerankRequest, texts: list[str], index: int, score: float) -> RerankResult:
    """One result, with its document's text when the client wants it back."""
    document = ResultDocument(texts[index]) if req.with_documents and 0 <= index < len(texts) else None
    return RerankResult(index, score, document)
