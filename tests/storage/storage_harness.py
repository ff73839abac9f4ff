"""The engines every storage test runs against, opened one way, trio-style.

Each engine kind is opened through one `StoreFactory`, so a test written once runs against all of
them. `lmdb-grouped` is LMDB with inline keys capped at 2 bytes, so that almost every key goes
through the group records that otherwise only hold keys longer than LMDB allows. This module only
opens engines; it must never assert anything about them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dynastore.storage import Engine, open_engine
from dynastore.storage.lmdb_engine import LmdbEngine

ENGINE_KINDS = ("memory", "lmdb", "lmdb-grouped", "sqlite")
DISK_ENGINE_KINDS = tuple(kind for kind in ENGINE_KINDS if kind != "memory")
# Ample for any test, and small enough that many open environments never strain the address space.
TEST_MAP_SIZE_BYTES = 256 * 1024**2


@dataclass(frozen=True, slots=True)
class StoreFactory:
    """Opens engines of one kind in directories under `root`."""

    kind: str
    root: Path

    @property
    def persistent(self) -> bool:
        return self.kind in DISK_ENGINE_KINDS

    def open(self, name: str = "store", *, durable: bool = True) -> Engine:
        path = self.root / name
        if self.kind == "lmdb-grouped":
            return LmdbEngine(path, durable=durable, map_size_bytes=TEST_MAP_SIZE_BYTES, inline_key_bytes_max=2)
        if self.kind == "lmdb":
            return LmdbEngine(path, durable=durable, map_size_bytes=TEST_MAP_SIZE_BYTES)
        return open_engine(self.kind, path, durable=durable)
