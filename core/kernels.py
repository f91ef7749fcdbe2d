"""The hot-path kernels the gateway uses: compiled ones when built, else their pure twins.

Set ``TOLLWAY_NO_EXTENSIONS=1`` (any non-empty value) to force the pure twins. `ACCELERATED`
is True only when every compiled kernel imported; `ACTIVE` says which one each name is.
Each compiled module has exactly its twin's API, so callers never care which they got.
"""
from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Sequence
from types import ModuleType

from tollway.ext import KERNELS
from tollway.ext.ratelimit import HeaderSpec

from tollway.ext import buckets as _pure_buckets
from tollway.ext import jsonscan as _pure_jsonscan
from tollway.ext import ratelimit as _pure_ratelimit
from tollway.ext import sse as _pure_sse

__all__ = [
    "ACCELERATED",
    "ACTIVE",
    "BucketTable",
    "Gate",
    "OpenAIStreamRelay",
    "SSEError",
    "SSEEvent",
    "SSEFramer",
    "Usage",
    "first_duplicate_key",
    "first_needle",
    "max_depth_exceeded",
    "ratelimit_headers",
]


def _compiled(name: str) -> ModuleType | None:
    """The compiled module of kernel `name`, or None if extensions are off or it is not built."""
    if os.environ.get("TOLLWAY_NO_EXTENSIONS"):
        return None
    try:
        return importlib.import_module(KERNELS[name][1])
    except ImportError:
        return None


_COMPILED: dict[str, ModuleType | None] = {name: _compiled(name) for name in KERNELS}
ACTIVE: dict[str, str] = {name: "pure" if mod is None else "compiled" for name, mod in _COMPILED.items()}
ACCELERATED: bool = all(kind == "compiled" for kind in ACTIVE.values())


def _pick(name: str, pure: ModuleType) -> ModuleType:
    return _COMPILED[name] or pure


_sse, _buckets = _pick("sse", _pure_sse), _pick("buckets", _pure_buckets)
_jsonscan, _ratelimit = _pick("jsonscan", _pure_jsonscan), _pick("ratelimit", _pure_ratelimit)

# Typed as the twin's: each compiled module has exactly its twin's API (the tests hold both to it).
SSEError = _pure_sse.SSEError  # one class for both twins
Usage = _pure_sse.Usage
SSEEvent: type[_pure_sse.SSEEvent] = _sse.SSEEvent
SSEFramer: type[_pure_sse.SSEFramer] = _sse.SSEFramer
OpenAIStreamRelay: type[_pure_sse.OpenAIStreamRelay] = _sse.OpenAIStreamRelay
BucketTable: type[_pure_buckets.BucketTable] = _buckets.BucketTable
Gate: type[_pure_buckets.Gate] = _buckets.Gate
max_depth_exceeded: Callable[[bytes, int], bool] = _jsonscan.max_depth_exceeded
first_duplicate_key: Callable[[bytes, tuple[bytes, ...]], int] = _jsonscan.first_duplicate_key
first_needle: Callable[[bytes, tuple[bytes, ...]], int] = _jsonscan.first_needle
ratelimit_headers: Callable[[Sequence[HeaderSpec], Sequence[float]], list[tuple[str, str]]] = \
    _ratelimit.ratelimit_headers
