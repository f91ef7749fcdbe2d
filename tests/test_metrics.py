"""/metrics speaks Prometheus with the OpenTelemetry GenAI names, attributes and buckets."""
from __future__ import annotations

import urllib.request

import openai
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import TEST_KEY
from tollway.gateway.telemetry.metrics import DURATION_BUCKETS, TOKEN_BUCKETS


def scrape(gateway) -> dict:
    with urllib.request.urlopen(gateway.url + "/metrics", timeout=5) as r:  # open, like /healthz
        assert r.headers["content-type"].startswith("text/plain")
        return {f.name: f for f in text_string_to_metric_families(r.read().decode())}


def test_genai_metrics_after_a_request(gateway):
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=TEST_KEY, max_retries=0)
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "count me"}])
    families = scrape(gateway)

    usage = families["gen_ai_client_token_usage"]
    input_sample = next(s for s in usage.samples if s.name.endswith("_sum")
                        and s.labels["gen_ai_token_type"] == "input" and s.labels["gen_ai_request_model"] == "gpt-4o-mini")
    assert input_sample.labels["gen_ai_operation_name"] == "chat"
    assert input_sample.labels["gen_ai_provider_name"] == "openai" and input_sample.value >= 2
    bounds = sorted({float(s.labels["le"]) for s in usage.samples if s.name.endswith("_bucket") and s.labels["le"] != "+Inf"})
    assert bounds == [float(b) for b in TOKEN_BUCKETS]

    duration = families["gen_ai_server_request_duration_seconds"]
    bounds = sorted({float(s.labels["le"]) for s in duration.samples if s.name.endswith("_bucket") and s.labels["le"] != "+Inf"})
    assert bounds == [float(b) for b in DURATION_BUCKETS]

    requests = families["tollway_requests"]
    ok = [s for s in requests.samples if s.labels == {"model": "gpt-4o-mini", "provider": "up", "status": "200"}]
    assert ok and ok[0].value >= 1


def test_error_statuses_are_counted(gateway):
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=TEST_KEY, max_retries=0)
    try:
        client.chat.completions.create(model="no-such-model", messages=[])
    except openai.NotFoundError:
        pass
    samples = scrape(gateway)["tollway_requests"].samples
    # Client-chosen names never become label values (unbounded cardinality): unknown models are "unknown".
    assert any(s.labels["status"] == "404" and s.labels["model"] == "unknown" for s in samples)
    assert not any(s.labels["model"] == "no-such-model" for s in samples)


def test_process_and_python_metrics_describe_the_worker(gateway):
    families = scrape(gateway)
    assert families["process_resident_memory_bytes"].samples[0].value > 10 * 2**20
    assert families["process_cpu_seconds"].samples[0].value > 0
    assert families["process_open_fds"].samples[0].value > 0
    assert families["process_start_time_seconds"].samples[0].value > 1.7e9
    collections = {s.labels["generation"]: s.value for s in families["python_gc_collections"].samples}
    assert set(collections) == {"0", "1", "2"} and collections["0"] > 0
    assert families["python_info"].samples[0].labels["implementation"] == "CPython"
