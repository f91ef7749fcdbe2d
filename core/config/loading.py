"""Loading a config: the YAML parsed into a node tree, `${ENV_VAR}`s substituted, the data
decoded into `Config`, then the checks types cannot make (tollway.core.config.semantics).

`check()` finds every problem (for `tollway check`); `loads()` raises the first of them, so
`tollway serve` and a reload refuse a config exactly when `check` reports an error."""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

import msgspec
import yaml

from tollway.core.config.caveats import warnings
from tollway.core.config.report import ConfigError, error_at
from tollway.core.config.root import Config
from tollway.core.config.semantics import problems
from tollway.core.config.substitute import check_aliases, to_data
from tollway.core.struct_decode import Decoded, Path, decode


def load(path: str, environ: Mapping[str, str] | None = None) -> Config:
    """Read, substitute and validate the YAML file at `path`. Raises ConfigError."""
    return loads(_read(path), environ)


def loads(text: str, environ: Mapping[str, str] | None = None) -> Config:
    """Decode config text. Raises ConfigError for the first problem, naming its field path and line."""
    checked = check(text, environ, with_warnings=False)  # (warnings look prices up: `tollway check` says them)
    if checked.errors:
        raise checked.errors[0]
    assert checked.config is not None  # no error: it decoded
    return checked.config


@dataclasses.dataclass(frozen=True)
class Checked:
    """Everything wrong with a config (`tollway check`), not only the first problem."""

    config: Config | None  # None when it did not decode
    errors: list[ConfigError]  # in the order they were found: the first is the one `loads` raises
    unset_env: list[ConfigError]  # with allow_missing_env: the ${VARS} that are not set (not errors)
    # What serves but may not be meant (not errors): models with no price. Only for a config without errors.
    warnings: list[ConfigError] = dataclasses.field(default_factory=list)


def check_file(path: str, environ: Mapping[str, str] | None = None, allow_missing_env: bool = False,
               with_warnings: bool = True) -> Checked:
    try:
        text = _read(path)
    except ConfigError as exc:
        return Checked(None, [exc], [])
    return check(text, environ, allow_missing_env, with_warnings)


def check(text: str, environ: Mapping[str, str] | None = None, allow_missing_env: bool = False,
          with_warnings: bool = True) -> Checked:
    """Every problem of config text: YAML, ${VARS}, types and unknown fields, then (if it decodes)
    the semantic checks and cross-references of `validate`.

    A ${VAR} that is not set is an error, unless `allow_missing_env`: then it is reported in
    `unset_env`, and problems of the values that use it are not reported (those values are
    unknown here; `tollway serve` checks them again with the real environment)."""
    env = os.environ if environ is None else environ
    unset: list[tuple[Path, str]] = []
    try:
        root, data = _parse(text, env, unset)
    except ConfigError as exc:
        return Checked(None, [exc], [])
    env_errors = [error_at(where, f"environment variable {name} is not set", root) for where, name in unset]
    unknown = [where for where, _ in unset]  # values still holding a literal ${VAR}
    config: Config | None = None
    decoded = decode(data, Config)
    found = decoded.problems
    if not found:
        config = msgspec.convert(data, Config, strict=False)
        # A value holding a literal ${VAR} is unknown here: the unset variable is the news, not it.
        found = [(where, problem) for where, problem in problems(config) if not _under_any(where, unknown)]
    else:
        found = _env_aware(found, unknown, allow_missing_env) + _problems_of_the_rest(decoded, unknown)
    errors = [error_at(where, problem, root) for where, problem in found]
    warned = [error_at(where, problem, root) for where, problem in warnings(config)] \
        if with_warnings and config is not None and not errors else []
    if allow_missing_env:
        return Checked(config if not errors else None, errors, env_errors, warned)
    return Checked(config if not errors and not env_errors else None, env_errors + errors, [], warned if not env_errors else [])


def _parse(text: str, env: Mapping[str, str], unset: list[tuple[Path, str]]) -> tuple[yaml.Node, object]:
    """The YAML node tree and its data (see `to_data`). Raises ConfigError, and nothing else:
    YAML the config cannot hold is a problem of the file like any other, never an exception
    that would print a traceback in `tollway check` or end a reload's file watcher."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        if root is None:
            raise ConfigError("", "the config file is empty")
        check_aliases(root)
        return root, to_data(root, [], env, unset)
    except yaml.YAMLError as exc:  # composing, or a scalar's tag (`!!python/name:...`) while typing it
        mark = getattr(exc, "problem_mark", None)  # only a MarkedYAMLError has one
        line = mark.line + 1 if mark is not None else None
        raise ConfigError("", f"invalid YAML: {getattr(exc, 'problem', exc)}", line) from None
    except RecursionError:  # PyYAML composes, and to_data walks, recursively
        raise ConfigError("", "the YAML is nested too deeply (lists or mappings hundreds of levels deep)") from None


def _env_aware(found: list[tuple[Path, str]], unknown: list[Path], allow_missing_env: bool) -> list[tuple[Path, str]]:
    """Decode problems, given the values that hold a literal ${VAR} because it is not set."""
    if allow_missing_env:  # without the variable it cannot even decode (`port: ${PORT}`): say why
        return [(where, f"{problem} (its value uses an environment variable that is not set)"
                 if _under_any(where, unknown) else problem) for where, problem in found]
    return [(where, problem) for where, problem in found if not _under_any(where, unknown)]  # its own error says it


def _problems_of_the_rest(decoded: Decoded, unknown: list[Path]) -> list[tuple[Path, str]]:
    """The semantic problems of a config that did not decode, checked on its repaired copy
    (tollway.core.struct_decode), except at the values that had a decode problem or were
    repaired. Nothing if the repair failed, or dropped a whole section (that guess is at the
    root): its names would be missing, and every reference to them a false alarm."""
    if not decoded.ok:
        return []
    try:
        rest = msgspec.convert(decoded.repaired, Config, strict=False)
    except msgspec.ValidationError:
        return []
    broken = [where for where, _ in decoded.problems] + decoded.guessed
    return [(where, problem) for where, problem in problems(rest)
            if not _under_any(where, broken) and not _under_any(where, unknown)]


# Far more than any config written by hand needs (3,000 keys take 300 KiB); a larger file is a
# mistake (a log, a dump), and parsing it would hold a reloading worker's event loop for minutes.
MAX_FILE_BYTES = 4 * 1024 * 1024


def _read(path: str) -> str:
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError("", f"cannot read config file {path!r}: {exc.strerror}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError("", f"config file {path!r} is larger than {MAX_FILE_BYTES // 1024 // 1024} MiB, "
                              "the most a config file may be")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:  # (latin-1 from an old editor, a binary file): say where
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError("", f"config file {path!r} is not UTF-8: byte {exc.start} is 0x{raw[exc.start]:02x}",
                          line) from None


def _under_any(where: Path, prefixes: list[Path]) -> bool:
    return any(where[:len(p)] == p for p in prefixes)
