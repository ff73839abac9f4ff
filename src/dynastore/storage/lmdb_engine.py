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

import contextlib
import errno
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import lmdb

from dynastore.settings import DEFAULTS
from dynastore.storage.base import AREAS, NoSpaceError, Op, Space, StorageError
from dynastore.storage.checks import check_area, check_key, check_ops, check_scan
from dynastore.storage.directory import DirectoryLock, disk_free_bytes, sync_directory
from dynastore.storage.lmdb_layout import (
    ID_BYTES,
    INTERIOR,
    LAYOUT_VERSION,
    LEAF,
    Layout,
    LayoutError,
    decode_group,
    node_id,
    prefix_of,
)

# A database of the engine's own bookkeeping, beside the areas: the layout chosen when the
# environment was created and its version, the next free tree node id, and per area how many more
# keys there are than records in the area's database (group records hold none, each tree leaf holds
# one), so that `count` stays O(1).
_ENGINE_DB_NAME = b"_engine"
_INLINE_MAX_KEY = b"inline_max"
_LAYOUT_KEY = b"layout"
_CHUNK_KEY = b"chunk"
_NEXT_ID_KEY = b"next_id"
_EXTRA_KEY_PREFIX = b"extra:"
_NUDGE_KEY = b"nudge"
# Each area's tree of long keys lives in a database of this name after the area's.
_LONG_SUFFIX = b"+long"
# The map starts this large (or twice the file, if larger) and doubles when full, up to the maximum.
MAP_INITIAL_BYTES = 64 * 1024 * 1024
# A commit that fails with an I/O error while the disk has less than this free ran out of space
# (LMDB reports a short write as EIO).
_NEARLY_FULL_BYTES = 16 * 1024 * 1024
# The one file of an environment that holds its data (a copy has no lock file).
COPY_FILE_NAME = "data.mdb"


class _Gate:
    """Many calls at once, or one map resize alone: LMDB resizes the map only with no transaction
    open in the process.

    A backup's copy (`copy`) is a shared call that may last minutes. A resize never waits for one:
    while a resize waits for the calls in progress, every new call waits for the resize, so a resize
    queued behind a copy would stall every read until the copy ended. `alone` therefore yields False,
    and resizes nothing, while a copy runs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._active = 0
        self._copies = 0
        self._resizing = False

    @contextmanager
    def copy(self) -> Iterator[None]:
        with self._cond:
            while self._resizing:
                self._cond.wait()
            self._active += 1
            self._copies += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                self._copies -= 1
                if not self._active:
                    self._cond.notify_all()

    @contextmanager
    def shared(self) -> Iterator[None]:
        self.enter_shared()
        try:
            yield
        finally:
            self.exit_shared()

    # `shared` without a generator, for the reads of the event loop (`get`, one per replica request).
    def enter_shared(self) -> None:
        with self._lock:
            while self._resizing:
                self._cond.wait()
            self._active += 1

    def exit_shared(self) -> None:
        with self._lock:
            self._active -= 1
            # Only a resize waits for the calls in progress to end.
            if not self._active and self._resizing:
                self._cond.notify_all()

    @contextmanager
    def alone(self) -> Iterator[bool]:
        """Alone (True), or False at once, holding nothing, while a copy runs."""
        with self._cond:
            while self._resizing:
                self._cond.wait()
            refused = self._copies > 0
            if not refused:
                self._resizing = True
                while self._active:
                    self._cond.wait()
        if refused:
            yield False
            return
        try:
            yield True
        finally:
            with self._cond:
                self._resizing = False
                self._cond.notify_all()


# What `_lmdb_errors` turns into a StorageError.
_LMDB_ERRORS = (lmdb.Error, OSError, LayoutError)


@contextmanager
def _lmdb_errors(action: str) -> Iterator[None]:
    try:
        yield
    except _LMDB_ERRORS as exc:
        raise _storage_error(action, exc) from exc


def _storage_error(action: str, exc: BaseException) -> StorageError:
    if isinstance(exc, lmdb.MapFullError):
        return NoSpaceError(f"lmdb {action}: the map is full at lmdb_map_size_bytes")
    if isinstance(exc, LayoutError):
        return StorageError(f"lmdb {action}: corrupt record: {exc}")
    if getattr(exc, "errno", None) == errno.ENOSPC:
        return NoSpaceError(f"lmdb {action}: {exc}")
    return StorageError(f"lmdb {action} failed: {exc}")


class LmdbEngine:
    """Areas in one LMDB environment under `path`.

    Calls may come from any thread: reads run in their own read transactions beside a write, and
    LMDB serialises writers. `close` must not race another call.
    """

    __slots__ = ("_dbs", "_engine_db", "_env", "_gate", "_layout", "_lock", "_long", "_map_max", "durable", "path")

    def __init__(
        self,
        path: Path,
        *,
        durable: bool = True,
        map_size_bytes: int = DEFAULTS.lmdb_map_size_bytes,
        inline_key_bytes_max: int | None = None,
        map_initial_bytes: int = MAP_INITIAL_BYTES,
    ) -> None:
        """Open (creating if needed) the environment in directory `path`.

        `inline_key_bytes_max` is the longest key stored as its own record; it defaults to the most
        LMDB allows and is fixed at creation. Tests lower it to drive the group records.
        """
        self.path = path
        self.durable = durable
        # The map grows as the data does, up to map_size_bytes: a small disk is never promised more.
        self._map_max = map_size_bytes
        self._gate = _Gate()
        self._lock = DirectoryLock.acquire(path)
        try:
            with _lmdb_errors(f"open of {path / 'data.mdb'}"):
                self._env: lmdb.Environment | None = lmdb.open(
                    str(path),
                    map_size=min(map_size_bytes, max(map_initial_bytes, 2 * _file_bytes(path))),
                    subdir=True,
                    max_dbs=2 * len(AREAS) + 1,
                    sync=durable,
                    metasync=durable,
                )
                self._layout, self._dbs, self._long, self._engine_db = self._open_databases(
                    self._env, inline_key_bytes_max
                )
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
    ) -> tuple[Layout, dict[str, lmdb._Database], dict[str, lmdb._Database], lmdb._Database]:
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
            raw_version = txn.get(_LAYOUT_KEY, db=engine_db)
            # A directory that says nothing of its layout was written by layout 1 (or is new).
            version = 1 if raw_version is None else int.from_bytes(raw_version, "big")
            if version > LAYOUT_VERSION:
                raise StorageError(
                    f"{self.path} has storage layout {version}; this dynastore reads layouts 1 to {LAYOUT_VERSION}"
                )
            if stored is None:
                txn.put(_INLINE_MAX_KEY, inline_max.to_bytes(4, "big"), db=engine_db)
            dbs = {area: env.open_db(area.encode(), txn=txn) for area in AREAS}
            longs = {area: env.open_db(area.encode() + _LONG_SUFFIX, txn=txn) for area in AREAS}
            layout = Layout.for_limit(inline_max, env.max_key_size())
            # The tail bytes per tree record are fixed when the trees are first written: an LMDB build
            # with another key limit must walk them with the same chunks.
            raw_chunk = txn.get(_CHUNK_KEY, db=engine_db)
            if raw_chunk is not None:
                chunk = int.from_bytes(raw_chunk, "big")
                if not 1 <= chunk <= layout.chunk:
                    raise StorageError(
                        f"{self.path} keeps long keys in chunks of {chunk} bytes, "
                        f"but this LMDB build allows at most {layout.chunk}"
                    )
                layout = Layout(inline_max, chunk)
            else:
                txn.put(_CHUNK_KEY, layout.chunk.to_bytes(4, "big"), db=engine_db)
            if version < LAYOUT_VERSION:
                _migrate_groups(txn, layout, dbs, longs, engine_db)
                txn.put(_LAYOUT_KEY, LAYOUT_VERSION.to_bytes(4, "big"), db=engine_db)
        return layout, dbs, longs, engine_db

    def _live(self) -> lmdb.Environment:
        if self._env is None:
            raise StorageError(f"the lmdb engine at {self.path} is closed")
        return self._env

    def get(self, area: str, key: bytes) -> bytes | None:
        check_area(area)
        check_key(key)
        env = self._live()
        layout = self._layout
        record_key = layout.record_key(key)
        # The gate and the errors by hand rather than as context managers: this is every read's path.
        gate = self._gate
        gate.enter_shared()
        try:
            with env.begin() as txn:
                record = txn.get(record_key, db=self._dbs[area])
                if record is None or not layout.is_group(record_key):
                    return record
                long_db = self._long[area]
                interior, leaf = layout.path(layout.tail(key))
                node = node_id(record)
                for chunk in interior:
                    child = txn.get(node + chunk + INTERIOR, db=long_db)
                    if child is None:
                        return None
                    node = node_id(child)
                value: bytes | None = txn.get(node + leaf + LEAF, db=long_db)
                return value
        except _LMDB_ERRORS as exc:
            raise _storage_error("get", exc) from exc
        finally:
            gate.exit_shared()

    def write(self, ops: Sequence[Op]) -> None:
        check_ops(ops)
        env = self._live()
        nudged = False
        while True:
            with _lmdb_errors("write"):
                try:
                    with self._gate.shared():
                        self._write_once(env, ops)
                    return
                except lmdb.MapFullError as exc:
                    grown = self._grow(env)
                    if grown is None:
                        # No resize while a backup's copy runs (see _Gate): the runtime keeps the
                        # batch, unacknowledged, and writes it again until it fits.
                        raise NoSpaceError(
                            "lmdb write: the map is full while a backup's copy runs; it grows once the copy ends"
                        ) from exc
                    if grown:
                        continue
                    if nudged:
                        raise
                except lmdb.Error as exc:
                    # A short write (the disk is full) reaches LMDB's commit as EIO.
                    if "Input/output error" not in str(exc) or self._disk_free_bytes() >= _NEARLY_FULL_BYTES:
                        raise
                    if nudged:
                        raise NoSpaceError(f"lmdb write: the disk holding {self.path} is full") from exc
                # LMDB reuses the pages a commit freed only from the commit after it: after deletes,
                # one tiny commit makes their room usable, then the batch is tried once more.
                nudged = True
                self._nudge(env)

    def _nudge(self, env: lmdb.Environment) -> None:
        with contextlib.suppress(lmdb.Error), self._gate.shared(), env.begin(write=True) as txn:
            txn.put(_NUDGE_KEY, b"", db=self._engine_db)

    def _grow(self, env: lmdb.Environment, wanted: int | None = None) -> bool | None:
        """Double the map, or make it at least `wanted` bytes (up to its maximum); False when it is at
        its maximum already, None when a backup's copy runs (the map stays as it is)."""
        current = int(env.info()["map_size"])
        if current >= self._map_max:
            return False
        target = 2 * current if wanted is None else max(current, wanted)
        if target == current:
            return True
        with self._gate.alone() as alone:
            if not alone:
                return None
            if int(env.info()["map_size"]) == current:
                env.set_mapsize(min(self._map_max, target))
        return True

    def _disk_free_bytes(self) -> int:
        return disk_free_bytes(self.path)

    def space(self) -> Space | None:
        """Used pages, and what more fits: the pages LMDB can reuse inside its file, plus the disk it
        may grow into within the map's maximum."""
        env = self._live()
        with self._gate.shared(), _lmdb_errors("space"), env.begin() as txn:
            page = int(env.stat()["psize"])
            used = 2 + _pages(env.stat())
            for db in (*self._dbs.values(), *self._long.values(), self._engine_db):
                used += _pages(txn.stat(db))
            in_file = int(env.info()["last_pgno"]) + 1
        reusable = max(0, in_file - used) * page
        room = max(0, min(self._disk_free_bytes(), self._map_max - in_file * page))
        return Space(used * page, reusable + room, in_file * page, self._map_max)

    def _write_once(self, env: lmdb.Environment, ops: Sequence[Op]) -> None:
        layout = self._layout
        # How many more keys than records each area's database holds, by the change this batch makes.
        extra_delta: dict[str, int] = {}
        # One write transaction per batch: LMDB commits it atomically, and with sync on, durably.
        with env.begin(write=True) as txn:
            ids = _Ids(txn, self._engine_db)
            for op in ops:
                db = self._dbs[op.area]
                record_key = layout.record_key(op.key)
                if not layout.is_group(record_key):
                    if op.value is None:
                        txn.delete(record_key, db=db)
                    else:
                        txn.put(record_key, op.value, db=db)
                    continue
                tree = _Tree(txn, db, self._long[op.area], layout, ids)
                value = op.value
                grown = tree.delete(record_key, op.key) if value is None else tree.put(record_key, op.key, value)
                if grown:
                    extra_delta[op.area] = extra_delta.get(op.area, 0) + grown
            ids.save()
            for area, delta in extra_delta.items():
                if delta:
                    _add_extra(txn, self._engine_db, area, delta)

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
        with self._gate.shared(), _lmdb_errors("scan"), env.begin() as txn:
            cursor = txn.cursor(db=self._dbs[area])
            if not cursor.set_range(layout.record_key(start)):
                return rows
            long_db = self._long[area]
            # iternext yields the record the cursor is on first, then the ones after it.
            for record_key, record in cursor.iternext():
                prefix = prefix_of(record_key)
                if layout.is_group(record_key):
                    # Only the group holding `start` itself can hold keys below it.
                    within = len(start) > layout.inline_max and start[: len(prefix)] == prefix
                    low = layout.tail(start) if within else None
                    pairs: Iterator[tuple[bytes, bytes]] = _walk(txn, long_db, layout, node_id(record), prefix, low)
                else:
                    pairs = iter(((prefix, record),))
                for key, value in pairs:
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
        with self._gate.shared(), _lmdb_errors("count"), env.begin() as txn:
            records = int(txn.stat(self._dbs[area])["entries"])
            extra = _read_extra(txn.get(_EXTRA_KEY_PREFIX + area.encode(), db=self._engine_db))
        return records + extra

    def sync(self) -> None:
        env = self._live()
        with _lmdb_errors("sync"):
            env.sync(True)

    def copy_to(self, directory: Path) -> tuple[str, ...]:
        """Write a consistent, compacted copy of the environment into the empty `directory` (a backup)
        and return the names of the files written. It runs in one read transaction, so writes go on
        meanwhile. LMDB resizes the map only with no transaction open, and a resize must not wait for
        the copy (see _Gate): the map first grows to leave room for the store's used size again, and a
        batch that finds the map full during the copy fails with NoSpaceError, which the runtime
        retries, acknowledging nothing, until the map can grow."""
        env = self._live()
        with _lmdb_errors(f"copy to {directory}"):
            space = self.space()
            assert space is not None and space.file_bytes is not None
            self._grow(env, space.file_bytes + space.used_bytes)
            with self._gate.copy():
                env.copy(str(directory), compact=True)
        return (COPY_FILE_NAME,)

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


def _file_bytes(path: Path) -> int:
    try:
        return (path / "data.mdb").stat().st_size
    except FileNotFoundError:
        return 0


def _pages(stat: Any) -> int:
    return int(stat["branch_pages"]) + int(stat["leaf_pages"]) + int(stat["overflow_pages"])


def _read_extra(stored: bytes | memoryview | None) -> int:
    return 0 if stored is None else int.from_bytes(stored, "big", signed=True)


def _add_extra(txn: lmdb.Transaction, engine_db: lmdb._Database, area: str, delta: int) -> None:
    name = _EXTRA_KEY_PREFIX + area.encode()
    extra = _read_extra(txn.get(name, db=engine_db)) + delta
    txn.put(name, extra.to_bytes(8, "big", signed=True), db=engine_db)


class _Ids:
    """Tree node ids, handed out in a write transaction from a counter saved with it."""

    def __init__(self, txn: lmdb.Transaction, engine_db: lmdb._Database) -> None:
        self._txn, self._db = txn, engine_db
        self._next: int | None = None
        self._loaded: int | None = None

    def new(self) -> bytes:
        if self._next is None:
            raw = self._txn.get(_NEXT_ID_KEY, db=self._db)
            self._next = self._loaded = 1 if raw is None else int.from_bytes(raw, "big")
        node, self._next = self._next, self._next + 1
        return node.to_bytes(ID_BYTES, "big")

    def save(self) -> None:
        if self._next is not None and self._next != self._loaded:
            self._txn.put(_NEXT_ID_KEY, self._next.to_bytes(ID_BYTES, "big"), db=self._db)


class _Tree:
    """The long keys under one group record, within one write transaction (see lmdb_layout.py)."""

    def __init__(
        self, txn: lmdb.Transaction, db: lmdb._Database, long_db: lmdb._Database, layout: Layout, ids: _Ids
    ) -> None:
        self.txn, self.db, self.long_db, self.layout, self.ids = txn, db, long_db, layout, ids

    def put(self, record_key: bytes, key: bytes, value: bytes) -> int:
        """Set `key`; returns how the count of keys beyond records changed (a new key: +1, and -1 for a
        group record it created)."""
        txn, long_db = self.txn, self.long_db
        grown = 0
        root = cast(bytes | None, txn.get(record_key, db=self.db))
        if root is None:
            root = self.ids.new()
            txn.put(record_key, root, db=self.db)
            grown -= 1
        node = node_id(root)
        interior, leaf = self.layout.path(self.layout.tail(key))
        for chunk in interior:
            child = cast(bytes | None, txn.get(node + chunk + INTERIOR, db=long_db))
            if child is None:
                child = self.ids.new()
                txn.put(node + chunk + INTERIOR, child, db=long_db)
            node = node_id(child)
        if txn.replace(node + leaf + LEAF, value, db=long_db) is None:
            grown += 1
        return grown

    def delete(self, record_key: bytes, key: bytes) -> int:
        txn, long_db = self.txn, self.long_db
        root = cast(bytes | None, txn.get(record_key, db=self.db))
        if root is None:
            return 0
        # The records walked, each with the node it points to: (database, record key, node id).
        walked = [(self.db, record_key, node_id(root))]
        interior, leaf = self.layout.path(self.layout.tail(key))
        for chunk in interior:
            parent = walked[-1][2]
            child = cast(bytes | None, txn.get(parent + chunk + INTERIOR, db=long_db))
            if child is None:
                return 0
            walked.append((long_db, parent + chunk + INTERIOR, node_id(child)))
        if not txn.delete(walked[-1][2] + leaf + LEAF, db=long_db):
            return 0
        grown = -1
        # A node left empty goes, and so does the record pointing to it, up to the group record.
        cursor = txn.cursor(db=long_db)
        for db, pointer, node in reversed(walked):
            if cursor.set_range(node) and cursor.key()[:ID_BYTES] == node:
                break
            txn.delete(pointer, db=db)
            if db is self.db:
                grown += 1
        return grown


def _walk(
    txn: lmdb.Transaction, long_db: lmdb._Database, layout: Layout, node: bytes, prefix: bytes, low: bytes | None
) -> Iterator[tuple[bytes, bytes]]:
    """The keys under tree node `node` (whose keys start with `prefix`) in order, from the first that
    is not below `prefix + low` when `low` is given (some below it may come too: the caller filters)."""
    step = layout.chunk
    cursor = txn.cursor(db=long_db)
    if not cursor.set_range(node + (low[:step] if low else b"")):
        return
    for record_key, value in cast(Iterator[tuple[bytes, bytes]], cursor.iternext()):
        if record_key[:ID_BYTES] != node:
            return
        chunk, marker = record_key[ID_BYTES:-1], record_key[-1:]
        if marker == LEAF:
            yield prefix + chunk, value
        elif marker == INTERIOR:
            deeper = low[step:] if low is not None and len(low) > step and chunk == low[:step] else None
            yield from _walk(txn, long_db, layout, node_id(value), prefix + chunk, deeper)
        else:
            raise LayoutError(f"a tree record with marker {marker!r}")


def _migrate_groups(
    txn: lmdb.Transaction,
    layout: Layout,
    dbs: dict[str, lmdb._Database],
    longs: dict[str, lmdb._Database],
    engine_db: lmdb._Database,
) -> None:
    """Layout 1 to 2, in the transaction that opens the directory: every group record's members move
    into the group's tree. The count of keys beyond records is the same in both (layout 1 counted a
    group's members beyond one; layout 2 counts its leaves and not its group record)."""
    ids = _Ids(txn, engine_db)
    for area, db in dbs.items():
        groups = []
        cursor = txn.cursor(db=db)
        for record_key, record in cursor.iternext():
            if layout.is_group(bytes(record_key)):
                groups.append((bytes(record_key), decode_group(bytes(record))))
        tree = _Tree(txn, db, longs[area], layout, ids)
        for record_key, members in groups:
            txn.delete(record_key, db=db)
            for suffix, value in members:
                tree.put(record_key, prefix_of(record_key) + suffix, value)
    ids.save()
