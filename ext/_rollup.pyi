"""Type stub of the compiled rollup kernel (same API as ext/rollup.py)."""
from collections.abc import Sequence

from tollway.ext.rollup import Row, Spec, Sums

__all__ = ["Spec", "bucket_sums"]

def bucket_sums(rows: Sequence[Row], spec: Spec) -> dict[tuple[object, ...], Sums]: ...
