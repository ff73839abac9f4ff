"""`open_engine` maps an engine name to the right engine, and refuses a name or a path it cannot use."""

from __future__ import annotations

from pathlib import Path

import pytest

from dynastore.settings import Settings
from dynastore.storage import AREAS, StorageError, open_engine
from dynastore.storage.base import put
from dynastore.storage.lmdb_engine import LmdbEngine
from dynastore.storage.memory import MemoryEngine
from dynastore.storage.sqlite_engine import FILE_NAME, SqliteEngine


def test_each_engine_name_opens_that_engine(tmp_path: Path) -> None:
    for kind, engine_type in [("lmdb", LmdbEngine), ("sqlite", SqliteEngine), ("memory", MemoryEngine)]:
        engine = open_engine(kind, tmp_path / kind, durable=True)
        try:
            assert isinstance(engine, engine_type)
            for area in AREAS:
                assert engine.count(area) == 0
        finally:
            engine.close()


def test_the_sqlite_engine_keeps_one_file_in_its_directory(tmp_path: Path) -> None:
    engine = open_engine("sqlite", tmp_path, durable=True)
    try:
        put(engine, "data", b"k", b"v")
        assert (tmp_path / FILE_NAME).is_file()
    finally:
        engine.close()


def test_the_memory_engine_needs_no_path_and_is_never_durable() -> None:
    engine = open_engine("memory", None, durable=True)
    try:
        assert engine.durable is False
    finally:
        engine.close()


def test_an_unknown_engine_name_is_refused_with_the_names_that_exist(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match=r"unknown storage engine 'rocksdb'.*lmdb, sqlite, memory"):
        open_engine("rocksdb", tmp_path, durable=True)


@pytest.mark.parametrize("kind", ["lmdb", "sqlite"])
def test_a_disk_engine_without_a_path_is_refused(kind: str) -> None:
    with pytest.raises(StorageError, match="needs a directory"):
        open_engine(kind, None, durable=True)


def test_the_lmdb_map_size_comes_from_the_settings(tmp_path: Path) -> None:
    """A map too small for a write fails that write (proving the setting reached LMDB), and nothing else."""
    settings = Settings(lmdb_map_size_bytes=1024 * 1024)
    engine = open_engine("lmdb", tmp_path, durable=False, settings=settings)
    try:
        put(engine, "data", b"small", b"fits")
        with pytest.raises(StorageError, match="map is full"):
            put(engine, "data", b"big", b"x" * (4 * 1024 * 1024))
        assert engine.get("data", b"big") is None
        put(engine, "data", b"small-2", b"still fits")
        assert engine.count("data") == 2
    finally:
        engine.close()
