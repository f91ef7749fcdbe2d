"""Everything the gateway derives from one config, swapped as a whole on reload.

A request reads `tollway.gateway.runtime` once at its start and uses that snapshot to the end, so a
reload never changes the keys, routes or providers under a request in flight. What must
outlive a reload is carried over from the previous runtime: a provider whose config did not
change keeps its endpoint pool (scraped load, in-flight counts, breakers), and the route-level
breakers stay while the outlier policy is the same.
"""
from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from datetime import UTC, datetime

from tollway.core.accounting.pricebook import PriceBook
from tollway.core.config import Config, Key, Provider, Routing, Timeouts
from tollway.core.ledger.record import key_id_of
from tollway.core.providers.base import Adapter, UpstreamCall
from tollway.core.providers.registry import OTEL_PROVIDER_NAMES, AdapterUnavailable, load_adapters
from tollway.core.routing.health import HealthBoard
from tollway.core.routing.table import RouteTable
from tollway.core.security.keys import KeyTable
from tollway.core.security.secrets import KnownSecrets, configured_secrets
from tollway.gateway.telemetry.metrics import MetricLabels
from tollway.gateway.upstream import Transport, UpstreamAnswer
from tollway.gateway.upstream.credentials import credential_for
from tollway.gateway.upstream.fake import FakeTransport
from tollway.gateway.upstream.pool import endpoint_source


@dataclass(frozen=True)
class KeyRecord:
    key: Key
    allowed: frozenset[str] | None  # None: every model
    key_id: str = ""  # the usage ledger's id of the key (tollway.core.ledger.record.key_id_of)

    @property
    def key_hash(self) -> str:
        return self.key.key_hash

    def may_use(self, model: str) -> bool:
        return self.allowed is None or model in self.allowed


class ProviderRuntime:
    """A configured provider: its adapters, its transport and its metric name."""

    def __init__(self, config: Provider, transport: Transport | None, routing: Routing = Routing(),
                 secrets: KnownSecrets | None = None) -> None:
        self.config = config
        self.name = config.name
        self.transport: Transport = transport if transport is not None else _NOT_STARTED
        self.otel_name = OTEL_PROVIDER_NAMES.get(config.schema, config.schema)
        self.adapters = provider_adapters(config)  # imported now, not by the first request using one
        # What an upstream could echo back (every provider's: one upstream may serve several);
        # the signer adds what it fetches at run time.
        self.secrets = secrets if secrets is not None else KnownSecrets(configured_secrets(config))
        self.credential = credential_for(config, self.secrets)  # SigV4 / OAuth signer, None for static keys
        self.policy = routing.outlier_detection
        self.endpoints = endpoint_source(config, self.transport, self.policy)  # where each attempt goes

    def adapter(self, api: str) -> Adapter | None:
        return self.adapters.get(api)

    async def sign(self, call: UpstreamCall) -> UpstreamCall:
        """The call with credentials that need I/O or the clock applied (SigV4, OAuth)."""
        return call if self.credential is None else await self.credential.sign(call)


class Runtime:
    def __init__(self, config: Config, upstream: Transport | None, previous: Runtime | None = None) -> None:
        self.config = config
        self.routes = RouteTable(config)
        self.metric_labels = MetricLabels(config)  # the names metrics may use as label values
        # What a response costs (ledger, budgets, x-tollway-cost-usd), at the prices of the day
        # the config was loaded: a dated price change applies from the next reload or restart.
        self.prices = PriceBook(config, datetime.now(UTC).date())
        self.keys: KeyTable[KeyRecord] = KeyTable(
            {k.key_hash: _record(k) for k in config.keys}, pepper=config.server.key_pepper
        )
        old = previous.providers if previous is not None else {}
        # One set for all providers, kept across reloads (providers a reload keeps sign into it).
        self.secrets: KnownSecrets = previous.secrets if previous is not None else KnownSecrets()
        self.secrets.configure(v for p in config.providers for v in configured_secrets(p))
        self.providers: dict[str, ProviderRuntime] = {p.name: _provider(p, upstream, config, old.get(p.name), self.secrets)
                          for p in config.providers}
        policy = config.routing.outlier_detection
        keep = previous is not None and previous.health.policy == policy
        self.health: HealthBoard = previous.health if keep and previous is not None else HealthBoard(policy)
        self.random = random.random

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the providers' background work (pool scraping, DNS) on `loop`."""
        for provider in self.providers.values():
            provider.endpoints.start(loop)

    def retired(self, previous: Runtime) -> list[ProviderRuntime]:
        """Providers of `previous` this runtime does not reuse: their pools should close."""
        kept = {id(p) for p in self.providers.values()}
        return [p for p in previous.providers.values() if id(p) not in kept]


def provider_adapters(config: Provider) -> dict[str, Adapter]:
    """Every adapter `config` can use, imported now (see registry.load_adapters); an adapter that
    cannot be imported raises AdapterUnavailable naming the provider."""
    try:
        return load_adapters(config.schema)
    except AdapterUnavailable as exc:
        raise AdapterUnavailable(f"provider '{config.name}': {exc}") from exc


def _provider(config: Provider, upstream: Transport | None, whole: Config, old: ProviderRuntime | None,
              secrets: KnownSecrets) -> ProviderRuntime:
    """The previous runtime's provider when nothing about it changed, else a new one."""
    if old is not None and old.config == config and old.policy == whole.routing.outlier_detection:
        if old.transport is upstream or isinstance(old.transport, FakeTransport):
            return old
    return ProviderRuntime(config, _transport(config, upstream), whole.routing, secrets)


def _record(key: Key) -> KeyRecord:
    return KeyRecord(key, None if "*" in key.models else frozenset(key.models), key_id_of(key.name))


def _transport(provider: Provider, upstream: Transport | None) -> Transport | None:
    """The in-process fake for `schema: fake`; the shared HTTP client pool otherwise."""
    if provider.schema == "fake":
        return FakeTransport(provider.fake_chunks, provider.fake_chunk_delay)
    return upstream


class _NotStarted:
    """The transport of a runtime built before the gateway started (its config is read, no
    request is served): sending through it is a bug, said plainly."""

    async def request(self, method: str, url: str, headers: list[tuple[str, str]], body: bytes,
                      timeouts: Timeouts, extra_head: bytes = b"") -> UpstreamAnswer:
        raise RuntimeError("the gateway has not started: no upstream client yet")

    async def aclose(self) -> None:
        return None


_NOT_STARTED = _NotStarted()
