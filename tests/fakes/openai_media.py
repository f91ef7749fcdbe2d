"""The fake OpenAI upstream's endpoints beyond chat: moderations, images, audio, rerank.

Each answers in OpenAI's wire format (and rerank in the Cohere/Jina shape vLLM serves), and
records what it got like the chat routes do (multipart bodies as their fields, files by name,
size and content type), so tests can check what the gateway forwarded. Mixed into
`tests.fakes.openai_upstream.FakeOpenAI`, whose `_app` calls `add_media_routes`.
"""
from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path
from typing import Any

from aiohttp import web

# OpenAI's own 400s for caps it refuses (tests/recorded/README.md).
RECORDED_ERRORS = json.loads((Path(__file__).parent.parent / "recorded" / "chat_validation_errors.json").read_text())
REASONING_PREFIXES = ("o1", "o3", "o4", "gpt-5")

# Usages of a transcript that are no number a decoder can hold: past a float's range, or a
# token count written as a float far past an int64.
HOSTILE_USAGES = {"seconds": b'{"type": "duration", "seconds": 1e999}',
                  "tokens": b'{"type": "tokens", "input_tokens": 1e30, "output_tokens": 5}'}

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
        app.router.add_post("/v1/images/generations", self.images)
        app.router.add_post("/v1/images/edits", self.image_edits)
        app.router.add_post("/v1/audio/transcriptions", self.transcriptions)
        app.router.add_post("/v1/audio/translations", self.transcriptions)
        app.router.add_post("/v1/audio/speech", self.speech)
        for path in ("images/generations", "images/edits", "audio/transcriptions", "audio/speech"):
            app.router.add_post("/openai/deployments/{deployment}/" + path, self.azure_media)

    async def azure_media(self, request: web.Request) -> web.StreamResponse:
        """Azure's deployment URLs: the deployment names the model, `api-key` authenticates."""
        if request.query.get("api-version") is None or request.headers.get("api-key") is None:
            return web.json_response({"error": {"message": "Missing api-version or api-key.",
                                                "type": "invalid_request_error", "param": None, "code": None}}, status=400)
        tail = request.path.split("/", 4)[-1]
        handler = {"images/generations": self.images, "images/edits": self.image_edits,
                   "audio/transcriptions": self.transcriptions, "audio/speech": self.speech}[tail]
        return await handler(request)

    async def _record_form(self, request: web.Request) -> dict[str, Any]:
        """Remember a multipart request: its plain fields, and each file's name, size and type."""
        form = await request.post()
        fields: dict[str, Any] = {}
        files: list[dict[str, Any]] = []
        for name, value in form.items():
            if isinstance(value, web.FileField):
                data = value.file.read()
                files.append({"field": name, "filename": value.filename, "content_type": value.content_type,
                              "size": len(data), "head": data[:16]})
            else:
                fields.setdefault(name, value)
        self.requests.append({"path": request.path, "headers": {k.lower(): v for k, v in request.headers.items()},
                              "body": fields, "files": files})
        return fields

    # -- images ---------------------------------------------------------------------------

    def _image_answer(self, fields: dict[str, Any], prompt: str) -> dict[str, Any]:
        model = str(fields.get("model") or "dall-e-2")
        n = int(fields.get("n") or 1)
        if model.startswith("gpt-image"):  # base64 images and token usage, and what it made
            quality = fields.get("quality") or "high"
            return {"created": int(time.time()), "background": "opaque", "output_format": "png",
                    "quality": quality, "size": fields.get("size") or "1024x1024",
                    "data": [{"b64_json": "iVBORw0KGgo="} for _ in range(n)],
                    "usage": {"input_tokens": 50, "output_tokens": 4160 * n, "total_tokens": 50 + 4160 * n,
                              "input_tokens_details": {"text_tokens": 10, "image_tokens": 40}}}
        return {"created": int(time.time()),  # dall-e: URLs, and no usage at all
                "data": [{"url": f"https://images.example/{i}.png", "revised_prompt": prompt} for i in range(n)]}

    async def images(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        if body.get("stream"):
            return await self._image_stream(request, body, "image_generation")
        return web.json_response(self._image_answer(body, body.get("prompt", "")))

    async def image_edits(self, request: web.Request) -> web.StreamResponse:
        fields = await self._record_form(request)
        if not self.requests[-1]["files"]:
            return web.json_response({"error": {"message": "Missing required parameter: 'image'.", "type":
                                                "invalid_request_error", "param": "image", "code": "missing_required_parameter"}},
                                     status=400)
        if fields.get("stream") == "true":
            return await self._image_stream(request, fields, "image_edit")
        return web.json_response(self._image_answer(fields, fields.get("prompt", "")))

    async def _image_stream(self, request: web.Request, fields: dict[str, Any], kind: str) -> web.StreamResponse:
        """gpt-image-1's stream: partial images, then the completed one with its usage."""
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(2):
            event = {"type": f"{kind}.partial_image", "b64_json": "iVBORw0KGgo=", "partial_image_index": i,
                     "created_at": int(time.time()), "size": "1024x1024", "quality": "medium", "background": "opaque",
                     "output_format": "png"}
            await resp.write(f"event: {kind}.partial_image\ndata: {json.dumps(event)}\n\n".encode())
        done = {"type": f"{kind}.completed", "b64_json": "iVBORw0KGgo=", "created_at": int(time.time()),
                "size": "1024x1024", "quality": "medium", "background": "opaque", "output_format": "png",
                "usage": {"input_tokens": 50, "output_tokens": 1056, "total_tokens": 1106,
                          "input_tokens_details": {"text_tokens": 50, "image_tokens": 0}}}
        await resp.write(f"event: {kind}.completed\ndata: {json.dumps(done)}\n\n".encode())
        await resp.write_eof()
        return resp

    # -- audio ----------------------------------------------------------------------------

    async def transcriptions(self, request: web.Request) -> web.StreamResponse:
        fields = await self._record_form(request)
        files = [f for f in self.requests[-1]["files"] if f["field"] == "file"]
        if not files:
            return web.json_response({"error": {"message": "Missing required parameter: 'file'.", "type":
                                                "invalid_request_error", "param": "file", "code": None}}, status=400)
        model = fields.get("model", "")
        text = TRANSCRIPT
        if fields.get("stream") == "true":
            resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
            await resp.prepare(request)
            for i, word in enumerate(text.split(" ")):
                delta = {"type": "transcript.text.delta", "delta": word if i == 0 else " " + word, "logprobs": None}
                await resp.write(b"data: " + json.dumps(delta).encode() + b"\n\n")
            done = {"type": "transcript.text.done", "text": text, "logprobs": None, "usage": TOKEN_USAGE}
            await resp.write(b"data: " + json.dumps(done).encode() + b"\n\n")
            await resp.write_eof()
            return resp
        fmt = fields.get("response_format") or "json"
        if fmt == "text":
            return web.Response(text=text + "\n", content_type="text/plain")
        if model == "whisper-hostile":  # a usage no JSON decoder reads as a number (`prompt` picks which)
            usage_json = HOSTILE_USAGES[str(fields.get("prompt") or "seconds")]
            return web.Response(body=b'{"text": "' + text.encode() + b'", "usage": ' + usage_json + b"}",
                                content_type="application/json")
        if model == "whisper-1":
            usage = {"type": "duration", "seconds": 9}
        else:
            usage = TOKEN_USAGE
        answer: dict[str, Any] = {"text": text, "usage": usage}
        if fmt == "verbose_json":
            answer = {"task": "transcribe", "language": "english", "duration": 8.47, "text": text,
                      "segments": [], "usage": usage}
        return web.json_response(answer)

    async def speech(self, request: web.Request) -> web.StreamResponse:
        """Audio bytes in pieces, as OpenAI streams them (chunked, audio/mpeg)."""
        body = await self._record(request)
        if body.get("stream_format") == "sse":  # gpt-4o-mini-tts: base64 audio events, then the usage
            resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
            await resp.prepare(request)
            for piece in speech_audio(body.get("input", "")):
                delta = {"type": "speech.audio.delta", "audio": base64.b64encode(piece).decode()}
                await resp.write(b"data: " + json.dumps(delta).encode() + b"\n\n")
            done = {"type": "speech.audio.done", "usage": {"input_tokens": 7, "output_tokens": 120, "total_tokens": 127}}
            await resp.write(b"data: " + json.dumps(done).encode() + b"\n\n")
            await resp.write_eof()
            return resp
        pieces = speech_audio(body.get("input", ""))
        if body.get("input") == "leak":  # a hostile upstream: its credential inside the audio bytes
            pieces.insert(1, request.headers.get("authorization", "").encode())
        if body.get("input") == "leak-split":  # the same, split across two writes (two chunks)
            auth = request.headers.get("authorization", "").encode()
            pieces[1:1] = [pieces[0][-5:] + auth[:14], auth[14:]]
        if body.get("input", "").startswith("stall-held"):  # a first piece the gateway holds back whole:
            pieces.insert(0, request.headers.get("authorization", "").removeprefix("Bearer ")[:6].encode())  # a key's start
        resp = web.StreamResponse(headers={"content-type": "audio/mpeg"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i, piece in enumerate(pieces):
            await resp.write(piece)
            # "stall": the rest comes late (a client that gives up leaves mid-answer)
            await asyncio.sleep(10 if i == 0 and body.get("input", "").startswith("stall") else 0.01)
        await resp.write_eof()
        return resp


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


TRANSCRIPT = "The quick brown fox jumped over the lazy dog."
TOKEN_USAGE = {"type": "tokens", "input_tokens": 14, "input_token_details": {"text_tokens": 0, "audio_tokens": 14},
               "output_tokens": 11, "total_tokens": 25}


def speech_audio(text: str) -> list[bytes]:
    """The fake's audio for `text`: an MP3 frame header, then bytes that are not UTF-8, in pieces."""
    payload = b"\xff\xfb\x90\x64" + bytes(range(256)) * (1 + len(text) // 8)
    return [payload[i:i + 1000] for i in range(0, len(payload), 1000)]
