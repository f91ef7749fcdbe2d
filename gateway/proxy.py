"""Forwarding one client request to its upstream and relaying the answer.

Theory of operation: the route gives targets in fallback order, healthy ones first, and
`tollway.core.routing.retry.AttemptPlan` walks them within the attempt budget and deadline (backing off, and
honouring retry-after, when it comes round to a target again). Each attempt takes an endpoint
from the provider's endpoint source (its one base_url, or a replica picked by load), builds
the upstream call with the pair's adapter, sends it, and either relays the answer or fails.
A failure *before any byte reached the client* (connect error, timeout, 429, 5xx) moves on
(a target that timed out waiting for its answer is not tried again; an answer too large is
not tried again at all); a connection that could not be made to one replica of a pool (the
request never sent) is retried on another replica first, free of the budget. After the first
byte of a stream has been sent, failures end the stream with an SSE error event instead, since
the client has already seen part of an answer. Every outcome feeds the breakers
(`tollway.core.routing.health`) of the target and of the endpoint, the upstream's failures
after the first byte included.

The upstream is not trusted. Every error built from its answer is scrubbed of credentials
(`tollway.core.security.secrets`) before anything sees it; successful bodies and stream chunks are checked for
the provider's own secrets by value. Its bodies are read up to `server.max_upstream_body_bytes`
(error bodies only as far as their message needs), and anything the adapter cannot read (not
JSON, a content-encoding the gateway did not ask for, an oversized SSE event) or a redirect is a 502 before
the first byte, or a closing SSE error event after it.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from typing import TYPE_CHECKING

import msgspec
from granian.rsgi import HTTPProtocol, Scope

from tollway.core import errors
from tollway.core.accounting.completion_text import completion_text
from tollway.core.config import Provider, Server, Target
from tollway.core.errors import GatewayError, PluginError, UpstreamGaveUp, UpstreamTimedOut, UpstreamUnreached
from tollway.core.kernels import SSEError, first_needle
from tollway.core.providers.base import Adapter, CallContext, StreamTranslator, UpstreamCall
from tollway.core.request import RequestHead
from tollway.core.routing.health import MemberHealth
from tollway.core.routing.retry import AttemptPlan, retry_after
from tollway.core.routing.table import Route
from tollway.core.security.secrets import KnownSecrets, scrubbed
from tollway.ext.sse import DEFAULT_MAX_EVENT_BYTES
from tollway.gateway.downstream.backpressure import WATCH_FROM, ClientFlow, ClientStalled
from tollway.gateway.downstream.watchdog import ANSWERED
from tollway.gateway.exchange import Exchange
from tollway.gateway.media_relay import relay_media
from tollway.gateway.runtime import ProviderRuntime, Runtime
from tollway.gateway.telemetry.metrics import Metrics
from tollway.gateway.telemetry.tracing import Attempt
from tollway.gateway.token_count import counted_usage, estimated_usage
from tollway.gateway.upstream import UpstreamAnswer
from tollway.gateway.upstream.client import (
    UpstreamError,
    UpstreamTimeout,
    UpstreamTooLarge,
    UpstreamUnreachable,
)
from tollway.gateway.upstream.errors import UpstreamMalformedHead
from tollway.gateway.upstream.pool import Endpoint

if TYPE_CHECKING:
    from granian._granian import RSGIHTTPStreamTransport as HTTPStreamTransport

try:  # granian raises this when the client has gone away mid-response
    from granian.rsgi import ProtocolClosed as ClientGone
except ImportError:  # pragma: no cover
    ClientGone = RuntimeError  # type: ignore[misc,assignment]

log = logging.getLogger("tollway")
RETRYABLE_STATUS = frozenset((408, 429, 500, 502, 503, 504, 529))
_NONE_BROKEN: frozenset[str] = frozenset()  # a provider none of whose endpoints failed this request
_NOT_A_FAULT = frozenset((429,))  # the upstream is busy, not broken: retry, but do not eject
# Answers the same request gets again on any attempt: an answer (or stream event) over the
# gateway's size limit is as big as the request asked for. A retry would cost another whole,
# billed generation for the same 502, and one client's requests would eject the provider for
# every other client: not retried, and not held against the provider's health.
_SAME_ANSWER = frozenset(("upstream_too_large",))
# What a relayed answer says about the upstream's health, once its first byte reached the
# client (the breakers' `failed`): False it came whole; True the upstream broke it off (a
# timeout, a disconnect, bytes that cannot be read: the client was told in the stream, and the
# breakers count it as they would before the first byte); None it says nothing (the client left
# or stalled, a limit or a guardrail stopped it, an event too large).
Health = bool | None
SSE_HEADERS = [("content-type", "text/event-stream"), ("cache-control", "no-cache")]
ERROR_BODY_BYTES = 64 * 1024  # of an upstream error body: its message is all the client needs
# What an adapter raises when the upstream's bytes are not what its schema promised. Two are
# not msgspec's or a shape's: RecursionError is msgspec's answer to JSON nested past its depth
# limit (a tool call's input, an unknown field), OverflowError a number no wire type can hold.
# Both are the upstream's malformed answer (a retryable 502), never the gateway's 500.
_UNREADABLE = (msgspec.MsgspecError, ValueError, KeyError, TypeError, IndexError, AttributeError, RecursionError,
               OverflowError)


class Proxy:
    """Sends requests upstream. One per gateway; holds no per-request state."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    async def forward(self, rt: Runtime, ex: Exchange, route: Route, head: RequestHead, body: bytes,
                      proto: HTTPProtocol, base_headers: list[tuple[str, str]]) -> None:
        """Serve the request from the first target that answers. Raises GatewayError."""
        now = time.monotonic()
        order = route.single or route.attempt_order(rt.random(), lambda name: rt.health.available(name, now))
        plan = AttemptPlan(order, rt.config.routing.retry, now)
        # per provider, its endpoints that could not be reached, or dropped the request, during it
        # (one set for all would count a fallback's dead primary against a pool's replicas)
        broken: dict[str, set[str]] = {}
        last: GatewayError | None = None
        while (step := plan.next(time.monotonic(), rt.random())) is not None:
            target, wait = step
            if wait > 0:  # backoff the upstream asked for or failed into: not the gateway's time
                await asyncio.sleep(wait)
                ex.upstream_wait += wait
            try:
                await self._try_target(rt, ex, route, target, head, body, proto, base_headers, broken)
                return
            except GatewayError as exc:
                if (exc.status not in RETRYABLE_STATUS or ex.first_byte is not None or isinstance(exc, PluginError)
                        or exc.code in _SAME_ANSWER):
                    raise
                last = exc
                # Only a request that was never sent (no connection) is free to try on another
                # replica: one that reached the upstream may have cost a generation already.
                spare = (isinstance(exc, UpstreamUnreached)
                         and len(broken.get(target.provider, ())) < rt.providers[target.provider].endpoints.size)
                plan.failed(retry_after(exc.headers, time.time()), same_target=spare, timed_out=_waited_out(exc))
        raise last or errors.internal("The route has no targets.")

    async def _try_target(self, rt: Runtime, ex: Exchange, route: Route, target: Target, head: RequestHead,
                          body: bytes, proto: HTTPProtocol, base_headers: list[tuple[str, str]],
                          broken: dict[str, set[str]]) -> None:
        """One attempt on one endpoint of `target`, with its outcome fed to the breakers."""
        ex.attempts += 1
        provider = rt.providers[target.provider]
        upstream_model = route.upstream_model(target, head.model or route.name)
        # (a `match:` route sends the client's own string: a held credential pasted there must not
        # reach the ledger, logs or spans; one length check for the usual short name)
        ex.provider, ex.otel_provider, ex.upstream_model = provider.name, provider.otel_name, rt.secrets.mask(upstream_model)
        ex.provider_schema = provider.config.schema  # (its answer's wire format: what the guardrails may change)
        now = time.monotonic()
        endpoint = provider.endpoints.acquire(body, broken.get(provider.name, _NONE_BROKEN), now, rt.random())
        member = rt.health.member(provider.name)
        member.begin(now)
        trace = ex.trace
        attempt = trace.attempt() if trace is not None else None  # a CLIENT span per try
        failed: bool | None = None
        try:
            failed = await self._attempt(ex, provider, head, body, upstream_model, proto, base_headers,
                                         rt.config.server, endpoint.provider, attempt)
            if failed and attempt is not None:  # (the stream's error event said what)
                attempt.error = ex.error_type
        except GatewayError as exc:
            scrubbed(exc, provider.secrets, time.time())  # whatever the upstream put in it, before anyone reads it
            failed = _upstream_fault(exc)
            if isinstance(exc, UpstreamUnreached) or exc.code == "upstream_disconnected":
                broken.setdefault(provider.name, set()).add(endpoint.name)  # the next attempt goes to another replica if any
            if attempt is not None:
                attempt.error = exc.code or exc.type
            raise
        except asyncio.CancelledError:
            # The client left (or the drain ended it) while the upstream had the prompt: it is
            # charged, as the provider bills it. (Not an upload's: its bytes are audio or an image,
            # no bound of any prompt; a transcription is billed by the seconds it never reported.)
            if ex.usage is None and ex.form is None:
                ex.usage = estimated_usage(body, "", upstream_model)[0]
            raise
        finally:
            self._record(provider, endpoint, member, failed)
            if attempt is not None:
                # the model as masked (a `match:` route sends the client's name, which may hold a key)
                trace.end_attempt(attempt, ex, provider, ex.upstream_model)  # type: ignore[union-attr]

    def _record(self, provider: ProviderRuntime, endpoint: Endpoint, member: MemberHealth, failed: bool | None) -> None:
        now = time.monotonic()
        provider.endpoints.release(endpoint, failed, now)
        if failed is False:
            member.success()
        elif failed is None:  # cancelled, or an answer that says nothing about the provider
            member.abandon()
        elif member.failure(now):
            log.warning("provider %s ejected for %.0fs after repeated failures", provider.name, member.ejected_until - now)

    async def _attempt(self, ex: Exchange, provider: ProviderRuntime, head: RequestHead, body: bytes,
                       upstream_model: str, proto: HTTPProtocol, base_headers: list[tuple[str, str]], server: Server,
                       endpoint: Provider | None = None, attempt: Attempt | None = None) -> Health:
        """Relay one upstream call's answer. Raises GatewayError for a failure before the first
        byte; returns what the answer, once started, says about the upstream (`Health`)."""
        adapter = provider.adapter(ex.api)
        if adapter is None:
            raise errors.bad_request(f"Model '{errors.echoed(head.model or '')}' is served by a provider that does not "
                                     "support this endpoint.")
        ctx = CallContext(ex.api, body, head, upstream_model, endpoint or provider.config, time.time(),
                          ex.passed_headers, ex.form)
        call: UpstreamCall = adapter.build(ctx)
        if provider.credential is not None:  # most providers have static keys: no await needed
            call = await provider.sign(call)
        if attempt is None:
            resp = await self._send(ex, provider, call)
        else:
            attempt.url = call.url
            resp = await self._send(ex, provider, call, attempt.head)
            attempt.status = resp.status
        try:
            if resp.status >= 400:
                if resp.status == 401 and provider.credential is not None:
                    provider.credential.rejected(call)  # a fetched token revoked early: fetch anew
                raise await self._upstream_error(provider, adapter, ctx, resp)
            if not 200 <= resp.status < 300:
                # A redirect (or an interim 1xx) is no answer: relayed, it would hand the client
                # the upstream's status and location; followed, the request and its credential
                # would go wherever the upstream says. Neither: a 502 like any unreadable answer.
                raise errors.upstream_malformed(provider.name, f"an HTTP {resp.status} answer")
            if resp.encoded:  # the gateway asked for identity: a coded body cannot be read or relayed
                raise errors.upstream_malformed(provider.name, "a body in a content-encoding it did not ask for")
            if call.media:  # audio, transcripts, media events: relayed as the bytes they are
                return await relay_media(ex, adapter.stream(ctx), resp, proto, base_headers, provider.name,
                                         provider.secrets, server)
            if call.stream and _is_stream(resp.header("content-type") or ""):
                return await self._relay_stream(ex, adapter, ctx, resp, proto, base_headers, provider, server)
            await self._relay_body(ex, adapter, ctx, resp, proto, base_headers, provider, server)
            return False
        finally:
            resp.close()
            ex.upstream_wait += resp.waited

    async def _upstream_error(self, provider: ProviderRuntime, adapter: Adapter, ctx: CallContext,
                              resp: UpstreamAnswer) -> GatewayError:
        """The client's error for an upstream 4xx/5xx, from at most ERROR_BODY_BYTES of its body."""
        self.metrics.upstream_errors.labels(provider.name, f"http_{resp.status}").inc()
        try:
            err_body = await resp.read_prefix(ERROR_BODY_BYTES)
        except UpstreamError as exc:
            raise _client_error(provider.name, exc) from None
        try:
            return adapter.error(ctx, resp.status, resp.headers, err_body)
        except _UNREADABLE:  # the error's body is garbage: its status still says what happened
            return errors.upstream_unreadable_error(provider.name, resp.status)

    async def _send(self, ex: Exchange, provider: ProviderRuntime, call: UpstreamCall,
                    extra_head: bytes = b"") -> UpstreamAnswer:
        timeouts = provider.config.timeouts
        try:
            return await provider.transport.request(call.method, call.url, call.headers, call.body, timeouts, extra_head)
        except UpstreamError as exc:
            ex.upstream_wait += exc.waited
            kind = "timeout" if isinstance(exc, UpstreamTimeout) else "connect"
            self.metrics.upstream_errors.labels(provider.name, kind).inc()
            raise _client_error(provider.name, exc) from None

    async def _relay_body(self, ex: Exchange, adapter: Adapter, ctx: CallContext, resp: UpstreamAnswer, proto: HTTPProtocol,
                          base_headers: list[tuple[str, str]], provider: ProviderRuntime, server: Server) -> None:
        try:  # (no coroutine of its own: every non-stream answer is read here)
            raw = await resp.read(server.max_upstream_body_bytes)
        except UpstreamError as exc:
            raise _client_error(provider.name, exc) from None
        try:
            out, usage = adapter.response(ctx, resp.status, raw)
        except _UNREADABLE:
            _log_unreadable(provider.name)
            raise errors.upstream_malformed(provider.name) from None
        if first_needle(out, provider.secrets.needles) >= 0:  # a known secret, or an error object
            out = provider.secrets.redact(out)
        text = completion_text(ctx.api, out) if usage is None and resp.status < 300 else None
        # Unreported usage is counted as streams' is: inline when that is cheap, so the request
        # is charged as soon as it is answered; else estimated now and counted off the loop after.
        ex.usage, exact = (usage, True) if text is None else estimated_usage(ctx.body, text, ctx.upstream_model)
        if ex.on_answer:  # the pipeline's hooks on a non-stream answer (plugins' on_response)
            for hook in ex.on_answer:
                out = await hook(ex, resp.status, out)
        ex.status = resp.status
        ex.first_byte = time.perf_counter()
        headers = [("content-type", "application/json"), *base_headers]
        if exact and ex.prices is not None and resp.status < 300:  # what this answer cost, when the upstream said
            ex.cost_usd, ex.priced = ex.prices.cost(ex.route, ctx.upstream_model, ex.usage), ex.usage
            if ex.cost_usd is not None:
                headers.append(("x-tollway-cost-usd", f"{ex.cost_usd:.10f}".rstrip("0").rstrip(".") or "0"))
        proto.response_bytes(resp.status, headers, out)
        ex.phase = ANSWERED
        if not exact:
            ex.usage = await counted_usage(ctx.body, text or "", ctx.upstream_model)

    async def _relay_stream(self, ex: Exchange, adapter: Adapter, ctx: CallContext, resp: UpstreamAnswer, proto: HTTPProtocol,
                            base_headers: list[tuple[str, str]], provider: ProviderRuntime, server: Server) -> Health:
        translator = adapter.stream(ctx)
        ex.stream = True
        feed = _Feed(translator, provider.name, provider.secrets, server.max_upstream_body_bytes)
        chunks = resp.__aiter__()
        first = await self._first_chunk(ctx, chunks, feed)  # failures here can still fall back
        ex.status = 200
        out = ClientStream(proto.response_stream(200, [*SSE_HEADERS, *base_headers]), ex.scope,
                           server.client_idle_timeout)
        # The head went out with its 200, once the first event was in hand: the answer is under way
        # (as in the media relay), also while the per-chunk hooks (a plugin's await) hold that
        # event, and a client that leaves now got a 200, not a 499.
        ex.first_byte = time.perf_counter()
        failed: Health = None  # (a client gone or stalled says nothing about the upstream)
        try:
            failed = await self._pump(ex, out, first, chunks, feed)
        except ClientGone:
            ex.error_type = "client_closed"
        except ClientStalled:
            ex.error_type = ex.cancel_reason = "client_stalled"  # dropped by us: not the watchdog's to cancel
            log.info("dropped a client that read nothing for %gs (request %s)", server.client_idle_timeout,
                     ex.request_id)
        except BaseException:  # cancelled (drain, client gone): no await now, so count without the pool
            out.close()
            ex.usage = translator.usage or estimated_usage(ctx.body, translator.streamed_text(), ctx.upstream_model)[0]
            raise
        out.close()
        resp.close()  # before counting: a stream cut short (a limit, a guardrail) stops the upstream's work now
        ex.phase = ANSWERED
        if translator.usage is not None:
            ex.usage = translator.usage
            return failed
        text = translator.streamed_text()
        ex.usage, exact = estimated_usage(ctx.body, text, ctx.upstream_model)  # charged if a drain cuts the count
        if not exact:
            ex.usage = await counted_usage(ctx.body, text, ctx.upstream_model)
        return failed

    async def _first_chunk(self, ctx: CallContext, chunks: AsyncIterator[bytes], feed: _Feed) -> bytes:
        """Client bytes of the stream's first upstream chunks, read before committing to 200."""
        out = b""
        try:
            while not out:
                out = feed(await chunks.__anext__())
        except StopAsyncIteration:
            out = feed.flush()
        except UpstreamError as exc:
            raise _client_error(ctx.provider.name, exc) from None
        return out

    async def _pump(self, ex: Exchange, transport: ClientStream, first: bytes, chunks: AsyncIterator[bytes],
                    feed: _Feed) -> Health:
        """Relay the rest of the stream; returns what it says about the upstream (`Health`). The
        loop is `_Feed.__call__` written out with locals: it runs per chunk, and a call per
        chunk costs more than the checks in it. Past WATCH_FROM
        bytes sent, each chunk first waits for a client that is behind (tollway.gateway.downstream.backpressure).
        The pipeline's per-chunk hooks (`ex.on_chunk`, usually none) see each chunk last."""
        send, step, needles, left, sent = transport.send, feed.translator.feed, feed.needles, feed.left, 0
        hooks = ex.on_chunk or ex.on_chunk_async  # (either: every chunk goes through them)
        on_chunk, on_chunk_async = ex.on_chunk, ex.on_chunk_async
        try:
            if hooks:
                first = await _hooked(ex, first)
            await send(first)
            try:
                async for chunk in chunks:
                    left -= len(chunk)
                    if left < 0:
                        raise feed.too_large()
                    out: bytes = step(chunk)
                    if out:
                        if first_needle(out, needles) >= 0 or not out.isascii():
                            out = feed.cleaned(out)
                        if hooks:  # `_hooked` written out: a coroutine per chunk costs more than its loops
                            try:
                                for hook in on_chunk:
                                    out = hook(ex, out)
                                for ahook in on_chunk_async:
                                    if not out:
                                        break
                                    out = await ahook(ex, out)
                            except Exception as exc:  # noqa: BLE001 - sorted by _stopped
                                raise _stopped(ex, exc) from None
                            if not out:
                                continue
                        sent += len(out)
                        if sent > WATCH_FROM:
                            await transport.paced(sent)
                        await send(out)
            except _UNREADABLE as exc:  # SSEError is one (a ValueError)
                raise feed.unreadable(exc) from None
            tail = feed.flush()
            if tail and hooks:
                tail = await _hooked(ex, tail)
            if tail:
                await send(tail)
        except _Stopped as stop:  # a hook's refusal (a guardrail, a limit): the gateway's, not the upstream's
            err = scrubbed(stop.error, feed.secrets, time.time())
            ex.error_type = err.code or "stream_error"
            await transport.send(_error_event(feed.translator, err))
            return None
        except (UpstreamError, GatewayError) as exc:  # the upstream broke off (or sent what cannot be read)
            err = scrubbed(exc, feed.secrets, time.time()) if isinstance(exc, GatewayError) else _mid_stream_error(ex, exc)
            ex.error_type = err.code or "stream_error"
            await transport.send(_error_event(feed.translator, err))
            return _upstream_fault(err)
        except asyncio.CancelledError:
            if ex.cancel_reason is None:  # cut off by the drain deadline: say so before the stream ends
                ex.error_type = "gateway_shutting_down"
                await transport.send(_error_event(feed.translator, errors.shutting_down()))
            raise
        return False


class _Feed:
    """An upstream stream through its translator, with the relay's guards: the stream's size
    cap, a translator that cannot read the bytes (502 upstream_malformed, or upstream_too_large
    for an oversized event), and the gateway's secrets masked in what goes to the client.
    `__call__` is one chunk; Proxy._pump writes the same steps out for the rest of a stream."""

    __slots__ = ("translator", "provider", "secrets", "needles", "left", "_limit")

    def __init__(self, translator: StreamTranslator, provider: str, secrets: KnownSecrets, limit: int) -> None:
        self.translator, self.provider, self.secrets = translator, provider, secrets
        self.needles = secrets.needles  # this request's snapshot: its signer has added what it fetched
        self.left = self._limit = limit

    def __call__(self, chunk: bytes) -> bytes:
        self.left -= len(chunk)
        if self.left < 0:
            raise self.too_large()
        try:
            out: bytes = self.translator.feed(chunk)
        except _UNREADABLE as exc:
            raise self.unreadable(exc) from None
        return self.cleaned(out) if out and (first_needle(out, self.needles) >= 0 or not out.isascii()) else out

    def flush(self) -> bytes:
        try:
            out: bytes = self.translator.flush()
        except _UNREADABLE as exc:
            raise self.unreadable(exc) from None
        return self.cleaned(out) if out and (first_needle(out, self.needles) >= 0 or not out.isascii()) else out

    def cleaned(self, out: bytes) -> bytes:
        """`out`, which holds a secret, an error object or non-ASCII bytes, made safe to relay.
        A pass-through relay forwards the upstream's bytes: no client decodes broken UTF-8."""
        if not out.isascii():
            try:
                out.decode()
            except UnicodeDecodeError:
                raise self.malformed("a stream that is not UTF-8") from None
        return self.secrets.redact(out) if first_needle(out, self.needles) >= 0 else out

    def too_large(self) -> GatewayError:
        return errors.upstream_too_large(self.provider, self._limit)

    def unreadable(self, exc: Exception) -> GatewayError:
        """The client's error for what the translator raised (call inside the `except`)."""
        if isinstance(exc, SSEError):  # one event over the framer's limit
            return errors.upstream_too_large(self.provider, DEFAULT_MAX_EVENT_BYTES, "an SSE event")
        return self.malformed()

    def malformed(self, what: str = "a stream") -> GatewayError:
        _log_unreadable(self.provider)
        return errors.upstream_malformed(self.provider, what)


def _log_unreadable(provider: str) -> None:
    """Call inside the `except`: _UNREADABLE is broad (a translator's own bug reads the same as
    an upstream's garbage), so the traceback is kept for whoever turns on debug logging."""
    log.debug("an answer of upstream %s could not be read by its adapter", provider, exc_info=True)


def _is_stream(content_type: str) -> bool:
    return content_type.startswith("text/event-stream") or "eventstream" in content_type


def _waited_out(exc: GatewayError) -> bool:
    """True if the attempt timed out waiting for an answer (not for a connection): trying the
    same target again would likely cost the client another whole timeout."""
    return isinstance(exc, UpstreamTimedOut) and exc.phase != "connect"


def _upstream_fault(exc: GatewayError) -> bool | None:
    """True if the error says the upstream is broken; None if it says nothing about it
    (the client's mistake, a busy upstream's 429, an answer larger than the gateway holds)."""
    if isinstance(exc, PluginError):  # a plugin's decision on a good answer
        return False
    if exc.code in _SAME_ANSWER or isinstance(exc, UpstreamGaveUp):  # (what the request asked: not the upstream's health)
        return None
    return True if exc.status in RETRYABLE_STATUS and exc.status not in _NOT_A_FAULT else None


class ClientStream:
    """The client's side of a streamed response.

    granian ends the HTTP response only when its stream transport object is freed. A frame
    kept alive by an exception's traceback (a reference cycle, freed only when the GC runs)
    would hold the response open, and the client would hang after the last event. So the
    transport lives only here, and `close()` drops it as soon as the relay is over.

    `paced` waits for a client that is behind (tollway.gateway.downstream.backpressure): granian would otherwise
    queue everything a non-reading client is sent.
    """

    __slots__ = ("_transport", "_flow", "_scope", "_idle")

    def __init__(self, transport: HTTPStreamTransport, scope: Scope | None = None, idle_timeout: float = 60.0) -> None:
        self._transport: HTTPStreamTransport | None = transport
        self._flow: ClientFlow | None = None
        self._scope, self._idle = scope, idle_timeout  # the client's address is read only if needed

    def send(self, data: bytes) -> Awaitable[None]:
        """The transport's own send of `data`, to await: no coroutine of ours around it, as this
        runs for every chunk (the await holds the transport only while it runs)."""
        return self._transport.send_bytes(data)  # type: ignore[union-attr]  # None only after close()

    async def paced(self, sent: int) -> None:
        """Return once the client has taken enough of the `sent` bytes; raises ClientStalled."""
        if self._flow is None:
            scope = self._scope
            self._flow = ClientFlow(getattr(scope, "server", "") or "", getattr(scope, "client", "") or "", self._idle)
        await self._flow.wait(sent)

    def close(self) -> None:
        self._transport = None


class _Stopped(Exception):
    """A per-chunk hook's GatewayError (a guardrail's block, a limit's stop, a plugin's refusal),
    told apart from the upstream's failures in the same stream: it says nothing about the upstream."""

    def __init__(self, error: GatewayError) -> None:
        super().__init__(error.message)
        self.error = error


async def _hooked(ex: Exchange, out: bytes) -> bytes:
    """`out` as the pipeline's per-chunk hooks pass it on, each seeing the previous one's bytes:
    the sync ones (`on_chunk`), then the async ones (`on_chunk_async`). Raises _Stopped."""
    try:
        for hook in ex.on_chunk:
            out = hook(ex, out)
        for ahook in ex.on_chunk_async:
            if not out:
                break
            out = await ahook(ex, out)
    except Exception as exc:  # noqa: BLE001 - sorted by _stopped
        raise _stopped(ex, exc) from None
    return out


def _stopped(ex: Exchange, exc: Exception) -> _Stopped:
    """A per-chunk hook's failure as the relay's stop: its GatewayError, or for a hook's bug
    (the gateway's fault, never counted against the upstream) a logged 500. Call it inside
    the `except`, so the log has the traceback."""
    if isinstance(exc, GatewayError):
        return _Stopped(exc)
    log.exception("a stream hook failed (request %s)", ex.request_id)
    return _Stopped(errors.internal())


def _error_event(translator: StreamTranslator, err: GatewayError) -> bytes:
    """The stream's closing error event, in the client API's shape when its translator has one."""
    render = getattr(translator, "error_event", None)
    return render(err) if render is not None else err.sse_event()


def _client_error(provider: str, exc: UpstreamError) -> GatewayError:
    """The client's error for an upstream failure before any byte reached the client:
    504 for a timeout (naming its phase), 502 for anything else. Only a request that was never
    sent "could not be reached" (UpstreamUnreached, which the walk may retry for free); one
    the upstream got and then broke off, or answered with a head that cannot be read, was not."""
    if isinstance(exc, UpstreamTimeout):
        return errors.upstream_timeout(provider, exc.phase)
    if isinstance(exc, UpstreamTooLarge):
        return errors.upstream_too_large(provider, exc.limit)
    if isinstance(exc, UpstreamUnreachable):
        return errors.upstream_unreachable(provider)
    if isinstance(exc, UpstreamMalformedHead):
        return errors.upstream_malformed(provider, "a response head")
    # The upstream got the request, then closed the connection: before its head ended, or mid-body
    # (UpstreamDisconnected).
    return errors.upstream_disconnected(provider)


def _mid_stream_error(ex: Exchange, exc: Exception) -> GatewayError:
    provider = ex.provider or "upstream"
    if isinstance(exc, UpstreamTimeout):
        return errors.upstream_timeout(provider, exc.phase)
    return errors.upstream_disconnected(provider)
