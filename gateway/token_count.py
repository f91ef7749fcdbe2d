"""Token counting that keeps the event loop free.

Theory of operation: tiktoken's BPE costs ~30 us per KiB of text (`python3
bench/token_count.py`), and loading an encoding ~0.2 s; on the loop, a 2 MiB prompt would stall
every other request for ~60 ms. tiktoken releases the GIL while it encodes, so a worker thread
counts in parallel with the loop. A thread hop costs ~50 us, about what 1.5 KiB of counting
costs, so small texts are counted inline once their encoding is loaded, and everything else
(large texts, and the first count of each encoding, which loads it) goes to one small pool.

The pool has a fixed number of threads, so a flood of huge counts queues instead of spawning
threads; it is created on the first large count (a gateway that never counts never starts a
thread) and `shutdown()` stops it. A queued count whose awaiting task is cancelled (the drain
deadline) is dropped before it runs. (The queue is unbounded: what it holds is bounded by the
requests in flight, each at most `server.max_count_tokens_bytes` or a response's text.)

What can still delay the loop: the parts of a pool count that hold the GIL. tiktoken builds
its list of token ids (~4 ms per MiB) and msgspec decodes a count_tokens body (~2 ms per MiB)
with it held, and building an encoding holds it ~0.1 s, once per process. Under the 2 MiB
count_tokens cap that is a few ms per count (bench/token_count.py: 2 MiB, ~8 ms vs ~65 ms).

`counted_usage` is the proxy's usage for an answer without `usage`, built on the same path. An
answer is up to `server.max_upstream_body_bytes` (64 MiB) of text an upstream chose, and tiktoken's
cost grows faster than a text's length where it has no spaces (8 MiB of "x": ~7 s of CPU, ~0.5
GB), so only its first `COUNT_EXACT_MAX_CHARS` are counted exactly and the rest is charged its
UTF-8 bytes, an upper bound (`count_tokens_bounded`).
"""
from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from tollway.core.accounting.tokens import (
    COUNT_EXACT_MAX_CHARS,
    count_tokens,
    count_tokens_bounded,
    encoding_for,
    encoding_name_for_model,
    estimate_prompt_tokens,
)
from tollway.ext.usage import Usage
from tollway.gateway.lifecycle.threads import named

__all__ = ["INLINE_MAX_CHARS", "count_off_loop", "count_tokens_off_loop", "counted_usage", "encoding_ready",
           "estimated_usage", "shutdown"]

# Texts shorter than this are counted on the loop: at most ~0.5 ms of tokenizing (~30 us per
# KiB), where the thread hop (~50 us) would add 10% or more. See bench/token_count.py.
INLINE_MAX_CHARS = 16 * 1024
# Two threads: one huge count does not hold up every smaller one queued behind it; more
# would only compete with the loop (and the other workers) for cores.
POOL_THREADS = 2


class CountingPool:
    """A fixed-size thread pool for counting, started on first use."""

    def __init__(self, threads: int = POOL_THREADS) -> None:
        self._threads = threads
        self._executor: ThreadPoolExecutor | None = None
        self._loaded: set[str] = set()  # encodings already loaded: safe to count inline
        self._load_lock = threading.Lock()  # two first counts must not load one encoding twice

    def ready(self, encoding: str) -> bool:
        return encoding in self._loaded

    async def run(self, encoding: str, count: Callable[[], int]) -> int:
        """`count()` on a pool thread, once `encoding` is loaded there."""
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(self._pool(), self._with_encoding, encoding, count)
        self._loaded.add(encoding)
        return result

    def _with_encoding(self, encoding: str, count: Callable[[], int]) -> int:
        if encoding not in self._loaded:
            with self._load_lock:
                encoding_for(encoding)  # cached after the first load
        return count()

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self._threads, thread_name_prefix="tollway-count",
                                                initializer=named("tollway-count"))
        return self._executor

    def shutdown(self) -> None:
        """Stop the threads without waiting; queued counts are cancelled (their awaiters get
        CancelledError). A later count starts a new pool."""
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)


_POOL = CountingPool()


async def count_off_loop(size: int, model: str, count: Callable[[], int]) -> int:
    """`count()` (tokenizing about `size` characters with `model`'s encoding): inline when
    small and the encoding is loaded, else on the counting pool."""
    encoding = encoding_name_for_model(model)
    if size < INLINE_MAX_CHARS and _POOL.ready(encoding):
        return count()
    return await _POOL.run(encoding, count)


async def count_tokens_off_loop(text: str, model: str) -> int:
    """`tollway.core.accounting.tokens.count_tokens(text, model)`, without tokenizing a large text on the loop."""
    return await count_off_loop(len(text), model, partial(count_tokens, text, model))


async def counted_usage(prompt_body: bytes, completion_text: str, model: str) -> Usage:
    """Usage of an answer the upstream reported none for: the prompt's reservation bound
    (`estimate_prompt_tokens`, no tokenizing) and the completion counted with tiktoken, exactly
    up to COUNT_EXACT_MAX_CHARS, bounded by its bytes past that (`count_tokens_bounded`)."""
    size = min(len(completion_text), COUNT_EXACT_MAX_CHARS)
    return _usage(prompt_body, await count_off_loop(size, model, partial(count_tokens_bounded, completion_text, model)))


def estimated_usage(prompt_body: bytes, completion_text: str, model: str) -> tuple[Usage, bool]:
    """(usage, exact) as counted_usage, without awaiting or holding the loop: a short text whose
    encoding is built is counted inline (exact), anything else estimated at four characters a
    token (for callers that cannot await, or must charge before the count is done)."""
    exact = len(completion_text) < INLINE_MAX_CHARS and encoding_ready(model)
    completion = count_tokens(completion_text, model) if exact else (len(completion_text) + 3) // 4
    return _usage(prompt_body, completion), exact


def _usage(prompt_body: bytes, completion: int) -> Usage:
    prompt = estimate_prompt_tokens(prompt_body)
    return Usage(prompt, completion, prompt + completion)


def encoding_ready(model: str) -> bool:
    """True if `model`'s encoding is built, so a short count inline cannot hold the loop."""
    return _POOL.ready(encoding_name_for_model(model))


def shutdown() -> None:
    """Stop the counting threads (the gateway's shutdown calls this)."""
    _POOL.shutdown()
