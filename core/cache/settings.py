"""The response cache's config: the top-level `cache:` (where entries live, how big, how long)
and the `cache:` of a model, key or team (who opts in, for how long, shared how widely).

    cache:
      backend: memory            # memory | redis
      redis_url: redis://127.0.0.1:6379/1
      max_bytes: 268435456       # memory backend
      max_entry_bytes: 1048576
      ttl: 1h
    models:
      - name: gpt-4o-mini
        cache: {ttl: 10m, scope: key}      # scope: key (default) | team | shared:<namespace>

A request is cached when its key, its key's team or its model has a `cache:` (the first of
them, in that order, decides: a key or team may also opt out with `enabled: false`).
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

import msgspec

from tollway.core.limits.policy import window_seconds
from tollway.core.security.urls import redis_url_problem

Path = list[str | int]
_SHARED = re.compile(r"shared:[A-Za-z0-9_.\-]{1,64}")


class CacheStore(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The top-level `cache:`: the backend every opted-in model, key and team shares."""

    backend: Literal["memory", "redis"] = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "tollway:cache"  # redis: every entry is `<prefix>:<sha256 hex>`
    max_bytes: int = 256 * 1024 * 1024  # memory: what all entries may hold together (LRU past it)
    max_entry_bytes: int = 1024 * 1024  # a larger answer is served but not stored
    ttl: str | float = "1h"  # default for a `cache:` that sets none
    lock_ttl: str | float = "10s"  # redis: how long other replicas wait for the one filling an entry


class CachePolicy(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The `cache:` of a model, key or team."""

    ttl: str | float | None = None  # absent: the top-level cache.ttl
    scope: str = "key"  # key | team | shared:<namespace>: who may read what another filled
    deterministic_only: bool = True  # false: also sampled answers (temperature > 0 without a seed)
    enabled: bool = True  # false on a key or team: its requests are never cached


def seconds(value: str | float) -> float:
    """Seconds of a ttl: a number, or a duration such as `10m`, `1h`, `30s`. Raises ValueError."""
    if isinstance(value, (int, float)):
        if not 0 < value < float("inf"):
            raise ValueError("must be a finite number of seconds > 0, or a duration such as 10m or 1h")
        return float(value)
    try:
        return window_seconds(value)
    except ValueError:
        raise ValueError(f"expected a duration such as 30s, 10m, 1h or 1d (or seconds > 0), not {value[:20]!r}") from None


class Owner(msgspec.Struct, frozen=True):
    """Where a `cache:` sits, for validation: its path and its value."""

    where: Path
    policy: CachePolicy


def problems(store: CacheStore | None, owners: Sequence[Owner]) -> list[tuple[Path, str]]:
    """Every problem of the cache config, each at its path."""
    found: list[tuple[Path, str]] = []
    if store is not None:
        found += _store_problems(store)
    for owner in owners:
        if store is None:
            found.append(([*owner.where, "cache"], "a cache needs the top-level cache: section (its backend), "
                          "e.g. cache: {backend: memory}"))
            continue
        p = owner.policy
        if p.ttl is not None:
            try:
                seconds(p.ttl)
            except ValueError as exc:
                found.append(([*owner.where, "cache", "ttl"], str(exc)))
        if p.scope not in ("key", "team") and not _SHARED.fullmatch(p.scope):
            found.append(([*owner.where, "cache", "scope"],
                          f"expected key, team or shared:<namespace> (letters, digits, _ . -), not {p.scope[:40]!r}"))
    return found


def _store_problems(store: CacheStore) -> list[tuple[Path, str]]:
    found: list[tuple[Path, str]] = []
    for field in ("ttl", "lock_ttl"):
        try:
            seconds(getattr(store, field))
        except ValueError as exc:
            found.append((["cache", field], str(exc)))
    if store.max_entry_bytes < 1:
        found.append((["cache", "max_entry_bytes"], "must be at least 1"))
    if store.max_bytes < store.max_entry_bytes:
        found.append((["cache", "max_bytes"], "must be at least max_entry_bytes"))
    redis_problem = redis_url_problem(store.redis_url)  # (also under memory: see check_limits)
    if redis_problem:
        found.append((["cache", "redis_url"], redis_problem))
    if not store.key_prefix:
        found.append((["cache", "key_prefix"], "must not be empty"))
    return found


def owners(models: Sequence[object], keys: Sequence[object], teams: Sequence[object]) -> list[Owner]:
    """The `cache:` of every model, key and team that has one."""
    found = []
    for section, items in (("models", models), ("keys", keys), ("teams", teams)):
        for i, item in enumerate(items):
            policy = getattr(item, "cache", None)
            if policy is not None:
                found.append(Owner([section, i], policy))
    return found
