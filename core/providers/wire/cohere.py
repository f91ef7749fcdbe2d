"""Cohere Embed on Bedrock: the `InvokeModel` body (`POST /model/{id}/invoke`).

Embed v3 (`cohere.embed-english-v3`, `cohere.embed-multilingual-v3`: 1024 dimensions, fixed)
and Embed v4 (`cohere.embed-v4:0`: 256, 512, 1024 or 1536 via `output_dimension`, v4 only)
share this body. One call takes up to 96 `texts`; `input_type` is required. `truncate` is
left unset: OpenAI has no such field, the two versions name its values differently (v3
NONE/START/END, v4 NONE/LEFT/RIGHT), and v3's documented default, NONE, refuses an over-long
text as OpenAI does. With `embedding_types` set, `embeddings` is
an object keyed by type (`{"float": [[...]]}`, `response_type` "embeddings_by_type"),
otherwise a bare list of float lists ("embeddings_floats"). The body carries no token
count: Bedrock sends it in the `X-Amzn-Bedrock-Input-Token-Count` response header.
"""
from __future__ import annotations

import msgspec

MAX_TEXTS = 96
INPUT_TYPES = ("search_document", "search_query", "classification", "clustering")


class EmbedRequest(msgspec.Struct, omit_defaults=True):
    texts: list[str]
    input_type: str
    embedding_types: list[str] | None = None
    output_dimension: int | None = None  # Embed v4 only; v3 refuses the key
    truncate: str | None = None


class EmbedResponse(msgspec.Struct):
    embeddings: list[list[float]] | dict[str, list[list[float]]]
    id: str | None = None
    texts: list[str] | None = None
    response_type: str | None = None

    def floats(self) -> list[list[float]] | None:
        """The float vectors, whichever of the two shapes the answer has (None if it has none)."""
        return self.embeddings.get("float") if isinstance(self.embeddings, dict) else self.embeddings


decode_response = msgspec.json.Decoder(EmbedResponse).decode
encode = msgspec.json.Encoder().encode
