"""Real servers for tests: `tollway serve` subprocesses and fake upstreams in threads.

Every server binds 127.0.0.1 on a free port, and is stopped by the fixture that started it.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tollway.core.security.keys import hash_key

ROOT = Path(__file__).resolve().parent.parent
TEST_KEY = "sk-tollway-test-key-0123456789"
OTHER_KEY = "sk-tollway-other-key-9876543210"
ADMIN_KEY = "sk-tollway-admin-key-5555555555"
UPSTREAM_SECRET = "sk-upstream-SECRET-abcdef123456"


def post_and_leave(port: int, path: str, body: dict[str, Any], request_id: str, key: str = TEST_KEY) -> bytes:
    """POST `body` as JSON over a raw socket, take the first bytes of the answer (its head), and
    leave: a client that goes away once its answer began. Returns what it read."""
    data = json.dumps(body).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\n"
                     f"x-request-id: {request_id}\r\ncontent-type: application/json\r\n"
                     f"content-length: {len(data)}\r\n\r\n".encode() + data)
        return sock.recv(65536)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def key_hash(key: str = TEST_KEY) -> str:
    return hash_key(key)


class GatewayProcess:
    """A `tollway serve` subprocess. `.url` is the base URL, `.log_lines()` the access log."""

    def __init__(self, config_text: str, env: dict[str, str] | None = None, workers: int = 1,
                 extra_args: list[str] | None = None, port: int | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="tollway-test-"))
        self.config_path = self.dir / "config.yaml"
        self.config_path.write_text(config_text)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.stdout_path = self.dir / "stdout.log"
        self.stderr_path = self.dir / "stderr.log"
        full_env = {**os.environ, **(env or {})}
        full_env.setdefault("PYTHONPATH", str(ROOT))
        cmd = [sys.executable, "-m", "tollway.gateway.cli", "serve", "--config", str(self.config_path),
               "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(workers), *(extra_args or [])]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=open(self.stdout_path, "wb"),
                                     stderr=open(self.stderr_path, "wb"), start_new_session=True)
        self.wait_ready()

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}:\n{self.stderr()}")
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=0.5) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"gateway did not become ready:\n{self.stderr()}")

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for raw in self.stdout_path.read_bytes().splitlines():
            try:
                lines.append(json.loads(raw))
            except ValueError:
                continue
        return lines

    def log_line(self, request_id: str, timeout: float = 10.0) -> dict[str, Any]:
        """The access-log line of one request, once written (a request whose tokens the gateway
        counts may first load the tokenizer). Fails the test if it never is."""
        deadline = time.monotonic() + timeout
        while not (lines := [r for r in self.log_lines() if r.get("request_id") == request_id]):
            assert time.monotonic() < deadline, f"no access-log line for {request_id}"
            time.sleep(0.05)
        return lines[-1]

    def raw_output(self) -> str:
        return self.stdout_path.read_text(errors="replace") + self.stderr()

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        os.killpg(self.proc.pid, sig)

    def worker_pids(self) -> list[str]:
        """The worker processes: the children of granian's main process."""
        return subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout.split()

    def worker_rss_mb(self) -> float:
        """Resident memory of the worker processes (the children of granian's main process)."""
        total_kb = 0
        for pid in self.worker_pids():
            with open(f"/proc/{pid}/status") as f:
                total_kb += int(f.read().split("VmRSS:")[1].split()[0])
        return total_kb / 1024

    def settled_rss_mb(self) -> float:
        """worker_rss_mb once two samples 0.2 s apart agree within 1 MB (start-up allocations over)."""
        last = self.worker_rss_mb()
        for _ in range(50):
            time.sleep(0.2)
            now = self.worker_rss_mb()
            if abs(now - last) < 1:
                return now
            last = now
        return last

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        return self.proc.returncode


class ThreadedServer:
    """Runs an aiohttp web app on its own event loop in a daemon thread."""

    def __init__(self, make_app: Callable[[], Any], port: int | None = None) -> None:
        self.port = port or free_port()
        self._make_app = make_app
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._runner: Any = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fake upstream did not start")

    def _run(self) -> None:
        from aiohttp import web

        asyncio.set_event_loop(self.loop)

        async def start() -> None:
            self._runner = web.AppRunner(self._make_app(), handle_signals=False, access_log=None, shutdown_timeout=0.5)
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()

        self.loop.run_until_complete(start())
        self._ready.set()
        self.loop.run_forever()

    def stop(self) -> None:
        async def shutdown() -> None:
            await self._runner.cleanup()
            # Handlers still running (a stalled answer, a stream nobody reads) end here, not as
            # "Task was destroyed but it is pending" when the loop stops under them.
            left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in left:
                task.cancel()
            await asyncio.gather(*left, return_exceptions=True)

        if self.loop.is_running():
            asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(10)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
