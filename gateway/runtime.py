"""Everything the gateway derives from one config, swapped as a whole on reload.

A request reads `tollway.gateway.runtime` once at its start and uses that snapshot to the end, so a
reload never changes the keys, routes or providers under a request in flight. What must
outlive a reload is carried over from the previous runtime: a provider whose config did not
change keeps its endpoint pool (scraped load, in-flight counts, breakers), and the route-level
breakers stay while the outlier policy is the same.
"""
from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import msgspec

from tollway.core import errors
from tollway.core.accounting.pricebook import PriceBook
from tollway.core.config import Config, Key, Provider, Routing, Team, Timeouts
from tollway.core.ledger.periods import rfc3339
from tollway.core.ledger.record import key_id_of
from tollway.core.providers.base import Adapter, UpstreamCall
from tollway.core.providers.registry import OTEL_PROVIDER_NAMES, AdapterUnavailable, load_adapters
from tollway.core.routing.health import HealthBoard
from tollway.core.routing.table import RouteTable
from tollway.core.security.keys import KeyTable
from tollway.core.security.secrets import KnownSecrets, configured_secrets
from tollway.core.tenancy.records import ApiKey, ApiTeam
from tollway.gateway.limits.limiter import run_time_problem, worker_count
from tollway.gateway.telemetry.metrics import MetricLabels
from tollway.gateway.upstream import Transport, UpstreamAnswer
from tollway.gateway.upstream.credentials import credential_for
from tollway.gateway.upstream.fake import FakeTransport
from tollway.gateway.upstream.pool import endpoint_source

log = logging.getLogger("tollway")


@dataclass(frozen=True, slots=True)
class KeyRecord:
    key: Key
    allowed: frozenset[str] | None  # None: every model
    key_id: str = ""  # the usage ledger's id of the key (tollway.core.ledger.record.key_id_of)
    key_hash: str = ""  # the digest this record is found by (a rotated key has two records)
    # Run-time keys only: past `expires_at` (UNIX seconds), or at once when `refusal` is set
    # (revoked), the key gets 401 saying which. `checked` is what the request path reads.
    expires_at: float | None = None
    refusal: str | None = None
    expiry: str = "This key expired at {}."
    checked: bool = False

    def may_use(self, model: str) -> bool:
        return self.allowed is None or model in self.allowed

    def refuse(self, now: float) -> None:
        """Raise the 401 of a revoked or expired key (only called when `checked`)."""
        if self.refusal is not None:
            raise errors.unauthorized(self.refusal)
        if self.expires_at is not None and now >= self.expires_at:
            raise errors.unauthorized(self.expiry.format(rfc3339(self.expires_at)))


@dataclass(frozen=True, slots=True)
class ApiTables:
    """The run-time keys and teams (tollway.gateway.tenancy.directory) a runtime serves beside the
    config file's: keys by id, teams by name (deleted ones included, to be skipped)."""

    keys: Mapping[str, ApiKey]
    teams: Mapping[str, ApiTeam]
    config_keys: Mapping[str, Key]  # id -> the key as a config Key (made once per change, not per runtime)


NO_API = ApiTables({}, {}, {})


class ProviderRuntime:
    """A configured provider: its adapters, its transport and its metric name."""

    def __init__(self, config: Provider, transport: Transport | None, routing: Routing = Routing(),
                 secrets: KnownSecrets | None = None) -> None:
        self.config = config
        self.name = config.name
        self.transport: Transport = transport if transport is not None else _NOT_STARTED
        self.otel_name = OTEL_PROVIDER_NAMES.get(config.schema, config.schema)
        self.adapters = provider_adapters(config)  # imported now, not by the first request using one
        # What an upstream could echo back (every provider's: one upstream may serve several);
        # the signer adds what it fetches at run time.
        self.secrets = secrets if secrets is not None else KnownSecrets(configured_secrets(config))
        self.credential = credential_for(config, self.secrets)  # SigV4 / OAuth signer, None for static keys
        self.policy = routing.outlier_detection
        self.endpoints = endpoint_source(config, self.transport, self.policy)  # where each attempt goes

    def adapter(self, api: str) -> Adapter | None:
        return self.adapters.get(api)

    async def sign(self, call: UpstreamCall) -> UpstreamCall:
        """The call with credentials that need I/O or the clock applied (SigV4, OAuth)."""
        return call if self.credential is None else await self.credential.sign(call)


class Runtime:
    def __init__(self, config: Config, upstream: Transport | None, previous: Runtime | None = None,
                 api: ApiTables = NO_API) -> None:
        """`config` is the file's; `self.config` adds the run-time keys and teams of `api`, so
        limits, budgets and metric labels treat them like the file's."""
        self.file_config = config
        self.api = api
        config = self.config = effective_config(config, api)
        self.routes = RouteTable(config)
        self.metric_labels = MetricLabels(config)  # the names metrics may use as label values
        # What a response costs (ledger, budgets, x-tollway-cost-usd), at the prices of the day
        # the config was loaded: a dated price change applies from the next reload or restart.
        self.prices = PriceBook(config, datetime.now(UTC).date())
        team_models = {t.name: t.models for t in config.teams}
        self._teams = {t.name: t for t in config.teams}
        self._workers = worker_count()
        self.unbounded: set[str] = set()  # ids of the run-time keys refused by `_unbounded` (each logged once)
        logged = previous.unbounded if previous is not None else set()
        records = {k.key_hash: _record(k, team_models) for k in self.file_config.keys}
        # key id -> (key, (its team's models, why it is unbounded), its records): what the next runtime may reuse
        self._made: dict[str, tuple[ApiKey, tuple[list[str] | None, str | None], dict[str, KeyRecord]]] = {}
        made = previous._made if previous is not None else {}
        taken = {k.name for k in self.file_config.keys}
        for key in api.keys.values():
            unbounded = self._unbounded(key)
            self._note_unbounded(key, unbounded, logged)
            bound = (team_models.get(key.team) if key.team is not None else None, unbounded)
            held = made.get(key.id)
            if held is None or held[0] is not key or held[1] != bound or key.name in taken:
                held = (key, bound, _api_records(key, api.config_keys[key.id], team_models, taken, unbounded))
            self._made[key.id] = held  # (a rebuild with 100,000 keys reuses what did not change: no garbage)
            records.update(held[2])
        self.keys: KeyTable[KeyRecord] = KeyTable(records, pepper=config.server.key_pepper)
        self._by_name: tuple[int, dict[str, KeyRecord]] | None = None  # key_named's index
        old = previous.providers if previous is not None else {}
        # One set for all providers, kept across reloads (providers a reload keeps sign into it).
        self.secrets: KnownSecrets = previous.secrets if previous is not None else KnownSecrets()
        self.secrets.configure(v for p in config.providers for v in configured_secrets(p))
        self.providers: dict[str, ProviderRuntime] = {p.name: _provider(p, upstream, config, old.get(p.name), self.secrets)
                          for p in config.providers}
        policy = config.routing.outlier_detection
        keep = previous is not None and previous.health.policy == policy
        self.health: HealthBoard = previous.health if keep and previous is not None else HealthBoard(policy)
        self.random = random.random

    def key_named(self, name: str) -> KeyRecord | None:
        """The key record named `name` (config or run-time), for plugins that map a caller to a
        gateway key (the authenticate stage). Indexed on first use and after a key change."""
        index = self._by_name
        if index is None or index[0] != self.keys.version:
            records: dict[str, KeyRecord] = {}
            for r in self.keys.records():
                held = records.get(r.key.name)
                if held is None or _name_rank(r) > _name_rank(held):
                    records[r.key.name] = r
            index = self._by_name = (self.keys.version, records)
        return index[1].get(name)

    def patch_keys(self, api: ApiTables, keys: Sequence[tuple[ApiKey | None, ApiKey]]) -> None:
        """Take run-time key changes that limits and budgets are blind to (the directory's
        `TableChange.light`) into this runtime's key table in place: O(changed keys). A request
        in flight holds its key's record, not the table, so it is not changed under it."""
        team_models = {t.name: t.models for t in self.config.teams}
        for old, new in keys:
            if old is not None:
                for digest in (old.key_hash, old.previous_hash):
                    if digest is not None:
                        self.keys.drop(digest)
            taken = {k.name for k in self.file_config.keys}
            unbounded = self._unbounded(new)
            self._note_unbounded(new, unbounded, self.unbounded)
            for digest, record in _api_records(new, api.config_keys[new.id], team_models, taken, unbounded).items():
                self.keys.put(digest, record)
        self.api = api

    def _unbounded(self, key: ApiKey) -> str | None:
        """What of the run-time `key`'s limits and budget (or its team's) this process cannot
        enforce, or None. With rate_limits.backend 'memory' under `--workers N`, each worker
        would admit the whole of them: `serve` refuses such a config file, but run-time keys and
        teams arrive after the workers started (made by `tollway keys` or another replica; this
        gateway's admin API refuses them), so their keys are refused, fail-safe."""
        if self._workers <= 1 or key.revoked_at is not None:
            return None
        team = self._teams.get(key.team) if key.team is not None else None
        for owner, whose in ((key, "this key"), (team, f"this key's team '{key.team}'")):
            if owner is None:
                continue
            what = "budget" if owner.budget is not None else "limits" if owner.limits else None
            if what is not None and run_time_problem(self.config, self._workers, what) is not None:
                return f"the {what} of {whose}"
        return None

    def _note_unbounded(self, key: ApiKey, unbounded: str | None, logged: set[str]) -> None:
        """Keep `self.unbounded` and log each key it gains once per process (`logged`: the ids
        logged so far), with what the operator can do about it."""
        if unbounded is None:
            self.unbounded.discard(key.id)
            return
        if key.id not in logged:
            log.error("keys: run-time key '%s' (%s) is refused: %s", key.name, key.id,
                      run_time_problem(self.config, self._workers, unbounded),
                      extra={"fields": {"event": "key_unbounded", "key": key.name, "key_id": key.id}})
        self.unbounded.add(key.id)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the providers' background work (pool scraping, DNS) on `loop`."""
        for provider in self.providers.values():
            provider.endpoints.start(loop)

    def retired(self, previous: Runtime) -> list[ProviderRuntime]:
        """Providers of `previous` this runtime does not reuse: their pools should close."""
        kept = {id(p) for p in self.providers.values()}
        return [p for p in previous.providers.values() if id(p) not in kept]


def _name_rank(record: KeyRecord) -> tuple[bool, bool, bool]:
    """Which of the records of one name `key_named` finds: the config file's key (it wins its
    name, docs/keys.md; a run-time key of that name is refused), then a record that is not
    refused (revoked, orphaned), then a rotated key's current record over its previous one."""
    return (record.key_id == key_id_of(record.key.name), record.refusal is None, record.key_hash == record.key.key_hash)


def provider_adapters(config: Provider) -> dict[str, Adapter]:
    """Every adapter `config` can use, imported now (see registry.load_adapters); an adapter that
    cannot be imported raises AdapterUnavailable naming the provider."""
    try:
        return load_adapters(config.schema)
    except AdapterUnavailable as exc:
        raise AdapterUnavailable(f"provider '{config.name}': {exc}") from exc


def _provider(config: Provider, upstream: Transport | None, whole: Config, old: ProviderRuntime | None,
              secrets: KnownSecrets) -> ProviderRuntime:
    """The previous runtime's provider when nothing about it changed, else a new one."""
    if old is not None and old.config == config and old.policy == whole.routing.outlier_detection:
        if old.transport is upstream or isinstance(old.transport, FakeTransport):
            return old
    return ProviderRuntime(config, _transport(config, upstream), whole.routing, secrets)


def effective_config(config: Config, api: ApiTables) -> Config:
    """`config` with the live run-time keys and teams appended (a name the file defines wins)."""
    if not api.keys and not api.teams:
        return config
    names = {k.name for k in config.keys}
    keys = [k for k in config.keys]
    keys += [api.config_keys[k.id] for k in api.keys.values() if k.revoked_at is None and k.name not in names]
    team_names = {t.name for t in config.teams}
    teams: list[Team] = list(config.teams)
    teams += [t.as_config_team() for t in api.teams.values() if t.deleted_at is None and t.name not in team_names]
    return msgspec.structs.replace(config, keys=keys, teams=teams)


def _allowed(models: list[str], team: str | None, team_models: Mapping[str, list[str]]) -> frozenset[str] | None:
    """What a key may use: its own models, narrowed by its team's (None: everything)."""
    own = None if "*" in models else frozenset(models)
    limit = team_models.get(team) if team is not None else None
    if limit is None or "*" in limit:
        return own
    return frozenset(limit) if own is None else own & frozenset(limit)


def _record(key: Key, team_models: Mapping[str, list[str]]) -> KeyRecord:
    return KeyRecord(key, _allowed(key.models, key.team, team_models), key_id_of(key.name), key.key_hash)


_REVOKED = "This key was revoked."


def _orphaned(key: ApiKey, team_models: Mapping[str, list[str]], taken: set[str] | frozenset[str]) -> str | None:
    if key.team is not None and key.team not in team_models:
        return f"This key's team '{key.team}' no longer exists; ask an administrator to move the key."
    if key.name in taken:
        return "This key's name is now a key in the config file; ask an administrator for a new key."
    return None
_UNBOUNDED = ("This gateway cannot enforce {} (each of its worker processes would admit all of it), so the key is "
              "refused; ask an administrator.")
_ROTATED = "This key was replaced by a rotation; the old key stopped working at {}."


def _api_records(key: ApiKey, as_key: Key, team_models: Mapping[str, list[str]],
                 taken: set[str] | frozenset[str] = frozenset(), unbounded: str | None = None) -> dict[str, KeyRecord]:
    """The records a run-time key is found by: its digest and, during a rotation's grace (and
    after it, to say why), the previous one. A revoked key keeps its records to say so. A key
    whose team is gone, or whose name the config file now gives another key, is refused: it
    would otherwise escape its team's models, limits and budget, or draw on the other key's.
    So is a key whose limits or budget this process cannot enforce (`unbounded`: Runtime._unbounded)."""
    allowed = _allowed(key.models, key.team, team_models)
    refusal = _REVOKED if key.revoked_at is not None else _orphaned(key, team_models, taken)
    if refusal is None and unbounded is not None:
        refusal = _UNBOUNDED.format(unbounded)
    out = {key.key_hash: KeyRecord(as_key, allowed, key.id, key.key_hash, key.expires_at, refusal,
                                   checked=refusal is not None or key.expires_at is not None)}
    if key.previous_hash is not None and key.previous_until is not None:
        until = key.previous_until if key.expires_at is None else min(key.previous_until, key.expires_at)
        expiry = _ROTATED if until == key.previous_until else "This key expired at {}."
        out[key.previous_hash] = KeyRecord(as_key, allowed, key.id, key.previous_hash, until, refusal, expiry, True)
    return out


def _transport(provider: Provider, upstream: Transport | None) -> Transport | None:
    """The in-process fake for `schema: fake`; the shared HTTP client pool otherwise."""
    if provider.schema == "fake":
        return FakeTransport(provider.fake_chunks, provider.fake_chunk_delay)
    return upstream


class _NotStarted:
    """The transport of a runtime built before the gateway started (its config is read, no
    request is served): sending through it is a bug, said plainly."""

    async def request(self, method: str, url: str, headers: list[tuple[str, str]], body: bytes,
                      timeouts: Timeouts, extra_head: bytes = b"") -> UpstreamAnswer:
        raise RuntimeError("the gateway has not started: no upstream client yet")

    async def aclose(self) -> None:
        return None


_NOT_STARTED = _NotStarted()
