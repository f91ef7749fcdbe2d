"""CPU cost of serving the Responses API through a provider's chat translator.

Run from the repository root:

    python3 bench/responses.py

The same Anthropic answer (a 200-delta text block and a tool call, as SSE bytes in 512-byte
chunks; and as a whole `message` body) translated three ways, best of 15 interleaved rounds, µs per answer:
to OpenAI chat chunks (the chat translator alone), to Responses events (the chat translator,
then `ChatStreamToResponses`), and to Anthropic events again (the Anthropic-over-chat path the
messages client API takes for non-Anthropic providers, for comparison). In one run, so the
ratios hold on a shared machine.
"""
from __future__ import annotations

import json
import time
import timeit
from collections.abc import Callable

from tollway.core.config import Provider
from tollway.core.providers.base import CallContext
from tollway.core.providers.chained import ChainedStream
from tollway.core.providers.chat.anthropic import OpenAIToAnthropic
from tollway.core.providers.messages.translate import ChatStreamToAnthropic
from tollway.core.providers.responses.anthropic import ResponsesToAnthropic
from tollway.core.request import parse_head

PROVIDER = Provider(name="claude", schema="anthropic", base_url="https://api.anthropic.com", api_key="sk-ant")
DELTAS = 200
ROUNDS = 15


def sse(kind: str, payload: dict[str, object]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(payload)}\n\n".encode()


def anthropic_stream() -> bytes:
    usage = {"input_tokens": 500, "output_tokens": 1, "cache_read_input_tokens": 400}
    start = {"id": "msg_b", "type": "message", "role": "assistant", "content": [], "model": "claude-sonnet-4-5",
             "stop_reason": None, "stop_sequence": None, "usage": usage}
    events = [sse("message_start", {"type": "message_start", "message": start}),
              sse("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})]
    events += [sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                           "delta": {"type": "text_delta", "text": f" word{i}"}}) for i in range(DELTAS)]
    events += [sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
               sse("content_block_start", {"type": "content_block_start", "index": 1, "content_block": {
                   "type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}}),
               sse("content_block_delta", {"type": "content_block_delta", "index": 1,
                                           "delta": {"type": "input_json_delta", "partial_json": '{"city": "Paris"}'}}),
               sse("content_block_stop", {"type": "content_block_stop", "index": 1}),
               sse("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 210}}),
               sse("message_stop", {"type": "message_stop"})]
    return b"".join(events)


def message_body() -> bytes:
    text = "".join(f" word{i}" for i in range(DELTAS))
    return json.dumps({"id": "msg_b", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
                       "content": [{"type": "text", "text": text},
                                   {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}],
                       "stop_reason": "tool_use", "usage": {"input_tokens": 500, "output_tokens": 210}}).encode()


def ctx(api: str, body: dict[str, object]) -> CallContext:
    raw = json.dumps({"model": "claude", "stream": True, **body}).encode()
    return CallContext(api, raw, parse_head(raw), "claude-sonnet-4-5", PROVIDER, 1.7e9)


def per_call_us(fn: Callable[[], object], number: int = 200, repeat: int = 7) -> float:
    # CPU time of this process: other helpers share the 2 cores, and wall time counts their turns too
    return min(timeit.Timer(fn, timer=time.process_time).repeat(repeat=repeat, number=number)) / number * 1e6


def main() -> None:
    wire, body = anthropic_stream(), message_body()
    chunks = [wire[i:i + 512] for i in range(0, len(wire), 512)]
    chat_ctx = ctx("chat", {"messages": [{"role": "user", "content": "hi"}], "stream_options": {"include_usage": True}})
    resp_ctx = ctx("responses", {"input": "hi"})
    chat, responses = OpenAIToAnthropic(), ResponsesToAnthropic()

    def run(make: Callable[[], object]) -> Callable[[], None]:
        def go() -> None:
            t = make()
            for c in chunks:
                t.feed(c)  # type: ignore[attr-defined]
            t.flush()  # type: ignore[attr-defined]
        return go

    cases = {
        "stream -> chat chunks (chat translator)": run(lambda: chat.stream(chat_ctx)),
        "stream -> Responses events": run(lambda: responses.stream(resp_ctx)),
        "stream -> Anthropic events over chat": run(lambda: ChainedStream(chat.stream(chat_ctx),
                                                                           ChatStreamToAnthropic("claude-sonnet-4-5"))),
        "body -> chat.completion": lambda: chat.response(chat_ctx, 200, body),
        "body -> response object": lambda: responses.response(resp_ctx, 200, body),
    }
    print(f"one Anthropic answer: {DELTAS} text deltas + a tool call ({len(wire)} bytes of SSE, {len(chunks)} chunks)")
    best = dict.fromkeys(cases, float("inf"))
    for _ in range(ROUNDS):  # cases interleaved, best of each: a busy neighbour hits them alike
        for name, fn in cases.items():
            best[name] = min(best[name], per_call_us(fn, repeat=1))
    base = best["stream -> chat chunks (chat translator)"]
    for name, us in best.items():
        ratio = f"  ({us / base:.2f}x the chat stream)" if name.startswith("stream") else ""
        print(f"{name:42s} {us:8.1f} µs{ratio}")


if __name__ == "__main__":
    main()
