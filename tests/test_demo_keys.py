"""Demo credentials beside a real provider: `tollway serve` warns at start, `tollway check` lists
them, and every key_hash the examples and deploy manifests ship is a known demo digest."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from tests.harness import ROOT, TEST_KEY, GatewayProcess, key_hash
from tollway.core import config as config_mod
from tollway.core.security.demo_keys import DEMO_KEY_HASHES, demo_credentials
from tollway.core.security.keys import hash_key

# The plaintexts the README and docs publish, and their digests.
DEMO_KEY = "tollway-demo-key"
TIER2_DEMO_KEY = "tier2-internal-key"
DEMO_HASH = hash_key(DEMO_KEY)
TIER2_DEMO_HASH = hash_key(TIER2_DEMO_KEY)

# `key_hash: value`, quoted or not, in block or flow style, in YAML or in a ConfigMap's embedded config.
KEY_HASH_VALUE = re.compile(r"""\bkey_hash["']?\s*:\s*["']?([^"'\s,}]+)""")


def shipped_key_hashes() -> dict[str, list[str]]:
    """Every literal key_hash value in examples/ and deploy/ YAML files, by file."""
    found: dict[str, list[str]] = {}
    files = sorted((ROOT / "examples").rglob("*.yaml")) + sorted((ROOT / "deploy").rglob("*.yaml")) \
        + sorted((ROOT / "deploy").rglob("*.yml"))
    for path in files:
        values = [v for v in KEY_HASH_VALUE.findall(path.read_text()) if "${" not in v]
        if values:
            found[str(path.relative_to(ROOT))] = values
    return found


def config(providers: str, extra: str = "") -> str:
    return f"""
providers:
{providers}
models:
  - name: gpt-4o-mini
    targets: [{{provider: p}}]
keys:
  - name: real
    key_hash: "{key_hash(TEST_KEY)}"
  - name: demo
    key_hash: "{DEMO_HASH}"
admin:
  key_hash: "{TIER2_DEMO_HASH}"
{extra}"""


REAL = "  - {name: p, schema: openai, base_url: 'http://127.0.0.1:9/v1', api_key: sk-upstream-not-used}"
FAKE = "  - {name: p, schema: fake}"


def _no_demo_secret(text: str) -> None:
    for secret in (DEMO_KEY, TIER2_DEMO_KEY, *DEMO_KEY_HASHES, *(h.split(":", 1)[1] for h in DEMO_KEY_HASHES)):
        assert secret not in text


# -- the constant covers what ships -----------------------------------------------------------

def test_every_key_hash_in_examples_and_deploy_is_a_known_demo_digest():
    shipped = shipped_key_hashes()
    # the scan finds them (so the check below is not vacuous): the examples and both k8s tiers
    assert len(shipped) >= 10 and "deploy/k8s/tier1.yaml" in shipped and "deploy/k8s/tier2.yaml" in shipped, shipped
    unknown = {f: [v for v in values if v not in DEMO_KEY_HASHES] for f, values in shipped.items()}
    unknown = {f: v for f, v in unknown.items() if v}
    assert not unknown, ("a shipped config has a key_hash that is not in tollway.core.security.demo_keys."
                         f"DEMO_KEY_HASHES; add it there (its key is published with the example): {unknown}")
    assert {v for values in shipped.values() for v in values} == DEMO_KEY_HASHES  # none listed that nothing ships


def test_the_scan_reads_every_form_a_key_hash_takes():
    text = ('keys: [{name: a, key_hash: "sha256:aa"}]\nadmin:\n  key_hash: sha256:bb\n'
            "    metrics_auth: {key_hash: 'sha256:cc'}\n" '{"key_hash": "sha256:dd"}\nkey_hash: ${ADMIN_HASH}\n')
    assert KEY_HASH_VALUE.findall(text) == ["sha256:aa", "sha256:bb", "sha256:cc", "sha256:dd", "${ADMIN_HASH"]  # (a ${VAR} is skipped)


def test_the_published_demo_keys_are_the_listed_digests():
    assert DEMO_KEY_HASHES == {DEMO_HASH, TIER2_DEMO_HASH}
    for doc in ("README.md", "docs/deploy.md"):
        assert DEMO_KEY in (ROOT / doc).read_text()  # still published, so still a demo key


# -- which entries are found ------------------------------------------------------------------

def test_every_kind_of_credential_is_named_with_a_real_provider():
    # (an admin credential may not be a gateway key's: this config has no demo gateway key)
    cfg = config_mod.loads(f"""
providers:
{REAL}
models: [{{name: gpt-4o-mini, targets: [{{provider: p}}]}}]
keys: [{{name: real, key_hash: "{key_hash(TEST_KEY)}"}}]
admin: {{key_hash: "{TIER2_DEMO_HASH}"}}
admins:
  - {{name: ops, key_hash: "{hash_key('a-fresh-viewer-key')}", role: viewer}}
  - {{name: auditor, key_hash: "{DEMO_HASH}", role: viewer}}
server:
  metrics_auth: {{key_hash: "{DEMO_HASH}"}}
""")
    found = demo_credentials(cfg)
    assert [d.entry for d in found] == ["admin", "admins[1] (name 'auditor')", "server.metrics_auth"]
    assert "administer" in found[0].message and "/metrics" in found[2].message
    for d in found:
        assert "tollway hash-key" in d.message and "provider 'p'" in d.message
        _no_demo_secret(d.entry + d.message)
    cfg = config_mod.loads(config(REAL))
    assert [d.entry for d in demo_credentials(cfg)] == ["keys[1] (name 'demo')", "admin"]


def test_nothing_is_found_with_only_fake_providers_or_fresh_keys():
    assert demo_credentials(config_mod.loads(config(FAKE))) == []
    assert demo_credentials(config_mod.loads(config(FAKE + "\n" + FAKE.replace("name: p", "name: q")))) == []
    fresh = config(REAL).replace(DEMO_HASH, hash_key("a-fresh-key")).replace(TIER2_DEMO_HASH, hash_key("another"))
    assert demo_credentials(config_mod.loads(fresh)) == []


def test_one_real_provider_among_fakes_is_enough():
    cfg = config_mod.loads(config(FAKE.replace("name: p", "name: f") + "\n" + REAL))
    assert [d.path for d in demo_credentials(cfg)] == ["keys[1]", "admin"]


# -- tollway serve ----------------------------------------------------------------------------

def _stderr_records(gw: GatewayProcess) -> list[dict]:
    return [json.loads(line) for line in gw.stderr().splitlines() if line.strip()]


@pytest.mark.parametrize("providers", [REAL, FAKE], ids=["real-provider", "fake-only"])
def test_serve_warns_at_start_about_demo_credentials_only_with_a_real_provider(providers):
    gw = GatewayProcess(config(providers))
    try:
        pass  # it serves: the warning does not stop it
    finally:  # (a loaded CI machine can take more than the harness's default 10 s to drain and exit)
        # Twice in CI (2026-12-01, -02) it did not exit in time; not reproduced in 100 starts and
        # stops under load since: what the gateway said is kept in the failure for the next look.
        code = gw.stop(timeout=30)
        assert code == 0, f"exit {code}; the gateway's stderr:\n{gw.stderr()[-4000:]}"
    records = _stderr_records(gw)
    assert [r for r in records if r.get("event") == "start"], records  # the start lines are there
    warned = [r for r in records if r.get("event") == "demo_credential"]
    if providers == FAKE:
        assert warned == []
        return
    assert [(r["entry"], r["name"]) for r in warned] == [("keys[1]", "demo"), ("admin", None)]
    for r in warned:
        assert r["level"] == "warning" and r["logger"] == "tollway"
        assert "tollway hash-key" in r["message"] and "demo key" in r["message"]
    assert "keys[1] (name 'demo')" in warned[0]["message"] and "'real'" not in gw.stderr()
    _no_demo_secret(gw.stderr())
    _no_demo_secret(gw.stdout_path.read_text())


# -- tollway check ----------------------------------------------------------------------------

def _check(path: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os
    return subprocess.run([sys.executable, "-m", "tollway.gateway.cli", "check", path], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, **(env or {})}, timeout=60)


def test_check_warns_about_demo_credentials_with_a_real_provider_but_passes(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(config(REAL))
    r = _check(str(path))
    assert r.returncode == 0 and "ok (1 providers, 1 models, 2 keys)" in r.stdout, r.stderr
    demo = [line for line in r.stderr.splitlines() if "demo key" in line]
    assert [line.split(": ")[2] for line in demo] == ["keys[1] (name 'demo')", "admin"]
    assert all(line.startswith(f"{path}: warning: ") and "tollway hash-key" in line for line in demo)
    _no_demo_secret(r.stdout + r.stderr)

    path.write_text(config(FAKE))
    r = _check(str(path))
    assert r.returncode == 0 and r.stderr == "", r.stderr


def test_check_on_the_shipped_examples():
    """demo.yaml (the fake) is quiet; openai.yaml, copied as is, says its key is the demo's."""
    assert _check("examples/demo.yaml").stderr == ""
    r = _check("examples/openai.yaml", env={"OPENAI_API_KEY": "sk-placeholder"})
    assert r.returncode == 0
    assert "warning: keys[0] (name 'demo'): key_hash is the digest of a demo key" in r.stderr, r.stderr
