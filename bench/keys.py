#!/usr/bin/env python3
"""Run-time API keys at scale: one key in the table against 100,000, side by side, in one run.

The mock upstream (nginx, bench/run's) runs on the load CPU with wrk; two `tollway serve` run
on the gateway CPU, started at once and measured in turn. Their configs are identical (the one
`tollway_proc.write_config` makes: in-memory request limit, metrics, access log off) except for
what is in their `store:` database: its `keys:` section is removed and the bench key
(`tollway_proc.BENCH_KEY`, sent by chat.lua as `Authorization: Bearer ...`) is a run-time API key
in the SQLite `store:` of each, with the config key's limit. One database holds only it; the
other holds it and --keys - 1 more keys of the same shape (a name, a digest, the same limit).
The ledger is off (`ledger: {enabled: false}`) so the key table is the only difference. Each
process loads the table at start into one dict; a request's lookup is one dict lookup plus
`last_used[key_id] = ts`.

Each round runs, for both gateways in an order that alternates round by round: c=32 JSON and
c=32 stream throughput, and c=1 JSON latency (p50, p99), each for --seconds. Printed: every
round's numbers and, per figure, the median over rounds of the ratio big / one taken within a
round, with its range.

Then:
- memory per loaded key: the settled RSS of each gateway's worker (granian's child process)
  after its warm-up, big minus one, over the key difference (and a third gateway with
  --mid-keys, measured the same way and stopped before the rounds, to see if it is linear);
- the price of a change at --keys (the O(N) rebuild): `POST /admin/keys` on the big gateway,
  its answer time, and the time from its answer to the first request with the new key that
  is accepted (the rebuild runs on the worker's loop right after the answer); the same on the
  one-key gateway as the floor (HTTP round trips). --settle seconds pass between changes: a
  change made on a process also comes back from the store on the poll its `wake()` starts, and
  `Directory.apply` counts a record of the version it holds as changed, so that process
  rebuilds twice; a POST sent during the second rebuild would wait for it;
- what traffic sees of a change: one client sends requests back to back (keep-alive) for 6 s,
  another makes a key 1 s in; printed, the requests slower than 50 ms (the loop is blocked for
  the whole rebuild, so every request in flight waits for it);
- in this process, pinned to the gateway CPU: a `Gateway` loaded from the big database, and
  the median of --rebuilds timings of what a change costs: the directory's copy of its tables
  (`Directory.apply`, on the admin request), `Runtime(...)`, `build_limiter`, `Books`, and the
  whole `Gateway.reload`; plus a full `gc.collect()` with the table loaded and without.

Target (issue 13): the request path does not slow down with the number of keys (ratios 1.00
within the noise of the run); memory per key and the rebuild are reported, not judged.

    python bench/keys.py [--rounds 3] [--seconds 4] [--keys 100000] [--mid-keys 10000]
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from http.client import HTTPConnection
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from loadgen import Cell, ensure_tools, run_wrk  # noqa: E402
from services import ServiceSet, cpu_list, free_ports  # noqa: E402
from tollway_proc import BENCH_KEY, REPO, serve_argv, write_config  # noqa: E402
from upstream_conf import MODEL, write_confs  # noqa: E402

FIGURES = (("json@32", "json", 32), ("stream@32", "stream", 32), ("json@1", "json", 1))
ADMIN_SECRET = "sk-bench-admin-credential-0000000000"
BENCH_LIMIT = {"requests": 1000000000, "per": "1m"}  # the config key's limit (write_config)


# -- the databases ------------------------------------------------------------------------------

def fill_store(path: Path, count: int) -> float:
    """A SQLite store holding the bench key and `count` - 1 more of the same shape; seconds taken."""
    from tollway.core.config import Limit
    from tollway.core.config import Store as StoreConfig
    from tollway.core.security.keys import hash_key
    from tollway.core.tenancy.records import ApiKey, Change
    from tollway.gateway.store import build_key_store

    now = time.time()
    limit = [Limit(**BENCH_LIMIT)]
    keys = [ApiKey("key_" + "b" * 24, "bench", hash_key(BENCH_KEY), now, limits=limit)]
    keys += [ApiKey(f"key_{i:024x}", f"filler-{i:06d}", hash_key(f"sk-tw-filler-{i:06d}-" + "x" * 32), now,
                    limits=limit) for i in range(1, count)]

    async def save() -> None:
        store = build_key_store(StoreConfig(backend="sqlite", path=str(path)), None)
        await store.open()
        try:
            await store.save(Change(keys=keys))
        finally:
            await store.aclose()

    t = time.perf_counter()
    asyncio.run(save())
    return time.perf_counter() - t


def config_text(base: str, db: Path) -> str:
    """write_config's text without its `keys:` section, with an admin, the store and no ledger."""
    from tollway.core.security.keys import hash_key

    head, rest = base.split("keys:\n", 1)
    tail = rest[rest.index("server:\n"):]
    return (head + tail + f'admin: {{key_hash: "{hash_key(ADMIN_SECRET)}"}}\n'
            + f"store: {{backend: sqlite, path: '{db}'}}\nledger: {{enabled: false}}\n")


# -- a running gateway --------------------------------------------------------------------------

class Gateway:
    def __init__(self, name: str, keys: int, proc, port: int, started_s: float) -> None:  # noqa: ANN001
        self.name, self.keys, self.proc, self.port, self.started_s = name, keys, proc, port, started_s
        self.url = f"http://127.0.0.1:{port}"

    def worker_rss_mb(self) -> float:
        """VmRSS of granian's worker processes (children of the taskset'd server)."""
        total = 0
        for pid in _children(self.proc.pid):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        return total / 1024


def _children(pid: int) -> list[int]:
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except FileNotFoundError:
        return []
    return [int(k) for k in kids]


def settled_rss(gw: Gateway, samples: int = 5) -> float:
    values = []
    for _ in range(samples):
        time.sleep(0.4)
        values.append(gw.worker_rss_mb())
    return statistics.median(values)


def measure(gw: Gateway, scenario: str, conns: int, seconds: float, cpu: str, log: Path) -> Cell:
    stream = scenario == "stream"
    cell = run_wrk(gw.url + "/v1/chat/completions", conns, seconds, cpu, stream=stream,
                   model=MODEL + ("-sse" if stream else ""), key=BENCH_KEY, log=log)
    if cell.errors:
        raise RuntimeError(f"{gw.name} {scenario} c={conns}: {cell.errors} errors (see {log})")
    return cell


def http(url: str, body: dict, token: str) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"authorization": f"Bearer {token}", "content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


def change_cost(gw: Gateway, n: int, settle: float) -> list[tuple[float, float, int]]:
    """n times: (ms the POST /admin/keys took, ms from its answer to the new key's first 200,
    requests refused before it)."""
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        status, made = http(gw.url + "/admin/keys", {"name": f"change-{i}-{os.getpid()}"}, ADMIN_SECRET)
        t1 = time.perf_counter()
        if status != 201:
            raise RuntimeError(f"{gw.name}: POST /admin/keys gave {status}: {made}")
        refused = 0
        while True:
            status, answer = http(gw.url + "/v1/chat/completions", CHAT, made["key"])
            if status == 200:
                break
            if status != 401 or time.perf_counter() - t1 > 30:
                raise RuntimeError(f"{gw.name}: the new key got {status}: {answer}")
            refused += 1
        out.append(((t1 - t0) * 1000, (time.perf_counter() - t1) * 1000, refused))
        time.sleep(settle)  # every rebuild a change causes is over before the next is timed
    return out


def stalls(gw: Gateway, seconds: float = 6, at: float = 1, slow_ms: float = 50) -> tuple[int, list[float]]:
    """One client sends requests back to back with the bench key (keep-alive) for `seconds`;
    `at` seconds in, another makes a key. Returns the requests sent and the durations (ms) of
    those slower than `slow_ms`: what traffic on the worker sees of a change."""
    body = json.dumps(CHAT).encode()
    headers = {"authorization": f"Bearer {BENCH_KEY}", "content-type": "application/json"}
    slow: list[float] = []
    sent = 0

    def client() -> None:
        nonlocal sent
        conn = HTTPConnection("127.0.0.1", gw.port, timeout=30)
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            t = time.perf_counter()
            conn.request("POST", "/v1/chat/completions", body, headers)
            answer = conn.getresponse()
            answer.read()
            if answer.status != 200:
                raise RuntimeError(f"{gw.name}: {answer.status} during the stall test")
            ms = (time.perf_counter() - t) * 1000
            sent += 1
            if ms > slow_ms:
                slow.append(ms)
        conn.close()

    thread = threading.Thread(target=client)
    thread.start()
    time.sleep(at)
    status, made = http(gw.url + "/admin/keys", {"name": f"stall-{time.time_ns()}"}, ADMIN_SECRET)
    if status != 201:
        raise RuntimeError(f"{gw.name}: POST /admin/keys gave {status}: {made}")
    thread.join()
    return sent, slow


# -- in process ---------------------------------------------------------------------------------

def rebuild_costs(config_path: Path, reps: int) -> dict[str, float]:
    """Median ms of each step of a key change with the table of `config_path`'s store loaded."""
    from tollway.core.config import load
    from tollway.core.tenancy.records import ApiKey, Snapshot
    from tollway.gateway.app import Gateway as App
    from tollway.gateway.limits.limiter import build_limiter
    from tollway.gateway.runtime import Runtime
    from tollway.gateway.store.books import Books

    config = load(str(config_path))
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    gc.collect()
    t = time.perf_counter()
    app = App(config, str(config_path))
    assert app.directory is not None
    loop.run_until_complete(app.directory.open())
    app.start()
    loaded = (time.perf_counter() - t) * 1000
    directory, file_config = app.directory, app.runtime.file_config
    directory.on_change = lambda change: None  # timed apart: the rebuild it would schedule is reload below

    def median_ms(fn: Callable[[], object]) -> float:
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return statistics.median(times) * 1000

    extra = iter(range(10**6))

    def apply_one() -> None:
        i = next(extra)
        key = ApiKey(f"key_{'e' * 12}{i:012x}", f"extra-{i}", f"sha256:{i:064x}", time.time(),
                     version=directory.version + 1 + i)
        directory.apply(Snapshot(directory.version, keys=[key]), contiguous=False)

    async def reload() -> float:
        t = time.perf_counter()
        app.reload(file_config)
        return time.perf_counter() - t

    def whole() -> None:
        loop.run_until_complete(reload())

    costs = {
        "load at start (store read, first runtime and limiter)": loaded,
        "Directory.apply (one key: copies the tables)": median_ms(apply_one),
        "Runtime(config, ..., api=tables)": median_ms(lambda: Runtime(file_config, app.upstream, app.runtime,
                                                                      app._api())),
        "build_limiter": median_ms(lambda: build_limiter(app.runtime.config, app.metrics, app.limiter)),
        "Books (budgets)": median_ms(lambda: Books(app.runtime.config, str(config_path), app.ledger_counters,
                                                   reload_of=app.books)),
        "Gateway.reload (all of a change)": median_ms(whole),
    }
    costs["gc.collect() with the table loaded"] = median_ms(gc.collect)
    costs["gc-tracked objects (millions)"] = len(gc.get_objects()) / 1e6
    loop.run_until_complete(asyncio.sleep(0.1))  # reload's background closes
    return costs


def spread(values: list[float], fmt: str) -> str:
    return f"{fmt.format(statistics.median(values))} [{fmt.format(min(values))}..{fmt.format(max(values))}]"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=4, help="seconds per cell")
    p.add_argument("--warm", type=float, default=1, help="warm-up seconds per gateway and scenario")
    p.add_argument("--keys", type=int, default=100_000, help="keys in the big gateway's table")
    p.add_argument("--mid-keys", type=int, default=10_000, help="a third gateway for memory only (0: none)")
    p.add_argument("--changes", type=int, default=5, help="POST /admin/keys timed per gateway")
    p.add_argument("--settle", type=float, default=4, help="seconds after each timed change")
    p.add_argument("--rebuilds", type=int, default=5, help="in-process repetitions per step")
    p.add_argument("--load-cpu", default="0", help="CPU for the mock upstream and wrk")
    p.add_argument("--gw-cpu", default="1", help="CPU for the gateways")
    args = p.parse_args()

    ensure_tools("nginx", "wrk")
    workdir = Path(tempfile.mkdtemp(prefix="tollway-bench-keys-"))
    print(f"logs, configs and databases: {workdir}", file=sys.stderr)
    print(f"tollway command: {serve_argv(Path('x'), 0)[0]}; gateways on CPU {args.gw_cpu}, "
          f"upstream and wrk on CPU {args.load_cpu}")

    sizes = {"one": 1, "big": args.keys}
    if args.mid_keys:
        sizes["mid"] = args.mid_keys
    json_port, sse_port, hop_json, hop_sse = free_ports(4)
    mock_conf, _ = write_confs(workdir, json_port, sse_port, hop_json, hop_sse)
    nginx = ["nginx", "-p", str(workdir), "-e", str(workdir / "nginx-startup.log"), "-g", "daemon off;"]
    base = write_config(workdir, {MODEL: json_port, MODEL + "-sse": sse_port}).read_text()
    configs: dict[str, Path] = {}
    for name, count in sizes.items():
        db = workdir / f"keys-{name}.db"
        took = fill_store(db, count)
        configs[name] = workdir / f"tollway-{name}.yaml"
        configs[name].write_text(config_text(base, db))
        print(f"store {name}: {count} API keys written in {took:.1f} s ({db.stat().st_size / 1e6:.1f} MB)")

    names = ["one", "big"]
    results: dict[str, dict[str, list[tuple[float, float]]]] = {n: {f: [] for f, _, _ in FIGURES} for n in names}
    with ServiceSet(workdir) as services:
        services.start("mock", args.load_cpu, nginx + ["-c", str(mock_conf)], json_port)
        gateways: dict[str, Gateway] = {}
        for (name, count), port in zip(sizes.items(), free_ports(len(sizes)), strict=True):
            t = time.perf_counter()
            proc = services.start(f"tollway-{name}", args.gw_cpu, serve_argv(configs[name], port), port, cwd=REPO)
            gateways[name] = Gateway(name, count, proc, port, time.perf_counter() - t)
        time.sleep(1)
        print("gateway CPUs: " + ", ".join(f"{n} {cpu_list(g.proc.pid)}" for n, g in gateways.items()))
        print("start to listening: " + ", ".join(f"{n} ({g.keys} keys) {g.started_s:.2f} s"
                                                  for n, g in gateways.items()))
        rss: dict[str, float] = {}
        for gw in gateways.values():
            for scenario in ("json", "stream"):
                measure(gw, scenario, 32, args.warm, args.load_cpu, workdir / f"warm-{gw.name}-{scenario}.txt")
            rss[gw.name] = settled_rss(gw)
        if "mid" in gateways:
            services.stop(gateways.pop("mid").proc)

        for r in range(args.rounds):
            order = names if r % 2 == 0 else names[::-1]
            for figure, scenario, conns in FIGURES:
                for name in order:
                    cell = measure(gateways[name], scenario, conns, args.seconds, args.load_cpu,
                                   workdir / f"wrk-r{r}-{name}-{figure.replace('@', '-c')}.txt")
                    results[name][figure].append((cell.p50_ms, cell.p99_ms) if conns == 1 else (cell.rps, 0.0))
            line = []
            for figure, _, conns in FIGURES:
                cells = " ".join(f"{n} {v[0]:.3f}/{v[1]:.3f}ms" if conns == 1 else f"{n} {v[0]:.0f}"
                                 for n in names for v in [results[n][figure][-1]])
                line.append(f"{figure}: {cells}")
            print(f"round {r + 1} ({' -> '.join(order)}): " + "  ".join(line), flush=True)

        rss_after = {n: gw.worker_rss_mb() for n, gw in gateways.items()}
        changes = {n: change_cost(gateways[n], args.changes, args.settle) for n in names}
        stalled = {n: stalls(gateways[n]) for n in names}

    print(f"\n{args.rounds} rounds x {args.seconds:g} s per cell; ratio = {args.keys} keys / 1 key within a round: "
          "median [min..max] over rounds")
    for figure, _, conns in FIGURES:
        parts = ("p50", "p99") if conns == 1 else ("req/s",)
        for i, what in enumerate(parts):
            ratios = [b[i] / o[i] for b, o in zip(results["big"][figure], results["one"][figure], strict=True)]
            print(f"  {figure} {what:6} ratio {spread(ratios, '{:.3f}')}   "
                  f"one {spread([v[i] for v in results['one'][figure]], '{:.3f}' if conns == 1 else '{:.0f}')}   "
                  f"big {spread([v[i] for v in results['big'][figure]], '{:.3f}' if conns == 1 else '{:.0f}')}")
    noise = []
    for figure in ("json@32", "stream@32"):
        for n in names:
            vals = [v[0] for v in results[n][figure]]
            noise.append(f"{figure} {n} {(max(vals) - min(vals)) / statistics.median(vals):.1%}")
    print("noise, each gateway's own spread over rounds ((max - min) / median): " + ", ".join(noise))

    print("\nworker RSS after warm-up (settled, median of 5): "
          + ", ".join(f"{n} ({sizes[n]} keys) {v:.1f} MB" for n, v in rss.items())
          + "; after the rounds: " + ", ".join(f"{n} {v:.1f} MB" for n, v in rss_after.items()))
    for n in ("mid", "big"):
        if n in rss:
            per = (rss[n] - rss["one"]) * 1024 * 1024 / (sizes[n] - 1)
            print(f"memory per loaded key ({sizes[n]} vs 1): {per:.0f} bytes")

    print(f"\na change (POST /admin/keys), {args.changes} times per gateway: POST answer ms, "
          "ms from the answer to the new key's first 200, 401s before it")
    for n in names:
        rows = changes[n]
        print(f"  {n} ({sizes[n] if n == 'one' else args.keys} keys): POST {spread([c[0] for c in rows], '{:.1f}')} ms, "
              f"until accepted {spread([c[1] for c in rows], '{:.1f}')} ms, refused {[c[2] for c in rows]}")

    print("one client sending back to back for 6 s (keep-alive, bench key), a key made 1 s in: "
          "requests slower than 50 ms")
    for n in names:
        sent, slow = stalled[n]
        print(f"  {n}: {sent} requests, slow: {', '.join(f'{ms:.0f} ms' for ms in slow) or 'none'}")

    os.sched_setaffinity(0, {int(args.gw_cpu)})
    for n in ("one", "big"):
        costs = rebuild_costs(configs[n], args.rebuilds)
        print(f"\nin process, {sizes[n]} keys, pinned to CPU {args.gw_cpu}, median of {args.rebuilds} (ms):")
        for what, ms in costs.items():
            print(f"  {what:58} {ms:9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
