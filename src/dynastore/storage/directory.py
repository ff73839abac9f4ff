"""A store directory: held by one engine at a time, and its entries made durable on request.

Two engines on one directory would corrupt it or silently share its locks: LMDB forbids a second
open of an environment in one process (its fcntl locks belong to the process, so closing either
handle drops the other's locks), and two node processes on one directory would interleave the
writes of two nodes. An `flock` on the file `LOCK` in the directory excludes both cases: flock locks
belong to an open file description, so a second open in the same process conflicts exactly as
another process does, and the kernel drops the lock when its holder dies, even by SIGKILL.

Engines fsync their files' contents, but a file's name lives in its directory, and POSIX makes
a new name durable only once the directory itself is fsynced: `sync_directory` does that, so a
durable store created just before a power cut still has its files afterwards.

This module must never delete, truncate or write any file but `LOCK`.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from dynastore.storage.base import StorageError

LOCK_FILE_NAME = "LOCK"
# The engine's directory inside a node's data directory.
STORE_DIR_NAME = "store"


class DirectoryLock:
    """An exclusive hold on a store directory, held until `release`."""

    __slots__ = ("_fd", "directory")

    def __init__(self, directory: Path, fd: int) -> None:
        self.directory = directory
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, directory: Path) -> DirectoryLock:
        """Create the directory if needed and take it, or raise StorageError if another engine holds it."""
        try:
            directory.mkdir(parents=True, exist_ok=True)
            # os.open makes the descriptor non-inheritable, so a child process (a node spawned by
            # `dynastore up`, say) never keeps the lock alive after its parent has died.
            fd = os.open(directory / LOCK_FILE_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StorageError(f"cannot open store directory {directory}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StorageError(
                f"store directory {directory} is already open by another engine, in this process or "
                "another; an engine needs its directory to itself"
            ) from None
        except OSError as exc:
            os.close(fd)
            raise StorageError(f"cannot lock store directory {directory}: {exc}") from exc
        return cls(directory, fd)

    def release(self) -> None:
        """Give the directory up; releasing twice is harmless."""
        fd, self._fd = self._fd, None
        if fd is not None:
            # Closing the only descriptor of the open file description drops the flock.
            os.close(fd)


def sync_directory(directory: Path) -> None:
    """Make the names of the files in `directory`, and the directory's own name, durable."""
    try:
        for path in (directory, directory.parent):
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    except OSError as exc:
        raise StorageError(f"cannot sync store directory {directory}: {exc}") from exc


def disk_free_bytes(path: Path) -> int:
    """The bytes an unprivileged process may still write on the filesystem holding `path`."""
    fs = os.statvfs(path)
    return fs.f_bavail * fs.f_frsize
