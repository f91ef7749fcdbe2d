"""Pure-Python twin of the rollup kernel (`_rollup.pyx`): a batch of rows summed per time
bucket and owner, the ledger's hourly rollups.

`bucket_sums(rows, spec)` reads each row (a tuple) at the columns `spec` names and returns,
in the order each (bucket, owner) first appears:

    {(bucket start, *owner): [rows, errors, unpriced, *counts, cost]}

- bucket start: `int(ts // seconds * seconds)` of the row's `ts` (a number);
- owner: the values at `spec.owner`, each `v or ""` (no value and "" are one owner);
- errors: rows whose status is above 399 or whose error is not None;
- unpriced: rows whose cost is None; cost: the others' costs added in row order from 0.0,
  as floats; counts: the integer columns `spec.counts` added up.

The twin adds a row at a time, in the order the kernel does, so both give equal sums to the
last bit of a float (Python's `sum` of floats is compensated from 3.12 on; a loop is not).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, cast

Row = tuple[object, ...]
Sums = list[int | float]


class Spec(NamedTuple):
    """Where a row holds what the sums read (column indexes), and the bucket's length."""

    ts: int
    seconds: float
    owner: tuple[int, ...]
    status: int
    error: int
    cost: int
    counts: tuple[int, ...]


def bucket_sums(rows: Sequence[Row], spec: Spec) -> dict[tuple[object, ...], Sums]:
    ints: dict[tuple[object, ...], list[int]] = {}  # rows, errors, unpriced, *counts
    costs: dict[tuple[object, ...], float] = {}
    width = 3 + len(spec.counts)
    for row in rows:
        ts = cast(float, row[spec.ts])
        ident = (int(ts // spec.seconds * spec.seconds), *(row[i] or "" for i in spec.owner))
        sums = ints.get(ident)
        if sums is None:
            sums = ints[ident] = [0] * width
            costs[ident] = 0.0
        sums[0] += 1
        if cast(int, row[spec.status]) > 399 or row[spec.error] is not None:
            sums[1] += 1
        cost = cast("float | None", row[spec.cost])
        if cost is None:
            sums[2] += 1
        elif cost:  # (0.0 adds nothing, as in the kernel)
            costs[ident] += float(cost)
        for k, i in enumerate(spec.counts, 3):
            sums[k] += cast(int, row[i])
    return {ident: [*sums, costs[ident]] for ident, sums in ints.items()}
