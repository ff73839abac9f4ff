"""An engine that keeps every area in memory: for the simulator and for tests, never for real data.

Nothing survives `close` or the process, and `durable` is always False, so a caller that must not
acknowledge before data is on disk can tell. A batch is still atomic: it is checked whole before the
first op is applied, and applying a checked op to a SortedDict cannot fail.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from itertools import islice

from sortedcontainers import SortedDict

from dynastore.storage.base import AREAS, Op, Space, StorageError
from dynastore.storage.checks import check_area, check_key, check_ops, check_scan


class MemoryEngine:
    """Ordered in-memory areas. Calls may come from any thread; a lock serialises them."""

    __slots__ = ("_areas", "_lock", "durable")

    def __init__(self) -> None:
        self.durable = False
        self._lock = threading.Lock()
        self._areas: dict[str, SortedDict] | None = {area: SortedDict() for area in AREAS}

    def _area(self, area: str) -> SortedDict:
        if self._areas is None:
            raise StorageError("the memory engine is closed")
        return self._areas[area]

    def get(self, area: str, key: bytes) -> bytes | None:
        check_area(area)
        check_key(key)
        with self._lock:
            value: bytes | None = self._area(area).get(key)
            return value

    def write(self, ops: Sequence[Op]) -> None:
        check_ops(ops)
        with self._lock:
            if self._areas is None:
                raise StorageError("the memory engine is closed")
            for op in ops:
                table = self._areas[op.area]
                if op.value is None:
                    table.pop(op.key, None)
                else:
                    table[op.key] = op.value

    def scan(
        self, area: str, start: bytes = b"", end: bytes | None = None, limit: int = 1000, bytes_max: int | None = None
    ) -> list[tuple[bytes, bytes]]:
        check_scan(area, start, end, limit, bytes_max)
        with self._lock:
            table = self._area(area)
            if end is not None and end <= start:
                return []
            keys = islice(table.irange(start, end, inclusive=(True, False)), limit)
            if bytes_max is None:
                return [(key, table[key]) for key in keys]
            rows: list[tuple[bytes, bytes]] = []
            size = 0
            for key in keys:
                value = table[key]
                rows.append((key, value))
                size += len(key) + len(value)
                if size >= bytes_max:
                    break
            return rows

    def count(self, area: str) -> int:
        check_area(area)
        with self._lock:
            return len(self._area(area))

    def sync(self) -> None:
        with self._lock:
            if self._areas is None:
                raise StorageError("the memory engine is closed")

    def space(self) -> Space | None:
        return None

    def close(self) -> None:
        """Drop every area; closing twice is harmless, any other later call raises StorageError."""
        with self._lock:
            self._areas = None
