"""Output guardrails on streams whose shape is not the plain one-choice answer (docs/guardrails.md):
a real gateway, raw HTTP or the official OpenAI SDK, and the hostile upstream (model `scripted`)
streaming the exact events a test scripts.

- vLLM (0.11+) and newer OpenAI-compatible servers stream a model's reasoning as `delta.reasoning`
  (vLLM keeps `reasoning_content` in sync "for now": both names, same text, one delta): that text
  reaches the client as surely as `reasoning_content` does, so it is held and scanned the same way.
"""
from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.fakes.hostile_upstream import Answer, HostileUpstream
from tests.harness import TEST_KEY, UPSTREAM_SECRET, GatewayProcess, key_hash

CARD = "4111 1111 1111 1111"  # Luhn-valid (a test Visa number)
CARD_DIGITS = CARD.replace(" ", "")
SSE = (("content-type", "text/event-stream"),)
MODELS = ("out-mask", "out-block", "deny-block", "deny-mask", "cached-mask")


@pytest.fixture(scope="module")
def gw(hostile: HostileUpstream) -> Iterator[GatewayProcess]:
    models = "\n".join(f"  - {{name: {m}, targets: [{{provider: raw, model: scripted}}]"
                       + (", cache: {deterministic_only: false}}" if m.startswith("cached") else "}") for m in MODELS)
    process = GatewayProcess(f"""
providers:
  - {{name: raw, schema: openai, base_url: "{hostile.url}/v1", api_key: {UPSTREAM_SECRET}}}
models:
{models}
keys:
  - {{name: alice, key_hash: "{key_hash(TEST_KEY)}"}}
routing:
  outlier_detection: {{consecutive_failures: 1000000}}
guardrails:
  - {{name: out-mask, type: pii, action: mask, apply_to: [output], scope: {{models: [out-mask, cached-mask]}}}}
  - {{name: out-block, type: pii, action: block, apply_to: [output], scope: {{models: [out-block]}}}}
  - {{name: deny-block, type: regex, deny: ["(?i)project\\\\s+bluebird"], action: block, apply_to: [output],
      scope: {{models: [deny-block]}}}}
  - {{name: deny-mask, type: regex, deny: ["(?i)project\\\\s+bluebird"], action: mask, apply_to: [output],
      scope: {{models: [deny-mask]}}}}
cache: {{backend: memory}}
""")
    yield process
    process.stop()


def _chunk(delta: dict[str, Any], finish: str | None = None, index: int = 0) -> dict[str, Any]:
    return {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "scripted",
            "choices": [{"index": index, "delta": delta, "finish_reason": finish}]}


def _script(hostile: HostileUpstream, *chunks: dict[str, Any], done: bool = True) -> None:
    events = [b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks]
    hostile.script(Answer(headers=SSE, chunks=(*events, *([b"data: [DONE]\n\n"] if done else [])), framing="chunked"))


def _pieces(text: str, n: int = 3) -> list[str]:
    return [text[i:i + n] for i in range(0, len(text), n)]


def _stream(gw: GatewayProcess, model: str) -> tuple[bytes, list[dict[str, Any]]]:
    """The raw bytes a client got for a streamed chat, and its data events' JSON objects."""
    body = json.dumps({"model": model, "stream": True, "messages": [{"role": "user", "content": "hi"}]}).encode()
    req = urllib.request.Request(gw.url + "/v1/chat/completions", data=body, method="POST", headers={
        "authorization": "Bearer " + TEST_KEY, "content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=20) as r:
        raw = r.read()
    objs = [json.loads(line[5:]) for line in raw.decode().splitlines()
            if line.startswith("data:") and line[5:].strip() not in ("", "[DONE]")]
    return raw, objs


def _said(objs: list[dict[str, Any]], name: str, index: int = 0) -> str:
    """What a client reading `delta[name]` of choice `index` got, joined."""
    return "".join(c["delta"].get(name) or "" for o in objs for c in o.get("choices") or ()
                   if c.get("index", 0) == index and isinstance(c.get("delta"), dict))


def _error(objs: list[dict[str, Any]]) -> dict[str, Any] | None:
    return next((o["error"] for o in objs if "error" in o), None)


# -- reasoning under vLLM's newer name ------------------------------------------------------------

REASONING = f"the card is {CARD}, says project bluebird, so"


def _vllm_reasoning(hostile: HostileUpstream, *names: str) -> None:
    """A vLLM-style stream: the reasoning in 3-character deltas under `names` (each delta carries
    every one of them, as vLLM 0.11+ keeps both in sync), then the answer."""
    _script(hostile, _chunk({"role": "assistant", "content": ""}),
            *(_chunk({name: p for name in names}) for p in _pieces(REASONING)),
            _chunk({"content": "The answer."}), _chunk({}, finish="stop"))


@pytest.mark.parametrize("names", [("reasoning",), ("reasoning", "reasoning_content")])
def test_streamed_vllm_reasoning_is_masked(gw: GatewayProcess, hostile: HostileUpstream, names: tuple[str, ...]) -> None:
    _vllm_reasoning(hostile, *names)
    raw, objs = _stream(gw, "out-mask")
    for name in names:  # whichever name a client reads, it reads the reasoning once, masked
        assert _said(objs, name) == "the card is <CREDIT_CARD>, says project bluebird, so"
    assert _said(objs, "content") == "The answer."
    assert CARD_DIGITS[:8] not in raw.decode().replace(" ", "")
    _vllm_reasoning(hostile, *names)
    raw, objs = _stream(gw, "deny-mask")
    for name in names:
        assert _said(objs, name) == f"the card is {CARD}, says <REGEX>, so"
    assert b"bluebird" not in raw


@pytest.mark.parametrize("names", [("reasoning",), ("reasoning", "reasoning_content")])
@pytest.mark.parametrize("model, detector", [("out-block", "credit_card"), ("deny-block", "regex")])
def test_streamed_vllm_reasoning_is_blocked(gw: GatewayProcess, hostile: HostileUpstream, names: tuple[str, ...],
                                            model: str, detector: str) -> None:
    _vllm_reasoning(hostile, *names)
    raw, objs = _stream(gw, model)
    error = _error(objs)
    assert error is not None and error["code"] == "content_policy_violation"
    assert error["message"] == f"blocked by guardrail '{model}' ({detector})"
    text = raw.decode()
    assert CARD_DIGITS[:8] not in text.replace(" ", "") if detector == "credit_card" else "bluebird" not in text
    assert "The answer." not in text


def test_reasoning_under_either_name_across_one_stream_keeps_each_names_tail(
        gw: GatewayProcess, hostile: HostileUpstream) -> None:
    """A stream whose reasoning comes under one name, then the other (two providers' habits): each
    name's held tail goes out under that name, before the answer."""
    first, second = "so the total is 12345", f"and the card {CARD}"
    _script(hostile, _chunk({"role": "assistant", "content": ""}),
            *(_chunk({"reasoning_content": p}) for p in _pieces(first)),
            *(_chunk({"reasoning": p}) for p in _pieces(second)),
            _chunk({"content": "4."}), _chunk({}, finish="stop"))
    raw, objs = _stream(gw, "out-mask")
    assert _said(objs, "reasoning_content") == first
    assert _said(objs, "reasoning") == "and the card <CREDIT_CARD>"
    order = [n for o in objs for c in o["choices"] for n in ("reasoning_content", "reasoning", "content")
             if c["delta"].get(n)]
    assert order[-1] == "content" and order.count("content") == 1, order
    assert CARD_DIGITS[:8] not in raw.decode().replace(" ", "")


# -- other stream shapes --------------------------------------------------------------------------

def _post(gw: GatewayProcess, path: str, body: dict[str, Any], headers: dict[str, str] | None = None
          ) -> tuple[bytes, list[dict[str, Any]]]:
    req = urllib.request.Request(gw.url + path, data=json.dumps(body).encode(), method="POST", headers={
        "authorization": "Bearer " + TEST_KEY, "content-type": "application/json", **(headers or {})})
    with urllib.request.urlopen(req, timeout=20) as r:
        raw = r.read()
    objs = [json.loads(line[5:]) for line in raw.decode().splitlines()
            if line.startswith("data:") and line[5:].strip() not in ("", "[DONE]")]
    return raw, objs


def test_n_choices_are_held_and_masked_apart(gw: GatewayProcess, hostile: HostileUpstream) -> None:
    texts = {0: f"zero {CARD} end", 1: f"one {CARD}"}
    pieces = {i: _pieces(t, 4) for i, t in texts.items()}
    chunks = [_chunk({"role": "assistant", "content": ""}, index=i) for i in texts]
    for k in range(max(len(p) for p in pieces.values())):
        chunks += [_chunk({"content": p[k]}, index=i) for i, p in pieces.items() if k < len(p)]
    chunks += [_chunk({}, finish="stop", index=1), _chunk({}, finish="stop", index=0)]
    _script(hostile, *chunks)
    raw, objs = _stream(gw, "out-mask")
    assert _said(objs, "content", 0) == "zero <CREDIT_CARD> end"
    assert _said(objs, "content", 1) == "one <CREDIT_CARD>"
    assert CARD_DIGITS[:8] not in raw.decode().replace(" ", "")
    _script(hostile, *chunks)
    raw, objs = _stream(gw, "out-block")
    assert (_error(objs) or {}).get("code") == "content_policy_violation"
    assert CARD_DIGITS[:8] not in raw.decode().replace(" ", "")


def test_a_chat_stream_without_finish_reason_gets_its_held_tail_before_done(
        gw: GatewayProcess, hostile: HostileUpstream) -> None:
    _script(hostile, _chunk({"role": "assistant", "content": ""}), *(_chunk({"content": p}) for p in _pieces(f"card {CARD}")))
    raw, objs = _stream(gw, "out-mask")
    assert _said(objs, "content") == "card <CREDIT_CARD>"
    assert raw.rstrip().endswith(b"data: [DONE]")


def test_a_completions_stream_without_finish_reason_gets_its_held_tail_as_text(
        gw: GatewayProcess, hostile: HostileUpstream) -> None:
    chunks = [{"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "scripted",
               "choices": [{"index": 0, "text": p, "logprobs": None, "finish_reason": None}]} for p in _pieces(f"card {CARD}")]
    _script(hostile, *chunks)
    raw, objs = _post(gw, "/v1/completions", {"model": "out-mask", "prompt": "hi", "stream": True})
    assert "".join(c.get("text") or "" for o in objs for c in o["choices"]) == "card <CREDIT_CARD>"
    assert CARD_DIGITS[:8] not in raw.decode().replace(" ", "")


def test_a_usage_only_last_chunk_after_the_finish(gw: GatewayProcess, hostile: HostileUpstream) -> None:
    usage = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "scripted", "choices": [],
             "usage": {"prompt_tokens": 1, "completion_tokens": 9, "total_tokens": 10}}
    _script(hostile, _chunk({"role": "assistant", "content": ""}), *(_chunk({"content": p}) for p in _pieces(f"card {CARD}")),
            _chunk({}, finish="stop"), usage)
    raw, objs = _post(gw, "/v1/chat/completions", {"model": "out-mask", "stream": True, "stream_options": {
        "include_usage": True}, "messages": [{"role": "user", "content": "hi"}]})
    assert _said(objs, "content") == "card <CREDIT_CARD>"
    assert objs[-1]["choices"] == [] and objs[-1]["usage"]["completion_tokens"] == 9


def test_two_tool_calls_streamed_in_pieces_are_masked_each_as_json(gw: GatewayProcess, hostile: HostileUpstream) -> None:
    args = [json.dumps({"to": "jane.doe@example.com"}), json.dumps({"card": CARD})]
    chunks = [_chunk({"role": "assistant", "content": None})]
    for i, a in enumerate(args):
        chunks.append(_chunk({"tool_calls": [{"index": i, "id": f"call_{i}", "type": "function",
                                              "function": {"name": "send", "arguments": ""}}]}))
        chunks += [_chunk({"tool_calls": [{"index": i, "function": {"arguments": p}}]}) for p in _pieces(a)]
    chunks.append(_chunk({}, finish="tool_calls"))
    _script(hostile, *chunks)
    raw, objs = _stream(gw, "out-mask")
    got: dict[int, str] = {}
    for o in objs:
        for c in o["choices"]:
            for call in c["delta"].get("tool_calls") or ():
                got[call["index"]] = got.get(call["index"], "") + (call.get("function") or {}).get("arguments", "")
    assert [json.loads(got[i]) for i in sorted(got)] == [{"to": "<EMAIL>"}, {"card": "<CREDIT_CARD>"}]
    assert b"example.com" not in raw and CARD_DIGITS[:8] not in raw.decode().replace(" ", "")


def test_a_cached_streams_reasoning_is_replayed_as_it_was_masked(gw: GatewayProcess, hostile: HostileUpstream) -> None:
    """The cache keeps what the client got: a hit replays the reasoning masked, under both names
    when both came, and asks no upstream."""
    _vllm_reasoning(hostile, "reasoning", "reasoning_content")
    served = hostile.scripted_served
    for hit in (False, True):
        raw, objs = _stream(gw, "cached-mask")
        for name in ("reasoning", "reasoning_content"):
            assert _said(objs, name) == "the card is <CREDIT_CARD>, says project bluebird, so", (hit, name)
        assert _said(objs, "content") == "The answer."
        assert CARD_DIGITS[:8] not in raw.decode().replace(" ", "")
    assert hostile.scripted_served == served + 1


def _messages(gw: GatewayProcess, model: str) -> tuple[bytes, list[dict[str, Any]]]:
    return _post(gw, "/anthropic/v1/messages", {"model": model, "max_tokens": 50, "stream": True,
                                                 "messages": [{"role": "user", "content": "hi"}]},
                 {"anthropic-version": "2023-06-01"})


def test_anthropic_surface_over_a_chat_stream_flushes_text_before_a_tool_call(
        gw: GatewayProcess, hostile: HostileUpstream) -> None:
    """/v1/messages over an OpenAI-schema backend: the guardrail reads the translated events; the
    text block's held tail goes out in that block, before the tool_use block opens."""
    args = json.dumps({"card": CARD})
    _script(hostile, _chunk({"role": "assistant", "content": ""}), *(_chunk({"content": p}) for p in _pieces(f"pay {CARD}")),
            _chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "pay", "arguments": ""}}]}),
            *(_chunk({"tool_calls": [{"index": 0, "function": {"arguments": p}}]}) for p in _pieces(args)),
            _chunk({}, finish="tool_calls"))
    raw, objs = _messages(gw, "out-mask")
    blocks: dict[int, str] = {}
    order = []
    for o in objs:
        if o["type"] == "content_block_delta":
            piece = o["delta"].get("text", o["delta"].get("partial_json", ""))
            blocks[o["index"]] = blocks.get(o["index"], "") + piece
            order.append(o["index"])
    assert blocks[0] == "pay <CREDIT_CARD>" and json.loads(blocks[1]) == {"card": "<CREDIT_CARD>"}
    assert order == sorted(order)  # every delta of the text block before the tool's
    assert CARD_DIGITS[:8] not in raw.decode().replace(" ", "")
    _script(hostile, _chunk({"role": "assistant", "content": ""}), *(_chunk({"content": p}) for p in _pieces(f"pay {CARD} ok")),
            _chunk({}, finish="stop"))
    raw, objs = _messages(gw, "out-block")
    assert objs[-1]["type"] == "error" and "blocked by guardrail 'out-block' (credit_card)" in objs[-1]["error"]["message"]
    assert CARD_DIGITS[:8] not in raw.decode().replace(" ", "")

