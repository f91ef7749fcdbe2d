"""What a valid config serves but may not mean (`tollway check` says these as warnings, never
as errors): models that will be recorded with no cost, and budgets that will not survive a
restart."""
from __future__ import annotations

from tollway.core.accounting.pricing import dataset_price
from tollway.core.config.access import Budget
from tollway.core.config.root import Config
from tollway.core.struct_decode import Path


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
