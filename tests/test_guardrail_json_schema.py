"""The json_schema guardrail's check (tollway.core.guardrails.json_schema): what passes, where a
failure is reported (never the answer's text), and the bounds on a hostile schema: size, depth,
no fetched $ref, RE2 patterns, linear uniqueItems, a step budget."""
from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

import pytest

from tests.timing import cpu_best
from tollway.core.guardrails.json_schema import (
    MAX_INSTANCE_DEPTH,
    MAX_SCHEMA_NODES,
    MAX_STEPS,
    SchemaRefused,
    compile_schema,
    violation,
)

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "age": {"type": "integer", "minimum": 0},
        "tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
        "pets": {"type": "array", "items": {"$ref": "#/$defs/pet"}},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
    "$defs": {"pet": {"type": "object", "properties": {"kind": {"enum": ["cat", "dog"]}}, "required": ["kind"]}},
}


def _check(schema: Any, value: Any) -> str | None:
    return violation(compile_schema(schema), value if isinstance(value, str) else json.dumps(value))


def test_a_matching_answer_passes() -> None:
    assert _check(PERSON, {"name": "Ada", "age": 36, "tags": ["a", "b"], "pets": [{"kind": "cat"}]}) is None
    assert _check({}, [1, "x", None]) is None  # a json_schema format without a schema: any JSON
    assert _check(True, 3) is None


@pytest.mark.parametrize(("value", "where"), [
    ({"name": "Ada"}, "at $ (required)"),
    ({"name": "Ada", "age": "36"}, "at $.age (type)"),
    ({"name": "Ada", "age": -1}, "at $.age (minimum)"),
    ({"name": "Ada", "age": 1, "pets": [{"kind": "cat"}, {"kind": "cow"}]}, "at $.pets[1].kind (enum)"),
    ({"name": "Ada", "age": 1, "tags": ["a", "a"]}, "at $.tags (uniqueItems)"),
    ({"name": "Ada", "age": 1, "jane@example.com": 1}, "at $ (additionalProperties)"),
])
def test_a_failure_names_the_path_and_keyword(value: Any, where: str) -> None:
    assert _check(PERSON, value) == f"the output does not match the schema {where}"


def test_the_answers_text_never_appears_in_the_reason() -> None:
    secret = "4111 1111 1111 1111"
    schema = {"type": "object", "additionalProperties": {"type": "integer"}, "properties": {"known": {"type": "string"}}}
    what = _check(schema, {secret: "x"})
    assert what == "the output does not match the schema at $.* (type)"  # an undeclared key is the answer's text
    assert secret not in (_check({"type": "object", "properties": {"n": {"pattern": "^[a-z]+$"}}}, {"n": secret}) or "")
    assert secret not in (_check({"const": "x"}, secret) or "")
    assert _check({"type": "object", "properties": {"known": {"type": "string"}}}, {"known": 1}) == \
        "the output does not match the schema at $.known (type)"


def test_not_json_and_too_deep() -> None:
    assert _check(PERSON, '{"name": "Ada", "age": ') == "the output is not valid JSON"
    assert _check(PERSON, "Sure! Here is the JSON: {}") == "the output is not valid JSON"
    deep = "[" * (MAX_INSTANCE_DEPTH + 1) + "]" * (MAX_INSTANCE_DEPTH + 1)
    assert _check({}, deep) == f"the output nests deeper than {MAX_INSTANCE_DEPTH} levels"


@pytest.mark.parametrize(("schema", "reason"), [
    ({"$ref": "https://example.com/schema.json"}, "must point inside the schema"),
    ({"properties": {"a": {"$ref": "other.json#/x"}}}, "must point inside the schema"),
    ({"$dynamicRef": "http://x/y"}, "must point inside the schema"),
    ({"type": "string", "pattern": "(?<=a)b"}, "RE2"),
    ({"patternProperties": {"(a)\\1": {}}}, "RE2"),
    ({"$schema": "https://example.com/my-meta"}, "unknown $schema"),
    ({"type": "strng"}, "not a valid JSON Schema at $.type"),
    ({"minLength": -1}, "not a valid JSON Schema"),
    ([{"type": "string"}], "a JSON Schema is an object"),
    ({"patternProperties": {"^a": {}}, "unevaluatedProperties": False}, "unevaluatedProperties together"),
    ({"allOf": [{"allOf": [{}]}] * (MAX_SCHEMA_NODES // 2)}, "too large"),
    # a subschema's own $schema would make the library switch to its stock validator (Python re, no budget)
    ({"properties": {"a": {"$schema": "https://json-schema.org/draft/2020-12/schema", "pattern": "^(a+)+$"}}},
     "$schema belongs at the schema's root only"),
])
def test_hostile_or_broken_schemas_are_refused(schema: Any, reason: str) -> None:
    with pytest.raises(SchemaRefused) as info:
        compile_schema(schema)
    assert reason in str(info.value)


def test_compiled_schemas_and_refusals_are_kept() -> None:
    schema = {"type": "object", "properties": {"kept": {"type": "integer"}}}
    assert compile_schema(schema) is compile_schema(json.loads(json.dumps(schema)))
    for _ in range(2):
        with pytest.raises(SchemaRefused, match="must point inside"):
            compile_schema({"$ref": "https://example.com/kept"})


def test_a_deep_schema_is_refused() -> None:
    schema: dict[str, Any] = {}
    for _ in range(70):
        schema = {"items": schema}
    with pytest.raises(SchemaRefused, match="too large"):
        compile_schema(schema)


def test_data_values_are_not_taken_for_schemas() -> None:
    # an enum value shaped like a remote $ref is data, not a reference to fetch
    assert _check({"enum": [{"$ref": "http://x"}]}, {"$ref": "http://x"}) is None


def test_nothing_is_fetched(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_a: Any, **_k: Any) -> None:
        raise AssertionError("the validator tried to fetch a schema")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    schema = {"$id": "https://example.com/root", "$defs": {"a": {"type": "integer"}}, "$ref": "#/$defs/a"}
    assert _check(schema, 1) is None and _check(schema, '"x"') == "the output does not match the schema at $ (type)"
    assert _check({"$ref": "#/$defs/missing"}, 1) == "the schema has a $ref that points nowhere"


def test_other_drafts_by_their_schema_uri() -> None:
    draft7 = {"$schema": "http://json-schema.org/draft-07/schema#", "type": "object",
              "properties": {"a": {"type": "integer"}}, "dependencies": {"a": ["b"]}}
    assert _check(draft7, {"a": 1, "b": 2}) is None
    assert _check(draft7, {"a": 1}) == "the output does not match the schema at $ (dependencies)"


def test_an_exploding_schema_stops_at_the_step_budget() -> None:
    # two branches that both recurse before failing: 2^depth evaluations without a budget
    branch = {"properties": {"a": {"$ref": "#"}}}
    schema = {"anyOf": [{**branch, "required": ["z"]}, {**branch, "required": ["y"]}]}
    value = "1"
    for _ in range(40):
        value = '{"a": ' + value + "}"
    started = time.process_time()
    assert _check(schema, value) == f"checking the output took more than {MAX_STEPS} steps"
    assert time.process_time() - started < 5


def test_patterns_run_in_linear_time() -> None:
    started = time.process_time()
    # a $ref back to a root that names its $schema stays on the bounded validator
    recursive = {"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
                 "properties": {"a": {"$ref": "#"}, "b": {"type": "string", "pattern": "^(a+)+$"}}}
    assert _check(recursive, {"a": {"a": {"b": "a" * 40 + "!"}}}) == \
        "the output does not match the schema at $.a.a.b (pattern)"
    assert _check({"type": "string", "pattern": "^(a+)+$"}, json.dumps("a" * 50_000 + "b")) == \
        "the output does not match the schema at $ (pattern)"
    schema = {"type": "object", "patternProperties": {"^(a|aa)+$": {"type": "integer"}}, "additionalProperties": False}
    assert _check(schema, {"a" * 30_000 + "b": 1}) == "the output does not match the schema at $ (additionalProperties)"
    assert _check(schema, {"aaaa": "x"}) == "the output does not match the schema at $.* (type)"
    assert _check(schema, {"aaaa": 1}) is None
    assert time.process_time() - started < 1


def test_unique_items_is_linear_with_json_equality() -> None:
    unique = {"type": "array", "uniqueItems": True}

    def cost(n: int) -> float:
        items = [{"id": i, "tags": [i, str(i)]} for i in range(n)]
        assert _check(unique, items) is None
        return cpu_best(lambda: _check(unique, items))

    # (CI once measured 38x with the collector on: its passes over earlier tests' objects)
    small, large = cost(5_000), cost(50_000)
    # 10x the items: ~10x the time when linear, ~100x when quadratic (a ratio, not a wall-clock
    # bound: a slow or loaded machine scales both)
    assert large < 30 * max(small, 0.01), (small, large)
    assert _check(unique, [1, 1.0]) == "the output does not match the schema at $ (uniqueItems)"
    assert _check(unique, [1, True]) is None and _check(unique, [0, False, None]) is None
    assert _check(unique, [{"a": 1, "b": 2}, {"b": 2, "a": 1}]) == \
        "the output does not match the schema at $ (uniqueItems)"


def test_a_keyword_value_the_shape_check_lets_through_fails_the_answer_not_the_gateway() -> None:
    # 2020-12 keywords are checked against draft 7's (faster, looser) metaschema: a bad value
    # there surfaces when it is applied, as a failed check, never as an exception
    assert _check({"prefixItems": 3}, [1, 2]) == "the schema could not be applied to the output"
    assert _check({"dependentRequired": {"a": 3}}, {"a": 1}) == "the schema could not be applied to the output"
    assert _check({"type": "array", "prefixItems": [{"type": "integer"}]}, [1, "x"]) is None
    assert _check({"type": "array", "prefixItems": [{"type": "integer"}]}, ["x"]) == \
        "the output does not match the schema at $[0] (type)"
