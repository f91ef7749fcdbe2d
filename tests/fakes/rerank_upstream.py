"""Fake rerank servers, each in its provider's real wire format, on one port:

- vLLM's `POST /v1/rerank` (the Cohere/Jina shape: results with their documents, `usage.total_tokens`);
- Cohere's `POST /v2/rerank` (bearer key; strings in, indexes and scores out, `meta.billed_units`);
- Bedrock's agent-runtime `POST /rerank` (SigV4 checked as tests/fakes/bedrock_upstream.py does;
  `queries`/`sources`/`rerankingConfiguration` in, `results` with `relevanceScore` out).

Scores are deterministic: documents sharing more words with the query score higher. The model
"fail-400" makes each answer its provider's 400.
"""
from __future__ import annotations

from typing import Any

from aiohttp import web

from tests.fakes.base import FakeUpstream
from tests.fakes.bedrock_upstream import signature_ok
from tests.harness import UPSTREAM_SECRET


def score(query: str, text: str) -> float:
    words = set(query.lower().split())
    return round(len(words & set(text.lower().split())) / (len(words) or 1), 4)


def ranked(query: str, texts: list[str], top_n: int | None) -> list[tuple[int, float]]:
    order = sorted(((i, score(query, t)) for i, t in enumerate(texts)), key=lambda p: (-p[1], p[0]))
    return order[:top_n] if top_n else order


class FakeRerank(FakeUpstream):
    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/rerank", self.vllm)
        app.router.add_post("/v2/rerank", self.cohere)
        app.router.add_post("/rerank", self.bedrock)
        return app

    async def vllm(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        texts = [d if isinstance(d, str) else d["text"] for d in body["documents"]]
        results = [{"index": i, "document": {"text": texts[i]}, "relevance_score": s}
                   for i, s in ranked(body["query"], texts, body.get("top_n"))]
        return web.json_response({"id": "rerank-vllm-1", "model": body["model"],
                                  "usage": {"total_tokens": sum(len(t.split()) for t in texts) + 3}, "results": results})

    async def cohere(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        if request.headers.get("authorization") != f"Bearer {UPSTREAM_SECRET}":
            return web.json_response({"message": "invalid api token"}, status=401)
        if body["model"] == "fail-400":
            return web.json_response({"message": "invalid request: query must not be empty"}, status=400)
        if not all(isinstance(d, str) for d in body["documents"]):
            return web.json_response({"message": "documents must be strings"}, status=400)
        results = [{"index": i, "relevance_score": s} for i, s in ranked(body["query"], body["documents"], body.get("top_n"))]
        units = -(-len(body["documents"]) // 100)
        return web.json_response({"id": "07734bd2-2473-4f07-94e1-0d9f0e6843cf", "results": results,
                                  "meta": {"api_version": {"version": "2"}, "billed_units": {"search_units": units}}})

    async def bedrock(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body = await self._record(request)
        if not signature_ok(request.method, str(request.url), {k.lower(): v for k, v in request.headers.items()}, raw):
            return web.json_response({"message": "The request signature we calculated does not match."}, status=403)
        config = body["rerankingConfiguration"]["bedrockRerankingConfiguration"]
        if config["modelConfiguration"]["modelArn"].endswith("/fail-400"):
            return web.json_response({"message": "1 validation error detected: Value at 'queries' failed"}, status=400,
                                     headers={"x-amzn-ErrorType": "ValidationException:"})
        query = body["queries"][0]["textQuery"]["text"]
        texts = [s["inlineDocumentSource"]["textDocument"]["text"] for s in body["sources"]]
        results: list[dict[str, Any]] = [{"index": i, "relevanceScore": s}
                                         for i, s in ranked(query, texts, config.get("numberOfResults"))]
        return web.json_response({"results": results})
