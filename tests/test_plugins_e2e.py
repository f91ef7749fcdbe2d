"""Plugins end to end (issue 15, docs/plugins.md): a real gateway, the official OpenAI SDK, the
fake OpenAI upstream. Each stage's allow / replace / reject; a stream stopped by a plugin ends
with an SSE error event; timeouts and exceptions in both on_error modes (closed: 503 naming
the plugin, never its traceback; open: skipped and counted in /metrics); scope by key, team
and model; the three example plugins; a plugin that fails to load refuses `serve` and a reload."""
from __future__ import annotations

import json
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from aiohttp import web

from examples.plugins.jwt_auth import sign
from tests.fakes.openai_upstream import FakeOpenAI
from tests.harness import (
    ADMIN_KEY,
    OTHER_KEY,
    TEST_KEY,
    UPSTREAM_SECRET,
    GatewayProcess,
    ThreadedServer,
    key_hash,
    post_and_leave,
)

JWT_SECRET = "a-shared-secret-of-some-length-0123"
MESSAGES = [{"role": "user", "content": "hello there"}]
SCRIPTED = "tests.plugin_fixture:scripted"

# (plugin name, the fixture's config, the models it is scoped to, extra entry fields)
SCRIPTS: list[tuple[str, dict[str, str], str, str]] = [
    ("req-rejecter", {"on_request": "reject"}, "req-reject", ""),
    ("req-replacer", {"on_request": "replace"}, "req-replace", ""),
    ("model-switcher", {"on_request": "replace_model"}, "switch-model", ""),
    ("chunk-upper", {"on_chunk": "replace"}, "chunk-replace", ""),
    ("chunk-stopper", {"on_chunk": "stop"}, "chunk-stop", ""),
    ("resp-censor", {"on_response": "replace"}, "resp-replace", ""),
    ("resp-rejecter", {"on_response": "reject"}, "resp-reject", ""),
    ("sleepy-open", {"on_request": "sleep"}, "slow-open", "timeout_ms: 50, on_error: open"),
    ("sleepy-closed", {"on_request": "sleep"}, "slow-closed", "timeout_ms: 50, on_error: closed"),
    ("raiser-open", {"on_request": "raise"}, "raise-open", "on_error: open"),
    ("raiser-closed", {"on_request": "raise"}, "raise-closed", "on_error: closed"),
    ("chunk-raiser-closed", {"on_chunk": "raise"}, "chunk-raise-closed", "on_error: closed"),
    ("chunk-surrogate-open", {"on_chunk": "surrogate"}, "chunk-surrogate-open", "on_error: open"),
    ("chunk-surrogate-closed", {"on_chunk": "surrogate"}, "chunk-surrogate-closed", "on_error: closed"),
    ("chunk-surrogate-stop", {"on_chunk": "surrogate_stop"}, "chunk-surrogate-stop", "on_error: open"),
    ("surrogate-reject", {"on_request": "surrogate"}, "surrogate-reject", "on_error: open"),
    ("resp-sleepy-open", {"on_response": "sleep"}, "resp-slow-open", "timeout_ms: 50"),
    ("bad-result-closed", {"on_request": "bad"}, "bad-closed", "on_error: closed"),
    ("canceller-open", {"on_request": "cancelled"}, "cancel-open", "on_error: open"),
    ("canceller-closed", {"on_request": "cancelled"}, "cancel-closed", "on_error: closed"),
    ("bad-reject-open", {"on_request": "bad_reject"}, "bad-reject-open", "on_error: open"),
    ("deaf-open", {"on_request": "deaf"}, "deaf-open", "timeout_ms: 50, on_error: open"),
    ("deaf-closed", {"on_request": "deaf"}, "deaf-closed", "timeout_ms: 50, on_error: closed"),
    ("exiter-open", {"on_request": "exit"}, "exit-open", "on_error: open"),
    ("exiter-closed", {"on_request": "exit"}, "exit-closed", "on_error: closed"),
    ("interrupter-open", {"on_request": "interrupt"}, "interrupt-open", "on_error: open"),
    ("interrupter-closed", {"on_request": "interrupt"}, "interrupt-closed", "on_error: closed"),
    ("chunk-deaf-open", {"on_chunk": "deaf"}, "chunk-deaf-open", "timeout_ms: 50, on_error: open"),
    # (the fake's long-stream has text in its first chunk: the hook runs before anything is sent)
    ("chunk-sleepy-open", {"on_chunk": "sleep"}, "long-stream", "timeout_ms: 2500, on_error: open"),
    ("bad-replace-open", {"on_request": "bad_replace"}, "bad-replace-open", "on_error: open"),
    ("resp-bad-reject-open", {"on_response": "bad_reject"}, "resp-bad-reject-open", "on_error: open"),
    ("resp-bad-replace-open", {"on_response": "bad_replace"}, "resp-bad-replace-open", "on_error: open"),
    ("resp-bad-replace-closed", {"on_response": "bad_replace"}, "resp-bad-replace-closed", "on_error: closed"),
]
MODELS = ["gpt-4o-mini", "scoped", "tagged", *(models for _, _, models, _ in SCRIPTS)]


class Receiver:
    """A fake webhook receiver: the JSON bodies POSTed to it."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        self.server = ThreadedServer(self._app)
        self.url = f"http://127.0.0.1:{self.server.port}/hook"

    def _app(self) -> web.Application:
        app = web.Application()

        async def hook(request: web.Request) -> web.Response:
            self.posts.append(await request.json())
            return web.Response(status=204)
        app.router.add_post("/hook", hook)
        return app

    def wait_for(self, request_id: str, timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for post in self.posts:
                if post.get("request_id") == request_id:
                    return post
            time.sleep(0.05)
        raise AssertionError(f"no webhook post for {request_id}: {self.posts}")


def _config(upstream: str, hook: str) -> str:
    entries = "\n".join(f"  - {{name: {name}, module: \"{SCRIPTED}\", config: {json.dumps(cfg)}, "
                        f"scope: {{models: [{models}]}}{', ' + extra if extra else ''}}}"
                        for name, cfg, models, extra in SCRIPTS)
    models = "\n".join(f"  - {{name: {m}, targets: [{{provider: up}}]}}" for m in MODELS)
    return f"""
providers:
  - {{name: up, schema: openai, base_url: {upstream}, api_key: {UPSTREAM_SECRET}}}
models:
{models}
keys:
  - {{name: alice, key_hash: "{key_hash(TEST_KEY)}", team: search}}
  - {{name: bob, key_hash: "{key_hash(OTHER_KEY)}", team: ads}}
teams:
  - {{name: search}}
  - {{name: ads}}
plugins:
{entries}
  - {{name: bob-only, module: "{SCRIPTED}", config: {{on_request: reject}}, scope: {{keys: [bob], models: [scoped]}}}}
  - {{name: ads-only, module: "{SCRIPTED}", config: {{on_request: replace}}, scope: {{teams: [ads], models: [scoped]}}}}
  - name: jwt
    module: "examples.plugins.jwt_auth:factory"
    config: {{secret: {JWT_SECRET}, claim: tollway_key, audience: tollway}}
  - name: tagger
    module: "examples.plugins.tagger:factory"
    config: {{tags: ["app=search"], team_tag: true, metadata: {{cost_center: "cc-42"}}}}
    scope: {{models: [tagged]}}
  - name: webhook
    module: "examples.plugins.webhook:factory"
    config: {{url: "{hook}"}}
    timeout_ms: 3000
    scope: {{models: [tagged]}}
"""


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.stop()


@pytest.fixture(scope="module")
def gw(upstream: FakeOpenAI, receiver: Receiver) -> Iterator[GatewayProcess]:
    process = GatewayProcess(_config(upstream.url, receiver.url))
    yield process
    process.stop()


def _client(gw: GatewayProcess, key: str = TEST_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)


def _chat(gw: GatewayProcess, model: str, key: str = TEST_KEY, **kw: Any) -> Any:
    return _client(gw, key).chat.completions.create(model=model, messages=MESSAGES, **kw)


def _stream_text(gw: GatewayProcess, model: str) -> str:
    stream = _client(gw).chat.completions.create(model=model, messages=MESSAGES, stream=True)
    return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


def _metrics(gw: GatewayProcess) -> str:
    with urllib.request.urlopen(gw.url + "/metrics", timeout=5) as r:
        return r.read().decode()


# -- on_request ------------------------------------------------------------------------------

def test_no_plugin_in_scope_passes_the_request_untouched(gw: GatewayProcess, upstream: FakeOpenAI) -> None:
    answer = _chat(gw, "gpt-4o-mini")
    assert answer.choices[0].message.content
    assert upstream.last("/chat/completions")["body"]["messages"] == MESSAGES


def test_on_request_reject_answers_the_plugins_status_and_message(gw: GatewayProcess, upstream: FakeOpenAI) -> None:
    before = len(upstream.requests)
    with pytest.raises(openai.APIStatusError) as caught:
        _chat(gw, "req-reject")
    assert caught.value.status_code == 451
    error = caught.value.body
    assert error["code"] == "plugin_rejected" and "req-rejecter" in error["message"] and "alice" in error["message"]
    assert len(upstream.requests) == before  # never sent upstream


def test_on_request_replace_sends_the_new_body_upstream(gw: GatewayProcess, upstream: FakeOpenAI) -> None:
    _chat(gw, "req-replace")
    sent = upstream.last("/chat/completions")["body"]
    assert sent["messages"] == [{"role": "user", "content": "REPLACED BY PLUGIN"}]
    assert sent["model"] == "req-replace"


def test_a_replaced_bodys_model_is_set_back_to_the_admitted_one(gw: GatewayProcess, upstream: FakeOpenAI) -> None:
    """The route's upstream model has the route's name, so the adapter forwards the body as it
    is: the plugin's "gpt-4o" must not reach the upstream past the route, limits and prices."""
    _chat(gw, "switch-model")
    assert upstream.last("/chat/completions")["body"]["model"] == "switch-model"


# -- on_chunk --------------------------------------------------------------------------------

def test_on_chunk_replace_rewrites_each_streamed_delta(gw: GatewayProcess) -> None:
    plain, upper = _stream_text(gw, "gpt-4o-mini"), _stream_text(gw, "chunk-replace")
    assert plain and upper == plain.upper() and upper != plain


def test_on_chunk_stop_ends_the_stream_with_an_sse_error_event(gw: GatewayProcess) -> None:
    got: list[str] = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in _client(gw).chat.completions.create(model="chunk-stop", messages=MESSAGES, stream=True):
            got.extend(c.delta.content or "" for c in chunk.choices)
    assert "chunk-stopper" in caught.value.message and "the plugin saw enough" in caught.value.message
    assert caught.value.body["code"] == "plugin_stopped"
    assert "".join(got) == ""  # the stopped delta never reached the client


def test_on_chunk_failure_when_closed_ends_the_stream_naming_the_plugin(gw: GatewayProcess) -> None:
    with pytest.raises(openai.APIError) as caught:
        _stream_text(gw, "chunk-raise-closed")
    assert caught.value.body["code"] == "plugin_failed" and "chunk-raiser-closed" in caught.value.message
    assert "SECRET-TRACEBACK-DETAIL" not in caught.value.message


@pytest.mark.parametrize("model, plugin", [("chunk-surrogate-open", "chunk-surrogate-open"),
                                           ("chunk-surrogate-stop", "chunk-surrogate-stop")])
def test_on_chunk_text_that_cannot_be_encoded_is_an_invalid_result_when_open(gw: GatewayProcess, model: str,
                                                                            plugin: str) -> None:
    """A lone surrogate cannot be written as UTF-8: the plugin's verdict is unusable, so it is
    skipped (the delta goes out as it came), not the stream's internal_error."""
    assert _stream_text(gw, model) == _stream_text(gw, "gpt-4o-mini")
    assert f'tollway_plugin_errors_total{{kind="invalid_result",plugin="{plugin}",stage="on_chunk"}}' in _metrics(gw)


def test_on_chunk_text_that_cannot_be_encoded_when_closed_ends_the_stream_naming_the_plugin(gw: GatewayProcess) -> None:
    with pytest.raises(openai.APIError) as caught:
        _stream_text(gw, "chunk-surrogate-closed")
    assert caught.value.body["code"] == "plugin_failed" and "chunk-surrogate-closed" in caught.value.message


def test_a_client_that_leaves_during_a_slow_first_on_chunk_keeps_the_status_it_got(gw: GatewayProcess) -> None:
    # The 200 head goes out before the first chunk's hooks run; a plugin that awaits on that
    # chunk held the answer "not started", so the watchdog's cancellation for the vanished
    # client wrote a 499 (and no time to first byte) for a client that had read "HTTP/1.1 200".
    body = {"model": "long-stream", "messages": MESSAGES, "stream": True}
    assert post_and_leave(gw.port, "/v1/chat/completions", body, "slow-chunk-left").startswith(b"HTTP/1.1 200")
    line = gw.log_line("slow-chunk-left")
    assert (line["status"], line["error"]) == (200, "client_closed")
    assert line["ttfb_ms"] is not None


# -- on_response -----------------------------------------------------------------------------

def test_on_response_replace_changes_the_answer(gw: GatewayProcess) -> None:
    assert _chat(gw, "resp-replace").choices[0].message.content == "censored"


def test_on_response_reject_answers_the_plugins_error(gw: GatewayProcess) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        _chat(gw, "resp-reject")
    assert caught.value.status_code == 502
    assert caught.value.body["code"] == "plugin_rejected" and "resp-rejecter" in caught.value.body["message"]


def test_on_response_timeout_when_open_passes_the_answer(gw: GatewayProcess) -> None:
    assert _chat(gw, "resp-slow-open").choices[0].message.content
    assert 'tollway_plugin_errors_total{kind="timeout",plugin="resp-sleepy-open",stage="on_response"}' in _metrics(gw)


# -- timeouts and exceptions, both modes ---------------------------------------------------

@pytest.mark.parametrize("model, plugin, stage, kind", [
    ("slow-closed", "sleepy-closed", "on_request", "timeout"),
    ("raise-closed", "raiser-closed", "on_request", "exception"),
    ("bad-closed", "bad-result-closed", "on_request", "invalid_result"),
    ("cancel-closed", "canceller-closed", "on_request", "exception"),  # not "the gateway is shutting down"
    ("deaf-closed", "deaf-closed", "on_request", "timeout"),  # it swallows its cancellation: abandoned
    ("exit-closed", "exiter-closed", "on_request", "exception"),  # SystemExit: the plugin's, not the worker's
    ("interrupt-closed", "interrupter-closed", "on_request", "exception"),
    ("resp-bad-replace-closed", "resp-bad-replace-closed", "on_response", "invalid_result"),
])
def test_a_closed_plugins_failure_is_a_503_naming_it(gw: GatewayProcess, model: str, plugin: str, stage: str,
                                                     kind: str) -> None:
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as caught:
        _chat(gw, model)
    assert time.monotonic() - started < 2  # bounded by timeout_ms, not the plugin's 5 s sleep
    assert caught.value.status_code == 503
    body = caught.value.body
    assert body["code"] == "plugin_failed" and plugin in body["message"]
    assert "SECRET-TRACEBACK-DETAIL" not in json.dumps(body) and "Traceback" not in json.dumps(body)
    assert f'tollway_plugin_errors_total{{kind="{kind}",plugin="{plugin}",stage="{stage}"}}' in _metrics(gw)


@pytest.mark.parametrize("model, stream", [("deaf-open", False), ("chunk-deaf-open", True)])
def test_a_stage_that_swallows_its_timeout_is_abandoned_at_the_timeout(gw: GatewayProcess, model: str,
                                                                       stream: bool) -> None:
    """The stage catches the CancelledError its timeout sends and keeps awaiting (5 s): the
    request goes on at timeout_ms, without waiting for it."""
    started = time.monotonic()
    text = _stream_text(gw, model) if stream else _chat(gw, model).choices[0].message.content
    assert text and time.monotonic() - started < 2
    stage = "on_chunk" if stream else "on_request"
    assert f'tollway_plugin_errors_total{{kind="timeout",plugin="{model}",stage="{stage}"}}' in _metrics(gw)


@pytest.mark.parametrize("model, plugin, stage, kind", [
    ("slow-open", "sleepy-open", "on_request", "timeout"),
    ("raise-open", "raiser-open", "on_request", "exception"),
    ("cancel-open", "canceller-open", "on_request", "exception"),
    ("exit-open", "exiter-open", "on_request", "exception"),
    ("interrupt-open", "interrupter-open", "on_request", "exception"),
    # a malformed verdict is the plugin's failure (on_error decides), never the gateway's 500
    ("bad-reject-open", "bad-reject-open", "on_request", "invalid_result"),
    ("surrogate-reject", "surrogate-reject", "on_request", "invalid_result"),  # a message that cannot be encoded
    ("bad-replace-open", "bad-replace-open", "on_request", "invalid_result"),
    ("resp-bad-reject-open", "resp-bad-reject-open", "on_response", "invalid_result"),
    ("resp-bad-replace-open", "resp-bad-replace-open", "on_response", "invalid_result"),
])
def test_an_open_plugins_failure_is_skipped_counted_and_logged_once(gw: GatewayProcess, model: str, plugin: str,
                                                                     stage: str, kind: str) -> None:
    for _ in range(3):
        assert _chat(gw, model).choices[0].message.content
    series = f'tollway_plugin_errors_total{{kind="{kind}",plugin="{plugin}",stage="{stage}"}} 3.0'
    assert series in _metrics(gw)
    logged = [line for line in gw.stderr().splitlines() if '"plugin_error"' in line and f'"{plugin}"' in line]
    assert len(logged) == 1  # one incident, one line (the operator's: an exception's traceback is in it)


# -- scope -----------------------------------------------------------------------------------

def test_scope_by_key_and_team(gw: GatewayProcess, upstream: FakeOpenAI) -> None:
    _chat(gw, "scoped", TEST_KEY)  # alice (team search): neither bob-only nor ads-only applies
    assert upstream.last("/chat/completions")["body"]["messages"] == MESSAGES
    with pytest.raises(openai.APIStatusError) as caught:  # bob: bob-only rejects
        _chat(gw, "scoped", OTHER_KEY)
    assert caught.value.status_code == 451 and "bob-only" in caught.value.body["message"]


def test_scope_by_model(gw: GatewayProcess) -> None:
    assert _chat(gw, "req-replace").choices[0].message.content  # in scope of req-replacer only
    assert _chat(gw, "gpt-4o-mini", OTHER_KEY).choices[0].message.content  # no plugin's scope


# -- the example plugins ---------------------------------------------------------------------

def test_jwt_authorizer_accepts_a_token_in_place_of_a_gateway_key(gw: GatewayProcess, receiver: Receiver) -> None:
    token = sign({"tollway_key": "bob", "aud": "tollway", "exp": time.time() + 60}, JWT_SECRET)
    raw = _client(gw, token).chat.completions.with_raw_response.create(model="tagged", messages=MESSAGES)
    record = receiver.wait_for(raw.headers["x-request-id"])
    assert record["key"] == "bob" and record["team"] == "ads"


@pytest.mark.parametrize("claims, secret", [
    ({"tollway_key": "bob", "aud": "tollway", "exp": time.time() + 60}, "another-secret-of-some-length-0"),
    ({"tollway_key": "bob", "aud": "tollway", "exp": time.time() - 3600}, JWT_SECRET),
    ({"tollway_key": "bob", "aud": "elsewhere", "exp": time.time() + 60}, JWT_SECRET),
    ({"tollway_key": "nobody", "aud": "tollway", "exp": time.time() + 60}, JWT_SECRET),
])
def test_jwt_authorizer_refuses_bad_tokens_with_the_gateways_401(gw: GatewayProcess, claims: dict, secret: str) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        _chat(gw, "gpt-4o-mini", sign(claims, secret))
    assert caught.value.body["code"] == "invalid_api_key"


def test_tagger_and_webhook_sink(gw: GatewayProcess, upstream: FakeOpenAI, receiver: Receiver) -> None:
    raw = _client(gw).chat.completions.with_raw_response.create(model="tagged", messages=MESSAGES)
    assert raw.parse().choices[0].message.content
    assert upstream.last("/chat/completions")["body"]["metadata"] == {"cost_center": "cc-42"}
    record = receiver.wait_for(raw.headers["x-request-id"])
    assert record["key"] == "alice" and record["status"] == 200 and record["output_tokens"] > 0
    assert record["tags"] == ["app=search", "team=search"]
    assert record["metadata"]["tagger"]["metadata"] == {"cost_center": "cc-42"}
    assert "hello there" not in json.dumps(record)  # no prompt in a usage record


def test_webhook_gets_refused_requests_too(gw: GatewayProcess, receiver: Receiver) -> None:
    with pytest.raises(openai.BadRequestError):
        _client(gw).chat.completions.create(model="tagged", messages=MESSAGES, extra_headers={"x-tollway-tags": "not a tag!"})
    assert any(p.get("status") == 400 and p.get("key") == "alice" for p in _wait_posts(receiver))


def _wait_posts(receiver: Receiver, timeout: float = 5.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not any(p.get("status") == 400 for p in receiver.posts):
        time.sleep(0.05)
    return receiver.posts


# -- loading -----------------------------------------------------------------------------------

@pytest.mark.parametrize("entry, says", [
    ('{name: gone, module: "tests.no_such_module:factory"}', "cannot import tests.no_such_module"),
    ('{name: broken, module: "tests.plugin_fixture:broken"}', "the broken plugin's factory always fails"),
    ('{name: idle, module: "tests.plugin_fixture:nothing"}', "defines none of"),
    ("{name: not-installed}", "no entry point named 'not-installed'"),
])
def test_a_plugin_that_fails_to_load_refuses_serve(upstream: FakeOpenAI, entry: str, says: str) -> None:
    config = f"""
providers: [{{name: up, schema: openai, base_url: {upstream.url}, api_key: {UPSTREAM_SECRET}}}]
models: [{{name: gpt-4o-mini, targets: [{{provider: up}}]}}]
keys: [{{name: alice, key_hash: "{key_hash(TEST_KEY)}"}}]
plugins: [{entry}]
"""
    with pytest.raises(RuntimeError) as caught:
        GatewayProcess(config)
    refused = [json.loads(line) for line in str(caught.value).splitlines() if '"refused"' in line]
    assert refused and says in refused[0]["message"] and "plugin '" in refused[0]["message"]


def test_a_reload_with_a_plugin_that_fails_to_load_keeps_the_old_config(upstream: FakeOpenAI) -> None:
    base = f"""
providers: [{{name: up, schema: openai, base_url: {upstream.url}, api_key: {UPSTREAM_SECRET}}}]
models: [{{name: gpt-4o-mini, targets: [{{provider: up}}]}}]
keys: [{{name: alice, key_hash: "{key_hash(TEST_KEY)}"}}]
server: {{reload_check_interval: 0}}
"""
    gw = GatewayProcess(base)
    try:
        gw.config_path.write_text(base + 'plugins: [{name: broken, module: "tests.plugin_fixture:broken"}]\n')
        gw.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "rejected" not in gw.stderr() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "plugin 'broken' could not be loaded" in gw.stderr()
        assert _chat(gw, "gpt-4o-mini").choices[0].message.content  # still serving the old config
    finally:
        gw.stop()


def test_key_changes_do_not_run_plugin_factories_again(upstream: FakeOpenAI, tmp_path: Path) -> None:
    """Factories run at start and on a config reload only (docs/plugins.md). A run-time key change
    rebuilds the keys, limits and budgets, not the plugins: a factory that would fail now (here:
    its policy file is gone) neither runs nor keeps a revocation from applying."""
    runs, fail_while = tmp_path / "runs", tmp_path / "fail"
    gw = GatewayProcess(f"""
providers: [{{name: up, schema: openai, base_url: {upstream.url}, api_key: {UPSTREAM_SECRET}}}]
models: [{{name: gpt-4o-mini, targets: [{{provider: up}}]}}]
admin: {{key_hash: "{key_hash(ADMIN_KEY)}"}}
store: {{backend: sqlite, path: {tmp_path / "tollway.db"}}}
plugins: [{{name: counted, module: "tests.plugin_fixture:counted", config: {{runs: "{runs}", fail_while: "{fail_while}"}}}}]
""")
    try:
        started = runs.read_text().count("run")
        made = _admin(gw, "POST", "/admin/keys", {"name": "svc", "budget": {"usd": 100, "period": "month"}})
        _admin(gw, "POST", "/admin/keys", {"name": "other", "limits": [{"requests": 100, "per": "1m"}]})
        assert _chat(gw, "gpt-4o-mini", made["key"]).choices[0].message.content
        fail_while.touch()
        assert _admin(gw, "POST", f"/admin/keys/{made['id']}/revoke")["status"] == "revoked"
        with pytest.raises(openai.AuthenticationError, match="revoked"):
            _chat(gw, "gpt-4o-mini", made["key"])
        assert runs.read_text().count("run") == started, "no factory ran for a key change"
        assert "Exception in callback" not in gw.stderr()
    finally:
        gw.stop()


def test_authenticate_is_offered_no_revoked_gateway_key(upstream: FakeOpenAI, tmp_path: Path) -> None:
    """docs/plugins.md: `authenticate` runs only for a credential that is not a gateway key. A
    revoked key is one (its 401 says so): it must not be handed to plugin code, which might map
    it to a key again. An unknown credential still is."""
    seen = tmp_path / "seen"
    gw = GatewayProcess(f"""
providers: [{{name: up, schema: openai, base_url: {upstream.url}, api_key: {UPSTREAM_SECRET}}}]
models: [{{name: gpt-4o-mini, targets: [{{provider: up}}]}}]
admin: {{key_hash: "{key_hash(ADMIN_KEY)}"}}
store: {{backend: sqlite, path: {tmp_path / "tollway.db"}}}
plugins: [{{name: offered, module: "tests.plugin_fixture:offered", config: {{seen: "{seen}"}}}}]
""")
    try:
        made = _admin(gw, "POST", "/admin/keys", {"name": "svc"})
        assert _admin(gw, "POST", f"/admin/keys/{made['id']}/revoke")["status"] == "revoked"
        with pytest.raises(openai.AuthenticationError, match="revoked"):
            _chat(gw, "gpt-4o-mini", made["key"])
        with pytest.raises(openai.AuthenticationError):
            _chat(gw, "gpt-4o-mini", "not-a-gateway-key")
        offered = seen.read_text().splitlines()
        assert offered == ["Bearer not-a-gateway-key"], offered
    finally:
        gw.stop()


def _admin(gw: GatewayProcess, method: str, path: str, body: object = None) -> Any:
    request = urllib.request.Request(gw.url + path, json.dumps(body).encode() if body is not None else None,
                                     method=method, headers={"authorization": f"Bearer {ADMIN_KEY}",
                                                             "content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())


def test_on_chunk_sees_the_anthropic_apis_text_deltas(gw: GatewayProcess) -> None:
    import anthropic
    ant = anthropic.Anthropic(base_url=gw.url + "/anthropic", api_key=TEST_KEY, max_retries=0)
    texts = {}
    for model in ("gpt-4o-mini", "chunk-replace"):
        with ant.messages.stream(model=model, max_tokens=50, messages=[{"role": "user", "content": "hi"}]) as s:
            texts[model] = "".join(s.text_stream)
    assert texts["gpt-4o-mini"] and texts["chunk-replace"] == texts["gpt-4o-mini"].upper()
