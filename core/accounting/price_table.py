"""The price dataset as a compact table, and the dataset's way of finding a model in it.

The `genai-prices` package holds its dataset as ~1,500 pydantic objects, and importing it
brings pydantic, httpx and anyio along: ~11 MB a worker for a table of names and five numbers
per model. So a worker holds this table instead (built from the package in another process,
tollway.gateway.price_source) and matches names the way the package does
(`DataSnapshot.find_provider_model` with a provider id or none, `Provider.find_model`):

- a provider by its id, else by its `provider_match` clause on the id; with no id, the first
  whose `model_match` clause matches the name;
- in that provider, the first model whose `match` clause matches the lower-cased name, else in
  its fallback providers (one step); failing that, the same with a compact date suffix
  (`-20251211`) written the dashed way (`-2025-12-11`).

tests/test_price_table.py holds the two to the same answers for every model the dataset lists.
"""
from __future__ import annotations

import re
from datetime import date
from typing import Annotated, Literal

import msgspec

FORMAT = 1  # of the encoded table: part of the name of a cached copy (tollway.gateway.price_source)
_LITELLM = "litellm"
_COMPACT_DATE = re.compile(r"(-)(20\d{2})(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])(?=-|:|$)")


ClauseKind = Literal["equals", "starts_with", "ends_with", "contains", "regex", "or", "and", "never"]


class Clause(msgspec.Struct, frozen=True):
    """A match clause: `kind` is starts_with, ends_with, contains, regex or equals (on `text`),
    `or` / `and` (of `parts`), or `never` (a clause of a kind this version does not know: its
    model is not found, so it is unpriced rather than priced by a guess)."""

    kind: ClauseKind
    text: str = ""
    parts: tuple[Clause, ...] = ()

    def matches(self, name: str) -> bool:
        kind = self.kind
        if kind == "equals":
            return name.lower() == self.text.lower()
        if kind == "starts_with":
            return name.lower().startswith(self.text.lower())
        if kind == "ends_with":
            return name.lower().endswith(self.text.lower())
        if kind == "contains":
            return self.text.lower() in name.lower()
        if kind == "regex":
            return re.search(self.text, name) is not None
        if kind == "or":
            return any(part.matches(name) for part in self.parts)
        if kind == "and":
            return all(part.matches(name) for part in self.parts)
        return False  # never


class Rates(msgspec.Struct, frozen=True, array_like=True):
    """USD per million tokens of each class (a tiered price: its base tier)."""

    input: float | None
    output: float | None
    cached_input: float | None
    cache_write: float | None
    reasoning: float | None


class Dated(msgspec.Struct, frozen=True, array_like=True):
    """One of a model's prices: from `start` on (None: whatever the date, which includes a
    time-of-day constraint: the full price is never taken for an off-peak one)."""

    start: date | None
    rates: Rates


class Model(msgspec.Struct, frozen=True):
    id: str
    match: Clause
    prices: Annotated[tuple[Dated, ...], msgspec.Meta(min_length=1)]  # in the dataset's order: the last in effect wins
    conditional: bool  # listed as conditional prices (with none in effect, the first applies)


class Provider(msgspec.Struct, frozen=True):
    id: str
    models: tuple[Model, ...]
    model_match: Clause | None = None
    provider_match: Clause | None = None
    fallback: tuple[str, ...] = ()


class PriceTable(msgspec.Struct, frozen=True):
    source: str  # the package and version it was built from
    providers: tuple[Provider, ...]

    def find(self, name: str, provider_id: str | None) -> Model | None:
        """The model `name` is priced as, asking `provider_id` (None: the dataset guesses the
        provider from the name), or None where the dataset would raise LookupError."""
        name = name.lower()
        if provider_id and provider_id.lower() == _LITELLM and "/" in name:
            named, rest = name.split("/", 1)
            if named and self._by_id(named) is not None:
                provider_id, name = named, rest
        provider = self._provider(name, provider_id)
        if provider is None:
            return None
        found = self._match(provider, name, True)
        if found is None:
            dashed = _dashed_dates(name)
            if dashed != name:
                found = self._match(provider, dashed, True)
        return found

    def _provider(self, name: str, provider_id: str | None) -> Provider | None:
        if provider_id is not None:
            found = self._by_id(provider_id)
            if found is not None or provider_id.lower() != _LITELLM:
                return found
            # (litellm naming no known provider: guessed from the name, as for no id at all)
        if not name:
            return None
        return next((p for p in self.providers if p.model_match is not None and p.model_match.matches(name)), None)

    def _by_id(self, provider_id: str) -> Provider | None:
        wanted = provider_id.lower().strip()
        found = next((p for p in self.providers if p.id == wanted), None)
        if found is None:
            found = next((p for p in self.providers if p.provider_match is not None
                          and p.provider_match.matches(wanted)), None)
        return found

    def _match(self, provider: Provider, name: str, fall_back: bool) -> Model | None:
        found = next((m for m in provider.models if m.match.matches(name)), None)
        if found is None and fall_back:
            for other_id in provider.fallback:  # one step: a fallback's own fallbacks are not asked
                other = next((p for p in self.providers if p.id == other_id), None)
                if other is not None and (found := self._match(other, name, False)) is not None:
                    break
        return found


def rates_on(model: Model, today: date | None) -> Rates:
    """The model's rates on `today` (None: the newest listed, announced changes included)."""
    if not model.conditional:
        return model.prices[0].rates
    for dated in reversed(model.prices):
        if dated.start is None or today is None or dated.start <= today:
            return dated.rates
    return model.prices[0].rates


def _dashed_dates(name: str) -> str:
    """`gpt-5.2-20251211` as `gpt-5.2-2025-12-11` (a valid date only), as the dataset retries it."""

    def dashed(m: re.Match[str]) -> str:
        year, month, day = (int(m.group(i)) for i in range(2, 5))
        try:
            date(year, month, day)
        except ValueError:
            return m.group(0)
        return f"{m.group(1)}{year:04d}-{month:02d}-{day:02d}"

    return _COMPACT_DATE.sub(dashed, name)


encode = msgspec.json.Encoder().encode
decode = msgspec.json.Decoder(PriceTable).decode
