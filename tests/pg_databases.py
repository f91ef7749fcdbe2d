"""Where the store tests keep their data: a fresh PostgreSQL database per test, created and
dropped here, on the server of TOLLWAY_TEST_POSTGRES_URL (default: the one on 127.0.0.1:5432),
or a SQLite file. Without a PostgreSQL server the PostgreSQL tests are skipped, unless
TOLLWAY_REQUIRE_POSTGRES is set (CI sets it): then they fail.

Test modules import the fixtures (`pg_database`, `target`) by name.
"""
from __future__ import annotations

import contextlib
import os
import socket
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

PG_URL = os.environ.get("TOLLWAY_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def _pg_answers() -> bool:
    parts = urlsplit(PG_URL)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5432), timeout=1):
            return True
    except OSError:
        return False


def need_postgres() -> None:
    if not _pg_answers():
        if os.environ.get("TOLLWAY_REQUIRE_POSTGRES"):
            pytest.fail(f"TOLLWAY_REQUIRE_POSTGRES is set and no PostgreSQL answers at {PG_URL}")
        pytest.skip(f"no PostgreSQL answers at {PG_URL}")


async def _create_database() -> str:
    name = f"tollway_test_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(PG_URL)
    try:
        await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()
    return urlunsplit(urlsplit(PG_URL)._replace(path="/" + name))


async def drop_database(url: str) -> None:
    conn = await asyncpg.connect(PG_URL)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {urlsplit(url).path[1:]} WITH (FORCE)")
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def fresh_database() -> AsyncIterator[str]:
    """The URL of a new, empty database, dropped afterwards."""
    need_postgres()
    url = await _create_database()
    try:
        yield url
    finally:
        await drop_database(url)


@pytest.fixture
async def pg_database() -> AsyncIterator[str]:
    async with fresh_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
async def target(request: pytest.FixtureRequest, tmp_path) -> AsyncIterator[str]:
    """Where a store keeps its data: a SQLite file, or a fresh PostgreSQL database's URL."""
    if request.param == "sqlite":
        yield str(tmp_path / "ledger.db")
        return
    async with fresh_database() as url:
        yield url
