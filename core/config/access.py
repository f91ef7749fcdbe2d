"""Who may call the gateway and how much: `keys:`, `teams:`, the administrators, the limits
and budgets they carry, and `rate_limits:` (where those limits are counted)."""
from __future__ import annotations

from typing import Literal

import msgspec

from tollway.core.cache.settings import CachePolicy


class Limit(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    requests: float | None = None
    input_tokens: float | None = None
    output_tokens: float | None = None
    total_tokens: float | None = None
    cost_usd: float | None = None
    concurrent: int | None = None
    per: str | None = None
    model: str | None = None  # on a key or team: count this limit per (owner, model), for that model only


class Budget(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A calendar budget (UTC): past `usd` spent this period, requests get 429 insufficient_quota
    until the next one. Distinct from a `cost_usd` rate limit, which refills continuously."""

    usd: float
    period: Literal["day", "week", "month"] = "month"


class Key(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    key_hash: str
    models: list[str] = msgspec.field(default_factory=lambda: ["*"])
    team: str | None = None
    limits: list[Limit] = []
    budget: Budget | None = None
    cache: CachePolicy | None = None  # its requests are cached (or, enabled: false, never) (docs/cache.md)


class Team(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    limits: list[Limit] = []
    budget: Budget | None = None
    models: list[str] = msgspec.field(default_factory=lambda: ["*"])  # what its keys may use, at most
    cache: CachePolicy | None = None  # its keys' requests are cached, unless a key says otherwise (docs/cache.md)


class Admin(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    key_hash: str


class ScopedAdmin(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An administrator beside `admin:` (the owner): a team admin manages its team's keys and
    reads its spend; a viewer reads everything but secrets and changes nothing."""

    name: str
    key_hash: str
    role: Literal["team_admin", "viewer"]
    team: str | None = None  # team_admin: the one team it manages


class RateLimits(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    backend: Literal["memory", "redis"] = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    on_store_error: Literal["open", "closed"] = "open"
    default_max_tokens: int = 4096  # output tokens reserved when a request sets no max_tokens
    key_prefix: str = "tollway"  # redis: every key is `{<prefix>}:...` (one hash tag, see docs/limits.md)
    # Stop a stream, with an error event, before its output takes a token or cost limit or a
    # budget past its bound (docs/limits.md, "Streams"); false: streams are charged when they end.
    enforce_streams: bool = True
