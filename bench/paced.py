#!/usr/bin/env python3
"""The paced-stream scenario: an upstream that sends 64 content chunks 20 ms apart, the way a
model server streams tokens, and a client that holds N such streams open at once.

    python bench/paced.py                          # direct, then Tollway at each level
    python bench/paced.py --levels 250,500,1000 --seconds 4

Per level it reports the time to first token (request sent -> first event) and each stream's
worst lateness: how far any event arrived behind its schedule (event k due 20*k ms after event 0).
A level passes if no event in any stream was more than 200 ms late. The upstream and the client
share the load CPU and Tollway has the gateway CPU; the direct run at the highest level shows
whether the load side itself keeps the schedule (if it does not, the Tollway figures at that
level say nothing about Tollway).

Sub-commands used internally: `upstream --port P` runs the paced upstream.
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httptools
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))

from services import ServiceSet, free_ports  # noqa: E402
from tollway_proc import BENCH_KEY, REPO, serve_argv, tollway_env, write_config  # noqa: E402
from upstream_conf import sse_events  # noqa: E402

CHUNKS = 64
INTERVAL = 0.020
MAX_LATE = 0.200
MODEL = "gpt-4o-mini-paced"


# -- the paced upstream ------------------------------------------------------------------------


class PacedUpstream(asyncio.Protocol):
    """Answers every POST with the SSE stream: event 0 at once, then one content event every
    INTERVAL; the finish, usage and [DONE] events go with the last one. Keep-alive."""

    EVENTS = [e.encode() for e in sse_events([f"tok{i}" for i in range(CHUNKS)])]

    def __init__(self) -> None:
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._transport.close()

    def on_message_complete(self) -> None:
        self._transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                              b"Transfer-Encoding: chunked\r\n\r\n" + _chunk(self.EVENTS[0]))
        loop = asyncio.get_running_loop()
        start = loop.time()
        for k in range(1, CHUNKS + 1):  # absolute schedule: a late tick never shifts the rest
            loop.call_at(start + k * INTERVAL, self._send, k)

    def _send(self, k: int) -> None:
        if self._transport.is_closing():
            return
        if k < CHUNKS:
            self._transport.write(_chunk(self.EVENTS[k]))
        else:
            self._transport.write(_chunk(b"".join(self.EVENTS[k:])) + b"0\r\n\r\n")


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def serve_upstream(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(PacedUpstream, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


# -- the client --------------------------------------------------------------------------------


@dataclass
class Stats:
    ttft: list[float] = field(default_factory=list)
    late: list[float] = field(default_factory=list)  # per stream: its worst event lateness
    errors: int = 0


class StreamClient(asyncio.Protocol):
    """One keep-alive connection issuing stream requests back to back, timing every event."""

    def __init__(self, request: bytes, stats: Stats, until: float) -> None:
        self._request = request
        self._stats = stats
        self._until = until
        self._parser = httptools.HttpResponseParser(self)
        self._loop = asyncio.get_running_loop()
        self.closed = self._loop.create_future()
        self._transport: asyncio.Transport | None = None
        self._tail = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._send()

    def _send(self) -> None:
        self._sent = time.perf_counter()  # uvloop's loop.time() only has millisecond steps
        self._times: list[float] = []
        self._status = 0
        self._transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        self._now = time.perf_counter()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._stats.errors += 1
            self._transport.close()

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        # An event split between reads is counted when its "data: " prefix arrives.
        text = self._tail + body
        self._times.extend([self._now] * text.count(b"data: "))
        self._tail = body[-5:]

    def on_message_complete(self) -> None:
        self._tail = b""
        times = self._times
        if self._status != 200 or len(times) < CHUNKS + 1:
            self._stats.errors += 1
        else:
            self._stats.ttft.append(times[0] - self._sent)
            self._stats.late.append(max(times[k] - times[0] - k * INTERVAL for k in range(CHUNKS + 1)))
        if time.perf_counter() < self._until and self._parser.should_keep_alive():
            self._send()
        else:
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


async def run_level(url_port: int, path: str, streams: int, seconds: float, key: str | None,
                    model: str) -> Stats:
    """Hold `streams` connections streaming back to back for about `seconds`."""
    body = (b'{"model":"%s","stream":true,"stream_options":{"include_usage":true},'
            b'"messages":[{"role":"user","content":"count"}]}' % model.encode())
    auth = b"Authorization: Bearer %s\r\n" % key.encode() if key else b""
    request = (b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n%s"
               b"Content-Length: %d\r\n\r\n%s" % (path.encode(), auth, len(body), body))
    loop = asyncio.get_running_loop()
    stats = Stats()
    until = time.perf_counter() + seconds
    clients = []
    for i in range(streams):  # spread the starts over one stream period, like real arrivals
        await asyncio.sleep(CHUNKS * INTERVAL / streams)
        try:
            _, client = await loop.create_connection(lambda: StreamClient(request, stats, until),
                                                     "127.0.0.1", url_port)
            clients.append(client)
        except OSError:
            stats.errors += 1
    await asyncio.wait_for(asyncio.gather(*(c.closed for c in clients)), seconds + 30)
    return stats


def summarize(label: str, streams: int, stats: Stats) -> str:
    if not stats.ttft:
        return f"{label:8} {streams:6} {'-':>8} {'-':>9} {'-':>9} {'-':>9} {'-':>9} {stats.errors:>6}  FAIL"
    ttft = sorted(stats.ttft)
    late = sorted(stats.late)
    p99 = lambda xs: xs[min(len(xs) - 1, int(0.99 * len(xs)))]  # noqa: E731
    ok = late[-1] <= MAX_LATE and stats.errors == 0
    return (f"{label:8} {streams:6} {len(late):8} {1000 * statistics.median(ttft):9.2f} "
            f"{1000 * p99(ttft):9.2f} {1000 * p99(late):9.1f} {1000 * late[-1]:9.1f} "
            f"{stats.errors:>6}  {'ok' if ok else 'LATE'}")


def measure(port: int, path: str, streams: int, seconds: float, key: str | None, model: str) -> Stats:
    return uvloop.run(run_level(port, path, streams, seconds, key, model))


# -- orchestration -----------------------------------------------------------------------------


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", nargs="?", default="bench", choices=["bench", "upstream", "client"])
    p.add_argument("--port", type=int, help="upstream: port to serve on; client: port to hit")
    p.add_argument("--levels", default="10,250,500,750,1000", help="concurrent streams per level")
    p.add_argument("--seconds", type=float, default=4.0, help="seconds per level")
    p.add_argument("--load-cpu", default="0")
    p.add_argument("--gw-cpu", default="1")
    args = p.parse_args()
    if args.command == "upstream":
        uvloop.run(serve_upstream(args.port))
        return 0
    levels = [int(n) for n in args.levels.split(",")]
    workdir = Path(tempfile.mkdtemp(prefix="tollway-paced-"))
    up_port, gw_port = free_ports(2)
    print(f"paced streams: {CHUNKS} chunks {INTERVAL * 1000:.0f} ms apart; logs in {workdir}", file=sys.stderr)
    header = (f"{'path':8} {'streams':>6} {'done':>8} {'ttft p50':>9} {'ttft p99':>9} "
              f"{'late p99':>9} {'late max':>9} {'errors':>6}  (ms)")
    rows = []
    with ServiceSet(workdir) as services:
        services.start("paced-upstream", args.load_cpu,
                       [sys.executable, __file__, "upstream", "--port", str(up_port)], up_port)
        client = lambda port, n, key, model: _client_subprocess(args, port, n, key, model)  # noqa: E731
        for n in (levels[0], levels[-1]):
            rows.append(client(up_port, n, None, "gpt-4o-mini").replace("client", "direct", 1))
            print(rows[-1], file=sys.stderr)
        config = write_config(workdir, {MODEL: up_port})
        services.start("tollway", args.gw_cpu, serve_argv(config, gw_port), gw_port, env=tollway_env(), cwd=REPO)
        for n in levels:
            rows.append(client(gw_port, n, BENCH_KEY, MODEL).replace("client", "tollway", 1))
            print(rows[-1], file=sys.stderr)
    print(header)
    print("\n".join(rows))
    return 0


def _client_subprocess(args: argparse.Namespace, port: int, streams: int, key: str | None, model: str) -> str:
    """Run one level in a fresh client process pinned to the load CPU; returns its table row."""
    import subprocess

    argv = ["taskset", "-c", args.load_cpu, sys.executable, __file__, "client", "--port", str(port),
            "--levels", str(streams), "--seconds", str(args.seconds)]
    env = dict(tollway_env(), PACED_KEY=key or "", PACED_MODEL=model)
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=args.seconds + 120)
    if done.returncode != 0:
        return f"client {streams:6} failed: {done.stderr.strip()[-300:]}"
    return done.stdout.strip()


def client_main() -> int:
    """`paced.py client --port P --levels N`: one level, one table row on stdout."""
    import os

    p = argparse.ArgumentParser()
    p.add_argument("command")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--levels", type=int, required=True)
    p.add_argument("--seconds", type=float, required=True)
    args = p.parse_args()
    stats = measure(args.port, "/v1/chat/completions", args.levels, args.seconds,
                    os.environ.get("PACED_KEY") or None, os.environ["PACED_MODEL"])
    print(summarize("client", args.levels, stats))
    return 0


if __name__ == "__main__":
    sys.exit(client_main() if sys.argv[1:2] == ["client"] else main())
