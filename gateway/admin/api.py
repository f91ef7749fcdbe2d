"""Operator endpoints under /admin/, for the administrators the config names.

Each request carries an admin credential (`Authorization: Bearer <admin key>`): the config's
`admin:` (the owner) or one of `admins:` (a team admin or a viewer; tollway.core.tenancy.roles).
Credentials are stored only as digests; gateway keys never open these endpoints. Every request
is rate-limited per credential (`server.admin_requests_per_minute`), and a body that changes
something is capped at MAX_ADMIN_BODY. Without `admin:` or `admins:` every /admin/* path is a
404 that says so (`admin_not_configured`; tollway.gateway.app answers it for unknown paths).
"""
from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from granian.rsgi import HTTPProtocol, Scope

from tollway.core import errors
from tollway.core.config import Config
from tollway.core.security.keys import KeyTable
from tollway.core.tenancy.roles import Principal, principals
from tollway.gateway.admin import keys, operations, spend
from tollway.gateway.admin.call import AdminCall, answer
from tollway.gateway.admin.openapi import document
from tollway.gateway.exchange import Exchange
from tollway.gateway.limits.limiter import StoreUnavailable
from tollway.gateway.serving import Serving
from tollway.gateway.surfaces import Endpoint, Handler
from tollway.gateway.telemetry.live import LiveStats

ServingHandler = Callable[[Serving, Scope, HTTPProtocol, Exchange, Principal], Awaitable[None]]
CallHandler = Callable[[AdminCall], Awaitable[None]]

_SECTION = {"key": "keys", "key_model": "keys", "team": "teams", "team_model": "teams", "model": "models"}
_MAX_BUCKETS = 10_000  # administrators tracked by the rate limiter (a config names a handful)


class AdminAPI:
    def __init__(self, serving: Serving, live: Callable[[], LiveStats | None] = lambda: None) -> None:
        self.serving = serving
        self._live = live
        self._buckets: dict[str, tuple[float, float]] = {}  # admin name -> (level, at)
        self._table_of: tuple[Config | None, KeyTable[Principal] | None] = (None, None)  # (config, its administrators)
        self._openapi = msgspec.json.encode(document())

    def routes(self) -> dict[tuple[str, str], Endpoint]:
        return {
            ("GET", "/admin/usage"): Endpoint("admin", self._call(self.usage)),
            ("GET", "/admin/spend"): Endpoint("admin", self._guarded(spend.spend)),
            ("GET", "/admin/requests"): Endpoint("admin", self._guarded(spend.requests)),
            ("GET", "/admin/budgets"): Endpoint("admin", self._guarded(spend.budgets)),
            ("GET", "/admin/keys"): Endpoint("admin", self._call(keys.list_keys)),
            ("POST", "/admin/keys"): Endpoint("admin", self._call(keys.create_key)),
            ("GET", "/admin/teams"): Endpoint("admin", self._call(keys.list_teams)),
            ("POST", "/admin/teams"): Endpoint("admin", self._call(keys.create_team)),
            ("GET", "/admin/audit"): Endpoint("admin", self._call(keys.audit)),
            ("GET", "/admin/openapi.json"): Endpoint("admin", self._call(self.openapi)),
            ("GET", "/admin/whoami"): Endpoint("admin", self._call(operations.whoami)),
            ("GET", "/admin/stats"): Endpoint("admin", self._call(operations.stats(self._live))),
            ("GET", "/admin/routing"): Endpoint("admin", self._call(operations.routing)),
            ("GET", "/admin/config"): Endpoint("admin", self._call(operations.config)),
        }

    def match(self, method: str, path: str) -> Endpoint | None:
        """The endpoint of a path with an id in it (/admin/keys/{id}[/rotate|/revoke],
        /admin/teams/{name}), or None."""
        parts = path.rstrip("/").split("/")  # "", "admin", "keys", id, action?
        if len(parts) < 4 or parts[1] != "admin" or not parts[3]:
            return None
        handler = _PARAM_ROUTES.get((method, parts[2], parts[4] if len(parts) == 5 else "", len(parts)))
        return Endpoint("admin", self._call(handler, parts[3])) if handler is not None else None

    def allows(self, path: str) -> list[str]:
        """The methods a path with an id answers (for 405s)."""
        parts = path.rstrip("/").split("/")
        if len(parts) < 4 or parts[1] != "admin":
            return []
        action = parts[4] if len(parts) == 5 else ""
        return [m for (m, section, act, n) in _PARAM_ROUTES if section == parts[2] and act == action and n == len(parts)]

    def _guarded(self, handler: ServingHandler) -> Handler:
        async def guarded(scope: Scope, proto: HTTPProtocol, ex: Exchange) -> None:
            who = self.authorize(scope)
            await handler(self.serving, scope, proto, ex, who)
        return guarded

    def _call(self, handler: CallHandler, ident: str = "") -> Handler:
        async def called(scope: Scope, proto: HTTPProtocol, ex: Exchange) -> None:
            who = self.authorize(scope)
            await handler(AdminCall(self.serving, scope, proto, ex, who, ident))
        return called

    def authorize(self, scope: Scope) -> Principal:
        """The administrator this request comes from. Raises 404 (no admin configured), 401, 429."""
        config = self.serving.runtime.config
        if self._table_of[0] is not config:
            self._table_of = (config, principals(config))
        table = self._table_of[1]
        if table is None:
            raise errors.admin_not_configured(scope.path)
        scheme, _, token = (scope.headers.get("authorization") or "").partition(" ")
        who: Principal | None = table.lookup(token.strip()) if scheme.lower() == "bearer" else None
        if who is None:
            raise errors.unauthorized("This endpoint needs an admin credential as 'Authorization: Bearer <admin key>'.")
        self._take(who, config.server.admin_requests_per_minute)
        return who

    def _take(self, who: Principal, per_minute: int) -> None:
        """One request from `who`'s bucket (`per_minute` deep, refilling at per_minute / 60 s)."""
        now = time.monotonic()
        level, at = self._buckets.get(who.name, (float(per_minute), now))
        level = min(float(per_minute), level + (now - at) * per_minute / 60.0)
        if level < 1.0:
            raise errors.admin_rate_limited((1.0 - level) * 60.0 / per_minute)
        if len(self._buckets) >= _MAX_BUCKETS and who.name not in self._buckets:
            self._buckets.clear()
        self._buckets[who.name] = (level - 1.0, now)

    async def usage(self, call: AdminCall) -> None:
        """GET /admin/usage: every limit's use and what remains, by key, team and model."""
        limiter = self.serving.limiter
        body: dict[str, Any] = {"object": "usage", "backend": limiter.store.backend if limiter else None,
                                "keys": {}, "teams": {}, "models": {}}
        try:
            report = await limiter.usage_report() if limiter is not None else []
        except StoreUnavailable:
            raise errors.usage_unavailable() from None
        teams = {k.name: k.team for k in self.serving.runtime.config.keys}
        for entry in report:
            if call.who.scope_team is not None and not _ours(entry, teams, call.who.scope_team):
                continue
            body[_SECTION[entry["scope"]]].setdefault(entry["owner"], []).append(entry)
        answer(call, body)

    async def openapi(self, call: AdminCall) -> None:
        """GET /admin/openapi.json: the OpenAPI 3.1 description of every /admin/* endpoint."""
        call.ex.status = 200
        call.proto.response_bytes(200, [("content-type", "application/json"), ("x-request-id", call.ex.request_id)],
                                  self._openapi)


def _ours(entry: dict[str, Any], teams: dict[str, str | None], team: str) -> bool:
    """Whether a usage entry is of `team` (its own buckets, or its keys')."""
    if entry["scope"] in ("team", "team_model"):
        return bool(entry["owner"] == team)
    if entry["scope"] in ("key", "key_model"):
        return teams.get(entry["owner"]) == team
    return False


# (method, section, action, number of path parts) -> handler; ids are parts[3]
_PARAM_ROUTES: dict[tuple[str, str, str, int], Callable[[AdminCall], Awaitable[None]]] = {
    ("GET", "keys", "", 4): keys.get_key,
    ("PATCH", "keys", "", 4): keys.update_key,
    ("DELETE", "keys", "", 4): keys.revoke_key,
    ("POST", "keys", "rotate", 5): keys.rotate_key,
    ("POST", "keys", "revoke", 5): keys.revoke_key,
    ("GET", "teams", "", 4): keys.get_team,
    ("PATCH", "teams", "", 4): keys.update_team,
    ("DELETE", "teams", "", 4): keys.delete_team,
}
