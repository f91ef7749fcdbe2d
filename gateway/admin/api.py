"""Operator endpoints under /admin/, guarded by the config's `admin.key_hash` credential.

The admin credential is a bearer token like a gateway key, stored only as its digest; gateway
keys never open these endpoints. Without an `admin:` section every /admin/* path is a 404 that
says so (`admin_not_configured`; tollway.gateway.app answers it for paths not listed here).
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from granian.rsgi import HTTPProtocol, Scope

from tollway.core import errors
from tollway.core.security.keys import bearer_matches
from tollway.gateway.admin import spend
from tollway.gateway.exchange import Exchange
from tollway.gateway.limits.limiter import StoreUnavailable
from tollway.gateway.serving import Serving
from tollway.gateway.surfaces import Endpoint, Handler

ServingHandler = Callable[[Serving, Scope, HTTPProtocol, Exchange], Awaitable[None]]

_encode = msgspec.json.Encoder().encode
_JSON = ("content-type", "application/json")
_SECTION = {"key": "keys", "key_model": "keys", "team": "teams", "team_model": "teams", "model": "models"}


class AdminAPI:
    def __init__(self, serving: Serving) -> None:
        self.serving = serving

    def routes(self) -> dict[tuple[str, str], Endpoint]:
        return {
            ("GET", "/admin/usage"): Endpoint("admin", self.usage),
            ("GET", "/admin/spend"): Endpoint("admin", self._guarded(spend.spend)),
            ("GET", "/admin/requests"): Endpoint("admin", self._guarded(spend.requests)),
            ("GET", "/admin/budgets"): Endpoint("admin", self._guarded(spend.budgets)),
        }

    def _guarded(self, handler: ServingHandler) -> Handler:
        async def guarded(scope: Scope, proto: HTTPProtocol, ex: Exchange) -> None:
            self.authorize(scope)
            await handler(self.serving, scope, proto, ex)
        return guarded

    def authorize(self, scope: Scope) -> None:
        """Pass if the request carries the admin credential. Raises 404 (no admin section) or 401."""
        config = self.serving.runtime.config
        if config.admin is None:
            raise errors.admin_not_configured(scope.path)
        if not bearer_matches(scope.headers.get("authorization"), config.admin.key_hash, config.server.key_pepper):
            raise errors.unauthorized("This endpoint needs the admin credential as 'Authorization: Bearer <admin key>'.")

    async def usage(self, scope: Scope, proto: HTTPProtocol, ex: Exchange) -> None:
        """GET /admin/usage: every limit's use and what remains, by key, team and model."""
        self.authorize(scope)
        limiter = self.serving.limiter
        body: dict[str, Any] = {"object": "usage", "backend": limiter.store.backend if limiter else None,
                                "keys": {}, "teams": {}, "models": {}}
        try:
            report = await limiter.usage_report() if limiter is not None else []
        except StoreUnavailable:
            raise errors.usage_unavailable() from None
        for entry in report:
            body[_SECTION[entry["scope"]]].setdefault(entry["owner"], []).append(entry)
        ex.status = 200
        proto.response_bytes(200, [_JSON, ("x-request-id", ex.request_id)], _encode(body))
