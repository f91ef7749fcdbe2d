"""Where a worker gets the price table: built in another process, kept in a private cache.

Building the table imports `genai-prices` (pydantic, httpx, anyio and ~1,500 dataset
objects: ~11 MB that would stay in every worker for a few hundred kB of names and numbers).
So `load` runs `python -m tollway.gateway.price_source` (this module), which builds it and
writes it out as JSON, and keeps that in `$TOLLWAY_CACHE_DIR` (else `$XDG_CACHE_HOME/tollway`,
else `~/.cache/tollway`; only absolute paths) under a name made of the package's version, its
data file's digest (from the install record: not the file's time, which an image layer rounds
when pulled) and a digest of the code that builds and reads the table: the next start reads it
(~10 ms), and a new dataset or a new Tollway makes a new name.

Prices decide budgets, so the cache is used only where nobody else can change it: the folder
and the file must be this user's or root's, writable by nobody else, and not symbolic links
(the image ships one built as root: `python -m tollway.gateway.price_source --build`). Where
none can be kept (no home and no image cache; a read-only filesystem), nothing is written and
every start builds the table anew in the child; where the
child fails, it is built in this process; and where that fails too, the worker starts with no
dataset prices (its models are then unpriced, counted and logged, never free).
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import os
import stat
import subprocess
import sys
import tempfile
from importlib.metadata import PackageNotFoundError, distribution, version
from pathlib import Path

import msgspec

from tollway.core.accounting import price_export, price_table
from tollway.core.accounting.price_table import PriceTable

log = logging.getLogger("tollway")
_BUILD_TIMEOUT = 60.0  # seconds for the child to build the table
_PREFIX = "prices-"
NO_PRICES = PriceTable("none: the price dataset could not be read", ())


def load() -> PriceTable:
    """The price table of the installed dataset, without importing the dataset here. Never raises."""
    try:
        cached = _cache_file()
    except (OSError, RuntimeError, ValueError):  # no home to speak of (HOME unset, unreadable)
        cached = None
    if cached is not None:
        table = _read(cached)
        if table is not None:
            log.info("prices: the price table (%s) read from %s", table.source, cached)
            return table
    built = _build_in_child()
    if built is None:
        return _build_here()
    raw, table = built
    written = cached is not None and os.access(cached.parent, os.W_OK) and _write(cached, raw)  # (an image's is read-only)
    log.info("prices: the price table (%s) built in a child process%s", table.source,
             f", cached in {cached}" if written else "")
    return table


def warm() -> None:
    """`serve`, before its workers fork: build and cache the table if no cached copy is readable
    yet, so the workers read it (~10 ms) rather than each building it at once (~1 s of start,
    one child per worker on the same cores). Never raises; where nothing can be cached, each
    worker still builds its own."""
    try:
        cached = _cache_file()
    except (OSError, RuntimeError, ValueError):
        return
    if cached is None or not os.access(cached.parent, os.W_OK) or _read(cached) is not None:
        return
    built = _build_in_child()
    if built is not None and _write(cached, built[0]):
        log.info("prices: the price table (%s) built before starting the workers, cached in %s",
                 built[1].source, cached)


def _build_in_child() -> tuple[bytes, PriceTable] | None:
    """The table from a child process, with its JSON (to cache as it came), or None."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))  # the worker's packages
    try:
        # (-P, cwd /: no module of the working directory is imported in the child)
        done = subprocess.run([sys.executable, "-P", "-m", "tollway.gateway.price_source"], capture_output=True,
                              stdin=subprocess.DEVNULL, timeout=_BUILD_TIMEOUT, env=env, cwd="/")
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("prices: could not build the price table in a child process (%s); building it here", exc)
        return None
    if done.returncode != 0:
        log.warning("prices: building the price table in a child process failed (exit %d: %s); building it here",
                    done.returncode, done.stderr.decode(errors="replace").strip()[-500:])
        return None
    try:
        return done.stdout, price_table.decode(done.stdout)
    except msgspec.DecodeError as exc:
        log.warning("prices: the child process's price table is unreadable (%s); building it here", exc)
        return None


def _build_here() -> PriceTable:
    try:
        return price_export.from_dataset()
    except Exception as exc:  # noqa: BLE001 - whatever the dataset does, the gateway starts
        log.error("prices: the price dataset could not be read (%s: %s); models without a price in the "
                  "config are unpriced", type(exc).__name__, exc)
        return NO_PRICES


def _cache_file() -> Path | None:
    """The cached table's path for the installed dataset, or None where no private cache can be kept."""
    spec = importlib.util.find_spec("genai_prices")  # (finds the package without importing it)
    if spec is None or spec.origin is None:
        return None
    try:
        release = version("genai-prices")
        data = _data_digest(Path(spec.origin).with_name("data.py"))
    except (OSError, PackageNotFoundError):
        return None
    folder = _private_folder()
    if folder is None:
        return None
    return folder / f"{_PREFIX}{release}-{data}-{_code_digest()}.json"


def _data_digest(path: Path) -> str:
    """The dataset file's content, as its install record states it (else hashed here): not its
    time, which an image layer rounds to the second when it is pulled."""
    for file in distribution("genai-prices").files or ():
        if file.as_posix() == "genai_prices/data.py" and file.hash is not None and file.hash.mode == "sha256":
            return file.hash.value[:22]  # (urlsafe base64: letters, digits, - and _)
    return hashlib.sha256(path.read_bytes()).hexdigest()[:22]


@functools.cache
def _code_digest() -> str:
    """The code that builds and reads the table: a Tollway that changes it reads no older file."""
    parts = (Path(price_table.__file__).read_bytes(), Path(price_export.__file__).read_bytes())
    return hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]


def _private_folder() -> Path | None:
    """The cache folder, made if it may be: absolute, a real folder, and written by nobody but
    this user or root (an image may ship one built as root, read-only: tollway.gateway.price_source
    --build in the Dockerfile). Prices are public data: others may read, never write."""
    folder = _folder_named()
    if folder is None or not folder.is_absolute() or folder.parent == folder:
        return None
    if not folder.exists():
        if not os.access(_existing(folder), os.W_OK):  # (a read-only root: no attempt to write)
            return None
        try:
            folder.mkdir(mode=0o755, parents=True, exist_ok=True)
        except OSError:
            return None
    try:
        st = os.lstat(folder)
    except OSError:
        return None
    if not _trusted(st) or not stat.S_ISDIR(st.st_mode):
        log.warning("prices: not caching the price table in %s: a folder others may write to", folder)
        return None
    return folder


def _folder_named() -> Path | None:
    base = os.environ.get("TOLLWAY_CACHE_DIR")
    if base:
        return Path(base)
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg) / "tollway"
    home = Path.home()  # (RuntimeError where there is none: the caller takes it as no cache)
    if not home.is_absolute() or home.parent == home or not home.is_dir():  # a service user (HOME=/nonexistent)
        return None
    return home / ".cache" / "tollway"


def _trusted(st: os.stat_result) -> bool:
    """Owned by this user or root, written by nobody else, not a symbolic link."""
    return st.st_uid in (os.getuid(), 0) and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) \
        and not stat.S_ISLNK(st.st_mode)


def _existing(path: Path) -> Path:
    """`path`, or its nearest ancestor that exists."""
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def _read(path: Path) -> PriceTable | None:
    """The cached table, if the file is private and whole (else None: built anew, written over)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        if not _trusted(os.fstat(fd)):
            log.warning("prices: ignoring the cached price table %s: others may write to it", path)
            return None
        with os.fdopen(os.dup(fd), "rb") as f:
            return price_table.decode(f.read())
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return None
    finally:
        os.close(fd)


def _write(path: Path, raw: bytes) -> bool:
    """Atomically (a reader sees the old file, none, or the whole new one), 0644 whatever the
    umask (the image's is built by root and read by the workers' user); then the folder's older
    tables go (each a dataset or a Tollway no longer installed). True if written."""
    try:
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{_PREFIX}")
    except OSError:
        return False
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o644)
            f.write(raw)
        os.replace(temporary, path)
    except OSError:
        Path(temporary).unlink(missing_ok=True)
        return False
    for old in path.parent.glob(f"{_PREFIX}*.json"):
        try:
            if old.name != path.name and stat.S_ISREG(os.lstat(old).st_mode):
                old.unlink()
        except OSError:
            pass  # (another process's, gone or going)
    return True


def _main() -> None:
    """The child: the table's JSON on the stdout it was given. Anything an import prints goes to
    stderr instead, so it cannot corrupt the table."""
    out = os.dup(1)
    os.dup2(2, 1)
    raw = price_table.encode(price_export.from_dataset())
    with os.fdopen(out, "wb") as f:
        f.write(raw)


def build() -> int:
    """`--build` (the image's build step): the cache made now in $TOLLWAY_CACHE_DIR, or exit 1."""
    path = _cache_file()
    if path is None:
        print("price table: no cache folder this user may keep (set TOLLWAY_CACHE_DIR)", file=sys.stderr)
        return 1
    table = price_export.from_dataset()  # (a failure here fails the build, loudly)
    if not _write(path, price_table.encode(table)) or _read(path) != table:
        print(f"price table: could not write {path}", file=sys.stderr)
        return 1
    print(f"price table ({table.source}): {path}")
    return 0


if __name__ == "__main__":
    if sys.argv[1:] == ["--build"]:
        sys.exit(build())
    _main()
