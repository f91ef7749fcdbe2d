"""Finished spans and their OTLP/HTTP JSON encoding (the protobuf JSON mapping), sans-IO.

A `Span` is the small record a request leaves behind: ids as lower-case hex, times as Unix
nanoseconds, attributes as (key, value) pairs whose Python type picks the OTLP value type.
Turning records into the collector's JSON happens only at export time, off the request path.

Mapping used (opentelemetry-proto, JSON encoding): ids are hex strings, not base64; 64-bit
integers (`startTimeUnixNano`, `intValue`) are decimal strings; enum fields (`kind`,
`status.code`) are numbers; field names are lowerCamelCase.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

SERVER = 2  # SpanKind
CLIENT = 3
STATUS_UNSET, STATUS_OK, STATUS_ERROR = 0, 1, 2
AttributeValue = str | bool | int | float  # its Python type picks the OTLP value type
Attribute = tuple[str, AttributeValue]


class Span(msgspec.Struct, gc=False):
    trace_id: str
    span_id: str
    parent_span_id: str  # "" for a root span
    name: str
    kind: int
    start_ns: int
    end_ns: int
    attributes: list[Attribute]
    status: int = STATUS_UNSET
    status_message: str = ""  # an error type, never an error's text
    trace_state: str = ""


def attribute(key: str, value: AttributeValue) -> dict[str, Any]:
    """One OTLP KeyValue. bool is checked before int: in Python a bool is an int."""
    if isinstance(value, bool):
        typed: dict[str, Any] = {"boolValue": value}
    elif isinstance(value, int):
        typed = {"intValue": str(value)}
    elif isinstance(value, float):
        typed = {"doubleValue": value}
    else:
        typed = {"stringValue": str(value)}
    return {"key": key, "value": typed}


def span_json(span: Span) -> dict[str, Any]:
    out: dict[str, Any] = {
        "traceId": span.trace_id,
        "spanId": span.span_id,
        "name": span.name,
        "kind": span.kind,
        "startTimeUnixNano": str(span.start_ns),
        "endTimeUnixNano": str(span.end_ns),
        "attributes": [attribute(k, v) for k, v in span.attributes],
    }
    if span.parent_span_id:
        out["parentSpanId"] = span.parent_span_id
    if span.trace_state:
        out["traceState"] = span.trace_state
    if span.status != STATUS_UNSET:
        out["status"] = {"code": span.status, **({"message": span.status_message} if span.status_message else {})}
    return out


def export_request(spans: Iterable[Span], resource: list[Attribute], scope: tuple[str, str]) -> bytes:
    """The body of one POST to a collector's /v1/traces: every span under one resource and scope."""
    name, version = scope
    doc = {"resourceSpans": [{
        "resource": {"attributes": [attribute(k, v) for k, v in resource]},
        "scopeSpans": [{"scope": {"name": name, "version": version}, "spans": [span_json(s) for s in spans]}],
    }]}
    return msgspec.json.encode(doc)
