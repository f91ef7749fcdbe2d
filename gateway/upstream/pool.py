"""Where a provider's requests go: one fixed base URL, or a pool of self-hosted replicas.

Every provider has an *endpoint source* with one small interface, so the proxy never asks
which kind it has:
- `acquire(body, exclude, now, draw)` -> the `Endpoint` for one attempt (its `provider` is the
  provider config with `base_url` pointing at that endpoint, built once, not per request);
- `release(endpoint, failed, now)` when the attempt is over (`failed`: True / False / None for
  "the client's fault, says nothing about the endpoint");
- `start(loop)` / `close()` for background work, `size` for bounding retries inside the source.

`FixedEndpoint` is the plain `base_url` provider. `EndpointPool` is a tier-two pool: its
endpoints come from the config (`endpoints:`) or from DNS (`discover:`, e.g. a Kubernetes
headless Service, re-resolved every `interval`), each replica's vLLM metrics are scraped every
`scrape.interval` (the first scrape at start; a replica not scraped yet scores neutral), and
the pick is `tollway.core.routing.picker`'s. A failed scrape makes the replica unavailable until a scrape
answers again; failed requests feed its outlier breaker (`tollway.core.routing.health`).
"""
from __future__ import annotations

import asyncio
import logging
import socket
import urllib.parse
from collections.abc import Iterable
from collections.abc import Set as AbstractSet

import msgspec

from tollway.core import errors
from tollway.core.config import OutlierDetection, Provider, Timeouts
from tollway.core.routing.health import MemberHealth
from tollway.core.routing.picker import PICKERS, Candidate, PrefixIndex
from tollway.core.routing.replica_load import ReplicaLoad, parse_replica_load
from tollway.core.security.urls import redact_url
from tollway.gateway.upstream import Transport
from tollway.gateway.upstream.client import UpstreamError

log = logging.getLogger("tollway")
# A vLLM exposition is tens of KB: more is no replica's metrics, and a body that never ends
# must not be buffered whole (a failed scrape).
_MAX_METRICS_BYTES = 4 * 1024 * 1024


class Endpoint:
    """One replica (or the one fixed URL) of a provider, and what the gateway knows of it."""

    def __init__(self, provider: Provider, url: str, scrape_path: str, policy: OutlierDetection) -> None:
        self.url = url  # what requests go to, userinfo included: never shown
        # the label in metrics, logs and /admin/routing: an endpoint URL may carry a password
        # (a replica behind basic auth), which no reader of those may see
        self.name = redact_url(url)
        self.provider = msgspec.structs.replace(provider, base_url=url, endpoints=None, discover=None)
        parts = urllib.parse.urlsplit(url)
        self.metrics_url = f"{parts.scheme}://{parts.netloc}{scrape_path}"
        self.health = MemberHealth(policy)
        self.load: ReplicaLoad | None = None
        self.scrape_ok = True  # until a scrape says otherwise
        self.in_flight = 0

    def candidate(self, now: float, prefix_match: float) -> Candidate:
        available = self.scrape_ok and self.health.available(now)
        return Candidate(self.load, self.in_flight, available, prefix_match)


class FixedEndpoint:
    """A provider with one base_url: every attempt goes there."""

    size = 1

    def __init__(self, provider: Provider, policy: OutlierDetection) -> None:
        self.endpoint = Endpoint(provider, provider.base_url or "", "/metrics", policy)
        self.endpoint.provider = provider  # unchanged: adapters may read every field

    def acquire(self, body: bytes, exclude: AbstractSet[str], now: float, draw: float) -> Endpoint:
        return self.endpoint

    def release(self, endpoint: Endpoint, failed: bool | None, now: float) -> None:
        pass  # a single URL has no alternative: route-level health (tollway.core.routing.health) covers it

    def endpoints(self) -> list[Endpoint]:
        return []

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        pass

    async def close(self) -> None:
        pass


class EndpointPool:
    """The replicas of a self-hosted provider, scraped and picked by load."""

    def __init__(self, provider: Provider, transport: Transport, policy: OutlierDetection) -> None:
        self.provider, self.transport, self.policy = provider, transport, policy
        self.pick = PICKERS[provider.pick or "least_queue"]
        self.prefixes = PrefixIndex()
        self._endpoints: list[Endpoint] = []
        self._turn = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._set_urls(provider.endpoints or [])
        scrape = provider.scrape
        # `total` too: a replica trickling its metrics under the idle timeout must still fail the
        # scrape within scrape.timeout (the docs' promise), not hold it up for the default 600 s
        self._scrape_timeouts = Timeouts(connect=scrape.timeout, first_byte=scrape.timeout, idle=scrape.timeout,
                                         total=scrape.timeout)

    @property
    def size(self) -> int:
        return len(self._endpoints)

    def endpoints(self) -> list[Endpoint]:
        return list(self._endpoints)

    # -- picking ---------------------------------------------------------------------------

    def acquire(self, body: bytes, exclude: AbstractSet[str], now: float, draw: float) -> Endpoint:
        """The endpoint for one attempt, not one of `exclude` unless no other is left.
        Raises GatewayError(502) if the pool has no endpoint at all (DNS found none yet)."""
        pool = [e for e in self._endpoints if e.name not in exclude] or self._endpoints
        if not pool:
            raise errors.upstream_unreachable(self.provider.name)
        blocks = self.prefixes.blocks(body) if self.pick is PICKERS["least_queue"] else []
        shares = self.prefixes.matches(blocks) if blocks else {}
        candidates = [e.candidate(now, shares.get(e.name, 0.0)) for e in pool]
        self._turn += 1
        chosen = pool[self.pick(candidates, draw, self._turn)]
        chosen.in_flight += 1
        chosen.health.begin(now)
        if blocks:
            self.prefixes.record(blocks, chosen.name)
        return chosen

    def release(self, endpoint: Endpoint, failed: bool | None, now: float) -> None:
        endpoint.in_flight -= 1
        if failed is True and endpoint.health.failure(now):
            log.warning("pool %s: endpoint %s ejected for %.0fs after repeated failures",
                        self.provider.name, endpoint.name, endpoint.health.ejected_until - now)
        elif failed is False:
            endpoint.health.success()
        else:
            endpoint.health.abandon()

    # -- background work -------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Begin scraping (and resolving, for `discover`) on `loop`; needs no running loop."""
        if self._tasks:
            return
        self._tasks.append(loop.create_task(self._scrape_forever()))
        if self.provider.discover is not None:
            self._tasks.append(loop.create_task(self._discover_forever()))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def _scrape_forever(self) -> None:
        while True:
            await self.scrape_once()
            await asyncio.sleep(self.provider.scrape.interval)

    async def scrape_once(self) -> None:
        """Read every endpoint's metrics once, concurrently."""
        await asyncio.gather(*(self._scrape(e) for e in self._endpoints))

    async def _scrape(self, endpoint: Endpoint) -> None:
        try:
            resp = await self.transport.request("GET", endpoint.metrics_url, [("accept", "text/plain")], b"",
                                                self._scrape_timeouts)
            try:
                body = await resp.read(_MAX_METRICS_BYTES)
            finally:
                resp.close()
            if resp.status != 200:
                raise ValueError(f"HTTP {resp.status}")
            endpoint.load = parse_replica_load(body.decode("utf-8"))
        except (UpstreamError, ValueError) as exc:
            if endpoint.scrape_ok:
                log.warning("pool %s: scraping %s failed (%s); endpoint marked unavailable",
                            self.provider.name, redact_url(endpoint.metrics_url), exc)
            endpoint.scrape_ok = False
            return
        endpoint.scrape_ok = True

    async def _discover_forever(self) -> None:
        discover = self.provider.discover
        assert discover is not None
        while True:
            await self.discover_once()
            await asyncio.sleep(discover.interval)

    async def discover_once(self) -> None:
        """Resolve the DNS name and make the pool its addresses; keeps the old set on failure."""
        d = self.provider.discover
        assert d is not None
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(d.dns, d.port, type=socket.SOCK_STREAM)
        except OSError as exc:
            log.warning("pool %s: resolving %s failed (%s); keeping %d endpoints",
                        self.provider.name, d.dns, exc, len(self._endpoints))
            return
        hosts = sorted({str(info[4][0]) for info in infos})
        self._set_urls(f"{d.scheme}://{_netloc(h, d.port)}{d.path}" for h in hosts)

    def _set_urls(self, urls: Iterable[str]) -> None:
        """Make the pool exactly `urls`, keeping the state of endpoints that stay."""
        known = {e.url: e for e in self._endpoints}
        wanted = list(dict.fromkeys(urls))
        for gone in set(known) - set(wanted):
            self.prefixes.forget(known[gone].name)
        self._endpoints = [known.get(u) or Endpoint(self.provider, u, self.provider.scrape.path, self.policy)
                           for u in wanted]


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def endpoint_source(provider: Provider, transport: Transport, policy: OutlierDetection) -> FixedEndpoint | EndpointPool:
    """A pool for a provider with `endpoints` or `discover`; the fixed base_url otherwise."""
    if provider.endpoints or provider.discover:
        return EndpointPool(provider, transport, policy)
    return FixedEndpoint(provider, policy)
