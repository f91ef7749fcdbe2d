"""Client numbers are bounded, fields the gateway reads come once, echoed client text is cut.

Unit tests of `parse_head` and the error constructors, then the same through a real gateway
with rate limits on (the bucket kernels are where an unbounded integer used to blow up) and
the official SDKs; raw bytes where an SDK cannot say it (a repeated key).
"""
from __future__ import annotations

import json
from collections.abc import Iterator

import anthropic
import openai
import pytest

from tests.fakes.openai_upstream import FakeOpenAI
from tests.harness import OTHER_KEY, TEST_KEY, UPSTREAM_SECRET, GatewayProcess, key_hash
from tests.test_e2e_errors import assert_openai_error, post
from tollway.core import errors
from tollway.core.errors import ECHO_LIMIT, GatewayError, echoed
from tollway.core.request import MAX_CHOICES, MAX_TOKENS_CEILING, RequestHead, parse_head

TOKEN_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
HUGE = 10**400
# A value of the right type for each field RequestHead reads, to repeat it with.
VALID = {"model": '"gpt-4o-mini"', "stream": "false", "max_tokens": "5", "max_completion_tokens": "5",
         "max_output_tokens": "5", "n": "1", "stream_options": '{"include_usage": true}'}


def body_of(**fields: object) -> bytes:
    return json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], **fields}).encode()


def refused(body: bytes) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        parse_head(body)
    assert caught.value.status == 400
    return caught.value


# -- numbers are numbers ---------------------------------------------------------------------

@pytest.mark.parametrize("field", TOKEN_FIELDS)
def test_token_caps_over_the_ceiling_are_400_naming_field_and_limit(field):
    err = refused(body_of(**{field: MAX_TOKENS_CEILING + 1}))
    assert err.param == field and field in err.message and str(MAX_TOKENS_CEILING) in err.message
    assert getattr(parse_head(body_of(**{field: MAX_TOKENS_CEILING})), field) == MAX_TOKENS_CEILING


def test_n_over_openais_cap_is_400():
    err = refused(body_of(n=MAX_CHOICES + 1))
    assert err.param == "n" and str(MAX_CHOICES) in err.message
    assert parse_head(body_of(n=MAX_CHOICES)).n == MAX_CHOICES


@pytest.mark.parametrize("field", [*TOKEN_FIELDS, "n"])
@pytest.mark.parametrize("value", [HUGE, -HUGE, 2**63, 2**64], ids=["10**400", "-10**400", "2**63", "2**64"])
def test_any_out_of_range_integer_is_400_naming_the_field(field, value):
    assert refused(body_of(**{field: value})).param == field


@pytest.mark.parametrize("field", TOKEN_FIELDS)
@pytest.mark.parametrize("value", [0, -1])
def test_a_cap_below_one_is_the_providers_to_refuse(field, value):
    """The gateway can account for it (it reserves no output for it): it goes upstream as sent."""
    head = parse_head(body_of(**{field: value}))
    assert getattr(head, field) == value
    assert refused(body_of(**{field: -MAX_TOKENS_CEILING - 1})).param == field  # past the bound: absurd


def test_a_negative_cap_never_makes_a_negative_reservation():
    from tollway.core.config import Config
    from tollway.core.limits.policy import LimitPolicy

    policy = LimitPolicy(Config())
    assert policy.output_bound("chat", parse_head(body_of(max_tokens=-1, n=5))) == 0
    assert policy.output_bound("chat", parse_head(body_of(max_tokens=-1))) == 0
    assert policy.output_bound("chat", parse_head(body_of(max_tokens=0))) == policy.default_max_tokens
    assert policy.output_bound("chat", parse_head(body_of(max_tokens=7, n=-3))) == 7


def test_a_float_too_big_for_a_double_is_400():
    body = b'{"model":"gpt-4o-mini","max_tokens":1e400}'
    assert refused(body).param == "max_tokens"


def test_the_largest_reservation_a_client_can_ask_fits_the_bucket_kernel(buckets_impl):
    """The limiter reserves at most max_tokens x n output tokens: the bucket kernels (C
    doubles) must take that without an OverflowError, the 500 this file exists for."""
    head = parse_head(body_of(max_tokens=MAX_TOKENS_CEILING, n=MAX_CHOICES))
    demand = head.output_limit * head.n
    assert demand == MAX_TOKENS_CEILING * MAX_CHOICES == 1_280_000_000
    table = buckets_impl.BucketTable()
    slot = table.add(1e12, 1e6)
    assert table.try_take([slot], [demand], 0.0) == 0.0


# -- a field the gateway reads, given twice ---------------------------------------------------

@pytest.mark.parametrize("field", RequestHead.__struct_fields__)
def test_every_field_the_gateway_reads_given_twice_is_400(field):
    value = VALID[field]
    members = f'"{field}": {value}, "messages": [], "{field}": {value}'
    if field != "model":
        members = '"model": "gpt-4o-mini", ' + members
    err = refused(("{" + members + "}").encode())
    assert err.param == field and f"'{field}'" in err.message and "more than once" in err.message


@pytest.mark.parametrize("body", [
    b'{"model":"ok","mod\\u0065l":"forbidden"}',
    b'{"\\u006d\\u006F\\u0064\\u0065\\u006c":"ok","model":"forbidden"}',
    b'{"model" :"ok",\n"messages":[],\t"model"\r\n: "forbidden"}',
])
def test_a_repeated_model_is_refused_however_it_is_spelled(body):
    assert refused(body).param == "model"


@pytest.mark.parametrize("body", [
    # a "model" key inside a message's content parts
    body_of(messages=[{"role": "user", "content": [{"type": "text", "text": "x", "model": "other"}]}]),
    # a tool whose parameters have a "model" property
    body_of(tools=[{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"model": {"type": "string"}, "n": {"type": "integer"}}}}}]),
    # the text '"model": "other"' inside a string, and "model" as a value
    body_of(messages=[{"role": "user", "content": '{"model": "other", "stream": true}'}], user="model"),
    # an escaped key that spells another name
    b'{"model":"gpt-4o-mini","mod\\u00e9l":"other","Model":"other","MODEL":"other"}',
])
def test_the_same_names_below_the_top_level_or_in_strings_are_not_refused(body):
    assert parse_head(body).model == "gpt-4o-mini"


# -- echoes are cut --------------------------------------------------------------------------

def test_echoed_keeps_short_text_and_cuts_long_text():
    assert echoed("gpt-4o-mini") == "gpt-4o-mini"
    assert echoed("m" * ECHO_LIMIT) == "m" * ECHO_LIMIT
    cut = echoed("m" * 50_000)
    assert len(cut) == ECHO_LIMIT and cut.endswith("…") and cut.startswith("m" * (ECHO_LIMIT - 1))


@pytest.mark.parametrize("make", [
    lambda text: errors.model_not_found(text),
    lambda text: errors.model_not_allowed(text),
    lambda text: errors.not_found("/v1/" + text),
    lambda text: errors.method_not_allowed(text, "/v1/" + text),
])
def test_every_constructor_that_echoes_client_text_cuts_it(make):
    body = make("x" * 50_000).body()
    assert len(body) < 1024 and "…".encode() in body


# -- end to end ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gw(openai_upstream: FakeOpenAI) -> Iterator[GatewayProcess]:
    """A gateway whose keys have token limits, so every request goes through the buckets."""
    process = GatewayProcess(f"""
providers:
  - name: up
    schema: openai
    base_url: {openai_upstream.url}
    api_key: {UPSTREAM_SECRET}
models:
  - name: gpt-4o-mini
    targets: [{{provider: up}}]
  - name: llama-3-8b
    targets: [{{provider: up, model: meta-llama/Meta-Llama-3-8B-Instruct}}]
keys:
  - name: test-key
    key_hash: "{key_hash(TEST_KEY)}"
    models: ["*"]
    limits: [{{total_tokens: 1000000000000, per: 1m}}, {{output_tokens: 1000000000000, per: 1m}}]
  - name: narrow-key
    key_hash: "{key_hash(OTHER_KEY)}"
    models: [gpt-4o-mini]
    limits: [{{requests: 1000, per: 1m}}]
""")
    yield process
    process.stop()


USER = [{"role": "user", "content": "x"}]


def test_openai_sdk_max_tokens_10_400_is_400_not_500(oai):
    with pytest.raises(openai.BadRequestError) as caught:
        oai.chat.completions.create(model="gpt-4o-mini", messages=USER, extra_body={"max_tokens": HUGE})
    assert caught.value.status_code == 400 and caught.value.param == "max_tokens"
    assert oai.chat.completions.create(model="gpt-4o-mini", messages=USER, max_tokens=5).choices  # still serving


@pytest.mark.parametrize(("field", "value"), [
    pytest.param("max_tokens", HUGE, id="max_tokens=10**400"),
    pytest.param("max_completion_tokens", MAX_TOKENS_CEILING + 1, id="max_completion_tokens=ceiling+1"),
    pytest.param("max_output_tokens", HUGE, id="max_output_tokens=10**400"),
    pytest.param("n", MAX_CHOICES + 1, id="n=129"),
    pytest.param("n", HUGE, id="n=10**400"),
])
def test_raw_out_of_range_integers_are_400_not_500(gw, field, value):
    status, _, resp = post(gw, body_of(**{field: value}))
    assert status == 400 and assert_openai_error(resp, kind="invalid_request_error")["param"] == field


def test_anthropic_sdk_max_tokens_10_400_is_400_not_500(ant):
    with pytest.raises(anthropic.BadRequestError) as caught:
        ant.messages.create(model="gpt-4o-mini", max_tokens=HUGE, messages=USER)
    assert caught.value.status_code == 400 and "max_tokens" in str(caught.value)


@pytest.mark.parametrize("body", [
    b'{"model":"llama-3-8b","messages":[{"role":"user","content":"x"}],"model":"gpt-4o-mini"}',
    b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"x"}],"mod\\u0065l":"llama-3-8b"}',
])
def test_a_repeated_model_never_reaches_the_upstream(gw, openai_upstream, body):
    """narrow-key may use gpt-4o-mini only: an upstream that keeps the first `model` would
    serve it llama-3-8b. The gateway refuses the body before any upstream sees it."""
    seen = len(openai_upstream.requests)
    status, _, resp = post(gw, body, key=OTHER_KEY)
    assert status == 400 and assert_openai_error(resp)["param"] == "model"
    assert len(openai_upstream.requests) == seen


def test_a_model_key_inside_the_messages_is_served(gw, openai_upstream):
    body = body_of(messages=[{"role": "user", "content": '"model": "llama-3-8b"', "model": "llama-3-8b"}])
    status, _, _ = post(gw, body, key=OTHER_KEY)
    assert status == 200 and openai_upstream.last("/chat/completions")["body"]["model"] == "gpt-4o-mini"


def test_a_50_kb_model_name_is_cut_in_the_error_and_the_log_line(gw):
    name = "m" * 50_000
    status, headers, resp = post(gw, body_of(model=name))
    assert status == 404 and assert_openai_error(resp, code="model_not_found")
    assert len(json.dumps(resp)) < 1024 and "…" in resp["error"]["message"]
    request_id = {k.lower(): v for k, v in headers.items()}["x-request-id"]
    line = gw.log_line(request_id)  # (written after the answer: waited for, not read at once)
    assert line["model"].startswith("mmmm") and len(line["model"]) == ECHO_LIMIT


def test_a_long_unknown_path_is_cut_in_the_error(gw):
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(gw.url + "/v1/" + "p" * 4000, timeout=5)
    body = caught.value.read()
    assert caught.value.code == 404 and len(body) < 1024 and "…" in json.loads(body)["error"]["message"]


def test_a_body_that_is_not_utf8_is_400_not_500() -> None:
    """msgspec skips the strings it does not keep without checking them; a provider adapter that
    re-encodes the body (renaming the model) would then fail with a 500."""
    with pytest.raises(GatewayError) as caught:
        parse_head(b'{"model": "m", "messages": [{"role": "user", "content": "\xff\xfe"}]}')
    assert caught.value.status == 400 and "UTF-8" in caught.value.message
    assert parse_head('{"model": "m", "messages": [{"content": "h\u00e9llo \u4e2d"}]}'.encode()).model == "m"
