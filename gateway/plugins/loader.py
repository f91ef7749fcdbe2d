"""From a config entry to a live plugin: import its factory (a `module:` path, or the entry
point named like it in the `tollway.plugins` group), call it with its `config`, and check what
it returned. Runs at start (`tollway serve` checks every plugin before the workers fork, and
refuses to start naming the one that fails) and on reload (a failure keeps the old config)."""
from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from tollway.core.config import Plugin

GROUP = "tollway.plugins"
STAGES = ("authenticate", "on_request", "on_chunk", "on_response", "on_complete")
_REASON_CHARS = 300


class PluginLoadError(Exception):
    def __init__(self, name: str, reason: str) -> None:
        reason = reason if len(reason) <= _REASON_CHARS else reason[:_REASON_CHARS - 1] + "…"
        super().__init__(f"plugin '{name}' could not be loaded: {reason}")
        self.plugin = name


@dataclass(frozen=True, slots=True)
class Loaded:
    """One plugin made live: its config entry, the object, and the stages it defines."""

    spec: Plugin
    obj: Any
    stages: dict[str, Callable[..., Any]]
    timeout: float  # seconds
    closed: bool
    keys: frozenset[str]
    teams: frozenset[str]
    models: frozenset[str]

    @property
    def name(self) -> str:
        return self.spec.name

    def applies(self, key: str | None, team: str | None, route: str, model: str | None) -> bool:
        """Whether the plugin's scope takes a request of this key, team and model."""
        return ((not self.keys or key in self.keys) and (not self.teams or team in self.teams)
                and (not self.models or route in self.models or model in self.models))


def factory_of(spec: Plugin) -> Callable[..., Any]:
    if spec.module is not None:
        module_name, _, attr = spec.module.partition(":")
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # noqa: BLE001 - whatever importing it raised, said in one line
            raise PluginLoadError(spec.name, f"cannot import {module_name} ({type(exc).__name__}: {exc})") from None
        factory = getattr(module, attr, None)
        if factory is None:
            raise PluginLoadError(spec.name, f"{module_name} has no '{attr}'")
    else:
        found = entry_points(group=GROUP, name=spec.name)
        if not found:
            raise PluginLoadError(spec.name, f"no module: given and no entry point named '{spec.name}' in the {GROUP} group")
        try:
            factory = next(iter(found)).load()
        except Exception as exc:  # noqa: BLE001
            raise PluginLoadError(spec.name, f"its entry point does not load ({type(exc).__name__}: {exc})") from None
    if not callable(factory):
        raise PluginLoadError(spec.name, "the factory is not callable")
    return factory


def load(spec: Plugin) -> Loaded:
    factory = factory_of(spec)
    try:
        obj = factory(dict(spec.config))
    except Exception as exc:  # noqa: BLE001
        raise PluginLoadError(spec.name, f"its factory failed ({type(exc).__name__}: {exc})") from None
    stages: dict[str, Callable[..., Any]] = {}
    for stage in STAGES:
        method = getattr(obj, stage, None)
        if method is None:
            continue
        if not inspect.iscoroutinefunction(method):
            raise PluginLoadError(spec.name, f"{stage} must be an async method (async def)")
        stages[stage] = method
    if not stages:
        raise PluginLoadError(spec.name, f"the object its factory returned defines none of {', '.join(STAGES)}")
    scope = spec.scope
    return Loaded(spec, obj, stages, spec.timeout_ms / 1000, spec.on_error == "closed",
                  frozenset(scope.keys) if scope else frozenset(), frozenset(scope.teams) if scope else frozenset(),
                  frozenset(scope.models) if scope else frozenset())


def load_all(specs: Sequence[Plugin]) -> tuple[Loaded, ...]:
    """Every plugin of the config, in its order; raises PluginLoadError for the first that fails."""
    return tuple(load(spec) for spec in specs)
