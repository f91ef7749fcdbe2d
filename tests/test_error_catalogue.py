"""The error catalogue's bodies are a contract: clients, SDKs and dashboards match on status,
type, code and message. These pin the exact bytes of every mid-stream error a translator
raises (fed real wire bytes), and of the catalogue's other constructors."""
from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from tests.fakes import bedrock_upstream as fb
from tollway.core import errors
from tollway.core.config import Provider
from tollway.core.errors import GatewayError
from tollway.core.providers.base import CallContext, StreamTranslator
from tollway.core.providers.chat.anthropic import OpenAIToAnthropic
from tollway.core.providers.chat.bedrock import OpenAIToBedrock
from tollway.core.providers.chat.gemini import OpenAIToGemini
from tollway.core.providers.messages.native import AnthropicStreamRelay
from tollway.core.providers.messages.translate import ChatStreamToAnthropic
from tollway.core.request import parse_head


def _body(message: str, code: str | None, type: str = "api_error", param: str | None = None) -> bytes:
    return json.dumps({"error": {"message": message, "type": type, "param": param, "code": code}},
                      separators=(",", ":"), ensure_ascii=False).encode()


ENDED_EARLY = _body("The upstream provider 'up' ended the stream early.", "upstream_disconnected")
MALFORMED_EVENT = _body("The upstream provider sent a malformed stream event.", "upstream_malformed")


def _stream(adapter: Any) -> StreamTranslator:
    raw = b'{"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]}'
    provider = Provider(name="up", schema="x", base_url="https://up.example", region="r")
    translator: StreamTranslator = adapter.stream(CallContext("chat", raw, parse_head(raw), "m", provider, 0.0))
    return translator


def _raised(translator: StreamTranslator, *chunks: bytes, flush: bool = True) -> GatewayError:
    with pytest.raises(GatewayError) as err:
        for chunk in chunks:
            translator.feed(chunk)
        if flush:
            translator.flush()
    return err.value


def _anthropic() -> StreamTranslator:
    return _stream(OpenAIToAnthropic())


def _gemini() -> StreamTranslator:
    return _stream(OpenAIToGemini())


def _bedrock() -> StreamTranslator:
    return _stream(OpenAIToBedrock())


START = b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1","model":"m","content":[]}}\n\n'
GEMINI_TEXT = b'data: {"candidates":[{"content":{"parts":[{"text":"hi"}]}}]}\n\n'


@pytest.mark.parametrize("make, chunks, body", [
    (_anthropic, [], ENDED_EARLY),
    (_anthropic, [START], ENDED_EARLY),
    (_anthropic, [b"data: {not json\n\n"], MALFORMED_EVENT),
    (_anthropic, [b'data: {"type":"content_block_delta","delta":{"text":"a"}}\n\n'],
     _body("The upstream stream did not begin with message_start.", "upstream_malformed")),
    (_gemini, [], ENDED_EARLY),
    (_gemini, [GEMINI_TEXT], ENDED_EARLY),
    (_gemini, [b"data: [1, 2]\n\n"], MALFORMED_EVENT),
    (_bedrock, [], ENDED_EARLY),
    (_bedrock, [fb.event("messageStart", {"role": "assistant"})], ENDED_EARLY),
    (_bedrock, [fb.frame({":message-type": "event", ":event-type": "messageStart"}, b"{oops")], MALFORMED_EVENT),
    (_bedrock, [b"\x00\x00\x00\x10\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"],
     _body("The upstream provider sent a corrupt event stream frame.", "upstream_malformed")),
])
def test_a_translators_mid_stream_error_body_is_unchanged(make: Callable[[], StreamTranslator], chunks: list[bytes],
                                                          body: bytes) -> None:
    err = _raised(make(), *chunks)
    assert (err.status, err.body(), err.headers) == (502, body, [])


def test_the_anthropic_client_apis_stream_errors_are_unchanged() -> None:
    assert _raised(ChatStreamToAnthropic("m")).body() == _body("The upstream stream ended before any answer.",
                                                               "upstream_disconnected")
    assert _raised(ChatStreamToAnthropic("m"), b"data: {nope\n\n").body() == MALFORMED_EVENT
    failed = _raised(ChatStreamToAnthropic("m"), b'data: {"error": {"message": "boom"}}\n\n')
    assert (failed.status, failed.body()) == (502, _body("boom", "upstream_error"))
    unnamed = _raised(ChatStreamToAnthropic("m"), b'data: {"error": {}}\n\n')
    assert unnamed.body() == _body("The upstream provider failed mid-stream.", "upstream_error")
    relay = _raised(AnthropicStreamRelay(), START)
    assert relay.body() == _body("The upstream provider closed the stream before it finished.", "upstream_disconnected")


def test_done_closes_an_openai_stream_once() -> None:
    translator = ChatStreamToAnthropic("m")
    chunk = b'data: {"id":"c1","model":"m","choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":"stop"}]}\n\n'
    out = translator.feed(chunk + b"data: [DONE]\n\n")
    assert out.count(b"event: message_stop") == 1 and translator.flush() == b""


RETRY = [("retry-after", "1"), ("retry-after-ms", "1000")]


@pytest.mark.parametrize("err, status, body, headers", [
    (errors.upstream_malformed_embeddings("up"), 502,
     _body("The upstream provider 'up' sent an embeddings answer the gateway could not read.", "upstream_malformed"), []),
    (errors.upstream_error(429, "slow down", "rate_limit_error", "rate_limit_exceeded", None, RETRY), 429,
     _body("slow down", "rate_limit_exceeded", "rate_limit_error"), RETRY),
    (errors.upstream_error(400, "bad", "invalid_request_error", None, "messages"), 400,
     _body("bad", None, "invalid_request_error", "messages"), []),
    (errors.upstream_unreadable_error("up", 404), 404,
     _body("The upstream provider 'up' answered HTTP 404.", "upstream_error", "invalid_request_error"), []),
    (errors.upstream_unreadable_error("up", 503), 502,
     _body("The upstream provider 'up' answered HTTP 503.", "upstream_error"), []),
    (errors.upstream_no_credentials("up", "AWS credentials"), 502,
     _body("The gateway has no usable AWS credentials for upstream provider 'up'; ask the gateway operator to "
           "configure one.", "upstream_auth_failed"), []),
    (errors.rate_limited("Rate limit reached.", "tokens", RETRY), 429,
     _body("Rate limit reached.", "rate_limit_exceeded", "tokens"), RETRY),
    (errors.budget_exceeded("You exceeded your budget.", RETRY), 429,
     _body("You exceeded your budget.", "insufficient_quota", "insufficient_quota"), RETRY),
    (errors.rate_limits_unavailable(RETRY), 503,
     _body("The gateway cannot check rate limits right now; please retry shortly.", "rate_limit_store_unavailable"),
     RETRY),
    (errors.usage_unavailable(), 503,
     _body("The rate-limit store is unavailable; usage cannot be read right now.", "rate_limit_store_unavailable"), []),
    (errors.shutting_down(), 503,
     _body("The gateway is shutting down and could not finish this request; retry it.", "gateway_shutting_down"), []),
])
def test_a_catalogue_errors_status_body_and_headers(err: GatewayError, status: int, body: bytes,
                                                    headers: list[tuple[str, str]]) -> None:
    assert (err.status, err.body(), err.headers) == (status, body, headers)
