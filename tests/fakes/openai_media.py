"""The fake OpenAI upstream's endpoints beyond chat: moderations, images, audio, rerank.

Each answers in OpenAI's wire format (and rerank in the Cohere/Jina shape vLLM serves), and
records what it got like the chat routes do (multipart bodies as their fields, files by name,
size and content type), so tests can check what the gateway forwarded. Mixed into
`tests.fakes.openai_upstream.FakeOpenAI`, whose `_app` calls `add_media_routes`.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from aiohttp import web

# OpenAI's own 400s for caps it refuses (tests/recorded/README.md).
RECORDED_ERRORS = json.loads((Path(__file__).parent.parent / "recorded" / "chat_validation_errors.json").read_text())
REASONING_PREFIXES = ("o1", "o3", "o4", "gpt-5")

CATEGORIES = ("harassment", "harassment/threatening", "hate", "hate/threatening", "illicit", "illicit/violent",
              "self-harm", "self-harm/instructions", "self-harm/intent", "sexual", "sexual/minors", "violence",
              "violence/graphic")


def recorded_validation_error(body: dict[str, Any]) -> web.Response | None:
    """The 400 OpenAI answers a chat body whose `max_tokens` it refuses, or None."""
    cap = body.get("max_tokens")
    if cap is None:
        return None
    if str(body.get("model", "")).startswith(REASONING_PREFIXES):
        return web.json_response(RECORDED_ERRORS["max_tokens_reasoning"], status=400)
    if isinstance(cap, int) and cap < 1:
        recorded = RECORDED_ERRORS.get(f"max_tokens_{cap}")
        if recorded is None:  # the same words for any other value below 1
            recorded = json.loads(json.dumps(RECORDED_ERRORS["max_tokens_-1"]).replace("got -1", f"got {cap}"))
        return web.json_response(recorded, status=400)
    return None


class MediaEndpoints:
    """Handlers for the non-chat OpenAI paths; needs the `requests` list and `_record` of FakeUpstream."""

    requests: list[dict[str, Any]]

    async def _record(self, request: web.Request) -> dict[str, Any]:  # (FakeUpstream's)
        raise NotImplementedError

    def add_media_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/moderations", self.moderations)

    async def moderations(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        results = []
        for text in inputs:
            flagged = "kill" in str(text)
            results.append({
                "flagged": flagged,
                "categories": {c: flagged and c == "violence" for c in CATEGORIES},
                "category_scores": {c: 0.91 if flagged and c == "violence" else 0.0001 for c in CATEGORIES},
                "category_applied_input_types": {c: ["text"] for c in CATEGORIES},
            })
        return web.json_response({"id": f"modr-{int(time.time())}", "model": body.get("model", "omni-moderation-latest"),
                                  "results": results})
