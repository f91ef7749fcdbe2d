"""One admin request as its handler sees it, and the few things every handler does with it."""
from __future__ import annotations

from dataclasses import dataclass

import msgspec
from granian.rsgi import HTTPProtocol, Scope

from tollway.core import errors
from tollway.core.tenancy.roles import Principal
from tollway.gateway.admission import read_body
from tollway.gateway.exchange import Exchange
from tollway.gateway.serving import Serving
from tollway.gateway.tenancy.actions import Actions

MAX_ADMIN_BODY = 64 * 1024  # an admin change is a few hundred bytes; nothing needs more
_encode = msgspec.json.Encoder().encode
_JSON = ("content-type", "application/json")


@dataclass(frozen=True, slots=True)
class AdminCall:
    serving: Serving
    scope: Scope
    proto: HTTPProtocol
    ex: Exchange
    who: Principal
    ident: str = ""  # the id or name in the path, percent-decoded by the handler's caller

    def actions(self) -> Actions:
        """The key and team actions (404 when there is no store to keep them in)."""
        actions = self.serving.actions
        if actions is None:
            raise errors.store_not_configured()
        return actions

    async def body(self) -> bytes:
        return await read_body(self.scope, self.proto, self.ex, MAX_ADMIN_BODY)


_NO_STORE = ("cache-control", "no-store")


def answer(call: AdminCall, body: object, status: int = 200, secret: bool = False) -> None:
    """`secret`: the answer holds a new key's secret (create, rotate), shown this once: no cache
    on the way (a proxy, the browser's) may keep a copy."""
    call.ex.status = status
    headers = [_JSON, ("x-request-id", call.ex.request_id)]
    if secret:
        headers.append(_NO_STORE)
    call.proto.response_bytes(status, headers, _encode(body))
