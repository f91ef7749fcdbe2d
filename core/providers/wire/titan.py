"""Amazon Titan text embeddings on Bedrock: the `InvokeModel` body (`POST /model/{id}/invoke`).

One text per call. `dimensions` (256, 512 or 1024) and `normalize` are Titan v2's; Titan G1
(`amazon.titan-embed-text-v1`) takes `inputText` alone and refuses anything else, so
optional fields are sent only when the client set them.
"""
from __future__ import annotations

import msgspec


class EmbeddingRequest(msgspec.Struct, omit_defaults=True, rename="camel"):
    input_text: str
    dimensions: int | None = None
    normalize: bool | None = None


class EmbeddingResponse(msgspec.Struct, rename="camel"):
    embedding: list[float]
    input_text_token_count: int = 0


decode_response = msgspec.json.Decoder(EmbeddingResponse).decode
encode = msgspec.json.Encoder().encode
