"""What the console reads besides keys and spend, through a real gateway: who is logged in,
this replica's last hour, routing and health, and the config with every secret replaced."""
from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.fakes.openai_upstream import FakeOpenAI
from tests.harness import ADMIN_KEY, TEST_KEY, UPSTREAM_SECRET, GatewayProcess, key_hash
from tests.test_keys_e2e import LEAD_KEY, VIEWER_KEY, _config, call


@pytest.fixture(scope="module")
def upstream(openai_upstream: FakeOpenAI) -> FakeOpenAI:
    return openai_upstream  # (the session's fake OpenAI, tests/conftest.py)


@pytest.fixture(scope="module")
def gw(upstream: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    db: Path = tmp_path_factory.mktemp("ops") / "tollway.db"
    extra = 'rate_limits: {backend: memory, redis_url: "redis://user:hunter2-redis@127.0.0.1:6379/0"}'
    process = GatewayProcess(_config(upstream.url, db, extra))
    yield process
    process.stop()


@pytest.mark.parametrize(("token", "who"), [(ADMIN_KEY, ("admin", "owner", None)),
                                            (LEAD_KEY, ("search-lead", "team_admin", "search")),
                                            (VIEWER_KEY, ("finance", "viewer", None))])
def test_whoami(gw: GatewayProcess, token: str, who: tuple):
    status, me = call(gw, "GET", "/admin/whoami", token=token)
    assert status == 200 and (me["name"], me["role"], me["team"]) == who


def test_stats_show_this_replicas_traffic_and_the_ledgers_day(gw: GatewayProcess):
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=TEST_KEY, max_retries=0)
    for _ in range(3):
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    status, stats = call(gw, "GET", "/admin/stats")
    assert status == 200 and stats["object"] == "stats" and stats["interval_seconds"] == 10
    now = stats["now"]
    assert now["requests"] >= 3 and now["p50_ms"] is not None and now["tokens_per_second"] > 0
    assert isinstance(stats["points"], list)
    for _ in range(100):  # the ledger writes in batches: up to 10 s for the three records
        status, stats = call(gw, "GET", "/admin/stats")
        if stats["today"] and stats["today"]["requests"] >= 3:
            break
        time.sleep(0.1)
    assert stats["today"]["requests"] >= 3 and stats["today"]["cost_usd"] > 0
    status, theirs = call(gw, "GET", "/admin/stats", token=LEAD_KEY)
    assert theirs["points"] == [] and theirs["now"] is None, "a team admin: its team's spend only"
    assert theirs["today"]["requests"] >= 3, "alice is in search"


def test_routing_lists_providers_and_targets_with_health(gw: GatewayProcess):
    status, routing = call(gw, "GET", "/admin/routing")
    assert status == 200
    assert [p["name"] for p in routing["providers"]] == ["up"]
    (endpoint,) = routing["providers"][0]["endpoints"]
    assert endpoint["healthy"] is True and endpoint["address"].startswith("http://127.0.0.1:"), "one base URL: one entry"
    models = {m["name"]: m for m in routing["models"]}
    assert models["gpt-4o-mini"]["targets"][0] == {"provider": "up", "model": "gpt-4o-mini", "weight": 1.0,
                                                   "priority": 0, "healthy": True, "ejected_until": None}
    assert call(gw, "GET", "/admin/routing", token=VIEWER_KEY)[0] == 200
    status, error = call(gw, "GET", "/admin/routing", token=LEAD_KEY)
    assert status == 403 and error["error"]["code"] == "admin_forbidden"


def test_the_config_holds_no_secret(gw: GatewayProcess):
    status, shown = call(gw, "GET", "/admin/config")
    assert status == 200
    text = json.dumps(shown)
    for secret in (UPSTREAM_SECRET, key_hash(TEST_KEY), key_hash(ADMIN_KEY), "hunter2-redis"):
        assert secret not in text
    config = shown["config"]
    assert config["providers"][0]["api_key"] == "***" and config["keys"][0]["key_hash"] == "***"
    assert config["rate_limits"]["redis_url"] == "redis://user:***@127.0.0.1:6379/0"
    assert config["models"][0]["name"] == "gpt-4o-mini", "what is not a secret is shown"
    assert call(gw, "GET", "/admin/config", token=LEAD_KEY)[0] == 403


def test_keys_can_be_searched(gw: GatewayProcess):
    for name in ("search-me-one", "other-thing"):
        assert call(gw, "POST", "/admin/keys", {"name": name})[0] == 201
    status, found = call(gw, "GET", "/admin/keys?q=SEARCH-ME")
    assert status == 200 and [k["name"] for k in found["data"]] == ["search-me-one"]
    status, found = call(gw, "GET", "/admin/keys?q=search")
    assert {k["name"] for k in found["data"]} >= {"alice", "search-me-one"}, "alice's team is search"


def test_a_pool_endpoints_url_password_is_shown_nowhere(upstream: FakeOpenAI, tmp_path: Path):
    # endpoints: may carry userinfo (a replica behind basic auth); the endpoint's name is the
    # label in /admin/routing, /metrics and the log, so the name must not hold the password.
    # One password is long, one short (under the length a value-match masks).
    long_pw, short_pw = "S3cretPassw0rd-pool", "pw12"
    port = upstream.url.split(":")[-1].split("/")[0]
    pool = (f"{{name: pool, schema: openai, api_key: {UPSTREAM_SECRET}, scrape: {{interval: 0.2, timeout: 0.5}}, "
            f"endpoints: ['http://svc:{long_pw}@127.0.0.1:{port}/v1', 'http://svc:{short_pw}@127.0.0.1:9/v1']}}")
    text = _config(upstream.url, tmp_path / "tollway.db")
    text = text.replace("providers: [{", f"providers: [{pool}, {{")
    text = text.replace("{name: gpt-4o, targets: [{provider: up}]}", "{name: gpt-4o, targets: [{provider: pool}]}")
    gw = GatewayProcess(text)
    try:
        time.sleep(1.0)  # a few scrapes: the dead replica's failure is logged
        status, routing = call(gw, "GET", "/admin/routing", token=VIEWER_KEY)
        assert status == 200
        addresses = [e["address"] for p in routing["providers"] if p["name"] == "pool" for e in p["endpoints"]]
        assert addresses == [f"http://svc:***@127.0.0.1:{port}/v1", "http://svc:***@127.0.0.1:9/v1"]
        status, config = call(gw, "GET", "/admin/config", token=VIEWER_KEY)
        assert status == 200 and config["config"]["providers"][0]["endpoints"] == addresses
        with urllib.request.urlopen(gw.url + "/metrics", timeout=10) as r:
            metrics = r.read().decode()
        assert f"127.0.0.1:{port}/v1" in metrics, "the pool's endpoints are labelled in /metrics"
        shown = {"routing": json.dumps(routing), "config": json.dumps(config), "metrics": metrics,
                 "log": gw.raw_output()}
        for where, body in shown.items():
            for password in (long_pw, short_pw):
                assert f":{password}@" not in body and f"'{password}'" not in body, (where, password)
        assert "127.0.0.1:9" in gw.raw_output(), "the dead replica's failed scrape is logged (without its password)"
    finally:
        gw.stop()
