"""An engine on one SQLite file (stdlib sqlite3): one WITHOUT ROWID table per area, keyed by a BLOB.

SQLite compares BLOBs with memcmp and then by length, which is exactly Python's order of bytes, so
scans agree with the other engines as long as every key is bound as a BLOB: keys are checked to be
`bytes` before they reach SQL (a `str` would be stored as TEXT, which sorts before every BLOB).

The journal is a WAL. Durable mode runs with `synchronous=FULL`, so each batch's commit fsyncs the
WAL before `write` returns; buffered mode runs with `synchronous=NORMAL`, where commits reach the WAL
in the page cache only (they survive a killed process, not a power cut) and `sync` checkpoints,
which syncs the WAL first. Every library error leaves this module as StorageError. This module must
never leave a transaction open when a call returns.
"""

from __future__ import annotations

import errno
import itertools
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

from dynastore.storage.base import AREAS, NoSpaceError, Op, Space, StorageError
from dynastore.storage.checks import check_area, check_key, check_ops, check_scan
from dynastore.storage.directory import DirectoryLock, disk_free_bytes, sync_directory

FILE_NAME = "store.sqlite3"


@contextmanager
def _sqlite_errors(action: str) -> Iterator[None]:
    try:
        yield
    except sqlite3.OperationalError as exc:
        if "full" in str(exc):
            raise NoSpaceError(f"sqlite {action}: {exc}") from exc
        raise StorageError(f"sqlite {action} failed: {exc}") from exc
    except (sqlite3.Error, OSError) as exc:
        if getattr(exc, "errno", None) == errno.ENOSPC:
            raise NoSpaceError(f"sqlite {action}: {exc}") from exc
        raise StorageError(f"sqlite {action} failed: {exc}") from exc


def _table(area: str) -> str:
    # Area names come from AREAS only (checked before any SQL is built), so quoting suffices.
    return f'"area_{area}"'


class SqliteEngine:
    """Areas as tables of `path/store.sqlite3`. Calls may come from any thread; a lock serialises them."""

    __slots__ = ("_conn", "_copies", "_lock", "_mutex", "durable", "path")

    def __init__(self, path: Path, *, durable: bool = True) -> None:
        self.path = path
        self.durable = durable
        self._mutex = threading.Lock()
        # Backups copying now (copy_to), each holding a read transaction on its own connection.
        self._copies = 0
        self._lock = DirectoryLock.acquire(path)
        self._conn: sqlite3.Connection | None = None
        try:
            with _sqlite_errors(f"open of {path}"):
                # isolation_level=None: the module issues no implicit BEGIN; this class brackets
                # each batch itself. check_same_thread=False: the mutex, not the thread, guards it.
                self._conn = sqlite3.connect(path / FILE_NAME, isolation_level=None, check_same_thread=False)
                self._configure(self._conn)
            if durable:
                sync_directory(path)
        except BaseException:
            if self._conn is not None:
                self._conn.close()
            self._lock.release()
            raise

    def _configure(self, conn: sqlite3.Connection) -> None:
        (mode,) = conn.execute("PRAGMA journal_mode=WAL").fetchone()
        if str(mode).lower() != "wal":
            raise StorageError(f"sqlite at {self.path} refused the WAL journal (got {mode!r})")
        conn.execute(f"PRAGMA synchronous={'FULL' if self.durable else 'NORMAL'}")
        conn.execute("BEGIN IMMEDIATE")
        try:
            for area in AREAS:
                conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {_table(area)} "
                    "(k BLOB NOT NULL PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID"
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _live(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StorageError(f"the sqlite engine at {self.path} is closed")
        return self._conn

    def get(self, area: str, key: bytes) -> bytes | None:
        check_area(area)
        check_key(key)
        with self._mutex, _sqlite_errors("get"):
            row = self._live().execute(f"SELECT v FROM {_table(area)} WHERE k = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def write(self, ops: Sequence[Op]) -> None:
        check_ops(ops)
        with self._mutex, _sqlite_errors("write"):
            conn = self._live()
            # IMMEDIATE takes the write lock up front, so the batch cannot fail half-way for a lock.
            conn.execute("BEGIN IMMEDIATE")
            try:
                # Consecutive ops of one kind on one area go in one executemany; order is kept.
                for (area, is_delete), run in itertools.groupby(ops, key=lambda op: (op.area, op.value is None)):
                    if is_delete:
                        conn.executemany(f"DELETE FROM {_table(area)} WHERE k = ?", [(op.key,) for op in run])
                    else:
                        conn.executemany(
                            f"INSERT OR REPLACE INTO {_table(area)} (k, v) VALUES (?, ?)",
                            [(op.key, op.value) for op in run],
                        )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def scan(
        self, area: str, start: bytes = b"", end: bytes | None = None, limit: int = 1000, bytes_max: int | None = None
    ) -> list[tuple[bytes, bytes]]:
        check_scan(area, start, end, limit, bytes_max)
        table = _table(area)
        if end is None:
            sql = f"SELECT k, v FROM {table} WHERE k >= ? ORDER BY k LIMIT ?"
            params: tuple[bytes | int, ...] = (start, limit)
        else:
            sql = f"SELECT k, v FROM {table} WHERE k >= ? AND k < ? ORDER BY k LIMIT ?"
            params = (start, end, limit)
        out: list[tuple[bytes, bytes]] = []
        size = 0
        with self._mutex, _sqlite_errors("scan"):
            # The cursor steps through the rows as they are asked for: a byte bound stops it early.
            for key, value in self._live().execute(sql, params):
                out.append((bytes(key), bytes(value)))
                size += len(key) + len(value)
                if bytes_max is not None and size >= bytes_max:
                    break
        return out

    def count(self, area: str) -> int:
        check_area(area)
        with self._mutex, _sqlite_errors("count"):
            (count,) = self._live().execute(f"SELECT count(*) FROM {_table(area)}").fetchone()
        return int(count)

    def sync(self) -> None:
        with self._mutex, _sqlite_errors("sync"):
            conn = self._live()
            if self._copies:
                # A backup's copy reads an older snapshot, and a FULL checkpoint would wait for it (and
                # fail once the busy timeout passed). The WAL holds every commit: a PASSIVE checkpoint
                # moves what it can, and syncing the WAL itself makes every commit durable.
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                _fsync_if_exists(self.path / (FILE_NAME + "-wal"))
                return
            # A FULL checkpoint syncs the WAL (making every commit durable), copies it into the
            # database file and syncs that too. Only this engine's connection writes the file, and
            # no copy is reading it, so it never has to wait for a reader and `busy` stays 0.
            busy, _, _ = conn.execute("PRAGMA wal_checkpoint(FULL)").fetchone()
        if busy:
            raise StorageError(f"sqlite sync at {self.path} could not checkpoint: the database is busy")

    def space(self) -> Space | None:
        with self._mutex, _sqlite_errors("space"):
            conn = self._live()
            page = int(conn.execute("PRAGMA page_size").fetchone()[0])
            pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
            unused = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
            free = disk_free_bytes(self.path)
        return Space((pages - unused) * page, unused * page + free, pages * page)

    def copy_to(self, directory: Path) -> tuple[str, ...]:
        """Write a consistent copy of the database into the empty `directory` with SQLite's backup API
        (a backup) and return the names of the files written.

        The copy reads through a connection of its own, read-only, in one step: one read transaction,
        so the copy is the database as it was when the copy began, never a mix. The journal is a WAL,
        so the engine's connection goes on reading and writing meanwhile, and the copy never holds the
        engine's mutex (a long copy holding it would stall every read on the event loop)."""
        target_path = directory / FILE_NAME
        with self._mutex:
            self._live()
            self._copies += 1
        try:
            with _sqlite_errors(f"copy to {target_path}"):
                source = sqlite3.connect(
                    f"file:{quote(str(self.path / FILE_NAME))}?mode=ro", uri=True, isolation_level=None
                )
                try:
                    target = sqlite3.connect(target_path, isolation_level=None)
                    try:
                        source.backup(target)
                        (mode,) = target.execute("PRAGMA journal_mode=DELETE").fetchone()
                    finally:
                        target.close()
                finally:
                    source.close()
        finally:
            with self._mutex:
                self._copies -= 1
        if str(mode).lower() != "delete":
            raise StorageError(f"sqlite copy at {target_path} kept journal mode {mode!r}")
        return (FILE_NAME,)

    def close(self) -> None:
        """Close the file and free the directory; closing twice is harmless."""
        with self._mutex:
            conn, self._conn = self._conn, None
            if conn is None:
                return
            try:
                with _sqlite_errors("close"):
                    conn.close()
            finally:
                self._lock.release()


def _fsync_if_exists(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
