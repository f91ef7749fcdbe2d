"""The gateway's RSGI application: one object granian calls for every request.

`Gateway.__rsgi__` dispatches on (method, path) through a dict, runs the handler, and turns
any `GatewayError` into an OpenAI-shaped response exactly once, here at the boundary. Every
response carries `x-request-id`; every request ends with one access-log line and metrics.
"""
from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Sequence
from typing import Any

from granian.rsgi import HTTPProtocol, Scope

from tollway.core import config as config_mod
from tollway.core import errors
from tollway.core.accounting import pricing
from tollway.core.config import Config
from tollway.core.errors import GatewayError
from tollway.core.tenancy.records import ApiKey
from tollway.gateway import price_source, token_count
from tollway.gateway.admin.api import AdminAPI
from tollway.gateway.cache import ResponseCache
from tollway.gateway.console import Console
from tollway.gateway.downstream.watchdog import ANSWERED, Watchdog
from tollway.gateway.exchange import Exchange, request_id
from tollway.gateway.guardrails import GuardrailSet
from tollway.gateway.lifecycle.drain import (
    LEDGER_FLUSH_SECONDS,
    PLUGIN_FLUSH_SECONDS,
    TRACE_FLUSH_SECONDS,
    drain,
    install_readiness_signal,
    started_limits,
    stop_signals_held,
)
from tollway.gateway.lifecycle.heap import Heap
from tollway.gateway.lifecycle.reload import ConfigWatcher, Signature, catch_early_hangups, signature, watcher_for
from tollway.gateway.limits.limiter import Limiter, build_limiter, per_worker_problem, worker_count
from tollway.gateway.pipeline import Pipeline
from tollway.gateway.plugins.hooks import PluginSet
from tollway.gateway.plugins.loader import load_all as load_plugins
from tollway.gateway.proxy import Proxy
from tollway.gateway.runtime import NO_API, ApiTables, ProviderRuntime, Runtime
from tollway.gateway.serving import Serving
from tollway.gateway.store import SchemaTooNew, build_key_store
from tollway.gateway.store.books import Books
from tollway.gateway.store.ledger import LEDGER_RULES, LedgerCounters, LedgerGauges
from tollway.gateway.surfaces import Endpoint
from tollway.gateway.surfaces.anthropic import ANTHROPIC, AnthropicAPI
from tollway.gateway.surfaces.openai import OpenAIAPI
from tollway.gateway.telemetry.accesslog import AccessLog
from tollway.gateway.telemetry.budget_metrics import BudgetLevels
from tollway.gateway.telemetry.cache_metrics import CACHE_RULES, CacheGauges
from tollway.gateway.telemetry.limit_metrics import LimitLevels
from tollway.gateway.telemetry.live import LiveStats
from tollway.gateway.telemetry.logs import refuse, setup_logging
from tollway.gateway.telemetry.metrics import Metrics, authorize_scrape
from tollway.gateway.telemetry.routing_metrics import ROUTING_RULES, RoutingCollector
from tollway.gateway.telemetry.tracing import Tracer, build_tracer
from tollway.gateway.tenancy.actions import Actions
from tollway.gateway.tenancy.directory import Directory, TableChange
from tollway.gateway.upstream.client import UpstreamClient

_JSON = ("content-type", "application/json")
KEY_RETRY_SECONDS = 2.0  # a key rebuild that failed is tried again this often (the directory's poll period)
log = logging.getLogger("tollway")


class Gateway:
    """The app granian serves: it owns the worker's state (`serving`, the upstream client, the
    watchdog, the config watcher) and its lifecycle, and dispatches each request to an
    `Endpoint` of a client surface (tollway.gateway.surfaces), the operations endpoints or the
    admin API. Only the app holds the Gateway; handlers get the `Serving` they need."""

    def __init__(self, config: Config, config_path: str | None = None) -> None:
        self.config_path = config_path
        self.metrics = Metrics(lambda: self.serving.runtime.metric_labels)  # label values follow the config
        self.access_log = AccessLog(enabled=config.server.access_log)
        self.upstream: UpstreamClient | None = None
        self.serving = Serving(Runtime(config, None), Proxy(self.metrics))
        self.ready = False
        # The drain's deadline, set by a stop (lifecycle.drain), and the cut-off it starts when due.
        self.drain_cut_off: asyncio.TimerHandle | None = None
        self.drain_task: asyncio.Task[int] | None = None
        self.drain_limits = started_limits(config.server)  # the process's, whatever a reload says
        # The requests being served (for the drain on shutdown, and the watchdog's bounds).
        self.watchdog = Watchdog(lambda: self.runtime.config.server.body_read_timeout)
        self.in_flight = self.watchdog.in_flight
        self.watcher: ConfigWatcher | None = None
        self.config_signature: Signature | None = None  # the config file's when it was read (create_app)
        self.heap: Heap | None = None  # a granian worker's (create_app): frozen once built, see lifecycle.heap
        # Closes of what a reload replaced (old pools, store, exporter). The loop holds tasks only
        # weakly, so they live here until done; one attribute each would drop a still-running one.
        self.background: set[asyncio.Task[Any]] = set()
        self.tracer = build_tracer(config.telemetry.traces, self.metrics)
        shared = self.metrics.shared_counts  # --workers N: reloads are summed through the shared files
        self.metrics.register(RoutingCollector(lambda: self.runtime, lambda: self.watcher, reloads=shared is None),
                              workers=("routing", ROUTING_RULES))
        if shared is not None:
            shared.track_reloads(lambda: self.watcher.reloads if self.watcher is not None else None)
        self.limit_levels = LimitLevels()  # read from the store per scrape, not per request
        self.metrics.register(self.limit_levels)
        self.ledger_counters = LedgerCounters(self.metrics.registry)
        self.books = Books(config, config_path, self.ledger_counters)
        self.plugins = PluginSet(load_plugins(config.plugins), self.metrics.plugin_errors)  # checked by `serve`
        self.guardrails = GuardrailSet(config.guardrails, self.metrics.guardrail_decisions)
        self.cache = ResponseCache(config, metrics=self.metrics)  # docs/cache.md
        self.metrics.register(CacheGauges(lambda: self.cache), workers=("cache", CACHE_RULES))
        # Run-time keys and teams (issue 13): in the store's database, held here in memory.
        self.directory = Directory(build_key_store(config.store, config_path)) if config.store is not None else None
        if self.directory is not None:
            self.directory.on_change = self._keys_changed
        self._key_rebuild: asyncio.Handle | None = None  # a key rebuild to come (_keys_changed)
        self._unbuilt: list[tuple[ApiKey | None, ApiKey]] = []  # key changes no rebuild has taken yet
        self._keys_failing = False  # the last key rebuild failed: a retry is waiting
        self._plug()
        self.metrics.register(LedgerGauges(lambda: self.books.ledger), workers=("ledger", LEDGER_RULES))
        self.metrics.register(BudgetLevels(lambda: self.books.budgets))  # a reload's new keeper is read
        self.live = LiveStats(self.metrics.live_families)  # the console's last hour, sampled off the request path
        self.admin = AdminAPI(self.serving, lambda: self.live)
        self.console = Console(self.serving)  # the operator console's files, read once
        self.openai = OpenAIAPI(self.serving)
        self.routes: dict[tuple[str, str], Endpoint] = {
            **self.openai.routes(),
            **AnthropicAPI(self.serving).routes(),
            ("GET", "/healthz"): Endpoint("health", self.healthz),
            ("GET", "/readyz"): Endpoint("health", self.readyz),
            ("GET", "/metrics"): Endpoint("metrics", self.metrics_endpoint),
            **self.admin.routes(),
            **self.console.routes(),
        }

    # What requests are served with lives in `serving`; these name its parts for the lifecycle.
    @property
    def runtime(self) -> Runtime:
        return self.serving.runtime

    @runtime.setter
    def runtime(self, runtime: Runtime) -> None:
        self.serving.runtime = runtime

    @property
    def limiter(self) -> Limiter | None:
        return self.serving.limiter

    @limiter.setter
    def limiter(self, limiter: Limiter | None) -> None:
        self.serving.limiter = limiter

    @property
    def tracer(self) -> Tracer | None:
        return self.serving.tracer

    @tracer.setter
    def tracer(self, tracer: Tracer | None) -> None:
        self.serving.tracer = tracer

    @property
    def books(self) -> Books:
        assert self.serving.books is not None  # set in __init__
        return self.serving.books

    @books.setter
    def books(self, books: Books) -> None:
        self.serving.books = books

    @property
    def proxy(self) -> Proxy:
        return self.serving.proxy

    # -- lifecycle (granian calls these once per worker) ---------------------------------

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        with stop_signals_held(loop):  # a stop sent meanwhile arrives once serving (lifecycle.drain)
            self._start_serving(loop)

    def _start_serving(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            if self.directory is not None:  # the run-time keys, before the first runtime is built
                loop.run_until_complete(self.directory.open())
            self.start()
            if self.runtime.api.keys or self.runtime.api.teams:  # their budgets are rebuilt from the ledger with the rest
                self.books = Books(self.runtime.config, self.config_path, self.ledger_counters, reload_of=self.books)
                self._plug()
            loop.run_until_complete(self.books.start(loop))
        except SchemaTooNew as exc:
            refuse(f"refusing to start: {exc}")
            raise SystemExit(1) from None
        if self.directory is not None:
            self.directory.start(loop, self.serving.last_used)
        self.runtime.start(loop)
        pricing.preload()  # before serving: reading the dataset would hold up the first priced request
        self.runtime.prices.warm()
        self.metrics.start(loop)
        self.live.start(loop)
        if self.tracer is not None:
            self.tracer.exporter.start(loop)
        self.watcher = watcher_for(self)
        if self.watcher is not None:
            self.watcher.install(loop)
        install_readiness_signal(loop, self)
        self.watchdog.start(loop)
        if self.heap is not None:  # last: all that was built for serving is in the frozen heap
            self.heap.start(loop)

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._key_rebuild is not None:  # (a retry of a failed one)
            self._key_rebuild.cancel()
        loop.run_until_complete(drain(self, self.drain_limits.cut_off))
        self.watchdog.close()
        if self.heap is not None:
            self.heap.close()
        # The usage records first, within the time granian leaves before it kills the worker
        # (lifecycle.drain._KILL_MARGIN): they are what is billed; the rest is telemetry.
        loop.run_until_complete(self.books.close(LEDGER_FLUSH_SECONDS))
        if self.tracer is not None:  # the drained requests' spans, within a short deadline
            loop.run_until_complete(self.tracer.exporter.close(TRACE_FLUSH_SECONDS))
        if self.watcher is not None:
            self.watcher.close(loop)
        loop.run_until_complete(self._close_providers(list(self.runtime.providers.values())))
        if self.upstream is not None:
            loop.run_until_complete(self.upstream.aclose())
        if self.limiter is not None:  # flush queued settles
            loop.run_until_complete(self.limiter.store.aclose())
        loop.run_until_complete(self.plugins.close(PLUGIN_FLUSH_SECONDS))  # queued on_complete calls
        loop.run_until_complete(self.cache.aclose())  # queued Redis writes
        if self.directory is not None:  # the keys' last use
            loop.run_until_complete(self.directory.close(self.serving.last_used))
        self.access_log.flush()
        self.live.close()
        self.metrics.close()
        token_count.shutdown()

    def start(self) -> None:
        """Open the upstream pool and begin serving (needs no running loop)."""
        self.upstream = UpstreamClient(ca_bundle=os.environ.get("TOLLWAY_CA_BUNDLE"))
        self.runtime = Runtime(self.runtime.file_config, self.upstream, api=self._api())
        self._new_actions()
        self.limiter = build_limiter(self.runtime.config, self.metrics, self.limiter)
        self.ready = True

    def reload(self, config: Config) -> None:
        """Swap in a new config; requests in flight keep the runtime they started with.
        Call it on the gateway's loop: new pools start scraping there."""
        loop = asyncio.get_running_loop()
        # Build all that can raise before swapping anything: a failure leaves the old config
        # whole. The limiter goes last: it may open a new store, which nothing after it can leak.
        retrace = config.telemetry != self.runtime.config.telemetry
        tracer = build_tracer(config.telemetry.traces, self.metrics) if retrace else self.tracer
        runtime = Runtime(config, self.upstream, self.runtime, self._api())
        config = runtime.config  # with the run-time keys and teams: limits and budgets apply to them too
        plugins = PluginSet(load_plugins(config.plugins), self.metrics.plugin_errors)  # PluginLoadError: old config stays
        books = Books(config, self.config_path, self.ledger_counters, reload_of=self.books)
        limiter = build_limiter(config, self.metrics, self.limiter)
        problem = per_worker_problem(runtime.file_config, worker_count())  # (run-time keys: see Runtime)
        if problem:  # `tollway serve` refused this at start; a reload cannot
            log.error("config reload: %s Until restarted, each of the workers enforces every limit on its own.",
                      problem)
        if config.store != self.runtime.config.store or config.ledger != self.runtime.config.ledger:
            log.warning("config reload: store: and ledger: changes take effect when the gateway restarts")
        started = self.drain_limits  # granian's main process stops the workers by these (lifecycle.drain)
        if (config.server.drain_delay, config.server.drain_timeout) != (started.delay, started.timeout):
            log.warning("config reload: server.drain_delay and server.drain_timeout changes take effect when the "
                        "gateway restarts; until then it drains with drain_delay %gs, drain_timeout %gs",
                        started.delay, started.timeout)
        rebuild = books.adopt(self.books)
        self.plugins = plugins  # (the old ones' queued on_complete calls finish in their tasks)
        self.guardrails = GuardrailSet(config.guardrails, self.metrics.guardrail_decisions)
        self.cache = ResponseCache(config, self.cache)  # (the entries stay unless cache: changed)
        if self.cache.retired is not None:
            self._in_background(self.cache.retired.aclose())
        if retrace:
            self._swap_tracer(tracer, loop)
        self._swap_keyed(runtime, books, rebuild, limiter, loop)

    def _swap_keyed(self, runtime: Runtime, books: Books, rebuild: Awaitable[None] | None, limiter: Limiter,
                    loop: asyncio.AbstractEventLoop) -> None:
        """Serve with `runtime` and what depends on its keys and teams (budgets, limits) from now
        on; `rebuild` is what `books.adopt` returned (made with the rest: nothing here raises)."""
        old_books, self.books = self.books, books
        if rebuild is not None:  # owners new to budgets: their spend this period, from the ledger
            self._in_background(rebuild)
        old_books.budgets.hand_over()  # its charges not yet in Redis, before the new share's first sync
        books.budgets.start(loop)
        if old_books.budgets.share is not None:  # its charges not yet in Redis, and its connections
            self._in_background(old_books.budgets.aclose())
        self._plug()
        old_limiter, self.limiter = self.limiter, limiter
        if old_limiter is not None and old_limiter.store is not limiter.store:
            self._in_background(old_limiter.store.aclose())
        old, self.runtime = self.runtime, runtime
        if old.file_config is not runtime.file_config:
            self._new_actions()
        self.runtime.start(loop)
        self._in_background(self._close_providers(self.runtime.retired(old)))

    def _plug(self) -> None:
        """Serve new requests with the current features' hooks (and the cache they hold)."""
        self.serving.pipeline, self.serving.cache = self._pipeline(), self.cache

    def _pipeline(self) -> Pipeline:
        """The request path's hooks: the books' (budgets, ledger), the guardrails', then the plugins'
        (so a plugin sees what the guardrails let through, masked), then the cache's (its key is over
        the body as they leave it, and it stores what the client got)."""
        return self.books.pipeline().join(self.guardrails.pipeline()).join(self.plugins.pipeline()).join(
            self.cache.pipeline())

    def _api(self) -> ApiTables:
        return self.directory.tables if self.directory is not None else NO_API

    def _new_actions(self) -> None:
        """The admin actions for the current config file (its keys and teams are read-only)."""
        if self.directory is not None:
            self.serving.actions = Actions(self.directory.store, self.runtime.file_config, self.directory,
                                           workers=worker_count())

    def _keys_changed(self, change: TableChange) -> None:
        """The directory changed: patch the key table in place when limits and budgets are
        blind to the change, else rebuild the runtime, limiter and budgets with it, once per
        burst of changes (a poll may bring many), on the loop."""
        if not self.ready:
            return  # (before start: `start` builds the first runtime with them)
        if change.light:  # (also while a rebuild is to come: O(changed keys), and it holds if that fails)
            self.runtime.patch_keys(change.tables, change.keys)
            return
        # The directory's version has moved past these changes: it will not bring them again,
        # so they are held here until a rebuild has taken them (see _rebuild_keys).
        self._unbuilt.extend(change.keys)
        if self._key_rebuild is None:
            self._key_rebuild = asyncio.get_running_loop().call_soon(self._rebuild_keys)
        elif self._keys_failing:  # a retry is waiting: the refusals among these must not wait for it
            self._refuse_unbuilt(change.keys)

    def _rebuild_keys(self) -> None:
        """Rebuild what depends on the run-time keys and teams: the runtime's key table (and
        the metric labels, routes and prices built with it; providers are reused), the
        limiter's policy and the budgets. Nothing else: plugins, guardrails, the cache and the
        tracer come from the config file, and a key change must not re-run plugin factories
        (docs/plugins.md: at start and on a config reload only).

        A rebuild that fails must not leave a revoked key working: the refusals among the
        changes it was to take (revocations, expiries, rotations) are patched into the key
        table in place, and the rebuild is tried again every KEY_RETRY_SECONDS until it works."""
        self._key_rebuild = None
        loop = asyncio.get_running_loop()
        try:
            runtime = Runtime(self.runtime.file_config, self.upstream, self.runtime, self._api())
            books = Books(runtime.config, self.config_path, self.ledger_counters, reload_of=self.books)
            limiter = build_limiter(runtime.config, self.metrics, self.limiter)
            self._swap_keyed(runtime, books, books.adopt(self.books), limiter, loop)
        except Exception as exc:  # noqa: BLE001 - from a loop callback: nothing above would catch it
            if not self._keys_failing:  # once per incident; the traceback says where
                log.exception("keys: applying a key or team change failed (%s: %s); revocations, expiries and "
                              "rotations are applied, the rest is retried every %.0f s",
                              type(exc).__name__, exc, KEY_RETRY_SECONDS)
            self._keys_failing = True
            self._refuse_unbuilt(self._unbuilt)
            self._key_rebuild = loop.call_later(KEY_RETRY_SECONDS, self._rebuild_keys)
            return
        self._unbuilt = []
        if self._keys_failing:
            log.info("keys: key and team changes are applied again")
            self._keys_failing = False

    def _refuse_unbuilt(self, changes: Sequence[tuple[ApiKey | None, ApiKey]]) -> None:
        """The fail-safe: patch in place the changes that take a key's access away, the ones a
        key table without them would wrongly grant. Other changes (new keys, limits, budgets,
        teams) wait for the rebuild: patched alone they would run outside their bounds."""
        refusals = [(old, new) for old, new in changes if _refuses(old, new)]
        if refusals:
            try:
                self.runtime.patch_keys(self._api(), refusals)
            except Exception:  # noqa: BLE001 - a loop callback; the retry tries the whole rebuild again
                log.exception("keys: applying %d key refusal(s) in place failed", len(refusals))

    def _swap_tracer(self, tracer: Tracer | None, loop: asyncio.AbstractEventLoop) -> None:
        """Trace with `tracer` from now on; the old exporter flushes what it holds."""
        old, self.tracer = self.tracer, tracer
        if tracer is not None:
            tracer.exporter.start(loop)
        if old is not None:
            self._in_background(old.exporter.close(TRACE_FLUSH_SECONDS))

    def _in_background(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def _close_providers(self, providers: list[ProviderRuntime]) -> None:
        for provider in providers:
            await provider.endpoints.close()

    # -- dispatch --------------------------------------------------------------------------

    async def __rsgi__(self, scope: Scope, proto: HTTPProtocol) -> None:
        if scope.proto != "http":
            return
        method, path = scope.method, scope.path
        entry = self.routes.get((method, path.rstrip("/") or "/"))
        if entry is None and path.startswith("/admin/"):  # paths with an id: /admin/keys/{id}, ...
            entry = self.admin.match(method, path)
        elif entry is None and path.startswith("/ui/"):  # the console's files: /ui/app.js, ...
            entry = self.console.match(method, path)
        elif entry is None and path.startswith("/v1/"):  # paths with an id: /v1/models/{id}
            entry = self.openai.match(method, path)
        asked = scope.headers.get("x-request-id")
        rid = request_id(asked)
        if asked and rid == asked and self.runtime.secrets.mask(asked) != asked:  # a held credential as the id
            rid = request_id(None)
        ex = Exchange(rid, entry.api if entry else "unknown")
        ex.proto, ex.scope = proto, scope
        task: asyncio.Task[Any] = asyncio.current_task()  # type: ignore[assignment]
        self.in_flight[task] = ex
        try:
            if entry is None:
                raise self._unknown(method, path)
            await entry.handler(scope, proto, ex)
        except GatewayError as exc:
            if entry is not None:
                exc = entry.surface.dress(exc)
            elif path.startswith("/anthropic/"):  # a wrong method or path there: the Anthropic SDK's shape
                exc = ANTHROPIC.dress(exc)
            self._send_error(proto, ex, exc)
        except asyncio.CancelledError:  # the watchdog or the drain deadline: answer, don't crash
            self._cancelled(proto, ex)
        except Exception:  # noqa: BLE001 - the last line of defence: the process must stay up
            log.exception("unhandled error serving %s %s (request %s)", method, path, ex.request_id)
            self._send_error(proto, ex, errors.internal())
            ex.error_type = "internal_error"
        finally:
            self.in_flight.pop(task, None)
            if ex.watcher is not None:  # rare: only requests older than WATCH_AFTER have one
                self.watchdog.unwatch(ex)
            self._finish(ex)

    def _cancelled(self, proto: HTTPProtocol, ex: Exchange) -> None:
        """Answer a request the watchdog or the drain cut off (see tollway.gateway.downstream.watchdog)."""
        if ex.phase == ANSWERED:  # cut off while counting its tokens: what was sent stands
            return
        if ex.cancel_reason == "client_closed":  # nobody to answer
            if ex.first_byte is None:  # an answer under way keeps the status the client got (as when a send fails)
                ex.status = 499
            ex.error_type = "client_closed"
        elif ex.cancel_reason == "body_timeout":
            self._send_error(proto, ex, errors.body_timeout(self.runtime.config.server.body_read_timeout))
        else:
            self._send_error(proto, ex, errors.shutting_down())

    def _unknown(self, method: str, path: str) -> GatewayError:
        path = self.runtime.secrets.mask(path)  # the errors echo it: a client may have pasted a held key there
        config = self.runtime.config
        if config.admin is None and not config.admins and (path == "/admin" or path.startswith("/admin/")):
            return errors.admin_not_configured(path)  # any method: the whole admin API is off
        if path.rstrip("/") == "/ui" or path.startswith("/ui/"):
            return errors.method_not_allowed(method, path) if self.console.allows(path) else errors.not_found(path)
        if any(p == path for _, p in self.routes) or self.admin.allows(path):
            return errors.method_not_allowed(method, path)
        return errors.not_found(path)

    def _send_error(self, proto: HTTPProtocol, ex: Exchange, exc: GatewayError) -> None:
        # (errors.upstream_error keeps an upstream's number in 4xx/5xx; this is the last guard:
        # a status granian cannot send stops the worker)
        status = ex.status = exc.status if 400 <= exc.status <= 599 else 500
        ex.error_type = ex.error_type or exc.code or exc.type
        headers = [_JSON, ("x-request-id", ex.request_id), *exc.headers]
        if ex.cache is not None:  # a cached route's every answer says what the cache did
            headers.append(ex.cache.header)
        try:
            proto.response_bytes(status, headers, exc.body())
        except RuntimeError:
            pass  # a response was already started (stream): the error went out as an SSE event

    def _finish(self, ex: Exchange) -> None:
        if ex.api in ("health", "metrics", "console"):  # (the console's files are no gateway traffic)
            return
        u = ex.usage
        if ex.trace is not None:
            ex.trace.finish(ex, self.runtime.secrets)
        try:  # (a metric must never cost the request its access-log line or its ledger record)
            self.metrics.observe(
                operation=ex.api, provider=ex.otel_provider, model=ex.route, response_model=ex.upstream_model or "",
                status=ex.status, seconds=ex.elapsed(), error_type=ex.error_type,
                input_tokens=u.prompt_tokens if u else 0, output_tokens=u.completion_tokens if u else 0,
                provider_name=ex.provider or "none", overhead=ex.overhead(),
            )
            if ex.first_byte is not None and ex.stream:
                self.metrics.observe_ttft(ex.api, ex.otel_provider, ex.route, ex.first_byte - ex.start)
        except Exception:  # noqa: BLE001
            log.exception("recording the metrics of request %s failed", ex.request_id)
        if self.access_log.enabled:  # building the record is most of the cost: skip it when off
            self.access_log.write(ex.log_record(self.runtime.secrets))
        if ex.key_name is not None:  # someone's request: what it cost, and its tokens, by team
            try:
                self.metrics.observe_spend(ex.team, ex.route, ex.provider, ex.cost_usd,
                                           u.prompt_tokens if u else 0, u.completion_tokens if u else 0)
            except Exception:  # noqa: BLE001
                log.exception("recording the spend metrics of request %s failed", ex.request_id)
        for after in ex.after:
            try:
                after(ex)
            except Exception:  # noqa: BLE001 - a feature's bug must not take the request's worker down
                log.exception("an after_response hook failed (request %s)", ex.request_id)

    # -- operations ------------------------------------------------------------------------

    async def healthz(self, scope: Scope, proto: HTTPProtocol, ex: Exchange) -> None:
        ex.status = 200
        proto.response_bytes(200, [_JSON, ("x-request-id", ex.request_id)], b'{"status":"ok"}')

    async def readyz(self, scope: Scope, proto: HTTPProtocol, ex: Exchange) -> None:
        ex.status = 200 if self.ready else 503
        body = b'{"status":"ready"}' if self.ready else b'{"status":"not ready"}'
        proto.response_bytes(ex.status, [_JSON, ("x-request-id", ex.request_id)], body)

    async def metrics_endpoint(self, scope: Scope, proto: HTTPProtocol, ex: Exchange) -> None:
        authorize_scrape(self.runtime.config.server, scope.headers.get("authorization"))  # 401 unless allowed
        await self.limit_levels.refresh(self.limiter)
        ex.status = 200
        headers = [("content-type", "text/plain; version=0.0.4; charset=utf-8"), ("x-request-id", ex.request_id)]
        proto.response_bytes(200, headers, self.metrics.exposition())


def _refuses(old: ApiKey | None, new: ApiKey) -> bool:
    """Whether a key change takes access away: a revocation, a new or earlier expiry, a
    rotation (the old secret's grace), a models list that allows less, or a move to another
    team (whose models may allow less: patched in, the key gets them at once; the new team's
    limits and budget come with the rebuild), for a key the table already holds."""
    if new.revoked_at is not None:
        return True
    if old is None:
        return False
    return (new.expires_at is not None and (old.expires_at is None or new.expires_at < old.expires_at)) or \
        new.key_hash != old.key_hash or not set(new.models) >= set(old.models) or new.team != old.team


def create_app() -> Gateway:
    """granian's factory target: the gateway for the config named by TOLLWAY_CONFIG."""
    catch_early_hangups()  # a SIGHUP before the watcher is installed is applied then (lifecycle.reload)
    setup_logging()  # JSON on stderr; the access log owns stdout
    path = os.environ.get("TOLLWAY_CONFIG")
    if not path:
        raise SystemExit("TOLLWAY_CONFIG is not set; start the gateway with `tollway serve --config FILE`.")
    seen = signature(path)  # before reading: a change from here on is reloaded once the watcher runs
    gateway = Gateway(config_mod.load(path), path)
    gateway.config_signature = seen
    gateway.heap = Heap()
    pricing.use_table(price_source.load)  # a worker: without the ~11 MB the dataset's package costs
    # Read now, before granian's start: `load` may run a child process, which must not inherit
    # the stop signals __rsgi_init__ holds (lifecycle.drain.stop_signals_held).
    pricing.preload()
    return gateway


