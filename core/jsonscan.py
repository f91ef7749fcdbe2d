"""Nesting-depth guard for JSON request bodies (pure-Python twin of `ext/_jsonscan.pyx`).

A body nested thousands of levels deep costs the decoder recursion and memory before any
schema check can reject it, so the gateway refuses it first with this linear scan. The scan
does not validate JSON (the decoder does that next); it only tracks bracket depth outside
strings. Rules, identical in both twins:

- ``[`` and ``{`` open a level, ``]`` and ``}`` close one (unbalanced closers may drive the
  count below zero; malformed JSON is rejected by the decoder anyway);
- a ``"`` starts a string that ends at the next unescaped ``"``; a backslash escapes the
  next byte; an unterminated string runs to the end of the body.
"""
from __future__ import annotations

import re

__all__ = ["max_depth_exceeded"]

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
