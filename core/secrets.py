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
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Iterable

from core.errors import GatewayError
from core.kernels import first_needle
from core.retry import retry_after

if TYPE_CHECKING:
    from core.config import Provider

MASK = "***"
MIN_SECRET_LENGTH = 8  # shorter values would mask ordinary words; no real credential is that short
MAX_SECRETS = 256  # configs reloaded, tokens rotated: the newest are kept (older ones are no longer sent)
# Bytes that may hold an error object: the key "error" (inside a JSON string its quotes would
# be escaped), or an escaped character, with which a key can spell "\u0065rror" instead.
_ERROR_MARKS = (b'"error"', b"\\u00")
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
_BEARER = re.compile(r"(?i)\b(bearer|basic)(\s+)[^\s\"',;]+")
_NAMED = re.compile(
    r"(?i)((?:api[-_]?key|x-api-key|x-goog-api-key|access[-_]?key(?:[-_]?id)?|secret(?:[-_]?access[-_]?key)?"
    r"|session[-_]?token|security[-_]?token|token|password|credential|signature)[\"']?\s*[:=]\s*[\"']?)"
    r"[^\s\"',;&]+"
)


_NOT_SECRET_CREDENTIALS = frozenset({"profile", "service_account_file"})  # names of where keys are, not keys


def needs_redacting(data: bytes, needles: tuple[bytes, ...]) -> bool:
    """True if `data` holds a known secret or may hold an error object (`KnownSecrets.needles`):
    then `KnownSecrets.redact` it. One compiled scan (core.kernels.first_needle)."""
    return first_needle(data, needles) >= 0


def configured_secrets(provider: Provider) -> list[str | None]:
    """Every secret value a provider's config gives the gateway to send upstream."""
    creds = provider.credentials or {}
    return [provider.api_key, *(v for k, v in creds.items() if k not in _NOT_SECRET_CREDENTIALS),
            *(provider.headers or {}).values()]


def scrub_shapes(text: str) -> str:
    """`text` with everything shaped like a credential masked."""
    text = _BEARER.sub(lambda m: m.group(1) + m.group(2) + MASK, text)
    text = _NAMED.sub(lambda m: m.group(1) + MASK, text)
    return _SHAPES.sub(MASK, text)


class KnownSecrets:
    """Every credential the gateway sends upstream, configured and fetched; see the module doc."""

    __slots__ = ("_held", "_values", "needles")

    def __init__(self, values: Iterable[str | None] = ()) -> None:
        self._held: OrderedDict[str, None] = OrderedDict()
        self._values: tuple[str, ...] = ()
        self.needles: tuple[bytes, ...] = _ERROR_MARKS  # what a stream chunk is searched for
        self.add(*values)

    def add(self, *values: str | None) -> None:
        """Remember credentials (a config's, a fetched token). Cheap when already known."""
        changed = False
        for value in _worth_keeping(values):
            if value in self._held:
                self._held.move_to_end(value)
                continue
            self._held[value] = None
            changed = True
            if len(self._held) > MAX_SECRETS:
                self._held.popitem(last=False)
        if changed:
            self._rebuild()

    def scrub(self, text: str) -> str:
        """`text` from an upstream, safe to relay or record: secrets masked, cut to MAX_ERROR_TEXT."""
        for value in self._values:
            if value in text:
                text = text.replace(value, MASK)
        return scrub_shapes(text)[:MAX_ERROR_TEXT]

    def redact(self, data: bytes) -> bytes:
        """A relayed answer (bytes) made safe: scrubbed as an error when it holds an error object
        (an in-stream error event, an error sent with status 200), else secrets masked by value.
        Callers on the hot path first check `needles` (any found: call this)."""
        if first_needle(data, _ERROR_MARKS) >= 0:
            text = data.decode("utf-8", "replace")
            for value in self._values:
                text = text.replace(value, MASK)
            return scrub_shapes(text).encode()
        for value in self._values:
            needle = value.encode("utf-8", "surrogatepass")
            if needle in data:
                data = data.replace(needle, MASK.encode())
        return data

    def _rebuild(self) -> None:
        # Longest first: a secret that contains another is masked whole, not in pieces.
        self._values = tuple(sorted(self._held, key=len, reverse=True))
        self.needles = _ERROR_MARKS + tuple(v.encode("utf-8", "surrogatepass") for v in self._values)


def _worth_keeping(values: Iterable[str | None]) -> Iterable[str]:
    return (v for v in values if v and len(v) >= MIN_SECRET_LENGTH)


def scrubbed(err: GatewayError, secrets: KnownSecrets) -> GatewayError:
    """`err` (built from an upstream's answer) made safe to relay: every text field scrubbed,
    type/code/param cut short, and of its headers only retry-after kept, normalised."""
    err.message = secrets.scrub(err.message)
    err.type = _word(secrets, err.type) or "api_error"
    err.code = _word(secrets, err.code)
    err.param = _word(secrets, err.param)
    err.headers = retry_headers(err.headers, time.time())
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
