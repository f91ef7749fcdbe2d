"""Built-in guardrails end to end (issue 15, docs/guardrails.md): a real gateway, the official
OpenAI and Anthropic SDKs, and a fake OpenAI upstream here that answers with the text it is
told (`say: ...` in the last user message), streamed in 3-character chunks so a card number is
split across many chunk boundaries. Input block/mask/log (chat and Anthropic messages), output
mask/block (non-stream and stream), regex guardrails, scope, the metric, the access log's
counts, and that no matched value reaches any log line. With no guardrails, no hook is installed."""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest

from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.scripted_upstream import ScriptedUpstream
from tests.harness import OTHER_KEY, TEST_KEY, UPSTREAM_SECRET, GatewayProcess, key_hash
from tollway.core.config import ConfigError, loads
from tollway.gateway.app import Gateway
from tollway.gateway.guardrails import GuardrailSet
from tollway.gateway.pipeline import EMPTY

CARD = "4111 1111 1111 1111"  # Luhn-valid (a test Visa number)
CARD_DIGITS = CARD.replace(" ", "")
EMAIL = "jane.doe@example.com"


# (model, the guardrail on it)
GUARDS = [
    ("in-block", "{name: pii, type: pii, action: block, apply_to: [input]}"),
    ("in-mask", "{name: pii-mask, type: pii, action: mask, apply_to: [input]}"),
    ("in-log", "{name: pii-log, type: pii, detectors: [credit_card], action: log, apply_to: [input]}"),
    ("out-mask", "{name: out-mask, type: pii, action: mask, apply_to: [output]}"),
    ("out-block", "{name: out-block, type: pii, detectors: [credit_card, email], action: block, apply_to: [output]}"),
    ("regex", "{name: internal-projects, type: regex, deny: [\"(?i)project\\\\s+bluebird\"], action: block}"),
    ("regex-mask", "{name: codenames, type: regex, deny: [\"(?i)bluebird\"], action: mask, apply_to: [output]}"),
]
MODELS = ["plain", "bob-only", *(m for m, _ in GUARDS)]


def _config(upstream: str) -> str:
    guards = "\n".join(f"  - {g[:-1]}, scope: {{models: [{m}]}}}}" for m, g in GUARDS)
    models = "\n".join(f"  - {{name: {m}, targets: [{{provider: up, model: {m}}}]}}" for m in MODELS)
    return f"""
providers:
  - {{name: up, schema: openai, base_url: {upstream}, api_key: {UPSTREAM_SECRET}}}
models:
{models}
keys:
  - {{name: alice, key_hash: "{key_hash(TEST_KEY)}", team: search}}
  - {{name: bob, key_hash: "{key_hash(OTHER_KEY)}", team: ads}}
teams:
  - {{name: search}}
  - {{name: ads}}
guardrails:
{guards}
  - {{name: bob-pii, type: pii, action: block, scope: {{keys: [bob], models: [bob-only]}}}}
"""


@pytest.fixture(scope="module")
def upstream() -> Iterator[ScriptedUpstream]:
    fake = ScriptedUpstream()
    yield fake
    fake.server.stop()


@pytest.fixture(scope="module")
def gw(upstream: ScriptedUpstream) -> Iterator[GatewayProcess]:
    process = GatewayProcess(_config(upstream.url))
    yield process
    process.stop()


def _oa(gw: GatewayProcess, key: str = TEST_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)


def _an(gw: GatewayProcess) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url + "/anthropic", api_key=TEST_KEY, max_retries=0, timeout=20)


def _chat(gw: GatewayProcess, model: str, text: str, key: str = TEST_KEY, **kw: Any) -> Any:
    return _oa(gw, key).chat.completions.create(model=model, messages=[{"role": "user", "content": text}], **kw)


def _stream(gw: GatewayProcess, model: str, text: str) -> str:
    stream = _oa(gw).chat.completions.create(model=model, messages=[{"role": "user", "content": text}], stream=True)
    return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


def _metrics(gw: GatewayProcess) -> str:
    with urllib.request.urlopen(gw.url + "/metrics", timeout=5) as r:
        return str(r.read().decode())


def _log_of(gw: GatewayProcess, request_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for line in gw.log_lines():
            if line.get("request_id") == request_id:
                return line
        time.sleep(0.05)
    raise AssertionError(f"no access log line for {request_id}")


# -- input -------------------------------------------------------------------------------------

def test_input_block_is_a_400_naming_the_guardrail_and_detector(gw: GatewayProcess, upstream: ScriptedUpstream) -> None:
    sent = len(upstream.bodies)
    with pytest.raises(openai.BadRequestError) as info:
        _chat(gw, "in-block", f"my card is {CARD}, charge it")
    assert info.value.status_code == 400
    assert info.value.body == {"type": "invalid_request_error", "code": "content_policy_violation",
                               "message": "blocked by guardrail 'pii' (credit_card)", "param": None}
    assert len(upstream.bodies) == sent  # never went upstream
    deadline = time.monotonic() + 5
    while not (lines := [ln for ln in gw.log_lines() if ln.get("model") == "in-block" and ln.get("status") == 400]):
        assert time.monotonic() < deadline, "no access log line for the blocked request"
        time.sleep(0.05)
    assert lines[0]["error"] == "content_policy_violation" and lines[0]["guardrails"] == {"pii": {"credit_card": 1}}
    assert 'tollway_guardrail_decisions_total{action="block",detector="credit_card",guardrail="pii"} 1.0' in _metrics(gw)


def test_input_scans_every_role_tool_results_and_tool_call_arguments(gw: GatewayProcess) -> None:
    messages: list[Any] = [
        {"role": "system", "content": "be helpful"},
        {"role": "user", "content": [{"type": "text", "text": "look this up"}]},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {
            "name": "lookup", "arguments": json.dumps({"email": EMAIL})}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "nothing found"},
        {"role": "user", "content": "thanks"},
    ]
    with pytest.raises(openai.BadRequestError) as info:
        _oa(gw).chat.completions.create(model="in-block", messages=messages)
    assert "(email)" in info.value.message
    messages[2]["tool_calls"][0]["function"]["arguments"] = "{}"
    messages[3]["content"] = f"card {CARD}"
    with pytest.raises(openai.BadRequestError) as info:
        _oa(gw).chat.completions.create(model="in-block", messages=messages)
    assert "(credit_card)" in info.value.message


def test_input_mask_sends_placeholders_upstream(gw: GatewayProcess, upstream: ScriptedUpstream) -> None:
    answer = _chat(gw, "in-mask", f"card {CARD} and mail {EMAIL}; say: done")
    assert answer.choices[0].message.content == "done"
    sent = upstream.last_text()
    assert "<CREDIT_CARD>" in sent and "<EMAIL>" in sent
    assert CARD not in sent and EMAIL not in sent
    line = _log_of(gw, answer._request_id or "")
    assert line["guardrails"] == {"pii-mask": {"credit_card": 1, "email": 1}}


def test_input_log_lets_it_through_and_records_it(gw: GatewayProcess, upstream: ScriptedUpstream) -> None:
    answer = _chat(gw, "in-log", f"card {CARD}")
    assert CARD in upstream.last_text()
    assert _log_of(gw, answer._request_id or "")["guardrails"] == {"pii-log": {"credit_card": 1}}
    assert 'tollway_guardrail_decisions_total{action="log",detector="credit_card",guardrail="pii-log"}' in _metrics(gw)


def test_anthropic_input_block_is_anthropic_shaped(gw: GatewayProcess) -> None:
    with pytest.raises(anthropic.BadRequestError) as info:
        _an(gw).messages.create(model="in-block", max_tokens=50, system=f"the card on file is {CARD}",
                                messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 400
    body: Any = info.value.body
    assert body["type"] == "error" and "blocked by guardrail 'pii' (credit_card)" in body["error"]["message"]


def test_anthropic_input_mask_covers_tool_results(gw: GatewayProcess, upstream: ScriptedUpstream) -> None:
    answer = _an(gw).messages.create(model="in-mask", max_tokens=50, messages=[
        {"role": "user", "content": "what is on file?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "lookup", "input": {"q": "card"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": f"card {CARD}"},
                                     {"type": "text", "text": f"mail {EMAIL} say: noted"}]},
    ])
    assert answer.content[0].text == "noted"  # type: ignore[union-attr]
    sent = upstream.last_text()
    assert CARD not in sent and EMAIL not in sent and "<CREDIT_CARD>" in sent and "<EMAIL>" in sent


def _post_raw(gw: GatewayProcess, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
    """A body no SDK would send (a JSON number a float cannot hold), as any HTTP client can."""
    req = urllib.request.Request(gw.url + path, data=body, method="POST", headers={
        "authorization": "Bearer " + TEST_KEY, "content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_a_body_the_input_guardrails_cannot_read_is_refused_not_let_through(
        gw: GatewayProcess, upstream: ScriptedUpstream) -> None:
    # The gateway reads only the fields it routes by; the guardrails read the whole body. A number
    # out of a float's range anywhere in it failed their decode, and the card went upstream unscanned.
    sent = len(upstream.bodies)
    body = b'{"model": "%s", "messages": [{"role": "user", "content": "card %s"}], "metadata_x": 1e999}'
    status, error = _post_raw(gw, "/v1/chat/completions", body % (b"in-block", CARD.encode()))
    assert status == 400
    assert error["error"]["type"] == "invalid_request_error" and error["error"]["code"] == "guardrail_unreadable"
    assert "could not be read for guardrail 'pii'" in error["error"]["message"]
    assert "Number out of range" in error["error"]["message"]
    status, error = _post_raw(gw, "/v1/chat/completions", body % (b"in-mask", CARD.encode()))
    assert status == 400 and error["error"]["code"] == "guardrail_unreadable"
    assert len(upstream.bodies) == sent  # neither went upstream
    # a route without input guardrails is not the guardrails' business: it goes upstream as it is
    status, _ = _post_raw(gw, "/v1/chat/completions", body % (b"out-mask", b"hi"))
    assert status == 200 and len(upstream.bodies) == sent + 1


@pytest.mark.parametrize("messages", [5, [{"role": "assistant", "content": "x", "tool_calls": 1}]])
def test_a_field_that_is_not_a_list_has_no_text_to_scan(gw: GatewayProcess, upstream: ScriptedUpstream,
                                                         messages: Any) -> None:
    # The guardrail iterated `body.get("messages") or ()`: a number raised TypeError, a 500 where
    # the gateway without guardrails relays the upstream's own 400.
    upstream.queue(400, json.dumps({"error": {"message": "bad messages", "type": "invalid_request_error",
                                              "param": "messages", "code": None}}).encode())
    with pytest.raises(openai.BadRequestError) as info:
        _oa(gw).chat.completions.create(model="in-block", messages=messages)
    assert info.value.body["message"] == "bad messages"  # type: ignore[index]


@pytest.fixture(scope="module")
def claude() -> Iterator[tuple[GatewayProcess, FakeAnthropic]]:
    """A gateway in front of a (fake) Anthropic upstream: native blocks such as `document` go
    through as they are, where an OpenAI-schema provider refuses them."""
    fake = FakeAnthropic()
    process = GatewayProcess(f"""
providers:
  - {{name: claude, schema: anthropic, base_url: {fake.url}, api_key: {UPSTREAM_SECRET}}}
models:
  - {{name: in-block, targets: [{{provider: claude, model: claude-x}}]}}
  - {{name: in-mask, targets: [{{provider: claude, model: claude-x}}]}}
keys:
  - {{name: alice, key_hash: "{key_hash(TEST_KEY)}"}}
guardrails:
  - {{name: pii, type: pii, action: block, apply_to: [input], scope: {{models: [in-block]}}}}
  - {{name: pii-mask, type: pii, action: mask, apply_to: [input], scope: {{models: [in-mask]}}}}
""")
    yield process, fake
    process.stop()
    fake.stop()


@pytest.mark.parametrize("source", [
    {"type": "text", "media_type": "text/plain", "data": f"my card is {CARD}"},
    {"type": "content", "content": [{"type": "text", "text": "a note"}, {"type": "text", "text": f"my card is {CARD}"}]},
])
def test_anthropic_text_documents_are_scanned_and_masked(claude: tuple[GatewayProcess, FakeAnthropic], source: Any) -> None:
    gw, fake = claude
    content = [{"type": "document", "source": source}, {"type": "text", "text": "summarize"}]
    with pytest.raises(anthropic.BadRequestError) as info:
        _an(gw).messages.create(model="in-block", max_tokens=50, messages=[{"role": "user", "content": content}])
    assert "blocked by guardrail 'pii' (credit_card)" in str(info.value)
    _an(gw).messages.create(model="in-mask", max_tokens=50, messages=[{"role": "user", "content": content}])
    sent = json.dumps(fake.last("/v1/messages")["body"])
    assert CARD not in sent and "my card is <CREDIT_CARD>" in sent


def test_responses_function_call_output_parts_are_scanned_and_masked(gw: GatewayProcess, upstream: ScriptedUpstream) -> None:
    items: Any = [{"type": "function_call", "call_id": "c1", "name": "lookup", "arguments": "{}"},
                  {"type": "function_call_output", "call_id": "c1",
                   "output": [{"type": "input_text", "text": f"card {CARD}"}]}]
    with pytest.raises(openai.BadRequestError, match=r"blocked by guardrail 'pii' \(credit_card\)"):
        _oa(gw).responses.create(model="in-block", input=items)
    _oa(gw).responses.create(model="in-mask", input=items)
    assert upstream.bodies[-1]["input"][1]["output"] == [{"type": "input_text", "text": "card <CREDIT_CARD>"}]


def test_a_completions_suffix_is_scanned(gw: GatewayProcess, upstream: ScriptedUpstream) -> None:
    sent = len(upstream.bodies)
    with pytest.raises(openai.BadRequestError, match=r"blocked by guardrail 'pii' \(credit_card\)"):
        _oa(gw).completions.create(model="in-block", prompt="the card is ", suffix=f" {CARD} on file")
    assert len(upstream.bodies) == sent


def test_scope_by_key(gw: GatewayProcess) -> None:
    assert _chat(gw, "bob-only", f"card {CARD}").choices[0].message.content == "ok"  # alice: out of scope
    with pytest.raises(openai.BadRequestError):
        _chat(gw, "bob-only", f"card {CARD}", key=OTHER_KEY)
    assert _chat(gw, "plain", f"card {CARD} say: {CARD}").choices[0].message.content == CARD  # no guardrail


# -- output ------------------------------------------------------------------------------------

def test_output_mask_non_stream(gw: GatewayProcess) -> None:
    answer = _chat(gw, "out-mask", f"say: your card {CARD} is on file, write to {EMAIL}")
    assert answer.choices[0].message.content == "your card <CREDIT_CARD> is on file, write to <EMAIL>"


def test_output_block_non_stream_is_a_502(gw: GatewayProcess) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        _chat(gw, "out-block", f"say: card {CARD}")
    assert info.value.status_code == 502
    assert info.value.body["code"] == "content_policy_violation"  # type: ignore[index]
    assert "blocked by guardrail 'out-block' (credit_card)" in info.value.message


def test_an_answer_the_output_guardrails_cannot_read_is_a_502(gw: GatewayProcess, upstream: ScriptedUpstream) -> None:
    answer = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m", "usage": {
        "prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}, "choices": [{"index": 0, "finish_reason": "stop",
        "message": {"role": "assistant", "content": f"card {CARD}"}}]}
    unreadable = json.dumps({**answer, "system_fingerprint_x": 1.5}).replace("1.5", "1e999").encode()
    for model in ("out-mask", "out-block"):
        upstream.queue(200, unreadable)
        with pytest.raises(openai.APIStatusError) as info:
            _chat(gw, model, "hi")
        assert info.value.status_code == 502
        assert info.value.body["code"] == "guardrail_unreadable"  # type: ignore[index]
        assert CARD not in info.value.response.text
    upstream.queue(200, unreadable)  # no output guardrail: relayed as it came
    assert CARD in _oa(gw).chat.completions.with_raw_response.create(
        model="in-mask", messages=[{"role": "user", "content": "hi"}]).http_response.text


def test_an_answer_whose_fields_are_not_lists_is_relayed(gw: GatewayProcess, upstream: ScriptedUpstream) -> None:
    usage = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
    odd = [{"id": "x", "object": "chat.completion", "choices": 1, "usage": usage},
           {"id": "x", "object": "chat.completion", "choices": [{"index": 0, "message": {"tool_calls": 1}}], "usage": usage}]
    for answer in odd:
        upstream.queue(200, json.dumps(answer).encode())
        got = _oa(gw).chat.completions.with_raw_response.create(model="out-mask", messages=[{"role": "user", "content": "hi"}])
        assert got.http_response.status_code == 200 and got.http_response.json()["choices"] == answer["choices"]
    upstream.queue(200, json.dumps({"id": "resp_1", "object": "response", "status": "completed", "output": 1}).encode())
    raw = _oa(gw).responses.with_raw_response.create(model="out-mask", input="hi")
    assert raw.http_response.status_code == 200 and raw.http_response.json()["output"] == 1


def test_output_mask_on_a_stream_split_across_chunks(gw: GatewayProcess) -> None:
    text = f"your card {CARD} is on file, write to {EMAIL} today"
    assert _stream(gw, "out-mask", f"say: {text}") == "your card <CREDIT_CARD> is on file, write to <EMAIL> today"
    # the held tail at the end of the stream is flushed: a card as the very last characters
    assert _stream(gw, "out-mask", f"say: card {CARD}") == "card <CREDIT_CARD>"
    assert _stream(gw, "out-mask", "say: nothing to hide here") == "nothing to hide here"


def test_output_block_on_a_stream_ends_it_with_an_error_event(gw: GatewayProcess) -> None:
    got = []
    with pytest.raises(openai.APIError) as info:
        stream = _oa(gw).chat.completions.create(model="out-block", stream=True,
                                                 messages=[{"role": "user", "content": f"say: fine so far, {CARD} and more"}])
        for chunk in stream:
            if chunk.choices:
                got.append(chunk.choices[0].delta.content or "")
    assert "blocked by guardrail 'out-block' (credit_card)" in info.value.message
    assert CARD_DIGITS[:8] not in "".join(got).replace(" ", "")
    assert 'tollway_guardrail_decisions_total{action="block",detector="credit_card",guardrail="out-block"}' in _metrics(gw)


def test_streams_a_guardrail_blocks_do_not_count_against_the_provider(gw: GatewayProcess) -> None:
    # The block is the gateway's decision on a good answer (a 502 to the client, like an upstream
    # fault's): five in a row (outlier_detection's default) must not eject the provider.
    for _ in range(5):
        with pytest.raises(openai.APIError, match="blocked by guardrail 'out-block'"):
            list(_oa(gw).chat.completions.create(model="out-block", stream=True,
                                                 messages=[{"role": "user", "content": f"say: {CARD} again"}]))
    assert _chat(gw, "plain", "say: still here").choices[0].message.content == "still here"
    assert 'tollway_upstream_available{endpoint="",provider="up"} 1.0' in _metrics(gw)


def test_anthropic_stream_output_mask(gw: GatewayProcess) -> None:
    with _an(gw).messages.stream(model="out-mask", max_tokens=50,
                                 messages=[{"role": "user", "content": f"say: the card {CARD} is fine"}]) as stream:
        text = "".join(stream.text_stream)
    assert text == "the card <CREDIT_CARD> is fine"
    with _an(gw).messages.stream(model="out-mask", max_tokens=50,  # held to the end: flushed at content_block_stop
                                 messages=[{"role": "user", "content": f"say: the card {CARD}"}]) as stream:
        assert "".join(stream.text_stream) == "the card <CREDIT_CARD>"


def test_anthropic_non_stream_output_mask(gw: GatewayProcess) -> None:
    answer = _an(gw).messages.create(model="out-mask", max_tokens=50,
                                     messages=[{"role": "user", "content": f"say: mail {EMAIL}"}])
    assert answer.content[0].text == "mail <EMAIL>"  # type: ignore[union-attr]


def _responses_stream(gw: GatewayProcess, model: str, text: str) -> list[Any]:
    return list(_oa(gw).responses.create(model=model, input=text, stream=True))


def test_responses_stream_output_mask_rewrites_the_deltas_and_every_repeated_text(gw: GatewayProcess) -> None:
    events = _responses_stream(gw, "out-mask", f"say: your card {CARD} is on file, mail {EMAIL}")
    masked = "your card <CREDIT_CARD> is on file, mail <EMAIL>"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == masked
    done = {e.type: e for e in events}
    assert done["response.output_text.done"].text == masked
    assert done["response.content_part.done"].part.text == masked
    assert done["response.output_item.done"].item.content[0].text == masked
    assert done["response.completed"].response.output_text == masked
    numbers = [e.sequence_number for e in events]
    assert numbers == list(range(len(events)))  # the held tail's extra delta renumbered what follows
    raw = json.dumps([e.model_dump() for e in events])
    assert CARD not in raw and EMAIL not in raw
    # a card as the very last characters is held to the end and flushed before output_text.done
    events = _responses_stream(gw, "out-mask", f"say: card {CARD}")
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "card <CREDIT_CARD>"
    assert events[-1].response.output_text == "card <CREDIT_CARD>"


def test_responses_stream_function_call_arguments_are_masked(gw: GatewayProcess) -> None:
    args = json.dumps({"email": EMAIL})
    events = _responses_stream(gw, "out-mask", f"call: {args}")
    streamed = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert json.loads(streamed) == {"email": "<EMAIL>"}
    assert json.loads(events[-1].response.output[0].arguments) == {"email": "<EMAIL>"}
    assert EMAIL not in json.dumps([e.model_dump() for e in events])


def test_responses_custom_tool_call_input_is_masked_and_blocked(gw: GatewayProcess) -> None:
    # A custom (freeform) tool call's `input` is what function calls' `arguments` are; it went out unscanned.
    answer = _oa(gw).responses.create(model="out-mask", input=f"custom: charge {CARD}")
    assert answer.output[0].input == "charge <CREDIT_CARD>"  # type: ignore[union-attr]
    with pytest.raises(openai.APIStatusError, match=r"blocked by guardrail 'out-block' \(credit_card\)"):
        _oa(gw).responses.create(model="out-block", input=f"custom: charge {CARD}")
    events = _responses_stream(gw, "out-mask", f"custom: charge {CARD}")
    streamed = "".join(e.delta for e in events if e.type == "response.custom_tool_call_input.delta")
    assert streamed == "charge <CREDIT_CARD>"
    done = {e.type: e for e in events}
    assert done["response.custom_tool_call_input.done"].input == "charge <CREDIT_CARD>"
    assert done["response.output_item.done"].item.input == "charge <CREDIT_CARD>"
    assert events[-1].response.output[0].input == "charge <CREDIT_CARD>"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert CARD not in json.dumps([e.model_dump() for e in events])
    events = _responses_stream(gw, "out-block", f"custom: charge {CARD} now")
    assert events[-1].type == "error" and events[-1].code == "content_policy_violation"
    sent = "".join(e.delta for e in events if e.type == "response.custom_tool_call_input.delta")
    assert CARD_DIGITS[:8] not in sent.replace(" ", "")


def test_responses_stream_output_block_ends_with_the_responses_error_event(gw: GatewayProcess) -> None:
    events = _responses_stream(gw, "out-block", f"say: fine so far, {CARD} and more")
    last = events[-1]
    assert last.type == "error"
    assert last.code == "content_policy_violation" and last.message == "blocked by guardrail 'out-block' (credit_card)"
    assert not any(e.type == "response.completed" for e in events)
    sent = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert CARD_DIGITS[:8] not in sent.replace(" ", "")


def test_responses_non_stream_output_mask(gw: GatewayProcess) -> None:
    answer = _oa(gw).responses.create(model="out-mask", input=f"say: mail {EMAIL}")
    assert answer.output_text == "mail <EMAIL>"


def test_regex_guardrail_blocks_input_and_masks_streamed_output(gw: GatewayProcess) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        _chat(gw, "regex", "tell me about Project  Bluebird")
    assert info.value.message.endswith("blocked by guardrail 'internal-projects' (regex)") or \
        "blocked by guardrail 'internal-projects' (regex)" in info.value.message
    assert _stream(gw, "regex-mask", "say: the bluebird flies") == "the <REGEX> flies"
    assert _chat(gw, "regex-mask", "say: a BlueBird").choices[0].message.content == "a <REGEX>"


def test_anthropic_stream_block_ends_with_an_error_event(gw: GatewayProcess) -> None:
    got: list[str] = []
    with pytest.raises(anthropic.APIError) as info:
        with _an(gw).messages.stream(model="out-block", max_tokens=50,
                                     messages=[{"role": "user", "content": f"say: fine so far, {EMAIL} and more"}]) as stream:
            for text in stream.text_stream:
                got.append(text)
    assert "blocked by guardrail 'out-block' (email)" in str(info.value)
    assert "example.com" not in "".join(got)


def test_no_matched_value_in_any_log_line(gw: GatewayProcess) -> None:
    _chat(gw, "in-log", f"card {CARD}")
    out = gw.raw_output()
    assert CARD not in out and CARD_DIGITS not in out and EMAIL not in out


# -- config and cost ---------------------------------------------------------------------------

BASE = f"""
providers: [{{name: up, schema: fake}}]
models: [{{name: m, targets: [{{provider: up}}]}}]
keys: [{{name: k, key_hash: "{key_hash(TEST_KEY)}"}}]
"""


def test_no_guardrails_no_hooks() -> None:
    assert GuardrailSet(()).pipeline() == EMPTY
    gw = Gateway(loads(BASE))
    pipeline = gw._pipeline()
    assert pipeline.on_chunk == () and pipeline.on_answer == () and pipeline.on_chunk_async == ()
    assert all(getattr(h, "__self__", None) is not gw.guardrails for h in pipeline.before_upstream)
    with_one = Gateway(loads(BASE + "guardrails: [{name: g, type: pii, action: mask, apply_to: [input]}]\n"))._pipeline()
    assert len(with_one.before_upstream) == len(pipeline.before_upstream) + 1 and with_one.on_chunk == ()


@pytest.mark.parametrize(("entry", "complaint"), [
    ("[{name: g, type: pii, action: mask}, {name: g, type: pii, action: log}]", "duplicate name"),
    ("[{name: g, type: pii, detectors: [credit_crad], action: mask}]", "did you mean 'credit_card'"),
    ("[{name: g, type: regex, deny: ['(unclosed'], action: block}]", "invalid regex"),
    ("[{name: g, type: regex, action: block}]", "at least one deny pattern"),
    ("[{name: g, type: pii, action: redact}]", "guardrails"),
    ("[{name: g, type: pii, action: mask, apply_to: [inputs]}]", "guardrails"),
    ("[{name: g, type: json_schema, action: mask}]", "a json_schema guardrail blocks or logs"),
    ("[{name: g, type: json_schema, action: block, detectors: [email]}]", "detectors belong to a guardrail of type pii"),
    ("[{name: g, type: json_schema, action: block, deny: [x]}]", "deny patterns belong to a guardrail of type regex"),
    ("[{name: g, type: json_schema, action: log, apply_to: [input, output]}]", "checks the output only"),
    ("[{name: g, type: pii, action: mask, apply_to: []}]", "name input, output or both"),
])
def test_config_is_checked(entry: str, complaint: str) -> None:
    with pytest.raises(ConfigError) as info:
        loads(BASE + f"guardrails: {entry}\n")
    assert complaint in str(info.value)


def test_a_json_schema_guardrail_checks_output_only() -> None:
    config = loads(BASE + "guardrails: [{name: j, type: json_schema, action: block}, {name: p, type: pii, action: log},"
                          " {name: k, type: json_schema, action: log, apply_to: [output]}]\n")
    assert [g.applies_to for g in config.guardrails] == [("output",), ("input", "output"), ("output",)]



def test_uploads_on_a_route_with_input_guardrails_are_served(openai_upstream: Any) -> None:
    """Multipart uploads (transcriptions, image edits) are not scanned (docs/guardrails.md): the
    guardrails' "a body they cannot read is refused" took the form's bytes for an unreadable
    JSON body and refused every upload on a guarded route with a 400."""
    gw = GatewayProcess(f"""
providers:
  - {{name: up, schema: openai, base_url: {openai_upstream.url}, api_key: {UPSTREAM_SECRET}}}
models:
  - {{name: whisper-1, targets: [{{provider: up}}]}}
keys:
  - {{name: test-key, key_hash: "{key_hash(TEST_KEY)}"}}
guardrails:
  - {{name: pii, type: pii, action: block, apply_to: [input]}}
""")
    try:
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key=TEST_KEY, max_retries=0, timeout=10)
        audio = b"ID3" + bytes(range(256)) * 8
        for response_format in ("json", "text"):
            made = client.audio.transcriptions.create(model="whisper-1", file=("a.mp3", audio),
                                                      response_format=response_format)
            assert made, response_format
    finally:
        gw.stop()
