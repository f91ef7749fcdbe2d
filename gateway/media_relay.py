"""Relaying an answer as the bytes it is: audio, a transcript, an SSE stream of media events.

The chat relay (`Proxy._relay_stream`) frames SSE and refuses bytes that are not UTF-8; speech
audio is neither. Here every chunk goes to the client as it arrives, with the upstream's own
content type, through the adapter's meter (tollway.core.providers.openai_media.MediaMeter),
which reads what the answer is billed by. The relay keeps the proxy's guards: the answer is
bounded by server.max_upstream_body_bytes, the gateway's secrets are masked, a client that
reads nothing is paced, and the first chunk is read before the response starts, so a failure
before it can still fall back to another target. After the first byte a failure ends the
response (there is no error event in an audio file): the client sees a short answer, and the
upstream's breakers count the failure (`Health`, as for a chat stream).
"""
from __future__ import annotations

import logging
import time

from granian.rsgi import HTTPProtocol

from tollway.core import errors
from tollway.core.config import Server
from tollway.core.kernels import SSEError, first_needle
from tollway.core.providers.base import StreamTranslator
from tollway.core.providers.openai_media import MediaMeter
from tollway.core.security.secrets import KnownSecrets
from tollway.gateway.downstream.backpressure import WATCH_FROM, ClientStalled
from tollway.gateway.downstream.watchdog import ANSWERED
from tollway.gateway.exchange import Exchange
from tollway.gateway.upstream import UpstreamAnswer
from tollway.gateway.upstream.client import UpstreamError

try:  # granian raises this when the client has gone away mid-response
    from granian.rsgi import ProtocolClosed as ClientGone
except ImportError:  # pragma: no cover
    ClientGone = RuntimeError  # type: ignore[misc,assignment]

log = logging.getLogger("tollway")
_OCTETS = "application/octet-stream"


async def relay_media(ex: Exchange, meter: StreamTranslator, resp: UpstreamAnswer, proto: HTTPProtocol,
                      base_headers: list[tuple[str, str]], provider: str, secrets: KnownSecrets,
                      server: Server) -> bool | None:
    """Send `resp` to the client as it arrives; `ex.usage` from the meter (the adapter's
    `stream(ctx)`, a MediaMeter for every adapter whose calls are `media`). Raises GatewayError
    (502/504) for a failure before the first byte; returns what the answer says about the
    upstream after it (tollway.gateway.proxy.Health: False whole, True broken off, None neither)."""
    from tollway.gateway.proxy import ClientStream, _client_error, _mid_stream_error, _upstream_fault

    if not isinstance(meter, MediaMeter):  # an adapter that marks its calls media meters them
        raise errors.internal()

    content_type = resp.header("content-type") or _OCTETS
    meter.begin(content_type)
    ex.stream = content_type.startswith("text/event-stream")
    chunks = resp.__aiter__()
    left = server.max_upstream_body_bytes
    try:
        first = await chunks.__anext__()
    except StopAsyncIteration:
        first = b""
    except UpstreamError as exc:
        raise _client_error(provider, exc) from None
    ex.status = resp.status
    out = ClientStream(proto.response_stream(resp.status, [("content-type", content_type), *base_headers]),
                       ex.scope, server.client_idle_timeout)
    # The head went out with its status: the answer is under way, even when its first bytes are
    # held back below (they may begin a secret), and a client that leaves now got that status, not a 499.
    ex.first_byte = time.perf_counter()
    sent = 0
    failed: bool | None = False
    held = b""  # the chunk's tail that may begin a secret the next chunk completes
    try:
        chunk = first
        while True:
            left -= len(chunk)
            if left < 0:
                raise errors.upstream_too_large(provider, server.max_upstream_body_bytes)
            meter.feed(chunk)
            if chunk:
                data = held + chunk
                if first_needle(data, secrets.needles) >= 0:
                    data = secrets.redact(data)
                cut = len(data) - _open_tail(data, secrets.needles)
                data, held = data[:cut], data[cut:]
                if data:
                    sent += len(data)
                    if sent > WATCH_FROM:
                        await out.paced(sent)
                    await out.send(data)
            try:
                chunk = await chunks.__anext__()
            except StopAsyncIteration:
                break
        if held:  # the answer's last bytes (no secret ends in them: it would have been masked)
            await out.send(held)
    except ClientGone:  # (the client's doing: says nothing about the upstream)
        ex.error_type, failed = "client_closed", None
    except ClientStalled:
        ex.error_type = ex.cancel_reason = "client_stalled"
        failed = None
    except (UpstreamError, errors.GatewayError, SSEError) as exc:  # after the first byte: the answer ends short
        ex.error_type = exc.code if isinstance(exc, errors.GatewayError) and exc.code else "stream_error"
        if isinstance(exc, SSEError):  # one event over the framer's limit: its size, not a fault
            failed = None
        else:
            failed = _upstream_fault(_mid_stream_error(ex, exc) if isinstance(exc, UpstreamError) else exc)
        log.info("a media answer from %s ended early (request %s)", provider, ex.request_id)
    except BaseException:  # cancelled (the watchdog: a client gone or too slow; the drain): no await now
        _metered(ex, meter)  # the upstream billed it all the same
        raise
    finally:
        out.close()
    ex.phase = ANSWERED
    _metered(ex, meter)
    return failed


def _metered(ex: Exchange, meter: MediaMeter) -> None:
    """`ex.usage` from the meter, also for an answer cut short: what was made (speech: the
    input's characters) was billed."""
    try:
        meter.flush()
    except SSEError:  # an oversized event at the very end: nothing more to read
        pass
    ex.usage = meter.usage


def _open_tail(data: bytes, needles: tuple[bytes, ...]) -> int:
    """The length of the longest end of `data` that begins a needle (a secret that may arrive
    split across two chunks, masked only once it is whole): held back for the next chunk. An
    answer's ordinary bytes (an SSE event's closing blank line) are sent at once."""
    longest = max(map(len, needles))
    firsts = {needle[0] for needle in needles}
    for i in range(max(len(data) - longest + 1, 0), len(data)):
        if data[i] not in firsts:  # (most bytes begin no needle: one set lookup)
            continue
        rest = data[i:]
        for needle in needles:
            if needle.startswith(rest):
                return len(data) - i
    return 0
