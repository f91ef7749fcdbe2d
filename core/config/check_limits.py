"""Checks of limits: each counts exactly one measure over a window the limiter can parse, at
most once per owner, and a per-model limit names a model the config defines. The admin API
checks the limits of the keys and teams it makes with the same grammar (`limit_problems`)."""
from __future__ import annotations

import re
from collections.abc import Sequence

from tollway.core.config.access import Key, Limit, Team
from tollway.core.config.check_common import Fail
from tollway.core.config.root import Config
from tollway.core.config.routing import Model
from tollway.core.limits.policy import measure_of, window_seconds
from tollway.core.security.urls import redis_url_problem
from tollway.core.suggest import did_you_mean

# What makes a limit unique on its owner: (measure, per, model).
_Ident = tuple[str, str | None, str | None]


def check_limits(config: Config, fail: Fail) -> None:
    """Each limit counts exactly one measure over a parseable window; pairs name real models."""
    models = {m.name for m in config.models}
    owners: tuple[tuple[str, Sequence[Key | Team | Model]], ...] = (
        ("keys", config.keys), ("teams", config.teams), ("models", config.models))
    for section, items in owners:
        for i, owner in enumerate(items):
            seen: set[_Ident] = set()
            for j, lim in enumerate(owner.limits):
                ident = _check_limit(lim, [section, i, "limits", j], section, models, fail)
                if ident is None:
                    continue
                if ident in seen:
                    fail([section, i, "limits", j], f"duplicate limit ({ident[0]} per {ident[1]}) on the same owner")
                seen.add(ident)
    rl = config.rate_limits
    # Also under backend: memory, so a URL kept for later fails now, not on the day (or in the
    # reload) that switches the backend to redis. (The budgets' shared spend uses it too.)
    redis_problem = redis_url_problem(rl.redis_url)
    if redis_problem:
        fail(["rate_limits", "redis_url"], redis_problem)
    if rl.default_max_tokens < 1:
        fail(["rate_limits", "default_max_tokens"], "must be at least 1")
    if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", rl.key_prefix):
        fail(["rate_limits", "key_prefix"], "use 1-64 letters, digits, or _ . : - (no braces: the prefix is the hash tag)")


def limit_problems(limits: Sequence[Limit], models: set[str]) -> list[tuple[list[str | int], str]]:
    """What is wrong with an owner's `limits` (the config's grammar), as (path, message)
    pairs; used for keys and teams made through the admin API."""
    found: list[tuple[list[str | int], str]] = []
    seen: set[_Ident] = set()
    for j, lim in enumerate(limits):
        ident = _check_limit(lim, [j], "keys", models, lambda path, msg: found.append((list(path), msg)))
        if ident is not None and ident in seen:
            found.append(([j], f"duplicate limit ({ident[0]} per {ident[1]}) on the same owner"))
        if ident is not None:
            seen.add(ident)
    return found


def _check_limit(lim: Limit, where: list[str | int], section: str, models: set[str], fail: Fail) -> _Ident | None:
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
