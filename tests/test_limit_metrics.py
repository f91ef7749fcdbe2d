"""tollway_limit_remaining(_ratio): what remains of each limit, read from the store per scrape
(the "budget near exhaustion" alert reads it)."""
from __future__ import annotations

import urllib.request

import openai
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import TEST_KEY, GatewayProcess, key_hash


def _gauges(gw: GatewayProcess, name: str) -> dict[tuple[str, str, str], float]:
    with urllib.request.urlopen(gw.url + "/metrics", timeout=5) as r:
        families = {f.name: f for f in text_string_to_metric_families(r.read().decode())}
    return {(s.labels["scope"], s.labels["owner"], s.labels["measure"]): s.value for s in families[name].samples}


def test_a_team_budget_shrinks_with_spend_and_requests_refill():
    gw = GatewayProcess(f"""
providers: [{{name: local, schema: fake}}]
models:
  - name: demo
    targets: [{{provider: local}}]
    price: {{input: 10000, output: 10000}}     # USD per 1M tokens: a cent a token
teams:
  - {{name: search, limits: [{{cost_usd: 5, per: 1d}}]}}
keys:
  - {{name: test-key, key_hash: "{key_hash(TEST_KEY)}", team: search, limits: [{{requests: 10, per: 1h}}]}}
""")
    try:
        before = _gauges(gw, "tollway_limit_remaining_ratio")
        assert before == {("team", "search", "cost_usd"): 1.0, ("key", "test-key", "requests"): 1.0}
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key=TEST_KEY, max_retries=0)
        answer = client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "spend a little"}])
        spent = (answer.usage.prompt_tokens + answer.usage.completion_tokens) * 0.01
        ratio = _gauges(gw, "tollway_limit_remaining_ratio")
        remaining = _gauges(gw, "tollway_limit_remaining")
        # What was spent, less the refill since (5 USD a day: under 0.004 USD a minute).
        left = remaining[("team", "search", "cost_usd")]
        assert 5 - spent <= left < 5 - spent + 0.004
        assert abs(ratio[("team", "search", "cost_usd")] - left / 5) < 1e-6
        assert remaining[("key", "test-key", "requests")] < 10  # one request taken, refilling at 10/h
    finally:
        gw.stop()


def test_no_levels_are_reported_while_the_store_does_not_answer():
    gw = GatewayProcess(f"""
providers: [{{name: local, schema: fake}}]
models: [{{name: demo, targets: [{{provider: local}}]}}]
keys: [{{name: test-key, key_hash: "{key_hash(TEST_KEY)}", limits: [{{requests: 10, per: 1m}}]}}]
rate_limits: {{backend: redis, redis_url: "redis://127.0.0.1:9/0"}}
""")
    try:
        assert _gauges(gw, "tollway_limit_remaining_ratio") == {}  # not "full": unknown
    finally:
        gw.stop()
