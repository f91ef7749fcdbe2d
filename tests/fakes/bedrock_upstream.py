"""A fake AWS Bedrock runtime: Converse and ConverseStream on their real wire formats.

`POST /model/{modelId}/converse` answers a ConverseResponse; `/converse-stream` answers
`application/vnd.amazon.eventstream` frames written by `frame()` below (prelude with total
and header lengths + CRC32, string headers, JSON payload, message CRC32), which the tests
check with botocore's own decoder so this fake cannot drift from AWS. Each request's SigV4
signature is recomputed with botocore from the shared test secret: a wrong signature gets
AWS's 403 `InvalidSignatureException`. A `Bearer` token (a Bedrock API key) must equal
`API_KEY`. The model id selects a misbehaviour: `throttled` (429 ThrottlingException),
`invalid` (400 ValidationException), `model-error` (424 ModelErrorException: the model failed
while processing), `stream-throttled` (an exception frame mid-stream), `thinks-then-stalls`
(THOUGHT as reasoning and a tool call, then nothing for 30 s: no usage). A blank (empty or
whitespace-only) text block in `system` or a message is AWS's 400 ValidationException, as on
Converse; so is a tool's empty `description` (AWS's length constraint: at least 1 character),
and a toolUse or toolResult block in a request without a `toolConfig` (AWS's 400
ValidationException "The toolConfig field must be defined when using toolUse and toolResult
content blocks.").
`POST /model/{modelId}/invoke` is a Titan text embeddings model: `{"inputText", "dimensions"?,
"normalize"?, "embeddingTypes"?}` in (any other key, or dimensions not 256/512/1024, is
Titan's 400 ValidationException), `{"embedding", "inputTextTokenCount", "embeddingsByType"}` out;
a model id holding `cohere.embed-` is Cohere Embed instead (`cohere_embed` below): `{"texts",
"input_type", "embedding_types"?, "truncate"?, "output_dimension"? (v4)}` in, `{"id",
"embeddings", "texts", "response_type"}` out, the token count in `X-Amzn-Bedrock-Input-Token-Count`.
"""
from __future__ import annotations

import asyncio
import binascii
import hashlib
import json
import math
import struct
from typing import Any

from aiohttp import web

from tests.fakes.base import FakeUpstream

ACCESS_KEY, SECRET_KEY, REGION = "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "us-east-1"
API_KEY = "bedrock-api-key-SECRET-123456"
REPLY = "Hello from the fake Bedrock upstream"
TOOL_INPUT = {"city": "Paris"}
THOUGHT = "Let me think about the weather in Paris first."
USAGE = {"inputTokens": 30, "outputTokens": 12, "totalTokens": 49, "cacheReadInputTokens": 5, "cacheWriteInputTokens": 2}


def _header(name: str, value: str) -> bytes:
    raw_name, raw_value = name.encode(), value.encode()
    return struct.pack(">B", len(raw_name)) + raw_name + b"\x07" + struct.pack(">H", len(raw_value)) + raw_value


def frame(headers: dict[str, str], payload: bytes) -> bytes:
    """One eventstream message: prelude (total length, headers length, CRC32), headers,
    payload, CRC32 of everything before it."""
    head = b"".join(_header(k, v) for k, v in headers.items())
    total = 12 + len(head) + len(payload) + 4
    prelude = struct.pack(">II", total, len(head))
    prelude += struct.pack(">I", binascii.crc32(prelude) & 0xFFFFFFFF)
    body = prelude + head + payload
    return body + struct.pack(">I", binascii.crc32(body) & 0xFFFFFFFF)


def event(kind: str, payload: dict[str, Any]) -> bytes:
    # Bedrock pads payloads with a "p" field of varying length; clients must ignore it.
    data = json.dumps({**payload, "p": "abcdefghijklmnopqrstuvwxyzABCDEF"[: len(kind)]}).encode()
    return frame({":event-type": kind, ":content-type": "application/json", ":message-type": "event"}, data)


def exception(kind: str, message: str) -> bytes:
    return frame({":exception-type": kind, ":content-type": "application/json", ":message-type": "exception"},
                 json.dumps({"message": message}).encode())


def stream_frames(with_tool: bool, throttle_midway: bool = False) -> list[bytes]:
    """The frames of one ConverseStream answer: REPLY, then maybe a tool call, then usage."""
    frames = [event("messageStart", {"role": "assistant"})]
    for i, word in enumerate(REPLY.split(" ")):
        frames.append(event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": word if i == 0 else " " + word}}))
        if throttle_midway and i == 1:
            return frames + [exception("throttlingException", "Too many tokens, please wait before trying again.")]
    frames.append(event("contentBlockStop", {"contentBlockIndex": 0}))
    if with_tool:
        args = json.dumps(TOOL_INPUT)
        frames.append(event("contentBlockStart", {"contentBlockIndex": 1, "start": {
            "toolUse": {"toolUseId": "tooluse_fake01", "name": "get_weather"}}}))
        for piece in (args[:5], args[5:]):
            frames.append(event("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"toolUse": {"input": piece}}}))
        frames.append(event("contentBlockStop", {"contentBlockIndex": 1}))
    frames.append(event("messageStop", {"stopReason": "tool_use" if with_tool else "end_turn"}))
    frames.append(event("metadata", {"usage": USAGE, "metrics": {"latencyMs": 321}}))
    return frames


def thinking_frames() -> list[bytes]:
    """An answer's start: THOUGHT as reasoning, then a whole tool call; no stop, no usage."""
    return [event("messageStart", {"role": "assistant"}),
            event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"reasoningContent": {"text": THOUGHT}}}),
            event("contentBlockStop", {"contentBlockIndex": 0}),
            event("contentBlockStart", {"contentBlockIndex": 1, "start": {
                "toolUse": {"toolUseId": "tooluse_fake02", "name": "get_weather"}}}),
            event("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"toolUse": {"input": json.dumps(TOOL_INPUT)}}}),
            event("contentBlockStop", {"contentBlockIndex": 1})]


def converse_body(with_tool: bool) -> dict[str, Any]:
    content: list[dict[str, Any]] = [{"text": REPLY}]
    if with_tool:
        content.append({"toolUse": {"toolUseId": "tooluse_fake01", "name": "get_weather", "input": TOOL_INPUT}})
    return {"output": {"message": {"role": "assistant", "content": content}},
            "stopReason": "tool_use" if with_tool else "end_turn", "usage": USAGE, "metrics": {"latencyMs": 123}}


TITAN_KEYS = {"inputText", "dimensions", "normalize", "embeddingTypes"}


def embedding_of(text: str, dimensions: int) -> list[float]:
    """A deterministic unit vector for `text` (what the tests compare the gateway's output to)."""
    seed = hashlib.sha256(text.encode()).digest()
    raw = [(seed[i % 32] - 127.5) / 127.5 + i / (10 * dimensions) for i in range(dimensions)]
    norm = math.sqrt(sum(v * v for v in raw))
    return [v / norm for v in raw]


def token_count(text: str) -> int:
    return len(text.split())


def _aws_error(status: int, kind: str, message: str) -> web.Response:
    return web.json_response({"message": message}, status=status, headers={"x-amzn-ErrorType": f"{kind}:http://internal.amazon.com/coral/com.amazon.bedrock/"})


def blank_text_at(body: dict[str, Any]) -> str | None:
    """Where a Converse request holds a text block AWS refuses as blank, in its words."""
    for i, block in enumerate(body.get("system") or []):
        if "text" in block and not block["text"].strip():
            return f"SystemContentBlock object at system.{i}"
    for i, message in enumerate(body.get("messages") or []):
        for j, block in enumerate(message.get("content") or []):
            if "text" in block and not block["text"].strip():
                return f"ContentBlock object at messages.{i}.content.{j}"
    return None


def empty_tool_description_at(body: dict[str, Any]) -> str | None:
    """Where a Converse request gives a tool an empty description, which AWS's length constraint
    (at least 1 character) refuses, in its words; None when none does."""
    for i, tool in enumerate((body.get("toolConfig") or {}).get("tools") or []):
        if (tool.get("toolSpec") or {}).get("description") == "":
            return f"toolConfig.tools.{i + 1}.member.toolSpec.description"
    return None


def tool_blocks_without_tool_config(body: dict[str, Any]) -> bool:
    """Whether a Converse request holds toolUse or toolResult blocks but no toolConfig, which AWS refuses."""
    if body.get("toolConfig"):
        return False
    return any("toolUse" in block or "toolResult" in block
               for message in body.get("messages") or [] for block in message.get("content") or [])


def signature_ok(method: str, url: str, headers: dict[str, str], body: bytes) -> bool:
    """Recompute the request's SigV4 signature with botocore, from the headers it signed."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    auth = headers.get("authorization", "")
    if not auth.startswith("AWS4-HMAC-SHA256 "):
        return False
    fields = dict(part.strip().split("=", 1) for part in auth[len("AWS4-HMAC-SHA256 "):].split(","))
    signed = fields["SignedHeaders"].split(";")
    request = AWSRequest(method=method, url=url, data=body, headers={h: headers[h] for h in signed if h in headers})
    request.context["timestamp"] = headers.get("x-amz-date", "")
    signer = SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), "bedrock", REGION)
    canonical = signer.canonical_request(request)
    expected = signer.signature(signer.string_to_sign(request, canonical), request)
    return fields["Credential"].startswith(ACCESS_KEY + "/") and expected == fields["Signature"]


class FakeBedrock(FakeUpstream):
    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/model/{model_id}/converse", self.converse)
        app.router.add_post("/model/{model_id}/converse-stream", self.converse_stream)
        app.router.add_post("/model/{model_id}/invoke", self.invoke)
        return app

    async def _admit(self, request: web.Request) -> tuple[dict[str, Any], web.Response | None]:
        raw = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        model = request.match_info["model_id"]
        self.requests.append({"path": request.raw_path, "model": model, "headers": headers, "body": json.loads(raw)})
        auth = headers.get("authorization", "")
        url = f"http://{headers['host']}{request.raw_path}"
        if auth.startswith("Bearer "):
            if auth != f"Bearer {API_KEY}":
                return {}, _aws_error(403, "AccessDeniedException", "Invalid API Key format: Must start with pre-defined prefix")
        elif not signature_ok(request.method, url, headers, raw):
            return {}, _aws_error(403, "InvalidSignatureException", "The request signature we calculated does not match the signature you provided.")
        if model == "throttled":
            return {}, _aws_error(429, "ThrottlingException", "Too many requests, please wait before trying again.")
        if model == "model-error":
            return {}, _aws_error(424, "ModelErrorException", "The model encountered an error processing the request.")
        if model == "invalid":
            return {}, _aws_error(400, "ValidationException", "The provided model identifier is invalid.")
        body = json.loads(raw)
        blank = blank_text_at(body)
        if blank is not None:
            return {}, _aws_error(400, "ValidationException",
                                  f"The text field in the {blank} is blank. Add text to the text field, and try again.")
        empty = empty_tool_description_at(body)
        if empty is not None:
            return {}, _aws_error(400, "ValidationException", f"1 validation error detected: Value '' at '{empty}' "
                                                              "failed to satisfy constraint: Member must have length "
                                                              "greater than or equal to 1")
        if tool_blocks_without_tool_config(body):
            return {}, _aws_error(400, "ValidationException", "The toolConfig field must be defined when using "
                                                              "toolUse and toolResult content blocks.")
        return body, None

    async def converse(self, request: web.Request) -> web.StreamResponse:
        body, refused = await self._admit(request)
        return refused or web.json_response(converse_body(bool(body.get("toolConfig"))))

    async def converse_stream(self, request: web.Request) -> web.StreamResponse:
        body, refused = await self._admit(request)
        if refused is not None:
            return refused
        resp = web.StreamResponse(headers={"content-type": "application/vnd.amazon.eventstream",
                                           "x-amzn-requestid": "fake-request-id"})
        await resp.prepare(request)
        if request.match_info["model_id"] == "thinks-then-stalls":
            for f in thinking_frames():
                await resp.write(f)
            await asyncio.sleep(30)
            return resp
        for f in stream_frames(bool(body.get("toolConfig")), request.match_info["model_id"] == "stream-throttled"):
            await resp.write(f)
        await resp.write_eof()
        return resp

    async def invoke(self, request: web.Request) -> web.StreamResponse:
        body, refused = await self._admit(request)
        if refused is not None:
            return refused
        if "cohere.embed-" in request.match_info["model_id"]:
            return cohere_embed(request.match_info["model_id"], body)
        extra = sorted(set(body) - TITAN_KEYS)
        if extra:
            return _aws_error(400, "ValidationException", f"Malformed input request: extraneous key [{extra[0]}] is "
                                                          "not permitted, please reformat your input and try again.")
        text, dimensions = body.get("inputText"), body.get("dimensions", 1024)
        if not isinstance(text, str) or not text or dimensions not in (256, 512, 1024):
            return _aws_error(400, "ValidationException", "Malformed input request, please reformat your input and try again.")
        vector = embedding_of(text, dimensions)
        return web.json_response({"embedding": vector, "inputTextTokenCount": token_count(text),
                                  "embeddingsByType": {"float": vector}})


COHERE_KEYS = {"texts", "input_type", "truncate", "embedding_types", "images"}
COHERE_V4_KEYS = COHERE_KEYS | {"output_dimension", "inputs", "max_tokens"}
COHERE_INPUT_TYPES = ("search_document", "search_query", "classification", "clustering")


def cohere_embed(model: str, body: dict[str, Any]) -> web.Response:
    """Cohere Embed's InvokeModel: v3 (1024 dimensions, fixed) or v4 (1536, or `output_dimension`)."""
    v4 = "embed-v4" in model
    extra = sorted(set(body) - (COHERE_V4_KEYS if v4 else COHERE_KEYS))
    if extra:
        return _aws_error(400, "ValidationException", f"Malformed input request: extraneous key [{extra[0]}] is "
                                                      "not permitted, please reformat your input and try again.")
    texts, dimensions = body.get("texts"), body.get("output_dimension", 1536 if v4 else 1024)
    if (not isinstance(texts, list) or not 0 < len(texts) <= 96 or body.get("input_type") not in COHERE_INPUT_TYPES
            or dimensions not in (256, 512, 1024, 1536)):
        return _aws_error(400, "ValidationException", "Malformed input request, please reformat your input and try again.")
    vectors = [embedding_of(t, dimensions) for t in texts]
    by_type = body.get("embedding_types") is not None
    answer = {"id": "5ba2e5b8-fake-cohere", "texts": texts,
              "embeddings": {"float": vectors} if by_type else vectors,
              "response_type": "embeddings_by_type" if by_type else "embeddings_floats"}
    tokens = sum(token_count(t) for t in texts)
    return web.json_response(answer, headers={"X-Amzn-Bedrock-Input-Token-Count": str(tokens),
                                              "X-Amzn-Bedrock-Invocation-Latency": "42"})
