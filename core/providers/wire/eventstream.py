"""AWS eventstream framing (`application/vnd.amazon.eventstream`, Bedrock's `/converse-stream`).

A frame is a 12-byte prelude (total length, headers length, CRC32 of those 8 bytes), typed
headers, a payload and a CRC32 of everything before it. `EventStreamFrames` cuts frames out of
bytes split anywhere by the prelude's total length, in one growing buffer, and hands botocore
only whole frames: botocore's own `EventStreamBuffer` appends each piece to an immutable bytes
object, so one large frame arriving in small pieces costs time quadratic in its size (23 MiB in
4 KiB pieces: 19.5 s on the worker's loop). botocore still parses each frame and checks both CRCs.
"""
from __future__ import annotations

import struct
import zlib
from typing import NamedTuple

from tollway.core.errors import upstream_corrupt_frame, upstream_too_large

PRELUDE_BYTES = 12
# The largest frame botocore accepts: prelude, 128 KiB of headers, 24 MiB of payload, message CRC.
MAX_FRAME_BYTES = PRELUDE_BYTES + 128 * 1024 + 24 * 1024 * 1024 + 4


class Frame(NamedTuple):
    """One frame's string-valued headers (the only kind Bedrock sends and the gateway reads)
    and its payload."""

    headers: dict[str, str]
    payload: bytes


class EventStreamFrames:
    """Feed bytes in any split, get the frames they complete. Raises the client's 502 for a frame
    that fails its checks or is larger than MAX_FRAME_BYTES (found at its prelude: nothing of it
    is held past that bound)."""

    __slots__ = ("_buf", "_provider")

    def __init__(self, provider: str) -> None:
        self._buf = bytearray()  # the bytes of frames not yet complete
        self._provider = provider

    def feed(self, chunk: bytes) -> list[Frame]:
        self._buf += chunk
        frames: list[Frame] = []
        at = 0
        while (size := self._frame_size(at)) and len(self._buf) - at >= size:
            frames.append(_parse(bytes(self._buf[at : at + size])))
            at += size
        del self._buf[:at]  # what is left started in this chunk: linear over the stream
        return frames

    def _frame_size(self, at: int) -> int:
        """The total length of the frame at `at`, 0 while its prelude is incomplete."""
        prelude = self._buf[at : at + PRELUDE_BYTES]
        if len(prelude) < PRELUDE_BYTES:
            return 0
        total, headers, crc = struct.unpack(">III", prelude)
        if zlib.crc32(prelude[:8]) != crc or total < PRELUDE_BYTES + headers + 4:
            raise upstream_corrupt_frame()  # (a length its CRC does not vouch for would be waited for)
        if total > MAX_FRAME_BYTES:
            raise upstream_too_large(self._provider, MAX_FRAME_BYTES, "an event stream frame")
        return int(total)


def _parse(frame: bytes) -> Frame:
    """botocore's parse of one whole frame (its CRC and length checks included)."""
    from botocore.eventstream import EventStreamBuffer, ParserError  # noqa: PLC0415 - only Bedrock configs load botocore

    buffer = EventStreamBuffer()
    buffer.add_data(frame)  # into its empty buffer: one copy
    try:
        message = buffer.next()
    # headers that run past their section or name an unknown type fail in struct or a lookup
    except (ParserError, struct.error, KeyError, ValueError):
        raise upstream_corrupt_frame() from None
    headers = {name: value for name, value in message.headers.items() if isinstance(value, str)}
    return Frame(headers, message.payload)
