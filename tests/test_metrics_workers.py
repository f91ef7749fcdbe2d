"""With --workers N, /metrics counts every worker's requests, whichever worker answers."""
from __future__ import annotations

import urllib.request

import openai
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import standard_config
from tests.harness import TEST_KEY, GatewayProcess


def _requests_ok(gw: GatewayProcess) -> float:
    with urllib.request.urlopen(gw.url + "/metrics", timeout=5) as r:
        families = {f.name: f for f in text_string_to_metric_families(r.read().decode())}
    return sum(s.value for s in families["tollway_requests"].samples
               if s.name == "tollway_requests_total" and s.labels.get("model") == "demo" and s.labels["status"] == "200")


def test_counts_are_summed_over_workers(openai_upstream):
    gw = GatewayProcess(standard_config(openai_upstream.url), workers=2)
    try:
        for _ in range(3):  # new connections, so the kernel spreads them over both workers
            client = openai.OpenAI(base_url=gw.url + "/v1", api_key=TEST_KEY, max_retries=0)
            for _ in range(10):
                client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "x"}])
            client.close()
        # Every scrape, whichever worker answers it, sees all 30.
        assert [_requests_ok(gw) for _ in range(6)] == [30.0] * 6
    finally:
        gw.stop()
