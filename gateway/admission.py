"""The one admission path every proxied client request takes, whatever its surface.

    key → body → head → route → permission → limits → forward → settle

with the pipeline's seams (tollway.gateway.pipeline) around the upstream call.

`admit` runs the steps up to the permission and returns an `Admitted` (or raises the
GatewayError that ends the request: 401, 408, 413, 400, 404, 403); `forward` adds the
limits, the upstream call (`Proxy.forward`) and the settlement. A surface changes only what
its `Surface` value says (where the key comes from, passed headers, error dress); the
Anthropic count_tokens endpoint uses `admit` with a tighter body cap and then answers itself.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from granian.rsgi import HTTPProtocol, Scope

from tollway.core import errors, forms
from tollway.core.accounting.tokens import estimate_prompt_tokens
from tollway.core.ledger.tags import HEADER as TAGS_HEADER
from tollway.core.ledger.tags import parse_tags
from tollway.core.request import RequestHead, default_model, parse_head, with_model
from tollway.core.routing.table import Route
from tollway.gateway.downstream.watchdog import BODY
from tollway.gateway.exchange import Exchange
from tollway.gateway.limits.limiter import AskStore, Lease, Limiter
from tollway.gateway.limits.stream_stop import StreamStop, stream_stop
from tollway.gateway.pipeline import Authenticate
from tollway.gateway.runtime import KeyRecord, Runtime
from tollway.gateway.serving import Serving
from tollway.gateway.surfaces import Surface

try:  # granian raises these when the client has gone away (or broke the protocol) mid-upload
    from granian.rsgi import ProtocolClosed, ProtocolError
    _UPLOAD_FAILED: tuple[type[BaseException], ...] = (ProtocolClosed, ProtocolError)
except ImportError:  # pragma: no cover
    _UPLOAD_FAILED = (RuntimeError,)

_NO_KEY = "You didn't provide an API key. Send your gateway key as 'Authorization: Bearer <key>'."
_BAD_KEY = "Incorrect API key provided. Check the gateway key you were given."


@dataclass(slots=True)
class Admitted:
    """A request that passed admission: who sent it, what it asks, where it goes."""

    runtime: Runtime  # the one this request is served with, start to end
    key: KeyRecord
    head: RequestHead
    body: bytes
    route: Route


async def forward(serving: Serving, surface: Surface, api: str, scope: Scope, proto: HTTPProtocol,
                  ex: Exchange, form: bool = False) -> None:
    """Admit, take the limits, forward upstream, settle: a whole proxied request (`form`: its
    body is a multipart upload, tollway.core.forms)."""
    pipeline = serving.pipeline  # this request's, start to end (a reload may swap it meanwhile)
    req = await admit(serving, surface, scope, proto, ex, form=form)
    ex.after = pipeline.after_response  # (admit took serving's: the same unless a reload came between)
    limiter = serving.limiter  # this request's: a reload may swap serving.limiter before it settles
    lease = None
    if serving.cache is not None and serving.cache.backend is not None:  # asked only if a limit refuses
        ex.response_cache = serving.cache
    if limiter is not None and limiter.enabled:  # Limiter.reserve, with its no-wait path inline:
        try:
            decided = limiter.admit(req.key.key, req.route.name, api, req.head, req.body)  # the hot path
            lease = await limiter.ask_store(decided) if isinstance(decided, AskStore) else decided
        except errors.GatewayError as refused:  # a cache hit would draw on the request buckets alone
            if refused.status != 429 or ex.response_cache is None or not ex.response_cache.may_answer(req, api):
                raise
            lease = await limiter.reserve_requests(req.key.key, req.route.name)  # (its own 429 if those are spent)
            ex.deferred = refused
    headers = [("x-request-id", ex.request_id), *(lease.headers if lease is not None else ())]
    stop = None
    try:
        for before in pipeline.before_upstream:
            await before(req, ex)
        if ex.cache is not None and ex.cache.headed(headers):  # a cache hit: answered without an upstream call
            await ex.cache.serve(ex, proto, headers)
            return
        if ex.deferred is not None:  # a limit or budget refused it, and the cache had no answer
            raise ex.deferred
        ex.on_chunk = pipeline.on_chunk  # the relay runs these on each chunk it sends
        ex.on_chunk_async, ex.on_answer = pipeline.on_chunk_async, pipeline.on_answer
        if ex.cache is not None and ex.cache.storing:  # a miss to store: its stream as the client gets it,
            if ex.on_chunk_async:  # after the plugins' on_chunk (async, after every sync hook)
                ex.on_chunk_async += (ex.cache.capture_after,)
            else:  # (no request on another route pays a per-chunk hook for the cache)
                ex.on_chunk += (ex.cache.capture,)
        if req.head.stream and req.runtime.config.rate_limits.enforce_streams:
            stop = _stream_stop(serving, req, ex, limiter, lease)
            if stop is not None:  # last: it counts what really goes out
                ex.on_chunk_async += (stop,)
        await serving.proxy.forward(req.runtime, ex, req.route, req.head, req.body, proto, headers)
    finally:
        if stop is not None and stop.cut:  # stopped at a limit: charged what was sent, not what was made
            ex.usage = stop.usage(ex.usage)
        if lease is not None and limiter is not None:  # also when it failed or the client left
            # (a cache hit counts as a request, not as the tokens it carries: nothing was generated)
            limiter.settle(lease, None if ex.cache is not None and ex.cache.hit else ex.usage, ex.upstream_model)
        if ex.usage is not ex.priced:  # (a non-stream answer's was worked out for its header)
            ex.cost_usd = req.runtime.prices.cost(req.route.name, ex.upstream_model, ex.usage)


def _stream_stop(serving: Serving, req: Admitted, ex: Exchange, limiter: Limiter | None,
                 lease: Lease | None) -> StreamStop | None:
    """The per-chunk hook that stops this stream at its limits or budgets, or None."""
    keeper = serving.books.budgets if serving.books is not None else None
    if (lease is None or not lease.plan.grows) and not keeper:  # (a request limit alone: no hook, decided here)
        return None
    prompt = lease.demand[1] if lease is not None else estimate_prompt_tokens(req.body)  # (input_tokens)
    return stream_stop(ex, req.head.model or req.route.name, prompt, limiter, lease, keeper, req.runtime.prices)


async def admit(serving: Serving, surface: Surface, scope: Scope, proto: HTTPProtocol, ex: Exchange,
                body_limit: int | None = None, form: bool = False) -> Admitted:
    """key → body → head → route → permission. `body_limit` defaults to server.max_body_bytes
    (server.max_upload_bytes for a `form`, a multipart upload)."""
    rt, tracer = serving.runtime, serving.tracer
    try:
        key = known_key(rt, surface, scope)
    except errors.GatewayError:  # no key, or none the table knows: the plugins' authenticate may map it
        hooked = await _hooked_key(serving.pipeline.authenticate, rt, scope) if serving.pipeline.authenticate else None
        if hooked is None:
            raise
        key = hooked
    else:
        if key.checked:  # a gateway key, revoked or expired: refused, never offered to a plugin
            key.refuse(time.time())
    ex.key_name, ex.key_id, ex.team = key.key.name, key.key_id, key.key.team
    if rt.api.keys:  # run-time keys: their last use is kept (coarsely; written off the request path)
        serving.last_used[key.key_id] = ex.ts
    ex.after = serving.pipeline.after_response  # from here on the request is someone's: record it
    if surface.passed_headers:  # (OpenAI's passes none: no call on its hot path)
        ex.passed_headers = passed_headers(surface, scope)
    if tracer is not None:  # only now: an unknown caller must not put spans into a trace it names
        ex.trace = tracer.begin(scope.headers)
    if form:
        body, head = await _read_form(rt, scope, proto, ex)
    else:
        body = await read_body(scope, proto, ex, rt.config.server.max_body_bytes if body_limit is None else body_limit)
        head = parse_head(body, rt.config.server.max_json_depth, require_model=False)
    if not head.model:  # (moderations: OpenAI's default model; everywhere else a 400)
        head.model = default_model(ex.api)
    if ex.trace is not None:
        ex.trace.request(head)
    override = scope.headers.get("x-tollway-model")
    if override and override != head.model:  # the header wins: make the body say so too
        head.model, body = override, (with_form_field(body, ex, override) if form else with_model(body, override))
    ex.model = rt.secrets.mask(head.model) if head.model else head.model  # a held credential pasted as the model
    tags = scope.headers.get(TAGS_HEADER)
    if tags:
        ex.tags = parse_tags(tags)
    route = rt.routes.resolve(head.model or "")
    if route is None:  # the errors echo the model masked, as the log has it: the client may have pasted a key
        raise errors.model_not_found(ex.model or "")
    ex.route, ex.prices = route.name, rt.prices
    if not key.may_use(route.name):
        raise errors.model_not_allowed(ex.model or "")
    return Admitted(rt, key, head, body, route)


async def _read_form(rt: Runtime, scope: Scope, proto: HTTPProtocol, ex: Exchange) -> tuple[bytes, RequestHead]:
    """A multipart upload's body (within server.max_upload_bytes) and its routing fields. Its
    content type goes to the provider with it, as a passed header: the form's own (the boundary
    it was parsed with), not the client's, which another parser could read another way."""
    reader = forms.FormReader(scope.headers.get("content-type"))  # a JSON body sent here: 400 before it is read
    body = await read_body(scope, proto, ex, rt.config.server.max_upload_bytes, reader.feed)
    parsed = reader.finish()
    ex.passed_headers, ex.form = (("content-type", parsed.content_type),), parsed
    return body, parsed.head()


def with_form_field(body: bytes, ex: Exchange, model: str) -> bytes:
    """A form body whose `model` field says `model` (the x-tollway-model header's); ex.form
    becomes the new body's."""
    assert ex.form is not None  # (set by _read_form)
    body, ex.form = ex.form.with_field(body, "model", model)
    return body


def authenticate(rt: Runtime, surface: Surface, scope: Scope) -> KeyRecord:
    """The key record for the first of the surface's key headers that is present, if it may be
    used now. Raises 401."""
    record = known_key(rt, surface, scope)
    if record.checked:  # a run-time key with an expiry, or revoked
        record.refuse(time.time())
    return record


def known_key(rt: Runtime, surface: Surface, scope: Scope) -> KeyRecord:
    """The key record for the first of the surface's key headers that is present, refused or
    not. Raises 401 when there is none, or the table knows no such key."""
    for name in surface.key_headers:
        value = scope.headers.get(name)
        if not value:
            continue
        if name == "authorization":
            scheme, _, token = value.partition(" ")
            record = rt.keys.lookup(token.strip()) if scheme.lower() == "bearer" else None
        else:
            record = rt.keys.lookup(value.strip())
        if record is None:
            raise errors.unauthorized(_BAD_KEY)
        return record
    raise errors.unauthorized(_NO_KEY)


async def _hooked_key(hooks: tuple[Authenticate, ...], rt: Runtime, scope: Scope) -> KeyRecord | None:
    """The key record the pipeline's authenticate hooks (plugins) give for a credential the key
    table does not know (None: the key lookup's 401 stands)."""
    for hook in hooks:
        record = await hook(rt, scope)
        if record is not None:
            if record.checked:  # a revoked or expired run-time key stays refused
                record.refuse(time.time())
            return record
    return None


async def read_body(scope: Scope, proto: HTTPProtocol, ex: Exchange, limit: int,
                    feed: Callable[[bytes], None] | None = None) -> bytes:
    """The whole request body, refusing (413) anything over `limit`. The watchdog answers 408
    if the upload takes longer than server.body_read_timeout; a client that leaves mid-upload
    ends the request quietly (499, no traceback). `feed`, if given, sees each piece as it
    arrives (and may refuse the request with its GatewayError before the rest is read)."""
    declared = scope.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise errors.too_large(limit)
    ex.phase = BODY
    try:
        if declared is not None and feed is None:
            body = await proto()
        else:
            body = await _read_chunked(proto, limit, feed)
    except _UPLOAD_FAILED:
        raise errors.client_closed() from None
    ex.phase = ""
    if len(body) > limit:
        raise errors.too_large(limit)
    if declared is not None and declared.isdigit() and len(body) < int(declared):  # it ended early
        raise errors.client_closed()
    return body


async def _read_chunked(proto: HTTPProtocol, limit: int, feed: Callable[[bytes], None] | None = None) -> bytes:
    """An upload read piece by piece, refused (413) as soon as it is over `limit` bytes.

    granian's iteration does not raise when the body fails (the client hangs up mid-upload, a
    chunked body never gets its last chunk): it ends as a whole body does. A declared
    content-length tells (read_body); a chunked body's pieces cannot, as its failure looks
    exactly like a body with trailers (an empty piece, then the empty piece that ends every
    body), which must be served: a cut chunked body is judged by what it holds (a JSON or a
    form that stops short is a 400; the client has gone and reads no answer)."""
    parts, size = [], 0
    async for part in proto:
        size += len(part)
        if size > limit:
            raise errors.too_large(limit)
        if feed is not None and part:
            feed(part)
        parts.append(part)
    return b"".join(parts)


def passed_headers(surface: Surface, scope: Scope) -> tuple[tuple[str, str], ...]:
    """The client's headers that the surface passes to the provider, repeated ones joined with
    commas as HTTP allows."""
    headers = scope.headers  # granian's Headers has get_all; its type stub does not say so
    found = ((name, ",".join(headers.get_all(name))) for name in surface.passed_headers)  # type: ignore[attr-defined]
    return tuple((name, value) for name, value in found if value)
