"""What tokenizing costs the event loop, and where gateway/token_count.py draws its line.

Run from the repository root:

    python3 bench/token_count.py

Prints (best of several repeats, so the least disturbed by other load on a shared machine):
1. tiktoken's cost per text size (o200k_base, varied English/Unicode/JSON-ish text);
2. the cost of one thread hop (`run_in_executor` of a no-op under uvloop);
3. the event loop's longest stall while one 2 MiB text is counted, inline vs off the loop
   (a 1 ms ticker measures how late it runs).
The inline threshold (INLINE_MAX_CHARS) is where counting costs ~10x a hop, so the hop is
noise above it and the loop never stalls for more than ~0.5 ms below it.
"""
from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import uvloop  # noqa: E402

from tollway.core.accounting.tokens import count_tokens, encoding_for  # noqa: E402
from tollway.gateway import token_count  # noqa: E402

REPEATS = 5
MODEL = "gpt-4o"
_WORDS = ["alpha", "the", "quick", "brown", "fox", "jumps", "über", "naïve", "数据", "模型", "12345",
          '{"k":', "x_y", "\n", "tokenizer", "gateway", "latency"]


def varied_text(chars: int, seed: int = 1) -> str:
    rng = random.Random(seed)
    words = []
    size = 0
    while size < chars:
        word = rng.choice(_WORDS)
        words.append(word)
        size += len(word) + 1
    return " ".join(words)[:chars]


def best(fn: Callable[[], object], loops: int) -> float:
    """Best seconds per call of `fn` over REPEATS runs of `loops` calls."""
    times = []
    for _ in range(REPEATS):
        t = time.perf_counter()
        for _ in range(loops):
            fn()
        times.append((time.perf_counter() - t) / loops)
    return min(times)


def per_size() -> None:
    print("text size      count     per KiB")
    for chars in (1024, 4096, 16 * 1024, 32 * 1024, 64 * 1024, 256 * 1024, 2 * 1024 * 1024):
        text = varied_text(chars)
        seconds = best(lambda: count_tokens(text, MODEL), max(1, 1_000_000 // chars))
        print(f"{chars // 1024:>6} KiB {seconds * 1e6:>10.0f} us {seconds * 1e6 / (chars / 1024):>8.1f} us")


async def hop_cost() -> float:
    loop = asyncio.get_running_loop()
    pool = ThreadPoolExecutor(1)
    await loop.run_in_executor(pool, int)
    times = []
    for _ in range(REPEATS):
        t = time.perf_counter()
        for _ in range(2000):
            await loop.run_in_executor(pool, int)
        times.append((time.perf_counter() - t) / 2000)
    pool.shutdown()
    return min(times)


async def worst_stall(count: Callable[[], object]) -> float:
    """The longest a 1 ms ticker was late while `count()` ran."""
    worst = 0.0
    done = False

    async def ticker() -> None:
        nonlocal worst
        while not done:
            t = time.perf_counter()
            await asyncio.sleep(0.001)
            worst = max(worst, time.perf_counter() - t - 0.001)

    tick = asyncio.ensure_future(ticker())
    await asyncio.sleep(0.01)
    result = count()
    if asyncio.iscoroutine(result):
        await result
    done = True
    await tick
    return worst


async def main() -> None:
    encoding_for("o200k_base")
    per_size()
    print(f"thread hop: {await hop_cost() * 1e6:.0f} us")
    text = varied_text(2 * 1024 * 1024, seed=2)
    inline = await worst_stall(lambda: count_tokens(text, MODEL))
    off = await worst_stall(lambda: token_count.count_tokens_off_loop(text, MODEL))
    print(f"2 MiB count, loop's worst stall: inline {inline * 1e3:.1f} ms, off the loop {off * 1e3:.1f} ms")
    print(f"INLINE_MAX_CHARS = {token_count.INLINE_MAX_CHARS}")
    token_count.shutdown()


if __name__ == "__main__":
    uvloop.run(main())
