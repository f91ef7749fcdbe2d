"""Forwarding one client request to its upstream and relaying the answer.

Theory of operation: the route gives targets in fallback order, healthy ones first, and
`core.retry.AttemptPlan` walks them within the attempt budget and deadline (backing off, and
honouring retry-after, when it comes round to a target again). Each attempt takes an endpoint
from the provider's endpoint source (its one base_url, or a replica picked by load), builds
the upstream call with the pair's adapter, sends it, and either relays the answer or fails.
A failure *before any byte reached the client* (connect error, timeout, 429, 5xx) moves on
(a target that timed out waiting for its answer is not tried again);
a broken connection to one replica of a pool is retried on another replica first, free of
the budget. After the first byte of a stream has been sent, failures end the stream with an
SSE error event instead, since the client has already seen part of an answer. Every outcome
feeds the breakers (`core.health`) of the target and of the endpoint.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from core import errors
from core.config import Provider, Target
from core.errors import GatewayError, UpstreamTimedOut
from core.providers.base import CallContext, UpstreamCall
from core.request import RequestHead
from core.retry import AttemptPlan, retry_after
from core.routing import Route
from core.usage import Usage
from gateway.drain import shutting_down
from gateway.exchange import Exchange
from gateway.runtime import ProviderRuntime, Runtime
from gateway.tracing import Attempt
from gateway.upstream import UpstreamConnectError, UpstreamDisconnected, UpstreamError, UpstreamTimeout

try:  # granian raises this when the client has gone away mid-response
    from granian.rsgi import ProtocolClosed as ClientGone
except ImportError:  # pragma: no cover
    ClientGone = RuntimeError  # type: ignore[misc,assignment]

log = logging.getLogger("tollway")
RETRYABLE_STATUS = frozenset((408, 429, 500, 502, 503, 504, 529))
_NOT_A_FAULT = frozenset((429,))  # the upstream is busy, not broken: retry, but do not eject
_CONNECT_FAILED = "upstream_unreachable"  # nothing was exchanged: another replica is safe to try
SSE_HEADERS = [("content-type", "text/event-stream"), ("cache-control", "no-cache")]


class Proxy:
    """Sends requests upstream. One per gateway; holds no per-request state."""

    def __init__(self, metrics: Any) -> None:
        self.metrics = metrics

    async def forward(self, rt: Runtime, ex: Exchange, route: Route, head: RequestHead, body: bytes,
                      proto: Any, base_headers: list[tuple[str, str]]) -> None:
        """Serve the request from the first target that answers. Raises GatewayError."""
        now = time.monotonic()
        order = route.attempt_order(rt.random(), lambda name: rt.health.available(name, now))
        plan = AttemptPlan(order, rt.config.routing.retry, now)
        broken: set[str] = set()  # endpoints that refused a connection during this request
        last: GatewayError | None = None
        while (step := plan.next(time.monotonic(), rt.random())) is not None:
            target, wait = step
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                await self._try_target(rt, ex, route, target, head, body, proto, base_headers, broken)
                return
            except GatewayError as exc:
                if exc.status not in RETRYABLE_STATUS or ex.first_byte is not None:
                    raise
                last = exc
                spare = exc.code == _CONNECT_FAILED and len(broken) < rt.providers[target.provider].endpoints.size
                plan.failed(retry_after(exc.headers, time.time()), same_target=spare, timed_out=_waited_out(exc))
        raise last or errors.internal("The route has no targets.")

    async def _try_target(self, rt: Runtime, ex: Exchange, route: Route, target: Target, head: RequestHead,
                          body: bytes, proto: Any, base_headers: list[tuple[str, str]], broken: set[str]) -> None:
        """One attempt on one endpoint of `target`, with its outcome fed to the breakers."""
        provider = rt.providers[target.provider]
        upstream_model = route.upstream_model(target, head.model or route.name)
        ex.provider, ex.otel_provider, ex.upstream_model = provider.name, provider.otel_name, upstream_model
        now = time.monotonic()
        endpoint = provider.endpoints.acquire(body, broken, now, rt.random())
        member = rt.health.member(provider.name)
        member.begin(now)
        trace = ex.trace
        attempt = trace.attempt() if trace is not None else None  # a CLIENT span per try
        failed: bool | None = None
        try:
            await self._attempt(ex, provider, head, body, upstream_model, proto, base_headers, endpoint.provider, attempt)
            failed = False
        except GatewayError as exc:
            failed = _upstream_fault(exc)
            if exc.code == _CONNECT_FAILED:
                broken.add(endpoint.name)
            if attempt is not None:
                attempt.error = exc.code or exc.type
            raise
        finally:
            self._record(provider, endpoint, member, failed)
            if attempt is not None:
                trace.end_attempt(attempt, ex, provider, upstream_model)  # type: ignore[union-attr]

    def _record(self, provider: ProviderRuntime, endpoint: Any, member: Any, failed: bool | None) -> None:
        now = time.monotonic()
        provider.endpoints.release(endpoint, failed, now)
        if failed is False:
            member.success()
        elif failed and member.failure(now):
            log.warning("provider %s ejected for %.0fs after repeated failures", provider.name, member.ejected_until - now)

    async def _attempt(self, ex: Exchange, provider: ProviderRuntime, head: RequestHead, body: bytes,
                       upstream_model: str, proto: Any, base_headers: list[tuple[str, str]],
                       endpoint: Provider | None = None, attempt: Attempt | None = None) -> None:
        adapter = provider.adapter(ex.api)
        if adapter is None:
            raise errors.bad_request(f"Model '{head.model}' is served by a provider that does not support this endpoint.")
        ctx = CallContext(ex.api, body, head, upstream_model, endpoint or provider.config, time.time(),
                          ex.passed_headers)
        call: UpstreamCall = adapter.build(ctx)
        if provider.credential is not None:  # most providers have static keys: no await needed
            call = await provider.sign(call)
        if attempt is None:
            resp = await self._send(provider, call)
        else:
            attempt.url = call.url
            resp = await self._send(provider, call, attempt.head)
            attempt.status = resp.status
        try:
            if resp.status >= 400:
                err_body = await self._read(provider.name, resp)
                self.metrics.upstream_errors.labels(provider.name, f"http_{resp.status}").inc()
                raise adapter.error(ctx, resp.status, resp.headers, err_body)
            if call.stream and _is_stream(resp.header("content-type") or ""):
                await self._relay_stream(ex, adapter, ctx, resp, proto, base_headers)
            else:
                await self._relay_body(ex, adapter, ctx, resp, proto, base_headers)
        finally:
            resp.close()

    async def _send(self, provider: ProviderRuntime, call: UpstreamCall, extra_head: bytes = b"") -> Any:
        timeouts = provider.config.timeouts
        try:
            return await provider.transport.request(call.method, call.url, call.headers, call.body, timeouts, extra_head)
        except UpstreamError as exc:
            kind = "timeout" if isinstance(exc, UpstreamTimeout) else "connect"
            self.metrics.upstream_errors.labels(provider.name, kind).inc()
            raise _client_error(provider.name, exc) from None

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
        except UpstreamError as exc:
            raise _client_error(provider_name, exc) from None

    async def _relay_stream(self, ex: Exchange, adapter: Any, ctx: CallContext, resp: Any, proto: Any,
                            base_headers: list[tuple[str, str]]) -> None:
        translator = adapter.stream(ctx)
        ex.stream = True
        chunks = resp.__aiter__()
        first = await self._first_chunk(ctx, chunks, translator)  # failures here can still fall back
        ex.status = 200
        out = ClientStream(proto.response_stream(200, [*SSE_HEADERS, *base_headers]))
        try:
            await self._pump(ex, out, first, chunks, translator)
        except ClientGone:
            ex.error_type = "client_closed"
        finally:
            out.close()
            ex.usage = translator.usage or self._counted_usage(ctx, translator)

    async def _first_chunk(self, ctx: CallContext, chunks: Any, translator: Any) -> bytes:
        """Client bytes of the stream's first upstream chunks, read before committing to 200."""
        out = b""
        try:
            while not out:
                out = translator.feed(await chunks.__anext__())
        except StopAsyncIteration:
            out = translator.flush()
        except UpstreamError as exc:
            raise _client_error(ctx.provider.name, exc) from None
        return out

    async def _pump(self, ex: Exchange, transport: ClientStream, first: bytes, chunks: Any, translator: Any) -> None:
        await transport.send(first)
        ex.first_byte = time.perf_counter()
        try:
            async for chunk in chunks:
                out = translator.feed(chunk)
                if out:
                    await transport.send(out)
            tail = translator.flush()
            if tail:
                await transport.send(tail)
        except (UpstreamTimeout, UpstreamDisconnected, UpstreamConnectError, GatewayError) as exc:
            err = exc if isinstance(exc, GatewayError) else _mid_stream_error(ex, exc)
            ex.error_type = err.code or "stream_error"
            await transport.send(_error_event(translator, err))
        except asyncio.CancelledError:  # cut off by the drain deadline: say so before the stream ends
            ex.error_type = "gateway_shutting_down"
            await transport.send(_error_event(translator, shutting_down()))
            raise

    def _counted_usage(self, ctx: CallContext, translator: Any) -> Usage:
        """Usage when the upstream reported none: tiktoken over what was actually streamed."""
        from core.tokens import count_tokens, estimate_prompt_tokens  # tiktoken loads only if needed

        completion = count_tokens(translator.streamed_text(), ctx.upstream_model)
        prompt = estimate_prompt_tokens(ctx.body)
        return Usage(prompt, completion, prompt + completion)


def _is_stream(content_type: str) -> bool:
    return content_type.startswith("text/event-stream") or "eventstream" in content_type


def _waited_out(exc: GatewayError) -> bool:
    """True if the attempt timed out waiting for an answer (not for a connection): trying the
    same target again would likely cost the client another whole timeout."""
    return isinstance(exc, UpstreamTimedOut) and exc.phase != "connect"


def _upstream_fault(exc: GatewayError) -> bool | None:
    """True if the error says the upstream is broken; None if it says nothing about it
    (the client's mistake, or a busy upstream's 429)."""
    return True if exc.status in RETRYABLE_STATUS and exc.status not in _NOT_A_FAULT else None


class ClientStream:
    """The client's side of a streamed response.

    granian ends the HTTP response only when its stream transport object is freed. A frame
    kept alive by an exception's traceback (a reference cycle, freed only when the GC runs)
    would hold the response open, and the client would hang after the last event. So the
    transport lives only here, and `close()` drops it as soon as the relay is over.
    """

    __slots__ = ("_transport",)

    def __init__(self, transport: Any) -> None:
        self._transport = transport

    async def send(self, data: bytes) -> None:
        await self._transport.send_bytes(data)

    def close(self) -> None:
        self._transport = None


def _error_event(translator: Any, err: GatewayError) -> bytes:
    """The stream's closing error event, in the client API's shape when its translator has one."""
    render = getattr(translator, "error_event", None)
    return render(err) if render is not None else err.sse_event()


def _client_error(provider: str, exc: UpstreamError) -> GatewayError:
    """The client's error for an upstream failure before any byte reached the client:
    504 for a timeout (naming its phase), 502 for anything else."""
    if isinstance(exc, UpstreamTimeout):
        return errors.upstream_timeout(provider, exc.phase)
    return errors.upstream_unreachable(provider)


def _mid_stream_error(ex: Exchange, exc: Exception) -> GatewayError:
    provider = ex.provider or "upstream"
    if isinstance(exc, UpstreamTimeout):
        return errors.upstream_timeout(provider, exc.phase)
    return GatewayError(502, f"The upstream provider '{provider}' closed the stream before it finished.",
                        "api_error", "upstream_disconnected")
