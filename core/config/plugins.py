"""What runs on each request besides routing: `plugins:` (code the operator installs) and
`guardrails:` (the built-in checks), both narrowed by the same scope. The response cache's
Structs live with its decisions, in tollway.core.cache.settings."""
from __future__ import annotations

from typing import Any, Literal

import msgspec


class PluginScope(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Which requests a plugin sees; an empty list does not narrow (docs/plugins.md)."""
    keys: list[str] = []  # key names
    teams: list[str] = []
    models: list[str] = []  # public model names (the configured model that serves the request)


class Plugin(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A plugin (docs/plugins.md): `module: "package.module:factory"`, or, without `module`, the
    entry point named `name` in the `tollway.plugins` group. The factory gets `config`."""
    name: str
    module: str | None = None
    # Any YAML the plugin's author asks for, handed to their factory as is. Any, not object: the
    # two decode alike, but msgspec's JSON Schema generation refuses `object`.
    config: dict[str, Any] = {}
    timeout_ms: float = 50.0  # each call of a stage
    on_error: Literal["open", "closed"] = "open"  # a timeout or exception: skip it, or fail the request (503)
    scope: PluginScope | None = None  # absent: every request


class Guardrail(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A built-in guardrail (docs/guardrails.md): `pii` runs the offline detectors
    (tollway.core.guardrails), `regex` refuses or masks what its `deny` patterns match,
    `json_schema` checks an answer against the request's `response_format` JSON Schema."""
    name: str
    type: Literal["pii", "regex", "json_schema"]
    action: Literal["block", "mask", "log"]
    detectors: list[str] | None = None  # pii: absent means every detector
    deny: list[str] = []  # regex: Python regexes
    apply_to: list[Literal["input", "output"]] | None = None  # absent: both (json_schema: output, its only one)
    scope: PluginScope | None = None  # absent: every request

    @property
    def applies_to(self) -> tuple[str, ...]:
        if self.apply_to is not None:
            return tuple(self.apply_to)
        return ("output",) if self.type == "json_schema" else ("input", "output")
