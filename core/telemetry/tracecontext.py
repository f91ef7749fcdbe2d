"""W3C Trace Context (`traceparent`) and the sampling decision, sans-IO.

`traceparent` is `version-traceid-parentid-flags`, lower-case hex: `00-<32>-<16>-<2>`. A value
that does not parse, has an all-zero id, or has version `ff` is ignored as if it were absent
(the gateway starts a new trace; a bad header is never the client's error). A version above
00 may carry more fields after the four it shares with 00; those are ignored, as the spec asks.

Sampling is parent-based: a valid incoming traceparent's sampled flag decides; a new trace is
sampled when its id's low 64 bits fall under `ratio` of their range (the OTel TraceIdRatioBased
rule), so every tier with the same ratio makes the same decision for the same trace.
"""
from __future__ import annotations

from random import getrandbits
from typing import NamedTuple

_HEX = frozenset("0123456789abcdef")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
_LOW_64 = 1 << 64
MAX_TRACESTATE = 512  # the W3C limit; a longer value is dropped, not cut


class Parent(NamedTuple):
    """The caller's span, from a valid traceparent."""

    trace_id: str
    span_id: str
    sampled: bool


def parse_traceparent(value: str | None) -> Parent | None:
    """The parent named by a `traceparent` header value, or None if it is absent or invalid."""
    if not value or len(value) < 55:
        return None
    version, trace_id, span_id, flags = value[:2], value[3:35], value[36:52], value[53:55]
    if value[2] != "-" or value[35] != "-" or value[52] != "-":
        return None
    if not _HEX.issuperset(value[:2] + trace_id + span_id + flags) or version == "ff":
        return None
    if len(value) > 55 and (version == "00" or value[55] != "-"):
        return None  # version 00 is exactly 55 characters; later ones extend with "-..."
    if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    return Parent(trace_id, span_id, bool(int(flags, 16) & 1))


def new_trace_id() -> str:
    """A random, non-zero trace id (32 hex digits).

    Ids must be unique, not secret, so they come from `random`'s shared generator (~0.25 µs)
    rather than os.urandom (a system call, ~0.45 µs; three per request add up). Python
    reseeds that generator in every forked process, so granian's workers never repeat each
    other's ids."""
    return f"{getrandbits(128) or 1:032x}"


def new_span_id() -> str:
    """A random, non-zero span id (16 hex digits); see new_trace_id."""
    return f"{getrandbits(64) or 1:016x}"


def format_traceparent(trace_id: str, span_id: str, sampled: bool) -> str:
    """The version-00 traceparent naming span `span_id` of trace `trace_id`."""
    return f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}"


def clean_tracestate(value: str | None) -> str:
    """The `tracestate` to pass on unchanged, or "" when it is absent, too long or not plain
    printable ASCII (it is relayed as a header, so it must not be able to break one)."""
    if not value or len(value) > MAX_TRACESTATE or not (value.isascii() and value.isprintable()):
        return ""
    return value


def sampled(trace_id: str, ratio: float, parent: Parent | None) -> bool:
    """Whether to record the trace: the parent's flag when there is one, else the ratio rule."""
    if parent is not None:
        return parent.sampled
    if ratio >= 1.0:
        return True
    return int(trace_id[16:], 16) < ratio * _LOW_64
