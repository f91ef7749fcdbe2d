"""A TCP proxy in front of the shared Redis that holds its replies: a call past a client's
socket timeout has run in Redis when the client gives up on it (the `slow_redis` fixture in
conftest.py; used by the limiter's and the budgets' tests)."""
from __future__ import annotations

import asyncio


class SlowRedis:
    """A TCP proxy in front of the shared Redis that holds Redis's replies `delay` seconds:
    a call past the store's socket timeout has run in Redis when the store gives up on it."""

    def __init__(self) -> None:
        self.delay = 0.0
        self.url = ""
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.url = f"redis://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/0"

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        redis_r, redis_w = await asyncio.open_connection("127.0.0.1", 6379)
        for task in (self._pipe(client_r, redis_w, slow=False), self._pipe(redis_r, client_w, slow=True)):
            t = asyncio.get_running_loop().create_task(task)
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, slow: bool) -> None:
        try:
            while data := await reader.read(65536):
                if slow and self.delay:
                    await asyncio.sleep(self.delay)
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for t in list(self._tasks):
            t.cancel()
