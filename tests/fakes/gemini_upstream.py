"""A fake Google Gemini backend: the Gemini API and Vertex AI paths, and an OAuth token endpoint.

`…/models/{model}:generateContent` answers a GenerateContentResponse and
`:streamGenerateContent?alt=sse` SSE fragments separated by CRLF as Google sends them, with
`usageMetadata` (cached content and thought tokens included). Gemini API calls must carry
`x-goog-api-key: API_KEY` (and no `key=` in the URL); Vertex calls must carry a bearer token
that `POST /token` issued, which is where the service-account file used by the tests points
its `token_uri`; every token grant is counted. A request offering tools gets a functionCall
(with finishReason STOP, as Gemini says) of the first declared function that no
functionResponse in the conversation answers yet (none when all are answered), with no call
id, as Gemini sends it: a tool loop calls one function a turn. A Gemini 3 model (`gemini-3…`)
signs each functionCall (`thoughtSignature`, "sig-<function>") and, as Gemini 3 does, refuses
with 400 a history whose model turn starts its calls without a signature (it takes its own, and
Google's documented stand-in `skip_thought_signature_validator`). Model `exhausted` gets 429
RESOURCE_EXHAUSTED; model `blocked` is a prompt Gemini's filters blocked
(`promptFeedback.blockReason`, no candidates; streamed, the one fragment); an
empty text part is Vertex AI's 400 (the streaming endpoint's error body a JSON array); a stream
of model `stream-error-N` is one error fragment whose code is N; a streamed answer of model
`parallel-calls` calls every unanswered function at once, one fragment of several functionCall
parts, as Gemini's parallel function calling does. Model `finish-<REASON>` ends its candidate
with finishReason <REASON> and no content, as Gemini ends a generation that failed (a
MALFORMED_FUNCTION_CALL answer has only the prompt's usage); streamed, after a fragment of text,
or (model `finish-at-once-<REASON>`) as the stream's one fragment.
Embeddings: Vertex's `:predict` (`instances[].content`, `parameters.outputDimensionality`;
answers `predictions[].embeddings.{values, statistics.token_count}`; a `gemini-embedding-*`
model takes one instance, as on Vertex) and the Gemini API's `:batchEmbedContents` (each
request must name `models/{model}` of the URL; answers `embeddings[].values`, no counts).
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.fakes.base import FakeUpstream
from tests.fakes.bedrock_upstream import embedding_of, token_count

API_KEY = "gemini-api-key-SECRET-987654"
REPLY = "Hello from the fake Gemini upstream"
TOOL_ARGS = {"city": "Paris"}
SKIP_SIGNATURE = "skip_thought_signature_validator"
USAGE = {"promptTokenCount": 40, "candidatesTokenCount": 10, "totalTokenCount": 56, "cachedContentTokenCount": 16,
         "thoughtsTokenCount": 6}


def _call_part(model: str, tool: str) -> dict[str, Any]:
    part: dict[str, Any] = {"functionCall": {"name": tool, "args": TOOL_ARGS}}
    if model.startswith("gemini-3"):
        part["thoughtSignature"] = "sig-" + tool
    return part


def unsigned_call(body: dict[str, Any]) -> str | None:
    """Gemini 3's check: the name of a model turn's first functionCall sent back without a
    signature it gave (or the stand-in), else None."""
    for content in body.get("contents") or []:
        calls = [p for p in content.get("parts") or [] if "functionCall" in p]
        if content.get("role") == "model" and calls:
            signature = calls[0].get("thoughtSignature")
            if signature not in ("sig-" + calls[0]["functionCall"]["name"], SKIP_SIGNATURE):
                return str(calls[0]["functionCall"]["name"])
    return None


def fragments(model: str, with_tool: bool, tool: str = "get_weather", more: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The GenerateContentResponse fragments of one streamed answer: text, then maybe a call of
    `tool` (and of each of `more`, in the same fragment)."""
    words = REPLY.split(" ")
    out: list[dict[str, Any]] = [{"candidates": [{"content": {"role": "model", "parts": [{"text": "thinking...", "thought": True}]},
                                                  "index": 0}], "modelVersion": model, "responseId": "resp-fake-1"}]
    for i, word in enumerate(words):
        out.append({"candidates": [{"content": {"role": "model", "parts": [{"text": word if i == 0 else " " + word}]}, "index": 0}],
                    "usageMetadata": {"promptTokenCount": 40, "candidatesTokenCount": i + 1, "totalTokenCount": 41 + i},
                    "modelVersion": model, "responseId": "resp-fake-1"})
    if with_tool:
        calls = [_call_part(model, name) for name in (tool, *more)]
        out.append({"candidates": [{"content": {"role": "model", "parts": calls},
                                    "index": 0}], "modelVersion": model, "responseId": "resp-fake-1"})
    out[-1]["candidates"][0]["finishReason"] = "STOP"
    out[-1]["usageMetadata"] = USAGE
    return out


def sse_bytes(model: str, with_tool: bool, tool: str = "get_weather", more: Sequence[str] = ()) -> list[bytes]:
    return [b"data: " + json.dumps(f).encode() + b"\r\n\r\n" for f in fragments(model, with_tool, tool, more)]


def whole_body(model: str, with_tool: bool, tool: str = "get_weather") -> dict[str, Any]:
    parts: list[dict[str, Any]] = [{"text": "thinking...", "thought": True}, {"text": REPLY}]
    if with_tool:
        parts.append(_call_part(model, tool))
    return {"candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}],
            "usageMetadata": USAGE, "modelVersion": model, "responseId": "resp-fake-1"}


def blocked_prompt(model: str, reason: str = "PROHIBITED_CONTENT") -> dict[str, Any]:
    """Gemini's answer to a prompt its filters blocked: no candidates, `promptFeedback.blockReason`
    and the prompt's usage; streamed, it is the one fragment of the stream."""
    return {"promptFeedback": {"blockReason": reason}, "usageMetadata": {"promptTokenCount": 12, "totalTokenCount": 12},
            "modelVersion": model, "responseId": "resp-fake-blocked"}


def failed_finish(model: str, reason: str) -> dict[str, Any]:
    """A candidate Gemini ended with `reason` and no content (as it sends MALFORMED_FUNCTION_CALL):
    the answer, or the last fragment of a stream."""
    return {"candidates": [{"finishReason": reason, "index": 0}],
            "usageMetadata": {"promptTokenCount": 40, "totalTokenCount": 40}, "modelVersion": model,
            "responseId": "resp-fake-failed"}


def failed_stream(model: str, reason: str, at_once: bool = False) -> list[bytes]:
    """A stream whose candidate ends with `reason` and no content: when its text is under way,
    or `at_once`, in its one fragment."""
    start = {"candidates": [{"content": {"role": "model", "parts": [{"text": "Let me look"}]}, "index": 0}],
             "modelVersion": model, "responseId": "resp-fake-failed"}
    frags = [failed_finish(model, reason)] if at_once else [start, failed_finish(model, reason)]
    return [b"data: " + json.dumps(f).encode() + b"\r\n\r\n" for f in frags]


def empty_text_at(body: dict[str, Any]) -> str | None:
    """Where a request holds a text part Gemini refuses as empty (Vertex AI's 400), else None."""
    for where, content in [("systemInstruction", body.get("systemInstruction") or {}),
                           *((f"contents[{i}]", c) for i, c in enumerate(body.get("contents") or []))]:
        if any(p.get("text") == "" for p in content.get("parts") or []):
            return where
    return None


def error_list(status: int, state: str, message: str) -> list[dict[str, Any]]:
    """An error body as Google's streaming endpoint sends it: the error object inside a JSON array."""
    return [{"error": {"code": status, "message": message, "status": state}}]


def unanswered_tools(body: dict[str, Any]) -> list[str]:
    """The declared functions that no functionResponse in the conversation answers yet."""
    answered = {p["functionResponse"]["name"] for c in body.get("contents") or [] for p in c.get("parts") or []
                if "functionResponse" in p}
    declared = [f["name"] for t in body.get("tools") or [] for f in t.get("functionDeclarations") or []]
    return [name for name in declared if name not in answered]


def next_tool(body: dict[str, Any]) -> str | None:
    """The first declared function that no functionResponse in the conversation answers yet."""
    return next(iter(unanswered_tools(body)), None)


def _error(status: int, state: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": status, "message": message, "status": state}}, status=status)


class FakeGemini(FakeUpstream):
    def __init__(self, token_lifetime: int = 3600, grants_tokens: bool = True) -> None:
        self.tokens_issued = 0
        self.token_requests = 0  # every call to /token, granted or refused
        self.token_lifetime = token_lifetime  # `expires_in` of each grant (a short-lived token: under 5 minutes)
        self.grants_tokens = grants_tokens  # False: every grant is refused as a revoked key's would be
        self.revoked: set[str] = set()  # tokens issued, then revoked before their expiry: a 401
        super().__init__()

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/token", self.token)
        app.router.add_post("/{tail:.*}", self.generate)
        return app

    async def token(self, request: web.Request) -> web.Response:
        form = await request.post()
        self.token_requests += 1
        if not self.grants_tokens:
            return web.json_response({"error": "invalid_grant", "error_description": "Invalid JWT Signature."}, status=400)
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer" or str(form.get("assertion", "")).count(".") != 2:
            return web.json_response({"error": "invalid_grant"}, status=400)
        self.tokens_issued += 1
        return web.json_response({"access_token": f"ya29.fake-{self.tokens_issued}", "expires_in": self.token_lifetime, "token_type": "Bearer"})

    def _refuse(self, request: web.Request, vertex: bool) -> web.Response | None:
        if "key" in request.query:
            return _error(400, "INVALID_ARGUMENT", "the API key must not be sent in the URL")
        if vertex:
            bearer = request.headers.get("authorization", "")
            if not bearer.startswith("Bearer ya29.fake-") or bearer.removeprefix("Bearer ") in self.revoked:
                return _error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.")
        elif request.headers.get("x-goog-api-key") != API_KEY:
            return web.json_response({"error": {"code": 400, "message": "API key not valid. Please pass a valid API key.",
                                                "status": "INVALID_ARGUMENT", "details": [{"reason": "API_KEY_INVALID"}]}}, status=400)
        return None

    async def generate(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        model, _, method = path.rsplit("/", 1)[-1].partition(":")
        body = await request.json()
        vertex = "/publishers/google/models/" in path
        self.requests.append({"path": path, "query": dict(request.query), "model": model, "method": method,
                              "headers": {k.lower(): v for k, v in request.headers.items()}, "body": body})
        refused = self._refuse(request, vertex)
        if refused is not None:
            return refused
        if model == "exhausted":
            return _error(429, "RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota).")
        embed = {"predict": self.predict, "batchEmbedContents": self.batch_embed}.get(method)
        if embed is not None:
            return embed(model, body, vertex)
        unsigned = unsigned_call(body) if model.startswith("gemini-3") else None
        if unsigned is not None:
            return _error(400, "INVALID_ARGUMENT", f"Function call `{unsigned}` in the 1. content block is missing "
                          "a `thought_signature`.")
        if empty_text_at(body) is not None:  # (the streaming endpoint wraps its errors in an array)
            message = ("Unable to submit request because it has an empty text parameter. Add a value to the "
                       "parameter and try again.")
            if method == "streamGenerateContent":
                return web.json_response(error_list(400, "INVALID_ARGUMENT", message), status=400)
            return _error(400, "INVALID_ARGUMENT", message)
        if model == "blocked":
            if method == "generateContent":
                return web.json_response(blocked_prompt(model))
            resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
            await resp.prepare(request)
            await resp.write(b"data: " + json.dumps(blocked_prompt(model)).encode() + b"\r\n\r\n")
            await resp.write_eof()
            return resp
        failed = model.removeprefix("finish-").removeprefix("at-once-") if model.startswith("finish-") else None
        if failed is not None and method == "generateContent":
            return web.json_response(failed_finish(model, failed))
        tool = next_tool(body)
        if method == "generateContent":
            return web.json_response(whole_body(model, tool is not None, tool or ""))
        if method != "streamGenerateContent" or request.query.get("alt") != "sse":
            return _error(404, "NOT_FOUND", f"unknown method {method}")
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        if model.startswith("stream-error-"):  # a stream whose first fragment is an error with this code
            code = int(model.removeprefix("stream-error-"))
            await resp.write(b"data: " + json.dumps({"error": {"code": code, "message": "boom"}}).encode() + b"\r\n\r\n")
            await resp.write_eof()
            return resp
        more = unanswered_tools(body)[1:] if model == "parallel-calls" else []
        events = (failed_stream(model, failed, model.startswith("finish-at-once-")) if failed is not None else sse_bytes(model, tool is not None, tool or "", more))
        for event in events:
            await resp.write(event)
        await resp.write_eof()
        return resp

    def predict(self, model: str, body: dict[str, Any], vertex: bool) -> web.Response:
        instances = body.get("instances") or []
        if not vertex or not instances or not all(isinstance(i.get("content"), str) for i in instances):
            return _error(400, "INVALID_ARGUMENT", "Invalid JSON payload: instances[].content is required.")
        if model.startswith("gemini-embedding") and len(instances) > 1:
            return _error(400, "INVALID_ARGUMENT", "Unable to submit request because the model supports only "
                                                   "1 instance per request.")
        size = (body.get("parameters") or {}).get("outputDimensionality", 768)
        return web.json_response({"predictions": [
            {"embeddings": {"statistics": {"truncated": False, "token_count": token_count(i["content"])},
                            "values": embedding_of(i["content"], size)}} for i in instances],
            "metadata": {"billableCharacterCount": sum(len(i["content"]) for i in instances)}})

    def batch_embed(self, model: str, body: dict[str, Any], vertex: bool) -> web.Response:
        requests = body.get("requests") or []
        if vertex or not requests:
            return _error(400, "INVALID_ARGUMENT", "requests is required.")
        out = []
        for i, r in enumerate(requests):
            if r.get("model") != f"models/{model}":
                return _error(400, "INVALID_ARGUMENT", f"requests[{i}].model must be models/{model}.")
            text = "".join(p.get("text", "") for p in (r.get("content") or {}).get("parts", []))
            out.append({"values": embedding_of(text, r.get("outputDimensionality", 768))})
        return web.json_response({"embeddings": out})


def service_account_file(directory: Path, token_uri: str) -> Path:
    """A Google service-account key file (a fresh RSA key) whose token endpoint is `token_uri`,
    e.g. this fake's /token, so google-auth runs its real JWT-bearer flow against the fake."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path = directory / "sa.json"
    path.write_text(json.dumps({
        "type": "service_account", "project_id": "proj-1", "private_key_id": "k1", "private_key": pem.decode(),
        "client_email": "tollway@proj-1.iam.gserviceaccount.com", "client_id": "1", "token_uri": token_uri}))
    return path
