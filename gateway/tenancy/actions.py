"""The admin actions on run-time keys and teams, shared by the admin API and `tollway keys`.

Each action checks the administrator's role, checks its input against the config (models,
limits, names), builds the new records and one audit entry, and saves them in one transaction
that fails (409) if the record changed since it was read. Its own process then applies the
change at once; every other process learns of it from the store (tollway.gateway.tenancy.directory).
A new key is shown once, in the action's result, and stored only as its digest.
"""
from __future__ import annotations

import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import msgspec
from msgspec import UNSET

from tollway.core import errors
from tollway.core.config import Budget, Config, Limit
from tollway.core.security.keys import KEY_PREFIX, hash_key
from tollway.core.tenancy import inputs
from tollway.core.tenancy.inputs import KeyCreate, KeyPatch, Known, TeamCreate, TeamPatch
from tollway.core.tenancy.records import ApiKey, ApiTeam, AuditEntry, Change, Snapshot, key_view, team_view
from tollway.core.tenancy.roles import Principal
from tollway.gateway.limits.limiter import run_time_problem
from tollway.gateway.store import Conflict, KeyStore, StoreError
from tollway.gateway.store.key_rows import name_taken
from tollway.gateway.tenancy.directory import Directory

R = TypeVar("R")


def mint_key() -> str:
    """A new gateway key: 32 random bytes (256 bits), URL-safe, recognisable by its prefix."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


_KEY_ID = re.compile(r"key_[0-9a-f]{24}")  # what new_key_id makes: anything else is no key (and never reaches SQL)


def new_key_id() -> str:
    return "key_" + secrets.token_hex(12)


@dataclass(frozen=True, slots=True)
class Minted:
    key: ApiKey
    secret: str  # shown once, in this answer


class Actions:
    def __init__(self, store: KeyStore, config: Config, directory: Directory | None = None,
                 clock: Callable[[], float] = time.time, workers: int = 1) -> None:
        """`config` is the file's (its keys and teams are read-only here); `directory`, when
        given, takes each change at once (this process serves it without waiting for a poll);
        `workers`: how many processes serve `config` (a budget or limits they would each
        enforce on their own is refused; see limits.limiter.run_time_problem)."""
        self.store = store
        self.workers = workers
        self.config = config
        self.known = Known.of(config)
        self.directory = directory
        self.clock = clock
        self._config_keys = {k.name: k for k in config.keys}
        self._config_teams = {t.name: t for t in config.teams}

    # -- keys --------------------------------------------------------------------------------

    async def create_key(self, actor: Principal, body: KeyCreate) -> Minted:
        actor.may_write()
        now = self.clock()
        name = inputs.check_name(body.name)
        held = self._config_keys.get(name)
        if held is not None:  # (to a team admin of another team, as any taken name: it cannot learn the key exists)
            raise errors.conflict(f"A key named '{name}' is defined in the config file; choose another name."
                                  if actor.sees(held.team) else name_taken(name))
        team, pin = await self._team_for(actor, body.team)
        secret = mint_key()
        key = ApiKey(new_key_id(), name, hash_key(secret, self.config.server.key_pepper), now, team,
                     inputs.check_models(body.models, self.known), self._limits(body.limits), self._budget(body.budget),
                     inputs.check_metadata(body.metadata), inputs.check_expiry(body.expires_at, now))
        saved = await self._save_key(actor, "key.create", None, key, expect=0, pin=pin)
        return Minted(saved, secret)

    async def update_key(self, actor: Principal, key_id: str, patch: KeyPatch) -> ApiKey:
        actor.may_write()
        key = await self._live_key(actor, key_id)
        now = self.clock()
        changes: dict[str, object] = {}
        pin: dict[str, int] = {}
        if patch.team is not UNSET:
            changes["team"], pin = await self._team_for(actor, patch.team)
        if patch.models is not UNSET:
            changes["models"] = inputs.check_models(patch.models, self.known)
        if patch.limits is not UNSET:
            changes["limits"] = self._limits(patch.limits)
        if patch.budget is not UNSET:
            changes["budget"] = self._budget(patch.budget)
        if patch.expires_at is not UNSET:
            changes["expires_at"] = inputs.check_expiry(patch.expires_at, now)
        if patch.metadata is not UNSET:
            changes["metadata"] = inputs.check_metadata(patch.metadata)
        return await self._save_key(actor, "key.update", key, msgspec.structs.replace(key, **changes), pin=pin)

    async def rotate_key(self, actor: Principal, key_id: str, grace_seconds: float) -> Minted:
        """A new secret for the key; the old one keeps working for `grace_seconds` (a grace
        still running from an earlier rotation ends now)."""
        actor.may_write()
        key = await self._live_key(actor, key_id)
        grace = inputs.check_grace(grace_seconds)
        secret = mint_key()
        rotated = msgspec.structs.replace(key, key_hash=hash_key(secret, self.config.server.key_pepper),
                                          previous_hash=key.key_hash, previous_until=self.clock() + grace)
        return Minted(await self._save_key(actor, "key.rotate", key, rotated), secret)

    async def revoke_key(self, actor: Principal, key_id: str) -> ApiKey:
        """Revoke for good (the record stays, for the audit trail and the ledger). Revoking a
        revoked key changes nothing."""
        actor.may_write()
        key = await self._visible_key(actor, key_id)
        if key.revoked_at is not None:
            return key
        return await self._save_key(actor, "key.revoke", key, msgspec.structs.replace(key, revoked_at=self.clock()))

    async def key(self, actor: Principal, key_id: str) -> ApiKey:
        return await self._visible_key(actor, key_id)

    # -- teams -------------------------------------------------------------------------------

    async def create_team(self, actor: Principal, body: TeamCreate) -> ApiTeam:
        actor.owner_only("create teams")
        name = inputs.check_name(body.name)
        if name in self._config_teams:
            raise errors.conflict(f"A team named '{name}' is defined in the config file.")
        held = await self._read(self.store.team(name))
        if held is not None and held.deleted_at is None:
            raise errors.conflict(f"A team named '{name}' exists.")
        team = ApiTeam(name, self.clock(), inputs.check_models(body.models, self.known), self._limits(body.limits),
                       self._budget(body.budget))
        return await self._save_team(actor, "team.create", None, team, expect=held.version if held else 0)

    async def update_team(self, actor: Principal, name: str, patch: TeamPatch) -> ApiTeam:
        actor.owner_only("change teams")
        team = await self._api_team(actor, name)
        changes: dict[str, object] = {}
        if patch.models is not UNSET:
            changes["models"] = inputs.check_models(patch.models, self.known)
        if patch.limits is not UNSET:
            changes["limits"] = self._limits(patch.limits)
        if patch.budget is not UNSET:
            changes["budget"] = self._budget(patch.budget)
        return await self._save_team(actor, "team.update", team, msgspec.structs.replace(team, **changes))

    async def delete_team(self, actor: Principal, name: str) -> ApiTeam:
        actor.owner_only("delete teams")
        team = await self._api_team(actor, name)
        # (409 while it has live keys: the store checks that as it saves, against every key
        # saved before, not this process's copy of them, which may be seconds old)
        return await self._save_team(actor, "team.delete", team, msgspec.structs.replace(team, deleted_at=self.clock()))

    async def team(self, actor: Principal, name: str) -> ApiTeam:
        if not actor.sees(name):
            raise errors.admin_not_found("team", name)
        return await self._api_team(actor, name)

    # -- checking ------------------------------------------------------------------------------

    def _limits(self, limits: list[Limit]) -> list[Limit]:
        checked = inputs.check_limits(limits, self.known)
        if checked:
            self._enforceable("limits")
        return checked

    def _budget(self, budget: Budget | None) -> Budget | None:
        checked = inputs.check_budget(budget)
        if checked is not None:
            self._enforceable("budget")
        return checked

    def _enforceable(self, param: str) -> None:
        """A 400 for a budget or limits this gateway's workers would each admit in full
        (`serve` refuses the config file's for the same reason)."""
        problem = run_time_problem(self.config, self.workers, f"the {param}")
        if problem is not None:
            raise errors.bad_request(f"'{param}' cannot be enforced here: {problem}", param=param)

    # -- reading and saving ----------------------------------------------------------------------

    async def _team_for(self, actor: Principal, team: str | None) -> tuple[str | None, dict[str, int]]:
        """The team a key of `actor` goes to: a team admin's own (403 for another); one that
        exists. And, for a run-time team, the version the key's save must still find it at: a
        team deleted (or changed) meanwhile makes the save a 409, not a key in no team."""
        if actor.role == "team_admin":
            if team is not None and team != actor.team:
                raise errors.admin_forbidden(f"'{actor.name}' manages keys of team '{actor.team}' only.")
            team = actor.team
        if team is None or team in self._config_teams:
            return team, {}
        held = await self._read(self.store.team(team)) if inputs.NAME.fullmatch(team) else None
        if held is None or held.deleted_at is not None:
            raise errors.bad_request(f"Unknown team '{errors.echoed(team)}': create it first (POST /admin/teams).",
                                     param="team")
        return team, {f"team:{team}": held.version}

    async def _visible_key(self, actor: Principal, key_id: str) -> ApiKey:
        config_key = self._config_keys.get(key_id[len("config:"):]) if key_id.startswith("config:") else None
        if config_key is not None and actor.sees(config_key.team):  # (another team's: not found, below)
            raise errors.conflict(f"Key '{key_id}' lives in the config file: change it there (it is read-only "
                                  "through the API).")
        key = await self._read(self.store.key(key_id)) if _KEY_ID.fullmatch(key_id) else None
        if key is None or not actor.sees(key.team):  # another team's key does not exist for a team admin
            raise errors.admin_not_found("key", key_id)
        return key

    async def _live_key(self, actor: Principal, key_id: str) -> ApiKey:
        key = await self._visible_key(actor, key_id)
        if key.revoked_at is not None:
            raise errors.conflict(f"Key '{key_id}' is revoked; a revoked key cannot be changed or rotated.")
        return key

    async def _api_team(self, actor: Principal, name: str) -> ApiTeam:
        if name in self._config_teams:
            raise errors.conflict(f"Team '{name}' lives in the config file: change it there (it is read-only "
                                  "through the API).")
        team = await self._read(self.store.team(name)) if inputs.NAME.fullmatch(name) else None
        if team is None or team.deleted_at is not None or not actor.sees(name):
            raise errors.admin_not_found("team", name)
        return team

    async def _read(self, pending: Awaitable[R]) -> R:
        """A store read; the database down is a 503 (requests keep being served meanwhile)."""
        try:
            return await pending
        except (StoreError, OSError):
            raise errors.store_unavailable() from None

    async def _save_key(self, actor: Principal, action: str, before: ApiKey | None, after: ApiKey,
                        expect: int | None = None, pin: dict[str, int] | None = None) -> ApiKey:
        """`pin`: more records' versions the save expects (the key's team's)."""
        now = self.clock()
        entries = [AuditEntry(now, actor.name, action, after.id, after.team,
                              key_view(before, now) if before is not None else None, key_view(after, now))]
        version = expect if expect is not None else (before.version if before is not None else 0)
        saved_at = await self._save(Change(keys=[after], audit=entries, expect={f"key:{after.id}": version, **(pin or {})}))
        saved = msgspec.structs.replace(after, version=saved_at)
        self._apply(Snapshot(saved_at, keys=[saved]))
        return saved

    async def _save_team(self, actor: Principal, action: str, before: ApiTeam | None, after: ApiTeam,
                         expect: int | None = None) -> ApiTeam:
        entry = AuditEntry(self.clock(), actor.name, action, after.name, after.name,
                           team_view(before, "api") if before is not None else None, team_view(after, "api"))
        version = expect if expect is not None else (before.version if before is not None else 0)
        saved_at = await self._save(Change(teams=[after], audit=[entry], expect={f"team:{after.name}": version}))
        saved = msgspec.structs.replace(after, version=saved_at)
        self._apply(Snapshot(saved_at, teams=[saved]))
        return saved

    async def _save(self, change: Change) -> int:
        try:
            return await self.store.save(change)
        except Conflict as exc:
            raise errors.conflict(str(exc)) from None
        except (StoreError, OSError):
            raise errors.store_unavailable() from None

    def _apply(self, snapshot: Snapshot) -> None:
        if self.directory is not None:
            self.directory.apply(snapshot, contiguous=False)
            self.directory.wake()  # and read what other replicas did meanwhile
