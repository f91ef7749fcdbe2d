"""Every type error in plain data decoded into msgspec Structs, not only the first.

`msgspec.convert` stops at the first problem. To list them all (for `tollway check`), the
data is walked alongside the target type: each Struct field, list item and dict value is
converted on its own, and only where no smaller part is to blame is msgspec's own message
used. The walk visits keys in the data's order and a Struct's missing fields after its keys,
as msgspec does, so the first problem found is the one `msgspec.convert` reports.
"""
from __future__ import annotations

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


def decode_problems(data: Any, target: Any, where: Path | None = None) -> list[Problem]:
    """The problems converting `data` to `target` (a type), each at its path; [] if it converts."""
    where = where or []
    try:
        msgspec.convert(data, target, strict=False)
        return []
    except msgspec.ValidationError as exc:
        whole = _problem(str(exc), where)
    target = _without_none(target, data)
    found: list[Problem] = []
    if isinstance(target, type) and issubclass(target, msgspec.Struct) and isinstance(data, dict):
        found = _struct_problems(data, target, where)
    elif typing.get_origin(target) is list and isinstance(data, list):
        (item,) = typing.get_args(target)
        for i, value in enumerate(data):
            found += decode_problems(value, item, [*where, i])
    elif typing.get_origin(target) is dict and isinstance(data, dict):
        _, value_type = typing.get_args(target)
        for key, value in data.items():
            found += decode_problems(value, value_type, [*where, str(key)])
    return found or [whole]


def _struct_problems(data: dict[Any, Any], struct: type[msgspec.Struct], where: Path) -> list[Problem]:
    fields = {f.encode_name: f for f in msgspec.structs.fields(struct)}
    found: list[Problem] = []
    for key, value in data.items():
        field = fields.get(key)
        if field is None:
            found.append(([*where, str(key)], f"unknown field '{key}'{did_you_mean(str(key), fields)}"))
        else:
            found += decode_problems(value, field.type, [*where, str(key)])
    for name, field in fields.items():
        if field.required and name not in data:
            found.append((where, f"Object missing required field `{name}`"))
    return found


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
