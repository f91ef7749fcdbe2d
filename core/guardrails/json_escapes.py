"""Streamed JSON text (tool-call arguments) with its `\\u` escapes decoded, for the detectors.

A streamed tool call's arguments arrive as pieces of a JSON text, and cannot be decoded as JSON
until they end. The detectors scan them as text, so a value written with escapes
(`jane\\u0040example.com`, `\\u0034111 1111 ...`) would pass unseen, where a non-stream answer's
arguments are decoded first. `EscapeDecoder` turns each piece into the same JSON text with
every escape that can be written as its character written so: what the detectors see is the
decoded value, and what goes on to the client (masked or not) is still valid JSON that decodes
to the same value.

- `\\uXXXX` of a character allowed raw in a JSON string, and a surrogate pair, become the
  character; `\\/` becomes `/`;
- `\\u0022` and `\\u005c` become `\\"` and `\\\\`; `\\u0008`, `\\u0009`, `\\u000a`, `\\u000c`,
  `\\u000d` become `\\b`, `\\t`, `\\n`, `\\f`, `\\r` (the detectors read a one-letter escape as the
  boundary it stands for, detectors.py);
- other control characters and lone surrogates stay `\\uXXXX` (they cannot be raw in JSON; the
  detectors read such an escape as a boundary too).

An escape split across pieces is held (at most 11 characters: a high surrogate's escape and
the start of the next) until it is whole; `finish()` gives back what is held as it came. Each
piece costs time linear in its length: nothing is read twice but the held escape.
"""
from __future__ import annotations

import re

_SHORT = {0x08: "\\b", 0x09: "\\t", 0x0A: "\\n", 0x0C: "\\f", 0x0D: "\\r", 0x22: '\\"', 0x5C: "\\\\"}
_HEX4 = re.compile(r"[0-9A-Fa-f]{4}")
_HEX_PREFIX = re.compile(r"[0-9A-Fa-f]{0,3}\Z")
_LOW_PREFIX = re.compile(r"(?:\\(?:u(?:[dD](?:[c-fC-F][0-9A-Fa-f]{0,2})?)?)?)?\Z")  # a low surrogate's escape, cut short
_PAIR_LEN = 12  # `\uD83D\uDE00`


def _written(code: int) -> str | None:
    """How a BMP code point not a surrogate is written in the decoded text; None: its escape stays."""
    short = _SHORT.get(code)
    if short is not None:
        return short
    return None if code < 0x20 else chr(code)


class EscapeDecoder:
    """One streamed JSON text: `feed(piece)` returns it with its escapes decoded (above), holding
    an escape the piece cuts; `finish()` returns what is still held."""

    __slots__ = ("_held",)

    def __init__(self) -> None:
        self._held = ""

    def feed(self, piece: str) -> str:
        text = self._held + piece if self._held else piece
        self._held = ""
        if "\\" not in text:
            return text
        out: list[str] = []
        pos = 0
        n = len(text)
        i = text.find("\\")
        while i >= 0:
            out.append(text[pos:i])
            end, written = self._escape(text, i, n)
            if end < 0:  # cut by the piece's end: held for the next
                self._held = text[i:]
                return "".join(out)
            out.append(written)
            pos = end
            i = text.find("\\", pos)
        out.append(text[pos:])
        return "".join(out)

    def finish(self) -> str:
        held, self._held = self._held, ""
        return held

    @property
    def held(self) -> int:
        """Characters fed but not yet given back (an escape cut short)."""
        return len(self._held)

    @staticmethod
    def _escape(text: str, i: int, n: int) -> tuple[int, str]:
        """(end, what to write) of the escape at `i`; end -1 if the text ends before it does."""
        if i + 1 >= n:
            return -1, ""
        letter = text[i + 1]
        if letter != "u":
            return i + 2, "/" if letter == "/" else text[i:i + 2]
        hexa = _HEX4.match(text, i + 2)
        if hexa is None:  # cut short, or not an escape JSON has (then as it is: the client's JSON reader decides)
            return (-1, "") if _HEX_PREFIX.match(text, i + 2) else (i + 2, text[i:i + 2])
        code = int(hexa.group(), 16)
        if not 0xD800 <= code <= 0xDFFF:
            written = _written(code)
            return i + 6, text[i:i + 6] if written is None else written
        if code <= 0xDBFF:  # a high surrogate: a pair if a low one follows
            low = _HEX4.match(text, i + 8) if text.startswith("\\u", i + 6) else None
            if low is not None and 0xDC00 <= int(low.group(), 16) <= 0xDFFF:
                return i + _PAIR_LEN, chr(0x10000 + ((code - 0xD800) << 10) + int(low.group(), 16) - 0xDC00)
            if low is None and _LOW_PREFIX.match(text, i + 6):
                return -1, ""
        return i + 6, text[i:i + 6]  # a lone surrogate
