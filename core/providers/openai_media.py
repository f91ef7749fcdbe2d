"""OpenAI's media endpoints (images, image edits, audio) -> OpenAI and Azure OpenAI, passed through.

The wire format is OpenAI's both ways, so the client's bytes go upstream as they came (an
upload's `model` field rewritten in place when routing names another, tollway.core.forms) and
the answer comes back as it is. What the adapters add is what the gateway must know of it:

- the upload's content type (the boundary admission parsed it with), a passed header set there;
- which answers are relayed as bytes as they arrive, with the upstream's own content type
  (`UpstreamCall.media`): every audio answer (speech audio, transcripts as text, JSON or an SSE
  stream of `transcript.text.*` events) and streamed images (`image_generation.*` events);
- what the answer is billed by: tokens where the provider reports them (gpt-image-1,
  gpt-4o-transcribe, gpt-4o-mini-tts), else units priced by the model's `price`
  (tollway.core.accounting.pricing.unit_cost): images by size and quality, seconds of audio
  (whisper-1's `usage.type: duration`), characters of speech input (tts-1).
"""
from __future__ import annotations

import math

import msgspec

from tollway.core.kernels import SSEFramer
from tollway.core.providers.azure_openai import AzureOpenAIAdapter
from tollway.core.providers.base import CallContext, ClientAPI, UpstreamCall
from tollway.core.providers.openai_compat import OpenAIAdapter
from tollway.ext.usage import OpenAIUsage, Usage, from_openai

FORM_APIS = frozenset((ClientAPI.IMAGE_EDITS, ClientAPI.TRANSCRIPTIONS, ClientAPI.TRANSLATIONS))
_AUDIO_APIS = frozenset((ClientAPI.TRANSCRIPTIONS, ClientAPI.TRANSLATIONS, ClientAPI.SPEECH))
_IMAGE_APIS = frozenset((ClientAPI.IMAGES, ClientAPI.IMAGE_EDITS))
MAX_METERED_JSON = 8 * 1024 * 1024  # of a relayed JSON answer kept to read its usage (a transcript)


class _ImageRequest(msgspec.Struct):
    size: str | None = None
    quality: str | None = None
    n: int | None = None


class _SpeechRequest(msgspec.Struct):
    input: str = ""


class _MediaUsage(msgspec.Struct):
    """OpenAI's usage of an image or audio answer: tokens, or (whisper-1) seconds of audio."""

    type: str | None = None
    seconds: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    total_tokens: int | None = None


class _MediaAnswer(msgspec.Struct):
    """An image or audio answer (or one of its stream events), decoded only as far as billing needs."""

    type: str | None = None  # a stream event's type
    data: list[msgspec.Raw] | None = None  # images made
    usage: _MediaUsage | None = None
    duration: float | None = None  # verbose_json transcripts: seconds of audio
    size: str | None = None  # gpt-image-1 says what it made
    quality: str | None = None


class _Billable(msgspec.Struct):
    """An answer the meter could not read, decoded only as far as whether it says what it is
    billed by at all (its fields as the raw JSON they are, `null` when absent)."""

    usage: msgspec.Raw = msgspec.Raw(b"null")
    duration: msgspec.Raw = msgspec.Raw(b"null")

    def says_usage(self) -> bool:
        return bytes(self.usage) != b"null" or bytes(self.duration) != b"null"


_decode_image_request = msgspec.json.Decoder(_ImageRequest).decode
_decode_speech_request = msgspec.json.Decoder(_SpeechRequest).decode
_decode_answer = msgspec.json.Decoder(_MediaAnswer).decode
_decode_billable = msgspec.json.Decoder(_Billable).decode


class OpenAIMedia(OpenAIAdapter):
    """Pass-through of the images and audio endpoints to an OpenAI-schema upstream."""

    def build(self, ctx: CallContext) -> UpstreamCall:
        media = ctx.api in _AUDIO_APIS or bool(ctx.head.wants_stream)
        headers = self.headers(ctx.provider)
        if ctx.api in FORM_APIS:  # the form's content type: the boundary admission parsed it with
            headers[0] = ("content-type", _form_type(ctx))
        if media:  # audio bytes, text or SSE: whatever the client asked for
            headers[1] = ("accept", "*/*")
        return UpstreamCall("POST", self.url(ctx), headers, self._body(ctx), media, media=media)

    def _body(self, ctx: CallContext) -> bytes:
        if ctx.api not in FORM_APIS:
            return self.body(ctx, False)  # JSON: renamed if routing says so
        if ctx.upstream_model == ctx.head.model:
            return ctx.body
        if ctx.form is None:  # (admission reads every upload's form: the model cannot go unrewritten)
            raise ValueError("a multipart upload without its form")
        return ctx.form.with_field(ctx.body, "model", ctx.upstream_model)[0]

    def response(self, ctx: CallContext, status: int, body: bytes) -> tuple[bytes, Usage | None]:
        """A JSON images answer as it came, and what it is billed by. Raises msgspec.DecodeError
        if it is not JSON."""
        answer = _decode_answer(body)
        return body, image_usage(ctx, [answer])

    def stream(self, ctx: CallContext) -> MediaMeter:
        return MediaMeter(ctx)


class AzureMedia(OpenAIMedia, AzureOpenAIAdapter):
    """The same to Azure OpenAI: its deployment URLs and `api-key` header (AzureOpenAIAdapter's)."""


def _says_usage(data: bytes) -> bool:
    """Whether an answer the meter could not read carries a usage or a duration (a whisper
    `seconds: 1e999`, `input_tokens: 1e30`) rather than being JSON of another shape."""
    try:
        return _decode_billable(data).says_usage()
    except msgspec.MsgspecError:
        return False


def _form_type(ctx: CallContext) -> str:
    return dict(ctx.passed_headers).get("content-type", "")


def image_usage(ctx: CallContext, answers: list[_MediaAnswer]) -> Usage:
    """Tokens as reported, and the images made, as units of "image:SIZE/QUALITY"."""
    made = sum(len(a.data or ()) for a in answers) or sum(1 for a in answers if (a.type or "").endswith(".completed"))
    asked = _image_request(ctx)
    last = answers[-1] if answers else _MediaAnswer()
    tier = f"{last.size or asked.size or 'auto'}/{last.quality or asked.quality or 'standard'}"
    reported = next((a.usage for a in reversed(answers) if a.usage is not None), None)
    usage = _token_usage(reported) if reported is not None else Usage()
    # (a new struct, not assigned fields: Usage holds its numbers when it is made)
    return msgspec.structs.replace(usage, units=float(made), unit="image:" + tier)


def _image_request(ctx: CallContext) -> _ImageRequest:
    if ctx.form is not None:  # (admission parsed the form: size and quality appear once at most)
        return _ImageRequest(ctx.form.fields.get("size"), ctx.form.fields.get("quality"))
    try:
        return _decode_image_request(ctx.body)
    except msgspec.MsgspecError:  # (admission validated the JSON; a size of the wrong type is the upstream's to refuse)
        return _ImageRequest()


def _token_usage(u: _MediaUsage) -> Usage:
    return from_openai(OpenAIUsage(input_tokens=u.input_tokens or 0, output_tokens=u.output_tokens or 0,
                                   total_tokens=u.total_tokens))


def audio_usage(ctx: CallContext, answers: list[_MediaAnswer], audio_bytes: int) -> Usage | None:
    """What an audio answer is billed by: reported tokens, else seconds of audio (whisper-1),
    else (speech) the characters of its input; None when the answer says nothing (a transcript
    asked for as text, srt or vtt)."""
    for answer in reversed(answers):
        u = answer.usage
        if u is not None and u.type == "duration" and u.seconds is not None:
            return Usage(units=u.seconds, unit="audio_second")
        if u is not None and (u.input_tokens is not None or u.total_tokens is not None):
            return _token_usage(u)
        if answer.duration is not None:
            return Usage(units=answer.duration, unit="audio_second")
    if ctx.api == ClientAPI.SPEECH and audio_bytes:
        try:
            text = _decode_speech_request(ctx.body).input
        except msgspec.MsgspecError:
            return None
        return Usage(units=float(len(text)), unit="character")
    return None


class MediaMeter:
    """The `StreamTranslator` of an answer relayed as bytes: every chunk goes out as it came,
    and the meter watches it for what it is billed by (tollway.gateway.media_relay calls
    `begin` with the answer's content type first). SSE events and a JSON body (up to
    MAX_METERED_JSON) are read for usage; audio bytes are only counted."""

    def __init__(self, ctx: CallContext) -> None:
        self.ctx = ctx
        self.usage: Usage | None = None
        self._framer: SSEFramer | None = None
        self._json: list[bytes] | None = None
        self._kept = 0
        self._audio = 0
        self._answers: list[_MediaAnswer] = []
        self._unreadable = False  # an answer said what it is billed by in numbers the meter cannot hold

    def begin(self, content_type: str) -> None:
        if content_type.startswith("text/event-stream"):
            self._framer = SSEFramer()
        elif content_type.startswith("application/json"):
            self._json = []

    def feed(self, chunk: bytes) -> bytes:
        if self._framer is not None:
            for event in self._framer.feed(chunk):
                self._note(event.data)
        elif self._json is not None:
            self._kept += len(chunk)
            if self._kept <= MAX_METERED_JSON:
                self._json.append(chunk)
        else:
            self._audio += len(chunk)
        return chunk

    def flush(self) -> bytes:
        if self._framer is not None:
            for event in self._framer.flush():
                self._note(event.data)
        elif self._json is not None and self._kept <= MAX_METERED_JSON:
            self._note(b"".join(self._json))
        api = self.ctx.api
        if self._unreadable:  # no number of units at all: pricing makes it unpriced (null), never $0
            self.usage = Usage(units=math.nan)
        elif api in _IMAGE_APIS:
            self.usage = image_usage(self.ctx, self._answers)
        else:
            self.usage = audio_usage(self.ctx, self._answers, self._audio)
        return b""

    def streamed_text(self) -> str:
        return ""

    def _note(self, data: bytes) -> None:
        if not data.startswith(b"{"):
            return
        try:
            answer = _decode_answer(data)
        except msgspec.MsgspecError:  # not the shape the meter reads: relayed all the same, but
            self._unreadable = self._unreadable or _says_usage(data)  # a usage it cannot read is no usage
            return
        if answer.usage is not None or answer.data is not None or answer.duration is not None or \
                (answer.type or "").endswith(".completed"):
            self._answers.append(answer)
