"""Hot reload: the watcher validates before applying; the runtime keeps what did not change."""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import time

import pytest

from tollway.core.config import loads
from tollway.gateway.lifecycle.reload import ConfigWatcher
from tollway.gateway.runtime import Runtime
from tollway.gateway.upstream.client import UpstreamClient

GOOD = """
providers:
  - name: pool
    schema: openai
    endpoints: ["http://127.0.0.1:9/v1", "http://127.0.0.1:10/v1"]
  - {name: single, schema: openai, base_url: "http://127.0.0.1:11/v1"}
models:
  - {name: m, targets: [{provider: pool}]}
"""
CHANGED = GOOD.replace('base_url: "http://127.0.0.1:11/v1"', 'base_url: "http://127.0.0.1:12/v1"')
BAD = GOOD + "  - {name: broken, targets: [{provider: nowhere}]}\n"


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "tollway.yaml"
    path.write_text(GOOD)
    return path


def test_bad_config_is_rejected_with_its_reason_and_nothing_applied(config_file, caplog):
    applied = []
    watcher = ConfigWatcher(str(config_file), applied.append, interval=0)
    config_file.write_text(BAD)
    with caplog.at_level(logging.ERROR, logger="tollway"):
        assert watcher.reload("test") is False
    assert applied == [] and watcher.reloads == {"ok": 0, "rejected": 1}
    assert "unknown provider 'nowhere'" in caplog.text and "(line 9)" in caplog.text
    config_file.write_text(CHANGED)
    assert watcher.reload("test") is True
    assert applied[0].providers[1].base_url == "http://127.0.0.1:12/v1"


async def test_file_change_and_sighup_both_reload(config_file):
    applied = []
    watcher = ConfigWatcher(str(config_file), applied.append, interval=0.05)
    loop = asyncio.get_running_loop()
    watcher.install(loop)
    try:
        await asyncio.sleep(0.15)
        assert applied == [], "an unchanged file is not reloaded"
        config_file.write_text(CHANGED)
        await _until(lambda: len(applied) == 1)
        os.kill(os.getpid(), signal.SIGHUP)
        await _until(lambda: len(applied) == 2)
    finally:
        watcher.close(loop)
    assert watcher.reloads["ok"] == 2


async def test_a_reload_keeps_unchanged_providers_and_their_pools():
    client = UpstreamClient()
    first = Runtime(loads(GOOD), client)
    pool = first.providers["pool"]
    first.health.member("pool").failure(0.0)
    second = Runtime(loads(CHANGED), client, first)
    assert second.providers["pool"] is pool, "an unchanged pool keeps its scrape state and in-flight counts"
    assert second.providers["single"] is not first.providers["single"]
    assert second.retired(first) == [first.providers["single"]]
    assert second.health is first.health and second.health.member("pool").failures == 1
    stricter = loads(GOOD + "routing: {outlier_detection: {consecutive_failures: 1}}\n")
    assert Runtime(stricter, client, second).providers["pool"] is not pool, "a new policy rebuilds breakers"
    await client.aclose()


@pytest.mark.parametrize("started", [0, 3600])
async def test_a_reloaded_check_interval_applies_at_once(config_file, started):
    """The interval was read once, when the watcher was installed: a reload that turned the
    polling on, or shortened an hour to a second, had no effect until the gateway restarted."""
    applied = []
    watcher = ConfigWatcher(str(config_file), applied.append, interval=started)
    loop = asyncio.get_running_loop()
    watcher.install(loop)
    try:
        config_file.write_text(GOOD + "server: {reload_check_interval: 0.05}\n")
        os.kill(os.getpid(), signal.SIGHUP)
        await _until(lambda: len(applied) == 1)
        config_file.write_text(CHANGED + "server: {reload_check_interval: 0}\n")
        await _until(lambda: len(applied) == 2)  # polled: no SIGHUP
        config_file.write_text(GOOD)
        await asyncio.sleep(0.3)
        assert len(applied) == 2, "a reloaded interval of 0 stops the polling"
    finally:
        watcher.close(loop)


async def _until(check, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_a_reload_that_fails_to_build_leaves_the_old_config_fully_in_force():
    """Everything that can fail is built before anything is swapped: no half-applied reload."""
    import msgspec

    from tollway.core.config import Telemetry, Traces
    from tollway.gateway.app import Gateway

    gw = Gateway(loads(GOOD))
    gw.start()
    limiter, runtime, tracer = gw.limiter, gw.runtime, gw.tracer
    # Validation refuses this port now; a Config built around it stands for any builder failing.
    broken = msgspec.structs.replace(loads(CHANGED), telemetry=Telemetry(Traces("http://otel:431888/v1/traces")))
    with pytest.raises(ValueError):
        gw.reload(broken)
    assert (gw.limiter, gw.runtime, gw.tracer) == (limiter, runtime, tracer)
    gw.reload(loads(CHANGED))  # a good one still applies, whole
    assert gw.runtime is not runtime and gw.runtime.providers["single"].config.base_url == "http://127.0.0.1:12/v1"
    await gw._close_providers(list(gw.runtime.providers.values()))  # stop the pool's scraping
    await gw.upstream.aclose()


async def test_a_reload_that_raises_is_logged_once_and_the_file_still_watched(config_file, caplog):
    def apply(new) -> None:
        if not applied:
            applied.append(None)
            raise RuntimeError("builder failed")
        applied.append(new)

    applied: list = []
    watcher = ConfigWatcher(str(config_file), apply, interval=0.05)
    loop = asyncio.get_running_loop()
    watcher.install(loop)
    try:
        with caplog.at_level(logging.ERROR, logger="tollway"):
            config_file.write_text(CHANGED)
            await _until(lambda: len(applied) == 1)
            await asyncio.sleep(0.1)
            config_file.write_text(GOOD)
            await _until(lambda: len(applied) == 2)
    finally:
        watcher.close(loop)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and r.name == "tollway"]
    assert len(errors) == 1 and "builder failed" in caplog.text and "previous config" in errors[0].getMessage()
    assert watcher.reloads == {"ok": 1, "rejected": 1}


async def test_close_tasks_of_quick_reloads_are_all_held_until_done():
    """The loop keeps only weak references to tasks: a close still flushing must stay referenced."""
    from tollway.gateway.app import Gateway

    traced = GOOD + "telemetry: {traces: {endpoint: 'http://127.0.0.1:9/v1/traces', service_name: %s}}\n"
    gw = Gateway(loads(traced % "a"))
    gw.start()
    gw.reload(loads(traced % "b"))  # each: a tracer to flush and close, and retired providers (none)
    gw.reload(loads(traced % "c"))
    assert len(gw.background) == 4, "both reloads' close tasks are held, not just the latest"
    await _until(lambda: not gw.background)  # and let go of once done
    await gw.tracer.exporter.close(0.1)
    await gw._close_providers(list(gw.runtime.providers.values()))
    await gw.upstream.aclose()


async def test_a_change_between_reading_the_config_and_installing_the_watcher_is_applied(config_file):
    """A worker reads its config before its loop runs; a file changed in between is reloaded
    when the watcher is installed, not only at the next change."""
    from tollway.gateway.lifecycle.reload import signature
    read_at = signature(str(config_file))
    time.sleep(0.01)  # a distinct mtime
    config_file.write_text(CHANGED)
    applied = []
    watcher = ConfigWatcher(str(config_file), applied.append, interval=0, seen=read_at)
    loop = asyncio.get_running_loop()
    watcher.install(loop)
    try:
        assert len(applied) == 1 and applied[0].providers[1].base_url == "http://127.0.0.1:12/v1"
    finally:
        watcher.close(loop)


async def test_a_sighup_before_the_watcher_is_installed_is_applied_then(config_file):
    from tollway.gateway.lifecycle import reload
    previous = signal.getsignal(signal.SIGHUP)
    reload.catch_early_hangups()
    try:
        os.kill(os.getpid(), signal.SIGHUP)  # before: remembered, not fatal (SIGHUP's default ends the process)
        await asyncio.sleep(0)
        applied = []
        watcher = ConfigWatcher(str(config_file), applied.append, interval=0)
        loop = asyncio.get_running_loop()
        watcher.install(loop)
        watcher.close(loop)
        assert len(applied) == 1 and watcher.reloads["ok"] == 1
        watcher.install(loop)  # remembered once, not forever
        watcher.close(loop)
        assert len(applied) == 1
    finally:
        signal.signal(signal.SIGHUP, previous)
        reload._early_hangup = False


def test_a_forked_worker_running_the_inherited_main_handler_only_remembers_the_sighup():
    """With fork, a worker inherits the main process's SIGHUP handler until it installs its
    own: there it must not signal the main process's workers (nor ask about processes that
    are not its children), only remember the SIGHUP."""
    from tollway.gateway.lifecycle import reload
    from tollway.gateway.lifecycle.drain import TollwayServer
    server = TollwayServer.__new__(TollwayServer)
    server._main_pid = os.getpid() + 1  # as in the forked child: another pid than the main's
    server.wrks = [object()]  # would fail if touched: a worker must not signal workers
    try:
        server.signal_handler_reload()
        assert reload._early_hangup is True
    finally:
        reload._early_hangup = False


async def test_a_reload_of_the_drain_limits_says_they_apply_at_the_restart(caplog):
    """granian's main process sends SIGTERM and kills workers by the drain_delay and
    drain_timeout it started with: a worker keeps them, and a reload that changes them says so
    (tests/test_drain.py has the end to end: a worker killed mid-drain lost its usage records)."""
    from tollway.gateway.app import Gateway

    gw = Gateway(loads(GOOD + "server: {drain_delay: 1, drain_timeout: 2}\n"))
    gw.start()
    started = gw.drain_limits
    with caplog.at_level(logging.WARNING, logger="tollway"):
        gw.reload(loads(GOOD + "server: {drain_delay: 1, drain_timeout: 2, access_log: false}\n"))
        assert "drain" not in caplog.text, "a reload that keeps them says nothing"
        gw.reload(loads(GOOD + "server: {drain_delay: 1, drain_timeout: 30}\n"))
    assert "server.drain_delay and server.drain_timeout changes take effect when the gateway restarts" in caplog.text
    assert "drain_delay 1s, drain_timeout 2s" in caplog.text
    assert gw.drain_limits == started and gw.drain_limits.cut_off == 2.0
    await gw._close_providers(list(gw.runtime.providers.values()))
    await gw.upstream.aclose()


def test_a_file_that_cannot_be_read_as_a_config_is_rejected_and_the_watching_goes_on():
    """Not UTF-8, an alias inside its own anchor: each is a rejected reload, counted and logged,
    and the next good file is still applied (an exception there once ended the watcher, silently)."""
    import openai

    from tests.harness import TEST_KEY, GatewayProcess, key_hash

    def config(model: str) -> str:
        return f"""
server: {{reload_check_interval: 0.1}}
providers: [{{name: fake, schema: fake}}]
models: [{{name: {model}, targets: [{{provider: fake}}]}}]
keys: [{{name: t, key_hash: "{key_hash()}", models: ["*"]}}]
"""

    gw = GatewayProcess(config("first"))
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=TEST_KEY, max_retries=0)
    try:
        gw.config_path.write_bytes(config("second").encode() + b"# caf\xe9\n")
        _wait_for(lambda: _reloads(gw, "rejected") == 1)
        gw.config_path.write_text(config("second") + "x: &x [*x]\n")
        _wait_for(lambda: _reloads(gw, "rejected") == 2)
        assert [m.id for m in client.models.list()] == ["first"]
        gw.config_path.write_text(config("third"))
        _wait_for(lambda: _reloads(gw, "ok") == 1)
        assert [m.id for m in client.models.list()] == ["third"]
    finally:
        gw.stop()
    assert "is not UTF-8: byte" in gw.stderr() and "a YAML alias refers to itself" in gw.stderr()
    assert "Traceback" not in gw.stderr()


def _reloads(gw, result: str) -> float:
    import urllib.request

    with urllib.request.urlopen(gw.url + "/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(f'tollway_config_reloads_total{{result="{result}"}}'):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def _wait_for(check, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


async def test_any_exception_from_loading_is_a_rejected_reload_logged_without_its_message(config_file, caplog,
                                                                                        monkeypatch):
    """A loading bug the config checks do not foresee must not end the watcher either; its message
    may quote the file (a secret), so the log names the exception and where it was raised."""
    from tollway.gateway.lifecycle import reload

    def broken_load(path: str):
        raise ValueError("redis://:TOPSECRET@host")

    applied = []
    watcher = ConfigWatcher(str(config_file), applied.append, interval=0.05)
    loop = asyncio.get_running_loop()
    watcher.install(loop)
    try:
        with caplog.at_level(logging.ERROR, logger="tollway"):
            monkeypatch.setattr(reload.config_mod, "load", broken_load)
            config_file.write_text(CHANGED)
            await _until(lambda: watcher.reloads["rejected"] == 1)
            monkeypatch.undo()
            config_file.write_text(GOOD)
            await _until(lambda: len(applied) == 1)
    finally:
        watcher.close(loop)
    assert watcher.reloads == {"ok": 1, "rejected": 1}
    assert "ValueError" in caplog.text and "broken_load" in caplog.text and "previous config" in caplog.text
    assert "TOPSECRET" not in caplog.text
