"""The plugins' stages as the pipeline's hooks (tollway.gateway.pipeline).

    authenticate  → Pipeline.authenticate     (admission, when the key table does not know the credential)
    on_request    → Pipeline.before_upstream  (also makes the request's RequestContext)
    on_chunk      → Pipeline.on_chunk_async   (each streamed text or tool-call argument delta)
    on_response   → Pipeline.on_answer        (a non-stream answer, before it goes out)
    on_complete   → Pipeline.after_response   (a background task, bounded by MAX_PENDING)

A seam gets a hook only if some plugin defines its stage: with no plugins, the pipeline's
tuples stay empty and the request path pays nothing. Every call is bounded by the plugin's
`timeout_ms` (run as a task of its own, abandoned at the timeout); a timeout, an exception
(any BaseException but the request's own cancellation), or a result the stage may not return (checked inside the
same guard, so a malformed verdict is never the gateway's 500) follows its `on_error` (open: skipped, counted in
`tollway_plugin_errors_total{plugin,stage,kind}`, logged once per incident; closed: the request
fails with 503 `plugin_failed`, naming the plugin and never its traceback).
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import msgspec

from tollway.core import errors
from tollway.core.errors import GatewayError
from tollway.core.ledger.tags import parse_tags
from tollway.core.request import RequestHead, parse_head, with_model
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
# Calls of one plugin's stages abandoned at their timeout that still run (they swallow its
# cancellation), per worker: past it the plugin's stages are not started, each call a failure
# (kind "abandoned") per its on_error, so a hostile or buggy plugin cannot grow memory without bound.
MAX_ABANDONED = 100
# Headers a plugin never sees (credentials); the authenticate stage sees them all.
SECRET_HEADERS = frozenset(("authorization", "proxy-authorization", "x-api-key", "api-key", "cookie", "set-cookie",
                            "x-goog-api-key"))
_decode = msgspec.json.decode
_encode = msgspec.json.encode
T = TypeVar("T")
# What encoding a plugin's value may raise: msgspec's own errors, and TypeError / ValueError /
# OverflowError for an object it cannot encode (a set is fine, an object() or a 2**70 int is not).
_UNENCODABLE = (msgspec.MsgspecError, TypeError, ValueError, OverflowError)


class _Skip(Exception):
    """A plugin's failure under on_error: open (already counted and logged)."""


class _Exited(Exception):
    """A stage raised a BaseException that is not an Exception (SystemExit, KeyboardInterrupt):
    the plugin's failure (kind exception), not the worker's end. Raised inside the stage's task,
    where asyncio would pass SystemExit and KeyboardInterrupt on to the event loop."""


class _Crowded(Exception):
    """MAX_ABANDONED calls of the plugin still run past their timeout: this one is not started."""


class _Invalid(Exception):
    """A stage returned what it may not (kind invalid_result): a wrong type, a Reject whose status
    is not an int in 400..599 or whose message is not a str, a Replace the gateway cannot use."""


@dataclass(frozen=True, slots=True)
class _Body:
    """on_request's Replace, checked: the request body as it goes upstream."""

    raw: bytes
    head: RequestHead
    parsed: object


@dataclass(frozen=True, slots=True)
class _Answer:
    """on_response's Replace, checked: the answer and its encoding."""

    body: dict[str, Any]
    raw: bytes


def _text(value: object) -> str:
    """A plugin's text that goes to the client (a delta, a message), or _Invalid: it must be a
    str UTF-8 can encode. A lone surrogate ("\\ud800") is a str, but would fail only later,
    writing the response, as the gateway's error instead of the plugin's."""
    if not isinstance(value, str):
        raise _Invalid
    try:
        value.encode()
    except UnicodeEncodeError:
        raise _Invalid from None
    return value


def _reject(verdict: Reject) -> Reject:
    # bool is an int, but Reject(True) is a plugin's bug, not status 1
    status = verdict.status
    if type(status) is not int or not 400 <= status <= 599:
        raise _Invalid
    _text(verdict.message)
    return verdict


_FAILURES = {
    "timeout": "timed out after {ms:g} ms",
    "abandoned": "not called: {most} of its calls are still running past their timeout (they ignore its cancellation)",
}


def _no_result(result: object) -> None:
    """on_complete: what it returns is not looked at."""


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
        # per plugin, its stages' calls past their timeout, cancelled, still running (no empty sets:
        # while no plugin has any, a call pays one truth test for it)
        self._abandoned: dict[str, set[asyncio.Task[object]]] = {}
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

    async def _call(self, p: Loaded, stage: str, call: Callable[[], Awaitable[object]],
                    check: Callable[[object], T]) -> T:
        """One call of a stage, bounded by the plugin's timeout, and its result as `check` makes
        it (raising _Invalid for one the stage may not return). Checking inside the guard makes a
        malformed verdict the plugin's failure like any other, per its on_error (raises
        PluginError when closed, _Skip when open), and a success ends the incident only when the
        result was usable."""
        try:
            if self._abandoned and len(self._abandoned.get(p.name, ())) >= MAX_ABANDONED:
                raise _Crowded
            result = await self._bounded(p, call)
            verdict = check(result)
        except _Invalid:
            self._failed(p, stage, "invalid_result")
        except _Crowded:
            self._failed(p, stage, "abandoned")
        except asyncio.CancelledError as exc:
            # Our task being cancelled (shutdown, the watchdog, a dropped stream) goes on up. A
            # CancelledError while it is not (the plugin awaited a future someone else
            # cancelled) is the plugin's failure, not "the gateway is shutting down".
            task = asyncio.current_task()
            if task is None or task.cancelling():
                raise
            self._failed(p, stage, "exception", exc)
        except Exception as exc:  # noqa: BLE001 - a plugin's bug is its on_error's to decide
            self._failed(p, stage, "timeout" if isinstance(exc, TimeoutError) else "exception", exc)
        if self._incidents:
            self._incidents.discard((p.name, stage))
        return verdict

    async def _bounded(self, p: Loaded, call: Callable[[], Awaitable[object]]) -> object:
        """`call()`'s result, run as a task of its own so that its time limit holds whatever
        the stage does: at the timeout the task is cancelled and abandoned, not awaited (a
        stage that swallows its CancelledError and keeps awaiting no longer holds the
        request). Raises TimeoutError; the request's own cancellation cancels the stage too."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + p.timeout
        task = loop.create_task(_stage(call))
        try:
            # The fast path: the task's first step runs before this one resumes, so a stage that
            # does not suspend (most of them) is done here, with no timer or waiter to set up.
            await asyncio.sleep(0)
            if not task.done():
                await asyncio.wait((task,), timeout=max(deadline - loop.time(), 0))
        finally:
            if not task.done():  # timed out, or the request was cancelled while waiting
                task.cancel()
                self._abandoned.setdefault(p.name, set()).add(task)
                task.add_done_callback(self._forget(p.name))
        if not task.done():
            raise TimeoutError
        return task.result()

    def _forget(self, name: str) -> Callable[[asyncio.Task[object]], None]:
        """A done callback: drop an abandoned call of plugin `name` from `_abandoned`, its outcome
        consumed (nobody awaits it: asyncio would log an exception it ended with as never
        retrieved). One fewer runs: the plugin's stages may start again."""
        def done(task: asyncio.Task[object]) -> None:
            tasks = self._abandoned.get(name)
            if tasks is not None:
                tasks.discard(task)
                if not tasks:
                    del self._abandoned[name]
            self._incidents.discard((name, "abandoned"))
            if not task.cancelled():
                task.exception()
        return done

    def _failed(self, p: Loaded, stage: str, kind: str, exc: BaseException | None = None) -> NoReturn:
        """Count and (once per incident) log a plugin's failure; raise what its on_error says.
        Calls not started for the plugin's abandoned ones are one incident of the plugin's, over
        when one of those ends (whatever stage they were)."""
        if self.errors_total is not None:
            self.errors_total.labels(p.name, stage, kind).inc()
        incident = (p.name, "abandoned" if kind == "abandoned" else stage)
        if incident not in self._incidents:
            self._incidents.add(incident)
            what = _FAILURES.get(kind, "failed ({kind})").format(kind=kind, ms=p.spec.timeout_ms, most=MAX_ABANDONED)
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
                record = await self._call(p, "authenticate", lambda p=p: p.stages["authenticate"](ctx),  # type: ignore[misc]
                                          _key_record)
            except _Skip:
                continue
            if record is not None:
                return record
        return None

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

            def check(result: object, tags: list[str] = tags) -> Reject | _Body | None:
                if isinstance(result, Reject):
                    return _reject(result)
                new = _new_body(req, result.value) if isinstance(result, Replace) else None
                if new is None and result is not None and not isinstance(result, Allow):
                    raise _Invalid
                if ctx.tags != tags:
                    try:
                        ex.tags = parse_tags(",".join(ctx.tags))
                    except GatewayError:
                        raise _Invalid from None
                return new
            try:
                verdict = await self._call(p, "on_request", lambda stage=stage: stage(ctx), check)  # type: ignore[misc]
            except _Skip:
                ctx.tags = tags  # a skipped plugin's tags are not the request's
                continue
            if isinstance(verdict, Reject):
                raise errors.plugin_rejected(p.name, verdict.status, verdict.message)
            if verdict is not None:
                req.body, ctx.body = verdict.raw, verdict.parsed
                req.head = verdict.head

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
                verdict = await self._call(p, "on_chunk", lambda stage=stage, new=new: stage(ctx, new),  # type: ignore[misc]
                                           _chunk_verdict)
            except _Skip:
                continue
            if isinstance(verdict, Stop):
                raise errors.plugin_stopped(p.name, verdict.message)
            if verdict is not None:
                new = verdict
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
        for p in state.response:
            stage = p.stages["on_response"]
            try:
                verdict = await self._call(p, "on_response", lambda stage=stage, body=body: stage(state.ctx, body),  # type: ignore[misc]
                                           _answer_verdict)
            except _Skip:
                continue
            if isinstance(verdict, Reject):
                raise errors.plugin_rejected(p.name, verdict.status, verdict.message)
            if verdict is not None:
                # encoded in the guard: what goes out is what the plugin replaced it with then
                body, out = verdict.body, verdict.raw
        return out

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
            await self._call(p, "on_complete", lambda: stage(ctx, record), _no_result)
        except (_Skip, GatewayError):  # after the response: nothing to fail any more
            pass

    async def close(self, deadline: float) -> None:
        """Give queued on_complete calls up to `deadline` seconds (shutdown)."""
        if self._pending:
            await asyncio.wait(list(self._pending), timeout=deadline)


async def _stage(call: Callable[[], Awaitable[object]]) -> object:
    """A stage's call, as its own task runs it."""
    try:
        return await call()
    except (Exception, asyncio.CancelledError):
        raise
    except BaseException as exc:  # noqa: BLE001 - SystemExit, KeyboardInterrupt: a plugin's, not the worker's
        raise _Exited(type(exc).__name__) from exc


def _key_record(result: object) -> KeyRecord | None:
    if result is None or isinstance(result, KeyRecord):
        return result
    raise _Invalid


def _new_body(req: Admitted, value: object) -> _Body:
    """on_request's Replace value as the request body: bytes, or a dict sent as JSON; either
    must be a JSON object the gateway accepts."""
    if not isinstance(value, bytes | dict):
        raise _Invalid
    try:
        raw = value if isinstance(value, bytes) else _encode(value)
        head = parse_head(raw, req.runtime.config.server.max_json_depth)
        parsed = _decode(raw)
    except (GatewayError, *_UNENCODABLE):
        raise _Invalid from None
    admitted = req.head.model or ""  # (admission always names one: the default model at least)
    if head.model != admitted:
        # The route was chosen and the request limited for the admitted model: a replaced body
        # does not re-route. The bytes must say so too, not only the head: an adapter whose
        # upstream model has the route's name forwards the body as it is.
        head.model = parsed["model"] = admitted
        raw = with_model(raw, admitted)
    return _Body(raw, head, parsed)


def _chunk_verdict(result: object) -> Stop | str | None:
    """on_chunk: a Stop, the replaced text, or None (pass)."""
    if isinstance(result, Stop):
        _text(result.message)
        return result
    if isinstance(result, Replace):
        return _text(result.value)
    if result is not None and not isinstance(result, Pass):
        raise _Invalid
    return None


def _answer_verdict(result: object) -> Reject | _Answer | None:
    """on_response: a Reject, the replaced answer (encoded), or None (pass)."""
    if isinstance(result, Reject):
        return _reject(result)
    if isinstance(result, Replace):
        if not isinstance(result.value, dict):
            raise _Invalid
        try:
            return _Answer(result.value, _encode(result.value))
        except _UNENCODABLE:
            raise _Invalid from None
    if result is not None and not isinstance(result, Pass):
        raise _Invalid
    return None


def _visible_headers(scope: Scope | None) -> Mapping[str, str]:
    if scope is None:
        return MappingProxyType({})
    return MappingProxyType({k: v for k, v in scope.headers.items() if k not in SECRET_HEADERS})
