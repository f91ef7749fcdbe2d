"""The parts of stopping a stream at its limits, in process: the deltas read from client
chunks, how far a reservation goes, budget claims, and the hook on a memory limiter."""
from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from tollway.core import config as config_mod
from tollway.core.accounting.pricebook import PriceBook
from tollway.core.accounting.pricing import Price
from tollway.core.accounting.stream_text import chunk_texts
from tollway.core.accounting.tokens import count_tokens
from tollway.core.errors import GatewayError
from tollway.core.ledger.budgets import BudgetBook
from tollway.core.limits import streams
from tollway.core.limits.policy import reserve
from tollway.core.request import parse_head
from tollway.ext.usage import Usage
from tollway.gateway.exchange import Exchange
from tollway.gateway.limits import stream_stop as stream_stop_module
from tollway.gateway.limits.limiter import Lease, Limiter
from tollway.gateway.limits.memory import MemoryBuckets
from tollway.gateway.limits.stream_stop import PENDING_BYTES, StreamStop, stream_stop
from tollway.gateway.store.budgets import BudgetKeeper
from tollway.gateway.telemetry.metrics import Metrics

HASH = "sha256:" + "0" * 64
CONFIG = f"""
providers: [{{name: up, schema: fake}}]
models:
  - name: m
    targets: [{{provider: up}}]
    price: {{input: 1000, output: 1000000}}   # $1 per output token
keys:
  - {{name: out, key_hash: "{HASH}", limits: [{{output_tokens: 50, per: 1h}}]}}
  - {{name: cost, key_hash: "{HASH[:-1]}1", limits: [{{cost_usd: 40, per: 1d}}]}}
  - {{name: spender, key_hash: "{HASH[:-1]}2", budget: {{usd: 30, period: day}}}}
"""


def _openai(text: str) -> bytes:
    return b"data: " + json.dumps({"id": "c", "object": "chat.completion.chunk", "choices": [
        {"index": 0, "delta": {"content": text}, "finish_reason": None}]}).encode() + b"\n\n"


def _event(kind: str, payload: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(payload)}\n\n".encode()


def test_chunk_texts_reads_every_client_shape() -> None:
    tool = {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"a"'}}]}}]}
    chunk = (_openai("Hello") + _openai("") + b"data: " + json.dumps(tool).encode() + b"\n\n"
             + b'data: {"choices": [{"index": 0, "text": " legacy", "finish_reason": null}]}\n\n'
             + b'data: {"choices": [{"index": 0, "delta": {"refusal": "no"}}]}\n\n'
             + _event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                              "delta": {"type": "text_delta", "text": " anthropic"}})
             + _event("content_block_delta", {"type": "content_block_delta", "index": 1,
                                              "delta": {"type": "input_json_delta", "partial_json": "{\"x\":"}})
             + _event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                              "delta": {"type": "thinking_delta", "thinking": "hmm"}})
             + _event("response.output_text.delta", {"type": "response.output_text.delta", "delta": " responses"})
             + _event("ping", {"type": "ping"}) + b"data: [DONE]\n\n")
    assert chunk_texts(chunk) == ["Hello", '{"a"', " legacy", "no", " anthropic", '{"x":', "hmm", " responses"]


def test_chunk_texts_reads_a_chat_streams_reasoning() -> None:
    """reasoning_content is output the client gets and is billed for (the gateway itself sends
    Claude's and Bedrock's thinking so to chat clients): uncounted, a thinking stream would run
    past its output-token limit or budget until its first content delta."""
    chunk = b'data: {"choices": [{"index": 0, "delta": {"reasoning_content": "let me think"}}]}\n\n'
    assert chunk_texts(chunk) == ["let me think"]


def test_chunk_texts_reads_a_responses_streams_generated_text_only() -> None:
    """A Responses stream's audio deltas are base64 (the audio's tokens, priced as audio), and a
    transcript repeats the audio: counted as text, a long spoken answer hit its output-token
    limit far too early. An event named only by its `event:` line is read by that name."""
    chunk = (_event("response.audio.delta", {"type": "response.audio.delta", "delta": "UklGRiQAAABXQVZF" * 64})
             + _event("response.audio.transcript.delta", {"type": "response.audio.transcript.delta", "delta": "Hi"})
             + _event("response.mcp_call_arguments.delta", {"type": "response.mcp_call_arguments.delta", "delta": "{}"})
             + _event("response.code_interpreter_call_code.delta", {"delta": "print(1)"})
             + _event("response.audio.delta", {"delta": "UklGRiQA"}))
    assert chunk_texts(chunk) == ["{}", "print(1)"]


@pytest.mark.parametrize("chunk", [b"", b"data: [DONE]\n\n", b"data: {not json\n\n", b'data: {"choices": 7}\n\n',
                                   b'data: {"choices": [{"delta": {"content": 5}}]}\n\n', b": comment\n\n"])
def test_chunk_texts_finds_nothing_in_what_carries_no_text(chunk: bytes) -> None:
    assert chunk_texts(chunk) == []


def _limiter() -> tuple[Limiter, dict[str, config_mod.Key]]:
    cfg = config_mod.loads(CONFIG)
    return Limiter(cfg, MemoryBuckets(), Metrics()), {k.name: k for k in cfg.keys}


def _lease(limiter: Limiter, key: config_mod.Key, max_tokens: int) -> Lease:
    body = json.dumps({"model": "m", "stream": True, "max_tokens": max_tokens, "messages": []}).encode()
    lease = limiter.admit(key, "m", "chat", parse_head(body, 64), body)
    assert isinstance(lease, Lease)
    return lease


def test_allowance_is_what_each_growing_reservation_holds_beyond_the_prompt() -> None:
    limiter, keys = _limiter()
    price = Price(input=1000, output=1_000_000)
    plan = limiter.policy.plan(keys["cost"], "m")
    demand = reserve(plan, 1000, 30, price)  # $1 of prompt, $30 of output: 31 of the 40
    assert streams.allowance(plan, demand, price) == pytest.approx(30)
    capped = reserve(plan, 1000, 100, price)  # $101 reserved, capped at the bucket's 40: 39 of output
    assert streams.allowance(plan, capped, price) == pytest.approx(39)
    total = config_mod.loads(CONFIG.replace("output_tokens: 50", "total_tokens: 500")).keys[0]
    tplan = limiter.policy.plan(total, "m")
    assert streams.allowance(tplan, reserve(tplan, 100, 20, price), price) == 20
    assert streams.allowance(tplan, reserve(tplan, 490, 20, price), price) == 10  # capped at 500
    assert streams.extension(5, 2.0) == (0.0, 0.0, 5, 5, 10.0, 0.0)


def test_a_step_is_at_most_an_eighth_of_the_smallest_growing_bucket() -> None:
    limiter, keys = _limiter()
    assert streams.step(limiter.policy.plan(keys["out"], "m"), 0.0) == 6  # 50 / 8
    assert streams.step(limiter.policy.plan(keys["cost"], "m"), 1.0) == 5  # $40 at $1 a token
    big = config_mod.loads(CONFIG.replace("output_tokens: 50", "output_tokens: 100000")).keys[0]
    assert streams.step(limiter.policy.plan(big, "m"), 0.0) == streams.STEP_TOKENS


async def _feed(stop: StreamStop, ex: Exchange, chunks: list[bytes]) -> tuple[int, GatewayError | None]:
    passed = 0
    for chunk in chunks:
        try:
            await stop(ex, chunk)
        except GatewayError as exc:
            return passed, exc
        passed += 1
    return passed, None


def test_the_hook_stops_at_the_last_token_of_the_bucket_and_settles_what_was_sent() -> None:
    limiter, keys = _limiter()

    async def run() -> None:
        lease = _lease(limiter, keys["out"], 10)
        ex = Exchange("req_1", "chat")
        stop = stream_stop(ex, "gpt-4o-mini", lease.demand[1], limiter, lease, None, None)
        assert stop is not None and stop.allowed == 10
        passed, err = await _feed(stop, ex, [_openai(" tok")] * 80)
        assert passed == 50 and err is not None and err.code == "rate_limit_exceeded" and stop.cut
        assert err.message.startswith("The stream was stopped: Rate limit reached for m on output tokens per 1h")
        usage = stop.usage(Usage(7, 80, 87))
        assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (7, 50, 57)
        limiter.settle(lease, usage, None)
        (entry,) = [e for e in await limiter.usage_report() if e["owner"] == "out"]
        assert entry["used"] == pytest.approx(50, abs=0.1)  # what was sent, once (less the hour's refill meanwhile)

    asyncio.run(run())


def test_lazy_counting_is_exact_with_multibyte_text_and_long_answers() -> None:
    limiter, keys = _limiter()
    text = "héllo wörld, 你好 🌍 "  # bytes > characters; some characters are several tokens

    async def run() -> None:
        lease = _lease(limiter, keys["out"], 10)
        ex = Exchange("req_2", "chat")
        stop = stream_stop(ex, "gpt-4o-mini", lease.demand[1], limiter, lease, None, None)
        assert stop is not None
        passed, err = await _feed(stop, ex, [_openai(text)] * 40)
        assert err is not None and err.code == "rate_limit_exceeded"
        # counted per chunk (or per run of chunks): never less than the whole text's count, never
        # more than each chunk's count summed; and the chunk held back would not have fitted
        each = count_tokens(text, "gpt-4o-mini")
        assert count_tokens(text * passed, "gpt-4o-mini") <= stop.sent <= each * passed
        assert stop.sent <= 50 < stop.sent + each

    asyncio.run(run())

    roomy, keys = Limiter(config_mod.loads(CONFIG.replace("output_tokens: 50", "output_tokens: 1000000")),
                          MemoryBuckets(), Metrics()), {}

    async def long_answer() -> None:
        cfg_key = config_mod.loads(CONFIG.replace("output_tokens: 50", "output_tokens: 1000000")).keys[0]
        lease = _lease(roomy, cfg_key, 100000)
        ex = Exchange("req_3", "chat")
        stop = stream_stop(ex, "gpt-4o-mini", lease.demand[1], roomy, lease, None, None)
        assert stop is not None
        passed, err = await _feed(stop, ex, [_openai(" tok")] * 3000)
        assert (passed, err) == (3000, None)
        assert stop._held <= PENDING_BYTES  # what waits to be counted stays bounded
        held = chunk_texts(b"".join(stop._pending))
        assert stop.sent + len(held) == 3000 and set(held) == {" tok"}  # counted and held: every token once

    asyncio.run(long_answer())


def test_far_from_its_limit_a_stream_grows_ahead_and_is_never_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bytes bound the tokens: past the reservation the stream takes whole steps for the
    bound (no store call on the memory store, no stop), and no chunk is decoded or counted;
    the settle charges what was used, not the steps."""
    cfg = config_mod.loads(CONFIG.replace("output_tokens: 50", "output_tokens: 1000000"))
    limiter = Limiter(cfg, MemoryBuckets(), Metrics())

    def undecoded(chunk: bytes) -> list[str]:
        raise AssertionError(f"decoded {chunk[:40]!r}")

    monkeypatch.setattr(stream_stop_module, "chunk_texts", undecoded)

    async def run() -> None:
        lease = _lease(limiter, cfg.keys[0], 10)
        ex = Exchange("req_7", "chat")
        stop = stream_stop(ex, "gpt-4o-mini", lease.demand[1], limiter, lease, None, None)
        assert stop is not None and stop.allowed == 10
        assert await _feed(stop, ex, [_openai(" tok")] * 100) == (100, None)
        assert stop.allowed == 10 + 4 * streams.STEP_TOKENS  # the first step that covers 400 bytes
        assert stop.sent == 0 and len(stop._pending) == 100
        limiter.settle(lease, Usage(7, 100, 107), None)
        (entry,) = [e for e in await limiter.usage_report() if e["owner"] == "out"]
        assert 90 < entry["used"] <= 100  # what was used (less the refill meanwhile), not the 522 taken

    asyncio.run(run())


def test_an_extension_larger_than_a_whole_bucket_is_refused_not_capped() -> None:
    """An admission's reservation is capped at a bucket's capacity; an extension is not: it is
    what the stream may send, so it is taken whole or refused. Capped, a full bucket gave its
    50 for an extension of 60, the stream counted 60, and the settle refunded the difference."""
    now = [0.0]
    cfg = config_mod.loads(CONFIG)
    limiter = Limiter(cfg, MemoryBuckets(clock=lambda: now[0]), Metrics())
    key = next(k for k in cfg.keys if k.name == "out")  # output_tokens: 50 per hour

    async def run() -> None:
        lease = _lease(limiter, key, 10)
        grow = limiter.growing(lease)
        assert grow is not None
        now[0] += 3600  # the bucket is full again
        assert not limiter.extend_ahead(lease, grow, 60)
        with pytest.raises(GatewayError) as stopped:
            await limiter.extend(lease, grow, 60, 60)
        assert stopped.value.code == "rate_limit_exceeded"
        assert stopped.value.message.endswith("Limit 50, Used 0, Requested 60. That is more than the whole limit.")
        assert lease.extra is None
        (entry,) = [e for e in await limiter.usage_report() if e["owner"] == "out"]
        assert entry["used"] == 0  # nothing was taken
        assert await limiter.extend(lease, grow, 60, 50) == 50  # a whole step does not fit; what the chunk needs does
        limiter.settle(lease, Usage(7, 60, 67), None)  # 60 sent: the 10 reserved and the 50 taken
        (entry,) = [e for e in await limiter.usage_report() if e["owner"] == "out"]
        assert entry["used"] == 50  # the extension's 50 (the reservation's 10 refilled meanwhile)

    asyncio.run(run())

def test_a_cost_limit_stops_a_stream_with_insufficient_quota() -> None:
    limiter, keys = _limiter()

    async def run() -> None:
        lease = _lease(limiter, keys["cost"], 5)  # $5 of output reserved, up to $40 a day
        ex = Exchange("req_4", "chat")
        stop = stream_stop(ex, "gpt-4o-mini", lease.demand[1], limiter, lease, None, None)
        assert stop is not None
        passed, err = await _feed(stop, ex, [_openai(" tok")] * 100)
        prompt_usd = lease.demand[1] * 1000 / 1e6
        assert passed == int(40 - prompt_usd)  # whole dollars of output the day's $40 holds past the prompt
        assert err is not None and err.code == "insufficient_quota"

    asyncio.run(run())


def test_budget_claims_count_as_spent_until_released() -> None:
    cfg = config_mod.loads(CONFIG)
    book = BudgetBook.of(cfg, 1000.0)
    assert book.claim("spender", None, 20.0, 1000.0) is None
    assert book.refusal("spender", None, 1000.0) is None
    refused = book.claim("spender", None, 10.5, 1000.0)  # 20 held + 10.5 > 30
    assert refused is not None and refused.code == "insufficient_quota" and "20.0000 USD more held" in refused.message
    assert book.claim("spender", None, 10.0, 1000.0) is None  # exactly the budget
    assert book.refusal("spender", None, 1000.0) is not None  # nothing left for anyone meanwhile
    book.release("spender", None, 30.0)
    assert book.accounts[("key", "spender")].held == 0.0 and book.refusal("spender", None, 1000.0) is None
    assert book.claim("nobody", None, 1e9, 1000.0) is None and not book.applies("nobody", None)


def test_the_hook_stops_a_stream_at_its_budget_and_the_charge_releases_its_claims() -> None:
    cfg = config_mod.loads(CONFIG)
    keeper = BudgetKeeper(cfg)

    async def run() -> None:
        ex = Exchange("req_5", "chat")
        ex.key_name, ex.route = "spender", "m"
        stop = stream_stop(ex, "gpt-4o-mini", 1000, None, None, keeper, PriceBook(cfg))
        assert stop is not None and stop.allowed == 0
        passed, err = await _feed(stop, ex, [_openai(" tok")] * 100)
        assert passed == 29 and err is not None and err.code == "insufficient_quota"  # $1 of prompt + 29 tokens
        assert ex.budget_held == pytest.approx(30.0, abs=1e-9)
        ex.cost_usd = 30.0
        keeper.charge(ex)
        account = keeper.book.accounts[("key", "spender")]
        assert (account.spent, account.held, ex.budget_held) == (30.0, 0.0, 0.0)

    asyncio.run(run())


def test_a_budget_on_an_unpriced_answer_has_no_bound() -> None:
    cfg = config_mod.loads(CONFIG.replace("    price: {input: 1000, output: 1000000}   # $1 per output token\n", ""))
    keeper = BudgetKeeper(cfg)

    async def run() -> None:
        ex = Exchange("req_6", "chat")
        ex.key_name, ex.route = "spender", "m"  # the fake provider's model: no price
        stop = stream_stop(ex, "gpt-4o-mini", 1000, None, None, keeper, PriceBook(cfg))
        assert stop is not None
        assert await _feed(stop, ex, [_openai(" tok")] * 100) == (100, None)
        assert ex.budget_held == 0.0

    asyncio.run(run())


def test_enforce_streams_is_on_by_default_and_checked() -> None:
    assert config_mod.loads(CONFIG).rate_limits.enforce_streams is True
    assert config_mod.loads(CONFIG + "rate_limits: {enforce_streams: false}\n").rate_limits.enforce_streams is False
    with pytest.raises(config_mod.ConfigError, match="enforce_streams"):
        config_mod.loads(CONFIG + "rate_limits: {enforce_streams: sometimes}\n")


ALIASED = """
providers: [{name: oa, schema: openai, base_url: "https://api.openai.com/v1", api_key: sk-x}]
models:
  - {name: house-model, targets: [{provider: oa, model: gpt-4o-mini}]}
keys:
  - {name: cost, key_hash: "sha256:%s", limits: [{cost_usd: 0.0001, per: 1d}]}
""" % ("0" * 64)


def _alias_stream(limiter: Limiter, cfg: config_mod.Config, served_as: str,
                  content: str = "") -> tuple[StreamStop, Exchange, Lease]:
    """A house-model stream admitted for the ALIASED config's key, its hook, and its exchange
    as the relay's attempt leaves it (served as `served_as`) before the first chunk."""
    messages = [{"role": "user", "content": content}] if content else []
    body = json.dumps({"model": "house-model", "stream": True, "max_tokens": 5, "messages": messages}).encode()
    lease = limiter.admit(cfg.keys[0], "house-model", "chat", parse_head(body, 64), body)
    assert isinstance(lease, Lease)
    ex = Exchange("req_alias", "chat")
    stop = stream_stop(ex, "gpt-4o-mini", lease.demand[1], limiter, lease, None, None)
    assert stop is not None, "an unpriced public name with a cost limit still gets the hook"
    ex.upstream_model = served_as
    return stop, ex, lease


def test_a_cost_limit_stops_a_stream_on_an_alias_route_priced_as_it_is_served() -> None:
    """`house-model` has no price of its own; its answers cost what gpt-4o-mini's do (the
    dataset's), known once the attempt's upstream model is: the stream is stopped at the limit
    mid-stream, not only charged at the settle."""
    cfg = config_mod.loads(ALIASED)
    limiter = Limiter(cfg, MemoryBuckets(), Metrics())
    served = limiter.policy.known_price("house-model", "gpt-4o-mini")
    assert limiter.policy.known_price("house-model") is None and served is not None and served.output > 0

    async def run() -> None:
        stop, ex, _ = _alias_stream(limiter, cfg, "gpt-4o-mini")
        passed, err = await _feed(stop, ex, [_openai(" tok")] * 5000)
        output_usd = 0.0001 / (served.output / 1e6)  # output tokens the day's $0.0001 buys
        assert err is not None and err.code == "insufficient_quota", (passed, err)
        assert 0.5 * output_usd < passed <= output_usd + 1

    asyncio.run(run())


def test_an_alias_streams_prompt_cost_is_taken_with_its_first_extension() -> None:
    """Priced only once served, the reservation held no dollars for the prompt: the first
    extension takes them, so the output gets what the limit holds past the prompt (before, the
    prompt was charged only at the settle, past the limit)."""
    cfg = config_mod.loads(ALIASED.replace("cost_usd: 0.0001", "cost_usd: 0.001"))
    limiter = Limiter(cfg, MemoryBuckets(), Metrics())
    price = limiter.policy.known_price("house-model", "gpt-4o-mini")
    assert price is not None

    async def run() -> None:
        stop, ex, lease = _alias_stream(limiter, cfg, "gpt-4o-mini", "x" * 5800)
        assert lease.demand[4] == 0.0  # (nothing reserved for the prompt)
        prompt_usd = lease.demand[1] * price.input / 1e6
        assert 0.0008 < prompt_usd < 0.001  # most of the limit
        passed, err = await _feed(stop, ex, [_openai(" tok")] * 3000)
        left = (0.001 - prompt_usd) / (price.output / 1e6)  # output tokens the rest buys
        assert err is not None and err.code == "insufficient_quota"
        assert left * 0.5 < passed <= left + 1, (passed, left)

    asyncio.run(run())


def test_a_model_unpriced_everywhere_is_not_counted_under_a_cost_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """No price for the public name nor the served model: the cost limit bounds nothing, so
    once that is known the hook passes chunks without holding or counting them."""
    cfg = config_mod.loads(ALIASED.replace("model: gpt-4o-mini", "model: no-such-model-anywhere"))
    limiter = Limiter(cfg, MemoryBuckets(), Metrics())

    async def run() -> None:
        stop, ex, _ = _alias_stream(limiter, cfg, "no-such-model-anywhere")

        async def counted(self: StreamStop, text: str) -> int:
            raise AssertionError("counted a stream nothing bounds")
        monkeypatch.setattr(StreamStop, "_count", counted)
        passed, err = await _feed(stop, ex, [_openai(" tok" * 1000)] * 200)
        assert (passed, err) == (200, None)
        assert stop._held == len(_openai(" tok" * 1000))  # the first chunk, which found it out; then nothing

    asyncio.run(run())
