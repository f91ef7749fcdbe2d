"""tollway.gateway.lifecycle.heap: the worker's heap frozen once built and settled again every
period, so what became garbage while frozen (a retired runtime, a closed pooled connection) is
collected within one period instead of never."""
from __future__ import annotations

import asyncio
import gc
import weakref

import pytest

from tollway.core.config import loads
from tollway.gateway.lifecycle.heap import Heap

CONFIG = """
providers:
  - {name: up, schema: openai, base_url: "http://127.0.0.1:9/v1"}
models:
  - {name: m, targets: [{provider: up}]}
"""


class Node:
    """An object in a reference cycle: only the cycle collector frees it."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture(autouse=True)
def thawed():
    """These tests freeze this test process's heap: it is thawed again whatever they do."""
    yield
    gc.unfreeze()


async def _until(check, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_start_collects_garbage_then_freezes_what_lives():
    garbage, kept = Node(), Node()
    dead, alive = weakref.ref(garbage), weakref.ref(kept)
    del garbage
    heap = Heap(resettle_seconds=3600)
    heap.start(asyncio.get_running_loop())
    assert dead() is None, "garbage at settle time is collected, not frozen"
    assert heap.frozen > 0 and heap.settles == 1 and alive() is kept
    del kept
    gc.collect()
    assert alive() is not None, "a frozen cycle is out of the collector's reach (why the heap is settled again)"
    heap.close()


async def test_a_cycle_that_became_garbage_while_frozen_is_collected_at_the_next_settle():
    retired = Node()  # alive at the freeze, as a runtime a reload later replaces
    gone = weakref.ref(retired)
    heap = Heap(resettle_seconds=0.05)
    heap.start(asyncio.get_running_loop())
    del retired
    gc.collect()
    assert gone() is not None, "frozen: not collected by the ordinary passes"
    await _until(lambda: heap.settles >= 2)
    assert gone() is None, "the next settle collected it"
    assert heap.frozen > 0, "and froze the heap again"
    heap.close()


async def test_close_stops_the_settling():
    heap = Heap(resettle_seconds=0.02)
    heap.start(asyncio.get_running_loop())
    heap.close()
    await asyncio.sleep(0.1)
    assert heap.settles == 1


async def test_a_reloaded_gateways_old_runtime_is_collected_by_the_next_settle():
    """A reload's retired runtime was frozen with the rest; the settle after it frees it."""
    from tollway.gateway.app import Gateway

    gw = Gateway(loads(CONFIG))
    gw.heap = Heap(resettle_seconds=0.05)
    gw.start()
    gw.heap.start(asyncio.get_running_loop())
    first = weakref.ref(gw.runtime)
    gw.reload(loads(CONFIG.replace("127.0.0.1:9", "127.0.0.1:10")))
    await _until(lambda: not gw.background)
    settles = gw.heap.settles
    await _until(lambda: gw.heap.settles > settles)
    assert first() is None, "the replaced runtime was collected, not frozen for good"
    gw.heap.close()
    await gw._close_providers(list(gw.runtime.providers.values()))
    await gw.upstream.aclose()
