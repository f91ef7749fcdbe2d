"""Single flight: concurrent identical misses in one process make one upstream call.

The first miss of a key leads: it goes upstream and, when its request is finished, lands the
flight with the entry it stored (or None: nothing storable came back). Misses of the same key
that arrive meanwhile join the flight and wait for that landing instead of calling upstream;
a None (or a leader that takes longer than `wait`) sends each of them upstream after all.
"""
from __future__ import annotations

import asyncio

from tollway.core.cache.entry import Entry


class SingleFlight:
    __slots__ = ("flights",)

    def __init__(self) -> None:
        # key -> the flight's future, made by the first request that joins (None: nobody waits yet;
        # most misses are alone, and a future per miss would cost them all)
        self.flights: dict[str, asyncio.Future[Entry | None] | None] = {}

    def lead(self, key: str) -> bool:
        """True if no flight of `key` is in the air (the caller now leads one)."""
        if key in self.flights:
            return False
        self.flights[key] = None
        return True

    async def join(self, key: str, wait: float) -> Entry | None:
        """The leader's entry, or None if it stored none (or did not land within `wait` s)."""
        if key not in self.flights:
            return None
        flight = self.flights[key]
        if flight is None:
            flight = self.flights[key] = asyncio.get_running_loop().create_future()
        try:
            return await asyncio.wait_for(asyncio.shield(flight), wait)
        except TimeoutError:
            return None

    def awaited(self, key: str) -> bool:
        """Whether requests are waiting on the flight of `key`."""
        return self.flights.get(key) is not None

    def land(self, key: str, value: Entry | None) -> None:
        """End the flight of `key`: everyone waiting on it gets `value`."""
        flight = self.flights.pop(key, None)
        if flight is not None and not flight.done():
            flight.set_result(value)
