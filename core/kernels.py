"""The hot-path kernels the gateway uses: compiled ones when built, else their pure twins.

Set ``TOLLWAY_NO_EXTENSIONS=1`` (any non-empty value) to force the pure twins. `ACCELERATED`
is True only when every compiled kernel imported; `ACTIVE` says which one each name is.
Each compiled module has exactly its twin's API, so callers never care which they got.
"""
from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import TYPE_CHECKING

from tollway.ext import KERNELS
from tollway.ext import buckets as _pure_buckets
from tollway.ext import canonjson as _pure_canonjson
from tollway.ext import jsonscan as _pure_jsonscan
from tollway.ext import piiscan as _pure_piiscan
from tollway.ext import ratelimit as _pure_ratelimit
from tollway.ext import rollup as _pure_rollup
from tollway.ext import sqlrows as _pure_sqlrows
from tollway.ext import sse as _pure_sse

__all__ = [
    "ACCELERATED",
    "ACTIVE",
    "BucketTable",
    "Gate",
    "OpenAIStreamRelay",
    "RollupSpec",
    "RowWriter",
    "SSEError",
    "SSEEvent",
    "SSEFramer",
    "Usage",
    "bucket_sums",
    "candidate_starts",
    "canonical_object",
    "first_duplicate_key",
    "first_needle",
    "max_depth_exceeded",
    "ratelimit_headers",
    "text_bound",
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
_piiscan, _sqlrows = _pick("piiscan", _pure_piiscan), _pick("sqlrows", _pure_sqlrows)
_rollup, _canonjson = _pick("rollup", _pure_rollup), _pick("canonjson", _pure_canonjson)

SSEError = _pure_sse.SSEError  # one class for both twins
Usage = _pure_sse.Usage
RollupSpec = _pure_rollup.Spec  # (the compiled kernel takes the twin's)
# Each compiled module has exactly its twin's API (the kernel tests hold both to it), so the
# type checker is shown the twins and the running gateway gets whichever was picked.
if TYPE_CHECKING:
    from tollway.ext.buckets import BucketTable, Gate
    from tollway.ext.canonjson import canonical_object
    from tollway.ext.jsonscan import first_duplicate_key, first_needle, max_depth_exceeded
    from tollway.ext.piiscan import candidate_starts
    from tollway.ext.ratelimit import ratelimit_headers
    from tollway.ext.rollup import bucket_sums
    from tollway.ext.sqlrows import RowWriter
    from tollway.ext.sse import OpenAIStreamRelay, SSEEvent, SSEFramer, text_bound
else:
    SSEEvent, SSEFramer, OpenAIStreamRelay = _sse.SSEEvent, _sse.SSEFramer, _sse.OpenAIStreamRelay
    text_bound = _sse.text_bound
    BucketTable, Gate = _buckets.BucketTable, _buckets.Gate
    max_depth_exceeded = _jsonscan.max_depth_exceeded
    first_duplicate_key, first_needle = _jsonscan.first_duplicate_key, _jsonscan.first_needle
    ratelimit_headers = _ratelimit.ratelimit_headers
    candidate_starts = _piiscan.candidate_starts
    RowWriter = _sqlrows.RowWriter
    bucket_sums = _rollup.bucket_sums
    canonical_object = _canonjson.canonical_object
