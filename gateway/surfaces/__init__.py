"""Client surfaces: the API families clients call (OpenAI's, Anthropic's) as small values.

Every proxied request takes the one admission path (`tollway.gateway.admission`); what differs
between surfaces is only a `Surface`: where the gateway key may come from, which client headers
reach the provider, and how an error is dressed (its body, and its SSE event mid-stream).
The handlers of each surface are in its module (`openai`, `anthropic`); `Endpoint` is what they
register in the app's route table.
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import NamedTuple

from granian.rsgi import HTTPProtocol, Scope

from tollway.core.errors import GatewayError
from tollway.gateway.exchange import Exchange

Handler = Callable[[Scope, HTTPProtocol, Exchange], Awaitable[None]]


def _as_is(exc: GatewayError) -> GatewayError:
    return exc


@dataclass(frozen=True, slots=True)
class Surface:
    name: str
    # Headers that may carry the gateway key, tried in order; `authorization` holds a bearer token.
    key_headers: tuple[str, ...] = ("authorization",)
    # Client headers forwarded to the provider (never an auth header).
    passed_headers: tuple[str, ...] = ()
    # The error as this surface's clients parse it: `body()` and `sse_event()` render it.
    dress: Callable[[GatewayError], GatewayError] = _as_is


OPENAI = Surface("openai")


class Endpoint(NamedTuple):
    api: str  # the operation it serves, a bounded label (a ClientAPI value, "models", "health", ...)
    handler: Handler
    surface: Surface = OPENAI
