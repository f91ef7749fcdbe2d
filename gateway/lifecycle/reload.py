"""Hot reload: SIGHUP or a changed config file -> a validated new config, swapped in whole.

Each worker process reloads itself (granian's main process forwards SIGHUP to the workers, see
tollway.gateway.lifecycle.drain.TollwayServer), so there is no moment when some workers run a config another
worker rejected for a reason of its own. The new file is loaded and validated completely
before anything changes; a bad one is logged with its reason (path and line) and the old
config keeps serving. A good one goes to `Gateway.reload`, which swaps the runtime: requests
in flight finish on the runtime they started with, new ones get the new one, so a reload
never drops a request or a stream.

The file is checked by polling its stat (mtime, size, inode) every `reload_check_interval`
seconds (the one in force: a reload that changes it restarts the poll): that also catches
Kubernetes ConfigMap updates, which swap a symlink rather than write the file, and needs no
inotify.

A worker reads its config before its loop runs, and handles SIGHUP only once the watcher is
installed on that loop. So nothing sent or written in between is lost: a SIGHUP that arrives
earlier is remembered (`hangup_before_start`, installed first thing in the worker, and by
the main process's handler when a forked worker inherited it), and the watcher compares the
file with its signature from when the config was read; either one reloads at install.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING

from tollway.core import config as config_mod
from tollway.core.config import Config
from tollway.core.providers.registry import AdapterUnavailable
from tollway.gateway.plugins.loader import PluginLoadError

if TYPE_CHECKING:
    from tollway.gateway.app import Gateway

log = logging.getLogger("tollway")
Signature = tuple[int, int, int]  # a file's (mtime_ns, size, inode)
_early_hangup = False  # a SIGHUP this process got before its watcher was installed


def hangup_before_start(*_: object) -> None:
    """The SIGHUP handler of a worker that has no watcher yet: remember it for `install`."""
    global _early_hangup
    _early_hangup = True


def catch_early_hangups() -> None:
    """In a new worker, before anything slow: SIGHUP is remembered, not fatal (its default
    action ends the process) and not the main process's handler (a forked worker inherits it)."""
    try:
        signal.signal(signal.SIGHUP, hangup_before_start)
    except ValueError:  # not the main thread (an embedding server): its SIGHUP is its own
        pass


class ConfigWatcher:
    """Reloads `path` into `apply` on SIGHUP and when the file changes."""

    def __init__(self, path: str, apply: Callable[[Config], None], interval: float,
                 seen: Signature | None = None) -> None:
        """`seen`: the file's signature when the config being served was read (default: now)."""
        self.path, self.apply, self.interval = path, apply, interval
        self.reloads = {"ok": 0, "rejected": 0}  # exported by tollway.gateway.telemetry.routing_metrics
        self._seen = seen if seen is not None else signature(path)
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        """Handle SIGHUP on `loop` and, if an interval is set, poll the file there."""
        global _early_hangup
        self._loop = loop
        loop.add_signal_handler(signal.SIGHUP, self.reload, "SIGHUP")
        self._start_polling()
        if _early_hangup:
            _early_hangup = False
            self.reload("SIGHUP before start")
        elif signature(self.path) != self._seen:
            self.reload("file changed before start")

    def close(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.remove_signal_handler(signal.SIGHUP)
        if self._task is not None:
            self._task.cancel()
        self._loop = None

    def _start_polling(self) -> None:
        if self._loop is not None and self.interval > 0:
            self._task = self._loop.create_task(self._poll())

    def _follow_interval(self, interval: float) -> None:
        """A reloaded `reload_check_interval` applies at once: the poll restarts with it (an hour's
        sleep is not waited out, 0 stops it), rather than at the next restart."""
        if interval == self.interval:
            return
        self.interval = interval
        if self._task is not None:
            self._task.cancel()  # (the calling task, when a poll found the change: it ends at its next wait)
            self._task = None
        self._start_polling()

    def reload(self, reason: str) -> bool:
        """Load, validate and apply the file now. Returns whether the new config was applied."""
        self._seen = signature(self.path)
        try:
            new = config_mod.load(self.path)
        except config_mod.ConfigError as exc:
            self.reloads["rejected"] += 1
            log.error("config reload (%s) rejected, still serving the previous config: %s", reason, exc)
            return False
        except Exception as exc:  # a bug in loading (it means to raise only ConfigError) must not end the poll task
            self.reloads["rejected"] += 1
            log.error("config reload (%s) failed reading the file (%s), still serving the previous config",
                      reason, _raised_at(exc))
            return False
        try:
            self.apply(new)
        except (AdapterUnavailable, PluginLoadError) as exc:  # the installation, not the file: say which, no traceback
            self.reloads["rejected"] += 1
            log.error("config reload (%s) rejected, still serving the previous config: %s", reason, exc)
            return False
        except Exception:  # a bug in applying must not end the poll task, and with it the watching
            self.reloads["rejected"] += 1
            log.exception("config reload (%s) failed, still serving the previous config", reason)
            return False
        self.reloads["ok"] += 1
        self._follow_interval(new.server.reload_check_interval)
        log.info("config reloaded (%s): %d providers, %d models, %d keys",
                 reason, len(new.providers), len(new.models), len(new.keys))
        return True

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            if signature(self.path) != self._seen:
                self.reload("file changed")


def _raised_at(exc: Exception) -> str:
    """The exception's type and where it was raised, without its message: a loading bug's
    message may quote the file, and a config file holds secrets (`${VARS}` substituted)."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return type(exc).__name__
    last = frames[-1]
    return f"{type(exc).__name__} in {last.name}, {os.path.basename(last.filename)}:{last.lineno}"


def signature(path: str) -> Signature | None:
    """What changes when the file does; None while it is missing (mid-replace)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def watcher_for(gateway: Gateway) -> ConfigWatcher | None:
    """The watcher for a gateway started from a file; None for one built in memory (tests)."""
    if not gateway.config_path:
        return None
    interval = gateway.runtime.config.server.reload_check_interval
    return ConfigWatcher(gateway.config_path, gateway.reload, interval, gateway.config_signature)
