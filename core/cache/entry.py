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
length-truncated answer, an error or a cut-off stream is not an answer another request should
get. Nor is a refusal, though it finishes with `stop` (chat: `message.refusal`; Responses: a
`refusal` content part in a completed response): it is the model declining this once, and a
cache would repeat it to every later request; nor a chat message that says nothing (no
content, tool calls or audio).
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
        return answer.get("status") == "completed" and not answer.get("error") and not _refused(answer.get("output"))
    choices = answer.get("choices")
    if not isinstance(choices, list) or not choices:
        return False
    if api == ClientAPI.CHAT:
        return all(isinstance(c, dict) and c.get("finish_reason") in _CHAT_DONE and _answered(c.get("message"))
                   for c in choices)
    return all(isinstance(c, dict) and c.get("finish_reason") == "stop" for c in choices)


def _answered(message: object) -> bool:
    """Whether a chat message is an answer to keep: an object (a replay reads it) that is no
    refusal and says something (an empty string, list or object is nothing)."""
    if not isinstance(message, dict) or message.get("refusal"):
        return False
    return bool(message.get("content") or message.get("tool_calls") or message.get("audio"))


def _refused(output: object) -> bool:
    """Whether a Responses output has a message with a (non-empty) refusal part, or is not the
    list of objects (a message's content: of parts) it should be (then it is not kept either)."""
    if output is None:
        return False
    if not isinstance(output, list) or not all(isinstance(item, dict) for item in output):
        return True
    for item in output:
        parts = item.get("content")
        if item.get("type") != "message" or parts is None:
            continue
        if not isinstance(parts, list) or not all(isinstance(part, dict) for part in parts):
            return True
        if any(part.get("type") == "refusal" and part.get("refusal") for part in parts):
            return True
    return False


class _Message(msgspec.Struct):
    """A chat message, read only as far as whether it refuses or says something."""

    content: msgspec.Raw = msgspec.Raw()  # (absent: empty. `Raw | None` would take only null)
    refusal: msgspec.Raw = msgspec.Raw()
    tool_calls: msgspec.Raw = msgspec.Raw()
    audio: msgspec.Raw = msgspec.Raw()

    def answered(self) -> bool:  # (_answered of its dict)
        return not _filled(self.refusal) and (_filled(self.content) or _filled(self.tool_calls) or _filled(self.audio))


def _filled(raw: msgspec.Raw) -> bool:
    """Whether a raw JSON value is one Python reads as true (as `_answered` does), without
    decoding a long one: a string but "", a container with anything in it; a number or a
    literal (short) is decoded. Absent is empty."""
    if not raw:  # (absent: the usual refusal, audio, tool_calls)
        return False
    value = bytes(raw).strip()
    if not value:
        return False
    if value[0] == 0x22:  # '"'
        return len(value) > 2
    if value[0] in b"[{":
        return bool(value[1:-1].strip())
    return bool(msgspec.json.decode(value))


class _Finished(msgspec.Struct):
    finish_reason: str | None = None
    message: _Message | None = None  # chat: an object (else the decode fails: a replay could not read it)


class _Part(msgspec.Struct):
    type: str | None = None
    refusal: msgspec.Raw = msgspec.Raw()


class _Item(msgspec.Struct):
    type: str | None = None
    content: msgspec.Raw = msgspec.Raw()  # a message's parts (decoded only for a message)


_decode_parts = msgspec.json.Decoder(list[_Part]).decode


def _refused_items(items: list[_Item]) -> bool:
    """`_refused` of the output's items."""
    for item in items:
        if item.type == "message" and bytes(item.content) not in (b"", b"null"):
            try:
                parts = _decode_parts(item.content)
            except msgspec.DecodeError:
                return True  # (not what `storable` would see as an answer either: kept out)
            if any(p.type == "refusal" and _filled(p.refusal) for p in parts):
                return True
    return False


class _Shape(msgspec.Struct):
    """The few fields of any client API's answer that say whether it is complete."""

    choices: list[_Finished] | None = None  # chat, completions
    type: str | None = None  # messages
    stop_reason: str | None = None
    status: str | None = None  # responses
    error: msgspec.Raw | None = None
    output: list[_Item] | None = None
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
        return (shape.status == "completed" and (shape.error is None or bytes(shape.error) == b"null")
                and not _refused_items(shape.output or []))
    if not shape.choices:
        return False
    if api == ClientAPI.CHAT:
        for c in shape.choices:  # (a loop, not all() over a generator: this runs on every stored miss)
            if c.finish_reason not in _CHAT_DONE or c.message is None or not c.message.answered():
                return False
        return True
    return all(c.finish_reason == "stop" for c in shape.choices)


def usage_json(api: str, usage: Usage) -> dict[str, int]:
    """`usage` in the client API's words, for an assembled answer whose stream did not carry it."""
    if api in (ClientAPI.MESSAGES,):
        return {"input_tokens": usage.prompt_tokens, "output_tokens": usage.completion_tokens}
    if api == ClientAPI.RESPONSES:
        return {"input_tokens": usage.prompt_tokens, "output_tokens": usage.completion_tokens,
                "total_tokens": usage.total_tokens or usage.prompt_tokens + usage.completion_tokens}
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens or usage.prompt_tokens + usage.completion_tokens}
