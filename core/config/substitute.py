"""The YAML node tree as plain data, with `${ENV_VAR}` references in string values substituted.

The tree, not `yaml.safe_load`'s data, is the input so that every problem found later can be
mapped back to its line (tollway.core.config.report)."""
from __future__ import annotations

import re
from collections.abc import Mapping

import yaml

from tollway.core.struct_decode import Path

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def to_data(node: yaml.Node, where: Path, env: Mapping[str, str], unset: list[tuple[Path, str]]) -> object:
    """YAML node tree -> plain data, substituting ${VARS} in scalars. A variable that is not set
    is left as its literal `${NAME}` and listed in `unset`, with the path of the value."""
    if isinstance(node, yaml.MappingNode):
        return {k.value: to_data(v, [*where, k.value], env, unset) for k, v in node.value}
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


_scalar_loader = yaml.SafeLoader("")


def _scalar(node: yaml.Node) -> object:
    """A scalar as YAML's safe loader types it (str, int, float, bool, None, a date...)."""
    return _scalar_loader.construct_object(node, deep=True)
