"""The request path's seams (tollway.gateway.pipeline): what is plugged in runs where it says.

The whole app is called in process (granian's scope and protocol stood in for) with the
`fake` provider, so each test sees exactly what a client would receive."""
from __future__ import annotations

import re

import msgspec
import pytest

from tollway.core import errors
from tollway.core.config import loads
from tollway.core.security.keys import hash_key
from tollway.gateway.admission import Admitted
from tollway.gateway.app import Gateway
from tollway.gateway.exchange import Exchange
from tollway.gateway.pipeline import Pipeline

KEY = "sk-pipeline-test"
CONFIG = f"""
providers: [{{name: up, schema: fake, fake_chunks: 4}}]
models: [{{name: m, targets: [{{provider: up, model: m}}]}}]
keys: [{{name: k, key_hash: "{hash_key(KEY)}", models: ["*"]}}]
"""


class Headers(dict[str, str]):
    def get_all(self, name: str) -> list[str]:
        return [self[name]] if name in self else []


class Scope:
    proto, method, path, client, server = "http", "POST", "/v1/chat/completions", "127.0.0.1:1", "127.0.0.1:2"

    def __init__(self, body: bytes) -> None:
        self.headers = Headers({"authorization": f"Bearer {KEY}", "content-type": "application/json",
                                "content-length": str(len(body))})


class Proto:
    """granian's protocol: the body in; a whole answer or the chunks of a stream out."""

    def __init__(self, body: bytes) -> None:
        self.body, self.status, self.answer, self.chunks = body, 0, b"", []

    async def __call__(self) -> bytes:
        return self.body

    def response_bytes(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status, self.answer = status, body

    def response_stream(self, status: int, headers: list[tuple[str, str]]) -> Proto:
        self.status = status
        return self

    async def send_bytes(self, data: bytes) -> None:
        self.chunks.append(data)


def _body(stream: bool) -> bytes:
    return msgspec.json.encode({"model": "m", "stream": stream, "messages": [{"role": "user", "content": "hi"}]})


async def _call(pipeline: Pipeline, stream: bool = False) -> Proto:
    gw = Gateway(loads(CONFIG))
    gw.start()
    gw.serving.pipeline = pipeline
    body = _body(stream)
    proto = Proto(body)
    try:
        await gw.__rsgi__(Scope(body), proto)
    finally:
        await gw.upstream.aclose()
    return proto


async def test_before_upstream_sees_the_admitted_request_and_can_refuse_it() -> None:
    seen: list[tuple[str, str]] = []

    async def refuse(req: Admitted, ex: Exchange) -> None:
        seen.append((req.route.name, req.key.key.name))
        raise errors.bad_request("refused by a request hook")

    proto = await _call(Pipeline(before_upstream=(refuse,)))
    assert seen == [("m", "k")]
    assert proto.status == 400 and b"refused by a request hook" in proto.answer


async def test_after_response_runs_once_with_the_settled_exchange_also_on_failure() -> None:
    records: list[tuple[int, int | None, str]] = []

    def record(ex: Exchange) -> None:
        records.append((ex.status, ex.usage.completion_tokens if ex.usage else None, ex.route))

    async def fail(req: Admitted, ex: Exchange) -> None:
        raise errors.bad_request("no")

    ok = await _call(Pipeline(after_response=(record,)))
    assert ok.status == 200 and len(records) == 1
    status, completion_tokens, route = records[0]
    assert (status, route) == (200, "m") and completion_tokens is not None and completion_tokens > 0
    await _call(Pipeline(before_upstream=(fail,), after_response=(record,)))
    assert len(records) == 2, "after_response runs for a refused request too"
    assert records[1][0] == 400, "and sees the status the client got"


async def test_on_chunk_rewrites_each_streamed_chunk_and_can_end_the_stream_with_an_error() -> None:
    upper = await _call(Pipeline(on_chunk=(lambda ex, out: out.replace(b"Hello", b"HOWDY"),)), stream=True)
    streamed = b"".join(upper.chunks)
    assert upper.status == 200 and b"HOWDY" in streamed and b"Hello" not in streamed
    assert streamed.rstrip().endswith(b"data: [DONE]")

    sent: list[int] = []

    def stop_after_two(ex: Exchange, out: bytes) -> bytes:
        sent.append(len(out))
        if len(sent) > 2:
            raise errors.GatewayError(400, "stopped by a stream guard", "invalid_request_error", "content_blocked")
        return out

    stopped = await _call(Pipeline(on_chunk=(stop_after_two,)), stream=True)
    last = stopped.chunks[-1]
    assert len(stopped.chunks) == 3, "two chunks, then the error event"
    assert b"stopped by a stream guard" in last and b"[DONE]" not in b"".join(stopped.chunks)


def _unstamped(proto: Proto) -> tuple[int, bytes, list[bytes]]:
    """What the client got, without the answer's `created` time (the two calls may straddle a second)."""
    def strip(data: bytes) -> bytes:
        return re.sub(rb'"created(_at)?":\s*\d+', b'"created":0', data)
    return proto.status, strip(proto.answer), [strip(c) for c in proto.chunks]


@pytest.mark.parametrize("stream", [False, True])
async def test_hooks_that_pass_chunks_on_change_nothing(stream: bool) -> None:
    with_hooks = await _call(Pipeline(on_chunk=(lambda ex, out: out,)), stream=stream)
    without = await _call(Pipeline(), stream=stream)
    assert _unstamped(with_hooks) == _unstamped(without) and with_hooks.status == 200
