"""A simulated disk: an engine whose writes survive a crash only once synced.

In durable mode every batch is synced as it is written (as LMDB and SQLite do in durable mode), so
a crash loses nothing that `write` returned for. In buffered mode batches stay volatile until
`sync()`; a crash (`lose_unsynced`) throws them away, as a machine losing power would.
"""

from __future__ import annotations

from collections.abc import Sequence

from dynastore.storage.base import AREAS, Op, Space, row_bytes
from dynastore.storage.memory import MemoryEngine


class SimDisk:
    def __init__(self, durable: bool = True) -> None:
        self.durable = durable
        self._synced = MemoryEngine()
        self._volatile: list[Op] = []
        self._view = MemoryEngine()
        self.syncs = 0
        # Engine scans made and rows they returned (tests bound the work one message may cause).
        self.rows_scanned = 0
        self.rows_read = 0
        # What `space` reports as free (None: unbounded); a test fills the disk by lowering it.
        self.free_bytes: int | None = None

    def get(self, area: str, key: bytes) -> bytes | None:
        return self._view.get(area, key)

    def write(self, ops: Sequence[Op]) -> None:
        self._view.write(ops)
        if self.durable:
            self._synced.write(ops)
            self.syncs += 1
        else:
            self._volatile.extend(ops)

    def scan(
        self, area: str, start: bytes = b"", end: bytes | None = None, limit: int = 1000, bytes_max: int | None = None
    ) -> list[tuple[bytes, bytes]]:
        self.rows_scanned += 1
        rows = self._view.scan(area, start, end, limit, bytes_max)
        self.rows_read += len(rows)
        return rows

    def durable_get(self, area: str, key: bytes) -> bytes | None:
        """What a crash would leave of `key`: its synced value (checkers look at durable state)."""
        return self._synced.get(area, key)

    def count(self, area: str) -> int:
        return self._view.count(area)

    def sync(self) -> None:
        if self._volatile:
            self._synced.write(self._volatile)
            self._volatile = []
        self.syncs += 1

    def close(self) -> None:
        return

    def space(self) -> Space | None:
        if self.free_bytes is None:
            return None
        used = sum(row_bytes(self._view.scan(area, b"", None, 1 << 30)) for area in AREAS)
        return Space(used, self.free_bytes)

    def rot(self, area: str, key: bytes, index: int) -> None:
        """A byte of a stored record flips on disk (bit 0 of byte `index` of its value), as a failing
        medium does: what is read back, now and after a crash, is the flipped record."""
        for engine in (self._view, self._synced):
            raw = engine.get(area, key)
            assert raw is not None, (area, key)
            flipped = bytearray(raw)
            flipped[index] ^= 1
            engine.write([Op(area, key, bytes(flipped))])

    def lose_unsynced(self) -> int:
        """A crash: whatever was not synced is gone. Returns how many operations were lost."""
        lost = len(self._volatile)
        if lost:
            self._volatile = []
            self._view = MemoryEngine()
            for area in AREAS:
                rows = self._synced.scan(area, b"", None, 1 << 30)
                if rows:
                    self._view.write([Op(area, k, v) for k, v in rows])
        return lost
