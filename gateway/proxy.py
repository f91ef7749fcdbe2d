"""Forwarding one client request to its upstream and relaying the answer.

Theory of operation: the route gives targets in fallback order. Each attempt builds the
upstream call with the pair's adapter, sends it, and either relays the answer or fails. A
failure *before any byte reached the client* (connect error, timeout, 429, 5xx) moves on to
the next target; after the first byte of a stream has been sent, failures end the stream
with an SSE error event instead, since the client has already seen part of an answer.
"""
from __future__ import annotations

import time
from typing import Any

from core import errors
from core.errors import GatewayError
from core.providers.base import CallContext, UpstreamCall
from core.request import RequestHead
from core.routing import Route
from core.usage import Usage
from gateway.exchange import Exchange
from gateway.runtime import ProviderRuntime, Runtime
from gateway.upstream import UpstreamConnectError, UpstreamDisconnected, UpstreamError, UpstreamTimeout

try:  # granian raises this when the client has gone away mid-response
    from granian.rsgi import ProtocolClosed as ClientGone
except ImportError:  # pragma: no cover
    ClientGone = RuntimeError  # type: ignore[misc,assignment]

RETRYABLE_STATUS = frozenset((408, 429, 500, 502, 503, 504, 529))
SSE_HEADERS = [("content-type", "text/event-stream"), ("cache-control", "no-cache")]


class Proxy:
    """Sends requests upstream. One per gateway; holds no per-request state."""

    def __init__(self, metrics: Any) -> None:
        self.metrics = metrics

    async def forward(self, rt: Runtime, ex: Exchange, route: Route, head: RequestHead, body: bytes,
                      proto: Any, base_headers: list[tuple[str, str]]) -> None:
        """Serve the request from the first target that answers. Raises GatewayError."""
        last: GatewayError | None = None
        for target in route.fallback_order(rt.random()):
            provider = rt.providers[target.provider]
            upstream_model = route.upstream_model(target, head.model or route.name)
            ex.provider, ex.otel_provider, ex.upstream_model = provider.name, provider.otel_name, upstream_model
            try:
                await self._attempt(ex, provider, head, body, upstream_model, proto, base_headers)
                return
            except GatewayError as exc:
                if exc.status not in RETRYABLE_STATUS:
                    raise
                last = exc
        raise last or errors.internal("The route has no targets.")

    async def _attempt(self, ex: Exchange, provider: ProviderRuntime, head: RequestHead, body: bytes,
                       upstream_model: str, proto: Any, base_headers: list[tuple[str, str]]) -> None:
        adapter = provider.adapter(ex.api)
        if adapter is None:
            raise errors.bad_request(f"Model '{head.model}' is served by a provider that does not support this endpoint.")
        ctx = CallContext(ex.api, body, head, upstream_model, provider.config, time.time())
        call: UpstreamCall = adapter.build(ctx)
        call = await provider.sign(call)
        resp = await self._send(provider, call)
        try:
            if resp.status >= 400:
                err_body = await self._read(provider.name, resp)
                self.metrics.upstream_errors.labels(provider.name, f"http_{resp.status}").inc()
                raise adapter.error(ctx, resp.status, resp.headers, err_body)
            content_type = resp.header("content-type") or ""
            if call.stream and (content_type.startswith("text/event-stream") or "eventstream" in content_type):
                await self._relay_stream(ex, adapter, ctx, resp, proto, base_headers)
            else:
                await self._relay_body(ex, adapter, ctx, resp, proto, base_headers)
        finally:
            resp.close()

    async def _send(self, provider: ProviderRuntime, call: UpstreamCall) -> Any:
        timeouts = provider.config.timeouts
        try:
            return await provider.transport.request(call.method, call.url, call.headers, call.body, timeouts)
        except UpstreamTimeout as exc:
            self.metrics.upstream_errors.labels(provider.name, "timeout").inc()
            raise errors.upstream_timeout(provider.name, exc.phase) from None
        except UpstreamError:
            self.metrics.upstream_errors.labels(provider.name, "connect").inc()
            raise errors.upstream_unreachable(provider.name) from None

    async def _relay_body(self, ex: Exchange, adapter: Any, ctx: CallContext, resp: Any, proto: Any,
                          base_headers: list[tuple[str, str]]) -> None:
        provider_name = ctx.provider.name
        raw = await self._read(provider_name, resp)
        out, usage = adapter.response(ctx, resp.status, raw)
        ex.usage = usage
        ex.status = resp.status
        ex.first_byte = time.perf_counter()
        proto.response_bytes(resp.status, [("content-type", "application/json"), *base_headers], out)

    async def _read(self, provider_name: str, resp: Any) -> bytes:
        try:
            return await resp.read()
        except UpstreamTimeout as exc:
            raise errors.upstream_timeout(provider_name, exc.phase) from None
        except UpstreamError:
            raise errors.upstream_unreachable(provider_name) from None

    async def _relay_stream(self, ex: Exchange, adapter: Any, ctx: CallContext, resp: Any, proto: Any,
                            base_headers: list[tuple[str, str]]) -> None:
        translator = adapter.stream(ctx)
        ex.stream = True
        chunks = resp.__aiter__()
        first = await self._first_chunk(ctx, chunks, translator)  # failures here can still fall back
        ex.status = 200
        transport = proto.response_stream(200, [*SSE_HEADERS, *base_headers])
        try:
            await self._pump(ex, transport, first, chunks, translator)
        except ClientGone:
            ex.error_type = "client_closed"
        finally:
            ex.usage = translator.usage or self._counted_usage(ctx, translator)

    async def _first_chunk(self, ctx: CallContext, chunks: Any, translator: Any) -> bytes:
        """Client bytes of the stream's first upstream chunks, read before committing to 200."""
        out = b""
        try:
            while not out:
                out = translator.feed(await chunks.__anext__())
        except StopAsyncIteration:
            out = translator.flush()
        except UpstreamTimeout as exc:
            raise errors.upstream_timeout(ctx.provider.name, exc.phase) from None
        except UpstreamError:
            raise errors.upstream_unreachable(ctx.provider.name) from None
        return out

    async def _pump(self, ex: Exchange, transport: Any, first: bytes, chunks: Any, translator: Any) -> None:
        await transport.send_bytes(first)
        ex.first_byte = time.perf_counter()
        try:
            async for chunk in chunks:
                out = translator.feed(chunk)
                if out:
                    await transport.send_bytes(out)
            tail = translator.flush()
            if tail:
                await transport.send_bytes(tail)
        except (UpstreamTimeout, UpstreamDisconnected, UpstreamConnectError, GatewayError) as exc:
            err = exc if isinstance(exc, GatewayError) else _mid_stream_error(ex, exc)
            ex.error_type = err.code or "stream_error"
            await transport.send_bytes(err.sse_event())

    def _counted_usage(self, ctx: CallContext, translator: Any) -> Usage:
        """Usage when the upstream reported none: tiktoken over what was actually streamed."""
        from core.tokens import count_tokens, estimate_prompt_tokens  # tiktoken loads only if needed

        completion = count_tokens(translator.streamed_text(), ctx.upstream_model)
        prompt = estimate_prompt_tokens(ctx.body)
        return Usage(prompt, completion, prompt + completion)


def _mid_stream_error(ex: Exchange, exc: Exception) -> GatewayError:
    provider = ex.provider or "upstream"
    if isinstance(exc, UpstreamTimeout):
        return errors.upstream_timeout(provider, exc.phase)
    return GatewayError(502, f"The upstream provider '{provider}' closed the stream before it finished.",
                        "api_error", "upstream_disconnected")
