"""The gateway's configuration: one YAML file decoded into msgspec Structs.

Loading is three steps, each with errors that name the field by its path and line:
1. YAML is parsed into a node tree (kept, so any path can be mapped back to a line);
2. `${ENV_VAR}` references in string values are substituted (a missing variable is an error);
3. the plain data is decoded into `Config` (msgspec checks types and unknown fields), then
   `validate()` checks what types cannot: unique names, references that resolve (targets to
   providers, keys to models and teams, limits to models), and so on.

`check()` finds every problem (for `tollway check`); `loads()` raises the first of them, so
`tollway serve` and a reload refuse a config exactly when `check` reports an error.

The top-level shape (`providers`, `models`, `keys`) is a contract other issues extend.
"""
from __future__ import annotations

import dataclasses
import os
import re
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import msgspec
import yaml

from tollway.core.accounting.pricing import Price, dataset_price
from tollway.core.cache import settings as cache_settings
from tollway.core.cache.settings import CachePolicy, CacheStore
from tollway.core.config.access import Admin, Budget, Key, Limit, RateLimits, ScopedAdmin, Team
from tollway.core.config.plugins import Guardrail, Plugin, PluginScope
from tollway.core.config.providers import PICK_POLICIES, SCHEMAS, Discover, Provider, Scrape, Timeouts
from tollway.core.config.report import ConfigError, error_at
from tollway.core.config.root import Config
from tollway.core.config.routing import Model, OutlierDetection, Retry, Routing, Target
from tollway.core.config.server import MetricsAuth, Server
from tollway.core.config.store import Ledger, Store
from tollway.core.config.telemetry import Telemetry, Traces
from tollway.core.guardrails.settings import problems as guardrail_problems
from tollway.core.limits.policy import measure_of, window_seconds
from tollway.core.struct_decode import Decoded, Path, decode
from tollway.core.suggest import did_you_mean

__all__ = [
    # the shape, by section (each in its own module: providers.py, routing.py, access.py, store.py,
    # server.py, telemetry.py, plugins.py; root.py for the top level)
    "SCHEMAS", "PICK_POLICIES", "Timeouts", "Scrape", "Discover", "Provider",
    "Target", "Model", "Retry", "OutlierDetection", "Routing", "Price", "CachePolicy",
    "Limit", "Budget", "Key", "Team", "Admin", "ScopedAdmin", "RateLimits",
    "Store", "Ledger", "MetricsAuth", "Server", "Traces", "Telemetry",
    "PluginScope", "Plugin", "Guardrail", "CacheStore", "Config",
    # loading and its errors
    "ConfigError", "Checked", "load", "loads", "check", "check_file",
    # the checks types cannot make
    "Fail", "validate", "problems", "warnings", "limit_problems", "SCHEMA_REQUIRES", "CREDENTIAL_FIELDS",
]


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def load(path: str, environ: Mapping[str, str] | None = None) -> Config:
    """Read, substitute and validate the YAML file at `path`. Raises ConfigError."""
    return loads(_read(path), environ)


def loads(text: str, environ: Mapping[str, str] | None = None) -> Config:
    """Decode config text. Raises ConfigError for the first problem, naming its field path and line."""
    checked = check(text, environ, with_warnings=False)  # (warnings look prices up: `tollway check` says them)
    if checked.errors:
        raise checked.errors[0]
    assert checked.config is not None  # no error: it decoded
    return checked.config


@dataclasses.dataclass(frozen=True)
class Checked:
    """Everything wrong with a config (`tollway check`), not only the first problem."""

    config: Config | None  # None when it did not decode
    errors: list[ConfigError]  # in the order they were found: the first is the one `loads` raises
    unset_env: list[ConfigError]  # with allow_missing_env: the ${VARS} that are not set (not errors)
    # What serves but may not be meant (not errors): models with no price. Only for a config without errors.
    warnings: list[ConfigError] = dataclasses.field(default_factory=list)


def check_file(path: str, environ: Mapping[str, str] | None = None, allow_missing_env: bool = False,
               with_warnings: bool = True) -> Checked:
    try:
        text = _read(path)
    except ConfigError as exc:
        return Checked(None, [exc], [])
    return check(text, environ, allow_missing_env, with_warnings)


def check(text: str, environ: Mapping[str, str] | None = None, allow_missing_env: bool = False,
          with_warnings: bool = True) -> Checked:
    """Every problem of config text: YAML, ${VARS}, types and unknown fields, then (if it decodes)
    the semantic checks and cross-references of `validate`.

    A ${VAR} that is not set is an error, unless `allow_missing_env`: then it is reported in
    `unset_env`, and problems of the values that use it are not reported (those values are
    unknown here; `tollway serve` checks them again with the real environment)."""
    env = os.environ if environ is None else environ
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)  # only a MarkedYAMLError has one
        line = mark.line + 1 if mark is not None else None
        return Checked(None, [ConfigError("", f"invalid YAML: {getattr(exc, 'problem', exc)}", line)], [])
    if root is None:
        return Checked(None, [ConfigError("", "the config file is empty")], [])
    unset: list[tuple[Path, str]] = []
    data = _to_data(root, [], env, unset)
    env_errors = [error_at(where, f"environment variable {name} is not set", root) for where, name in unset]
    unknown = [where for where, _ in unset]  # values still holding a literal ${VAR}
    config: Config | None = None
    decoded = decode(data, Config)
    found = decoded.problems
    if not found:
        config = msgspec.convert(data, Config, strict=False)
        # A value holding a literal ${VAR} is unknown here: the unset variable is the news, not it.
        found = [(where, problem) for where, problem in problems(config) if not _under_any(where, unknown)]
    else:
        found = _env_aware(found, unknown, allow_missing_env) + _problems_of_the_rest(decoded, unknown)
    errors = [error_at(where, problem, root) for where, problem in found]
    warned = [error_at(where, problem, root) for where, problem in warnings(config)] \
        if with_warnings and config is not None and not errors else []
    if allow_missing_env:
        return Checked(config if not errors else None, errors, env_errors, warned)
    return Checked(config if not errors and not env_errors else None, env_errors + errors, [], warned if not env_errors else [])


def _env_aware(found: list[tuple[Path, str]], unknown: list[Path], allow_missing_env: bool) -> list[tuple[Path, str]]:
    """Decode problems, given the values that hold a literal ${VAR} because it is not set."""
    if allow_missing_env:  # without the variable it cannot even decode (`port: ${PORT}`): say why
        return [(where, f"{problem} (its value uses an environment variable that is not set)"
                 if _under_any(where, unknown) else problem) for where, problem in found]
    return [(where, problem) for where, problem in found if not _under_any(where, unknown)]  # its own error says it


def _problems_of_the_rest(decoded: Decoded, unknown: list[Path]) -> list[tuple[Path, str]]:
    """The semantic problems of a config that did not decode, checked on its repaired copy
    (tollway.core.struct_decode), except at the values that had a decode problem or were
    repaired. Nothing if the repair failed, or dropped a whole section (that guess is at the
    root): its names would be missing, and every reference to them a false alarm."""
    if not decoded.ok:
        return []
    try:
        rest = msgspec.convert(decoded.repaired, Config, strict=False)
    except msgspec.ValidationError:
        return []
    broken = [where for where, _ in decoded.problems] + decoded.guessed
    return [(where, problem) for where, problem in problems(rest)
            if not _under_any(where, broken) and not _under_any(where, unknown)]


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as exc:
        raise ConfigError("", f"cannot read config file {path!r}: {exc.strerror}") from None


def _under_any(where: Path, prefixes: list[Path]) -> bool:
    return any(where[:len(p)] == p for p in prefixes)


def _to_data(node: yaml.Node, where: Path, env: Mapping[str, str], unset: list[tuple[Path, str]]) -> Any:
    """YAML node tree -> plain data, substituting ${VARS} in scalars. A variable that is not set
    is left as its literal `${NAME}` and listed in `unset`, with the path of the value."""
    if isinstance(node, yaml.MappingNode):
        return {k.value: _to_data(v, [*where, k.value], env, unset) for k, v in node.value}
    if isinstance(node, yaml.SequenceNode):
        return [_to_data(v, [*where, i], env, unset) for i, v in enumerate(node.value)]
    value = _scalar(node)
    if isinstance(value, str) and "${" in value:
        def sub(m: re.Match[str]) -> str:
            name = m.group(1)
            if name not in env:
                unset.append((where, name))
                return m.group(0)
            return str(env[name])

        value = _ENV_REF.sub(sub, value)
    return value


_scalar_loader = yaml.SafeLoader("")


def _scalar(node: yaml.Node) -> Any:
    return _scalar_loader.construct_object(node, deep=True)


# -- semantic validation ---------------------------------------------------------------

# Records a problem at a config path (keys and list indexes). Validation goes on after it, so
# `tollway check` lists every problem; a check that depends on an earlier one returns instead.
Fail = Callable[[Sequence[str | int], str], None]
_Named = TypeVar("_Named", Provider, Model, Key, Team, Plugin, Guardrail)


def validate(config: Config, root: yaml.Node | None = None) -> None:
    """Check what types cannot. Raises ConfigError for the first problem found."""
    found = problems(config)
    if found:
        raise error_at(*found[0], root)


def problems(config: Config) -> list[tuple[Path, str]]:
    """Every problem types cannot catch, each at its path, in the order they were found."""
    found: list[tuple[Path, str]] = []

    def fail(where: Sequence[str | int], problem: str) -> None:
        found.append((list(where), problem))

    providers = _unique(config.providers, "providers", fail)
    for i, p in enumerate(config.providers):
        _validate_provider(p, i, fail)
    _unique(config.models, "models", fail)
    for i, m in enumerate(config.models):
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
    _unique(config.keys, "keys", fail)
    for i, k in enumerate(config.keys):
        if not _is_key_hash(k.key_hash):
            fail(["keys", i, "key_hash"], "expected the output of `tollway hash-key` (sha256:<64 hex> or hmac-sha256:<64 hex>)")
    _unique(config.teams, "teams", fail)
    _validate_references(config, fail)
    if config.admin is not None and not _is_key_hash(config.admin.key_hash):
        fail(["admin", "key_hash"], "expected the output of `tollway hash-key`")
    if config.server.metrics_auth is not None and not _is_key_hash(config.server.metrics_auth.key_hash):
        fail(["server", "metrics_auth", "key_hash"], "expected the output of `tollway hash-key`")
    _validate_admins(config, fail)
    _validate_admin_rate(config, fail)
    _validate_server(config.server, fail)
    _validate_routing(config.routing, fail)
    _validate_limits(config, fail)
    if config.telemetry.traces is not None:
        _validate_traces(config.telemetry.traces, fail)
    _validate_ledger(config, fail)
    _validate_plugins(config, fail)
    _validate_guardrails(config, fail)
    found += cache_settings.problems(config.cache, cache_settings.owners(config.models, config.keys, config.teams))
    return found


_PLUGIN_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*")


def _validate_plugins(config: Config, fail: Fail) -> None:
    _unique(config.plugins, "plugins", fail)
    for i, p in enumerate(config.plugins):
        if p.module is not None and not _PLUGIN_MODULE.fullmatch(p.module):
            fail(["plugins", i, "module"], "expected 'package.module:factory' (a module path, a colon, a callable's name)")
        if not 0 < p.timeout_ms < float("inf"):
            fail(["plugins", i, "timeout_ms"], "must be a finite number of milliseconds > 0")


def _validate_guardrails(config: Config, fail: Fail) -> None:
    _unique(config.guardrails, "guardrails", fail)
    for where, problem in guardrail_problems(config.guardrails):
        fail(where, problem)


def _validate_admin_rate(config: Config, fail: Fail) -> None:
    if config.server.admin_requests_per_minute < 1:
        fail(["server", "admin_requests_per_minute"], "must be at least 1")


def _validate_ledger(config: Config, fail: Fail) -> None:
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


def warnings(config: Config) -> list[tuple[Path, str]]:
    """What a valid config serves but may not mean, each at its path: every model with no price,
    neither in the config nor in the price dataset (tollway.core.accounting.pricing) for its
    public name or any target's upstream model. Its usage is recorded with an unknown cost
    (`cost_usd: null`) and counts $0 against budgets. Models served only by `fake` providers (test
    fixtures) are free by design and not listed."""
    schemas = {p.name: p.schema for p in config.providers}
    found: list[tuple[Path, str]] = []
    for i, m in enumerate(config.models):
        if m.price is not None or not m.targets or all(schemas.get(t.provider) == "fake" for t in m.targets):
            continue
        if dataset_price(m.name) is not None:
            continue
        if any(dataset_price(t.model or m.name, schemas.get(t.provider)) is not None for t in m.targets):
            continue
        found.append((["models", i], f"model '{m.name}' has no price in the config or the price dataset: its usage will be "
                                     f"recorded with cost_usd null and count $0 against budgets; set models[{i}].price "
                                     f"(USD per million tokens; input: 0, output: 0 if it is free)"))
    found += _budget_warnings(config)
    return found


def _budget_warnings(config: Config) -> list[tuple[Path, str]]:
    """Budgets that will not hold as a reader of the config may expect."""
    if config.store is not None and config.ledger.enabled:
        return []
    owners: list[tuple[Path, Budget | None]] = [(["keys", i, "budget"], k.budget) for i, k in enumerate(config.keys)]
    owners += [(["teams", i, "budget"], t.budget) for i, t in enumerate(config.teams)]
    return [(where, "without a store: (the usage ledger) this budget's spend is counted in memory and starts "
                    "from zero at each restart") for where, budget in owners if budget is not None]


def _validate_references(config: Config, fail: Fail) -> None:
    """A key's `models` and `team` name things the config defines. A model name in `models` may
    also be one a `match:` route serves (it is allowed by exact name at request time); only a
    name no route could ever serve is an error, since no request for it could get through."""
    names = {m.name for m in config.models}
    patterns: list[re.Pattern[str]] = []
    for m in config.models:
        try:
            patterns += [re.compile(m.match)] if m.match is not None else []
        except re.error:
            pass  # reported with the model
    teams = {t.name for t in config.teams}
    for i, k in enumerate(config.keys):
        for j, name in enumerate(k.models):
            if name != "*" and name not in names and not any(p.fullmatch(name) for p in patterns):
                fail(["keys", i, "models", j], f"unknown model '{name}' (no model has this name or a match: for it)"
                                               f"{did_you_mean(name, names)}")
        if k.team is not None and k.team not in teams:
            fail(["keys", i, "team"], f"unknown team '{k.team}' (define it under teams:){did_you_mean(k.team, teams)}")


def _validate_admins(config: Config, fail: Fail) -> None:
    """Scoped administrators: distinct names and credentials; a team admin names its team."""
    digests = {config.admin.key_hash} if config.admin is not None else set()
    seen: set[str] = {"admin"}  # the owner's name in the audit trail
    for i, a in enumerate(config.admins):
        if a.name in seen or not a.name.isprintable() or not a.name:
            fail(["admins", i, "name"], f"'{a.name}' is taken or not printable (the owner is 'admin')")
        seen.add(a.name)
        if not _is_key_hash(a.key_hash):
            fail(["admins", i, "key_hash"], "expected the output of `tollway hash-key`")
        elif a.key_hash in digests:
            fail(["admins", i, "key_hash"], "another administrator has this credential")
        digests.add(a.key_hash)
        if a.role == "team_admin" and not a.team:
            fail(["admins", i, "team"], "a team_admin manages one team: name it")
        if a.role == "viewer" and a.team is not None:
            fail(["admins", i, "team"], "a viewer reads every team; remove team: (or make it a team_admin)")
    keys = {k.key_hash for k in config.keys}
    for i, a in enumerate(config.admins):
        if a.key_hash in keys:
            fail(["admins", i, "key_hash"], "this is a gateway key's digest: an admin credential must be its own")


def _unique(items: Sequence[_Named], section: str, fail: Fail) -> dict[str, _Named]:
    seen: dict[str, _Named] = {}
    for i, item in enumerate(items):
        if item.name in seen:
            fail([section, i, "name"], f"duplicate name '{item.name}'")
        if not item.name or not item.name.isprintable():  # names reach logs, metrics and the ledger's rows
            fail([section, i, "name"], "a name must be printable text (no control characters) and not empty")
        seen[item.name] = item
    return seen


# Provider fields a schema cannot work without, and the keys its `credentials` may hold.
SCHEMA_REQUIRES: dict[str, tuple[str, ...]] = {"bedrock": ("region",), "vertex": ("project", "location")}
CREDENTIAL_FIELDS: dict[str, frozenset[str]] = {
    "bedrock": frozenset({"access_key_id", "secret_access_key", "session_token", "profile"}),
    "vertex": frozenset({"service_account_file"}),
}


def _validate_provider(p: Provider, i: int, fail: Fail) -> None:
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
    _validate_pool(p, i, fail)
    if p.schema == "azure_openai" and not p.api_version:
        fail(["providers", i, "api_version"], "schema 'azure_openai' needs api_version (e.g. 2024-10-21)")
    for field in SCHEMA_REQUIRES.get(p.schema, ()):
        if not getattr(p, field):
            fail(["providers", i, field], f"schema '{p.schema}' needs {field}")
    allowed = CREDENTIAL_FIELDS.get(p.schema, frozenset())
    for name in p.credentials or {}:
        if name not in allowed:
            known = ", ".join(sorted(allowed)) or "none"
            fail(["providers", i, "credentials", name],
                 f"unknown credential field for schema '{p.schema}' (known: {known}){did_you_mean(name, allowed)}")
    creds = p.credentials or {}
    if ("access_key_id" in creds) != ("secret_access_key" in creds):
        fail(["providers", i, "credentials"], "give access_key_id and secret_access_key together")
    for field in ("connect", "first_byte", "idle", "total"):
        seconds = getattr(p.timeouts, field)
        if seconds is not None and seconds <= 0:
            fail(["providers", i, "timeouts", field], "must be > 0 seconds")


def _validate_pool(p: Provider, i: int, fail: Fail) -> None:
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


def _validate_server(s: Server, fail: Fail) -> None:
    for field in ("body_read_timeout", "client_idle_timeout"):
        if not 0 < getattr(s, field) < float("inf"):
            fail(["server", field], "must be a finite number of seconds > 0")
    for field in ("max_body_bytes", "max_upstream_body_bytes", "max_count_tokens_bytes"):
        if getattr(s, field) < 1:
            fail(["server", field], "must be at least 1 byte")


def _validate_routing(routing: Routing, fail: Fail) -> None:
    r, o = routing.retry, routing.outlier_detection
    if r.attempts < 1:
        fail(["routing", "retry", "attempts"], "must be at least 1")
    if r.deadline <= 0 or r.backoff_base < 0 or r.backoff_max < r.backoff_base:
        fail(["routing", "retry"], "need deadline > 0 and 0 <= backoff_base <= backoff_max")
    if o.consecutive_failures < 1 or o.cool_down <= 0 or o.max_cool_down < o.cool_down:
        fail(["routing", "outlier_detection"], "need consecutive_failures >= 1 and 0 < cool_down <= max_cool_down")


_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _validate_traces(t: Traces, fail: Fail) -> None:
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


def _validate_limits(config: Config, fail: Fail) -> None:
    """Each limit counts exactly one measure over a parseable window; pairs name real models."""
    models = {m.name for m in config.models}
    owners: tuple[tuple[str, Sequence[Key | Team | Model]], ...] = (
        ("keys", config.keys), ("teams", config.teams), ("models", config.models))
    for section, items in owners:
        for i, owner in enumerate(items):
            seen: set[tuple[str, str | None, str | None]] = set()
            for j, lim in enumerate(owner.limits):
                ident = _validate_limit(lim, [section, i, "limits", j], section, models, fail)
                if ident is None:
                    continue
                if ident in seen:
                    fail([section, i, "limits", j], f"duplicate limit ({ident[0]} per {ident[1]}) on the same owner")
                seen.add(ident)
    rl = config.rate_limits
    if rl.default_max_tokens < 1:
        fail(["rate_limits", "default_max_tokens"], "must be at least 1")
    if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", rl.key_prefix):
        fail(["rate_limits", "key_prefix"], "use 1-64 letters, digits, or _ . : - (no braces: the prefix is the hash tag)")


def limit_problems(limits: Sequence[Limit], models: set[str]) -> list[tuple[list[str | int], str]]:
    """What is wrong with an owner's `limits` (the config's grammar), as (path, message)
    pairs; used for keys and teams made through the admin API."""
    found: list[tuple[list[str | int], str]] = []
    seen: set[tuple[str, str | None, str | None]] = set()
    for j, lim in enumerate(limits):
        ident = _validate_limit(lim, [j], "keys", models, lambda path, msg: found.append((list(path), msg)))
        if ident is not None and ident in seen:
            found.append(([j], f"duplicate limit ({ident[0]} per {ident[1]}) on the same owner"))
        if ident is not None:
            seen.add(ident)
    return found


def _validate_limit(lim: Limit, where: list[str | int], section: str, models: set[str],
                    fail: Fail) -> tuple[str, str | None, str | None] | None:
    """Check one limit; return what makes it unique on its owner (measure, per, model), or
    None if it does not count exactly one measure (the other checks depend on which)."""
    try:
        measure, amount = measure_of(lim)
    except ValueError as exc:
        fail(where, str(exc))
        return None
    if measure == "concurrent" and lim.per is not None:
        fail(where + ["per"], "a concurrent limit counts requests in flight and takes no per")
    if measure != "concurrent" and lim.per is None:
        fail(where, f"a {measure} limit needs per: (like 1s, 1m, 1h, 1d)")
    if lim.per is not None:
        try:
            window_seconds(lim.per)
        except ValueError as exc:
            fail(where + ["per"], str(exc))
    if amount <= 0:
        fail(where + [measure], "must be > 0")
    if lim.model is not None and section == "models":
        fail(where + ["model"], "a model's own limits apply to it already; model: belongs on key or team limits")
    if lim.model is not None and lim.model not in models:
        fail(where + ["model"], f"unknown model '{lim.model}'{did_you_mean(lim.model, models)}")
    return measure, lim.per, lim.model


_KEY_HASH = re.compile(r"^(sha256|hmac-sha256):[0-9a-f]{64}$")


def _is_key_hash(value: str) -> bool:
    return bool(_KEY_HASH.match(value))
