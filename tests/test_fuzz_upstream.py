"""Fuzzing a real gateway from both sides at once: hostile client bodies, hostile upstream answers.

Each example picks a provider schema and a client API (OpenAI chat, the OpenAI Responses API,
or the Anthropic Messages API), a request body (mostly sane, sometimes odd or broken), and the upstream's answer:
status, headers, a body (the schema's error envelope, its success body or stream, random
JSON, random bytes), truncated or not, split into chunks at random points, framed by
content-length, chunked, short (declares more than it sends) or cut, and paced. The hostile
upstream is scripted with that answer (the target's upstream model is `scripted`), and the
request goes out as raw bytes. Whatever happens:

- the gateway answers: a complete HTTP response, never a 500 of its own (a 500 passes only
  when an OpenAI-compatible upstream said 500, which those relay), no unhandled exception in
  its stderr, and the process stays up (/healthz 200 at the end);
- no byte the client gets holds a credential the gateway holds (those are planted anywhere in
  the answers, success bodies and streams included), nor a credential-shaped value the gateway
  does not know (planted only where an error is: headers, bodies of status >= 300, in-stream
  error events; in a success the same text is the model's answer).

The examples are derandomized, so the suite sees the same ones every run; set
TOLLWAY_FUZZ_RANDOM=1 (and TOLLWAY_FUZZ_EXAMPLES=N) to look for new ones.
"""
from __future__ import annotations

import gzip
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx2  # the HTTP client under the openai and anthropic SDKs
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.fakes.bedrock_upstream import event as bedrock_event
from tests.fakes.gemini_upstream import service_account_file
from tests.fakes.hostile_upstream import FOREIGN_CORES, FOREIGN_SECRETS, VERTEX_TOKEN, WIRES, Answer, HostileUpstream, leaks
from tests.harness import GatewayProcess, key_hash

GATEWAY_KEY = "gwk-fuzz-test-Hq5Ws9Ye3Ru7Io1Pa6Sd"
ADMIN_KEY = "adm-fuzz-test-Mz4Xn8Bc2Vl6Kj0Hg5Fd"
AWS_SESSION = "FwoGZXIvYXdzEFuzzSessionToken/Ab3+Cd5/Ef7+Gh9/Ij1+Kl3/Mn5+Op7/Qr9+St1/Uv3+Wx5/Yz7=="
PROVIDER_KEYS = {
    "openai": "sk-proj-fuzzHeldOpenAI-Pl4Ok8Ij2Uh6Yg0Tf3Rd",
    "azure": "7d2e9b4c1a8f3e6d5c0b9a8f7e6d5c4b",
    "anthropic": "sk-ant-api03-fuzzHeldAnthropic-Ws4Ed8Rf2Tg6Yh0Uj3Ik7-OlAA",
    "gemini": "AIzaSyFuzzHeldGeminiKey-Qa1Ws2Ed3Rf4Tg5",
}
HELD = {**{f"{p} api_key": k for p, k in PROVIDER_KEYS.items()},
        "AWS access key id": "AKIAFUZZHELDKEYID777", "AWS secret access key": "fuzzSecretAccessKey/Zx8+Cv6Bn4Mq2Wr7Ty5Ui",
        "AWS session token": AWS_SESSION, "Vertex OAuth token": VERTEX_TOKEN,
        "gateway key": GATEWAY_KEY, "admin key": ADMIN_KEY}
SECRETS = {**HELD, **FOREIGN_CORES}
# What an upstream can echo: only what the gateway sends upstream. Gateway and admin keys are
# never forwarded (tests/test_hostile_secrets.py checks that) and are held only as hashes, so
# they are looked for in every answer but not planted in the upstream's.
SENT_UPSTREAM = {name: value for name, value in HELD.items() if name not in ("gateway key", "admin key")}

SCHEMAS = {"openai": "openai", "azure": "openai", "anthropic": "anthropic", "bedrock": "bedrock",
           "gemini": "gemini", "vertex": "vertex"}  # provider -> its wire (tests/fakes/hostile_upstream.WIRES)
RELAYS_500 = ("openai", "azure")
API_PATHS = {"openai": "/v1/chat/completions", "anthropic": "/anthropic/v1/messages", "responses": "/v1/responses"}
EXAMPLES = int(os.environ.get("TOLLWAY_FUZZ_EXAMPLES", "150"))  # per property


def _config(up: str, sa_file: str) -> str:
    t = "{connect: 1, first_byte: 1, idle: 0.5, total: 3}"
    k = PROVIDER_KEYS
    models = "\n".join(f"  - {{name: fuzz-{p}, targets: [{{provider: {p}, model: scripted}}]}}" for p in SCHEMAS)
    return f"""
providers:
  - {{name: openai, schema: openai, base_url: "{up}/v1", api_key: "{k['openai']}", timeouts: {t}}}
  - {{name: azure, schema: azure_openai, base_url: "{up}", api_version: "2024-10-21", api_key: "{k['azure']}", timeouts: {t}}}
  - {{name: anthropic, schema: anthropic, base_url: "{up}", api_key: "{k['anthropic']}", timeouts: {t}}}
  - name: bedrock
    schema: bedrock
    base_url: "{up}"
    region: us-east-1
    credentials: {{access_key_id: "{HELD['AWS access key id']}", secret_access_key: "{HELD['AWS secret access key']}",
                   session_token: "{AWS_SESSION}"}}
    timeouts: {t}
  - {{name: gemini, schema: gemini, base_url: "{up}/v1beta", api_key: "{k['gemini']}", timeouts: {t}}}
  - name: vertex
    schema: vertex
    base_url: "{up}/v1"
    project: fuzz-proj
    location: us-central1
    credentials: {{service_account_file: "{sa_file}"}}
    timeouts: {t}
models:
{models}
keys:
  - {{name: fuzz, key_hash: "{key_hash(GATEWAY_KEY)}"}}
admin: {{key_hash: "{key_hash(ADMIN_KEY)}"}}
routing:
  retry: {{attempts: 2, backoff_base: 0.01, backoff_max: 0.02, max_retry_after: 0.05, deadline: 4}}
  outlier_detection: {{consecutive_failures: 1000000}}
server:
  max_body_bytes: 65536
"""


@pytest.fixture(scope="module")
def gw(hostile: HostileUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    sa = service_account_file(tmp_path_factory.mktemp("sa"), hostile.url + "/token")
    process = GatewayProcess(_config(hostile.url, str(sa)))
    yield process
    process.stop()


@pytest.fixture(scope="module")
def client() -> Iterator[httpx2.Client]:
    with httpx2.Client(timeout=20) as c:
        yield c


# -- hostile upstream answers ----------------------------------------------------------------

HEADER_CHARS = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
HEADER_NAMES = st.one_of(
    st.sampled_from(["retry-after", "retry-after-ms", "x-amzn-errortype", "x-request-id", "www-authenticate", "request-id",
                     "x-ratelimit-reset-requests", "set-cookie", "location", "content-encoding", "x-amzn-requestid"]),
    st.from_regex(r"\Ax-[a-z0-9-]{1,16}\Z"))
ODD_VALUES = ["0", "-1", "1e309", "nan", "inf", "99999999999999999999", "Wed, 21 Oct 2015 07:28:00 GMT", "gzip", "br",
              "ThrottlingException:", "API_KEY_INVALID", ""]
CONTENT_TYPES = [None, "application/json", "text/event-stream", "application/vnd.amazon.eventstream", "text/plain",
                 "text/html; charset=utf-8", "application/json; charset=utf-8", "multipart/mixed"]


def words(foreign: bool, chars: Any = None) -> st.SearchStrategy[str]:
    """Text made of random words and planted credentials (foreign ones only if `foreign`)."""
    pool = list(SENT_UPSTREAM.values()) + (list(FOREIGN_SECRETS.values()) if foreign else [])
    word = st.one_of(st.sampled_from(pool), st.text(alphabet=chars, max_size=16) if chars is not None else st.text(max_size=16))
    return st.lists(word, max_size=4).map(" ".join)


def json_values(foreign: bool) -> st.SearchStrategy[Any]:
    leaves = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | words(foreign)
    return st.recursive(leaves, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                        max_leaves=10)


@st.composite
def stream_body(draw: Any, schema: str, errorish: bool) -> bytes:
    """A stream in the schema's format, or something like one: good events, in-stream errors
    (which may carry foreign credentials), random lines, random frames."""
    w = WIRES[schema]
    events: list[bytes] = []
    for kind in draw(st.lists(st.sampled_from(["open", "delta", "delta", "error", "close", "line", "junk"]), max_size=8)):
        if kind == "open":
            events += w.opening("scripted")
        elif kind == "delta":
            events.append(w.delta("scripted", draw(words(errorish))))
        elif kind == "error":
            events.append(w.stream_error(draw(words(True))))
        elif kind == "close":
            events += w.closing("scripted")
        elif kind == "line" and schema == "bedrock":
            events.append(bedrock_event(draw(st.sampled_from(["messageStart", "contentBlockDelta", "metadata", "bogus"])),
                                        {"x": draw(words(errorish))}))
        elif kind == "line":
            events.append(draw(st.sampled_from([b"data: ", b"event: ", b": ", b"id: ", b"retry: ", b""]))
                          + draw(words(errorish)).encode() + draw(st.sampled_from([b"\n", b"\n\n", b"\r\n\r\n", b"\r"])))
        else:
            events.append(draw(st.binary(max_size=64)))
    return b"".join(events)


@st.composite
def answers(draw: Any, schema: str, stream: bool) -> Answer:
    """An upstream answer for a request that asked for a `stream` (or not): four in ten
    well-formed (so the success paths get their share), the rest anything at all."""
    if draw(st.integers(0, 9)) < 4:
        return draw(well_formed(schema, stream))
    w = WIRES[schema]
    status = draw(st.one_of(st.sampled_from([200, 200, 200, 201, 204, 301, 302, 400, 401, 403, 404, 408, 413, 422, 429,
                                             500, 502, 503, 504, 529]), st.integers(200, 599)))
    errorish = status >= 300
    kind = draw(st.sampled_from(["envelope", "ok", "stream", "stream", "json", "bytes", "empty"]))
    if kind == "envelope":
        body = json.dumps(w.error(status, draw(words(errorish)))[0]).encode()
    elif kind == "ok":
        body = json.dumps(w.ok("scripted", draw(words(errorish)))).encode()
    elif kind == "stream":
        body = draw(stream_body(schema, errorish))
    elif kind == "json":
        body = json.dumps(draw(json_values(errorish))).encode()
    elif kind == "bytes":
        body = draw(st.binary(max_size=2048))
    else:
        body = b""
    if body and draw(st.integers(0, 5)) == 0:
        body = _cut_outside_secrets(body, draw(st.integers(0, len(body))))
    headers = draw(header_lists())
    content_type = draw(st.sampled_from(CONTENT_TYPES))
    if content_type is not None:
        headers.append(("content-type", content_type))
    if body and draw(st.integers(0, 9)) == 0:
        body = gzip.compress(body)
        headers.append(("content-encoding", "gzip"))
    framing = draw(st.sampled_from(["length", "length", "chunked", "chunked", "short", "cut"]))
    delay = draw(st.sampled_from([0.0] * 12 + [0.05, 1.3]))  # 1.3 > first_byte
    pause = draw(st.sampled_from([0.0] * 8 + [0.01, 0.7]))  # 0.7 > idle
    return Answer(status, tuple(headers), draw(chunked(body)), framing, delay, pause)


@st.composite
def well_formed(draw: Any, schema: str, stream: bool) -> Answer:
    """A 200 in the schema's format, its text planted with held credentials, maybe ending in
    an in-stream error (which may carry foreign ones), split at random points."""
    w = WIRES[schema]
    if stream:
        events = [*w.opening("scripted"), *(w.delta("scripted", t) for t in draw(st.lists(words(False), max_size=4)))]
        if draw(st.integers(0, 3)) == 0:
            events.append(w.stream_error(draw(words(True))))
        else:
            events += w.closing("scripted")
        body, content_type = b"".join(events), w.stream_type
    else:
        body, content_type = json.dumps(w.ok("scripted", draw(words(False)))).encode(), "application/json"
    headers = [*draw(header_lists()), ("content-type", content_type)]
    return Answer(200, tuple(headers), draw(chunked(body)), draw(st.sampled_from(["length", "chunked"])))


def header_lists() -> st.SearchStrategy[list[tuple[str, str]]]:
    """Response headers (any of which may carry credentials, foreign ones included)."""
    return st.lists(st.tuples(HEADER_NAMES, st.one_of(st.sampled_from(ODD_VALUES), words(True, HEADER_CHARS))), max_size=5)


@st.composite
def chunked(draw: Any, body: bytes) -> tuple[bytes, ...]:
    """`body` split at up to five random points (a credential may be split across chunks)."""
    cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=5)))
    return tuple(body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)]) if b > a)


def _cut_outside_secrets(body: bytes, at: int) -> bytes:
    """`body` cut at `at`, moved back so that no planted credential is cut in half (a half
    credential is the upstream's doing, and no gateway can know it for one)."""
    for value in SECRETS.values():
        start = body.find(value.encode())
        while start >= 0:
            if start < at < start + len(value):
                at = start
            start = body.find(value.encode(), start + 1)
    return body[:at]


# -- hostile client requests ------------------------------------------------------------------

FIELDS = ["max_tokens", "max_completion_tokens", "temperature", "top_p", "n", "stop", "tools", "tool_choice",
          "response_format", "stream_options", "logprobs", "user", "seed", "system", "top_k", "thinking", "metadata",
          "parallel_tool_calls", "presence_penalty", "stream"]
NOT_UTF8 = [b"\xff\xfe", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf", b"\x80"]
ROLES = ["user", "assistant", "system", "developer", "tool", "function", "model", ""]
RAW_BODIES = [b"", b"{", b"[]", b"null", b'"hi"', b'{"model": 1}', b'{"model": "fuzz-openai", "messages": [',
              b"[" * 300 + b"]" * 300, b'{"model": "fuzz-openai", "messages": [{"role": "user", "content": "\xff\xfe"}]}',
              b'{"model": "fuzz-openai", "model": "fuzz-anthropic", "messages": []}', b'{"max_tokens": 1e999999}', b"NaN"]


@st.composite
def requests(draw: Any, api: str, model: str) -> bytes:
    shape = draw(st.sampled_from(["sane"] * 5 + ["odd"] * 3 + ["raw", "mangled"]))
    if shape == "raw":
        return draw(st.one_of(st.sampled_from(RAW_BODIES), st.binary(max_size=256)))
    if api == "responses":
        return draw(responses_requests(model, shape))
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": draw(st.text(max_size=40))}],
                            "stream": draw(st.booleans())}
    if api == "anthropic":
        body["max_tokens"] = draw(st.integers(1, 64))
    if shape == "odd":
        message = st.fixed_dictionaries({"role": st.sampled_from(ROLES)}, optional={
            "content": json_values(False), "tool_calls": json_values(False), "tool_call_id": json_values(False),
            "name": json_values(False)})
        body["messages"] = draw(st.lists(message, max_size=4))
        body.update(draw(st.dictionaries(st.sampled_from(FIELDS), json_values(False), max_size=4)))
        if draw(st.booleans()):
            body["model"] = draw(st.one_of(st.just(model), json_values(False)))
    raw = json.dumps(body).encode()
    if shape == "mangled":  # bytes that are not UTF-8 inside a string: JSON on the outside, not within
        raw = raw.replace(b'"content": "', b'"content": "' + draw(st.sampled_from(NOT_UTF8)), 1)
    return raw


RESPONSES_FIELDS = ["instructions", "tools", "tool_choice", "max_output_tokens", "reasoning", "text", "temperature",
                    "previous_response_id", "parallel_tool_calls", "metadata", "store", "include", "background"]
ITEM_TYPES = ["message", "function_call", "function_call_output", "reasoning", "item_reference", "web_search_call", None]


@st.composite
def responses_requests(draw: Any, model: str, shape: str) -> bytes:
    """A Responses API body: `input` as a string, or items of every kind with odd fields."""
    body: dict[str, Any] = {"model": model, "input": draw(st.text(max_size=40)), "stream": draw(st.booleans())}
    if shape in ("odd", "mangled"):
        item = st.fixed_dictionaries({"type": st.sampled_from(ITEM_TYPES)}, optional={
            "role": st.sampled_from(ROLES), "content": json_values(False), "call_id": json_values(False),
            "name": json_values(False), "arguments": json_values(False), "output": json_values(False)})
        body["input"] = draw(st.lists(item, max_size=4))
        body.update(draw(st.dictionaries(st.sampled_from(RESPONSES_FIELDS), json_values(False), max_size=4)))
    raw = json.dumps(body).encode()
    if shape == "mangled":
        raw = raw.replace(b'"model": "', b'"model": "' + draw(st.sampled_from(NOT_UTF8)), 1)
    return raw


# -- the properties ----------------------------------------------------------------------------

@dataclass
class Seen:
    status: int
    raw: bytes  # the response headers and body, as the client got them
    error: Exception | None


def send(client: httpx2.Client, gw: GatewayProcess, api: str, body: bytes) -> Seen:
    auth = {"x-api-key": GATEWAY_KEY, "anthropic-version": "2023-06-01"} if api == "anthropic" else {
        "authorization": f"Bearer {GATEWAY_KEY}"}
    raw, status = bytearray(), 0
    try:
        with client.stream("POST", gw.url + API_PATHS[api], content=body,
                           headers={**auth, "content-type": "application/json"}) as r:
            status = r.status_code
            raw += b"".join(k + b": " + v + b"\r\n" for k, v in r.headers.raw)
            for chunk in r.iter_raw():
                raw += chunk
    except httpx2.HTTPError as exc:
        return Seen(status, bytes(raw), exc)
    return Seen(status, bytes(raw), None)


@dataclass
class Exchange:
    """One example: what was asked of whom, what the upstream answered, what the client got."""

    provider: str
    answer: Answer
    seen: Seen
    reached: bool  # the request got as far as the upstream
    stderr: bytes  # what the gateway wrote to stderr meanwhile


def exchange(data: Any, gw: GatewayProcess, hostile: HostileUpstream, client: httpx2.Client) -> Exchange:
    """Draw a provider, a client API, a request body and an upstream answer; play them."""
    provider = data.draw(st.sampled_from(list(SCHEMAS)), label="provider")
    api = data.draw(st.sampled_from(list(API_PATHS)), label="client API")
    body = data.draw(requests(api, f"fuzz-{provider}"), label="request body")
    answer = data.draw(answers(SCHEMAS[provider], b'"stream": true' in body), label="upstream answer")
    hostile.script(answer)
    served, errors_before = hostile.scripted_served, gw.stderr_path.stat().st_size
    seen = send(client, gw, api, body)
    reached = hostile.scripted_served > served
    event(f"upstream reached: {reached}, client got {seen.status // 100}xx")  # --hypothesis-show-statistics
    return Exchange(provider, answer, seen, reached, gw.stderr_path.read_bytes()[errors_before:])


FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                derandomize=os.environ.get("TOLLWAY_FUZZ_RANDOM") != "1",
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large])


@FUZZ
@given(data=st.data())
def test_no_answer_from_either_side_breaks_the_gateway(data: Any, gw: GatewayProcess, hostile: HostileUpstream,
                                                       client: httpx2.Client) -> None:
    """A complete answer, never a 500 of the gateway's own, no unhandled exception, no crash."""
    x = exchange(data, gw, hostile, client)
    assert gw.proc.poll() is None, f"the gateway died:\n{gw.stderr()[-3000:]}"
    assert x.seen.error is None, f"the client got no complete answer: {x.seen.error!r}; got {x.seen.raw[:300]!r}"
    relayed_500 = x.reached and x.answer.status == 500 and x.provider in RELAYS_500
    assert x.seen.status != 500 or relayed_500, f"a 500 of the gateway's own: {x.seen.raw[:600]!r}"
    assert b"Traceback" not in x.stderr and b"unhandled" not in x.stderr, x.stderr.decode(errors="replace")[-3000:]


@FUZZ
@given(data=st.data())
def test_no_answer_from_either_side_leaks_a_credential(data: Any, gw: GatewayProcess, hostile: HostileUpstream,
                                                       client: httpx2.Client) -> None:
    """No byte the client gets holds a credential the gateway holds, or a foreign one."""
    x = exchange(data, gw, hostile, client)
    found = leaks(x.seen.raw, SECRETS)
    assert not found, f"the client received {found}: {x.seen.raw[:1500]!r}"


def test_the_gateway_is_alive_after_the_fuzzing(gw: GatewayProcess, client: httpx2.Client) -> None:
    assert gw.proc.poll() is None
    assert client.get(gw.url + "/healthz").status_code == 200
    assert not leaks(gw.stdout_path.read_bytes() + gw.stderr_path.read_bytes(), SECRETS)


# -- the scripted mode itself, against the fake alone --------------------------------------------

@pytest.mark.parametrize("framing,complete", [("length", True), ("chunked", True), ("short", False), ("cut", False)])
def test_fake_scripted_answers_as_told(hostile: HostileUpstream, framing: str, complete: bool) -> None:
    hostile.script(Answer(418, (("x-odd", "1"), ("content-type", "text/plain")), (b"one ", b"two ", b"three"), framing,
                          delay=0.05))
    start = time.monotonic()
    try:
        r = httpx2.post(hostile.url + "/v1/chat/completions", json={"model": "scripted"}, timeout=5)
        got: bytes | None = r.content
    except httpx2.HTTPError:
        got = None
    assert time.monotonic() - start >= 0.05
    if complete:
        assert r.status_code == 418 and r.headers["x-odd"] == "1" and got == b"one two three"
    else:
        assert got is None  # the client sees a truncated body as an error
