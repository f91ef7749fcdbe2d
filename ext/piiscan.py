"""Where a PII or secret shape could start in a text (pure-Python twin of `ext/_piiscan.pyx`).

`candidate_starts(text, start, shapes)` is the prefilter of tollway.core.guardrails.detectors:
every position `q >= start` at which some detector enabled in `shapes` (a bitmask of the
constants below) could begin, in increasing order. The detectors' parsers and validators run
only there, so this decides what a scan costs; it never decides what is found (a position it
reports may be nothing, and a parser that needs more context reads the text itself).

The shapes, as the character at `q` and what follows it (`d` an ASCII digit; lookbehind may
read before `start`, which is context):

- CARD, SSN, PHONE, IBAN, IP (IPv4) — `q` is a digit and, from `q + 1`:
  CARD `ddd[ -]?ddd`; IP `d{0,2}.d{1,3}.d{1,3}.d` (each run whole, as in the regex);
  PHONE `dd[-.]ddd[-.]dddd`; SSN `dd[- ]dd[- ]dddd`; IBAN: two uppercase ASCII letters
  before `q` and `d ?[A-Z0-9]{4}` (located at its first check digit);
- EMAIL — `@` then an ASCII letter or digit;
- IP (IPv6) — `:` after a hex digit or `:`, and before one;
- PHONE — `+` then `1-9`; `(` then `[2-9]dd)`;
- SECRET — one of the literal prefixes `sk-`, `AKIA`, `ASIA`, `ghp_`, `gho_`, `ghu_`, `ghs_`,
  `ghr_`, `github_pat_`, `-----BEGIN `, `eyJ`.

A shape's window is only what it names above: a position is reported whatever text lies
beyond it. This twin runs one character-class-prefixed regex (so `re` skips ordinary text in
C) and `str.find` for the literals; the kernel reads each character once in C.
"""
from __future__ import annotations

import re

__all__ = [
    "CARD", "EMAIL", "IBAN", "IP", "PHONE", "SECRET", "SECRET_LITERALS", "SHAPES", "SSN", "candidate_starts",
]

EMAIL, PHONE, CARD, IBAN, SSN, IP, SECRET = 1, 2, 4, 8, 16, 32, 64
SHAPES = EMAIL | PHONE | CARD | IBAN | SSN | IP | SECRET

SECRET_LITERALS = ("sk-", "AKIA", "ASIA", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_", "-----BEGIN ",
                   "eyJ")

# One character class first, then branches that re-check the character they started on with a
# lookbehind (the digit shapes share one).
_DIGIT_BRANCHES: dict[int, str] = {
    CARD: r"[0-9]{3}[ \-]?[0-9]{3}",
    IP: r"[0-9]{0,2}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]",
    PHONE: r"[0-9][0-9][\-.][0-9]{3}[\-.][0-9]{4}",
    SSN: r"[0-9][0-9][\- ][0-9][0-9][\- ][0-9]{4}",
    IBAN: r"(?<=[A-Z][A-Z][0-9])[0-9] ?[A-Z0-9]{4}",
}
_OTHER_BRANCHES: dict[int, tuple[str, ...]] = {
    EMAIL: (r"(?<=@)[A-Za-z0-9]",),
    IP: (r"(?<=[0-9A-Fa-f:]:)[0-9A-Fa-f:]",),
    PHONE: (r"(?<=\+)[1-9]", r"(?<=\()[2-9][0-9][0-9]\)"),
}
_FIRST = {EMAIL: "@", IP: ":0-9", PHONE: "+(0-9", CARD: "0-9", SSN: "0-9", IBAN: "0-9"}
_ORDER = (EMAIL, PHONE, CARD, IBAN, SSN, IP)

_LOCATORS: dict[int, re.Pattern[str] | None] = {}
# The literals by a part they share, looked for first: one miss rules out the group (most text
# has no `_`, `IA`, ...); `str.find` of a single character is a memchr.
_GATES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("sk-", ("sk-",)), ("IA", ("AKIA", "ASIA")), ("_", ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_")),
    ("-----BEGIN ", ("-----BEGIN ",)), ("eyJ", ("eyJ",)),
)


def _locator(shapes: int) -> re.Pattern[str] | None:
    if shapes in _LOCATORS:
        return _LOCATORS[shapes]
    on = [s for s in _ORDER if shapes & s]
    digit = [_DIGIT_BRANCHES[s] for s in on if s in _DIGIT_BRANCHES]
    branches = [b for s in on for b in _OTHER_BRANCHES.get(s, ())]
    if digit:
        branches.insert(0, "(?<=[0-9])(?:%s)" % "|".join(digit))
    first = "".join(sorted({c for s in on for c in re.findall(r".-.|.", _FIRST[s])}))
    locator = re.compile("[%s](?:%s)" % (first, "|".join(branches))) if branches else None
    _LOCATORS[shapes] = locator
    return locator


def candidate_starts(text: str, start: int, shapes: int) -> list[int]:
    """Sorted positions >= `start` where a shape of `shapes` could begin (rules above)."""
    out: list[int] = []
    locator = _locator(shapes & ~SECRET)
    if locator is not None:
        search = locator.search
        m = search(text, start)
        while m is not None:
            q = m.start()
            out.append(q)
            m = search(text, q + 1)
    if shapes & SECRET:
        found = len(out)
        for gate, literals in _GATES:
            at = text.find(gate, start)
            if at < 0:
                continue
            for literal in literals:
                i = at if literal == gate else text.find(literal, start)
                while i >= 0:
                    out.append(i)
                    i = text.find(literal, i + 1)
        if len(out) > found:
            out.sort()  # (no position is both: the literals start with none of the locator's characters)
    return out
