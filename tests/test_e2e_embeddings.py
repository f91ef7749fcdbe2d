"""End to end through a real gateway with the official openai SDK: `/v1/embeddings` served by
Titan and by Cohere Embed on the fake Bedrock (SigV4 checked by the fake), by Vertex AI
`:predict` (service-account OAuth granted by the fake) and by the Gemini API
`:batchEmbedContents` (key header)."""
from __future__ import annotations

import json
import time
from collections.abc import Iterator

import openai
import pytest

from tests.fakes import bedrock_upstream as fb
from tests.fakes import gemini_upstream as fg
from tests.fakes.bedrock_upstream import FakeBedrock, embedding_of
from tests.fakes.gemini_upstream import FakeGemini, service_account_file
from tests.harness import TEST_KEY, GatewayProcess, key_hash

TITAN_ID = "amazon.titan-embed-text-v2:0"
COHERE_V3, COHERE_V4 = "cohere.embed-english-v3", "us.cohere.embed-v4:0"  # v4 via a cross-region profile
COHERE_BODY = {"input_type": "search_document", "embedding_types": ["float"]}


@pytest.fixture(scope="module")
def gw(bedrock: FakeBedrock, gemini: FakeGemini, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    sa = service_account_file(tmp_path_factory.mktemp("sa"), gemini.url + "/token")
    process = GatewayProcess(f"""
providers:
  - name: aws
    schema: bedrock
    region: {fb.REGION}
    base_url: {bedrock.url}
    credentials: {{access_key_id: {fb.ACCESS_KEY}, secret_access_key: "{fb.SECRET_KEY}"}}
  - name: vtx
    schema: vertex
    project: proj-1
    location: us-central1
    base_url: {gemini.url}/v1
    credentials: {{service_account_file: "{sa}"}}
  - name: gem
    schema: gemini
    base_url: {gemini.url}/v1beta
    api_key: {fg.API_KEY}
models:
  - name: titan
    targets: [{{provider: aws, model: "{TITAN_ID}"}}]
  - name: cohere-v3
    targets: [{{provider: aws, model: "{COHERE_V3}"}}]
  - name: cohere-v4
    targets: [{{provider: aws, model: "{COHERE_V4}"}}]
  - name: vertex-embed
    targets: [{{provider: vtx, model: text-embedding-005}}]
  - name: vertex-gemini-embed
    targets: [{{provider: vtx, model: gemini-embedding-001}}]
  - name: gemini-embed
    targets: [{{provider: gem, model: gemini-embedding-001}}]
keys:
  - name: test-key
    key_hash: "{key_hash(TEST_KEY)}"
""", env={"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""})
    yield process
    process.stop()


def _close(got: list[float], want: list[float]) -> bool:
    """Equal within float32 rounding (the SDK's default base64 transport is float32)."""
    return len(got) == len(want) and all(abs(a - b) <= 1e-6 for a, b in zip(got, want))


# -- Titan on Bedrock ----------------------------------------------------------------------

def test_titan_default_sdk_call_is_signed_and_decoded(oai, bedrock):
    r = oai.embeddings.create(model="titan", input="the quick brown fox")  # the SDK asks for base64
    assert len(r.data) == 1 and _close(r.data[0].embedding, embedding_of("the quick brown fox", 1024))
    assert r.usage.prompt_tokens == 4 and r.usage.total_tokens == 4 and r.model == TITAN_ID
    sent = bedrock.last()
    assert sent["path"] == "/model/amazon.titan-embed-text-v2%3A0/invoke"
    assert sent["headers"]["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
    assert sent["body"] == {"inputText": "the quick brown fox"}  # Titan refuses any key it does not know
    assert TEST_KEY not in json.dumps(sent)


def test_titan_float_format_and_dimensions(oai, bedrock):
    r = oai.embeddings.create(model="titan", input=["one input in a list"], dimensions=256, encoding_format="float")
    assert r.data[0].embedding == embedding_of("one input in a list", 256)  # floats relayed exactly
    assert bedrock.last()["body"] == {"inputText": "one input in a list", "dimensions": 256}


def test_titan_list_of_many_is_400_naming_input(oai, bedrock):
    before = len(bedrock.requests)
    with pytest.raises(openai.BadRequestError) as bad:
        oai.embeddings.create(model="titan", input=["first", "second"])
    assert bad.value.body["param"] == "input" and "one request per input" in bad.value.body["message"]
    assert len(bedrock.requests) == before  # refused before any upstream call


def test_titan_validation_error_is_relayed_as_400(oai):
    with pytest.raises(openai.BadRequestError) as bad:
        oai.embeddings.create(model="titan", input="x", dimensions=300)
    assert "Malformed input request" in bad.value.body["message"]


# -- Cohere Embed on Bedrock ---------------------------------------------------------------

def test_cohere_default_sdk_call_is_signed_and_decoded(oai, bedrock):
    r = oai.embeddings.create(model="cohere-v3", input="the quick brown fox")  # the SDK asks for base64
    assert len(r.data) == 1 and _close(r.data[0].embedding, embedding_of("the quick brown fox", 1024))
    assert r.model == COHERE_V3
    sent = bedrock.last()
    assert sent["path"] == "/model/cohere.embed-english-v3/invoke"
    assert sent["headers"]["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
    assert sent["body"] == {"texts": ["the quick brown fox"], **COHERE_BODY}
    assert TEST_KEY not in json.dumps(sent)


def test_cohere_list_is_one_call_in_order(oai, bedrock):
    texts = ["delta epsilon zeta", "alpha", "beta gamma"]
    before = len(bedrock.requests)
    r = oai.embeddings.create(model="cohere-v4", input=texts, dimensions=256, encoding_format="float")
    assert len(bedrock.requests) == before + 1
    assert [d.index for d in r.data] == [0, 1, 2]
    assert [d.embedding for d in r.data] == [embedding_of(t, 256) for t in texts]  # floats relayed exactly
    sent = bedrock.last()
    assert sent["path"] == "/model/us.cohere.embed-v4%3A0/invoke"
    assert sent["body"] == {"texts": texts, **COHERE_BODY, "output_dimension": 256}


def test_cohere_input_type_comes_from_the_sdks_extra_body(oai, bedrock):
    oai.embeddings.create(model="cohere-v3", input="what is a gateway?", extra_body={"input_type": "search_query"})
    assert bedrock.last()["body"]["input_type"] == "search_query"
    before = len(bedrock.requests)
    with pytest.raises(openai.BadRequestError) as bad:
        oai.embeddings.create(model="cohere-v3", input="x", extra_body={"input_type": "query"})
    assert bad.value.body["param"] == "input_type" and len(bedrock.requests) == before


def test_cohere_usage_is_the_gateways_tiktoken_count(oai, gw):
    # Bedrock's count is only in a response header (the fake sends 3, one per word); adapters
    # see bodies, so the gateway counts with tiktoken (o200k_base: 9 tokens), as documented.
    text = "Tokenization of antidisestablishmentarianism"
    r = oai.embeddings.create(model="cohere-v3", input=[text, text], extra_headers={"x-request-id": "cohere-log-1"})
    assert r.usage.prompt_tokens == 18 and r.usage.total_tokens == 18
    for _ in range(50):  # the access log line is written just after the response
        lines = [x for x in gw.log_lines() if x.get("request_id") == "cohere-log-1"]
        if lines:
            break
        time.sleep(0.1)
    assert lines[-1]["prompt_tokens"] == 18 and lines[-1]["provider"] == "aws"


def test_cohere_more_than_96_inputs_is_400_naming_input(oai, bedrock):
    before = len(bedrock.requests)
    with pytest.raises(openai.BadRequestError) as bad:
        oai.embeddings.create(model="cohere-v4", input=[f"text {i}" for i in range(97)])
    assert bad.value.body["param"] == "input" and "at most 96 inputs" in bad.value.body["message"]
    assert len(bedrock.requests) == before  # refused before any upstream call
    r = oai.embeddings.create(model="cohere-v4", input=[f"text {i}" for i in range(96)], encoding_format="float")
    assert len(r.data) == 96 and r.data[95].embedding == embedding_of("text 95", 1536)


def test_cohere_refusals(oai, bedrock):
    before = len(bedrock.requests)
    with pytest.raises(openai.BadRequestError) as bad:
        oai.embeddings.create(model="cohere-v3", input="x", dimensions=256)  # v3 is 1024, fixed
    assert bad.value.body["param"] == "dimensions"
    with pytest.raises(openai.BadRequestError) as bad:
        oai.embeddings.create(model="cohere-v3", input=[[101, 102]])
    assert bad.value.body["param"] == "input"
    assert len(bedrock.requests) == before
    with pytest.raises(openai.BadRequestError) as bad:  # a v4 size Bedrock refuses: its 400, relayed
        oai.embeddings.create(model="cohere-v4", input="x", dimensions=300)
    assert "Malformed input request" in bad.value.body["message"]


def test_titan_still_gets_titan_bodies_next_to_cohere(oai, bedrock):
    oai.embeddings.create(model="cohere-v3", input="a")
    r = oai.embeddings.create(model="titan", input="b", encoding_format="float")
    assert r.data[0].embedding == embedding_of("b", 1024) and r.usage.prompt_tokens == 1
    assert bedrock.last()["body"] == {"inputText": "b"}


# -- Vertex AI :predict --------------------------------------------------------------------

def test_vertex_list_is_one_call_in_order_with_counted_usage(oai, gemini):
    texts = ["alpha", "beta gamma", "delta epsilon zeta"]
    r = oai.embeddings.create(model="vertex-embed", input=texts, dimensions=64)
    assert [d.index for d in r.data] == [0, 1, 2]
    assert all(_close(d.embedding, embedding_of(t, 64)) for d, t in zip(r.data, texts))
    assert r.usage.prompt_tokens == 1 + 2 + 3
    sent = gemini.last()
    assert sent["path"] == "/v1/projects/proj-1/locations/us-central1/publishers/google/models/text-embedding-005:predict"
    assert sent["body"] == {"instances": [{"content": t} for t in texts], "parameters": {"outputDimensionality": 64}}
    assert sent["headers"]["authorization"].startswith("Bearer ya29.fake-")


def test_vertex_single_instance_model_refusal_reaches_client(oai):
    with pytest.raises(openai.BadRequestError) as bad:
        oai.embeddings.create(model="vertex-gemini-embed", input=["a", "b"])
    assert "1 instance per request" in bad.value.body["message"]
    r = oai.embeddings.create(model="vertex-gemini-embed", input="a", encoding_format="float")
    assert r.data[0].embedding == embedding_of("a", 768)


# -- Gemini API :batchEmbedContents ------------------------------------------------------

def test_gemini_api_batch_with_key_header(oai, gemini):
    r = oai.embeddings.create(model="gemini-embed", input=["red", "green"], encoding_format="float")
    assert [d.embedding for d in r.data] == [embedding_of("red", 768), embedding_of("green", 768)]
    assert r.usage.prompt_tokens >= 2  # Gemini reports no count: the gateway's tiktoken estimate
    sent = gemini.last()
    assert sent["path"] == "/v1beta/models/gemini-embedding-001:batchEmbedContents"
    assert sent["headers"]["x-goog-api-key"] == fg.API_KEY and sent["query"] == {}
    assert [q["content"]["parts"] for q in sent["body"]["requests"]] == [[{"text": "red"}], [{"text": "green"}]]


def test_token_arrays_are_400_naming_input(oai):
    with pytest.raises(openai.BadRequestError) as bad:
        oai.embeddings.create(model="gemini-embed", input=[[101, 102], [103]])
    assert bad.value.body["param"] == "input"


def test_usage_reaches_the_access_log(oai, gw):
    oai.embeddings.create(model="titan", input="five words in this text", extra_headers={"x-request-id": "emb-log-1"})
    for _ in range(50):  # the line is written just after the response
        lines = [r for r in gw.log_lines() if r.get("request_id") == "emb-log-1"]
        if lines:
            break
        time.sleep(0.1)
    line = lines[-1]
    assert line["prompt_tokens"] == 5 and line["completion_tokens"] == 0 and line["provider"] == "aws"
