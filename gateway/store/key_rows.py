"""What both stores do alike for run-time keys, teams and the audit trail (the `KeyStore`
half of a store): a change's expectations, the checks that make it a Conflict, the records
stamped with a save's version, and a record to and from its stored document.

A record is stored whole as its msgspec JSON (`doc`); the columns beside it (name, team,
digest, revoked, version) only mirror fields, for the indexes that keep names and digests
unique and for `changes(since)`. Each store only says how its database spells the SQL.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import msgspec

from tollway.core.tenancy.records import ApiKey, ApiTeam, AuditEntry, Change
from tollway.gateway.store import Conflict

Kind = Literal["key", "team"]
KeyColumns = tuple[str, str, str | None, str, bool, int, str]  # id, name, team, key_hash, revoked, version, doc
TeamColumns = tuple[str, int, str]  # name, version, doc
AuditColumns = tuple[float, str | None, str]  # ts, team, doc

_encode = msgspec.json.Encoder().encode
_key_decoder = msgspec.json.Decoder(ApiKey)
_team_decoder = msgspec.json.Decoder(ApiTeam)
_audit_decoder = msgspec.json.Decoder(AuditEntry)


@dataclass(frozen=True, slots=True)
class Expectation:
    """One entry of `Change.expect`: the record must still have `version` (0: must not exist)."""

    kind: Kind
    ident: str  # a key id or a team name
    version: int


def expectations(expect: dict[str, int]) -> list[Expectation]:
    """`Change.expect` taken apart, in a fixed order. A malformed entry is the caller's bug
    (not a lost race), so it is a ValueError, raised before anything is written."""
    out: list[Expectation] = []
    for name, version in sorted(expect.items()):
        kind, sep, ident = name.partition(":")
        if not sep or not ident or kind not in ("key", "team"):
            raise ValueError(f"an expectation names 'key:<id>' or 'team:<name>', not {name!r}")
        out.append(Expectation("key" if kind == "key" else "team", ident, version))
    return out


def check(expected: Expectation, found: int | None) -> None:
    """Raise Conflict unless the record has the version expected (`found`: None when absent)."""
    have = found or 0
    if have == expected.version:
        return
    what = f"{expected.kind} {expected.ident!r}"
    if expected.version == 0:
        raise Conflict(f"{what} exists already")
    if have == 0:
        raise Conflict(f"{what} does not exist")
    raise Conflict(f"{what} was changed by someone else (it is at version {have}, the change expected "
                   f"{expected.version}): read it again and retry")


def clash(key: ApiKey, on_digest: bool) -> Conflict:
    """A unique index refused `key`. The message names the key, never its digest."""
    if on_digest:
        return Conflict(f"key {key.name!r} ({key.id}) has a digest another key already has")
    return Conflict(name_taken(key.name))


def deleted_teams(change: Change) -> list[str]:
    """The teams `change` deletes. Each save checks, in its transaction and after writing the
    change's keys, that none still has a live key: a process's own copy of the keys may be
    seconds old, and a key saved meanwhile (another replica, `tollway keys`) would be left in
    a team that no longer exists."""
    return sorted(t.name for t in change.teams if t.deleted_at is not None)


def team_in_use(team: str, live: int) -> Conflict:
    return Conflict(f"Team '{team}' still has {live} live key(s): revoke them or move them to another team first.")


def name_taken(name: str) -> str:
    """Why a new key cannot have `name`; the same whoever holds it, so a team admin learns
    only that it is taken, not which team's or whether the config file defines it."""
    return (f"a key named {name!r} exists already (or did: a revoked key's name is not reused, since the ledger, "
            "limits and budgets count by name); choose another name")


@dataclass(frozen=True, slots=True)
class Stamped:
    """A change's rows, each record stamped with the save's version (its doc says the same
    version as its column: a process reading either sees one number)."""

    keys: list[tuple[ApiKey, KeyColumns]]
    teams: list[TeamColumns]
    audit: list[AuditColumns]


def stamp(change: Change, version: int) -> Stamped:
    # Keys in id order: two transactions locking several key rows lock them in one order.
    keys = [msgspec.structs.replace(k, version=version) for k in sorted(change.keys, key=lambda k: k.id)]
    teams = [msgspec.structs.replace(t, version=version) for t in sorted(change.teams, key=lambda t: t.name)]
    return Stamped(
        keys=[(k, (k.id, k.name, k.team, k.key_hash, k.revoked_at is not None, version, _doc(k))) for k in keys],
        teams=[(t.name, version, _doc(t)) for t in teams],
        audit=[(a.ts, a.team, _doc(a)) for a in change.audit],
    )


def _doc(record: ApiKey | ApiTeam | AuditEntry) -> str:
    return _encode(record).decode()


def key_of(doc: str | bytes) -> ApiKey:
    return _key_decoder.decode(doc)


def team_of(doc: str | bytes) -> ApiTeam:
    return _team_decoder.decode(doc)


def audit_of(doc: str | bytes) -> AuditEntry:
    return _audit_decoder.decode(doc)
