"""The default durable engine: one LMDB environment in a directory, one named database per area.

Durable mode opens the environment with sync on, so the commit of the one write transaction a batch
gets is fsynced before `write` returns. Buffered mode opens it with sync off: a commit reaches the
page cache only (it survives a killed process, not a power cut) and `sync` flushes it. Without
`writemap`, LMDB never overwrites live pages, so even buffered commits stay atomic: a power cut may
lose the last batches, never half of one.

Keys longer than LMDB allows, and the empty key, go through the layout in lmdb_layout.py. Every
library error leaves this module as StorageError. This module must never hold an LMDB transaction
open across calls: a reader left open pins old pages and the file grows without bound.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import lmdb

from dynastore.settings import DEFAULTS
from dynastore.storage.base import AREAS, Op, StorageError
from dynastore.storage.checks import check_area, check_key, check_ops, check_scan
from dynastore.storage.directory import DirectoryLock, sync_directory
from dynastore.storage.lmdb_layout import (
    Layout,
    LayoutError,
    decode_group,
    encode_group,
    prefix_of,
    with_member,
    without_member,
)

# A database of the engine's own bookkeeping, beside the areas: the layout chosen when the
# environment was created, and per area how many more keys the group records hold than there are
# group records (so that `count` stays O(1)).
_ENGINE_DB_NAME = b"_engine"
_INLINE_MAX_KEY = b"inline_max"
_EXTRA_KEY_PREFIX = b"extra:"


@contextmanager
def _lmdb_errors(action: str) -> Iterator[None]:
    try:
        yield
    except lmdb.MapFullError as exc:
        raise StorageError(f"lmdb {action}: the map is full; raise lmdb_map_size_bytes") from exc
    except LayoutError as exc:
        raise StorageError(f"lmdb {action}: corrupt record: {exc}") from exc
    except (lmdb.Error, OSError) as exc:
        raise StorageError(f"lmdb {action} failed: {exc}") from exc


class LmdbEngine:
    """Areas in one LMDB environment under `path`.

    Calls may come from any thread: reads run in their own read transactions beside a write, and
    LMDB serialises writers. `close` must not race another call.
    """

    __slots__ = ("_dbs", "_engine_db", "_env", "_layout", "_lock", "durable", "path")

    def __init__(
        self,
        path: Path,
        *,
        durable: bool = True,
        map_size_bytes: int = DEFAULTS.lmdb_map_size_bytes,
        inline_key_bytes_max: int | None = None,
    ) -> None:
        """Open (creating if needed) the environment in directory `path`.

        `inline_key_bytes_max` is the longest key stored as its own record; it defaults to the most
        LMDB allows and is fixed at creation. Tests lower it to drive the group records.
        """
        self.path = path
        self.durable = durable
        self._lock = DirectoryLock.acquire(path)
        try:
            with _lmdb_errors(f"open of {path}"):
                self._env: lmdb.Environment | None = lmdb.open(
                    str(path),
                    map_size=map_size_bytes,
                    subdir=True,
                    max_dbs=len(AREAS) + 1,
                    sync=durable,
                    metasync=durable,
                )
                self._layout, self._dbs, self._engine_db = self._open_databases(self._env, inline_key_bytes_max)
            if durable:
                sync_directory(path)
        except BaseException:
            env = getattr(self, "_env", None)
            if env is not None:
                env.close()
            self._lock.release()
            raise

    def _open_databases(
        self, env: lmdb.Environment, inline_max_wanted: int | None
    ) -> tuple[Layout, dict[str, lmdb._Database], lmdb._Database]:
        limit = env.max_key_size() - 2
        with env.begin(write=True) as txn:
            engine_db = env.open_db(_ENGINE_DB_NAME, txn=txn)
            stored = txn.get(_INLINE_MAX_KEY, db=engine_db)
            if stored is None:
                inline_max = limit if inline_max_wanted is None else inline_max_wanted
            else:
                inline_max = int.from_bytes(stored, "big")
                if inline_max_wanted is not None and inline_max_wanted != inline_max:
                    raise StorageError(
                        f"{self.path} was created with inline keys up to {inline_max} bytes, not {inline_max_wanted}"
                    )
            if not 0 <= inline_max <= limit:
                raise StorageError(
                    f"{self.path} needs inline keys of {inline_max} bytes, but this LMDB build allows 0 to {limit}"
                )
            if stored is None:
                txn.put(_INLINE_MAX_KEY, inline_max.to_bytes(4, "big"), db=engine_db)
            dbs = {area: env.open_db(area.encode(), txn=txn) for area in AREAS}
        return Layout(inline_max), dbs, engine_db

    def _live(self) -> lmdb.Environment:
        if self._env is None:
            raise StorageError(f"the lmdb engine at {self.path} is closed")
        return self._env

    def get(self, area: str, key: bytes) -> bytes | None:
        check_area(area)
        check_key(key)
        env = self._live()
        record_key = self._layout.record_key(key)
        with _lmdb_errors("get"), env.begin(db=self._dbs[area]) as txn:
            record = txn.get(record_key)
            if record is None or not self._layout.is_group(record_key):
                return record
            members = decode_group(record)
        suffix = self._layout.suffix(key)
        index = bisect.bisect_left(members, suffix, key=lambda member: member[0])
        if index < len(members) and members[index][0] == suffix:
            return members[index][1]
        return None

    def write(self, ops: Sequence[Op]) -> None:
        check_ops(ops)
        env = self._live()
        layout = self._layout
        # How much each area's group records grew, in members beyond one per record.
        extra_delta: dict[str, int] = {}
        # One write transaction per batch: LMDB commits it atomically, and with sync on, durably.
        with _lmdb_errors("write"), env.begin(write=True) as txn:
            for op in ops:
                db = self._dbs[op.area]
                record_key = layout.record_key(op.key)
                if not layout.is_group(record_key):
                    if op.value is None:
                        txn.delete(record_key, db=db)
                    else:
                        txn.put(record_key, op.value, db=db)
                    continue
                record = txn.get(record_key, db=db)
                before = decode_group(record) if record is not None else []
                suffix = layout.suffix(op.key)
                after = without_member(before, suffix) if op.value is None else with_member(before, suffix, op.value)
                if after:
                    txn.put(record_key, encode_group(after), db=db)
                elif record is not None:
                    txn.delete(record_key, db=db)
                grown = max(len(after) - 1, 0) - max(len(before) - 1, 0)
                extra_delta[op.area] = extra_delta.get(op.area, 0) + grown
            for area, delta in extra_delta.items():
                if delta:
                    name = _EXTRA_KEY_PREFIX + area.encode()
                    extra = _read_extra(txn.get(name, db=self._engine_db)) + delta
                    txn.put(name, extra.to_bytes(8, "big", signed=True), db=self._engine_db)

    def scan(
        self, area: str, start: bytes = b"", end: bytes | None = None, limit: int = 1000, bytes_max: int | None = None
    ) -> list[tuple[bytes, bytes]]:
        check_scan(area, start, end, limit, bytes_max)
        env = self._live()
        rows: list[tuple[bytes, bytes]] = []
        size = 0
        if limit == 0 or (end is not None and end <= start):
            return rows
        layout = self._layout
        with _lmdb_errors("scan"), env.begin(db=self._dbs[area]) as txn:
            cursor = txn.cursor()
            if not cursor.set_range(layout.record_key(start)):
                return rows
            # iternext yields the record the cursor is on first, then the ones after it.
            for record_key, record in cursor.iternext():
                prefix = prefix_of(record_key)
                pairs = (
                    [(prefix + suffix, value) for suffix, value in decode_group(record)]
                    if layout.is_group(record_key)
                    else [(prefix, record)]
                )
                for key, value in pairs:
                    # Only the group holding `start` itself can hold keys below it.
                    if key < start:
                        continue
                    if end is not None and key >= end:
                        return rows
                    rows.append((key, value))
                    size += len(key) + len(value)
                    if len(rows) == limit or (bytes_max is not None and size >= bytes_max):
                        return rows
        return rows

    def count(self, area: str) -> int:
        check_area(area)
        env = self._live()
        with _lmdb_errors("count"), env.begin() as txn:
            records = int(txn.stat(self._dbs[area])["entries"])
            extra = _read_extra(txn.get(_EXTRA_KEY_PREFIX + area.encode(), db=self._engine_db))
        return records + extra

    def sync(self) -> None:
        env = self._live()
        with _lmdb_errors("sync"):
            env.sync(True)

    def close(self) -> None:
        """Close the environment and free the directory; closing twice is harmless."""
        env, self._env = self._env, None
        if env is None:
            return
        try:
            with _lmdb_errors("close"):
                env.close()
        finally:
            self._lock.release()


def _read_extra(stored: bytes | None) -> int:
    return 0 if stored is None else int.from_bytes(stored, "big", signed=True)
