"""The gateway's error model.

Every failure that reaches a client is a `GatewayError`: it carries the HTTP status, and the
OpenAI error fields (`message`, `type`, `param`, `code`). Errors are raised deep inside
`core/` and converted to bytes exactly once, at the I/O boundary (h11's habit). Messages say
what to fix and never carry a secret: callers must not put credentials or upstream URLs with
credentials in them.
"""
from __future__ import annotations

import math

import msgspec


class ErrorDetail(msgspec.Struct, omit_defaults=False):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(msgspec.Struct):
    error: ErrorDetail


_encode = msgspec.json.Encoder().encode


class GatewayError(Exception):
    """An error with an HTTP status and an OpenAI-shaped body."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or []

    def body(self) -> bytes:
        """The OpenAI-shaped JSON body: {"error": {message, type, param, code}}."""
        return _encode(ErrorBody(ErrorDetail(self.message, self.type, self.param, self.code)))

    def sse_event(self) -> bytes:
        """The error as one SSE event, for failures after a stream has started."""
        return b"data: " + self.body() + b"\n\n"


# Constructors for the errors the gateway itself raises. One place, so every path agrees
# on status, type and code.

ECHO_LIMIT = 200  # characters of client text an error message or log line repeats


def echoed(text: str) -> str:
    """`text` from the client, fit to repeat in an error message or a log line: at most
    ECHO_LIMIT characters, cut with a trailing "…". A 9 MiB model name must not come back
    as a 9 MiB error body, nor fill the access log."""
    return text if len(text) <= ECHO_LIMIT else text[:ECHO_LIMIT - 1] + "…"


def bad_request(message: str, param: str | None = None, code: str | None = None) -> GatewayError:
    return GatewayError(400, message, "invalid_request_error", code, param)


def responses_state_unsupported(field: str, provider: str) -> GatewayError:
    """A Responses API request that refers to stored state (a previous response, a conversation,
    a stored prompt) sent to a translated provider: the gateway keeps no such state."""
    return GatewayError(400, f"'{field}' is not supported for models served by {provider}: this gateway keeps no "
                        "Responses API state for them. Send the whole conversation in 'input' (with store: false).",
                        "invalid_request_error", "unsupported_parameter", field)


def unauthorized(message: str) -> GatewayError:
    return GatewayError(401, message, "invalid_request_error", "invalid_api_key")


def forbidden(message: str) -> GatewayError:
    return GatewayError(403, message, "permission_error", "model_not_allowed", "model")


def model_not_allowed(model: str) -> GatewayError:
    """A 403: the model exists, but this key may not use it."""
    return forbidden(f"Your key is not allowed to use model '{echoed(model)}'.")


def model_not_found(model: str) -> GatewayError:
    return GatewayError(
        404,
        f"The model '{echoed(model)}' does not exist on this gateway. GET /v1/models lists the models your key may use.",
        "invalid_request_error",
        "model_not_found",
        "model",
    )


def not_found(path: str) -> GatewayError:
    return GatewayError(404, f"Unknown path '{echoed(path)}'.", "invalid_request_error", "unknown_url")


def admin_not_configured(path: str) -> GatewayError:
    """A 404 for /admin/* on a gateway whose config has no `admin:` section: the operator API is
    off, and the message says how to turn it on (a bare "unknown path" sends people hunting)."""
    return GatewayError(404, f"The admin API is not enabled on this gateway, so '{echoed(path)}' does not exist: "
                             "its config has no 'admin:' section. Add 'admin: {key_hash: ...}' with the output of "
                             "`tollway hash-key` for an admin credential.", "invalid_request_error", "admin_not_configured")


def method_not_allowed(method: str, path: str) -> GatewayError:
    return GatewayError(405, f"Method {echoed(method)} is not allowed on '{echoed(path)}'.", "invalid_request_error",
                        "method_not_allowed")


def too_large(limit: int) -> GatewayError:
    return GatewayError(
        413, f"Request body is larger than this gateway's limit of {limit} bytes.", "invalid_request_error", "request_too_large"
    )


def body_timeout(seconds: float) -> GatewayError:
    return GatewayError(408, f"The request body did not arrive within {seconds:g} seconds.",
                        "invalid_request_error", "request_timeout")


def client_closed() -> GatewayError:
    """The client went away before the request was answered (nginx's 499); nobody reads it."""
    return GatewayError(499, "The client closed the connection.", "invalid_request_error", "client_closed")


class UpstreamUnreached(GatewayError):
    """A 502: no connection to the upstream could be made, so the request was never sent: the
    retry walk may try another replica of a pool without spending an attempt on it."""

    def __init__(self, provider: str) -> None:
        super().__init__(502, f"The upstream provider '{provider}' could not be reached.", "api_error",
                         "upstream_unreachable")


def upstream_unreachable(provider: str) -> UpstreamUnreached:
    return UpstreamUnreached(provider)


class UpstreamTimedOut(GatewayError):
    """A 504: an upstream timeout expired; `phase` says which ("connect", "first_byte", "idle"
    or "total"), so the retry walk can tell a slow upstream from an unreachable one."""

    def __init__(self, provider: str, phase: str) -> None:
        super().__init__(504, f"The upstream provider '{provider}' timed out ({phase}).", "api_error", "upstream_timeout")
        self.phase = phase


def upstream_timeout(provider: str, phase: str) -> UpstreamTimedOut:
    return UpstreamTimedOut(provider, phase)


def upstream_auth_failed(provider: str) -> GatewayError:
    return GatewayError(
        502,
        f"The gateway's credential for upstream provider '{provider}' was rejected; ask the gateway operator to fix it.",
        "api_error",
        "upstream_auth_failed",
    )


def upstream_malformed(provider: str, what: str = "an answer") -> GatewayError:
    """A 502: the upstream sent `what` the gateway could not read (not JSON, an unexpected
    content-encoding, a broken stream)."""
    return GatewayError(502, f"The upstream provider '{provider}' sent {what} the gateway could not read.",
                        "api_error", "upstream_malformed")


def upstream_too_large(provider: str, limit: int, what: str = "an answer") -> GatewayError:
    """A 502: the upstream's answer (or one event of its stream) is larger than the gateway holds."""
    return GatewayError(502, f"The upstream provider '{provider}' sent {what} larger than this gateway's "
                             f"limit of {limit} bytes.", "api_error", "upstream_too_large")


def upstream_disconnected(provider: str) -> GatewayError:
    return GatewayError(502, f"The upstream provider '{provider}' closed the stream before it finished.",
                        "api_error", "upstream_disconnected")


def upstream_malformed_embeddings(provider: str) -> GatewayError:
    """A 502: an embeddings answer that does not match the provider's schema."""
    return upstream_malformed(provider, "an embeddings answer")


def upstream_error(status: int, message: str, type: str, code: str | None, param: str | None = None,
                   headers: list[tuple[str, str]] | None = None) -> GatewayError:
    """An upstream's error response relayed to the client. The mappers in core/providers compute
    status, type and code from the upstream's answer (and keep its retry-after headers); the
    proxy scrubs the message, which the upstream wrote.

    `status` comes from the upstream (an HTTP status, or a code inside a stream's error event):
    anything but a 4xx or 5xx is not an error status a client can be given (a 200 or a 302
    "error"; a number HTTP has no status for, which granian cannot send at all and stops the
    worker on), so it is the upstream's fault, a 502."""
    if not 400 <= status <= 599:
        status, type = 502, "api_error"
    return GatewayError(status, message, type, code, param, headers)


def upstream_unreadable_error(provider: str, status: int) -> GatewayError:
    """An upstream error response whose body could not be read: its status still says whose fault
    it is (a 4xx stays the client's, a 5xx is the upstream's, a 502)."""
    client_fault = status < 500
    return GatewayError(status if client_fault else 502, f"The upstream provider '{provider}' answered HTTP {status}.",
                        "invalid_request_error" if client_fault else "api_error", "upstream_error")


def upstream_no_credentials(provider: str, what: str) -> GatewayError:
    """A 502: the gateway holds no usable `what` ("AWS credentials", ...) to sign calls to `provider`."""
    return GatewayError(502, f"The gateway has no usable {what} for upstream provider '{provider}'; "
                             "ask the gateway operator to configure one.", "api_error", "upstream_auth_failed")


# Failures inside an upstream stream, after its first bytes. The stream translators raise them;
# the proxy sends them as the client API's stream error event.

def upstream_ended_early(provider: str) -> GatewayError:
    """A 502: the stream ended before the upstream's closing event, so the answer is cut off."""
    return GatewayError(502, f"The upstream provider '{provider}' ended the stream early.", "api_error",
                        "upstream_disconnected")


class UpstreamGaveUp(GatewayError):
    """A 502: a 200 answer (or stream) whose finish reason says the model produced no answer
    (`finish`, the provider's word, and `why`, what it means). The router tries the route's next
    target, and never passes it for a whole answer; but it follows the prompt (a tool call the
    model garbled), not the provider's health, so it is not held against the provider: one
    client's prompts must not eject it for every other client."""

    def __init__(self, provider: str, finish: str, why: str) -> None:
        super().__init__(502, f"The upstream provider '{provider}' did not complete the answer: it finished with "
                              f"'{finish}' ({why}). Retry the request.", "api_error", "upstream_error")


def upstream_gave_up(provider: str, finish: str, why: str) -> UpstreamGaveUp:
    return UpstreamGaveUp(provider, finish, why)


def upstream_unfinished() -> GatewayError:
    """A 502: a relayed stream ended before its closing event (the relay knows no provider name)."""
    return GatewayError(502, "The upstream provider closed the stream before it finished.", "api_error",
                        "upstream_disconnected")


def upstream_no_answer() -> GatewayError:
    """A 502: the stream ended before its first answer chunk."""
    return GatewayError(502, "The upstream stream ended before any answer.", "api_error", "upstream_disconnected")


def upstream_malformed_event() -> GatewayError:
    """A 502: one event of the upstream's stream is not the JSON its schema says."""
    return GatewayError(502, "The upstream provider sent a malformed stream event.", "api_error", "upstream_malformed")


def upstream_corrupt_frame() -> GatewayError:
    """A 502: an AWS eventstream frame failed its length or CRC checks."""
    return GatewayError(502, "The upstream provider sent a corrupt event stream frame.", "api_error",
                        "upstream_malformed")


def upstream_tool_call_ended(index: int) -> GatewayError:
    """A 502: an OpenAI stream sent more arguments for a tool call whose Anthropic content block
    had already ended (after a whole JSON object, or other content): they can go nowhere."""
    return GatewayError(502, f"The upstream provider sent more arguments for tool call {index} after that call had ended.",
                        "api_error", "upstream_malformed")


def upstream_no_message_start() -> GatewayError:
    """A 502: an Anthropic stream sent content before the `message_start` that opens it."""
    return GatewayError(502, "The upstream stream did not begin with message_start.", "api_error",
                        "upstream_malformed")


def upstream_failed_mid_stream(message: str | None) -> GatewayError:
    """A 502 for the error object an upstream put inside its stream (the proxy scrubs `message`)."""
    return GatewayError(502, message or "The upstream provider failed mid-stream.", "api_error", "upstream_error")


# Refusals from the gateway's own limits and state.

def rate_limited(message: str, kind: str, headers: list[tuple[str, str]]) -> GatewayError:
    """A 429 for a full rate-limit bucket: `kind` is the error type OpenAI uses for the bucket's
    measure ("requests" or "tokens"), `message` names the limit, `headers` say when to retry."""
    return GatewayError(429, message, kind, "rate_limit_exceeded", None, headers)


def budget_exceeded(message: str, headers: list[tuple[str, str]]) -> GatewayError:
    """A 429 for a spent budget, as OpenAI answers when an account's credit is spent."""
    return GatewayError(429, message, "insufficient_quota", "insufficient_quota", None, headers)


def rate_limits_unavailable(headers: list[tuple[str, str]]) -> GatewayError:
    """A 503: the rate-limit store is down and the gateway fails closed; `headers` say when to retry."""
    return GatewayError(503, "The gateway cannot check rate limits right now; please retry shortly.",
                        "api_error", "rate_limit_store_unavailable", None, headers)


def usage_unavailable() -> GatewayError:
    """A 503 for the admin usage report: the rate-limit store cannot be read."""
    return GatewayError(503, "The rate-limit store is unavailable; usage cannot be read right now.",
                        "api_error", "rate_limit_store_unavailable")


def ledger_not_configured() -> GatewayError:
    """A 404 for the ledger's reports when the config has no `store:`."""
    return GatewayError(404, "The usage ledger is off: configure store: (sqlite or postgres) to record and report "
                        "spend.", "invalid_request_error", "ledger_not_configured")


def ledger_unavailable() -> GatewayError:
    """A 503: the ledger's database cannot be read right now."""
    return GatewayError(503, "The usage ledger's database is unavailable; retry shortly.", "api_error",
                        "ledger_unavailable")


def conflict(message: str) -> GatewayError:
    """A 409 from the admin API: the change clashes with what is there (a name taken, a key
    that lives in the config file, a record changed meanwhile)."""
    return GatewayError(409, message, "invalid_request_error", "conflict")


def admin_forbidden(message: str) -> GatewayError:
    """A 403: this administrator's role may not do that (a viewer writing, a team admin on another team)."""
    return GatewayError(403, message, "permission_error", "admin_forbidden")


def admin_not_found(what: str, ident: str) -> GatewayError:
    """A 404 for a key or team id that does not exist, or that this administrator may not see."""
    return GatewayError(404, f"No {what} '{echoed(ident)}'.", "invalid_request_error", "not_found")


def store_not_configured() -> GatewayError:
    """A 404: run-time keys and teams live in the store, and the config has no `store:`."""
    return GatewayError(404, "Run-time keys and teams need a database: configure store: (sqlite or postgres).",
                        "invalid_request_error", "store_not_configured")


def store_unavailable() -> GatewayError:
    """A 503: the key store cannot be read or written right now (requests keep being served)."""
    return GatewayError(503, "The key store's database is unavailable; retry shortly. Requests with known keys "
                        "keep being served.", "api_error", "store_unavailable")


def admin_rate_limited(retry_after: float) -> GatewayError:
    """A 429 for an administrator sending too many admin requests."""
    seconds = max(1, math.ceil(retry_after))
    return GatewayError(429, f"Too many admin requests from this credential; retry in {seconds} s.",
                        "rate_limit_error", "rate_limit_exceeded", None, [("retry-after", str(seconds))])


def shutting_down() -> GatewayError:
    """What a request cut off by the drain deadline gets (a 503, or an SSE error event)."""
    return GatewayError(503, "The gateway is shutting down and could not finish this request; retry it.",
                        "api_error", "gateway_shutting_down")


class PluginError(GatewayError):
    """An error a plugin decided (or a closed plugin's failure): it says nothing about the
    upstream, so the proxy neither retries it on another target nor counts it against one."""


def plugin_failed(plugin: str, stage: str) -> PluginError:
    """A plugin with `on_error: closed` timed out or raised: the request fails (never its traceback)."""
    return PluginError(503, f"The gateway's plugin '{echoed(plugin)}' failed ({stage}); the request was not "
                       "completed. Retry later, or ask the gateway's operator.", "api_error", "plugin_failed")


def plugin_rejected(plugin: str, status: int, message: str) -> PluginError:
    """A plugin refused the request or its answer with `status` (4xx or 5xx) and its message."""
    status = status if 400 <= status <= 599 else 400
    kind = "invalid_request_error" if status < 500 else "api_error"
    return PluginError(status, f"Refused by plugin '{echoed(plugin)}': {echoed(message)}", kind, "plugin_rejected")


def plugin_stopped(plugin: str, message: str) -> PluginError:
    """A plugin stopped a stream (the SSE error event that ends it)."""
    return PluginError(400, f"Stopped by plugin '{echoed(plugin)}': {echoed(message)}", "invalid_request_error",
                       "plugin_stopped")


class GuardrailError(PluginError):
    """A built-in guardrail's refusal (docs/guardrails.md): like a plugin's, a decision on a
    good answer, never held against the upstream."""


def content_policy_violation(guardrail: str, detector: str, status: int = 400) -> GuardrailError:
    """A guardrail with `action: block` found `detector` (a detector's name, or `regex`): 400
    on the request's input, 502 on an answer (an SSE error event on a stream). Names the
    guardrail and the detector, never the matched text."""
    kind = "invalid_request_error" if status < 500 else "api_error"
    return GuardrailError(status, f"blocked by guardrail '{echoed(guardrail)}' ({detector})", kind,
                          "content_policy_violation")


def guardrail_unreadable(guardrail: str, what: str, reason: str, status: int) -> GuardrailError:
    """A guardrail could not read `what` (the request body: 400; an upstream's answer: 502), e.g.
    a number out of a float's range that the gateway's own partial reads skip. Refused, never let
    through unscanned: a guardrail that fails open is one a client can walk around. `reason` is
    msgspec's (what failed and where), never the content."""
    kind = "invalid_request_error" if status < 500 else "api_error"
    return GuardrailError(status, f"{what} could not be read for guardrail '{echoed(guardrail)}' ({reason}), "
                                  "so it was not let through.", kind, "guardrail_unreadable")


def schema_violation(guardrail: str, what: str) -> GuardrailError:
    """A `json_schema` guardrail with `action: block` found the answer is not JSON matching the
    request's schema: 502 (an SSE error event on a stream). `what` says where it fails (a path
    and a keyword: tollway.core.guardrails.json_schema), never the answer's text."""
    return GuardrailError(502, f"blocked by guardrail '{echoed(guardrail)}' (json_schema): {what}", "api_error",
                          "content_policy_violation")


def schema_refused(guardrail: str, param: str, reason: str) -> GatewayError:
    """The request's response_format schema is one a `json_schema` guardrail will not check
    (too large, a remote $ref, a pattern RE2 cannot run, not a JSON Schema): 400, before the
    upstream is asked."""
    return GatewayError(400, f"Guardrail '{echoed(guardrail)}' cannot check answers against this schema: {reason}.",
                        "invalid_request_error", "invalid_value", param)


def internal(message: str = "The gateway hit an internal error; the request was not completed.") -> GatewayError:
    return GatewayError(500, message, "api_error", "internal_error")


# The closed vocabulary of error types that may reach a metric label, an access-log line or a
# span. A relayed upstream error carries whatever `type`/`code` the upstream chose (any length,
# any number of distinct values): as a label that is unbounded cardinality, in a log line it is
# upstream-controlled text. So every sink passes it through `error_label` first.
GATEWAY_ERROR_CODES = frozenset((
    # what the gateway itself raises (the constructors above, core/providers, gateway/)
    "invalid_api_key", "model_not_allowed", "model_not_found", "unknown_url", "admin_not_configured", "method_not_allowed",
    "request_too_large", "internal_error", "gateway_shutting_down",
    "upstream_unreachable", "upstream_timeout", "upstream_auth_failed", "upstream_error",
    "upstream_not_found", "upstream_disconnected", "upstream_malformed", "upstream_too_large",
    "invalid_request", "overloaded", "rate_limit_exceeded", "rate_limit_store_unavailable",
    "insufficient_quota", "client_closed", "client_stalled", "request_timeout", "stream_error",
    "ledger_not_configured", "ledger_unavailable",
    "conflict", "admin_forbidden", "not_found", "store_not_configured", "store_unavailable",
    "plugin_failed", "plugin_rejected", "plugin_stopped", "content_policy_violation",
))
OPENAI_ERROR_TYPES = frozenset((
    # OpenAI's error `type`s (the 429 ones included), plus Anthropic's, which the gateway maps
    "invalid_request_error", "authentication_error", "permission_error", "not_found_error",
    "conflict_error", "unprocessable_entity_error", "rate_limit_error", "insufficient_quota",
    "requests", "tokens", "server_error", "service_unavailable_error", "api_error",
    "overloaded_error", "timeout_error",
    # and the codes OpenAI commonly sends with them: worth telling apart on a dashboard
    "context_length_exceeded", "invalid_value", "invalid_type", "missing_required_parameter",
    "unknown_parameter", "unsupported_parameter", "unsupported_value", "content_policy_violation",
    "content_filter", "invalid_prompt", "billing_hard_limit_reached", "slow_down", "server_is_overloaded",
))
ERROR_LABEL_FALLBACK = "upstream_error"  # any other value: an upstream said something unclassified
_ERROR_LABELS = GATEWAY_ERROR_CODES | OPENAI_ERROR_TYPES | {""}  # "": no error, the common case


def error_label(value: str) -> str:
    """`value` if it is in the closed vocabulary above or an HTTP status ("502"), "" for no
    error, else ERROR_LABEL_FALLBACK. One set lookup on the common path."""
    if value in _ERROR_LABELS:
        return value
    if len(value) == 3 and value.isascii() and value.isdigit():  # a span names a bare upstream status so
        return value
    return ERROR_LABEL_FALLBACK
