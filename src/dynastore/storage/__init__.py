"""Local storage: the engine protocol (base.py) and the engines behind it, chosen by name.

`open_engine` is the one place that maps a setting (`storage_engine`) to an implementation. Every
engine raises only StorageError for anything that goes wrong, whatever library it is built on.
"""

from __future__ import annotations

from pathlib import Path

from dynastore.settings import DEFAULTS, Settings
from dynastore.storage.base import AREAS, Engine, Op, StorageError
from dynastore.storage.lmdb_engine import LmdbEngine
from dynastore.storage.memory import MemoryEngine
from dynastore.storage.sqlite_engine import SqliteEngine

__all__ = ["AREAS", "ENGINE_KINDS", "Engine", "Op", "StorageError", "open_engine"]

ENGINE_KINDS: tuple[str, ...] = ("lmdb", "sqlite", "memory")


def open_engine(kind: str, path: Path | None, *, durable: bool, settings: Settings | None = None) -> Engine:
    """Open the engine named `kind` on directory `path`.

    The memory engine ignores `path` and `durable`: it is never durable, and says so in `.durable`.
    """
    settings = settings or DEFAULTS
    if kind == "memory":
        return MemoryEngine()
    if kind not in ENGINE_KINDS:
        raise StorageError(f"unknown storage engine {kind!r}; choose one of {', '.join(ENGINE_KINDS)}")
    if path is None:
        raise StorageError(f"the {kind} engine needs a directory to keep its files in")
    if kind == "lmdb":
        return LmdbEngine(path, durable=durable, map_size_bytes=settings.lmdb_map_size_bytes)
    return SqliteEngine(path, durable=durable)
