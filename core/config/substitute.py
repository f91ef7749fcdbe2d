"""The YAML node tree as plain data, with `${ENV_VAR}` references in string values substituted.

The tree, not `yaml.safe_load`'s data, is the input so that every problem found later can be
mapped back to its line (tollway.core.config.report)."""
from __future__ import annotations

import re
from collections.abc import Mapping

import yaml

from tollway.core.config.report import ConfigError, error_at
from tollway.core.struct_decode import Path

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def to_data(node: yaml.Node, where: Path, env: Mapping[str, str], unset: list[tuple[Path, str]]) -> object:
    """YAML node tree -> plain data, substituting ${VARS} in scalars. A variable that is not set
    is left as its literal `${NAME}` and listed in `unset`, with the path of the value."""
    if isinstance(node, yaml.MappingNode):
        return {_key(k, where): to_data(v, [*where, k.value], env, unset) for k, v in node.value}
    if isinstance(node, yaml.SequenceNode):
        return [to_data(v, [*where, i], env, unset) for i, v in enumerate(node.value)]
    value = _scalar(node)
    if isinstance(value, str) and "${" in value:
        def sub(m: re.Match[str]) -> str:
            name = m.group(1)
            if name not in env:
                unset.append((where, name))
                return m.group(0)
            return str(env[name])

        value = _ENV_REF.sub(sub, value)
    return value


def _key(node: yaml.Node, where: Path) -> str:
    if not isinstance(node, yaml.ScalarNode):  # `? [a, b]`: YAML allows it, no config field is one
        raise ConfigError(".".join(map(str, where)), "a key must be a plain value, not a list or mapping",
                          node.start_mark.line + 1)
    return str(node.value)


# What aliases may add to the values a file writes out. A config that shares a targets list
# among hundreds of models needs a few thousand; an alias bomb (a few hundred bytes, each level
# nine aliases to the last) needs billions, and to_data's time and memory grow with the count.
MAX_ALIAS_VALUES = 100_000


def check_aliases(root: yaml.Node) -> None:
    """Raise ConfigError for aliases `to_data` could not expand: one inside its own anchor's
    value (`x: &x [*x]`, data that never ends), or ones that repeat more than MAX_ALIAS_VALUES
    values. YAML composes an alias as its anchor's node itself, so the tree is walked once, each
    list and mapping measured once, in time and memory that grow with the file, not with what
    its aliases would expand to."""
    _Aliases(root).size(root, [])


class _Aliases:
    def __init__(self, root: yaml.Node) -> None:
        self.root = root
        self.open: set[int] = set()  # the collections on the path being walked, by id
        self.sizes: dict[int, int] = {}  # the collections walked whole, by id: how many values each expands to
        self.added = 0  # values the aliases add to what the file writes out

    def size(self, node: yaml.Node, where: Path) -> int:
        """How many values `node` expands to (itself, and all it holds)."""
        if isinstance(node, yaml.ScalarNode):
            return 1
        if id(node) in self.sizes:  # an alias: its anchor's values, once more
            self.added += self.sizes[id(node)]
            if self.added > MAX_ALIAS_VALUES:
                raise error_at(where, f"YAML aliases repeat too much: expanded, they would add more than "
                                      f"{MAX_ALIAS_VALUES} values to the ones the file writes out", self.root)
            return self.sizes[id(node)]
        if id(node) in self.open:
            raise error_at(where, "a YAML alias refers to itself (it is inside its anchor's value)", self.root)
        self.open.add(id(node))
        items = [(k.value, v) for k, v in node.value] if isinstance(node, yaml.MappingNode) else enumerate(node.value)
        total = 1
        for part, child in items:
            total += self.size(child, [*where, part])
        self.open.discard(id(node))
        self.sizes[id(node)] = total
        return total


def _scalar(node: yaml.Node) -> object:
    """A scalar as YAML's safe loader types it (str, int, float, bool, None, a date...).

    A constructor of its own each time (cheap: four empty attributes): a constructor keeps every
    node it built in `constructed_objects`, so one shared across loads kept each load's whole
    node tree, and the config text its marks point at, for the life of the process."""
    return yaml.constructor.SafeConstructor().construct_object(node, deep=True)
