"""tollway_budget_usd, tollway_budget_spent_usd and tollway_budget_remaining_ratio: the calendar
budgets' state, read from the worker's BudgetKeeper per scrape (the TollwayBudgetNearlySpent alert
reads the ratio)."""
from __future__ import annotations

import json
import signal
import time
import urllib.request

import openai
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import ADMIN_KEY, TEST_KEY, GatewayProcess, key_hash
from tollway.core import config as config_mod
from tollway.core.ledger.periods import period_end
from tollway.gateway.store.budgets import BudgetKeeper
from tollway.gateway.telemetry.budget_metrics import BudgetLevels

NAMES = ("tollway_budget_usd", "tollway_budget_spent_usd", "tollway_budget_remaining_ratio")
NOW = 1_795_000_000.0  # 2026-11-18 (UTC), a Wednesday
CONFIG = f"""
providers: [{{name: local, schema: fake}}]
models: [{{name: demo, targets: [{{provider: local}}]}}]
teams:
  - {{name: search, budget: {{usd: 10, period: month}}}}
  - {{name: ads}}
keys:
  - {{name: alice, key_hash: "{key_hash(TEST_KEY)}", team: search, budget: {{usd: 2, period: day}}}}
  - {{name: bob, key_hash: "{key_hash("sk-tollway-bob-key-000000000000")}", team: ads}}
"""


def _text_families(text: str) -> dict[str, dict[tuple[str, str], float]]:
    return {f.name: {(s.labels["owner"], s.labels["name"]): s.value for s in f.samples}
            for f in text_string_to_metric_families(text) if f.name in NAMES}


def _scrape(collector: BudgetLevels) -> dict[str, dict[tuple[str, str], float]]:
    registry = CollectorRegistry()
    registry.register(collector)
    return _text_families(generate_latest(registry).decode())


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_the_budget_the_spend_and_the_share_left_of_each_owner_with_a_budget():
    keeper = BudgetKeeper(config_mod.loads(CONFIG), Clock(NOW))
    full = _scrape(BudgetLevels(lambda: keeper))
    # Only owners with a budget: bob and the team ads have none.
    assert full == {"tollway_budget_usd": {("key", "alice"): 2.0, ("team", "search"): 10.0},
                    "tollway_budget_spent_usd": {("key", "alice"): 0.0, ("team", "search"): 0.0},
                    "tollway_budget_remaining_ratio": {("key", "alice"): 1.0, ("team", "search"): 1.0}}
    keeper.book.charge("alice", "search", 1.5, NOW)
    keeper.book.charge("bob", "ads", 4.0, NOW)  # no budget: charged nowhere
    charged = _scrape(BudgetLevels(lambda: keeper))
    assert charged["tollway_budget_spent_usd"] == {("key", "alice"): 1.5, ("team", "search"): 1.5}
    assert charged["tollway_budget_remaining_ratio"] == {("key", "alice"): 0.25, ("team", "search"): 0.85}
    keeper.book.charge("alice", "search", 1.0, NOW)  # over the key's budget (overshoot): 0, not negative
    over = _scrape(BudgetLevels(lambda: keeper))
    assert over["tollway_budget_spent_usd"][("key", "alice")] == 2.5
    assert over["tollway_budget_remaining_ratio"] == {("key", "alice"): 0.0, ("team", "search"): 0.75}


def test_a_period_that_ended_reads_as_the_new_one_and_the_scrape_changes_nothing():
    clock = Clock(NOW)
    keeper = BudgetKeeper(config_mod.loads(CONFIG), clock)
    keeper.book.charge("alice", "search", 1.0, NOW)
    clock.now = period_end(NOW, "day") + 1  # the next UTC day: the key's budget reset, the team's month did not
    levels = _scrape(BudgetLevels(lambda: keeper))
    assert levels["tollway_budget_spent_usd"] == {("key", "alice"): 0.0, ("team", "search"): 1.0}
    assert levels["tollway_budget_remaining_ratio"] == {("key", "alice"): 1.0, ("team", "search"): 0.9}
    assert keeper.book.accounts[("key", "alice")].spent == 1.0  # the book rolls on the next request, not here


def test_a_zero_budget_is_spent_and_a_reloaded_keeper_is_read():
    keepers = [BudgetKeeper(config_mod.loads(CONFIG), Clock(NOW))]
    collector = BudgetLevels(lambda: keepers[-1])
    keepers.append(BudgetKeeper(config_mod.loads(CONFIG.replace("usd: 10, period: month", "usd: 0")), Clock(NOW)))
    levels = _scrape(collector)
    assert levels["tollway_budget_usd"][("team", "search")] == 0.0
    assert levels["tollway_budget_remaining_ratio"][("team", "search")] == 0.0  # BudgetBook refuses at spent >= 0


def test_no_budget_no_series():
    keeper = BudgetKeeper(config_mod.loads(CONFIG.replace(", budget: {usd: 10, period: month}", "")
                                           .replace(", budget: {usd: 2, period: day}", "")), Clock(NOW))
    assert _scrape(BudgetLevels(lambda: keeper)) == {name: {} for name in NAMES}  # described, no samples


def _gateway_config(team_budget: str, key_budget: str) -> str:
    return f"""
providers: [{{name: local, schema: fake}}]
models:
  - name: demo
    targets: [{{provider: local}}]
    price: {{input: 10000, output: 10000}}     # USD per 1M tokens: a cent a token
teams: [{{name: search{team_budget}}}]
keys: [{{name: test-key, key_hash: "{key_hash(TEST_KEY)}", team: search{key_budget}}}]
admin: {{key_hash: "{key_hash(ADMIN_KEY)}"}}
"""


def _gateway_levels(gw: GatewayProcess) -> dict[str, dict[tuple[str, str], float]]:
    with urllib.request.urlopen(gw.url + "/metrics", timeout=5) as r:
        return _text_families(r.read().decode())


def test_a_gateway_exports_what_it_charged_as_admin_budgets_reports_it_and_follows_a_reload():
    gw = GatewayProcess(_gateway_config(", budget: {usd: 50, period: month}", ", budget: {usd: 5, period: day}"))
    try:
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key=TEST_KEY, max_retries=0)
        answer = client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "spend a little"}])
        cost = (answer.usage.prompt_tokens + answer.usage.completion_tokens) * 0.01
        levels = _gateway_levels(gw)
        assert levels["tollway_budget_usd"] == {("key", "test-key"): 5.0, ("team", "search"): 50.0}
        spent = levels["tollway_budget_spent_usd"]
        assert abs(spent[("key", "test-key")] - cost) < 1e-9 and abs(spent[("team", "search")] - cost) < 1e-9
        ratio = levels["tollway_budget_remaining_ratio"]
        assert abs(ratio[("key", "test-key")] - (5 - cost) / 5) < 1e-9
        assert abs(ratio[("team", "search")] - (50 - cost) / 50) < 1e-9
        request = urllib.request.Request(gw.url + "/admin/budgets", headers={"authorization": f"Bearer {ADMIN_KEY}"})
        with urllib.request.urlopen(request, timeout=5) as r:
            items = json.loads(r.read())["data"]
        assert {(i["owner"], i[i["owner"]]): i["spent_usd"] for i in items} == {
            ("key", "test-key"): round(spent[("key", "test-key")], 10),
            ("team", "search"): round(spent[("team", "search")], 10)}
        # A reload: the key's budget raised (what it spent this day is kept), the team's removed.
        gw.config_path.write_text(_gateway_config("", ", budget: {usd: 20, period: day}"))
        gw.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "config reloaded" not in gw.stderr() and time.monotonic() < deadline:
            time.sleep(0.05)
        reloaded = _gateway_levels(gw)
        assert reloaded["tollway_budget_usd"] == {("key", "test-key"): 20.0}
        assert reloaded["tollway_budget_spent_usd"] == {("key", "test-key"): spent[("key", "test-key")]}
        assert abs(reloaded["tollway_budget_remaining_ratio"][("key", "test-key")] - (20 - cost) / 20) < 1e-9
    finally:
        gw.stop()
