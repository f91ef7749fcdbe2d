"""The incremental stream scanner (tollway.core.guardrails.stream): whatever the chunking, the
emitted text equals masking the whole text, and the held-back tail stays within its bound."""
from __future__ import annotations

import json
import os
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tollway.core.guardrails.detectors import ALL, find, mask
from tollway.core.guardrails.json_escapes import EscapeDecoder
from tollway.core.guardrails.stream import HOLD, StreamScanner, hold_bound

from .test_guardrail_detectors import FALSE_POSITIVES, JWT, PEM, POSITIVES

VALUES = [v for vs in POSITIVES.values() for v in vs]
FILLERS = ["", " ", ". ", "\n", " and ", ", ", "x", "1", "-", ":", "@", "(", "+", " v", "-----", "A", "sk-", "eyJ"]


def run(text: str, cuts: list[int], detectors: tuple[str, ...] = ALL, action: str = "mask") -> tuple[str, dict[str, int], int]:
    scanner = StreamScanner(detectors, action)
    out: list[str] = []
    counts: dict[str, int] = {}
    most = 0
    prev = 0
    for c in sorted(set(cuts)) + [len(text)]:
        e = scanner.feed(text[prev:c])
        prev = c
        out.append(e.text)
        for k, v in e.counts.items():
            counts[k] = counts.get(k, 0) + v
        most = max(most, scanner.held)
        assert scanner.held <= scanner.bound
    e = scanner.finish()
    out.append(e.text)
    for k, v in e.counts.items():
        counts[k] = counts.get(k, 0) + v
    return "".join(out), counts, most


def expected(text: str, detectors: tuple[str, ...] = ALL) -> tuple[str, dict[str, int]]:
    found = find(text, detectors)
    counts: dict[str, int] = {}
    for f in found:
        counts[f.detector] = counts.get(f.detector, 0) + 1
    return mask(text, found), counts


@pytest.mark.parametrize("value", VALUES)
def test_value_split_at_every_boundary(value: str) -> None:
    text = "before " + value + " after"
    want = expected(text)
    for cut in range(len(text) + 1):
        got, counts, _ = run(text, [cut])
        assert (got, counts) == want, cut
    # and one character at a time
    got, counts, _ = run(text, list(range(len(text))))
    assert (got, counts) == want


@pytest.mark.parametrize("text", FALSE_POSITIVES)
def test_false_positives_stream_unchanged(text: str) -> None:
    got, counts, _ = run(text, list(range(0, len(text), 3)))
    assert got == text and counts == {}


PARTS = sorted({v[:k] for v in VALUES for k in (len(v) // 2, len(v) - 1, len(v) - 2)} | set(FALSE_POSITIVES))

texts = st.lists(st.one_of(st.sampled_from(VALUES), st.sampled_from(FILLERS), st.sampled_from(PARTS), st.text(max_size=8),
                           st.text(alphabet="0123456789 .-:@+()abcdefABCDEF_", max_size=12)), max_size=12).map("".join)


@settings(max_examples=int(os.environ.get("GUARD_EXAMPLES", "400")), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts, st.lists(st.integers(min_value=0, max_value=400), max_size=30))
def test_random_chunkings_mask_like_whole_text(text: str, cuts: list[int]) -> None:
    cuts = [c for c in cuts if c <= len(text)]
    want = expected(text)
    got, counts, most = run(text, cuts)
    assert (got, counts) == want
    assert most <= hold_bound(ALL)


@settings(max_examples=150, deadline=None)
@given(texts, st.lists(st.integers(min_value=0, max_value=400), max_size=20),
       st.sets(st.sampled_from(ALL), min_size=1))
def test_detector_subsets(text: str, cuts: list[int], detectors: set[str]) -> None:
    ds = tuple(d for d in ALL if d in detectors)
    cuts = [c for c in cuts if c <= len(text)]
    got, counts, _ = run(text, cuts, ds)
    assert (got, counts) == expected(text, ds)


def test_hold_bound_is_respected_per_detector() -> None:
    # each feed one character; the held tail never exceeds the detector's bound (+ the new chunk)
    for detector, values in POSITIVES.items():
        for value in values:
            text = "x " + value + " " + value
            scanner = StreamScanner([detector])
            for ch in text:
                scanner.feed(ch)
                assert scanner.held <= HOLD[detector]
            scanner.finish()


def test_prose_flows_with_a_small_tail() -> None:
    scanner = StreamScanner()
    out = []
    for word in ("Hello", " there,", " here is", " the plan", " for today."):
        out.append(scanner.feed(word).text)
    assert "".join(out).startswith("Hello there, here is the plan for")
    assert scanner.held <= len("today.")


def test_a_long_word_is_held_only_while_it_could_still_match() -> None:
    # tokens without spaces: a word that cannot become a secret is held only while it could be
    # an email's local part (64 characters), not to the end of the answer
    scanner = StreamScanner()
    out = []
    for i in range(100):
        out.append(scanner.feed(f"tok{i}").text)
        assert scanner.held <= 64 + len(f"tok{i}")
    out.append(scanner.finish().text)
    assert "".join(out) == "".join(f"tok{i}" for i in range(100))


@pytest.mark.parametrize(("chunk", "held"), [
    ("Hello", 0), ("Hello there", 0), ("a hash 3f786850e387550fdab836ed7e6dc881de23001b", 0),
    ("key s", 1), ("key sk", 2), ("key sk-abc", 6), ("key gh", 2), ("key ghp_x1", 6), ("key githu", 5),
    ("key github_pat_x", 12), ("a ey", 2), ("a eyJhbG.x", 8), ("key AKIA", 4),
    ("-sk-abc", 0), ("risk-free", 0),  # not after a word character or `-`: never a secret
])
def test_secret_hold_only_for_words_that_start_like_one(chunk: str, held: int) -> None:
    scanner = StreamScanner(["secret"])
    assert scanner.feed(chunk).text == chunk[:len(chunk) - held]
    assert scanner.held == held


def test_block_reports_the_first_finding_and_stops() -> None:
    scanner = StreamScanner(action="block")
    text = "card 4111 1111 1111 1111 then mail a@b.co"
    emitted = []
    blocked = None
    for ch in text:
        e = scanner.feed(ch)
        emitted.append(e.text)
        if e.blocked:
            blocked = e
            break
    assert blocked is not None and blocked.blocked == "credit_card" and blocked.counts == {"credit_card": 1}
    assert "".join(emitted) == "card "
    assert scanner.feed("more").text == "" and scanner.finish().text == ""


def test_block_waits_until_final() -> None:
    # a 16-digit Luhn-valid prefix that grows into a 20-digit id is never a finding
    scanner = StreamScanner(action="block")
    for ch in "id 41111111111111111234 ok":
        assert scanner.feed(ch).blocked is None
    assert scanner.finish().blocked is None


def test_log_emits_everything_at_once_and_counts() -> None:
    scanner = StreamScanner(action="log")
    first = scanner.feed("mail a@b.co")
    assert first.text == "mail a@b.co" and first.counts == {}  # the domain could still grow
    second = scanner.feed(" ok")
    assert second.text == " ok" and second.counts == {"email": 1}
    e = scanner.finish()
    assert e.text == "" and e.counts == {}


def test_pem_and_jwt_streamed() -> None:
    text = "key:\n" + PEM + "\nand " + JWT + " done"
    got, counts, most = run(text, list(range(0, len(text), 7)))
    assert got == "key:\n<SECRET>\nand <SECRET> done" and counts == {"secret": 2}
    assert most <= HOLD["secret"]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        StreamScanner(action="drop")
    with pytest.raises(ValueError):
        StreamScanner(["nope"])


@pytest.mark.parametrize("run_text", [
    "4" * 300, "1 " * 200, "ab:" * 150, "A" * 300 + " ", "eyJ" + "x" * 5000, "sk-" + "a1" * 400,
    "x" * 100 + "@" + "d." * 300, "-----BEGIN PRIVATE KEY-----\n" + "QUJD\n" * 1200,
])
def test_long_runs_stay_within_the_bound(run_text: str) -> None:
    text = "start " + run_text + " end"
    scanner = StreamScanner()
    out = []
    for i in range(0, len(text), 5):
        out.append(scanner.feed(text[i:i + 5]).text)
        assert scanner.held <= hold_bound(ALL)
    out.append(scanner.finish().text)
    assert "".join(out) == expected(text)[0]


# -- streamed JSON text (tool-call arguments) with its escapes decoded -------------------------

def _decoded(pieces: list[str]) -> tuple[str, int]:
    """(what an EscapeDecoder makes of `pieces`, the most it held between them)."""
    decoder, out, most = EscapeDecoder(), [], 0
    for piece in pieces:
        out.append(decoder.feed(piece))
        most = max(most, decoder.held)
    out.append(decoder.finish())
    return "".join(out), most


def _cut(text: str, cuts: list[int]) -> list[str]:
    bounds = [0, *sorted(c for c in set(cuts) if 0 < c < len(text)), len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:])]


@settings(max_examples=300, deadline=None)
@given(st.recursive(st.text() | st.integers(), lambda kids: st.dictionaries(st.text(), kids, max_size=3), max_leaves=6),
       st.lists(st.integers(min_value=0, max_value=400), max_size=30))
def test_decoded_arguments_are_json_of_the_same_value_at_any_chunking(value: object, cuts: list[int]) -> None:
    raw = json.dumps(value)  # (every non-ASCII character and control character as a `\u` escape)
    got, most = _decoded(_cut(raw, cuts))
    assert json.loads(got) == value and most <= 11
    # what stays an escape is a character JSON cannot carry raw: a control character, a lone surrogate
    assert all(int(code, 16) < 0x20 or 0xD800 <= int(code, 16) <= 0xDFFF
               for code in re.findall(r"\\u(.{4})", got.replace("\\\\", "")))


def test_escapes_are_decoded_where_a_character_can_be_raw() -> None:
    raw = '{"a": "jane\\u0040example.com \\u0034111 \\/ \\ud83d\\ude00 \\u00e9", "b": "\\u0022\\u005c\\u000a\\u0001\\udc00"}'
    want = '{"a": "jane@example.com 4111 / \U0001f600 \u00e9", "b": "\\"\\\\\\n\\u0001\\udc00"}'
    assert _decoded([raw])[0] == want
    for cut in range(len(raw) + 1):  # an escape cut anywhere is held until it is whole
        assert _decoded([raw[:cut], raw[cut:]])[0] == want, cut
    assert _decoded(list(raw))[0] == want
    assert _decoded(['{"a": "x\\u00'])[0] == '{"a": "x\\u00'  # an escape the text ends in goes out as it came
