"""What each response costs, for the ledger, the budgets and `x-tollway-cost-usd`.

Unlike the limiter's price (which must be a number, FREE when unknown), a `PriceBook` says
when a model has no price: its usage is recorded with `cost_usd` null and counted, never
silently charged $0 against a budget.
"""
from __future__ import annotations

from tollway.core.accounting.pricing import Price, cost, default_price
from tollway.core.config import Config
from tollway.ext.usage import Usage


class PriceBook:
    """One config's prices: a model's `price:` wins, else the shipped dataset's for the
    upstream model, else for the public name. Lookups are cached per (model, upstream)."""

    def __init__(self, config: Config) -> None:
        self._configured = {m.name: m.price for m in config.models if m.price is not None}
        self._known: dict[tuple[str, str], Price | None] = {}

    def price(self, model: str, upstream_model: str | None) -> Price | None:
        ident = (model, upstream_model or "")
        if ident in self._known:
            return self._known[ident]
        price = self._configured.get(model)
        if price is None and upstream_model:
            price = default_price(upstream_model)
        if price is None:
            price = default_price(model)
        if len(self._known) < 4096:  # `model` may be a client's string on a match: route
            self._known[ident] = price
        return price

    def cost(self, model: str, upstream_model: str | None, usage: Usage | None) -> float | None:
        """The USD cost of `usage`, 0.0 for no usage, None if the model has no price."""
        price = self.price(model, upstream_model)
        if price is None:
            return None
        return cost(usage, price) if usage is not None else 0.0
