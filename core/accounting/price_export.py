"""The `genai-prices` dataset as a PriceTable (tollway.core.accounting.price_table).

Reads the snapshot shipped inside the installed package (`genai_prices.data`), never the
package's current snapshot, which its updater may have replaced with fetched data; nothing
here fetches anything. Importing the package costs a process ~11 MB (pydantic, httpx, anyio
and the dataset's objects): a worker has this run in another process and keeps the table
(tollway.gateway.price_source).
"""
from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING

from tollway.core.accounting.price_table import Clause, ClauseKind, Dated, Model, PriceTable, Provider, Rates

if TYPE_CHECKING:
    from genai_prices.types import MatchLogic, ModelInfo, ModelPrice, TieredPrices
    from genai_prices.types import Provider as DatasetProvider

_TEXT_CLAUSES: tuple[ClauseKind, ...] = ("equals", "starts_with", "ends_with", "contains", "regex")
_NO_RATES = Rates(None, None, None, None, None)


def from_dataset() -> PriceTable:
    from importlib.metadata import version

    from genai_prices.data import providers

    return PriceTable(f"genai-prices {version('genai-prices')}", tuple(_provider(p) for p in providers))


def _provider(p: DatasetProvider) -> Provider:
    return Provider(p.id, tuple(_model(m) for m in p.models),
                    model_match=_clause(p.model_match) if p.model_match is not None else None,
                    provider_match=_clause(p.provider_match) if p.provider_match is not None else None,
                    fallback=tuple(p.fallback_model_providers or ()))


def _model(m: ModelInfo) -> Model:
    from genai_prices.types import ModelPrice, StartDateConstraint

    if isinstance(m.prices, ModelPrice):
        return Model(m.id, _clause(m.match), (Dated(None, _rates(m.prices)),), conditional=False)
    prices = tuple(Dated(c.constraint.start_date if isinstance(c.constraint, StartDateConstraint) else None,
                         _rates(c.prices)) for c in m.prices)
    if not prices:  # (listed without any price: no price, as a model the dataset does not know)
        return Model(m.id, _clause(m.match), (Dated(None, _NO_RATES),), conditional=False)
    return Model(m.id, _clause(m.match), prices, conditional=True)


def _clause(c: MatchLogic) -> Clause:
    for kind in _TEXT_CLAUSES:
        if hasattr(c, kind):
            return Clause(kind, str(getattr(c, kind)))
    if hasattr(c, "or_"):
        return Clause("or", parts=tuple(_clause(part) for part in c.or_))
    if hasattr(c, "and_"):
        return Clause("and", parts=tuple(_clause(part) for part in c.and_))
    return Clause("never")  # a kind a newer dataset added: the model is unpriced, not guessed


def _rates(p: ModelPrice) -> Rates:
    return Rates(_rate(p.input_mtok), _rate(p.output_mtok), _rate(p.cache_read_mtok), _rate(p.cache_write_mtok),
                 _rate(p.output_reasoning_mtok))


def _rate(value: Decimal | TieredPrices | None) -> float | None:
    """USD per million tokens: a tiered price's base tier."""
    if value is None:
        return None
    return float(value) if isinstance(value, Decimal) else float(value.base)
