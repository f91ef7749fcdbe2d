"""The checks types cannot make, run in one fixed order: unique names, references that
resolve (targets to providers, keys to models and teams, limits to models), values within
their bounds. The order is a contract: `loads` raises the first problem found, so reordering
the checks would change which error a broken config gets."""
from __future__ import annotations

from collections.abc import Sequence

import yaml

from tollway.core.cache import settings as cache_settings
from tollway.core.config.check_access import (
    check_admin_rate,
    check_admins,
    check_key_hashes,
    check_owner_hashes,
    check_references,
)
from tollway.core.config.check_common import unique
from tollway.core.config.check_limits import check_limits
from tollway.core.config.check_providers import check_model, check_provider, check_routing
from tollway.core.config.check_sections import check_guardrails, check_ledger, check_plugins, check_server, check_traces
from tollway.core.config.report import error_at
from tollway.core.config.root import Config
from tollway.core.struct_decode import Path


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

    providers = unique(config.providers, "providers", fail)
    for i, p in enumerate(config.providers):
        check_provider(p, i, fail)
    unique(config.models, "models", fail)
    for i, m in enumerate(config.models):
        check_model(m, i, providers, fail)
    unique(config.keys, "keys", fail)
    check_key_hashes(config, fail)
    unique(config.teams, "teams", fail)
    check_references(config, fail)
    check_owner_hashes(config, fail)
    check_admins(config, fail)
    check_admin_rate(config, fail)
    check_server(config.server, fail)
    check_routing(config.routing, fail)
    check_limits(config, fail)
    if config.telemetry.traces is not None:
        check_traces(config.telemetry.traces, fail)
    check_ledger(config, fail)
    check_plugins(config, fail)
    check_guardrails(config, fail)
    found += cache_settings.problems(config.cache, cache_settings.owners(config.models, config.keys, config.teams))
    return found
