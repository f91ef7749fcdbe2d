"""OpenAI embeddings -> Bedrock Titan, Cohere Embed on Bedrock, Vertex AI `:predict` and the
Gemini API `:batchEmbedContents`: request and answer translation, refusals that name the
field, and error mapping, table-driven against the providers' wire shapes."""
from __future__ import annotations

import base64
import json
import struct

import pytest

from tollway.core.config import Provider
from tollway.core.errors import GatewayError
from tollway.core.providers.base import CallContext, ClientAPI
from tollway.core.providers.embeddings.bedrock import OpenAIToBedrockEmbed
from tollway.core.providers.embeddings.cohere import OpenAIToCohere, is_cohere_embed
from tollway.core.providers.embeddings.google import OpenAIToGeminiEmbed, OpenAIToVertexEmbed
from tollway.core.providers.embeddings.titan import OpenAIToTitan
from tollway.core.providers.registry import adapter_for
from tollway.core.request import parse_head

BEDROCK = Provider(name="aws", schema="bedrock", region="us-east-1")
BEDROCK_KEYED = Provider(name="aws", schema="bedrock", region="eu-west-1", api_key="bedrock-key-123")
VERTEX = Provider(name="gcp", schema="vertex", project="proj-1", location="us-central1")
GEMINI = Provider(name="studio", schema="gemini", api_key="gem-key-456")
TITAN_ID = "amazon.titan-embed-text-v2:0"
COHERE_V3, COHERE_V4 = "cohere.embed-english-v3", "cohere.embed-v4:0"
INVOKE = "https://bedrock-runtime.us-east-1.amazonaws.com/model/{}/invoke"
VERTEX_URL = ("https://us-central1-aiplatform.googleapis.com/v1/projects/proj-1/locations/us-central1"
              "/publishers/google/models/text-embedding-005:predict")


def ctx(provider: Provider, body: dict, model: str) -> CallContext:
    raw = json.dumps({"model": "emb", **body}).encode()
    return CallContext(ClientAPI.EMBEDDINGS, raw, parse_head(raw), model, provider, 0.0)


@pytest.mark.parametrize("schema, adapter", [("bedrock", OpenAIToBedrockEmbed), ("vertex", OpenAIToVertexEmbed),
                                             ("gemini", OpenAIToGeminiEmbed)])
def test_registry_serves_embeddings_for_each_schema(schema, adapter):
    assert isinstance(adapter_for(ClientAPI.EMBEDDINGS, schema), adapter)


@pytest.mark.parametrize("model, cohere", [
    (COHERE_V3, True), ("cohere.embed-multilingual-v3", True), (COHERE_V4, True),
    ("us.cohere.embed-v4:0", True), ("global.cohere.embed-v4:0", True),  # cross-region inference profiles
    ("arn:aws:bedrock:us-east-1::foundation-model/cohere.embed-english-v3", True),
    (TITAN_ID, False), ("amazon.titan-embed-text-v1", False), ("cohere.command-r-v1:0", False),
    ("arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/a1b2c3", False),  # names no model
    ("my-cohere.embed-lookalike", False),
])
def test_bedrock_embeddings_pick_the_model_family(model, cohere):
    assert is_cohere_embed(model) is cohere
    adapter = adapter_for(ClientAPI.EMBEDDINGS, "bedrock")
    sent = json.loads(adapter.build(ctx(BEDROCK, {"input": "hi"}, model)).body)
    assert sent == ({"texts": ["hi"], "input_type": "search_document", "embedding_types": ["float"]} if cohere
                    else {"inputText": "hi"})


# -- requests ------------------------------------------------------------------------------

BUILDS = [
    # (adapter, provider, client body, upstream model, expected URL, expected upstream JSON)
    (OpenAIToTitan(), BEDROCK, {"input": "hello world"}, TITAN_ID,
     "https://bedrock-runtime.us-east-1.amazonaws.com/model/amazon.titan-embed-text-v2%3A0/invoke",
     {"inputText": "hello world"}),
    (OpenAIToTitan(), BEDROCK, {"input": ["only one"], "dimensions": 256, "encoding_format": "base64"}, TITAN_ID,
     "https://bedrock-runtime.us-east-1.amazonaws.com/model/amazon.titan-embed-text-v2%3A0/invoke",
     {"inputText": "only one", "dimensions": 256}),
    (OpenAIToTitan(), BEDROCK_KEYED, {"input": "x", "user": "u-1"}, "amazon.titan-embed-text-v1",
     "https://bedrock-runtime.eu-west-1.amazonaws.com/model/amazon.titan-embed-text-v1/invoke",
     {"inputText": "x"}),
    (OpenAIToCohere(), BEDROCK, {"input": "hello world"}, COHERE_V3, INVOKE.format("cohere.embed-english-v3"),
     {"texts": ["hello world"], "input_type": "search_document", "embedding_types": ["float"]}),
    (OpenAIToCohere(), BEDROCK, {"input": ["b", "a", "c"], "dimensions": 1024}, COHERE_V3,  # v3's own size: left out
     INVOKE.format("cohere.embed-english-v3"),
     {"texts": ["b", "a", "c"], "input_type": "search_document", "embedding_types": ["float"]}),
    (OpenAIToCohere(), BEDROCK, {"input": ["x"] * 96, "dimensions": 512}, "us.cohere.embed-v4:0",
     INVOKE.format("us.cohere.embed-v4%3A0"),
     {"texts": ["x"] * 96, "input_type": "search_document", "embedding_types": ["float"], "output_dimension": 512}),
    (OpenAIToCohere(), BEDROCK, {"input": ["q"], "input_type": "search_query"}, COHERE_V3,  # the client's choice
     INVOKE.format("cohere.embed-english-v3"),
     {"texts": ["q"], "input_type": "search_query", "embedding_types": ["float"]}),
    (OpenAIToCohere(), BEDROCK_KEYED, {"input": "x", "user": "u-1", "encoding_format": "base64"}, COHERE_V4,
     "https://bedrock-runtime.eu-west-1.amazonaws.com/model/cohere.embed-v4%3A0/invoke",
     {"texts": ["x"], "input_type": "search_document", "embedding_types": ["float"]}),
    (OpenAIToVertexEmbed(), VERTEX, {"input": ["a", "b c"]}, "text-embedding-005", VERTEX_URL,
     {"instances": [{"content": "a"}, {"content": "b c"}]}),
    (OpenAIToVertexEmbed(), VERTEX, {"input": "a", "dimensions": 128}, "text-embedding-005", VERTEX_URL,
     {"instances": [{"content": "a"}], "parameters": {"outputDimensionality": 128}}),
    (OpenAIToGeminiEmbed(), GEMINI, {"input": ["a", "b"], "dimensions": 768}, "gemini-embedding-001",
     "https://generativelanguage.googleapis.com/v1beta/models/gemini-embedding-001:batchEmbedContents",
     {"requests": [
         {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "a"}]}, "outputDimensionality": 768},
         {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "b"}]}, "outputDimensionality": 768}]}),
]


@pytest.mark.parametrize("adapter, provider, body, model, url, sent", BUILDS)
def test_request_translation(adapter, provider, body, model, url, sent):
    call = adapter.build(ctx(provider, body, model))
    assert call.method == "POST" and call.url == url and not call.stream
    assert json.loads(call.body) == sent
    headers = dict(call.headers)
    assert headers["content-type"] == "application/json"
    if provider.schema == "gemini":
        assert headers["x-goog-api-key"] == provider.api_key and "key=" not in call.url
    elif provider.api_key:
        assert headers["authorization"] == "Bearer " + provider.api_key
    else:
        assert "authorization" not in headers  # signed afterwards by the gateway's credential


REFUSALS = [
    # (adapter, client body, refused field)
    (OpenAIToTitan(), {"input": ["one", "two"]}, "input"),  # Titan embeds one text per call
    (OpenAIToTitan(), {"input": [1, 2, 3]}, "input"),  # token arrays: text only
    (OpenAIToVertexEmbed(), {"input": [[1, 2], [3]]}, "input"),
    (OpenAIToGeminiEmbed(), {"input": []}, "input"),
    (OpenAIToGeminiEmbed(), {"input": ["a", ""]}, "input"),
    (OpenAIToTitan(), {"input": "x", "encoding_format": "int8"}, "encoding_format"),
    (OpenAIToVertexEmbed(), {"input": "x", "dimensions": "big"}, "dimensions"),
    (OpenAIToTitan(), {}, "input"),
    (OpenAIToCohere(), {"input": ["x"] * 97}, "input"),  # Cohere takes 96 texts per call
    (OpenAIToCohere(), {"input": [[1, 2], [3]]}, "input"),  # token arrays: Cohere takes text
    (OpenAIToCohere(), {"input": [1, 2, 3]}, "input"),
    (OpenAIToCohere(), {"input": "x", "dimensions": 256}, "dimensions"),  # v3: 1024, fixed
    (OpenAIToCohere(), {"input": "x", "encoding_format": "int8"}, "encoding_format"),
    (OpenAIToCohere(), {"input": "x", "input_type": "search"}, "input_type"),
]


@pytest.mark.parametrize("adapter, body, field", REFUSALS)
def test_untranslatable_requests_are_400_naming_the_field(adapter, body, field):
    provider = {OpenAIToTitan: BEDROCK, OpenAIToCohere: BEDROCK, OpenAIToVertexEmbed: VERTEX,
                OpenAIToGeminiEmbed: GEMINI}[type(adapter)]
    with pytest.raises(GatewayError) as refused:
        adapter.build(ctx(provider, body, COHERE_V3 if provider is BEDROCK else "m"))
    assert refused.value.status == 400 and refused.value.param == field
    assert refused.value.type == "invalid_request_error"


def test_more_than_96_cohere_inputs_says_how_many():
    with pytest.raises(GatewayError) as refused:
        OpenAIToCohere().build(ctx(BEDROCK, {"input": ["x"] * 2048}, COHERE_V4))
    assert "at most 96 inputs" in refused.value.message and "2048" in refused.value.message


# -- answers -------------------------------------------------------------------------------

V1, V2 = [0.25, -0.5, 0.125], [1.0, 0.0, -1.0]
ANSWERS = [
    # (adapter, provider, client body, upstream answer, vectors, prompt tokens (None: counted locally))
    (OpenAIToTitan(), BEDROCK, {"input": "hi there"}, {"embedding": V1, "inputTextTokenCount": 3,
                                                       "embeddingsByType": {"float": V1}}, [V1], 3),
    (OpenAIToVertexEmbed(), VERTEX, {"input": ["a", "b"]}, {"predictions": [
        {"embeddings": {"statistics": {"truncated": False, "token_count": 4}, "values": V1}},
        {"embeddings": {"statistics": {"truncated": False, "token_count": 5.0}, "values": V2}}],
        "metadata": {"billableCharacterCount": 2}}, [V1, V2], 9),
    (OpenAIToGeminiEmbed(), GEMINI, {"input": ["one two", "three"]}, {"embeddings": [{"values": V1}, {"values": V2}]},
     [V1, V2], None),
    # Cohere: the shape asked for (by type), and the bare list it sends without embedding_types.
    (OpenAIToCohere(), BEDROCK, {"input": ["one two", "three"]}, {
        "id": "e1", "embeddings": {"float": [V1, V2]}, "texts": ["one two", "three"],
        "response_type": "embeddings_by_type"}, [V1, V2], None),
    (OpenAIToCohere(), BEDROCK, {"input": ["one two", "three"]}, {
        "id": "e2", "embeddings": [V1, V2], "texts": ["one two", "three"], "response_type": "embeddings_floats"},
     [V1, V2], None),
]


@pytest.mark.parametrize("fmt", [None, "float", "base64"])
@pytest.mark.parametrize("adapter, provider, body, answer, vectors, tokens", ANSWERS)
def test_answer_translation(adapter, provider, body, answer, vectors, tokens, fmt):
    c = ctx(provider, {**body, **({"encoding_format": fmt} if fmt else {})}, "emb-upstream")
    out, usage = adapter.response(c, 200, json.dumps(answer).encode())
    doc = json.loads(out)
    assert doc["object"] == "list" and doc["model"] == "emb-upstream"
    assert [d["index"] for d in doc["data"]] == list(range(len(vectors)))
    assert all(d["object"] == "embedding" for d in doc["data"])
    got = [_floats(d["embedding"]) if fmt == "base64" else d["embedding"] for d in doc["data"]]
    assert got == vectors  # the test vectors are exact in float32
    expected_tokens = tokens if tokens is not None else 3  # tiktoken: "one two" + "three"
    assert doc["usage"] == {"prompt_tokens": expected_tokens, "total_tokens": expected_tokens}
    assert usage is not None and usage.prompt_tokens == expected_tokens and usage.completion_tokens == 0


def _floats(b64: str) -> list[float]:
    raw = base64.b64decode(b64)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


@pytest.mark.parametrize("adapter, provider, body, answer", [
    (OpenAIToTitan(), BEDROCK, {"input": "x"}, b'{"embeddings": []}'),
    (OpenAIToVertexEmbed(), VERTEX, {"input": ["a", "b"]},
     b'{"predictions": [{"embeddings": {"values": [1.0]}}]}'),  # one vector for two texts
    (OpenAIToGeminiEmbed(), GEMINI, {"input": "a"}, b"<html>oops</html>"),
    (OpenAIToCohere(), BEDROCK, {"input": ["a", "b"]}, b'{"id": "e", "embeddings": {"float": [[1.0]]}}'),
    (OpenAIToCohere(), BEDROCK, {"input": "a"}, b'{"id": "e", "embeddings": {"int8": [[1]]}}'),  # no floats
    (OpenAIToCohere(), BEDROCK, {"input": "a"}, b'{"id": "e", "embeddings": [["x"]]}'),
    (OpenAIToCohere(), BEDROCK, {"input": "a"}, b"<html>oops</html>"),
    # a value past float32's range cannot be the base64 of float32s OpenAI's SDKs decode
    (OpenAIToTitan(), BEDROCK, {"input": "x", "encoding_format": "base64"},
     b'{"embedding": [0.5, 1e39], "inputTextTokenCount": 1}'),
    (OpenAIToGeminiEmbed(), GEMINI, {"input": "a", "encoding_format": "base64"},
     b'{"embeddings": [{"values": [-3.5e38]}]}'),
])
def test_unreadable_answers_are_502(adapter, provider, body, answer):
    with pytest.raises(GatewayError) as bad:
        adapter.response(ctx(provider, body, "m"), 200, answer)
    assert bad.value.status == 502 and bad.value.code == "upstream_malformed"


# -- errors --------------------------------------------------------------------------------

ERRORS = [
    # (adapter, provider, upstream status, headers, body, client status, code)
    (OpenAIToTitan(), BEDROCK, 429, [("retry-after", "3")], b'{"message":"Too many requests"}', 429,
     "rate_limit_exceeded"),
    (OpenAIToTitan(), BEDROCK, 400, [], b'{"message":"Malformed input request: extraneous key [x]"}', 400,
     "invalid_request"),
    (OpenAIToTitan(), BEDROCK, 403, [], b'{"message":"The security token included in the request is invalid."}', 502,
     "upstream_auth_failed"),
    (OpenAIToCohere(), BEDROCK, 429, [("retry-after", "2")], b'{"message":"Too many requests"}', 429,
     "rate_limit_exceeded"),
    (OpenAIToCohere(), BEDROCK_KEYED, 400, [], b'{"message":"Malformed input request: #: extraneous key '
                                                b'[output_dimension] is not permitted"}', 400, "invalid_request"),
    (OpenAIToCohere(), BEDROCK_KEYED, 403, [], b'{"message":"Invalid API Key format"}', 502, "upstream_auth_failed"),
    (OpenAIToVertexEmbed(), VERTEX, 400, [], b'{"error":{"code":400,"message":"only 1 instance per request",'
                                             b'"status":"INVALID_ARGUMENT"}}', 400, "invalid_request"),
    (OpenAIToGeminiEmbed(), GEMINI, 400, [], b'{"error":{"code":400,"message":"API key not valid.",'
                                             b'"status":"INVALID_ARGUMENT","details":[{"reason":"API_KEY_INVALID"}]}}',
     502, "upstream_auth_failed"),
]


@pytest.mark.parametrize("adapter, provider, status, headers, body, client_status, code", ERRORS)
def test_error_mapping(adapter, provider, status, headers, body, client_status, code):
    err = adapter.error(ctx(provider, {"input": "x"}, "m"), status, headers, body)
    assert (err.status, err.code) == (client_status, code)
    assert headers == [] or err.headers == headers
    assert "gem-key-456" not in err.message and "bedrock-key-123" not in err.message
