"""Every process's copy of the run-time keys and teams, kept current from the store.

The request path never queries the database: it looks keys up in the runtime's table
(tollway.gateway.runtime), which the gateway rebuilds from this directory whenever it changes.
The directory learns of changes three ways, so the bound holds even if one fails:

- its own writes (the admin API on this process) apply at once;
- PostgreSQL pushes a NOTIFY for each change made anywhere, which wakes the poller;
- the poller asks the store for its key version every `POLL_SECONDS` and, when it moved, reads
  what changed since the version held (SQLite, and the safety net when a NOTIFY is missed).

A change made through any replica reaches every replica within POLL_SECONDS plus a read
(docs/keys.md says 5 seconds). With the database down, the last table loaded keeps serving.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from tollway.core.config import Key
from tollway.core.tenancy.records import ApiKey, ApiTeam, Snapshot
from tollway.gateway.runtime import ApiTables
from tollway.gateway.store import KeyStore, SchemaTooNew, StoreError

log = logging.getLogger("tollway")

POLL_SECONDS = 2.0  # the safety net's period: with a read, well inside the documented 5 s
TOUCH_SECONDS = 30.0  # how often keys' last use is written (coarse on purpose: one UPDATE per key per period)
_OPEN_AT_START = 5.0


@dataclass(frozen=True, slots=True)
class TableChange:
    """What one `apply` changed. `light`: only keys, none of which has (or had) limits or a
    budget or changed team: the key table can be patched in place instead of rebuilding the
    runtime, limits and budgets (O(changed keys), not O(all keys); a burst of key creations at
    100,000 keys would otherwise rebuild once per key)."""

    tables: ApiTables
    keys: tuple[tuple[ApiKey | None, ApiKey], ...]
    light: bool


def _light(old: ApiKey | None, new: ApiKey) -> bool:
    """Whether limits and budgets are blind to this change (they read names, teams, limits and
    budgets; the key table reads the rest)."""
    plain = not new.limits and new.budget is None
    return plain and (old is None or (not old.limits and old.budget is None and old.team == new.team
                                      and old.name == new.name))


class Directory:
    def __init__(self, store: KeyStore, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.version = 0  # the store version everything up to which is applied
        self.loaded = False  # the table was read at least once
        self._opened = False  # the store is connected (a PostgreSQL open makes a pool: once)
        self._keys: dict[str, ApiKey] = {}
        self._teams: dict[str, ApiTeam] = {}
        self._as_keys: dict[str, Key] = {}  # id -> config Key, made once per change
        self.tables = ApiTables(self._keys, self._teams, self._as_keys)
        self._clock = clock
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._failing = False
        # The gateway's: patch its key table (`Change.light`) or rebuild its runtime.
        self.on_change: Callable[[TableChange], None] = lambda change: None

    # -- reading -------------------------------------------------------------------------------

    def key(self, key_id: str) -> ApiKey | None:
        return self._keys.get(key_id)

    def team(self, name: str) -> ApiTeam | None:
        team = self._teams.get(name)
        return team if team is not None and team.deleted_at is None else None

    def keys(self) -> list[ApiKey]:
        return list(self._keys.values())

    def teams(self) -> list[ApiTeam]:
        return [t for t in self._teams.values() if t.deleted_at is None]

    # -- applying changes ----------------------------------------------------------------------

    def apply(self, snapshot: Snapshot, contiguous: bool = True) -> bool:
        """Take every record of `snapshot` newer than the one held. `contiguous`: the snapshot
        holds everything up to its version (a poll), so the directory's version moves there;
        a single write of this process does not (another replica's change may sit between)."""
        keys: list[tuple[ApiKey | None, ApiKey]] = []
        for key in snapshot.keys:
            held = self._keys.get(key.id)
            if held is None or key.version > held.version:
                self._keys[key.id], self._as_keys[key.id] = key, key.as_config_key()
                keys.append((held, key))
        teams = 0
        for team in snapshot.teams:
            held_team = self._teams.get(team.name)
            if held_team is None or team.version > held_team.version:
                self._teams[team.name] = team
                teams += 1
        if contiguous and snapshot.version > self.version:
            self.version = snapshot.version
        if not keys and not teams:
            return False
        # The live mappings, not copies (10 ms a change at 100,000 keys): a runtime reads them
        # only while it is built (or patched), on this loop, between two applies.
        self.on_change(TableChange(self.tables, tuple(keys), light=not teams and all(_light(o, n) for o, n in keys)))
        return True

    async def refresh(self) -> bool:
        """Read what changed since the version held. Raises StoreError."""
        if await self.store.key_version() == self.version and self.loaded:
            return False
        snapshot = await self.store.changes(self.version)
        self.loaded = True
        return self.apply(snapshot)

    # -- lifecycle -----------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect and load the table, waiting a little for the database: one that is down does
        not stop the gateway (config keys work; run-time keys arrive when it is back)."""
        try:
            await asyncio.wait_for(self.store.open(), _OPEN_AT_START)
            self._opened = True
            await self.refresh()
        except SchemaTooNew:
            raise
        except (StoreError, OSError, TimeoutError) as exc:
            log.warning("keys: the %s database is not available at start (%s); serving the config's keys, "
                        "run-time keys arrive when it is back", self.store.backend, exc or "timed out")
            self._failing = True

    def start(self, loop: asyncio.AbstractEventLoop, last_used: dict[str, float]) -> None:
        self._tasks = [loop.create_task(self._poll()), loop.create_task(self._touch(last_used))]

    async def _poll(self) -> None:
        pushed = False
        while True:
            if not pushed:
                pushed = await self._listen()
            try:
                await asyncio.wait_for(self._wake.wait(), POLL_SECONDS)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                if not self._opened:
                    await self.store.open()
                    self._opened = True
                await self.refresh()
                self._recovered()
            except (StoreError, OSError) as exc:
                self._failed(exc)
                pushed = False  # the listening connection may have gone with the database

    async def _listen(self) -> bool:
        try:
            return await self.store.listen(self.wake)
        except (StoreError, OSError):
            return False

    def wake(self) -> None:
        """Read the store now (a NOTIFY came, or this process wrote)."""
        self._wake.set()

    async def _touch(self, last_used: dict[str, float]) -> None:
        while True:
            await asyncio.sleep(TOUCH_SECONDS)
            await self.flush_last_used(last_used)

    async def flush_last_used(self, last_used: dict[str, float]) -> None:
        if not last_used:
            return
        used = dict(last_used)
        last_used.clear()
        try:
            await self.store.touch(used)
        except (StoreError, OSError):
            for key_id, ts in used.items():  # next time, unless a newer use came meanwhile
                last_used[key_id] = max(ts, last_used.get(key_id, ts))

    def _failed(self, exc: BaseException) -> None:
        if not self._failing:  # once per incident
            log.warning("keys: cannot read the %s database (%s); serving the last key table loaded",
                        self.store.backend, exc)
        self._failing = True

    def _recovered(self) -> None:
        if self._failing:
            log.info("keys: the %s database answers again; key table at version %d", self.store.backend, self.version)
        self._failing = False

    async def close(self, last_used: dict[str, float]) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.flush_last_used(last_used)
        await self.store.aclose()
