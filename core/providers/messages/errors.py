"""Gateway errors in Anthropic's shape, for clients of the Anthropic Messages API.

The official `anthropic` SDK parses `{"type":"error","error":{"type":..., "message":...}}`
bodies, and inside a stream it acts only on an `event: error` SSE event: OpenAI's bare
`data: {"error": ...}` has no event name and would be skipped, so an Anthropic client would
see a stream that just stops. Both shapes are decided here, once, for the HTTP boundary
(`gateway/surfaces/anthropic.py`) and for the stream translators of the Anthropic client API.
"""
from __future__ import annotations

from tollway.core.errors import GatewayError
from tollway.core.providers.wire import anthropic as wire

# HTTP status -> Anthropic's error `type` (what its SDK and docs use for each status).
ERROR_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 402: "billing_error", 403: "permission_error",
    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
    503: "overloaded_error", 504: "timeout_error", 529: "overloaded_error",
}


def error_type(status: int) -> str:
    """Anthropic's error `type` for `status`: its docs give any other 4xx invalid_request_error,
    and any other status is `api_error`."""
    return ERROR_TYPES.get(status) or ("invalid_request_error" if 400 <= status < 500 else "api_error")


def error_body(err: GatewayError) -> bytes:
    """Anthropic's error envelope for `err`."""
    return wire.encode(wire.ErrorBody(wire.ErrorDetail(error_type(err.status), err.message)))


def error_event(err: GatewayError) -> bytes:
    """`err` as the `event: error` SSE event that ends a failed Anthropic stream."""
    return b"event: error\ndata: " + error_body(err) + b"\n\n"
