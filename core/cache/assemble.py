"""A streamed answer, as the client received it, put back together as the non-stream JSON
answer of its client API, so that one entry serves both kinds of request.

Each assembler reads the whole SSE text once the stream has ended, and returns None when the
stream is not a complete answer (no end marker, an error event, a piece it cannot read): such
a stream is never stored. Anything unexpected reads as "not complete", never as an error:
this runs after the client has its answer.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

from tollway.core.cache.entry import usage_json
from tollway.core.providers.base import ClientAPI
from tollway.ext.usage import Usage

Answer = dict[str, Any]


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
    except (ValueError, KeyError, TypeError, AttributeError, IndexError):
        return None
    if answer is not None and answer.get("usage") is None and usage is not None:
        answer["usage"] = usage_json(api, usage)
    return answer


def _chat(sse: bytes) -> Answer | None:
    first: Answer | None = None
    choices: dict[int, Answer] = {}
    usage, done = None, False
    for _, data in events(sse):
        if data == b"[DONE]":
            done = True
            continue
        chunk = json.loads(data)
        if "error" in chunk:
            return None
        first = first or chunk
        usage = chunk.get("usage") or usage
        for part in chunk.get("choices") or ():
            _chat_choice(choices, part)
    if not done or first is None or not choices:
        return None
    answer = {"id": first.get("id"), "object": "chat.completion", "created": first.get("created"),
              "model": first.get("model"), "choices": [choices[i] for i in sorted(choices)], "usage": usage}
    if first.get("system_fingerprint") is not None:
        answer["system_fingerprint"] = first["system_fingerprint"]
    return answer


def _chat_choice(choices: dict[int, Answer], part: Answer) -> None:
    index = part.get("index", 0)
    choice = choices.get(index)
    if choice is None:
        choice = choices[index] = {"index": index, "message": {"role": "assistant", "content": None},
                                   "logprobs": None, "finish_reason": None}
    message, delta = choice["message"], part.get("delta") or {}
    if delta.get("role"):
        message["role"] = delta["role"]
    for text in ("content", "refusal"):  # (a first chunk's "" leaves a tool call's content null, as its JSON has it)
        if delta.get(text):
            message[text] = (message.get(text) or "") + delta[text]
    for call in delta.get("tool_calls") or ():
        _tool_call(message.setdefault("tool_calls", []), call)
    logprobs = part.get("logprobs")
    if logprobs and logprobs.get("content"):
        kept = choice["logprobs"] = choice["logprobs"] or {"content": []}
        kept["content"].extend(logprobs["content"])
    if part.get("finish_reason"):
        choice["finish_reason"] = part["finish_reason"]


def _tool_call(calls: list[Answer], delta: Answer) -> None:
    index = delta.get("index", 0)
    while len(calls) <= index:
        calls.append({"id": None, "type": "function", "function": {"name": "", "arguments": ""}})
    call, fn = calls[index], delta.get("function") or {}
    if delta.get("id"):
        call["id"] = delta["id"]
    if delta.get("type"):
        call["type"] = delta["type"]
    call["function"]["name"] += fn.get("name") or ""
    call["function"]["arguments"] += fn.get("arguments") or ""


def _completions(sse: bytes) -> Answer | None:
    first: Answer | None = None
    choices: dict[int, Answer] = {}
    usage, done = None, False
    for _, data in events(sse):
        if data == b"[DONE]":
            done = True
            continue
        chunk = json.loads(data)
        if "error" in chunk:
            return None
        first = first or chunk
        usage = chunk.get("usage") or usage
        for part in chunk.get("choices") or ():
            index = part.get("index", 0)
            choice = choices.setdefault(index, {"index": index, "text": "", "logprobs": None, "finish_reason": None})
            choice["text"] += part.get("text") or ""
            if part.get("finish_reason"):
                choice["finish_reason"] = part["finish_reason"]
    if not done or first is None or not choices:
        return None
    return {"id": first.get("id"), "object": "text_completion", "created": first.get("created"),
            "model": first.get("model"), "choices": [choices[i] for i in sorted(choices)], "usage": usage}


def _responses(sse: bytes) -> Answer | None:
    """The Responses API's last event carries the whole response."""
    final = None
    for _, data in events(sse):
        event = json.loads(data)
        kind = event.get("type")
        if kind in ("error", "response.failed", "response.incomplete"):
            return None
        if kind == "response.completed":
            final = event["response"]
    return final


def _messages(sse: bytes) -> Answer | None:
    message: Answer | None = None
    blocks: dict[int, Answer] = {}
    partial: dict[int, str] = {}
    stopped = False
    for _, data in events(sse):
        event = json.loads(data)
        kind = event.get("type")
        if kind == "error":
            return None
        if kind == "message_start":
            message = dict(event["message"])
        elif kind == "content_block_start":
            blocks[event["index"]] = dict(event["content_block"])
        elif kind == "content_block_delta":
            _block_delta(blocks[event["index"]], partial, event["index"], event["delta"])
        elif kind == "content_block_stop" and event["index"] in partial:
            blocks[event["index"]]["input"] = json.loads(partial.pop(event["index"]) or "{}")
        elif kind == "message_delta" and message is not None:
            message.update(event.get("delta") or {})
            message["usage"] = {**(message.get("usage") or {}), **(event.get("usage") or {})}
        elif kind == "message_stop":
            stopped = True
    if message is None or not stopped or partial:
        return None
    message["content"] = [blocks[i] for i in sorted(blocks)]
    return message


def _block_delta(block: Answer, partial: dict[int, str], index: int, delta: Answer) -> None:
    kind = delta.get("type")
    if kind == "text_delta":
        block["text"] = block.get("text", "") + delta["text"]
    elif kind == "input_json_delta":
        partial[index] = partial.get(index, "") + delta["partial_json"]
    elif kind == "thinking_delta":
        block["thinking"] = block.get("thinking", "") + delta["thinking"]
    elif kind == "signature_delta":
        block["signature"] = block.get("signature", "") + delta["signature"]
    elif kind == "citations_delta":
        block.setdefault("citations", []).append(delta["citation"])
    else:
        raise ValueError(f"unknown content delta {kind!r}")  # not an answer this cache can rebuild


_ASSEMBLERS: dict[str, Callable[[bytes], Answer | None]] = {
    ClientAPI.CHAT: _chat, ClientAPI.COMPLETIONS: _completions, ClientAPI.RESPONSES: _responses,
    ClientAPI.MESSAGES: _messages,
}
