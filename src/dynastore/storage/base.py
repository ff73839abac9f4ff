"""The storage engine protocol: what the core needs from a node's local disk, and nothing more.

An engine holds a few named *areas* (independent ordered key spaces: `data` for objects, `hints` for
hinted handoff, `meta` for node state, ...). Keys and values are bytes; keys are ordered bytewise.
A write is a batch of operations over any areas, applied atomically. In durable mode a batch is on
disk when `write` returns: the caller acknowledges nothing before that (group commit happens by
putting many operations into one batch).

Engines are synchronous and single-threaded from the caller's point of view; they must never call
back into the core.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

# The areas every engine must provide.
AREAS: tuple[str, ...] = ("data", "hints", "meta", "reap", "handoff", "aae", "index")


class StorageError(Exception):
    """The engine could not do what was asked (disk full, corrupt file, closed engine)."""


class NoSpaceError(StorageError):
    """A batch did not fit: the disk, or the engine's file at its maximum size, is full. Nothing of
    the batch was written; the same batch may be written again once there is room."""


@dataclass(frozen=True, slots=True)
class Space:
    """What an engine holds and what more it can take, in bytes: the free disk space it may grow
    into (within its own maximum size) plus the room inside its files it can reuse."""

    used_bytes: int
    free_bytes: int
    # The engine's file(s) as they stand, and the size they may grow to (LMDB's map size), where the
    # engine has such a limit: how much of its map an LMDB node uses, for /metrics.
    file_bytes: int | None = None
    file_bytes_max: int | None = None


@dataclass(frozen=True, slots=True)
class Op:
    """One operation of a batch: put `value` at `key` in `area`, or delete the key when value is None."""

    area: str
    key: bytes
    value: bytes | None


class Engine(Protocol):
    """A synchronous, ordered key-value engine with named areas."""

    durable: bool

    def get(self, area: str, key: bytes) -> bytes | None:
        """The value at `key`, or None."""
        ...

    def write(self, ops: Sequence[Op]) -> None:
        """Apply every op atomically, in order. Durable engines have synced the batch when this returns."""
        ...

    def scan(
        self, area: str, start: bytes = b"", end: bytes | None = None, limit: int = 1000, bytes_max: int | None = None
    ) -> list[tuple[bytes, bytes]]:
        """Up to `limit` pairs with start <= key < end (end None: no upper bound), in key order.

        With `bytes_max`, the scan also stops after the pair that brings the keys' and values' bytes to
        `bytes_max` (so it returns at least one pair when the range holds any): what a scan holds in
        memory is bounded by bytes, not only by count. A caller that needs to know whether the range
        has more asks `truncated`."""
        ...

    def count(self, area: str) -> int:
        """How many keys an area holds."""
        ...

    def sync(self) -> None:
        """Force everything written so far onto disk (a no-op for the memory engine)."""
        ...

    def space(self) -> Space | None:
        """Used and free bytes (None: the engine is bounded by nothing but memory)."""
        ...

    def close(self) -> None:
        """Release the files. Any later call raises StorageError."""
        ...


def row_bytes(rows: Sequence[tuple[bytes, bytes]]) -> int:
    return sum(len(key) + len(value) for key, value in rows)


def truncated(rows: Sequence[tuple[bytes, bytes]], limit: int, bytes_max: int | None) -> bool:
    """Whether a scan that returned `rows` may have stopped before the end of its range."""
    return len(rows) >= limit or (bytes_max is not None and bool(rows) and row_bytes(rows) >= bytes_max)


def put(engine: Engine, area: str, key: bytes, value: bytes) -> None:
    engine.write([Op(area, key, value)])


def delete(engine: Engine, area: str, key: bytes) -> None:
    engine.write([Op(area, key, None)])


def scan_all(
    engine: Engine, area: str, start: bytes = b"", end: bytes | None = None, page: int = 1000
) -> Iterable[tuple[bytes, bytes]]:
    """Every pair in [start, end), fetched page by page so that memory stays bounded."""
    # An empty page would never advance the cursor, and the loop below would never end.
    if page < 1:
        raise StorageError(f"scan_all needs a page of at least one pair, got {page}")
    cursor = start
    while True:
        rows = engine.scan(area, cursor, end, page)
        yield from rows
        if len(rows) < page:
            return
        cursor = rows[-1][0] + b"\x00"
