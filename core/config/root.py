"""`Config`: the whole file's top-level shape, one field per section. The shape (`providers`,
`models`, `keys`) is a contract other issues extend."""
from __future__ import annotations

import msgspec

from tollway.core.cache.settings import CacheStore
from tollway.core.config.access import Admin, Key, RateLimits, ScopedAdmin, Team
from tollway.core.config.plugins import Guardrail, Plugin
from tollway.core.config.providers import Provider
from tollway.core.config.routing import Model, Routing
from tollway.core.config.server import Server
from tollway.core.config.store import Ledger, Store
from tollway.core.config.telemetry import Telemetry


class Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    providers: list[Provider] = []
    models: list[Model] = []
    keys: list[Key] = []
    teams: list[Team] = []
    admin: Admin | None = None
    admins: list[ScopedAdmin] = []
    rate_limits: RateLimits = RateLimits()
    server: Server = Server()
    routing: Routing = Routing()
    telemetry: Telemetry = Telemetry()
    store: Store | None = None  # absent: no ledger, no persisted state
    ledger: Ledger = Ledger()
    plugins: list[Plugin] = []  # run in this order (docs/plugins.md)
    guardrails: list[Guardrail] = []  # run in this order, before the plugins (docs/guardrails.md)
    cache: CacheStore | None = None  # absent: no response cache (docs/cache.md)
