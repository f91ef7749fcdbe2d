"""How a non-OpenAI provider's error status becomes the OpenAI error a client expects.

Each translator extracts the provider's message (and, where the provider has one, its error
kind) and calls `provider_error`; the status rules live here once:
- 401/403: the gateway's own credential failed -> 502 that says so and never shows it;
- 429 and throttling -> 429, overload (Anthropic 529, 503) -> 503, keeping `retry-after`;
- validation -> 400; a model that failed (Bedrock 424) and anything else 5xx -> 502 naming the
  provider.
"""
from __future__ import annotations

from tollway.core.config import Provider
from tollway.core.errors import GatewayError, upstream_auth_failed, upstream_error

_KEEP_HEADERS = ("retry-after", "retry-after-ms")

# status -> (client status, OpenAI error type, code)
_BY_STATUS: dict[int, tuple[int, str, str]] = {
    400: (400, "invalid_request_error", "invalid_request"),
    404: (404, "invalid_request_error", "upstream_not_found"),
    408: (504, "api_error", "upstream_timeout"),
    413: (413, "invalid_request_error", "request_too_large"),
    422: (400, "invalid_request_error", "invalid_request"),
    # Bedrock's ModelErrorException: the model failed while processing a valid request. The
    # upstream's fault, like its stream twin modelStreamErrorException: retryable, so a route
    # falls back, rather than a 4xx the client could not fix.
    424: (502, "api_error", "upstream_error"),
    429: (429, "rate_limit_error", "rate_limit_exceeded"),
    503: (503, "api_error", "overloaded"),
    504: (504, "api_error", "upstream_timeout"),
    529: (503, "api_error", "overloaded"),
}


def provider_error(provider: Provider, status: int, headers: list[tuple[str, str]], message: str | None) -> GatewayError:
    """The client-facing error for an upstream HTTP error with `status` and `message`."""
    if status in (401, 403):
        return upstream_auth_failed(provider.name)
    client_status, kind, code = _BY_STATUS.get(status) or (
        (status, "invalid_request_error", "invalid_request") if 400 <= status < 500 else (502, "api_error", "upstream_error")
    )  # (a status that is no client error is the upstream's fault: a 5xx, or a stream error's odd code)
    text = message or f"The upstream provider '{provider.name}' answered HTTP {status}."  # tollway.gateway.proxy scrubs it
    kept = [(k, v) for k, v in headers if k.lower() in _KEEP_HEADERS]
    return upstream_error(client_status, text, kind, code, None, kept)
