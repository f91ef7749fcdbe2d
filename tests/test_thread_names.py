"""The worker's own threads carry OS names (top -H, ps -L, /proc/<pid>/task/*/comm)."""
from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

from tollway.gateway.lifecycle.threads import name_this_thread
from tollway.gateway.store.sqlite import SqliteStore

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="thread names are read from /proc")


def _names() -> set[str]:
    return {(task / "comm").read_text().strip() for task in Path("/proc/self/task").iterdir()}


def test_a_thread_names_itself_for_the_os_cut_to_its_15_bytes():
    seen: list[str] = []

    def run() -> None:
        name_this_thread("tollway-a-very-long-name")
        seen.append(Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text().strip())

    t = threading.Thread(target=run)
    t.start()
    t.join()
    assert seen == ["tollway-a-very-"]


async def test_the_sqlite_ledgers_threads_are_named(tmp_path):
    store = SqliteStore(str(tmp_path / "l.db"))
    await store.open()
    try:
        await store.key_version()  # (the reader's thread starts with its first call)
        assert {"tollway-sqlite", "tollway-sqlread"} <= _names()
    finally:
        await store.aclose()
