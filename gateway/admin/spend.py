"""The ledger's admin endpoints: who spent what (`/admin/spend`), the latest requests
(`/admin/requests`) and the calendar budgets (`/admin/budgets`)."""
from __future__ import annotations

import dataclasses
import time
from urllib.parse import parse_qs

import msgspec
from granian.rsgi import HTTPProtocol, Scope

from tollway.core import errors
from tollway.core.ledger.periods import parse_instant
from tollway.core.ledger.report import spend_query
from tollway.core.tenancy.roles import Principal
from tollway.gateway.exchange import Exchange
from tollway.gateway.serving import Serving
from tollway.gateway.store import LedgerStore, RequestFilter, StoreError
from tollway.gateway.store.reports import request_list, spend_report

_encode = msgspec.json.Encoder().encode
_JSON = ("content-type", "application/json")
MAX_LIST = 1000  # records one /admin/requests answer holds


def query_params(scope: Scope) -> dict[str, str]:
    """The query string's parameters, the last of a repeated one winning."""
    return {k: v[-1] for k, v in parse_qs(scope.query_string, keep_blank_values=False).items()}


def _store(serving: Serving) -> LedgerStore:
    books = serving.books
    if books is None or books.ledger is None:
        raise errors.ledger_not_configured()
    return books.ledger.store


def _answer(proto: HTTPProtocol, ex: Exchange, body: object) -> None:
    ex.status = 200
    proto.response_bytes(200, [_JSON, ("x-request-id", ex.request_id)], _encode(body))


async def spend(serving: Serving, scope: Scope, proto: HTTPProtocol, ex: Exchange, who: Principal) -> None:
    """GET /admin/spend?group_by=team,model&since=7d&until=... (a team admin's: its team's only)"""
    store = _store(serving)
    q = query_params(scope)
    try:
        query = spend_query(q.get("group_by"), q.get("since"), q.get("until"), time.time())
    except ValueError as exc:
        raise errors.bad_request(str(exc), param=str(exc).split(":", 1)[0]) from None
    try:
        _answer(proto, ex, await spend_report(store, query, who.scope_team))
    except StoreError:
        raise errors.ledger_unavailable() from None


async def requests(serving: Serving, scope: Scope, proto: HTTPProtocol, ex: Exchange, who: Principal) -> None:
    """GET /admin/requests?key=&team=&model=&status=&since=&until=&limit= (newest first; a team
    admin's: its team's only, whatever `team=` says)."""
    store = _store(serving)
    where = request_filter(query_params(scope), time.time())
    if who.scope_team is not None:
        where = dataclasses.replace(where, team=who.scope_team)
    try:
        _answer(proto, ex, await request_list(store, where))
    except StoreError:
        raise errors.ledger_unavailable() from None


def request_filter(q: dict[str, str], now: float) -> RequestFilter:
    """`/admin/requests`' filters from its query. Raises a 400 naming a bad parameter."""
    status = _whole(q, "status")
    limit = _whole(q, "limit")
    limit = 100 if limit is None else limit
    if not 1 <= limit <= MAX_LIST:
        raise errors.bad_request(f"limit must be between 1 and {MAX_LIST}", param="limit")
    if status is not None and not 100 <= status <= 599:
        raise errors.bad_request("status must be an HTTP status, 100 to 599", param="status")
    for name in ("key", "team", "model"):  # names: printable text (a NUL is no name, and PostgreSQL refuses it)
        if name in q and not q[name].isprintable():
            raise errors.bad_request(f"{name} must be printable text", param=name)
    bounds: dict[str, float | None] = {}
    for name in ("since", "until"):
        try:
            bounds[name] = parse_instant(q[name], now) if name in q else None
        except ValueError as exc:
            raise errors.bad_request(f"{name}: {exc}", param=name) from None
    since, until = bounds["since"], bounds["until"]
    if since is not None and until is not None and until < since:  # (as /admin/spend says it)
        raise errors.bad_request("until: the end of the range is before its start (since)", param="until")
    return RequestFilter(key=q.get("key"), team=q.get("team"), model=q.get("model"), status=status,
                         since=since, until=until, limit=limit)


def _whole(q: dict[str, str], name: str) -> int | None:
    """The parameter `name` as a whole number (None if absent); a 400 naming it if it is not one."""
    if name not in q:
        return None
    try:
        return int(q[name])
    except ValueError:
        raise errors.bad_request(f"{name} must be a whole number", param=name) from None


async def budgets(serving: Serving, scope: Scope, proto: HTTPProtocol, ex: Exchange, who: Principal) -> None:
    """GET /admin/budgets: each key's and team's calendar budget, spent, remaining, reset."""
    books = serving.books
    keeper = books.budgets if books is not None else None
    data = keeper.book.status(keeper.clock()) if keeper is not None else []
    if who.scope_team is not None:  # its team's budget and its keys'
        teams = {k.name: k.team for k in serving.runtime.config.keys}
        data = [d for d in data if (d.get("team") if d["owner"] == "team" else teams.get(str(d.get("key")))) == who.team]
    _answer(proto, ex, {"object": "list", "data": data})
