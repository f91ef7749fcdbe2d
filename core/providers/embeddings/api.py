"""The OpenAI embeddings API (`POST /v1/embeddings`), as the provider translators read and write it.

Every embeddings pair to a non-OpenAI provider starts from `EmbeddingRequest` and ends with
`embeddings_body`, so what a client may send (text, one string or a list of them) and what
it gets back (float lists, or the base64 of little-endian float32s that the openai SDK asks
for by default) is decided once.
"""
from __future__ import annotations

import base64
import struct
from typing import Any

import msgspec

from tollway.core.errors import bad_request, upstream_malformed_embeddings
from tollway.core.request import decode_body
from tollway.ext.usage import Usage

ENCODINGS = ("float", "base64")


class EmbeddingRequest(msgspec.Struct):
    input: Any = None  # str | list[str] | list[int] | list[list[int]]: checked by `input_texts`
    model: str | None = None
    encoding_format: str | None = None
    dimensions: int | None = None
    user: str | None = None
    input_type: Any = None  # not OpenAI's: Cohere's, sent as extra_body; checked by openai_cohere only


class EmbeddingUsageOut(msgspec.Struct):
    prompt_tokens: int
    total_tokens: int


class EmbeddingOut(msgspec.Struct):
    index: int
    embedding: list[float] | str
    object: str = "embedding"


class EmbeddingListOut(msgspec.Struct):
    data: list[EmbeddingOut]
    model: str
    usage: EmbeddingUsageOut
    object: str = "list"


_decode_request = msgspec.json.Decoder(EmbeddingRequest).decode
_encode = msgspec.json.Encoder().encode


def decode_embeddings(body: bytes) -> EmbeddingRequest:
    """The client's embeddings request. Raises GatewayError(400) naming the offending field."""
    req = decode_body(_decode_request, body)
    if req.encoding_format is not None and req.encoding_format not in ENCODINGS:
        raise bad_request(f"'encoding_format' must be one of {', '.join(ENCODINGS)}.", param="encoding_format")
    return req


def input_texts(req: EmbeddingRequest, provider: str, max_inputs: int | None = None) -> list[str]:
    """The texts to embed, in order. Raises GatewayError(400) naming `input` for token arrays
    (these providers take text only), empty input, or more inputs than one call can take."""
    texts = [req.input] if isinstance(req.input, str) else req.input
    if not isinstance(texts, list) or not texts:
        raise bad_request("'input' must be a non-empty string or a non-empty list of strings.", param="input")
    if not all(isinstance(t, str) for t in texts):
        raise bad_request(f"'input' as token arrays is not supported for models served by {provider}; send text.",
                          param="input")
    if any(not t for t in texts):
        raise bad_request("'input' must not contain empty strings.", param="input")
    if max_inputs == 1 and len(texts) > 1:
        raise bad_request(f"Models served by {provider} embed 1 input per request; send 'input' as one "
                          f"string, or one request per input.", param="input")
    if max_inputs is not None and len(texts) > max_inputs:
        raise bad_request(f"Models served by {provider} embed at most {max_inputs} inputs per request; 'input' has "
                          f"{len(texts)}: split it across requests.", param="input")
    return texts


def embeddings_body(model: str, vectors: list[list[float]], usage: Usage, encoding_format: str | None,
                    provider: str) -> bytes:
    """The OpenAI `list` of embeddings, one per vector, in `encoding_format` (default float).
    Raises GatewayError(502) if `provider` sent a value base64's float32 cannot hold."""
    as_base64 = encoding_format == "base64"
    data = [EmbeddingOut(i, _base64(v, provider) if as_base64 else v) for i, v in enumerate(vectors)]
    return _encode(EmbeddingListOut(data, model, EmbeddingUsageOut(usage.prompt_tokens, usage.total_tokens)))


def _base64(vector: list[float], provider: str) -> str:
    # OpenAI's base64 embeddings are little-endian float32s; the SDKs decode them so. A value
    # past float32's range (JSON's numbers are float64s; msgspec already refuses those past
    # float64's) is no embedding: the upstream's malformed answer, not one to round to infinity.
    try:
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    except OverflowError:
        raise upstream_malformed_embeddings(provider) from None


def prompt_usage(tokens: int) -> Usage:
    """Embeddings usage: every token is a prompt token."""
    return Usage(tokens, 0, tokens)
