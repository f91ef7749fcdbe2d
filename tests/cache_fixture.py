"""What the cache's end-to-end tests share: an OpenAI fake with the answers a cache must not
keep (truncated) and one slow enough for requests to overlap, and a config that opts models in."""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

from aiohttp import web

from tests.fakes.openai_upstream import FakeOpenAI, _usage
from tests.harness import OTHER_KEY, TEST_KEY, UPSTREAM_SECRET, key_hash

THIRD_KEY = "sk-tollway-third-key-1111111111"
SOLO_KEY = "sk-tollway-solo-key-2222222222"  # no team, no limits
TIGHT_KEY = "sk-tollway-tight-key-3333333333"  # 5 output tokens a minute: a 9-token stream is cut
DRAINED_KEY = "sk-tollway-drained-key-4444444444"  # 30 output tokens a minute, no request limit
SPENT_KEY = "sk-tollway-spent-key-5555555555"  # a budget the first answer spends
SLOW_SECONDS = 0.6


# Chat answers finished with "stop" that a cache must not keep or must keep whole, by model:
# the message a JSON request gets, and the deltas a stream carries it in (after the role chunk).
SCRIPTED: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]] = {
    "refusing": ({"role": "assistant", "content": None, "refusal": "I can't help with that."},
                 [{"refusal": "I can't "}, {"refusal": "help with that."}]),
    "speaking": ({"role": "assistant", "content": None,
                  "audio": {"id": "audio_1", "data": "UklGRgAA", "expires_at": 1700003600, "transcript": "Hello there."}},
                 [{"audio": {"id": "audio_1", "transcript": "Hello ", "expires_at": 1700003600}},
                  {"audio": {"transcript": "there.", "data": "UklG"}}, {"audio": {"data": "RgAA"}}]),
    "silent": ({"role": "assistant", "content": None}, []),
}
SCORED = [("Hello", {"tokens": ["Hello"], "token_logprobs": [-0.1], "top_logprobs": [{"Hello": -0.1}], "text_offset": [0]}),
          (" world", {"tokens": [" world"], "token_logprobs": [-0.2], "top_logprobs": [{" world": -0.2}],
                      "text_offset": [5]})]


class CacheUpstream(FakeOpenAI):
    """FakeOpenAI plus `truncated` (finish_reason length), `slow` (answers after SLOW_SECONDS),
    `oddshape` (a complete answer whose tool_calls holds a string, not a tool call), the SCRIPTED
    chat answers, `scored` completions (logprobs, streamed in SCORED's pieces) and `refusing`
    Responses (a refusal content part, status completed)."""

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()  # (aiohttp keeps the body: the parent reads it again)
        if body.get("model") in SCRIPTED:
            await self._record(request)
            return await _scripted(request, body, *SCRIPTED[body["model"]])
        if body.get("model") == "slow":
            await asyncio.sleep(SLOW_SECONDS)
        if body.get("model") == "oddshape" and not body.get("stream"):
            await self._record(request)
            message = {"role": "assistant", "content": "hi", "tool_calls": ["x"]}
            return web.json_response({"id": "chatcmpl-odd", "object": "chat.completion", "created": 1, "model": "m",
                                      "usage": _usage(3, 2), "choices": [{"index": 0, "message": message,
                                                                          "finish_reason": "stop"}]})
        if body.get("model") != "truncated":
            return await super().chat(request)
        await self._record(request)
        base = {"id": "chatcmpl-cut", "created": int(time.time()), "model": "truncated"}
        if not body.get("stream"):
            message = {"role": "assistant", "content": "The quick", "refusal": None}
            return web.json_response({**base, "object": "chat.completion", "usage": _usage(3, 2),
                                      "choices": [{"index": 0, "message": message, "logprobs": None,
                                                   "finish_reason": "length"}]})
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        for delta, finish in (({"role": "assistant", "content": "The quick"}, None), ({}, "length")):
            chunk = {**base, "object": "chat.completion.chunk",
                     "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
            await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if body.get("model") != "scored":
            return await super().completions(request)
        await self._record(request)
        base = {"id": "cmpl-scored", "object": "text_completion", "created": 1, "model": "scored"}
        if not body.get("stream"):
            logprobs = {field: [v for _, piece in SCORED for v in piece[field]] for field in SCORED[0][1]}
            return web.json_response({**base, "usage": _usage(3, 2), "choices": [
                {"index": 0, "text": "Hello world", "logprobs": logprobs, "finish_reason": "stop"}]})
        parts = [{"index": 0, "text": text, "logprobs": lp, "finish_reason": None} for text, lp in SCORED]
        return await _sse(request, [{**base, "choices": [c]} for c in
                                    [*parts, {"index": 0, "text": "", "logprobs": None, "finish_reason": "stop"}]])

    async def responses(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if body.get("model") != "refusing":
            return await super().responses(request)
        await self._record(request)
        refusal = {"type": "refusal", "refusal": "I can't help with that."}
        return web.json_response({
            "id": "resp_refused", "object": "response", "created_at": 1, "status": "completed", "error": None,
            "model": "refusing", "output": [{"type": "message", "id": "msg_r", "status": "completed",
                                             "role": "assistant", "content": [refusal]}],
            "usage": {"input_tokens": 3, "output_tokens": 5, "total_tokens": 8}})

    def calls(self, marker: str) -> int:
        """Requests that reached this upstream with `marker` somewhere in their body."""
        return sum(marker in json.dumps(r["body"]) for r in self.requests)


async def _scripted(request: web.Request, body: dict[str, Any], message: dict[str, Any],
                    deltas: list[dict[str, Any]]) -> web.StreamResponse:
    base = {"id": "chatcmpl-scripted", "created": 1, "model": body["model"]}
    if not body.get("stream"):
        return web.json_response({**base, "object": "chat.completion", "usage": _usage(3, 5), "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}]})
    pieces = [(d, None) for d in [{"role": "assistant", "content": None}, *deltas]] + [({}, "stop")]
    return await _sse(request, [{**base, "object": "chat.completion.chunk",
                                 "choices": [{"index": 0, "delta": d, "logprobs": None, "finish_reason": f}]}
                                for d, f in pieces])


async def _sse(request: web.Request, chunks: list[dict[str, Any]]) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await resp.prepare(request)
    for chunk in chunks:
        await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


def prompt() -> str:
    """A prompt no other test sends: each test's entries are its own."""
    return f"cache test {uuid.uuid4().hex}"


_LIMITED = """  - name: limited-key
    key_hash: "{}"
    limits: [{{requests: 4, per: 1m}}, {{output_tokens: 30, per: 1m}}]
  - name: tight-key
    key_hash: "{}"
    limits: [{{output_tokens: 5, per: 1m}}]
  - name: drained-key
    key_hash: "{}"
    limits: [{{output_tokens: 30, per: 1m}}]
  - name: spent-key
    key_hash: "{}"
    budget: {{usd: 0.0000001, period: day}}
"""


def cache_config(openai_url: str, anthropic_url: str = "http://127.0.0.1:9", cache: str = "{backend: memory}",
                 extra: str = "", limited: bool = True) -> str:
    """`limited`: with the key whose in-memory limits refuse `--workers N`."""
    cached = ("gpt-4o-mini", "text-embedding-3-small", "truncated", "slow", "fail-500", "die-mid-stream", "oddshape",
              "refusing", "speaking", "silent", "scored")
    models = "\n".join(f"  - {{name: {m}, targets: [{{provider: up}}], cache: {{}}}}" for m in cached)
    return f"""
providers:
  - {{name: up, schema: openai, base_url: "{openai_url}", api_key: {UPSTREAM_SECRET},
     timeouts: {{connect: 2, first_byte: 5, idle: 5}}}}
  - {{name: claude, schema: anthropic, base_url: "{anthropic_url}", api_key: {UPSTREAM_SECRET}}}
models:
{models}
  - {{name: team-mini, targets: [{{provider: up, model: gpt-4o-mini}}], cache: {{scope: team}}}}
  - {{name: shared-mini, targets: [{{provider: up, model: gpt-4o-mini}}], cache: {{scope: "shared:docs"}}}}
  - {{name: shared-masked, targets: [{{provider: up, model: gpt-4o-mini}}], cache: {{scope: "shared:docs"}}}}
  - {{name: sampled-ok, targets: [{{provider: up, model: gpt-4o-mini}}], cache: {{deterministic_only: false}}}}
  - {{name: short-lived, targets: [{{provider: up, model: gpt-4o-mini}}], cache: {{ttl: 1s}}}}
  - {{name: guarded, targets: [{{provider: up, model: gpt-4o-mini}}], cache: {{}}}}
  - {{name: plugged, targets: [{{provider: up, model: gpt-4o-mini}}], cache: {{}}}}
  - {{name: uncached, targets: [{{provider: up, model: gpt-4o-mini}}]}}
  - {{name: claude-sonnet, targets: [{{provider: claude}}], cache: {{}}}}
  - {{name: stream-error, targets: [{{provider: claude}}], cache: {{}}}}
  - {{name: claude-over-chat, targets: [{{provider: up, model: gpt-4o-mini}}], cache: {{}}}}
keys:
  - {{name: test-key, key_hash: "{key_hash(TEST_KEY)}", team: red}}
  - {{name: other-key, key_hash: "{key_hash(OTHER_KEY)}", team: red}}
  - {{name: solo-key, key_hash: "{key_hash(SOLO_KEY)}"}}
{_LIMITED.format(key_hash(THIRD_KEY), key_hash(TIGHT_KEY), key_hash(DRAINED_KEY), key_hash(SPENT_KEY)) if limited else ""}teams: [{{name: red}}]
guardrails:
  - {{name: no-foxes, type: regex, action: block, deny: ["fox"], apply_to: [output], scope: {{models: [guarded]}}}}
  - {{name: other-sees-no-fox, type: regex, action: mask, deny: ["fox"], apply_to: [output],
     scope: {{keys: [other-key], models: [shared-masked]}}}}
plugins:
  - {{name: upper, module: "tests.plugin_fixture:scripted", config: {{on_chunk: replace}}, scope: {{models: [plugged]}}}}
cache: {cache}
{extra}
"""


def messages(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]
