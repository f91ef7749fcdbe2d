"""Starting Tollway for a benchmark: the command, its environment, and a bench config."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH_KEY = "sk-bench-key"
UPSTREAM_MODEL = "gpt-4o-mini"


def tollway_argv() -> list[str]:
    """The `tollway` command installed beside the Python running the bench (a venv's), else
    the one on PATH, else its module (the project must be installed: `pip install -e .` maps
    this checkout's folders to `tollway.*`). The venv's first: a `tollway` found on PATH may
    belong to another checkout's install and would run that checkout's code."""
    beside = Path(sys.executable).with_name("tollway")
    found = str(beside) if beside.exists() else shutil.which("tollway")
    return [found] if found else [sys.executable, "-m", "tollway.gateway.cli"]


def serve_argv(config: Path, port: int) -> list[str]:
    return tollway_argv() + ["serve", "--config", str(config), "--port", str(port)]


def write_config(workdir: Path, models: dict[str, int], access_log: bool = False, cache: str = "",
                 name: str = "tollway.yaml", platform: bool = False) -> Path:
    """A bench config where each public model goes to its own OpenAI-schema upstream on
    127.0.0.1:<port>, with the key check on and an in-memory limit far above any load.
    `cache`: the top-level `cache:` value; every model then opts in (sampled answers too: the
    bench request sets no temperature). `platform`: the headroom issue's config on top — a
    token limit beside the request limit (both far above the load) and the SQLite usage
    ledger, one row per request written in batches to a file in `workdir`."""
    key_hash = subprocess.run(tollway_argv() + ["hash-key"], input=BENCH_KEY, text=True,
                              capture_output=True, check=True, cwd=REPO)
    providers, routes = [], []
    for i, (model, port) in enumerate(models.items()):
        providers.append(f"  - name: up{i}\n    schema: openai\n"
                         f"    base_url: http://127.0.0.1:{port}/v1\n    api_key: sk-upstream-secret\n")
        routes.append(f"  - name: {model}\n    targets: [{{provider: up{i}, model: {UPSTREAM_MODEL}}}]\n"
                      + ("    cache: {deterministic_only: false}\n" if cache else ""))
    path = workdir / name
    path.write_text(
        "providers:\n" + "".join(providers) + "models:\n" + "".join(routes)
        + f'keys:\n  - name: bench\n    key_hash: "{key_hash.stdout.strip()}"\n    models: ["*"]\n'
        + ("    limits: [{requests: 1000000000, per: 1m}, {total_tokens: 1000000000000, per: 1m}]\n"
           if platform else "    limits: [{requests: 1000000000, per: 1m}]\n")
        + f"server:\n  access_log: {'true' if access_log else 'false'}\n"
        + (f"cache: {cache}\n" if cache else "")
        + (f"store:\n  backend: sqlite\n  path: {workdir / 'ledger.db'}\n" if platform else ""))
    return path
