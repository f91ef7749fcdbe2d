"""`tollway serve` on a port that is taken: refused, unless `--reuse-port` asks to share it."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.harness import ROOT, TEST_KEY, GatewayProcess, free_port, key_hash

CONFIG = f"""
providers: [{{name: local, schema: fake}}]
models: [{{name: demo, targets: [{{provider: local}}]}}]
keys: [{{name: k, key_hash: "{key_hash()}"}}]
"""


def serve_once(config_path: str, port: int) -> subprocess.CompletedProcess[str]:
    """A `tollway serve` expected to exit by itself (refused); killed by the timeout otherwise."""
    cmd = [sys.executable, "-m", "tollway.gateway.cli", "serve", "--config", config_path, "--port", str(port)]
    return subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                          text=True, timeout=30)


def ready(url: str) -> bool:
    with urllib.request.urlopen(url + "/readyz", timeout=5) as resp:
        return resp.status == 200


def list_models(url: str) -> None:
    """One logged request (health checks are not in the access log) on a new connection."""
    request = urllib.request.Request(url + "/v1/models", headers={"authorization": f"Bearer {TEST_KEY}"})
    with urllib.request.urlopen(request, timeout=5) as resp:
        assert resp.status == 200


@pytest.fixture(scope="module")
def first():
    gw = GatewayProcess(CONFIG)
    yield gw
    gw.stop()


def test_second_serve_on_a_taken_port_refuses_to_start(first):
    r = serve_once(str(first.config_path), first.port)
    assert r.returncode == 2, r.stderr
    assert f"127.0.0.1:{first.port} is already in use" in r.stderr and "--reuse-port" in r.stderr
    assert "Listening at" not in r.stdout + r.stderr  # granian never started
    assert ready(first.url)  # the first one still serves, alone


def test_a_port_another_program_listens_on_is_refused(tmp_path):
    config_path = tmp_path / "config.yaml"
    config_path.write_text(CONFIG)
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        r = serve_once(str(config_path), port)
    assert r.returncode == 2 and f"127.0.0.1:{port} is already in use" in r.stderr


def test_a_free_port_is_not_refused():
    gw = GatewayProcess(CONFIG, port=free_port())  # the probe lets go of the port before granian binds it
    try:
        assert ready(gw.url)
    finally:
        gw.stop()


def test_reuse_port_shares_the_port_on_purpose(first):
    second = GatewayProcess(CONFIG, port=first.port, extra_args=["--reuse-port"])
    try:
        # Each request is a new connection; the kernel spreads them over both servers' sockets.
        deadline = time.monotonic() + 20
        while not second.log_lines() and time.monotonic() < deadline:
            assert second.proc.poll() is None, second.stderr()
            for _ in range(10):
                list_models(first.url)
            time.sleep(0.1)  # the access log is flushed once per event-loop turn
        assert second.log_lines(), "the second server (--reuse-port) never got a connection"
        assert second.proc.poll() is None
    finally:
        second.stop()
