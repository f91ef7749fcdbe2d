"""A fake vLLM replica: the OpenAI wire format vLLM serves, and vLLM's Prometheus metrics.

It answers `POST /v1/chat/completions` and KServe's `POST /openai/v1/chat/completions` (JSON
and SSE, with the usage chunk when asked), and `GET /metrics` in the Prometheus text format
with vLLM's names (`vllm:num_requests_waiting`, `vllm:num_requests_running`,
`vllm:kv_cache_usage_perc`, or the pre-0.10 `vllm:gpu_cache_usage_perc`). Tests set the queue
depth and cache use it reports, make it fail with a status, and kill it (its port then
refuses connections). Each answer names the replica in `system_fingerprint`, so a client can
count who served it; `served` counts it on the replica side.

`python -m tests.fakes.vllm_replica --name vllm-a --port 8000` serves one on all interfaces
in the foreground: the docker compose example (deploy/compose) runs two of them.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from aiohttp import web

from tests.harness import ThreadedServer

REPLY = "Hello from vLLM"


def stopped(body: dict[str, Any]) -> tuple[str, str | None]:
    """The reply cut before the first of the request's `stop` strings it holds, and that string:
    vLLM's `stop_reason` (None when the model ended on its own, as it does here otherwise)."""
    stops = body.get("stop") or []
    at, matched = min(((REPLY.find(s), s) for s in ([stops] if isinstance(stops, str) else stops) if s in REPLY),
                      default=(len(REPLY), None))
    return REPLY[:at], matched


class FakeVLLMReplica:
    def __init__(self, name: str, model: str = "meta-llama/Meta-Llama-3-8B-Instruct", port: int | None = None,
                 legacy_cache_metric: bool = False, start: bool = True) -> None:
        self.name, self.model = name, model
        self.waiting = 0.0  # what /metrics reports as the queue
        self.kv_cache = 0.0
        self.fail_status: int | None = None  # answer completions with this status ...
        self.fail_times: int | None = None  # ... this many times (None: every time)
        self.retry_after: str | None = None  # sent with the failures
        self.delay = 0.0  # seconds before answering
        self.legacy_cache_metric = legacy_cache_metric
        self.served = 0
        self.scrapes = 0
        self.running = 0
        self.models_seen: list[str] = []
        self.metrics_padding = 0  # bytes of comment lines after the samples: an oversized exposition
        self.metrics_trickle = 0.0  # seconds between the exposition's lines (0: sent at once)
        if not start:  # the foreground server of main() builds the app itself
            return
        self.server = ThreadedServer(self._app, port)
        self.port = self.server.port
        self.origin = f"http://127.0.0.1:{self.port}"
        self.url = self.origin + "/v1"

    def kill(self) -> None:
        """Stop serving: the port refuses connections from now on."""
        self.server.stop()

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/openai/v1/chat/completions", self.chat)
        app.router.add_get("/metrics", self.metrics)
        return app

    async def metrics(self, request: web.Request) -> web.Response:
        self.scrapes += 1
        labels = f'{{engine="0",model_name="{self.model}"}}'
        cache = "vllm:gpu_cache_usage_perc" if self.legacy_cache_metric else "vllm:kv_cache_usage_perc"
        text = (
            "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
            "# TYPE vllm:num_requests_running gauge\n"
            f"vllm:num_requests_running{labels} {float(self.running)}\n"
            "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
            "# TYPE vllm:num_requests_waiting gauge\n"
            f"vllm:num_requests_waiting{labels} {float(self.waiting)}\n"
            f"# HELP {cache} KV-cache usage. 1 means 100 percent usage.\n"
            f"# TYPE {cache} gauge\n"
            f"{cache}{labels} {float(self.kv_cache)}\n"
            "# TYPE vllm:prompt_tokens_total counter\n"
            f"vllm:prompt_tokens_total{labels} {float(self.served * 10)}\n"
        )
        if self.metrics_padding:
            text += ("# " + "x" * 1000 + "\n") * (self.metrics_padding // 1002 + 1)
        if not self.metrics_trickle:
            return web.Response(text=text, content_type="text/plain", charset="utf-8")
        resp = web.StreamResponse(headers={"content-type": "text/plain; charset=utf-8"})
        await resp.prepare(request)
        try:
            for line in text.splitlines(keepends=True):  # each line under any idle timeout
                await resp.write(line.encode())
                await asyncio.sleep(self.metrics_trickle)
            await resp.write_eof()
        except ConnectionError:
            pass
        return resp

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.models_seen.append(body.get("model", ""))
        if self.fail_status is not None and self.fail_times != 0:
            if self.fail_times is not None:
                self.fail_times -= 1
            headers = {"retry-after": self.retry_after} if self.retry_after else None
            return web.json_response({"object": "error", "message": "replica unavailable", "type": "ServiceUnavailable",
                                      "param": None, "code": self.fail_status}, status=self.fail_status, headers=headers)
        self.running += 1
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            self.served += 1
            if body.get("stream"):
                return await self._stream(request, body)
            return web.json_response(self._completion(body))
        finally:
            self.running -= 1

    def _base(self, body: dict[str, Any], kind: str) -> dict[str, Any]:
        return {"id": f"chatcmpl-{self.name}-{self.served}", "object": kind, "created": int(time.time()),
                "model": body.get("model", self.model), "system_fingerprint": self.name}

    def _completion(self, body: dict[str, Any]) -> dict[str, Any]:
        reply, matched = stopped(body)
        return {**self._base(body, "chat.completion"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "logprobs": None,
                             "finish_reason": "stop", "stop_reason": matched}],
                "usage": {"prompt_tokens": 7, "completion_tokens": 4, "total_tokens": 11}}

    async def _stream(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        base = self._base(body, "chat.completion.chunk")

        async def send(doc: dict[str, Any]) -> None:
            await resp.write(b"data: " + json.dumps(doc).encode() + b"\n\n")

        reply, matched = stopped(body)
        await send({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}]})
        for word in reply.split(" "):
            await send({**base, "choices": [{"index": 0, "delta": {"content": word + " "}, "logprobs": None, "finish_reason": None}]})
        await send({**base, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop",
                                         "stop_reason": matched}]})
        if (body.get("stream_options") or {}).get("include_usage"):
            await send({**base, "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 4, "total_tokens": 11}})
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


def main() -> None:
    parser = argparse.ArgumentParser(description="A fake vLLM replica (OpenAI API + vLLM metrics).")
    parser.add_argument("--name", default="vllm")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--waiting", type=float, default=0.0, help="the queue depth /metrics reports")
    args = parser.parse_args()
    replica = FakeVLLMReplica(args.name, start=False)
    replica.waiting = args.waiting
    web.run_app(replica._app(), host=args.host, port=args.port, access_log=None)


if __name__ == "__main__":
    main()
