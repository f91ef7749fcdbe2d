"""The smallest possible proxy, to compare upstream HTTP clients under the same server.

A granian RSGI app that forwards each request body to BENCH_UPSTREAM with the client named by
BENCH_CLIENT and returns the upstream's answer, with no gateway features at all:
  none     answer directly without any upstream (granian's own cost)
  aiohttp  aiohttp.ClientSession (keep-alive pool, no limit)
  tollway  tollway.gateway.upstream.client.UpstreamClient (httptools on an asyncio Protocol)
"""
from __future__ import annotations

import os

UPSTREAM = os.environ.get("BENCH_UPSTREAM", "http://127.0.0.1:18000/v1/chat/completions")
CLIENT = os.environ.get("BENCH_CLIENT", "tollway")
CANNED = b'{"id":"x","object":"chat.completion","choices":[]}'
HEADERS = [("content-type", "application/json")]


class NoUpstream:
    async def forward(self, body: bytes) -> tuple[int, bytes]:
        return 200, CANNED


class AiohttpForwarder:
    def __init__(self) -> None:
        self._session = None

    async def forward(self, body: bytes) -> tuple[int, bytes]:
        if self._session is None:  # a session must be made inside the running loop
            import aiohttp

            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        async with self._session.post(UPSTREAM, data=body, headers={"content-type": "application/json"}) as resp:
            return resp.status, await resp.read()


class TollwayForwarder:
    def __init__(self) -> None:
        from tollway.gateway.upstream.client import Timeouts, UpstreamClient

        self._client = UpstreamClient()
        self._timeouts = Timeouts()

    async def forward(self, body: bytes) -> tuple[int, bytes]:
        resp = await self._client.request("POST", UPSTREAM, [("content-type", "application/json")],
                                          body, self._timeouts)
        return resp.status, await resp.read()


FORWARDERS = {"none": NoUpstream, "aiohttp": AiohttpForwarder, "tollway": TollwayForwarder}


class ProxyApp:
    def __init__(self) -> None:
        self._forwarder = FORWARDERS[CLIENT]()

    async def __rsgi__(self, scope, proto) -> None:
        status, body = await self._forwarder.forward(await proto())
        proto.response_bytes(status, HEADERS, body)


app = ProxyApp()
