"""deploy/grafana/tollway.json and deploy/prometheus/alerts.yaml: valid, and every metric they
name is one the gateway really exports (a renamed metric must not leave a blank panel or an
alert that can never fire)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator

import openai
import pytest
import yaml

from tests.fakes.vllm_replica import FakeVLLMReplica
from tests.harness import ROOT, TEST_KEY, GatewayProcess, key_hash

DASHBOARD = ROOT / "deploy" / "grafana" / "tollway.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
ALERT_TESTS = ROOT / "deploy" / "prometheus" / "alerts_test.yaml"
_METRIC = re.compile(r"\b((?:tollway|gen_ai|process|python)_[a-z0-9_]+)\b")
# What the issue asks the alerts to watch: errors, latency, ejected upstreams, rate-limit store
# errors, dropped spans, budgets (cost_usd limits and calendar budgets), the usage ledger's drops
# and lag, and requests with no price.
ALERTED = {"tollway_requests_total", "gen_ai_server_request_duration_seconds_bucket", "tollway_upstream_available",
           "tollway_rate_limit_store_errors_total", "tollway_trace_spans_dropped_total", "tollway_limit_remaining_ratio",
           "tollway_budget_remaining_ratio", "tollway_budget_store_errors_total", "tollway_ledger_dropped_total",
           "tollway_ledger_lag_seconds", "tollway_unpriced_requests_total"}


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v["query"]["query"] for v in dashboard["templating"]["list"] if isinstance(v.get("query"), dict)]
    return exprs


def _alert_exprs() -> list[str]:
    rules = yaml.safe_load(ALERTS.read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def _names(exprs: list[str]) -> set[str]:
    """The metric names in PromQL expressions: what is left once label matchers, grouping
    labels and label_values' label are taken out (label names share the gen_ai_ prefix)."""
    names = set()
    for expr in exprs:
        expr = re.sub(r"\{[^}]*\}", "", expr)
        expr = re.sub(r"\b(?:by|without)\s*\([^)]*\)", "", expr)
        expr = re.sub(r"label_values\(([^,)]+),[^)]*\)", r"\1", expr)
        names.update(_METRIC.findall(expr))
    return names


def test_alert_rules_pass_promtool():
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus; .ci/run installs it)")
    result = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_alert_exprs())} rules found" in result.stdout


def test_the_alerts_fire_when_their_unit_tests_say():
    """deploy/prometheus/alerts_test.yaml: series in, which alerts fire when, with which labels and text."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus; .ci/run installs it)")
    result = subprocess.run([promtool, "test", "rules", ALERT_TESTS.name], cwd=ALERT_TESTS.parent,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    tested = {test["alertname"] for group in yaml.safe_load(ALERT_TESTS.read_text())["tests"]
              for test in group["alert_rule_test"]}
    assert {"TollwayLedgerDropping", "TollwayLedgerLagging", "TollwayBudgetNearlySpent", "TollwayBudgetStoreErrors",
            "TollwayUnpricedRequests"} <= tested


def test_the_alerts_and_the_dashboard_cover_what_operators_watch():
    assert ALERTED <= _names(_alert_exprs())
    shown = _names(_dashboard_exprs())
    assert {"tollway_requests_total", "gen_ai_server_request_duration_seconds_bucket",
            "gen_ai_server_time_to_first_token_seconds_bucket", "gen_ai_client_token_usage_sum",
            "tollway_rate_limit_decisions_total", "tollway_upstream_available", "tollway_upstream_ejections",
            "tollway_pool_endpoint_in_flight", "tollway_pool_endpoint_waiting",
            "tollway_cost_usd_total", "tollway_unpriced_requests_total", "tollway_budget_remaining_ratio",
            "tollway_ledger_queued", "tollway_ledger_lag_seconds", "tollway_ledger_written_total",
            "tollway_ledger_dropped_total", "tollway_ledger_write_errors_total"} <= shown
    panels = json.loads(DASHBOARD.read_text())["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    assert all(p.get("targets") for p in panels if p["type"] != "row")


@pytest.fixture
def replicas() -> Iterator[list[FakeVLLMReplica]]:
    pool = [FakeVLLMReplica("vllm-a"), FakeVLLMReplica("vllm-b")]
    yield pool
    for replica in pool:
        replica.kill()


def _samples(gw: GatewayProcess) -> set[str]:
    with urllib.request.urlopen(gw.url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


def _value(gw: GatewayProcess, name: str) -> float:
    """The value of an unlabelled series."""
    with urllib.request.urlopen(gw.url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    return next(float(line.split(" ")[1]) for line in text.splitlines() if line.startswith(name + " "))


def _wait_for(gw: GatewayProcess, names: set[str], timeout: float = 10.0) -> set[str]:
    deadline = time.monotonic() + timeout
    seen = _samples(gw)
    while not names <= seen and time.monotonic() < deadline:
        time.sleep(0.2)
        seen = _samples(gw)
    return seen


def test_every_metric_the_dashboard_and_alerts_name_is_exported_after_traffic(replicas):
    named = _names(_dashboard_exprs()) | _names(_alert_exprs())
    pool = ", ".join(f'"{r.url}"' for r in replicas)
    busy = GatewayProcess(f"""
providers:
  - {{name: local, schema: fake, fake_chunks: 3}}
  - {{name: llama-pool, schema: openai, endpoints: [{pool}], scrape: {{interval: 0.2}}}}
  - {{name: dead, schema: openai, base_url: "http://127.0.0.1:9/v1", timeouts: {{connect: 1}}}}
models:
  - {{name: demo, targets: [{{provider: local}}]}}
  - {{name: llama, targets: [{{provider: llama-pool, model: meta-llama/Meta-Llama-3-8B-Instruct}}]}}
  - {{name: dead-model, targets: [{{provider: dead}}]}}
  - {{name: mini, targets: [{{provider: llama-pool, model: gpt-4o-mini}}]}}   # priced by the dataset
teams:
  - {{name: search, budget: {{usd: 100, period: month}}}}
keys:
  - name: test-key
    key_hash: "{key_hash(TEST_KEY)}"
    team: search
    limits: [{{requests: 1, per: 1m, model: llama}}]
    budget: {{usd: 10, period: day}}
store: {{backend: sqlite, path: ledger.db}}   # beside the config, in the gateway's temp dir
telemetry:
  traces: {{endpoint: "http://127.0.0.1:9/v1/traces", export_interval: 0.1}}
""")
    # Redis that does not answer: decisions made without the store.
    storeless = GatewayProcess(f"""
providers: [{{name: local, schema: fake}}]
models: [{{name: demo, targets: [{{provider: local}}]}}]
keys: [{{name: test-key, key_hash: "{key_hash(TEST_KEY)}", limits: [{{requests: 100, per: 1m}}]}}]
rate_limits: {{backend: redis, redis_url: "redis://127.0.0.1:9/0", key_prefix: "dash-{uuid.uuid4().hex[:8]}"}}
""")
    try:
        client = openai.OpenAI(base_url=busy.url + "/v1", api_key=TEST_KEY, max_retries=0)
        messages = [{"role": "user", "content": "hi"}]
        client.chat.completions.create(model="demo", messages=messages)
        list(client.chat.completions.create(model="demo", messages=messages, stream=True))
        client.chat.completions.create(model="llama", messages=messages)  # no price: unpriced
        client.chat.completions.create(model="mini", messages=messages)  # costs something
        with pytest.raises(openai.RateLimitError):  # the limit of one: a `limited` decision
            client.chat.completions.create(model="llama", messages=messages)
        with pytest.raises(openai.APIStatusError):
            client.chat.completions.create(model="dead-model", messages=messages)
        openai.OpenAI(base_url=storeless.url + "/v1", api_key=TEST_KEY, max_retries=0).chat.completions.create(
            model="demo", messages=messages)
        exported = _wait_for(busy, named - {"tollway_rate_limit_store_errors_total"}) | _samples(storeless)
        assert named <= exported, sorted(named - exported)
        # The ledger really ran: the ledger series are registered with or without a store.
        deadline = time.monotonic() + 10
        while _value(busy, "tollway_ledger_written_total") == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _value(busy, "tollway_ledger_written_total") > 0
        assert (busy.dir / "ledger.db").exists()
    finally:
        busy.stop()
        storeless.stop()
