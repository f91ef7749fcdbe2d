"""Reading a client request body: validate all of it, materialize only what routing needs.

msgspec decodes straight into `RequestHead`, skipping (but still validating) every field the
gateway does not need, in C. That is the baseline any other parser must beat (see
bench/kernels.py). Nesting depth is checked first by a separate scan, because a deeply
nested body is a cheap denial-of-service on any recursive decoder.
"""
from __future__ import annotations

from typing import Annotated, Callable, TypeVar

import msgspec

from core.errors import GatewayError, bad_request
from core.kernels import max_depth_exceeded


Positive = Annotated[int, msgspec.Meta(ge=1)]


class StreamOptions(msgspec.Struct):
    include_usage: bool | None = None


class RequestHead(msgspec.Struct):
    """The few fields of an OpenAI or Anthropic request body that the gateway acts on."""

    model: str | None = None
    stream: bool | None = None
    # At least 1, as OpenAI requires: a negative cap would make a negative rate-limit
    # reservation, and its settle would charge the difference to buckets other keys share.
    max_tokens: Positive | None = None
    max_completion_tokens: Positive | None = None
    max_output_tokens: Positive | None = None  # the Responses API's name
    stream_options: StreamOptions | None = None
    n: Positive | None = None

    @property
    def wants_stream(self) -> bool:
        return bool(self.stream)

    @property
    def wants_usage_chunk(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @property
    def output_limit(self) -> int | None:
        """The client's cap on generated tokens, whatever the API calls it."""
        return self.max_completion_tokens or self.max_tokens or self.max_output_tokens


_decode_head = msgspec.json.Decoder(RequestHead).decode
T = TypeVar("T")


def parse_head(body: bytes, max_depth: int = 128, require_model: bool = True) -> RequestHead:
    """Validate `body` as a JSON object and return its routing fields.

    Raises GatewayError(400) for malformed JSON, a non-object body, a field of the wrong
    type, nesting deeper than `max_depth`, or (with `require_model`) a missing model.
    """
    if not body:
        raise bad_request("The request body is empty; send a JSON object.")
    if max_depth_exceeded(body, max_depth):
        raise bad_request(f"The JSON body is nested deeper than this gateway's limit of {max_depth} levels.")
    head = decode_body(_decode_head, body)
    if require_model and not head.model:
        raise bad_request("You must provide a model parameter.", param="model")
    return head


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


def _validation_error(message: str) -> GatewayError:
    # msgspec says e.g. "Expected `bool`, got `str` - at `$.stream`".
    param = None
    if " - at `$." in message:
        message, _, path = message.partition(" - at `$.")
        param = path.rstrip("`")
    elif message.startswith("Expected `object`"):
        return bad_request("The request body must be a JSON object.")
    return bad_request(f"Invalid value for '{param}': {message}." if param else message, param=param)
