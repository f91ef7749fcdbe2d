"""The response cache through a real gateway (`tollway serve`) and the official SDKs, against
fake upstreams that count the calls they get (docs/cache.md)."""
from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from unittest import mock

import anthropic
import openai
import pytest

from tests.cache_fixture import (
    DRAINED_KEY,
    SOLO_KEY,
    SPENT_KEY,
    THIRD_KEY,
    TIGHT_KEY,
    CacheUpstream,
    cache_config,
    messages,
    prompt,
)
from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.openai_upstream import REPLY
from tests.harness import OTHER_KEY, TEST_KEY, GatewayProcess
from tests.test_ledger_e2e import _records


@pytest.fixture(scope="module")
def up() -> Iterator[CacheUpstream]:
    fake = CacheUpstream()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache-ledger") / "ledger.db"


@pytest.fixture(scope="module")
def gw(up: CacheUpstream, anthropic_upstream: FakeAnthropic, db: Path) -> Iterator[GatewayProcess]:
    gateway = GatewayProcess(cache_config(up.url, anthropic_upstream.url,
                                          extra=f"store: {{backend: sqlite, path: {db}}}"))
    yield gateway
    gateway.stop()


def chat(client: openai.OpenAI, text: str, stream: bool = False, model: str = "gpt-4o-mini",
         **kwargs: object) -> tuple[str, str | None, dict[str, str]]:
    """(the answer's text, x-tollway-cache, headers) of one chat completion through the SDK."""
    args = {"temperature": 0, **kwargs}
    raw = client.chat.completions.with_raw_response.create(model=model, messages=messages(text), stream=stream,
                                                           **args)  # type: ignore[call-overload]
    if stream:
        text_out = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    else:
        text_out = raw.parse().choices[0].message.content or ""
    return text_out, raw.headers.get("x-tollway-cache"), dict(raw.headers)


@pytest.mark.parametrize("first, second", [(False, True), (True, False), (False, False), (True, True)])
def test_a_hit_serves_either_kind_of_request_whichever_filled_it(oai, up, first, second):
    text = prompt()
    assert chat(oai, text, first)[:2] == (REPLY, "miss")
    answer, outcome, headers = chat(oai, text, second)
    assert (answer, outcome) == (REPLY, "hit")
    assert int(headers["age"]) >= 0 and headers["x-request-id"]
    assert headers.get("x-tollway-cost-usd") == (None if second else "0")  # a hit cost nothing
    assert up.calls(text) == 1


def test_a_cached_stream_is_well_formed_with_usage_when_asked(oai, up):
    text = prompt()
    chat(oai, text)  # filled by a non-stream answer
    stream = oai.chat.completions.create(model="gpt-4o-mini", messages=messages(text), temperature=0, stream=True,
                                         stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 9
    assert up.calls(text) == 1


def test_tool_calls_are_cached_both_ways(oai, up):
    text = prompt()
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    first = oai.chat.completions.create(model="gpt-4o-mini", messages=messages(text), tools=tools, temperature=0)
    call = first.choices[0].message.tool_calls[0]  # type: ignore[index]
    streamed = list(oai.chat.completions.create(model="gpt-4o-mini", messages=messages(text), tools=tools,
                                                temperature=0, stream=True))
    deltas = [tc for c in streamed if c.choices for tc in (c.choices[0].delta.tool_calls or ())]
    assert deltas[0].id == call.id and deltas[0].function.name == "get_weather"  # type: ignore[union-attr]
    assert "".join(d.function.arguments or "" for d in deltas) == call.function.arguments  # type: ignore[union-attr]
    assert [c.choices[0].finish_reason for c in streamed if c.choices][-1] == "tool_calls"
    assert up.calls(text) == 1


def test_a_stored_answer_no_stream_can_be_made_of_is_a_miss_for_a_stream_not_a_500(gw, up):
    """An upstream's complete answer whose tool_calls holds a string was stored by a JSON
    request; rendering it for a streaming request raised, and every streaming request got a
    500 (as a hit) for the entry's TTL. Now that entry is dropped and the request goes upstream."""
    text = prompt()
    body = {"model": "oddshape", "temperature": 0, "messages": messages(text)}

    def post(stream: bool) -> tuple[int, str | None, bytes]:
        req = urllib.request.Request(gw.url + "/v1/chat/completions", json.dumps({**body, "stream": stream}).encode(),
                                     {"authorization": f"Bearer {TEST_KEY}", "content-type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=20) as r:
                return r.status, r.headers.get("x-tollway-cache"), r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers.get("x-tollway-cache"), e.read()

    assert post(False)[:2] == (200, "miss")
    assert post(False)[:2] == (200, "hit")
    status, outcome, streamed = post(True)
    assert (status, outcome) == (200, "miss") and streamed.endswith(b"data: [DONE]\n\n")
    assert up.calls(text) == 2  # the JSON miss, then the stream's own call
    assert post(True)[:2] == (200, "hit")  # the stream it stored serves the next one


def test_embeddings_completions_and_responses_are_cached(oai, up):
    text = prompt()
    first = oai.embeddings.create(model="text-embedding-3-small", input=[text, "two"])
    raw = oai.embeddings.with_raw_response.create(model="text-embedding-3-small", input=[text, "two"])
    assert raw.headers["x-tollway-cache"] == "hit" and raw.parse().data[1].embedding == first.data[1].embedding
    completion = oai.completions.with_raw_response.create(model="gpt-4o-mini", prompt=text, temperature=0)
    again = list(oai.completions.create(model="gpt-4o-mini", prompt=text, temperature=0, stream=True))
    assert completion.headers["x-tollway-cache"] == "miss"
    assert "".join(c.choices[0].text for c in again if c.choices) == completion.parse().choices[0].text
    response = oai.responses.create(model="gpt-4o-mini", input=text, temperature=0)
    with oai.responses.stream(model="gpt-4o-mini", input=text, temperature=0) as events:
        final = events.get_final_response()  # the SDK checks the event sequence as it goes
    assert final.output_text == response.output_text == REPLY and final.id == response.id
    assert up.calls(text) == 3  # one each for embeddings, completions and responses


def test_a_streamed_completions_logprobs_are_kept(oai, up):
    """Legacy completions stream their logprobs in pieces (tokens, token_logprobs, top_logprobs,
    text_offset per chunk): the entry a stream filled had them null for every later hit."""
    text = prompt()
    args = {"model": "scored", "prompt": text, "temperature": 0, "logprobs": 1}
    streamed = list(oai.completions.create(**args, stream=True))  # type: ignore[call-overload]
    pieces = [c.choices[0].logprobs for c in streamed if c.choices and c.choices[0].logprobs]
    raw = oai.completions.with_raw_response.create(**args)  # type: ignore[call-overload]
    assert raw.headers["x-tollway-cache"] == "hit"
    logprobs = raw.parse().choices[0].logprobs
    assert logprobs is not None and logprobs.tokens == [t for p in pieces for t in p.tokens] == ["Hello", " world"]
    assert logprobs.token_logprobs == [-0.1, -0.2] and logprobs.text_offset == [0, 5]
    assert logprobs.top_logprobs == [{"Hello": -0.1}, {" world": -0.2}]
    again = list(oai.completions.create(**args, stream=True))  # type: ignore[call-overload]
    assert [c.choices[0].logprobs.tokens for c in again if c.choices] == [["Hello", " world"]]  # type: ignore[union-attr]
    assert up.calls(text) == 1


def test_anthropic_messages_are_cached_both_ways(gw, anthropic_upstream):
    ant = anthropic.Anthropic(base_url=gw.url + "/anthropic", api_key=TEST_KEY, max_retries=0, timeout=20)
    text = prompt()
    tools = [{"name": "get_weather", "input_schema": {"type": "object"}}]
    args = {"model": "claude-sonnet", "max_tokens": 100, "messages": messages(text), "tools": tools,
            "extra_body": {"temperature": 0}}  # (this SDK's stream() has no temperature argument)
    with ant.messages.stream(**args) as stream:  # type: ignore[arg-type]
        streamed = stream.get_final_message()
        assert stream.response.headers["x-tollway-cache"] == "miss"
    raw = ant.messages.with_raw_response.create(**args)  # type: ignore[arg-type]
    assert raw.headers["x-tollway-cache"] == "hit"
    assert raw.parse().model_dump() == streamed.model_dump()
    with ant.messages.stream(**args) as stream:  # type: ignore[arg-type]
        again = stream.get_final_message()
        assert stream.response.headers["x-tollway-cache"] == "hit"
    assert again.model_dump() == streamed.model_dump() and again.stop_reason == "tool_use"
    assert sum(text in json.dumps(r["body"]) for r in anthropic_upstream.requests) == 1


def test_an_anthropic_beta_header_is_part_of_the_key(gw, anthropic_upstream):
    """anthropic-beta goes to the provider beside the body and changes what it answers (context
    size, tool types, output formats): requests that differ only in it must not share an entry."""
    ant = anthropic.Anthropic(base_url=gw.url + "/anthropic", api_key=TEST_KEY, max_retries=0, timeout=20)
    text = prompt()
    args = {"model": "claude-sonnet", "max_tokens": 100, "messages": messages(text), "extra_body": {"temperature": 0}}

    def outcome(beta: str | None) -> str:
        headers = {"anthropic-beta": beta} if beta else {}
        raw = ant.messages.with_raw_response.create(**args, extra_headers=headers)  # type: ignore[arg-type]
        return raw.headers["x-tollway-cache"]

    assert [outcome(None), outcome("context-1m-2025-08-07"), outcome("output-128k-2025-02-19")] == ["miss"] * 3
    assert [outcome(None), outcome("context-1m-2025-08-07")] == ["hit", "hit"]
    assert sum(text in json.dumps(r["body"]) for r in anthropic_upstream.requests) == 3


def test_translated_streams_are_assembled_too(gw, oai, up):
    """Anthropic messages served by an OpenAI upstream, and a Responses stream first: the
    stream the client got (the gateway's own translation) fills the entry."""
    ant = anthropic.Anthropic(base_url=gw.url + "/anthropic", api_key=TEST_KEY, max_retries=0, timeout=20)
    text = prompt()
    args = {"model": "claude-over-chat", "max_tokens": 100, "messages": messages(text), "extra_body": {"temperature": 0}}
    with ant.messages.stream(**args) as stream:  # type: ignore[arg-type]
        streamed = stream.get_final_message()
    raw = ant.messages.with_raw_response.create(**args)  # type: ignore[arg-type]
    assert raw.headers["x-tollway-cache"] == "hit" and raw.parse().content[0].text == REPLY  # type: ignore[union-attr]
    assert raw.parse().usage.output_tokens == streamed.usage.output_tokens
    # (the fake's Responses stream is too sparse for the SDK's stream helper: read its events)
    events = list(oai.responses.create(model="gpt-4o-mini", input=text, temperature=0, stream=True))
    first = next(e.response for e in events if e.type == "response.completed")
    again = oai.responses.with_raw_response.create(model="gpt-4o-mini", input=text, temperature=0)
    assert again.headers["x-tollway-cache"] == "hit" and again.parse().output_text == first.output_text == REPLY
    assert up.calls(text) == 2


def test_keys_do_not_share_entries_unless_the_scope_says_so(gw, oai, up):
    other = openai.OpenAI(base_url=gw.url + "/v1", api_key=OTHER_KEY, max_retries=0)
    text = prompt()
    assert chat(oai, text)[1] == "miss" and chat(other, text)[1] == "miss"  # scope key: each its own
    assert chat(oai, text)[1] == "hit" and chat(other, text)[1] == "hit"
    assert up.calls(text) == 2
    team = prompt()  # scope team: test-key and other-key are both in team red; solo-key has no team
    assert chat(oai, team, model="team-mini")[1] == "miss" and chat(other, team, model="team-mini")[1] == "hit"
    solo = openai.OpenAI(base_url=gw.url + "/v1", api_key=SOLO_KEY, max_retries=0)
    assert chat(solo, team, model="team-mini")[1] == "miss"
    assert up.calls(team) == 2
    shared = prompt()
    assert chat(oai, shared, model="shared-mini")[1] == "miss"
    assert chat(other, shared, model="shared-mini")[1] == "hit"  # shared:docs
    assert up.calls(shared) == 1


@pytest.mark.parametrize("stream", [False, True])
def test_an_output_guardrail_of_one_key_is_not_bypassed_by_a_shared_entry(gw, oai, up, stream):
    """other-key's answers on shared-masked have "fox" masked; test-key's do not. Sharing one
    entry would serve other-key test-key's unmasked answer (a hit runs no output guardrail)."""
    other = openai.OpenAI(base_url=gw.url + "/v1", api_key=OTHER_KEY, max_retries=0)
    text = prompt()
    assert chat(oai, text, stream, model="shared-masked")[:2] == (REPLY, "miss")
    answer, outcome, _ = chat(other, text, stream, model="shared-masked")
    assert "fox" not in answer and outcome == "miss"
    assert chat(other, text, not stream, model="shared-masked")[1] == "hit"  # its own masked entry
    assert "fox" not in chat(other, text, not stream, model="shared-masked")[0]
    assert chat(oai, text, not stream, model="shared-masked")[:2] == (REPLY, "hit")
    assert up.calls(text) == 2


def test_a_stream_is_stored_as_a_plugins_on_chunk_left_it(oai, up):
    """The plugin on `plugged` upper-cases every streamed delta: the entry is what the client got,
    so a JSON hit says it in upper case too (a hit runs no on_chunk)."""
    text = prompt()
    assert chat(oai, text, True, model="plugged")[:2] == (REPLY.upper(), "miss")
    assert chat(oai, text, False, model="plugged")[:2] == (REPLY.upper(), "hit")
    assert up.calls(text) == 1


@pytest.mark.parametrize("model, stream", [("truncated", False), ("truncated", True), ("fail-500", False),
                                           ("die-mid-stream", True), ("guarded", False), ("guarded", True)])
def test_truncated_failed_cut_off_and_blocked_answers_are_not_stored(oai, up, model, stream):
    text = prompt()
    calls = []
    for _ in range(2):
        try:
            _, outcome, _ = chat(oai, text, stream, model=model)
            assert outcome == "miss"
        except openai.APIStatusError as exc:  # the gateway's own error answers say what the cache did too
            assert exc.response.headers.get("x-tollway-cache") == "miss"
        except openai.APIError:
            pass  # a stream that ended with an error event
        calls.append(up.calls(text))
    assert calls[0] >= 1 and calls[1] == 2 * calls[0]  # (a 500 is retried: the second request tries as often)


@pytest.mark.parametrize("stream", [False, True])
def test_refused_answers_are_not_stored(oai, up, stream):
    """A refusal finishes with "stop" (chat: message.refusal; Responses: a refusal content part
    in a completed response): it looked complete and was served to every later request."""
    text = prompt()
    for _ in range(2):
        raw = oai.chat.completions.with_raw_response.create(model="refusing", messages=messages(text), temperature=0,
                                                             stream=stream)  # type: ignore[call-overload]
        assert raw.headers["x-tollway-cache"] == "miss"
        if stream:
            refusal = "".join(c.choices[0].delta.refusal or "" for c in raw.parse() if c.choices)
        else:
            refusal = raw.parse().choices[0].message.refusal
        assert refusal == "I can't help with that."
    assert chat(oai, text, not stream, model="refusing")[1] == "miss"  # nor for the other kind of request
    assert up.calls(text) == 3


def test_a_refused_response_is_not_stored(oai, up):
    text = prompt()
    for _ in range(2):
        raw = oai.responses.with_raw_response.create(model="refusing", input=text, temperature=0)
        assert raw.headers["x-tollway-cache"] == "miss"
        assert raw.parse().output[0].content[0].type == "refusal"  # type: ignore[union-attr]
    assert up.calls(text) == 2


@pytest.mark.parametrize("first", [False, True])
def test_a_spoken_answer_is_cached_whole_both_ways(oai, up, first):
    """An audio answer (content null, message.audio) was assembled from its stream without
    its audio, and replayed to a stream without it: every hit was an empty answer."""
    text = prompt()
    args = {"model": "speaking", "messages": messages(text), "temperature": 0, "modalities": ["text", "audio"],
            "audio": {"voice": "alloy", "format": "pcm16"}}

    def spoken(stream: bool) -> tuple[dict[str, object], str | None]:
        raw = oai.chat.completions.with_raw_response.create(**args, stream=stream)  # type: ignore[call-overload]
        if not stream:
            audio = raw.parse().choices[0].message.audio
            return audio.model_dump(), raw.headers["x-tollway-cache"]
        deltas = [c.choices[0].delta.audio for c in raw.parse() if c.choices and c.choices[0].delta.audio]
        whole = {"id": next(d.id for d in deltas if d.id), "expires_at": next(d.expires_at for d in deltas if d.expires_at),
                 "data": "".join(d.data or "" for d in deltas), "transcript": "".join(d.transcript or "" for d in deltas)}
        return whole, raw.headers["x-tollway-cache"]

    expected = {"id": "audio_1", "data": "UklGRgAA", "expires_at": 1700003600, "transcript": "Hello there."}
    assert spoken(first) == (expected, "miss")
    assert spoken(not first) == (expected, "hit")
    assert spoken(first) == (expected, "hit")
    assert up.calls(text) == 1


@pytest.mark.parametrize("stream", [False, True])
def test_an_answer_that_says_nothing_is_not_stored(oai, up, stream):
    text = prompt()
    assert [chat(oai, text, stream, model="silent")[1] for _ in range(2)] == ["miss", "miss"]
    assert up.calls(text) == 2


def test_an_anthropic_stream_that_ends_in_an_error_event_is_not_stored(gw, anthropic_upstream):
    ant = anthropic.Anthropic(base_url=gw.url + "/anthropic", api_key=TEST_KEY, max_retries=0, timeout=20)
    text = prompt()
    for _ in range(2):
        with pytest.raises(anthropic.APIStatusError):  # the SDK raises the stream's error event
            with ant.messages.stream(model="stream-error", max_tokens=100, messages=messages(text),
                                     extra_body={"temperature": 0}) as stream:
                assert stream.response.headers["x-tollway-cache"] == "miss"
                stream.get_final_message()
    assert sum(text in json.dumps(r["body"]) for r in anthropic_upstream.requests) == 2


def test_no_store_neither_reads_nor_writes_and_no_cache_refreshes(oai, up):
    text = prompt()
    assert chat(oai, text, extra_headers={"cache-control": "no-store"})[1] == "bypass"
    assert chat(oai, text)[1] == "miss"  # the no-store answer was not kept
    assert chat(oai, text, extra_headers={"cache-control": "no-store"})[1] == "bypass"  # not read either
    assert chat(oai, text, extra_headers={"cache-control": "no-cache"})[1] == "bypass"
    assert up.calls(text) == 4
    assert chat(oai, text)[1] == "hit"
    assert up.calls(text) == 4


def test_sampled_requests_are_cached_only_where_the_scope_allows(oai, up):
    text = prompt()
    for model, outcomes in (("gpt-4o-mini", ["bypass", "bypass"]), ("sampled-ok", ["miss", "hit"])):
        got = [chat(oai, text, model=model, temperature=0.8)[1] for _ in range(2)]
        assert got == outcomes, model
    assert chat(oai, text, model="gpt-4o-mini", temperature=0.8, seed=3)[1] == "miss"  # a seed makes it repeatable
    assert up.calls(text) == 4


def test_a_seed_the_provider_drops_does_not_make_an_answer_repeatable(gw, oai, anthropic_upstream):
    """Chat to Anthropic: the translation drops `seed` (Anthropic has none), so each call draws
    anew and a sampled request with a seed is still not cached."""
    text = prompt()
    assert [chat(oai, text, model="claude-sonnet", temperature=0.8, seed=3)[1] for _ in range(2)] == ["bypass", "bypass"]


def test_a_model_nobody_opted_in_is_not_cached_and_says_nothing(oai, up):
    text = prompt()
    for _ in range(2):
        assert chat(oai, text, model="uncached")[1] is None
    assert up.calls(text) == 2


def test_entries_expire_after_their_ttl(oai, up):
    text = prompt()
    assert chat(oai, text, model="short-lived")[1] == "miss"
    assert chat(oai, text, model="short-lived")[1] == "hit"
    time.sleep(1.1)
    assert chat(oai, text, model="short-lived")[1] == "miss"
    assert up.calls(text) == 2


def test_fifty_concurrent_identical_misses_make_one_upstream_call(oai, up, gw):
    text = prompt()
    start = threading.Barrier(50)  # all 50 sent together, within the upstream's 0.6 s (a loaded machine starts threads slowly)

    def one(i: int) -> tuple:
        start.wait()
        return chat(oai, text, model="slow", stream=i % 2 == 1)

    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(one, range(50)))
    assert up.calls(text) == 1
    assert all(answer == REPLY for answer, _, _ in results)
    assert sorted(outcome for _, outcome, _ in results) == ["hit"] * 49 + ["miss"]
    joins = _metric(gw, "tollway_cache_events_total", 'event="single_flight_join"')
    assert joins >= 49


def test_a_hit_is_recorded_with_its_tokens_at_no_cost(oai, db):
    text = prompt()
    ids = [f"req-cache-{uuid.uuid4().hex[:12]}" for _ in range(2)]
    for rid in ids:
        chat(oai, text, extra_headers={"x-request-id": rid})
    rows = _records(db, ids)
    miss, hit = rows[ids[0]], rows[ids[1]]
    assert (miss["cache_hit"], hit["cache_hit"]) == (0, 1)
    assert hit["output_tokens"] == miss["output_tokens"] == 9
    assert hit["input_tokens"] == miss["input_tokens"] > 0
    assert hit["cost_usd"] == 0 and miss["cost_usd"] > 0


def test_hits_count_against_request_limits_not_token_limits(gw, up):
    limited = openai.OpenAI(base_url=gw.url + "/v1", api_key=THIRD_KEY, max_retries=0)
    text = prompt()
    # output_tokens 30/min: four answers of 9 tokens would not fit, but three of them are hits
    outcomes = [chat(limited, text, max_tokens=10)[1] for _ in range(4)]
    assert outcomes == ["miss", "hit", "hit", "hit"]
    with pytest.raises(openai.RateLimitError) as refused:  # requests 4/min: a hit is a request
        chat(limited, text, max_tokens=10)
    assert "request" in str(refused.value).lower()
    assert up.calls(text) == 1


def test_a_spent_token_limit_still_serves_hits(gw, up):
    """A hit generates nothing: a key whose output-token bucket cannot hold another answer still
    gets the cached ones (they draw on request limits only); a miss is refused as before."""
    drained = openai.OpenAI(base_url=gw.url + "/v1", api_key=DRAINED_KEY, max_retries=0)
    text, other = prompt(), prompt()
    assert chat(drained, text, max_tokens=30)[1] == "miss"  # reserves the whole 30, settles 9
    for stream in (False, True):  # 30 no longer fits: the cache answers, either kind
        answer, outcome, _ = chat(drained, text, stream, max_tokens=30)
        assert (answer, outcome) == (REPLY, "hit")
    with pytest.raises(openai.RateLimitError) as refused:
        chat(drained, other, max_tokens=30)
    assert "output tokens" in str(refused.value)
    assert refused.value.response.headers.get("x-tollway-cache") == "miss"
    assert up.calls(text) == 1 and up.calls(other) == 0


def test_a_spent_budget_still_serves_hits(gw, up):
    spent = openai.OpenAI(base_url=gw.url + "/v1", api_key=SPENT_KEY, max_retries=0)
    text, other = prompt(), prompt()
    assert chat(spent, text)[1] == "miss"  # costs more than the whole budget
    deadline = time.monotonic() + 5
    while True:  # the charge lands after the response
        try:
            chat(spent, other)
        except openai.RateLimitError as exc:
            assert exc.code == "insufficient_quota"
            break
        assert time.monotonic() < deadline, "the budget never ran out"
        other = prompt()
    assert chat(spent, text) == (REPLY, "hit", mock.ANY)
    assert up.calls(other) == 0


def test_the_access_log_says_what_the_cache_did(gw, oai):
    text = prompt()
    ids = [f"req-log-{uuid.uuid4().hex[:12]}" for _ in range(2)]
    for rid in ids:
        chat(oai, text, extra_headers={"x-request-id": rid})
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = {line["request_id"]: line for line in gw.log_lines() if line.get("request_id") in ids}
        if len(lines) == 2:
            break
        time.sleep(0.05)
    assert [lines[rid]["cache"] for rid in ids] == ["miss", "hit"]
    assert lines[ids[1]]["provider"] is None and lines[ids[1]]["completion_tokens"] == 9


def test_a_stream_stopped_at_a_limit_is_not_stored(gw, oai, up):
    tight = openai.OpenAI(base_url=gw.url + "/v1", api_key=TIGHT_KEY, max_retries=0)
    text = prompt()
    with pytest.raises(openai.APIError):  # the stream's last event is the limit's 429
        chat(tight, text, stream=True, model="shared-mini", max_tokens=3)
    assert up.calls(text) == 1
    assert chat(oai, text, model="shared-mini")[1] == "miss"  # (shared:docs: the same entry, had it been stored)


def test_metrics_count_hits_misses_and_bypasses(gw, oai):
    before = {o: _metric(gw, "tollway_cache_requests_total", f'model="gpt-4o-mini",outcome="{o}"')
              for o in ("hit", "miss", "bypass")}
    text = prompt()
    chat(oai, text), chat(oai, text), chat(oai, text, extra_headers={"cache-control": "no-store"})
    after = {o: _metric(gw, "tollway_cache_requests_total", f'model="gpt-4o-mini",outcome="{o}"')
             for o in ("hit", "miss", "bypass")}
    assert {o: after[o] - before[o] for o in after} == {"hit": 1, "miss": 1, "bypass": 1}
    assert _metric(gw, "tollway_cache_bytes") > 0 and _metric(gw, "tollway_cache_entries") > 0


def _metric(gw: GatewayProcess, name: str, labels: str = "") -> float:
    with urllib.request.urlopen(gw.url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    for line in text.splitlines():
        if line.startswith(name + (f"{{{labels}}}" if labels else "")) and not line.startswith("#"):
            if labels or line.split(" ")[0] == name:
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_with_two_workers_the_cache_counts_are_the_whole_gateways(up):
    gw = GatewayProcess(cache_config(up.url, limited=False), workers=2)
    try:
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key=TEST_KEY, max_retries=0)
        for _ in range(8):  # new connections: the kernel spreads them over both workers
            assert chat(client, prompt())[1] == "miss"
            client.close()
            client = openai.OpenAI(base_url=gw.url + "/v1", api_key=TEST_KEY, max_retries=0)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # (each worker's counts reach the shared files within a second)
            misses = _metric(gw, "tollway_cache_requests_total", 'model="gpt-4o-mini",outcome="miss"')
            entries = _metric(gw, "tollway_cache_entries")
            if misses == 8 and entries == 8:
                break
            time.sleep(0.2)
        assert (misses, entries) == (8, 8)
    finally:
        gw.stop()
