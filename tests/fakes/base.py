"""What every fake provider shares: a real HTTP server in a thread that records requests."""
from __future__ import annotations

from typing import Any

from aiohttp import web

from tests.harness import ThreadedServer


class FakeUpstream:
    """Subclasses define `_app()` (their routes) and may set `url_path` (e.g. "/v1")."""

    url_path = ""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.server = ThreadedServer(self._app)
        self.url = f"http://127.0.0.1:{self.server.port}{self.url_path}"

    def _app(self) -> web.Application:
        raise NotImplementedError

    def stop(self) -> None:
        self.server.stop()

    def last(self, path_suffix: str = "") -> dict[str, Any]:
        """The most recent request whose path ends with `path_suffix`."""
        return next(r for r in reversed(self.requests) if r["path"].endswith(path_suffix))

    async def _record(self, request: web.Request) -> dict[str, Any]:
        """Remember the request (path, lower-cased headers, JSON body) and return its body."""
        body = await request.json()
        self.requests.append({"path": request.path, "headers": {k.lower(): v for k, v in request.headers.items()},
                              "header_names": [k.lower() for k in request.headers], "body": body})
        return body
