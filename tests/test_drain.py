"""Graceful drain: SIGTERM to the main process -> /readyz 503 first, in-flight streams finish, exit 0."""
from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import openai
import pytest

from tests.harness import TEST_KEY, GatewayProcess, key_hash


def config(delay: float, timeout: float, chunk_delay: float, chunks: int, extra: str = "") -> str:
    return f"""
providers:
  - {{name: slow, schema: fake, fake_chunk_delay: {chunk_delay}, fake_chunks: {chunks}}}
models:
  - {{name: slow, targets: [{{provider: slow}}]}}
keys:
  - {{name: app, key_hash: "{key_hash(TEST_KEY)}"}}
server: {{drain_delay: {delay}, drain_timeout: {timeout}, access_log: false}}
{extra}"""


def readyz(gw: GatewayProcess) -> int | None:
    """The /readyz status, or None once the listener is closed."""
    try:
        with urllib.request.urlopen(gw.url + "/readyz", timeout=1) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def stream_in_thread(gw: GatewayProcess, result: dict) -> threading.Thread:
    def run() -> None:
        sdk = openai.OpenAI(base_url=gw.url + "/v1", api_key=TEST_KEY, max_retries=0, timeout=30)
        try:
            stream = sdk.chat.completions.create(model="slow", messages=[{"role": "user", "content": "hi"}], stream=True)
            result["chunks"] = []  # grows as they come: a test can wait for the stream to be under way
            for chunk in stream:
                result["chunks"].append(chunk)
        except openai.OpenAIError as exc:
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_sigterm_drops_readiness_first_then_finishes_streams_and_exits_0():
    gw = GatewayProcess(config(delay=1.0, timeout=10, chunk_delay=0.25, chunks=10))
    try:
        result: dict = {}
        thread = stream_in_thread(gw, result)
        time.sleep(0.5)  # the stream is under way
        os.kill(gw.proc.pid, signal.SIGTERM)  # the main process only, as Kubernetes does
        statuses = []
        deadline = time.monotonic() + 0.8
        while time.monotonic() < deadline:
            statuses.append(readyz(gw))
            time.sleep(0.05)
        assert 503 in statuses and 200 not in statuses[-3:], statuses
        thread.join(15)
        assert "error" not in result, result.get("error")
        assert len(result["chunks"]) >= 10, "the in-flight stream was cut short"
        assert gw.proc.wait(15) == 0
        assert readyz(gw) is None
    finally:
        gw.stop()


def test_a_stop_sent_to_the_whole_group_exits_0_though_workers_stop_first():
    """^C in a terminal (or a harness's killpg) signals the workers too: they stop at once while
    the main process waits out the drain delay, and granian took their exits for crashes
    ("Unexpected exit from worker", exit code 1). CI saw it without a delay, by a race."""
    gw = GatewayProcess(config(delay=1.0, timeout=10, chunk_delay=0.0, chunks=1), workers=2)
    try:
        os.killpg(gw.proc.pid, signal.SIGTERM)
        code = gw.proc.wait(20)
        err = gw.stderr()
        assert code == 0, err[-2000:]
        assert "Unexpected exit" not in err, err[-2000:]
    finally:
        gw.stop()


def test_drain_timeout_bounds_the_wait():
    gw = GatewayProcess(config(delay=0.0, timeout=1.0, chunk_delay=1.0, chunks=60))
    try:
        result: dict = {}
        thread = stream_in_thread(gw, result)
        time.sleep(0.5)
        start = time.monotonic()
        os.kill(gw.proc.pid, signal.SIGTERM)
        code = gw.proc.wait(15)
        took = time.monotonic() - start
        thread.join(10)
        assert took < 4, f"shutdown took {took:.1f}s with a 1s drain timeout"
        assert code == 0
        assert "drain timeout" in gw.stderr()
        assert "shutting down" in str(result.get("error")), "the cut-off stream must end with an error event"
    finally:
        gw.stop()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_worker_stopped_directly_keeps_the_drain_deadline_and_exits(sig):
    """A stop sent to a worker, not to the main process (an operator's `kill`, a supervisor
    that signals the worker): granian closes its listener and waits for every open response
    before it hands the loop back, so only SIGUSR1 started the cut-off, and a worker with an
    endless stream accepted nothing and never exited. Its own stop starts the cut-off too."""
    gw = GatewayProcess(config(delay=0.0, timeout=1.0, chunk_delay=1.0, chunks=600))
    try:
        worker = int(subprocess.run(["pgrep", "-P", str(gw.proc.pid)], capture_output=True, text=True).stdout.split()[0])
        result: dict = {}
        thread = stream_in_thread(gw, result)
        until(lambda: len(result.get("chunks", ())) >= 1)  # the stream is under way
        start = time.monotonic()
        os.kill(worker, sig)
        thread.join(10)
        assert "shutting down" in str(result.get("error")), "the cut-off stream must end with the shutdown event"
        assert time.monotonic() - start < 4, "the stream outlived the 1s drain_timeout"
        until(lambda: not Path(f"/proc/{worker}").exists() or "zombie" in Path(f"/proc/{worker}/status").read_text())
        assert "drain timeout" in gw.stderr()
    finally:
        gw.stop()


def until(check, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_drain_timeout_raised_by_a_reload_applies_at_the_restart_not_past_the_kill():
    """granian's main process kills a worker a margin after the drain_timeout it started with.
    A reload that raised drain_timeout made the worker wait for the new one: killed mid-drain,
    its stream ended with a bare connection error instead of the SSE error event, and the
    usage record was lost. The worker keeps the limits the process started with, and says so."""
    ledger = "store: {backend: sqlite, path: ledger.db}\n"
    gw = GatewayProcess(config(delay=0.0, timeout=1.0, chunk_delay=1.0, chunks=60, extra=ledger))
    try:
        gw.config_path.write_text(config(delay=0.0, timeout=30, chunk_delay=1.0, chunks=60, extra=ledger))
        gw.signal(signal.SIGHUP)
        until(lambda: "config reloaded" in gw.raw_output())
        assert "server.drain_delay and server.drain_timeout changes take effect when the gateway restarts" \
            in gw.raw_output()
        result: dict = {}
        thread = stream_in_thread(gw, result)
        until(lambda: len(result.get("chunks", ())) >= 1)  # the stream is under way
        start = time.monotonic()
        os.kill(gw.proc.pid, signal.SIGTERM)
        code = gw.proc.wait(20)
        took = time.monotonic() - start
        thread.join(10)
        err = gw.stderr()
        assert "Killing worker" not in err, err
        assert code == 0
        assert took < 4, f"shutdown took {took:.1f}s: the reloaded 30s drain_timeout was used"
        assert "shutting down" in str(result.get("error")), "the cut-off stream must end with an error event"
        rows = sqlite3.connect(gw.dir / "ledger.db").execute("select count(*) from usage_records").fetchone()[0]
        assert rows == 1, "the cut-off stream's usage record must be written"
    finally:
        gw.stop()


class StartingGateway(GatewayProcess):
    """A gateway whose two workers are inside their start when told to stop: with no cache to
    keep the price table in, each builds it in a child process as it starts (create_app)."""

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self._building()) < 2:
            assert time.monotonic() < deadline and self.proc.poll() is None, self.stderr()
            time.sleep(0.01)

    def _building(self) -> list[str]:
        found = subprocess.run(["pgrep", "-g", str(self.proc.pid), "-f", "tollway.gateway.price_source"],
                               capture_output=True, text=True)
        return found.stdout.split()


@pytest.mark.parametrize("whom", ["group", "main"])
def test_a_stop_during_the_workers_start_is_kept_and_taken_once_they_serve(whom):
    """A forked worker first has granian's main-process handlers, and uvloop reads signals only
    while its loop runs: a SIGTERM during a worker's start was lost and the worker served on
    until killed 35 s later; a SIGUSR1 (the drain's first step) ended it outright
    (tollway.gateway.lifecycle.drain.catch_early_stops, stop_signals_held)."""
    gw = StartingGateway(config(delay=0.0, timeout=30, chunk_delay=0.0, chunks=1), workers=2,
                         env={"TOLLWAY_CACHE_DIR": "relative"})  # (no cache: each worker builds)
    try:
        start = time.monotonic()
        if whom == "group":  # a terminal's ^C, or a harness's stop: every process at once
            os.killpg(gw.proc.pid, signal.SIGTERM)
        else:  # Kubernetes: the main process, which then tells the workers
            os.kill(gw.proc.pid, signal.SIGTERM)
        code = gw.proc.wait(20)
        took = time.monotonic() - start
        err = gw.stderr()
        assert took < 10, f"stopping a starting gateway took {took:.1f}s: a worker missed the stop"
        assert code == 0
        assert "Killing worker" not in err and "unexpectedly" not in err, err
        assert len(re.findall(r'"Started worker-\d"', err)) == 2, "each worker finished its start (not killed)"
        assert len(re.findall(r'"Stopping worker-\d"', err)) == 2, "then stopped as a serving worker does"
    finally:
        gw.stop()


_HELD = """
import asyncio, os, signal, sys, time
import uvloop
from tollway.gateway.lifecycle.drain import catch_early_stops, stop_signals_held
early, held = sys.argv[1] == "1", sys.argv[2] == "1"
loop = uvloop.new_event_loop()
got = []
catch_early_stops(os.getppid())  # (serve registers it to run in each worker it forks)
if early:
    os.kill(os.getpid(), signal.SIGTERM)  # before granian's handler: remembered
loop.add_signal_handler(signal.SIGTERM, lambda: got.append("TERM"))  # granian's, in the worker
if held:
    with stop_signals_held(loop):
        if not early:
            os.kill(os.getpid(), signal.SIGTERM)  # during __rsgi_init__, the loop not running
        time.sleep(0.05)
elif not early:
    os.kill(os.getpid(), signal.SIGTERM)
loop.run_until_complete(asyncio.sleep(0.2))  # the server's loop
print(got)
"""


@pytest.mark.parametrize("early", [True, False])
@pytest.mark.parametrize("held", [True, False])
def test_a_stop_before_the_loop_runs_reaches_its_handler_only_when_held(early, held):
    """The mechanism the end-to-end test above relies on, in one process: uvloop drops a signal
    that comes while its loop is not running, and one before the handler is set reaches only
    catch_early_stops; held, both reach the loop's handler once it runs."""
    done = subprocess.run([sys.executable, "-c", _HELD, str(int(early)), str(int(held))], capture_output=True,
                          text=True, timeout=30, cwd=str(Path(__file__).resolve().parent.parent))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ("['TERM']" if held else "[]")


_FORKS = """
import os, signal
from tollway.gateway.lifecycle.drain import catch_early_stops
main = os.getpid()
os.register_at_fork(after_in_child=lambda: catch_early_stops(main))  # as serve does
worker = os.fork()
if worker == 0:
    print("worker", signal.getsignal(signal.SIGTERM).__name__, flush=True)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # (as during a held start)
    child = os.fork()  # e.g. a plugin's multiprocessing pool
    if child == 0:
        print("child", signal.getsignal(signal.SIGTERM) == signal.SIG_DFL, flush=True)
        print("blocked", signal.SIGTERM in signal.pthread_sigmask(signal.SIG_BLOCK, []), flush=True)
        os._exit(0)
    os.waitpid(child, 0)
    os._exit(0)
os.waitpid(worker, 0)
"""


def test_only_serves_own_workers_remember_an_early_stop():
    """serve's at-fork registration is inherited by its workers: a process a worker forks must
    keep SIGTERM's default action, not remember it forever."""
    done = subprocess.run([sys.executable, "-c", _FORKS], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["worker", "_remember_stop", "child", "True", "blocked", "False"]


def test_a_start_that_fails_lets_the_held_signals_in_at_once():
    """An __rsgi_init__ that raises (a refusal) must not leave the worker deaf to SIGTERM."""
    script = (
        "import asyncio, signal\n"
        "import uvloop\n"
        "from tollway.gateway.lifecycle.drain import stop_signals_held\n"
        "loop = uvloop.new_event_loop()\n"
        "try:\n"
        "    with stop_signals_held(loop):\n"
        "        raise SystemExit(1)\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted(signal.pthread_sigmask(signal.SIG_BLOCK, [])))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("timeout", [0.0, 1.0, 1.7, 30.0])
def test_the_shutdown_after_the_cut_off_fits_before_granian_kills_the_worker(timeout):
    """After the cut-off, the worker answers what it cut off and flushes the usage records,
    spans and plugin calls (Gateway.__rsgi_del__); granian's kill must come after all that."""
    from tollway.core.config.server import Server
    from tollway.gateway.lifecycle import drain

    limits = drain.DrainLimits.of(Server(drain_timeout=timeout))
    budget = drain.CANCEL_WAIT_SECONDS + drain.LEDGER_FLUSH_SECONDS + drain.TRACE_FLUSH_SECONDS \
        + drain.PLUGIN_FLUSH_SECONDS
    assert limits.cut_off == timeout, "requests get the whole drain_timeout"
    assert limits.kill_after - limits.cut_off >= budget + 1


def test_a_kill_timeout_shorter_than_the_drain_moves_the_cut_off_earlier():
    from tollway.gateway.lifecycle.drain import DrainLimits

    limits = DrainLimits(delay=5.0, timeout=30.0, kill_after=20)  # (a workers_kill_timeout given to TollwayServer)
    assert limits.cut_off == 20 - 6.5
    assert DrainLimits(0.0, 30.0, 3).cut_off == 0.0
    assert DrainLimits.decode(limits.encode()) == limits
    unbounded = DrainLimits(0.0, 30.0, float("inf"))  # (granian never kills)
    assert DrainLimits.decode(unbounded.encode()).cut_off == 30.0


def test_a_worker_drains_by_the_limits_its_main_process_started_with(monkeypatch):
    """`serve`'s workers read the config file themselves, possibly newer than the main process's."""
    from tollway.core.config.server import Server
    from tollway.gateway.lifecycle.drain import DRAIN_ENV, DrainLimits, started_limits

    monkeypatch.setenv(DRAIN_ENV, DrainLimits(1.0, 2.0, 10).encode())
    assert started_limits(Server(drain_delay=7.0, drain_timeout=60.0)) == DrainLimits(1.0, 2.0, 10)
    monkeypatch.delenv(DRAIN_ENV)
    assert started_limits(Server(drain_delay=7.0, drain_timeout=60.0)) == DrainLimits(7.0, 60.0, 68)
