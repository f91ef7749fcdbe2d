"""Everything the gateway derives from one config, swapped as a whole on reload.

A request reads `gateway.runtime` once at its start and uses that snapshot to the end, so a
reload never changes the keys, routes or providers under a request in flight.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from core.config import Config, Key, Provider
from core.keys import KeyTable
from core.providers.registry import OTEL_PROVIDER_NAMES, adapter_for
from core.routing import RouteTable
from gateway.credentials import credential_for
from gateway.fake_upstream import FakeTransport


@dataclass(frozen=True)
class KeyRecord:
    key: Key
    allowed: frozenset[str] | None  # None: every model

    @property
    def key_hash(self) -> str:
        return self.key.key_hash

    def may_use(self, model: str) -> bool:
        return self.allowed is None or model in self.allowed


class ProviderRuntime:
    """A configured provider: its adapters, its transport and its metric name."""

    def __init__(self, config: Provider, transport: Any) -> None:
        self.config = config
        self.name = config.name
        self.transport = transport
        self.otel_name = OTEL_PROVIDER_NAMES.get(config.schema, config.schema)
        self.credential = credential_for(config)  # SigV4 / OAuth signer, None for static keys

    def adapter(self, api: str) -> Any | None:
        return adapter_for(api, self.config.schema)

    async def sign(self, call: Any) -> Any:
        """The call with credentials that need I/O or the clock applied (SigV4, OAuth)."""
        return call if self.credential is None else await self.credential.sign(call)


class Runtime:
    def __init__(self, config: Config, upstream: Any) -> None:
        self.config = config
        self.routes = RouteTable(config)
        self.keys: KeyTable[KeyRecord] = KeyTable(
            {k.key_hash: _record(k) for k in config.keys}, pepper=config.server.key_pepper
        )
        self.providers = {p.name: ProviderRuntime(p, _transport(p, upstream)) for p in config.providers}
        self.random = random.random


def _record(key: Key) -> KeyRecord:
    return KeyRecord(key, None if "*" in key.models else frozenset(key.models))


def _transport(provider: Provider, upstream: Any) -> Any:
    """The in-process fake for `schema: fake`; the shared HTTP client pool otherwise."""
    if provider.schema == "fake":
        return FakeTransport(provider.fake_chunks, provider.fake_chunk_delay)
    return upstream
