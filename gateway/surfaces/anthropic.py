"""The Anthropic Messages endpoints: `/anthropic/v1/messages` and `.../count_tokens`.

They let the official `anthropic` SDK (base_url = the gateway + "/anthropic") use every model
the gateway serves. What differs from the OpenAI paths is the `ANTHROPIC` surface value:
- the gateway key may come in `x-api-key`, as that SDK sends it, as well as `Authorization`;
- errors are Anthropic-shaped (`{"type":"error","error":{"type":..., "message":...}}`), since
  the SDK parses that shape; `AnthropicShapedError` re-dresses any `GatewayError` raised below;
- `anthropic-beta` passes to the provider.
"""
from __future__ import annotations

from functools import partial

import msgspec
from granian.rsgi import HTTPProtocol, Scope

from tollway.core.accounting.tokens import count_tokens
from tollway.core.errors import GatewayError
from tollway.core.providers.base import ClientAPI
from tollway.core.providers.messages.errors import error_body, error_event
from tollway.core.providers.messages.translate import decode_messages, to_chat_request
from tollway.core.providers.wire import openai as oa
from tollway.gateway.admission import Admitted, admit, forward
from tollway.gateway.exchange import Exchange
from tollway.gateway.serving import Serving
from tollway.gateway.surfaces import Endpoint, Surface
from tollway.gateway.token_count import count_off_loop

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


ANTHROPIC = Surface(
    "anthropic",
    key_headers=("x-api-key", "authorization"),  # the SDK sends x-api-key
    passed_headers=PASSED_HEADERS,
    dress=AnthropicShapedError.of,
)


class AnthropicAPI:
    """Handlers for the Anthropic paths; `routes()` is merged into the app's route table."""

    def __init__(self, serving: Serving) -> None:
        self.serving = serving

    def routes(self) -> dict[tuple[str, str], Endpoint]:
        messages = partial(forward, self.serving, ANTHROPIC, ClientAPI.MESSAGES)
        return {
            ("POST", MESSAGES_PATH): Endpoint(ClientAPI.MESSAGES, messages, ANTHROPIC),
            ("POST", COUNT_TOKENS_PATH): Endpoint(ClientAPI.COUNT_TOKENS, self.count_tokens, ANTHROPIC),
        }

    async def count_tokens(self, scope: Scope, proto: HTTPProtocol, ex: Exchange) -> None:
        """Anthropic providers count upstream; for every other provider the gateway counts
        locally with tiktoken over the request's text (an estimate, as the real tokenizer
        of a non-OpenAI model is not public), large texts off the event loop. Either way a
        count is one request against the key's limits (no tokens: nothing is generated), and
        a body over `server.max_count_tokens_bytes` is refused with 413."""
        server = self.serving.runtime.config.server
        # Counting is free to the client but not to the gateway: its bodies get a tighter cap.
        req = await admit(self.serving, ANTHROPIC, scope, proto, ex,
                          min(server.max_count_tokens_bytes, server.max_body_bytes))
        limiter = self.serving.limiter  # this request's: a reload may swap it before it settles
        lease = None  # tollway.core.limits.policy.REQUEST_ONLY_APIS: a count is one request, no tokens
        if limiter is not None and limiter.enabled:
            lease = await limiter.reserve(req.key.key, req.route.name, ClientAPI.COUNT_TOKENS, req.head, req.body)
        headers = [("x-request-id", ex.request_id), *(lease.headers if lease is not None else ())]
        try:
            await self._count_or_forward(req, ex, proto, headers)
        finally:
            if lease is not None and limiter is not None:  # one request; nothing was generated
                limiter.settle(lease, None, None)

    async def _count_or_forward(self, req: Admitted, ex: Exchange, proto: HTTPProtocol,
                                headers: list[tuple[str, str]]) -> None:
        """Anthropic providers count upstream; the rest are counted here, off the loop."""
        rt = req.runtime
        targets = req.route.fallback_order(rt.random())
        provider = rt.providers[targets[0].provider] if targets else None
        if provider is not None and provider.adapter(ClientAPI.COUNT_TOKENS) is not None:
            await self.serving.proxy.forward(rt, ex, req.route, req.head, req.body, proto, headers)
            return
        model = req.head.model or ""
        tokens = await count_off_loop(len(req.body), model, partial(local_token_count, req.body, model))
        ex.status = 200
        proto.response_bytes(200, [_JSON, *headers], msgspec.json.encode({"input_tokens": tokens}))


# What one image is counted as: Anthropic scales an image down until it costs about 1,600 tokens
# at most (its vision docs), so that is the most it can add. Its base64 is not text: counted as
# text, one screenshot came to some 100,000 tokens.
IMAGE_TOKENS = 1600


def local_token_count(body: bytes, model: str) -> int:
    """Tokens of an Anthropic request's text (system, messages, tool definitions), and
    `IMAGE_TOKENS` for each image. Its modules are imported with this one, not on first use: a
    request never imports code (registry.py). (tiktoken is imported by token_count anyway; an
    encoding still loads on its first count.)"""
    chat = to_chat_request(decode_messages(body), model)
    messages, images = _without_images(chat.messages)
    text = msgspec.json.encode(messages).decode() + (msgspec.json.encode(chat.tools).decode() if chat.tools else "")
    return count_tokens(text, model) + images * IMAGE_TOKENS


def _without_images(messages: list[oa.ChatMessage]) -> tuple[list[oa.ChatMessage], int]:
    """`messages` with their image parts left out, and how many there were."""
    out, images = [], 0
    for m in messages:
        if isinstance(m.content, list):
            kept = [p for p in m.content if p.type != "image_url"]
            images += len(m.content) - len(kept)
            # (text parts alone are one string, as the translation sends them: no parts' JSON to count)
            text_only = all(p.type == "text" for p in kept)
            m = msgspec.structs.replace(m, content=oa.join_texts(p.text for p in kept) if text_only else kept)
        out.append(m)
    return out, images
