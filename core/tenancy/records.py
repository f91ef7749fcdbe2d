"""Keys and teams made at run time (the admin API, `tollway keys`), and the audit trail.

An `ApiKey` is stored whole as one document (the store indexes a few of its fields) and is
held by every gateway process in memory (tollway.gateway.tenancy.directory); the request path
sees it as a config `Key` plus what only run-time keys have: an expiry, a revocation, the
previous digest of a rotation with its grace. It never holds the key itself: `key_hash` is the
digest (tollway.core.security.keys), and no view of a record shows it.

Every change bumps the store's key version, and each record carries the version of its last
change, so a process learns what changed since the version it holds (`version > held`).
"""
from __future__ import annotations

from typing import Literal

import msgspec

from tollway.core.config import Budget, Key, Limit, Team
from tollway.core.ledger.periods import rfc3339

MetaValue = str | int | float | bool | None
KeyStatus = Literal["active", "expired", "revoked"]


class ApiKey(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: str  # key_<24 hex>: the ledger's key_id and the admin API's handle
    name: str
    key_hash: str
    created_at: float
    team: str | None = None
    models: list[str] = msgspec.field(default_factory=lambda: ["*"])
    limits: list[Limit] = []
    budget: Budget | None = None
    metadata: dict[str, MetaValue] = {}
    expires_at: float | None = None
    revoked_at: float | None = None
    previous_hash: str | None = None  # the digest a rotation replaced, valid until previous_until
    previous_until: float | None = None
    version: int = 0  # the store's key version at this record's last change (the store sets it)

    def status(self, now: float) -> KeyStatus:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"

    def as_config_key(self) -> Key:
        """What limits, budgets and routing permissions read: the same shape as a config key."""
        return Key(self.name, self.key_hash, list(self.models), self.team, list(self.limits), self.budget)


class ApiTeam(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    created_at: float
    models: list[str] = msgspec.field(default_factory=lambda: ["*"])  # its keys may use at most these
    limits: list[Limit] = []
    budget: Budget | None = None
    deleted_at: float | None = None  # kept (not removed) so every process learns of the delete
    version: int = 0

    def as_config_team(self) -> Team:
        return Team(self.name, list(self.limits), self.budget, list(self.models))


class AuditEntry(msgspec.Struct, frozen=True):
    """One admin change. `before` and `after` are views (`key_view`, `team_view`): no key, no digest."""

    ts: float
    actor: str  # the administrator's name ("admin" for the owner, "cli" for `tollway keys`)
    action: str  # key.create, key.update, key.rotate, key.revoke, team.create, team.update, team.delete
    target: str  # a key id or a team name
    team: str | None = None  # the team the change concerns (a team admin sees only its own)
    before: dict[str, object] | None = None
    after: dict[str, object] | None = None


class Change(msgspec.Struct, frozen=True):
    """What one admin action writes, all or nothing, with the version each record must still
    have (`expect`: id or team name -> version; 0 = must not exist) so two replicas changing
    one record at once cannot both win."""

    keys: list[ApiKey] = []
    teams: list[ApiTeam] = []
    audit: list[AuditEntry] = []
    expect: dict[str, int] = {}


class Snapshot(msgspec.Struct, frozen=True):
    """What a store holds past some version: every key and team changed since, and the newest version."""

    version: int
    keys: list[ApiKey] = []
    teams: list[ApiTeam] = []


# -- views: what the admin API answers and the audit trail keeps --------------------------------

def _limit_view(limit: Limit) -> dict[str, object]:
    return {k: v for k, v in msgspec.structs.asdict(limit).items() if v is not None}


def _budget_view(budget: Budget | None) -> dict[str, object] | None:
    return None if budget is None else {"usd": budget.usd, "period": budget.period}


def _time(ts: float | None) -> str | None:
    return None if ts is None else rfc3339(ts)


def key_view(key: ApiKey, now: float, last_used_at: float | None = None) -> dict[str, object]:
    """The admin API's key object (never the key or its digest)."""
    return {
        "object": "key", "id": key.id, "name": key.name, "team": key.team, "models": list(key.models),
        "limits": [_limit_view(lim) for lim in key.limits], "budget": _budget_view(key.budget),
        "metadata": dict(key.metadata), "created_at": _time(key.created_at), "expires_at": _time(key.expires_at),
        "revoked_at": _time(key.revoked_at), "last_used_at": _time(last_used_at),
        "status": key.status(now), "source": "api",
        "rotation_grace_until": _time(key.previous_until) if key.previous_hash else None,
    }


def config_key_view(key: Key, key_id: str) -> dict[str, object]:
    """A key of the config file, read-only through the API."""
    return {
        "object": "key", "id": key_id, "name": key.name, "team": key.team, "models": list(key.models),
        "limits": [_limit_view(lim) for lim in key.limits], "budget": _budget_view(key.budget),
        "metadata": {}, "created_at": None, "expires_at": None, "revoked_at": None, "last_used_at": None,
        "status": "active", "source": "config", "rotation_grace_until": None,
    }


def team_view(team: ApiTeam | Team, source: Literal["api", "config"]) -> dict[str, object]:
    created = team.created_at if isinstance(team, ApiTeam) else None
    return {
        "object": "team", "name": team.name, "models": list(team.models),
        "limits": [_limit_view(lim) for lim in team.limits], "budget": _budget_view(team.budget),
        "created_at": _time(created), "source": source,
    }
