"""CPU time of a piece of work, for tests that check growth as a ratio of two sizes.

The cycle collector is off while timing: in a full suite its passes walk every live object of
earlier tests, land in whichever run allocates more, and read as superlinear growth that is not
the code under test. The best of a few runs drops the rest of a noisy machine's jitter."""
from __future__ import annotations

import gc
import time
from collections.abc import Callable


def cpu_best(work: Callable[[], object], runs: int = 3) -> float:
    """The least CPU seconds `work` took over `runs` runs, the collector off throughout."""
    best = float("inf")
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(runs):
            started = time.process_time()
            work()
            best = min(best, time.process_time() - started)
    finally:
        if was_enabled:
            gc.enable()
    return best
