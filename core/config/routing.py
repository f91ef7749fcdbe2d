"""The `models:` section and `routing:`: which providers serve a public model name, and how
attempts are retried and failing targets set aside."""
from __future__ import annotations

import msgspec

from tollway.core.accounting.pricing import Price
from tollway.core.cache.settings import CachePolicy
from tollway.core.config.access import Limit


class Target(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    provider: str
    model: str | None = None  # upstream model name; defaults to the public name
    weight: float = 1.0
    priority: int = 0


class Model(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    targets: list[Target]
    price: Price | None = None
    limits: list[Limit] = []
    match: str | None = None  # a regex of public names this entry also serves
    cache: CachePolicy | None = None  # its answers are cached (docs/cache.md)


class Retry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Attempts before the first byte reaches the client; see tollway.core.routing.retry."""

    attempts: int = 3  # upstream attempts per request, fallbacks included
    backoff_base: float = 0.1  # seconds; the jittered wait before re-trying a target doubles from here
    backoff_max: float = 2.0
    max_retry_after: float = 10.0  # honour an upstream's retry-after up to this many seconds
    deadline: float = 30.0  # no new attempt starts this many seconds after the request arrived


class OutlierDetection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Passive health: eject a target or endpoint that keeps failing; see tollway.core.routing.health."""

    consecutive_failures: int = 5
    cool_down: float = 10.0  # seconds out on the first ejection; doubles on each repeat
    max_cool_down: float = 300.0


class Routing(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    retry: Retry = Retry()
    outlier_detection: OutlierDetection = OutlierDetection()
