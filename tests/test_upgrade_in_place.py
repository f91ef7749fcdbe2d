"""Upgrading the package on disk under a running gateway does not break its requests.

`pip install -U` removes and rewrites the package's files while the old gateway still serves.
Anything the gateway imports lazily, on a request, then comes from a half-replaced tree (or
from nowhere: `No module named ...` as a 500). So the adapters and translators of the
configured providers are imported when the config is made live: at start and on reload.

The gateway here runs from a copy of the package laid out as an install (`tollway/core`,
`tollway/gateway`, `tollway/ext` with the built kernels), put first on PYTHONPATH, so the test
may take files away from it without touching the checkout.
"""
from __future__ import annotations

import json
import shutil
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes import anthropic_upstream as fa
from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.harness import ROOT, TEST_KEY, UPSTREAM_SECRET, GatewayProcess, key_hash


def _config(anthropic_url: str, extra_provider: str = "") -> str:
    return f"""
providers:
  - name: claude
    schema: anthropic
    base_url: {anthropic_url}
    api_key: {UPSTREAM_SECRET}
{extra_provider}
models:
  - name: claude-sonnet
    targets: [{{provider: claude, model: claude-sonnet-4-5}}]
keys:
  - name: test-key
    key_hash: "{key_hash(TEST_KEY)}"
"""


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """The package as an install lays it out, in a folder of its own."""
    site = tmp_path / "site"
    for folder in ("core", "gateway", "ext"):
        shutil.copytree(ROOT / folder, site / "tollway" / folder,
                        ignore=shutil.ignore_patterns("__pycache__", "*.c", "*.pyx"))
    return site


@pytest.fixture
def gateway_from_copy(site: Path, anthropic_upstream: FakeAnthropic) -> Iterator[GatewayProcess]:
    process = GatewayProcess(_config(anthropic_upstream.url), env={"PYTHONPATH": str(site)})
    yield process
    process.stop()


def _post(url: str, path: str, body: dict[str, object]) -> tuple[int, bytes]:
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(), method="POST", headers={
        "authorization": f"Bearer {TEST_KEY}", "content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _remove_providers(site: Path) -> None:
    """What an upgrade does mid-way: the old provider modules are gone from disk."""
    providers = site / "tollway" / "core" / "providers"
    providers.rename(providers.with_name("providers-being-replaced"))


def _metric(url: str, line_prefix: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_prefix))


def test_requests_still_work_after_the_provider_modules_vanish(site, gateway_from_copy):
    gw = gateway_from_copy
    _remove_providers(site)
    # The first requests of each client API after the files are gone: OpenAI chat translated
    # to Anthropic (stream and not), and Anthropic Messages passed through.
    chat = {"model": "claude-sonnet", "messages": [{"role": "user", "content": "hi"}]}
    status, body = _post(gw.url, "/v1/chat/completions", chat)
    assert status == 200, body
    assert json.loads(body)["choices"][0]["message"]["content"] == fa.REPLY
    status, body = _post(gw.url, "/v1/chat/completions", {**chat, "stream": True})
    assert status == 200, body
    assert b'"finish_reason":"stop"' in body and b"data: [DONE]" in body
    status, body = _post(gw.url, "/anthropic/v1/messages", {**chat, "max_tokens": 64})
    assert status == 200, body
    assert json.loads(body)["content"][0]["text"] == fa.REPLY
    assert "No module named" not in gw.stderr()


def test_a_reload_needing_a_vanished_adapter_is_rejected_and_the_old_config_serves(site, gateway_from_copy,
                                                                                     anthropic_upstream):
    gw = gateway_from_copy
    _remove_providers(site)
    gemini = f"""  - name: gem
    schema: gemini
    base_url: {anthropic_upstream.url}
    api_key: {UPSTREAM_SECRET}"""
    gw.config_path.write_text(_config(anthropic_upstream.url, gemini))
    gw.signal(signal.SIGHUP)  # the reload must fail before anything is sent to `gem`
    deadline = time.monotonic() + 10
    while _metric(gw.url, 'tollway_config_reloads_total{result="rejected"}') < 1:
        assert time.monotonic() < deadline, gw.stderr()
        time.sleep(0.1)
    assert "provider 'gem': cannot load the chat adapter of schema 'gemini'" in gw.stderr()
    assert UPSTREAM_SECRET not in gw.stderr()
    status, body = _post(gw.url, "/v1/chat/completions",
                         {"model": "claude-sonnet", "messages": [{"role": "user", "content": "hi"}]})
    assert status == 200, body


def test_a_gateway_whose_adapter_cannot_be_imported_refuses_to_start(site, anthropic_upstream):
    """The same broken tree at start: a clear refusal naming what is missing, not 500s later.
    (This also shows the gateway above really ran from the copy.)"""
    (site / "tollway" / "core" / "providers" / "chat" / "anthropic.py").unlink()
    with pytest.raises(RuntimeError) as failed:
        GatewayProcess(_config(anthropic_upstream.url), env={"PYTHONPATH": str(site)})
    message = str(failed.value)
    assert "gateway exited with 2" in message
    assert ("refusing to start: provider 'claude': cannot load the chat adapter of schema 'anthropic' "
            "(tollway.core.providers.chat.anthropic:OpenAIToAnthropic): No module named "
            "'tollway.core.providers.chat.anthropic'") in message
