"""`POST /v1/rerank` (the Cohere/Jina shape vLLM serves) through a real gateway, with httpx (the
openai SDK has no rerank), to a vLLM-style server as is, to Cohere's v2 rerank and to Bedrock's
rerank (tests/fakes/rerank_upstream.py speaks all three): answers in the client's shape, usage
in the ledger, errors OpenAI-shaped."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx  # the HTTP client under the openai SDK
import pytest

import tests.fakes.bedrock_upstream as fb
from tests.fakes.rerank_upstream import FakeRerank, ranked
from tests.harness import OTHER_KEY, TEST_KEY, UPSTREAM_SECRET, GatewayProcess, key_hash
from tests.test_e2e_errors import assert_openai_error
from tests.test_ledger_e2e import record_of

QUERY = "what is the capital of france"
DOCS = ["Paris is the capital of France.", "Berlin is in Germany.", "The capital of Italy is Rome.", "Bananas."]


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeRerank]:
    fake = FakeRerank()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("rerank") / "ledger.db"


@pytest.fixture(scope="module")
def gw(upstream: FakeRerank, db: Path) -> Iterator[GatewayProcess]:
    process = GatewayProcess(f"""
providers:
  - {{name: vllm, schema: openai, base_url: {upstream.url}/v1, api_key: {UPSTREAM_SECRET}}}
  - {{name: cohere, schema: cohere, base_url: {upstream.url}, api_key: {UPSTREAM_SECRET}}}
  - name: aws
    schema: bedrock
    region: {fb.REGION}
    base_url: {upstream.url}
    credentials: {{access_key_id: {fb.ACCESS_KEY}, secret_access_key: "{fb.SECRET_KEY}"}}
models:
  - {{name: bge-reranker, targets: [{{provider: vllm, model: BAAI/bge-reranker-v2-m3}}], price: {{input: 0.02, output: 0}}}}
  - {{name: rerank-v3.5, targets: [{{provider: cohere}}], price: {{search_unit: 0.002}}}}
  - {{name: cohere-broken, targets: [{{provider: cohere, model: fail-400}}]}}
  - {{name: bedrock-rerank, targets: [{{provider: aws, model: amazon.rerank-v1:0}}], price: {{search_unit: 0.001}}}}
  - {{name: bedrock-broken, targets: [{{provider: aws, model: fail-400}}]}}
keys:
  - name: test-key
    key_hash: "{key_hash(TEST_KEY)}"
    limits: [{{requests: 100000, per: 1m}}, {{total_tokens: 100000000, per: 1m}}]
  - {{name: narrow-key, key_hash: "{key_hash(OTHER_KEY)}", models: [bge-reranker]}}
store: {{backend: sqlite, path: {db}}}
ledger: {{flush_interval: 0.05}}
""")
    yield process
    process.stop()


def rerank(gw: GatewayProcess, body: dict, key: str = TEST_KEY) -> httpx.Response:
    return httpx.post(gw.url + "/v1/rerank", json=body, headers={"authorization": f"Bearer {key}"}, timeout=10)


EXPECTED = ranked(QUERY, DOCS, None)


def test_rerank_to_vllm_is_passed_through(gw, upstream, db):
    r = rerank(gw, {"model": "bge-reranker", "query": QUERY, "documents": DOCS, "top_n": 2})
    assert r.status_code == 200
    answer = r.json()
    assert [(x["index"], x["relevance_score"]) for x in answer["results"]] == EXPECTED[:2]
    assert answer["results"][0]["document"] == {"text": DOCS[0]}
    sent = upstream.last("/v1/rerank")
    assert sent["body"]["model"] == "BAAI/bge-reranker-v2-m3" and sent["body"]["top_n"] == 2
    assert sent["headers"]["authorization"] == f"Bearer {UPSTREAM_SECRET}"
    row = record_of(db, r.headers["x-request-id"])
    assert row["api"] == "rerank" and row["input_tokens"] == answer["usage"]["total_tokens"] and row["output_tokens"] == 0
    assert row["cost_usd"] == pytest.approx(row["input_tokens"] * 0.02 / 1e6)


def test_rerank_to_cohere_v2(gw, upstream, db):
    docs = [DOCS[0], {"text": DOCS[1]}, DOCS[2], DOCS[3]]  # Jina's document objects become Cohere's strings
    r = rerank(gw, {"model": "rerank-v3.5", "query": QUERY, "documents": docs, "top_n": 3})
    assert r.status_code == 200
    answer = r.json()
    assert answer["model"] == "rerank-v3.5" and answer["id"]
    assert [(x["index"], x["relevance_score"], x["document"]["text"]) for x in answer["results"]] == \
        [(i, s, DOCS[i]) for i, s in EXPECTED[:3]]
    assert answer["meta"]["billed_units"] == {"search_units": 1}
    sent = upstream.last("/v2/rerank")["body"]
    assert sent == {"model": "rerank-v3.5", "query": QUERY, "documents": DOCS, "top_n": 3}
    row = record_of(db, r.headers["x-request-id"])
    assert row["cost_usd"] == pytest.approx(0.002)


def test_rerank_without_documents_back(gw):
    r = rerank(gw, {"model": "rerank-v3.5", "query": QUERY, "documents": DOCS, "return_documents": False})
    assert r.status_code == 200 and all("document" not in x for x in r.json()["results"])


def test_rerank_to_bedrock(gw, upstream, db):
    docs = DOCS * 30  # 120 documents: two billed queries
    r = rerank(gw, {"model": "bedrock-rerank", "query": QUERY, "documents": docs, "top_n": 5})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert [(x["index"], x["relevance_score"]) for x in answer["results"]] == ranked(QUERY, docs, 5)
    assert answer["results"][0]["document"]["text"] == DOCS[0]
    sent = upstream.last("/rerank")["body"]
    config = sent["rerankingConfiguration"]
    assert config["type"] == "BEDROCK_RERANKING_MODEL"
    assert config["bedrockRerankingConfiguration"] == {
        "modelConfiguration": {"modelArn": f"arn:aws:bedrock:{fb.REGION}::foundation-model/amazon.rerank-v1:0"},
        "numberOfResults": 5}
    assert sent["queries"] == [{"textQuery": {"text": QUERY}, "type": "TEXT"}]
    assert sent["sources"][1] == {"inlineDocumentSource": {"textDocument": {"text": DOCS[1]}, "type": "TEXT"},
                                  "type": "INLINE"}
    assert record_of(db, r.headers["x-request-id"])["cost_usd"] == pytest.approx(0.002)


@pytest.mark.parametrize("model", ["cohere-broken", "bedrock-broken"])
def test_provider_errors_come_back_openai_shaped(gw, model):
    r = rerank(gw, {"model": model, "query": QUERY, "documents": DOCS})
    assert r.status_code == 400
    assert "quer" in assert_openai_error(r.json(), kind="invalid_request_error")["message"]  # the provider's own words


def test_rerank_refusals(gw, upstream):
    seen = len(upstream.requests)
    r = rerank(gw, {"model": "rerank-v3.5", "query": QUERY, "documents": []})
    assert r.status_code == 400 and assert_openai_error(r.json())["param"] == "documents"
    r = rerank(gw, {"model": "rerank-v3.5", "query": QUERY, "documents": [1, 2]})
    assert r.status_code == 400 and "documents" in assert_openai_error(r.json())["param"]
    r = rerank(gw, {"model": "rerank-v3.5", "query": QUERY, "documents": DOCS}, key=OTHER_KEY)
    assert r.status_code == 403 and assert_openai_error(r.json(), code="model_not_allowed")
    r = rerank(gw, {"model": "nope", "query": QUERY, "documents": DOCS})
    assert r.status_code == 404 and assert_openai_error(r.json(), code="model_not_found")
    assert len(upstream.requests) == seen
