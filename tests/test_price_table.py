"""The compact price table against the `genai-prices` package it is built from: for every model
the dataset lists, its id (asked with no provider, its own, others, `litellm`) and the names
its match clauses are written with (as they are, upper-cased, with a compact date, behind a
vendor path) find the same model, with the same prices, in both."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
from datetime import date

import pytest
from genai_prices.data import providers as DATASET
from genai_prices.data_snapshot import DataSnapshot
from genai_prices.types import ModelPrice, StartDateConstraint

from tollway.core.accounting import price_table, pricing
from tollway.core.accounting.price_export import _rates, from_dataset
from tollway.core.accounting.price_table import PriceTable, rates_on
from tollway.gateway import price_source

SNAPSHOT = DataSnapshot(providers=DATASET, from_auto_update=False)
TABLE = from_dataset()
OWNER = {id(m): p.id for p in DATASET for m in p.models}  # a dataset model -> the provider listing it
TABLE_OWNER = {id(m): p.id for p in TABLE.providers for m in p.models}
HINTS = (None, "openai", "azure", "anthropic", "aws", "google", "litellm", "no-such-provider")


def _texts(clause: object) -> list[str]:
    """The strings a match clause is written with (each a name, or the start of one, it matches)."""
    out = [str(getattr(clause, kind)) for kind in ("equals", "starts_with", "contains") if hasattr(clause, kind)]
    for part in (*getattr(clause, "or_", ()), *getattr(clause, "and_", ())):
        out += _texts(part)
    return out


def _asks() -> list[tuple[str, str | None]]:
    """(name, provider hint) pairs: every model id with every hint; every name its clauses are
    written with, as it is (no hint, its own provider), upper-cased, with a compact date, and
    behind its provider's path asked as `litellm` (its own provider)."""
    asks: set[tuple[str, str | None]] = {("", None), ("gpt-5.2-20251211", "openai"), ("unknown-model-x", None)}
    for provider in DATASET:
        own = provider.id
        for model in provider.models:
            asks |= {(model.id, hint) for hint in HINTS}
            for text in _texts(model.match):
                asks |= {(text, None), (text, own), (text.upper(), own), (text + "-20240718", own),
                         (f"{own}/{text}", "litellm")}
    return sorted(asks, key=str)


def _dataset_answer(name: str, hint: str | None) -> tuple[str, str, object] | None:
    try:
        _, info = SNAPSHOT.find_provider_model(name, None, hint, None)
    except LookupError:
        return None
    return OWNER[id(info)], info.id, _newest(info)


def _newest(info: object) -> object:
    prices = info.prices  # type: ignore[attr-defined]
    return _rates(prices if isinstance(prices, ModelPrice) else prices[-1].prices)


def _table_answer(table: PriceTable, name: str, hint: str | None) -> tuple[str, str, object] | None:
    found = table.find(name, hint)
    return None if found is None else (TABLE_OWNER[id(found)], found.id, rates_on(found, None))


def test_every_listed_model_is_found_as_the_dataset_finds_it():
    asks = _asks()
    assert len(asks) > 10000 and len(TABLE.providers) == len(DATASET)
    mismatches, found = [], set()
    for name, hint in asks:
        want, got = _dataset_answer(name, hint), _table_answer(TABLE, name, hint)
        if want != got:
            mismatches.append((name, hint, want, got))
        if got is not None:
            found.add(got[:2])
    assert not mismatches, f"{len(mismatches)} differ, e.g. {mismatches[:3]}"
    assert len(found) > len(TABLE_OWNER) // 2, "most models are found (the comparison is not of two Nones)"


def test_a_dated_price_takes_effect_on_its_start_date():
    """Each start date of every model with dated prices: from that day the price listed last
    among those in effect, the day before the one before it, and before any the first listed."""
    checked = 0
    for provider in DATASET:
        for model in provider.models:
            if isinstance(model.prices, ModelPrice) or not any(
                    isinstance(c.constraint, StartDateConstraint) for c in model.prices):
                continue
            found = next((f for f in (TABLE.find(t, provider.id) for t in _texts(model.match))
                          if f is not None and f.id == model.id), None)
            if found is None:  # (a few ids are matched by none of their own names: the dataset misses them too)
                continue
            assert rates_on(found, date(1970, 1, 1)) == _in_effect(model.prices, date(1970, 1, 1))
            for c in model.prices:
                if isinstance(c.constraint, StartDateConstraint):
                    day = c.constraint.start_date
                    assert rates_on(found, day) == _in_effect(model.prices, day)
                    assert rates_on(found, date.fromordinal(day.toordinal() - 1)) == \
                        _in_effect(model.prices, date.fromordinal(day.toordinal() - 1))
            checked += 1
    assert checked > 3


def _in_effect(prices: list, day: date) -> object:
    """The rates in effect on `day`, as the dataset's conditional prices say (the reference)."""
    for c in reversed(prices):
        if not isinstance(c.constraint, StartDateConstraint) or c.constraint.start_date <= day:
            return _rates(c.prices)
    return _rates(prices[0].prices)


def test_the_table_survives_its_encoding():
    assert price_table.decode(price_table.encode(TABLE)) == TABLE


def test_the_child_process_builds_the_same_table():
    raw = subprocess.run([sys.executable, "-m", "tollway.gateway.price_source"], capture_output=True,
                         check=True).stdout
    assert price_table.decode(raw) == TABLE


def test_load_caches_the_table_in_a_private_folder_and_reads_it_back(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("TOLLWAY_CACHE_DIR", str(folder))
    assert price_source.load() == TABLE
    (cached,) = folder.iterdir()
    assert cached.name.startswith("prices-") and stat.S_IMODE(os.stat(folder).st_mode) == 0o755
    # the next load reads the file, not the dataset: a table written there is what it returns
    marked = PriceTable("marked", TABLE.providers[:1])
    cached.write_bytes(price_table.encode(marked))
    assert price_source.load() == marked


def test_a_folder_others_may_write_to_is_not_used(tmp_path, monkeypatch):
    folder = tmp_path / "shared"
    folder.mkdir()
    folder.chmod(0o777)
    monkeypatch.setenv("TOLLWAY_CACHE_DIR", str(folder))
    planted = folder / price_source._cache_file().name if price_source._cache_file() else None
    assert planted is None, "a world-writable folder gives no cache file"
    assert price_source.load() == TABLE
    assert list(folder.iterdir()) == []


def test_a_broken_cached_file_is_built_anew(tmp_path, monkeypatch):
    monkeypatch.setenv("TOLLWAY_CACHE_DIR", str(tmp_path))
    path = price_source._cache_file()
    assert path is not None
    path.write_bytes(b"{not json")
    assert price_source.load() == TABLE
    assert price_table.decode(path.read_bytes()) == TABLE


@pytest.fixture
def restored_pricing():
    yield
    pricing.use_table(from_dataset)


def test_dataset_price_reads_the_table_it_is_given(restored_pricing):
    pricing.use_table(lambda: PriceTable("empty", ()))
    assert pricing.dataset_price("gpt-4o") is None
    pricing.use_table(lambda: TABLE)
    assert pricing.dataset_price("gpt-4o") is not None


def test_no_cache_is_made_for_a_user_without_a_home(tmp_path, monkeypatch):
    monkeypatch.delenv("TOLLWAY_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "nonexistent"))
    assert price_source._cache_file() is None
    assert price_source.load() == TABLE
    assert not (tmp_path / "nonexistent").exists()


def test_a_home_that_cannot_be_determined_gives_no_cache(monkeypatch):
    monkeypatch.delenv("TOLLWAY_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)

    def no_home() -> None:
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(price_source.Path, "home", staticmethod(no_home))
    assert price_source.load() == TABLE, "the worker starts: the table is built, not cached"


@pytest.mark.parametrize("base", ["relative/cache", "/"])
def test_a_relative_or_root_cache_folder_is_not_used(monkeypatch, base):
    monkeypatch.setenv("TOLLWAY_CACHE_DIR", base)
    assert price_source._cache_file() is None


def test_a_cached_file_others_may_write_to_or_a_link_is_not_read(tmp_path, monkeypatch):
    monkeypatch.setenv("TOLLWAY_CACHE_DIR", str(tmp_path))
    path = price_source._cache_file()
    marked = price_table.encode(PriceTable("marked", TABLE.providers[:1]))
    path.write_bytes(marked)
    path.chmod(0o666)
    assert price_source.load() == TABLE, "a file others may write to is built anew"
    planted = tmp_path / "planted.json"
    planted.write_bytes(marked)
    path.unlink()
    path.symlink_to(planted)
    assert price_source.load() == TABLE, "a symbolic link is not followed"
    assert not path.is_symlink() and stat.S_IMODE(path.stat().st_mode) == 0o644


def test_a_cached_file_with_a_clause_this_version_does_not_know_is_built_anew(tmp_path, monkeypatch):
    monkeypatch.setenv("TOLLWAY_CACHE_DIR", str(tmp_path))
    path = price_source._cache_file()
    path.write_bytes(price_table.encode(TABLE).replace(b'"kind":"equals"', b'"kind":"weird"', 1))
    assert price_source.load() == TABLE


def test_older_cached_tables_are_removed_when_a_new_one_is_written(tmp_path, monkeypatch):
    monkeypatch.setenv("TOLLWAY_CACHE_DIR", str(tmp_path))
    older = tmp_path / "prices-0.1.0-1-2-abc.json"
    older.write_bytes(b"{}")
    kept = tmp_path / "unrelated.txt"
    kept.write_bytes(b"x")
    price_source.load()
    assert not older.exists() and kept.exists() and price_source._cache_file().exists()


def test_a_failing_child_falls_back_to_building_the_table_here(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TOLLWAY_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(price_source.sys, "executable", "/bin/false")
    with caplog.at_level("WARNING", logger="tollway"):
        assert price_source.load() == TABLE
    assert "child process failed" in caplog.text
    assert list(tmp_path.iterdir()) == [], "what the child did not build is not cached"


def test_a_dataset_that_cannot_be_read_leaves_the_worker_without_dataset_prices(monkeypatch, caplog):
    monkeypatch.setattr(price_source.sys, "executable", "/bin/false")
    monkeypatch.setenv("TOLLWAY_CACHE_DIR", "relative")  # no cache

    def broken() -> PriceTable:
        raise ImportError("No module named 'genai_prices'")

    monkeypatch.setattr(price_source.price_export, "from_dataset", broken)
    with caplog.at_level("ERROR", logger="tollway"):
        assert price_source.load() == price_source.NO_PRICES
    assert "unpriced" in caplog.text


def test_the_images_build_step_makes_the_cache_a_worker_then_reads(tmp_path, monkeypatch, caplog):
    """The Dockerfile runs `python -m tollway.gateway.price_source --build` as root with
    TOLLWAY_CACHE_DIR set; a worker then reads what it made, building nothing."""
    folder = tmp_path / "prices"
    env = dict(os.environ, TOLLWAY_CACHE_DIR=str(folder))
    done = subprocess.run([sys.executable, "-m", "tollway.gateway.price_source", "--build"], env=env,
                          capture_output=True, text=True, check=True)
    (made,) = folder.iterdir()
    assert str(made) in done.stdout and stat.S_IMODE(made.stat().st_mode) == 0o644
    monkeypatch.setenv("TOLLWAY_CACHE_DIR", str(folder))
    monkeypatch.setattr(price_source.sys, "executable", "/bin/false")  # a child would fail
    with caplog.at_level("WARNING", logger="tollway"):
        assert price_source.load() == TABLE
    assert "child" not in caplog.text, "the worker read the image's table"


def test_the_build_step_fails_where_it_cannot_make_the_cache():
    env = dict(os.environ, TOLLWAY_CACHE_DIR="relative/folder")
    done = subprocess.run([sys.executable, "-m", "tollway.gateway.price_source", "--build"], env=env,
                          capture_output=True, text=True)
    assert done.returncode == 1 and "TOLLWAY_CACHE_DIR" in done.stderr

def test_a_folder_among_the_older_tables_is_left_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("TOLLWAY_CACHE_DIR", str(tmp_path))
    (tmp_path / "prices-odd.json").mkdir()
    assert price_source.load() == TABLE
    assert (tmp_path / "prices-odd.json").is_dir() and price_source._cache_file().exists()


def test_warm_builds_the_cache_once_so_workers_read_it(tmp_path, monkeypatch, caplog):
    """`serve` warms the cache before its workers fork: each then reads the table, none builds it."""
    monkeypatch.setenv("TOLLWAY_CACHE_DIR", str(tmp_path))
    with caplog.at_level("INFO", logger="tollway"):
        price_source.warm()
    assert "built before starting the workers" in caplog.text
    made = price_source._cache_file()
    assert made.exists()
    before = made.stat().st_mtime_ns
    monkeypatch.setattr(price_source.sys, "executable", "/bin/false")  # a second build would fail loudly
    caplog.clear()
    with caplog.at_level("INFO", logger="tollway"):
        price_source.warm()
        assert price_source.load() == TABLE
    assert made.stat().st_mtime_ns == before and "read from" in caplog.text and "failed" not in caplog.text


def test_warm_never_raises_and_caches_nothing_where_the_child_fails(tmp_path, monkeypatch):
    monkeypatch.setenv("TOLLWAY_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(price_source.sys, "executable", "/bin/false")
    price_source.warm()
    assert list(tmp_path.iterdir()) == []
