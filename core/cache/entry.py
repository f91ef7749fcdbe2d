"""What the cache keeps of an answer, and which answers it keeps.

An entry is the answer in the client API's non-stream JSON shape, whichever kind of request
filled it, with the usage it was charged and when it was made. It is replayed as that JSON, or
rendered as a well-formed stream (tollway.core.cache.replay) for a request that asks for one.

A stream is stored as the SSE text the client got (`sse=True`), and assembled into that shape
(tollway.core.cache.assemble.answer_of) only when a request first reads it: most misses are
never read again, and assembling costs a streamed miss more than relaying it. An SSE entry is
never served as it is: the read that assembles it checks it too, and drops it if it is not a
complete answer (it is then a miss), so what is served is what would have been stored.

Only complete, successful answers are kept: every choice finished with `stop` or
`tool_calls` (Anthropic: end_turn, stop_sequence, tool_use; Responses: status completed). A
length-truncated answer, a refusal cut short, an error or a cut-off stream is not an answer
another request should get.
"""
from __future__ import annotations

from typing import Any

import msgspec

from tollway.core.providers.base import ClientAPI
from tollway.ext.usage import Usage

_CHAT_DONE = frozenset(("stop", "tool_calls"))
_MESSAGES_DONE = frozenset(("end_turn", "stop_sequence", "tool_use"))


class Entry(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """A stored answer. Not tracked by the cycle collector (gc=False): it holds no container
    that could close a cycle, and a cache holds hundreds of thousands (gateway.cache.memory)."""

    api: str  # the client API whose shape `body` has
    body: bytes  # the answer as the client's non-stream JSON
    created: float  # unix seconds when it was filled: a hit's `age`
    usage: Usage  # what the answer carries (recorded again on each hit, at no cost)
    upstream_model: str | None = None
    sse: bool = False  # `body` is a stream's SSE text, not yet assembled and checked (see above)


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Entry)


def encode(entry: Entry) -> bytes:
    return _encoder.encode(entry)


def decode(raw: bytes) -> Entry | None:
    """The entry of stored bytes, or None if they are not one (another version wrote them)."""
    try:
        return _decoder.decode(raw)
    except msgspec.DecodeError:
        return None


def storable(api: str, answer: dict[str, Any]) -> bool:
    """Whether a successful answer (decoded JSON in the client API's shape) is complete enough
    to give to another request."""
    if api == ClientAPI.EMBEDDINGS:
        return isinstance(answer.get("data"), list)
    if api == ClientAPI.MESSAGES:
        return answer.get("type") == "message" and answer.get("stop_reason") in _MESSAGES_DONE
    if api == ClientAPI.RESPONSES:
        return answer.get("status") == "completed" and not answer.get("error")
    choices = answer.get("choices")
    if not isinstance(choices, list) or not choices:
        return False
    done = _CHAT_DONE if api == ClientAPI.CHAT else frozenset(("stop",))
    return all(isinstance(c, dict) and c.get("finish_reason") in done and isinstance(c.get("message") or {}, dict)
               for c in choices)


class _Finished(msgspec.Struct):
    finish_reason: str | None = None
    message: dict[str, Any] | None = None  # chat: an object, or a replay could not read it


class _Shape(msgspec.Struct):
    """The few fields of any client API's answer that say whether it is complete."""

    choices: list[_Finished] | None = None  # chat, completions
    type: str | None = None  # messages
    stop_reason: str | None = None
    status: str | None = None  # responses
    error: msgspec.Raw | None = None
    data: list[msgspec.Raw] | None = None  # embeddings


_decode_shape = msgspec.json.Decoder(_Shape).decode


def storable_json(api: str, body: bytes) -> bool:
    """`storable` of an answer's JSON bytes, read only as far as that needs (no dict is built)."""
    try:
        shape = _decode_shape(body)
    except msgspec.DecodeError:  # (also: not an object, or a field of another type)
        return False
    if api == ClientAPI.EMBEDDINGS:
        return shape.data is not None
    if api == ClientAPI.MESSAGES:
        return shape.type == "message" and shape.stop_reason in _MESSAGES_DONE
    if api == ClientAPI.RESPONSES:
        return shape.status == "completed" and (shape.error is None or bytes(shape.error) == b"null")
    done = _CHAT_DONE if api == ClientAPI.CHAT else frozenset(("stop",))
    return bool(shape.choices) and all(c.finish_reason in done for c in shape.choices or ())


def usage_json(api: str, usage: Usage) -> dict[str, int]:
    """`usage` in the client API's words, for an assembled answer whose stream did not carry it."""
    if api in (ClientAPI.MESSAGES,):
        return {"input_tokens": usage.prompt_tokens, "output_tokens": usage.completion_tokens}
    if api == ClientAPI.RESPONSES:
        return {"input_tokens": usage.prompt_tokens, "output_tokens": usage.completion_tokens,
                "total_tokens": usage.total_tokens or usage.prompt_tokens + usage.completion_tokens}
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens or usage.prompt_tokens + usage.completion_tokens}
