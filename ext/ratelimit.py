"""OpenAI's rate-limit headers: what a limited or admitted response tells the client.

Pure twin of `ext/_ratelimit.pyx`: the x-ratelimit-* headers go out on every limited
request, so building them is hot-path work and the compiled twin does the same in C.
Both twins derive every duration from whole milliseconds with the same float operations
(``math.ceil`` below a second, ``round`` above, which is C's ``rint``), so they agree
character for character (the differential test checks).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["go_duration", "ratelimit_headers"]

# One header bucket of a plan, derived once per plan (tollway.core.limits.policy.Plan.header_specs):
# (index into the plan's levels, the constant limit header, remaining name, reset name,
#  capacity, refill per second)
HeaderSpec = tuple[int, tuple[str, str], str, str, float, float]


def ratelimit_headers(specs: Sequence[HeaderSpec], levels: Sequence[float]) -> list[tuple[str, str]]:
    """x-ratelimit-{limit,remaining,reset}-{requests,tokens} for the header buckets, from
    their levels after the reservation: remaining is the whole tokens left (0 in debt), reset
    the time until the bucket is full again."""
    out: list[Any] = []
    for index, limit_header, remaining_name, reset_name, capacity, refill in specs:
        level = levels[index]
        remaining = str(int(level)) if level > 0.0 else "0"
        if level >= capacity:
            reset = "0s"
        else:  # (a bucket with no refill is never full again: the compiled twin gets inf there)
            reset = go_duration((capacity - level) / refill) if refill > 0.0 else "never"
        out += (limit_header, (remaining_name, remaining), (reset_name, reset))
    return out


def go_duration(seconds: float) -> str:
    """A duration as OpenAI writes it (Go's format): `20ms`, `1s`, `17.28s`, `6m0s`, `1h2m3s`.

    Below a second it is rounded up to the millisecond (a client told `0s` would retry too
    early); above, to the nearest millisecond."""
    if math.isinf(seconds):
        return "never"
    if seconds < 1.0:
        ms = math.ceil(seconds * 1000.0)
        return f"{ms}ms" if ms > 0 else "0s"
    return _go_ms(round(seconds * 1000.0))


def _go_ms(ms: int) -> str:
    """Whole milliseconds, at least a second, in Go's format."""
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs = str(ms // 1000)
    if ms % 1000:
        secs += "." + f"{ms % 1000:03d}".rstrip("0")
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"
