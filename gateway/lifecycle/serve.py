"""Running the gateway under granian (RSGI interface, uvloop, one process per worker)."""
from __future__ import annotations

import copy
import logging
import os

from tollway.core import kernels
from tollway.core.config import Config
from tollway.core.providers.registry import AdapterUnavailable
from tollway.core.security.demo_keys import demo_credentials
from tollway.gateway import price_source
from tollway.gateway.lifecycle.listen import port_problem
from tollway.gateway.limits.limiter import WORKERS_ENV, per_worker_problem
from tollway.gateway.plugins.loader import PluginLoadError
from tollway.gateway.plugins.loader import load_all as load_plugins
from tollway.gateway.runtime import provider_adapters
from tollway.gateway.telemetry.logs import LOGGING, refuse, start_record

log = logging.getLogger("tollway")


def serve(config: Config, config_path: str, host: str, port: int, workers: int, reuse_port: bool = False) -> int:
    """Serve until stopped. Returns the process exit code. Unless `reuse_port`, a port that
    something already listens on is refused (see tollway.gateway.lifecycle.listen)."""
    from granian.constants import HTTPModes, Interfaces, Loops

    from tollway.gateway.lifecycle.drain import TollwayServer, catch_early_stops

    if workers < 1:
        refuse("refusing to start: --workers must be at least 1")
        return 2
    problem = per_worker_problem(config, workers)
    if problem:  # refuse rather than silently admit N times every limit; see docs/limits.md
        refuse(f"refusing to start: {problem}")
        return 2
    problem = None if reuse_port else port_problem(host, port)
    if problem:
        refuse(f"refusing to start: {problem}")
        return 2
    try:  # in this process, before the workers fork: they inherit the modules, read from disk once
        for provider in config.providers:
            provider_adapters(provider)
    except AdapterUnavailable as exc:
        refuse(f"refusing to start: {exc}")
        return 2
    try:  # every plugin imported and built once here, so a broken one stops `serve`, not a worker
        load_plugins(config.plugins)
    except PluginLoadError as exc:
        refuse(f"refusing to start: {exc}")
        return 2
    price_source.warm()  # once here, so the workers read it from the cache
    os.environ["TOLLWAY_CONFIG"] = config_path
    os.environ[WORKERS_ENV] = str(workers)
    server = TollwayServer(
        "tollway.gateway.app:create_app",
        address=host,
        port=port,
        interface=Interfaces.RSGI,
        # HTTP/1.1 only. Under granian's `auto`, h2c is served too, and there a stream's
        # backpressure (tollway.gateway.downstream.backpressure) reads the TCP connection's
        # acknowledged bytes, which a client keeps moving by reading another stream of the same
        # connection: one unread stream then pulls its whole upstream into memory. Put TLS and
        # HTTP/2 in front (a load balancer) where clients need them.
        http=HTTPModes.http1,
        workers=workers,
        loop=Loops.uvloop,
        factory=True,
        log_access=False,
        log_dictconfig=copy.deepcopy(LOGGING),  # granian's lines as JSON on stderr too
        backlog=2048,
        drain_delay=config.server.drain_delay,
        drain_timeout=config.server.drain_timeout,
    )
    _log_start(config, config_path, workers)  # after granian configured logging, before it forks
    main = os.getpid()
    os.register_at_fork(after_in_child=lambda: catch_early_stops(main))  # a worker's, not this process's handlers
    server.serve()
    return 0


def _log_start(config: Config, config_path: str, workers: int) -> None:
    log.info("tollway starting: %d providers, %d models, %d keys", len(config.providers), len(config.models),
             len(config.keys), extra={"fields": start_record(config, config_path, workers, kernels.ACTIVE)})
    if config.store is None:
        log.info("no ledger: usage is not recorded; configure store: (sqlite or postgres) to keep it")
    for demo in demo_credentials(config):  # names the entry, never the key or its digest
        log.warning("demo credential: %s: %s", demo.entry, demo.message,
                    extra={"fields": {"event": "demo_credential", "entry": demo.path, "name": demo.name}})
