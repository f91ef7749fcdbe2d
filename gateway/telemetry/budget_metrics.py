"""Calendar budgets (`budget: {usd, period}` on keys and teams), read from the worker's
`BudgetKeeper` when /metrics is scraped, never per request.

`tollway_budget_usd{owner, name}` is the budget, `tollway_budget_spent_usd{owner, name}` what the
owner spent in the current period (UTC day, week or month), `tollway_budget_remaining_ratio{owner,
name}` the share left, 0..1 (0 once spent: its requests get 429 insufficient_quota until the
period ends). `owner` is `key` or `team`, `name` a configured key's or team's name: only owners
with a `budget:` in the current config have series, so the labels are as bounded as the config.
The TollwayBudgetNearlySpent alert (deploy/prometheus/alerts.yaml) reads the ratio.

Each worker reports its own book, the one its requests are decided by: with
`rate_limits.backend: redis` every worker's and replica's book holds the shared spend (at most
`budget_share.SYNC_SECONDS` late); with `memory`, what that process charged.
A period that ended since the last charge reads as a new one (spent 0), as the next request
would find it; the book itself is not changed by a scrape.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from tollway.gateway.store.budgets import BudgetKeeper

_LABELS = ("owner", "name")


class BudgetLevels(Collector):
    def __init__(self, keeper: Callable[[], BudgetKeeper]) -> None:
        """`keeper` returns the current keeper: a reload replaces it (the gateway's books)."""
        self.keeper = keeper

    def collect(self) -> Iterator[GaugeMetricFamily]:
        budget = GaugeMetricFamily("tollway_budget_usd", "Calendar budget in USD per period, by owner (key|team) "
                                   "and name.", labels=_LABELS)
        spent = GaugeMetricFamily("tollway_budget_spent_usd", "USD spent in the budget's current period (UTC day, "
                                  "week or month).", labels=_LABELS)
        ratio = GaugeMetricFamily("tollway_budget_remaining_ratio", "Share of the calendar budget left in its "
                                  "current period (0..1; 0: requests are refused until it resets).", labels=_LABELS)
        keeper = self.keeper()
        now = keeper.clock()
        for (owner, name), account in sorted(keeper.book.accounts.items()):
            used = account.spent if account.start <= now < account.end else 0.0  # ended: the next period's 0
            usd = account.budget.usd
            labels = (owner, name)
            budget.add_metric(labels, usd)
            spent.add_metric(labels, used)
            # A budget of 0 is always spent (BudgetBook refuses once spent >= usd).
            ratio.add_metric(labels, min(max((usd - used) / usd, 0.0), 1.0) if usd > 0 else 0.0)
        yield budget
        yield spent
        yield ratio
