"""A fake Anthropic Messages API speaking Anthropic's real wire format.

`POST /v1/messages` answers a `message` body or, with `stream: true`, the documented SSE
sequence (`message_start`, per block `content_block_start`/`_delta`/`_stop`, `ping`,
`message_delta`, `message_stop`), with a tool_use block when the request offers tools.
`POST /v1/messages/count_tokens` answers `{"input_tokens": N}`. Every request is recorded.
Requests without `x-api-key` or `anthropic-version` get Anthropic's 401/400 error bodies, an
empty or whitespace-only text block (in `system` or a message) its 400, and the upstream
model name selects a misbehaviour:

  overloaded (529 overloaded_error), rate-limited (429 with retry-after: 7),
  bad-key (401 authentication_error), stream-error (an `error` event mid-stream),
  die-mid-stream (a few events, then the connection drops), long-stream (LONG_STREAM_DELTAS
  one-token text deltas, paced; `long_streams` records how many each wrote and whether its
  client hung up first), no-usage (answers, streamed or not, without any usage field, as some
  Anthropic-compatible servers send them), parallel-calls (a streamed answer calls every tool
  offered, one tool_use block each, as Claude's parallel tool use does).
"""
from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from tests.fakes.base import FakeUpstream

REPLY = "Hello from the fake Anthropic upstream"
TOOL_INPUT = {"city": "Paris", "unit": "celsius"}
USAGE = {"input_tokens": 21, "cache_creation_input_tokens": 4, "cache_read_input_tokens": 8, "output_tokens": 1}
OUTPUT_TOKENS = 17
LONG_STREAM_DELTAS = 3000


def _error(status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"type": "error", "error": {"type": kind, "message": message}}, status=status, headers=headers)


def sse(kind: str, payload: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(payload)}\n\n".encode()


def message_events(model: str, with_tool: bool, fail_midway: bool = False,
                   tools: Sequence[str] = ("get_weather",)) -> list[bytes]:
    """The SSE events Anthropic sends for one streamed answer (REPLY, then maybe a call of each
    of `tools`); model "no-usage" leaves the usage out of message_start and message_delta."""
    start = {"id": "msg_fake01", "type": "message", "role": "assistant", "content": [], "model": model,
             "stop_reason": None, "stop_sequence": None, "usage": USAGE}
    events = [sse("message_start", {"type": "message_start", "message": start}),
              sse("content_block_start", {"type": "content_block_start", "index": 0,
                                          "content_block": {"type": "text", "text": ""}}),
              sse("ping", {"type": "ping"})]
    for i, word in enumerate(REPLY.split(" ")):
        events.append(sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                  "delta": {"type": "text_delta", "text": word if i == 0 else " " + word}}))
        if fail_midway and i == 1:
            return events + [sse("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})]
    events.append(sse("content_block_stop", {"type": "content_block_stop", "index": 0}))
    for index, name in enumerate(tools if with_tool else (), start=1):
        events += _tool_use_events(index, f"toolu_fake{index:02}", name)
    reason = "tool_use" if with_tool else "end_turn"
    events.append(sse("message_delta", {"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": None},
                                        "usage": {"output_tokens": OUTPUT_TOKENS}}))
    events.append(sse("message_stop", {"type": "message_stop"}))
    return with_usage(events, None, None) if model == "no-usage" else events


def _tool_use_events(index: int, call_id: str, name: str) -> list[bytes]:
    """One streamed tool_use block: its start, TOOL_INPUT in three input_json_delta pieces, its stop."""
    args = json.dumps(TOOL_INPUT)
    events = [sse("content_block_start", {"type": "content_block_start", "index": index, "content_block": {
        "type": "tool_use", "id": call_id, "name": name, "input": {}}})]
    for piece in (args[:9], args[9:20], args[20:]):
        events.append(sse("content_block_delta", {"type": "content_block_delta", "index": index,
                                                  "delta": {"type": "input_json_delta", "partial_json": piece}}))
    return events + [sse("content_block_stop", {"type": "content_block_stop", "index": index})]


def thinking_events(thinking: str) -> list[bytes]:
    """A thinking block (to put after message_start): its start, one thinking_delta, its stop."""
    return [sse("content_block_start", {"type": "content_block_start", "index": 0,
                                        "content_block": {"type": "thinking", "thinking": ""}}),
            sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                        "delta": {"type": "thinking_delta", "thinking": thinking}}),
            sse("content_block_stop", {"type": "content_block_stop", "index": 0})]


def with_usage(events: list[bytes], start: dict[str, Any] | None, delta: dict[str, Any] | None) -> list[bytes]:
    """`events` with `start` as message_start's usage and `delta` as message_delta's (None: no
    usage field at all)."""
    return [_usage_set(e, b"message_start", start) if e.startswith(b"event: message_start") else
            _usage_set(e, b"message_delta", delta) if e.startswith(b"event: message_delta") else e for e in events]


def _usage_set(event: bytes, kind: bytes, usage: dict[str, Any] | None) -> bytes:
    doc = json.loads(event.partition(b"data: ")[2])
    holder = doc["message"] if kind == b"message_start" else doc
    holder.pop("usage", None)
    if usage is not None:
        holder["usage"] = usage
    return sse(kind.decode(), doc)


def message_body(model: str, with_tool: bool, tool_name: str = "get_weather") -> dict[str, Any]:
    content: list[dict[str, Any]] = [{"type": "text", "text": REPLY}]
    if with_tool:
        content.append({"type": "tool_use", "id": "toolu_fake01", "name": tool_name, "input": TOOL_INPUT})
    return {"id": "msg_fake01", "type": "message", "role": "assistant", "model": model, "content": content,
            "stop_reason": "tool_use" if with_tool else "end_turn", "stop_sequence": None,
            "usage": {**USAGE, "output_tokens": OUTPUT_TOKENS}}


def blank_text_field(body: dict[str, Any]) -> str | None:
    """The field ("system" or "messages") holding a text block Anthropic refuses as blank."""
    if _has_blank_text(body.get("system")):
        return "system"
    if any(_has_blank_text(m.get("content")) for m in body.get("messages") or []):
        return "messages"
    return None


def _has_blank_text(blocks: Any) -> bool:
    return isinstance(blocks, list) and any(
        isinstance(b, dict) and b.get("type") == "text" and not str(b.get("text") or "").strip() for b in blocks)


class FakeAnthropic(FakeUpstream):
    def __init__(self) -> None:
        self.long_streams: list[tuple[int, bool]] = []  # long-stream answers: (deltas written, client hung up)
        super().__init__()

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/messages", self.messages)
        app.router.add_post("/v1/messages/count_tokens", self.count_tokens)
        return app

    def _refuse(self, request: web.Request, model: str) -> web.Response | None:
        if not request.headers.get("x-api-key") or model == "bad-key":
            return _error(401, "authentication_error", "invalid x-api-key")
        if not request.headers.get("anthropic-version"):
            return _error(400, "invalid_request_error", "anthropic-version: header is required")
        if model == "overloaded":
            return _error(529, "overloaded_error", "Overloaded")
        if model == "rate-limited":
            return _error(429, "rate_limit_error", "Number of request tokens has exceeded your rate limit.",
                          {"retry-after": "7"})
        return None

    async def messages(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        model = body.get("model", "")
        refused = self._refuse(request, model)
        if refused is not None:
            return refused
        if not isinstance(body.get("max_tokens"), int):
            return _error(400, "invalid_request_error", "max_tokens: Field required")
        blank = blank_text_field(body)
        if blank is not None:
            return _error(400, "invalid_request_error", f"{blank}: text content blocks must contain non-whitespace text")
        tools = body.get("tools") or []
        if not body.get("stream"):
            answer = message_body(model, bool(tools), tools[0]["name"] if tools else "get_weather")
            if model == "no-usage":
                del answer["usage"]
            return web.json_response(answer)
        resp = web.StreamResponse(headers={"content-type": "text/event-stream; charset=utf-8"})
        await resp.prepare(request)
        if model == "long-stream":
            return await self._long(resp, model)
        called = [t["name"] for t in tools] if model == "parallel-calls" else ["get_weather"]
        events = message_events(model, bool(tools), fail_midway=model == "stream-error", tools=called)
        for i, event in enumerate(events):
            if model == "die-mid-stream" and i == 5:  # after "Hello from": the peer just goes away
                request.transport.close()
                return resp
            await resp.write(event)
        await resp.write_eof()
        return resp

    async def _long(self, resp: web.StreamResponse, model: str) -> web.StreamResponse:
        start = {"id": "msg_long01", "type": "message", "role": "assistant", "content": [], "model": model,
                 "stop_reason": None, "stop_sequence": None, "usage": {**USAGE, "output_tokens": 1}}
        written = 0
        try:
            await resp.write(sse("message_start", {"type": "message_start", "message": start}))
            await resp.write(sse("content_block_start", {"type": "content_block_start", "index": 0,
                                                         "content_block": {"type": "text", "text": ""}}))
            for i in range(LONG_STREAM_DELTAS):
                await resp.write(sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                             "delta": {"type": "text_delta", "text": " tok"}}))
                written += 1
                if i % 20 == 19:
                    await asyncio.sleep(0.01)
            await resp.write(sse("content_block_stop", {"type": "content_block_stop", "index": 0}))
            await resp.write(sse("message_delta", {"type": "message_delta", "delta": {"stop_reason": "max_tokens",
                             "stop_sequence": None}, "usage": {"output_tokens": written}}))
            await resp.write(sse("message_stop", {"type": "message_stop"}))
            await resp.write_eof()
        except ConnectionError:  # the client closed the connection: nothing more to write to
            self.long_streams.append((written, True))
            return resp
        self.long_streams.append((written, False))
        return resp

    async def count_tokens(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        refused = self._refuse(request, body.get("model", ""))
        return refused or web.json_response({"input_tokens": 42})
