"""Linear scans of JSON request bodies (pure-Python twin of `ext/_jsonscan.pyx`).

`max_depth_exceeded`: a body nested thousands of levels deep costs the decoder recursion and
memory before any schema check can reject it, so the gateway refuses it first.

`first_duplicate_key`: JSON leaves a repeated key to the parser; msgspec keeps the last one,
other parsers the first. If the gateway authorizes the last `model` and the upstream serves
the first, a key can reach a model it may not use, so the gateway refuses a body that repeats
a field it reads.

Neither scan validates JSON (the decoder does that); they track bracket depth outside
strings. Rules, identical in both twins:

- ``[`` and ``{`` open a level, ``]`` and ``}`` close one (unbalanced closers may drive the
  count below zero; malformed JSON is rejected by the decoder anyway);
- a ``"`` starts a string that ends at the next unescaped ``"``; a backslash escapes the
  next byte; an unterminated string runs to the end of the body;
- a key is a string at depth 1 whose next byte that is not JSON whitespace is ``:``; it
  spells a name after each ``\\u00XX`` escape (XX below 0x80) is read as the byte XX, and no
  name if it holds any other escape (no other escape can produce an ASCII letter or ``_``).
"""
from __future__ import annotations

import re

__all__ = ["first_duplicate_key", "first_needle", "max_depth_exceeded"]

# A whole string (possibly unterminated), or one bracket. Strings are skipped as one match.
_TOKEN = re.compile(rb'"(?:[^"\\]++|\\.)*+"?|[\[\]{}]', re.DOTALL)
_OPENERS = frozenset(b"[{")


def max_depth_exceeded(body: bytes, limit: int) -> bool:
    """True if `body` nests arrays/objects deeper than `limit` outside JSON strings."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return False  # not enough openers to get that deep, whatever the strings hold
    depth = 0
    for match in _TOKEN.finditer(body):
        first = body[match.start()]
        if first in _OPENERS:
            depth += 1
            if depth > limit:
                return True
        elif first != 0x22:  # a closer; strings ('"') do not change depth
            depth -= 1
    return False


# One string with what follows it (a closing quote? whitespace then a colon?), or one bracket.
_MEMBER = re.compile(rb'"((?:[^"\\]++|\\.)*+)("?)[ \t\n\r]*+(:?)|[\[\]{}]', re.DOTALL)
_ASCII_ESCAPED = re.compile(rb"(?:[^\\]|\\u00[0-7][0-9a-fA-F])*+")
_U00 = re.compile(rb"\\u00([0-7][0-9a-fA-F])")
_MAX_NAMES = 64  # the compiled twin keeps one bit per name


def first_duplicate_key(body: bytes, names: tuple[bytes, ...]) -> int:
    """The index in `names` of the first name met a second time as a key of the top-level
    object, scanning `body` in order; -1 if none. `names` are plain ASCII (no quote, no
    backslash), at most 64. Raises TypeError, ValueError."""
    _check_names(names)
    return _first_repeat(body, names) if _may_repeat(body, names) else -1


def _first_repeat(body: bytes, names: tuple[bytes, ...]) -> int:
    """first_duplicate_key's full scan: one regex match per string or bracket."""
    index: dict[bytes, int] = {}
    for j, name in enumerate(names):
        index.setdefault(name, j)  # the first of equal names, as the compiled twin's loop finds
    seen: set[int] = set()
    depth = 0
    for match in _MEMBER.finditer(body):
        first = body[match.start()]
        if first in _OPENERS:
            depth += 1
        elif first != 0x22:
            depth -= 1
        elif depth == 1 and match[2] and match[3]:
            spelled = _spelled(match[1])
            j = index.get(spelled, -1) if spelled is not None else -1
            if j in seen:
                return j
            if j >= 0:
                seen.add(j)
    return -1


def _check_names(names: tuple[bytes, ...]) -> None:
    if type(names) is not tuple:
        raise TypeError(f"names must be a tuple, got {type(names).__name__}")
    if len(names) > _MAX_NAMES:
        raise ValueError(f"at most {_MAX_NAMES} names, got {len(names)}")
    for name in names:
        if type(name) is not bytes:
            raise TypeError(f"names must be bytes, got {type(name).__name__}")


def _may_repeat(body: bytes, names: tuple[bytes, ...]) -> bool:
    """False only if no name can be a key twice: each appears quoted at most once and no
    `\\u00` escape could spell one. Never false when the full scan would find a repeat."""
    if b"\\u00" in body:
        return True
    return any(body.count(b'"' + name + b'"') > 1 for name in names)


def _spelled(raw: bytes) -> bytes | None:
    """The name the raw key content spells, or None if an escape rules out every name."""
    if b"\\" not in raw:
        return raw
    if _ASCII_ESCAPED.fullmatch(raw) is None:
        return None
    return _U00.sub(lambda m: bytes((int(m[1], 16),)), raw)


def first_needle(data: bytes, needles: tuple[bytes, ...]) -> int:
    """Index of the first of `needles` (bytes) found anywhere in `data`, or -1."""
    for i, needle in enumerate(needles):
        if type(needle) is not bytes:
            raise TypeError("needles must be bytes")
        if needle in data:
            return i
    return -1
