"""The gateway's configuration: one YAML file decoded into msgspec Structs.

Loading is three steps, each with errors that name the field by its path and line:
1. YAML is parsed into a node tree (kept, so any path can be mapped back to a line);
2. `${ENV_VAR}` references in string values are substituted (a missing variable is an error);
3. the plain data is decoded into `Config` (msgspec checks types and unknown fields), then
   `validate()` checks what types cannot: unique names, references that resolve (targets to
   providers, keys to models and teams, limits to models), and so on.

`check()` finds every problem (for `tollway check`); `loads()` raises the first of them, so
`tollway serve` and a reload refuse a config exactly when `check` reports an error.

Where each part lives (this module only gathers them: import from here):
- the file's shape, by section: providers.py, routing.py (models, retry, outlier detection),
  access.py (keys, teams, admins, limits, budgets), store.py (store, ledger), server.py,
  telemetry.py, plugins.py (plugins, guardrails), root.py (`Config`, the top level);
  the cache's Structs are tollway.core.cache.settings';
- loading: loading.py (`load`, `loads`, `check`), substitute.py (YAML nodes to data, with
  ${VARS}), report.py (`ConfigError`: a path and a line);
- the checks types cannot make: semantics.py (their order), check_*.py (by area), and
  caveats.py (the warnings of a valid config).
"""
from tollway.core.accounting.pricing import Price
from tollway.core.cache.settings import CachePolicy, CacheStore
from tollway.core.config.access import Admin, Budget, Key, Limit, RateLimits, ScopedAdmin, Team
from tollway.core.config.caveats import warnings
from tollway.core.config.check_common import Fail
from tollway.core.config.check_limits import limit_problems
from tollway.core.config.check_providers import CREDENTIAL_FIELDS, SCHEMA_REQUIRES
from tollway.core.config.loading import Checked, check, check_file, load, loads
from tollway.core.config.plugins import Guardrail, Plugin, PluginScope
from tollway.core.config.providers import PICK_POLICIES, SCHEMAS, Discover, Provider, Scrape, Timeouts
from tollway.core.config.report import ConfigError
from tollway.core.config.root import Config
from tollway.core.config.routing import Model, OutlierDetection, Retry, Routing, Target
from tollway.core.config.semantics import problems, validate
from tollway.core.config.server import MetricsAuth, Server
from tollway.core.config.store import Ledger, Store
from tollway.core.config.telemetry import Telemetry, Traces

__all__ = [
    # the shape, by section
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
