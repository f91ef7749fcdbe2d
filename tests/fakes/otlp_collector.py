"""A fake OTLP/HTTP collector: records every JSON body POSTed to /v1/traces."""
from __future__ import annotations

import json
import time
from typing import Any

from aiohttp import web

from tests.fakes.base import FakeUpstream


class FakeCollector(FakeUpstream):
    url_path = "/v1/traces"

    def __init__(self) -> None:
        self.bodies: list[bytes] = []  # raw, so tests can search them for what must not be there
        self.headers: list[dict[str, str]] = []
        super().__init__()

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/traces", self.traces)
        return app

    async def traces(self, request: web.Request) -> web.Response:
        if request.content_type != "application/json":
            return web.json_response({"error": "want application/json"}, status=415)
        self.bodies.append(await request.read())
        self.headers.append({k.lower(): v for k, v in request.headers.items()})
        return web.json_response({})

    def spans(self) -> list[dict[str, Any]]:
        """Every span received so far, each with its attributes as a plain dict under `attrs`."""
        out = []
        for body in list(self.bodies):
            for rs in json.loads(body)["resourceSpans"]:
                for ss in rs["scopeSpans"]:
                    for span in ss["spans"]:
                        span["attrs"] = {a["key"]: _plain(a["value"]) for a in span.get("attributes", [])}
                        out.append(span)
        return out

    def wait_for(self, predicate: Any, timeout: float = 5.0) -> list[dict[str, Any]]:
        """The spans that match `predicate`, once there is at least one (or [] after `timeout`)."""
        deadline = time.monotonic() + timeout
        while True:
            found = [s for s in self.spans() if predicate(s)]
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.05)


def _plain(value: dict[str, Any]) -> Any:
    (kind, v), = value.items()
    return int(v) if kind == "intValue" else v
