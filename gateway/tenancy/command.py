"""`tollway keys`: make, list, rotate and revoke run-time gateway keys, straight in the store.

A thin shell over the admin actions (tollway.gateway.tenancy.actions) as the `cli` principal,
so the checks, the records and the audit trail are the admin API's own; it needs the config
file and the store's database, not a running gateway. Gateways that are running pick each
change up from the store by themselves (tollway.gateway.tenancy.directory), within seconds.

stdout holds the result alone (a new key is one line, nothing else, so `$(tollway keys
create ...)` captures it); every problem is one line on stderr and exit code 1.
"""
from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from collections.abc import Awaitable, Callable
from typing import IO, TYPE_CHECKING, TypeVar

import msgspec

from tollway.core import config as config_mod
from tollway.core import errors
from tollway.core.ledger.periods import rfc3339
from tollway.core.ledger.record import key_id_of
from tollway.core.tenancy.inputs import KeyCreate
from tollway.core.tenancy.records import config_key_view, key_view
from tollway.core.tenancy.roles import CLI
from tollway.gateway.store import KeyStore, StoreError, build_key_store

if TYPE_CHECKING:  # imported when a command runs: it pulls in the metrics, which `serve --workers N`
    from tollway.gateway.tenancy.actions import Actions  # must set up before they are imported

R = TypeVar("R")
PROG = "tollway keys"
_SPAN = re.compile(r"(\d{1,6})([dhms])")
_UNIT = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
_TABLE = ("id", "name", "team", "models", "status", "expires_at", "created_at")
_PASSWORD = re.compile(r"(://[^:/@\s]*:)\S*@")  # to the last @ of the URL: a password may hold @


class Refused(Exception):
    """A problem to say on stderr in one line, with exit code 1."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    keys = sub.add_parser("keys", help="make, list, rotate and revoke run-time gateway keys (in the store)",
                          description="Run-time gateway keys, read and written straight in the config's store: "
                                      "no gateway needs to run; running gateways pick changes up within seconds.")
    actions = keys.add_subparsers(metavar="ACTION", dest="action", required=True)

    create = actions.add_parser("create", help="make a key and print it (shown this once) alone on stdout")
    _config_arg(create)
    create.add_argument("--name", required=True, help="the key's name (unique among live keys)")
    create.add_argument("--team", default=None, help="the team it belongs to (in the config, or made at run time)")
    create.add_argument("--models", default="*", metavar="A,B",
                        help="the models it may use, comma-separated (default: every model, *)")
    create.add_argument("--expires", default=None, metavar="WHEN",
                        help="when it stops working: a span from now (30d, 12h, 90m) or an RFC 3339 time "
                             "(default: never)")
    create.set_defaults(func=run_create)

    listing = actions.add_parser("list", help="list the keys (the config file's and the store's)")
    _config_arg(listing)
    listing.add_argument("--team", default=None, help="only this team's keys")
    listing.add_argument("--include-revoked", action="store_true", help="list revoked keys too (default: not)")
    listing.add_argument("--format", choices=("table", "json"), default="table",
                         help="a table, or a JSON list of key objects (default: %(default)s)")
    listing.set_defaults(func=run_list)

    revoke = actions.add_parser("revoke", help="revoke a key for good (its record stays) and print it")
    _config_arg(revoke)
    revoke.add_argument("id", help="the key's id (key_...)")
    revoke.set_defaults(func=run_revoke)

    rotate = actions.add_parser("rotate", help="give a key a new secret and print it alone on stdout")
    _config_arg(rotate)
    rotate.add_argument("id", help="the key's id (key_...)")
    rotate.add_argument("--grace", default="1h", metavar="SPAN",
                        help="how long the old secret keeps working: 1h, 30m, 90s, 0 (default: %(default)s)")
    rotate.set_defaults(func=run_rotate)


def _config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, metavar="FILE", help="the gateway's config (its store: section)")


# -- the actions -------------------------------------------------------------------------------


def run_create(args: argparse.Namespace) -> int:
    async def act(actions: Actions) -> str:
        models = [m.strip() for m in args.models.split(",") if m.strip()]
        body = KeyCreate(name=args.name, team=args.team, models=models,
                         expires_at=_expiry(args.expires) if args.expires is not None else None)
        return (await actions.create_key(CLI, body)).secret

    return _run(args, act, lambda secret, out: out.write(secret + "\n"))


def run_rotate(args: argparse.Namespace) -> int:
    grace = _grace(args.grace)

    async def act(actions: Actions) -> str:
        return (await actions.rotate_key(CLI, args.id, grace)).secret

    return _run(args, act, lambda secret, out: out.write(secret + "\n"))


def run_revoke(args: argparse.Namespace) -> int:
    async def act(actions: Actions) -> dict[str, object]:
        return key_view(await actions.revoke_key(CLI, args.id), time.time())

    return _run(args, act, _json)


def run_list(args: argparse.Namespace) -> int:
    async def act(actions: Actions) -> list[dict[str, object]]:
        now = time.time()
        team = args.team
        items = [config_key_view(k, key_id_of(k.name)) for k in actions.config.keys if team is None or k.team == team]
        try:
            stored = (await actions.store.changes(0)).keys
        except (StoreError, OSError) as exc:
            raise Refused(f"cannot read the keys from the store: {exc}") from None
        items += [key_view(k, now) for k in sorted(stored, key=lambda k: (k.created_at, k.id))
                  if (team is None or k.team == team) and (args.include_revoked or k.revoked_at is None)]
        return items

    return _run(args, act, _json if args.format == "json" else _table)


# -- the shell: config, store, errors ----------------------------------------------------------


def _run(args: argparse.Namespace, act: Callable[[Actions], Awaitable[R]], show: Callable[[R, IO[str]], object]) -> int:
    """Load the config, open its store, run `act` as the `cli` principal and `show` its result;
    every problem is one line on stderr and exit code 1 (never a traceback or a password)."""
    try:
        config = _load(args.config)
        result = asyncio.run(_with_store(config, args.config, act))
    except Refused as exc:
        _say(str(exc))
        return 1
    except errors.GatewayError as exc:
        _say(exc.message if exc.code != "store_unavailable" else "the store's database did not answer; nothing was "
             "changed (or the change's outcome is unknown: list the keys to see)")
        return 1
    except (StoreError, OSError) as exc:
        _say(f"the store failed: {exc}")
        return 1
    except KeyboardInterrupt:
        _say("interrupted")
        return 130
    except Exception as exc:  # noqa: BLE001 -- one line, never a traceback (that could hold a database URL)
        _say(f"unexpected {type(exc).__name__}: {exc}")
        return 1
    show(result, sys.stdout)
    sys.stdout.flush()
    return 0


def _load(path: str) -> config_mod.Config:
    try:
        config = config_mod.load(path)
    except config_mod.ConfigError as exc:
        raise Refused(f"{path}: {exc}") from None
    if config.store is None:
        raise Refused(f"{path} has no store: section; run-time keys live in the store's database "
                      "(add store: with backend sqlite or postgres), or define keys under keys: in the file")
    return config


async def _with_store(config: config_mod.Config, path: str, act: Callable[[Actions], Awaitable[R]]) -> R:
    assert config.store is not None
    store: KeyStore = build_key_store(config.store, path)
    try:
        await store.open()
    except (StoreError, OSError) as exc:
        raise Refused(f"cannot open the store: {exc}") from None
    from tollway.gateway.tenancy.actions import Actions

    try:
        return await act(Actions(store, config))
    finally:
        await store.aclose()


def _say(message: str) -> None:
    print(f"{PROG}: " + _PASSWORD.sub(r"\1***@", message), file=sys.stderr)


def _expiry(value: str) -> str:
    """`--expires`: a span from now (30d, 12h, 90m) as an RFC 3339 time; any other text is
    passed on as an RFC 3339 time for the action to check."""
    span = _SPAN.fullmatch(value.strip())
    if span is None:
        return value
    seconds = int(span.group(1)) * _UNIT[span.group(2)]
    if seconds <= 0:
        raise Refused(f"--expires {value}: a span from now must be more than zero")
    return rfc3339(time.time() + seconds)


def _grace(value: str) -> float:
    text = value.strip()
    span = _SPAN.fullmatch(text)
    if span is not None:
        return int(span.group(1)) * _UNIT[span.group(2)]
    try:
        return float(text)  # plain seconds; the action checks the range
    except ValueError:
        _say(f"--grace {value!r}: use a span such as 1h, 30m, 90s, or 0 for none")
        raise SystemExit(2) from None


# -- output ----------------------------------------------------------------------------------------


def _json(result: object, out: IO[str]) -> None:
    out.write(msgspec.json.format(msgspec.json.encode(result)).decode() + "\n")


def _table(items: list[dict[str, object]], out: IO[str]) -> None:
    rows = [[_cell(item.get(c)) for c in _TABLE] for item in items]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(_TABLE)]
    out.write("  ".join(h.ljust(w) for h, w in zip(_TABLE, widths, strict=True)).rstrip() + "\n")
    for r in rows:
        out.write("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() + "\n")


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)
