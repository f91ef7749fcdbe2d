"""The gateway's output streams: stdout holds only the access log, stderr only JSON diagnostics
(the gateway's, granian's, and one start line saying what was loaded). Never a secret in either."""
from __future__ import annotations

import json
import urllib.request
from typing import Any

from tests.conftest import standard_config
from tests.harness import OTHER_KEY, TEST_KEY, UPSTREAM_SECRET, GatewayProcess, key_hash
from tollway.core import config as config_mod
from tollway.core import kernels
from tollway.gateway.telemetry.logs import start_record


def _json_lines(text: str) -> list[dict[str, Any]]:
    lines = [line for line in text.splitlines() if line.strip()]
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"not a JSON line: {line!r}") from None
    return records


def test_stdout_is_the_access_log_and_stderr_is_json_with_granian_and_one_start_line(openai_upstream, tmp_path):
    # (a cache folder of its own, empty: `serve` builds the price table once, each worker reads it)
    gw = GatewayProcess(standard_config(openai_upstream.url), workers=2,
                        env={"TOLLWAY_CACHE_DIR": str(tmp_path / "prices")})
    try:
        req = urllib.request.Request(gw.url + "/v1/chat/completions", method="POST", headers={
            "authorization": f"Bearer {TEST_KEY}", "content-type": "application/json"},
            data=json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}).encode())
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200
            request_id = r.headers["x-request-id"]
    finally:
        assert gw.stop() == 0
    out = gw.stdout_path.read_text()
    err = gw.stderr()

    access = _json_lines(out)
    assert [a["request_id"] for a in access] == [request_id]
    assert access[0]["model"] == "gpt-4o-mini" and access[0]["status"] == 200

    diagnostics = _json_lines(err)
    assert all({"time", "level", "logger", "message"} <= d.keys() for d in diagnostics)
    granian = [d["message"] for d in diagnostics if d["logger"].split(".")[0] == "granian"]
    assert any(m.startswith("Listening at") for m in granian), granian
    assert sum(m.startswith("Spawning worker-") for m in granian) == 2, granian
    assert any(m.startswith("Granian shutdown completed") for m in granian), granian

    prices = [d["message"] for d in diagnostics if d["message"].startswith("prices:")]
    assert sum("read from" in m for m in prices) == 2 and not any("child process" in m for m in prices), prices

    starts = [d for d in diagnostics if d.get("event") == "start"]
    assert len(starts) == 1, starts  # the main process says it, not every worker
    start = starts[0]
    assert start["level"] == "info" and start["logger"] == "tollway"
    assert start["config"] == str(gw.config_path) and start["workers"] == 2
    assert start["providers"] == [{"name": "up", "schema": "openai"}, {"name": "azure", "schema": "azure_openai"},
                                  {"name": "local", "schema": "fake"}, {"name": "dead", "schema": "openai"}]
    assert "gpt-4o-mini" in start["models"] and "demo" in start["models"]
    assert start["keys"] == 2 and start["store"] == {"backend": "memory"}
    assert start["extensions"] == {"accelerated": kernels.ACCELERATED, "kernels": kernels.ACTIVE}

    for secret in (UPSTREAM_SECRET, TEST_KEY, OTHER_KEY, key_hash(TEST_KEY).split(":")[1],
                   key_hash(OTHER_KEY).split(":")[1]):
        assert secret not in out and secret not in err


def test_the_start_line_names_the_redis_store_by_host_and_port_only(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(f"""
providers: [{{name: p, schema: fake}}]
models: [{{name: m, targets: [{{provider: p}}]}}]
keys: [{{name: k, key_hash: "{key_hash(TEST_KEY)}"}}]
rate_limits: {{backend: redis, redis_url: "redis://tollway:s3cret-redis-pw@redis.internal:6380/2"}}
""")
    record = start_record(config_mod.load(str(path)), str(path), 1, {"sse": "compiled", "buckets": "pure"})
    assert record["store"] == {"backend": "redis", "address": "redis.internal:6380"}
    assert record["extensions"] == {"accelerated": False, "kernels": {"sse": "compiled", "buckets": "pure"}}
    text = json.dumps(record)
    assert "s3cret-redis-pw" not in text and key_hash(TEST_KEY) not in text and "tollway:" not in text


def test_serve_refusals_are_json_lines_on_stderr(tmp_path):
    """A refusal to start is a diagnostic like the rest: one JSON line, event "refused"."""
    import json
    import subprocess
    import sys

    from tests.harness import ROOT
    config = tmp_path / "bad.yaml"
    config.write_text("providers: [{name: x, schema: nope}]\n")
    r = subprocess.run([sys.executable, "-m", "tollway.gateway.cli", "serve", "--config", str(config), "--port", "9"],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 1
    line = json.loads(r.stderr.strip().splitlines()[-1])
    assert line["level"] == "error" and line["event"] == "refused" and "refusing to start" in line["message"]
    assert "schema" in line["message"]
