"""The json_schema guardrail end to end (docs/guardrails.md): a real gateway, the official OpenAI
SDK with `response_format` json_schema (chat, stream and not) and the Responses API's
`text.format`, and the scripted fake upstream (tests/fakes/scripted_upstream.py) answering
valid and invalid JSON. Block (502, or the stream's error event after the text), log (allowed,
counted), a request without a schema untouched, a hostile schema refused before the upstream."""
from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.fakes.scripted_upstream import ScriptedUpstream
from tests.harness import TEST_KEY, UPSTREAM_SECRET, GatewayProcess, key_hash
from tests.test_guardrails_e2e import _log_of, _metrics

PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
          "required": ["name", "age"], "additionalProperties": False}
FORMAT: Any = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
CARD = "4111 1111 1111 1111"


@pytest.fixture(scope="module")
def upstream() -> Iterator[ScriptedUpstream]:
    fake = ScriptedUpstream()
    yield fake
    fake.server.stop()


@pytest.fixture(scope="module")
def gw(upstream: ScriptedUpstream) -> Iterator[GatewayProcess]:
    models = "\n".join(f"  - {{name: {m}, targets: [{{provider: up, model: {m}}}]}}"
                       for m in ("schema-block", "schema-log", "masked-then-checked"))
    process = GatewayProcess(f"""
providers:
  - {{name: up, schema: openai, base_url: {upstream.url}, api_key: {UPSTREAM_SECRET}}}
models:
{models}
keys:
  - {{name: alice, key_hash: "{key_hash(TEST_KEY)}"}}
guardrails:
  - {{name: pii-mask, type: pii, action: mask, apply_to: [output], scope: {{models: [masked-then-checked]}}}}
  - {{name: json-block, type: json_schema, action: block, scope: {{models: [schema-block, masked-then-checked]}}}}
  - {{name: json-log, type: json_schema, action: log, scope: {{models: [schema-log]}}}}
""")
    yield process
    process.stop()


def _oa(gw: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=TEST_KEY, max_retries=0)


def _chat(gw: GatewayProcess, model: str, answer: str, **kw: Any) -> Any:
    return _oa(gw).chat.completions.create(model=model, messages=[{"role": "user", "content": f"say: {answer}"}],
                                           response_format=FORMAT, **kw)


def test_a_matching_answer_passes(gw: GatewayProcess) -> None:
    answer = _chat(gw, "schema-block", '{"name": "Ada", "age": 36}')
    assert json.loads(answer.choices[0].message.content) == {"name": "Ada", "age": 36}
    assert "guardrails" not in _log_of(gw, answer._request_id or "")


def test_a_mismatch_is_a_502_naming_the_guardrail_and_path_not_the_text(gw: GatewayProcess) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        _chat(gw, "schema-block", '{"name": "Ada", "age": "thirty-six"}')
    assert info.value.status_code == 502
    assert info.value.body == {"type": "api_error", "code": "content_policy_violation", "param": None, "message":
                               "blocked by guardrail 'json-block' (json_schema): the output does not match the "
                               "schema at $.age (type)"}
    assert "thirty-six" not in info.value.message
    with pytest.raises(openai.APIStatusError) as info:
        _chat(gw, "schema-block", "Sure! Here is your person.")
    assert info.value.message.endswith("blocked by guardrail 'json-block' (json_schema): the output is not valid JSON")
    line = next(ln for ln in reversed(gw.log_lines()) if ln.get("status") == 502)
    assert line["error"] == "content_policy_violation" and line["guardrails"] == {"json-block": {"json_schema": 1}}
    assert 'tollway_guardrail_decisions_total{action="block",detector="json_schema",guardrail="json-block"}' \
        in _metrics(gw)


def test_a_stream_is_checked_at_its_end(gw: GatewayProcess) -> None:
    stream = _chat(gw, "schema-block", '{"name": "Ada", "age": 36}', stream=True)
    assert json.loads("".join(c.choices[0].delta.content or "" for c in stream if c.choices)) == \
        {"name": "Ada", "age": 36}
    got: list[str] = []
    with pytest.raises(openai.APIError) as info:
        for chunk in _chat(gw, "schema-block", '{"name": "Ada", "agr": 36}', stream=True):
            if chunk.choices:
                got.append(chunk.choices[0].delta.content or "")
    assert "blocked by guardrail 'json-block' (json_schema): the output does not match the schema at $" in \
        info.value.message
    assert "".join(got) == '{"name": "Ada", "agr": 36}'  # a streaming check can only speak after the text went out


def test_log_lets_it_through_and_counts_it(gw: GatewayProcess) -> None:
    answer = _chat(gw, "schema-log", "not json at all")
    assert answer.choices[0].message.content == "not json at all"
    assert _log_of(gw, answer._request_id or "")["guardrails"] == {"json-log": {"json_schema": 1}}
    text = "".join(c.choices[0].delta.content or "" for c in _chat(gw, "schema-log", "{}", stream=True) if c.choices)
    assert text == "{}"
    assert 'tollway_guardrail_decisions_total{action="log",detector="json_schema",guardrail="json-log"} 2.0' \
        in _metrics(gw)


def test_a_request_without_a_json_schema_format_is_untouched(gw: GatewayProcess) -> None:
    answer = _oa(gw).chat.completions.create(model="schema-block", messages=[{"role": "user", "content": "say: hi"}])
    assert answer.choices[0].message.content == "hi"
    answer = _oa(gw).chat.completions.create(model="schema-block", response_format={"type": "json_object"},
                                             messages=[{"role": "user", "content": "say: hi"}])
    assert answer.choices[0].message.content == "hi"


def test_the_masked_answer_is_what_is_checked(gw: GatewayProcess) -> None:
    answer = _chat(gw, "masked-then-checked", f'{{"name": "{CARD}", "age": 1}}', stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in answer if c.choices)
    assert json.loads(text) == {"name": "<CREDIT_CARD>", "age": 1}


def test_a_hostile_schema_is_refused_before_the_upstream(gw: GatewayProcess, upstream: ScriptedUpstream) -> None:
    sent = len(upstream.bodies)
    for schema, reason in (({"$ref": "http://169.254.169.254/latest/meta-data"}, "must point inside the schema"),
                           ({"type": "string", "pattern": "(a+)+(?=b)"}, "RE2")):
        fmt: Any = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
        with pytest.raises(openai.BadRequestError) as info:
            _oa(gw).chat.completions.create(model="schema-block", messages=[{"role": "user", "content": "hi"}],
                                            response_format=fmt)
        assert info.value.body["param"] == "response_format.json_schema.schema"  # type: ignore[index]
        assert info.value.body["code"] == "invalid_value"  # type: ignore[index]
        assert reason in info.value.message and "Guardrail 'json-block'" in info.value.message
    assert len(upstream.bodies) == sent


def test_the_parse_helper_gets_its_object(gw: GatewayProcess) -> None:
    from pydantic import BaseModel

    class Person(BaseModel):
        name: str
        age: int

    parsed = _oa(gw).chat.completions.parse(model="schema-block", response_format=Person,
                                            messages=[{"role": "user", "content": 'say: {"name": "Ada", "age": 36}'}])
    assert parsed.choices[0].message.parsed == Person(name="Ada", age=36)


# -- the Responses API's text.format ---------------------------------------------------------------

TEXT_FORMAT: Any = {"format": {"type": "json_schema", "name": "person", "schema": PERSON, "strict": True}}


def test_responses_non_stream(gw: GatewayProcess) -> None:
    ok = _oa(gw).responses.create(model="schema-block", input='say: {"name": "Ada", "age": 36}', text=TEXT_FORMAT)
    assert json.loads(ok.output_text) == {"name": "Ada", "age": 36}
    with pytest.raises(openai.APIStatusError) as info:
        _oa(gw).responses.create(model="schema-block", input='say: {"name": "Ada"}', text=TEXT_FORMAT)
    assert info.value.status_code == 502 and info.value.message.endswith("at $ (required)")


def test_responses_stream_ends_with_the_error_event(gw: GatewayProcess) -> None:
    events = list(_oa(gw).responses.create(model="schema-block", input='say: {"name": 1, "age": 2}',
                                           text=TEXT_FORMAT, stream=True))
    assert events[-1].type == "error" and events[-1].code == "content_policy_violation"
    assert events[-1].message == "blocked by guardrail 'json-block' (json_schema): the output does not match the " \
        "schema at $.name (type)"
    assert not any(e.type == "response.completed" for e in events)
    events = list(_oa(gw).responses.create(model="schema-block", input='say: {"name": "Ada", "age": 2}',
                                           text=TEXT_FORMAT, stream=True))
    assert events[-1].type == "response.completed"


def test_an_answer_whose_output_is_not_a_list_is_relayed(gw: GatewayProcess, upstream: ScriptedUpstream) -> None:
    # (iterating `output or ()` raised TypeError on a number: a 500 in place of the upstream's answer)
    upstream.queue(200, json.dumps({"id": "resp_1", "object": "response", "status": "completed", "output": 1}).encode())
    raw = _oa(gw).responses.with_raw_response.create(model="schema-block", input="hi", text=TEXT_FORMAT)
    assert raw.http_response.status_code == 200 and raw.http_response.json()["output"] == 1
