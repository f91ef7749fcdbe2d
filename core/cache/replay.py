"""A stored answer rendered as the stream its client API would have sent: the same events a
provider sends, each piece of text in one delta (a cached answer has no pacing to keep).

    chat         role chunk, reasoning / content / refusal / audio / annotations / tool-call
                 chunks, finish chunk per choice, the usage chunk if the request asked
                 (stream_options.include_usage), [DONE]
    completions  a text chunk per choice, the usage chunk if asked, [DONE]
    responses    response.created, in_progress, each output item added / its deltas / done,
                 response.completed (with sequence_number on each)
    messages     message_start, each content block start / delta / stop, message_delta
                 (stop_reason, usage), message_stop
"""
from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from tollway.core.providers.base import ClientAPI

Answer = dict[str, Any]


def _data(obj: object) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def _event(kind: str, obj: object) -> bytes:
    return f"event: {kind}\n".encode() + _data(obj)


def replay(api: str, answer: Answer, include_usage: bool) -> bytes:
    """The SSE bytes of `answer` (a stored non-stream answer of `api`). Raises ValueError for an
    API whose answers are not streamed (embeddings)."""
    render = _RENDERERS.get(api)
    if render is None:
        raise ValueError(f"{api} answers are not streamed")
    return render(answer, include_usage)


def _chat(answer: Answer, include_usage: bool) -> bytes:
    base = {"id": answer.get("id"), "object": "chat.completion.chunk", "created": answer.get("created"),
            "model": answer.get("model")}
    if answer.get("system_fingerprint") is not None:
        base["system_fingerprint"] = answer["system_fingerprint"]
    if include_usage:
        base["usage"] = None  # as OpenAI sends it on every chunk but the last
    out = []

    def chunk(index: int, delta: Answer, finish: str | None = None, logprobs: object = None) -> None:
        out.append(_data({**base, "choices": [{"index": index, "delta": delta, "logprobs": logprobs,
                                               "finish_reason": finish}]}))

    for choice in answer.get("choices") or ():
        index, message = choice.get("index", 0), choice.get("message") or {}
        _check_streamable(message)
        chunk(index, {"role": message.get("role", "assistant"), "content": ""})
        # vLLM 0.11+ names it `reasoning` and may send both names with the same text: one delta
        # holds both, as the live stream did (a client reading either gets it once).
        reasoning = {f: message[f] for f in ("reasoning_content", "reasoning") if message.get(f)}
        if reasoning:
            chunk(index, reasoning)
        if message.get("content"):
            chunk(index, {"content": message["content"]}, logprobs=choice.get("logprobs"))
        for field in ("refusal", "audio", "annotations"):  # (each whole, in one delta of that name)
            if message.get(field):
                chunk(index, {field: message[field]})
        calls = message.get("tool_calls") or ()
        if calls:
            chunk(index, {"tool_calls": [_call_delta(j, c) for j, c in enumerate(calls)]})
        chunk(index, {}, choice.get("finish_reason"))
    if include_usage:
        out.append(_data({**base, "choices": [], "usage": answer.get("usage")}))
    out.append(b"data: [DONE]\n\n")
    return b"".join(out)


def _call_delta(index: int, call: Answer) -> Answer:
    """A stored tool call as its one stream delta (a provider's `extra_content` kept: Gemini 3
    refuses a history whose call comes back without the signature in it)."""
    delta = {"index": index, "id": call.get("id"), "type": call.get("type", "function"), "function": call.get("function")}
    if call.get("extra_content") is not None:
        delta["extra_content"] = call["extra_content"]
    return delta


# The message fields a chat stream has a delta for (role and content: every stream's).
_STREAMED_FIELDS = frozenset(("role", "content", "reasoning_content", "reasoning", "refusal", "audio", "annotations",
                             "tool_calls"))


def _check_streamable(message: Answer) -> None:
    """Raise ValueError if a stored message has a field this renders no delta for: a stream
    without it would be an emptier answer than the one stored, so the entry is a miss for a
    streaming request instead (gateway.cache.hooks). Empty fields (refusal: null) say nothing."""
    if not isinstance(message, dict):
        raise TypeError("a chat message that is not an object")
    for field, value in message.items():
        if value and field not in _STREAMED_FIELDS:
            raise ValueError(f"no stream delta for message.{field}")


def _completions(answer: Answer, include_usage: bool) -> bytes:
    base = {"id": answer.get("id"), "object": "text_completion", "created": answer.get("created"),
            "model": answer.get("model")}
    out = [_data({**base, "choices": [{"index": c.get("index", 0), "text": c.get("text", ""),
                                       "logprobs": c.get("logprobs"), "finish_reason": c.get("finish_reason")}]})
           for c in answer.get("choices") or ()]
    if include_usage:
        out.append(_data({**base, "choices": [], "usage": answer.get("usage")}))
    out.append(b"data: [DONE]\n\n")
    return b"".join(out)


def _responses(answer: Answer, include_usage: bool) -> bytes:
    out: list[bytes] = []

    def emit(kind: str, payload: Answer) -> None:
        out.append(_event(kind, {"type": kind, "sequence_number": len(out), **payload}))

    started = {**answer, "status": "in_progress", "output": [], "usage": None}
    emit("response.created", {"response": started})
    emit("response.in_progress", {"response": started})
    for index, item in enumerate(answer.get("output") or ()):
        _response_item(emit, index, item)
    emit("response.completed", {"response": answer})
    return b"".join(out)


def _response_item(emit: Callable[[str, Answer], None], index: int, item: Answer) -> None:
    kind, item_id = item.get("type"), item.get("id")
    if kind == "message":
        emit("response.output_item.added", {"output_index": index,
                                            "item": {**item, "status": "in_progress", "content": []}})
        for part_index, part in enumerate(item.get("content") or ()):
            at = {"item_id": item_id, "output_index": index, "content_index": part_index}
            if part.get("type") == "output_text":
                emit("response.content_part.added", {**at, "part": {**part, "text": "", "annotations": []}})
                emit("response.output_text.delta", {**at, "delta": part.get("text", ""), "logprobs": []})
                emit("response.output_text.done", {**at, "text": part.get("text", ""), "logprobs": []})
            else:
                emit("response.content_part.added", {**at, "part": part})
            emit("response.content_part.done", {**at, "part": part})
    elif kind == "function_call":
        emit("response.output_item.added", {"output_index": index,
                                            "item": {**item, "status": "in_progress", "arguments": ""}})
        at = {"item_id": item_id, "output_index": index}
        emit("response.function_call_arguments.delta", {**at, "delta": item.get("arguments", "")})
        emit("response.function_call_arguments.done", {**at, "arguments": item.get("arguments", "")})
    else:
        emit("response.output_item.added", {"output_index": index, "item": item})
    emit("response.output_item.done", {"output_index": index, "item": item})


def _messages(answer: Answer, include_usage: bool) -> bytes:
    usage = answer.get("usage") or {}
    start = {**answer, "content": [], "stop_reason": None, "stop_sequence": None,
             "usage": {**usage, "output_tokens": 0}}
    out = [_event("message_start", {"type": "message_start", "message": start})]
    for index, block in enumerate(answer.get("content") or ()):
        out += _message_block(index, block)
    out.append(_event("message_delta", {"type": "message_delta",
                                        "delta": {"stop_reason": answer.get("stop_reason"),
                                                  "stop_sequence": answer.get("stop_sequence")},
                                        "usage": {"output_tokens": usage.get("output_tokens", 0)}}))
    out.append(_event("message_stop", {"type": "message_stop"}))
    return b"".join(out)


def _message_block(index: int, block: Answer) -> list[bytes]:
    kind = block.get("type")
    if kind == "text":
        opening, deltas = {**block, "text": ""}, [{"type": "text_delta", "text": block.get("text", "")}]
        if block.get("citations"):
            opening["citations"] = []
            deltas += [{"type": "citations_delta", "citation": c} for c in block["citations"]]
    elif kind == "tool_use":
        opening = {**block, "input": {}}
        deltas = [{"type": "input_json_delta", "partial_json": json.dumps(block.get("input", {}), separators=(",", ":"))}]
    elif kind == "thinking":
        opening = {**block, "thinking": "", "signature": ""}
        deltas = [{"type": "thinking_delta", "thinking": block.get("thinking", "")},
                  {"type": "signature_delta", "signature": block.get("signature", "")}]
    else:  # redacted_thinking, server tool results, ...: whole in their start event
        opening, deltas = block, []
    out = [_event("content_block_start", {"type": "content_block_start", "index": index, "content_block": opening})]
    out += [_event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": d}) for d in deltas]
    out.append(_event("content_block_stop", {"type": "content_block_stop", "index": index}))
    return out


_RENDERERS: dict[str, Callable[[Answer, bool], bytes]] = {
    ClientAPI.CHAT: _chat, ClientAPI.COMPLETIONS: _completions, ClientAPI.RESPONSES: _responses,
    ClientAPI.MESSAGES: _messages,
}
