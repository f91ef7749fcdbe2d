#!/usr/bin/env python3
"""The paced-stream scenario: an upstream that sends 64 content chunks 20 ms apart, the way a
model server streams tokens, and a client that holds N such streams open at once.

    python bench/paced.py                          # direct, then Tollway at each level
    python bench/paced.py --levels 250,500,1000 --seconds 4

Added TTFT comes from a probe run first on each path: one stream at a time asking for one
token (max_tokens=1, which the paced upstream honours), so there are hundreds of samples.

Per level it reports the time to first token (request sent -> first event) and each stream's
worst lateness: how far any event arrived behind its schedule (event k due 20*k ms after event 0).
A level passes if no event in any stream was more than 200 ms late. The upstream and the client
share the load CPU and Tollway has the gateway CPU; the direct run at the highest level shows
whether the load side itself keeps the schedule (if it does not, the Tollway figures at that
level say nothing about Tollway). Tollway runs the headroom issue's config (key check, request
and token limits, the SQLite ledger, the admin console: `tollway_proc.write_config(platform=True)`),
or with `--bare` a request limit only.

`--guardrail`: instead of the levels, what a masking output guardrail (issue 15: at most 5 ms
added to time to first token) costs a stream. Three gateways on the gateway CPU: without
guardrails, with `{type: pii, action: mask, apply_to: [output]}` (every detector), and the same
without the `email` detector; one stream at a time asking for 2 tokens, rounds alternating the
paths. Per path it reports the time to the first event (the role chunk, as OpenAI sends it) and
to the first event carrying answer text, median over rounds of each round's p50.

    python bench/paced.py --guardrail --rounds 5 --seconds 3

Sub-commands used internally: `upstream --port P` runs the paced upstream, `client <json>`
runs one level.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httptools
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))

from services import ServiceSet, free_ports  # noqa: E402
from tollway_proc import BENCH_KEY, REPO, serve_argv, write_config  # noqa: E402
from upstream_conf import hop_conf, sse_events  # noqa: E402

CHUNKS = 64
INTERVAL = 0.020
MAX_LATE = 0.200
MODEL = "gpt-4o-mini-paced"


# -- the paced upstream ------------------------------------------------------------------------


class PacedUpstream(asyncio.Protocol):
    """Answers every POST with the SSE stream: event 0 at once, then one content event every
    INTERVAL, as many as the request's max_tokens (at most CHUNKS); the finish, usage and
    [DONE] events go with the last one. Keep-alive."""

    EVENTS = [e.encode() for e in sse_events([f"tok{i}" for i in range(CHUNKS)])]

    def __init__(self) -> None:
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._body = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._transport.close()

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        self._transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                              b"Transfer-Encoding: chunked\r\n\r\n" + _chunk(self.EVENTS[0]))
        chunks = min(CHUNKS, json.loads(self._body).get("max_tokens") or CHUNKS)
        self._body = b""
        loop = asyncio.get_running_loop()
        start = loop.time()
        for k in range(1, chunks + 1):  # absolute schedule: a late tick never shifts the rest
            loop.call_at(start + k * INTERVAL, self._send, k, chunks)

    def _send(self, k: int, chunks: int) -> None:
        if self._transport.is_closing():
            return
        if k < chunks:
            self._transport.write(_chunk(self.EVENTS[k]))
        else:
            last = self.EVENTS[k] + b"".join(self.EVENTS[CHUNKS + 1:])
            self._transport.write(_chunk(last) + b"0\r\n\r\n")


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def serve_upstream(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(PacedUpstream, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


# -- the client --------------------------------------------------------------------------------


_TEXT = re.compile(rb'"content":"[^"]')  # an event with answer text (the upstream's compact JSON)


@dataclass
class Stats:
    ttft: list[float] = field(default_factory=list)
    first_text: list[float] = field(default_factory=list)  # request sent -> first event with answer text
    late: list[float] = field(default_factory=list)  # per stream: its worst event lateness
    errors: int = 0


class StreamClient(asyncio.Protocol):
    """One keep-alive connection issuing stream requests back to back, timing every event."""

    def __init__(self, request: bytes, chunks: int, stats: Stats, until: float) -> None:
        self._request = request
        self._chunks = chunks
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
        self._text_at = 0.0
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
        if not self._text_at and _TEXT.search(body):  # (a split event's text counts when it is whole)
            self._text_at = self._now
        self._tail = body[-5:]

    def on_message_complete(self) -> None:
        self._tail = b""
        times = self._times
        if self._status != 200 or len(times) < self._chunks + 1:
            self._stats.errors += 1
        else:
            self._stats.ttft.append(times[0] - self._sent)
            if self._text_at:
                self._stats.first_text.append(self._text_at - self._sent)
            self._stats.late.append(max(times[k] - times[0] - k * INTERVAL for k in range(self._chunks + 1)))
        if time.perf_counter() < self._until and self._parser.should_keep_alive():
            self._send()
        else:
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


async def run_level(url_port: int, path: str, streams: int, seconds: float, key: str | None,
                    model: str, chunks: int = CHUNKS) -> Stats:
    """Hold `streams` connections streaming back to back for about `seconds`."""
    body = (b'{"model":"%s","stream":true,"stream_options":{"include_usage":true},"max_tokens":%d,'
            b'"messages":[{"role":"user","content":"count"}]}' % (model.encode(), chunks))
    auth = b"Authorization: Bearer %s\r\n" % key.encode() if key else b""
    request = (b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n%s"
               b"Content-Length: %d\r\n\r\n%s" % (path.encode(), auth, len(body), body))
    loop = asyncio.get_running_loop()
    stats = Stats()
    until = time.perf_counter() + seconds
    clients = []
    for _ in range(streams):  # spread the starts over one stream period, like real arrivals
        await asyncio.sleep(chunks * INTERVAL / streams)
        try:
            _, client = await loop.create_connection(lambda: StreamClient(request, chunks, stats, until),
                                                     "127.0.0.1", url_port)
            clients.append(client)
        except OSError:
            stats.errors += 1
    await asyncio.wait_for(asyncio.gather(*(c.closed for c in clients)), seconds + 30)
    return stats


def summarize(label: str, streams: int, stats: Stats) -> str:
    """One table row (times in ms)."""
    if not stats.ttft:
        return f"{label:12} {streams:6} {'-':>8} {'-':>9} {'-':>9} {'-':>9} {'-':>9} {stats.errors:>6}  FAIL"
    ttft = sorted(stats.ttft)
    late = sorted(stats.late)
    p99 = lambda xs: xs[min(len(xs) - 1, int(0.99 * len(xs)))]  # noqa: E731
    ok = late[-1] <= MAX_LATE and stats.errors == 0
    return (f"{label:12} {streams:6} {len(late):8} {1000 * statistics.median(ttft):9.3f} "
            f"{1000 * p99(ttft):9.3f} {1000 * p99(late):9.1f} {1000 * late[-1]:9.1f} "
            f"{stats.errors:>6}  {'ok' if ok else 'LATE'}")


# -- orchestration -----------------------------------------------------------------------------

HEADER = (f"{'path':12} {'streams':>6} {'done':>8} {'ttft p50':>9} {'ttft p99':>9} "
          f"{'late p99':>9} {'late max':>9} {'errors':>6}  (ms)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", nargs="?", default="bench", choices=["bench", "upstream"])
    p.add_argument("--port", type=int, help="upstream: port to serve on")
    p.add_argument("--levels", default="500,1000,1500", help="concurrent streams per level (the target: 1,500)")
    p.add_argument("--seconds", type=float, default=4.0, help="seconds per level")
    p.add_argument("--load-cpu", default="0")
    p.add_argument("--gw-cpu", default="1")
    p.add_argument("--bare", action="store_true",
                   help="Tollway with a request limit only (no token limit, ledger or admin): the pre-platform config")
    p.add_argument("--guardrail", action="store_true", help="the masking output guardrail's added TTFT instead")
    p.add_argument("--rounds", type=int, default=5, help="--guardrail: rounds over the paths")
    args = p.parse_args()
    if args.command == "upstream":
        uvloop.run(serve_upstream(args.port))
        return 0
    if args.guardrail:
        return guardrail_ttft(args)
    levels = [int(n) for n in args.levels.split(",")]
    workdir = Path(tempfile.mkdtemp(prefix="tollway-paced-"))
    up_port, gw_port, hop_port = free_ports(3)
    print(f"paced streams: {CHUNKS} chunks {INTERVAL * 1000:.0f} ms apart; logs in {workdir}", file=sys.stderr)
    rows: list[str] = []
    ttft: dict[str, float] = {}

    def level(path: str, port: int, streams: int, chunks: int = CHUNKS) -> None:
        key, model = (BENCH_KEY, MODEL) if path == "tollway" else (None, "gpt-4o-mini")
        label = f"{path}-ttft" if chunks == 1 else path
        result = _client_subprocess(args, port, streams, chunks, key, model, label)
        rows.append(result["row"])
        if chunks == 1 and "ttft_p50" in result:
            ttft[path] = result["ttft_p50"]
        print(rows[-1], file=sys.stderr)

    with ServiceSet(workdir) as services:
        services.start("paced-upstream", args.load_cpu,
                       [sys.executable, __file__, "upstream", "--port", str(up_port)], up_port)
        level("direct", up_port, 1, chunks=1)  # TTFT probe: one stream at a time, 1 token each
        level("direct", up_port, levels[-1])  # the load side must keep the schedule at the top
        (workdir / "tmp").mkdir()
        (workdir / "hop.conf").write_text(hop_conf(workdir, [(hop_port, up_port)]))
        hop = services.start("hop", args.gw_cpu, ["nginx", "-p", str(workdir), "-e", str(workdir / "ng.log"),
                             "-g", "daemon off;", "-c", str(workdir / "hop.conf")], hop_port)
        level("hop", hop_port, 1, chunks=1)  # the same probe through a C proxy, for scale
        services.stop(hop)
        config = write_config(workdir, {MODEL: up_port}, platform=not args.bare)
        services.start("tollway", args.gw_cpu, serve_argv(config, gw_port), gw_port, cwd=REPO)
        level("tollway", gw_port, 1, chunks=1)
        for n in levels:
            level("tollway", gw_port, n)
    print(HEADER)
    print("\n".join(rows))
    for path in ("hop", "tollway"):
        if path in ttft and "direct" in ttft:
            print(f"added TTFT via {path} (p50, one stream at a time): {ttft[path] - ttft['direct']:.3f} ms")
    return 0


GUARDRAILS = {
    "tollway": "",
    "tollway-pii": "guardrails: [{name: pii, type: pii, action: mask, apply_to: [output]}]\n",
    "tollway-pii-no-email": "guardrails: [{name: pii, type: pii, action: mask, apply_to: [output], detectors: "
                            "[phone, credit_card, iban, us_ssn, ip_address, secret]}]\n",
}
PROBE_TOKENS = 2  # the first word is followed by a second: a scanner may hold it until then


def guardrail_ttft(args: argparse.Namespace) -> int:
    """Time to first event and to first text, one stream at a time, with and without a
    masking output guardrail (rounds alternate the paths; medians of the rounds' p50s)."""
    workdir = Path(tempfile.mkdtemp(prefix="tollway-paced-guard-"))
    up_port, *gw_ports = free_ports(1 + len(GUARDRAILS))
    print(f"guardrail TTFT: {PROBE_TOKENS} tokens {INTERVAL * 1000:.0f} ms apart; logs in {workdir}", file=sys.stderr)
    firsts: dict[str, list[float]] = {"direct": []}
    texts: dict[str, list[float]] = {"direct": []}
    with ServiceSet(workdir) as services:
        services.start("paced-upstream", args.load_cpu,
                       [sys.executable, __file__, "upstream", "--port", str(up_port)], up_port)
        ports = {"direct": up_port}
        for (path, extra), port in zip(GUARDRAILS.items(), gw_ports):
            sub = workdir / path
            sub.mkdir()
            config = write_config(sub, {MODEL: up_port})
            config.write_text(config.read_text() + extra)
            services.start(path, args.gw_cpu, serve_argv(config, port), port, cwd=REPO)
            ports[path] = port
            firsts[path], texts[path] = [], []
        for r in range(args.rounds):
            order = list(ports) if r % 2 == 0 else list(reversed(ports))
            for path in order:
                key, model = (BENCH_KEY, MODEL) if path != "direct" else (None, "gpt-4o-mini")
                result = _client_subprocess(args, ports[path], 1, PROBE_TOKENS, key, model, path)
                if "ttft_p50" not in result or "text_p50" not in result:
                    print(result["row"], file=sys.stderr)
                    return 1
                firsts[path].append(result["ttft_p50"])
                texts[path].append(result["text_p50"])
                print(f"round {r + 1} {path:22} first event {result['ttft_p50']:7.3f} ms, "
                      f"first text {result['text_p50']:7.3f} ms", file=sys.stderr)
    med = {p: (statistics.median(firsts[p]), statistics.median(texts[p])) for p in ports}
    print(f"{'path':22} {'first event':>12} {'first text':>11}  (ms, median of {args.rounds} rounds' p50)")
    for path, (first, text) in med.items():
        print(f"{path:22} {first:12.3f} {text:11.3f}")
    for path in GUARDRAILS:
        if path != "tollway":
            print(f"added by {path} over tollway: first event {med[path][0] - med['tollway'][0]:+.3f} ms, "
                  f"first text {med[path][1] - med['tollway'][1]:+.3f} ms")
    return 0


def _client_subprocess(args: argparse.Namespace, port: int, streams: int, chunks: int,
                       key: str | None, model: str, label: str) -> dict:
    """Run one level in a fresh client process pinned to the load CPU; returns its summary."""
    argv = ["taskset", "-c", args.load_cpu, sys.executable, __file__, "client", json.dumps({
        "port": port, "streams": streams, "chunks": chunks, "seconds": args.seconds,
        "key": key, "model": model, "label": label})]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=args.seconds + 120)
    if done.returncode != 0:
        return {"row": f"{label:12} {streams:6} client failed: {done.stderr.strip()[-300:]}"}
    return json.loads(done.stdout)


def client_main(spec: dict) -> int:
    """`paced.py client '<json spec>'`: one level; prints its summary as JSON."""
    stats = uvloop.run(run_level(spec["port"], "/v1/chat/completions", spec["streams"], spec["seconds"],
                                 spec["key"], spec["model"], spec["chunks"]))
    summary = {"row": summarize(spec["label"], spec["streams"], stats)}
    if stats.ttft:
        summary["ttft_p50"] = 1000 * statistics.median(stats.ttft)
    if stats.first_text:
        summary["text_p50"] = 1000 * statistics.median(stats.first_text)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(client_main(json.loads(sys.argv[2])) if sys.argv[1:2] == ["client"] else main())
