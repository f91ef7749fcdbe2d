"""The compiled hot-path kernels (Cython) and their plain-Python twins, side by side.

Each kernel `_<name>.pyx` has a twin `<name>.py` with exactly its API; the tests run every
kernel test against both, and `tollway.core.kernels` picks the compiled one when it is built.
A kernel imports nothing of Tollway's but its twin (and `usage`, the struct they return).
Adding a kernel is: the .pyx, its .pyi, its twin, and a line in `KERNELS`.
"""
from __future__ import annotations

# kernel name -> (its pure twin, the compiled module); read by tollway.core.kernels, the tests
# and bench/kernels.py
KERNELS: dict[str, tuple[str, str]] = {
    name: (f"tollway.ext.{name}", f"tollway.ext._{name}")
    for name in ("sse", "buckets", "jsonscan", "ratelimit", "piiscan", "sqlrows", "rollup", "canonjson")
}
