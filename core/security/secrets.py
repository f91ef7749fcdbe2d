"""Keeping the gateway's credentials out of everything an upstream can make it say.

An upstream is not trusted: it may echo the request's headers (its API key, the SigV4
`Credential=AKIA...` and `x-amz-security-token`, an OAuth bearer token) into any field of an
error, or even into a successful answer. Whatever the gateway relays, logs, counts or traces
passes through one of two filters first:

- `KnownSecrets.scrub` for text on error paths (every field of an upstream error): every
  secret the gateway holds by value, then anything shaped like a credential (`scrub_shapes`),
  whether the gateway knows it or not. Runs only when something failed, so it may be thorough.
- `KnownSecrets.redact` for the bytes of a successful answer, and `scrub_stream` for a stream
  chunk: by value only (an answer may legitimately quote `sk-...` in a code sample), unless
  the bytes hold an error object (an in-stream error event, or an error sent as a 200),
  which is scrubbed like any error. A few `bytes in` checks, cheap enough for the request path.

By value means: every provider's configured secrets (api_key, credentials, header values) and
those fetched at run time (AWS keys from the default chain, Google OAuth tokens), which the
signers `add` as they get them. All providers share one set: an upstream that several
providers point at (an internal proxy) has seen all their credentials.
"""
from __future__ import annotations

import math
import re
import urllib.parse
from collections import OrderedDict
from collections.abc import Iterable
from typing import TYPE_CHECKING

import msgspec

from tollway.core.errors import GatewayError
from tollway.core.routing.retry import retry_after
from tollway.core.security.keys import KEY_PREFIX

if TYPE_CHECKING:
    from tollway.core.config import Provider

MASK = "***"
MIN_SECRET_LENGTH = 8  # shorter values would mask ordinary words; no real credential is that short
MAX_SECRETS = 256  # configs reloaded, tokens rotated: the newest are kept (older ones are no longer sent)
# Bytes that may hold an error object: the key "error" (inside a JSON string its quotes would be
# escaped). Only a hit is decoded (`_with_errors_scrubbed`); a key spelled with escapes is not
# looked for: known secrets are still masked by value there, only unknown shapes are not.
_ERROR_MARK = b'"error"'
_SECRET_HEADER_WORDS = ("auth", "key", "token", "secret", "password", "credential", "signature", "cookie")
MAX_ERROR_TEXT = 2000  # characters of upstream error text relayed to a client
MAX_ERROR_WORD = 100  # characters of an upstream error's type, code or param
MAX_RETRY_AFTER = 3600.0  # seconds: an upstream asking for longer is asking for this long

# Shapes of credentials, known or not. Each match is masked whole, or (for `name: value`) only
# the value, so the text still says what kind of thing was removed.
_SHAPES = re.compile(
    r"(?:AKIA|ASIA|AIDA|AROA|AGPA|ANPA|ANVA|AIPA)[A-Z0-9]{12,}"  # AWS access key ids
    r"|\bsk-[A-Za-z0-9_\-*.]{6,}"  # OpenAI / Anthropic style keys (sk-, sk-proj-, sk-ant-)
    r"|\bkey-[A-Za-z0-9_\-*.]{6,}"
    r"|\beyJ[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]*"  # JWTs
    r"|\bya29\.[A-Za-z0-9_\-.]+"  # Google OAuth access tokens
    r"|\bAIza[0-9A-Za-z_\-]{30,}"  # Google API keys
    r"|[A-Za-z0-9+/_\-]{100,}={0,2}"  # long opaque tokens (AWS session tokens and the like)
)
# A run-time gateway key (prefix + URL-safe base64), or any part of one after its prefix. The
# gateway holds only its digest, so a client's own key in its text is found by this shape.
_GATEWAY_KEY = re.compile(re.escape(KEY_PREFIX) + r"[A-Za-z0-9_\-]*")
_BEARER = re.compile(r"(?i)\b(bearer|basic)(\s+)[^\s\"',;]+")
_NAMED = re.compile(
    r"(?i)((?:api[-_]?key|x-api-key|x-goog-api-key|access[-_]?key(?:[-_]?id)?|secret(?:[-_]?access[-_]?key)?"
    r"|session[-_]?token|security[-_]?token|token|password|credential|signature)[\"']?\s*[:=]\s*[\"']?)"
    r"[^\s\"',;&]+"
)


_NOT_SECRET_CREDENTIALS = frozenset({"profile", "service_account_file"})  # names of where keys are, not keys


def configured_secrets(provider: Provider) -> list[str | None]:
    """Every secret value a provider's config gives the gateway to send upstream: api_key, the
    credentials, and header values whose names say they carry one (not `anthropic-version`)."""
    creds = provider.credentials or {}
    headers = (v for k, v in (provider.headers or {}).items() if any(w in k.lower() for w in _SECRET_HEADER_WORDS))
    urls = [provider.base_url or "", *(provider.endpoints or [])]
    userinfo = (part for url in urls for part in _userinfo(url))  # http://user:password@host/
    return [provider.api_key, *(v for k, v in creds.items() if k not in _NOT_SECRET_CREDENTIALS), *headers, *userinfo]


def _userinfo(url: str) -> list[str]:
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return []
    return [p for p in (parts.username, parts.password) if p]


def scrub_shapes(text: str) -> str:
    """`text` with everything shaped like a credential masked."""
    text = _BEARER.sub(lambda m: m.group(1) + m.group(2) + MASK, text)
    text = _NAMED.sub(lambda m: m.group(1) + MASK, text)
    return _SHAPES.sub(MASK, text)


class KnownSecrets:
    """Every credential the gateway sends upstream, configured and fetched; see the module doc.

    The configured ones are set whole at each (re)load and never evicted; fetched ones (tokens,
    temporary keys) rotate, so only the newest MAX_SECRETS are kept.
    """

    __slots__ = ("_configured", "_fetched", "_shortest", "_values", "needles")

    def __init__(self, configured: Iterable[str | None] = ()) -> None:
        self._configured: frozenset[str] = frozenset()
        self._fetched: OrderedDict[str, None] = OrderedDict()
        self._values: tuple[str, ...] = ()
        self._shortest = MIN_SECRET_LENGTH  # of `_values`: shorter text cannot hold one (`mask`)
        self.needles: tuple[bytes, ...] = (_ERROR_MARK,)  # what a relayed chunk is searched for
        self.configure(configured)

    def configure(self, values: Iterable[str | None]) -> None:
        """The secrets of the config now in force (a reload replaces the previous ones)."""
        self._configured = frozenset(_worth_keeping(values))
        self._rebuild()

    def add(self, *values: str | None) -> None:
        """Remember credentials fetched at run time. Cheap when already known."""
        changed = False
        for value in _worth_keeping(values):
            if value in self._configured:
                continue
            if value in self._fetched:
                self._fetched.move_to_end(value)  # still in use: the last to be evicted
                continue
            self._fetched[value] = None
            changed = True
            if len(self._fetched) > MAX_SECRETS:
                self._fetched.popitem(last=False)
        if changed:
            self._rebuild()

    def holds(self, text: str) -> bool:
        """Whether `text` contains a secret this set knows (a config value shown to an operator)."""
        return any(value in text for value in self._values)

    def scrub(self, text: str) -> str:
        """`text` from an upstream, safe to relay or record: secrets masked, cut to MAX_ERROR_TEXT."""
        for value in self._values:
            if value in text:
                text = text.replace(value, MASK)
        return scrub_shapes(text)[:MAX_ERROR_TEXT]

    def mask(self, text: str) -> str:
        """`text` from a client, safe to write to a log line: every secret this set knows masked,
        by value (a model name shaped like a provider's key is still the client's model name), and
        anything shaped like a run-time gateway key (`sk-tw-...`: no model is named so), not cut.
        A client may send a credential the gateway holds (a provider key pasted as the model), or
        its own gateway key; neither may reach the logs. Cheap for the usual short text: without
        the key prefix and shorter than every secret, as is."""
        if KEY_PREFIX in text:
            text = _GATEWAY_KEY.sub(MASK, text)
        if len(text) < self._shortest:
            return text
        for value in self._values:
            if value in text:
                text = text.replace(value, MASK)
        return text

    def redact(self, data: bytes) -> bytes:
        """A relayed answer (a JSON body or SSE bytes) made safe: the strings of any non-null
        top-level `error` object scrubbed like any error (an in-stream error event, an error sent
        with status 200), and every known secret masked by value. Callers on the hot path first
        check `needles` (any found: call this)."""
        if _ERROR_MARK in data:
            data = _with_errors_scrubbed(data, self)
        for needle in self.needles[1:]:
            if needle in data:
                data = data.replace(needle, MASK.encode())
        return data

    def _rebuild(self) -> None:
        # Longest first: a secret that contains another is masked whole, not in pieces.
        self._values = tuple(sorted({*self._configured, *self._fetched}, key=len, reverse=True))
        self._shortest = len(self._values[-1]) if self._values else MIN_SECRET_LENGTH
        spellings = {s for v in self._values for s in _spellings(v)}
        self.needles = (_ERROR_MARK, *sorted(spellings, key=len, reverse=True))


def _spellings(value: str) -> set[bytes]:
    """The bytes `value` may appear as in a relayed answer: as is, and as it is written inside
    a JSON string (an AWS secret's "/" may be escaped as "\\/", a quote or backslash escaped)."""
    plain = value.encode("utf-8", "surrogatepass")
    in_json = msgspec.json.encode(value)[1:-1]
    return {plain, in_json, in_json.replace(b"/", b"\\/")}


class _ErrorOnly(msgspec.Struct):
    error: msgspec.Raw = msgspec.field(default_factory=lambda: msgspec.Raw(b"null"))


_decode_error_only = msgspec.json.Decoder(_ErrorOnly).decode


def _with_errors_scrubbed(data: bytes, secrets: KnownSecrets) -> bytes:
    """`data` with every string of each JSON document that has a non-null `error` scrubbed: the whole of
    `data` when it is one JSON object, else each SSE `data:` line. Anything else is unchanged
    (the text around an error is the answer: it is not run through the shape patterns)."""
    if data[:1] == b"{":
        return _scrub_doc(data, secrets)
    lines = data.split(b"\n")
    for i, line in enumerate(lines):
        if line.startswith(b"data:") and _ERROR_MARK in line:
            lines[i] = b"data: " + _scrub_doc(line[5:].strip(), secrets)
    return b"\n".join(lines)


def _scrub_doc(doc: bytes, secrets: KnownSecrets) -> bytes:
    try:
        if bytes(_decode_error_only(doc).error) == b"null":
            return doc
        whole = msgspec.json.decode(doc)
    except msgspec.MsgspecError:
        return doc
    return msgspec.json.encode(_scrub_strings(whole, secrets))  # an error document: all of it (request_id too)


def _scrub_strings(value: object, secrets: KnownSecrets) -> object:
    if isinstance(value, str):
        return secrets.scrub(value)
    if isinstance(value, dict):
        return {secrets.scrub(str(k))[:MAX_ERROR_WORD]: _scrub_strings(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub_strings(v, secrets) for v in value]
    return value


def _worth_keeping(values: Iterable[str | None]) -> Iterable[str]:
    return (v for v in values if v and len(v) >= MIN_SECRET_LENGTH)


def scrubbed(err: GatewayError, secrets: KnownSecrets, now_wall: float) -> GatewayError:
    """`err` (built from an upstream's answer) made safe to relay: every text field scrubbed,
    type/code/param cut short, and of its headers only retry-after kept, normalised (an
    HTTP-date one against `now_wall`, the wall clock's time)."""
    err.message = secrets.scrub(err.message)
    err.type = _word(secrets, err.type) or "api_error"
    err.code = _word(secrets, err.code)
    err.param = _word(secrets, err.param)
    err.headers = retry_headers(err.headers, now_wall)
    return err


def retry_headers(headers: list[tuple[str, str]], now_wall: float) -> list[tuple[str, str]]:
    """An upstream's retry-after / retry-after-ms as the gateway relays them: whole seconds and
    milliseconds, between 0 and MAX_RETRY_AFTER; nothing when it sent neither or garbage."""
    wait = retry_after(headers, now_wall)
    if wait is None or wait != wait:
        return []
    wait = min(max(wait, 0.0), MAX_RETRY_AFTER)
    return [("retry-after", str(math.ceil(wait))), ("retry-after-ms", str(math.ceil(wait * 1000)))]


def _word(secrets: KnownSecrets, value: str | None) -> str | None:
    if not value:
        return value
    return secrets.scrub(value)[:MAX_ERROR_WORD]
