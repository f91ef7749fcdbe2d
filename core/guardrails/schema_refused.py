"""What the json_schema guardrail's callers need without loading it: its decisions' label and
the refusal of a schema. Apart from `json_schema` because that module imports jsonschema and
RE2 (~7 MB of memory per worker), which only a gateway with the guardrail configured pays."""
from __future__ import annotations

__all__ = ["DETECTOR", "SchemaRefused"]

DETECTOR = "json_schema"  # the label of this guardrail's decisions


class SchemaRefused(ValueError):
    """The request's schema is not one the gateway will validate against (the reason says why)."""
