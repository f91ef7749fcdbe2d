"""PII and secret detectors that validate what they match, and masking by detector name.

`find(text, detectors)` returns sorted, non-overlapping `Finding(start, end, detector)` spans;
`mask(text, findings)` replaces each span with `<DETECTOR>` (`<CREDIT_CARD>`, `<EMAIL>`, ...).
Nothing here keeps, logs or returns a matched value: a Finding is two offsets and a name.

How it stays fast: a prefilter, `candidate_starts` (tollway.ext.piiscan: a compiled kernel
that reads each character once, or its pure twin, a character-class-prefixed regex and
`str.find`), reports the positions where some enabled shape could start (a digit followed by a
card, IPv4, phone, SSN or IBAN shape; `@` before a letter or digit; an IPv6 colon; `+`, `(`;
a secret's literal prefix); only there do the per-detector parsers and validators run. It
never decides what is found: tests hold it to losing nothing that the parsers would find when
run at every position.

A candidate costs a bounded amount whatever surrounds it: the cheap left-boundary check runs
before any regex (inside a run of `eyJeyJ...` or `1.1.1...` every candidate but the first fails
there), runs are matched possessively so a parser never backtracks across one, and an IPv6 run
is parsed once, at its first colon. Text made of one shape repeated still costs a Python parser
call every few characters (~50-400x prose's per character, bench/README.md).

Rules (each detector's candidate at a position depends only on a bounded window around it,
which is what lets `stream.StreamScanner` hold back a bounded tail):

- Numbers (`credit_card`, `us_ssn`, `phone`, IPv4) need a left boundary: not after a letter,
  digit, `_`, `.`, `,`, `+`, `-`, `/`, `#`, `$`, `€`, `£` (so `v1.2.3.4`, `#4111...`, `$1,299`,
  `x-555-123-4567` and the inside of longer numbers never match), and a right boundary: not
  before a letter, digit or `_`, nor before `.`, `,`, `-`, `/` or `:` followed by a digit.
- `credit_card`: 13-19 digits, either one run or groups joined by one kind of separator (space
  or `-`) with a first group of 4 and further groups of 3-6 (4-4-4-4, 4-6-5, 4-4-4-4-3); the
  first digit is 2-6 (the issuer classes of payment cards, which also keeps 13-19 digit
  millisecond/nanosecond timestamps out); the Luhn checksum must hold. A grouped number whose
  groups run past 19 digits is not a card (no prefix of it is tried).
- `iban`: two uppercase letters with a known IBAN length (table below), two check digits, then
  the country's exact length either compact or in groups of four separated by single spaces;
  mod-97 must equal 1. Uppercase only.
- `us_ssn`: `AAA-GG-SSSS` or `AAA GG SSSS` (one separator kind); area not 000, 666 or 900-999,
  group not 00, serial not 0000. Bare nine digits are NOT an SSN (too many false positives:
  zip+4, ids, amounts); the two advertising numbers 078-05-1120 and 219-09-9999 are excluded.
- `ip_address`: IPv4 dotted quads parsed by `ipaddress` (each part 0-255, no leading zeros),
  not after `v`/a letter/`.`/`-` (boundary above) nor after the words `version`, `ver`,
  `release` (so `version 1.2.3.4` stays a version), not followed by `.digit`; a `:port` after it
  is allowed. IPv6: a run of hex digits and colons (optionally ending in a dotted IPv4) with at
  least two groups, parsed by `ipaddress`; not after a letter/digit/`.`/`:`. Times (`10:30:00`),
  MAC addresses and `::1` alone do not match.
- `phone`: either an international number `+CC ...` (country code 1-3 digits not starting
  with 0, then groups separated by at most one of space, `.`, `-`, parenthesised area codes
  allowed; 7-15 digits in all, as E.164) or a North-American number with clear separators:
  `(AAA) BBB-CCCC`, `AAA-BBB-CCCC`, `AAA.BBB.CCCC` (area code starting 2-9). Other national
  formats without a country code are not detected (`2024 555 1234` is too ambiguous).
- `email`: local part of letters, digits and `._%+-` (at most 64, no leading/trailing/double
  dot), `@`, 1-6 domain labels and an alphabetic TLD of 2-24 letters.
- `secret`: `sk-` + 20-250 of `[A-Za-z0-9_-]` with at least one digit and one letter
  (OpenAI `sk-...`/`sk-proj-...`, Anthropic `sk-ant-...`); `AKIA`/`ASIA` + 16 uppercase
  letters/digits (AWS); `ghp_`/`gho_`/`ghu_`/`ghs_`/`ghr_` + 36-251 alnum and `github_pat_` +
  22-244 of `[A-Za-z0-9_]` (GitHub); PEM private keys `-----BEGIN ... PRIVATE KEY-----` through
  the matching END line when it ends within PEM_MAX characters, otherwise the BEGIN line and
  the whole base64 lines that follow (capped at PEM_MAX); JWTs: three base64url segments
  (header up to 1024, payload up to 2048, signature up to 1024 characters) whose header decodes
  to a JSON object with `alg`. Secrets are not taken out of a longer token (not after
  a letter, digit or one of `_.%+-`).

Overlaps: the earlier start wins, and at the same start the longer span.
"""
from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import re
from collections.abc import Callable, Collection, Iterable
from typing import NamedTuple

from tollway.core.kernels import candidate_starts
from tollway.ext import piiscan

EMAIL = "email"
PHONE = "phone"
CREDIT_CARD = "credit_card"
IBAN = "iban"
US_SSN = "us_ssn"
IP_ADDRESS = "ip_address"
SECRET = "secret"

ALL: tuple[str, ...] = (EMAIL, PHONE, CREDIT_CARD, IBAN, US_SSN, IP_ADDRESS, SECRET)

PEM_MAX = 4096  # the longest PEM block taken as one finding (an RSA-4096 PKCS#8 key is ~3.3 KB)


class Finding(NamedTuple):
    """A detected span: offsets into the scanned text and the detector's name, never the value."""

    start: int
    end: int
    detector: str


# IBAN lengths by country (SWIFT IBAN registry).
IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BI": 27,
    "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27, "DK": 18, "DO": 28,
    "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23,
    "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27,
    "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25,
    "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18,
    "NO": 15, "OM": 23, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33,
    "SA": 24, "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}

_NUM_LEFT_BAD = frozenset("_.,+-/#$€£")
_NUM_RIGHT_SEP = frozenset(".,-/:")
_SECRET_LEFT_BAD = frozenset("_.%+-")
_LOCAL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._%+-")
_HEX_COLON = frozenset("0123456789abcdefABCDEF:")
_EMAIL_LOCAL_MAX = 64
_IPV6_MAX = 45


_ESCAPE_LETTERS = frozenset("bfnrt")  # JSON's one-letter escapes of control characters
_HEX = frozenset("0123456789abcdefABCDEF")
_HEX_U = _HEX | {"u"}  # what a digit inside a `\\uXXXX` escape follows


def _escaped(text: str, i: int) -> bool:
    """`text[i]` follows an odd run of backslashes: it is an escape's letter."""
    run = i
    while run > 0 and text[run - 1] == "\\":
        run -= 1
    return (i - run) % 2 == 1


def _escape_letter(text: str, i: int) -> bool:
    """`text[i]` ends a JSON escape of a control character: the letter of `\\n`, `\\t`, ... or
    the last digit of `\\u0001` (an odd run of backslashes before the letter). In tool-call
    arguments, scanned as JSON text (a stream's, json_escapes.py), it stands for that character,
    a boundary, not for a letter or digit (`"Card:\\n4111 ..."`, `"\\u00014111 ..."`)."""
    if i < 1:
        return False
    if text[i] in _ESCAPE_LETTERS and _escaped(text, i):
        return True
    return text[i] in _HEX and _escape_start(text, i - 3) == i + 1


def _escape_start(text: str, i: int) -> int:
    """Where the text after a `\\uXXXX` escape whose digits start at `i` begins, else `i`
    (`text[i - 2:i]` is an escaping backslash and `u`; the four digits are hex)."""
    if (i >= 2 and text[i - 1] == "u" and text[i - 2] == "\\" and _escaped(text, i - 1)
            and len(text) >= i + 4 and all(c in _HEX for c in text[i:i + 4])):
        return i + 4
    return i


def _escape_digits_end(text: str, q: int) -> int:
    """Where the digits of the `\\uXXXX` escape that `text[q]` is in end (the number after it
    starts there: `\\u00014111 ...`), or len(text) if it is in none."""
    u = text.rfind("\\u", max(q - 5, 0), q)
    end = _escape_start(text, u + 2) if u >= 0 else q
    return end if end > q else len(text)


def _num_left_ok(text: str, q: int) -> bool:
    if q == 0:
        return True
    c = text[q - 1]
    return not (c.isalnum() or c in _NUM_LEFT_BAD) or _escape_letter(text, q - 1)


def _num_right_ok(text: str, e: int, seps: frozenset[str] = _NUM_RIGHT_SEP) -> bool:
    if e >= len(text):
        return True
    c = text[e]
    if c.isalnum() or c == "_":
        return False
    return not (c in seps and e + 1 < len(text) and "0" <= text[e + 1] <= "9")


def _word_left_ok(text: str, q: int, bad: frozenset[str] = _SECRET_LEFT_BAD) -> bool:
    if q == 0:
        return True
    c = text[q - 1]
    return not (c.isalnum() or c in bad) or _escape_letter(text, q - 1)


# --- validators -----------------------------------------------------------------------------

_LUHN_DOUBLED = str.maketrans("0123456789", "0246813579")  # d -> 2d, less 9 if over 9


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum of a string of ASCII digits.

    From the right, every second digit is doubled (the table); the byte sums count each digit
    plus 48 (its ASCII code), taken off at the end: C loops instead of one per digit."""
    plain = digits[-1::-2].encode()
    doubled = digits[-2::-2].translate(_LUHN_DOUBLED).encode()
    return (sum(plain) + sum(doubled) - 48 * len(digits)) % 10 == 0


_IBAN_DIGITS = {ord(c): str(int(c, 36)) for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"}


def iban_ok(iban: str) -> bool:
    """Country length and mod-97 of a compact uppercase IBAN."""
    if IBAN_LENGTHS.get(iban[:2]) != len(iban):
        return False
    return int((iban[4:] + iban[:4]).translate(_IBAN_DIGITS)) % 97 == 1


def ssn_ok(area: str, group: str, serial: str) -> bool:
    """US SSN area/group/serial rules (plus the two published advertising numbers)."""
    if area in ("000", "666") or area[0] == "9" or group == "00" or serial == "0000":
        return False
    return (area, group, serial) not in (("078", "05", "1120"), ("219", "09", "9999"))


# --- per-detector parsers: (text, q) -> end offset, or -1 -------------------------------------

_DIGITS = re.compile(r"[0-9]{1,20}")
_CARD_GROUPS = re.compile(r"([ \-])[0-9]{1,7}(?:\1[0-9]{1,7}){0,5}")
_NON_DIGIT = re.compile(r"[^0-9]")


def _card(text: str, q: int) -> int:
    if text[q] not in "23456" or not _num_left_ok(text, q):
        return -1
    m = _DIGITS.match(text, q)
    if m is None:
        return -1
    run = m.end() - q
    if 13 <= run <= 19:
        end = m.end()
        digits = m.group()
    elif run == 4:
        g = _CARD_GROUPS.match(text, m.end())
        if g is None:
            return -1
        end = g.end()
        sep = g.group(1)
        # The digit count first, from the separators: a long run of groups (`'4111 ' * n`, at
        # each of its groups) is ruled out without splitting it.
        if not 13 <= end - q - text.count(sep, q, end) <= 19:
            return -1
        parts = text[q:end].split(sep)
        if not all(3 <= len(p) <= 6 for p in parts[1:]):
            return -1
        digits = "".join(parts)
    else:
        return -1
    if not _num_right_ok(text, end) or not luhn_ok(digits):
        return -1
    return end


_SSN = re.compile(r"([0-9]{3})([\- ])([0-9][0-9])\2([0-9]{4})")


def _ssn(text: str, q: int) -> int:
    if text[q + 3:q + 4] not in ("-", " "):
        return -1
    m = _SSN.match(text, q)
    if m is None or not _num_left_ok(text, q) or not _num_right_ok(text, m.end()):
        return -1
    return m.end() if ssn_ok(m.group(1), m.group(3), m.group(4)) else -1


_NANP = re.compile(r"\([2-9][0-9][0-9]\) ?[0-9]{3}[\-.][0-9]{4}|[2-9][0-9][0-9]([\-.])[0-9]{3}\1[0-9]{4}")
_INTL = re.compile(r"\+[1-9][0-9]{0,2}(?:[ .\-]?(?:\([0-9]{1,4}\)|[0-9]{1,6})){1,7}")


def _phone(text: str, q: int) -> int:
    c = text[q]
    if c == "+":
        if not _word_left_ok(text, q, _NUM_LEFT_BAD):
            return -1
        m = _INTL.match(text, q)
        if m is None:
            return -1
        n = len(_NON_DIGIT.sub("", m.group()))
        if not 7 <= n <= 15:
            return -1
    else:
        if (c != "(" and text[q + 3:q + 4] not in ("-", ".")) or not _num_left_ok(text, q):
            return -1
        m = _NANP.match(text, q)
        if m is None:
            return -1
    return m.end() if _num_right_ok(text, m.end()) else -1


_IPV4 = re.compile(r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}")
_VERSION_WORD = re.compile(r"(?i)\b(?:version|ver|release)\.?\s*[:=]?\s*$")
_IPV4_RIGHT_SEP = frozenset(".")


def _ipv4(text: str, q: int) -> int:
    if "." not in text[q + 1:q + 4]:
        return -1
    m = _IPV4.match(text, q)
    if m is None or not _num_left_ok(text, q) or not _num_right_ok(text, m.end(), _IPV4_RIGHT_SEP):
        return -1
    if q and _VERSION_WORD.search(text, max(0, q - 12), q):
        return -1
    try:
        ipaddress.IPv4Address(m.group())
    except ValueError:
        return -1
    return m.end()


_IPV6 = re.compile(r"[0-9A-Fa-f:]{2,45}(?:\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3})?")


_HEX_COLON_RUN = re.compile(r"[0-9A-Fa-f:]*")


def _ipv6_start(text: str, colon: int) -> int:
    """Start of the hex-and-colon run around `colon` (walking back at most _IPV6_MAX)."""
    st = colon
    floor = max(0, colon - _IPV6_MAX)
    while st > floor and text[st - 1] in _HEX_COLON:
        st -= 1
    if st == floor and st > 0 and text[st - 1] in _HEX_COLON:
        return -1
    return _escape_start(text, st)  # (`\\u0001fe80::1`: the run starts after the escape)


def _ipv6_run(text: str, colon: int) -> tuple[int, int]:
    """(_ipv6_start of the hex-and-colon run around `colon`, the end of that run).

    Every colon of one run has the same candidate (the run's start, or none when the start is
    more than _IPV6_MAX back, which only gets farther): the caller parses it at the run's first
    colon and skips the rest, rather than walking back and parsing at each (`'a:' * n`)."""
    return _ipv6_start(text, colon), _HEX_COLON_RUN.match(text, colon).end()  # type: ignore[union-attr]


def _ipv6(text: str, st: int) -> int:
    if st > 0 and (text[st - 1].isalnum() or text[st - 1] in "_.:") and not _escape_letter(text, st - 1):
        return -1
    m = _IPV6.match(text, st)
    if m is None:
        return -1
    end = m.end()
    if not _num_right_ok(text, end, _IPV4_RIGHT_SEP) or (end < len(text) and text[end] == ":"):
        return -1
    s = m.group()
    if s.endswith(":") and not s.endswith("::"):
        s = s[:-1]
        end -= 1
    if sum(1 for g in s.split(":") if g) < 2:
        return -1
    try:
        ipaddress.IPv6Address(s)
    except ValueError:
        return -1
    return end


_IBAN_GROUPED = {n: re.compile("(?: [A-Z0-9]{4}){%d}%s" % ((n - 4) // 4, " [A-Z0-9]{%d}" % ((n - 4) % 4) if (n - 4) % 4 else ""))
                 for n in set(IBAN_LENGTHS.values())}
_IBAN_COMPACT = {n: re.compile("[A-Z0-9]{%d}" % (n - 4)) for n in set(IBAN_LENGTHS.values())}


_IBAN_LEFT_BAD = frozenset("_")


def _iban(text: str, q: int) -> int:
    n = IBAN_LENGTHS.get(text[q:q + 2])
    if n is None or not _word_left_ok(text, q, _IBAN_LEFT_BAD):
        return -1
    head = text[q:q + 4]
    if len(head) < 4 or not head[2:].isdigit():
        return -1
    grouped = q + 4 < len(text) and text[q + 4] == " "
    m = (_IBAN_GROUPED if grouped else _IBAN_COMPACT)[n].match(text, q + 4)
    if m is None:
        return -1
    end = m.end()
    if end < len(text) and (text[end].isalnum() or text[end] == "_"):
        return -1
    return end if iban_ok(head + m.group().replace(" ", "")) else -1


_EMAIL_DOMAIN = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.){1,6}[A-Za-z]{2,24}(?![A-Za-z0-9\-])")


def _email(text: str, at: int) -> tuple[int, int] | None:
    st = at
    floor = at - _EMAIL_LOCAL_MAX - 1
    while st > 0 and text[st - 1] in _LOCAL_CHARS:
        st -= 1
        if st <= floor:
            return None
    if st < at and st > 0 and text[st] in _ESCAPE_LETTERS and _escaped(text, st):  # `\\njane@...`:
        st += 1  # the local part starts after the escape
    elif st < at and text[st] == "u":  # `\\u0001jane@...` (json_escapes.py leaves a control character's)
        st = min(at, _escape_start(text, st + 1))
    while st < at and text[st] == ".":
        st += 1
    local = text[st:at]
    if not local or local.endswith(".") or ".." in local:
        return None
    m = _EMAIL_DOMAIN.match(text, at + 1)
    if m is None or m.end() - at - 1 > 253:
        return None
    return st, m.end()


# Each run is possessive (`{m,n}+`): a run that goes on past its cap, or that the next
# character rules out, fails where it stands instead of being given back one character at a time
# (the same matches, as a run must end where its class ends; without it `'sk-' * n` tried ~250
# shorter runs at each of its n candidates).
_SK = re.compile(r"sk-[A-Za-z0-9_\-]{20,250}+(?![A-Za-z0-9_\-])")
_HAS_DIGIT = re.compile(r"[0-9]")
_HAS_ALPHA = re.compile(r"[A-Za-z]")
_AWS = re.compile(r"A[KS]IA[A-Z0-9]{16}(?![A-Za-z0-9_])")
_GH = re.compile(r"gh[pousr]_[A-Za-z0-9]{36,251}+(?![A-Za-z0-9_])|github_pat_[A-Za-z0-9_]{22,244}+(?![A-Za-z0-9_])")
_PEM_HEAD = re.compile(r"-----BEGIN ((?:[A-Z0-9]+ )*)PRIVATE KEY-----")
_PEM_BODY = re.compile(r"(?:\r?\n[A-Za-z0-9+/=]{1,128}(?![^\r\n]))*")  # whole base64 lines
_JWT = re.compile(r"eyJ([A-Za-z0-9_\-]{1,1021}+)\.[A-Za-z0-9_\-]{1,2048}+\.[A-Za-z0-9_\-]{1,1024}+(?![A-Za-z0-9_\-])")


# The left boundary first: inside a run of prefixes (`eyJeyJ...`) it rules out every candidate
# but the first before any regex runs.
def _sk(text: str, q: int) -> int:
    if not _word_left_ok(text, q):
        return -1
    m = _SK.match(text, q)
    if m is None:
        return -1
    body = m.group()[3:]
    return m.end() if _HAS_DIGIT.search(body) and _HAS_ALPHA.search(body) else -1


def _aws(text: str, q: int) -> int:
    m = _AWS.match(text, q) if _word_left_ok(text, q) else None
    return m.end() if m is not None else -1


def _gh(text: str, q: int) -> int:
    m = _GH.match(text, q) if _word_left_ok(text, q) else None
    return m.end() if m is not None else -1


def pem_end(text: str, q: int) -> tuple[int, bool]:
    """(end of the PEM finding at q or -1, whether its END line was found)."""
    if q > 0 and text[q - 1] == "-":
        return -1, False
    m = _PEM_HEAD.match(text, q)
    if m is None:
        return -1, False
    marker = "-----END %sPRIVATE KEY-----" % m.group(1)
    cap = q + PEM_MAX
    i = text.find(marker, m.end(), cap)
    if i >= 0:
        return i + len(marker), True
    body = _PEM_BODY.match(text, m.end(), min(cap, len(text)))
    return (body.end() if body is not None else m.end()), False


def _pem(text: str, q: int) -> int:
    return pem_end(text, q)[0]


def _jwt(text: str, q: int) -> int:
    if not _word_left_ok(text, q):
        return -1
    m = _JWT.match(text, q)
    if m is None:
        return -1
    head = "eyJ" + m.group(1)
    try:
        header = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    except (ValueError, binascii.Error):
        return -1
    return m.end() if isinstance(header, dict) and "alg" in header else -1


# --- the prefilter ---------------------------------------------------------------------------

# `candidate_starts` (a compiled kernel, or its pure twin: tollway.ext.piiscan) reports every
# position where an enabled shape could start; only there do the parsers run. Its shapes are
# the detectors' own, bit for bit.
_SHAPE: dict[str, int] = {
    EMAIL: piiscan.EMAIL, PHONE: piiscan.PHONE, CREDIT_CARD: piiscan.CARD, IBAN: piiscan.IBAN,
    US_SSN: piiscan.SSN, IP_ADDRESS: piiscan.IP, SECRET: piiscan.SECRET,
}
# A secret literal's first character -> its parser (the literals start with no other shape's
# character: digits, `@`, `:`, `+`, `(`).
_SECRET_PARSERS: dict[str, Callable[[str, int], int]] = {"s": _sk, "A": _aws, "g": _gh, "-": _pem, "e": _jwt}

_DIGIT_PARSERS: dict[str, Callable[[str, int], int]] = {
    CREDIT_CARD: _card, US_SSN: _ssn, PHONE: _phone, IP_ADDRESS: _ipv4,
}


class _Plan(NamedTuple):
    shapes: int
    digit: tuple[tuple[str, Callable[[str, int], int]], ...]
    email: bool
    phone: bool
    iban: bool
    ip: bool
    secret: bool


_PLANS: dict[frozenset[str], _Plan] = {}


def _plan(detectors: Collection[str]) -> _Plan:
    key = frozenset(detectors)
    plan = _PLANS.get(key)
    if plan is None:
        unknown = key - set(ALL)
        if unknown:
            raise ValueError("unknown detector(s): %s" % ", ".join(sorted(unknown)))
        shapes = 0
        for d in key:
            shapes |= _SHAPE[d]
        digit = tuple((d, p) for d, p in _DIGIT_PARSERS.items() if d in key)
        plan = _Plan(shapes, digit, EMAIL in key, PHONE in key, IBAN in key, IP_ADDRESS in key,
                     SECRET in key)
        _PLANS[key] = plan
    return plan


def candidates(text: str, detectors: Collection[str] = ALL, start: int = 0) -> list[Finding]:
    """Every validated candidate starting at or after `start` (overlaps not yet resolved).

    `text[:start]` is context only (boundaries, an email's local part): nothing starting there
    is returned.
    """
    plan = _plan(detectors)
    return _parsed_at(text, plan, start, candidate_starts(text, start, plan.shapes))


def _parsed_at(text: str, plan: _Plan, start: int, starts: Iterable[int]) -> list[Finding]:
    """The parsers' findings at `starts` (increasing positions >= start). The prefilter's
    positions in `candidates`; every position in the test that holds it to losing nothing."""
    out: list[Finding] = []
    secrets: list[Finding] = []
    add = out.append
    n = len(text)
    nxt = start
    ip_run_end = start  # the end of the last hex-and-colon run whose IPv6 candidate was parsed
    for q in starts:
        c = text[q]
        secret = _SECRET_PARSERS.get(c) if plan.secret else None
        if secret is not None:
            e = secret(text, q)
            if e > 0:
                secrets.append(Finding(q, e, SECRET))
            continue
        if q < nxt:
            continue
        nxt = q + 1
        if "0" <= c <= "9":
            # Every digit parser needs the number's left boundary: checked once, not four times
            # (`'1.' * n` is a candidate at each digit, all after a `.`).
            left = _num_left_ok(text, q)
            for name, parse in plan.digit if left else ():
                e = parse(text, q)
                if e > 0:
                    add(Finding(q, e, name))
                    if name == CREDIT_CARD:
                        # Nothing starting inside a card can win over it (earlier start wins,
                        # and an earlier email would contain it whole): skip its groups.
                        nxt = e
            if plan.iban and q >= start + 2 and "A" <= text[q - 1] <= "Z" and "A" <= text[q - 2] <= "Z":
                e = _iban(text, q - 2)
                if e > 0:
                    add(Finding(q - 2, e, IBAN))
            # (a run that starts inside a `\\u0001` escape ends with it: a number may follow it)
            stop = n if left or text[q - 1] not in _HEX_U else _escape_digits_end(text, q)
            while nxt < stop and "0" <= text[nxt] <= "9":
                nxt += 1
        elif c == "@":
            if plan.email:
                span = _email(text, q)
                if span is not None and span[0] >= start:
                    add(Finding(span[0], span[1], EMAIL))
        elif c == ":":
            if not plan.ip or q < ip_run_end:
                continue
            st, ip_run_end = _ipv6_run(text, q)
            if st >= start:
                e = _ipv6(text, st)
                if e > 0:
                    add(Finding(st, e, IP_ADDRESS))
        elif plan.phone:  # "+" or "("
            e = _phone(text, q)
            if e > 0:
                add(Finding(q, e, PHONE))
    return out + secrets if secrets else out


def resolve(found: Iterable[Finding]) -> list[Finding]:
    """Sorted and non-overlapping: the earlier start wins, at the same start the longer span."""
    out: list[Finding] = []
    last_end = -1
    for f in sorted(found, key=lambda f: (f.start, -f.end)):
        if f.start >= last_end:
            out.append(f)
            last_end = f.end
    return out


def find(text: str, detectors: Collection[str] = ALL) -> list[Finding]:
    """Validated findings in `text`, sorted and non-overlapping."""
    return resolve(candidates(text, detectors))


def placeholder(detector: str) -> str:
    """`<CREDIT_CARD>` for `credit_card`: what a masked value is replaced with."""
    return "<%s>" % detector.upper()


def mask(text: str, findings: Iterable[Finding]) -> str:
    """`text` with each (sorted, non-overlapping) finding replaced by its placeholder."""
    parts: list[str] = []
    pos = 0
    for f in findings:
        parts.append(text[pos:f.start])
        parts.append(placeholder(f.detector))
        pos = f.end
    parts.append(text[pos:])
    return "".join(parts)
