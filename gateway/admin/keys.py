"""/admin/keys, /admin/teams and /admin/audit: run-time keys and teams, and who changed what.

Lists are OpenAI-style (`{"object": "list", "data": [...], "has_more"}`); a key or team is
shown without its secret or digest; keys and teams of the config file are listed read-only
(`"source": "config"`). A team admin sees its team only: another team's key is a 404.
"""
from __future__ import annotations

import time
from typing import TypeVar
from urllib.parse import unquote

from tollway.core import errors
from tollway.core.config import Key, Team
from tollway.core.ledger.periods import parse_instant, rfc3339
from tollway.core.ledger.record import key_id_of
from tollway.core.tenancy import inputs
from tollway.core.tenancy.inputs import KeyCreate, KeyPatch, Rotate, TeamCreate, TeamPatch
from tollway.core.tenancy.records import ApiKey, AuditEntry, config_key_view, key_view, team_view
from tollway.gateway.admin.call import AdminCall, answer
from tollway.gateway.admin.spend import MAX_LIST, query_params
from tollway.gateway.store import StoreError

Patch = TypeVar("Patch", KeyCreate, KeyPatch)

# -- keys ------------------------------------------------------------------------------------------


async def create_key(call: AdminCall) -> None:
    """POST /admin/keys → 201, the key object with `key` (shown this once)."""
    actions = call.actions()
    minted = await actions.create_key(call.who, _team_named(inputs.decode(await call.body(), KeyCreate)))
    answer(call, {**key_view(minted.key, time.time()), "key": minted.secret}, 201, secret=True)


async def list_keys(call: AdminCall) -> None:
    """GET /admin/keys?team=&q=&include_revoked=&limit=&after= (the config's keys first, then by
    creation; `q`: a piece of the id, name or team, any case)."""
    q = query_params(call.scope)
    limit = _limit(q)
    include_revoked = _flag(q, "include_revoked")
    team = q.get("team")
    search = q.get("q", "").lower()[:256]
    who = call.who
    now = time.time()

    def shown(ident: str, name: str, owner: str | None) -> bool:
        if not who.sees(owner) or (team is not None and owner != team):
            return False
        return not search or any(search in text.lower() for text in (ident, name, owner or ""))

    items: list[dict[str, object]] = [config_key_view(k, key_id_of(k.name)) for k in _config_keys(call)
                                      if shown(key_id_of(k.name), k.name, k.team)]
    directory = call.serving.actions.directory if call.serving.actions is not None else None
    api_keys = sorted(directory.keys() if directory is not None else [], key=lambda k: (k.created_at, k.id))
    items += [key_view(k, now) for k in api_keys
              if shown(k.id, k.name, k.team) and (include_revoked or k.revoked_at is None)]
    answer(call, _page(items, limit, q.get("after")))


async def get_key(call: AdminCall) -> None:
    ident = _ident(call, "key")
    config = _config_key(call, ident)
    if config is not None:
        answer(call, config_key_view(config, ident))
        return
    key = await call.actions().key(call.who, ident)
    answer(call, await _with_last_use(call, key))


async def update_key(call: AdminCall) -> None:
    patch = _team_named(inputs.decode(await call.body(), KeyPatch))
    key = await call.actions().update_key(call.who, _ident(call, "key"), patch)
    answer(call, key_view(key, time.time()))


async def rotate_key(call: AdminCall) -> None:
    """POST /admin/keys/{id}/rotate {"grace_seconds": 3600} → the key object with the new `key`."""
    raw = await call.body()
    body = inputs.decode(raw, Rotate) if raw.strip() else Rotate()
    minted = await call.actions().rotate_key(call.who, _ident(call, "key"), body.grace_seconds)
    answer(call, {**key_view(minted.key, time.time()), "key": minted.secret}, secret=True)


async def revoke_key(call: AdminCall) -> None:
    """POST /admin/keys/{id}/revoke, DELETE /admin/keys/{id}: revoked for good, the record kept."""
    key = await call.actions().revoke_key(call.who, _ident(call, "key"))
    answer(call, key_view(key, time.time()))


# -- teams -----------------------------------------------------------------------------------------


async def create_team(call: AdminCall) -> None:
    team = await call.actions().create_team(call.who, inputs.decode(await call.body(), TeamCreate))
    answer(call, team_view(team, "api"), 201)


async def list_teams(call: AdminCall) -> None:
    q = query_params(call.scope)
    limit = _limit(q)
    items = [team_view(t, "config") for t in _config_teams(call) if call.who.sees(t.name)]
    directory = call.serving.actions.directory if call.serving.actions is not None else None
    teams = sorted(directory.teams() if directory is not None else [], key=lambda t: (t.created_at, t.name))
    items += [team_view(t, "api") for t in teams if call.who.sees(t.name)]
    answer(call, _page(items, limit, q.get("after"), ident="name"))


async def get_team(call: AdminCall) -> None:
    name = _ident(call, "team")
    for team in _config_teams(call):
        if team.name == name and call.who.sees(name):
            answer(call, team_view(team, "config"))
            return
    answer(call, team_view(await call.actions().team(call.who, name), "api"))


async def update_team(call: AdminCall) -> None:
    patch = inputs.decode(await call.body(), TeamPatch)
    answer(call, team_view(await call.actions().update_team(call.who, _ident(call, "team"), patch), "api"))


async def delete_team(call: AdminCall) -> None:
    team = await call.actions().delete_team(call.who, _ident(call, "team"))
    answer(call, {**team_view(team, "api"), "deleted": True})


# -- audit -----------------------------------------------------------------------------------------


async def audit(call: AdminCall) -> None:
    """GET /admin/audit?since=&limit= → admin changes, newest first (a team admin's: its team's)."""
    q = query_params(call.scope)
    limit = _limit(q)
    try:
        since = parse_instant(q["since"], time.time()) if "since" in q else None
    except ValueError as exc:
        raise errors.bad_request(f"since: {exc}", param="since") from None
    actions = call.actions()
    try:
        entries = await actions.store.audit(since, limit + 1, call.who.scope_team)  # one more: is there more?
    except (StoreError, OSError):
        raise errors.store_unavailable() from None
    answer(call, {"object": "list", "data": [_audit_view(e) for e in entries[:limit]],
                  "has_more": len(entries) > limit})


def _audit_view(entry: AuditEntry) -> dict[str, object]:
    return {"object": "audit_entry", "ts": rfc3339(entry.ts), "actor": entry.actor, "action": entry.action,
            "target": entry.target, "team": entry.team, "before": entry.before, "after": entry.after}


# -- helpers ---------------------------------------------------------------------------------------


def _ident(call: AdminCall, what: str) -> str:
    """The path's id or name, percent-decoded. One with a NUL names nothing (no id or name has
    one, and PostgreSQL cannot even compare text with it): a 404 without asking the store."""
    ident = unquote(call.ident)
    if "\x00" in ident:
        raise errors.admin_not_found(what, ident)
    return ident


def _team_named(body: Patch) -> Patch:
    """`body`, its `team` refused (400) if it holds a NUL: no team has one, and PostgreSQL
    cannot look such a name up (it would answer 503, the database down)."""
    team = body.team
    if isinstance(team, str) and "\x00" in team:
        raise errors.bad_request(f"Unknown team '{errors.echoed(team)}'.", param="team")
    return body


def _config_keys(call: AdminCall) -> list[Key]:
    return list(call.serving.runtime.file_config.keys)


def _config_teams(call: AdminCall) -> list[Team]:
    return list(call.serving.runtime.file_config.teams)


def _config_key(call: AdminCall, ident: str) -> Key | None:
    for key in _config_keys(call):
        if key_id_of(key.name) == ident:
            if not call.who.sees(key.team):
                raise errors.admin_not_found("key", ident)
            return key
    return None


async def _with_last_use(call: AdminCall, key: ApiKey) -> dict[str, object]:
    """The key's view with its last use (as written so far; best effort: the database may be down)."""
    last = None
    try:
        last = (await call.actions().store.last_used([key.id])).get(key.id)
    except (StoreError, OSError):
        pass
    pending = call.serving.last_used.get(key.id)  # used here since the last write
    if pending is not None and (last is None or pending > last):
        last = pending
    return key_view(key, time.time(), last)


def _limit(q: dict[str, str]) -> int:
    try:
        limit = int(q.get("limit", "100"))
    except ValueError:
        raise errors.bad_request("limit must be a whole number", param="limit") from None
    if not 1 <= limit <= MAX_LIST:
        raise errors.bad_request(f"limit must be between 1 and {MAX_LIST}", param="limit")
    return limit


def _flag(q: dict[str, str], name: str) -> bool:
    value = q.get(name, "false").lower()
    if value not in ("true", "false", "1", "0"):
        raise errors.bad_request(f"{name} must be true or false", param=name)
    return value in ("true", "1")


def _page(items: list[dict[str, object]], limit: int, after: str | None, ident: str = "id") -> dict[str, object]:
    """One page of `items` after the item whose `ident` is `after` (a cursor: OpenAI's `after`)."""
    start = 0
    if after is not None:
        found = next((i for i, item in enumerate(items) if item[ident] == after), None)
        if found is None:
            raise errors.bad_request(f"after: no item '{errors.echoed(after)}' in this list", param="after")
        start = found + 1
    page = items[start:start + limit]
    return {"object": "list", "data": page, "first_id": page[0][ident] if page else None,
            "last_id": page[-1][ident] if page else None, "has_more": start + limit < len(items)}
