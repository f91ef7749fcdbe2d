"""Which requests of a config are cached, how long, and who shares their entries.

Built once per config (start, reload) and read per request: three dict lookups. The first
`cache:` found in key → team → model decides; `enabled: false` there means "not cached".
"""
from __future__ import annotations

import msgspec

from tollway.core.cache.key import config_version
from tollway.core.cache.settings import CachePolicy, seconds
from tollway.core.config import Config
from tollway.core.providers.base import ClientAPI

# Where a chat or completions request's `seed` reaches the model: the OpenAI-compatible
# schemas pass it on, Gemini's translation maps it; Anthropic and Bedrock have no seed.
SEED_SCHEMAS = frozenset(("openai", "azure_openai", "gemini", "vertex"))
SEED_APIS = frozenset((ClientAPI.CHAT, ClientAPI.COMPLETIONS))


class Rule(msgspec.Struct, frozen=True):
    """How one request is cached."""

    ttl: float  # seconds an entry lives
    scope: str  # key | team | shared:<namespace>
    deterministic_only: bool

    def partition(self, key_id: str, team: str | None) -> str:
        """Whose entries this request may read and fill: its key's, its team's (a key without a
        team has only its own), or the named shared namespace's."""
        if self.scope == "team" and team is not None:
            return f"team:{team}"
        if self.scope.startswith("shared:"):
            return self.scope
        return f"key:{key_id}"


_UNSET = object()


class CacheRules:
    """The cache's reading of one config."""

    __slots__ = ("models", "keys", "teams", "versions", "seeded")

    def __init__(self, config: Config) -> None:
        store = config.cache
        default_ttl = seconds(store.ttl) if store is not None else 0.0

        def rule(policy: CachePolicy | None) -> Rule | None:
            if policy is None or not policy.enabled:
                return None
            ttl = seconds(policy.ttl) if policy.ttl is not None else default_ttl
            return Rule(ttl, policy.scope, policy.deterministic_only)

        on = store is not None
        self.models = {m.name: rule(m.cache) for m in config.models if on and m.cache is not None}
        self.keys = {k.name: rule(k.cache) for k in config.keys if on and k.cache is not None}
        self.teams = {t.name: rule(t.cache) for t in config.teams if on and t.cache is not None}
        self.versions = _versions(config)
        schemas = {p.name: p.schema for p in config.providers}
        self.seeded = frozenset(m.name for m in config.models
                                if m.targets and all(schemas.get(t.provider) in SEED_SCHEMAS for t in m.targets))

    def __bool__(self) -> bool:
        """Whether anything opted in (else the cache plugs nothing into the pipeline)."""
        return any(r is not None for table in (self.models, self.keys, self.teams) for r in table.values())

    def rule(self, route: str, key_name: str, team: str | None) -> Rule | None:
        """The rule for a request of `key_name` (of `team`) to `route`, or None: not cached."""
        found = self.keys.get(key_name, _UNSET)
        if found is _UNSET and team is not None:
            found = self.teams.get(team, _UNSET)
        if found is _UNSET:
            found = self.models.get(route)
        return found  # type: ignore[return-value]

    def version(self, route: str) -> str:
        return self.versions.get(route, "")

    def honours_seed(self, route: str, api: str) -> bool:
        """Whether a `seed` makes a request of `api` to `route` repeatable: every target's
        provider takes it (a route that falls back to one that drops it does not)."""
        return api in SEED_APIS and route in self.seeded


def _versions(config: Config) -> dict[str, str]:
    """Per model, the digest of what shapes its answers: its targets and their providers'
    schema, endpoint and extra headers (e.g. anthropic-beta set for every request; hashed with
    the rest, never kept), and the guardrails and plugins of the config."""
    providers = {p.name: (p.schema, p.base_url, p.api_version, p.endpoints, p.region, p.project, p.location,
                          sorted((p.headers or {}).items()))
                 for p in config.providers}
    around = (config.guardrails, [(p.name, p.module, p.config) for p in config.plugins])
    return {m.name: config_version((m.name, m.match, [(t, providers.get(t.provider)) for t in m.targets], around))
            for m in config.models}
