"""Who may call the admin API, and what each role may see and do.

    owner       the config's `admin:` credential: everything
    team_admin  `admins:` with `team:`: that team's keys (make, change, rotate, revoke) and its
                spend, budgets and audit entries; another team's keys do not exist for it (404)
    viewer      `admins:` with `role: viewer`: reads keys (never a secret), teams, spend,
                budgets and the audit trail; writes nothing (403)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tollway.core import errors
from tollway.core.config import Config
from tollway.core.security.keys import KeyTable

Role = Literal["owner", "team_admin", "viewer"]


@dataclass(frozen=True, slots=True)
class Principal:
    name: str  # the audit trail's actor
    role: Role
    team: str | None = None  # team_admin's team

    def may_write(self) -> None:
        """Raise 403 for a viewer."""
        if self.role == "viewer":
            raise errors.admin_forbidden(f"'{self.name}' is a viewer: it can read, not change anything.")

    def sees(self, team: str | None) -> bool:
        """Whether records of `team` exist for this administrator."""
        return self.role != "team_admin" or team == self.team

    def owner_or_viewer(self, what: str) -> None:
        """Raise 403 for a team admin: deployment-wide facts (routing, the config) are not its team's."""
        if self.role == "team_admin":
            raise errors.admin_forbidden(f"A team admin cannot {what}: it is not its team's.")

    def owner_only(self, what: str) -> None:
        if self.role != "owner":
            raise errors.admin_forbidden(f"Only the owner (the config's admin: credential) can {what}.")

    @property
    def scope_team(self) -> str | None:
        """The team every report of this administrator is narrowed to (None: all)."""
        return self.team if self.role == "team_admin" else None


OWNER = Principal("admin", "owner")
CLI = Principal("cli", "owner")  # `tollway keys`: whoever can read the config and reach the database


def principals(config: Config) -> KeyTable[Principal] | None:
    """The administrators' credentials, found by digest like gateway keys (None: no admin API)."""
    if config.admin is None and not config.admins:
        return None
    table: dict[str, Principal] = {a.key_hash: Principal(a.name, a.role, a.team) for a in config.admins}
    if config.admin is not None:
        table[config.admin.key_hash] = OWNER
    return KeyTable(table, pepper=config.server.key_pepper)
