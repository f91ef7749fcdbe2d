"""What requests are served with right now, shared by the app and every client surface.

`Gateway.reload` replaces the runtime (config, routes, providers, keys), the limiter and the
tracer here; the handlers (the admission step, the client surfaces, the admin API) read them
here and never hold the `Gateway`. A request reads each one once, when it starts, so a reload
in the middle of it never mixes two configs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tollway.gateway.limits.limiter import Limiter
from tollway.gateway.pipeline import EMPTY, Pipeline
from tollway.gateway.proxy import Proxy
from tollway.gateway.runtime import Runtime
from tollway.gateway.telemetry.tracing import Tracer

if TYPE_CHECKING:
    from tollway.gateway.cache import ResponseCache
    from tollway.gateway.store.books import Books
    from tollway.gateway.tenancy.actions import Actions


@dataclass(slots=True)
class Serving:
    runtime: Runtime
    proxy: Proxy
    limiter: Limiter | None = None  # built when the gateway starts: a Redis store belongs to its loop
    tracer: Tracer | None = None  # None: tracing is off
    pipeline: Pipeline = EMPTY  # the features plugged into the request path's seams
    books: Books | None = None  # the ledger and the budgets (tollway.gateway.store.books)
    actions: Actions | None = None  # run-time keys and teams (None: no store to keep them)
    cache: ResponseCache | None = None  # the response cache whose hooks are in `pipeline`
    # key id -> when it was last used, since the directory last wrote them (tollway.gateway.tenancy)
    last_used: dict[str, float] = field(default_factory=dict)
