"""Every type error in plain data decoded into msgspec Structs, not only the first.

`msgspec.convert` stops at the first problem. To list them all (for `tollway check`), the
data is walked alongside the target type: each Struct field, list item and dict value is
converted on its own, and only where no smaller part is to blame is msgspec's own message
used. The walk visits keys in the data's order and a Struct's missing fields after its keys,
as msgspec does, so the first problem found is the one `msgspec.convert` reports.

The walk also builds a repaired copy, so that the checks that need decoded Structs (names
that must resolve, and so on) can still run on the rest of the config: an unknown field is
dropped, or renamed when it is a near miss of a field that is absent ('shema' -> 'schema'),
and a bad value of a field that has a default is dropped. Anything else (a required field
missing or broken, a bad list item) cannot be repaired without guessing.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from typing import Any

import msgspec

from tollway.core.suggest import did_you_mean

Path = list[str | int]
Problem = tuple[Path, str]  # where (keys and list indexes from the root), what is wrong

_MSGSPEC_PATH = re.compile(r"^(.*?)(?: - at `\$(.*)`)?$", re.S)
_PATH_PART = re.compile(r"\.([^.\[]+)|\[(\d+)\]")


@dataclasses.dataclass
class Decoded:
    problems: list[Problem]
    repaired: Any  # the data with what could be repaired repaired (meaningful only if `ok`)
    ok: bool  # `repaired` converts to the target type
    # Where checks of the repaired data would judge a guess: a field a near miss was renamed
    # into, and each object that lost a bad field to its default (its cross-field checks).
    guessed: list[Path] = dataclasses.field(default_factory=list)


def decode(data: Any, target: Any, where: Path | None = None) -> Decoded:
    """The problems converting `data` to `target` (a type), each at its path ([] if it
    converts), and a repaired copy of the data."""
    where = where or []
    try:
        msgspec.convert(data, target, strict=False)
        return Decoded([], data, True)
    except msgspec.ValidationError as exc:
        whole = _problem(str(exc), where)
    target = _without_none(target, data)
    if isinstance(target, type) and issubclass(target, msgspec.Struct) and isinstance(data, dict):
        return _struct(data, target, where, whole)
    parts: list[tuple[Path, Any, Any]] = []  # (where, value, type) of each item
    if typing.get_origin(target) is list and isinstance(data, list):
        (item,) = typing.get_args(target)
        parts = [([*where, i], value, item) for i, value in enumerate(data)]
    elif typing.get_origin(target) is dict and isinstance(data, dict):
        _, value_type = typing.get_args(target)
        parts = [([*where, str(key)], value, value_type) for key, value in data.items()]
    found = [decode(value, item_type, at) for at, value, item_type in parts]
    problems = [p for d in found for p in d.problems]
    if not problems:
        return Decoded([whole], data, False)
    # Every item repaired: so is the container. An item that is not cannot be dropped either:
    # every index after it would shift, and with it the path of every later problem.
    ok, guessed = all(d.ok for d in found), [g for d in found for g in d.guessed]
    if isinstance(data, dict):
        return Decoded(problems, {key: d.repaired for key, d in zip(data, found)}, ok, guessed)
    return Decoded(problems, [d.repaired for d in found], ok, guessed)


def _struct(data: dict[Any, Any], struct: type[msgspec.Struct], where: Path, whole: Problem) -> Decoded:
    fields = {f.encode_name: f for f in msgspec.structs.fields(struct)}
    problems: list[Problem] = []
    repaired: dict[Any, Any] = {}
    ok, guessed = True, []
    for key, value in data.items():
        at: Path = [*where, str(key)]  # problems inside a renamed field stay where they are in the file
        field = fields.get(key)
        if field is None:
            problems.append((at, f"unknown field '{key}'{did_you_mean(str(key), fields)}"))
            absent = [f for f in fields if f not in data and f not in repaired]
            near = difflib.get_close_matches(str(key), absent, n=1, cutoff=0.6)
            if not near:
                continue
            field, key = fields[near[0]], near[0]  # repaired as the field it was meant to be
            guessed.append([*where, key])
        inner = decode(value, field.type, at)
        problems += inner.problems
        guessed += inner.guessed
        if inner.ok:
            repaired[key] = inner.repaired
        elif field.required:
            ok = False
        else:
            guessed.append(where)  # its default stands in for it
    for name, field in fields.items():
        if field.required and name not in data and name not in repaired:  # (a renamed near miss was told)
            problems.append((where, f"Object missing required field `{name}`"))
            ok = False
    if not problems:  # msgspec refused it, but no part alone: nothing to repair
        return Decoded([whole], data, False)
    return Decoded(problems, repaired, ok, guessed)


def _without_none(target: Any, data: Any) -> Any:
    """`X | None` given something other than None is `X`: walk into it."""
    if typing.get_origin(target) in (typing.Union, types.UnionType) and data is not None:
        others = [t for t in typing.get_args(target) if t is not type(None)]
        if len(others) == 1:
            return others[0]
    return target


def _problem(message: str, where: Path) -> Problem:
    """msgspec's "Expected `int`, got `str` - at `$.a[0]`" as (where + ["a", 0], "Expected ...")."""
    m = _MSGSPEC_PATH.match(message)
    problem, raw_path = (m.group(1), m.group(2) or "") if m else (message, "")
    parts: Path = [p if p else int(i) for p, i in _PATH_PART.findall(raw_path)]
    if problem.startswith("Object contains unknown field"):  # a field of a Struct we did not walk into
        field = problem.split("`")[1]
        parts.append(field)
        problem = f"unknown field '{field}'"
    return [*where, *parts], problem
