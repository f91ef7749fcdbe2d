"""Rerank -> an OpenAI-compatible server that serves it (vLLM, KServe, Jina): passed through.

The body goes as it came (its model renamed for the target); the answer comes back as it is,
and its `usage` (vLLM's `total_tokens`, Jina's `prompt_tokens`) is recorded as input tokens:
reranking generates nothing.
"""
from __future__ import annotations

import msgspec

from tollway.core.providers.base import CallContext
from tollway.core.providers.openai_compat import OpenAIAdapter
from tollway.ext.usage import Usage


class _Usage(msgspec.Struct):
    total_tokens: int | None = None
    prompt_tokens: int | None = None


class _Answer(msgspec.Struct):
    usage: _Usage | None = None


_decode_answer = msgspec.json.Decoder(_Answer).decode


class RerankPassThrough(OpenAIAdapter):
    """OpenAIAdapter's URL (`{base_url}/rerank`), headers and body; its own usage."""

    def response(self, ctx: CallContext, status: int, body: bytes) -> tuple[bytes, Usage | None]:
        """The body as it came, and its tokens as input. Raises msgspec.DecodeError if not JSON."""
        try:
            u = _decode_answer(body).usage
        except msgspec.ValidationError:  # a usage of another shape: the answer is the server's business
            u = None
        tokens = (u.prompt_tokens or u.total_tokens or 0) if u is not None else 0
        return body, Usage(prompt_tokens=tokens, total_tokens=tokens)
