"""A fake OpenAI upstream that answers what it is told: the text after `say:` in the last user
message (chat) or in the input (Responses API), or "ok". Streams come in CHUNK-character deltas,
so a value in the answer is split across many chunk boundaries. In the Responses API, `call:`
instead of `say:` answers with a function call whose arguments are the text, `custom:` with a
custom (freeform) tool call whose input is the text. Records the
bodies it got (`bodies`). `queue(status, raw)` makes the next answer those bytes, whatever was
asked (an answer no real upstream sends, or an upstream's error).

The Responses stream has the events OpenAI sends for one message (or function call) item:
response.created, output_item.added, content_part.added, output_text.delta..., output_text.done,
content_part.done, output_item.done, response.completed, numbered by `sequence_number`; the
full text is repeated in the `.done` events and in response.completed, as OpenAI does.
"""
from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from aiohttp import web

from tests.harness import ThreadedServer

CHUNK = 3  # characters per streamed delta
_USAGE = {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10}
_RESPONSES_USAGE = {"input_tokens": 5, "output_tokens": 5, "total_tokens": 10,
                    "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}}


def _told(text: str) -> tuple[str, str]:
    """(what to answer, "say" or "call")."""
    for verb in ("say", "call", "custom"):
        _, sep, said = text.partition(verb + ":")
        if sep:
            return said.strip(), verb
    return "ok", "say"


class ScriptedUpstream:
    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.queued: list[tuple[int, bytes]] = []
        self.server = ThreadedServer(self._app)
        self.url = f"http://127.0.0.1:{self.server.port}/v1"

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/responses", self.responses)
        return app

    def queue(self, status: int, raw: bytes) -> None:
        self.queued.append((status, raw))

    def _queued(self) -> web.Response | None:
        if not self.queued:
            return None
        status, raw = self.queued.pop(0)
        return web.Response(status=status, body=raw, content_type="application/json")

    def last_text(self) -> str:
        return json.dumps(self.bodies[-1])

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.bodies.append(body)
        if (queued := self._queued()) is not None:
            return queued
        last = body["messages"][-1]["content"]
        if isinstance(last, list):
            last = " ".join(p.get("text", "") for p in last if isinstance(p, dict))
        text, _ = _told(last)
        base = {"id": "chatcmpl-1", "created": int(time.time()), "model": body["model"]}
        if not body.get("stream"):
            return web.json_response({**base, "object": "chat.completion", "usage": _USAGE, "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]})
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)

        async def send(delta: dict[str, Any], finish: str | None) -> None:
            chunk = {**base, "object": "chat.completion.chunk",
                     "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            await asyncio.sleep(0)

        await send({"role": "assistant", "content": ""}, None)
        for i in range(0, len(text), CHUNK):
            await send({"content": text[i:i + CHUNK]}, None)
        await send({}, "stop")
        if (body.get("stream_options") or {}).get("include_usage"):
            await resp.write(b"data: " + json.dumps({**base, "object": "chat.completion.chunk", "choices": [],
                                                     "usage": _USAGE}).encode() + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        return resp

    async def responses(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.bodies.append(body)
        if (queued := self._queued()) is not None:
            return queued
        given = body.get("input")
        text, verb = _told(given if isinstance(given, str) else json.dumps(given))
        if verb == "custom":
            item: dict[str, Any] = {"type": "custom_tool_call", "id": "ctc_1", "call_id": "call_1", "name": "pay",
                                    "input": text, "status": "completed"}
        elif verb == "call":
            item = {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "lookup",
                                    "arguments": text, "status": "completed"}
        else:
            item = {"type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
                    "content": [{"type": "output_text", "text": text, "annotations": []}]}
        final = {"id": "resp_1", "object": "response", "created_at": int(time.time()), "status": "completed",
                 "model": body.get("model"), "output": [item], "usage": _RESPONSES_USAGE}
        if not body.get("stream"):
            return web.json_response(final)
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        for seq, (kind, payload) in enumerate(_responses_events(final, item, text)):
            data = json.dumps({"type": kind, "sequence_number": seq, **payload})
            await resp.write(f"event: {kind}\ndata: {data}\n\n".encode())
            await asyncio.sleep(0)
        return resp


def _responses_events(final: dict[str, Any], item: dict[str, Any], text: str) -> list[tuple[str, dict[str, Any]]]:
    pieces = [text[i:i + CHUNK] for i in range(0, len(text), CHUNK)]
    at = {"item_id": item["id"], "output_index": 0}
    events: list[tuple[str, dict[str, Any]]] = [
        ("response.created", {"response": {**final, "status": "in_progress", "output": [], "usage": None}})]
    if item["type"] == "custom_tool_call":
        events.append(("response.output_item.added", {"output_index": 0, "item": {**item, "input": "",
                                                                                  "status": "in_progress"}}))
        events += [("response.custom_tool_call_input.delta", {**at, "delta": p}) for p in pieces]
        events.append(("response.custom_tool_call_input.done", {**at, "input": text}))
    elif item["type"] == "function_call":
        events.append(("response.output_item.added", {"output_index": 0, "item": {**item, "arguments": "",
                                                                                  "status": "in_progress"}}))
        events += [("response.function_call_arguments.delta", {**at, "delta": p}) for p in pieces]
        events.append(("response.function_call_arguments.done", {**at, "arguments": text}))
    else:
        part = {"type": "output_text", "text": "", "annotations": []}
        at["content_index"] = 0
        events.append(("response.output_item.added", {"output_index": 0, "item": {**item, "content": [],
                                                                                  "status": "in_progress"}}))
        events.append(("response.content_part.added", {**at, "part": part}))
        events += [("response.output_text.delta", {**at, "delta": p, "logprobs": []}) for p in pieces]
        events.append(("response.output_text.done", {**at, "text": text, "logprobs": []}))
        events.append(("response.content_part.done", {**at, "part": {**part, "text": text}}))
    events.append(("response.output_item.done", {"output_index": 0, "item": item}))
    events.append(("response.completed", {"response": final}))
    return events
