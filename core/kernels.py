"""The hot-path kernels the gateway uses: compiled ones when built, else their pure twins.

Set ``TOLLWAY_NO_EXTENSIONS=1`` (any non-empty value) to force the pure twins. `ACCELERATED`
is True only when every compiled kernel imported; `ACTIVE` says which one each name is.
Each compiled module has exactly its twin's API, so callers never care which they got.
"""
from __future__ import annotations

import importlib
import os
from types import ModuleType

from core import buckets as _pure_buckets
from core import jsonscan as _pure_jsonscan
from core import ratelimit as _pure_ratelimit
from core import sse as _pure_sse

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
    """The compiled module `ext.<name>`, or None if extensions are off or it is not built."""
    if os.environ.get("TOLLWAY_NO_EXTENSIONS"):
        return None
    try:
        return importlib.import_module(f"ext.{name}")
    except ImportError:
        return None


_compiled_sse = _compiled("_sse")
_compiled_buckets = _compiled("_buckets")
_compiled_jsonscan = _compiled("_jsonscan")
_compiled_ratelimit = _compiled("_ratelimit")
_sse = _compiled_sse or _pure_sse
_buckets = _compiled_buckets or _pure_buckets
_jsonscan = _compiled_jsonscan or _pure_jsonscan
_ratelimit = _compiled_ratelimit or _pure_ratelimit

ACTIVE: dict[str, str] = {
    name: "compiled" if mod is not None else "pure"
    for name, mod in (("sse", _compiled_sse), ("buckets", _compiled_buckets), ("jsonscan", _compiled_jsonscan),
                      ("ratelimit", _compiled_ratelimit))
}
ACCELERATED: bool = all(kind == "compiled" for kind in ACTIVE.values())

SSEError = _pure_sse.SSEError  # one class for both twins
Usage = _pure_sse.Usage
SSEEvent = _sse.SSEEvent
SSEFramer = _sse.SSEFramer
OpenAIStreamRelay = _sse.OpenAIStreamRelay
BucketTable = _buckets.BucketTable
Gate = _buckets.Gate
max_depth_exceeded = _jsonscan.max_depth_exceeded
first_duplicate_key = _jsonscan.first_duplicate_key
first_needle = _jsonscan.first_needle
ratelimit_headers = _ratelimit.ratelimit_headers
