"""A hostile upstream: every provider schema the gateway speaks, misbehaving on purpose.

Theory of operation: one aiohttp server answers every path the adapters in core/providers
build (see `ROUTES`), works out which schema was called from the path, and picks a behaviour
from the *upstream model name* (the gateway never forwards client headers, so the model is
the only thing a test controls per request): the body's `model` for OpenAI and Anthropic,
the deployment for Azure, the model id in the URL for Bedrock, Gemini and Vertex. A model
name is `<mode>` or `<mode>-<number>`, the number being the mode's argument (`echo-429`,
`trickle-20`, `huge-ok-8`); a name that is no mode gets a normal answer (`ok`).

  mode                 behaviour (argument, default)
  -------------------  ------------------------------------------------------------------------
  ok                   a normal answer in the schema's format (JSON, or its stream when asked)
  echo-<status>        an error with that status (400) in the schema's real error envelope, whose
                       every field, and several response headers (retry-after, retry-after-ms,
                       x-request-id, www-authenticate, ... and the schema's own), carry `planted()`:
                       every credential the request head held, FOREIGN_SECRETS and the raw head
  echo-stream          a 200 stream: two good events, then the schema's in-stream error event
                       (OpenAI/Gemini `data: {"error"}`, Anthropic `event: error`, a Bedrock
                       exception frame) whose every field carries `planted()`
  echo-ok              a 200 answer (JSON or stream) whose generated text carries `planted()`
  echo-as-200          echo-400's error envelope and headers, but with status 200 (JSON, even to a
                       request for a stream): an error dressed as a success
  echo-seen-<status>   as echo-<status> (or echo-ok for 200), planting every credential this server
                       was ever sent, whichever provider sent it: an upstream shared by several
                       providers, or one that remembers
  stall                read the request, never answer (seconds, 3600)
  stall-body           200 headers announcing a body, then nothing (seconds, 3600)
  trickle              a valid stream, one byte every <ms> (50) milliseconds, forever
  huge-event           a 200 stream whose first event is <MiB> (8) long, with no blank line in it
                       (Bedrock: one frame that long), then the rest of a normal stream
  huge-event-late      a few good events, then one of <MiB> (8), then the end
  gzip                 the normal answer gzip-compressed, `content-encoding: gzip`
  garbage              200 `application/json` whose body is not JSON
  garbage-stream       200 with the schema's stream content type and binary garbage
  huge-ok              200 success JSON of <MiB> (300), content-length declared, generated in pieces
  huge-error           500 error envelope of <MiB> (300), chunked, generated in pieces
  firehose             a valid stream as fast as the reader takes it: <MiB> (200) of text events,
                       then the normal end
  deep                 a 200 answer (JSON or stream) holding one JSON value nested <levels> (20000)
                       deep where the schema allows any JSON: a tool call's input or arguments
                       (Anthropic, Gemini, Bedrock JSON), an unknown field (OpenAI); past msgspec's
                       depth limit, so decoding it raises RecursionError
  huge-float           a 200 embeddings answer (Titan's InvokeModel, Gemini's batchEmbedContents)
                       holding a value beyond float32's range
  scripted             whatever `HostileUpstream.script(Answer(...))` last set (sticky), for fuzzing

Streams are the schema's own: OpenAI, Anthropic and Gemini SSE, Bedrock's binary eventstream.
Modes that are streams by nature (echo-stream, trickle, huge-event*, garbage-stream, firehose)
answer a stream even to a request that asked for JSON. The big modes write 64 KiB at a time
and wait for the reader, so nothing large is ever held in memory. `POST /token` is the
Vertex service account's OAuth endpoint and grants VERTEX_TOKEN.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import gzip
import json
import re
import struct
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

from aiohttp import web

from tests.fakes.base import FakeUpstream
from tests.fakes.bedrock_upstream import event as bedrock_event
from tests.fakes.bedrock_upstream import frame

MiB = 1024 * 1024
PIECE = 64 * 1024
FILL = "@@HOSTILE-FILL@@"  # where a generated run of filler goes in a template
NEST = "@@HOSTILE-NEST@@"  # where `deep` puts its nested value in a body or event
VERTEX_TOKEN = "ya29.a0AfB_hostileVertexOAuthToken-Zq81Lk2Mw3Nx4Oy5Pz6"


def _b64url(doc: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()


# Credential-shaped values the gateway does NOT hold: only a scrubber that knows the shapes
# (AWS key ids, `sk-` keys, bearer tokens, JWTs) removes them.
FOREIGN_SECRETS = {
    "foreign AWS access key id": "AKIAZ7HOSTILEFOREIGN",
    "foreign AWS temporary key id": "ASIAQ2MADEUPTEMPKEYX",
    "foreign sk- key": "sk-proj-hostileUnknown4Qx9Lm2Vb7Nc0Zr5Tw8Yk3Hj6",
    "foreign bearer token": "Bearer hOstIle.opaque-token_9f8e7d6c5b4a3210",
    "foreign JWT": ".".join((_b64url({"alg": "HS512", "typ": "JWT", "kid": "hostile-upstream"}),
                             _b64url({"sub": "hostile-upstream", "aud": "tollway", "scope": "everything"}),
                             "R0hPU1RJTEUtc2lnbmF0dXJlLW9mLWEtaG9zdGlsZS11cHN0cmVhbQ")),
}
# What must not reach a client of each: the token after "Bearer ", a JWT's payload and
# signature (its header only names the algorithm), each of the others whole.
FOREIGN_CORES = {name: value.split(".", 1)[1] if name == "foreign JWT" else value.removeprefix("Bearer ")
                 for name, value in FOREIGN_SECRETS.items()}
CREDENTIAL_HEADERS = ("authorization", "api-key", "x-api-key", "x-goog-api-key", "x-amz-security-token")
_SIGV4_KEY_ID = re.compile(r"Credential=([^/,\s]+)")


# -- what a request carried ----------------------------------------------------------------

@dataclass
class Call:
    """One request, as the hostile upstream sees it."""

    request: web.Request
    schema: str  # openai | azure | anthropic | bedrock | gemini | vertex
    wire: Wire
    model: str
    stream: bool  # the request asked for a stream
    body: dict[str, Any]
    seen: tuple[str, ...] = ()  # every credential the server had been sent before this request

    def head(self) -> str:
        """The raw request head (request line and every header), as it came in."""
        r = self.request
        lines = [f"{r.method} {r.raw_path} HTTP/{r.version.major}.{r.version.minor}"]
        lines += [f"{k.decode('latin-1')}: {v.decode('latin-1')}" for k, v in r.raw_headers]
        return "\r\n".join(lines) + "\r\n\r\n"

    def credentials(self) -> list[str]:
        """Every credential-looking value in the head: the auth headers' values, their bearer
        tokens, the SigV4 access key id."""
        found = []
        for name in CREDENTIAL_HEADERS:
            for value in self.request.headers.getall(name, []):
                found.append(value)
                if value.startswith("Bearer "):
                    found.append(value.removeprefix("Bearer "))
                found += _SIGV4_KEY_ID.findall(value)
        return found

    def planted(self, one_line: bool = False, seen: bool = False) -> str:
        """What an echo puts in every field: the credentials (with `seen`, every one the server
        was ever sent), the foreign ones, the raw head."""
        sent = " ".join(self.credentials())
        earlier = f" | and others sent me: {' '.join(self.seen)}" if seen else ""
        text = (f"credentials you sent: {sent}{earlier} | also: {' '.join(FOREIGN_SECRETS.values())}"
                f" | your request: {self.head()}")
        return text.replace("\r\n", " | ") if one_line else text


# -- each schema's wire format --------------------------------------------------------------

class Wire:
    """One schema's formats: error envelope, success body, stream events. Streams are
    `opening() + [delta(text) ...] + closing()`; `stream_error` is its in-stream error."""

    stream_type = "text/event-stream"

    def error(self, status: int, text: str) -> tuple[dict[str, Any], dict[str, str]]:
        """The error body with `text` in every field, and the schema's own error headers."""
        raise NotImplementedError

    def ok(self, model: str, text: str) -> dict[str, Any]:
        raise NotImplementedError

    def opening(self, model: str) -> list[bytes]:
        raise NotImplementedError

    def delta(self, model: str, text: str) -> bytes:
        raise NotImplementedError

    def closing(self, model: str) -> list[bytes]:
        raise NotImplementedError

    def stream_error(self, text: str) -> bytes:
        raise NotImplementedError

    def with_value(self, model: str, value: Any) -> dict[str, Any]:
        """A success body carrying `value` where the schema allows any JSON."""
        raise NotImplementedError

    def value_event(self, model: str, value: Any) -> bytes:
        """A stream event carrying `value` where the schema allows any JSON."""
        raise NotImplementedError

    async def write_huge_delta(self, resp: web.StreamResponse, model: str, size: int) -> None:
        """One text event of about `size` bytes, generated in pieces: no blank line inside."""
        await write_filled(resp, self.delta(model, FILL), size)


def _sse(payload: dict[str, Any], kind: str | None = None, end: bytes = b"\n\n") -> bytes:
    head = f"event: {kind}\n".encode() if kind else b""
    return head + b"data: " + json.dumps(payload).encode() + end


class OpenAIWire(Wire):
    def error(self, status: int, text: str) -> tuple[dict[str, Any], dict[str, str]]:
        kind = "invalid_request_error" if status < 500 else "server_error"
        return {"error": {"message": f"Invalid request: {text}", "type": f"{kind} {text}", "param": f"messages {text}",
                          "code": f"invalid_value {text}"}}, {}

    def ok(self, model: str, text: str) -> dict[str, Any]:
        return {"id": "chatcmpl-hostile", "object": "chat.completion", "created": 1700000000, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                             "logprobs": None, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}}

    def _chunk(self, model: str, delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> bytes:
        choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
        return _sse({"id": "chatcmpl-hostile", "object": "chat.completion.chunk", "created": 1700000000,
                     "model": model, "choices": choices, **extra})

    def opening(self, model: str) -> list[bytes]:
        return [self._chunk(model, {"role": "assistant", "content": ""})]

    def delta(self, model: str, text: str) -> bytes:
        return self._chunk(model, {"content": text})

    def closing(self, model: str) -> list[bytes]:
        usage = {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}
        return [self._chunk(model, {}, "stop"), self._chunk(model, None, usage=usage), b"data: [DONE]\n\n"]

    def stream_error(self, text: str) -> bytes:
        return _sse(self.error(500, text)[0])

    def with_value(self, model: str, value: Any) -> dict[str, Any]:
        return {**self.ok(model, "deep"), "hostile": value}  # a field the client's SDK gets as it is

    def value_event(self, model: str, value: Any) -> bytes:
        return self._chunk(model, {"content": "deep"}, hostile=value)


class AnthropicWire(Wire):
    KINDS = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
             413: "request_too_large", 429: "rate_limit_error", 529: "overloaded_error"}

    def error(self, status: int, text: str) -> tuple[dict[str, Any], dict[str, str]]:
        kind = self.KINDS.get(status, "api_error")
        return ({"type": "error", "error": {"type": f"{kind} {text}", "message": f"Invalid request: {text}"},
                 "request_id": f"req_hostile {text}"},
                {"request-id": f"req_hostile {text}", "anthropic-ratelimit-requests-reset": text})

    def ok(self, model: str, text: str) -> dict[str, Any]:
        return {"id": "msg_hostile", "type": "message", "role": "assistant", "model": model,
                "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": None,
                "usage": {"input_tokens": 5, "output_tokens": 7}}

    def opening(self, model: str) -> list[bytes]:
        start = {**self.ok(model, ""), "content": [], "stop_reason": None, "usage": {"input_tokens": 5, "output_tokens": 1}}
        return [_sse({"type": "message_start", "message": start}, "message_start"),
                _sse({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
                     "content_block_start")]

    def delta(self, model: str, text: str) -> bytes:
        return _sse({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}},
                    "content_block_delta")

    def closing(self, model: str) -> list[bytes]:
        return [_sse({"type": "content_block_stop", "index": 0}, "content_block_stop"),
                _sse({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                      "usage": {"output_tokens": 7}}, "message_delta"),
                _sse({"type": "message_stop"}, "message_stop")]

    def stream_error(self, text: str) -> bytes:
        return _sse(self.error(500, text)[0], "error")

    def with_value(self, model: str, value: Any) -> dict[str, Any]:
        return {**self.ok(model, ""), "stop_reason": "tool_use",
                "content": [{"type": "tool_use", "id": "toolu_hostile", "name": "f", "input": value}]}

    def value_event(self, model: str, value: Any) -> bytes:
        block = {"type": "tool_use", "id": "toolu_hostile", "name": "f", "input": value}
        return _sse({"type": "content_block_start", "index": 1, "content_block": block}, "content_block_start")


class BedrockWire(Wire):
    stream_type = "application/vnd.amazon.eventstream"
    KINDS = {400: "ValidationException", 403: "AccessDeniedException", 404: "ResourceNotFoundException",
             408: "ModelTimeoutException", 424: "ModelErrorException", 429: "ThrottlingException",
             503: "ServiceUnavailableException"}

    def error(self, status: int, text: str) -> tuple[dict[str, Any], dict[str, str]]:
        kind = self.KINDS.get(status, "InternalServerException")
        return ({"message": f"Invalid request: {text}", "Message": text, "__type": f"{kind} {text}"},
                {"x-amzn-errortype": f"{kind}:http://internal.amazon.com/coral/com.amazon.bedrock/ {text}",
                 "x-amzn-requestid": text})

    def ok(self, model: str, text: str) -> dict[str, Any]:
        return {"output": {"message": {"role": "assistant", "content": [{"text": text}]}}, "stopReason": "end_turn",
                "usage": {"inputTokens": 5, "outputTokens": 7, "totalTokens": 12}, "metrics": {"latencyMs": 1}}

    def opening(self, model: str) -> list[bytes]:
        return [bedrock_event("messageStart", {"role": "assistant"})]

    def delta(self, model: str, text: str) -> bytes:
        return bedrock_event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": text}})

    def closing(self, model: str) -> list[bytes]:
        return [bedrock_event("contentBlockStop", {"contentBlockIndex": 0}),
                bedrock_event("messageStop", {"stopReason": "end_turn"}),
                bedrock_event("metadata", {"usage": {"inputTokens": 5, "outputTokens": 7, "totalTokens": 12},
                                           "metrics": {"latencyMs": 1}})]

    def stream_error(self, text: str) -> bytes:
        return frame({":exception-type": f"modelStreamErrorException {text}", ":content-type": "application/json",
                      ":message-type": "exception"},
                     json.dumps({"message": text, "originalMessage": text, "originalStatusCode": 500}).encode())

    def with_value(self, model: str, value: Any) -> dict[str, Any]:
        use = {"toolUse": {"toolUseId": "tooluse_hostile", "name": "f", "input": value}}
        return {**self.ok(model, ""), "stopReason": "tool_use",
                "output": {"message": {"role": "assistant", "content": [use]}}}

    async def write_huge_delta(self, resp: web.StreamResponse, model: str, size: int) -> None:
        """One contentBlockDelta frame of `size` payload bytes; its CRC is computed as it goes."""
        headers = {":event-type": "contentBlockDelta", ":content-type": "application/json", ":message-type": "event"}
        head = frame(headers, b"")[12:-4]  # the encoded headers alone
        before, after = json.dumps({"contentBlockIndex": 0, "delta": {"text": FILL}}).encode().split(FILL.encode())
        total = 12 + len(head) + len(before) + size + len(after) + 4
        prelude = struct.pack(">II", total, len(head))
        prelude += struct.pack(">I", binascii.crc32(prelude))
        crc = binascii.crc32(prelude + head + before)
        await resp.write(prelude + head + before)
        async for piece in filler(size):
            crc = binascii.crc32(piece, crc)
            await resp.write(piece)
        crc = binascii.crc32(after, crc)
        await resp.write(after + struct.pack(">I", crc))


class GeminiWire(Wire):
    STATUSES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                429: "RESOURCE_EXHAUSTED", 499: "CANCELLED", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}

    def error(self, status: int, text: str) -> tuple[dict[str, Any], dict[str, str]]:
        state = self.STATUSES.get(status, "INTERNAL")
        return {"error": {"code": status, "message": f"Invalid request: {text}", "status": f"{state} {text}", "details": [
            {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": text, "domain": "googleapis.com",
             "metadata": {"service": "generativelanguage.googleapis.com", "echo": text}},
            {"@type": "type.googleapis.com/google.rpc.DebugInfo", "detail": text}]}}, {}

    def ok(self, model: str, text: str) -> dict[str, Any]:
        return {"candidates": [{"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": "STOP", "index": 0}],
                "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 7, "totalTokenCount": 12},
                "modelVersion": model, "responseId": "resp-hostile"}

    def opening(self, model: str) -> list[bytes]:
        return []

    def delta(self, model: str, text: str) -> bytes:
        fragment = {"candidates": [{"content": {"role": "model", "parts": [{"text": text}]}, "index": 0}],
                    "modelVersion": model, "responseId": "resp-hostile"}
        return _sse(fragment, end=b"\r\n\r\n")

    def closing(self, model: str) -> list[bytes]:
        return [_sse(self.ok(model, "."), end=b"\r\n\r\n")]

    def stream_error(self, text: str) -> bytes:
        return _sse(self.error(500, text)[0], end=b"\r\n\r\n")

    def with_value(self, model: str, value: Any) -> dict[str, Any]:
        answer = self.ok(model, "")
        answer["candidates"][0]["content"]["parts"] = [{"functionCall": {"name": "f", "args": value}}]
        return answer

    def value_event(self, model: str, value: Any) -> bytes:
        return _sse(self.with_value(model, value), end=b"\r\n\r\n")


WIRES: dict[str, Wire] = {"openai": OpenAIWire(), "azure": OpenAIWire(), "anthropic": AnthropicWire(),
                          "bedrock": BedrockWire(), "gemini": GeminiWire(), "vertex": GeminiWire()}

# path -> (schema, where the model name is: "body" or the named group). Order matters: first match wins.
ROUTES: list[tuple[re.Pattern[str], str, str]] = [
    (re.compile(r"/openai/deployments/(?P<model>[^/]+)/"), "azure", "model"),
    (re.compile(r"/openai/responses$"), "azure", "body"),
    (re.compile(r"/v1/messages(/count_tokens)?$"), "anthropic", "body"),
    (re.compile(r"/model/(?P<model>[^/]+)/(converse|converse-stream|invoke|invoke-with-response-stream)$"), "bedrock", "model"),
    (re.compile(r"/publishers/google/models/(?P<model>[^/:]+):(?P<method>\w+)$"), "vertex", "model"),
    (re.compile(r"/models/(?P<model>[^/:]+):(?P<method>\w+)$"), "gemini", "model"),
    (re.compile(r"/(chat/completions|completions|embeddings|responses|audio/speech)$"), "openai", "body"),
]


def _wants_stream(schema: str, path: str, body: dict[str, Any]) -> bool:
    if schema == "bedrock":
        return path.endswith("-stream")
    if schema in ("gemini", "vertex"):
        return ":streamGenerateContent" in path
    return bool(body.get("stream"))


def _hang_up(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.close()


# -- writing big things in small pieces ----------------------------------------------------

async def filler(size: int) -> Any:
    """`size` bytes of 'a' (no newline, valid inside a JSON string), PIECE at a time."""
    piece = b"a" * PIECE
    while size > 0:
        yield piece[:size]
        size -= PIECE


async def write_filled(resp: web.StreamResponse, template: bytes, size: int) -> None:
    """`template` with its FILL marks replaced by `size` bytes of filler in all, generated."""
    parts = template.split(FILL.encode())
    share = size // max(1, len(parts) - 1)
    for i, part in enumerate(parts):
        await resp.write(part)
        if i < len(parts) - 1:
            async for piece in filler(share):
                await resp.write(piece)


def filled_length(template: bytes, size: int) -> int:
    parts = template.split(FILL.encode())
    return len(template) - len(FILL) * (len(parts) - 1) + (size // max(1, len(parts) - 1)) * (len(parts) - 1)


def garbage(n: int) -> bytes:
    """Deterministic binary garbage: every byte value, NULs, CR/LF runs, half a JSON object."""
    block = bytes(range(256)) + b"\r\n\r\n\x00\x00{\"error\": [1, 2, " + b"\xff\xfe\xfd" * 20 + b"data: \n\n"
    return (block * (n // len(block) + 1))[:n]


@dataclass(frozen=True)
class Answer:
    """A scripted answer: status, headers, body pieces and how they are framed and paced.

    framing: "length" (content-length of the body), "chunked", "short" (declares more than it
    sends, then closes), "cut" (chunked, then the connection closes before the last chunk).
    """

    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    chunks: tuple[bytes, ...] = ()
    framing: str = "length"
    delay: float = 0.0  # seconds before the head
    pause: float = 0.0  # seconds between chunks


Mode = Callable[["HostileUpstream", Call, int], Awaitable[web.StreamResponse]]


class HostileUpstream(FakeUpstream):
    """The hostile fake. `.requests` keeps the last 500 requests' schema, model, path and headers."""

    def __init__(self) -> None:
        self.answer = Answer()
        self.scripted_served = 0  # how many requests `scripted` answered
        self.seen: dict[str, None] = {}  # every credential ever received, in order (echo-seen)
        super().__init__()
        self.requests: deque[dict[str, Any]] = deque(maxlen=500)  # type: ignore[assignment]

    def script(self, answer: Answer) -> None:
        """What model `scripted` answers from now on (every request, until the next script)."""
        self.answer = answer

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=64 * MiB)
        app.router.add_post("/token", self.token)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def token(self, request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"access_token": VERTEX_TOKEN, "expires_in": 3600, "token_type": "Bearer"})

    async def handle(self, request: web.Request) -> web.StreamResponse:
        call = await self._call(request)
        if call is None:
            return web.json_response({"error": {"message": f"no such path {request.path}", "type": "not_found"}}, status=404)
        mode, arg = parse_mode(call.model)
        self.seen.update(dict.fromkeys(call.credentials()))
        call.seen = tuple(self.seen)
        self.requests.append({"schema": call.schema, "model": call.model, "mode": mode, "path": request.path,
                              "headers": {k.lower(): v for k, v in request.headers.items()}})
        handler, default, _ = MODES[mode]
        try:
            return await handler(self, call, default if arg is None else arg)
        except ConnectionError:  # the gateway hung up on us: nothing more to say
            _hang_up(request)
            return web.Response(status=499)

    async def _call(self, request: web.Request) -> Call | None:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = {}
        body = body if isinstance(body, dict) else {}
        for pattern, schema, where in ROUTES:
            m = pattern.search(request.path)
            if m:
                model = unquote(m.group("model")) if where == "model" else str(body.get("model", ""))
                stream = _wants_stream(schema, request.path, body)
                return Call(request, schema, WIRES[schema], model, stream, body)
        return None

    # -- the modes (see the table in the module docstring) ---------------------------------

    async def ok(self, call: Call, _: int) -> web.StreamResponse:
        return await self._answer(call, "Hello from the hostile upstream", call.stream)

    async def echo(self, call: Call, status: int, seen: bool = False, sent_as: int | None = None) -> web.StreamResponse:
        envelope, own = call.wire.error(status, call.planted(seen=seen))
        line = call.planted(one_line=True, seen=seen)
        headers = {"retry-after": line, "retry-after-ms": line, "x-ratelimit-reset-requests": line,
                   "x-request-id": line, "www-authenticate": f'Bearer realm="{line}"', "x-hostile-echo": line,
                   "set-cookie": f"session={quote(line)}",
                   **{k: v.replace("\r\n", " | ") for k, v in own.items()}}
        return web.json_response(envelope, status=sent_as or status, headers=headers)

    async def echo_stream(self, call: Call, _: int) -> web.StreamResponse:
        w = call.wire
        resp = await self._start(call, 200, w.stream_type)
        good = [*w.opening(call.model), w.delta(call.model, "Hello"), w.delta(call.model, " there")]
        for event in [*good, w.stream_error(call.planted())]:
            await resp.write(event)
        await resp.write_eof()
        return resp

    async def echo_ok(self, call: Call, _: int) -> web.StreamResponse:
        return await self._answer(call, call.planted(), call.stream)

    async def echo_as_200(self, call: Call, _: int) -> web.StreamResponse:
        return await self.echo(call, 400, sent_as=200)

    async def echo_seen(self, call: Call, status: int) -> web.StreamResponse:
        if status == 200:
            return await self._answer(call, call.planted(seen=True), call.stream)
        return await self.echo(call, status, seen=True)

    async def stall(self, call: Call, seconds: int) -> web.StreamResponse:
        await asyncio.sleep(seconds)
        return web.Response(status=504)

    async def stall_body(self, call: Call, seconds: int) -> web.StreamResponse:
        resp = web.StreamResponse(status=200, headers={"content-type": "application/json"})
        resp.content_length = 4096
        await resp.prepare(call.request)
        await asyncio.sleep(seconds)
        return resp

    async def trickle(self, call: Call, ms: int) -> web.StreamResponse:
        w = call.wire
        resp = await self._start(call, 200, w.stream_type)
        data = b"".join(w.opening(call.model))
        while True:
            for i in range(len(data)):
                await resp.write(data[i:i + 1])
                await asyncio.sleep(ms / 1000)
            data = w.delta(call.model, "drip ")

    async def huge_event(self, call: Call, mib: int) -> web.StreamResponse:
        return await self._huge_stream(call, mib, good_first=0)

    async def huge_event_late(self, call: Call, mib: int) -> web.StreamResponse:
        return await self._huge_stream(call, mib, good_first=3)

    async def _huge_stream(self, call: Call, mib: int, good_first: int) -> web.StreamResponse:
        w = call.wire
        resp = await self._start(call, 200, w.stream_type)
        if good_first:
            for event in [*w.opening(call.model), *(w.delta(call.model, f"good {i} ") for i in range(good_first))]:
                await resp.write(event)
        await w.write_huge_delta(resp, call.model, mib * MiB)
        for event in w.closing(call.model):
            await resp.write(event)
        await resp.write_eof()
        return resp

    async def gzip_(self, call: Call, _: int) -> web.StreamResponse:
        w = call.wire
        text = "Hello from the hostile upstream"
        if call.stream:
            raw = b"".join([*w.opening(call.model), w.delta(call.model, text), *w.closing(call.model)])
            kind = w.stream_type
        else:
            raw, kind = json.dumps(w.ok(call.model, text)).encode(), "application/json"
        return web.Response(body=gzip.compress(raw), status=200,
                            headers={"content-type": kind, "content-encoding": "gzip"})

    async def garbage_(self, call: Call, _: int) -> web.StreamResponse:
        return web.Response(body=garbage(4096), status=200, headers={"content-type": "application/json"})

    async def garbage_stream(self, call: Call, _: int) -> web.StreamResponse:
        resp = await self._start(call, 200, call.wire.stream_type)
        for i in range(8):
            await resp.write(garbage(1000 + 97 * i))
        await resp.write_eof()
        return resp

    async def huge_ok(self, call: Call, mib: int) -> web.StreamResponse:
        template = json.dumps(call.wire.ok(call.model, FILL)).encode()
        return await self._huge_body(call, 200, template, mib * MiB, {}, declared=True)

    async def huge_error(self, call: Call, mib: int) -> web.StreamResponse:
        envelope, own = call.wire.error(500, FILL)
        headers = {k: v.replace(FILL, "huge") for k, v in own.items()}
        return await self._huge_body(call, 500, json.dumps(envelope).encode(), mib * MiB, headers, declared=False)

    async def _huge_body(self, call: Call, status: int, template: bytes, size: int, headers: dict[str, str],
                         declared: bool) -> web.StreamResponse:
        resp = web.StreamResponse(status=status, headers={"content-type": "application/json", **headers})
        if declared:
            resp.content_length = filled_length(template, size)
        else:
            resp.enable_chunked_encoding()
        await resp.prepare(call.request)
        await write_filled(resp, template, size)
        await resp.write_eof()
        return resp

    async def firehose(self, call: Call, mib: int) -> web.StreamResponse:
        w = call.wire
        resp = await self._start(call, 200, w.stream_type)
        for event in w.opening(call.model):
            await resp.write(event)
        block = b"".join(w.delta(call.model, f"firehose {i:04d} " * 4) for i in range(256))
        for _ in range(-(-mib * MiB // len(block))):  # at least <MiB>
            await resp.write(block)
        for event in w.closing(call.model):
            await resp.write(event)
        await resp.write_eof()
        return resp

    async def deep(self, call: Call, levels: int) -> web.StreamResponse:
        w, nest = call.wire, b'{"a":' * levels + b"1" + b"}" * levels

        def nested(doc: bytes) -> bytes:
            return doc.replace(json.dumps(NEST).encode(), nest)

        if not call.stream:
            body = nested(json.dumps(w.with_value(call.model, NEST)).encode())
            return web.Response(body=body, status=200, headers={"content-type": "application/json"})
        resp = await self._start(call, 200, w.stream_type)  # (not Bedrock: a frame's CRC covers its bytes)
        for event in [*w.opening(call.model), nested(w.value_event(call.model, NEST)), *w.closing(call.model)]:
            await resp.write(event)
        await resp.write_eof()
        return resp

    async def huge_float(self, call: Call, _: int) -> web.StreamResponse:
        if call.request.path.endswith("/invoke"):  # Titan
            return web.json_response({"embedding": [0.5, 1e39], "inputTextTokenCount": 3})
        return web.json_response({"embeddings": [{"values": [0.5, -1e39]}]})  # Gemini's batchEmbedContents

    async def scripted(self, call: Call, _: int) -> web.StreamResponse:
        a = self.answer
        self.scripted_served += 1
        await asyncio.sleep(a.delay)
        resp = web.StreamResponse(status=a.status, headers=a.headers)
        size = sum(len(c) for c in a.chunks)
        if a.framing == "length":
            resp.content_length = size
        elif a.framing == "short":
            resp.content_length = size + 100
        else:
            resp.enable_chunked_encoding()
        await resp.prepare(call.request)
        for i, chunk in enumerate(a.chunks):
            if a.framing == "cut" and i == len(a.chunks) - 1:
                break
            await resp.write(chunk)
            await asyncio.sleep(a.pause)
        if a.framing in ("short", "cut"):
            _hang_up(call.request)
            return resp
        await resp.write_eof()
        return resp

    # -- helpers ---------------------------------------------------------------------------

    async def _start(self, call: Call, status: int, content_type: str) -> web.StreamResponse:
        resp = web.StreamResponse(status=status, headers={"content-type": content_type})
        resp.enable_chunked_encoding()
        await resp.prepare(call.request)
        return resp

    async def _answer(self, call: Call, text: str, stream: bool) -> web.StreamResponse:
        w = call.wire
        if not stream:
            if call.request.path.endswith("/invoke"):  # Bedrock InvokeModel: a Titan embeddings answer
                return web.json_response({"embedding": [0.1, 0.2, 0.3], "inputTextTokenCount": 3, "note": text})
            return web.json_response(w.ok(call.model, text))
        resp = await self._start(call, 200, w.stream_type)
        for event in [*w.opening(call.model), w.delta(call.model, text), *w.closing(call.model)]:
            await resp.write(event)
        await resp.write_eof()
        return resp


# mode -> (handler, the argument's default, what it does; the module docstring has the table)
MODES: dict[str, tuple[Mode, int, str]] = {
    "ok": (HostileUpstream.ok, 0, "a normal answer"),
    "echo": (HostileUpstream.echo, 400, "an error of <status> echoing every credential in every field"),
    "echo-stream": (HostileUpstream.echo_stream, 0, "a 200 stream ending in an in-stream error that echoes"),
    "echo-ok": (HostileUpstream.echo_ok, 0, "a 200 answer whose text echoes every credential"),
    "echo-as-200": (HostileUpstream.echo_as_200, 0, "echo-400's envelope with status 200"),
    "echo-seen": (HostileUpstream.echo_seen, 400, "echo-<status>/echo-ok with every credential ever received"),
    "stall": (HostileUpstream.stall, 3600, "never answer"),
    "stall-body": (HostileUpstream.stall_body, 3600, "headers, then nothing"),
    "trickle": (HostileUpstream.trickle, 50, "a valid stream, one byte every <ms>, forever"),
    "huge-event": (HostileUpstream.huge_event, 8, "first event <MiB> long"),
    "huge-event-late": (HostileUpstream.huge_event_late, 8, "good events, then one <MiB> long"),
    "gzip": (HostileUpstream.gzip_, 0, "the normal answer, gzip-encoded"),
    "garbage": (HostileUpstream.garbage_, 0, "200 application/json that is not JSON"),
    "garbage-stream": (HostileUpstream.garbage_stream, 0, "200 stream of binary garbage"),
    "huge-ok": (HostileUpstream.huge_ok, 300, "200 JSON of <MiB>, content-length declared"),
    "huge-error": (HostileUpstream.huge_error, 300, "500 error envelope of <MiB>, chunked"),
    "firehose": (HostileUpstream.firehose, 200, "<MiB> of stream as fast as it is read"),
    "deep": (HostileUpstream.deep, 20_000, "an answer holding a JSON value nested <levels> deep"),
    "huge-float": (HostileUpstream.huge_float, 0, "an embeddings answer with a value beyond float32"),
    "scripted": (HostileUpstream.scripted, 0, "the answer last set with script()"),
}
_ARG = re.compile(r"^(?P<mode>.+)-(?P<arg>\d+)$")


def parse_mode(model: str) -> tuple[str, int | None]:
    """(mode, argument) for an upstream model name; ("ok", None) for a name that is no mode."""
    if model in MODES:
        return model, None
    m = _ARG.match(model)
    if m and m.group("mode") in MODES:
        return m.group("mode"), int(m.group("arg"))
    return "ok", None


# -- finding what was planted ----------------------------------------------------------------

@functools.cache
def secret_forms(secret: str) -> tuple[bytes, ...]:
    """The byte strings whose presence means `secret` leaked: itself, JSON- and URL-escaped,
    and (for long ones) every 16-character window, so a truncated copy counts too."""
    forms = {secret, json.dumps(secret)[1:-1], json.dumps(secret)[1:-1].replace("/", "\\/"), quote(secret, safe="")}
    if len(secret) > 16:
        stride = 4 if len(secret) <= 64 else 8
        forms.update(secret[i:i + 16] for i in range(0, len(secret) - 15, stride))
        forms.add(secret[-16:])
    return tuple(sorted(f.encode() for f in forms))


def leaks(blob: bytes, secrets: dict[str, str]) -> list[str]:
    """The names of the `secrets` (name -> value) found in `blob`, in any of `secret_forms`."""
    return [name for name, value in secrets.items() if any(f in blob for f in secret_forms(value))]


def leak_context(blob: bytes, secret: str, width: int = 120) -> str:
    """Where in `blob` the first form of `secret` sits, with `width` bytes around it."""
    for form in secret_forms(secret):
        at = blob.find(form)
        if at >= 0:
            return blob[max(0, at - width):at + len(form) + width].decode("utf-8", "replace")
    return ""
