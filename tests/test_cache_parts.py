"""The response cache's parts without a server: the key, what is stored, stream assembly and
replay, the memory store's bounds and expiry (an injected clock), and the config's checks."""
from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.json_bodies import bodies as canonjson_bodies
from tollway.core import config as config_mod
from tollway.core.cache.assemble import answer_of, assemble
from tollway.core.cache.entry import Entry, decode, encode, storable
from tollway.core.cache.key import _EXCLUDED_OF, CACHED_APIS, ENTRY_FORMAT, EXCLUDED, cache_key, read
from tollway.core.cache.replay import replay
from tollway.core.cache.rules import CacheRules
from tollway.ext.usage import Usage
from tollway.gateway.cache.hooks import control
from tollway.gateway.cache.memory import ENTRY_OVERHEAD, MemoryBackend

BASE: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "What is 2+2?"}],
                        "temperature": 0}


def key_of(body: dict[str, Any], api: str = "chat", partition: str = "key:a", version: str = "v1") -> str:
    request = read(api, json.dumps(body).encode())
    assert request is not None
    return cache_key(api, partition, version, request)


def test_the_entry_format_is_in_the_key(monkeypatch):
    """A replica of another version sharing Redis (a rolling upgrade) must never read entries in a
    format it would misread (a version-1 decoder takes a stream's raw SSE entry for an answer)."""
    now = key_of(BASE)
    monkeypatch.setattr("tollway.core.cache.key.ENTRY_FORMAT", 1)
    assert key_of(BASE) != now


# Every field that can change what a model answers, each with a value other than BASE's.
ANSWER_FIELDS: dict[str, Any] = {
    "messages": [{"role": "user", "content": "What is 3+3?"}], "model": "gpt-4o",
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
    "tool_choice": "required", "response_format": {"type": "json_object"}, "temperature": 0.5, "top_p": 0.5,
    "seed": 7, "stop": ["\n"], "max_tokens": 5, "max_completion_tokens": 5, "n": 2, "logprobs": True,
    "top_logprobs": 3, "presence_penalty": 0.5, "frequency_penalty": 0.5, "logit_bias": {"50256": -100},
    "reasoning_effort": "high", "parallel_tool_calls": False, "service_tier": "flex", "modalities": ["text"],
    "prediction": {"type": "content", "content": "4"}, "audio": {"voice": "alloy", "format": "wav"},
    "top_k": 1, "system": "be terse", "thinking": {"type": "enabled", "budget_tokens": 1024},
    "verbosity": "low", "web_search_options": {}, "previous_response_id": "resp_1", "instructions": "x",
}
NOT_ANSWER_FIELDS: dict[str, Any] = {
    "stream": True, "stream_options": {"include_usage": True}, "user": "u-42", "metadata": {"user_id": "u-42"},
    "request_id": "req-1", "safety_identifier": "s-1",
}


@settings(max_examples=200, deadline=None)
@given(field=st.sampled_from(sorted(ANSWER_FIELDS)), also=st.sampled_from(sorted(NOT_ANSWER_FIELDS)))
def test_every_answer_changing_field_changes_the_key_and_no_other_does(field: str, also: str) -> None:
    changed = {**BASE, field: ANSWER_FIELDS[field]}
    assert key_of(changed) != key_of(BASE)
    # ... and a delivery-only field on top changes nothing, with the answer field or without it
    assert key_of({**changed, also: NOT_ANSWER_FIELDS[also]}) == key_of(changed)
    assert key_of({**BASE, also: NOT_ANSWER_FIELDS[also]}) == key_of(BASE)


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=8), st.integers() | st.text(max_size=5), max_size=6),
       st.text(min_size=1, max_size=30))
def test_unknown_fields_are_in_the_key_and_field_order_is_not(extra: dict[str, Any], content: str) -> None:
    body = {**BASE, "messages": [{"role": "user", "content": content}], **extra}
    kept = {k: v for k, v in extra.items() if k not in EXCLUDED and k not in BASE}
    reordered = dict(reversed(list(body.items())))
    assert key_of(reordered) == key_of(body)
    if kept:  # a field the gateway does not know may change the answer: it splits the key
        assert key_of(body) != key_of({**BASE, "messages": body["messages"],
                                       **{k: v for k, v in extra.items() if k not in kept}})


@pytest.mark.parametrize("field", ["user", "metadata", "safety_identifier"])
def test_fields_a_responses_answer_echoes_are_in_its_key(field: str) -> None:
    """A Responses answer carries the request's user, metadata and safety_identifier: sharing an
    entry across them would hand one request's attribution to another (scope team or shared)."""
    body = {"model": "m", "input": "hi", "temperature": 0}
    assert key_of({**body, field: NOT_ANSWER_FIELDS[field]}, api="responses") != key_of(body, api="responses")
    assert key_of({**body, field: NOT_ANSWER_FIELDS[field]}, api="chat") == key_of(body, api="chat")


def test_passed_headers_split_the_key_through_the_version() -> None:
    from tollway.core.cache.key import with_headers

    assert with_headers("v1", ()) == "v1"
    beta = with_headers("v1", (("anthropic-beta", "context-1m-2025-08-07"),))
    assert beta != "v1" and beta != with_headers("v1", (("anthropic-beta", "output-128k-2025-02-19"),))
    assert key_of(BASE, version=beta) != key_of(BASE)


def test_partition_api_and_config_version_split_the_key() -> None:
    base = key_of(BASE)
    assert key_of(BASE, partition="key:b") != base
    assert key_of(BASE, partition="team:a") != base
    assert key_of(BASE, version="v2") != base
    assert key_of(BASE, api="responses") != base
    assert len(base) == 64 and int(base, 16) >= 0


@pytest.mark.parametrize("body, api, seed_counts, sampled", [
    ({"temperature": 0}, "chat", False, False),
    ({}, "chat", True, True),  # the provider's default temperature (1.0) samples
    ({"temperature": 0.7}, "chat", True, True),
    ({"temperature": 0.7, "seed": 1}, "chat", True, False),
    ({"temperature": 0.7, "seed": 1}, "chat", False, True),  # a provider that drops the seed draws anew
    ({"temperature": True}, "chat", True, True),  # not a number
    ({}, "embeddings", False, False),
    ({"temperature": 0.0}, "messages", False, False),
])
def test_sampled_requests(body: dict[str, Any], api: str, seed_counts: bool, sampled: bool) -> None:
    request = read(api, json.dumps({"model": "m", **body}).encode(), seed_counts)
    assert request is not None and request.sampled is sampled


def test_a_seed_counts_only_where_every_target_takes_it() -> None:
    config = config_mod.loads("""
providers:
  - {name: oa, schema: openai, base_url: "http://127.0.0.1:9", api_key: k}
  - {name: claude, schema: anthropic, base_url: "http://127.0.0.1:9", api_key: k}
models:
  - {name: gpt, targets: [{provider: oa}], cache: {}}
  - {name: claude, targets: [{provider: claude}], cache: {}}
  - {name: either, targets: [{provider: oa}, {provider: claude}], cache: {}}
cache: {backend: memory}
""")
    rules = CacheRules(config)
    assert rules.honours_seed("gpt", "chat") and rules.honours_seed("gpt", "completions")
    assert not rules.honours_seed("claude", "chat") and not rules.honours_seed("either", "chat")
    assert not rules.honours_seed("gpt", "responses") and not rules.honours_seed("unknown", "chat")


def test_a_body_that_is_not_a_json_object_is_not_cached() -> None:
    assert read("chat", b"[1, 2]") is None
    assert read("chat", b"{not json") is None


def key_before_the_kernel(api: str, partition: str, version: str, body: bytes, seed_counts: bool) -> tuple[str, bool] | None:
    """The key and sampled flag as core/cache/key.py computed them before the canonical-JSON
    kernel (decode to a dict, pop the excluded fields, encode sorted): entries already stored
    (a Redis cache across an upgrade) are found only if every key stays byte-identical."""
    try:
        data = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return None
    if not isinstance(data, dict):
        return None
    for name in _EXCLUDED_OF.get(api, EXCLUDED):
        data.pop(name, None)
    temperature = data.get("temperature")
    sampled = api != "embeddings" and not (seed_counts and data.get("seed") is not None) and not (
        isinstance(temperature, (int, float)) and not isinstance(temperature, bool) and temperature == 0)
    material = msgspec.json.encode({"api": api, "config": version, "scope": partition, "request": data,
                                    "format": ENTRY_FORMAT}, order="sorted")
    return hashlib.sha256(material).hexdigest(), sampled


@settings(max_examples=300, deadline=None)
@given(body=canonjson_bodies(), api=st.sampled_from(sorted(CACHED_APIS)), seed_counts=st.booleans(),
       partition=st.sampled_from(["key:a", "team:t\u00e9", "shared:ns\"x"]))
def test_keys_are_the_ones_stored_before_the_kernel(body: bytes, api: str, seed_counts: bool, partition: str) -> None:
    request = read(api, body, seed_counts)
    named = None if request is None else (cache_key(api, partition, "v1", request), request.sampled)
    assert named == key_before_the_kernel(api, partition, "v1", body, seed_counts)


@pytest.mark.parametrize("api", sorted(CACHED_APIS))
def test_a_chat_body_keys_as_before(api: str) -> None:
    body = json.dumps({**BASE, "stream": True, "user": "u", "metadata": {"k": "v"}, "seed": 3,
                       "messages": [{"role": "user", "content": "caf\u00e9 \"q\"\n"}]}, indent=2).encode()
    request = read(api, body, True)
    assert request is not None
    assert (cache_key(api, "key:a", "v1", request), request.sampled) == key_before_the_kernel(api, "key:a", "v1", body, True)


CHAT = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1700000000, "model": "gpt-4o-mini",
        "system_fingerprint": "fp_1", "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "Four."}, "logprobs": None, "finish_reason": "stop"},
            {"index": 1, "message": {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": "{\"a\": 2, \"b\": 2}"}},
                {"id": "call_2", "type": "function", "function": {"name": "mul", "arguments": "{}"}}]},
             "logprobs": None, "finish_reason": "tool_calls"}]}
COMPLETION = {"id": "cmpl-1", "object": "text_completion", "created": 1700000000, "model": "m",
              "choices": [{"index": 0, "text": " four", "logprobs": None, "finish_reason": "stop"}],
              "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}
RESPONSE = {"id": "resp_1", "object": "response", "created_at": 1700000000, "status": "completed", "model": "m",
            "output": [{"type": "reasoning", "id": "rs_1", "summary": []},
                       {"type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
                        "content": [{"type": "output_text", "text": "Four.", "annotations": []}]},
                       {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "add",
                        "arguments": "{\"a\":2}", "status": "completed"}],
            "usage": {"input_tokens": 5, "output_tokens": 9, "total_tokens": 14}}
MESSAGE = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude", "stop_reason": "tool_use",
           "stop_sequence": None, "usage": {"input_tokens": 10, "output_tokens": 20},
           "content": [{"type": "thinking", "thinking": "2+2", "signature": "sig"},
                       {"type": "text", "text": "Four."},
                       {"type": "tool_use", "id": "toolu_1", "name": "add", "input": {"a": 2, "b": [1, {"c": None}]}}]}


SPOKEN = {**CHAT, "choices": [{"index": 0, "logprobs": None, "finish_reason": "stop", "message": {
    "role": "assistant", "content": None, "reasoning_content": "They greeted me.",
    "audio": {"id": "audio_1", "data": "UklGRgAA", "expires_at": 1700003600, "transcript": "Hello there."}}},
    {"index": 1, "logprobs": None, "finish_reason": "stop", "message": {
        "role": "assistant", "content": "See the docs.",
        "annotations": [{"type": "url_citation", "url_citation": {"url": "https://example.com", "title": "Docs",
                                                                 "start_index": 4, "end_index": 12}}]}}]}
# Gemini 3's tool call, with the thought signature the client must send back (docs/providers.md)
SIGNED = {**CHAT, "choices": [{"index": 0, "logprobs": None, "finish_reason": "tool_calls", "message": {
    "role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": "{}"},
         "extra_content": {"google": {"thought_signature": "c2lnbmVk"}}},
        {"id": "call_2", "type": "function", "function": {"name": "mul", "arguments": "{}"}}]}}]}
# vLLM 0.11+ names a model's reasoning `reasoning` (keeping `reasoning_content` "for now")
REASONED = {**CHAT, "choices": [{"index": 0, "logprobs": None, "finish_reason": "stop", "message": {
    "role": "assistant", "content": "42", "reasoning": "Six times seven."}}]}
BOTH_NAMES = {**CHAT, "choices": [{"index": 0, "logprobs": None, "finish_reason": "stop", "message": {
    "role": "assistant", "content": "42", "reasoning_content": "Six times seven.", "reasoning": "Six times seven."}}]}
SCORED = {**COMPLETION, "choices": [{**COMPLETION["choices"][0], "logprobs": {
    "tokens": [" four"], "token_logprobs": [-0.1], "top_logprobs": [{" four": -0.1}], "text_offset": [0]}}]}


@pytest.mark.parametrize("api, answer", [("chat", CHAT), ("chat", SPOKEN), ("chat", SIGNED), ("chat", REASONED), ("chat", BOTH_NAMES),
                                         ("completions", COMPLETION),
                                         ("completions", SCORED),
                                         ("responses", RESPONSE), ("messages", MESSAGE)])
def test_a_replayed_stream_assembles_back_into_the_answer(api: str, answer: dict[str, Any]) -> None:
    sse = replay(api, copy.deepcopy(answer), include_usage=True)
    assert assemble(api, sse, None) == answer
    # in pieces of any size, as a relay delivers it, and with CRLF line ends
    assert assemble(api, sse.replace(b"\n", b"\r\n"), None) == answer


def test_reasoning_under_both_names_is_replayed_in_one_delta_as_it_streamed() -> None:
    """vLLM sends `reasoning` and `reasoning_content` in the same delta: a client reading either
    gets the text once live, and must on a hit too."""
    sse = replay("chat", copy.deepcopy(BOTH_NAMES), include_usage=False)
    deltas = [json.loads(line[6:])["choices"][0]["delta"] for line in sse.decode().splitlines()
              if line.startswith("data: {")]
    with_reasoning = [d for d in deltas if "reasoning" in d or "reasoning_content" in d]
    assert with_reasoning == [{"reasoning_content": "Six times seven.", "reasoning": "Six times seven."}]


def test_a_chat_streams_audio_is_put_together_from_its_pieces() -> None:
    sse = _chat_stream([{"role": "assistant", "content": None},
                        {"audio": {"id": "audio_1", "transcript": "Hel", "expires_at": 9}},
                        {"audio": {"transcript": "lo.", "data": "Ukl"}}, {"audio": {"data": "GRg=="}}], finish="stop")
    answer = assemble("chat", sse, None)
    assert answer is not None and storable("chat", answer)
    assert answer["choices"][0]["message"] == {"role": "assistant", "content": None, "audio": {
        "id": "audio_1", "data": "UklGRg==", "expires_at": 9, "transcript": "Hello."}}


def test_a_message_field_no_stream_carries_makes_the_replay_refuse_not_drop_it() -> None:
    """A stream without the field would be an emptier answer than the entry: the replay raises,
    and the entry is a miss for a streaming request (gateway.cache.hooks, _UNREPLAYABLE)."""
    message = {"role": "assistant", "content": "Four.", "refusal": None, "function_call": {"name": "f"}}
    with pytest.raises(ValueError):
        replay("chat", {**CHAT, "choices": [{**CHAT["choices"][0], "message": message}]}, False)
    message["function_call"] = None  # (an empty field says nothing)
    assert replay("chat", {**CHAT, "choices": [{**CHAT["choices"][0], "message": message}]}, False)


def test_a_replayed_chat_stream_has_the_usage_chunk_only_when_asked() -> None:
    with_usage, without = replay("chat", CHAT, True), replay("chat", CHAT, False)
    assert with_usage.endswith(b"data: [DONE]\n\n") and without.endswith(b"data: [DONE]\n\n")
    last = json.loads(with_usage.split(b"\n\n")[-3].removeprefix(b"data: "))
    assert last["choices"] == [] and last["usage"] == CHAT["usage"]
    assert b'"usage"' not in without
    # a stream that did not carry usage takes what the gateway charged
    rebuilt = assemble("chat", without, Usage(5, 7, 12))
    assert rebuilt is not None and rebuilt["usage"] == CHAT["usage"]


@pytest.mark.parametrize("cut", [b"data: [DONE]\n\n", b"event: message_stop"])
def test_a_stream_without_its_end_is_not_an_answer(cut: bytes) -> None:
    api, answer = ("chat", CHAT) if b"DONE" in cut else ("messages", MESSAGE)
    sse = replay(api, answer, True)
    assert assemble(api, sse[:sse.index(cut)], None) is None


def test_a_streams_entry_is_assembled_when_first_read_and_takes_its_place() -> None:
    """A streamed miss stores the SSE text as the client got it; the first read assembles and
    checks it, and the answer replaces it in the store (same expiry, bytes re-counted)."""
    clock = Clock()
    store = MemoryBackend(100_000, clock)
    sse = replay("chat", CHAT, True)
    stored = Entry("chat", sse, 5.0, Usage(5, 7, 12), "gpt-4o-mini", sse=True)
    store.put("k", stored, ttl=60)
    assert decode(encode(stored)) == stored  # (what Redis holds)
    ready = answer_of(stored, 1 << 20)
    assert ready is not None and not ready.sse and json.loads(ready.body) == CHAT
    assert (ready.created, ready.usage, ready.upstream_model) == (5.0, stored.usage, "gpt-4o-mini")
    assert answer_of(ready, 1 << 20) is ready  # an answer is served as it is
    store.settle("k", stored, ready, 60)
    assert store.read("k") is ready and store.usage() == (len(ready.body) + ENTRY_OVERHEAD, 1)
    store.settle("k", stored, None, 60)  # (only the entry that was read is replaced)
    assert store.read("k") is ready
    clock.now += 60
    assert store.read("k") is None  # the answer kept the stream's expiry


@pytest.mark.parametrize("sse", [
    replay("chat", {**CHAT, "choices": [{**CHAT["choices"][0], "finish_reason": "length"}]}, True),  # truncated
    replay("chat", CHAT, True).removesuffix(b"data: [DONE]\n\n"),  # cut off
])
def test_a_streams_entry_that_is_no_complete_answer_is_dropped_when_first_read(sse: bytes) -> None:
    store = MemoryBackend(100_000, Clock())
    stored = Entry("chat", sse, 0.0, Usage(), sse=True)
    store.put("k", stored, ttl=60)
    assert answer_of(stored, 1 << 20) is None
    store.settle("k", stored, None, 60)
    assert store.read("k") is None and store.usage() == (0, 0)
    assert answer_of(Entry("chat", replay("chat", CHAT, True), 0.0, Usage(), sse=True), 10) is None  # over max_bytes


def _chat_stream(deltas: list[dict[str, Any]], finish: str = "tool_calls") -> bytes:
    chunks = [{"id": "c", "created": 1, "model": "m", "choices": [{"index": 0, "delta": d, "finish_reason": None}]}
              for d in deltas]
    chunks.append({"id": "c", "created": 1, "model": "m", "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
    return b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"


def test_a_tool_calls_index_is_the_upstreams_number_not_a_list_length() -> None:
    """One 400-byte chunk naming tool call 3,000,000 padded a list with three million
    placeholders on the event loop, at the first read of the entry. Calls are kept by index."""
    import time

    call = {"index": 3_000_000, "id": "call_9", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    start = time.perf_counter()
    answer = assemble("chat", _chat_stream([{"role": "assistant", "tool_calls": [call]}]), None)
    assert time.perf_counter() - start < 1.0
    assert answer is not None
    assert answer["choices"][0]["message"]["tool_calls"] == [
        {"id": "call_9", "type": "function", "function": {"name": "f", "arguments": "{}"}}]


def _streams_of(n: int) -> dict[str, tuple[str, bytes]]:
    """Streams of n small pieces of each kind of text an assembler joins."""
    piece = "x" * 64
    call = [{"index": 0, "function": {"arguments": piece}}]
    chat = _chat_stream([{"tool_calls": [{"index": 0, "id": "c", "function": {"name": "f"}}]}]
                        + [{"tool_calls": call}] * n)
    logprobs = b"".join(b"data: " + json.dumps({"choices": [{"index": 0, "delta": {"content": "t"}, "finish_reason": None,
                                                           "logprobs": {"content": [{"token": "t", "logprob": -1.0}]}}]}).encode()
                        + b"\n\n" for _ in range(n)) + b"data: [DONE]\n\n"
    scored = {"tokens": [piece], "token_logprobs": [-1.0], "top_logprobs": [{piece: -1.0}], "text_offset": [0]}
    completions = b"".join(b"data: " + json.dumps({"choices": [{"index": 0, "text": piece, "logprobs": scored}]}).encode()
                           + b"\n\n" for _ in range(n)) + b"data: [DONE]\n\n"
    message = {**MESSAGE, "content": [{"type": "text", "text": piece * n}]}
    messages = replay("messages", message, True).replace(b'"text":"' + piece.encode() * n + b'"', b'"text":""')
    deltas = b"".join(b"event: content_block_delta\ndata: " + json.dumps(
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}).encode() + b"\n\n"
        for _ in range(n))
    stop = messages.index(b"event: content_block_stop")
    return {"tool args": ("chat", chat), "logprobs": ("chat", logprobs), "completions": ("completions", completions),
            "anthropic text": ("messages", messages[:stop] + deltas + messages[stop:])}


@pytest.mark.parametrize("kind", ["tool args", "logprobs", "completions", "anthropic text"])
def test_assembling_a_stream_is_linear_in_its_pieces(kind: str) -> None:
    """Text gathered as pieces, joined once: 16x the pieces costs ~16x, where a `+=` on a
    dict's string, copied whole each time, made it ~150x and 40k pieces seconds on the loop."""
    import gc
    import time

    def cost(n: int) -> float:
        api, sse = _streams_of(n)[kind]
        best = float("inf")
        gc.disable()  # (its passes grow with the heap: superlinear noise that is not what this checks)
        try:
            for _ in range(3):
                start = time.perf_counter()
                answer = assemble(api, sse, None)
                best = min(best, time.perf_counter() - start)
        finally:
            gc.enable()
        assert answer is not None, kind
        return best

    small, large = cost(2_500), cost(40_000)
    assert large / small < 80, (kind, small, large)


def test_a_completions_streams_logprobs_are_put_together_per_choice() -> None:
    def chunk(index: int, text: str, token_logprob: float | None) -> dict[str, Any]:
        logprobs = None if token_logprob is None else {"tokens": [text], "token_logprobs": [token_logprob]}
        return {"id": "cmpl-1", "choices": [{"index": index, "text": text, "logprobs": logprobs,
                                             "finish_reason": None if text else "stop"}]}

    chunks = [chunk(0, "a", -1.0), chunk(1, "x", -3.0), chunk(0, "b", -2.0), chunk(0, "", None), chunk(1, "", None)]
    sse = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"
    answer = assemble("completions", sse, None)
    assert answer is not None
    assert [c["logprobs"] for c in answer["choices"]] == [{"tokens": ["a", "b"], "token_logprobs": [-1.0, -2.0]},
                                                          {"tokens": ["x"], "token_logprobs": [-3.0]}]
    odd = sse.replace(b'"token_logprobs": [-3.0]', b'"token_logprobs": -3.0')
    assert assemble("completions", odd, None) is None  # not a list: nothing to put together


def test_a_stream_with_an_error_event_is_not_an_answer() -> None:
    sse = replay("chat", CHAT, False).replace(b"data: [DONE]", b'data: {"error": {"message": "x"}}\n\ndata: [DONE]')
    assert assemble("chat", sse, None) is None
    events = replay("responses", RESPONSE, False).replace(b"response.completed", b"response.incomplete")
    assert assemble("responses", events, None) is None


# Answers that finish with "stop" but a cache must not keep: refused, or saying nothing.
REFUSED: list[tuple[str, dict[str, Any]]] = [
    ("chat", {**CHAT, "choices": [{**CHAT["choices"][0], "message": {"role": "assistant", "content": None,
                                                                   "refusal": "I can't help with that."}}]}),
    ("chat", {**CHAT, "choices": [{**CHAT["choices"][0], "message": {"role": "assistant", "content": None}}]}),
    ("chat", {**CHAT, "choices": [{**CHAT["choices"][0], "message": {"role": "assistant", "content": ""}}]}),
    ("responses", {**RESPONSE, "output": [{"type": "message", "id": "msg_1", "status": "completed",
                                           "role": "assistant",
                                           "content": [{"type": "refusal", "refusal": "I can't help."}]}]}),
]


@pytest.mark.parametrize("api, answer, ok", [
    ("chat", CHAT, True),
    ("chat", {**CHAT, "choices": [{**CHAT["choices"][0], "finish_reason": "length"}]}, False),
    ("chat", {**CHAT, "choices": [CHAT["choices"][0], {**CHAT["choices"][1], "finish_reason": "content_filter"}]}, False),
    ("chat", {**CHAT, "choices": []}, False),
    ("chat", {**CHAT, "choices": [{**CHAT["choices"][0], "message": "not an object"}]}, False),  # a replay could not read it
    ("completions", COMPLETION, True),
    ("completions", {**COMPLETION, "choices": [{**COMPLETION["choices"][0], "finish_reason": "length"}]}, False),
    ("responses", RESPONSE, True),
    ("responses", {**RESPONSE, "status": "incomplete"}, False),
    ("messages", MESSAGE, True),
    ("messages", {**MESSAGE, "stop_reason": "end_turn"}, True),
    ("messages", {**MESSAGE, "stop_reason": "max_tokens"}, False),
    ("messages", {**MESSAGE, "stop_reason": "refusal"}, False),
    ("embeddings", {"object": "list", "data": [{"embedding": [0.1]}]}, True),
    *[(api, answer, False) for api, answer in REFUSED],
    ("chat", {**CHAT, "choices": [{**CHAT["choices"][0], "message": {"role": "assistant", "content": "Four.",
                                                                   "refusal": None}}]}, True),
])
def test_only_complete_answers_are_storable(api: str, answer: dict[str, Any], ok: bool) -> None:
    assert storable(api, answer) is ok


def test_an_entry_survives_its_encoding_and_garbage_is_no_entry() -> None:
    entry = Entry("chat", json.dumps(CHAT).encode(), 1700000000.5, Usage(5, 7, 12), "gpt-4o-mini-2024")
    assert decode(encode(entry)) == entry
    assert decode(b"\x00garbage") is None


@pytest.mark.parametrize("value, directives", [
    (None, (False, False)), ("no-cache", (False, True)), ("No-Store", (True, False)),
    ("max-age=0, no-store, no-cache", (True, True)), ("private", (False, False)),
])
def test_cache_control(value: str | None, directives: tuple[bool, bool]) -> None:
    assert control(value) == directives


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def entry(size: int, fill: bytes = b"x") -> Entry:
    return Entry("chat", fill * size, 0.0, Usage())


async def test_memory_entries_expire_after_their_ttl() -> None:
    clock = Clock()
    store = MemoryBackend(10_000, clock)
    store.put("a", entry(10), ttl=60)
    clock.now += 59.9
    assert await store.get("a") == entry(10)
    clock.now += 0.2
    assert await store.get("a") is None
    assert store.usage() == (0, 0)  # an expired entry read is gone, and its bytes with it


async def test_memory_is_bounded_in_bytes_and_evicts_least_recently_used() -> None:
    size = 100 + ENTRY_OVERHEAD
    store = MemoryBackend(3 * size, Clock())
    for name in "abc":
        store.put(name, entry(100, name.encode()), ttl=60)
    assert await store.get("a") is not None  # a is now the most recently used
    store.put("d", entry(100, b"d"), ttl=60)
    assert await store.get("b") is None  # the least recently used went
    assert all([await store.get(n) for n in "acd"])
    assert store.usage() == (3 * size, 3) and store.evictions == 1
    store.put("big", entry(3 * size), ttl=60)  # larger than the whole store: not kept, nothing evicted
    assert await store.get("big") is None and store.usage() == (3 * size, 3)
    store.put("a", entry(50, b"A"), ttl=60)  # replacing an entry re-counts its bytes
    assert store.usage() == (3 * size - 50, 3)


async def test_expired_entries_make_room_before_live_ones_are_evicted() -> None:
    clock, size = Clock(), 100 + ENTRY_OVERHEAD
    store = MemoryBackend(2 * size, clock)
    store.put("old", entry(100), ttl=1)
    store.put("live", entry(100), ttl=60)
    clock.now += 2
    store.put("new", entry(100), ttl=60)
    assert await store.get("live") is not None and await store.get("new") is not None
    assert store.evictions == 0  # the expired one went, which is no eviction


def _config(text: str) -> config_mod.Checked:
    head = """
providers: [{name: up, schema: openai, base_url: "http://127.0.0.1:9/v1"}]
keys: [{name: k, key_hash: "sha256:%s", team: t, cache: {scope: team}}]
teams: [{name: t}]
""" % ("0" * 64)
    return config_mod.check(head + text, with_warnings=False)


def test_config_errors_name_the_field_and_say_what_to_write() -> None:
    checked = _config("""
cache: {backend: redis, redis_url: "http://x", ttl: forever, max_bytes: 10, max_entry_bytes: 100}
models:
  - {name: a, targets: [{provider: up}], cache: {scope: "shared:"}}
  - {name: b, targets: [{provider: up}], cache: {ttl: -5m}}
""")
    found = {(e.path, e.problem.split(" (")[0].split(",")[0]) for e in checked.errors}
    paths = {path for path, _ in found}
    assert {"cache.ttl", "cache.max_bytes", "cache.redis_url", "models.a.cache.scope", "models.b.cache.ttl"} <= paths
    assert any("shared:<namespace>" in e.problem for e in checked.errors)
    assert [e.problem for e in checked.errors if e.path == "models.b.cache.ttl"] == [
        "expected a duration such as 30s, 10m, 1h or 1d (or seconds > 0), not '-5m'"]


def test_a_cache_of_a_model_needs_the_top_level_section() -> None:
    checked = _config("models: [{name: a, targets: [{provider: up}], cache: {ttl: 10m}}]\n")
    assert sorted(e.path for e in checked.errors) == ["keys.k.cache", "models.a.cache"]
    assert all("top-level cache:" in e.problem for e in checked.errors)


def test_the_rule_of_a_request_is_its_keys_then_its_teams_then_its_models() -> None:
    checked = _config("""
cache: {ttl: 1h}
teams: [{name: t, cache: {scope: "shared:ops", ttl: 5m}}, {name: quiet, cache: {enabled: false}}]
models: [{name: a, targets: [{provider: up}], cache: {ttl: 10m}}, {name: b, targets: [{provider: up}]}]
""".replace("teams: [{name: t}]", ""))
    assert not checked.errors, checked.errors
    assert checked.config is not None
    rules = CacheRules(msgspec.structs.replace(checked.config, teams=checked.config.teams))
    assert rules.rule("a", "k", "t") == rules.keys["k"]  # the key's own: scope team, the default ttl
    assert rules.rule("a", "k", "t").partition("id1", "t") == "team:t"  # type: ignore[union-attr]
    assert rules.rule("a", "other", "t").partition("id2", "t") == "shared:ops"  # type: ignore[union-attr]
    assert rules.rule("a", "other", "t").ttl == 300  # type: ignore[union-attr]
    assert rules.rule("a", "other", "quiet") is None  # the team opted out
    assert rules.rule("a", "other", None).ttl == 600  # type: ignore[union-attr]
    assert rules.rule("b", "other", None) is None  # nobody opted in
    assert rules.rule("a", "other", None).partition("id3", None) == "key:id3"  # type: ignore[union-attr]


@pytest.mark.parametrize("api, answer", [
    ("chat", CHAT), ("chat", {**CHAT, "choices": [{**CHAT["choices"][0], "finish_reason": "length"}]}),
    ("chat", {**CHAT, "choices": []}), ("chat", {**CHAT, "choices": [{**CHAT["choices"][0], "message": "x"}]}),
    ("completions", COMPLETION), ("responses", RESPONSE),
    ("responses", {**RESPONSE, "status": "incomplete"}), ("responses", {**RESPONSE, "error": {"code": "x"}}),
    ("messages", MESSAGE), ("messages", {**MESSAGE, "stop_reason": "max_tokens"}),
    ("embeddings", {"object": "list", "data": [{"embedding": [0.1]}]}), ("embeddings", {"object": "list"}),
    *REFUSED,
])
def test_storable_json_reads_bytes_as_storable_reads_the_answer(api: str, answer: dict[str, Any]) -> None:
    from tollway.core.cache.entry import storable_json

    assert storable_json(api, json.dumps(answer).encode()) is storable(api, answer)
    assert storable_json(api, b"[1]") is False and storable_json(api, b"{oops") is False


@pytest.mark.parametrize("content", ["[ ]", "{ }", "0.0", "-0", '""', "[\n]", '" "', "[0]", "1", "true", '"x"'])
def test_storable_json_reads_a_spaced_or_odd_value_as_python_does(content: str) -> None:
    """The bytes check compared raw values with a list of empty ones: `[ ]` was filled there
    and empty to the dict check, so the same answer was stored or not by which path saw it."""
    from tollway.core.cache.entry import storable_json

    raw = ('{"id": "c", "object": "chat.completion", "created": 1, "model": "m", "choices": [{"index": 0, '
           '"finish_reason": "stop", "message": {"role": "assistant", "content": %s}}]}' % content).encode()
    assert storable_json("chat", raw) is storable("chat", json.loads(raw))


BARE = """
providers: [{name: up, schema: openai, base_url: "http://127.0.0.1:9/v1"}]
models: [{name: a, targets: [{provider: up}]%s}]
%s
"""


@pytest.mark.parametrize("model_cache, store", [("", ""), ("", "cache: {backend: memory}"),
                                                (", cache: {enabled: false}", "cache: {backend: memory}")])
def test_with_no_cache_anyone_opted_into_nothing_is_plugged_in(model_cache: str, store: str) -> None:
    from tollway.gateway.cache import ResponseCache
    from tollway.gateway.pipeline import EMPTY

    cache = ResponseCache(config_mod.loads(BARE % (model_cache, store)))
    assert cache.pipeline() == EMPTY and cache.backend is None


def test_a_reload_keeps_the_entries_unless_the_cache_section_changed() -> None:
    from tollway.gateway.cache import ResponseCache

    first = ResponseCache(config_mod.loads(BARE % (", cache: {ttl: 1m}", "cache: {backend: memory}")))
    assert first.backend is not None and first.pipeline().before_upstream
    again = ResponseCache(config_mod.loads(BARE % (", cache: {ttl: 5m}", "cache: {backend: memory}")), first)
    assert again.backend is first.backend and again.retired is None and again.flights is first.flights
    resized = ResponseCache(config_mod.loads(BARE % (", cache: {}", "cache: {backend: memory, max_bytes: 2000000}")),
                            again)
    assert resized.backend is not first.backend and resized.retired is first.backend
    assert resized.counts is first.counts  # the metrics' counts run on across reloads


def test_a_remembered_key_is_the_key_the_body_would_get() -> None:
    from tollway.gateway.cache import ResponseCache, hooks

    cache = ResponseCache(config_mod.loads(BARE % (", cache: {}", "cache: {backend: memory}")))
    body = json.dumps(BASE).encode()
    first = cache._key("chat", "key:a", "v1", body, True)
    assert first == (key_of(BASE), False)
    cache._remember(("chat", "key:a", "v1", body), first)
    cache._remember(None, ("x", False))  # (a body too big to remember, or remembered already)
    assert cache._memo == {("chat", "key:a", "v1", body): first}
    for i in range(hooks.MEMO_ENTRIES + 10):
        cache._remember(("chat", "key:a", "v1", json.dumps({**BASE, "seed": i}).encode()), first)
    assert len(cache._memo) == hooks.MEMO_ENTRIES  # bounded, the oldest out first
    assert ("chat", "key:a", "v1", body) not in cache._memo
    assert cache._key("chat", "key:a", "v1", b"[1]", True) is None


def _cached_request(body: bytes) -> tuple[Any, Any]:
    """(an Admitted-like request of key `k` to route `a`, its Exchange), for the lookup alone."""
    from types import SimpleNamespace

    from tollway.core.request import parse_head
    from tollway.gateway.exchange import Exchange

    key = SimpleNamespace(key=SimpleNamespace(name="k", team=None), key_id="kid")
    req = SimpleNamespace(key=key, route=SimpleNamespace(name="a"), head=parse_head(body), body=body)
    ex = Exchange("r1", "chat")
    ex.route = "a"
    return req, ex


async def test_a_body_is_remembered_once_it_hits_not_on_its_first_miss() -> None:
    """Remembering a key costs every miss, and most misses are never asked again: a body's key
    is remembered when it hits (then it is likely to be asked again), or when it is passed by
    as sampled (it would be again)."""
    from tollway.core.cache.entry import Entry as Stored
    from tollway.gateway.cache import ResponseCache

    cache = ResponseCache(config_mod.loads(BARE % (", cache: {deterministic_only: true}", "cache: {backend: memory}")))
    body = json.dumps(BASE).encode()
    req, ex = _cached_request(body)
    await cache.lookup(req, ex)
    assert ex.cache.outcome == "miss" and not cache._memo
    assert ex.cache.key is not None and cache.backend is not None
    cache.flights.land(ex.cache.key, None)
    cache.backend.fill(ex.cache.key, Stored("chat", b"{}", 1.0, Usage(1, 1, 2)), 60, False)
    req, ex = _cached_request(body)
    await cache.lookup(req, ex)
    assert ex.cache.outcome == "hit" and list(cache._memo.values()) == [(ex.cache.key, False)]
    req, ex = _cached_request(body)
    await cache.lookup(req, ex)  # (from the memo)
    assert ex.cache.outcome == "hit" and len(cache._memo) == 1
    sampled = json.dumps({**BASE, "temperature": 1}).encode()
    req, ex = _cached_request(sampled)
    await cache.lookup(req, ex)
    assert ex.cache.outcome == "bypass" and len(cache._memo) == 2 and ex.cache.key is None


def test_a_response_completed_event_that_is_no_object_is_not_an_answer() -> None:
    sse = b'event: response.completed\ndata: {"type":"response.completed","response":"x"}\n\n'
    assert assemble("responses", sse, Usage(1, 1, 2)) is None


def test_a_leader_whose_store_fails_still_lands_its_flight(monkeypatch: pytest.MonkeyPatch) -> None:
    """Waiters of a flight that never lands wait lock_ttl, and every later miss of the key joins
    it again: the flight must land whatever storing the answer does."""
    from tollway.gateway.cache import ResponseCache
    from tollway.gateway.cache.hooks import CacheState
    from tollway.gateway.exchange import Exchange

    cache = ResponseCache(config_mod.loads(BARE % (", cache: {}", "cache: {backend: memory}")))
    rule = cache.rules.rule("a", "nobody", None)
    assert rule is not None
    ex = Exchange("r1", "chat")
    ex.status, state = 200, CacheState(rule, True, False)
    ex.cache, state.key, state.storing, state.leader, state.claimed = state, "k", True, True, True
    state.chunks = [b"data: {}\n\n", b"data: [DONE]\n\n"]
    assert cache.flights.lead("k")

    def broken(*_: object) -> None:
        raise RuntimeError("a bug in storing")

    monkeypatch.setattr(cache, "_entry", broken)
    with pytest.raises(RuntimeError):
        cache.store(ex)
    assert "k" not in cache.flights.flights and cache.flights.lead("k")  # landed: the next miss leads


def test_a_providers_extra_headers_are_in_the_config_version() -> None:
    """A provider's `headers:` go with every call (anthropic-beta, a vLLM option): changing them
    on a reload changes answers, so old entries must not be served."""
    plain = CacheRules(config_mod.loads(BARE % (", cache: {}", "cache: {backend: memory}")))
    headed = CacheRules(config_mod.loads(BARE.replace('base_url: "http://127.0.0.1:9/v1"',
                                                      'base_url: "http://127.0.0.1:9/v1", headers: {x-beta: b1}')
                                         % (", cache: {}", "cache: {backend: memory}")))
    assert headed.version("a") != plain.version("a")


def test_stored_entries_are_not_walked_by_the_cycle_collector() -> None:
    """A full collection walks every tracked object: a cache of hundreds of thousands of
    tracked entries made each one tens of milliseconds on the loop (gateway.cache.memory)."""
    import gc

    store = MemoryBackend(10_000_000, Clock())
    for i in range(1000):
        store.put(f"k{i}", Entry("chat", b"{}" * (i % 7 + 1), float(i), Usage(i, 1, i + 1), "m"), ttl=60)
    gc.collect()
    held = list(store.entries.values())
    assert not any(gc.is_tracked(slot) or gc.is_tracked(slot.entry) or gc.is_tracked(slot.entry.usage)
                   for slot in held)
    store.settle("k1", held[1].entry, held[2].entry, 60)  # (a settled slot too)
    assert not gc.is_tracked(store.entries["k1"]) and store.read("k1") is held[2].entry
