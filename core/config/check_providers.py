"""Checks of where requests go: each provider has what its schema needs (and one source of
endpoints, for a pool), each model's targets name real providers, and the retry and
outlier-detection numbers make sense together."""
from __future__ import annotations

import math
import re
from collections.abc import Collection

import msgspec

from tollway.core.accounting.pricing import Price
from tollway.core.config.check_common import Fail
from tollway.core.config.providers import PICK_POLICIES, SCHEMAS, Provider
from tollway.core.config.routing import Model, Routing
from tollway.core.suggest import did_you_mean

# Provider fields a schema cannot work without, and the keys its `credentials` may hold.
SCHEMA_REQUIRES: dict[str, tuple[str, ...]] = {"bedrock": ("region",), "vertex": ("project", "location")}
CREDENTIAL_FIELDS: dict[str, frozenset[str]] = {
    "bedrock": frozenset({"access_key_id", "secret_access_key", "session_token", "profile"}),
    "vertex": frozenset({"service_account_file"}),
}


def check_provider(p: Provider, i: int, fail: Fail) -> None:
    if p.schema not in SCHEMAS:
        fail(["providers", i, "schema"],
             f"unknown schema '{p.schema}' (expected one of: {', '.join(SCHEMAS)}){did_you_mean(p.schema, SCHEMAS)}")
        return  # what else a provider needs depends on its schema
    needs_url = p.schema in ("openai", "azure_openai", "anthropic", "gemini")
    if needs_url and not p.base_url and not p.endpoints and not p.discover:
        fail(["providers", i, "base_url"], f"schema '{p.schema}' needs base_url")
    for url in [p.base_url] if p.base_url else []:
        if not url.startswith(("http://", "https://")):
            fail(["providers", i, "base_url"], "base_url must start with http:// or https://")
    _check_pool(p, i, fail)
    if p.schema == "azure_openai" and not p.api_version:
        fail(["providers", i, "api_version"], "schema 'azure_openai' needs api_version (e.g. 2024-10-21)")
    for field in SCHEMA_REQUIRES.get(p.schema, ()):
        if not getattr(p, field):
            fail(["providers", i, field], f"schema '{p.schema}' needs {field}")
    _check_credentials(p, i, fail)
    for field in ("connect", "first_byte", "idle", "total"):
        seconds = getattr(p.timeouts, field)
        if seconds is not None and seconds <= 0:
            fail(["providers", i, "timeouts", field], "must be > 0 seconds")


def _check_credentials(p: Provider, i: int, fail: Fail) -> None:
    allowed = CREDENTIAL_FIELDS.get(p.schema, frozenset())
    for name in p.credentials or {}:
        if name not in allowed:
            known = ", ".join(sorted(allowed)) or "none"
            fail(["providers", i, "credentials", name],
                 f"unknown credential field for schema '{p.schema}' (known: {known}){did_you_mean(name, allowed)}")
    creds = p.credentials or {}
    if ("access_key_id" in creds) != ("secret_access_key" in creds):
        fail(["providers", i, "credentials"], "give access_key_id and secret_access_key together")


def _check_pool(p: Provider, i: int, fail: Fail) -> None:
    """A pool has exactly one source of endpoints, and a pick policy the gateway knows."""
    sources = [name for name in ("base_url", "endpoints", "discover") if getattr(p, name)]
    if len(sources) > 1:
        fail(["providers", i, sources[1]], f"give only one of base_url, endpoints, discover (found {', '.join(sources)})")
    if p.endpoints is not None and not p.endpoints:
        fail(["providers", i, "endpoints"], "a pool needs at least one endpoint")
    for j, url in enumerate(p.endpoints or []):
        if not url.startswith(("http://", "https://")):
            fail(["providers", i, "endpoints", j], "an endpoint must start with http:// or https://")
    if p.discover is not None and not 0 < p.discover.port < 65536:
        fail(["providers", i, "discover", "port"], "port must be 1-65535")
    if p.pick is not None and p.pick not in PICK_POLICIES:
        fail(["providers", i, "pick"],
             f"unknown pick policy '{p.pick}' (expected one of: {', '.join(PICK_POLICIES)}){did_you_mean(p.pick, PICK_POLICIES)}")
    if p.pick is not None and not (p.endpoints or p.discover):
        fail(["providers", i, "pick"], "pick applies to pools: give endpoints or discover")
    if p.scrape.interval <= 0 or p.scrape.timeout <= 0:
        fail(["providers", i, "scrape"], "interval and timeout must be > 0 seconds")


def check_model(m: Model, i: int, providers: Collection[str], fail: Fail) -> None:
    """A model has targets, each on a provider the config defines; its `match:` compiles."""
    if not m.targets:
        fail(["models", i, "targets"], "a model needs at least one target")
    for j, t in enumerate(m.targets):
        if t.provider not in providers:
            fail(["models", i, "targets", j, "provider"],
                 f"unknown provider '{t.provider}'{did_you_mean(t.provider, providers)}")
        if t.weight < 0:
            fail(["models", i, "targets", j, "weight"], "weight must be >= 0")
    if m.match is not None:
        try:
            re.compile(m.match)
        except re.error as exc:
            fail(["models", i, "match"], f"invalid regex: {exc}")
    if m.price is not None:
        check_price(m.price, ["models", i, "price"], fail)


def check_price(price: Price, where: list[str | int], fail: Fail) -> None:
    """Every rate of a price is a finite number of USD, 0 or more. YAML reads `.nan` and `.inf`
    as floats: a NaN rate would make a cost_usd reservation NaN (a limit that never refuses
    again), an infinite one an infinite cost in the ledger (which PostgreSQL cannot sum), a
    negative one a refund for using the model."""
    for name in msgspec.structs.fields(Price):
        value = getattr(price, name.name)
        rates = value.items() if isinstance(value, dict) else [(None, value)]  # `image`: a rate per tier
        for tier, rate in rates:
            if rate is not None and not (math.isfinite(rate) and rate >= 0.0):
                fail([*where, name.name] + ([tier] if tier is not None else []),
                     f"a price must be a finite number of USD, 0 or more, not {rate:g}")


def check_routing(routing: Routing, fail: Fail) -> None:
    r, o = routing.retry, routing.outlier_detection
    if r.attempts < 1:
        fail(["routing", "retry", "attempts"], "must be at least 1")
    if r.deadline <= 0 or r.backoff_base < 0 or r.backoff_max < r.backoff_base:
        fail(["routing", "retry"], "need deadline > 0 and 0 <= backoff_base <= backoff_max")
    if o.consecutive_failures < 1 or o.cool_down <= 0 or o.max_cool_down < o.cool_down:
        fail(["routing", "outlier_detection"], "need consecutive_failures >= 1 and 0 < cool_down <= max_cool_down")
