"""CPU cost of the pii guardrail's detectors (tollway.core.guardrails) on a 2 KB prompt.

Run from the repository root:

    python3 bench/guardrails.py

Prints the best-of-repeats µs per call of `find` (all detectors) over a ~2 KB English prompt
with a few PII values, over the same prompt without PII, and of `mask`; the issue's budget is
50 µs per 2 KB prompt. Also the stream scanner's cost per 2 KB fed in 4-character chunks.
Then the prefilter (`candidate_starts`, tollway.ext.piiscan) alone and `find` over each twin,
compiled kernel and pure Python, in the same run, and, where the `google-re2` package is
installed (a dependency since the json_schema guardrail), one RE2 pass of a lookbehind-free
pattern of the same shapes, for scale.

    python3 bench/guardrails.py --baseline ../other-checkout --rounds 7

`--baseline DIR`: also `find` as another checkout's core/guardrails/detectors.py has it (loaded
from its file; the module imports only the standard library and tollway.ext), interleaved
with this one's in the same process, round after round (the machine is shared: only ratios
taken this way are worth comparing); prints each side's median of the rounds' best.
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import timeit
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from tollway.core.guardrails import detectors
from tollway.core.guardrails.detectors import find, mask
from tollway.ext import piiscan

_PARAGRAPH = (
    "Please summarise the attached quarterly report for the board. Revenue grew 12% to $4.2 million in Q3 2024, "
    "driven by the new subscription tier (version 2.3.1) and lower churn. The support team closed 1,284 tickets; "
    "median response time fell from 3.5 hours to 2 hours. Keep the tone neutral, avoid jargon, and list three risks "
    "for next quarter, each with a one-sentence mitigation. "
)
PII = (
    "Contact me at jane.doe@example.com or +44 20 7946 0958. My card is 4111 1111 1111 1111 and the refund goes "
    "to GB82 WEST 1234 5698 7654 32. "
)


def prompt(with_pii: bool) -> str:
    text = (PII if with_pii else "") + _PARAGRAPH * 6
    return text[:2048]


def per_call_us(fn: object, number: int = 2000, repeat: int = 7) -> float:
    timer = timeit.Timer(fn)  # type: ignore[arg-type]
    return min(timer.repeat(repeat=repeat, number=number)) / number * 1e6


def main() -> None:
    with_pii = prompt(True)
    clean = prompt(False)
    found = find(with_pii)
    print("prompt: %d chars, %d findings (%s)" % (len(with_pii), len(found), ", ".join(f.detector for f in found)))
    print("find, all detectors, 2 KB with PII:    %6.1f µs" % per_call_us(lambda: find(with_pii)))
    print("find, all detectors, 2 KB without PII: %6.1f µs" % per_call_us(lambda: find(clean)))
    print("mask (given findings), 2 KB:           %6.1f µs" % per_call_us(lambda: mask(with_pii, found)))
    try:
        from tollway.core.guardrails.stream import StreamScanner
    except ImportError:
        return

    def stream() -> None:
        s = StreamScanner(action="mask")
        for i in range(0, len(with_pii), 4):
            s.feed(with_pii[i:i + 4])
        s.finish()

    print("stream mask, 2 KB in 4-char chunks:    %6.1f µs" % per_call_us(stream, number=50))
    twins()


# The same shapes without lookbehind (RE2 has none); non-overlapping matches, so not the same
# positions: a measure of what one RE2 pass over 2 KB costs, not a drop-in prefilter.
_RE2_SHAPES = (r"[0-9]{4}[ \-]?[0-9]{3}|[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]|[0-9]{3}[\-.][0-9]{3}[\-.][0-9]{4}"
               r"|[0-9]{3}[\- ][0-9]{2}[\- ][0-9]{4}|[A-Z]{2}[0-9]{2} ?[A-Z0-9]{4}|@[A-Za-z0-9]|[0-9A-Fa-f:]:[0-9A-Fa-f:]"
               r"|\+[1-9]|\([2-9][0-9]{2}\)|sk-|A[KS]IA|gh[pousr]_|github_pat_|-----BEGIN |eyJ")


def twins() -> None:
    """The prefilter and `find` over the compiled kernel and over the pure twin, one run."""
    from tollway.core import kernels
    from tollway.ext import KERNELS

    texts = {"with PII": prompt(True), "without PII": prompt(False)}
    impls: dict[str, Callable[[str, int, int], list[int]]] = {"pure": piiscan.candidate_starts}
    if kernels.ACTIVE["piiscan"] == "compiled":
        import importlib

        impls["compiled"] = importlib.import_module(KERNELS["piiscan"][1]).candidate_starts
    active = detectors.candidate_starts
    try:
        for kind, starts in impls.items():
            detectors.candidate_starts = starts  # the module's binding: what find() calls
            for label, text in texts.items():
                prefilter = per_call_us(lambda: starts(text, 0, piiscan.SHAPES))
                whole = per_call_us(lambda: find(text))
                print("%-8s 2 KB %-11s prefilter %6.1f µs, find %6.1f µs" % (kind, label, prefilter, whole))
    finally:
        detectors.candidate_starts = active
    try:
        import re2  # type: ignore[import-not-found]
    except ImportError:
        print("re2: google-re2 not installed here")
        return
    pattern = re2.compile(_RE2_SHAPES)
    for label, text in texts.items():
        print("re2      2 KB %-11s one finditer pass %6.1f µs" % (
            label, per_call_us(lambda: [m.start() for m in pattern.finditer(text)])))


def baseline_module(checkout: Path) -> ModuleType:
    path = checkout / "core" / "guardrails" / "detectors.py"
    spec = importlib.util.spec_from_file_location("baseline_detectors", path)
    if spec is None or spec.loader is None:
        sys.exit(f"no detectors module at {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def against(checkout: Path, rounds: int) -> None:
    """This checkout's find (kernel and pure twin) against `checkout`'s, interleaved."""
    from inproc import PROMPT_2K  # the 2k figures' prompt (bench/inproc.py)

    base = baseline_module(checkout)
    texts = {"2 KB with 4 PII values": prompt(True), "2 KB without PII": prompt(False),
             "inproc 2k prompt (3 values)": PROMPT_2K}
    for text in texts.values():  # the same findings, or the comparison means nothing
        assert [tuple(f) for f in base.find(text)] == [tuple(f) for f in find(text)]
    from tollway.core import kernels

    sides: dict[str, Callable[[str, int, int], list[int]] | None] = {"baseline": None, "pure": piiscan.candidate_starts}
    if kernels.ACTIVE["piiscan"] == "compiled":
        sides["compiled"] = kernels.candidate_starts
    runs: dict[tuple[str, str], list[float]] = {}
    active = detectors.candidate_starts
    try:
        for _ in range(rounds):
            for label, text in texts.items():
                for side, starts in sides.items():
                    if starts is None:
                        us = per_call_us(lambda: base.find(text), number=1000, repeat=5)
                    else:
                        detectors.candidate_starts = starts
                        us = per_call_us(lambda: find(text), number=1000, repeat=5)
                    runs.setdefault((label, side), []).append(us)
    finally:
        detectors.candidate_starts = active
    print(f"find, median of {rounds} interleaved rounds (µs; ratio to the baseline {checkout}):")
    for label in texts:
        was = statistics.median(runs[label, "baseline"])
        cells = [f"baseline {was:6.1f}"] + [f"{side} {statistics.median(runs[label, side]):6.1f} "
                                             f"({statistics.median(runs[label, side]) / was:.2f}x)"
                                             for side in sides if side != "baseline"]
        print(f"  {label:28} " + "   ".join(cells))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, metavar="DIR", help="another checkout to compare find with")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    main()
    if args.baseline is not None:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        against(args.baseline, args.rounds)
