"""A fake OpenAI-compatible upstream speaking OpenAI's real wire format.

It answers chat completions (JSON and SSE, with the `stream_options.include_usage` chunk
when asked), legacy completions, embeddings and the Responses API, and records every
request it gets so tests can check what the gateway sent. The upstream *model name* selects
a misbehaviour, so one server covers every failure the gateway must survive:

  fail-500, fail-429 (retry-after: 1), bad-auth (401 echoing the key it got), leaky-error
  (400 whose message quotes the key), slow-first-byte (headers after 3 s), stall-stream
  (2 chunks, then silence), die-mid-stream (2 chunks, then the connection drops),
  no-usage (a stream that never reports usage), slow-stream (steady but slow: a piece every
  0.3 s for 5 s, as SSE chunks when streaming and as a trickled JSON body otherwise, so no
  idle timeout fires but a total one does; `cut_off` counts the ones the client dropped),
  long-stream (LONG_STREAM_CHUNKS deltas of one token each, " tok", paced so a client can stop
  it early; `long_streams` records how many each wrote and whether its client hung up first).
  Responses streams: incomplete and failed (`response.incomplete` / `response.failed` carrying
  RESPONSE_USAGE_CUT), no-usage (`response.completed` without usage), ends-early (the text, then
  a clean end of stream without any closing event). Chat streams: ends-early (the text, then a
  clean end without the finish chunk or `[DONE]`), no-done (the whole answer, finish chunk and
  usage included, but no `[DONE]`, as some OpenAI-compatible servers end). burst-stream: a
  one-token delta, then, once the test sets `burst_release`, BURST_TOKENS tokens in one delta
  (as providers send whole tool-call arguments, or a burst after a long think).
  thinks-no-usage (chat and Responses, streamed or not): a thinking model's answer without usage:
  its reasoning (THOUGHT), a refusal (REFUSAL) and, in the Responses API, a custom tool call
  (TOOL_INPUT), an MCP call (MCP_ARGUMENTS) and a code interpreter call (CODE), where a stream
  carries them in its deltas and a whole answer in other fields than the text's; its stream also
  has an audio delta (base64, no text).
"""
from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

from aiohttp import web

from tests.fakes.base import FakeUpstream
from tests.fakes.openai_media import MediaEndpoints, recorded_validation_error

REPLY = "The quick brown fox jumps over the lazy dog"
LONG_STREAM_CHUNKS = 3000
LONG_DELTA = " tok"  # one token in tiktoken's o200k and cl100k encodings
BURST_TOKENS = 301  # burst-stream's second delta: LONG_DELTA this many times
THOUGHT = "The user asks for a lock pick guide, which I should decline."  # thinks-no-usage
REFUSAL = "I'm sorry, but I can't help with that."
TOOL_INPUT = "*** Begin Patch\n*** Add File: refusal.txt\n+declined\n*** End Patch"
MCP_ARGUMENTS = '{"query": "lock pick guide", "limit": 3}'
CODE = "print(sum(range(10)))"
# Responses streams that end otherwise than `response.completed` with usage, by model name:
# (the last event, the response's status, what the response says besides).
RESPONSE_USAGE_CUT = {"input_tokens": 1000, "output_tokens": 500, "total_tokens": 1500}
RESPONSES_ENDS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "incomplete": ("response.incomplete", "incomplete",
                   {"incomplete_details": {"reason": "max_output_tokens"}, "usage": RESPONSE_USAGE_CUT}),
    "failed": ("response.failed", "failed",
               {"error": {"code": "server_error", "message": "The model failed."}, "usage": RESPONSE_USAGE_CUT}),
    "no-usage": ("response.completed", "completed", {"usage": None}),
}


# usage-negative and usage-huge: answers whose usage no real upstream sends (a count below zero,
# one past any float), which must cost the gateway neither a counter's sense nor a record.
_ABSURD_USAGE: dict[str, dict[str, Any]] = {
    "usage-negative": {"prompt_tokens": -1000000, "completion_tokens": -5, "total_tokens": -1000005},
    "usage-huge": {"prompt_tokens": 10**400, "completion_tokens": 10**30, "total_tokens": 10**400},
}


def _error(status: int, message: str, kind: str, code: str | None = None, headers: dict[str, str] | None = None) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return web.json_response(body, status=status, headers=headers)


def _usage(prompt: int, completion: int) -> dict[str, Any]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": 0}, "completion_tokens_details": {"reasoning_tokens": 0}}


class FakeOpenAI(FakeUpstream, MediaEndpoints):
    url_path = "/v1"

    def __init__(self) -> None:
        self.cut_off: list[str] = []  # slow-stream answers whose client closed the connection early
        self.long_streams: list[tuple[int, bool]] = []  # long-stream answers: (deltas written, client hung up)
        self.burst_release = threading.Event()  # set by a test: burst-stream sends its burst (then clears it)
        super().__init__()

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_post("/v1/responses", self.responses)
        app.router.add_post("/openai/deployments/{deployment}/chat/completions", self.azure_chat)
        self.add_media_routes(app)  # moderations, images, audio, rerank (tests/fakes/openai_media.py)
        return app

    async def azure_chat(self, request: web.Request) -> web.StreamResponse:
        """Azure's deployment URL: the deployment names the model, `api-key` authenticates."""
        if request.query.get("api-version") is None or request.headers.get("api-key") is None:
            return _error(400, "Missing api-version or api-key.", "invalid_request_error")
        return await self.chat(request)

    async def _misbehave(self, request: web.Request, model: str) -> web.StreamResponse | None:
        auth = request.headers.get("authorization", "")
        if model == "fail-500":
            return _error(500, "The server had an error while processing your request.", "server_error")
        if model == "fail-429":
            return _error(429, "Rate limit reached for requests.", "requests", "rate_limit_exceeded", {"retry-after": "1"})
        if model == "bad-auth":
            return _error(401, f"Incorrect API key provided: {auth.removeprefix('Bearer ')}.", "invalid_request_error", "invalid_api_key")
        if model == "leaky-error":
            return _error(400, f"Invalid 'temperature' for key {auth.removeprefix('Bearer ')}.", "invalid_request_error", "invalid_value")
        if model == "slow-first-byte":
            await asyncio.sleep(3)
        return None

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        model = body.get("model", "")
        bad = recorded_validation_error(body) or await self._misbehave(request, model)
        if bad is not None:
            return bad
        prompt = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
        if model == "slow-stream":
            return await self._slow(request, body, prompt)
        if model == "long-stream":
            return await self._long(request, body, prompt)
        if model == "burst-stream":
            return await self._burst(request, body, prompt)
        if body.get("stream"):
            return await self._stream_chat(request, body, model, prompt)
        message: dict[str, Any] = {"role": "assistant", "content": REPLY, "refusal": None}
        if model == "thinks-no-usage":  # (vLLM's and DeepSeek's field for the reasoning)
            message = {"role": "assistant", "content": None, "reasoning_content": THOUGHT, "refusal": REFUSAL}
        finish = "stop"
        if body.get("tools"):
            fn = body["tools"][0]["function"]["name"]
            message = {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_abc123", "type": "function", "function": {"name": fn, "arguments": '{"city": "Paris"}'}}]}
            finish = "tool_calls"
        choices = [{"index": i, "message": message, "logprobs": None, "finish_reason": finish} for i in range(body.get("n") or 1)]
        usage = None if model == "thinks-no-usage" else _ABSURD_USAGE.get(model) or _usage(prompt, 9)
        return web.Response(text=json.dumps({
            "id": "chatcmpl-fake123", "object": "chat.completion", "created": int(time.time()), "model": model,
            "system_fingerprint": "fp_fake", "choices": choices, "usage": usage,
        }), content_type="application/json")

    async def _stream_chat(self, request: web.Request, body: dict[str, Any], model: str, prompt: int) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        include_usage = (body.get("stream_options") or {}).get("include_usage") and model not in ("no-usage", "thinks-no-usage")
        base = {"id": "chatcmpl-fake123", "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
                "system_fingerprint": "fp_fake"}
        extra = {"usage": None} if include_usage else {}

        async def send(delta: dict[str, Any], finish: str | None) -> None:
            chunk = {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}], **extra}
            await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")

        await send({"role": "assistant", "content": ""}, None)
        deltas = [{"content": word if i == 0 else " " + word} for i, word in enumerate(REPLY.split(" "))]
        if model == "thinks-no-usage":
            deltas = [{"reasoning_content": THOUGHT[:20]}, {"reasoning_content": THOUGHT[20:]}, {"refusal": REFUSAL}]
        for i, delta in enumerate(deltas):
            await send(delta, None)
            if i == 1 and model in ("stall-stream", "die-mid-stream"):
                if model == "die-mid-stream":
                    request.transport.close()
                    return resp
                await asyncio.sleep(30)
        if model != "ends-early":
            await send({}, "stop")
            if include_usage:
                await resp.write(b"data: " + json.dumps({**base, "choices": [], "usage": _usage(prompt, 9)}).encode()
                                 + b"\n\n")
            if model != "no-done":
                await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def _slow(self, request: web.Request, body: dict[str, Any], prompt: int) -> web.StreamResponse:
        """slow-stream: one piece every 0.3 s for 5 s; notes in `cut_off` if the client hung up."""
        stream = bool(body.get("stream"))
        resp = web.StreamResponse(headers={"content-type": "text/event-stream" if stream else "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        base = {"id": "chatcmpl-slow", "object": "chat.completion.chunk", "created": int(time.time()),
                "model": "slow-stream", "system_fingerprint": "fp_fake"}
        try:
            if not stream:
                await resp.write(b'{"id": "chatcmpl-slow", "object": "chat.completion", ')
            for _ in range(17):
                await asyncio.sleep(0.3)
                if stream:
                    delta = {"choices": [{"index": 0, "delta": {"content": "tick "}, "logprobs": None, "finish_reason": None}]}
                    await resp.write(b"data: " + json.dumps({**base, **delta}).encode() + b"\n\n")
                else:
                    await resp.write(b" ")  # JSON allows any whitespace between tokens
            if stream:
                await resp.write(b"data: [DONE]\n\n")
            else:
                message = {"role": "assistant", "content": "tick", "refusal": None}
                rest = {"created": int(time.time()), "model": "slow-stream", "usage": _usage(prompt, 1),
                        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}]}
                await resp.write(json.dumps(rest).encode()[1:])  # the object's fields after the opening brace
            await resp.write_eof()
        except (ConnectionError, asyncio.CancelledError):
            self.cut_off.append("stream" if stream else "body")
            raise
        return resp

    async def _long(self, request: web.Request, body: dict[str, Any], prompt: int) -> web.StreamResponse:
        """long-stream: LONG_STREAM_CHUNKS one-token deltas, a short pause every 20; the usage
        chunk (when asked) reports what was written."""
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        base = {"id": "chatcmpl-long", "object": "chat.completion.chunk", "created": int(time.time()),
                "model": "long-stream", "system_fingerprint": "fp_fake"}
        include_usage = (body.get("stream_options") or {}).get("include_usage")
        extra = {"usage": None} if include_usage else {}
        written = 0
        try:
            for i in range(LONG_STREAM_CHUNKS):
                delta = {"role": "assistant", "content": LONG_DELTA} if i == 0 else {"content": LONG_DELTA}
                chunk = {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}], **extra}
                await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                written += 1
                if i % 20 == 19:
                    await asyncio.sleep(0.01)
            await resp.write(b"data: " + json.dumps({**base, "choices": [{"index": 0, "delta": {}, "logprobs": None,
                                                                         "finish_reason": "length"}], **extra}).encode() + b"\n\n")
            if include_usage:
                await resp.write(b"data: " + json.dumps({**base, "choices": [], "usage": _usage(prompt, written)}).encode()
                                 + b"\n\n")
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
        except ConnectionError:  # the client closed the connection: nothing more to write to
            self.long_streams.append((written, True))
            return resp
        self.long_streams.append((written, False))
        return resp

    async def _burst(self, request: web.Request, body: dict[str, Any], prompt: int) -> web.StreamResponse:
        """burst-stream: "Hi", then (once `burst_release` is set, or after 10 s) BURST_TOKENS
        tokens in one delta, the finish chunk, usage when asked, [DONE]."""
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        base = {"id": "chatcmpl-burst", "object": "chat.completion.chunk", "created": int(time.time()),
                "model": "burst-stream", "system_fingerprint": "fp_fake"}

        async def send(delta: dict[str, Any], finish: str | None) -> None:
            chunk = {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
            await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")

        try:
            await send({"role": "assistant", "content": "Hi"}, None)
            deadline = time.monotonic() + 10
            while not self.burst_release.is_set() and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            self.burst_release.clear()
            await send({"content": LONG_DELTA * BURST_TOKENS}, None)
            await send({}, "stop")
            if (body.get("stream_options") or {}).get("include_usage"):
                await resp.write(b"data: " + json.dumps({**base, "choices": [], "usage": _usage(prompt, 1 + BURST_TOKENS)}).encode()
                                 + b"\n\n")
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
        except ConnectionError:  # the client closed the connection: nothing more to write to
            pass
        return resp

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        return web.json_response({
            "id": "cmpl-fake", "object": "text_completion", "created": int(time.time()), "model": body.get("model"),
            "choices": [{"index": 0, "text": " " + REPLY, "logprobs": None, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 9, "total_tokens": 12},
        })

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = [{"object": "embedding", "index": i, "embedding": [0.1 * (i + 1), 0.2, 0.3]} for i in range(len(inputs))]
        return web.json_response({"object": "list", "data": data, "model": body.get("model"),
                                  "usage": {"prompt_tokens": 4, "total_tokens": 4}})

    async def responses(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        model = body.get("model", "")
        final = {
            "id": "resp_fake", "object": "response", "created_at": int(time.time()), "status": "completed",
            "model": model, "output": [{"type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
                                        "content": [{"type": "output_text", "text": REPLY, "annotations": []}]}],
            "usage": {"input_tokens": 5, "output_tokens": 9, "total_tokens": 14,
                      "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}},
        }
        if model == "thinks-no-usage":
            final = {**final, "output": _THINKING_OUTPUT, "usage": None}
        if not body.get("stream"):
            return web.json_response(final)
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        for seq, (kind, payload) in enumerate(_responses_events(model, final)):
            data = json.dumps({"type": kind, "sequence_number": seq, **payload})
            await resp.write(f"event: {kind}\ndata: {data}\n\n".encode())
        await resp.write_eof()
        return resp


# thinks-no-usage's Responses output: a reasoning item, a refused message, a freeform tool call,
# an MCP call, a code interpreter call.
_THINKING_OUTPUT = [
    {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": THOUGHT}]},
    {"type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
     "content": [{"type": "refusal", "refusal": REFUSAL}]},
    {"type": "custom_tool_call", "id": "ctc_1", "call_id": "call_1", "name": "apply_patch", "input": TOOL_INPUT},
    {"type": "mcp_call", "id": "mcp_1", "server_label": "docs", "name": "search", "arguments": MCP_ARGUMENTS,
     "output": "no results"},
    {"type": "code_interpreter_call", "id": "ci_1", "status": "completed", "container_id": "cntr_1", "code": CODE,
     "outputs": [{"type": "logs", "logs": "45"}]},
]
_THINKING_DELTAS = [
    ("response.reasoning_summary_text.delta", {"item_id": "rs_1", "output_index": 0, "summary_index": 0, "delta": THOUGHT}),
    ("response.refusal.delta", {"item_id": "msg_1", "output_index": 1, "content_index": 0, "delta": REFUSAL}),
    ("response.custom_tool_call_input.delta", {"item_id": "ctc_1", "output_index": 2, "delta": TOOL_INPUT}),
    ("response.mcp_call_arguments.delta", {"item_id": "mcp_1", "output_index": 3, "delta": MCP_ARGUMENTS}),
    ("response.code_interpreter_call_code.delta", {"item_id": "ci_1", "output_index": 4, "delta": CODE}),
    ("response.audio.delta", {"delta": "UklGRiQAAABXQVZFZm10IBAAAAABAAEAQB8AAIA+AAACABAAZGF0YQAAAAA="}),
]


def _responses_events(model: str, final: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The stream's events, ended as the model name says (RESPONSES_ENDS); "ends-early" never ends."""
    deltas = _THINKING_DELTAS if model == "thinks-no-usage" else [
        ("response.output_text.delta", {"item_id": "msg_1", "output_index": 0, "content_index": 0, "delta": REPLY})]
    events = [("response.created", {"response": {**final, "status": "in_progress", "output": [], "usage": None}}), *deltas]
    if model == "ends-early":
        return events
    kind, status, extra = RESPONSES_ENDS.get(model, ("response.completed", "completed", {}))
    return [*events, (kind, {"response": {**final, "status": status, **extra}})]
