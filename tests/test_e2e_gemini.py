"""End to end through a real gateway against the fake Gemini backend: the Gemini API with its
key header, and Vertex AI with a real service-account OAuth flow (google-auth signs a JWT with
a freshly generated RSA key; the fake's token endpoint grants it), tokens cached."""
from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import anthropic
import openai
import pytest

from tests.fakes import gemini_upstream as fg
from tests.fakes.gemini_upstream import FakeGemini, service_account_file
from tests.harness import TEST_KEY, GatewayProcess, key_hash

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}}}
RESPONSES_WEATHER = {"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}}


@pytest.fixture(scope="module")
def gw(gemini: FakeGemini, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    sa = service_account_file(tmp_path_factory.mktemp("sa"), gemini.url + "/token")
    process = GatewayProcess(f"""
providers:
  - name: gem
    schema: gemini
    base_url: {gemini.url}/v1beta
    api_key: {fg.API_KEY}
  - name: gem-badkey
    schema: gemini
    base_url: {gemini.url}/v1beta
    api_key: wrong-key
  - name: vtx
    schema: vertex
    project: proj-1
    location: us-central1
    base_url: {gemini.url}/v1
    credentials: {{service_account_file: "{sa}"}}
models:
  - name: gemini-flash
    targets: [{{provider: gem, model: gemini-2.5-flash}}]
  - name: gemini-badkey
    targets: [{{provider: gem-badkey, model: gemini-2.5-flash}}]
  - name: gemini-3
    targets: [{{provider: gem, model: gemini-3-pro-preview}}]
  - name: vertex-3
    targets: [{{provider: vtx, model: gemini-3-pro-preview}}]
  - name: vertex-flash
    targets: [{{provider: vtx, model: gemini-2.5-flash}}]
  - name: exhausted
    targets: [{{provider: gem}}]
  - name: stream-error-99
    targets: [{{provider: gem}}]
  - name: blocked
    targets: [{{provider: gem}}]
  - name: stream-error-200
    targets: [{{provider: gem}}]
  - name: malformed-call
    targets: [{{provider: gem, model: finish-MALFORMED_FUNCTION_CALL}}]
  - name: malformed-then-flash
    targets: [{{provider: gem, model: finish-MALFORMED_FUNCTION_CALL, priority: 0}}, {{provider: gem, model: gemini-2.5-flash, priority: 1}}]
  - name: malformed-at-once-then-flash
    targets: [{{provider: gem, model: finish-at-once-MALFORMED_FUNCTION_CALL, priority: 0}}, {{provider: gem, model: gemini-2.5-flash, priority: 1}}]
  - name: malformed-then-vertex
    targets: [{{provider: gem, model: finish-MALFORMED_FUNCTION_CALL, priority: 0}}, {{provider: vtx, model: gemini-2.5-flash, priority: 1}}]
keys:
  - name: test-key
    key_hash: "{key_hash(TEST_KEY)}"
""")
    yield process
    process.stop()


@pytest.mark.parametrize("model", ["gemini-flash", "vertex-flash"])
def test_non_stream(oai, gemini, model):
    r = oai.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    assert r.choices[0].message.content == fg.REPLY
    assert r.usage.completion_tokens == 16 and r.usage.completion_tokens_details.reasoning_tokens == 6
    assert r.usage.prompt_tokens_details.cached_tokens == 16
    sent = gemini.last()
    assert sent["query"] == {} and sent["method"] == "generateContent"


@pytest.mark.parametrize("model", ["gemini-flash", "vertex-flash"])
def test_stream_and_tools(oai, model):
    chunks = list(oai.chat.completions.create(model=model, stream=True, tools=[WEATHER], stream_options={"include_usage": True},
                                              messages=[{"role": "user", "content": "weather?"}]))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert text == fg.REPLY and calls[0].function.name == "get_weather" and json.loads(calls[0].function.arguments) == fg.TOOL_ARGS
    assert finishes == ["tool_calls"] and chunks[-1].usage.total_tokens == 56


def test_vertex_uses_oauth_token_and_caches_it(oai, gemini):
    for _ in range(3):
        oai.chat.completions.create(model="vertex-flash", messages=[{"role": "user", "content": "hi"}])
    sent = gemini.last()
    assert sent["path"] == "/v1/projects/proj-1/locations/us-central1/publishers/google/models/gemini-2.5-flash:generateContent"
    assert sent["headers"]["authorization"].startswith("Bearer ya29.fake-")
    assert gemini.tokens_issued == 1  # one grant serves every request until shortly before expiry


def test_gemini_key_goes_in_header(oai, gemini):
    oai.chat.completions.create(model="gemini-flash", messages=[{"role": "user", "content": "hi"}])
    assert gemini.last()["headers"]["x-goog-api-key"] == fg.API_KEY


def test_errors(oai):
    with pytest.raises(openai.RateLimitError):
        oai.chat.completions.create(model="exhausted", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.APIStatusError) as bad:
        oai.chat.completions.create(model="gemini-badkey", messages=[{"role": "user", "content": "x"}])
    assert bad.value.status_code == 502 and "wrong-key" not in bad.value.response.text


@pytest.mark.parametrize("stream", [False, True])
def test_a_blocked_prompt_is_a_content_filter_stop_streamed_or_not(oai, stream):
    """Gemini answers a prompt its filters blocked with `promptFeedback.blockReason` and no
    candidates; streamed, that is the stream's one fragment, with no finishReason. It was a 502
    `upstream_disconnected` mid-stream (held against the provider's health) where the same
    answer unstreamed is `content_filter`."""
    messages = [{"role": "user", "content": "something the filters block"}]
    if not stream:
        r = oai.chat.completions.create(model="blocked", messages=messages)
        assert r.choices[0].finish_reason == "content_filter" and r.usage.prompt_tokens == 12
        return
    chunks = list(oai.chat.completions.create(model="blocked", messages=messages, stream=True,
                                              stream_options={"include_usage": True}))
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["content_filter"]
    assert chunks[-1].usage.prompt_tokens == 12 and chunks[-1].usage.completion_tokens == 0


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("messages", [
    [{"role": "system", "content": ""}, {"role": "user", "content": "hi"}],
    [{"role": "user", "content": [{"type": "text", "text": ""}, {"type": "text", "text": "hi"}]}],
], ids=["empty system", "empty text part"])
def test_empty_text_is_left_out_as_openai_takes_it(oai, gemini, messages, stream):
    """OpenAI takes an empty system message or text part; Gemini refuses an empty text part
    with a 400 ("Unable to submit request because it has an empty text parameter")."""
    r = oai.chat.completions.create(model="vertex-flash", messages=messages, stream=stream)
    text = "".join(c.choices[0].delta.content or "" for c in r if c.choices) if stream else r.choices[0].message.content
    assert text == fg.REPLY
    assert fg.empty_text_at(gemini.last()["body"]) is None


@pytest.mark.parametrize("model", ["stream-error-99", "stream-error-200"])
def test_a_stream_errors_odd_code_is_a_502_and_the_gateway_stays_up(oai, gw, model):
    """A stream's error event names its own `code`: 99 is no HTTP status (granian cannot send
    it: the worker stopped, then the gateway), 200 no error one. Both are the upstream's fault."""
    with pytest.raises(openai.APIStatusError) as err:
        list(oai.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}], stream=True))
    assert err.value.status_code == 502
    assert oai.chat.completions.create(model="gemini-flash", messages=[{"role": "user", "content": "hi"}]).choices
    assert gw.proc.poll() is None


@pytest.mark.parametrize("stream", [False, True])
def test_a_malformed_function_call_is_an_error_not_an_empty_stop(oai, stream):
    """Gemini ends a generation whose function call it could not form with MALFORMED_FUNCTION_CALL
    and no content. It reached the client as an empty, `stop`ped answer and an agent took it for
    the last word; the openai SDK now raises, with the reason in the message: a 502 unstreamed,
    the stream's error event after the text it had sent."""
    messages = [{"role": "user", "content": "weather?"}]
    with pytest.raises(openai.APIError) as failed:
        if stream:
            list(oai.chat.completions.create(model="malformed-call", messages=messages, tools=[WEATHER], stream=True))
        else:
            oai.chat.completions.create(model="malformed-call", messages=messages, tools=[WEATHER])
    assert "MALFORMED_FUNCTION_CALL" in failed.value.message
    if not stream:
        assert isinstance(failed.value, openai.APIStatusError) and failed.value.status_code == 502


@pytest.mark.parametrize("stream", [False, True])
def test_a_malformed_function_call_is_an_error_on_the_responses_and_anthropic_surfaces(oai, ant, stream):
    """Both surfaces are built on the chat translation: neither passes the failure for a
    `completed` response or an `end_turn` message."""
    if stream:  # (the SDK hands a Responses stream's error events over rather than raising)
        events = list(oai.responses.create(model="malformed-call", input="weather?", tools=[RESPONSES_WEATHER],
                                           stream=True))
        assert [e.type for e in events][-2:] == ["error", "response.failed"]
        assert "MALFORMED_FUNCTION_CALL" in events[-2].message
    else:
        with pytest.raises(openai.APIStatusError) as failed:
            oai.responses.create(model="malformed-call", input="weather?", tools=[RESPONSES_WEATHER])
        assert failed.value.status_code == 502 and "MALFORMED_FUNCTION_CALL" in failed.value.message
    with pytest.raises(anthropic.APIStatusError) as refused:
        if stream:
            with ant.messages.stream(model="malformed-call", max_tokens=50, messages=[{"role": "user", "content": "hi"}]) as s:
                s.get_final_message()
        else:
            ant.messages.create(model="malformed-call", max_tokens=50, messages=[{"role": "user", "content": "hi"}])
    body = refused.value.body
    assert isinstance(body, dict) and body["error"]["type"] == "api_error"
    assert "MALFORMED_FUNCTION_CALL" in body["error"]["message"]


def test_a_malformed_function_call_falls_back_to_the_routes_next_target(oai, gemini):
    """A failed generation is the upstream's 502, which the router retries on the next target."""
    r = oai.chat.completions.create(model="malformed-then-flash", messages=[{"role": "user", "content": "weather?"}],
                                    tools=[WEATHER])
    assert r.choices[0].finish_reason == "tool_calls" and r.choices[0].message.tool_calls[0].function.name == "get_weather"
    assert [q["model"] for q in gemini.requests[-2:]] == ["finish-MALFORMED_FUNCTION_CALL", "gemini-2.5-flash"]


def test_a_stream_that_fails_in_its_first_fragment_falls_back_too(oai, gemini):
    """Gemini's MALFORMED_FUNCTION_CALL stream is usually that one fragment, with no content: the
    error comes before the gateway has sent a byte, so the next target answers the stream."""
    chunks = list(oai.chat.completions.create(model="malformed-at-once-then-flash", stream=True, tools=[WEATHER],
                                              messages=[{"role": "user", "content": "weather?"}]))
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]
    assert [q["model"] for q in gemini.requests[-2:]] == ["finish-at-once-MALFORMED_FUNCTION_CALL", "gemini-2.5-flash"]


TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}


def _ask(oai, messages: list, stream: bool) -> dict:
    """One turn of a tool loop: the assistant message the client keeps, as it would send it back."""
    if not stream:
        answer = oai.chat.completions.create(model="gemini-flash", messages=messages, tools=[WEATHER, TIME])
        return answer.choices[0].message.model_dump(exclude_none=True)
    chunks = oai.chat.completions.create(model="gemini-flash", messages=messages, tools=[WEATHER, TIME], stream=True)
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    return {"role": "assistant", "tool_calls": [{"id": tc.id, "type": "function",
                                                 "function": {"name": tc.function.name, "arguments": tc.function.arguments}}
                                                for tc in calls]}


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_tool_loop_sends_each_result_under_its_own_function(oai, gemini, stream):
    """Gemini sends no call ids. Two turns each call a different function; when the conversation
    comes back, each functionResponse must carry the name of the call it answers, and the ids the
    gateway made for the two turns' calls must differ (a client keys its results by them)."""
    messages: list = [{"role": "user", "content": "weather and time?"}]
    first = _ask(oai, messages, stream)
    messages += [first, {"role": "tool", "tool_call_id": first["tool_calls"][0]["id"], "content": "18C sunny"}]
    second = _ask(oai, messages, stream)
    messages += [second, {"role": "tool", "tool_call_id": second["tool_calls"][0]["id"], "content": "14:00"}]
    assert [m["tool_calls"][0]["function"]["name"] for m in (first, second)] == ["get_weather", "get_time"]
    oai.chat.completions.create(model="gemini-flash", messages=messages, tools=[WEATHER, TIME])
    turns = [(c["role"], name, part[key].get("response")) for c in gemini.last()["body"]["contents"] for part in c["parts"]
             for key in ("functionCall", "functionResponse") if key in part for name in [part[key]["name"]]]
    assert turns == [("model", "get_weather", None), ("user", "get_weather", {"content": "18C sunny"}),
                     ("model", "get_time", None), ("user", "get_time", {"content": "14:00"})]
    assert first["tool_calls"][0]["id"] != second["tool_calls"][0]["id"]


@pytest.mark.parametrize("model", ["gemini-3", "vertex-3"])
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_gemini_3_gets_its_thought_signature_back_through_the_openai_sdk(oai, gemini, model, stream):
    """Gemini 3 signs its function calls and answers 400 to a history that drops the signature:
    a tool loop through the gateway failed at its second turn. The signature rides on the tool
    call as Google's OpenAI-compatible endpoint puts it, and the SDK's own message object, sent
    back as it came, returns it to Gemini."""
    messages: list = [{"role": "user", "content": "weather?"}]
    if stream:
        chunks = oai.chat.completions.create(model=model, messages=messages, tools=[WEATHER], stream=True)
        calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
        assert [tc.extra_content for tc in calls] == [{"google": {"thought_signature": "sig-get_weather"}}]
        said = {"role": "assistant", "tool_calls": [tc.model_dump(exclude_none=True, exclude={"index"}) for tc in calls]}
    else:
        answer = oai.chat.completions.create(model=model, messages=messages, tools=[WEATHER])
        said = answer.choices[0].message  # the SDK's object itself, as an app appends it
        assert said.tool_calls[0].extra_content == {"google": {"thought_signature": "sig-get_weather"}}
    call_id = said["tool_calls"][0]["id"] if stream else said.tool_calls[0].id
    messages += [said, {"role": "tool", "tool_call_id": call_id, "content": "18C sunny"}]
    final = oai.chat.completions.create(model=model, messages=messages, tools=[WEATHER])
    assert final.choices[0].message.content == fg.REPLY  # not the 400 of an unsigned call
    sent = [p for c in gemini.last()["body"]["contents"] for p in c["parts"] if "functionCall" in p]
    assert [p.get("thoughtSignature") for p in sent] == ["sig-get_weather"]


def test_a_gemini_3_history_without_signatures_gets_the_stand_in_on_each_steps_first_call(oai, gemini):
    """A client that rebuilt its messages (or a history from another model) has no signatures:
    the first call of each assistant message gets Google's documented stand-in, the others none
    (Gemini signs only a step's first call); a Gemini 2.5 history is sent as it was."""
    call = {"type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    messages = [{"role": "user", "content": "weather twice?"},
                {"role": "assistant", "tool_calls": [{"id": "a1", **call}, {"id": "a2", **call}]},
                {"role": "tool", "tool_call_id": "a1", "content": "18C"}, {"role": "tool", "tool_call_id": "a2", "content": "19C"},
                {"role": "assistant", "tool_calls": [{"id": "b1", **call}]},
                {"role": "tool", "tool_call_id": "b1", "content": "20C"}]
    for model, expected in (("gemini-3", [fg.SKIP_SIGNATURE, None, fg.SKIP_SIGNATURE]), ("gemini-flash", [None] * 3)):
        final = oai.chat.completions.create(model=model, messages=messages, tools=[WEATHER])
        assert final.choices[0].message.content == fg.REPLY
        sent = [p for c in gemini.last()["body"]["contents"] for p in c["parts"] if "functionCall" in p]
        assert [p.get("thoughtSignature") for p in sent] == expected, model


# -- Vertex tokens that arrive short-lived (impersonated or metadata tokens can have under the
# 5-minute margin left), and a token endpoint that refuses every grant.

@pytest.fixture(scope="module")
def token_fakes() -> Iterator[dict[str, FakeGemini]]:
    fakes = {"short": FakeGemini(token_lifetime=240), "refusing": FakeGemini(grants_tokens=False)}
    yield fakes
    for fake in fakes.values():
        fake.stop()


@pytest.fixture(scope="module")
def token_gw(token_fakes: dict[str, FakeGemini], tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    providers = "".join(
        f"  - {{name: vtx-{name}, schema: vertex, project: proj-1, location: us-central1, base_url: {fake.url}/v1,"
        f" credentials: {{service_account_file: \"{service_account_file(tmp_path_factory.mktemp(name), fake.url + '/token')}\"}}}}\n"
        for name, fake in token_fakes.items())
    process = GatewayProcess(f"""
providers:
{providers}models:
  - {{name: short, targets: [{{provider: vtx-short, model: gemini-2.5-flash}}]}}
  - {{name: refusing, targets: [{{provider: vtx-refusing, model: gemini-2.5-flash}}]}}
keys:
  - name: test-key
    key_hash: "{key_hash(TEST_KEY)}"
""")
    yield process
    process.stop()


def _concurrently(gw: GatewayProcess, model: str, n: int = 20) -> list[int]:
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=TEST_KEY, max_retries=0)

    def one(_: int) -> int:
        try:
            client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
        except openai.APIStatusError as bad:
            assert bad.code == "upstream_auth_failed"
            return bad.status_code
        return 200

    with ThreadPoolExecutor(10) as pool:
        return list(pool.map(one, range(n)))


def test_a_token_that_arrives_with_under_the_margin_left_is_reused(token_gw, token_fakes):
    assert _concurrently(token_gw, "short") == [200] * 20
    assert token_fakes["short"].tokens_issued == 1  # 4 minutes to live: good for the next 2


def test_a_refused_token_grant_fails_fast_and_is_logged_once(token_gw, token_fakes):
    assert _concurrently(token_gw, "refusing") == [502] * 20
    assert token_fakes["refusing"].token_requests <= 3  # then a back-off: the endpoint is not hammered
    said = [line for line in token_gw.stderr().splitlines() if "vtx-refusing" in line and "OAuth" in line]
    assert len(said) == 1 and "RefreshError" in said[0] and "Invalid JWT" not in said[0], said


def test_a_token_revoked_before_its_expiry_is_fetched_anew_after_a_401(oai, gemini):
    oai.chat.completions.create(model="vertex-flash", messages=[{"role": "user", "content": "hi"}])
    gemini.revoked.add(f"ya29.fake-{gemini.tokens_issued}")  # an hour left, but no good
    try:  # a 401 (or, retried by the gateway on the provider, already the new token's answer)
        oai.chat.completions.create(model="vertex-flash", messages=[{"role": "user", "content": "hi"}])
    except openai.APIStatusError as refused:
        assert refused.status_code == 502
    r = oai.chat.completions.create(model="vertex-flash", messages=[{"role": "user", "content": "hi"}])
    assert r.choices[0].message.content == fg.REPLY
    assert gemini.last()["headers"]["authorization"] == f"Bearer ya29.fake-{gemini.tokens_issued}"


def test_failed_generations_do_not_eject_the_provider(gw, oai, gemini):
    """MALFORMED_FUNCTION_CALL follows the prompt, not the provider's health: counted as the
    upstream's fault, one client's tool-heavy prompts (here on a route that falls back to
    Vertex) ejected Gemini for every other client's route. Retried on the next target, held
    against nothing."""
    for _ in range(7):  # past routing.outlier_detection's 5 consecutive failures
        r = oai.chat.completions.create(model="malformed-then-vertex", tools=[WEATHER],
                                        messages=[{"role": "user", "content": "weather?"}])
        assert r.choices[0].finish_reason == "tool_calls"
    with urllib.request.urlopen(gw.url + "/metrics", timeout=5) as m:
        metrics = m.read().decode()
    assert 'tollway_upstream_available{endpoint="",provider="gem"} 1.0' in metrics
    answer = oai.chat.completions.create(model="gemini-flash", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content
