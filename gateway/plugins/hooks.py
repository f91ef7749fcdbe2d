"""The plugins' stages as the pipeline's hooks (tollway.gateway.pipeline).

    authenticate  → Pipeline.authenticate     (admission, when the key table does not know the credential)
    on_request    → Pipeline.before_upstream  (also makes the request's RequestContext)
    on_chunk      → Pipeline.on_chunk_async   (each streamed text or tool-call argument delta)
    on_response   → Pipeline.on_answer        (a non-stream answer, before it goes out)
    on_complete   → Pipeline.after_response   (a background task, bounded by MAX_PENDING)

A seam gets a hook only if some plugin defines its stage: with no plugins, the pipeline's
tuples stay empty and the request path pays nothing. Every call is bounded by the plugin's
`timeout_ms`; a timeout or an exception follows its `on_error` (open: skipped, counted in
`tollway_plugin_errors_total{plugin,stage,kind}`, logged once per incident; closed: the request
fails with 503 `plugin_failed`, naming the plugin and never its traceback).
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NoReturn

import msgspec

from tollway.core import errors
from tollway.core.errors import GatewayError
from tollway.core.ledger.tags import parse_tags
from tollway.core.request import parse_head
from tollway.gateway import sse_deltas
from tollway.gateway.pipeline import Pipeline
from tollway.gateway.plugins.api import Allow, AuthContext, KeyInfo, Pass, Reject, Replace, RequestContext, Stop
from tollway.gateway.plugins.loader import Loaded
from tollway.gateway.runtime import KeyRecord
from tollway.gateway.store.recorder import usage_record

if TYPE_CHECKING:
    from granian.rsgi import Scope
    from prometheus_client import Counter

    from tollway.gateway.admission import Admitted
    from tollway.gateway.exchange import Exchange
    from tollway.gateway.runtime import Runtime

log = logging.getLogger("tollway")
MAX_PENDING = 1000  # on_complete calls queued or running per worker; past it they are dropped and counted
# Headers a plugin never sees (credentials); the authenticate stage sees them all.
SECRET_HEADERS = frozenset(("authorization", "proxy-authorization", "x-api-key", "api-key", "cookie", "set-cookie",
                            "x-goog-api-key"))
_decode = msgspec.json.decode
_encode = msgspec.json.encode


class _Skip(Exception):
    """A plugin's failure under on_error: open (already counted and logged)."""


@dataclass(slots=True)
class PluginState:
    """One request's plugins: its context and the plugins in its scope, by stage."""

    ctx: RequestContext
    chunk: tuple[Loaded, ...]
    response: tuple[Loaded, ...]
    complete: tuple[Loaded, ...]


class PluginSet:
    """The loaded plugins of one config, as pipeline hooks."""

    def __init__(self, plugins: Sequence[Loaded], errors_total: Counter | None = None) -> None:
        self.plugins = tuple(plugins)
        self.errors_total = errors_total
        self._by_stage = {stage: tuple(p for p in self.plugins if stage in p.stages)
                          for stage in ("authenticate", "on_request", "on_chunk", "on_response", "on_complete")}
        self._incidents: set[tuple[str, str]] = set()  # (plugin, stage) failing now: logged once until it recovers
        self._pending: set[asyncio.Task[None]] = set()
        self.dropped = 0

    def __bool__(self) -> bool:
        return bool(self.plugins)

    def pipeline(self) -> Pipeline:
        if not self.plugins:
            return Pipeline()
        per_request = any(self._by_stage[s] for s in ("on_request", "on_chunk", "on_response", "on_complete"))
        return Pipeline(
            authenticate=(self.authenticate,) if self._by_stage["authenticate"] else (),
            before_upstream=(self.before_upstream,) if per_request else (),
            on_chunk_async=(self.on_chunk,) if self._by_stage["on_chunk"] else (),
            on_answer=(self.on_answer,) if self._by_stage["on_response"] else (),
            after_response=(self.after_response,) if self._by_stage["on_complete"] else (),
        )

    # -- calling a stage -------------------------------------------------------------------

    async def _call(self, p: Loaded, stage: str, call: Callable[[], Awaitable[Any]]) -> Any:
        """One call of a stage, bounded by the plugin's timeout; its failure per its on_error
        (raises PluginError when closed, _Skip when open)."""
        try:
            async with asyncio.timeout(p.timeout):
                result = await call()
        except Exception as exc:  # noqa: BLE001 - a plugin's bug is its on_error's to decide
            self._failed(p, stage, "timeout" if isinstance(exc, TimeoutError) else "exception", exc)
        if self._incidents:
            self._incidents.discard((p.name, stage))
        return result

    def _failed(self, p: Loaded, stage: str, kind: str, exc: BaseException | None = None) -> NoReturn:
        """Count and (once per incident) log a plugin's failure; raise what its on_error says."""
        if self.errors_total is not None:
            self.errors_total.labels(p.name, stage, kind).inc()
        if (p.name, stage) not in self._incidents:
            self._incidents.add((p.name, stage))
            what = f"timed out after {p.spec.timeout_ms:g} ms" if kind == "timeout" else f"failed ({kind})"
            log.warning("plugin %s: %s %s; %s", p.name, stage, what,
                        "requests fail with 503 until it recovers" if p.closed else "skipping it until it recovers",
                        exc_info=exc if kind == "exception" else None,
                        extra={"fields": {"event": "plugin_error", "plugin": p.name, "stage": stage, "kind": kind}})
        if p.closed:
            raise errors.plugin_failed(p.name, stage) from None
        raise _Skip

    # -- authenticate ----------------------------------------------------------------------

    async def authenticate(self, rt: Runtime, scope: Scope) -> KeyRecord | None:
        headers = MappingProxyType({k: v for k, v in scope.headers.items()})
        ctx = AuthContext(headers, scope.path, rt.key_named)
        for p in self._by_stage["authenticate"]:
            try:
                record = await self._call(p, "authenticate", lambda p=p: p.stages["authenticate"](ctx))  # type: ignore[misc]
            except _Skip:
                continue
            if isinstance(record, KeyRecord):
                return record
            if record is not None:
                self._skip_or_fail(p, "authenticate")
        return None

    def _skip_or_fail(self, p: Loaded, stage: str) -> None:
        """A stage returned something it may not: a failure of kind invalid_result."""
        try:
            self._failed(p, stage, "invalid_result")
        except _Skip:
            pass

    # -- on_request ------------------------------------------------------------------------

    async def before_upstream(self, req: Admitted, ex: Exchange) -> None:
        active = tuple(p for p in self.plugins if p.applies(ex.key_name, ex.team, ex.route, ex.model))
        if not active:
            return
        try:
            body = _decode(req.body)
        except msgspec.DecodeError:  # (admission parsed it: only a body that is not an object's text)
            body = None
        ctx = RequestContext(ex.request_id, ex.api, KeyInfo(ex.key_name or "", ex.key_id or "", ex.team), ex.model,
                             ex.route, bool(req.head.stream), _visible_headers(ex.scope), body, list(ex.tags))
        ex.plugins = PluginState(ctx, *(tuple(p for p in active if s in p.stages)
                                   for s in ("on_chunk", "on_response", "on_complete")))
        for p in active:
            stage = p.stages.get("on_request")
            if stage is None:
                continue
            tags = list(ctx.tags)
            try:
                verdict = await self._call(p, "on_request", lambda stage=stage: stage(ctx))  # type: ignore[misc]
                if isinstance(verdict, Reject):
                    raise errors.plugin_rejected(p.name, verdict.status, verdict.message)
                if isinstance(verdict, Replace):
                    self._replace_body(p, req, ctx, verdict.value)
                elif verdict is not None and not isinstance(verdict, Allow):
                    self._failed(p, "on_request", "invalid_result")
                if ctx.tags != tags:
                    try:
                        ex.tags = parse_tags(",".join(ctx.tags))
                    except GatewayError:
                        ctx.tags = tags
                        self._failed(p, "on_request", "invalid_result")
            except _Skip:
                continue

    def _replace_body(self, p: Loaded, req: Admitted, ctx: RequestContext, value: object) -> None:
        try:
            body = value if isinstance(value, bytes) else _encode(value)
            head = parse_head(body, req.runtime.config.server.max_json_depth)
            parsed = _decode(body)
        except (GatewayError, msgspec.MsgspecError, TypeError):
            self._failed(p, "on_request", "invalid_result")
            return
        req.body, ctx.body = body, parsed
        head.model = req.head.model  # the route was chosen: a replaced body does not re-route
        req.head = head

    # -- on_chunk --------------------------------------------------------------------------

    async def on_chunk(self, ex: Exchange, out: bytes) -> bytes:
        """The client bytes of a stream chunk (whole SSE events), with every text and tool-call
        argument delta through the plugins' on_chunk: OpenAI chat (`choices[].delta.content`,
        `.tool_calls[].function.arguments`) and Anthropic messages (`text_delta`, `input_json_delta`)."""
        state: PluginState | None = ex.plugins
        if state is None or not state.chunk:
            return out
        found = sse_deltas.events(out)
        changed = False
        for ev in found:
            for holder, name, _kind, _index, _tool in sse_deltas.deltas(ev.obj):
                if await self._field(state, holder, name):
                    ev.changed = changed = True
        return sse_deltas.joined(found) if changed else out

    async def _field(self, state: PluginState, holder: dict[str, Any], name: str) -> bool:
        text = holder.get(name)
        if not isinstance(text, str) or not text:
            return False
        ctx, new = state.ctx, text
        for p in state.chunk:
            stage = p.stages["on_chunk"]
            try:
                verdict = await self._call(p, "on_chunk", lambda stage=stage, new=new: stage(ctx, new))  # type: ignore[misc]
            except _Skip:
                continue
            if isinstance(verdict, Stop):
                raise errors.plugin_stopped(p.name, verdict.message)
            if isinstance(verdict, Replace) and isinstance(verdict.value, str):
                new = verdict.value
            elif verdict is not None and not isinstance(verdict, Pass):
                self._skip_or_fail(p, "on_chunk")
        if new is text:
            return False
        holder[name] = new
        return True

    # -- on_response -----------------------------------------------------------------------

    async def on_answer(self, ex: Exchange, status: int, out: bytes) -> bytes:
        state: PluginState | None = ex.plugins
        if state is None or not state.response or status >= 300:
            return out
        try:
            body = _decode(out)
        except msgspec.DecodeError:
            return out
        if not isinstance(body, dict):
            return out
        changed = False
        for p in state.response:
            stage = p.stages["on_response"]
            try:
                verdict = await self._call(p, "on_response", lambda stage=stage, body=body: stage(state.ctx, body))  # type: ignore[misc]
            except _Skip:
                continue
            if isinstance(verdict, Reject):
                raise errors.plugin_rejected(p.name, verdict.status, verdict.message)
            if isinstance(verdict, Replace) and isinstance(verdict.value, dict):
                body, changed = verdict.value, True
            elif verdict is not None and not isinstance(verdict, Pass):
                self._skip_or_fail(p, "on_response")
        return _encode(body) if changed else out

    # -- on_complete -----------------------------------------------------------------------

    def after_response(self, ex: Exchange) -> None:
        """Queue each in-scope on_complete call as a task; never waits. Past MAX_PENDING calls
        waiting or running, a call is dropped and counted (kind "dropped")."""
        state: PluginState | None = ex.plugins
        if state is not None:
            active, ctx = state.complete, state.ctx
        else:  # refused before the upstream call (400, 404, 429...): no body was parsed for plugins
            active = tuple(p for p in self._by_stage["on_complete"]
                           if p.applies(ex.key_name, ex.team, ex.route, ex.model))
            ctx = RequestContext(ex.request_id, ex.api, KeyInfo(ex.key_name or "", ex.key_id or "", ex.team), ex.model,
                                 ex.route, ex.stream, _visible_headers(ex.scope), None, list(ex.tags))
        if not active:
            return
        record = usage_record(ex)
        loop = asyncio.get_running_loop()
        for p in active:
            if len(self._pending) >= MAX_PENDING:
                self.dropped += 1
                if self.errors_total is not None:
                    self.errors_total.labels(p.name, "on_complete", "dropped").inc()
                continue
            task = loop.create_task(self._complete(p, ctx, record))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _complete(self, p: Loaded, ctx: RequestContext, record: object) -> None:
        stage = p.stages["on_complete"]
        try:
            await self._call(p, "on_complete", lambda: stage(ctx, record))
        except (_Skip, GatewayError):  # after the response: nothing to fail any more
            pass

    async def close(self, deadline: float) -> None:
        """Give queued on_complete calls up to `deadline` seconds (shutdown)."""
        if self._pending:
            await asyncio.wait(list(self._pending), timeout=deadline)


def _visible_headers(scope: Scope | None) -> Mapping[str, str]:
    if scope is None:
        return MappingProxyType({})
    return MappingProxyType({k: v for k, v in scope.headers.items() if k not in SECRET_HEADERS})
