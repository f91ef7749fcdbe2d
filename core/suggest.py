"""'Did you mean …?' for a name that is not one of the names a config knows."""
from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """"; did you mean 'x'?" for the known name closest to `name`, or "" if none is close.

    The cut-off (difflib's ratio 0.6) catches a dropped, doubled or swapped letter or two
    ('opnai' -> 'openai', 'shema' -> 'schema') without pairing names that merely share a few."""
    close = difflib.get_close_matches(name, sorted(set(known)), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""
