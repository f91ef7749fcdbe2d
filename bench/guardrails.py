"""CPU cost of the pii guardrail's detectors (tollway.core.guardrails) on a 2 KB prompt.

Run from the repository root:

    python3 bench/guardrails.py

Prints the best-of-repeats µs per call of `find` (all detectors) over a ~2 KB English prompt
with a few PII values, over the same prompt without PII, and of `mask`; the issue's budget is
50 µs per 2 KB prompt. Also the stream scanner's cost per 2 KB fed in 4-character chunks.
"""
from __future__ import annotations

import timeit

from tollway.core.guardrails.detectors import find, mask

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


if __name__ == "__main__":
    main()
