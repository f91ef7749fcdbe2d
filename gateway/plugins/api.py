"""What a plugin author imports (docs/plugins.md).

A plugin is what its factory returns: any object with one or more of these async methods

    async def authenticate(self, ctx: AuthContext) -> KeyRecord | None
    async def on_request(self, ctx: RequestContext) -> Allow | Reject | Replace   (Replace(body: bytes | dict))
    async def on_chunk(self, ctx: RequestContext, delta: str) -> Pass | Replace | Stop   (Replace(text: str))
    async def on_response(self, ctx: RequestContext, body: dict) -> Pass | Replace | Reject   (Replace(body: dict))
    async def on_complete(self, ctx: RequestContext, record: UsageRecord) -> None

Only the stages a plugin defines are called. Returning None means Allow / Pass.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tollway.core.ledger.record import UsageRecord
from tollway.gateway.runtime import KeyRecord

__all__ = ["ALLOW", "PASS", "Allow", "AuthContext", "KeyInfo", "KeyRecord", "Pass", "Reject", "Replace",
           "RequestContext", "Stop", "UsageRecord"]


@dataclass(frozen=True, slots=True)
class Allow:
    """on_request: let the request go upstream as it is."""


@dataclass(frozen=True, slots=True)
class Pass:
    """on_chunk, on_response: let the delta or the answer through as it is."""


@dataclass(frozen=True, slots=True)
class Reject:
    """on_request, on_response: refuse with `status` (4xx or 5xx) and an OpenAI-shaped error
    carrying `message` (code `plugin_rejected`, naming the plugin)."""

    status: int = 400
    message: str = "Refused by the gateway's policy."


@dataclass(frozen=True, slots=True)
class Replace:
    """Go on with `value` instead: the request body (bytes, or a dict encoded as JSON) for
    on_request, the delta's text (str) for on_chunk, the answer (dict) for on_response."""

    value: bytes | str | dict[str, Any]


@dataclass(frozen=True, slots=True)
class Stop:
    """on_chunk: end the stream now with an SSE error event (code `plugin_stopped`)."""

    message: str = "Stopped by the gateway's policy."


ALLOW = Allow()
PASS = Pass()


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """The gateway key a request came with: its name, its ledger id, its team."""

    name: str
    id: str
    team: str | None


@dataclass(slots=True)
class RequestContext:
    """One request, as every stage of every plugin sees it (the same object from on_request to
    on_complete). `headers` are read-only and have no credentials (authorization, api keys,
    cookies); `body` is the parsed JSON body (None for a request refused before it was read).
    `tags` (ledger tags, the x-tollway-tags rules) may be added to in on_request; `metadata` is
    the plugins' own, kept from stage to stage."""

    request_id: str
    api: str  # the operation: chat, completions, embeddings, responses, messages, ...
    key: KeyInfo
    model: str | None  # as the client asked
    route: str  # the configured model that serves it
    stream: bool
    headers: Mapping[str, str]
    body: Any
    tags: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AuthContext:
    """authenticate: a request whose credential the gateway's key table does not know (or that
    has none). `headers` are the request's, credentials included (that is what is checked).
    `key_named(name)` is the gateway key record of that name (config or run-time), or None:
    a plugin maps its caller to one of those, so limits, budgets and the ledger apply."""

    headers: Mapping[str, str]
    path: str
    key_named: Callable[[str], KeyRecord | None]
