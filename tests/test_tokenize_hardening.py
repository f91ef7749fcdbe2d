"""Token counting hardening: nothing CPU-heavy on the event loop, count_tokens capped and rate
limited, and the text of non-stream answers without usage found for counting.

Unit tests first (tollway.core.accounting.completion_text, tollway.gateway.token_count, the limiter's request-only
admission), then a real gateway: /healthz stays fast while a multi-MiB count runs, a body
over `server.max_count_tokens_bytes` gets an Anthropic-shaped 413, and a key's request limit
refuses its third count with an Anthropic-shaped 429."""
from __future__ import annotations

import asyncio
import http.client
import json
import os
import random
import socket
import statistics
import threading
import time
from collections.abc import Callable, Iterator

import anthropic
import msgspec
import openai
import pytest

from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.hostile_upstream import Answer, HostileUpstream
from tests.fakes.openai_upstream import FakeOpenAI
from tests.harness import TEST_KEY, UPSTREAM_SECRET, GatewayProcess, key_hash
from tollway.core import config as config_mod
from tollway.core.accounting.completion_text import completion_text
from tollway.core.accounting.tokens import count_tokens
from tollway.core.errors import GatewayError
from tollway.core.limits.policy import REQUEST_ONLY_DEMAND
from tollway.core.providers.base import ClientAPI
from tollway.core.request import RequestHead
from tollway.ext.usage import Usage
from tollway.gateway import token_count
from tollway.gateway.limits.limiter import Limiter
from tollway.gateway.limits.memory import MemoryBuckets
from tollway.gateway.surfaces.anthropic import COUNT_TOKENS_PATH, local_token_count
from tollway.gateway.telemetry.metrics import Metrics

LIMITED_KEY = "sk-tollway-limited-key-2468013579"
COUNT_CAP = 12 * 1024 * 1024  # the gateway's max_count_tokens_bytes below (body cap: 16 MiB)
_WORDS = ["alpha", "the", "quick", "brown", "fox", "jumps", "über", "naïve", "数据", "模型", "12345",
          "x_y", "tokenizer", "gateway", "latency", "\n", "?!", "(", ")"]


def varied_text(chars: int, seed: int = 7) -> str:
    """Text of about `chars` characters from a mix of words, scripts, digits and punctuation."""
    rng = random.Random(seed)
    return " ".join(rng.choice(_WORDS) for _ in range(chars // 6))


# -- tollway.core.accounting.completion_text: the generated text of a non-stream body ----------------------------

CHAT = {"choices": [
    {"message": {"role": "assistant", "content": "Hello there",
                 "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}]}},
    {"message": {"role": "assistant", "content": None,
                 "tool_calls": [{"function": {"name": "g", "arguments": '{"b":2}'}}]}},
    {"message": {"role": "assistant", "content": [{"type": "text", "text": " and parts"}]}},
], "usage": None}
COMPLETIONS = {"object": "text_completion", "choices": [{"text": "one"}, {"text": None}, {"text": " two"}]}
RESPONSES = {"object": "response", "output": [
    {"type": "reasoning", "summary": []},
    {"type": "message", "role": "assistant",
     "content": [{"type": "output_text", "text": "Out", "annotations": []}, {"type": "output_text", "text": "put"}]},
    {"type": "function_call", "name": "f", "call_id": "c1", "arguments": '{"x":true}'},
]}
# The text a stream of the same answer carries in its refusal and reasoning deltas (stream_text.py).
CHAT_THINKING = {"choices": [
    {"message": {"role": "assistant", "reasoning_content": "Weigh it. ", "content": None, "refusal": "No."}},
    {"message": {"role": "assistant", "content": [{"type": "text", "text": "Sure: "}, {"type": "refusal", "refusal": "42"}]}},
]}
RESPONSES_MORE = {"object": "response", "output": [
    {"type": "reasoning", "summary": [{"type": "summary_text", "text": "Plan."}],
     "content": [{"type": "reasoning_text", "text": "Think."}], "encrypted_content": "gAAAA"},
    {"type": "message", "role": "assistant", "content": [{"type": "refusal", "refusal": "Sorry, no."}]},
    {"type": "custom_tool_call", "call_id": "c2", "name": "apply_patch", "input": "*** patch"},
    {"type": "computer_call", "call_id": "c3", "action": {"type": "click", "x": 1, "y": 2}},
]}
EMBEDDINGS = {"object": "list", "data": [{"embedding": [0.1, 0.2], "index": 0}]}
MESSAGE = {"type": "message", "role": "assistant", "content": [  # an Anthropic message without usage
    {"type": "thinking", "thinking": "Hmm. ", "signature": "sig"},
    {"type": "text", "text": "Sunny"},
    {"type": "tool_use", "id": "t1", "name": "f", "input": {"city": "Paris"}},
    {"type": "tool_use", "id": "t2", "name": "g", "input": {}},
]}


@pytest.mark.parametrize("api, body, expected", [
    (ClientAPI.CHAT, CHAT, 'Hello there{"a":1}{"b":2} and parts'),
    (ClientAPI.COMPLETIONS, COMPLETIONS, "one two"),
    (ClientAPI.RESPONSES, RESPONSES, 'Output{"x":true}'),
    (ClientAPI.EMBEDDINGS, EMBEDDINGS, ""),
    (ClientAPI.MESSAGES, MESSAGE, 'Hmm. Sunny{"city": "Paris"}{}'),  # tool input as it came
    (ClientAPI.MESSAGES, {"type": "message", "content": "not blocks"}, ""),
    (ClientAPI.CHAT, CHAT_THINKING, "Weigh it. No.Sure: 42"),
    (ClientAPI.CHAT, {"choices": [{"message": {"reasoning": "Hm.", "content": "Yes"}}]}, "Hm.Yes"),  # OpenRouter's, Groq's name
    (ClientAPI.CHAT, {"choices": [{"message": {"reasoning": "Hm.", "reasoning_content": "Hm."}}]}, "Hm."),  # both: once
    (ClientAPI.RESPONSES, RESPONSES_MORE, "Plan.Think.Sorry, no.*** patch"),
    # An item whose `input` is no string is not a custom tool call: skipped, the rest still counted.
    (ClientAPI.RESPONSES, {"output": [{"type": "x", "input": {"a": 1}}, {"content": [{"text": "ok"}]}]}, "ok"),
    (ClientAPI.CHAT, {"choices": []}, ""),
    (ClientAPI.CHAT, {"id": "x"}, ""),
])
def test_completion_text_per_api(api, body, expected):
    assert completion_text(api, json.dumps(body).encode()) == expected


def test_completion_text_counts_what_a_stream_of_the_same_answer_counts():
    from tollway.ext.sse import streamed_text

    chunks = [{"choices": [{"delta": {"content": "Hello there"}}]},
              {"choices": [{"delta": {"tool_calls": [{"function": {"arguments": '{"a":1}'}}]}}]}]
    stream = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"
    whole = {"choices": [{"message": {"content": "Hello there", "tool_calls": [{"function": {"arguments": '{"a":1}'}}]}}]}
    assert completion_text(ClientAPI.CHAT, json.dumps(whole).encode()) == streamed_text(stream)


@pytest.mark.parametrize("name", ["reasoning_content", "reasoning"])
def test_a_thinking_or_refusing_chat_answer_counts_alike_streamed_or_not(name):
    """Reasoning and a refusal are output tokens, whether they come whole or in deltas: the
    billed stream text (`streamed_text`), the limiter's (`chunk_texts`) and the non-stream
    body's (`completion_text`) are the same text."""
    from tollway.core.accounting.stream_text import chunk_texts
    from tollway.ext.sse import streamed_text

    deltas = [{name: "Let me "}, {name: "think."}, {"content": "Hello"}, {"refusal": "I can't."},
              {"tool_calls": [{"function": {"arguments": '{"a":1}'}}]}]
    stream = b"".join(b"data: " + json.dumps({"choices": [{"delta": d}]}).encode() + b"\n\n" for d in deltas)
    whole = {"choices": [{"message": {"content": "Hello", "refusal": "I can't.", name: "Let me think.",
                                      "tool_calls": [{"function": {"arguments": '{"a":1}'}}]}}]}
    expected = "Let me think.HelloI can't." + '{"a":1}'
    assert completion_text(ClientAPI.CHAT, json.dumps(whole).encode()) == expected
    assert streamed_text(stream + b"data: [DONE]\n\n") == expected
    assert "".join(chunk_texts(stream)) == expected


def test_a_responses_answer_counts_alike_streamed_or_not_and_audio_is_no_text():
    """Every kind of generated text of a Responses answer (an MCP call's arguments and the code
    interpreter's code among them) is output tokens, whole or in deltas: the billed stream text
    (the relay's `streamed_text`), the limiter's (`chunk_texts`) and the whole body's
    (`completion_text`) are the same text. An audio delta is base64 (audio tokens, not text),
    and a transcript repeats what the audio says: neither is counted as text."""
    from tollway.core.accounting.stream_text import chunk_texts
    from tollway.core.providers.openai_compat import ResponsesStreamRelay

    deltas = [("reasoning_summary_text", "Plan."), ("reasoning_text", "Think."), ("output_text", "Out"),
              ("refusal", "No."), ("function_call_arguments", '{"x":1}'), ("custom_tool_call_input", "*** patch"),
              ("mcp_call_arguments", '{"q":"a"}'), ("code_interpreter_call_code", "print(1)"),
              ("audio", "UklGRiQAAABXQVZFZm10IBAAAAABAAEA" * 8), ("audio.transcript", "Out")]
    stream = b"".join(f"event: response.{kind}.delta\ndata: {json.dumps({'type': f'response.{kind}.delta', 'delta': text})}\n\n"
                      .encode() for kind, text in deltas)
    end = {"type": "response.completed", "response": {"status": "completed", "usage": None}}
    whole = {"object": "response", "output": [
        {"type": "reasoning", "summary": [{"type": "summary_text", "text": "Plan."}],
         "content": [{"type": "reasoning_text", "text": "Think."}]},
        {"type": "message", "content": [{"type": "output_text", "text": "Out"}, {"type": "refusal", "refusal": "No."}]},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": '{"x":1}'},
        {"type": "custom_tool_call", "call_id": "c2", "name": "apply_patch", "input": "*** patch"},
        {"type": "mcp_call", "id": "m1", "server_label": "s", "name": "search", "arguments": '{"q":"a"}', "output": "found"},
        {"type": "code_interpreter_call", "id": "ci1", "container_id": "cntr", "code": "print(1)",
         "outputs": [{"type": "logs", "logs": "1"}]},
    ]}
    expected = 'Plan.Think.OutNo.{"x":1}*** patch{"q":"a"}print(1)'
    relay = ResponsesStreamRelay()
    relay.feed(stream + b"event: response.completed\ndata: " + json.dumps(end).encode() + b"\n\n")
    relay.flush()
    assert completion_text(ClientAPI.RESPONSES, json.dumps(whole).encode()) == expected
    assert relay.streamed_text() == expected
    assert "".join(chunk_texts(stream)) == expected


MALFORMED = [
    b"", b"not json", b"[]", b"null", b'"text"', b"{", b'{"choices": 5}', b'{"choices": [5]}',
    b'{"choices": [{"message": "hi"}]}', b'{"choices": [{"message": {"content": 7}}]}',
    b'{"choices": [{"message": {"tool_calls": [{"function": {"arguments": {"a": 1}}}]}}]}',
    b'{"choices": [{"text": ["a"]}]}', b'{"output": {"content": []}}', b'{"output": [{"content": "x"}]}',
    b'{"choices": [{"message": {"content": "\\ud800"}}]}',  # a lone surrogate msgspec refuses
    b'{"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",  # nested past msgspec's depth limit
    b"\xff\xfe{}",
]


@pytest.mark.parametrize("api", [ClientAPI.CHAT, ClientAPI.COMPLETIONS, ClientAPI.RESPONSES,
                                 ClientAPI.EMBEDDINGS, ClientAPI.MESSAGES, "nonsense"])
@pytest.mark.parametrize("body", MALFORMED, ids=range(len(MALFORMED)))
def test_completion_text_of_malformed_bodies_is_empty(api, body):
    assert completion_text(api, body) == ""


# -- tollway.gateway.token_count: inline when small, on a bounded pool when large ----------------------

def _thread_recorder(names: list[str], result: int = 1) -> Callable[[], int]:
    def count() -> int:
        names.append(threading.current_thread().name)
        return result
    return count


async def test_small_counts_stay_inline_once_the_encoding_is_loaded():
    await token_count.count_tokens_off_loop("warm", "gpt-4o")  # loads o200k_base (on the pool)
    names: list[str] = []
    await token_count.count_off_loop(token_count.INLINE_MAX_CHARS - 1, "gpt-4o", _thread_recorder(names))
    await token_count.count_off_loop(token_count.INLINE_MAX_CHARS, "gpt-4o", _thread_recorder(names))
    assert names[0] == threading.current_thread().name  # no hop for a small text
    assert names[1].startswith("tollway-count")


async def test_first_count_of_an_encoding_loads_it_off_the_loop():
    pool = token_count.CountingPool()
    names: list[str] = []
    assert not pool.ready("cl100k_base")
    await pool.run("cl100k_base", _thread_recorder(names))
    assert names[0].startswith("tollway-count") and pool.ready("cl100k_base")
    pool.shutdown()


async def test_a_flood_of_large_counts_queues_on_two_threads():
    names: list[str] = []

    def slow() -> int:
        names.append(threading.current_thread().name)
        time.sleep(0.02)
        return 1

    size = token_count.INLINE_MAX_CHARS * 10
    results = await asyncio.gather(*(token_count.count_off_loop(size, "gpt-4o", slow) for _ in range(12)))
    assert results == [1] * 12
    assert all(name.startswith("tollway-count") for name in names)
    assert len(set(names)) <= token_count.POOL_THREADS  # a thread per count would show 12


async def test_large_counts_are_exact_and_usage_matches_the_proxy_formula():
    text = varied_text(200_000)
    assert await token_count.count_tokens_off_loop(text, "gpt-4o") == count_tokens(text, "gpt-4o")
    body = b'{"model":"m","messages":[]}'
    usage = await token_count.counted_usage(body, text, "gpt-4")
    completion = count_tokens(text, "gpt-4")
    assert usage == Usage(len(body), completion, len(body) + completion)


async def test_a_huge_answer_without_spaces_is_counted_in_bounded_cpu_as_its_bytes():
    await token_count.count_tokens_off_loop("warm", "gpt-4o")
    text = "x" * (8 * 1024 * 1024)  # exactly 1,048,576 tokens: ~7 s of tiktoken CPU and ~0.5 GB here
    started = time.process_time()  # (every thread's)
    usage = await token_count.counted_usage(b"{}", text, "gpt-4o")
    assert time.process_time() - started < 0.5
    assert usage.completion_tokens == len(text)  # the bytes bound: at least the exact count


async def test_shutdown_cancels_queued_counts_and_a_later_count_starts_a_new_pool():
    pool = token_count.CountingPool(threads=1)
    release = threading.Event()
    running = asyncio.ensure_future(pool.run("o200k_base", lambda: int(release.wait(5))))
    queued = asyncio.ensure_future(pool.run("o200k_base", lambda: 2))
    await asyncio.sleep(0.05)
    pool.shutdown()
    release.set()
    assert await running == 1  # a count already running finishes
    with pytest.raises(asyncio.CancelledError):
        await queued
    pool.shutdown()  # twice is harmless
    assert await pool.run("o200k_base", lambda: 5) == 5
    pool.shutdown()


# -- the limiter: a count is one request, no tokens ------------------------------------------

LIMITS_CONFIG = f"""
providers: [{{name: up, schema: fake}}]
models:
  - name: m
    targets: [{{provider: up}}]
    price: {{input: 1000000, output: 1000000}}
keys:
  - name: k
    key_hash: "{key_hash(LIMITED_KEY)}"
    limits:
      - {{requests: 10, per: 1m}}
      - {{total_tokens: 100, per: 1m}}
      - {{cost_usd: 5, per: 1d}}
      - {{concurrent: 1}}
"""


async def test_count_tokens_reserves_a_request_and_a_slot_but_no_tokens_or_cost():
    cfg = config_mod.loads(LIMITS_CONFIG)
    limiter = Limiter(cfg, MemoryBuckets(lambda: 1000.0), Metrics())  # a stopped clock: no refill
    key, body = cfg.keys[0], b"x" * 1_000_000  # a prompt bound of 1M tokens, were it reserved
    lease = limiter.admit(key, "m", ClientAPI.COUNT_TOKENS, RequestHead(model="m"), body)
    assert lease is not None and lease.demand == REQUEST_ONLY_DEMAND
    levels = await limiter.store.levels(limiter.policy)
    by_measure = {bid.split(":")[2]: level for bid, level in levels.items()}
    assert by_measure["total_tokens"] == 100 and by_measure["cost_usd"] == 5
    assert by_measure["requests"] == 9 and by_measure["concurrent"] == 0
    with pytest.raises(GatewayError) as busy:  # the slot is held while the count runs
        limiter.admit(key, "m", ClientAPI.COUNT_TOKENS, RequestHead(model="m"), body)
    assert busy.value.status == 429
    limiter.settle(lease, None, None)
    levels = await limiter.store.levels(limiter.policy)
    by_measure = {bid.split(":")[2]: level for bid, level in levels.items()}
    assert by_measure["total_tokens"] == 100 and by_measure["cost_usd"] == 5
    assert by_measure["requests"] == 9 and by_measure["concurrent"] == 1


# -- end to end -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def claude() -> Iterator[FakeAnthropic]:
    fake = FakeAnthropic()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def gw(claude: FakeAnthropic, openai_upstream: FakeOpenAI) -> Iterator[GatewayProcess]:
    process = GatewayProcess(f"""
providers:
  - name: claude
    schema: anthropic
    base_url: {claude.url}
    api_key: {UPSTREAM_SECRET}
  - name: up
    schema: openai
    base_url: {openai_upstream.url}
    api_key: {UPSTREAM_SECRET}
models:
  - name: claude-sonnet
    targets: [{{provider: claude, model: claude-sonnet-4-5}}]
  - name: gpt-4o-mini
    targets: [{{provider: up}}]
keys:
  - name: test-key
    key_hash: "{key_hash(TEST_KEY)}"
  - name: limited-key
    key_hash: "{key_hash(LIMITED_KEY)}"
    limits: [{{requests: 2, per: 1m}}]
server:
  max_body_bytes: {16 * 1024 * 1024}
  max_count_tokens_bytes: {COUNT_CAP}
""")
    yield process
    process.stop()


def _healthz_latencies(gw: GatewayProcess, until: threading.Event) -> list[float]:
    """Seconds per GET /healthz, on one keep-alive connection, until `until` is set."""
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30)
    latencies = []
    try:
        while not until.is_set():
            t = time.perf_counter()
            conn.request("GET", "/healthz")
            resp = conn.getresponse()
            assert resp.status == 200 and resp.read() == b'{"status":"ok"}'
            latencies.append(time.perf_counter() - t)
            time.sleep(0.005)
    finally:
        conn.close()
    return latencies


def test_healthz_answers_fast_while_a_large_prompt_is_counted(gw):
    text = varied_text(6 * 1024 * 1024)  # several MiB (the incident's was 9 MiB; the default cap is 2 MiB)
    body = msgspec.json.encode({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]})
    assert len(body) < COUNT_CAP
    expected = local_token_count(body, "gpt-4o-mini")
    # The first count loads the encoding: tiktoken builds it holding the GIL (~0.1 s, once per
    # process; see gateway/token_count.py), which is not what this test measures.
    assert _post_count(gw, b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}')[0] == 200
    _healthz_latencies(gw, _set_after(0.2))  # warm the gateway's /healthz path
    for _ in range(2):
        result: dict[str, object] = {}
        done = threading.Event()

        def count() -> None:
            try:
                result["status"], result["body"] = _post_count(gw, body)
            finally:
                result["seconds"] = time.perf_counter() - started
                done.set()

        started = time.perf_counter()
        counter = threading.Thread(target=count)
        counter.start()
        latencies = _healthz_latencies(gw, done)
        counter.join(60)
        assert result["status"] == 200, result
        assert json.loads(result["body"]) == {"input_tokens": expected}  # counted exactly, on the pool
        seconds = result["seconds"]
        assert isinstance(seconds, float)
        # A count on the loop holds the probe sent meanwhile until the count is done: that probe
        # takes nearly all of the count (measured, idle and with both cores busy: 97-99%), and
        # few overlap it. On the pool the loop waits only while a pool thread holds the GIL (the
        # body's decode and re-encode, tiktoken's list of ids: a few ms per MiB each, see
        # gateway/token_count.py), and CPU contention stretches those waits: at a load average
        # of ~8 on 2 cores a count saw two probes over 0.5 s, one 0.59 s probe in a 1.22 s count.
        # So the bound is a share of the count's own time, which the same contention stretches,
        # not a fixed number of ms (the worst probe of 75 such counts took at most 48% of it).
        assert max(latencies) < 0.75 * seconds, f"/healthz took {sorted(latencies)[-3:]} s during a {seconds:.2f} s count"
        assert len(latencies) >= 10, f"only {len(latencies)} probes overlapped the {seconds:.2f} s count"
        assert statistics.median(latencies) < 0.1, f"/healthz took a median {statistics.median(latencies):.3f} s"


def _post_count(gw: GatewayProcess, body: bytes) -> tuple[int, bytes]:
    """POST an encoded body to count_tokens: the caller's thread only waits on the socket, so
    it holds no GIL the /healthz prober needs (the anthropic SDK would JSON-encode it here)."""
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=60)
    try:
        conn.request("POST", COUNT_TOKENS_PATH, body=body, headers={"x-api-key": TEST_KEY, "content-type": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _set_after(seconds: float) -> threading.Event:
    event = threading.Event()
    threading.Timer(seconds, event.set).start()
    return event


def test_count_tokens_over_the_cap_is_an_anthropic_413(ant, gw, claude):
    text = "x " * (COUNT_CAP // 2 + 1024)  # over max_count_tokens_bytes, under max_body_bytes
    forwarded = len(claude.requests)
    for model in ("gpt-4o-mini", "claude-sonnet"):  # counted here, and forwarded: both capped
        with pytest.raises(anthropic.APIStatusError) as refused:
            ant.messages.count_tokens(model=model, messages=[{"role": "user", "content": text}])
        assert refused.value.status_code == 413
        assert refused.value.body == {"type": "error", "error": {
            "type": "request_too_large",
            "message": f"Request body is larger than this gateway's limit of {COUNT_CAP} bytes."}}
    assert len(claude.requests) == forwarded  # refused before anything went upstream


def test_count_tokens_cap_holds_for_a_chunked_upload(gw):
    """The 413 comes as soon as the upload passes the cap, while the client is still sending:
    so a raw socket, which may find the connection closed under its later chunks."""
    part = b"x" * (1024 * 1024)
    chunks = [b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"',
              *([part] * (COUNT_CAP // len(part) + 1)), b'"}]}']
    head = (f"POST {COUNT_TOKENS_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nx-api-key: {TEST_KEY}\r\n"
            "content-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", gw.port), timeout=30) as sock:
        try:
            sock.sendall(head)
            for chunk in chunks:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused mid-upload: the answer is already waiting to be read
        resp = http.client.HTTPResponse(sock)
        resp.begin()
        assert resp.status == 413
        assert json.loads(resp.read())["error"]["type"] == "request_too_large"


def test_count_tokens_is_a_request_against_the_keys_limit(gw, claude):
    limited = anthropic.Anthropic(base_url=gw.url + "/anthropic", api_key=LIMITED_KEY, max_retries=0, timeout=20)
    messages = [{"role": "user", "content": "one two three"}]
    first = limited.messages.with_raw_response.count_tokens(model="gpt-4o-mini", messages=messages)
    second = limited.messages.with_raw_response.count_tokens(model="claude-sonnet", messages=messages)  # forwarded
    assert first.parse().input_tokens > 0 and second.parse().input_tokens > 0
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert second.headers["x-ratelimit-remaining-requests"] == "0"
    with pytest.raises(anthropic.RateLimitError) as refused:
        limited.messages.count_tokens(model="gpt-4o-mini", messages=messages)
    err = refused.value
    assert err.body["type"] == "error" and err.body["error"]["type"] == "rate_limit_error"
    assert "requests per 1m0s for key 'limited-key'" in err.body["error"]["message"]
    assert int(err.response.headers["retry-after"]) >= 1 and int(err.response.headers["retry-after-ms"]) > 0
    # Another key is not affected.
    anthropic.Anthropic(base_url=gw.url + "/anthropic", api_key=TEST_KEY, max_retries=0).messages.count_tokens(
        model="gpt-4o-mini", messages=messages)


# -- an answer without usage: counted in bounded time and memory ----------------------------

HUGE_MIB = 8


@pytest.fixture(scope="module")
def hostile_gw(hostile: HostileUpstream) -> Iterator[GatewayProcess]:
    process = GatewayProcess(f"""
providers: [{{name: h, schema: openai, base_url: {hostile.url}/v1, api_key: {UPSTREAM_SECRET}}}]
models: [{{name: gpt-4o, targets: [{{provider: h, model: scripted}}]}}]
keys: [{{name: k, key_hash: "{key_hash(TEST_KEY)}"}}]
""")
    yield process
    process.stop()


def _no_usage_answer(stream: bool, piece: str, pieces: int) -> Answer:
    """An OpenAI chat answer of `piece` × `pieces` and no usage: a stream of one delta per piece, or JSON."""
    if not stream:
        body = {"id": "c", "object": "chat.completion", "created": 1, "model": "gpt-4o", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": piece * pieces}, "finish_reason": "stop"}]}
        return Answer(headers=(("content-type", "application/json"),), chunks=(json.dumps(body).encode(),))

    def chunk(delta: dict[str, str]) -> bytes:
        return b"data: " + json.dumps({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o",
                                       "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}).encode() + b"\n\n"
    chunks = (chunk({"role": "assistant", "content": ""}), *(chunk({"content": piece}),) * pieces, b"data: [DONE]\n\n")
    return Answer(headers=(("content-type", "text/event-stream"),), chunks=chunks, framing="chunked")


def _worker_cpu_and_peak(gw: GatewayProcess) -> tuple[float, int]:
    """(CPU seconds, peak resident MB) of the gateway's one worker."""
    pid = gw.worker_pids()[0]
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    peak_kb = int(open(f"/proc/{pid}/status").read().split("VmHWM:")[1].split()[0])
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), peak_kb // 1024


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
def test_a_huge_answer_without_usage_is_charged_its_bytes_without_pinning_a_core(hostile_gw, hostile, stream):
    # A run of "x" is one tiktoken piece: counting 8 MiB of it took ~7 s of the worker's CPU and
    # grew it by ~0.5 GB (64 MiB, the default max_upstream_body_bytes: ~100 s and ~3 GB), the request in
    # flight all along. Past the exact-count cap it is charged its UTF-8 bytes, an upper bound.
    client = openai.OpenAI(base_url=hostile_gw.url + "/v1", api_key=TEST_KEY, max_retries=0, timeout=60)
    hostile.script(_no_usage_answer(stream, "hi", 1))
    client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=stream,
                                   extra_headers={"x-request-id": f"warm-{stream}"})  # loads the encoding
    hostile_gw.log_line(f"warm-{stream}")
    piece, pieces = "x" * 65536, HUGE_MIB * 16
    hostile.script(_no_usage_answer(stream, piece, pieces))
    cpu, peak = _worker_cpu_and_peak(hostile_gw)
    answer = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}],
                                            stream=stream, extra_headers={"x-request-id": f"huge-{stream}"})
    if stream:
        assert sum(len(c.choices[0].delta.content or "") for c in answer if c.choices) == len(piece) * pieces
    line = hostile_gw.log_line(f"huge-{stream}", timeout=60)
    cpu_after, peak_after = _worker_cpu_and_peak(hostile_gw)
    assert cpu_after - cpu < 3, f"the answer cost the worker {cpu_after - cpu:.1f} s of CPU"
    assert peak_after - peak < 200, f"the worker's peak grew by {peak_after - peak} MB"
    assert line["status"] == 200 and line["completion_tokens"] == len(piece) * pieces  # >= the exact 1,048,576
