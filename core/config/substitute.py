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


def refuse_endless_aliases(root: yaml.Node) -> None:
    """Raise ConfigError for an alias inside its own anchor's value (`x: &x [*x]`): its data
    would never end. YAML composes an alias as its anchor's node itself, so such an alias is a
    cycle in the node tree, which `to_data` (following aliases, as YAML means them) would
    recurse around until Python's stack ran out."""
    _Cycles(root).walk(root, [])


class _Cycles:
    def __init__(self, root: yaml.Node) -> None:
        self.root = root
        self.open: set[int] = set()  # the collections on the path being walked, by id
        self.done: set[int] = set()  # the collections walked whole: an alias to one is not walked again

    def walk(self, node: yaml.Node, where: Path) -> None:
        if isinstance(node, yaml.ScalarNode) or id(node) in self.done:
            return
        if id(node) in self.open:
            raise error_at(where, "a YAML alias refers to itself (it is inside its anchor's value)", self.root)
        self.open.add(id(node))
        items = [(k.value, v) for k, v in node.value] if isinstance(node, yaml.MappingNode) else enumerate(node.value)
        for part, child in items:
            self.walk(child, [*where, part])
        self.open.discard(id(node))
        self.done.add(id(node))


_scalar_loader = yaml.SafeLoader("")


def _scalar(node: yaml.Node) -> object:
    """A scalar as YAML's safe loader types it (str, int, float, bool, None, a date...)."""
    return _scalar_loader.construct_object(node, deep=True)
