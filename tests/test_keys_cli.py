"""`tollway keys` as real subprocesses: a key made on the command line (SQLite) works through
a real gateway and the openai SDK; `list` shows it (never a digest or a key); `rotate` prints a
new key that works; `revoke` reaches the running gateway by itself within seconds; the audit
trail says "cli". The same on PostgreSQL; and every refusal is one line on stderr, exit 1."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import openai
import pytest

from tests.fakes.openai_upstream import FakeOpenAI
from tests.harness import ADMIN_KEY, TEST_KEY, UPSTREAM_SECRET, GatewayProcess, key_hash
from tests.pg_databases import pg_database  # noqa: F401 -- a fixture, requested by name

ROOT = Path(__file__).resolve().parent.parent
SECRET = re.compile(r"sk-tw-[A-Za-z0-9_-]{43}")


def _config(upstream: str, store: str) -> str:
    return f"""
providers: [{{name: up, schema: openai, base_url: {upstream}, api_key: {UPSTREAM_SECRET}}}]
models:
  - {{name: gpt-4o-mini, targets: [{{provider: up}}]}}
  - {{name: gpt-4o, targets: [{{provider: up}}]}}
keys:
  - {{name: alice, key_hash: "{key_hash(TEST_KEY)}", team: search}}
teams: [{{name: search}}]
admin: {{key_hash: "{key_hash(ADMIN_KEY)}"}}
{store}
"""


def keys(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tollway.gateway.cli", "keys", *args], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)


def made(result: subprocess.CompletedProcess[str]) -> str:
    """The key a create or rotate printed: alone on stdout, one line."""
    assert result.returncode == 0, result.stderr
    assert SECRET.fullmatch(result.stdout.removesuffix("\n")) and result.stdout.count("\n") == 1, result.stdout
    assert "Traceback" not in result.stderr
    return result.stdout.strip()


def listed(config: Path, *extra: str) -> list[dict]:
    result = keys("list", "--config", str(config), "--format", "json", *extra)
    assert result.returncode == 0, result.stderr
    assert "sha256:" not in result.stdout and "hmac-sha256" not in result.stdout and "sk-tw-" not in result.stdout
    return json.loads(result.stdout)


def refused(result: subprocess.CompletedProcess[str], *words: str) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stdout == "" and "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("tollway keys: "), result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def chat(gw: GatewayProcess, key: str) -> int:
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0, timeout=10)
    try:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        return 200
    except openai.APIStatusError as exc:
        return exc.status_code


def until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll `check` until it holds; fail after `timeout` seconds (the documented bound)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "the running gateway did not pick the change up in time"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI()
    yield fake
    fake.stop()


def test_create_use_list_rotate_revoke_on_sqlite(upstream: FakeOpenAI, tmp_path: Path):
    text = _config(upstream.url, f"store: {{backend: sqlite, path: {tmp_path / 'tollway.db'}}}")
    config = tmp_path / "config.yaml"
    config.write_text(text)

    created = keys("create", "--config", str(config), "--name", "svc-cli", "--team", "search",
                   "--models", "gpt-4o-mini,gpt-4o", "--expires", "30d")
    secret = made(created)
    assert created.stderr == ""
    [mine] = [k for k in listed(config) if k["name"] == "svc-cli"]
    assert (mine["team"], mine["models"], mine["status"], mine["source"]) == ("search", ["gpt-4o-mini", "gpt-4o"],
                                                                              "active", "api")
    assert mine["expires_at"] is not None and mine["id"].startswith("key_")
    assert {"config:alice"} <= {k["id"] for k in listed(config)}, "the config file's keys are listed too"
    table = keys("list", "--config", str(config))
    assert table.returncode == 0 and table.stdout.split("\n")[0].split() == [
        "id", "name", "team", "models", "status", "expires_at", "created_at"]
    assert mine["id"] in table.stdout and "gpt-4o-mini,gpt-4o" in table.stdout and "sk-tw-" not in table.stdout

    gw = GatewayProcess(text)
    try:
        assert chat(gw, secret) == 200, "a key made on the command line works through the gateway"

        fresh = made(keys("rotate", "--config", str(config), mine["id"], "--grace", "0"))
        assert fresh != secret
        until(lambda: chat(gw, fresh) == 200)
        until(lambda: chat(gw, secret) == 401)

        revoked = keys("revoke", "--config", str(config), mine["id"])
        assert revoked.returncode == 0, revoked.stderr
        view = json.loads(revoked.stdout)
        assert (view["id"], view["status"]) == (mine["id"], "revoked") and view["revoked_at"]
        assert "sha256:" not in revoked.stdout and "sk-tw-" not in revoked.stdout
        until(lambda: chat(gw, fresh) == 401)
        assert chat(gw, TEST_KEY) == 200, "the config's keys are untouched"

        assert mine["id"] not in [k["id"] for k in listed(config)]
        assert mine["id"] in [k["id"] for k in listed(config, "--include-revoked")], "the record stays"

        req = urllib.request.Request(gw.url + "/admin/audit?limit=1000", headers={"authorization": f"Bearer {ADMIN_KEY}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            trail = json.loads(r.read())
        entries = [e for e in trail["data"] if e["target"] == mine["id"]]
        assert [e["action"] for e in entries] == ["key.revoke", "key.rotate", "key.create"]
        assert {e["actor"] for e in entries} == {"cli"}
        assert secret not in json.dumps(trail) and fresh not in json.dumps(trail)
    finally:
        gw.stop()


async def test_create_list_revoke_on_postgres(upstream: FakeOpenAI, tmp_path: Path, pg_database: str):  # noqa: F811
    config = tmp_path / "config.yaml"
    config.write_text(_config(upstream.url, f'store: {{backend: postgres, url: "{pg_database}"}}'))

    made(keys("create", "--config", str(config), "--name", "pg-svc", "--team", "search", "--models", "gpt-4o",
              "--expires", "2099-01-31T00:00:00Z"))
    made(keys("create", "--config", str(config), "--name", "pg-other"))
    [mine] = [k for k in listed(config) if k["name"] == "pg-svc"]
    assert (mine["team"], mine["models"], mine["expires_at"]) == ("search", ["gpt-4o"], "2099-01-31T00:00:00.000Z")
    assert [k["name"] for k in listed(config, "--team", "search")] == ["alice", "pg-svc"]
    refused(keys("create", "--config", str(config), "--name", "pg-svc"), "pg-svc")  # one live key per name

    revoked = keys("revoke", "--config", str(config), mine["id"])
    assert revoked.returncode == 0 and json.loads(revoked.stdout)["status"] == "revoked", revoked.stderr
    assert [k["name"] for k in listed(config, "--team", "search")] == ["alice"]
    [gone] = [k for k in listed(config, "--include-revoked") if k["id"] == mine["id"]]
    assert gone["status"] == "revoked"


def test_a_team_with_a_key_made_elsewhere_is_not_deleted(upstream: FakeOpenAI, tmp_path: Path):
    """The gateway's copy of the keys learns of a key `tollway keys` made up to 2 s later; the
    delete of its team is refused all the same (409), not left with a key in no team."""
    text = _config(upstream.url, f"store: {{backend: sqlite, path: {tmp_path / 'tollway.db'}}}")
    config = tmp_path / "config.yaml"
    config.write_text(text)
    gw = GatewayProcess(text)
    try:
        def admin(method: str, path: str, body: object = None) -> int:
            req = urllib.request.Request(gw.url + path, json.dumps(body).encode() if body is not None else None,
                                         method=method, headers={"authorization": f"Bearer {ADMIN_KEY}",
                                                                 "content-type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    return r.status
            except urllib.error.HTTPError as exc:
                return exc.code
        assert admin("POST", "/admin/teams", {"name": "t1"}) == 201
        secret = made(keys("create", "--config", str(config), "--name", "in-t1", "--team", "t1"))
        assert admin("DELETE", "/admin/teams/t1") == 409
        until(lambda: chat(gw, secret) == 200)  # (once the gateway has read it) the key works: its team is there
    finally:
        gw.stop()


def test_refusals_are_one_line_and_exit_1(upstream: FakeOpenAI, tmp_path: Path):
    bare = tmp_path / "bare.yaml"
    bare.write_text(_config(upstream.url, ""))
    refused(keys("create", "--config", str(bare), "--name", "x"), "no store:")
    refused(keys("list", "--config", str(bare)), "no store:")

    config = tmp_path / "config.yaml"
    config.write_text(_config(upstream.url, f"store: {{backend: sqlite, path: {tmp_path / 'tollway.db'}}}"))
    refused(keys("revoke", "--config", str(config), "key_000000000000000000000000"), "No key 'key_000000000000000000000000'")
    refused(keys("rotate", "--config", str(config), "key_nope"), "No key 'key_nope'")
    refused(keys("revoke", "--config", str(config), "config:alice"), "config file")
    refused(keys("create", "--config", str(config), "--name", "bad name!"), "'bad name!' is not a valid name")
    refused(keys("create", "--config", str(config), "--name", "alice"), "config file")
    refused(keys("create", "--config", str(config), "--name", "x", "--models", "gpt-5"), "Unknown model 'gpt-5'")
    refused(keys("create", "--config", str(config), "--name", "x", "--team", "nobody"), "Unknown team 'nobody'")
    refused(keys("create", "--config", str(config), "--name", "x", "--expires", "soon"), "RFC 3339")
    refused(keys("create", "--config", str(tmp_path / "missing.yaml"), "--name", "x"), "missing.yaml")
    assert listed(config)[1:] == [], "nothing was made by a refused create"

    down = tmp_path / "down.yaml"
    down.write_text(_config(upstream.url, 'store: {backend: postgres, url: "postgresql://tw:hunter2-secret@127.0.0.1:9/x"}'))
    line = refused(keys("create", "--config", str(down), "--name", "x"))
    assert "hunter2" not in line
    for password in ("Sup3r/Secret", "Sup3r?Secret", "Sup3r#Secret", "Sup3r@Secret"):  # unescaped, as pasted
        down.write_text(_config(upstream.url, f'store: {{backend: postgres, url: "postgresql://tw:{password}@127.0.0.1:9/x"}}'))
        line = refused(keys("list", "--config", str(down)), "cannot open the store")
        assert "Sup3r" not in line and "Secret" not in line, line

    usage = keys("create", "--config", str(config))  # --name missing: argparse's usage error
    assert usage.returncode == 2 and "--name" in usage.stderr and usage.stdout == ""
    assert keys("rotate", "--config", str(config), "key_x", "--grace", "soon").returncode == 2


def test_importing_the_cli_leaves_the_metrics_unimported():
    """`serve --workers N` sets the metrics directory up before prometheus_client is imported:
    registering `keys` must not import it (the actions pull it in only when a command runs)."""
    probe = subprocess.run([sys.executable, "-c", "import sys, tollway.gateway.cli; print('prometheus_client' in sys.modules)"],
                           capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert probe.stdout.strip() == "False", probe.stderr
