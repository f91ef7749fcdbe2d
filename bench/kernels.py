"""Microbenchmarks of the hot-path kernels: compiled (ext/) vs pure twin (core/), as ratios.

Run from the repository root after building the extensions:

    python setup.py build_ext --inplace && python bench/kernels.py

Each figure is the best of several repeats (the least disturbed by other load on a shared
machine), in microseconds per operation. Also compares request-head decoding: a msgspec
Struct (what core/request.py does) against orjson.loads and json.loads of the whole body.
"""
from __future__ import annotations

import importlib
import json
import sys
import time
from collections.abc import Callable

import msgspec  # noqa: E402
import orjson  # noqa: E402

from tollway.ext import KERNELS  # noqa: E402

REPEATS = 7
TARGET_SECONDS = 0.2  # per repeat


def best_us(fn: Callable[[], object]) -> float:
    """Best time of one call of `fn`, in microseconds."""
    loops = 1
    while True:  # calibrate: enough loops for ~TARGET_SECONDS
        t = time.perf_counter()
        for _ in range(loops):
            fn()
        elapsed = time.perf_counter() - t
        if elapsed > TARGET_SECONDS / 4 or loops >= 1 << 22:
            break
        loops *= 2
    loops = max(1, int(loops * TARGET_SECONDS / max(elapsed, 1e-9)))
    best = float("inf")
    for _ in range(REPEATS):
        t = time.perf_counter()
        for _ in range(loops):
            fn()
        best = min(best, (time.perf_counter() - t) / loops)
    return best * 1e6


# --- inputs ---------------------------------------------------------------------------------


def chat_stream() -> bytes:
    """A realistic 24-event gpt-4o stream with include_usage on (usage:null in each chunk)."""
    head = {"id": "chatcmpl-AbC123xyz", "object": "chat.completion.chunk", "created": 1730000000,
            "model": "gpt-4o-2024-08-06", "system_fingerprint": "fp_6b68a8204b"}
    words = ["Sure", "!", " Here", " is", " a", " short", " answer", " to", " your", " question",
             ":", " the", " gateway", " relays", " every", " chunk", " as", " it", " arrives", "."]
    events = [dict(head, choices=[{"index": 0, "delta": {"role": "assistant", "content": "", "refusal": None},
                                   "logprobs": None, "finish_reason": None}], usage=None)]
    events += [dict(head, choices=[{"index": 0, "delta": {"content": w}, "logprobs": None, "finish_reason": None}],
                    usage=None) for w in words]
    events.append(dict(head, choices=[{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}], usage=None))
    events.append(dict(head, choices=[], usage={
        "prompt_tokens": 25, "completion_tokens": 20, "total_tokens": 45,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                      "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}))
    body = b"".join(b"data: " + json.dumps(e, separators=(",", ":")).encode() + b"\n\n" for e in events)
    body += b"data: [DONE]\n\n"
    assert body.count(b"\n\n") == 24
    return body


def chunks_of(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def chat_body(size: int = 2048) -> bytes:
    """A chat request of about `size` bytes, as an SDK sends it."""
    messages = [{"role": "system", "content": "You are a helpful assistant. Answer briefly."}]
    while len(json.dumps(messages)) < size - 200:
        messages.append({"role": "user", "content": "Explain token buckets and why continuous refill avoids bursts."})
        messages.append({"role": "assistant", "content": "A bucket refills at a steady rate up to its capacity; "
                                                         "requests take tokens and wait when it is empty."})
    doc = {"model": "gpt-4o-mini", "messages": messages, "stream": True, "max_tokens": 256,
           "temperature": 0.2, "stream_options": {"include_usage": True}}
    return json.dumps(doc).encode()


# --- cases ----------------------------------------------------------------------------------


def sse_cases(mod) -> dict[str, Callable[[], object]]:
    chunks = chunks_of(chat_stream(), 1400)

    def framer() -> None:
        f = mod.SSEFramer()
        for c in chunks:
            f.feed(c)
        f.flush()

    def relay() -> None:
        r = mod.OpenAIStreamRelay(True)
        for c in chunks:
            r.feed(c)
        r.flush()
        assert r.usage is not None and r.done

    def relay_asked() -> None:
        r = mod.OpenAIStreamRelay(False)
        for c in chunks:
            r.feed(c)
        r.flush()

    return {"SSEFramer, 24-event stream in 1.4 KB chunks": framer,
            "OpenAIStreamRelay, same stream, client did not ask for usage (chunk dropped, 22 usage:null cut)": relay,
            "OpenAIStreamRelay, same stream, client asked for usage (every byte relayed)": relay_asked}


def bucket_cases(mod) -> dict[str, Callable[[], object]]:
    table = mod.BucketTable()
    slots = [table.add(1e9, 1e6), table.add(1e12, 1e9), table.add(1e6, 0.0)]  # requests, tokens, concurrency
    amounts = [1.0, 300.0, 1.0]
    clock = [0.0]

    def take_give() -> None:
        clock[0] += 1e-6
        now = clock[0]
        table.try_take(slots, amounts, now)
        table.give(slots[2], 1.0, now)

    gate = mod.Gate(table, slots[:2], [0, 3])  # a plan with a request and a total-token limit
    demand, used = (1.0, 250.0, 64.0, 314.0, 0.0, 1.0), (1.0, 30.0, 20.0, 50.0, 0.0, 0.0)

    def decide_settle() -> None:
        clock[0] += 1e-6
        gate.reserve(demand, clock[0])
        gate.settle(demand, used, clock[0])

    return {"BucketTable try_take(3 slots) + give": take_give,
            "Gate reserve (2 buckets, levels back) + settle": decide_settle}


def jsonscan_cases(mod) -> dict[str, Callable[[], object]]:
    body = chat_body()
    fields = (b"model", b"stream", b"max_tokens", b"max_completion_tokens", b"max_output_tokens",
              b"stream_options", b"n")  # tollway.core.request's RequestHead fields
    return {f"max_depth_exceeded, {len(body)} B chat body, limit 64": lambda: mod.max_depth_exceeded(body, 64),
            "max_depth_exceeded, same body, limit 2 (full scan)": lambda: mod.max_depth_exceeded(body, 2),
            "first_duplicate_key, same body, 7 names (none repeated)": lambda: mod.first_duplicate_key(body, fields)}


def ratelimit_cases(mod) -> dict[str, Callable[[], object]]:
    specs = ((0, ("x-ratelimit-limit-requests", "600"), "x-ratelimit-remaining-requests",
              "x-ratelimit-reset-requests", 600.0, 10.0),
             (1, ("x-ratelimit-limit-tokens", "100000"), "x-ratelimit-remaining-tokens",
              "x-ratelimit-reset-tokens", 100000.0, 100000 / 60))
    busy = (571.0, 61234.5)  # 2.9 s and 23.3 s to full: the seconds format
    fresh = (599.0, 99686.0)  # a few requests below full: the milliseconds format
    return {"ratelimit_headers, 6 headers, reset in ms": lambda: mod.ratelimit_headers(specs, fresh),
            "ratelimit_headers, 6 headers, reset in seconds": lambda: mod.ratelimit_headers(specs, busy)}


def piiscan_cases(mod) -> dict[str, Callable[[], object]]:
    prose = ("Please summarise the attached quarterly report for the board. Revenue grew 12% to $4.2 million in "
             "Q3 2024 (version 2.3.1); the support team closed 1,284 tickets. ") * 14
    prose = prose[:2048]
    pii = ("Contact me at jane.doe@example.com or +44 20 7946 0958. My card is 4111 1111 1111 1111 and the refund "
           "goes to GB82 WEST 1234 5698 7654 32. " + prose)[:2048]
    return {"candidate_starts, 2 KB prose, all shapes": lambda: mod.candidate_starts(prose, 0, mod.SHAPES),
            "candidate_starts, 2 KB with 4 PII values, all shapes": lambda: mod.candidate_starts(pii, 0, mod.SHAPES)}


def rollup_cases(mod) -> dict[str, Callable[[], object]]:
    """The ledger's hourly sums of a 200-record batch (its default), rows as the SQLite writer
    hands them (tollway.core.ledger.rollup: 25 columns, 5 owner and 5 count columns)."""
    spec = mod.Spec(ts=0, seconds=3600.0, owner=(2, 3, 4, 5, 6), status=9, error=10, cost=17,
                    counts=(12, 13, 14, 15, 16))
    start = time.time()

    def row(i: int, key: str) -> tuple[object, ...]:
        return (start + i * 1e-4, f"req_{i:024x}", key, "k_" + key, "team-a", "gpt-4o-mini", "up0",
                "gpt-4o-mini", "chat", 200 if i % 50 else 500, None, False, 27, 0, 0, 20, 0,
                0.0000161, 12.5, None, 1, False, (), None, None)

    one = [row(i, "bench") for i in range(200)]
    five = [row(i, f"key-{i % 5}") for i in range(200)]
    return {"bucket_sums, 200 rows of one owner": lambda: mod.bucket_sums(one, spec),
            "bucket_sums, 200 rows of 5 owners interleaved": lambda: mod.bucket_sums(five, spec)}


class StreamOptions(msgspec.Struct):
    include_usage: bool | None = None


class RequestHead(msgspec.Struct):
    model: str
    stream: bool = False
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    stream_options: StreamOptions | None = None


def head_cases() -> dict[str, Callable[[], object]]:
    body = chat_body()
    decode = msgspec.json.Decoder(RequestHead).decode
    return {"msgspec Struct (model, stream, max_tokens, stream_options)": lambda: decode(body),
            "orjson.loads (whole body)": lambda: orjson.loads(body),
            "json.loads (whole body)": lambda: json.loads(body)}


# --- report ---------------------------------------------------------------------------------


def compare(kernel: str, cases: Callable) -> list[tuple[str, float, float]]:
    pure_name, compiled_name = KERNELS[kernel]
    compiled, pure = importlib.import_module(compiled_name), importlib.import_module(pure_name)
    pure_cases, compiled_cases = cases(pure), cases(compiled)
    return [(name, best_us(pure_cases[name]), best_us(compiled_cases[name])) for name in pure_cases]


def main() -> None:
    try:
        rows = (compare("sse", sse_cases) + compare("buckets", bucket_cases) + compare("jsonscan", jsonscan_cases)
                + compare("ratelimit", ratelimit_cases) + compare("piiscan", piiscan_cases)
                + compare("rollup", rollup_cases))
    except ImportError as exc:
        sys.exit(f"compiled kernels not built ({exc}); run: python setup.py build_ext --inplace")
    print(f"{'kernel benchmark':58} {'pure us':>10} {'compiled us':>12} {'speedup':>8}")
    for name, pure_us, compiled_us in rows:
        print(f"{name:58} {pure_us:10.2f} {compiled_us:12.2f} {pure_us / compiled_us:7.1f}x")
    print()
    heads = {name: best_us(fn) for name, fn in head_cases().items()}
    base = heads["msgspec Struct (model, stream, max_tokens, stream_options)"]
    print(f"{'request head decoding, ' + str(len(chat_body())) + ' B body':58} {'us':>10} {'vs msgspec':>12}")
    for name, us in heads.items():
        print(f"{name:58} {us:10.2f} {us / base:11.1f}x")


if __name__ == "__main__":
    main()
