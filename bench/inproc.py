"""CPU per request of the gateway's own Python, without granian: where a request's time goes.

The Gateway app is called in-process by 32 concurrent tasks with a minimal RSGI scope and
protocol (body in, `response_bytes` out), on uvloop, pinned to the gateway CPU; the mock
upstream (nginx, as in bench/run) runs on the load CPU. The figures, each the best of five
rounds of user+system CPU per request:

  client     tollway.gateway.upstream.client.UpstreamClient alone: request + read against the mock
  stubbed    the whole app with the upstream answered in-process (no I/O): key check, body,
             parse, route, limit, adapter, relay, metrics
  no-limit   the same without the in-memory limit in the config
  unique     `stubbed` with every request's prompt different (what `cache-miss` is compared with)
  full       the whole app against the mock upstream
  stream     the whole app relaying bench/run's 24-event SSE stream from the mock upstream
             (a request limit only: with rate_limits.enforce_streams on, no per-chunk hook)
  stream-unique `stream` with every request's prompt different (what `cache-stream-miss` is compared with)
  stream-off the same with rate_limits.enforce_streams: false (what `stream` adds: the check
             that installs no hook)
  stream-tok the same with an output_tokens limit far above the load: the hook that stops a
             stream at its limit bounds every chunk (tollway.gateway.limits.stream_stop; far
             from the limit it decodes and counts nothing: a byte scan, one step taken ahead)
  tok-off    `stream-tok` with rate_limits.enforce_streams: false (the same limits, no hook)
  chunk      that hook alone, per one-token chunk within its allowance, and `chunk-ext` with a
             reservation of 1 token, so it extends on the memory store every 128 tokens
             (us per chunk, not per request)
  2k         `stubbed` with a 2 KB prompt holding a few PII values
  2k-pii     the same with a `pii` input guardrail (action log: every detector runs, nothing blocks)
  ledger     `stubbed` with the usage ledger on (SQLite in a temp file): the record built and
             queued per request, and the writer's batches (its thread is in this process, so
             its CPU is counted)

  cache-miss        `stubbed` with a memory response cache every request misses (each prompt differs):
                    the key, the lookup, the answer captured, stored (32 MB: LRU eviction runs too)
  cache-hit         the same cache, one prompt: every request (after the first) a hit
  cache-stream-miss `stream` with the cache, each prompt differs: the stream captured and assembled
  cache-stream-hit  the same, one prompt: every request (after the first) a hit served as a stream

    python bench/inproc.py                # ~1 minute
    python bench/inproc.py --requests 10000
    python bench/inproc.py --only stubbed,ledger --profile DIR   # + a cProfile of each figure

These are costs of our code only; bench/run measures what a client sees through granian.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from services import ServiceSet, free_ports  # noqa: E402
from tollway_proc import BENCH_KEY, UPSTREAM_MODEL, write_config  # noqa: E402
from upstream_conf import write_confs  # noqa: E402

BODY = (b'{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are a terse assistant."},'
        b'{"role":"user","content":"In one sentence: why does tail latency matter behind a gateway?"}],'
        b'"max_tokens":64}')
STREAM_MODEL = "gpt-4o-mini-sse"  # routed to the mock's SSE port, as bench/run's stream scenario
STREAM_BODY = (BODY[:-1].replace(b'"gpt-4o-mini"', f'"{STREAM_MODEL}"'.encode())
               + b',"stream":true,"stream_options":{"include_usage":true}}')
CONCURRENCY = 32
# A 2 KB prompt with a few PII values: the guardrail figures (issue 15's budget: a pii guardrail
# costs at most 50 us of CPU on a 2 KB prompt), measured with and without one.
_PROSE = ("Please summarise the incident report below for the on-call channel. The customer wrote in on "
          "Tuesday after the 1.4.2 release: checkout failed twice, then succeeded on the third try. ")
PROMPT_2K = (_PROSE * 9)[:1800] + " Contact: jane.doe@example.com, +44 20 7946 0958, card 4111 1111 1111 1111."
BODY_2K = ('{"model":"gpt-4o-mini","messages":[{"role":"user","content":"' + PROMPT_2K + '"}],"max_tokens":64}').encode()


class Scope:
    """The part of granian's RSGI scope the gateway reads."""

    proto, method, path = "http", "POST", "/v1/chat/completions"
    client = "127.0.0.1:40000"

    def __init__(self) -> None:
        self.headers = {"authorization": f"Bearer {BENCH_KEY}", "content-type": "application/json",
                        "content-length": str(len(BODY))}


class Proto:
    """The part of granian's RSGI protocol an answer uses: a body, or a stream of chunks."""

    __slots__ = ("status", "body")

    def __init__(self, body: bytes = BODY) -> None:
        self.body = body

    async def __call__(self) -> bytes:
        return self.body

    def response_bytes(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status

    def response_stream(self, status: int, headers: list[tuple[str, str]]) -> StreamSink:
        self.status = status
        return StreamSink()


class StreamSink:
    """granian's stream transport, minus the socket: takes each chunk and drops it."""

    __slots__ = ()

    async def send_bytes(self, data: bytes) -> None:
        pass


class CannedResponse:
    """An upstream answer that is already complete: the app's cost without any I/O."""

    status = 200
    headers = [("content-type", "application/json")]
    body = (b'{"id":"chatcmpl-1","object":"chat.completion","created":1767225600,"model":"gpt-4o-mini",'
            b'"choices":[{"index":0,"message":{"role":"assistant","content":"Because the slowest call '
            b'sets the pace."},"finish_reason":"stop"}],"usage":{"prompt_tokens":27,"completion_tokens":9,'
            b'"total_tokens":36}}')

    def header(self, name: str) -> str | None:
        return dict(self.headers).get(name)

    async def read(self, limit: int | None = None) -> bytes:
        return self.body

    encoded = False  # no content-encoding (see tollway.gateway.upstream.client.UpstreamResponse)
    waited = 0.0  # answered at once

    def close(self) -> None:
        pass


PROFILE: Path | None = None  # --profile: where each figure's cProfile stats go


async def cpu_per_request(once: Callable[[], Awaitable[None]], requests: int, name: str = "",
                          settle: Callable[[], Awaitable[None]] | None = None) -> float:
    """Best of five rounds: microseconds of user+system CPU per call of `once`, with
    CONCURRENCY calls in flight. With --profile, a sixth round runs under cProfile (its
    stats written to <dir>/<name>.pstats; the thread pool's threads are not profiled).
    `settle`, if given, is awaited at the end of each round, inside the measured window: work
    the round left behind (the ledger's queued records) is charged to it."""
    async def worker(count: int) -> None:
        for _ in range(count):
            await once()

    async def round_of(count: int) -> None:
        await asyncio.gather(*(worker(count // CONCURRENCY) for _ in range(CONCURRENCY)))
        if settle is not None:
            await settle()

    await round_of(max(requests // 10, CONCURRENCY))  # warm the pools and caches
    best = float("inf")
    for _ in range(5):
        before = resource.getrusage(resource.RUSAGE_SELF)
        await round_of(requests)
        after = resource.getrusage(resource.RUSAGE_SELF)
        spent = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
        best = min(best, spent * 1e6 / requests)
    if PROFILE is not None and name:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
        await round_of(requests)
        profiler.disable()
        profiler.dump_stats(PROFILE / f"{name}.pstats")
    return best


def gateway_cost(loop: asyncio.AbstractEventLoop, config: Path, requests: int, stub_upstream: bool,
                 body: bytes = BODY, name: str = "", unique: bool = False) -> float:
    """The app's CPU per request, started and stopped as granian does it (__rsgi_init__ and
    __rsgi_del__ on a loop that is not running: they run the ledger's start and its last flush).
    `unique`: every request's prompt differs (a response cache misses on each)."""
    from tollway.core import config as config_mod
    from tollway.gateway.app import Gateway

    gateway = Gateway(config_mod.load(str(config)), str(config))
    gateway.__rsgi_init__(loop)
    if stub_upstream:
        async def answer(*_: Any) -> CannedResponse:
            return CannedResponse()
        for provider in gateway.runtime.providers.values():
            provider.transport = type("Canned", (), {"request": staticmethod(answer)})()
    scope = Scope()
    scope.headers["content-length"] = str(len(body))

    counter = iter(range(1 << 62))
    # a unique request gets a number at the start of its last message's text
    head, sep, tail = body.rpartition(b'"content":"')
    head += sep

    async def once() -> None:
        proto = Proto(head + str(next(counter)).encode() + b" " + tail if unique else body)
        if unique:
            scope.headers["content-length"] = str(len(proto.body))
        await gateway.__rsgi__(scope, proto)
        assert proto.status == 200, proto.status

    ledger = gateway.books.ledger

    async def drained() -> None:  # the writer catches up; waiting idle costs no CPU
        while ledger is not None and ledger.queued:
            await asyncio.sleep(0.005)

    try:
        return loop.run_until_complete(cpu_per_request(once, requests, name, drained))
    finally:
        gateway.__rsgi_del__(loop)
        if ledger is not None:  # a figure measured on a ledger that dropped records would lie
            written, dropped = ledger.counters.written._value.get(), ledger.counters.dropped._value.get()
            if dropped or not written:
                raise RuntimeError(f"the ledger wrote {written:.0f} records and dropped {dropped:.0f}")


async def client_cost(url: str, requests: int) -> float:
    from tollway.gateway.upstream.client import Timeouts, UpstreamClient

    client, timeouts = UpstreamClient(), Timeouts()
    headers = [("content-type", "application/json"), ("accept", "application/json"),
               ("authorization", "Bearer sk-upstream-secret")]

    async def once() -> None:
        resp = await client.request("POST", url, headers, BODY, timeouts)
        await resp.read()

    try:
        return await cpu_per_request(once, requests, "client")
    finally:
        await client.aclose()


CHUNK = (b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini",'
         b'"system_fingerprint":"fp","choices":[{"index":0,"delta":{"content":" fox"},"logprobs":null,'
         b'"finish_reason":null}]}\n\n')


def chunk_cost(loop: asyncio.AbstractEventLoop, config: Path, max_tokens: int, chunks: int) -> float:
    """Microseconds of CPU per one-token chunk through the stream-stop hook (memory store), best of five."""
    from tollway.core import config as config_mod
    from tollway.core.request import parse_head
    from tollway.gateway.exchange import Exchange
    from tollway.gateway.limits.limiter import Lease, Limiter
    from tollway.gateway.limits.memory import MemoryBuckets
    from tollway.gateway.limits.stream_stop import stream_stop
    from tollway.gateway.telemetry.metrics import Metrics

    cfg = config_mod.load(str(config))
    limiter = Limiter(cfg, MemoryBuckets(), Metrics())
    body = STREAM_BODY.replace(b'"max_tokens":64', f'"max_tokens":{max_tokens}'.encode())
    head = parse_head(body, 64)

    async def run() -> float:
        best = float("inf")
        for _ in range(6):  # the first round loads the encoding (the pool) and is not counted
            lease = limiter.admit(cfg.keys[0], STREAM_MODEL, "chat", head, body)
            assert isinstance(lease, Lease)
            ex = Exchange("req_bench", "chat")
            hook = stream_stop(ex, "gpt-4o-mini", lease.demand[1], limiter, lease, None, None)
            assert hook is not None
            await hook(ex, CHUNK)
            before = resource.getrusage(resource.RUSAGE_SELF)
            for _ in range(chunks):
                await hook(ex, CHUNK)
            after = resource.getrusage(resource.RUSAGE_SELF)
            limiter.settle(lease, None, None)
            best = min(best, (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1e6 / chunks)
        return best

    return loop.run_until_complete(run())


def measure(loop: asyncio.AbstractEventLoop, json_port: int, sse_port: int, workdir: Path, requests: int,
            only: set[str] | None) -> dict[str, float]:
    limited = write_config(workdir, {UPSTREAM_MODEL: json_port, STREAM_MODEL: sse_port})
    unlimited = workdir / "tollway-nolimit.yaml"
    unlimited.write_text("".join(line for line in limited.read_text().splitlines(keepends=True)
                                 if "limits:" not in line))
    ledger = workdir / "tollway-ledger.yaml"
    ledger.write_text(limited.read_text() + f"store: {{backend: sqlite, path: '{workdir / 'ledger.db'}'}}\n")
    streams_off = workdir / "tollway-streams-off.yaml"
    streams_off.write_text(limited.read_text() + "rate_limits: {enforce_streams: false}\n")
    tokens = workdir / "tollway-tokens.yaml"
    tokens.write_text(limited.read_text().replace("limits: [{requests: 1000000000, per: 1m}]",
                                                  "limits: [{requests: 1000000000, per: 1m}, "
                                                  "{output_tokens: 1000000000000, per: 1m}]"))
    assert tokens.read_text() != limited.read_text()
    tokens_off = workdir / "tollway-tokens-off.yaml"
    tokens_off.write_text(tokens.read_text() + "rate_limits: {enforce_streams: false}\n")
    guarded = workdir / "tollway-pii.yaml"
    guarded.write_text(limited.read_text() + "guardrails: [{name: pii, type: pii, action: log, apply_to: [input]}]\n")
    cached = write_config(workdir, {UPSTREAM_MODEL: json_port, STREAM_MODEL: sse_port},
                          cache="{backend: memory, max_bytes: 33554432}", name="tollway-cache.yaml")
    figures: dict[str, Callable[[], float]] = {
        "client": lambda: loop.run_until_complete(
            client_cost(f"http://127.0.0.1:{json_port}/v1/chat/completions", requests)),
        "stubbed": lambda: gateway_cost(loop, limited, requests, True, name="stubbed"),
        "unique": lambda: gateway_cost(loop, limited, requests, True, name="unique", unique=True),
        "no-limit": lambda: gateway_cost(loop, unlimited, requests, True, name="no-limit"),
        "full": lambda: gateway_cost(loop, limited, requests, False, name="full"),
        "stream": lambda: gateway_cost(loop, limited, requests, False, STREAM_BODY, name="stream"),
        "stream-unique": lambda: gateway_cost(loop, limited, requests, False, STREAM_BODY, name="stream-unique",
                                              unique=True),
        "stream-off": lambda: gateway_cost(loop, streams_off, requests, False, STREAM_BODY, name="stream-off"),
        "stream-tok": lambda: gateway_cost(loop, tokens, requests, False, STREAM_BODY, name="stream-tok"),
        "tok-off": lambda: gateway_cost(loop, tokens_off, requests, False, STREAM_BODY, name="tok-off"),
        "chunk": lambda: chunk_cost(loop, tokens, 10_000_000, requests * 5),
        "chunk-ext": lambda: chunk_cost(loop, tokens, 1, requests * 5),
        "2k": lambda: gateway_cost(loop, limited, requests, True, BODY_2K, name="2k"),
        "2k-pii": lambda: gateway_cost(loop, guarded, requests, True, BODY_2K, name="2k-pii"),
        "ledger": lambda: gateway_cost(loop, ledger, requests, True, name="ledger"),
        "stream-ledger": lambda: gateway_cost(loop, ledger, requests, False, STREAM_BODY, name="stream-ledger"),
        "cache-miss": lambda: gateway_cost(loop, cached, requests, True, name="cache-miss", unique=True),
        "cache-hit": lambda: gateway_cost(loop, cached, requests, True, name="cache-hit"),
        "cache-stream-miss": lambda: gateway_cost(loop, cached, requests, False, STREAM_BODY, name="cache-stream-miss",
                                                  unique=True),
        "cache-stream-hit": lambda: gateway_cost(loop, cached, requests, False, STREAM_BODY, name="cache-stream-hit"),
    }
    return {name: run() for name, run in figures.items() if only is None or name in only}


def main() -> int:
    global PROFILE
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=20000, help="requests per round (5 rounds per figure)")
    p.add_argument("--only", help="comma list of figures (default: all)")
    p.add_argument("--profile", type=Path, metavar="DIR",
                   help="also write each figure's cProfile stats (one more round) to DIR/<figure>.pstats")
    p.add_argument("--load-cpu", default="0")
    p.add_argument("--gw-cpu", default="1")
    args = p.parse_args()
    import uvloop

    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
        PROFILE = args.profile
    workdir = Path(tempfile.mkdtemp(prefix="tollway-inproc-"))
    json_port, sse_port, hop_json, hop_sse = free_ports(4)
    mock_conf, _ = write_confs(workdir, json_port, sse_port, hop_json, hop_sse)
    only = set(args.only.split(",")) if args.only else None
    with ServiceSet(workdir) as services:
        services.start("mock", args.load_cpu, ["nginx", "-p", str(workdir), "-e", str(workdir / "ng.log"),
                       "-g", "daemon off;", "-c", str(mock_conf)], json_port)
        os.sched_setaffinity(0, {int(args.gw_cpu)})
        loop = uvloop.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            figures = measure(loop, json_port, sse_port, workdir, args.requests, only)
        finally:
            loop.close()
    print("us of CPU per request (user+system, best of 5, 32 in flight; chunk, chunk-ext: per chunk):")
    for name, value in figures.items():
        print(f"  {name:17} {value:6.2f}" if name.startswith("chunk") else f"  {name:17} {value:6.1f}")
    if "stubbed" in figures and "no-limit" in figures:
        print(f"  limit     {figures['stubbed'] - figures['no-limit']:6.1f}  (stubbed - no-limit)")
    if "stubbed" in figures and "ledger" in figures:
        print(f"  +ledger   {figures['ledger'] - figures['stubbed']:6.1f}  (ledger - stubbed)")
    if "stream" in figures and "stream-off" in figures:
        print(f"  +check    {figures['stream'] - figures['stream-off']:6.1f}  (stream - stream-off: no hook installed)")
    if "stream-tok" in figures and "tok-off" in figures:
        print(f"  +hook     {figures['stream-tok'] - figures['tok-off']:6.1f}  (stream-tok - tok-off: 24 events, 20 deltas)")
    if "unique" in figures and "cache-miss" in figures:
        print(f"  +miss     {figures['cache-miss'] - figures['unique']:6.1f}  (cache-miss - unique)")
    if "stream-unique" in figures and "cache-stream-miss" in figures:
        print(f"  +miss     {figures['cache-stream-miss'] - figures['stream-unique']:6.1f}  "
              "(cache-stream-miss - stream-unique)")
    if "stream" in figures and "stream-ledger" in figures:
        print(f"  +ledger   {figures['stream-ledger'] - figures['stream']:6.1f}  (stream-ledger - stream)")
    if args.profile is not None:
        print(f"cProfile stats: {args.profile}/<figure>.pstats")
    return 0


if __name__ == "__main__":
    sys.exit(main())
