"""Hot reload: SIGHUP or a changed config file -> a validated new config, swapped in whole.

Each worker process reloads itself (granian's main process forwards SIGHUP to the workers, see
tollway.gateway.lifecycle.drain.TollwayServer), so there is no moment when some workers run a config another
worker rejected for a reason of its own. The new file is loaded and validated completely
before anything changes; a bad one is logged with its reason (path and line) and the old
config keeps serving. A good one goes to `Gateway.reload`, which swaps the runtime: requests
in flight finish on the runtime they started with, new ones get the new one, so a reload
never drops a request or a stream.

The file is checked by polling its stat (mtime, size, inode) every `reload_check_interval`
seconds: that also catches Kubernetes ConfigMap updates, which swap a symlink rather than
write the file, and needs no inotify.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING

from tollway.core import config as config_mod
from tollway.core.config import Config
from tollway.core.providers.registry import AdapterUnavailable
from tollway.gateway.plugins.loader import PluginLoadError

if TYPE_CHECKING:
    from tollway.gateway.app import Gateway

log = logging.getLogger("tollway")


class ConfigWatcher:
    """Reloads `path` into `apply` on SIGHUP and when the file changes."""

    def __init__(self, path: str, apply: Callable[[Config], None], interval: float) -> None:
        self.path, self.apply, self.interval = path, apply, interval
        self.reloads = {"ok": 0, "rejected": 0}  # exported by tollway.gateway.telemetry.routing_metrics
        self._seen = _signature(path)
        self._task: asyncio.Task[None] | None = None

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        """Handle SIGHUP on `loop` and, if an interval is set, poll the file there."""
        loop.add_signal_handler(signal.SIGHUP, self.reload, "SIGHUP")
        if self.interval > 0:
            self._task = loop.create_task(self._poll())

    def close(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.remove_signal_handler(signal.SIGHUP)
        if self._task is not None:
            self._task.cancel()

    def reload(self, reason: str) -> bool:
        """Load, validate and apply the file now. Returns whether the new config was applied."""
        self._seen = _signature(self.path)
        try:
            new = config_mod.load(self.path)
        except config_mod.ConfigError as exc:
            self.reloads["rejected"] += 1
            log.error("config reload (%s) rejected, still serving the previous config: %s", reason, exc)
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
        log.info("config reloaded (%s): %d providers, %d models, %d keys",
                 reason, len(new.providers), len(new.models), len(new.keys))
        return True

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            if _signature(self.path) != self._seen:
                self.reload("file changed")


def _signature(path: str) -> tuple[int, int, int] | None:
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
    return ConfigWatcher(gateway.config_path, gateway.reload, interval)
