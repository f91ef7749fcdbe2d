"""on_complete: POST each request's usage record as JSON to a URL (a custom sink).

    config:
      url: https://hooks.example.com/tollway
      headers: {authorization: "Bearer ${HOOK_TOKEN}"}
    timeout_ms: 2000          # the plugin entry's: each POST is bounded by it

The body is the record's fields (docs/ledger.md: counts, names, times; never a prompt) plus
`metadata` (what earlier stages left in ctx.metadata). It runs after the response went out,
in a background task: a slow receiver never delays a client (and, past the gateway's bound of
queued calls, records are dropped and counted, not buffered without end).
"""
from __future__ import annotations

import asyncio
import urllib.request
from typing import Any

import msgspec

from tollway.gateway.plugins.api import RequestContext, UsageRecord


class WebhookSink:
    def __init__(self, config: dict[str, Any]) -> None:
        url = config.get("url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ValueError("config.url: an http:// or https:// URL is required")
        self.url = url
        self.headers = {"content-type": "application/json", **{str(k): str(v) for k, v in config.get("headers", {}).items()}}
        self.timeout = float(config.get("timeout_seconds", 5))

    async def on_complete(self, ctx: RequestContext, record: UsageRecord) -> None:
        payload = msgspec.json.encode({**msgspec.structs.asdict(record), "metadata": ctx.metadata})
        await asyncio.to_thread(self._post, payload)

    def _post(self, payload: bytes) -> None:
        req = urllib.request.Request(self.url, data=payload, headers=self.headers, method="POST")
        with urllib.request.urlopen(req, timeout=self.timeout) as resp:
            resp.read()


def factory(config: dict[str, Any]) -> WebhookSink:
    return WebhookSink(config)
