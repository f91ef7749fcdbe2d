#!/usr/bin/env python3
"""The console's cost to the request path: one gateway measured with the console closed and
open (a real headless Chromium logged in on *Overview*, polling as it does), in one run.

The mock upstream (nginx, bench/run's) and wrk run on the load CPU, as does the browser (it
stands for an operator's laptop); one `tollway serve` runs on the gateway CPU with
`tollway_proc.write_config`'s config plus an admin credential and a SQLite store (so the
console's pages have a ledger to read). Rounds alternate the two conditions on the same
gateway: *closed* (the browser's page is blank) and *open* (logged in on Overview, which asks
`/admin/stats` every 10 s; `--poll` makes the page also open Spend, Keys and Requests in
turn each poll, a heavier operator). Per round: c=32 JSON req/s and c=1 JSON p50/p99, each for
--seconds. Printed: every round's numbers and the median ratio open / closed with its range.

Target (the console issue): `bench/run` with the console open and polling is within noise of
without.

    python bench/console.py [--rounds 6] [--seconds 5] [--poll]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from loadgen import ensure_tools, run_wrk  # noqa: E402
from services import ServiceSet, free_ports  # noqa: E402
from tollway_proc import BENCH_KEY, REPO, serve_argv, write_config  # noqa: E402
from upstream_conf import MODEL, write_confs  # noqa: E402

ADMIN = "sk-bench-admin-credential-0000000000"
CHROMIUM = "/usr/bin/chromium"
PAGES = ("Spend", "Keys", "Requests", "Overview")


def config_text(base: str, workdir: Path) -> str:
    from tollway.core.security.keys import hash_key

    return base + f'admin: {{key_hash: "{hash_key(ADMIN)}"}}\nstore: {{backend: sqlite, path: "{workdir / "t.db"}"}}\n'


class Console:
    """A headless Chromium on the load CPU with the console in one page."""

    def __init__(self, url: str, cpu: str) -> None:
        from playwright.sync_api import sync_playwright

        os.sched_setaffinity(0, {int(cpu)})  # the browser (a child) inherits the load CPU
        self._pw = sync_playwright().start()
        self.browser = self._pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        self.page = self.browser.new_page()
        self.url = url
        os.sched_setaffinity(0, range(os.cpu_count() or 1))

    def open(self) -> None:
        page = self.page
        page.goto(self.url + "/ui")
        page.get_by_label("Admin credential").fill(ADMIN)
        page.get_by_role("button", name="Log in").click()
        page.get_by_role("heading", name="Overview", level=1).wait_for()

    def browse(self) -> None:
        """One turn of a busier operator: every page once."""
        for name in PAGES:
            self.page.get_by_role("navigation").get_by_role("link", name=name, exact=True).click()
            self.page.get_by_role("heading", name=name, level=1).wait_for()

    def close(self) -> None:
        self.page.goto("about:blank")

    def stop(self) -> None:
        self.browser.close()
        self._pw.stop()


def spread(values: list[float], fmt: str) -> str:
    return f"{fmt.format(statistics.median(values))} [{fmt.format(min(values))}..{fmt.format(max(values))}]"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--seconds", type=float, default=5, help="seconds per cell")
    p.add_argument("--poll", action="store_true", help="also browse every page during each open cell")
    p.add_argument("--load-cpu", default="0")
    p.add_argument("--gw-cpu", default="1")
    args = p.parse_args()
    ensure_tools("nginx", "wrk")
    if not os.path.exists(CHROMIUM):
        print(f"{CHROMIUM} is not installed (Debian's chromium)")
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="tollway-bench-console-"))
    print(f"logs and configs: {workdir}", file=sys.stderr)
    json_port, sse_port, hop_json, hop_sse, gw_port = free_ports(5)
    mock_conf, _ = write_confs(workdir, json_port, sse_port, hop_json, hop_sse)
    nginx = ["nginx", "-p", str(workdir), "-e", str(workdir / "nginx-startup.log"), "-g", "daemon off;"]
    config = workdir / "tollway.yaml"
    config.write_text(config_text(write_config(workdir, {MODEL: json_port}).read_text(), workdir))
    results: dict[str, dict[str, list[float]]] = {c: {"rps": [], "p50": [], "p99": []} for c in ("closed", "open")}
    with ServiceSet(workdir) as services:
        services.start("mock", args.load_cpu, nginx + ["-c", str(mock_conf)], json_port)
        services.start("tollway", args.gw_cpu, serve_argv(config, gw_port), gw_port, cwd=REPO)
        url = f"http://127.0.0.1:{gw_port}"
        time.sleep(1)
        console = Console(url, args.load_cpu)
        try:
            run_wrk(url + "/v1/chat/completions", 32, 2, args.load_cpu, stream=False, model=MODEL, key=BENCH_KEY,
                    log=workdir / "warm.txt")
            for r in range(args.rounds):
                order = ("closed", "open") if r % 2 == 0 else ("open", "closed")
                for condition in order:
                    if condition == "open":
                        console.open()
                        if args.poll:
                            console.browse()
                    else:
                        console.close()
                    c32 = run_wrk(url + "/v1/chat/completions", 32, args.seconds, args.load_cpu, stream=False, model=MODEL,
                                  key=BENCH_KEY, log=workdir / f"r{r}-{condition}-c32.txt")
                    c1 = run_wrk(url + "/v1/chat/completions", 1, args.seconds, args.load_cpu, stream=False, model=MODEL,
                                 key=BENCH_KEY, log=workdir / f"r{r}-{condition}-c1.txt")
                    if c32.errors or c1.errors:
                        raise RuntimeError(f"wrk errors in round {r} ({condition})")
                    results[condition]["rps"].append(c32.rps)
                    results[condition]["p50"].append(c1.p50_ms)
                    results[condition]["p99"].append(c1.p99_ms)
                print(f"round {r + 1} ({' -> '.join(order)}): " + "  ".join(
                    f"{c} {results[c]['rps'][-1]:.0f} req/s, c=1 {results[c]['p50'][-1]:.3f}/{results[c]['p99'][-1]:.3f} ms"
                    for c in ("closed", "open")), flush=True)
        finally:
            console.stop()
    print("\nmedian over rounds [range]:")
    for figure, fmt in (("rps", "{:.0f}"), ("p50", "{:.3f}"), ("p99", "{:.3f}")):
        ratios = [o / c for o, c in zip(results["open"][figure], results["closed"][figure], strict=True) if c]
        print(f"  {figure:4} closed {spread(results['closed'][figure], fmt)}  open {spread(results['open'][figure], fmt)}"
              f"  ratio open/closed {spread(ratios, '{:.3f}')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
