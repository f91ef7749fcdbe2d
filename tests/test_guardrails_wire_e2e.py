"""Output guardrails against what an answer carries besides its text, and how it is framed
(docs/guardrails.md): a real gateway, the official OpenAI SDK, and upstreams that answer with the
exact bytes a test scripts (tests/fakes/hostile_upstream.py, model `scripted`) or record what
they were sent (tests/fakes/scripted_upstream.py).

- token logprobs repeat the answer's text token by token: a route with a masking or blocking
  output guardrail sends none;
- SSE framing the clients accept (CR line ends, an event's JSON over several `data:` lines) is
  scanned like any other, and a data event the guardrail cannot read ends the stream;
- tool-call arguments are JSON: a value behind an escape (`\\n`, `\\u0034`) is found, and a
  masked value leaves valid JSON.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.fakes.hostile_upstream import Answer, HostileUpstream
from tests.fakes.scripted_upstream import ScriptedUpstream
from tests.harness import TEST_KEY, UPSTREAM_SECRET, GatewayProcess, key_hash

CARD = "4111 1111 1111 1111"  # Luhn-valid (a test Visa number)
CARD_DIGITS = CARD.replace(" ", "")
EMAIL = "jane.doe@example.com"
SSE = (("content-type", "text/event-stream"),)
JSON = (("content-type", "application/json"),)

GUARDS = """
guardrails:
  - {name: out-mask, type: pii, action: mask, apply_to: [output], scope: {models: [out-mask]}}
  - {name: out-block, type: pii, action: block, apply_to: [output], scope: {models: [out-block]}}
  - {name: out-log, type: pii, action: log, apply_to: [output], scope: {models: [out-log]}}
  - {name: in-block, type: pii, action: block, apply_to: [input], scope: {models: [in-block]}}
  - {name: in-mask, type: pii, action: mask, apply_to: [input], scope: {models: [in-mask]}}
"""


def _config(hostile: str, scripted: str) -> str:
    raw = "\n".join(f"  - {{name: {m}, targets: [{{provider: raw, model: scripted}}]}}"
                    for m in ("out-mask", "out-block", "out-log"))
    told = "\n".join(f"  - {{name: {m}, targets: [{{provider: told, model: {m}}}]}}" for m in ("in-block", "in-mask"))
    return f"""
providers:
  - {{name: raw, schema: openai, base_url: "{hostile}/v1", api_key: {UPSTREAM_SECRET}}}
  - {{name: told, schema: openai, base_url: {scripted}, api_key: {UPSTREAM_SECRET}}}
models:
{raw}
{told}
keys:
  - {{name: alice, key_hash: "{key_hash(TEST_KEY)}"}}
routing:
  outlier_detection: {{consecutive_failures: 1000000}}
{GUARDS}
"""


@pytest.fixture(scope="module")
def scripted() -> Iterator[ScriptedUpstream]:
    fake = ScriptedUpstream()
    yield fake
    fake.server.stop()


@pytest.fixture(scope="module")
def gw(hostile: HostileUpstream, scripted: ScriptedUpstream) -> Iterator[GatewayProcess]:
    process = GatewayProcess(_config(hostile.url, scripted.url))
    yield process
    process.stop()


def _oa(gw: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=TEST_KEY, max_retries=0, timeout=20)


def _ask(gw: GatewayProcess, model: str, **kw: Any) -> Any:
    return _oa(gw).chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], **kw)


def _chunk(content: str | None = None, finish: str | None = None, **choice: Any) -> dict[str, Any]:
    delta = {} if content is None else {"content": content}
    return {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "scripted",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, **choice}]}


def _stream_of(*events: bytes, pause: float = 0.0) -> Answer:
    return Answer(headers=SSE, chunks=events, framing="chunked", pause=pause)


def _data(obj: dict[str, Any], eol: bytes = b"\n") -> bytes:
    return b"data: " + json.dumps(obj).encode() + eol + eol


def _answer(message: dict[str, Any], **choice: Any) -> Answer:
    body = {"id": "x", "object": "chat.completion", "created": 1, "model": "scripted",
            "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": "stop", **choice}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
    return Answer(headers=JSON, chunks=(json.dumps(body).encode(),))


def _logprobs(tokens: list[str]) -> dict[str, Any]:
    return {"content": [{"token": t, "logprob": -0.1, "bytes": list(t.encode()),
                         "top_logprobs": [{"token": t, "logprob": -0.1, "bytes": list(t.encode())}]} for t in tokens]}


TOKENS = ["card ", CARD[:4], CARD[4:9], CARD[9:14], CARD[14:], " ok"]


def _streamed(stream: Any, seen: list[str] | None = None) -> tuple[str, str]:
    """(the content deltas, the logprob tokens) a chat stream carried; `seen` gets both as they
    come (for a stream that ends in an error)."""
    seen = [] if seen is None else seen
    text, tokens = "", ""
    for c in stream:
        if c.choices:
            text += c.choices[0].delta.content or ""
            lp = c.choices[0].logprobs
            for t in (lp.content or []) if lp else []:
                tokens += t.token + "".join(top.token for top in t.top_logprobs)
            seen[:] = [text, tokens]
    return text, tokens


def _tokens(value: Any) -> str:
    """Every logprob token in a JSON value, joined."""
    if isinstance(value, dict):
        return "".join(v if k == "token" and isinstance(v, str) else _tokens(v) for k, v in value.items())
    return "".join(_tokens(v) for v in value) if isinstance(value, list) else ""


# -- logprobs ----------------------------------------------------------------------------------

def test_a_masked_answer_carries_no_logprobs(gw: GatewayProcess, hostile: HostileUpstream) -> None:
    hostile.script(_answer({"content": f"card {CARD} ok"}, logprobs=_logprobs(TOKENS)))
    answer = _ask(gw, "out-mask", logprobs=True, top_logprobs=1)
    assert answer.choices[0].message.content == "card <CREDIT_CARD> ok"
    assert answer.choices[0].logprobs is None
    assert CARD_DIGITS[:8] not in answer.model_dump_json().replace(" ", "")


def test_a_blocked_stream_sent_no_logprobs_of_the_finding(gw: GatewayProcess, hostile: HostileUpstream) -> None:
    chunks = [_chunk(t, logprobs=_logprobs([t])) for t in TOKENS]
    hostile.script(_stream_of(*(_data(c) for c in [_chunk(""), *chunks, _chunk(finish="stop")]), b"data: [DONE]\n\n",
                              pause=0.02))
    seen: list[str] = []
    with pytest.raises(openai.APIError, match="blocked by guardrail 'out-block' \\(credit_card\\)"):
        _streamed(_ask(gw, "out-block", logprobs=True, top_logprobs=1, stream=True), seen)
    assert seen[0] == "card " and CARD_DIGITS[:4] not in seen[1]
    hostile.script(_stream_of(*(_data(c) for c in [_chunk(""), *chunks, _chunk(finish="stop")]), b"data: [DONE]\n\n"))
    text, tokens = _streamed(_ask(gw, "out-mask", logprobs=True, stream=True))
    assert text == "card <CREDIT_CARD> ok" and tokens == ""


def test_a_log_guardrail_leaves_logprobs_alone(gw: GatewayProcess, hostile: HostileUpstream) -> None:
    hostile.script(_answer({"content": "hello"}, logprobs=_logprobs(["hello"])))
    answer = _ask(gw, "out-log", logprobs=True)
    assert answer.choices[0].logprobs is not None and answer.choices[0].logprobs.content[0].token == "hello"


def test_responses_answers_carry_no_logprobs(gw: GatewayProcess, hostile: HostileUpstream) -> None:
    lp = [{"token": t, "logprob": -0.1, "bytes": list(t.encode()), "top_logprobs": []} for t in TOKENS]
    text = "".join(TOKENS)
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": lp}
    item = {"type": "message", "id": "m1", "status": "completed", "role": "assistant", "content": [part]}
    body = {"id": "r1", "object": "response", "created_at": 1, "status": "completed", "model": "scripted",
            "output": [item], "usage": {"input_tokens": 1, "output_tokens": 1, "total_tokens": 2,
                                        "input_tokens_details": {"cached_tokens": 0},
                                        "output_tokens_details": {"reasoning_tokens": 0}}}
    hostile.script(Answer(headers=JSON, chunks=(json.dumps(body).encode(),)))
    answer = _oa(gw).responses.create(model="out-mask", input="hi", include=["message.output_text.logprobs"])
    assert answer.output_text == "card <CREDIT_CARD> ok"
    assert CARD_DIGITS[:4] not in _tokens(answer.model_dump())
    at = {"item_id": "m1", "output_index": 0, "content_index": 0}
    events = [("response.created", {"response": {**body, "status": "in_progress", "output": []}}),
              ("response.output_item.added", {"output_index": 0, "item": {**item, "content": []}}),
              ("response.content_part.added", {**at, "part": {**part, "text": "", "logprobs": []}}),
              *(("response.output_text.delta", {**at, "delta": t, "logprobs": [x]}) for t, x in zip(TOKENS, lp)),
              ("response.output_text.done", {**at, "text": text, "logprobs": lp}),
              ("response.content_part.done", {**at, "part": part}),
              ("response.output_item.done", {"output_index": 0, "item": item}),
              ("response.completed", {"response": body})]
    hostile.script(_stream_of(*(f"event: {k}\ndata: {json.dumps({'type': k, 'sequence_number': i, **p})}\n\n".encode()
                                for i, (k, p) in enumerate(events))))
    got = list(_oa(gw).responses.create(model="out-mask", input="hi", stream=True,
                                        include=["message.output_text.logprobs"]))
    assert got[-1].type == "response.completed" and got[-1].response.output_text == "card <CREDIT_CARD> ok"
    assert CARD_DIGITS[:4] not in _tokens([e.model_dump() for e in got])


# -- framing ------------------------------------------------------------------------------------

PIECES = [_chunk(""), _chunk("card "), _chunk(CARD[:7]), _chunk(CARD[7:]), _chunk(" ok"), _chunk(finish="stop")]


def _two_lines(obj: dict[str, Any]) -> bytes:
    """One event whose JSON is split over two `data:` lines (a client joins them with \\n)."""
    s = json.dumps(obj)
    cut = s.index('"choices"')
    return b"data: " + s[:cut].encode() + b"\ndata: " + s[cut:].encode() + b"\n\n"


@pytest.mark.parametrize("framing", ["cr", "crlf", "data-lines"])
def test_every_framing_a_client_reads_is_scanned(gw: GatewayProcess, hostile: HostileUpstream, framing: str) -> None:
    events = [_two_lines(p) if framing == "data-lines" else _data(p, b"\r" if framing == "cr" else b"\r\n")
              for p in PIECES]
    done = b"data: [DONE]" + (b"\r\r" if framing == "cr" else b"\n\n")
    hostile.script(_stream_of(*events, done))
    assert _streamed(_ask(gw, "out-mask", stream=True))[0] == "card <CREDIT_CARD> ok"
    hostile.script(_stream_of(*events, done))
    seen: list[str] = []
    with pytest.raises(openai.APIError, match="blocked by guardrail 'out-block' \\(credit_card\\)"):
        _streamed(_ask(gw, "out-block", stream=True), seen)
    assert CARD_DIGITS[:4] not in "".join(seen)


def test_a_data_event_the_guardrail_cannot_read_ends_the_stream(gw: GatewayProcess, hostile: HostileUpstream) -> None:
    broken = b'data: {"choices": [{"index": 0, "delta": {"content": "' + CARD.encode() + b'"}}\n\n'
    hostile.script(_stream_of(_data(_chunk("")), _data(_chunk("fine ")), broken, b"data: [DONE]\n\n"))
    seen: list[str] = []
    with pytest.raises(openai.APIError, match="malformed stream event"):
        _streamed(_ask(gw, "out-mask", stream=True), seen)
    assert seen[0] == "fine "


# -- tool-call arguments are JSON ---------------------------------------------------------------

def _call(arguments: str) -> Answer:
    return _answer({"content": None, "tool_calls": [{"id": "call_1", "type": "function",
                                                     "function": {"name": "send", "arguments": arguments}}]})


def test_answer_arguments_are_scanned_as_the_json_they_decode_to(gw: GatewayProcess, hostile: HostileUpstream) -> None:
    for hidden in ("Card:\n" + CARD, "\\u0034" + CARD[1:]):  # behind an escape: `\n`, an escaped digit
        hostile.script(_call(json.dumps({"note": hidden}).replace("\\\\u", "\\u")))
        with pytest.raises(openai.APIStatusError, match="blocked by guardrail 'out-block' \\(credit_card\\)"):
            _ask(gw, "out-block")
    hostile.script(_call(json.dumps({"to": "Hi\n" + EMAIL, "card": "\\u0034" + CARD[1:]}).replace("\\\\u", "\\u")))
    arguments = _ask(gw, "out-mask").choices[0].message.tool_calls[0].function.arguments
    assert json.loads(arguments) == {"to": "Hi\n<EMAIL>", "card": "<CREDIT_CARD>"}


def _streamed_call(gw: GatewayProcess, hostile: HostileUpstream, model: str, args: str) -> str:
    """The arguments a client got for a tool call streamed in 3-character pieces."""
    pieces = [args[i:i + 3] for i in range(0, len(args), 3)]
    calls = [_chunk() for _ in pieces]
    for c, p in zip(calls, pieces):
        c["choices"][0]["delta"]["tool_calls"] = [{"index": 0, "function": {"arguments": p}}]
    calls[0]["choices"][0]["delta"]["tool_calls"][0].update(id="call_1", type="function")
    calls[0]["choices"][0]["delta"]["tool_calls"][0]["function"]["name"] = "send"
    hostile.script(_stream_of(*(_data(c) for c in [_chunk(""), *calls, _chunk(finish="tool_calls")]),
                              b"data: [DONE]\n\n"))
    got = ""
    for c in _ask(gw, model, stream=True):
        for call in (c.choices[0].delta.tool_calls or []) if c.choices else []:
            got += call.function.arguments or "" if call.function else ""
    return got


def test_streamed_arguments_after_an_escape_are_masked_and_stay_json(gw: GatewayProcess, hostile: HostileUpstream) -> None:
    got = _streamed_call(gw, hostile, "out-mask", json.dumps({"to": "Hi\n" + EMAIL, "note": "Card:\n" + CARD}))
    assert json.loads(got) == {"to": "Hi\n<EMAIL>", "note": "Card:\n<CREDIT_CARD>"}


def test_streamed_arguments_written_with_unicode_escapes_are_decoded_for_the_scan(
        gw: GatewayProcess, hostile: HostileUpstream) -> None:
    # `\u0040` for `@`, `\u0034` for `4`, cut across deltas: these went out unmasked on a stream.
    args = json.dumps({"to": EMAIL.replace("@", "\\u0040"), "card": "\\u0034" + CARD[1:]}).replace("\\\\u", "\\u")
    assert json.loads(_streamed_call(gw, hostile, "out-mask", args)) == {"to": "<EMAIL>", "card": "<CREDIT_CARD>"}
    with pytest.raises(openai.APIError, match="blocked by guardrail 'out-block'"):
        _streamed_call(gw, hostile, "out-block", args)


def test_request_arguments_are_scanned_as_the_json_they_decode_to(gw: GatewayProcess, scripted: ScriptedUpstream) -> None:
    def turn(arguments: str) -> list[Any]:
        return [{"role": "user", "content": "pay"},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "pay", "arguments": arguments}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "done"}]
    sent = len(scripted.bodies)
    for hidden in ("\n" + CARD, "\\u0034" + CARD[1:]):
        with pytest.raises(openai.BadRequestError, match="blocked by guardrail 'in-block' \\(credit_card\\)"):
            _oa(gw).chat.completions.create(model="in-block", messages=turn(
                json.dumps({"card": hidden}).replace("\\\\u", "\\u")))
    assert len(scripted.bodies) == sent
    _oa(gw).chat.completions.create(model="in-mask", messages=turn(json.dumps({"to": "Hi\n" + EMAIL})))
    arguments = scripted.bodies[-1]["messages"][1]["tool_calls"][0]["function"]["arguments"]
    assert json.loads(arguments) == {"to": "Hi\n<EMAIL>"}
