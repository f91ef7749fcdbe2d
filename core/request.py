"""Reading a client request body: validate all of it, materialize only what routing needs.

msgspec decodes straight into `RequestHead`, skipping (but still validating) every field the
gateway does not need, in C. That is the baseline any other parser must beat (see
bench/kernels.py). Nesting depth is checked first by a separate scan, because a deeply
nested body is a cheap denial-of-service on any recursive decoder. After the decode, a second
scan refuses a body that repeats a field the gateway reads (see `first_duplicate_key`).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, TypeVar

import msgspec

from tollway.core.errors import GatewayError, bad_request
from tollway.core.kernels import first_duplicate_key, max_depth_exceeded

# Ceilings on the client's integers, which size the rate limiter's reservation: unbounded,
# a max_tokens of 10**400 reached the bucket kernels (which count in floats) as an
# OverflowError, a 500. 10M tokens is past every model's context window today; 128 is
# OpenAI's own cap on n. Only sizes past these are the gateway's to refuse: a 0 or a -1 goes
# upstream, and the provider's own error (OpenAI's `integer_below_min_value`) comes back, as
# it would without the gateway. The limiter reserves nothing for a cap below 1
# (`LimitPolicy.output_bound`), so such a request can never make a negative reservation.
MAX_TOKENS_CEILING = 10_000_000
MAX_CHOICES = 128
TokenCap = Annotated[int, msgspec.Meta(ge=-MAX_TOKENS_CEILING, le=MAX_TOKENS_CEILING)]
Choices = Annotated[int, msgspec.Meta(ge=-MAX_CHOICES, le=MAX_CHOICES)]


class StreamOptions(msgspec.Struct, omit_defaults=True):
    """OpenAI's `stream_options`, as the head reads it and as translators write it."""

    include_usage: bool | None = None


class RequestHead(msgspec.Struct):
    """The few fields of an OpenAI or Anthropic request body that the gateway acts on."""

    model: str | None = None
    stream: bool | None = None
    max_tokens: TokenCap | None = None
    max_completion_tokens: TokenCap | None = None
    max_output_tokens: TokenCap | None = None  # the Responses API's name
    stream_options: StreamOptions | None = None
    n: Choices | None = None

    @property
    def wants_stream(self) -> bool:
        return bool(self.stream)

    @property
    def wants_usage_chunk(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @property
    def output_limit(self) -> int | None:
        """The client's cap on generated tokens, whatever the API calls it (as sent: it may be
        below 1, for the upstream to refuse)."""
        return self.max_completion_tokens or self.max_tokens or self.max_output_tokens


# The endpoints where OpenAI makes `model` optional, and the model it serves then: a body
# without one is routed as if it named it (the client API names, tollway.core.providers.base).
DEFAULT_MODELS = {"moderations": "omni-moderation-latest"}

_decode_head = msgspec.json.Decoder(RequestHead).decode
# Every field the gateway reads, as the body spells it: none may appear twice.
_READ_FIELDS = RequestHead.__struct_fields__
_READ_KEYS = tuple(name.encode() for name in _READ_FIELDS)
T = TypeVar("T")


def parse_head(body: bytes, max_depth: int = 128, require_model: bool = True) -> RequestHead:
    """Validate `body` as a JSON object and return its routing fields.

    Raises GatewayError(400) for malformed JSON, a non-object body, a field of the wrong
    type or past its ceiling, a field the gateway reads given twice, nesting deeper than
    `max_depth`, or (with `require_model`) a missing model.
    """
    if not body:
        raise bad_request("The request body is empty; send a JSON object.")
    if max_depth_exceeded(body, max_depth):
        raise bad_request(f"The JSON body is nested deeper than this gateway's limit of {max_depth} levels.")
    if not body.isascii():  # the decoder skips the strings it does not keep, unchecked; JSON is UTF-8
        _require_utf8(body)
    head = decode_body(_decode_head, body)
    repeated = first_duplicate_key(body, _READ_KEYS)  # after the decode: only on valid JSON objects
    if repeated >= 0:
        raise _repeated_field(_READ_FIELDS[repeated])
    if require_model and not head.model:
        raise missing_model()
    return head


def missing_model() -> GatewayError:
    return bad_request("You must provide a model parameter.", param="model")


def default_model(api: str) -> str:
    """The model a request of client API `api` that names none is routed to. Raises the
    missing-model 400 where OpenAI requires one."""
    model = DEFAULT_MODELS.get(api)
    if model is None:
        raise missing_model()
    return model


def _require_utf8(body: bytes) -> None:
    try:
        body.decode()
    except UnicodeDecodeError as exc:
        raise bad_request(f"The request body is not valid UTF-8 (byte {exc.start}); JSON must be UTF-8.") from None


def with_model(body: bytes, model: str) -> bytes:
    """`body` (a JSON object already validated by parse_head) with its `model` replaced.

    Used when routing names a model the body does not (the `x-tollway-model` header), so
    every adapter downstream sees one consistent request, body and head alike."""
    doc = msgspec.json.decode(body)
    doc["model"] = model
    return msgspec.json.encode(doc)


def decode_body(decode: Callable[[bytes], T], body: bytes) -> T:
    """`decode(body)` with msgspec's errors turned into a 400 that names the offending field.

    Every decoder of a client body goes through here, so every client API words its
    malformed-JSON and wrong-type errors the same way.
    """
    try:
        return decode(body)
    except msgspec.ValidationError as exc:
        raise _validation_error(str(exc)) from None
    except msgspec.DecodeError as exc:
        raise bad_request(f"We could not parse the JSON body of your request ({exc}).") from None


def _repeated_field(field: str) -> GatewayError:
    # msgspec would keep the last value and another parser upstream the first: the gateway
    # would authorize, route or limit one request while the upstream serves another.
    return bad_request(f"The field '{field}' appears more than once in the request body; send it once.", param=field)


def _validation_error(message: str) -> GatewayError:
    # msgspec says e.g. "Expected `bool`, got `str` - at `$.stream`".
    param = None
    if " - at `$." in message:
        message, _, path = message.partition(" - at `$.")
        param = path.rstrip("`")
    elif message.startswith("Expected `object`"):
        return bad_request("The request body must be a JSON object.")
    return bad_request(f"Invalid value for '{param}': {message}." if param else message, param=param)
