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
2. granian's worker (Rust side) stops accepting and waits for every open response before it
   returns the loop to Python, so the deadline is kept by the worker itself: SIGUSR1 also
   starts a timer that cancels requests still in flight after drain_delay + drain_timeout.
   A worker that gets SIGTERM (or SIGINT) directly, with no SIGUSR1 before it, starts the
   same timer at drain_timeout (`install_readiness_signal`). Then `Gateway.__rsgi_del__`
   runs `drain()` (a last wait, for what the cut-off left), flushes the usage records,
   traces and plugin calls, and closes pools and the upstream client. granian kills a worker
   that is still alive drain_timeout plus a margin (`_KILL_MARGIN`, which holds all of that)
   after its SIGTERM.
3. `TollwayServer` turns SIGHUP into a SIGHUP to each worker, where `Gateway.reload` handles it.

The main process fixes the drain delay and the kill timeout when it starts, and a reload
cannot move them (it happens in the workers). So a worker drains by the limits its main
process started with (`DrainLimits`, passed down in the environment), not by a reloaded
`server.drain_*`: waiting for a longer reloaded drain_timeout got it killed mid-drain, its
cut-off streams without their error event and their usage records lost.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any

from granian import Granian

from tollway.core.config.server import Server
from tollway.gateway.lifecycle.reload import hangup_before_start

if TYPE_CHECKING:
    from tollway.gateway.app import Gateway

log = logging.getLogger("tollway")
_STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGUSR1})
DRAIN_ENV = "TOLLWAY_DRAIN_LIMITS"  # the main process's DrainLimits, for the workers it forks
# What a worker does after the cut-off, each within its deadline (Gateway.__rsgi_del__, in this
# order: the usage records first, they are what is billed):
CANCEL_WAIT_SECONDS = 1.0  # the requests cut off answer (a 503 or an SSE error event) and queue their usage
LEDGER_FLUSH_SECONDS = 2.5  # the queued usage records
TRACE_FLUSH_SECONDS = 2.0  # the queued spans (also given to a tracer a reload replaced)
PLUGIN_FLUSH_SECONDS = 1.0  # plugins' queued on_complete calls
_SHUTDOWN_SECONDS = CANCEL_WAIT_SECONDS + LEDGER_FLUSH_SECONDS + TRACE_FLUSH_SECONDS + PLUGIN_FLUSH_SECONDS
# Seconds granian waits beyond drain_timeout before it kills a worker: all of the above, and
# 1.5 s for the closes with no deadline of their own (pools, Redis, the key store).
_KILL_MARGIN = _SHUTDOWN_SECONDS + 1.5


@dataclass(frozen=True)
class DrainLimits:
    """The drain a worker keeps, as its main process enforces it: `delay` seconds between
    SIGUSR1 and SIGTERM, and a kill `kill_after` seconds after SIGTERM."""

    delay: float
    timeout: float  # server.drain_timeout
    kill_after: float  # math.inf: never killed

    @classmethod
    def of(cls, server: Server) -> DrainLimits:
        return cls(server.drain_delay, server.drain_timeout, math.ceil(server.drain_timeout + _KILL_MARGIN))

    @property
    def cut_off(self) -> float:
        """Seconds after the listener closed that requests still in flight are cut off:
        drain_timeout, but no later than leaves the shutdown its time before the kill."""
        return max(0.0, min(self.timeout, self.kill_after - _SHUTDOWN_SECONDS))

    def encode(self) -> str:
        return f"{self.delay!r} {self.timeout!r} {self.kill_after!r}"

    @classmethod
    def decode(cls, text: str) -> DrainLimits:
        delay, timeout, kill_after = (float(part) for part in text.split())
        return cls(delay, timeout, kill_after)


def started_limits(server: Server) -> DrainLimits:
    """The limits of the process this worker belongs to: those `TollwayServer` was started
    with (not the config this worker read, which may already be newer), or, for a gateway
    served otherwise, those of the config it is built with. A reload never changes them."""
    passed = os.environ.get(DRAIN_ENV)
    return DrainLimits.decode(passed) if passed else DrainLimits.of(server)


class TollwayServer(Granian):  # type: ignore[misc,valid-type]
    """granian's process server, with the gateway's readiness-first drain and in-place reload."""

    def __init__(self, *args: Any, drain_delay: float = 0.0, drain_timeout: float = 30.0, **kwargs: Any) -> None:
        kwargs.setdefault("workers_kill_timeout", math.ceil(drain_timeout + _KILL_MARGIN))
        super().__init__(*args, **kwargs)
        self.drain_delay = drain_delay
        kill_after = self.workers_kill_timeout if self.workers_kill_timeout else math.inf
        os.environ[DRAIN_ENV] = DrainLimits(drain_delay, drain_timeout, kill_after).encode()  # before the forks
        self._main_pid = os.getpid()

    def signal_handler_reload(self, *args: Any, **kwargs: Any) -> None:
        """SIGHUP: each worker reloads its config in place, instead of being respawned."""
        if os.getpid() != self._main_pid:  # a forked worker that has not replaced this handler yet
            hangup_before_start()
            return
        self._signal_workers(signal.SIGHUP)

    def signal_handler_interrupt(self, *args: Any, **kwargs: Any) -> None:
        """SIGTERM/SIGINT: from now on a worker's exit is the stop's, not a crash. A stop sent to
        the whole process group (a terminal's ^C, a harness or runtime that signals every process)
        reaches the workers too: one that finished before granian's shutdown marked it (after the
        drain delay) was logged as an unexpected exit, and the gateway exited 1."""
        for worker in list(self.wrks):
            worker.interrupt_by_parent = True
        super().signal_handler_interrupt(*args, **kwargs)

    def shutdown(self, exit_code: int = 0) -> None:
        if self.interrupt_signal:  # (a worker that stopped cleanly before the mark above, all the same)
            self.interrupt_children[:] = [i for i in self.interrupt_children if not self._stopped_cleanly(i)]
        self._signal_workers(signal.SIGUSR1)
        if self.drain_delay > 0:
            log.info("draining: /readyz is 503, closing the listener in %.1fs", self.drain_delay)
            time.sleep(self.drain_delay)
        super().shutdown(exit_code)

    def _stopped_cleanly(self, idx: int) -> bool:
        return any(w.idx == idx and getattr(w.inner, "exitcode", None) == 0 for w in self.wrks)

    def _signal_workers(self, sig: int) -> None:
        for worker in list(self.wrks):
            pid = worker.inner.pid
            if pid is not None and worker.is_alive():
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass  # it exited between the check and the signal: nothing to tell it


_early_stops: set[int] = set()


def catch_early_stops(parent: int) -> None:
    """In a new worker of `parent` (serve's process), right after the fork (`serve` registers
    it): a stop is remembered, to be taken once the worker serves (`stop_signals_held`). A
    forked worker inherits the main process's handlers, which took a SIGTERM meant for a worker
    still starting as the main process's own and lost it: the worker then served on until
    killed. (The registration, the handlers and a held mask are inherited too: a process a
    worker forks gets the default actions back, and the signals unblocked.)"""
    if os.getppid() != parent:
        for sig in _STOP_SIGNALS:
            if signal.getsignal(sig) is _remember_stop:
                signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)  # (forked during a held start)
        return
    _early_stops.clear()
    for sig in _STOP_SIGNALS:
        try:
            signal.signal(sig, _remember_stop)
        except ValueError:  # not the main thread (an embedding server): its signals are its own
            return


def _remember_stop(signum: int, _frame: object) -> None:
    _early_stops.add(signum)


@contextlib.contextmanager
def stop_signals_held(loop: asyncio.AbstractEventLoop) -> Iterator[None]:
    """Around a worker's start (`Gateway.__rsgi_init__`): SIGTERM, SIGINT and SIGUSR1 are held
    (blocked, pending) until `loop` runs the server, and one that came before the start
    (`catch_early_stops`) is sent again then. uvloop reads signals only while its loop runs,
    and granian's server listens for the stop only once it serves: a SIGTERM that came during
    the start, or between it and the serving loop, was lost, and the worker served on until
    killed (and a SIGUSR1 before the readiness handler ended it outright).

    The mask is per thread and inherited: threads started meanwhile (the ledger's, granian's)
    keep these signals blocked, so the process's signals come to this thread, and so would a
    child process started from them. Nothing started in the window may run a child (the price
    table's is run from create_app, before it). A start that fails lets them in at once."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    if _STOP_SIGNALS <= held:  # held already (a start within a start): the outer hold lets them in
        yield
        return
    try:
        yield
    except BaseException:
        _let_in(held)
        raise
    loop.call_soon(_let_in, held)  # among the first callbacks the serving loop runs


def _let_in(mask: set[int | signal.Signals]) -> None:
    for sig in sorted(_early_stops):  # pending until the mask below lets them in
        os.kill(os.getpid(), sig)
    _early_stops.clear()
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def install_readiness_signal(loop: asyncio.AbstractEventLoop, gateway: Gateway) -> None:
    """SIGUSR1 (from TollwayServer.shutdown) marks the worker not ready and starts the clock:
    requests still in flight after drain_delay + drain_timeout are cut off (the limits the
    process started with: the main process sends SIGTERM and kills by those).

    A SIGTERM or SIGINT sent to the worker itself (an operator's `kill <pid>`, a supervisor that
    signals each process) makes granian close its listener at once, with no SIGUSR1 before it:
    it starts the clock too, at drain_timeout. granian hands the loop back only once every open
    response ended, so without it a worker with an endless stream never exited."""
    def begin_drain() -> None:
        limits = gateway.drain_limits
        _cut_off_in(loop, gateway, limits.delay + limits.cut_off)

    def stopped() -> None:
        loop.call_soon_threadsafe(_cut_off_in, loop, gateway, gateway.drain_limits.cut_off)

    loop.add_signal_handler(signal.SIGUSR1, begin_drain)
    for sig in (signal.SIGTERM, signal.SIGINT):
        _also_on(sig, stopped)


def _also_on(sig: signal.Signals, call: Callable[[], None]) -> None:
    """Run `call` when `sig` comes, and still what handled it before: granian's stop. Chained at
    the Python handler, not with `loop.add_signal_handler`, which would replace granian's (the
    loop still dispatches its own from the wakeup fd: asyncio's and uvloop's Python handler is
    a no-op or a note, which `previous` keeps)."""
    previous = signal.getsignal(sig)

    def handler(signum: int, frame: FrameType | None) -> None:
        call()
        if callable(previous):
            previous(signum, frame)

    signal.signal(sig, handler)


def _cut_off_in(loop: asyncio.AbstractEventLoop, gateway: Gateway, seconds: float) -> None:
    """Not ready from now on, and what is still in flight `seconds` from now is cut off, unless
    an earlier stop set an earlier cut-off (SIGUSR1 then the main process's SIGTERM: the first)."""
    gateway.ready = False
    timer = gateway.drain_cut_off
    if timer is not None and timer.when() <= loop.time() + seconds:
        return
    if timer is not None:
        timer.cancel()
    gateway.drain_cut_off = loop.call_later(seconds, _start_cancel, gateway)


def _start_cancel(gateway: Gateway) -> None:
    """granian's worker waits for every open response before it hands the loop back to the
    app, so the drain deadline must be enforced here, by ending what is still running."""
    gateway.drain_task = asyncio.get_running_loop().create_task(_cancel(gateway))


async def _cancel(gateway: Gateway) -> int:
    left = list(gateway.in_flight)
    if left:
        log.warning("drain timeout: cutting off %d requests still in flight", len(left))
        for task in left:
            task.cancel()
        await asyncio.wait(left, timeout=CANCEL_WAIT_SECONDS)
    return len(left)


async def drain(gateway: Gateway, timeout: float) -> int:
    """Wait until no request is in flight, or `timeout` seconds; then cancel the rest, so the
    worker can exit. Returns how many were cut off."""
    gateway.ready = False
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    if gateway.in_flight:
        log.info("draining %d requests in flight (up to %.0fs)", len(gateway.in_flight), timeout)
    while gateway.in_flight and loop.time() < deadline:
        await asyncio.sleep(0.02)
    return await _cancel(gateway)
