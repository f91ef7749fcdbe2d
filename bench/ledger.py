#!/usr/bin/env python3
"""The usage ledger's cost: Tollway with the ledger off and on, side by side, in one run.

The mock upstream (nginx, bench/run's) runs on the load CPU with wrk; one `tollway serve` per
configuration runs on the gateway CPU, all started at once and measured in turn: the config
`tollway_proc.write_config` makes (key check, in-memory request limit, metrics, access log
off), once without `store:` (ledger off) and once with `store: {backend: sqlite, path: <file in
the run's temp dir>}` (and `backend: postgres` on a fresh database, once that store exists).
The ledger's writer thread lives in the gateway's process, so its CPU is on the gateway CPU
and counted: that is the point.

Each round runs, for every configuration in an order that rotates round by round (with two,
they alternate): c=32 JSON and c=32 stream throughput, and c=1 JSON latency (p50, p99), each
for --seconds. Printed: every round's numbers, and per figure the median over rounds of the
ratio ledger-on / ledger-off taken within a round, with its range. The gateway's CPU per
request (granian's processes, from /proc) is printed next to the c=32 figures: on a shared
machine it moves less than req/s.

After the rounds the bench checks that the ledger kept what it was sent: it waits for the
on-gateway's queue to empty, then compares the rows in its database with the requests the
gateway counted (tollway_requests_total) and those wrk completed (which can be a few short of
the gateway's count: requests in flight when wrk stops), and prints
tollway_ledger_dropped_total. A bench that measured a ledger dropping records would lie.

Target (the ledger issue): c=32 throughput drops by less than 5% with the ledger on; added
latency at c=1 unchanged within noise.

    python bench/ledger.py [--rounds 5] [--seconds 4]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from loadgen import Cell, ensure_tools, run_wrk  # noqa: E402
from services import ServiceSet, cpu_list, cpu_seconds, free_ports, thread_cpu  # noqa: E402
from tollway_proc import BENCH_KEY, REPO, serve_argv, write_config  # noqa: E402
from upstream_conf import MODEL, write_confs  # noqa: E402

# (figure, scenario, connections); the c=1 figure is read for latency, the others for req/s
FIGURES = (("json@32", "json", 32), ("stream@32", "stream", 32), ("json@1", "json", 1))
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
TARGET = 0.05  # the issue's budget: c=32 throughput lost with the ledger on


class Gateway:
    """One running `tollway serve`, its URL, and what has been sent to it."""

    def __init__(self, name: str, proc: subprocess.Popen, port: int) -> None:
        self.name, self.proc, self.port = name, proc, port
        self.url = f"http://127.0.0.1:{port}"
        self.sent = 0  # requests wrk completed against it, warm-ups included

    def cpu_seconds(self) -> float:
        """User + system CPU so far of the server's processes (taskset's exec'd granian and its
        worker, with every thread: uvloop's, granian's and the SQLite writer's)."""
        return cpu_seconds([self.proc.pid, *_children(self.proc.pid)])

    def thread_cpu(self) -> dict[str, float]:
        """The same, by thread kind (services.thread_cpu): the loop, the ledger's, the rest."""
        return thread_cpu([self.proc.pid, *_children(self.proc.pid)])

    def metrics(self) -> dict[str, float]:
        """The /metrics samples, each name's values summed over its labels."""
        with urllib.request.urlopen(self.url + "/metrics", timeout=5) as r:
            text = r.read().decode()
        sums: dict[str, float] = {}
        for line in text.splitlines():
            m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{.*\})? (\S+)$", line)
            if m:
                sums[m[1]] = sums.get(m[1], 0.0) + float(m[2])
        return sums


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out]


# -- configurations ---------------------------------------------------------------------------

def postgres_available() -> str | None:
    """Why the PostgreSQL store cannot be measured here, or None if it can."""
    if importlib.util.find_spec("tollway.gateway.store.postgres") is None:
        return "tollway.gateway.store.postgres is not in this checkout"
    if shutil.which("psql") is None:
        return "psql is not installed"
    ok = subprocess.run(["psql", PG_ADMIN, "-Atc", "SELECT 1"], capture_output=True, text=True)
    if ok.returncode != 0:
        return f"no PostgreSQL answers at {PG_ADMIN}: {ok.stderr.strip()[:200]}"
    return None


def pin_postgres(cpus: str) -> list[tuple[int, str]]:
    """Move the PostgreSQL server's processes to the load CPU for the run (new backends fork
    from the postmaster and inherit it): the database stands for another machine, as the mock
    upstream does, so it must not take the gateway's CPU. Returns each pid's old CPU list."""
    pids = subprocess.run(["pgrep", "-x", "postgres"], capture_output=True, text=True).stdout.split()
    old = []
    for pid in pids:
        shown = subprocess.run(["taskset", "-a", "-p", "-c", str(pid)], capture_output=True, text=True).stdout
        if subprocess.run(["taskset", "-a", "-p", "-c", cpus, pid], capture_output=True).returncode == 0:
            old.append((int(pid), shown.rsplit(":", 1)[-1].strip()))
    print(f"postgres: {len(old)} server processes pinned to CPU {cpus} for the run")
    return old


def unpin(pinned: list[tuple[int, str]]) -> None:
    for pid, cpus in pinned:
        subprocess.run(["taskset", "-a", "-p", "-c", cpus, str(pid)], capture_output=True)


def store_section(backend: str, workdir: Path, pg_db: str, ledger: str) -> str:
    section = f"ledger: {ledger}\n" if ledger else ""
    if backend == "sqlite":
        return section + f"store: {{backend: sqlite, path: '{workdir / 'ledger.db'}'}}\n"
    return section + f"store: {{backend: postgres, url: 'postgresql://postgres@127.0.0.1:5432/{pg_db}'}}\n"


def count_rows(backend: str, workdir: Path, pg_db: str) -> int:
    if backend == "sqlite":
        db = sqlite3.connect(f"file:{workdir / 'ledger.db'}?mode=ro", uri=True)
        try:
            return int(db.execute("SELECT count(*) FROM usage_records").fetchone()[0])
        finally:
            db.close()
    out = subprocess.run(["psql", f"postgresql://postgres@127.0.0.1:5432/{pg_db}", "-Atc",
                          "SELECT count(*) FROM usage_records"], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


# -- per record, in process ------------------------------------------------------------------

def record_costs(workdir: Path, n: int = 20000, batch: int = 200) -> dict[str, float]:
    """Microseconds per usage record of each step the ledger adds, in this process (pinned
    like the gateway), best of five: on the request path, building the record from a finished
    exchange and `Ledger.submit`; on the loop, the store's batch preparation (rows and the
    hourly and daily rollups, `SqliteStore.write` before it hands off); on the store's thread,
    the SQLite transaction (insert, two indexes, two rollup upserts, commit), on a file that
    grows as the gateway's does."""

    import msgspec
    from msgspec.structs import astuple
    from prometheus_client import CollectorRegistry

    from tollway.core.config import Ledger as LedgerConfig
    from tollway.core.ledger.record import UsageRecord
    from tollway.core.ledger.rollup import rollups
    from tollway.ext.usage import Usage
    from tollway.gateway.exchange import Exchange
    from tollway.gateway.store import sqlite as sqlite_store
    from tollway.gateway.store.ledger import Ledger, LedgerCounters
    from tollway.gateway.store.recorder import usage_record

    def exchange() -> Exchange:  # a finished non-streaming chat request, as bench/run sends
        ex = Exchange("req_" + os.urandom(12).hex(), "chat")
        ex.key_name, ex.model, ex.provider, ex.upstream_model, ex.route = "bench", MODEL, "up0", MODEL, MODEL
        ex.status, ex.attempts, ex.cost_usd = 200, 1, 0.0000161
        ex.usage = Usage(prompt_tokens=27, completion_tokens=20, total_tokens=47)
        return ex

    def best(fn: Callable[[], None], per: int) -> float:
        times = []
        for _ in range(5):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times) / per * 1e6

    exchanges = [exchange() for _ in range(batch)]
    records = [usage_record(ex) for ex in exchanges]
    ledger = Ledger(None, LedgerConfig(buffer_records=10 * n, batch_records=10 * n),  # type: ignore[arg-type]
                    LedgerCounters(CollectorRegistry()))

    def submit() -> None:
        for r in records:
            ledger.submit(r)
        ledger._queue.clear()

    def prepare() -> None:  # SqliteStore's batch preparation: the rollups and the rows' values
        rollups(records)
        list(map(astuple, records))

    store = sqlite_store.SqliteStore(str(workdir / "record-costs.db"))
    store._open()
    rows = store._writer()

    # Every batch's records later than the last's, as the gateway writes them: reusing one batch's
    # timestamps would put each index insert mid-tree (~4x the cost at 200-record batches).
    clock = [time.time()]

    def later() -> list[UsageRecord]:
        clock[0] += 1.0
        return [msgspec.structs.replace(r, ts=clock[0] + i * 1e-6) for i, r in enumerate(records)]

    def write_cost() -> float:  # the whole batch write, preparation included; best of 5, us a record
        times = []
        for _ in range(5):
            batches = [later() for _ in range(n // batch)]
            t = time.perf_counter()
            for fresh in batches:
                sqlite_store._write(rows, fresh)
            times.append(time.perf_counter() - t)
        return min(times) / n * 1e6

    costs = {
        "build": best(lambda: [usage_record(ex) for ex in exchanges], batch),
        "submit": best(submit, batch),
        "prepare": best(prepare, batch),
        "sqlite": write_cost(),
    }
    rows.close()
    assert store._db is not None and store._rdb is not None
    store._db.close()
    store._rdb.close()
    return costs


# -- measuring --------------------------------------------------------------------------------

def measure(gw: Gateway, scenario: str, conns: int, args: argparse.Namespace, log: Path,
            split: dict[str, list[float]] | None = None) -> tuple[Cell, float]:
    """One wrk cell against `gw`: its numbers and the gateway's CPU microseconds per request
    (and, into `split`, those per thread kind)."""
    stream = scenario == "stream"
    model = MODEL + ("-sse" if stream else "")
    before, threads = gw.cpu_seconds(), gw.thread_cpu()
    cell = run_wrk(gw.url + "/v1/chat/completions", conns, args.seconds, args.load_cpu, stream=stream,
                   model=model, key=BENCH_KEY, log=log)
    cpu = gw.cpu_seconds() - before
    gw.sent += completed(log)
    if cell.errors:
        raise RuntimeError(f"{gw.name} {scenario} c={conns}: {cell.errors} errors (see {log})")
    requests = max(cell.rps * round(args.seconds), 1)
    if split is not None:
        for kind, seconds in gw.thread_cpu().items():
            split.setdefault(kind, []).append((seconds - threads[kind]) / requests * 1e6)
    return cell, cpu / requests * 1e6


def completed(log: Path) -> int:
    """The requests wrk completed, from the RESULT line chat.lua printed into `log`."""
    line = next(x for x in log.read_text().splitlines() if x.startswith("RESULT "))
    return int(json.loads(line[len("RESULT "):])["requests"])


def wait_drained(gw: Gateway, timeout: float = 60) -> dict[str, float]:
    """/metrics once the ledger's queue is empty (the writer flushes every flush_interval)."""
    deadline = time.monotonic() + timeout
    while True:
        m = gw.metrics()
        if m.get("tollway_ledger_queued", 0) == 0 or time.monotonic() > deadline:
            return m
        time.sleep(0.2)


def spread(values: list[float], fmt: str) -> str:
    return f"{fmt.format(statistics.median(values))} [{fmt.format(min(values))}..{fmt.format(max(values))}]"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=4, help="seconds per cell")
    p.add_argument("--warm", type=float, default=1, help="warm-up seconds per gateway and scenario")
    p.add_argument("--backends", default="sqlite,postgres",
                   help="ledger stores to measure against ledger off (postgres only where it exists)")
    p.add_argument("--ledger", default="", metavar="YAML",
                   help="the on-gateways' `ledger:` section, e.g. '{batch_records: 200, flush_interval: 0.1}'")
    p.add_argument("--load-cpu", default="0", help="CPU for the mock upstream and wrk")
    p.add_argument("--gw-cpu", default="1", help="CPU for the gateways")
    args = p.parse_args()

    ensure_tools("nginx", "wrk")
    backends = []
    for backend in args.backends.split(","):
        why = postgres_available() if backend == "postgres" else None
        if why:
            print(f"postgres: not measured ({why})")
        else:
            backends.append(backend)
    if not backends:
        print("no ledger store to measure")
        return 2
    configs = ["off", *backends]
    workdir = Path(tempfile.mkdtemp(prefix="tollway-bench-ledger-"))
    pg_db = f"tollway_bench_{os.getpid()}_{int(time.time())}"
    print(f"logs, configs and the SQLite ledger: {workdir}", file=sys.stderr)
    print(f"tollway command: {serve_argv(Path('x'), 0)[0]}; gateways on CPU {args.gw_cpu}, "
          f"upstream and wrk on CPU {args.load_cpu}")

    os.sched_setaffinity(0, {int(args.gw_cpu)})  # as the gateway runs; wrk and the services pin themselves
    costs = record_costs(workdir)
    os.sched_setaffinity(0, range(os.cpu_count() or 1))
    print("per record, in process (us, best of 5): on the request path build "
          f"{costs['build']:.2f} + submit {costs['submit']:.2f}; on the loop, per batch, prepare "
          f"{costs['prepare']:.2f}; on the store's thread, the SQLite transaction {costs['sqlite']:.2f}; "
          f"sum {sum(costs.values()):.2f}")

    json_port, sse_port, hop_json, hop_sse = free_ports(4)
    mock_conf, _ = write_confs(workdir, json_port, sse_port, hop_json, hop_sse)
    nginx = ["nginx", "-p", str(workdir), "-e", str(workdir / "nginx-startup.log"), "-g", "daemon off;"]
    base = write_config(workdir, {MODEL: json_port, MODEL + "-sse": sse_port}).read_text()
    pinned: list[tuple[int, str]] = []
    if "postgres" in backends:
        subprocess.run(["psql", PG_ADMIN, "-qc", f"CREATE DATABASE {pg_db}"], check=True)
        pinned = pin_postgres(args.load_cpu)

    # results[config][figure] = one value per round: (req/s, CPU us/req) or (p50, p99) in ms
    results: dict[str, dict[str, list[tuple[float, float]]]] = {c: {f: [] for f, _, _ in FIGURES} for c in configs}
    # splits[config][figure][thread kind] = CPU us per request, one per round (c=32 cells)
    splits: dict[str, dict[str, dict[str, list[float]]]] = {c: {f: {} for f, _, _ in FIGURES} for c in configs}
    try:
        with ServiceSet(workdir) as services:
            services.start("mock", args.load_cpu, nginx + ["-c", str(mock_conf)], json_port)
            gateways: dict[str, Gateway] = {}
            for name, port in zip(configs, free_ports(len(configs)), strict=True):
                path = workdir / f"tollway-{name}.yaml"
                path.write_text(base + ("" if name == "off" else store_section(name, workdir, pg_db, args.ledger)))
                proc = services.start(f"tollway-{name}", args.gw_cpu, serve_argv(path, port), port, cwd=REPO)
                gateways[name] = Gateway(name, proc, port)
            time.sleep(1)  # the workers finish importing
            print("gateway CPUs: " + ", ".join(f"{n} {cpu_list(g.proc.pid)}" for n, g in gateways.items()))
            for gw in gateways.values():
                for scenario in ("json", "stream"):
                    measure(gw, scenario, 32, argparse.Namespace(**{**vars(args), "seconds": args.warm}),
                            workdir / f"warm-{gw.name}-{scenario}.txt")

            for r in range(args.rounds):
                order = configs[r % len(configs):] + configs[:r % len(configs)]
                for figure, scenario, conns in FIGURES:
                    for name in order:
                        cell, cpu_us = measure(gateways[name], scenario, conns, args,
                                               workdir / f"wrk-r{r}-{name}-{figure.replace('@', '-c')}.txt",
                                               splits[name][figure])
                        value = (cell.p50_ms, cell.p99_ms) if conns == 1 else (cell.rps, cpu_us)
                        results[name][figure].append(value)
                line = []
                for figure, _, conns in FIGURES:
                    cells = " ".join(
                        f"{n} {v[0]:.3f}/{v[1]:.3f}ms" if conns == 1 else f"{n} {v[0]:.0f}/{v[1]:.1f}us"
                        for n in configs for v in [results[n][figure][-1]])
                    line.append(f"{figure}: {cells}")
                print(f"round {r + 1} ({' -> '.join(order)}): " + "  ".join(line), flush=True)

            checks = []
            for name in backends:
                gw = gateways[name]
                m = wait_drained(gw)
                rows = count_rows(name, workdir, pg_db)
                counted = int(m.get("tollway_requests_total", 0))
                dropped = int(m.get("tollway_ledger_dropped_total", 0))
                ok = rows == counted and dropped == 0 and rows >= gw.sent
                checks.append(ok)
                print(f"ledger check ({name}): rows {rows}, requests counted by the gateway {counted}, "
                      f"completed by wrk {gw.sent}, tollway_ledger_dropped_total {dropped}, "
                      f"tollway_ledger_write_errors_total {int(m.get('tollway_ledger_write_errors_total', 0))}"
                      f" -> {'ok' if ok else 'RECORDS MISSING'}")
    finally:
        unpin(pinned)
        if "postgres" in backends:
            subprocess.run(["psql", PG_ADMIN, "-qc", f"DROP DATABASE IF EXISTS {pg_db}"], check=False)

    print(f"\n{args.rounds} rounds x {args.seconds:g} s per cell; ratio = ledger on / off within a round: "
          "median [min..max] over rounds")
    print(f"{'store':8} {'json@32 req/s':>22} {'CPU us/req':>22} {'stream@32 req/s':>22} {'CPU us/req':>22}"
          f" {'json@1 p50':>22} {'json@1 p99':>22}")
    for name in backends:
        cols = []
        for figure in ("json@32", "stream@32", "json@1"):
            for i in (0, 1):
                ratios = [on[i] / off[i] for on, off in zip(results[name][figure], results["off"][figure], strict=True)]
                cols.append(spread(ratios, "{:.3f}"))
        print(f"{name:8} " + " ".join(f"{c:>22}" for c in cols))
    print("absolute medians [min..max]:")
    for name in configs:
        res = results[name]
        print(f"  {name:8} json@32 {spread([v[0] for v in res['json@32']], '{:.0f}')} req/s "
              f"{spread([v[1] for v in res['json@32']], '{:.1f}')} us/req; "
              f"stream@32 {spread([v[0] for v in res['stream@32']], '{:.0f}')} req/s "
              f"{spread([v[1] for v in res['stream@32']], '{:.1f}')} us/req; "
              f"json@1 p50 {spread([v[0] for v in res['json@1']], '{:.3f}')} ms "
              f"p99 {spread([v[1] for v in res['json@1']], '{:.3f}')} ms")
    print("gateway CPU us per request by thread (medians over rounds): the event loop, the ledger's "
          "threads (SQLite), the rest (granian's)")
    for name in configs:
        print(f"  {name:8} " + "; ".join(
            f"{figure} " + " ".join(f"{kind} {statistics.median(splits[name][figure][kind]):.1f}"
                                    for kind in ("loop", "ledger", "other"))
            for figure in ("json@32", "stream@32")))
    for name in backends:
        for figure in ("json@32", "stream@32"):
            ratio = statistics.median(on[0] / off[0] for on, off in zip(results[name][figure], results["off"][figure]))
            verdict = "PASS" if 1 - ratio < TARGET else "MISS"
            print(f"target ({name}): {figure} throughput drop < {TARGET:.0%}: {1 - ratio:+.1%} -> {verdict}")
        p50 = [(on[0] - off[0]) * 1000 for on, off in zip(results[name]["json@1"], results["off"]["json@1"])]
        noise = [(b[0] - a[0]) * 1000 for a, b in zip(results["off"]["json@1"], results["off"]["json@1"][1:])]
        print(f"c=1 ({name}): p50 on - off per round {' '.join(f'{d:+.0f}' for d in p50)} us (median {statistics.median(p50):+.0f}); "
              f"off's own round-to-round p50 change {' '.join(f'{d:+.0f}' for d in noise)} us")
    return 0 if all(checks) else 1


if __name__ == "__main__":
    sys.exit(main())
