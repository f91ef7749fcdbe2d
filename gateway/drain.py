"""Graceful drain on SIGTERM, and SIGHUP as an in-process reload, on top of granian 2.8.

How granian stops (granian/server/common.py, mp.py): the main process catches SIGTERM/SIGINT
and calls `shutdown()`, which sends SIGTERM to every worker and waits `workers_kill_timeout`
before killing it. A worker's SIGTERM closes its listener (Rust side) and ends the Python
loop's `run_until_complete`; granian then calls the app's `__rsgi_del__(loop)`, which may run
the loop again. And SIGHUP in the main process makes granian respawn every worker, which
would re-import the config and lose pool state, or crash on a bad file.

So, in order:
1. `TollwayServer.shutdown` (main process) first sends SIGUSR1 to each worker: the gateway
   marks itself not ready (/readyz 503) while still serving, and the main process waits
   `server.drain_delay` seconds, long enough for a load balancer or Kubernetes to stop
   sending new requests. Then granian's own shutdown proceeds (listener closed).
2. `Gateway.__rsgi_del__` runs `drain()`: the loop keeps running until the requests in flight
   finish or `server.drain_timeout` passes; then pools and the upstream client close.
   granian waits for the worker at most drain_timeout plus a margin before killing it.
3. `TollwayServer` turns SIGHUP into a SIGHUP to each worker, where gateway.reload handles it.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from typing import Any

from granian import Granian

log = logging.getLogger("tollway")
_KILL_MARGIN = 5.0  # seconds granian waits beyond drain_timeout before it kills a worker


class TollwayServer(Granian):  # type: ignore[misc,valid-type]
    """granian's process server, with the gateway's readiness-first drain and in-place reload."""

    def __init__(self, *args: Any, drain_delay: float = 0.0, drain_timeout: float = 30.0, **kwargs: Any) -> None:
        kwargs.setdefault("workers_kill_timeout", int(drain_timeout + _KILL_MARGIN))
        super().__init__(*args, **kwargs)
        self.drain_delay = drain_delay

    def signal_handler_reload(self, *args: Any, **kwargs: Any) -> None:
        """SIGHUP: each worker reloads its config in place, instead of being respawned."""
        self._signal_workers(signal.SIGHUP)

    def shutdown(self, exit_code: int = 0) -> None:
        self._signal_workers(signal.SIGUSR1)
        if self.drain_delay > 0:
            log.info("draining: /readyz is 503, closing the listener in %.1fs", self.drain_delay)
            time.sleep(self.drain_delay)
        super().shutdown(exit_code)

    def _signal_workers(self, sig: int) -> None:
        for worker in list(self.wrks):
            pid = worker.inner.pid
            if pid is not None and worker.is_alive():
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass  # it exited between the check and the signal: nothing to tell it


def install_readiness_signal(loop: asyncio.AbstractEventLoop, gateway: Any) -> None:
    """SIGUSR1 (from TollwayServer.shutdown) marks the worker not ready."""
    def not_ready() -> None:
        gateway.ready = False

    loop.add_signal_handler(signal.SIGUSR1, not_ready)


async def drain(gateway: Any, timeout: float) -> int:
    """Wait until no request is in flight, or `timeout` seconds. Returns how many were left."""
    gateway.ready = False
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    if gateway.in_flight:
        log.info("draining %d requests in flight (up to %.0fs)", gateway.in_flight, timeout)
    while gateway.in_flight and loop.time() < deadline:
        await asyncio.sleep(0.02)
    if gateway.in_flight:
        log.warning("drain timeout: %d requests still in flight are cut off", gateway.in_flight)
    return int(gateway.in_flight)
