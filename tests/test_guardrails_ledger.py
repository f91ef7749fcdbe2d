"""Guardrail findings reach the usage record (issue 15: "recorded in the usage record and access
log by detector name and count"): a real gateway with the SQLite ledger, the guardrails and fake
upstream of tests/test_guardrails_e2e.py, the official SDK. Names and counts only: the ledger
file never holds a matched value."""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.fakes.scripted_upstream import ScriptedUpstream
from tests.harness import TEST_KEY, GatewayProcess
from tests.test_guardrails_e2e import CARD, CARD_DIGITS, EMAIL, _config
from tests.test_ledger_e2e import _records


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("guard-ledger") / "ledger.db"


@pytest.fixture(scope="module")
def gw(db: Path) -> Iterator[GatewayProcess]:
    upstream = ScriptedUpstream()
    process = GatewayProcess(_config(upstream.url) + f"store: {{backend: sqlite, path: {db}}}\n"
                                                     "ledger: {flush_interval: 0.05}\n")
    yield process
    process.stop()
    upstream.server.stop()


def _client(gw: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=TEST_KEY, max_retries=0)


def test_findings_are_in_the_usage_record_and_no_value_is_stored(gw: GatewayProcess, db: Path) -> None:
    client = _client(gw)
    masked = client.chat.completions.with_raw_response.create(
        model="in-mask", messages=[{"role": "user", "content": f"card {CARD}, mail {EMAIL} and {EMAIL}; say: ok"}])
    streamed = client.chat.completions.with_raw_response.create(
        model="out-mask", stream=True, messages=[{"role": "user", "content": f"say: card {CARD}"}])
    assert "".join(c.choices[0].delta.content or "" for c in streamed.parse() if c.choices) == "card <CREDIT_CARD>"
    with pytest.raises(openai.BadRequestError) as blocked:
        client.chat.completions.create(model="in-block", messages=[{"role": "user", "content": f"card {CARD}"}])
    clean = client.chat.completions.with_raw_response.create(model="in-mask", messages=[{"role": "user", "content": "hi"}])
    ids = [masked.headers["x-request-id"], streamed.headers["x-request-id"],
           blocked.value.response.headers["x-request-id"], clean.headers["x-request-id"]]
    rows = _records(db, ids)
    assert len(rows) == 4, "every request has its record"
    found = [json.loads(rows[i]["guardrails"]) if rows[i]["guardrails"] else None for i in ids]
    assert found == [{"pii-mask": {"credit_card": 1, "email": 2}}, {"out-mask": {"credit_card": 1}},
                     {"pii": {"credit_card": 1}}, None]
    assert rows[ids[2]]["status"] == 400 and rows[ids[2]]["error"] == "content_policy_violation"
    stored = db.read_bytes() + (db.with_name(db.name + "-wal").read_bytes() if db.with_name(db.name + "-wal").exists() else b"")
    assert CARD.encode() not in stored and CARD_DIGITS.encode() not in stored and EMAIL.encode() not in stored
