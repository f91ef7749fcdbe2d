"""Output guardrails on streams: scan incrementally, hold back only a tail that could still match.

`StreamScanner(detectors, action)`: `feed(text) -> Emit` per streamed delta, `finish() -> Emit`
at the end. What it emits, concatenated, equals `mask(whole, find(whole))` for `mask` (the
whole text unchanged for `log`; for `block`, the text before the first finding, and then
nothing). An Emit reports detector names and counts, never a value.

How much is held back: after each feed the scanner emits up to the leftmost position where a
candidate could still change with more text (a "pending" start), found with one tail regex
anchored at the end (a superset of every detector's unfinished shapes) and, for PEM blocks, the
unclosed BEGIN lines. Every detector's candidate at a position depends on at most a bounded
window after it (detectors.py), so the held tail never exceeds HOLD[detector]:

- phone, credit_card, us_ssn, IPv4: 62 characters (a digit-and-separator run; the longest
  candidate window is an international phone number, 53 + 2 characters of right boundary);
- ip_address (IPv6): 61 (45 characters + an embedded IPv4's dots + the boundary);
- iban: 46 (33 characters + 8 spaces + the boundary; AWS key ids fall under it too);
- email: 485 (local part 64, `@`, six 63-character labels and a 24-letter TLD, the boundary);
- secret: 4100 (a JWT of up to 4097 characters; a PEM block is capped at PEM_MAX = 4096,
  and a key without its END line is masked as far as its whole base64 lines reach in 4096).

In prose the held tail is a few characters (the last word or number): `email` holds the last
word while it could still be a local part (64 characters), `secret` only a word that starts
like a secret (a prefix of `sk-`, `gh?_`, `github_pat_`, `eyJ`, an uppercase run for AWS).
So with `email` on, an answer's first word reaches the client with the next chunk that ends
it (a space, punctuation); without it, as soon as it arrives. A finding is only
reported once it is final, so `block` never stops a stream on a prefix that more text would
have turned into a non-finding (a card number that grows into a 20-digit id).
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Collection

from tollway.core.guardrails.detectors import (
    ALL,
    CREDIT_CARD,
    EMAIL,
    IBAN,
    IP_ADDRESS,
    PEM_MAX,
    PHONE,
    SECRET,
    US_SSN,
    Finding,
    candidates,
    mask,
    pem_end,
    resolve,
)

HOLD: dict[str, int] = {
    PHONE: 62, CREDIT_CARD: 62, US_SSN: 62, IP_ADDRESS: 62, IBAN: 46, EMAIL: 485, SECRET: 4100,
}

_NUMERIC_TAIL = r"[+(]?[0-9][0-9 ().,/:\-]{0,60}\Z|[+(]\Z"


def _growing(literal: str, body: str) -> str:
    """Every non-empty prefix of `literal`, and `literal` followed by `body` (a regex)."""
    out = body
    for ch in reversed(literal[1:]):
        out = "(?:%s%s)?" % (re.escape(ch), out)
    return re.escape(literal[0]) + out


# A word can still become a secret only if it starts like one (the shapes in detectors.py, each
# body up to its longest): holding every word up to 4100 characters would hold a long word that
# can never be one (a hash, a path, tokens without spaces) until its end.
_SECRET_WORD = r"(?<![A-Za-z0-9_.%%+\-])(?:%s)\Z" % "|".join(
    [_growing("sk-", r"[A-Za-z0-9_\-]{0,250}"), _growing("eyJ", r"[A-Za-z0-9_.\-]{0,4097}"),
     _growing("github_pat_", r"[A-Za-z0-9_]{0,244}")]
    + [_growing("gh%s_" % kind, r"[A-Za-z0-9]{0,251}") for kind in "pousr"])
_TAILS: dict[str, tuple[str, ...]] = {
    PHONE: (_NUMERIC_TAIL,),
    CREDIT_CARD: (_NUMERIC_TAIL,),
    US_SSN: (_NUMERIC_TAIL,),
    IP_ADDRESS: (_NUMERIC_TAIL, r"[0-9A-Fa-f:][0-9A-Fa-f:.]{0,60}\Z"),
    IBAN: (r"[A-Z][A-Z0-9 ]{0,45}\Z",),
    EMAIL: (r"(?<![A-Za-z0-9_.%+\-])[A-Za-z0-9_.%+\-]{1,64}(?:@[A-Za-z0-9.\-]{0,420})?\Z",),
    SECRET: (
        _SECRET_WORD,
        r"[A-Z][A-Z0-9]{0,20}\Z",  # AWS key ids
        r"-{1,5}(?:B(?:E(?:G(?:I(?:N)?)?)?)?)?\Z",
    ),
}
_CONTEXT = 80  # emitted characters kept for left boundaries (an email's local part is at most 64)
_PEM_HEADER_MAX = 100

ACTIONS = ("mask", "block", "log")


@dataclasses.dataclass(frozen=True)
class Emit:
    """What to send on now, and what was found (names and counts only)."""

    text: str
    counts: dict[str, int] = dataclasses.field(default_factory=dict)
    blocked: str | None = None  # `block`: the detector of the first finding; the caller ends the stream


def hold_bound(detectors: Collection[str] = ALL) -> int:
    """The most a scanner over `detectors` ever holds back."""
    return max((HOLD[d] for d in detectors), default=0)


class StreamScanner:
    """Incremental detector scan over a stream of text deltas (sans-IO: the caller feeds it)."""

    def __init__(self, detectors: Collection[str] = ALL, action: str = "mask") -> None:
        if action not in ACTIONS:
            raise ValueError("action must be one of %s" % ", ".join(ACTIONS))
        self._detectors = tuple(d for d in ALL if d in set(detectors))
        unknown = set(detectors) - set(ALL)
        if unknown:
            raise ValueError("unknown detector(s): %s" % ", ".join(sorted(unknown)))
        self._action = action
        self._bound = hold_bound(self._detectors)
        tails = sorted({t for d in self._detectors for t in _TAILS[d]})
        self._tail = re.compile("|".join(tails)) if tails else None
        self._pem = SECRET in self._detectors
        self._ctx = ""
        self._buf = ""
        self._done = False

    @property
    def held(self) -> int:
        """Characters fed but not yet emitted (for `log`: not yet scanned to the end)."""
        return len(self._buf)

    @property
    def bound(self) -> int:
        return self._bound

    def feed(self, text: str) -> Emit:
        if self._done:
            return Emit("")
        self._buf += text
        return self._advance(final=False, raw=text)

    def finish(self) -> Emit:
        if self._done:
            return Emit("")
        emit = self._advance(final=True, raw="")
        self._done = True
        return emit

    # --- internals ----------------------------------------------------------------------

    def _pending(self, text: str, pos: int) -> int:
        """The leftmost position >= pos where a candidate may still change with more text."""
        n = len(text)
        best = n
        if self._tail is not None:
            m = self._tail.search(text, max(pos, n - self._bound))
            if m is not None:
                best = m.start()
        if self._pem:
            i = text.find("-----BEGIN", max(pos, n - PEM_MAX - 2))
            while 0 <= i < best:
                end, closed = pem_end(text, i)
                if not closed and (n - i <= _PEM_HEADER_MAX if end < 0 else i + PEM_MAX + 2 > n):
                    best = i
                    break
                i = text.find("-----BEGIN", i + 1)
        return best

    def _advance(self, final: bool, raw: str) -> Emit:
        off = len(self._ctx)
        text = self._ctx + self._buf
        n = len(text)
        found = resolve(candidates(text, self._detectors, off))
        s = n if final else self._pending(text, off)
        # A final finding that starts before the pending point wins over anything starting
        # inside it (earlier start wins), so emission may move past it.
        i = 0
        while i < len(found) and found[i].start < s:
            f = found[i]
            if f.end > s:
                s = self._pending(text, f.end)
            i += 1
        done = [f for f in found if f.end <= s and f.start >= off]
        counts: dict[str, int] = {}
        for f in done:
            counts[f.detector] = counts.get(f.detector, 0) + 1
        if self._action == "block" and done:
            first = done[0]
            self._done = True
            return Emit(text[off:first.start], {first.detector: 1}, first.detector)
        emitted = text[off:s]
        self._ctx = (self._ctx + emitted)[-_CONTEXT:]
        self._buf = text[s:]
        if self._action == "log":
            return Emit(raw, counts)
        shifted = [Finding(f.start - off, f.end - off, f.detector) for f in done]
        return Emit(mask(emitted, shifted), counts)
