"""The PII prefilter (`candidate_starts`, tollway.ext.piiscan), against the pure twin and the
compiled kernel: each shape's positions, the two twins agreeing on arbitrary text, and the
prefilter never losing a finding that the detectors' parsers would make at any position."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tollway.ext.piiscan as pure
from tests.kernels_fixture import compiled_or_skip
from tollway.core.guardrails import detectors
from tollway.core.guardrails.detectors import ALL, candidates, resolve

from .test_guardrail_detectors import FALSE_POSITIVES, POSITIVES

S = pure

SHAPE_CASES = [
    # (text, shapes, positions)
    ("card 4111 1111 1111 1111.", S.CARD, [5, 10, 15]),  # each group that has 3+3 digits after it
    # (IPv4: a digit up to two before the first dot, so inner positions too; the parser decides)
    ("4111111", S.CARD, [0]), ("411111", S.CARD, []), ("4111-111", S.CARD, [0]), ("4111--111", S.CARD, []),
    ("ip 10.0.0.1", S.IP, [3, 4]), ("ip 192.168.10.254", S.IP, [3, 4, 5]), ("1234.5.6.7", S.IP, [1, 2, 3]),
    ("1.2.3", S.IP, []), ("1.2222.3.4", S.IP, []),
    ("555-123-4567", S.PHONE, [0]), ("555.123-4567", S.PHONE, [0]), ("555 123 4567", S.PHONE, []),
    ("+4", S.PHONE, [0]), ("+0", S.PHONE, []), ("(555) 1", S.PHONE, [0]), ("(155)", S.PHONE, []),
    ("123-45-6789", S.SSN, [0]), ("123 45-6789", S.SSN, [0]), ("123_45_6789", S.SSN, []),
    ("GB82 WEST", S.IBAN, [2]), ("GB82WEST", S.IBAN, [2]), ("G82 WEST", S.IBAN, []), ("gb82 WEST", S.IBAN, []),
    ("GB82 west", S.IBAN, []),
    ("a@b", S.EMAIL, [1]), ("a@ b", S.EMAIL, []), ("a@é", S.EMAIL, []), ("@x", S.EMAIL, [0]),
    ("fe80::1", S.IP, [4, 5]), ("a:b", S.IP, [1]), ("10:30", S.IP, [2]), ("x: y", S.IP, []), (":1", S.IP, []),
    ("key sk-abc AKIA ASIA ghp_ gho_ ghu_ ghs_ ghr_ github_pat_ -----BEGIN  eyJ", S.SECRET,
     [4, 11, 16, 21, 26, 31, 36, 41, 46, 58, 70]),
    ("sk_ AKIB ghx_ github_pa -----BEGIN\n eyj", S.SECRET, []),
    # a shape reports nothing unless asked for; non-ASCII starts nothing
    ("4111 1111 1111 1111 a@b +44", S.EMAIL, [21]), ("٤١١١ ١١١١ ١١١١ ١١١١", S.SHAPES, []),
    ("", S.SHAPES, []), ("4111 1111", 0, []),
]


@pytest.mark.parametrize(("text", "shapes", "positions"), SHAPE_CASES)
def test_shapes(piiscan_impl, text: str, shapes: int, positions: list[int]) -> None:
    assert piiscan_impl.candidate_starts(text, 0, shapes) == positions


def test_start_skips_earlier_positions_but_reads_before_them(piiscan_impl) -> None:
    text = "GB82 WEST, 4111 1111 1111 1111 and a@b"
    every = piiscan_impl.candidate_starts(text, 0, S.SHAPES)
    for start in range(len(text) + 2):
        assert piiscan_impl.candidate_starts(text, start, S.SHAPES) == [q for q in every if q >= start]
    assert piiscan_impl.candidate_starts("GB82 WEST", 2, S.IBAN) == [2]  # the letters are context


def test_a_str_subclass_is_text_and_bytes_are_not(piiscan_impl) -> None:
    class Text(str):
        pass

    assert piiscan_impl.candidate_starts(Text("mail a@b"), 0, S.SHAPES) == [6]
    with pytest.raises(TypeError):
        piiscan_impl.candidate_starts(b"mail a@b", 0, S.SHAPES)


def test_the_compiled_kernel_has_the_twins_constants() -> None:
    compiled = compiled_or_skip("piiscan")
    for name in ("CARD", "EMAIL", "IBAN", "IP", "PHONE", "SECRET", "SHAPES", "SSN", "SECRET_LITERALS"):
        assert getattr(compiled, name) == getattr(pure, name)
    # and each bit selects the same shape in its C table (a wrong bit would report nothing here)
    for text, shape in (("4111111", S.CARD), ("a@b", S.EMAIL), ("+4", S.PHONE), ("GB82WEST", S.IBAN),
                        ("123-45-6789", S.SSN), ("a:b", S.IP), ("sk-", S.SECRET)):
        assert compiled.candidate_starts(text, 0, shape) == pure.candidate_starts(text, 0, shape) != []
        assert compiled.candidate_starts(text, 0, S.SHAPES & ~shape) == pure.candidate_starts(text, 0, S.SHAPES & ~shape)


def test_the_twins_gates_cover_every_literal() -> None:
    # the twin looks for a shared part first: each literal must be in exactly one group, and
    # hold its group's part (or a text with it would be skipped)
    literals = [lit for _, group in pure._GATES for lit in group]
    assert sorted(literals) == sorted(pure.SECRET_LITERALS)
    assert all(gate in lit for gate, group in pure._GATES for lit in group)


# Text made of the pieces shapes are built from, so that hypothesis reaches near misses.
_PIECES = ["0", "1", "2", "4", "5", "9", "12", "123", "4111", " ", "-", ".", ":", "@", "+", "(", ")", "/", ",",
           "_", "A", "B", "G", "K", "S", "I", "Z", "a", "e", "f", "g", "h", "p", "s", "k", "x", "y", "J", "\n",
           "é", "٤", "sk-", "AKIA", "ASIA", "ghp_", "github_pat_", "-----BEGIN ", "eyJ", "GB82", "::", "fe80"]
_TEXT = st.lists(st.sampled_from(_PIECES), max_size=40).map("".join) | st.text(max_size=40)


@settings(max_examples=800, deadline=None)
@given(text=_TEXT, start=st.integers(0, 8), shapes=st.integers(0, S.SHAPES))
def test_the_twins_agree(text: str, start: int, shapes: int) -> None:
    compiled = compiled_or_skip("piiscan")
    assert compiled.candidate_starts(text, start, shapes) == pure.candidate_starts(text, start, shapes)


def _prefiltered(impl, text: str, names: tuple[str, ...], start: int = 0) -> list[detectors.Finding]:
    """`find` over the positions `impl` reports (what `candidates` does with the active kernel)."""
    plan = detectors._plan(names)
    return resolve(detectors._parsed_at(text, plan, start, impl.candidate_starts(text, start, plan.shapes)))


def _everywhere(text: str, names: tuple[str, ...], start: int = 0) -> list[detectors.Finding]:
    """The detectors' parsers run at every position: what the prefilter must never lose."""
    plan = detectors._plan(names)
    return resolve(detectors._parsed_at(text, plan, start, range(start, len(text))))


_VALUES = [v for vs in POSITIVES.values() for v in vs]
_DETECTOR_SETS = st.sampled_from([ALL, *((d,) for d in ALL), ("phone", "credit_card"), ("email", "secret")])


@pytest.mark.parametrize("text", [*_VALUES, *FALSE_POSITIVES])
def test_the_prefilter_loses_nothing_on_the_corpora(piiscan_impl, text: str) -> None:
    for names in [ALL, *((d,) for d in ALL)]:
        for framed in (text, "x " + text + " y", "(" + text + ")"):
            assert _prefiltered(piiscan_impl, framed, names) == _everywhere(framed, names)


def test_candidates_uses_the_prefilter() -> None:
    text = "mail jane.doe@example.com, card 4111 1111 1111 1111, key AKIAIOSFODNN7EXAMPLE"
    assert resolve(candidates(text, ALL)) == _everywhere(text, ALL) != []


@settings(max_examples=800, deadline=None)
@given(parts=st.lists(st.sampled_from(_VALUES) | st.sampled_from(_PIECES) | st.text(max_size=6), max_size=12),
       names=_DETECTOR_SETS, start=st.integers(0, 6))
def test_the_prefilter_never_skips_a_true_positive(piiscan_impl, parts: list[str], names: tuple[str, ...],
                                                   start: int) -> None:
    text = "".join(parts)
    assert _prefiltered(piiscan_impl, text, names, start) == _everywhere(text, names, start)
