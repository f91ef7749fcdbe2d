"""The `guardrails:` section's checks that types cannot make (core/config/semantics.py runs them
with the rest, so `tollway check` lists every problem at its path): each type's own fields, valid
detectors and patterns, what `apply_to` and `action` may say. Names are checked for uniqueness
with the config's other sections."""
from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from tollway.core.guardrails.detectors import ALL as DETECTORS
from tollway.core.suggest import did_you_mean

if TYPE_CHECKING:
    from tollway.core.config import Guardrail

Path = list[str | int]


def problems(guardrails: Sequence[Guardrail]) -> list[tuple[Path, str]]:
    """Every problem of the configured guardrails, each at its path."""
    found: list[tuple[Path, str]] = []
    for i, g in enumerate(guardrails):
        at: Path = ["guardrails", i]
        if g.type == "json_schema":
            found += _json_schema(at, g)
            continue
        found += _pii(at, g) if g.type == "pii" else _regex(at, g)
        found += _apply_to(at, g)
    return found


def _pii(at: Path, g: Guardrail) -> list[tuple[Path, str]]:
    found: list[tuple[Path, str]] = []
    if g.deny:
        found.append(([*at, "deny"], "deny patterns belong to a guardrail of type regex"))
    if g.detectors is not None:
        if not g.detectors:
            found.append(([*at, "detectors"], "leave detectors out for all of them, or name at least one"))
        for j, d in enumerate(g.detectors):
            if d not in DETECTORS:
                found.append(([*at, "detectors", j],
                              f"unknown detector '{d}'{did_you_mean(d, DETECTORS)} (one of {', '.join(DETECTORS)})"))
    return found


def _regex(at: Path, g: Guardrail) -> list[tuple[Path, str]]:
    found: list[tuple[Path, str]] = []
    if g.detectors is not None:
        found.append(([*at, "detectors"], "detectors belong to a guardrail of type pii"))
    if not g.deny:
        found.append(([*at, "deny"], "a regex guardrail needs at least one deny pattern"))
    for j, pattern in enumerate(g.deny):
        try:
            re.compile(pattern)
        except re.error as exc:
            found.append(([*at, "deny", j], f"invalid regex: {exc}"))
        else:
            if re.fullmatch(pattern, ""):
                found.append(([*at, "deny", j], "the pattern matches empty text"))
    return found


def _apply_to(at: Path, g: Guardrail) -> list[tuple[Path, str]]:
    if g.apply_to is None:
        return []
    if not g.apply_to:
        return [([*at, "apply_to"], "name input, output or both")]
    if len(set(g.apply_to)) != len(g.apply_to):
        return [([*at, "apply_to"], "each of input and output at most once")]
    return []


def _json_schema(at: Path, g: Guardrail) -> list[tuple[Path, str]]:
    found: list[tuple[Path, str]] = []
    if g.action == "mask":
        found.append(([*at, "action"], "a json_schema guardrail blocks or logs (block | log): an answer that "
                      "does not match its schema has nothing to mask"))
    if g.detectors is not None:
        found.append(([*at, "detectors"], "detectors belong to a guardrail of type pii"))
    if g.deny:
        found.append(([*at, "deny"], "deny patterns belong to a guardrail of type regex"))
    if g.apply_to is not None and list(g.apply_to) != ["output"]:
        found.append(([*at, "apply_to"], "a json_schema guardrail checks the output only: "
                      "leave apply_to out, or say [output]"))
    return found
