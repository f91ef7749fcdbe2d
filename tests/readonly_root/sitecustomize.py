"""A read-only root filesystem for the Python process this directory is on PYTHONPATH of.

tests/test_deploy_manifests.py starts `tollway serve` the way a Deployment would, under the
pod's `readOnlyRootFilesystem: true`. Remounting / read-only needs privileges a test run
may not have (and root writes through permission bits), so this does it in Python instead:
an audit hook (PEP 578) fails every write outside the directories listed in
TOLLWAY_WRITABLE_PATHS (the pod's writable volumes) with EROFS, as the kernel would.

Python imports sitecustomize at start-up, so the hook is in every process of the gateway:
granian's forked workers inherit it, and a spawned interpreter imports it again.

What it cannot see: writes made by native code (the Rust server, C extensions) that do not
go through Python. Each denied write is reported on stderr with DENIED in front, so a test
can also catch writes the program attempted and quietly survived.
"""
from __future__ import annotations

import errno
import os
import sys

DENIED = "readonly_root: DENIED write to "

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

# audit event -> (position of a path it creates or changes, position of its dir_fd or None)
_PATH_EVENTS: dict[str, tuple[tuple[int, int | None], ...]] = {
    "os.mkdir": ((0, 2),), "os.rmdir": ((0, 1),), "os.remove": ((0, 1),), "os.rename": ((0, 2), (1, 3)),
    "os.symlink": ((1, 2),), "os.link": ((1, 3),), "os.truncate": ((0, None),), "os.chmod": ((0, 2),),
    "os.chown": ((0, 3),), "os.utime": ((0, 3),), "shutil.copyfile": ((1, None),), "shutil.rmtree": ((0, 1),),
}


def _writable_roots() -> list[str] | None:
    listed = os.environ.get("TOLLWAY_WRITABLE_PATHS")
    if listed is None:
        return None
    # /dev is its own writable mount in every pod (/dev/null, /dev/shm, the termination log)
    return [os.path.realpath(p) for p in listed.split(os.pathsep) if p] + ["/dev"]


def _allowed(path: object, roots: list[str], dir_fd: object = None) -> bool:
    if not isinstance(path, str | bytes | os.PathLike):
        return True  # an open file descriptor (the check happened when it was opened), or nothing
    name = os.fsdecode(path)
    if isinstance(dir_fd, int) and not os.path.isabs(name):
        name = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), name)
    name = os.path.realpath(name)
    return any(name == root or name.startswith(root.rstrip("/") + "/") for root in roots)


def _deny(path: object) -> None:
    name = os.fsdecode(path) if isinstance(path, str | bytes | os.PathLike) else repr(path)
    os.write(2, f"{DENIED}{name}\n".encode())
    raise OSError(errno.EROFS, os.strerror(errno.EROFS), name)


def _install(roots: list[str]) -> None:
    def hook(event: str, args: tuple[object, ...]) -> None:
        if event == "open":
            path, _mode, flags = args
            if isinstance(flags, int) and flags & _WRITE_FLAGS and not _allowed(path, roots):
                _deny(path)
        elif event == "socket.bind":  # a Unix socket is a file too
            address = args[1]
            if isinstance(address, str | bytes) and address and address[:1] not in ("\0", b"\0"):
                if not _allowed(address, roots):
                    _deny(address)
        elif event in _PATH_EVENTS:
            for at, dir_fd_at in _PATH_EVENTS[event]:
                dir_fd = args[dir_fd_at] if dir_fd_at is not None and dir_fd_at < len(args) else None
                if at < len(args) and not _allowed(args[at], roots, dir_fd):
                    _deny(args[at])

    sys.addaudithook(hook)


_roots = _writable_roots()
if _roots is not None:
    _install(_roots)
