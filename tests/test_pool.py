"""Endpoint pools against real fake vLLM replicas: scraping, picking, DNS discovery."""
import asyncio
from collections import Counter

import pytest

from tests.fakes.vllm_replica import FakeVLLMReplica
from tollway.core.config import OutlierDetection, loads
from tollway.gateway.upstream.client import UpstreamClient
from tollway.gateway.upstream.pool import EndpointPool

POLICY = OutlierDetection(consecutive_failures=2, cool_down=5.0)


@pytest.fixture
def replicas():
    made = [FakeVLLMReplica("r0"), FakeVLLMReplica("r1", legacy_cache_metric=True)]
    yield made
    for r in made:
        if r.server.loop.is_running():
            r.kill()


def pool_of(urls, pick="least_queue", extra=""):
    listed = ", ".join(f'"{u}"' for u in urls)
    config = loads(f"""
providers:
  - name: llama
    schema: openai
    endpoints: [{listed}]
    pick: {pick}
    scrape: {{interval: 0.2, timeout: 0.5}}
{extra}
""")
    client = UpstreamClient()
    return EndpointPool(config.providers[0], client, POLICY), client


async def test_scrape_reads_vllm_metrics_under_both_cache_names(replicas):
    replicas[0].waiting, replicas[0].kv_cache = 4, 0.25
    replicas[1].waiting, replicas[1].kv_cache = 1, 0.5
    pool, client = pool_of([r.url for r in replicas])
    await pool.scrape_once()
    loads_ = {e.name: e.load for e in pool.endpoints()}
    assert (loads_[replicas[0].url].waiting, loads_[replicas[0].url].kv_cache) == (4, 0.25)
    assert (loads_[replicas[1].url].waiting, loads_[replicas[1].url].kv_cache) == (1, 0.5)
    await client.aclose()


async def test_a_replica_reporting_an_endless_queue_breaks_no_pick(replicas):
    # +Inf (or two series summing past a float) made every queue score NaN, and the pick raised:
    # every request to the pool was a 500.
    replicas[0].waiting = float("inf")
    replicas[1].waiting = 3
    pool, client = pool_of([r.url for r in replicas])
    await pool.scrape_once()
    for i in range(4):
        e = pool.acquire(b"{}", set(), 0.0, i / 4)
        assert e.name in (replicas[0].url, replicas[1].url)
        pool.release(e, False, 0.0)
    await client.aclose()


async def test_an_oversized_or_trickled_exposition_fails_its_scrape_in_time(replicas):
    # A /metrics body that never ends must not be buffered whole, and one that trickles under
    # the idle timeout must fail within scrape.timeout, not hold every scrape up for minutes.
    replicas[0].metrics_padding = 5 * 1024 * 1024
    replicas[1].metrics_trickle = 0.3  # under the 0.5 s timeout per wait; ~4 s in all
    pool, client = pool_of([r.url for r in replicas])
    loop = asyncio.get_running_loop()
    start = loop.time()
    await pool.scrape_once()
    assert loop.time() - start < 2.0
    assert [e.scrape_ok for e in pool.endpoints()] == [False, False]
    replicas[0].metrics_padding, replicas[1].metrics_trickle = 0, 0.0
    await pool.scrape_once()
    assert [e.scrape_ok for e in pool.endpoints()] == [True, True]
    await client.aclose()


async def test_the_busy_replica_is_avoided_and_in_flight_spreads_ties(replicas):
    replicas[0].waiting = 30
    pool, client = pool_of([r.url for r in replicas])
    await pool.scrape_once()
    picks = Counter()
    for i in range(20):
        e = pool.acquire(b'{"messages":[{"role":"user","content":"q%d"}]}' % i, set(), 0.0, i / 20)
        picks[e.name] += 1
        pool.release(e, False, 0.0)
    assert picks == {replicas[1].url: 20}
    replicas[0].waiting = 0
    await pool.scrape_once()
    held = [pool.acquire(b"{}", set(), 0.0, 0.0) for _ in range(4)]  # nobody releases: in-flight decides
    assert Counter(e.name for e in held) == {replicas[0].url: 2, replicas[1].url: 2}
    await client.aclose()


async def test_unscraped_endpoints_are_neutral_and_a_dead_one_is_left_out(replicas):
    pool, client = pool_of([r.url for r in replicas] + ["http://127.0.0.1:9/v1"])
    first = pool.acquire(b"{}", set(), 0.0, 0.99)  # before any scrape: all neutral, the draw decides
    pool.release(first, None, 0.0)
    assert first.name == "http://127.0.0.1:9/v1"
    await pool.scrape_once()
    dead = next(e for e in pool.endpoints() if e.name.endswith(":9/v1"))
    assert not dead.scrape_ok
    names = {pool.acquire(b"{}", set(), 0.0, d / 10).name for d in range(10)}
    assert dead.name not in names
    await client.aclose()


async def test_killed_replica_fails_its_scrape_and_exclusion_picks_another(replicas):
    pool, client = pool_of([r.url for r in replicas])
    await pool.scrape_once()
    replicas[0].kill()
    await pool.scrape_once()
    assert [e.scrape_ok for e in pool.endpoints()] == [False, True]
    chosen = pool.acquire(b"{}", {replicas[1].url}, 0.0, 0.0)
    assert chosen.name == replicas[0].url, "excluded endpoints are avoided only while another is left"
    await client.aclose()


async def test_failures_eject_an_endpoint_and_it_comes_back_after_cool_down(replicas):
    pool, client = pool_of([r.url for r in replicas])
    target = pool.endpoints()[0]
    for _ in range(2):
        pool.release(pool.acquire(b"{}", {replicas[1].url}, 10.0, 0.0), True, 10.0)
    assert not target.candidate(10.0, 0).available
    assert {pool.acquire(b"{}", set(), 11.0, d / 5).name for d in range(5)} == {replicas[1].url}
    assert target.candidate(15.0, 0).available
    await client.aclose()


async def test_round_robin_and_least_inflight(replicas):
    pool, client = pool_of([r.url for r in replicas], pick="round_robin")
    order = [pool.acquire(b"{}", set(), 0.0, 0.0).name for _ in range(4)]
    assert order[0] != order[1] and order[:2] == order[2:]
    pool, _ = pool_of([r.url for r in replicas], pick="least_inflight")
    a = pool.acquire(b"{}", set(), 0.0, 0.0)
    assert pool.acquire(b"{}", set(), 0.0, 0.0).name != a.name
    await client.aclose()


async def test_dns_discovery_makes_one_endpoint_per_address(replicas):
    port = replicas[0].port
    config = loads(f"""
providers:
  - name: llama
    schema: openai
    discover: {{dns: localhost, port: {port}, path: /openai/v1}}
""")
    client = UpstreamClient()
    pool = EndpointPool(config.providers[0], client, POLICY)
    assert pool.size == 0
    await pool.discover_once()
    names = [e.name for e in pool.endpoints()]
    assert f"http://127.0.0.1:{port}/openai/v1" in names
    assert all(n.endswith(f":{port}/openai/v1") for n in names)
    await pool.scrape_once()
    up = [e for e in pool.endpoints() if e.scrape_ok]
    assert [e.name for e in up] == [f"http://127.0.0.1:{port}/openai/v1"]  # ::1 is not listened on
    await client.aclose()


async def test_failed_dns_keeps_the_old_endpoints():
    config = loads("""
providers:
  - name: llama
    schema: openai
    discover: {dns: no-such-host.invalid, port: 8000}
""")
    pool = EndpointPool(config.providers[0], None, POLICY)
    pool._set_urls(["http://10.0.0.1:8000/v1"])
    await pool.discover_once()
    assert [e.name for e in pool.endpoints()] == ["http://10.0.0.1:8000/v1"]
