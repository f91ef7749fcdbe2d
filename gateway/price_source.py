"""Where a worker gets the price table: built in another process, kept in a private cache.

Building the table imports `genai-prices` (pydantic, httpx, anyio and ~1,500 dataset
objects: ~11 MB that would stay in every worker for a few hundred kB of names and numbers).
So `load` runs `python -m tollway.gateway.price_source` (this module), which builds it and
writes it out as JSON, and keeps that in `$TOLLWAY_CACHE_DIR` (else `$XDG_CACHE_HOME/tollway`,
else `~/.cache/tollway`) under a name made of the package's version, its data file's size and
time, and the table's format: the next start reads it (~10 ms) and a new dataset makes a new
name. The cache is used only if its folder is the user's own and nobody else may write to it
(prices decide budgets); where it cannot be kept (a read-only filesystem), every start builds
the table anew in the child (nothing is written where the folder could not be made), and
where no child can run, in this process.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import stat
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import msgspec

from tollway.core.accounting import price_table
from tollway.core.accounting.price_export import from_dataset
from tollway.core.accounting.price_table import PriceTable

log = logging.getLogger("tollway")
_BUILD_TIMEOUT = 60.0  # seconds for the child to build the table


def load() -> PriceTable:
    """The price table of the installed dataset, without importing the dataset here."""
    cached = _cache_file()
    if cached is not None:
        try:
            return price_table.decode(cached.read_bytes())
        except (OSError, msgspec.DecodeError):
            pass  # none yet, or unreadable: built anew and written over
    try:
        raw = subprocess.run([sys.executable, "-m", "tollway.gateway.price_source"], capture_output=True,
                             timeout=_BUILD_TIMEOUT, check=True).stdout
        table = price_table.decode(raw)
    except (OSError, subprocess.SubprocessError, msgspec.DecodeError) as exc:
        log.warning("prices: building the price table in a child process failed (%s); building it here", exc)
        return from_dataset()
    if cached is not None:
        _write(cached, raw)
    return table


def _cache_file() -> Path | None:
    """The cached table's path for the installed dataset, or None where no private cache can be kept."""
    spec = importlib.util.find_spec("genai_prices")  # (finds the package without importing it)
    if spec is None or spec.origin is None:
        return None
    try:
        data = os.stat(Path(spec.origin).with_name("data.py"))
        release = version("genai-prices")
    except (OSError, PackageNotFoundError):
        return None
    folder = _private_folder()
    if folder is None:
        return None
    return folder / f"prices-{release}-{data.st_size}-{data.st_mtime_ns}-{price_table.FORMAT}.json"


def _private_folder() -> Path | None:
    base = os.environ.get("TOLLWAY_CACHE_DIR")
    if base:
        folder = Path(base)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        if not xdg and not Path.home().is_dir():  # a service user without a home (HOME=/nonexistent): none made
            return None
        folder = (Path(xdg) if xdg else Path.home() / ".cache") / "tollway"
    if not os.access(_existing(folder), os.W_OK):  # (a read-only root, a home that does not exist: no attempt)
        return None
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.stat(folder)
    except OSError:
        return None
    if st.st_uid != os.getuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        log.warning("prices: not caching the price table in %s: it is not this user's own folder", folder)
        return None
    return folder


def _existing(path: Path) -> Path:
    """`path`, or its nearest ancestor that exists."""
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def _write(path: Path, raw: bytes) -> None:
    """Atomically (a reader sees the old file, none, or the whole new one)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        temporary.write_bytes(raw)
        os.replace(temporary, path)
    except OSError:
        temporary.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.stdout.buffer.write(price_table.encode(from_dataset()))
