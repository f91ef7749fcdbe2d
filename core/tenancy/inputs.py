"""What the admin API accepts to make or change a key or team, decoded and checked.

Each body is decoded strictly (unknown fields refused, types checked by msgspec) and then
checked against the config it will live beside: model names the routes know, limits in the
config's grammar, a budget, an expiry in the future, bounded metadata. Every refusal is a 400
naming the field (`param`), in the OpenAI error shape. Sans-IO: `now` is passed in.
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

import msgspec
from msgspec import UNSET, UnsetType

from tollway.core import errors
from tollway.core.config import Budget, Config, Limit, limit_problems
from tollway.core.tenancy.records import MetaValue

T = TypeVar("T")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,63}")  # names reach logs, metric labels and URLs
NAME_RULE = "1-64 characters: letters, digits and _ . : @ - (starting with a letter or digit)"
MAX_MODELS = 256
MAX_LIMITS = 32
MAX_METADATA = 32
MAX_META_CHARS = 256
MAX_GRACE_SECONDS = 30 * 86400
LATEST = 253402300799.0  # 9999-12-31T23:59:59Z: the last instant an answer can show in RFC 3339


class KeyCreate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    team: str | None = None
    models: list[str] = msgspec.field(default_factory=lambda: ["*"])
    limits: list[Limit] = []
    budget: Budget | None = None
    expires_at: str | None = None
    metadata: dict[str, MetaValue] = {}


class KeyPatch(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    team: str | None | UnsetType = UNSET
    models: list[str] | UnsetType = UNSET
    limits: list[Limit] | UnsetType = UNSET
    budget: Budget | None | UnsetType = UNSET
    expires_at: str | None | UnsetType = UNSET
    metadata: dict[str, MetaValue] | UnsetType = UNSET


class Rotate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    grace_seconds: float = 3600.0


class TeamCreate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    models: list[str] = msgspec.field(default_factory=lambda: ["*"])
    limits: list[Limit] = []
    budget: Budget | None = None


class TeamPatch(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    models: list[str] | UnsetType = UNSET
    limits: list[Limit] | UnsetType = UNSET
    budget: Budget | None | UnsetType = UNSET


def decode(body: bytes, kind: type[T]) -> T:
    """`body` as `kind`, or a 400 that says what is wrong and where."""
    if not body.strip():
        raise errors.bad_request("The request body must be a JSON object.")
    try:
        decoded = msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as exc:
        where = _path_of(str(exc))  # (a client's name when unknown: cut like any echo)
        raise errors.bad_request(f"Invalid body: {errors.echoed(str(exc))}",
                                 param=errors.echoed(where) if where else None) from None
    except msgspec.DecodeError:
        raise errors.bad_request("The request body is not valid JSON.") from None
    _refuse_repeats(body, kind)
    return decoded


def _refuse_repeats(body: bytes, kind: type[object]) -> None:
    """A 400 naming a field the body gives twice, at any depth (`budget.usd`): msgspec keeps the
    last, and whatever else reads the change (a proxy, a reviewer, the console's copy) may take
    the first. Client bodies are held to the same rule (tollway.core.request). An admin body is
    small and rare: read a second time, by the standard library, to see its pairs in order."""
    try:
        where = _repeated(json.loads(body, object_pairs_hook=_Pairs), "")
    except (ValueError, RecursionError):  # (msgspec read it: only a nesting past Python's depth)
        raise errors.bad_request("The request body is nested too deeply.") from None
    if where is not None:
        raise errors.bad_request(f"The field '{errors.echoed(where)}' appears more than once in the body; send it once.",
                                 param=errors.echoed(where))


class _Pairs(list[tuple[str, object]]):
    """An object's members in the order the body gives them (json's object_pairs_hook)."""


def _repeated(node: object, path: str) -> str | None:
    """The path of the first member named twice in its object, depth first; None if none."""
    if isinstance(node, _Pairs):
        seen: set[str] = set()
        for name, _ in node:
            if name in seen:
                return f"{path}.{name}" if path else name
            seen.add(name)
        members = ((f"{path}.{name}" if path else name, value) for name, value in node)
    elif isinstance(node, list):
        members = ((f"{path}[{i}]", value) for i, value in enumerate(node))
    else:
        return None
    for where, value in members:
        found = _repeated(value, where)
        if found is not None:
            return found
    return None


def _path_of(message: str) -> str | None:
    """The field msgspec's message is about, as `param`: "... - at `$.budget.usd`" names the
    place; an unknown field ("Object contains unknown field `x`") is named itself, under it."""
    found = re.search(r"at `\$\.?([^`]*)`", message)
    where = found.group(1) if found else ""
    unknown = re.match(r"Object contains unknown field `([^`]*)`", message)
    if unknown:
        return f"{where}.{unknown.group(1)}" if where else unknown.group(1)
    return where or None


@dataclass(frozen=True, slots=True)
class Known:
    """What names a key or team may refer to: the routes' public names and `match:` patterns."""

    models: frozenset[str]
    patterns: tuple[re.Pattern[str], ...]

    @classmethod
    def of(cls, config: Config) -> Known:
        patterns = []
        for m in config.models:
            if m.match is not None:
                try:
                    patterns.append(re.compile(m.match))
                except re.error:
                    pass  # `check` refused it; a running config has none
        return cls(frozenset(m.name for m in config.models), tuple(patterns))

    def serves(self, name: str) -> bool:
        return name == "*" or name in self.models or any(p.fullmatch(name) for p in self.patterns)


def check_name(name: str, param: str = "name") -> str:
    if not NAME.fullmatch(name):
        raise errors.bad_request(f"'{errors.echoed(name)}' is not a valid name: use {NAME_RULE}.", param=param)
    return name


def check_models(models: Sequence[str], known: Known, param: str = "models") -> list[str]:
    if not models:
        raise errors.bad_request('models must list at least one model, or ["*"] for all.', param=param)
    if len(models) > MAX_MODELS:
        raise errors.bad_request(f"models may list at most {MAX_MODELS} names.", param=param)
    for i, name in enumerate(models):
        if not known.serves(name):
            raise errors.bad_request(f"Unknown model '{errors.echoed(name)}': no route serves it.", param=f"{param}[{i}]")
    return list(models)


def check_limits(limits: Sequence[Limit], known: Known, param: str = "limits") -> list[Limit]:
    if len(limits) > MAX_LIMITS:
        raise errors.bad_request(f"At most {MAX_LIMITS} limits per key or team.", param=param)
    problems = limit_problems(limits, set(known.models))
    if problems:
        path, message = problems[0]
        where = param + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)
        raise errors.bad_request(f"Invalid limit: {message}.", param=where)
    return list(limits)


def check_budget(budget: Budget | None, param: str = "budget") -> Budget | None:
    if budget is not None and not (0 <= budget.usd and math.isfinite(budget.usd)):
        raise errors.bad_request("budget.usd must be a finite number of USD >= 0.", param=f"{param}.usd")
    return budget


def check_expiry(value: str | None, now: float, param: str = "expires_at") -> float | None:
    """An RFC 3339 instant in the future (a bare date is midnight UTC), as UNIX seconds."""
    if value is None:
        return None
    try:
        t = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise errors.bad_request(f"'{errors.echoed(value)}' is not an RFC 3339 time (like 2027-01-31T00:00:00Z).",
                                 param=param) from None
    ts = (t if t.tzinfo is not None else t.replace(tzinfo=UTC)).timestamp()
    if ts <= now:
        raise errors.bad_request("expires_at must be in the future.", param=param)
    if ts > LATEST:  # every view shows it in RFC 3339, which ends with year 9999
        raise errors.bad_request("expires_at must be before the year 10000 (UTC).", param=param)
    return ts


def check_metadata(metadata: dict[str, MetaValue], param: str = "metadata") -> dict[str, MetaValue]:
    if len(metadata) > MAX_METADATA:
        raise errors.bad_request(f"metadata may hold at most {MAX_METADATA} entries.", param=param)
    for name, value in metadata.items():
        if not 0 < len(name) <= 64:
            raise errors.bad_request("metadata names are 1-64 characters.", param=param)
        if isinstance(value, str) and len(value) > MAX_META_CHARS:
            raise errors.bad_request(f"metadata values are at most {MAX_META_CHARS} characters.", param=f"{param}.{name}")
        if isinstance(value, float) and not math.isfinite(value):
            raise errors.bad_request("metadata numbers must be finite.", param=f"{param}.{name}")
    return dict(metadata)


def check_grace(grace: float) -> float:
    if not 0 <= grace <= MAX_GRACE_SECONDS:
        raise errors.bad_request(f"grace_seconds must be between 0 and {MAX_GRACE_SECONDS} (30 days).",
                                 param="grace_seconds")
    return grace
