"""CPU cost of the json_schema guardrail's check (tollway.core.guardrails.json_schema).

Run from the repository root:

    python3 bench/json_schema.py

Prints best-of-repeats figures for: compiling a typical structured-output schema (the first
time, and again from the cache), a schema at the node bound, checking a ~1 KB answer against
the typical one, checking a ~80 KB answer, and the worst case a hostile schema can force (a
schema that explodes combinatorially, stopped by the step budget).
"""
from __future__ import annotations

import json
import timeit
from collections.abc import Callable

import jsonschema

from tollway.core.guardrails import json_schema
from tollway.core.guardrails.json_schema import MAX_SCHEMA_NODES, MAX_STEPS, compile_schema, violation

ITEM = {"type": "object", "additionalProperties": False, "required": ["sku", "name", "price", "qty", "tags"],
        "properties": {"sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"}, "name": {"type": "string"},
                       "price": {"type": "number", "minimum": 0}, "qty": {"type": "integer", "minimum": 1},
                       "tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": True}}}
ORDER = {"type": "object", "additionalProperties": False, "required": ["id", "customer", "items"],
         "properties": {"id": {"type": "string"}, "customer": {"type": "object", "required": ["name"],
                                                                "properties": {"name": {"type": "string"},
                                                                               "email": {"type": "string"}}},
                        "items": {"type": "array", "items": {"$ref": "#/$defs/item"}}},
         "$defs": {"item": ITEM}}


def order(items: int) -> str:
    return json.dumps({"id": "o-1", "customer": {"name": "Ada", "email": "ada@example.com"},
                       "items": [{"sku": "ABC-%04d" % i, "name": "thing %d" % i, "price": 9.5, "qty": 2,
                                  "tags": ["a", "b"]} for i in range(items)]})


def best(fn: Callable[[], object], number: int, repeat: int = 5) -> float:
    """Seconds per call, best of `repeat`."""
    return min(timeit.Timer(fn).repeat(repeat=repeat, number=number)) / number


def main() -> None:
    compiled = compile_schema(ORDER)
    small, large = order(8), order(900)
    assert violation(compiled, small) is None and violation(compiled, large) is None
    print("compile the schema, first time:        %8.1f µs" % (best(lambda: json_schema._compiled(ORDER), 50) * 1e6))
    print("compile the schema, again (kept):      %8.1f µs" % (best(lambda: compile_schema(ORDER), 200) * 1e6))
    wide = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(MAX_SCHEMA_NODES - 2)}}
    print("compile %d properties, first time:   %8.1f ms" % (MAX_SCHEMA_NODES - 2,
                                                            best(lambda: json_schema._compiled(wide), 1) * 1e3))
    print("check a %5d-byte answer:               %8.1f µs" % (len(small), best(lambda: violation(compiled, small), 500) * 1e6))
    stock = jsonschema.Draft202012Validator(ORDER)  # the library as it comes: no bounds, Python re
    parsed = json.loads(small)
    print("  the stock validator, same answer:     %8.1f µs (parsed already)" %
          (best(lambda: next(stock.iter_errors(parsed), None), 500) * 1e6))
    print("check a %5d-byte answer:               %8.1f ms" % (len(large), best(lambda: violation(compiled, large), 5) * 1e3))
    branch = {"properties": {"a": {"$ref": "#"}}}
    hostile = compile_schema({"anyOf": [{**branch, "required": ["z"]}, {**branch, "required": ["y"]}]})
    nested = "1"
    for _ in range(40):
        nested = '{"a": ' + nested + "}"
    assert violation(hostile, nested) is not None
    print("hostile schema, stopped at %d steps:  %8.1f ms" % (MAX_STEPS, best(lambda: violation(hostile, nested), 1) * 1e3))


if __name__ == "__main__":
    main()
