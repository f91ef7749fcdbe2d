"""OpenAI chat client API -> Google Gemini `generateContent`, on Vertex AI or the Gemini API.

The two services share the wire format (`wire/gemini.py`) and differ in URL and credential:
the Gemini API takes `x-goog-api-key` (never a `?key=` in the URL, which would end up in
logs), Vertex AI a service-account OAuth token added by the gateway's signer.

Gemini usually sends no tool-call ids, so a tool result (`role: tool`, `tool_call_id`) is
matched to the function name of the call with that id in the latest assistant message before
it that holds one. The ids handed to clients are the ones Gemini sent (which go back to it
with the call and its result), else the gateway's own `call_<hash>_<n>`: the hash is of the
answer's id and the request, so no two answers of a conversation (every turn's request is
longer than the last) share an id, and the same answer always gets the same ones.

Thought signatures: Gemini 3 signs the first function call of each step (`thoughtSignature`)
and refuses a history whose calls come back without it. The signature goes to the client where
Google's own OpenAI-compatible endpoint puts it, `tool_calls[].extra_content.google.
thought_signature` (the OpenAI SDKs keep the field when a message is sent back as it came), and
back to Gemini on its call. A call of a Gemini 3 history that has none (the client dropped it,
or the history came from another model) gets Google's documented stand-in for the first call of
each assistant message, as Google advises, rather than a 400 at the second turn.

Usage: `promptTokenCount` already includes cached content; `candidatesTokenCount` excludes
thoughts, which OpenAI counts in `completion_tokens`, so they are added and also reported as
reasoning tokens.

Theory of operation of the stream: each SSE event is a whole response fragment; text and
thought parts become content/reasoning deltas, a functionCall part arrives whole and becomes
one tool-call chunk, the last `finishReason` and `usageMetadata` seen are kept, and the
stream's end (Gemini sends no terminator) closes with finish, usage and `[DONE]`.
"""
from __future__ import annotations

import hashlib
import mimetypes
import re
from typing import Any
from urllib.parse import quote

import msgspec

from tollway.core.errors import GatewayError, bad_request, echoed, upstream_ended_early, upstream_gave_up
from tollway.core.providers.base import CallContext, SSEStreamTranslator, UpstreamCall
from tollway.core.providers.chat.anthropic import tool_arguments
from tollway.core.providers.chat.output import ChunkWriter, FunctionOut, ToolCallOut, completion_body, completion_id
from tollway.core.providers.upstream_errors import provider_error
from tollway.core.providers.wire import gemini as wire
from tollway.core.providers.wire.openai import (
    ChatMessage,
    ChatRequest,
    ContentPart,
    decode_chat,
    parse_data_url,
    reasoning_budget,
    text_of,
    unsupported,
)
from tollway.ext.usage import Usage

PROVIDER = "Gemini"
GEMINI_API = "https://generativelanguage.googleapis.com/v1beta"
# Gemini's FinishReason (the API reference's enum) in OpenAI's terms. A whole answer: STOP (a
# tool call's stop becomes tool_calls in completion_body) and MAX_TOKENS. A flag on what was
# generated, withheld for what it is and the same on any retry: the safety, recitation and
# blocklist stops for text and images, and LANGUAGE ("flagged for using an unsupported
# language"), are content_filter, as OpenAI ends an answer its filters cut.
FINISH_REASONS = {
    "STOP": "stop", "MAX_TOKENS": "length", "SAFETY": "content_filter", "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter", "PROHIBITED_CONTENT": "content_filter", "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter", "IMAGE_PROHIBITED_CONTENT": "content_filter", "IMAGE_RECITATION": "content_filter",
    "LANGUAGE": "content_filter",
}
# The rest say the model did not produce an answer (the candidate usually has no content). No
# OpenAI finish_reason says that: any of them, "stop" above all, hands the client an empty or
# partial answer as a completed one, and an agent stops there. They are the upstream's failure,
# a 502 naming the reason, which the router retries on the route's next target (a stream's error
# event once it has begun), and a client may retry too: MALFORMED_FUNCTION_CALL comes and goes.
FAILED_FINISHES = {
    "MALFORMED_FUNCTION_CALL": "the function call the model generated is invalid",
    "UNEXPECTED_TOOL_CALL": "the model called a tool the request did not enable",
    "TOO_MANY_TOOL_CALLS": "the model called too many tools in a row",
    "NO_IMAGE": "the model was to generate an image and generated none",
    "IMAGE_OTHER": "image generation stopped for an unspecified reason",
    "OTHER": "generation stopped for an unspecified reason",
    "FINISH_REASON_UNSPECIFIED": "generation stopped without a reason",
}
# But this one is the request's fault (a Gemini 3 call sent back without its signature), as
# Gemini's own HTTP answer to it, a 400, says: retried anywhere, the history is still unsigned.
MISSING_SIGNATURE = "MISSING_THOUGHT_SIGNATURE"
TOOL_MODES = {"auto": "AUTO", "required": "ANY", "none": "NONE"}
# Ids the gateway made for Gemini's calls (and `call_<n>`, which it made before): never Gemini's, never sent to it.
_MADE_ID = re.compile(r"call_(?:[0-9a-f]{16}_)?[0-9]+")
_decode_json = msgspec.json.decode
# Google's documented stand-in for a signature a history does not have (thought-signatures docs).
SKIP_SIGNATURE = "skip_thought_signature_validator"
_GENERATION = re.compile(r"gemini-(\d+)")


def _signs_calls(model: str) -> bool:
    """Whether `model` refuses a function call sent back without its signature (Gemini 3 on)."""
    found = _GENERATION.search(model)
    return found is not None and int(found.group(1)) >= 3


class _GoogleExtra(msgspec.Struct):
    thought_signature: str


class _ExtraContent(msgspec.Struct):
    google: _GoogleExtra


class SignedToolCallOut(ToolCallOut, kw_only=True):
    """A tool call with the thought signature Gemini gave it, for the client to send back."""

    extra_content: _ExtraContent


# The signatures a client sent back, read only from the messages' tool calls (and only when the
# body holds one): a malformed one is left out, and its call then gets the stand-in if it needs one.
class _GoogleExtraIn(msgspec.Struct):
    thought_signature: str | None = None


class _ExtraIn(msgspec.Struct):
    google: _GoogleExtraIn | None = None


class _SignedCallIn(msgspec.Struct):
    extra_content: _ExtraIn | None = None


class _SignedMessageIn(msgspec.Struct):
    tool_calls: list[_SignedCallIn] | None = None


class _SignedIn(msgspec.Struct):
    messages: list[_SignedMessageIn] = []


_decode_signed = msgspec.json.Decoder(_SignedIn).decode
Signatures = dict[tuple[int, int], str]  # (message index, tool call index) -> the call's signature


def signatures_sent(body: bytes) -> Signatures:
    """The thought signatures of the request's assistant tool calls, by position."""
    if b"thought_signature" not in body:  # (every request but a Gemini tool loop's: no second parse)
        return {}
    try:
        messages = _decode_signed(body).messages
    except msgspec.DecodeError:
        return {}
    return {(i, j): c.extra_content.google.thought_signature
            for i, m in enumerate(messages) for j, c in enumerate(m.tool_calls or [])
            if c.extra_content and c.extra_content.google and c.extra_content.google.thought_signature}


class OpenAIToGemini:
    """Adapter: OpenAI chat completions served by the Gemini API."""

    def base(self, ctx: CallContext) -> str:
        return (ctx.provider.base_url or GEMINI_API).rstrip("/")

    def model_path(self, ctx: CallContext) -> str:
        return f"/models/{quote(ctx.upstream_model, safe='')}"

    def build(self, ctx: CallContext) -> UpstreamCall:
        req = decode_chat(ctx.body)
        stream = bool(req.stream)
        method = ":streamGenerateContent?alt=sse" if stream else ":generateContent"
        headers = [("content-type", "application/json")]
        if ctx.provider.api_key:
            headers.append(("x-goog-api-key", ctx.provider.api_key))
        url = self.base(ctx) + self.model_path(ctx) + method
        signed = _Signing(signatures_sent(ctx.body), _signs_calls(ctx.upstream_model))
        return UpstreamCall("POST", url, headers, wire.encode(to_gemini(req, signed)), stream)

    def response(self, ctx: CallContext, status: int, body: bytes) -> tuple[bytes, Usage | None]:
        done = wire.decode_response(body)
        cand = done.candidates[0] if done.candidates else wire.Candidate(finish_reason="SAFETY")
        parts = cand.content.parts if cand.content else []
        text = "".join(p.text or "" for p in parts if p.text is not None and not p.thought)
        reasoning = "".join(p.text or "" for p in parts if p.thought)
        usage = usage_of(done.usage_metadata) if done.usage_metadata else None
        rid = "chatcmpl-" + done.response_id if done.response_id else completion_id(ctx.body, ctx.now)
        stem = _CallIdStem(rid, ctx.body)
        calls = [_tool_call(p, stem, i) for i, p in enumerate(q for q in parts if q.function_call)]
        reason = finish_reason(cand.finish_reason or "STOP", ctx.provider.name, bool(text or calls))
        return completion_body(rid, ctx.now, done.model_version or ctx.upstream_model, text, calls, reason, usage,
                               reasoning), usage

    def stream(self, ctx: CallContext) -> GeminiStreamToOpenAI:
        return GeminiStreamToOpenAI(ctx)

    def error(self, ctx: CallContext, status: int, headers: list[tuple[str, str]], body: bytes) -> GatewayError:
        if status == 400 and b"API_KEY_INVALID" in body:
            status = 401  # Gemini answers 400 for a bad key: it is the gateway's credential
        return provider_error(ctx.provider, status, headers, _error_message(body))


def finish_reason(gemini: str, provider: str, answered: bool) -> str:
    """OpenAI's finish_reason for Gemini's. Raises GatewayError when Gemini says the model
    produced no answer: a 502 naming the reason, a 400 for a history without its thought
    signatures. A reason Google adds later is a 502 only when the candidate holds nothing
    (`answered`: text or a call came): one with an answer is served as a stop, so a new benign
    reason cannot turn every answer of a model into an error."""
    reason = FINISH_REASONS.get(gemini)
    if reason is not None:
        return reason
    if gemini == MISSING_SIGNATURE:
        raise bad_request(f"{PROVIDER} refused the conversation: an assistant tool call in 'messages' lacks the "
                          "thought signature the model gave it. Send each tool call back with its "
                          "'extra_content.google.thought_signature' as it came.", param="messages")
    failed = FAILED_FINISHES.get(gemini)
    if failed is None and answered:
        return "stop"
    raise upstream_gave_up(provider, echoed(gemini), failed or "a reason the gateway does not know")


def _error_message(body: bytes) -> str | None:
    """The message of a Google error body: `{"error": {...}}`, or (the streaming endpoint's form)
    that object inside a JSON array. None when the body has neither."""
    try:
        parsed = wire.decode_error(body)
    except msgspec.MsgspecError:
        return None
    if isinstance(parsed, list):
        return parsed[0].error.message if parsed else None
    return parsed.error.message


class OpenAIToVertex(OpenAIToGemini):
    """Adapter: OpenAI chat completions served by Gemini on Vertex AI."""

    def base(self, ctx: CallContext) -> str:
        p = ctx.provider
        if p.base_url:
            return p.base_url.rstrip("/")
        host = "aiplatform.googleapis.com" if p.location == "global" else f"{p.location}-aiplatform.googleapis.com"
        return f"https://{host}/v1"

    def model_path(self, ctx: CallContext) -> str:
        p = ctx.provider
        return (f"/projects/{quote(p.project or '', safe='')}/locations/{quote(p.location or '', safe='')}"
                f"/publishers/google/models/{quote(ctx.upstream_model, safe='')}")


def usage_of(u: wire.UsageMetadata) -> Usage:
    """Gemini usage in OpenAI's terms: thoughts count as completion (and reasoning) tokens."""
    prompt = u.prompt_token_count + u.tool_use_prompt_token_count
    completion = u.candidates_token_count + u.thoughts_token_count
    return Usage(prompt, completion, u.total_token_count or prompt + completion, cached_tokens=u.cached_content_token_count,
                 reasoning_tokens=u.thoughts_token_count)


class _CallIdStem:
    """The start of the ids the gateway makes for one answer's calls that Gemini sent without
    one: `call_<hash>_`, the hash of the answer's id (Gemini's `responseId`, else one made from
    the request and the time) and the request. Numbering from `call_0` in every answer gave the
    first call of every turn the same id, and the results of earlier turns went back to Gemini
    under later calls' names. The hash is taken only when an answer needs it."""

    def __init__(self, answer_id: str, request: bytes) -> None:
        self._seed = (answer_id, request)
        self._stem = ""

    def __call__(self, n: int) -> str:
        if not self._stem:
            answer_id, request = self._seed
            h = hashlib.blake2b(answer_id.encode(), digest_size=8)
            h.update(request)
            self._stem = f"call_{h.hexdigest()}_"
        return f"{self._stem}{n}"


def _tool_call(part: wire.Part, stem: _CallIdStem, n: int) -> ToolCallOut:
    call = part.function_call
    assert call is not None
    function = FunctionOut(call.name, wire.encode(call.args or {}).decode())
    if part.thought_signature:
        return SignedToolCallOut(call.id or stem(n), function,
                                 extra_content=_ExtraContent(_GoogleExtra(part.thought_signature)))
    return ToolCallOut(call.id or stem(n), function)


def _gemini_id(call_id: str | None) -> str | None:
    """The id to send Gemini with a call and with its result: any but the gateway's own, which
    stand in for ids Gemini did not give. Gemini's own come back to it; one a client chose
    (history from another provider) pairs a call with its result the same way."""
    return call_id if call_id and not _MADE_ID.fullmatch(call_id) else None


# -- request translation ---------------------------------------------------------------

class _Signing:
    """Which signature each function call of the history goes back to Gemini with."""

    __slots__ = ("sent", "required")

    def __init__(self, sent: Signatures, required: bool) -> None:
        self.sent = sent
        self.required = required  # the model refuses a step's first call without one

    def of(self, i: int, j: int) -> str | None:
        """The signature of message i's call j: the one the client sent back, else the
        stand-in for the first call of a message where the model requires one."""
        return self.sent.get((i, j)) or (SKIP_SIGNATURE if self.required and j == 0 else None)


_UNSIGNED = _Signing({}, False)


def to_gemini(req: ChatRequest, signing: _Signing = _UNSIGNED) -> wire.GenerateContentRequest:
    """The generateContent request for an OpenAI chat request. Raises GatewayError(400)."""
    if req.n not in (None, 1):
        raise unsupported("n", PROVIDER, "Send one request per choice.")
    if req.logprobs:
        raise unsupported("logprobs", PROVIDER)
    # Gemini refuses an empty text part ("it has an empty text parameter"), which OpenAI takes: left out.
    system = [wire.Part(text=text) for m in req.messages if m.role in ("system", "developer") if (text := text_of(m.content))]
    # A result belongs to the call with its id in the latest assistant message before it: ids
    # may repeat over a conversation (gateways before this one numbered each answer's from call_0).
    names: dict[str, str] = {}
    contents: list[wire.Content] = []
    for i, m in enumerate(req.messages):
        if m.role in ("system", "developer"):
            continue
        names.update((c.id, c.function.name) for c in m.tool_calls or [])
        role, parts = _turn(m, i, names, signing)
        if not parts:
            continue
        if contents and contents[-1].role == role:
            contents[-1].parts.extend(parts)
        else:
            contents.append(wire.Content(parts, role))
    return wire.GenerateContentRequest(contents, wire.Content(system) if system else None, _generation_config(req),
                                       _tools(req), _tool_config(req))


def _turn(m: ChatMessage, i: int, names: dict[str, str], signing: _Signing) -> tuple[str, list[wire.Part]]:
    if m.role == "user":
        if isinstance(m.content, str):
            return "user", [wire.Part(text=m.content)] if m.content else []
        return "user", [_part(p, f"messages[{i}].content[{j}]") for j, p in enumerate(m.content or [])
                        if p.type != "text" or p.text]
    if m.role == "assistant":
        text = text_of(m.content)
        parts = [wire.Part(text=text)] if text else []
        for j, call in enumerate(m.tool_calls or []):
            args = tool_arguments(call.function.arguments, f"messages[{i}].tool_calls[{j}].function.arguments")
            parts.append(wire.Part(function_call=wire.FunctionCall(call.function.name, args, _gemini_id(call.id)),
                                   thought_signature=signing.of(i, j)))
        return "model", parts
    if m.role in ("tool", "function"):
        name = names.get(m.tool_call_id or "") or m.name
        if not name:
            raise bad_request(f"messages[{i}].tool_call_id matches no earlier assistant tool call.",
                              param=f"messages[{i}].tool_call_id")
        response = wire.FunctionResponse(name, _result(text_of(m.content)), _gemini_id(m.tool_call_id))
        return "user", [wire.Part(function_response=response)]
    raise bad_request(f"Unknown role '{m.role}' in messages[{i}].", param=f"messages[{i}].role")


def _result(text: str) -> dict[str, Any]:
    """A tool result as the JSON object Gemini requires: the result itself if it is one."""
    try:
        value = _decode_json(text) if text.strip().startswith("{") else None
    except msgspec.DecodeError:
        value = None
    return value if isinstance(value, dict) else {"content": text}


def _part(p: ContentPart, where: str) -> wire.Part:
    if p.type == "text":
        return wire.Part(text=p.text or "")
    if p.type == "image_url" and p.image_url is not None:
        url = p.image_url.url
        data = parse_data_url(url)
        if data is not None:
            return wire.Part(inline_data=wire.Blob(data.media_type, data.data))
        mime = mimetypes.guess_type(url.split("?", 1)[0])[0]
        if mime is None:
            raise bad_request(f"Cannot tell the image type of '{where}.image_url.url'; use a data URL.", param=where)
        return wire.Part(file_data=wire.FileData(mime, url))
    raise bad_request(f"Content part type '{p.type}' is not supported for models served by {PROVIDER}.", param=where)


def _generation_config(req: ChatRequest) -> wire.GenerationConfig | None:
    fmt = req.response_format
    mime = "application/json" if fmt is not None and fmt.type in ("json_object", "json_schema") else None
    schema = fmt.json_schema.schema if fmt is not None and fmt.json_schema is not None else None
    config = wire.GenerationConfig(req.output_limit, req.temperature, req.top_p, req.stop_list, req.presence_penalty,
                                   req.frequency_penalty, req.seed, mime, schema, _thinking(req))
    return config if config != wire.GenerationConfig() else None


def _thinking(req: ChatRequest) -> wire.ThinkingConfig | None:
    """`reasoning_effort` as Gemini's thinking budget; with thinking on, its thought summaries
    are asked for, so they come back as reasoning. Effort "none" is a budget of 0 (thinking off,
    which some models refuse: their 400 reaches the client)."""
    budget = reasoning_budget(req.reasoning_effort)
    if budget is None:
        return None
    return wire.ThinkingConfig(budget, True if budget else None)


def _tools(req: ChatRequest) -> list[wire.Tool] | None:
    if not req.tools:
        return None
    return [wire.Tool([wire.FunctionDeclaration(t.function.name, t.function.description, t.function.parameters)
                       for t in req.tools])]


def _tool_config(req: ChatRequest) -> wire.ToolConfig | None:
    choice = req.tool_choice
    if choice is None or not req.tools:
        return None
    if isinstance(choice, str):
        mode = TOOL_MODES.get(choice)
        if mode is None:
            raise bad_request(f"Unknown tool_choice '{choice}'.", param="tool_choice")
        return wire.ToolConfig(wire.FunctionCallingConfig(mode))
    return wire.ToolConfig(wire.FunctionCallingConfig("ANY", [choice.function.name]))


# -- stream translation ----------------------------------------------------------------

class GeminiStreamToOpenAI(SSEStreamTranslator[wire.GenerateContentResponse]):
    """Gemini SSE (whole response fragments) in, OpenAI chunk events out."""

    def __init__(self, ctx: CallContext) -> None:
        super().__init__(wire.decode_response)
        self._ctx = ctx
        self._writer: ChunkWriter | None = None
        self._stem: _CallIdStem | None = None
        self._reason: str | None = None
        self._answered = False  # text or a call went out (thoughts alone are no answer)

    def _complete(self) -> bool:
        return self._writer is not None and self._reason is not None  # a fragment said why it finished

    def _early_end(self) -> GatewayError:
        return upstream_ended_early(self._ctx.provider.name)

    def _close(self) -> bytes:
        # Gemini sends no terminator: the end of its stream is where the finish and usage go.
        w = self._writer
        assert w is not None and self._reason is not None  # _complete() held
        return w.finish(FINISH_REASONS.get(self._reason, "stop")) + w.end(self.usage)  # (_on raised for failures)

    def _on(self, fragment: wire.GenerateContentResponse) -> bytes:
        if fragment.error is not None:
            raise provider_error(self._ctx.provider, fragment.error.code or 500, [], fragment.error.message)
        out = b""
        if self._writer is None:
            rid = "chatcmpl-" + fragment.response_id if fragment.response_id else completion_id(self._ctx.body, self._ctx.now)
            self._writer = ChunkWriter(rid, self._ctx.now, fragment.model_version or self._ctx.upstream_model,
                                       self._ctx.head.wants_usage_chunk)
            self._stem = _CallIdStem(rid, self._ctx.body)
            out = self._writer.role()
        if fragment.usage_metadata is not None:
            self.usage = usage_of(fragment.usage_metadata)
        if not fragment.candidates and fragment.prompt_feedback is not None and fragment.prompt_feedback.block_reason:
            # A blocked prompt's stream is this one fragment, with no candidate to say why it
            # ended: it ends as the answer unstreamed does (a safety stop), not as a cut-off stream.
            self._reason = "SAFETY"
        for cand in fragment.candidates[:1]:
            if cand.finish_reason is not None:
                # A failure raises here, what came before it having gone to the client: on the
                # stream's first fragment (Gemini's usual MALFORMED_FUNCTION_CALL stream is that one
                # fragment, with no content), before any byte, so the router can still fall back.
                parts = cand.content.parts if cand.content else []
                answered = self._answered or any((p.text and not p.thought) or p.function_call for p in parts)
                finish_reason(cand.finish_reason, self._ctx.provider.name, answered)
            out += b"".join(self._part(p) for p in (cand.content.parts if cand.content else []))
            self._reason = cand.finish_reason or self._reason
        return out

    def _part(self, p: wire.Part) -> bytes:
        w = self._writer
        assert w is not None and self._stem is not None
        if p.function_call is not None:
            call = _tool_call(p, self._stem, w.tool_calls)
            self._answered = True
            self._text.append(call.function.arguments)  # counted, with thoughts, when no usage comes
            extra = {"google": {"thought_signature": p.thought_signature}} if p.thought_signature else None
            return w.tool_start(call.id, call.function.name, call.function.arguments, extra)
        if p.thought:
            self._text.append(p.text or "")
            return w.reasoning(p.text or "")
        if p.text:
            self._answered = True
            self._text.append(p.text)
            return w.text(p.text)
        return b""


