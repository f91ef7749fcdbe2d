"""A problem at a config path, told the way the user reads the file: `ConfigError` names the
field (`models.gpt-4o[1].provider`, a list item by its `name:` where it has one) and its line.

The checks find problems as paths of keys and list indexes; only here are they mapped back to
the YAML node tree, which is what knows the lines."""
from __future__ import annotations

from collections.abc import Sequence

import yaml


class ConfigError(ValueError):
    """A config that cannot be served; `str()` is `path: problem (line N)`."""

    def __init__(self, path: str, problem: str, line: int | None = None) -> None:
        self.path, self.problem, self.line = path, problem, line
        where = f" (line {line})" if line else ""
        super().__init__(f"{path}: {problem}{where}" if path else f"{problem}{where}")


def error_at(where: Sequence[str | int], problem: str, root: yaml.Node | None) -> ConfigError:
    """A problem at a path of keys and indexes, as the user reads it: `models.gpt-4o[0].provider`, line."""
    if root is None:
        return ConfigError(".".join(map(str, where)), problem)
    return ConfigError(_pretty_path(where, root), problem, _line_of(where, root))


def _walk(parts: Sequence[str | int], root: yaml.Node) -> yaml.Node | None:
    node: yaml.Node | None = root
    for part in parts:
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            parent = node
            node = next((v for k, v in node.value if k.value == part), None)
            if node is None:  # an absent field: point at its parent
                return parent
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            return node
    return node


def _line_of(parts: Sequence[str | int], root: yaml.Node) -> int | None:
    node = _walk(parts, root)
    return node.start_mark.line + 1 if node is not None else None


def _pretty_path(parts: Sequence[str | int], root: yaml.Node) -> str:
    """`models[0].targets[1].provider` reads better as `models.gpt-4o[1].provider`."""
    out = ""
    for i, part in enumerate(parts):
        if isinstance(part, int):
            out += f"[{part}]"
        elif out.endswith("]") and part == "targets" and i >= 2 and parts[i - 2] == "models":
            pass  # folded into the model's name below
        else:
            out += f".{part}" if out else part
    return _name_models(out, parts, root)


def _name_models(out: str, parts: Sequence[str | int], root: yaml.Node) -> str:
    for section in ("models", "providers", "keys", "teams"):
        if len(parts) >= 2 and parts[0] == section and isinstance(parts[1], int):
            item = _walk(parts[:2], root)
            name = _mapping_get(item, "name")
            if name:
                rest = out[len(f"{section}[{parts[1]}]"):]
                return f"{section}.{name}{rest}"
    return out


def _mapping_get(node: yaml.Node | None, key: str) -> str | None:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if k.value == key and isinstance(v, yaml.ScalarNode):
                return str(v.value)
    return None
