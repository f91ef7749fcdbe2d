"""Prices per model (USD per million tokens) and the cost of one response."""
from __future__ import annotations

import msgspec


class Price(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    input: float = 0.0
    output: float = 0.0
    cached_input: float | None = None  # defaults to `input` when unset
    cache_write: float | None = None   # defaults to `input` when unset
