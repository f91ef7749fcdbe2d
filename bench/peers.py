"""Tollway side by side with other AI gateways, in one run of the shared peer harness (issue 19).

    bench/run --peers                                   # every peer the harness knows, and Tollway
    bench/run --peers --peers-list direct,nginx-proxy,tollway --seconds 2 --warm 1
    bench/run --peers --write-readme                    # and the table into bench/README.md

The harness lives outside this repository (`../shared/bench-peers`; elsewhere: `--peers-harness
DIR` or TOLLWAY_PEERS_HARNESS) and is not copied into it. Its `setup.sh` copies it to a temp
folder (`--peers-workdir`, default $TMPDIR/bench-peers) and installs what the chosen peers need;
its `run_peers.sh` runs there, and Tollway joins the run through the harness's CUSTOM_* hook, so
it gets the same mock upstream, wrk script, CPU pinning and checks as every peer. The run above is

    PEERS="direct nginx-proxy tollway" DUR=2 WARM=1 CUSTOM_NAME=tollway \\
      CUSTOM_CMD='tollway serve --config <written> --port P' CUSTOM_URL=http://127.0.0.1:P/v1/chat/completions \\
      CUSTOM_SSE_MODEL=gpt-4o-mini-sse CUSTOM_AUTH=sk-bench-key CUSTOM_READY_URL=http://127.0.0.1:P/healthz \\
      $TMPDIR/bench-peers/run_peers.sh

(PEERS in the environment is also the default of --peers-list.)
"""
from __future__ import annotations

import argparse
import csv
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from services import free_ports
from tollway_proc import BENCH_KEY, REPO, serve_argv, write_config

HARNESS_PEERS = ("direct", "nginx-proxy", "litellm", "portkey", "nullplatform")
INSTALLED = {"litellm", "portkey", "nullplatform"}  # what setup.sh installs unless --minimal
TOLLWAY = "tollway"
UPSTREAM_JSON, UPSTREAM_SSE = 18000, 18001  # the harness's mock upstream (nginx/mock.conf)
MODEL, SSE_MODEL = "gpt-4o-mini", "gpt-4o-mini-sse"  # Tollway routes each to one mock port
README = Path(__file__).with_name("README.md")
BEGIN, END = "<!-- peers:begin -->", "<!-- peers:end -->"


@dataclass(frozen=True)
class PeerCell:
    """One wrk run of the harness (results.tsv); rps is None when wrk printed no result."""
    rps: float | None
    p50_ms: float
    p99_ms: float
    errors: int  # socket errors + non-2xx answers


@dataclass(frozen=True)
class PeerInfo:
    """One peer's row of peer_info.tsv: its curl checks and process figures, as the harness wrote them."""
    check_json: str
    check_sse: str
    rss_idle_mb: str
    rss_max_mb: str
    procs: str
    threads: str
    cpus: str


@dataclass(frozen=True)
class PeerRun:
    folder: Path
    seconds: str  # DUR, as the harness's table states it
    cells: dict[tuple[str, str, int], PeerCell]  # (peer, "json"|"sse", conns)
    info: dict[str, PeerInfo]  # in the order the peers ran
    versions: str


def add_peer_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--peers", action="store_true",
                   help="run the shared peer harness (LiteLLM, Portkey, ...) with Tollway in the same run (bench/peers.py)")
    p.add_argument("--peers-list", default=os.environ.get("PEERS", ",".join(HARNESS_PEERS + (TOLLWAY,))),
                   help="comma list of peers for --peers, from %s and tollway (default: $PEERS or all)"
                   % ",".join(HARNESS_PEERS))
    p.add_argument("--peers-harness", type=Path, default=default_harness(),
                   help="the harness folder (default: $TOLLWAY_PEERS_HARNESS or ../shared/bench-peers)")
    p.add_argument("--peers-workdir", type=Path, default=Path(tempfile.gettempdir()) / "bench-peers",
                   help="where setup.sh copies the harness and installs the peers (kept between runs)")
    p.add_argument("--write-readme", action="store_true",
                   help="with --peers: put the table between the peers markers in bench/README.md")


def default_harness() -> Path:
    return Path(os.environ.get("TOLLWAY_PEERS_HARNESS") or REPO.parent / "shared" / "bench-peers")


def peer_names(spec: str) -> list[str]:
    """--peers-list (or $PEERS: spaces work too) as names; unknown names are an error here, not
    a line in the harness's log after minutes of setup."""
    names = spec.replace(",", " ").split()
    unknown = [n for n in names if n not in HARNESS_PEERS + (TOLLWAY,)]
    if unknown or not names:
        raise SystemExit(f"--peers-list: unknown or no peers {unknown}; known: {', '.join(HARNESS_PEERS)}, {TOLLWAY}")
    return names


def set_up(harness: Path, workdir: Path, peers: list[str]) -> None:
    """The harness's own setup.sh: copy it to `workdir`, install nginx and wrk and, if a chosen
    peer needs them, LiteLLM and the node gateways (minutes the first time, skipped after)."""
    if not (harness / "setup.sh").is_file():
        raise SystemExit(f"no peer harness at {harness} (--peers-harness or TOLLWAY_PEERS_HARNESS)")
    minimal = [] if INSTALLED & set(peers) else ["--minimal"]
    print(f"setting up the peer harness in {workdir} ...", file=sys.stderr)
    subprocess.run(["bash", str(harness / "setup.sh"), *minimal, str(workdir)], check=True, stdout=sys.stderr)


def tollway_env(config_dir: Path) -> dict[str, str]:
    """The harness's CUSTOM_* hook for Tollway: the issue-19 config (key check, request and token
    limits, SQLite ledger, admin console) over the harness's mock ports; run_peers.sh starts it on GW_CPU."""
    config = write_config(config_dir, {MODEL: UPSTREAM_JSON, SSE_MODEL: UPSTREAM_SSE}, platform=True)
    (port,) = free_ports(1)
    base = f"http://127.0.0.1:{port}"
    return {"CUSTOM_NAME": TOLLWAY, "CUSTOM_CMD": shlex.join(serve_argv(config, port)),
            "CUSTOM_URL": f"{base}/v1/chat/completions", "CUSTOM_MODEL": MODEL, "CUSTOM_SSE_MODEL": SSE_MODEL,
            "CUSTOM_AUTH": BENCH_KEY, "CUSTOM_READY_URL": f"{base}/healthz"}


def harness_env(args: argparse.Namespace, peers: list[str]) -> dict[str, str]:
    """run_peers.sh's knobs from bench/run's flags (PEERS keeps the order asked for)."""
    conns = " ".join(str(c) for c in sorted(args.conns, reverse=True))
    return {"PEERS": " ".join(peers), "DUR": f"{args.seconds:g}", "WARM": f"{args.warm:g}",
            "CONNS": conns, "SSE_CONNS": conns, "LOAD_CPU": args.load_cpu, "GW_CPU": args.gw_cpu}


def run_harness(workdir: Path, env: dict[str, str]) -> Path:
    """Run run_peers.sh in `workdir` (its log and table go to stderr); returns its results folder."""
    results = workdir / "results"
    before = set(results.iterdir()) if results.is_dir() else set()
    for name in ("PEERS", "DUR", "WARM"):
        print(f"  {name}={env[name]}", file=sys.stderr)
    done = subprocess.run([str(workdir / "run_peers.sh")], env=os.environ | env, stdout=sys.stderr)
    if done.returncode:  # its log says why; the usual cause is another run holding the mock's ports
        raise SystemExit(f"run_peers.sh exited with {done.returncode} (ports {UPSTREAM_JSON}/{UPSTREAM_SSE} busy?)")
    new = sorted(p for p in results.iterdir() if p.is_dir() and p not in before)
    if not new:
        raise SystemExit(f"run_peers.sh left no new folder in {results}")
    return new[-1]


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:  # "NA": wrk printed no RESULT line
        return None


def read_results(folder: Path, seconds: str) -> PeerRun:
    cells: dict[tuple[str, str, int], PeerCell] = {}
    with open(folder / "results.tsv") as f:
        for r in csv.DictReader(f, delimiter="\t"):
            rps = _float(r["rps"])
            errors = int(r["errors"]) + int(r["non2xx"]) if rps is not None else 0
            cells[r["peer"], r["mode"], int(r["conns"])] = PeerCell(
                rps, _float(r["p50_ms"]) or 0.0, _float(r["p99_ms"]) or 0.0, errors)
    with open(folder / "peer_info.tsv") as f:
        info = {r.pop("peer"): PeerInfo(**r) for r in csv.DictReader(f, delimiter="\t")}
    return PeerRun(folder, seconds, cells, info, (folder / "versions.txt").read_text().strip())


def _cell_text(run: PeerRun, peer: str, mode: str, conns: int) -> str:
    cell = run.cells.get((peer, mode, conns))
    if cell is None or cell.rps is None:  # its curl check failed (so not measured) or wrk failed
        return "n/a" if not getattr(run.info[peer], f"check_{mode}").startswith("ok") else "-"
    if cell.rps == 0:  # not one answer within the run (wrk's latencies are then zeros, not figures)
        return f"0 answers in {run.seconds} s"
    return f"{cell.rps:.0f} / {cell.p50_ms:.2f} / {cell.p99_ms:.2f} / {cell.errors}"


def _ratio(mine: PeerCell | None, ours: PeerCell | None) -> str:
    if mine is None or ours is None or mine.rps is None or not ours.rps:
        return "-"
    return f"{mine.rps / ours.rps:.3f}"


def _vs_tollway(run: PeerRun, peer: str, conns: int) -> str:
    """A peer's req/s as a fraction of Tollway's from the same run (JSON / SSE): ratios within
    one run travel better between noisy machines than the req/s themselves."""
    return " / ".join(_ratio(run.cells.get((peer, m, conns)), run.cells.get((TOLLWAY, m, conns)))
                      for m in ("json", "sse"))


def render_table(run: PeerRun) -> list[str]:
    """The side-by-side table: every (mode, conns) cell as rps / p50 / p99 ms / errors."""
    conns = sorted({c for (_, _, c) in run.cells}, reverse=True) or [32, 1]
    cols = [(m, c) for m in ("json", "sse") for c in conns]
    top = max(conns)
    hdr = (["peer"] + [f"{m}@c{c} rps / p50 / p99 ms / err" for m, c in cols]
           + ["RSS idle/max MB", "procs/thr", "cpu", f"rps / tollway's @c{top} json / sse"])
    rows = [[peer] + [_cell_text(run, peer, m, c) for m, c in cols]
            + [f"{i.rss_idle_mb}/{i.rss_max_mb}", f"{i.procs}/{i.threads}", i.cpus, _vs_tollway(run, peer, top)]
            for peer, i in run.info.items()]
    widths = [max(len(x) for x in col) for col in zip(hdr, *rows)]
    lines = ["  ".join(x.ljust(w) for x, w in zip(r, widths)).rstrip() for r in [hdr] + rows]
    checks = [f"{p}: check json={i.check_json} sse={i.check_sse}" for p, i in run.info.items()
              if not (i.check_json.startswith("ok") and i.check_sse.startswith("ok"))]
    return lines + (["", "n/a = its curl check failed, so not measured:"] + checks if checks else [])


def cpu_model() -> str:
    """lscpu's model name (the machine is part of a result), else what Python knows."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown CPU"
    names = [line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name:")]
    return names[0] if names else "unknown CPU"


def tollway_version() -> str:
    """The checkout's commit and the Python and granian that run it, for the versions block."""
    done = subprocess.run(["git", "-C", str(REPO), "log", "-1", "--format=%h %cs"], capture_output=True, text=True)
    try:
        granian = metadata.version("granian")
    except metadata.PackageNotFoundError:
        granian = "?"
    return f"tollway: {done.stdout.strip() or 'unknown commit'}  python: {platform.python_version()}  granian: {granian}"


def readme_section(run: PeerRun, args: argparse.Namespace, load: float) -> str:
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return "\n".join([textwrap.fill(
        f"`bench/run --peers --write-readme` on {when}: {cpu_model()}, {os.cpu_count()} vCPU, load average "
        f"{load:.1f} at the start; mock upstream and wrk on CPU {args.load_cpu}, each gateway alone on CPU "
        f"{args.gw_cpu}; {args.seconds:g} s per cell after a {args.warm:g} s warm-up. Tollway with "
        "the issue-19 config (key check, request and token limits, SQLite ledger, admin console). "
        "Cells: req/s / p50 / p99 ms / errors.",
        width=100),
        "", "```", run.versions, tollway_version(), "", *render_table(run), "```"])


def write_readme(section: str, readme: Path = README) -> None:
    """Replace what is between the peers markers in bench/README.md (the markers stay)."""
    text = readme.read_text()
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise SystemExit(f"{readme} has no {BEGIN} ... {END} section to fill")
    readme.write_text(text[:start + len(BEGIN)] + "\n" + section + "\n" + text[end:])


def run_peers(args: argparse.Namespace) -> int:
    """bench/run --peers: set the harness up, run it with Tollway, print (and maybe record) the table."""
    peers = peer_names(args.peers_list)
    workdir = args.peers_workdir.resolve()
    set_up(args.peers_harness.resolve(), workdir, peers)
    env = harness_env(args, peers)
    if TOLLWAY in peers:
        config_dir = Path(tempfile.mkdtemp(prefix="tollway-peers-"))
        print(f"Tollway's config and ledger: {config_dir}", file=sys.stderr)
        env |= tollway_env(config_dir)
    load = os.getloadavg()[0]
    result = read_results(run_harness(workdir, env), env["DUR"])
    print(f"\npeer harness results: {result.folder}")
    print("\n".join(render_table(result)))
    if args.write_readme:
        write_readme(readme_section(result, args, load))
        print(f"table written to {README}")
    tollway_ok = TOLLWAY not in peers or (TOLLWAY in result.info and result.info[TOLLWAY].check_json.startswith("ok"))
    return 0 if tollway_ok else 1
