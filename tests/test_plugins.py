"""Plugins in parts (docs/plugins.md): the config entries' checks, the pipeline with and without
plugins, the stream deltas a plugin sees (OpenAI text and tool-call arguments, Anthropic
text and JSON deltas), the headers it may see, the bound on queued on_complete calls, and
discovery through the `tollway.plugins` entry-point group."""
from __future__ import annotations

import asyncio
import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.openai_upstream import FakeOpenAI
from tests.harness import TEST_KEY, UPSTREAM_SECRET, GatewayProcess, key_hash
from tollway.core import config
from tollway.core.config import Plugin
from tollway.gateway.exchange import Exchange
from tollway.gateway.pipeline import EMPTY
from tollway.gateway.plugins import hooks
from tollway.gateway.plugins.api import PASS, Reject, Replace, RequestContext, Stop
from tollway.gateway.plugins.hooks import PluginSet, PluginState
from tollway.gateway.plugins.loader import PluginLoadError, load

BASE = """
providers: [{name: up, schema: openai, base_url: "http://127.0.0.1:1/v1"}]
models: [{name: m, targets: [{provider: up}]}]
"""


def _problems(plugins: str) -> list[str]:
    return [str(e) for e in config.check(BASE + plugins, {}).errors]


def test_plugin_entries_are_checked() -> None:
    found = _problems("""plugins:
  - {name: a, module: "pkg.mod:factory"}
  - {name: a, module: "no-colon"}
  - {name: b, module: "pkg.mod:f", timeout_ms: 0}
  - {name: c, module: "pkg.mod:f", on_error: maybe}
""")
    text = "\n".join(found)
    assert "duplicate name 'a'" in text
    assert "expected 'package.module:factory'" in text
    assert "timeout_ms: must be a finite number of milliseconds > 0" in text
    assert "on_error" in text and "maybe" in text


def test_a_plugin_entry_decodes_with_defaults() -> None:
    cfg = config.loads(BASE + 'plugins: [{name: p, module: "x.y:z", config: {a: 1}, scope: {teams: [t]}}]\n')
    p = cfg.plugins[0]
    assert (p.timeout_ms, p.on_error, p.config, p.scope.teams) == (50.0, "open", {"a": 1}, ["t"])


def test_no_plugins_no_hooks() -> None:
    assert PluginSet(()).pipeline() == EMPTY
    assert EMPTY.join(EMPTY) is EMPTY


def test_a_plugin_gets_hooks_only_for_the_stages_it_defines() -> None:
    loaded = load(Plugin("p", "tests.plugin_fixture:scripted", {"on_response": "allow"}))
    pipeline = PluginSet([loaded]).pipeline()
    assert loaded.stages.keys() == {"on_response"}
    assert pipeline.on_answer and pipeline.before_upstream
    assert not (pipeline.on_chunk_async or pipeline.after_response or pipeline.authenticate or pipeline.on_chunk)


def test_a_sync_stage_is_refused_at_load() -> None:
    class Sync:
        def on_request(self, ctx: Any) -> None:
            return None
    import tests.plugin_fixture as fixture
    fixture.sync_factory = lambda cfg: Sync()  # type: ignore[attr-defined]
    with pytest.raises(PluginLoadError, match="on_request must be an async method"):
        load(Plugin("s", "tests.plugin_fixture:sync_factory"))


class _Seen:
    def __init__(self, verdict: Any = PASS) -> None:
        self.deltas: list[str] = []
        self.verdict = verdict

    async def on_chunk(self, ctx: RequestContext, delta: str) -> Any:
        self.deltas.append(delta)
        return self.verdict(delta) if callable(self.verdict) else self.verdict


def _chunked(plugin: _Seen, out: bytes) -> bytes:
    import tests.plugin_fixture as fixture
    fixture.seen_factory = lambda cfg: plugin  # type: ignore[attr-defined]
    loaded = load(Plugin("seen", "tests.plugin_fixture:seen_factory"))
    plugins = PluginSet([loaded])
    ex = Exchange("req_1", "chat")
    ctx = RequestContext("req_1", "chat", hooks.KeyInfo("k", "id", None), "m", "m", True, {}, None)
    ex.plugins = PluginState(ctx, (loaded,), (), ())
    return asyncio.run(plugins.on_chunk(ex, out))


def _event(obj: dict[str, Any], name: str | None = None) -> bytes:
    return (f"event: {name}\n".encode() if name else b"") + b"data: " + json.dumps(obj).encode() + b"\n\n"


def test_openai_text_and_tool_call_deltas_reach_on_chunk() -> None:
    text = _event({"choices": [{"index": 0, "delta": {"content": "hello"}}]})
    tool = _event({"choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 0, "function": {"arguments": '{"city": "Pa'}}]}}]})
    seen = _Seen(lambda d: Replace(d.replace("hello", "HELLO").replace("Pa", "Lo")))
    out = _chunked(seen, text + tool + b"data: [DONE]\n\n")
    assert seen.deltas == ["hello", '{"city": "Pa']
    events = out.split(b"\n\n")
    assert json.loads(events[0][6:])["choices"][0]["delta"]["content"] == "HELLO"
    assert json.loads(events[1][6:])["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"] == '{"city": "Lo'
    assert events[2] == b"data: [DONE]"


def test_anthropic_text_and_json_deltas_reach_on_chunk() -> None:
    text = _event({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hi"}},
                  "content_block_delta")
    json_delta = _event({"type": "content_block_delta", "index": 1,
                         "delta": {"type": "input_json_delta", "partial_json": "{\"a\":"}}, "content_block_delta")
    seen = _Seen(lambda d: Replace(d.upper()))
    out = _chunked(seen, text + json_delta)
    assert seen.deltas == ["hi", '{"a":']
    first = out.split(b"\n\n")[0]
    assert first.startswith(b"event: content_block_delta\ndata: ") and b'"text":"HI"' in first


def test_an_unchanged_chunk_is_the_same_bytes() -> None:
    raw = _event({"choices": [{"index": 0, "delta": {"content": "same"}}]})
    assert _chunked(_Seen(), raw) is raw


def test_stop_raises_the_plugins_stream_error() -> None:
    from tollway.core.errors import PluginError
    with pytest.raises(PluginError) as caught:
        _chunked(_Seen(Stop("enough")), _event({"choices": [{"index": 0, "delta": {"content": "x"}}]}))
    assert caught.value.code == "plugin_stopped" and "seen" in caught.value.message


@pytest.mark.parametrize("verdict", [Reject("403", "x"), Reject(403, 12345), Reject(None, "x"), Reject(200, "x"),  # type: ignore[arg-type]
                                     Reject(True, "x"), Replace({"weird": object()}), Replace("text"), 42])  # type: ignore[arg-type]
def test_a_malformed_on_response_verdict_is_the_plugins_failure(verdict: object) -> None:
    """Its on_error decides (open: the answer goes out as it was), counted as invalid_result:
    never a TypeError out of the hook (the client's 500)."""
    class Bad:
        async def on_response(self, ctx: RequestContext, body: dict[str, Any]) -> object:
            return verdict
    import tests.plugin_fixture as fixture
    fixture.bad_factory = lambda cfg: Bad()  # type: ignore[attr-defined]
    failures: list[tuple[str, ...]] = []

    class Counter:
        def labels(self, *names: str) -> Counter:
            failures.append(names)
            return self

        def inc(self) -> None:
            pass
    loaded = load(Plugin("bad", "tests.plugin_fixture:bad_factory"))
    plugins = PluginSet([loaded], Counter())  # type: ignore[arg-type]
    ex = Exchange("req_1", "chat")
    ctx = RequestContext("req_1", "chat", hooks.KeyInfo("k", "id", None), "m", "m", False, {}, None)
    ex.plugins = PluginState(ctx, (), (loaded,), ())
    answer = b'{"id":"x","choices":[]}'
    assert asyncio.run(plugins.on_answer(ex, 200, answer)) is answer
    assert failures == [("bad", "on_response", "invalid_result")]


def test_a_stop_without_a_text_message_is_the_plugins_failure() -> None:
    raw = _event({"choices": [{"index": 0, "delta": {"content": "x"}}]})
    assert _chunked(_Seen(Stop(42)), raw) is raw  # type: ignore[arg-type]


def test_a_cancelled_error_raised_by_a_plugin_is_its_failure_not_a_shutdown() -> None:
    """A plugin awaiting a future someone else cancelled raises CancelledError while its own
    task is not being cancelled: that is the plugin's failure (on_error: open skips it)."""
    class Cancelled:
        async def on_chunk(self, ctx: RequestContext, delta: str) -> object:
            future = asyncio.get_running_loop().create_future()
            future.cancel()
            return await future
    raw = _event({"choices": [{"index": 0, "delta": {"content": "x"}}]})
    assert _chunked(Cancelled(), raw) is raw  # type: ignore[arg-type]


def test_a_cancelled_request_still_cancels_through_a_plugin() -> None:
    """The request's task being cancelled (shutdown, the client gone) is not the plugin's failure:
    the CancelledError goes on up, and the stage (a task of its own) is cancelled too."""
    started, stage_cancelled = asyncio.Event(), asyncio.Event()

    class Waits:
        async def on_chunk(self, ctx: RequestContext, delta: str) -> object:
            started.set()
            try:
                await asyncio.sleep(5)
            except asyncio.CancelledError:
                stage_cancelled.set()
                raise
            return PASS

    async def run() -> None:
        raw = _event({"choices": [{"index": 0, "delta": {"content": "x"}}]})
        import tests.plugin_fixture as fixture
        fixture.waits_factory = lambda cfg: Waits()  # type: ignore[attr-defined]
        loaded = load(Plugin("waits", "tests.plugin_fixture:waits_factory", timeout_ms=10_000))
        plugins = PluginSet([loaded])
        ex = Exchange("req_1", "chat")
        ctx = RequestContext("req_1", "chat", hooks.KeyInfo("k", "id", None), "m", "m", True, {}, None)
        ex.plugins = PluginState(ctx, (loaded,), (), ())
        chunk = asyncio.create_task(plugins.on_chunk(ex, raw))
        await started.wait()
        chunk.cancel()
        with pytest.raises(asyncio.CancelledError):
            await chunk
        await asyncio.wait_for(stage_cancelled.wait(), 1)
    asyncio.run(run())


def test_credentials_never_reach_a_plugins_headers() -> None:
    class Scope:
        class headers:  # noqa: N801 - granian's shape
            @staticmethod
            def items() -> list[tuple[str, str]]:
                return [("authorization", "Bearer sk"), ("x-api-key", "sk"), ("cookie", "c"), ("x-team-hint", "a")]
    visible = hooks._visible_headers(Scope())  # type: ignore[arg-type]
    assert dict(visible) == {"x-team-hint": "a"}
    with pytest.raises(TypeError):
        visible["x"] = "y"  # type: ignore[index]


def test_queued_on_complete_calls_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    gate = asyncio.Event()

    class Slow:
        async def on_complete(self, ctx: Any, record: Any) -> None:
            await gate.wait()
    import tests.plugin_fixture as fixture
    fixture.slow_factory = lambda cfg: Slow()  # type: ignore[attr-defined]
    monkeypatch.setattr(hooks, "MAX_PENDING", 5)
    plugins = PluginSet([load(Plugin("slow", "tests.plugin_fixture:slow_factory", timeout_ms=10_000))])

    async def run() -> None:
        for i in range(8):
            ex = Exchange(f"req_{i}", "chat")
            ex.key_name = "k"
            plugins.after_response(ex)
        assert len(plugins._pending) == 5 and plugins.dropped == 3
        gate.set()
        await plugins.close(1.0)
        assert not plugins._pending
    asyncio.run(run())


class _Failures:
    """A stand-in for tollway_plugin_errors_total: the label tuples it was incremented with."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, ...]] = []

    def labels(self, *names: str) -> _Failures:
        self.seen.append(names)
        return self

    def inc(self) -> None:
        pass


@pytest.mark.parametrize("on_error", ["open", "closed"])
def test_stage_calls_left_running_past_their_timeout_are_bounded(monkeypatch: pytest.MonkeyPatch,
                                                                 caplog: pytest.LogCaptureFixture,
                                                                 on_error: str) -> None:
    """A stage that swallows its timeout's cancellation keeps running, abandoned, and each call
    left one more task behind: a hostile plugin grew the worker's memory without bound. Past
    MAX_ABANDONED of them, the stage is not started (a failure per on_error, kind "abandoned",
    logged once) until one of them ends."""
    from tollway.core.errors import PluginError
    monkeypatch.setattr(hooks, "MAX_ABANDONED", 3, raising=False)
    calls, release = 0, asyncio.Event()

    class Deaf:
        async def on_chunk(self, ctx: RequestContext, delta: str) -> object:
            nonlocal calls
            calls += 1
            while not release.is_set():
                try:
                    await release.wait()
                except asyncio.CancelledError:
                    pass
            return PASS
    import tests.plugin_fixture as fixture
    fixture.deaf_factory = lambda cfg: Deaf()  # type: ignore[attr-defined]
    loaded = load(Plugin("deaf", "tests.plugin_fixture:deaf_factory", timeout_ms=10, on_error=on_error))
    failures = _Failures()
    plugins = PluginSet([loaded], failures)  # type: ignore[arg-type]
    ex = Exchange("req_1", "chat")
    ex.plugins = PluginState(RequestContext("req_1", "chat", hooks.KeyInfo("k", "id", None), "m", "m", True, {}, None),
                             (loaded,), (), ())
    raw = _event({"choices": [{"index": 0, "delta": {"content": "x"}}]})

    async def chunk() -> bytes | None:
        try:
            return await plugins.on_chunk(ex, raw)
        except PluginError as exc:
            assert exc.code == "plugin_failed"
            return None

    async def run() -> None:
        try:
            for _ in range(6):
                assert await chunk() == (raw if on_error == "open" else None)
            assert calls == 3 and sum(len(t) for t in plugins._abandoned.values()) == 3
            assert failures.seen == [("deaf", "on_chunk", "timeout")] * 3 + [("deaf", "on_chunk", "abandoned")] * 3
        finally:
            release.set()  # the abandoned calls end: the stage is called again
        await asyncio.sleep(0.01)
        assert not plugins._abandoned
        assert await chunk() == raw and calls == 4
    with caplog.at_level("WARNING", "tollway"):
        asyncio.run(run())
    abandoned = [r for r in caplog.records if "still running past" in r.getMessage()]
    assert len(abandoned) == 1 and abandoned[0].fields["kind"] == "abandoned"  # type: ignore[attr-defined]


def test_a_plugin_is_found_through_its_entry_point(tmp_path: Path) -> None:
    """An installed plugin: its distribution's entry point in the `tollway.plugins` group, named
    like the config entry that has no `module:`."""
    (tmp_path / "acme_policy.py").write_text(textwrap.dedent("""
        from tollway.gateway.plugins.api import Reject

        class Policy:
            async def on_request(self, ctx):
                return Reject(403, "acme says no")

        def make(config):
            return Policy()
    """))
    dist = tmp_path / "acme_policy-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-policy\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[tollway.plugins]\nacme = acme_policy:make\n")
    fake = FakeOpenAI()
    try:
        gw = GatewayProcess(f"""
providers: [{{name: up, schema: openai, base_url: {fake.url}, api_key: {UPSTREAM_SECRET}}}]
models: [{{name: gpt-4o-mini, targets: [{{provider: up}}]}}]
keys: [{{name: alice, key_hash: "{key_hash(TEST_KEY)}"}}]
plugins: [{{name: acme}}]
""", env={"PYTHONPATH": f"{tmp_path}:{Path(__file__).resolve().parent.parent}"})
        try:
            import openai
            client = openai.OpenAI(base_url=gw.url + "/v1", api_key=TEST_KEY, max_retries=0)
            with pytest.raises(openai.PermissionDeniedError) as caught:
                client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
            assert "acme says no" in caught.value.body["message"]
        finally:
            gw.stop()
    finally:
        fake.stop()


def test_a_plugins_config_is_never_shown_by_the_admin_api() -> None:
    from tollway.gateway.admin.operations import redacted_config
    from tollway.gateway.runtime import Runtime
    cfg = config.loads(BASE + 'plugins: [{name: jwt, module: "x.y:z", config: {secret: hunter2-shared-secret, claim: k}}]\n')
    shown = redacted_config(Runtime(cfg, None))
    assert shown["plugins"][0]["config"] == {"secret": "***", "claim": "***"}  # type: ignore[index]
    assert "hunter2" not in json.dumps(shown)
