"""One JSON line per request on stdout: who, what, how it went. Never a secret or a prompt.

Lines are buffered and written once per event-loop turn, so a burst of requests costs one
write() instead of one per request, and a quiet gateway still flushes promptly.
"""
from __future__ import annotations

import asyncio
import sys
from typing import IO, Any

import msgspec

_encode = msgspec.json.Encoder().encode


class AccessLog:
    def __init__(self, stream: IO[bytes] | None = None, enabled: bool = True) -> None:
        self._stream = stream or sys.stdout.buffer
        self.enabled = enabled
        self._pending: list[bytes] = []

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if not self._pending:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:  # no loop (tests, shutdown): write now
                self._pending.append(_encode(record) + b"\n")
                self.flush()
                return
        self._pending.append(_encode(record) + b"\n")

    def flush(self) -> None:
        if self._pending:
            data, self._pending = b"".join(self._pending), []
            try:
                self._stream.write(data)
                self._stream.flush()
            except (OSError, ValueError):
                pass  # stdout closed or broken: logging must never take the gateway down
