"""A streamed answer, as the client received it, put back together as the non-stream JSON
answer of its client API, so that one entry serves both kinds of request.

Each assembler reads the whole SSE text once the stream has ended, and returns None when the
stream is not a complete answer (no end marker, an error event, a piece it cannot read): such
a stream is never stored. Anything unexpected reads as "not complete", never as an error:
this runs after the client has its answer.

It runs on the event loop, over up to 8x max_entry_bytes of an upstream's stream: every text
is gathered as a list of pieces joined once (a `+=` on a dict's string copies it whole each
time: quadratic), and tool calls are kept by their index, not in a list padded up to it (an
index is the upstream's number: 3,000,000 made three million placeholders).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import msgspec

from tollway.core.cache.entry import Entry, storable, usage_json
from tollway.core.providers.base import ClientAPI
from tollway.core.providers.wire import openai as oa
from tollway.ext.usage import Usage

Answer = dict[str, Any]
_decode = msgspec.json.decode


def events(sse: bytes) -> Iterator[tuple[str, bytes]]:
    """(event name, data) of each SSE event; the name is "" where the event has none."""
    for block in sse.replace(b"\r\n", b"\n").split(b"\n\n"):
        name, data = "", []
        for line in block.split(b"\n"):
            if line.startswith(b"data:"):
                data.append(line[5:].removeprefix(b" "))
            elif line.startswith(b"event:"):
                name = line[6:].strip().decode("ascii", "replace")
        if data:
            yield name, b"\n".join(data)


def assemble(api: str, sse: bytes, usage: Usage | None) -> Answer | None:
    """The JSON answer of a finished stream in `api`'s shape, or None if it is not a complete
    answer. `usage` (what the gateway charged) fills in a stream that did not report its own."""
    build = _ASSEMBLERS.get(api)
    if build is None:
        return None
    try:
        answer = build(sse)
    except (ValueError, KeyError, TypeError, AttributeError, IndexError, msgspec.DecodeError):
        return None
    if not isinstance(answer, dict):  # (a Responses stream's "response" is the upstream's: any JSON)
        return None
    if answer.get("usage") is None and usage is not None:
        answer["usage"] = usage_json(api, usage)
    return answer


def answer_of(entry: Entry, max_bytes: int) -> Entry | None:
    """An entry ready to serve: `entry` itself, or a stream's (`entry.sse`) assembled into its
    answer, or None if that stream is not a complete answer of at most `max_bytes` as JSON
    (then it is not one to serve, as it would not have been stored)."""
    if not entry.sse:
        return entry
    answer = assemble(entry.api, entry.body, entry.usage)
    if answer is None or not storable(entry.api, answer):
        return None
    body = msgspec.json.encode(answer)
    if len(body) > max_bytes:
        return None
    return Entry(entry.api, body, entry.created, entry.usage, entry.upstream_model)


class _ToolCallDelta(msgspec.Struct):
    index: int = 0
    id: str | None = None
    type: str | None = None
    function: oa.FunctionDelta | None = None
    extra_content: dict[str, Any] | None = None  # a provider's fields the client sends back (Gemini's signature)


class _AudioDelta(msgspec.Struct):
    """A piece of a spoken answer (modalities: audio): the id and expiry once, the base64 data
    and the transcript in pieces."""

    id: str | None = None
    data: str | None = None
    transcript: str | None = None
    expires_at: int | None = None


class _Delta(msgspec.Struct):
    role: str | None = None
    content: str | None = None
    refusal: str | None = None
    reasoning_content: str | None = None  # (vLLM, DeepSeek: a model's reasoning beside its answer)
    reasoning: object = None  # (vLLM 0.11+'s newer name for it; kept as it came, under its own name)
    tool_calls: list[_ToolCallDelta] | None = None
    audio: _AudioDelta | None = None
    annotations: list[dict[str, Any]] | None = None  # (search models' url_citation)


class _ChoiceDelta(msgspec.Struct):
    index: int = 0
    delta: _Delta | None = None
    finish_reason: str | None = None
    logprobs: dict[str, Any] | None = None


class _ChatChunk(msgspec.Struct):
    """One chat.completion.chunk, decoded only as far as the answer needs (unknown fields are
    left out of the assembled answer)."""

    id: str | None = None
    created: int | None = None
    model: str | None = None
    system_fingerprint: str | None = None
    choices: list[_ChoiceDelta] = []
    usage: dict[str, Any] | None = None
    error: Any = None


_decode_chunks = msgspec.json.Decoder(list[_ChatChunk]).decode


_DONE_TAIL = b"\n\ndata: [DONE]\n\n"


def _chunks(sse: bytes) -> list[_ChatChunk] | None:
    """The chunks of a data-only stream that ended with [DONE] (None: it did not end so).

    The usual framing (`data: ` events, LF, no comments) is decoded in one call, as one JSON
    array: a raw LF cannot occur inside JSON, so every `\\n\\ndata: ` is a boundary. Anything else
    goes through the general parser."""
    if sse.startswith(b"data: ") and sse.endswith(_DONE_TAIL):
        try:
            return _decode_chunks(b"[" + sse[6:-len(_DONE_TAIL)].replace(b"\n\ndata: ", b",") + b"]")
        except msgspec.DecodeError:
            pass
    datas = [data for _, data in events(sse)]
    if not datas or datas[-1] != b"[DONE]":
        return None
    return _decode_chunks(b"[" + b",".join(datas[:-1]) + b"]")


class _Call:
    """A tool call being put back together: its name and arguments as pieces."""

    __slots__ = ("id", "type", "name", "arguments", "extra_content")

    def __init__(self) -> None:
        self.id: str | None = None
        self.type = "function"
        self.name: list[str] = []
        self.arguments: list[str] = []
        self.extra_content: dict[str, Any] | None = None

    def answer(self) -> Answer:
        call: Answer = {"id": self.id, "type": self.type,
                        "function": {"name": "".join(self.name), "arguments": "".join(self.arguments)}}
        if self.extra_content is not None:
            call["extra_content"] = self.extra_content
        return call


class _Audio:
    """A spoken answer being put back together: its data and transcript as pieces."""

    __slots__ = ("id", "expires_at", "data", "transcript")

    def __init__(self) -> None:
        self.id: str | None = None
        self.expires_at: int | None = None
        self.data: list[str] = []
        self.transcript: list[str] = []

    def add(self, delta: _AudioDelta) -> None:
        if delta.id:
            self.id = delta.id
        if delta.expires_at is not None:
            self.expires_at = delta.expires_at
        if delta.data:
            self.data.append(delta.data)
        if delta.transcript:
            self.transcript.append(delta.transcript)

    def answer(self) -> Answer:
        return {"id": self.id, "data": "".join(self.data), "expires_at": self.expires_at,
                "transcript": "".join(self.transcript)}


class _Choice:
    """A choice being put back together: its text as pieces, joined once at the end."""

    __slots__ = ("role", "content", "refusal", "reasoning", "reasoning_new", "calls", "audio", "annotations", "logprobs",
                 "finish")

    def __init__(self) -> None:
        self.role = "assistant"
        self.content: list[str] = []
        self.refusal: list[str] = []
        self.reasoning: list[str] = []
        self.reasoning_new: list[str] = []  # (under vLLM's newer name, `reasoning`)
        self.calls: dict[int, _Call] = {}  # by the stream's index
        self.audio: _Audio | None = None
        self.annotations: list[dict[str, Any]] = []
        self.logprobs: list[Any] | None = None
        self.finish: str | None = None

    def add(self, part: _ChoiceDelta) -> None:
        """One chunk's piece of this choice. Most pieces are a content delta alone: that case
        reads three attributes."""
        delta = part.delta
        if delta is not None:
            if delta.content:
                self.content.append(delta.content)
            if (delta.role is not None or delta.refusal or delta.reasoning_content or delta.tool_calls
                    or delta.audio is not None or delta.annotations or delta.reasoning is not None):
                self._rest(delta)
        if part.logprobs is not None or part.finish_reason is not None:
            if part.logprobs and part.logprobs.get("content"):
                if self.logprobs is None:
                    self.logprobs = []
                self.logprobs.extend(part.logprobs["content"])
            if part.finish_reason:
                self.finish = part.finish_reason

    def _rest(self, delta: _Delta) -> None:
        if delta.role:
            self.role = delta.role
        if delta.refusal:
            self.refusal.append(delta.refusal)
        if delta.reasoning_content:
            self.reasoning.append(delta.reasoning_content)
        if isinstance(delta.reasoning, str) and delta.reasoning:
            self.reasoning_new.append(delta.reasoning)
        for call in delta.tool_calls or ():
            _tool_call(self.calls, call)
        if delta.audio is not None:
            if self.audio is None:
                self.audio = _Audio()
            self.audio.add(delta.audio)
        if delta.annotations:
            self.annotations.extend(delta.annotations)

    def answer(self, index: int) -> Answer:
        # (a stream whose only content was the first chunk's "" had null content, as a tool call's JSON has)
        message: Answer = {"role": self.role, "content": "".join(self.content) if self.content else None}
        if self.refusal:
            message["refusal"] = "".join(self.refusal)
        if self.reasoning:
            message["reasoning_content"] = "".join(self.reasoning)
        if self.reasoning_new:
            message["reasoning"] = "".join(self.reasoning_new)
        if self.calls:
            message["tool_calls"] = [self.calls[i].answer() for i in sorted(self.calls)]
        if self.audio is not None:
            message["audio"] = self.audio.answer()
        if self.annotations:
            message["annotations"] = self.annotations
        logprobs = {"content": self.logprobs} if self.logprobs is not None else None
        return {"index": index, "message": message, "logprobs": logprobs, "finish_reason": self.finish}


def _chat(sse: bytes) -> Answer | None:
    chunks = _chunks(sse)
    if not chunks:
        return None
    choices: dict[int, _Choice] = {}
    usage = None
    for chunk in chunks:
        if chunk.error is not None:
            return None
        if chunk.usage:
            usage = chunk.usage
        for part in chunk.choices:
            choice = choices.get(part.index)
            if choice is None:
                choice = choices[part.index] = _Choice()
            choice.add(part)
    if not choices:
        return None
    first = chunks[0]
    answer = {"id": first.id, "object": "chat.completion", "created": first.created, "model": first.model,
              "choices": [choices[i].answer(i) for i in sorted(choices)], "usage": usage}
    if first.system_fingerprint is not None:
        answer["system_fingerprint"] = first.system_fingerprint
    return answer


def _tool_call(calls: dict[int, _Call], delta: _ToolCallDelta) -> None:
    call = calls.get(delta.index)
    if call is None:
        call = calls[delta.index] = _Call()
    if delta.id:
        call.id = delta.id
    if delta.type:
        call.type = delta.type
    if delta.extra_content is not None:
        call.extra_content = delta.extra_content
    if delta.function is not None:
        if delta.function.name:
            call.name.append(delta.function.name)
        if delta.function.arguments:
            call.arguments.append(delta.function.arguments)


def _completions(sse: bytes) -> Answer | None:
    first: Answer | None = None
    choices: dict[int, Answer] = {}
    texts: dict[int, list[str]] = {}
    scores: dict[int, dict[str, list[Any]]] = {}  # a choice's logprobs: each field's lists, concatenated
    usage, done = None, False
    for _, data in events(sse):
        if data == b"[DONE]":
            done = True
            continue
        chunk = _decode(data)
        if "error" in chunk:
            return None
        first = first or chunk
        usage = chunk.get("usage") or usage
        for part in chunk.get("choices") or ():
            index = part.get("index", 0)
            choice = choices.setdefault(index, {"index": index, "text": "", "logprobs": None, "finish_reason": None})
            texts.setdefault(index, []).append(part.get("text") or "")
            if part.get("logprobs"):
                _add_logprobs(scores.setdefault(index, {}), part["logprobs"])
            if part.get("finish_reason"):
                choice["finish_reason"] = part["finish_reason"]
    if not done or first is None or not choices:
        return None
    for index, pieces in texts.items():
        choices[index]["text"] = "".join(pieces)
    for index, fields in scores.items():
        choices[index]["logprobs"] = fields
    return {"id": first.get("id"), "object": "text_completion", "created": first.get("created"),
            "model": first.get("model"), "choices": [choices[i] for i in sorted(choices)], "usage": usage}


def _add_logprobs(fields: dict[str, list[Any]], piece: Answer) -> None:
    """A chunk's legacy logprobs (tokens, token_logprobs, top_logprobs, text_offset: a list
    each, one entry per token of its text) after the chunks' before it. Extending a list
    copies only the piece. A field that is not a list cannot be put together: not an answer."""
    for field, values in piece.items():
        if not isinstance(values, list):
            raise ValueError(f"logprobs.{field} is not a list")
        fields.setdefault(field, []).extend(values)


def _responses(sse: bytes) -> Answer | None:
    """The Responses API's last event carries the whole response."""
    final = None
    for name, data in events(sse):
        kind = name or _decode(data).get("type")  # (the event line names it: no decode for the deltas)
        if kind in ("error", "response.failed", "response.incomplete"):
            return None
        if kind == "response.completed":
            final = _decode(data)["response"]
    return final


def _messages(sse: bytes) -> Answer | None:
    message: Answer | None = None
    blocks: dict[int, Answer] = {}
    pieces: dict[tuple[int, str], list[str]] = {}  # (block, field) -> its text deltas
    partial: dict[int, list[str]] = {}  # a tool_use block's input JSON, until its stop
    stopped = False
    for _, data in events(sse):
        event = _decode(data)
        kind = event.get("type")
        if kind == "error":
            return None
        if kind == "message_start":
            message = dict(event["message"])
        elif kind == "content_block_start":
            blocks[event["index"]] = dict(event["content_block"])
        elif kind == "content_block_delta":
            _block_delta(blocks[event["index"]], pieces, partial, event["index"], event["delta"])
        elif kind == "content_block_stop" and event["index"] in partial:
            blocks[event["index"]]["input"] = _decode("".join(partial.pop(event["index"])) or "{}")
        elif kind == "message_delta" and message is not None:
            message.update(event.get("delta") or {})
            message["usage"] = {**(message.get("usage") or {}), **(event.get("usage") or {})}
        elif kind == "message_stop":
            stopped = True
    if message is None or not stopped or partial:
        return None
    for (index, field), texts in pieces.items():
        block = blocks[index]
        block[field] = block.get(field, "") + "".join(texts)  # (after what content_block_start held)
    message["content"] = [blocks[i] for i in sorted(blocks)]
    return message


_TEXT_DELTAS = {"text_delta": "text", "thinking_delta": "thinking", "signature_delta": "signature"}


def _block_delta(block: Answer, pieces: dict[tuple[int, str], list[str]], partial: dict[int, list[str]], index: int,
                 delta: Answer) -> None:
    kind = delta.get("type")
    field = _TEXT_DELTAS.get(kind) if isinstance(kind, str) else None
    if field is not None:
        text = delta[field]
        if not isinstance(text, str):
            raise TypeError(f"{kind} without text")
        pieces.setdefault((index, field), []).append(text)
    elif kind == "input_json_delta":
        partial.setdefault(index, []).append(delta["partial_json"])
    elif kind == "citations_delta":
        block.setdefault("citations", []).append(delta["citation"])
    else:
        raise ValueError(f"unknown content delta {kind!r}")  # not an answer this cache can rebuild


_ASSEMBLERS: dict[str, Callable[[bytes], Answer | None]] = {
    ClientAPI.CHAT: _chat, ClientAPI.COMPLETIONS: _completions, ClientAPI.RESPONSES: _responses,
    ClientAPI.MESSAGES: _messages,
}
