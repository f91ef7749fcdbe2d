"""What each response costs, for the limiter, the ledger, the budgets and `x-tollway-cost-usd`.

A `PriceBook` says when a model has no price (`price` returns None): its usage is recorded
with `cost_usd` null and counted, never silently charged $0 against a budget. The limiter,
which needs a number, uses FREE for those (`tollway check` warns about each).
"""
from __future__ import annotations

from datetime import date
from typing import TYPE_CHECKING

from tollway.core.accounting.pricing import FREE, Price, cost, dataset_price
from tollway.ext.usage import Usage

if TYPE_CHECKING:  # (config imports the pricing module for its Price)
    from tollway.core.config import Config

_MAX_CACHED = 4096  # (model, upstream) pairs: on a `match:` route `model` is the client's string


class PriceBook:
    """One config's prices: a model's `price:` wins, else the price dataset's for the upstream
    model (its target's provider schema as a hint), then for the public name, else None
    (FREE for what only the built-in `fake` provider serves).
    Looked up once per (model, upstream) pair, then a dict hit."""

    def __init__(self, config: Config, today: date | None = None) -> None:
        """`today` dates the dataset prices; None: the newest it lists."""
        self._configured = {m.name: m.price for m in config.models if m.price is not None}
        self._today = today
        schemas = {p.name: p.schema for p in config.providers}
        # (public model, upstream model) -> the schema of the first target serving it
        self._schemas = {(m.name, t.model or m.name): schemas.get(t.provider) for m in config.models
                         for t in reversed(m.targets)}
        self._known: dict[tuple[str, str], Price | None] = {}
        self._routes: dict[str, Price | None] = {}  # route name -> its own price, once _known is full

    def price(self, model: str, upstream_model: str | None = None) -> Price | None:
        ident = (model, upstream_model or "")
        try:
            return self._known[ident]
        except KeyError:
            pass
        if len(self._known) >= _MAX_CACHED and upstream_model and upstream_model != model:
            # A `match:` route sends the client's string upstream: past the cache's bound, new
            # names are priced as their public route (cached), never looked up one by one
            # (a dataset lookup is ~0.2 ms of the event loop, a client could send a new name each time).
            return self._route_price(model)
        price = self._configured.get(model)
        if price is None and upstream_model:
            price = dataset_price(upstream_model, self._schemas.get((model, upstream_model)), self._today)
        if price is None:
            price = dataset_price(model, None, self._today)
        if price is None and self._schemas.get((model, upstream_model or model)) == "fake":
            price = FREE  # the built-in fake: test traffic, free unless its model has a price
        if len(self._known) < _MAX_CACHED:
            self._known[ident] = price
        return price

    def warm(self) -> None:
        """Look up every configured (model, upstream model) pair now: the first lookup loads the
        price dataset (~0.7 s), which must not stall the event loop under the first request."""
        for model, upstream_model in self._schemas:
            self.price(model, upstream_model)

    def _route_price(self, model: str) -> Price | None:
        """The price of the route `model` itself (a configured name: a bounded cache)."""
        try:
            return self._routes[model]
        except KeyError:
            price = self._routes[model] = self._configured.get(model) or dataset_price(model, None, self._today)
            return price

    def cost(self, model: str, upstream_model: str | None, usage: Usage | None) -> float | None:
        """The USD cost of `usage`: 0.0 for no usage (a refusal, a failure before any token),
        None if the model has no price."""
        if usage is None:
            return 0.0
        price = self.price(model, upstream_model)
        return cost(usage, price) if price is not None else None
