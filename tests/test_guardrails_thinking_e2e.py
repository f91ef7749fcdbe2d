"""Output guardrails on a model's thinking (docs/guardrails.md): a real gateway, the official
`anthropic` and `openai` SDKs, and the hostile upstream (model `scripted`) answering what each
test scripts, once as an OpenAI-schema backend (vLLM) and once as Anthropic itself.

- Behind the Anthropic surface, an OpenAI-schema backend's `reasoning` / `reasoning_content` is
  translated into `thinking` blocks that the gateway writes itself (`signature: ""`): the client
  reads them like any other text, so they are scanned, stream and non-stream, mask and block.
- Anthropic's own thinking is signed, and a changed block is refused when the client sends it
  back: from a native Anthropic upstream it passes unchanged (the documented exception).
- vLLM 0.11+ sends the same reasoning under both names in one delta (or one message): one card
  is one finding, counted once in the request's `guardrails` and in the metrics.
"""
from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest

from tests.fakes.hostile_upstream import Answer, HostileUpstream
from tests.harness import TEST_KEY, UPSTREAM_SECRET, GatewayProcess, key_hash

CARD = "4111 1111 1111 1111"  # Luhn-valid (a test Visa number)
CARD_DIGITS = CARD.replace(" ", "")
SSE = (("content-type", "text/event-stream"),)
JSON = (("content-type", "application/json"),)
REASONING = f"the card is {CARD}, so I pay with it"
MASKED = "the card is <CREDIT_CARD>, so I pay with it"
SIGNATURE = "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds"  # (opaque to the gateway)


@pytest.fixture(scope="module")
def gw(hostile: HostileUpstream) -> Iterator[GatewayProcess]:
    process = GatewayProcess(f"""
providers:
  - {{name: vllm, schema: openai, base_url: "{hostile.url}/v1", api_key: {UPSTREAM_SECRET}}}
  - {{name: claude, schema: anthropic, base_url: "{hostile.url}", api_key: {UPSTREAM_SECRET}}}
models:
  - {{name: vllm-mask, targets: [{{provider: vllm, model: scripted}}]}}
  - {{name: vllm-block, targets: [{{provider: vllm, model: scripted}}]}}
  - {{name: claude-mask, targets: [{{provider: claude, model: scripted}}]}}
keys:
  - {{name: alice, key_hash: "{key_hash(TEST_KEY)}"}}
routing:
  outlier_detection: {{consecutive_failures: 1000000}}
guardrails:
  - {{name: out-mask, type: pii, action: mask, apply_to: [output], scope: {{models: [vllm-mask, claude-mask]}}}}
  - {{name: out-block, type: pii, action: block, apply_to: [output], scope: {{models: [vllm-block]}}}}
""")
    yield process
    process.stop()


def _an(gw: GatewayProcess) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url + "/anthropic", api_key=TEST_KEY, max_retries=0, timeout=20)


def _oa(gw: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=TEST_KEY, max_retries=0, timeout=20)


_ASK: Any = [{"role": "user", "content": "pay the bill"}]


def _log_of(gw: GatewayProcess, request_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for line in gw.log_lines():
            if line.get("request_id") == request_id:
                return line
        time.sleep(0.05)
    raise AssertionError(f"no access log line for {request_id}")


# -- an OpenAI-schema backend: its reasoning, as the upstream sends it -----------------------------

def _chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    doc = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "scripted",
           "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + json.dumps(doc).encode() + b"\n\n"


def _vllm_stream(hostile: HostileUpstream, names: tuple[str, ...]) -> None:
    """The reasoning in 4-character deltas (a card split over several), under every one of
    `names` in each delta, then the answer."""
    pieces = [REASONING[i:i + 4] for i in range(0, len(REASONING), 4)]
    chunks = (_chunk({"role": "assistant", "content": ""}), *(_chunk({n: p for n in names}) for p in pieces),
              _chunk({"content": "Paid."}), _chunk({}, finish="stop"),
              b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"scripted",'
              b'"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":20,"total_tokens":25}}\n\n',
              b"data: [DONE]\n\n")
    hostile.script(Answer(headers=SSE, chunks=chunks, framing="chunked"))


def _vllm_answer(hostile: HostileUpstream, names: tuple[str, ...]) -> None:
    message = {"role": "assistant", "content": "Paid.", **{n: REASONING for n in names}}
    body = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "scripted",
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 20, "total_tokens": 25}}
    hostile.script(Answer(headers=JSON, chunks=(json.dumps(body).encode(),)))


# -- translated thinking is the gateway's own text: scanned ----------------------------------------

@pytest.mark.parametrize("names", [("reasoning",), ("reasoning_content",), ("reasoning", "reasoning_content")])
def test_translated_thinking_is_masked_in_a_stream(gw: GatewayProcess, hostile: HostileUpstream,
                                                   names: tuple[str, ...]) -> None:
    _vllm_stream(hostile, names)
    thinking, text, raw = "", "", []
    with _an(gw).messages.stream(model="vllm-mask", max_tokens=100, messages=_ASK) as stream:
        for event in stream:
            raw.append(event.model_dump_json())
            if event.type == "content_block_delta" and event.delta.type == "thinking_delta":
                thinking += event.delta.thinking
            elif event.type == "content_block_delta" and event.delta.type == "text_delta":
                text += event.delta.text
        final = stream.get_final_message()
    assert thinking == MASKED and text == "Paid."
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert final.content[0].thinking == MASKED  # type: ignore[union-attr]
    assert CARD_DIGITS[:8] not in "".join(raw).replace(" ", "")
    assert _log_of(gw, stream.response.headers["x-request-id"])["guardrails"] == {
        "out-mask": {"credit_card": 1}}


def test_translated_thinking_is_blocked_in_a_stream(gw: GatewayProcess, hostile: HostileUpstream) -> None:
    _vllm_stream(hostile, ("reasoning", "reasoning_content"))
    seen: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as info:
        with _an(gw).messages.stream(model="vllm-block", max_tokens=100, messages=_ASK) as stream:
            for event in stream:
                seen.append(event.model_dump_json())
    assert "blocked by guardrail 'out-block' (credit_card)" in str(info.value)
    said = "".join(seen).replace(" ", "")
    assert CARD_DIGITS[:8] not in said and "Paid." not in said


@pytest.mark.parametrize("names", [("reasoning",), ("reasoning_content",), ("reasoning", "reasoning_content")])
def test_translated_thinking_is_masked_in_an_answer(gw: GatewayProcess, hostile: HostileUpstream,
                                                    names: tuple[str, ...]) -> None:
    _vllm_answer(hostile, names)
    got = _an(gw).messages.with_raw_response.create(model="vllm-mask", max_tokens=100, messages=_ASK)
    message = got.parse()
    assert [(b.type, getattr(b, "thinking", None) or getattr(b, "text", None)) for b in message.content] == [
        ("thinking", MASKED), ("text", "Paid.")]
    assert CARD_DIGITS[:8] not in got.http_response.text.replace(" ", "")
    assert _log_of(gw, got.headers["x-request-id"])["guardrails"] == {"out-mask": {"credit_card": 1}}


def test_translated_thinking_is_blocked_in_an_answer(gw: GatewayProcess, hostile: HostileUpstream) -> None:
    _vllm_answer(hostile, ("reasoning", "reasoning_content"))
    with pytest.raises(anthropic.APIStatusError) as info:
        _an(gw).messages.create(model="vllm-block", max_tokens=100, messages=_ASK)
    assert info.value.status_code == 502
    assert "blocked by guardrail 'out-block' (credit_card)" in str(info.value)
    assert CARD_DIGITS[:8] not in info.value.response.text.replace(" ", "")


# -- a native Anthropic upstream's thinking is signed: passed unchanged ----------------------------

def _sse(kind: str, payload: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(payload)}\n\n".encode()


def _claude_stream(hostile: HostileUpstream) -> None:
    usage = {"input_tokens": 5, "output_tokens": 1}
    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": "scripted", "content": [],
               "stop_reason": None, "stop_sequence": None, "usage": usage}
    events = [_sse("message_start", {"type": "message_start", "message": message}),
              _sse("content_block_start", {"type": "content_block_start", "index": 0,
                                           "content_block": {"type": "thinking", "thinking": "", "signature": ""}}),
              *(_sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                             "delta": {"type": "thinking_delta", "thinking": REASONING[i:i + 4]}})
                for i in range(0, len(REASONING), 4)),
              _sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                           "delta": {"type": "signature_delta", "signature": SIGNATURE}}),
              _sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
              _sse("content_block_start", {"type": "content_block_start", "index": 1,
                                           "content_block": {"type": "text", "text": ""}}),
              _sse("content_block_delta", {"type": "content_block_delta", "index": 1,
                                           "delta": {"type": "text_delta", "text": f"Paid with {CARD}."}}),
              _sse("content_block_stop", {"type": "content_block_stop", "index": 1}),
              _sse("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                     "usage": {"output_tokens": 20}}),
              _sse("message_stop", {"type": "message_stop"})]
    hostile.script(Answer(headers=SSE, chunks=tuple(events), framing="chunked"))


def test_native_signed_thinking_passes_unchanged_in_a_stream(gw: GatewayProcess, hostile: HostileUpstream) -> None:
    """Anthropic's thinking is signed: masked, the client's next turn would be refused. The text
    beside it is still scanned (docs/guardrails.md, "Not done yet")."""
    _claude_stream(hostile)
    with _an(gw).messages.stream(model="claude-mask", max_tokens=100, messages=_ASK) as stream:
        final = stream.get_final_message()
    thinking, text = final.content
    assert thinking.type == "thinking" and thinking.thinking == REASONING and thinking.signature == SIGNATURE
    assert text.type == "text" and text.text == "Paid with <CREDIT_CARD>."


def test_native_signed_thinking_passes_unchanged_in_an_answer(gw: GatewayProcess, hostile: HostileUpstream) -> None:
    body = {"id": "msg_1", "type": "message", "role": "assistant", "model": "scripted",
            "content": [{"type": "thinking", "thinking": REASONING, "signature": SIGNATURE},
                        {"type": "text", "text": f"Paid with {CARD}."}],
            "stop_reason": "end_turn", "stop_sequence": None, "usage": {"input_tokens": 5, "output_tokens": 20}}
    hostile.script(Answer(headers=JSON, chunks=(json.dumps(body).encode(),)))
    thinking, text = _an(gw).messages.create(model="claude-mask", max_tokens=100, messages=_ASK).content
    assert thinking.type == "thinking" and thinking.thinking == REASONING and thinking.signature == SIGNATURE
    assert text.type == "text" and text.text == "Paid with <CREDIT_CARD>."


# -- one reasoning under two names is one finding ----------------------------------------------

def _decisions(gw: GatewayProcess) -> float:
    """tollway_guardrail_decisions_total of out-mask's credit_card findings, as scraped now."""
    with urllib.request.urlopen(gw.url + "/metrics", timeout=10) as r:
        lines = r.read().decode().splitlines()
    want = 'tollway_guardrail_decisions_total{action="mask",detector="credit_card",guardrail="out-mask"}'
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(want))


@pytest.mark.parametrize("stream", [True, False])
def test_reasoning_under_both_names_is_one_finding(gw: GatewayProcess, hostile: HostileUpstream, stream: bool) -> None:
    """vLLM 0.11+ repeats the reasoning under `reasoning` and `reasoning_content`: both are masked
    (a client reads either), and the one card is counted once."""
    names = ("reasoning", "reasoning_content")
    before = _decisions(gw)
    if stream:
        _vllm_stream(hostile, names)
        got = _oa(gw).chat.completions.with_raw_response.create(model="vllm-mask", messages=_ASK, stream=True)
        chunks = list(got.parse())
        said = {n: "".join(getattr(c.choices[0].delta, n, None) or "" for c in chunks if c.choices) for n in names}
    else:
        _vllm_answer(hostile, names)
        got = _oa(gw).chat.completions.with_raw_response.create(model="vllm-mask", messages=_ASK)
        message = got.parse().choices[0].message
        said = {n: getattr(message, n) for n in names}
    assert said == {n: MASKED for n in names}
    assert _log_of(gw, got.headers["x-request-id"])["guardrails"] == {"out-mask": {"credit_card": 1}}
    assert _decisions(gw) - before == 1


def test_reasoning_that_differs_under_the_two_names_is_counted_per_name(gw: GatewayProcess,
                                                                      hostile: HostileUpstream) -> None:
    """Two texts (a card in each) are two findings: only a repeat is counted once."""
    other = f"a second card {CARD} too"
    message = {"role": "assistant", "content": "Paid.", "reasoning": REASONING, "reasoning_content": other}
    body = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "scripted",
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 20, "total_tokens": 25}}
    hostile.script(Answer(headers=JSON, chunks=(json.dumps(body).encode(),)))
    got = _oa(gw).chat.completions.with_raw_response.create(model="vllm-mask", messages=_ASK)
    said = got.http_response.json()["choices"][0]["message"]
    assert (said["reasoning"], said["reasoning_content"]) == (MASKED, "a second card <CREDIT_CARD> too")
    assert _log_of(gw, got.headers["x-request-id"])["guardrails"] == {"out-mask": {"credit_card": 2}}
