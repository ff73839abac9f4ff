"""The durability pipeline: writes staged in memory and handed out as numbered batches, and the effects
that must wait for those batches to be on disk.

Theory of operation
-------------------
A node never writes to its engine. It stages writes in a `StagedStore`, which reads them back through
an overlay, and the shell takes them as one batch at a time (`take`), writes the batch, and reports it
written (`written`). Batches are numbered from 1 in the order taken; at most one is being written at
once. So a staged value lives in exactly one of three places: the *pending* overlay (it goes in batch
`taken + 1`), the *committing* overlay (batch `taken`, being written), or the engine (durable).

An `Outbox` holds the effects (messages, replies) and when each may leave. An effect queued with no
batch named waits for the next batch taken, which holds everything staged so far; one queued with a
batch number waits for that batch; one whose batch is durable already is *free* and leaves at once,
even while another batch is being written. `written(n)` returns batch n's effects and frees those
held for it, as raft's `Advance` hands back what may now be applied.

Reads note which batch holds what they saw (`begin_read` / `end_read`), so an answer built from a
read waits for that batch only.

Invariants, asserted: batches written never exceed batches taken, and only the batch being written is
reported written; an effect is never released before the batch it waits for; a read never sees a
staged value that is neither in an overlay nor on disk. This module holds no protocol logic.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, TypeVar

from dynastore.storage.base import Engine, Op, truncated

E = TypeVar("E")
Staged = dict[tuple[str, bytes], bytes | None]

# Rows fetched per engine call when a scan walks a whole range, and their bytes at most (past the
# row that reaches it): a walk over large objects holds a few MiB at a time.
SCAN_PAGE = 1000
SCAN_PAGE_BYTES = 4 * 1024 * 1024


class StagedStore:
    """The engine seen through the writes staged for the next batch and the batch being written."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # Staged writes by (area, key); None deletes. `_pending` goes in the next batch, `_committing`
        # is the batch being written.
        self._pending: Staged = {}
        self._committing: Staged = {}
        # Batches handed out and batches written: while they differ, batch `taken` is being written.
        self.taken = 0
        self.written = 0
        # The newest batch holding something read since `begin_read` (0: everything read was durable).
        self._read_after = 0
        # The bytes of what is staged and being written (what the disk must still take).
        self._pending_bytes = 0
        self._committing_bytes = 0

    # --- Reads ----------------------------------------------------------------------------------------

    def get(self, area: str, key: bytes) -> bytes | None:
        staged = (area, key)
        if staged in self._pending:
            self._read_after = self.taken + 1
            return self._pending[staged]
        if staged in self._committing:
            assert self.taken == self.written + 1, "a committing value with no batch being written"
            self._read_after = max(self._read_after, self.taken)
            return self._committing[staged]
        return self.engine.get(area, key)

    def durable_after(self, area: str, key: bytes) -> int:
        """The number of the batch that makes this key's staged value durable (0: it is already)."""
        if (area, key) in self._pending:
            return self.taken + 1
        if (area, key) in self._committing:
            return self.taken
        return 0

    def begin_read(self) -> int:
        """Start noting what a read depends on; hand the value back to `end_read`."""
        outer, self._read_after = self._read_after, 0
        return outer

    def end_read(self, outer: int) -> int:
        """The batch that must be durable before what was read since `begin_read` may be shown."""
        after = self._read_after
        self._read_after = max(outer, after)
        return after

    def scan(
        self, area: str, start: bytes, end: bytes | None, limit: int, bytes_max: int | None = None
    ) -> list[tuple[bytes, bytes]]:
        """Up to `limit` pairs of [start, end) as staged writes leave them, in key order; with
        `bytes_max`, stopping after the pair that brings their bytes to it (see Engine.scan)."""
        if limit == 0:
            return []
        overlay: dict[bytes, bytes | None] = {}
        # The batch being written first, then what was staged after it: the later write wins.
        for staged in (self._committing, self._pending):
            for (a, k), v in staged.items():
                if a == area and k >= start and (end is None or k < end):
                    overlay[k] = v
        out: list[tuple[bytes, bytes]] = []
        size = 0
        cursor = start
        while True:
            # Each staged delete may hide one engine row: fetch that many more so `limit` still fills.
            fetch = limit - len(out) + len(overlay)
            rows = self.engine.scan(area, cursor, end, fetch, bytes_max)
            more = truncated(rows, fetch, bytes_max)
            # What the engine returned covers [cursor, its last key] when it stopped early, else the rest.
            top = rows[-1][0] if more and rows else None
            merged = dict(rows)
            for k, v in overlay.items():
                if k >= cursor and (top is None or k <= top):
                    if v is None:
                        merged.pop(k, None)
                    else:
                        merged[k] = v
            for k in sorted(merged):
                value = merged[k]
                out.append((k, value))
                size += len(k) + len(value)
                if len(out) >= limit or (bytes_max is not None and size >= bytes_max):
                    return out
            if top is None:
                return out
            cursor = top + b"\x00"

    def scan_all(self, area: str, start: bytes, end: bytes | None) -> Iterable[tuple[bytes, bytes]]:
        cursor = start
        while True:
            rows = self.scan(area, cursor, end, SCAN_PAGE, SCAN_PAGE_BYTES)
            yield from rows
            if not truncated(rows, SCAN_PAGE, SCAN_PAGE_BYTES):
                return
            cursor = rows[-1][0] + b"\x00"

    def has_staged(self, area: str) -> bool:
        return any(k[0] == area for k in self._pending) or any(k[0] == area for k in self._committing)

    # --- Writes and batches -----------------------------------------------------------------------------

    def put(self, area: str, key: bytes, value: bytes | None) -> None:
        # Re-inserting moves the key to the end, so the batch applies operations in the order made.
        old = self._pending.pop((area, key), None)
        if old is not None:
            self._pending_bytes -= len(key) + len(old)
        self._pending[(area, key)] = value
        if value is not None:
            self._pending_bytes += len(key) + len(value)

    @property
    def unwritten_bytes(self) -> int:
        """The bytes of the values staged and being written: what the disk has not taken yet."""
        return self._pending_bytes + self._committing_bytes

    @property
    def has_pending(self) -> bool:
        return bool(self._pending)

    @property
    def committing(self) -> bool:
        return self.taken != self.written

    def take(self) -> tuple[int, tuple[Op, ...]]:
        """Everything staged so far, as the next batch: its number and its operations."""
        assert not self.committing, "a batch is still being written"
        ops = tuple(Op(area, key, value) for (area, key), value in self._pending.items())
        self._committing, self._pending = self._pending, {}
        self._committing_bytes, self._pending_bytes = self._pending_bytes, 0
        self.taken += 1
        return self.taken, ops

    def mark_written(self, number: int) -> None:
        """Batch `number`, the one being written, is on disk: reads of it go to the engine now."""
        assert number == self.taken == self.written + 1, f"batch {number} is not the one being written"
        self._committing = {}
        self._committing_bytes = 0
        self.written = number


class Outbox(Generic[E]):
    """Effects and the batch each waits for; see the module docstring."""

    def __init__(self) -> None:
        # Waiting for the next batch taken; sealed into the batch being written; free to leave now;
        # held until the batch numbered with them is written.
        self._queued: list[E] = []
        self._sealed: tuple[int, tuple[E, ...]] = (0, ())
        self._free: list[E] = []
        self._held: list[tuple[int, E]] = []
        # The newest batch written, as this outbox was told.
        self._written = 0

    def queue(self, effect: E, after: int | None) -> None:
        """Queue an effect to leave once batch `after` is durable (None: the next batch taken)."""
        if after is None:
            self._queued.append(effect)
        elif after <= self._written:
            self._free.append(effect)
        else:
            self._held.append((after, effect))

    def take_free(self) -> list[E]:
        free, self._free = self._free, []
        return free

    def seal(self, number: int) -> None:
        """Batch `number` was taken: what was queued for the next batch leaves when it is written."""
        assert not self._sealed[1] or self._sealed[0] == self._written, "a sealed batch was never written"
        self._sealed = (number, tuple(self._queued))
        self._queued = []

    def written(self, number: int) -> list[E]:
        """Batch `number` is durable: its own effects, in the order queued; those held for it are now free."""
        assert number > self._written, f"batch {number} was reported written twice"
        sealed_number, effects = self._sealed
        assert sealed_number == number or not effects, f"batch {number} is not the batch sealed"
        self._written = number
        self._sealed = (number, ())
        if self._held:
            released = [effect for after, effect in self._held if after <= number]
            self._held = [(after, effect) for after, effect in self._held if after > number]
            self._free.extend(released)
        return list(effects)

    @property
    def has_waiting(self) -> bool:
        """Whether anything waits for the next batch or is free to leave."""
        return bool(self._queued) or bool(self._free)
