"""The `json_schema` guardrail's check: does an answer's text match the request's JSON Schema?

`compile_schema(schema)` once per request (raises `SchemaRefused` with a reason the client can
act on), then `violation(compiled, text)` per answer: None when the text is JSON that matches,
else where it fails, said without any of the text (the path's undeclared keys are hidden, no
value is quoted).

The schema is the client's, so it is treated as hostile input; the validator is the
`jsonschema` library with these bounds:

- size: at most MAX_SCHEMA_NODES objects and arrays, nested at most MAX_SCHEMA_DEPTH; compiled
  schemas are kept (CACHE_SIZE of them, each up to CACHE_MAX_BYTES), so a client that sends the
  same schema again pays nothing;
- its shape is checked against the draft-07 metaschema (drafts 4 and 6: their own): the
  library checks 2019-09/2020-12 metaschemas (`$dynamicRef`) ~6x slower, ~0.3 s at the size
  bound. Draft 7's is looser on the newer keywords, so a value the library then cannot apply
  fails the answer's check ("the schema could not be applied") instead of raising;
- one validator: `$schema` is taken at the root only (the library would switch a subschema
  with its own `$schema` to its stock, unbounded validator);
- no I/O: a `$ref`/`$dynamicRef` must point inside the schema (`#...`); the registry knows only
  the JSON Schema metaschemas and has no way to fetch, so nothing is ever retrieved;
- no regex backtracking: `pattern`, `patternProperties` (and `additionalProperties`, which
  consults them) run on RE2, linear in the text; a pattern RE2 cannot compile (lookaround,
  backreferences) is refused. `unevaluatedProperties` beside `patternProperties` is refused
  (the library would match those patterns with Python's backtracking `re`);
- `uniqueItems` is checked by hashing (linear), not pairwise;
- work: every subschema the validator applies (the applicator keywords: `$ref`, `anyOf`,
  `properties`, `items`, ...) draws on a budget of MAX_STEPS; past it the
  answer is taken as failing (a schema built to explode combinatorially ends there), and the
  answer may nest at most MAX_INSTANCE_DEPTH levels.
"""
from __future__ import annotations

import dataclasses
import functools
import re
import threading
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import jsonschema
import jsonschema.exceptions
import jsonschema.validators
import msgspec
import re2
import referencing.exceptions
from jsonschema_specifications import REGISTRY

from tollway.core.guardrails.schema_refused import SchemaRefused
from tollway.core.kernels import max_depth_exceeded

MAX_SCHEMA_NODES = 1_000  # objects and arrays in the schema (~30-70 ms to compile at the bound, first time)
MAX_SCHEMA_DEPTH = 64
MAX_INSTANCE_DEPTH = 64
MAX_STEPS = 20_000  # subschemas applied per check: ~0.1 s of CPU at worst (bench/README.md); a typical
# schema applies a few per object or array of the answer, so ~300 KB of JSON fits
CACHE_SIZE = 128
CACHE_MAX_BYTES = 64 * 1024

_DRAFTS = (jsonschema.Draft4Validator, jsonschema.Draft6Validator, jsonschema.Draft7Validator,
           jsonschema.Draft201909Validator, jsonschema.Draft202012Validator)
_NOT_SCHEMAS = frozenset(("enum", "const", "default", "examples"))  # values there are data, not subschemas
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_decode = msgspec.json.decode


class _OverBudget(Exception):
    pass


class _Meter(threading.local):
    left = 0


_METER = _Meter()


def _metered(keyword: Any) -> Any:
    def check(validator: Any, value: Any, instance: Any, schema: Any) -> Any:
        _METER.left -= 1
        if _METER.left < 0:
            raise _OverBudget
        return keyword(validator, value, instance, schema)
    return check


_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # a refused pattern is the client's error, not a log line


@functools.lru_cache(maxsize=1024)
def _re2(pattern: str) -> Any:
    return re2.compile(pattern, options=_RE2_OPTIONS)


def _pattern(validator: Any, pattern: Any, instance: Any, schema: Any) -> Iterator[Any]:
    if validator.is_type(instance, "string") and not _re2(pattern).search(instance):
        yield jsonschema.ValidationError("does not match the pattern")


def _pattern_properties(validator: Any, patterns: Any, instance: Any, schema: Any) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        found = _re2(pattern)
        for name, value in instance.items():
            if found.search(name):
                yield from validator.descend(value, subschema, path=name, schema_path=pattern)


def _additional_properties(validator: Any, extra: Any, instance: Any, schema: Any) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    declared = schema.get("properties", {})
    patterns = [_re2(p) for p in schema.get("patternProperties", {})]
    extras = [k for k in instance if k not in declared and not any(p.search(k) for p in patterns)]
    if validator.is_type(extra, "object"):
        for name in extras:
            yield from validator.descend(instance[name], extra, path=name)
    elif extra is False and extras:
        yield jsonschema.ValidationError("has properties the schema does not allow")


def _canonical(value: Any) -> Any:
    """A hashable stand-in with JSON Schema's equality (1 == 1.0, true != 1, key order ignored)."""
    if isinstance(value, bool) or value is None:
        return ("b", value)
    if isinstance(value, dict):
        return ("o", frozenset((k, _canonical(v)) for k, v in value.items()))
    if isinstance(value, list):
        return ("a", tuple(_canonical(v) for v in value))
    return ("v", value)


def _unique_items(validator: Any, unique: Any, instance: Any, schema: Any) -> Iterator[Any]:
    if unique and validator.is_type(instance, "array"):
        seen = set()
        for item in instance:
            key = _canonical(item)
            if key in seen:
                yield jsonschema.ValidationError("has non-unique elements")
                return
            seen.add(key)


# The keywords that apply subschemas: where a schema's work multiplies, so where the budget is
# drawn. The others do bounded work per call (a comparison, a length, a linear RE2 or hash pass).
_APPLICATORS = frozenset((
    "$ref", "$dynamicRef", "$recursiveRef", "allOf", "anyOf", "oneOf", "not", "if", "then", "else",
    "properties", "patternProperties", "additionalProperties", "items", "prefixItems", "additionalItems",
    "contains", "dependentSchemas", "dependencies", "propertyNames", "unevaluatedItems", "unevaluatedProperties",
))


def _bounded(draft: Any) -> Any:
    keywords = dict(draft.VALIDATORS)
    keywords.update(pattern=_pattern, patternProperties=_pattern_properties,
                    additionalProperties=_additional_properties, uniqueItems=_unique_items)
    keywords = {name: _metered(fn) if name in _APPLICATORS else fn for name, fn in keywords.items()
                if name in draft.VALIDATORS}
    return jsonschema.validators.extend(draft, keywords)


def _uri(draft: Any) -> str:
    return str(draft.META_SCHEMA.get("$id") or draft.META_SCHEMA.get("id")).rstrip("#")


_BY_URI = {_uri(d): (_bounded(d), d if d in _DRAFTS[:3] else jsonschema.Draft7Validator) for d in _DRAFTS}
_DEFAULT = _BY_URI[_uri(jsonschema.Draft202012Validator)]
_UNAPPLIABLE = (jsonschema.exceptions.UnknownType, TypeError, ValueError, KeyError, AttributeError, IndexError)


@dataclasses.dataclass(frozen=True, slots=True)
class CompiledSchema:
    validator: Any  # a bounded jsonschema validator (the library is untyped)
    declared: frozenset[str]  # property names the schema declares: safe to name in a path


_CACHE: OrderedDict[bytes, CompiledSchema | SchemaRefused] = OrderedDict()


def compile_schema(schema: object) -> CompiledSchema:
    """The validator for `schema`. Raises SchemaRefused (too large or deep, a $ref outside the
    schema, a pattern RE2 cannot run, an unknown `$schema`, not a valid JSON Schema)."""
    key = msgspec.json.encode(schema)
    if len(key) > CACHE_MAX_BYTES:
        return _compiled(schema)
    found = _CACHE.get(key)
    if found is None:
        try:
            found = _compiled(schema)
        except SchemaRefused as exc:
            found = exc
        _CACHE[key] = found
        if len(_CACHE) > CACHE_SIZE:
            _CACHE.popitem(last=False)
    else:
        _CACHE.move_to_end(key)
    if isinstance(found, SchemaRefused):
        raise SchemaRefused(str(found))
    return found


def _compiled(schema: object) -> CompiledSchema:
    if not isinstance(schema, (dict, bool)):
        raise SchemaRefused("a JSON Schema is an object (or a boolean)")
    declared = _walk(schema)
    draft, shape = _DEFAULT
    if isinstance(schema, dict) and "$schema" in schema:
        uri = schema["$schema"]
        found = _BY_URI.get(uri.rstrip("#")) if isinstance(uri, str) else None
        if found is None:
            raise SchemaRefused("unknown $schema: use a JSON Schema draft (4, 6, 7, 2019-09 or 2020-12), or leave it out")
        draft, shape = found
    try:
        shape.check_schema(schema)
    except jsonschema.exceptions.SchemaError as exc:
        raise SchemaRefused(f"not a valid JSON Schema at {_path(exc.absolute_path, None)} ({exc.validator})") from None
    if isinstance(schema, dict) and "$schema" in schema:  # chosen above; kept, it would swap in the stock validator
        schema = {k: v for k, v in schema.items() if k != "$schema"}
    return CompiledSchema(draft(schema, registry=REGISTRY), frozenset(declared))


def _walk(schema: object) -> set[str]:
    """Check the schema's bounds; return the property names it declares."""
    declared: set[str] = set()
    nodes, stack = 0, [(schema, 1, "")]
    patterns, unevaluated = False, False
    while stack:
        node, depth, key = stack.pop()
        if not isinstance(node, (dict, list)):
            continue
        nodes += 1
        if nodes > MAX_SCHEMA_NODES or depth > MAX_SCHEMA_DEPTH:
            raise SchemaRefused(f"the schema is too large for the gateway to check (at most {MAX_SCHEMA_NODES} "
                                f"objects and arrays, nested at most {MAX_SCHEMA_DEPTH} deep)")
        if isinstance(node, list):
            stack.extend((v, depth + 1, "") for v in node)
            continue
        if depth > 1 and "$schema" in node and key not in ("properties", "patternProperties", "$defs",
                                                            "definitions", "dependentSchemas"):
            raise SchemaRefused("$schema belongs at the schema's root only")
        if key == "properties":
            declared.update(node)
        elif key == "patternProperties":
            patterns = True
            for pattern in node:
                _checked_pattern(pattern)
        else:
            for ref in ("$ref", "$dynamicRef"):
                target = node.get(ref)
                if isinstance(target, str) and not target.startswith("#"):
                    raise SchemaRefused(f"{ref} must point inside the schema ('#...'): the gateway never fetches schemas")
            if isinstance(node.get("pattern"), str):
                _checked_pattern(node["pattern"])
            unevaluated = unevaluated or "unevaluatedProperties" in node
        for k, v in node.items():
            if k not in _NOT_SCHEMAS or key == "properties":
                stack.append((v, depth + 1, k if key != "properties" else ""))
    if patterns and unevaluated:
        raise SchemaRefused("unevaluatedProperties together with patternProperties is not supported by the gateway")
    return declared


def _checked_pattern(pattern: str) -> None:
    try:
        _re2(pattern)
    except re2.error:
        raise SchemaRefused("a pattern the gateway cannot run in linear time (RE2 syntax: no lookaround "
                            "or backreferences)") from None


def violation(compiled: CompiledSchema, text: str) -> str | None:
    """None if `text` is JSON that matches; else what fails, without quoting the text."""
    raw = text.encode()
    if max_depth_exceeded(raw, MAX_INSTANCE_DEPTH):
        return f"the output nests deeper than {MAX_INSTANCE_DEPTH} levels"
    try:
        instance = _decode(raw)
    except msgspec.DecodeError:
        return "the output is not valid JSON"
    _METER.left = MAX_STEPS
    try:
        error = next(compiled.validator.iter_errors(instance), None)
    except _OverBudget:
        return f"checking the output took more than {MAX_STEPS} steps"
    except RecursionError:
        return "the schema recurses too deep to check the output"
    except referencing.exceptions.Unresolvable:
        return "the schema has a $ref that points nowhere"
    except _UNAPPLIABLE:  # a keyword value the loose shape check let through (see the module's doc)
        return "the schema could not be applied to the output"
    if error is None:
        return None
    return f"the output does not match the schema at {_path(error.absolute_path, compiled.declared)} ({error.validator})"


def _path(parts: Any, declared: frozenset[str] | None) -> str:
    """`$.items[2].price`; a key the schema does not declare is `*` (it is the answer's text)."""
    out = ["$"]
    for part in parts:
        if isinstance(part, int):
            out.append(f"[{part}]")
        elif declared is not None and part not in declared:
            out.append(".*")
        elif _NAME.fullmatch(part):
            out.append("." + part)
        else:
            out.append("[" + msgspec.json.encode(part[:64]).decode() + "]")
    return "".join(out)
