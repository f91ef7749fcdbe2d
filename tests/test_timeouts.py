"""The `total` upstream timeout, the retry walk after a timeout, and x-request-id on every
response: unit tests of the plan and the client, then end to end through a real gateway in
front of the fake OpenAI upstream (its `slow-stream` model sends a piece every 0.3 s for 5 s,
so the idle timeout never fires but a total one does)."""
from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator

import openai
import pytest

from tests.fakes.openai_upstream import REPLY, FakeOpenAI
from tests.harness import TEST_KEY, UPSTREAM_SECRET, GatewayProcess, key_hash
from tests.test_upstream import Server, ok, read_request, run, stall  # noqa: F401 - `run` is a fixture
from tollway.core.config import ConfigError, Retry, loads
from tollway.core.routing.retry import AttemptPlan
from tollway.gateway.upstream.client import Timeouts, UpstreamClient, UpstreamTimeout

# -- the retry walk after a timeout (sans-IO) ----------------------------------------------------

POLICY = Retry(attempts=4, backoff_base=0.1, backoff_max=1.0, max_retry_after=5.0, deadline=10.0)


def test_a_target_that_timed_out_is_not_tried_again():
    plan = AttemptPlan(["a"], POLICY, started=0.0)
    assert plan.next(0.0, 0.5) == ("a", 0.0)
    plan.failed(timed_out=True)
    assert plan.next(1.0, 0.5) is None, "the only target timed out: the walk is over"


def test_after_a_timeout_the_walk_moves_on_and_comes_back_only_to_the_others():
    plan = AttemptPlan(["a", "b"], POLICY, started=0.0)
    assert plan.next(0.0, 0.5) == ("a", 0.0)
    plan.failed(timed_out=True)
    assert plan.next(1.0, 0.5) == ("b", 0.0), "a different fallback is fine, with no wait"
    plan.failed()  # b answered 503: it may be retried after a backoff, a may not
    target, wait = plan.next(1.1, 0.5)
    assert target == "b" and wait == pytest.approx(0.05)
    plan.failed()
    target, wait = plan.next(1.2, 0.5)
    assert target == "b" and wait == pytest.approx(0.1) and plan.attempts == 4  # the second backoff round
    plan.failed()
    assert plan.next(1.3, 0.5) is None, "the attempt budget is spent"


def test_a_timeout_is_never_a_free_same_target_retry():
    plan = AttemptPlan(["pool"], POLICY, started=0.0)
    plan.next(0.0, 0.0)
    plan.failed(same_target=True, timed_out=True)
    assert plan.next(0.0, 0.0) is None


def test_total_timeout_must_be_positive():
    text = "providers: [{name: p, schema: fake, timeouts: {total: 0}}]\nmodels: []\nkeys: []\n"
    with pytest.raises(ConfigError, match=r"timeouts.*total.*> 0"):
        loads(text)
    assert loads(text.replace("total: 0", "total: 2.5")).providers[0].timeouts.total == 2.5


# -- the client: one timer bounds the whole exchange --------------------------------------------


def _steady(pieces: int, every: float, closed: asyncio.Event):
    """A handler sending a chunked body, one piece every `every` seconds; sets `closed` when the
    client hangs up before the end."""
    async def handler(reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        try:
            for _ in range(pieces):
                await asyncio.sleep(every)
                if reader.at_eof() or writer.is_closing():  # hung up: asyncio may swallow writes to
                    break  # a reset socket without raising, which would play out all the pieces first
                writer.write(b"1\r\nx\r\n")
                await writer.drain()
            else:
                writer.write(b"0\r\n\r\n")
                await writer.drain()
                await reader.read()  # keep-alive: wait for the client to go
        except (ConnectionError, RuntimeError):  # (uvloop: a write to a transport the hang-up closed)
            pass
        if reader.at_eof() or writer.is_closing():
            closed.set()
    return handler


def test_total_ends_a_steady_body_and_drops_the_connection(run):
    async def scenario():
        closed = asyncio.Event()
        async with Server(_steady(60, 0.05, closed)) as server:
            client = UpstreamClient()
            start = asyncio.get_running_loop().time()
            resp = await client.request("GET", server.url(), [], b"", Timeouts(idle=1, total=0.5))
            got = b""
            with pytest.raises(UpstreamTimeout) as err:
                async for chunk in resp:
                    got += chunk
            took = asyncio.get_running_loop().time() - start
            assert err.value.phase == "total" and 0.45 <= took < 1.5
            assert 3 <= len(got) < 60, "pieces flowed until the deadline, then stopped"
            await asyncio.wait_for(closed.wait(), 2)  # the upstream saw the connection close
            assert client._take_idle(("http", "127.0.0.1", server.port)) is None, "not pooled"
            await client.aclose()

    run(scenario())


def test_total_bounds_the_wait_for_the_head(run):
    async def scenario():
        async with Server(stall) as server:
            client = UpstreamClient()
            with pytest.raises(UpstreamTimeout) as err:
                await client.request("POST", server.url(), [], b"{}", Timeouts(first_byte=5, total=0.2))
            assert err.value.phase == "total"
            await client.aclose()

    run(scenario())


def test_a_finished_exchange_disarms_its_total_timer(run):
    """The first exchange's timer must not fire during the next one on the same connection."""
    async def slow_answers(reader, writer):
        while True:
            await read_request(reader)
            await asyncio.sleep(0.2)
            writer.write(ok(b"done"))
            await writer.drain()

    async def scenario():
        async with Server(slow_answers) as server:
            client = UpstreamClient()
            timeouts = Timeouts(total=0.35)
            for _ in range(3):  # each ends ~0.2 s in; the first timer would fire at 0.35 s
                async with await client.request("GET", server.url(), [], b"", timeouts) as resp:
                    assert await resp.read() == b"done"
            assert server.connections == 1
            await client.aclose()

    run(scenario())


# -- end to end through a real gateway -----------------------------------------------------------


@pytest.fixture(scope="module")
def gw(openai_upstream: FakeOpenAI) -> Iterator[GatewayProcess]:
    url = openai_upstream.url
    gateway = GatewayProcess(f"""
providers:
  - {{name: up, schema: openai, base_url: "{url}", api_key: {UPSTREAM_SECRET}}}
  - name: steady
    schema: openai
    base_url: "{url}"
    api_key: {UPSTREAM_SECRET}
    timeouts: {{connect: 2, first_byte: 2, idle: 1, total: 1.5}}
  - name: slowhead
    schema: openai
    base_url: "{url}"
    api_key: {UPSTREAM_SECRET}
    timeouts: {{connect: 2, first_byte: 0.5}}
models:
  - {{name: slow-stream, targets: [{{provider: steady}}]}}
  - name: slow-stream-ha
    targets:
      - {{provider: steady, model: slow-stream, priority: 0}}
      - {{provider: up, model: gpt-4o-mini, priority: 1}}
  - {{name: slow-first-byte, targets: [{{provider: slowhead}}]}}
  - name: slow-first-byte-ha
    targets:
      - {{provider: slowhead, model: slow-first-byte, priority: 0}}
      - {{provider: up, model: gpt-4o-mini, priority: 1}}
keys:
  - {{name: app, key_hash: "{key_hash(TEST_KEY)}"}}
routing:
  retry: {{attempts: 3, backoff_base: 0.05, backoff_max: 0.1, deadline: 20}}
""")
    yield gateway
    gateway.stop()


def sdk(gw: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=TEST_KEY, max_retries=0, timeout=20)


def _marked() -> tuple[str, list[dict]]:
    """A prompt no other test sends, to count the upstream requests this test caused."""
    mark = uuid.uuid4().hex
    return mark, [{"role": "user", "content": mark}]


def _sent(upstream: FakeOpenAI, mark: str) -> list[str]:
    """Upstream model names of the requests carrying `mark`."""
    return [r["body"]["model"] for r in list(upstream.requests)
            if any(m.get("content") == mark for m in r["body"].get("messages", []))]


def _wait_for_cut_off(upstream: FakeOpenAI, before: int) -> list[str]:
    deadline = time.monotonic() + 3
    while len(upstream.cut_off) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    return upstream.cut_off[before:]


def test_stream_past_total_ends_with_an_sse_error_and_frees_the_upstream(gw, openai_upstream):
    cut_before = len(openai_upstream.cut_off)
    start = time.monotonic()
    raw = sdk(gw).chat.completions.with_raw_response.create(
        model="slow-stream", stream=True, messages=[{"role": "user", "content": "x"}])
    events = [line for line in raw.http_response.iter_lines() if line.startswith("data: ")]
    took = time.monotonic() - start
    assert raw.http_response.headers["x-request-id"]
    assert 1.4 <= took < 4, f"total is 1.5 s, the upstream would take 5 s; took {took:.2f}s"
    ticks = [json.loads(e[6:]) for e in events[:-1]]
    assert len(ticks) >= 3 and all(t["choices"][0]["delta"]["content"] == "tick " for t in ticks)
    last = json.loads(events[-1][len("data: "):])["error"]
    assert last["code"] == "upstream_timeout" and "(total)" in last["message"]
    assert _wait_for_cut_off(openai_upstream, cut_before) == ["stream"], "the upstream connection was closed"


def test_body_past_total_is_504_and_frees_the_upstream(gw, openai_upstream):
    cut_before = len(openai_upstream.cut_off)
    start = time.monotonic()
    with pytest.raises(openai.APIStatusError) as err:
        sdk(gw).chat.completions.create(model="slow-stream", messages=[{"role": "user", "content": "x"}])
    assert err.value.status_code == 504 and err.value.code == "upstream_timeout"
    assert "(total)" in err.value.message and time.monotonic() - start < 4
    assert _wait_for_cut_off(openai_upstream, cut_before) == ["body"]


def test_body_past_total_falls_back_to_the_next_priority(gw, openai_upstream):
    mark, messages = _marked()
    reply = sdk(gw).chat.completions.create(model="slow-stream-ha", messages=messages)
    assert reply.choices[0].message.content == REPLY
    assert _sent(openai_upstream, mark) == ["slow-stream", "gpt-4o-mini"], "each target once"


def test_first_byte_timeout_is_not_retried_on_the_same_target(gw, openai_upstream):
    mark, messages = _marked()
    with pytest.raises(openai.APIStatusError) as err:
        sdk(gw).chat.completions.create(model="slow-first-byte", messages=messages)
    assert err.value.status_code == 504 and "(first_byte)" in err.value.message
    assert _sent(openai_upstream, mark) == ["slow-first-byte"], "attempts: 3, yet one try: it timed out"


def test_first_byte_timeout_moves_to_a_different_fallback(gw, openai_upstream):
    mark, messages = _marked()
    reply = sdk(gw).chat.completions.create(model="slow-first-byte-ha", messages=messages)
    assert reply.choices[0].message.content == REPLY
    assert _sent(openai_upstream, mark) == ["slow-first-byte", "gpt-4o-mini"]


# -- x-request-id on every response --------------------------------------------------------------


def _get(gw: GatewayProcess, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str]]:
    req = urllib.request.Request(gw.url + path, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}


@pytest.mark.parametrize("path,auth,status", [
    ("/healthz", False, 200), ("/readyz", False, 200), ("/metrics", False, 200),
    ("/v1/models", True, 200), ("/v1/models", False, 401), ("/v1/nothing-here", False, 404),
    ("/v1/chat/completions", False, 405),
])
def test_every_response_carries_x_request_id(gw, path, auth, status):
    headers = {"authorization": f"Bearer {TEST_KEY}"} if auth else {}
    got, resp_headers = _get(gw, path, headers)
    assert got == status
    assert resp_headers.get("x-request-id", "").startswith("req_")
    _, echoed = _get(gw, path, {**headers, "x-request-id": "trace-42.a"})
    assert echoed["x-request-id"] == "trace-42.a", "a sane client id is echoed back"
