"""The OpenAI endpoints beyond chat (issue 17), through the official openai SDK against a real
gateway and the fake OpenAI upstream (tests/fakes/openai_media.py speaks their wire formats):
`models.retrieve`, `moderations.create`, ... Each is admitted like chat (key, limits, model
permission), leaves a ledger record and metrics, and answers errors in OpenAI's shape."""
from __future__ import annotations

import sqlite3
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx  # the HTTP client under the openai SDK
import openai
import pytest

from tests.fakes.openai_upstream import FakeOpenAI
from tests.harness import OTHER_KEY, TEST_KEY, UPSTREAM_SECRET, GatewayProcess, key_hash
from tests.test_e2e_errors import assert_openai_error


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("endpoints") / "ledger.db"


@pytest.fixture(scope="module")
def gw(upstream: FakeOpenAI, db: Path) -> Iterator[GatewayProcess]:
    base = upstream.url.removesuffix("/v1")
    process = GatewayProcess(f"""
providers:
  - {{name: up, schema: openai, base_url: {upstream.url}, api_key: {UPSTREAM_SECRET}}}
  - {{name: azure, schema: azure_openai, base_url: {base}, api_version: "2025-04-01-preview", api_key: {UPSTREAM_SECRET}}}
models:
  - {{name: gpt-4o-mini, targets: [{{provider: up}}]}}
  - {{name: omni-moderation-latest, targets: [{{provider: up}}]}}
  - {{name: text-moderation, targets: [{{provider: up, model: text-moderation-stable}}]}}
  - {{name: vendor/model-with-slash, targets: [{{provider: up}}]}}
keys:
  - name: test-key
    key_hash: "{key_hash(TEST_KEY)}"
    limits: [{{requests: 100000, per: 1m}}, {{total_tokens: 100000000, per: 1m}}]
  - {{name: narrow-key, key_hash: "{key_hash(OTHER_KEY)}", models: [gpt-4o-mini]}}
store: {{backend: sqlite, path: {db}}}
ledger: {{flush_interval: 0.05}}
""")
    yield process
    process.stop()


@pytest.fixture()
def client(gw: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=TEST_KEY, max_retries=0)


@pytest.fixture()
def narrow(gw: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=OTHER_KEY, max_retries=0)


def record_of(db: Path, request_id: str, timeout: float = 10.0) -> dict:
    """The ledger row of one request, once it has been written."""
    deadline = time.monotonic() + timeout
    while True:
        with sqlite3.connect(db) as conn:
            conn.row_factory = sqlite3.Row
            row = conn.execute("SELECT * FROM usage_records WHERE request_id = ?", (request_id,)).fetchone()
        if row is not None:
            return dict(row)
        assert time.monotonic() < deadline, f"no ledger record for {request_id}"
        time.sleep(0.05)


def metrics_text(gw: GatewayProcess) -> str:
    with urllib.request.urlopen(gw.url + "/metrics", timeout=5) as r:
        return r.read().decode()


# -- GET /v1/models/{id} ----------------------------------------------------------------------

def test_models_retrieve_returns_the_model(client):
    model = client.models.retrieve("gpt-4o-mini")
    assert model.id == "gpt-4o-mini" and model.object == "model" and model.owned_by == "tollway"


def test_models_retrieve_an_id_with_a_slash(client):
    """The SDK sends "vendor/model-with-slash" as one path segment (%2F)."""
    assert client.models.retrieve("vendor/model-with-slash").id == "vendor/model-with-slash"


def test_models_retrieve_a_model_the_key_may_not_see_is_404_model_not_found(narrow):
    assert narrow.models.retrieve("gpt-4o-mini").id == "gpt-4o-mini"
    with pytest.raises(openai.NotFoundError) as caught:
        narrow.models.retrieve("omni-moderation-latest")  # served, but not to this key
    assert caught.value.code == "model_not_found" and caught.value.param == "model"
    with pytest.raises(openai.NotFoundError) as unknown:
        narrow.models.retrieve("no-such-model")
    assert unknown.value.code == "model_not_found"
    # the same answer as for a model that does not exist: a key cannot probe what others may use
    assert str(caught.value.body).replace("omni-moderation-latest", "no-such-model") == str(unknown.value.body)


def test_models_retrieve_needs_a_key(gw):
    r = httpx.get(gw.url + "/v1/models/gpt-4o-mini")
    assert r.status_code == 401 and assert_openai_error(r.json(), code="invalid_api_key")


# -- POST /v1/moderations ---------------------------------------------------------------------

def test_moderations_create_is_relayed(gw, client, upstream, db):
    raw = client.moderations.with_raw_response.create(model="omni-moderation-latest",
                                                      input=["I will kill the process", "hello"])
    result = raw.parse()
    assert [r.flagged for r in result.results] == [True, False]
    assert result.results[0].categories.violence and result.results[0].category_scores.violence == 0.91
    sent = upstream.last("/moderations")
    assert sent["headers"]["authorization"] == f"Bearer {UPSTREAM_SECRET}"
    assert sent["body"]["input"] == ["I will kill the process", "hello"]
    row = record_of(db, raw.headers["x-request-id"])
    assert row["api"] == "moderations" and row["status"] == 200 and row["model"] == "omni-moderation-latest"
    assert row["input_tokens"] > 0  # no usage in OpenAI's answer: the input is counted
    assert 'gen_ai_operation_name="moderations"' in metrics_text(gw)


def test_moderations_without_a_model_go_to_openais_default(client, upstream):
    """`model` is optional in OpenAI's API: the gateway routes the body as OpenAI would serve it."""
    result = client.moderations.create(input="hello")
    assert result.results[0].flagged is False
    assert "model" not in upstream.last("/moderations")["body"]


def test_moderations_model_renamed_for_its_target(client, upstream):
    client.moderations.create(model="text-moderation", input="hello")
    assert upstream.last("/moderations")["body"]["model"] == "text-moderation-stable"


def test_moderations_refused_for_a_key_without_the_model(narrow, upstream):
    seen = len(upstream.requests)
    with pytest.raises(openai.PermissionDeniedError) as caught:
        narrow.moderations.create(input="hello")
    assert caught.value.code == "model_not_allowed"
    assert len(upstream.requests) == seen


# -- unknown paths ----------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/v1/images/variations", "/v1/fine_tuning/jobs", "/v1/nope"])
def test_unknown_v1_paths_are_404_naming_the_path(gw, path):
    r = httpx.post(gw.url + path, headers={"authorization": f"Bearer {TEST_KEY}"}, json={"model": "gpt-4o-mini"})
    assert r.status_code == 404
    err = assert_openai_error(r.json(), code="unknown_url")
    assert path in err["message"]
