"""tollway.gateway.lifecycle.heap: the worker's heap frozen once built, thawed for a reload's
garbage and frozen again once the retired runtime is gone, never leaking a frozen cycle."""
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


def test_settle_collects_garbage_then_freezes_what_lives():
    garbage, kept = Node(), Node()
    dead, alive = weakref.ref(garbage), weakref.ref(kept)
    del garbage
    heap = Heap()
    heap.settle()
    assert dead() is None, "garbage at settle time is collected, not frozen"
    assert heap.frozen > 0 and alive() is kept
    del kept
    gc.collect()
    assert alive() is not None, "a frozen cycle is out of the collector's reach (why a reload must thaw)"


async def test_a_retired_object_is_collected_and_the_heap_frozen_again_once_it_is_gone():
    loop = asyncio.get_running_loop()
    old = Node()  # built before the heap settles, as the first runtime is
    gone = weakref.ref(old)
    heap = Heap(resettle_seconds=0.02)
    heap.settle()
    heap.retire(old, loop)
    assert heap.frozen == 0, "a reload thaws the heap at once"
    await asyncio.sleep(0.1)  # several looks while something (this test) still holds it
    assert heap.frozen == 0 and gone() is not None, "not frozen again while a request may hold the old runtime"
    del old
    await _until(lambda: heap.frozen > 0)
    assert gone() is None, "the retired cycle was collected before the heap froze again"
    heap.close()


async def test_close_stops_the_pending_look():
    heap = Heap(resettle_seconds=0.02)
    heap.retire(Node(), asyncio.get_running_loop())
    heap.close()
    await asyncio.sleep(0.1)
    assert heap.frozen == 0


async def test_a_gateway_reload_hands_the_old_runtime_to_the_heap():
    """The wiring in Gateway.reload: the runtime it replaces is the one the heap waits for."""
    from tollway.gateway.app import Gateway

    gw = Gateway(loads(CONFIG))
    gw.heap = Heap(resettle_seconds=0.02)
    gw.start()
    gw.heap.settle()
    first = weakref.ref(gw.runtime)
    gw.reload(loads(CONFIG.replace("127.0.0.1:9", "127.0.0.1:10")))
    assert gw.heap.frozen == 0
    await _until(lambda: gw.heap.frozen > 0)
    assert first() is None, "the replaced runtime was collected, not frozen for good"
    gw.heap.close()
    await _until(lambda: not gw.background)
    await gw._close_providers(list(gw.runtime.providers.values()))
    await gw.upstream.aclose()
