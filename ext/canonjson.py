"""A JSON object request body as canonical JSON: the response cache's key material (pure-Python
twin of `ext/_canonjson.pyx`).

Canonical means what `msgspec.json.Encoder(order="sorted")` writes for the decoded body: object
keys sorted (by code point) at every level, no whitespace, strings and numbers as msgspec
re-encodes them, the last of repeated keys kept. The cache key has been that since the cache
began, so the compiled kernel must give these bytes exactly; it writes them while scanning the
body once, without building the dict, and hands any body it cannot canonicalise with certainty
(exponents, repeated keys, long numbers, ...) to this twin. Here the fastest pure-Python way is
msgspec itself: decode, drop the excluded names, encode sorted.
"""
from __future__ import annotations

import msgspec

__all__ = ["canonical_object"]

_decode = msgspec.json.decode
_encode_sorted = msgspec.json.Encoder(order="sorted").encode


def canonical_object(body: bytes, excluded: frozenset[str]) -> tuple[bytes, bool, bool] | None:
    """(the canonical JSON of the object `body` without its top-level `excluded` members,
    whether its top-level `temperature` is a number equal to 0, whether its top-level `seed` is
    present and not null), or None if `body` is not a JSON object."""
    try:
        data = _decode(body)
    except msgspec.DecodeError:
        return None
    if not isinstance(data, dict):
        return None
    if not excluded.isdisjoint(data):  # (most bodies have none of them: no pop per name)
        for name in excluded:
            data.pop(name, None)
    temperature = data.get("temperature")
    zero = isinstance(temperature, (int, float)) and not isinstance(temperature, bool) and temperature == 0
    return _encode_sorted(data), zero, data.get("seed") is not None
