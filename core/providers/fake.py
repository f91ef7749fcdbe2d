"""The built-in fake provider: deterministic OpenAI wire-format answers, made locally.

It lets a newcomer run the gateway and the benchmarks with no API key, and lets tests
exercise the whole OpenAI pass-through path (body rewrite, stream relay, usage capture)
without a network. Answers depend only on the request and the `now` they are stamped with
(the transport, tollway.gateway.upstream.fake, reads the clock: core never does), so tests
can assert on them.
"""
from __future__ import annotations

import hashlib
import struct
from typing import Any

import msgspec

_decode = msgspec.json.decode
_encode = msgspec.json.encode

EMBEDDING_DIMENSIONS = 8


def reply_text(doc: dict[str, Any]) -> str:
    """The fake's answer: a fixed greeting echoing the start of the last user message."""
    said = _last_user_text(doc)
    return f"Hello from Tollway's fake provider. You said: {said[:60]}"


def _last_user_text(doc: dict[str, Any]) -> str:
    for field in ("prompt", "input"):
        text = doc.get(field)
        if isinstance(text, str):
            return text
    for message in reversed(doc.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _words(text: str) -> int:
    return max(1, len(text.split()))


def _prompt_tokens(doc: dict[str, Any]) -> int:
    return sum(_words(str(m.get("content", ""))) for m in doc.get("messages") or [] if isinstance(m, dict)) or _words(
        _last_user_text(doc)
    )


def _tool_call(doc: dict[str, Any]) -> dict[str, Any] | None:
    tools = doc.get("tools") or []
    if not tools or doc.get("tool_choice") == "none":
        return None
    name = tools[0].get("function", {}).get("name", "tool")
    return {"id": "call_fake_0", "type": "function", "function": {"name": name, "arguments": "{}"}}


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def chat_completion(body: bytes, model: str, now: int) -> bytes:
    """A complete `chat.completion` JSON body."""
    doc = _decode(body)
    text, call = reply_text(doc), _tool_call(doc)
    message: dict[str, Any] = {"role": "assistant", "content": None if call else text}
    if call:
        message["tool_calls"] = [call]
    choices = [
        {"index": i, "message": message, "logprobs": None, "finish_reason": "tool_calls" if call else "stop"}
        for i in range(doc.get("n") or 1)
    ]
    return _encode({
        "id": "chatcmpl-fake", "object": "chat.completion", "created": now, "model": model,
        "choices": choices, "usage": _usage(_prompt_tokens(doc), _words(text) if not call else 1),
    })


def chat_chunks(body: bytes, model: str, now: int, n_chunks: int) -> list[bytes]:
    """The SSE events of a streamed chat completion, `data: [DONE]` included."""
    doc = _decode(body)
    text = reply_text(doc)
    pieces = _split(text, max(1, n_chunks))
    base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": now, "model": model}
    include_usage = bool((doc.get("stream_options") or {}).get("include_usage"))
    extra = {"usage": None} if include_usage else {}

    def event(delta: dict[str, Any], finish: str | None) -> bytes:
        chunk = {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}], **extra}
        return b"data: " + _encode(chunk) + b"\n\n"

    events = [event({"role": "assistant", "content": ""}, None)]
    events += [event({"content": p}, None) for p in pieces]
    events.append(event({}, "stop"))
    if include_usage:
        usage_chunk = {**base, "choices": [], "usage": _usage(_prompt_tokens(doc), _words(text))}
        events.append(b"data: " + _encode(usage_chunk) + b"\n\n")
    events.append(b"data: [DONE]\n\n")
    return events


def _split(text: str, n: int) -> list[str]:
    words = text.split(" ")
    size = max(1, -(-len(words) // n))
    groups = [" ".join(words[i:i + size]) for i in range(0, len(words), size)]
    return [g if i == 0 else " " + g for i, g in enumerate(groups)]


def completion(body: bytes, model: str, now: int) -> bytes:
    """A legacy `text_completion` body."""
    doc = _decode(body)
    text = reply_text(doc)
    return _encode({
        "id": "cmpl-fake", "object": "text_completion", "created": now, "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": "stop"}],
        "usage": _usage(_words(_last_user_text(doc)), _words(text)),
    })


def embedding(body: bytes, model: str, now: int) -> bytes:  # noqa: ARG001 - one signature for every answer
    """Deterministic unit-free vectors derived from each input's SHA-256."""
    doc = _decode(body)
    inputs = doc.get("input")
    items = inputs if isinstance(inputs, list) else [inputs]
    data = [{"object": "embedding", "index": i, "embedding": _vector(str(x))} for i, x in enumerate(items)]
    tokens = sum(_words(str(x)) for x in items)
    return _encode({"object": "list", "data": data, "model": model,
                    "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


def _vector(text: str) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    return [round(v / 2**31, 6) for v in struct.unpack(">8i", digest)]


def response(body: bytes, model: str, now: int) -> bytes:
    """A Responses API `response` object."""
    doc = _decode(body)
    text = reply_text(doc)
    prompt, output = _words(_last_user_text(doc)), _words(text)
    return _encode(_response_object(model, text, prompt, output, now))


def _response_object(model: str, text: str, prompt: int, output: int, now: int) -> dict[str, Any]:
    return {
        "id": "resp_fake", "object": "response", "created_at": now, "status": "completed", "model": model,
        "output": [{"type": "message", "id": "msg_fake", "status": "completed", "role": "assistant",
                    "content": [{"type": "output_text", "text": text, "annotations": []}]}],
        "usage": {"input_tokens": prompt, "output_tokens": output, "total_tokens": prompt + output},
    }


def response_events(body: bytes, model: str, now: int) -> list[bytes]:
    """The SSE events of a streamed Responses API answer."""
    doc = _decode(body)
    text = reply_text(doc)
    final = _response_object(model, text, _words(_last_user_text(doc)), _words(text), now)
    started = {**final, "status": "in_progress", "output": [], "usage": None}

    def event(kind: str, payload: dict[str, Any], seq: int) -> bytes:
        data = _encode({"type": kind, "sequence_number": seq, **payload})
        return b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"

    return [
        event("response.created", {"response": started}, 0),
        event("response.output_text.delta", {"item_id": "msg_fake", "output_index": 0, "content_index": 0, "delta": text}, 1),
        event("response.completed", {"response": final}, 2),
    ]
