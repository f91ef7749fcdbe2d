"""The `tollway` command line: check, hash-key, version."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tollway.core.security.keys import KeyTable, hash_key

ROOT = Path(__file__).resolve().parent.parent


def tollway(*args: str, stdin: str = "", env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tollway.gateway.cli", *args], input=stdin, capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, **(env or {})}, timeout=60)


def test_check_accepts_every_example():
    examples = sorted((ROOT / "examples").glob("*.yaml"))
    assert len(examples) >= 4
    # Every ${VAR} an example uses, set to a value of the right shape.
    names = {n for e in examples for n in re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", e.read_text())}
    env = {n: ("sha256:" + "0" * 64 if "HASH" in n else "placeholder") for n in names}
    for example in examples:
        r = tollway("check", str(example), env=env)
        assert r.returncode == 0, (example, r.stderr)
        assert "ok" in r.stdout


def test_check_allow_missing_env_accepts_every_example_without_its_secrets():
    """The shipped examples validate on a machine that holds none of their secrets."""
    examples = sorted((ROOT / "examples").glob("*.yaml"))
    names = {n for e in examples for n in re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", e.read_text())}
    bare = {k: v for k, v in os.environ.items() if k not in names}
    needs_env = 0
    for example in examples:
        strict = subprocess.run([sys.executable, "-m", "tollway.gateway.cli", "check", str(example)], capture_output=True,
                                text=True, cwd=ROOT, env=bare, timeout=60)
        r = subprocess.run([sys.executable, "-m", "tollway.gateway.cli", "check", "--allow-missing-env", str(example)],
                           capture_output=True, text=True, cwd=ROOT, env=bare, timeout=60)
        assert r.returncode == 0 and "ok (" in r.stdout, (example, r.stderr)
        if strict.returncode:  # without the flag, an unset secret is an error, and the flag names it
            needs_env += 1
            assert "is not set" in strict.stderr and "note:" in r.stderr and "is not set" in r.stderr, example
    assert needs_env >= 7  # the flag is what makes these pass


def test_check_lists_every_error_in_file_order_and_exits_nonzero(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("providers:\n  - name: openai\n    schema: openai\n    base_url: http://x\n"
                   "models:\n  - name: gpt-4o\n    targets: [{provider: opnai}]\n"
                   "keys:\n  - name: k\n    key_hash: nothash\n    models: [gpt-4o, gpt4o]\n")
    r = tollway("check", str(bad))
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.splitlines() == [
        f"{bad}: models.gpt-4o[0].provider: unknown provider 'opnai'; did you mean 'openai'? (line 7)",
        f"{bad}: keys.k.key_hash: expected the output of `tollway hash-key` (sha256:<64 hex> or hmac-sha256:<64 hex>) (line 10)",
        f"{bad}: keys.k.models[1]: unknown model 'gpt4o' (no model has this name or a match: for it); did you mean 'gpt-4o'? "
        "(line 11)",
        f"{bad}: 3 errors",
    ]


def test_serve_refuses_a_key_naming_an_unknown_model(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("providers: [{name: f, schema: fake}]\nmodels: [{name: m, targets: [{provider: f}]}]\n"
                   f"keys: [{{name: k, key_hash: '{hash_key('k')}', models: [n]}}]\n")
    r = tollway("serve", "--config", str(bad), "--port", "1")
    assert r.returncode == 1 and "keys.k.models[0]: unknown model 'n'" in r.stderr


def test_check_refuses_drain_seconds_serve_would_crash_on(tmp_path):
    """`check` said ok, and `serve` crashed at its start or on SIGTERM, skipping the drain."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("providers: [{name: f, schema: fake}]\nmodels: [{name: m, targets: [{provider: f}]}]\n"
                   "server:\n  drain_delay: .inf\n  drain_timeout: 1e12\n  reload_check_interval: -1\n")
    r = tollway("check", str(bad))
    assert r.returncode == 1
    assert r.stderr.splitlines()[:3] == [
        f"{bad}: server.drain_delay: must be a number of seconds from 0 to 3600, not inf (line 4)",
        f"{bad}: server.drain_timeout: must be a number of seconds from 0 to 86400, not 1e+12 (line 5)",
        f"{bad}: server.reload_check_interval: must be a number of seconds from 0 to 86400, not -1 (line 6)",
    ]


def test_check_names_bad_field_and_exits_nonzero(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("providers:\n  - name: a\n    schema: openai\n    base_url: http://x\n"
                   "models:\n  - name: gpt-4o\n    targets:\n      - provider: opnai\n")
    r = tollway("check", str(bad))
    assert r.returncode == 1
    assert "models.gpt-4o[0].provider: unknown provider 'opnai' (line 8)" in r.stderr


def test_check_warns_about_a_model_with_no_price_but_passes(tmp_path):
    cfg = tmp_path / "unpriced.yaml"
    cfg.write_text("providers:\n  - {name: vllm, schema: openai, base_url: http://x/v1}\n  - {name: f, schema: fake}\n"
                   "models:\n  - name: llama\n    targets: [{provider: vllm, model: my-llama}]\n"
                   "  - name: gpt-4o\n    targets: [{provider: vllm}]\n"
                   "  - name: fixture\n    targets: [{provider: f}]\n")
    r = tollway("check", str(cfg))
    assert r.returncode == 0 and "ok (2 providers, 3 models, 0 keys)" in r.stdout
    assert r.stderr.splitlines() == [
        f"{cfg}: warning: models.llama: model 'llama' has no price in the config or the price dataset: its usage will be "
        "recorded with cost_usd null and count $0 against budgets; set models[0].price (USD per million tokens; "
        "input: 0, output: 0 if it is free) (line 5)",
    ]


def test_check_missing_file(tmp_path):
    r = tollway("check", str(tmp_path / "nope.yaml"))
    assert r.returncode == 1 and "cannot read" in r.stderr


def test_check_and_serve_refuse_a_file_that_is_not_utf8_or_an_endless_alias_without_a_traceback(tmp_path):
    latin1, endless = tmp_path / "latin1.yaml", tmp_path / "endless.yaml"
    latin1.write_bytes(b"providers: []\n# caf\xe9\n")
    endless.write_text("providers: &p\n  - *p\n")
    for path, problem in ((latin1, "is not UTF-8: byte 19 is 0xe9 (line 2)"),
                          (endless, "providers[0]: a YAML alias refers to itself")):
        for args in (("check", str(path)), ("serve", "--config", str(path), "--port", "9")):
            r = tollway(*args)
            assert r.returncode == 1 and problem in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)


def test_hash_key_prints_exactly_one_line():
    r = tollway("hash-key", stdin="sk-my-gateway-key\n")
    assert r.returncode == 0
    assert r.stdout.splitlines() == [hash_key("sk-my-gateway-key")]
    assert r.stdout.startswith("sha256:") and len(r.stdout.strip()) == len("sha256:") + 64


def test_hash_key_with_pepper_matches_the_key_table():
    r = tollway("hash-key", "--pepper-env", "PEPPER", stdin="k1", env={"PEPPER": "pp"})
    digest = r.stdout.strip()
    assert digest.startswith("hmac-sha256:")
    table = KeyTable({digest: "record"}, pepper="pp")
    assert table.lookup("k1") == "record" and table.lookup("k2") is None


def test_hash_key_refuses_empty_input():
    assert tollway("hash-key", stdin="").returncode == 1


def test_version_says_whether_kernels_are_compiled():
    r = tollway("version")
    assert r.returncode == 0 and r.stdout.startswith("tollway ")
    assert "kernels:" in r.stdout
    pure = tollway("version", env={"TOLLWAY_NO_EXTENSIONS": "1"})
    assert "pure Python" in pure.stdout


def test_serve_help_shows_every_default():
    r = tollway("serve", "--help")
    assert r.returncode == 0
    text = " ".join(r.stdout.split())  # argparse wraps lines
    for option, default in (("--host", "127.0.0.1"), ("--port", "8080"), ("--workers", "1"), ("--reuse-port", "off")):
        assert option in text
        assert f"(default: {default})" in text.split(option, 2)[-1], option  # in that option's own help
    assert "--config FILE" in text and "(required)" in text
