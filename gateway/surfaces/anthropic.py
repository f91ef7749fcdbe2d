"""The Anthropic Messages endpoints: `/anthropic/v1/messages` and `.../count_tokens`.

They let the official `anthropic` SDK (base_url = the gateway + "/anthropic") use every model
the gateway serves. Two things differ from the OpenAI paths, both at this boundary only:
- the gateway key may come in `x-api-key`, as that SDK sends it, as well as `Authorization`;
- errors are Anthropic-shaped (`{"type":"error","error":{"type":..., "message":...}}`), since
  the SDK parses that shape; `AnthropicShapedError` re-dresses any `GatewayError` raised below.
"""
from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

import msgspec

from tollway.core import errors
from tollway.core.errors import GatewayError
from tollway.core.providers.messages.errors import error_body, error_event
from tollway.core.providers.base import ClientAPI
from tollway.core.request import RequestHead, parse_head
from tollway.core.routing.table import Route
from tollway.gateway.exchange import Exchange
from tollway.gateway.runtime import KeyRecord, Runtime
from tollway.gateway.token_count import count_off_loop

if TYPE_CHECKING:
    from tollway.gateway.app import Gateway

MESSAGES_PATH = "/anthropic/v1/messages"
COUNT_TOKENS_PATH = "/anthropic/v1/messages/count_tokens"

_JSON = ("content-type", "application/json")
# Client headers that go to the provider (the Anthropic pass-through forwards them): beta
# features are switched on per request by the client. Never any auth header.
PASSED_HEADERS = ("anthropic-beta",)


class AnthropicShapedError(GatewayError):
    """A GatewayError whose body is Anthropic's error envelope."""

    @classmethod
    def of(cls, exc: GatewayError) -> AnthropicShapedError:
        return cls(exc.status, exc.message, exc.type, exc.code, exc.param, exc.headers)

    def body(self) -> bytes:
        return error_body(self)

    def sse_event(self) -> bytes:
        return error_event(self)


class AnthropicAPI:
    """Handlers for the Anthropic paths; `routes()` is merged into the gateway's route table."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def routes(self) -> dict[tuple[str, str], tuple[str, Any]]:
        return {
            ("POST", MESSAGES_PATH): (ClientAPI.MESSAGES, self.messages),
            ("POST", COUNT_TOKENS_PATH): (ClientAPI.COUNT_TOKENS, self.count_tokens),
        }

    def authenticate(self, rt: Runtime, scope: Any) -> KeyRecord:
        """The key record for `x-api-key` (or, failing that, the bearer token). Raises 401."""
        token = scope.headers.get("x-api-key")
        if not token:
            return self.gateway.authenticate(rt, scope)
        record = rt.keys.lookup(token.strip())
        if record is None:
            raise errors.unauthorized("Incorrect API key provided. Check the gateway key you were given.")
        return record

    async def messages(self, scope: Any, proto: Any, ex: Exchange) -> None:
        ex.passed_headers = passed_headers(scope)
        try:
            await self.gateway.proxy_api(ClientAPI.MESSAGES, scope, proto, ex, authenticate=self.authenticate)
        except GatewayError as exc:
            raise AnthropicShapedError.of(exc) from None

    async def count_tokens(self, scope: Any, proto: Any, ex: Exchange) -> None:
        """Anthropic providers count upstream; for every other provider the gateway counts
        locally with tiktoken over the request's text (an estimate, as the real tokenizer
        of a non-OpenAI model is not public), large texts off the event loop. Either way a
        count is one request against the key's limits (no tokens: nothing is generated), and
        a body over `server.max_count_tokens_bytes` is refused with 413."""
        ex.passed_headers = passed_headers(scope)
        try:
            await self._count_tokens(scope, proto, ex)
        except GatewayError as exc:
            raise AnthropicShapedError.of(exc) from None

    async def _count_tokens(self, scope: Any, proto: Any, ex: Exchange) -> None:
        gw, rt = self.gateway, self.gateway.runtime
        key = self.authenticate(rt, scope)
        ex.key_name = key.key.name
        # Counting is free to the client but not to the gateway: its bodies get a tighter cap.
        cap = min(rt.config.server.max_count_tokens_bytes, rt.config.server.max_body_bytes)
        body = await gw.read_body(rt, scope, proto, ex, cap)
        head = parse_head(body, rt.config.server.max_json_depth)
        ex.model = head.model
        route = rt.routes.resolve(head.model or "")
        if route is None:
            raise errors.model_not_found(head.model or "")
        if not key.may_use(route.name):
            raise errors.model_not_allowed(head.model or "")
        limiter = gw.limiter  # this request's: a reload may swap gw.limiter before it settles
        lease = None  # tollway.core.limits.policy.REQUEST_ONLY_APIS: a count is one request, no tokens
        if limiter is not None and limiter.enabled:
            lease = await limiter.reserve(key.key, route.name, ClientAPI.COUNT_TOKENS, head, body)
        headers = [("x-request-id", ex.request_id), *(lease.headers if lease is not None else ())]
        try:
            await self._count_or_forward(rt, ex, route, head, body, proto, headers)
        finally:
            if lease is not None and limiter is not None:  # one request; nothing was generated
                limiter.settle(lease, None, None)

    async def _count_or_forward(self, rt: Runtime, ex: Exchange, route: Route, head: RequestHead, body: bytes,
                                proto: Any, headers: list[tuple[str, str]]) -> None:
        """Anthropic providers count upstream; the rest are counted here, off the loop."""
        targets = route.fallback_order(rt.random())
        provider = rt.providers[targets[0].provider] if targets else None
        if provider is not None and provider.adapter(ClientAPI.COUNT_TOKENS) is not None:
            await self.gateway.proxy.forward(rt, ex, route, head, body, proto, headers)
            return
        model = head.model or ""
        tokens = await count_off_loop(len(body), model, partial(local_token_count, body, model))
        ex.status = 200
        proto.response_bytes(200, [_JSON, *headers], msgspec.json.encode({"input_tokens": tokens}))


def passed_headers(scope: Any) -> tuple[tuple[str, str], ...]:
    """The client's PASSED_HEADERS, repeated ones joined with commas as HTTP allows."""
    found = ((name, ",".join(scope.headers.get_all(name))) for name in PASSED_HEADERS)
    return tuple((name, value) for name, value in found if value)


def local_token_count(body: bytes, model: str) -> int:
    """Tokens of an Anthropic request's text (system, messages, tool definitions)."""
    from tollway.core.providers.messages.translate import decode_messages, to_chat_request  # noqa: PLC0415
    from tollway.core.accounting.tokens import count_tokens  # noqa: PLC0415 - tiktoken loads only when counting

    chat = to_chat_request(decode_messages(body), model)
    text = msgspec.json.encode(chat.messages).decode() + (msgspec.json.encode(chat.tools).decode() if chat.tools else "")
    return count_tokens(text, model)
