"""OS names for the worker's own threads, so `top -H`, `ps -L` and /proc tell them apart.

Python names its threads for itself only (Thread.name); the kernel sees every thread of a
worker as the process ("tollway"). An operator asking which thread burns the CPU, and the
benchmarks that split a request's CPU by thread (bench/ledger.py), read the kernel's name.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys
from collections.abc import Callable

_PR_SET_NAME = 15  # prctl(2); the kernel keeps 15 bytes of it
_libc: ctypes.CDLL | None = None
if sys.platform.startswith("linux"):
    try:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:  # (no libc to load: names are a nicety)
        _libc = None


def name_this_thread(name: str) -> None:
    """Give the calling thread `name` (at most 15 bytes are kept) where the OS allows it."""
    if _libc is not None:
        _libc.prctl(_PR_SET_NAME, name.encode()[:15], 0, 0, 0)


def named(name: str) -> Callable[[], None]:
    """A ThreadPoolExecutor `initializer` that names each of its threads `name`."""
    return lambda: name_this_thread(name)
