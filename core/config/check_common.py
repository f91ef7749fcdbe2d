"""What every semantic check shares: how a problem is recorded, and two checks several
sections make (names unique within a section, credentials given as digests)."""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import TypeVar

from tollway.core.config.access import Key, Team
from tollway.core.config.plugins import Guardrail, Plugin
from tollway.core.config.providers import Provider
from tollway.core.config.routing import Model

# Records a problem at a config path (keys and list indexes). Validation goes on after it, so
# `tollway check` lists every problem; a check that depends on an earlier one returns instead.
Fail = Callable[[Sequence[str | int], str], None]
_Named = TypeVar("_Named", Provider, Model, Key, Team, Plugin, Guardrail)

def unique(items: Sequence[_Named], section: str, fail: Fail) -> dict[str, _Named]:
    """The section's items by name, after failing each duplicate or unprintable name."""
    seen: dict[str, _Named] = {}
    for i, item in enumerate(items):
        if item.name in seen:
            fail([section, i, "name"], f"duplicate name '{item.name}'")
        if not item.name or not item.name.isprintable():  # names reach logs, metrics and the ledger's rows
            fail([section, i, "name"], "a name must be printable text (no control characters) and not empty")
        seen[item.name] = item
    return seen


_KEY_HASH = re.compile(r"^(sha256|hmac-sha256):[0-9a-f]{64}$")


def is_key_hash(value: str) -> bool:
    """`value` is what `tollway hash-key` prints: the config never holds a credential itself."""
    return bool(_KEY_HASH.match(value))
