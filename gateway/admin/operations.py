"""What the console reads besides keys and spend: who is logged in (`/admin/whoami`), this
replica's last hour (`/admin/stats`), routing and health (`/admin/routing`) and the config in
force with every secret replaced (`/admin/config`).

Routing and the config are deployment-wide facts: the owner and viewers read them, a team
admin gets 403. A team admin's stats hold its team's spend today only (this replica's traffic
is everyone's).
"""
from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import msgspec

from tollway.core.ledger.periods import period_start
from tollway.core.ledger.report import SpendQuery
from tollway.core.security.urls import redact_url
from tollway.gateway.admin.call import AdminCall, answer
from tollway.gateway.runtime import Runtime
from tollway.gateway.store import StoreError
from tollway.gateway.store.reports import spend_report
from tollway.gateway.telemetry.live import LiveStats

MASK = "***"
# Config fields whose values are secrets whatever they hold (by name, at any depth).
# ("config": a plugin's own settings; the gateway cannot tell which hold secrets, so none is shown.)
_SECRET_FIELDS = frozenset(("api_key", "key_hash", "key_pepper", "credentials", "headers", "password", "token",
                            "secret_access_key", "session_token", "access_key_id", "config"))
# (URL-valued fields, whose password is masked whatever its length; "endpoints": a pool's list.)
_URL_FIELDS = frozenset(("url", "redis_url", "base_url", "endpoint", "endpoints"))


async def whoami(call: AdminCall) -> None:
    who = call.who
    answer(call, {"object": "admin", "name": who.name, "role": who.role, "team": who.team})


def stats(live: Callable[[], LiveStats | None]) -> Callable[[AdminCall], Awaitable[None]]:
    async def handler(call: AdminCall) -> None:
        sampler = live()
        everyone = call.who.scope_team is None
        points = list(sampler.points) if sampler is not None and everyone else []
        now = sampler.current() if sampler is not None and everyone else None
        answer(call, {"object": "stats", "interval_seconds": sampler.interval if sampler else None,
                      "points": points, "now": now, "today": await _today(call)})
    return handler


async def _today(call: AdminCall) -> dict[str, object] | None:
    """Today's totals (UTC) over every replica, from the ledger (None without one or when down)."""
    books = call.serving.books
    if books is None or books.ledger is None:
        return None
    now = time.time()
    try:
        report = await spend_report(books.ledger.store, SpendQuery((), period_start(now, "day"), now), call.who.scope_team)
    except (StoreError, OSError):
        return None
    total = report["total"]
    assert isinstance(total, dict)
    return {name: total.get(name) for name in ("requests", "errors", "input_tokens", "output_tokens", "cost_usd")}


async def routing(call: AdminCall) -> None:
    call.who.owner_or_viewer("read the routing table")
    rt = call.serving.runtime
    mono, wall = time.monotonic(), time.time()

    def until(at: float) -> float | None:  # the health board's monotonic instants, as UNIX seconds
        return round(wall + (at - mono), 3) if at > mono else None

    providers = []
    for name, provider in rt.providers.items():
        endpoints = [{"address": e.name, "healthy": e.candidate(mono, 0.0).available,
                      "ejected_until": until(e.health.ejected_until), "in_flight": e.in_flight,
                      "load": _load(e.load)} for e in provider.endpoints.endpoints()]
        if not endpoints and provider.config.base_url:  # one upstream: its health is the provider's
            member = rt.health.member(name)
            endpoints = [{"address": redact_url(provider.config.base_url), "healthy": member.available(mono),
                          "ejected_until": until(member.ejected_until), "in_flight": None, "load": None}]
        providers.append({"name": name, "schema": provider.config.schema, "endpoints": endpoints})
    models = []
    for m in rt.file_config.models:
        targets = []
        for t in m.targets:
            member = rt.health.member(t.provider)
            targets.append({"provider": t.provider, "model": t.model or m.name, "weight": t.weight,
                            "priority": t.priority, "healthy": member.available(mono),
                            "ejected_until": until(member.ejected_until)})
        models.append({"name": m.name, "match": m.match, "targets": targets})
    answer(call, {"object": "routing", "providers": providers, "models": models})


def _load(load: object) -> float | None:
    """One number for an endpoint's scraped load: its queue (waiting), when scraped."""
    waiting = getattr(load, "waiting", None)
    return float(waiting) if isinstance(waiting, (int, float)) else None


async def config(call: AdminCall) -> None:
    call.who.owner_or_viewer("read the config")
    rt = call.serving.runtime
    answer(call, {"object": "config", "config": redacted_config(rt)})


def redacted_config(rt: Runtime) -> object:
    """The config file in force as JSON, every secret replaced by MASK: fields that hold one by
    name, passwords inside URLs, and any value equal to a secret a provider holds."""
    return _redact(msgspec.to_builtins(rt.file_config), rt, "")


def _redact(value: object, rt: Runtime, field: str) -> object:
    if field in _SECRET_FIELDS and value is not None:
        return {k: MASK for k in value} if isinstance(value, dict) else MASK
    if isinstance(value, dict):
        return {k: _redact(v, rt, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v, rt, field) for v in value]
    if isinstance(value, str):
        shown = redact_url(value) if field in _URL_FIELDS else value
        return MASK if rt.secrets.holds(shown) else shown
    return value
