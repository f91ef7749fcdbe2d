"""No credential the gateway holds reaches a client, a log line, a metric, a span or a stored
record, whatever an upstream echoes back.

The hostile upstream (tests/fakes/hostile_upstream.py) answers `echo-<status>` with an error in
each schema's real envelope whose every field, and several response headers, carry every
credential it was sent, the raw request head, and credential-shaped values the gateway does not
know (FOREIGN_SECRETS). One real gateway fronts it with a provider of every schema, each with
its own distinctive credential. `traffic` sends the whole matrix once (echo-<status>, an error
event mid-stream, an error dressed as a 200, a success quoting the credentials; then, once the
upstream has been sent every provider's credential, echoes of all of them), through the
official openai and anthropic SDKs, streamed and not, and keeps every byte each client
received; each test then checks one slice of it, or one sink (access log, stderr, /metrics,
spans, the admin usage record). Failures name the provider, the mode, the client and the sink.

The last section smoke-tests the adversary's other modes (stalls, trickles, huge and garbage
bodies, gzip, a firehose) against the fake alone, for the gateway tests that use them.
"""
from __future__ import annotations

import base64
import gzip
import hashlib
import http.client
import json
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import anthropic
import httpx2  # the HTTP client under the openai and anthropic SDKs
import openai
import pytest

from tests.fakes.gemini_upstream import service_account_file
from tests.fakes.hostile_upstream import FOREIGN_CORES, VERTEX_TOKEN, HostileUpstream, MiB, leak_context, leaks
from tests.fakes.otlp_collector import FakeCollector
from tests.harness import GatewayProcess, key_hash

GATEWAY_KEY = "gwk-hostile-test-ZpQ4rT8vX2nB6mK0sW3y"
ADMIN_KEY = "adm-hostile-test-Lc7Hd1Jf5Vg9Nq2Rx6Tb"
AWS_KEY_ID = "AKIAHELDGATEWAYKEY42"
AWS_SECRET = "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"
AWS_SESSION = "IQoJb3JpZ2luX2VjE" + base64.b64encode(hashlib.sha512(b"hostile session").digest() * 5).decode()
PROVIDER_KEYS = {  # provider name -> its credential; Bedrock (SigV4) and Vertex (OAuth) have none here
    "openai": "sk-proj-heldOpenAIkey-Tq3Wv8Zp1Xr6Ys4Ub9Nc2Md7",
    "azure": "9f3c1a7e5b2d4c8f0a6e2b7d1c5f8a3e",  # Azure keys are 32 hex digits: no shape to spot
    "anthropic": "sk-ant-api03-heldAnthropicKey-Rk5Pm8Qs2Tv6Wx9Yz3Ab7Cd1Ef4-Gh8IjAA",
    "bedrock-key": "ABSKQmVkcm9ja0FQSUtleS1oZWxkLWZvci1ob3N0aWxlLXRlc3Q=",
    "gemini": "AIzaSyHeldGeminiKey-Vb2Nm5Kl8Jh1Gf4Ds7Qp",
}
HELD = {  # every credential the gateway holds (plus the Vertex private key, added by `gw`)
    **{f"{name} api_key": key for name, key in PROVIDER_KEYS.items()},
    "AWS access key id": AWS_KEY_ID, "AWS secret access key": AWS_SECRET, "AWS session token": AWS_SESSION,
    "Vertex OAuth token": VERTEX_TOKEN, "gateway key": GATEWAY_KEY, "admin key": ADMIN_KEY,
}
SECRETS = {**HELD, **FOREIGN_CORES}

PROVIDERS = ("openai", "azure", "anthropic", "bedrock", "bedrock-key", "gemini", "vertex")
STATUSES = (400, 401, 403, 429, 500, 503)
VARIANTS = ("openai", "openai-stream", "anthropic", "anthropic-stream")
STREAM_VARIANTS = ("openai-stream", "anthropic-stream")
DISGUISED = ("echo-as-200", "echo-302")  # errors whose status does not say so: a 200, a redirect
MODES = [f"echo-{s}" for s in STATUSES] + ["echo-stream", "echo-ok", *DISGUISED]
SHARED_MODES = ["echo-seen-200", "echo-seen-400", "echo-seen-500"]  # sent after MODES: every credential is known by then
RELAYS_STATUS = ("openai", "azure")  # OpenAI-compatible upstreams' 4xx/5xx reach the client as they are
MESSAGES = [{"role": "user", "content": "say hi"}]


def expected_status(provider: str, upstream: int) -> int:
    """docs/providers.md: the gateway's credential failed -> 502; other 5xx -> 502 unless relayed."""
    if upstream in (401, 403):
        return 502
    if provider in RELAYS_STATUS or upstream != 500:
        return upstream
    return 502


def _config(up: str, collector: str, sa_file: str) -> str:
    timeouts = "{connect: 2, first_byte: 10, idle: 5, total: 30}"
    models = "\n".join(f"  - {{name: {p}-{m}, targets: [{{provider: {p}, model: {m}}}]}}"
                       for p in PROVIDERS for m in MODES + SHARED_MODES)
    k = PROVIDER_KEYS
    return f"""
providers:
  - {{name: openai, schema: openai, base_url: "{up}/v1", api_key: "{k['openai']}", timeouts: {timeouts}}}
  - {{name: azure, schema: azure_openai, base_url: "{up}", api_version: "2024-10-21", api_key: "{k['azure']}", timeouts: {timeouts}}}
  - {{name: anthropic, schema: anthropic, base_url: "{up}", api_key: "{k['anthropic']}", timeouts: {timeouts}}}
  - name: bedrock
    schema: bedrock
    base_url: "{up}"
    region: us-east-1
    credentials: {{access_key_id: "{AWS_KEY_ID}", secret_access_key: "{AWS_SECRET}", session_token: "{AWS_SESSION}"}}
    timeouts: {timeouts}
  - {{name: bedrock-key, schema: bedrock, base_url: "{up}", region: us-east-1, api_key: "{k['bedrock-key']}", timeouts: {timeouts}}}
  - {{name: gemini, schema: gemini, base_url: "{up}/v1beta", api_key: "{k['gemini']}", timeouts: {timeouts}}}
  - name: vertex
    schema: vertex
    base_url: "{up}/v1"
    project: hostile-proj
    location: us-central1
    credentials: {{service_account_file: "{sa_file}"}}
    timeouts: {timeouts}
models:
{models}
keys:
  - name: hostile-test
    key_hash: "{key_hash(GATEWAY_KEY)}"
    limits: [{{requests: 1000000, per: 1m}}]
admin: {{key_hash: "{key_hash(ADMIN_KEY)}"}}
routing:
  retry: {{attempts: 2, backoff_base: 0.01, backoff_max: 0.02, max_retry_after: 0.1}}
  outlier_detection: {{consecutive_failures: 1000000}}
server:
  access_log: true
telemetry:
  traces: {{endpoint: "{collector}", export_interval: 0.1}}
"""


@pytest.fixture(scope="module")
def collector() -> Iterator[FakeCollector]:
    fake = FakeCollector()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def gw(hostile: HostileUpstream, collector: FakeCollector, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    sa = service_account_file(tmp_path_factory.mktemp("sa"), hostile.url + "/token")
    pem = json.loads(sa.read_text())["private_key"]
    HELD["Vertex service-account private key"] = "".join(pem.strip().splitlines()[1:-1])
    SECRETS.update(HELD)
    process = GatewayProcess(_config(hostile.url, collector.url, str(sa)))
    yield process
    process.stop()


# -- every byte a client got -------------------------------------------------------------------

@dataclass
class Received:
    status: int
    head: bytes  # the response headers, as they came
    body: bytearray = field(default_factory=bytearray)


class _TeeStream(httpx2.SyncByteStream):
    def __init__(self, inner: Any, sink: bytearray) -> None:
        self._inner, self._sink = inner, sink

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._inner:
            self._sink += chunk
            yield chunk

    def close(self) -> None:
        self._inner.close()


class Tee(httpx2.HTTPTransport):
    """An httpx2 transport that keeps a copy of every response byte the SDK on top of it reads."""

    def __init__(self) -> None:
        super().__init__()
        self.received: list[Received] = []

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        response = super().handle_request(request)
        got = Received(response.status_code, b"".join(k + b": " + v + b"\r\n" for k, v in response.headers.raw))
        self.received.append(got)
        response.stream = _TeeStream(response.stream, got.body)
        return response


@dataclass
class Outcome:
    """One request as its client saw it: HTTP status, what the SDK raised, every byte."""

    variant: str
    request_id: str
    status: int | None
    error: Exception | None
    head: bytes
    body: bytes

    @property
    def bytes(self) -> bytes:
        return self.head + self.body

    def json(self) -> Any:
        return json.loads(self.body)


def send(gw: GatewayProcess, variant: str, model: str, rid: str) -> Outcome:
    """`model` asked through the official SDK `variant` names; the SDK's exception is kept."""
    tee = Tee()
    http = httpx2.Client(transport=tee, timeout=30)
    stream, headers = variant.endswith("-stream"), {"x-request-id": rid}
    error: Exception | None = None
    try:
        if variant.startswith("openai"):
            oai = openai.OpenAI(base_url=gw.url + "/v1", api_key=GATEWAY_KEY, max_retries=0, http_client=http)
            answer: Any = oai.chat.completions.create(model=model, messages=MESSAGES, stream=stream, extra_headers=headers)
        else:
            ant = anthropic.Anthropic(base_url=gw.url + "/anthropic", api_key=GATEWAY_KEY, max_retries=0, http_client=http)
            answer = ant.messages.create(model=model, max_tokens=64, messages=MESSAGES, stream=stream,  # type: ignore[arg-type]
                                         extra_headers=headers)
        if stream:
            for _ in answer:
                pass
    except (openai.OpenAIError, anthropic.AnthropicError) as exc:
        error = exc
    finally:
        http.close()
    last = tee.received[-1] if tee.received else Received(0, b"")
    return Outcome(variant, rid, last.status or None, error, b"".join(r.head for r in tee.received),
                   b"".join(bytes(r.body) for r in tee.received))


@pytest.fixture(scope="module")
def traffic(gw: GatewayProcess) -> dict[tuple[str, str, str], Outcome]:
    """The whole matrix, sent once: (provider, mode, variant) -> what that client got."""
    out = {}
    for provider in PROVIDERS:
        for mode in MODES:
            for variant in STREAM_VARIANTS if mode == "echo-stream" else VARIANTS:
                rid = f"hostile-{provider}-{mode}-{variant}"
                out[(provider, mode, variant)] = send(gw, variant, f"{provider}-{mode}", rid)
    return out


@pytest.fixture(scope="module")
def shared_traffic(traffic: Any, gw: GatewayProcess) -> dict[tuple[str, str, str], Outcome]:
    """After `traffic`, the upstream has been sent every provider's credential: each provider
    now gets answers that echo all of them (an upstream several providers share)."""
    return {(p, m, v): send(gw, v, f"{p}-{m}", f"hostile-{p}-{m}-{v}") for p in PROVIDERS for m in SHARED_MODES for v in VARIANTS}


@pytest.fixture(scope="module")
def all_traffic(traffic: Any, shared_traffic: Any) -> dict[tuple[str, str, str], Outcome]:
    """Everything sent: what the sinks are checked after."""
    return {**traffic, **shared_traffic}


def _leaks_in(blob: bytes, secrets: dict[str, str]) -> list[str]:
    return [f"{name} (...{leak_context(blob, secrets[name], 80)!r}...)" for name in leaks(blob, secrets)]


# -- what the client gets ----------------------------------------------------------------------

def test_the_hostile_upstream_was_sent_every_credential(traffic: Any, hostile: HostileUpstream) -> None:
    """Otherwise the echoes below would carry nothing worth hiding and prove nothing."""
    seen = "\n".join(json.dumps(r["headers"]) for r in hostile.requests)
    for name, value in HELD.items():
        if name not in ("AWS secret access key", "gateway key", "admin key", "Vertex service-account private key"):
            assert value in seen, f"the upstream never received the {name}"


@pytest.mark.parametrize("status", STATUSES)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_an_echoed_error_reaches_the_client_scrubbed_and_useful(traffic: Any, provider: str, status: int) -> None:
    """Every field of the error and every header the upstream sent carry the credentials; the
    client gets the mapped status and an error in its API's shape, with none of them."""
    problems = []
    for variant in VARIANTS:
        o = traffic[(provider, f"echo-{status}", variant)]
        found = _leaks_in(o.bytes, SECRETS)
        if found:
            problems.append(f"{variant}: the client received {', '.join(found)}")
        want = expected_status(provider, status)
        if o.status != want or not isinstance(o.error, (openai.APIStatusError, anthropic.APIStatusError)):
            problems.append(f"{variant}: HTTP {o.status} and {o.error!r}, expected an SDK status error with HTTP {want}")
            continue
        problems += [f"{variant}: {p}" for p in _shape_problems(variant, o)]
    assert not problems, f"{provider} echo-{status}:\n" + "\n".join(problems)


def _shape_problems(variant: str, o: Outcome) -> list[str]:
    """What is wrong with the error body: OpenAI's shape, or Anthropic's on the Anthropic API."""
    try:
        doc = o.json()
    except ValueError:
        return [f"the error body is not JSON: {o.body[:200]!r}"]
    err = doc.get("error") if isinstance(doc, dict) else None
    if not isinstance(err, dict):
        return [f"no error object in {doc!r:.200}"]
    fields = ("message", "type") if variant.startswith("anthropic") else ("message", "type", "param", "code")
    problems = [f"the error has no '{f}'" for f in fields if f not in err]
    problems += [f"the error's '{f}' is empty" for f in ("message", "type") if not (isinstance(err.get(f), str) and err[f])]
    if variant.startswith("anthropic") and doc.get("type") != "error":
        problems.append("the Anthropic error envelope lacks type: error")
    return problems


@pytest.mark.parametrize("provider", PROVIDERS)
def test_an_error_event_mid_stream_reaches_the_client_scrubbed(traffic: Any, provider: str) -> None:
    """A 200 stream that ends in the schema's in-stream error event, every field of it echoing:
    the client's stream ends in an error the SDK raises, and carries no credential."""
    problems = []
    for variant in STREAM_VARIANTS:
        o = traffic[(provider, "echo-stream", variant)]
        found = _leaks_in(o.bytes, SECRETS)
        if found:
            problems.append(f"{variant}: the client received {', '.join(found)}")
        if o.error is None:
            problems.append(f"{variant}: the stream ended without an error the SDK raised")
    assert not problems, f"{provider} echo-stream:\n" + "\n".join(problems)


@pytest.mark.parametrize("mode", DISGUISED)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_an_error_in_disguise_reaches_the_client_scrubbed(traffic: Any, provider: str, mode: str) -> None:
    """The schema's error envelope, every field echoing, sent with status 200 or 302: whatever
    the gateway makes of it, no credential (held or foreign-shaped) reaches the client."""
    problems = []
    for variant in VARIANTS:
        o = traffic[(provider, mode, variant)]
        found = _leaks_in(o.bytes, SECRETS)
        if found:
            problems.append(f"{variant}: HTTP {o.status}, the client received {', '.join(found)}")
    assert not problems, f"{provider} {mode}:\n" + "\n".join(problems)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_success_echoing_held_credentials_reaches_the_client_without_them(traffic: Any, provider: str) -> None:
    """A 200 answer whose text quotes the credentials the gateway sent: the gateway knows its
    own credentials exactly, so none of them may reach the client. (Credential-*shaped* text
    the gateway does not hold is the model's answer, and is left alone here.)"""
    problems = []
    for variant in VARIANTS:
        o = traffic[(provider, "echo-ok", variant)]
        found = _leaks_in(o.bytes, HELD)
        if found:
            problems.append(f"{variant}: the client received {', '.join(found)}")
    assert not problems, f"{provider} echo-ok:\n" + "\n".join(problems)


@pytest.mark.parametrize("mode", SHARED_MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_an_upstream_echoing_every_providers_credentials_leaks_none(shared_traffic: Any, provider: str, mode: str) -> None:
    """The gateway holds every provider's credentials, not just the one it sent this upstream:
    none may reach the client, whichever provider's upstream echoes them."""
    secrets = HELD if mode == "echo-seen-200" else SECRETS  # in a success, credential-shaped text is the answer
    problems = []
    for variant in VARIANTS:
        o = shared_traffic[(provider, mode, variant)]
        found = _leaks_in(o.bytes, secrets)
        if found:
            problems.append(f"{variant}: the client received {', '.join(found)}")
    assert not problems, f"{provider} {mode}:\n" + "\n".join(problems)


@pytest.mark.parametrize("path,header", [("/v1/chat/completions", "authorization"),
                                         ("/anthropic/v1/messages", "x-api-key"),
                                         ("/anthropic/v1/messages", "authorization")])
def test_a_wrong_client_key_is_not_echoed(gw: GatewayProcess, path: str, header: str) -> None:
    """The admin key, or a near miss of the gateway key, sent as a client key: a 401 that
    quotes neither."""
    for wrong in (ADMIN_KEY, GATEWAY_KEY[:-1] + "X", FOREIGN_CORES["foreign sk- key"]):
        value = f"Bearer {wrong}" if header == "authorization" else wrong
        r = httpx2.post(gw.url + path, headers={header: value, "anthropic-version": "2023-06-01"},
                       json={"model": "openai-echo-400", "max_tokens": 5, "messages": MESSAGES}, timeout=10)
        raw = b"".join(k + b": " + v + b"\r\n" for k, v in r.headers.raw) + r.content
        assert r.status_code == 401
        assert not leaks(raw, {"sent key": wrong, **SECRETS}), raw[:400]


# -- what the gateway's own sinks get ------------------------------------------------------------

def _sink_report(sink: str, blob: bytes, secrets: dict[str, str], unit: str = "line") -> list[str]:
    """One line per leaking unit (log line, metric line, span) of `blob`, naming what leaked."""
    report = []
    for piece in blob.split(b"\n") if unit == "line" else [blob]:
        found = leaks(piece, secrets)
        if found:
            report.append(f"{sink}: {', '.join(found)} in {piece[:300].decode('utf-8', 'replace')}")
    return report


def _summary(report: list[str], most: int = 12) -> str:
    more = f"\n... and {len(report) - most} more" if len(report) > most else ""
    return f"{len(report)} leaks:\n" + "\n".join(report[:most]) + more


def test_no_credential_in_the_access_log_or_stderr(all_traffic: Any, gw: GatewayProcess) -> None:
    time.sleep(0.3)  # the access log flushes once per event-loop turn
    assert any(r.get("request_id", "").startswith("hostile-") for r in gw.log_lines()), "no access log lines"
    report = _sink_report("stdout", gw.stdout_path.read_bytes(), SECRETS)
    report += _sink_report("stderr", gw.stderr_path.read_bytes(), SECRETS)
    assert not report, _summary(report)


def test_a_held_credential_a_client_sends_is_masked_in_the_access_log(gw: GatewayProcess) -> None:
    """A client may send a credential the gateway holds: a provider key pasted as the model
    name (alone, or in text long enough to be cut), in the path, as its request id. The access
    log masks it before cutting (a cut copy is still a leak), and so do the exported spans
    (test_no_credential_in_the_exported_spans, run after this). tests/test_fuzz_upstream.py's
    random examples found this: their request bodies may carry any held credential."""
    sk, session = PROVIDER_KEYS["openai"], AWS_SESSION
    asked = [("/v1/chat/completions", {}, sk), ("/anthropic/v1/messages", {}, f"{sk} {session}"),
             ("/v1/chat/completions", {}, "x" * 150 + session),  # cut at 200 characters, mid-token
             (f"/v1/{sk}/chat/completions", {}, "fuzz-openai"), ("/v1/chat/completions", {"x-request-id": sk}, "gpt")]
    before = gw.stdout_path.stat().st_size
    for path, headers, model in asked:
        r = httpx2.post(gw.url + path, json={"model": model, "max_tokens": 5, "messages": MESSAGES}, timeout=10,
                        headers={"authorization": f"Bearer {GATEWAY_KEY}", "anthropic-version": "2023-06-01", **headers})
        assert r.status_code in (400, 404), r.text
        assert sk not in r.text and session not in r.text, r.text  # the answer's echo of the model or path too
    deadline = time.monotonic() + 5
    while gw.stdout_path.read_bytes()[before:].count(b"\n") < len(asked) and time.monotonic() < deadline:
        time.sleep(0.05)  # the access log flushes once per event-loop turn
    logged = gw.stdout_path.read_bytes()[before:]
    assert logged.count(b"\n") >= len(asked), logged
    report = _sink_report("stdout", logged, SECRETS)
    assert not report, _summary(report)
    assert logged.count(b"***") >= len(asked), logged  # masked, not dropped


def test_no_credential_in_a_metrics_scrape(all_traffic: Any, gw: GatewayProcess) -> None:
    scrape = httpx2.get(gw.url + "/metrics", timeout=10)
    assert scrape.status_code == 200 and b"tollway_requests_total" in scrape.content
    report = _sink_report("/metrics", scrape.content, SECRETS)
    assert not report, _summary(report)


def test_no_credential_in_the_exported_spans(all_traffic: Any, gw: GatewayProcess, collector: FakeCollector) -> None:
    want = {o.request_id for o in all_traffic.values()}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        got = {s["attrs"].get("tollway.request_id") for s in collector.spans()}
        if want <= got:
            break
        time.sleep(0.1)
    assert want <= got, f"{len(want - got)} requests have no exported span, e.g. {sorted(want - got)[:3]}"
    report = []
    for span in collector.spans():
        blob = json.dumps(span).encode()
        found = leaks(blob, SECRETS)
        if found:
            bad = {a["key"] for a in span.get("attributes", []) if leaks(json.dumps(a).encode(), SECRETS)}
            bad |= {k for k in ("name", "status") if leaks(json.dumps(span.get(k)).encode(), SECRETS)}
            report.append(f"span {span.get('name')!r} of {span['attrs'].get('tollway.request_id') or 'its parent'}: "
                          f"{', '.join(found)} in {sorted(bad)}")
    raw = b"".join(collector.bodies)  # and whatever else the exporter sent, resource attributes included
    if not report and leaks(raw, SECRETS):
        report.append(f"the OTLP bodies: {', '.join(_leaks_in(raw, SECRETS))}")
    assert not report, _summary(report)


def test_no_credential_in_the_admin_usage_record(all_traffic: Any, gw: GatewayProcess) -> None:
    r = httpx2.get(gw.url + "/admin/usage", headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=10)
    assert r.status_code == 200
    report = _sink_report("/admin/usage", r.content, SECRETS, unit="all")
    assert not report, _summary(report)


# -- the adversary's other modes, against the fake alone ------------------------------------------
# Paths as the adapters build them (core/providers/*.py), one per wire format.

CHAT_PATHS = {
    "openai": ("/v1/chat/completions", True), "anthropic": ("/v1/messages", True),
    "bedrock": ("/model/{m}/converse", False), "gemini": ("/v1beta/models/{m}:generateContent", False),
}
STREAM_PATHS = {
    "openai": "/v1/chat/completions", "anthropic": "/v1/messages", "bedrock": "/model/{m}/converse-stream",
    "gemini": "/v1beta/models/{m}:streamGenerateContent?alt=sse",
}


def _open(hostile: HostileUpstream, schema: str, model: str, stream: bool, timeout: float = 10) -> tuple[Any, Any]:
    """(connection, response) for `model` on the schema's chat path; the caller reads and closes."""
    if stream:
        path, in_body = STREAM_PATHS[schema], schema in ("openai", "anthropic")
    else:
        path, in_body = CHAT_PATHS[schema]
    body = {"model": model, "stream": stream} if in_body else {}
    conn = http.client.HTTPConnection("127.0.0.1", hostile.server.port, timeout=timeout)
    conn.request("POST", path.format(m=model), json.dumps(body), {"content-type": "application/json"})
    return conn, conn.getresponse()


def _events(schema: str, data: bytes) -> list[bytes]:
    """The stream's events: SSE events split on blank lines, or Bedrock's decoded frames."""
    if schema == "bedrock":
        from botocore.eventstream import EventStreamBuffer

        buf = EventStreamBuffer()
        buf.add_data(data)
        return [m.payload for m in buf]
    return [e for e in re.split(rb"\r?\n\r?\n", data) if e]


def _read_all(resp: Any, keep: int = 16 * MiB) -> tuple[int, bytes]:
    """(size, the first `keep` bytes): reads everything, holds at most `keep`."""
    size, head = 0, bytearray()
    while chunk := resp.read(PIECE_READ):
        size += len(chunk)
        if len(head) < keep:
            head += chunk[:keep - len(head)]
    return size, bytes(head)


PIECE_READ = 256 * 1024


@pytest.mark.parametrize("schema", list(CHAT_PATHS))
def test_fake_huge_ok_is_generated_with_a_declared_length(hostile: HostileUpstream, schema: str) -> None:
    conn, resp = _open(hostile, schema, "huge-ok", stream=False)  # the default: 300 MiB, only the head is read
    assert resp.status == 200 and int(resp.getheader("content-length")) > 300 * MiB
    assert resp.read(64 * 1024).startswith(b"{")
    conn.close()
    conn, resp = _open(hostile, schema, "huge-ok-3", stream=False)
    size, body = _read_all(resp)
    assert size == int(resp.getheader("content-length")) > 3 * MiB
    assert isinstance(json.loads(body), dict)
    conn.close()


@pytest.mark.parametrize("schema", list(CHAT_PATHS))
def test_fake_huge_error_is_a_chunked_error_envelope(hostile: HostileUpstream, schema: str) -> None:
    conn, resp = _open(hostile, schema, "huge-error", stream=False)
    assert resp.status == 500 and resp.getheader("transfer-encoding") == "chunked"
    assert resp.read(64 * 1024).startswith(b"{")
    conn.close()
    conn, resp = _open(hostile, schema, "huge-error-3", stream=False)
    size, body = _read_all(resp)
    assert resp.status == 500 and size > 3 * MiB
    assert isinstance(json.loads(body), dict)
    conn.close()


@pytest.mark.parametrize("schema", list(STREAM_PATHS))
@pytest.mark.parametrize("mode,good_first", [("huge-event-2", 0), ("huge-event-late-2", 3)])
def test_fake_huge_event_is_one_event_megabytes_long(hostile: HostileUpstream, schema: str, mode: str, good_first: int) -> None:
    conn, resp = _open(hostile, schema, mode, stream=True)
    _, data = _read_all(resp)
    conn.close()
    sizes = [len(e) for e in _events(schema, data)]
    huge = [i for i, n in enumerate(sizes) if n >= 2 * MiB]
    assert len(huge) == 1, sizes
    opening = {"openai": 1, "anthropic": 2, "bedrock": 1, "gemini": 0}[schema] if good_first else 0
    assert huge[0] == opening + good_first and all(n < 4096 for i, n in enumerate(sizes) if i != huge[0])


@pytest.mark.parametrize("schema", list(STREAM_PATHS))
def test_fake_firehose_is_a_valid_stream_of_the_asked_size(hostile: HostileUpstream, schema: str) -> None:
    conn, resp = _open(hostile, schema, "firehose-4", stream=True)
    size, data = _read_all(resp)
    conn.close()
    events = _events(schema, data)
    assert size >= 4 * MiB and len(events) > 1000
    assert events[-1].endswith({"openai": b"data: [DONE]", "anthropic": b'{"type": "message_stop"}',
                                "bedrock": b"}", "gemini": b'"resp-hostile"}'}[schema])


@pytest.mark.parametrize("schema", list(CHAT_PATHS))
@pytest.mark.parametrize("stream", [False, True])
def test_fake_gzip_is_the_normal_answer_compressed(hostile: HostileUpstream, schema: str, stream: bool) -> None:
    conn, resp = _open(hostile, schema, "gzip", stream=stream)
    raw = resp.read()
    conn.close()
    assert resp.status == 200 and resp.getheader("content-encoding") == "gzip"
    plain = gzip.decompress(raw)
    if stream:
        assert len(_events(schema, plain)) >= 2
    else:
        assert isinstance(json.loads(plain), dict)


@pytest.mark.parametrize("schema", list(CHAT_PATHS))
def test_fake_garbage_is_not_json(hostile: HostileUpstream, schema: str) -> None:
    conn, resp = _open(hostile, schema, "garbage", stream=False)
    raw = resp.read()
    conn.close()
    assert resp.status == 200 and resp.getheader("content-type").startswith("application/json")
    with pytest.raises(ValueError):
        json.loads(raw)


@pytest.mark.parametrize("schema", list(STREAM_PATHS))
def test_fake_garbage_stream_is_binary_under_a_stream_content_type(hostile: HostileUpstream, schema: str) -> None:
    conn, resp = _open(hostile, schema, "garbage-stream", stream=True)
    raw = resp.read()
    conn.close()
    assert resp.status == 200 and resp.getheader("content-type") in ("text/event-stream", "application/vnd.amazon.eventstream")
    assert b"\x00" in raw and b"\xff" in raw and len(raw) > 8000


def test_fake_stall_never_answers(hostile: HostileUpstream) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", hostile.server.port, timeout=0.5)
    conn.request("POST", "/v1/chat/completions", json.dumps({"model": "stall"}), {"content-type": "application/json"})
    with pytest.raises((socket.timeout, TimeoutError)):
        conn.getresponse()
    conn.close()


def test_fake_stall_body_sends_headers_then_nothing(hostile: HostileUpstream) -> None:
    conn, resp = _open(hostile, "anthropic", "stall-body", stream=False, timeout=0.5)
    assert resp.status == 200 and resp.getheader("content-length") == "4096"
    with pytest.raises((socket.timeout, TimeoutError)):
        resp.read(1)
    conn.close()


@pytest.mark.parametrize("schema", list(STREAM_PATHS))
def test_fake_trickle_drips_a_valid_stream(hostile: HostileUpstream, schema: str) -> None:
    conn, resp = _open(hostile, schema, "trickle-2", stream=True)
    start, got = time.monotonic(), b""
    while len(got) < 60:
        got += resp.read1(64)
    assert time.monotonic() - start >= 60 * 0.002 * 0.8  # one byte at a time, 2 ms apart
    conn.close()
    prefix = {"openai": b"data: {", "anthropic": b"event: message_start", "bedrock": b"\x00\x00", "gemini": b"data: {"}
    assert got.startswith(prefix[schema])


def test_a_held_credential_a_client_sends_stays_out_of_the_ledger(tmp_path):
    """The model name, a `match:` route's upstream model and the request id are client text
    that reaches the usage ledger: a credential the gateway holds, pasted there, is masked."""
    import sqlite3

    from tests.fakes.openai_upstream import FakeOpenAI
    from tests.harness import ADMIN_KEY, TEST_KEY, GatewayProcess, key_hash

    secret = "sk-proj-heldByTheGateway-Qw8Er7Ty6Ui5Op4"
    fake = FakeOpenAI()
    db = tmp_path / "t.db"
    gw = GatewayProcess(f"""
providers: [{{name: up, schema: openai, base_url: {fake.url}, api_key: {secret}}}]
models: [{{name: any, match: ".*", targets: [{{provider: up}}]}}]
keys: [{{name: k, key_hash: "{key_hash(TEST_KEY)}"}}]
admin: {{key_hash: "{key_hash(ADMIN_KEY)}"}}
store: {{backend: sqlite, path: {db}}}
ledger: {{flush_interval: 0.05}}
""")
    try:
        import urllib.request
        body = json.dumps({"model": f"x {secret} y", "messages": [{"role": "user", "content": "hi"}]}).encode()
        for headers in ({}, {"x-request-id": secret}):
            req = urllib.request.Request(gw.url + "/v1/chat/completions", data=body, method="POST",
                                         headers={"authorization": f"Bearer {TEST_KEY}", "content-type": "application/json",
                                                  **headers})
            with urllib.request.urlopen(req, timeout=10) as r:
                assert r.status == 200
        time.sleep(0.5)
    finally:
        gw.stop()
        fake.stop()
    rows = sqlite3.connect(db).execute("SELECT * FROM usage_records").fetchall()
    assert len(rows) == 2
    dump = repr(rows)
    assert secret not in dump and secret[:16] not in dump and "***" in dump
