"""Load-test any Tollway deployment with locust: chat completions, streamed and not.

    TOLLWAY_URL=https://gateway.internal TOLLWAY_KEY=sk-... TOLLWAY_MODEL=gpt-4o-mini \\
        locust -f bench/locustfile.py --headless -u 50 -r 10 -t 1m

TOLLWAY_URL is the gateway's base URL (without /v1), TOLLWAY_KEY a gateway key, TOLLWAY_MODEL a
public model name from its config. Requests are plain HTTP (no SDK) so the numbers measure the
gateway, not SDK parsing. The stream task reports two timings: the whole stream, and
"TTFT" (request sent until the first `data:` event), the figure users feel.
"""
from __future__ import annotations

import json
import os
import time

from locust import HttpUser, between, task

URL = os.environ.get("TOLLWAY_URL", "http://127.0.0.1:8080").rstrip("/")
KEY = os.environ.get("TOLLWAY_KEY", "tollway-demo-key")
MODEL = os.environ.get("TOLLWAY_MODEL", "gpt-4o-mini")
MESSAGES = [
    {"role": "system", "content": "You are a terse assistant."},
    {"role": "user", "content": "In one sentence: why does tail latency matter behind a gateway?"},
]


class GatewayUser(HttpUser):
    host = URL
    wait_time = between(0.0, 0.1)
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}

    @task(3)
    def chat(self) -> None:
        body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 64}
        with self.client.post("/v1/chat/completions", data=json.dumps(body), headers=self.headers,
                              name="chat", catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"status {resp.status_code}: {resp.text[:200]}")
            elif "choices" not in resp.json():
                resp.failure("no choices in the answer")

    @task(1)
    def chat_stream(self) -> None:
        body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 64, "stream": True,
                "stream_options": {"include_usage": True}}
        start = time.perf_counter()
        first_event = None
        done = False
        with self.client.post("/v1/chat/completions", data=json.dumps(body), headers=self.headers,
                              name="chat stream", stream=True, catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"status {resp.status_code}")
                return
            tail = b""
            for chunk in resp.iter_content(chunk_size=None):
                seen = tail + chunk  # a marker may straddle two reads
                if first_event is None and b"data:" in seen:
                    first_event = time.perf_counter()
                done = done or b"data: [DONE]" in seen
                tail = seen[-16:]
            if not done:
                resp.failure("stream ended without data: [DONE]")
        if first_event is not None:
            self.environment.events.request.fire(
                request_type="SSE", name="TTFT", response_time=(first_event - start) * 1000,
                response_length=0, exception=None, context={})
