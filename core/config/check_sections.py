"""Checks of the sections that stand alone: `server:`, `telemetry.traces`, `store:` and
`ledger:` (with the budgets they keep), `plugins:` and `guardrails:`."""
from __future__ import annotations

import re
import urllib.parse

from tollway.core.config.check_common import Fail, unique
from tollway.core.config.root import Config
from tollway.core.config.server import Server
from tollway.core.config.telemetry import Traces
from tollway.core.guardrails.settings import problems as guardrail_problems

# The most seconds each may be: a drain is the time a load balancer takes to stop sending and
# the longest stream takes to end, not days. (Infinite or huge values overflowed the drain's
# timers and granian's kill timeout: `serve` crashed at its start or on SIGTERM.)
_MOST_SECONDS = {"drain_delay": 3600, "drain_timeout": 86400, "reload_check_interval": 86400}


def check_server(s: Server, fail: Fail) -> None:
    for field, most in _MOST_SECONDS.items():  # (a NaN fails the comparison too)
        value = getattr(s, field)
        if not 0 <= value <= most:
            fail(["server", field], f"must be a number of seconds from 0 to {most}, not {value:g}")
    for field in ("body_read_timeout", "client_idle_timeout"):
        if not 0 < getattr(s, field) < float("inf"):
            fail(["server", field], "must be a finite number of seconds > 0")
    for field in ("max_body_bytes", "max_upstream_body_bytes", "max_count_tokens_bytes"):
        if getattr(s, field) < 1:
            fail(["server", field], "must be at least 1 byte")


_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def check_traces(t: Traces, fail: Fail) -> None:
    where = ["telemetry", "traces"]
    problem = _endpoint_problem(t.endpoint)
    if problem:
        fail(where + ["endpoint"], problem)
    if not 0.0 <= t.sample_ratio <= 1.0:
        fail(where + ["sample_ratio"], "must be between 0 and 1")
    if t.export_interval <= 0:
        fail(where + ["export_interval"], "must be > 0 seconds")
    if t.max_queue < 1:
        fail(where + ["max_queue"], "must be at least 1")
    if not t.service_name:
        fail(where + ["service_name"], "must not be empty")
    for name, value in t.headers.items():  # the value may be a secret: never quote it
        if not _HEADER_NAME.fullmatch(name):
            fail(where + ["headers", name], "not a valid HTTP header name")
        if not value.isprintable() or not value.isascii():
            fail(where + ["headers", name], "the value must be printable ASCII (no CR, LF or control characters)")


def _endpoint_problem(url: str) -> str:
    """Why `url` cannot name a collector, or "". Parsed the way the exporter parses it, so
    nothing that passes here can raise there (at startup, or halfway through a reload)."""
    bad_url, bad_port = "endpoint must be an http:// or https:// URL with a host", "the port must be a number from 1 to 65535"
    try:
        parts = urllib.parse.urlsplit(url)  # raises ValueError for a broken [IPv6] host
    except ValueError:
        return bad_url
    if parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in url):
        return bad_url
    try:
        port = parts.port  # raises ValueError for ":abc" or out of range
    except ValueError:
        return bad_port
    return bad_port if port == 0 else ""


def check_ledger(config: Config, fail: Fail) -> None:
    store, ledger = config.store, config.ledger
    if store is not None and store.backend == "postgres" and not store.url:
        fail(["store", "url"], "the postgres backend needs a url, e.g. postgresql://user@host:5432/tollway")
    if store is not None and store.backend == "sqlite" and not store.path:
        fail(["store", "path"], "the sqlite backend needs a file path")
    if ledger.retention_days < 1:
        fail(["ledger", "retention_days"], "must be at least 1 day")
    for field in ("buffer_records", "batch_records"):
        if getattr(ledger, field) < 1:
            fail(["ledger", field], "must be at least 1")
    if not 0 < ledger.flush_interval < float("inf"):
        fail(["ledger", "flush_interval"], "must be a finite number of seconds > 0")
    budgets = [("keys", i, k.budget) for i, k in enumerate(config.keys)]
    budgets += [("teams", i, t.budget) for i, t in enumerate(config.teams)]
    for section, i, budget in budgets:
        if budget is not None and not 0 <= budget.usd < float("inf"):
            fail([section, i, "budget", "usd"], "must be a finite number of USD >= 0")


_PLUGIN_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*")


def check_plugins(config: Config, fail: Fail) -> None:
    unique(config.plugins, "plugins", fail)
    for i, p in enumerate(config.plugins):
        if p.module is not None and not _PLUGIN_MODULE.fullmatch(p.module):
            fail(["plugins", i, "module"], "expected 'package.module:factory' (a module path, a colon, a callable's name)")
        if not 0 < p.timeout_ms < float("inf"):
            fail(["plugins", i, "timeout_ms"], "must be a finite number of milliseconds > 0")


def check_guardrails(config: Config, fail: Fail) -> None:
    unique(config.guardrails, "guardrails", fail)
    for where, problem in guardrail_problems(config.guardrails):
        fail(where, problem)
