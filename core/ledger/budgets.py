"""Calendar budgets: how much a key or team may spend per day, week or month (UTC).

A `BudgetBook` holds, for each owner with a `budget:`, what it spent in the current period,
and decides: `refusal` says why a request must be refused (or None), `charge` adds a
finished request's cost. It takes `now` and does no I/O: the gateway rebuilds `spent` from
the ledger at start and, with Redis, shares it between replicas
(tollway.gateway.store.budgets).

Requests are charged when they end, and are not reserved against the budget at admission.
A stream (with `rate_limits.enforce_streams`) *claims* what its output costs as it goes
(`claim`, in steps, before the chunk that needs it is sent) and is stopped when a claim does
not fit; its claims count as spent until it is charged and `release`s them. So an owner
overshoots by what its non-stream requests in flight when the budget ran out go on to cost,
not by its streams (docs/ledger.md, "Overshoot").
"""
from __future__ import annotations

from dataclasses import dataclass, field

from tollway.core import errors
from tollway.core.config import Budget, Config
from tollway.core.errors import GatewayError
from tollway.core.ledger.periods import period_end, period_start, rfc3339

Owner = tuple[str, str]  # ("key" | "team", name)


@dataclass(slots=True)
class Account:
    budget: Budget
    start: float = 0.0  # the current period's start (UNIX seconds)
    end: float = 0.0
    spent: float = 0.0  # USD this period
    held: float = 0.0  # USD claimed by streams of this process still running (not in `spent` yet)
    # True while the ledger's spend this period is still to be added to `spent`: until then
    # `spent` holds this process's charges alone, which must not seed a shared counter
    # (tollway.gateway.store.budget_share)
    awaiting_ledger: bool = False
    # The ledger's spend this period when last read: the spend is never less, whatever a shared
    # counter says (one left by a budget removed and added back this period missed the spend
    # in between)
    ledger_floor: float = 0.0

    def roll(self, now: float) -> bool:
        """Move to the period holding `now`; True if that started a new one."""
        if self.start <= now < self.end:
            return False
        self.start, self.end, self.spent = period_start(now, self.budget.period), period_end(now, self.budget.period), 0.0
        self.ledger_floor = 0.0
        return True


@dataclass(slots=True)
class BudgetBook:
    accounts: dict[Owner, Account] = field(default_factory=dict)

    @classmethod
    def of(cls, config: Config, now: float) -> BudgetBook:
        book = cls({("key", k.name): Account(k.budget) for k in config.keys if k.budget is not None}
                   | {("team", t.name): Account(t.budget) for t in config.teams if t.budget is not None})
        for account in book.accounts.values():
            account.roll(now)
        return book

    def __bool__(self) -> bool:
        return bool(self.accounts)

    def refusal(self, key: str | None, team: str | None, now: float) -> GatewayError | None:
        """The 429 for a request of `key` (in `team`) if either has spent its budget."""
        for owner, account in self._accounts_of(key, team):
            account.roll(now)
            if account.spent + account.held >= account.budget.usd:
                return _exhausted(owner[0], owner[1], account)
        return None

    def claim(self, key: str | None, team: str | None, usd: float, now: float) -> GatewayError | None:
        """Hold `usd` on the key's and the team's accounts for a running stream, if every one
        has it left (spent and held by others counted); else hold nothing and return the 429
        for the first that has not."""
        accounts = self._accounts_of(key, team)
        for owner, account in accounts:
            account.roll(now)
            if account.spent + account.held + usd > account.budget.usd:
                return _exhausted(owner[0], owner[1], account)
        for _, account in accounts:
            account.held += usd
        return None

    def release(self, key: str | None, team: str | None, usd: float) -> None:
        """Give back what a stream claimed (it is charged what it cost instead)."""
        for _, account in self._accounts_of(key, team):
            account.held = max(account.held - usd, 0.0)

    def applies(self, key: str | None, team: str | None) -> bool:
        """True if the key or its team has a budget."""
        return bool(self._accounts_of(key, team))

    def charge(self, key: str | None, team: str | None, usd: float, now: float,
               arrived: float | None = None) -> list[tuple[Owner, Account]]:
        """Add `usd` to the key's and the team's accounts; the ones charged. A request that
        `arrived` before its account's current period is charged to none: the ledger counts a
        request in the period it arrived in (its record's `ts`), and so do /admin/spend and the
        spend rebuilt at a restart, so the new period must not hold it either."""
        charged = []
        for owner, account in self._accounts_of(key, team):
            account.roll(now)
            if arrived is None or arrived >= account.start:
                account.spent += usd
                charged.append((owner, account))
        return charged

    def _accounts_of(self, key: str | None, team: str | None) -> list[tuple[Owner, Account]]:
        found = []
        for owner in (("key", key), ("team", team)):
            name = owner[1]
            account = self.accounts.get((owner[0], name)) if name is not None else None
            if account is not None and name is not None:
                found.append(((owner[0], name), account))
        return found

    def status(self, now: float) -> list[dict[str, object]]:
        """`/admin/budgets`' items."""
        out: list[dict[str, object]] = []
        for (kind, name), account in sorted(self.accounts.items()):
            account.roll(now)
            out.append({kind: name, "owner": kind, "budget_usd": account.budget.usd, "period": account.budget.period,
                        "spent_usd": round(account.spent, 10),
                        "remaining_usd": round(max(account.budget.usd - account.spent, 0.0), 10),
                        "resets_at": rfc3339(account.end)})
        return out


def _exhausted(kind: str, name: str, account: Account) -> GatewayError:
    held = f", {account.held:.4f} USD more held by streams running" if account.held else ""
    message = (f"The {kind} '{name}' has spent its budget of {account.budget.usd:g} USD for this "
               f"{account.budget.period} ({account.spent:.4f} USD{held}). It resets at {rfc3339(account.end)}.")
    return errors.budget_exceeded(message, [("x-tollway-budget-resets-at", rfc3339(account.end))])
