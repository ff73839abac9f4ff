"""Backups of one node's data, and restoring them: the manifest, the stream, the checks, the new epoch.

Theory of operation
-------------------
`dynastore backup --node URL --out DIR` asks the node for `GET /admin/backup`. The node copies its
store into a temporary directory inside its own data directory (`TEMP_DIR_NAME`: a node never writes
to a path a client names), with the engine's own consistent copy (`snapshot`: LMDB's compacting copy,
SQLite's backup API), measures and hashes the copy, and streams it: an 8-byte big-endian length, the
manifest as JSON, then each file's bytes in the manifest's order. It reads the copy a chunk
(CHUNK_BYTES) at a time off the event loop and removes it afterwards. The CLI (`receive`) writes the
files into DIR, hashing as it writes, refuses any mismatch, and writes `manifest.json` last: a
directory without a manifest is not a backup.

`dynastore restore DIR --data-dir D` (`restore`) checks the manifest and every file's size and sha256,
refuses a non-empty D, builds the store inside D (`.store.restoring`, mode 0700) and renames it to
D/store (a refusal or a failure leaves D as it was: empty, or absent), and gives the restored store a
new epoch. Nothing is written beside D: D may be a mount point, or sit in a directory the user cannot
write.

Why a new epoch (Riak's kv679): every write a node coordinates gets a dot (actor, counter); the actor
is the node's name, its epoch and a generation (core/actors.py). After the backup the node went on
handing out dots, perhaps under later generations (each unclean stop takes one), and those dots are
in the other replicas' clocks. The copy knows none of them: restored as is, the node would take the
next generation, or the same counters again, and a new write could carry a dot the cluster has seen,
so replicas would drop it as already known (a false ancestor), or drop what it should have replaced.
A new random epoch (never the old one) makes every dot the restored node hands out unlike every dot
it handed out before the backup and after it. The counter lease and generation start afresh.

Why a backup older than `tombstone_grace_ms` is refused without `--force`: a key deleted after the
backup leaves a tombstone that is reaped, everywhere, once the grace period has passed with every
member up (core/reaping.py). Restored from a copy taken before the delete, the node holds the old
value and nothing newer exists anywhere to beat it: anti-entropy would bring the key back. While the
backup is younger than the grace period, no delete made after it can have been reaped (reaping also
waits while the node is down), so the tombstones win. Operators who keep backups should set
`tombstone_grace_ms` above the age of the oldest backup they mean to restore; rebuilding a lost node
from an empty data directory by anti-entropy alone is always safe.

This module is the shell's (it reads and writes files); the copies themselves are the engines'.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dynastore.core.actors import META_EPOCH, META_FORGOTTEN, META_GENERATION
from dynastore.storage.base import Op, StorageError
from dynastore.storage.directory import STORE_DIR_NAME, sync_directory
from dynastore.storage.lmdb_engine import LmdbEngine
from dynastore.storage.memory import MemoryEngine
from dynastore.storage.sqlite_engine import SqliteEngine

BACKUP_FORMAT = "dynastore-backup"
BACKUP_FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
# The manifest names every member, bucket type and user: large clusters make it large, but not this large.
MANIFEST_BYTES_MAX = 16 * 1024 * 1024
HEAD_LENGTH_BYTES = 8
# What the node, and the CLI, hold of a file at a time.
CHUNK_BYTES = 1024 * 1024
# Inside the node's data directory: the copy being streamed (removed after, and at start-up).
TEMP_DIR_NAME = "backup.tmp"
# The files each engine's copy consists of: a manifest naming anything else is refused.
ENGINE_FILES: dict[str, tuple[str, ...]] = {"lmdb": ("data.mdb",), "sqlite": ("store.sqlite3",)}
EPOCH_BITS = 32


class BackupError(Exception):
    """A backup or a restore that cannot go on; the message says why in one line."""


@dataclass(frozen=True, slots=True)
class FileEntry:
    name: str
    size: int
    sha256: str

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size, "sha256": self.sha256}


# --- The node's side ------------------------------------------------------------------------------------


def engine_kind(engine: object) -> str:
    if isinstance(engine, LmdbEngine):
        return "lmdb"
    if isinstance(engine, SqliteEngine):
        return "sqlite"
    if isinstance(engine, MemoryEngine):
        return "memory"
    raise BackupError(f"cannot back up an engine of type {type(engine).__name__}")


def refusal_of(engine: object) -> str | None:
    """Why this engine cannot be backed up, or None."""
    if isinstance(engine, MemoryEngine):
        return (
            "this node runs the memory engine, which keeps nothing durable: there is no copy to back up, "
            "and none a node could restart from"
        )
    return None


def snapshot(engine: LmdbEngine | SqliteEngine, directory: Path) -> list[FileEntry]:
    """A consistent copy of the engine's store in the empty `directory`, and its files' sizes and
    sha256 (read back in chunks). Blocks: call it from a thread."""
    names = engine.copy_to(directory)
    return [describe(directory / name) for name in names]


def describe(path: Path) -> FileEntry:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as source:
        while chunk := source.read(CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return FileEntry(path.name, size, digest.hexdigest())


def encode_head(manifest: dict[str, Any]) -> bytes:
    body = json.dumps(manifest, sort_keys=True).encode()
    if len(body) > MANIFEST_BYTES_MAX:
        raise BackupError(f"the manifest would take {len(body)} bytes, more than {MANIFEST_BYTES_MAX}")
    return len(body).to_bytes(HEAD_LENGTH_BYTES, "big") + body


def head_problem(manifest: dict[str, Any], kind: str) -> str | None:
    """Why the manifest `manifest` (everything but its files) would exceed MANIFEST_BYTES_MAX once an
    engine `kind`'s files are listed, at the longest their entries can be; or None. Checked before
    copying, so a manifest too large never costs a copy."""
    widest = [FileEntry(name, 10**20 - 1, "f" * 64).as_dict() for name in ENGINE_FILES[kind]]
    try:
        encode_head({**manifest, "files": widest})
    except BackupError as exc:
        return str(exc)
    return None


def room_problem(used_bytes: int, free_bytes: int, reserve_bytes: int) -> str | None:
    """Why a copy of a store of `used_bytes` does not fit on a disk with `free_bytes` free, keeping
    `storage_reserve_bytes` for the node's own writes (core/diskspace.py), or None."""
    if free_bytes - reserve_bytes < used_bytes:
        return (
            f"no room for the backup's copy in the node's data directory: the store uses {used_bytes} bytes, "
            f"the disk has {free_bytes} free and storage_reserve_bytes keeps {reserve_bytes} of them"
        )
    return None


def remove_temp(data_dir: Path) -> None:
    """Remove what a backup left in the node's data directory (after it, or after a crash during one)."""
    shutil.rmtree(data_dir / TEMP_DIR_NAME, ignore_errors=True)


# --- Checks -----------------------------------------------------------------------------------------------


def check_manifest(data: Any) -> dict[str, Any]:
    """`data` as a manifest this dynastore can restore, or BackupError saying what is wrong with it."""
    if not isinstance(data, dict) or data.get("format") != BACKUP_FORMAT:
        raise BackupError(f'not a dynastore backup manifest (no "format": "{BACKUP_FORMAT}")')
    version = data.get("format_version")
    if version != BACKUP_FORMAT_VERSION:
        raise BackupError(f"backup format version {version!r}; this dynastore reads version {BACKUP_FORMAT_VERSION}")
    engine = data.get("engine")
    if engine not in ENGINE_FILES:
        raise BackupError(f"backup of engine {engine!r}; restorable engines are {', '.join(ENGINE_FILES)}")
    for field, kind in (("node", str), ("created_ms", int), ("tombstone_grace_ms", int), ("epoch", str)):
        if not isinstance(data.get(field), kind) or isinstance(data.get(field), bool):
            raise BackupError(f"the manifest's {field!r} is missing or not a {kind.__name__}")
    files = data.get("files")
    if not isinstance(files, list) or not files:
        raise BackupError("the manifest lists no files")
    names = []
    for entry in files:
        if not isinstance(entry, dict):
            raise BackupError("a file entry of the manifest is not an object")
        name, size, digest = entry.get("name"), entry.get("size"), entry.get("sha256")
        if name not in ENGINE_FILES[engine]:
            raise BackupError(f"the manifest names a file {name!r}, which no {engine} copy has")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise BackupError(f"the manifest's size of {name} is not a byte count")
        if not isinstance(digest, str) or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise BackupError(f"the manifest's sha256 of {name} is not 64 hex digits")
        names.append(name)
    if sorted(names) != sorted(ENGINE_FILES[engine]):
        raise BackupError(f"a {engine} backup has the files {', '.join(ENGINE_FILES[engine])}, this one {names}")
    return data


def entries(manifest: dict[str, Any]) -> list[FileEntry]:
    return [FileEntry(e["name"], e["size"], e["sha256"]) for e in manifest["files"]]


def _empty_or_absent(path: Path, what: str) -> None:
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise BackupError(f"{what} {path} is not empty: give an empty or new directory")


def verify(backup_dir: Path) -> dict[str, Any]:
    """The manifest of the backup in `backup_dir`, once every file it lists has its size and sha256."""
    path = backup_dir / MANIFEST_NAME
    try:
        with open(path, "rb") as source:
            raw = source.read(MANIFEST_BYTES_MAX + 1)
    except OSError as exc:
        raise BackupError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(raw) > MANIFEST_BYTES_MAX:
        raise BackupError(f"{path} is larger than {MANIFEST_BYTES_MAX} bytes")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise BackupError(f"{path} is not JSON") from None
    manifest = check_manifest(data)
    for entry in entries(manifest):
        try:
            found = describe(backup_dir / entry.name)
        except OSError as exc:
            raise BackupError(f"cannot read {backup_dir / entry.name}: {exc.strerror or exc}") from None
        if found.size != entry.size:
            raise BackupError(f"{entry.name} has {found.size} bytes, the manifest says {entry.size}")
        if found.sha256 != entry.sha256:
            raise BackupError(f"{entry.name} does not match its sha256 in the manifest: the copy is damaged")
    return manifest


# --- The CLI's side: receiving a backup -------------------------------------------------------------------


def check_out_dir(out_dir: Path) -> None:
    _empty_or_absent(out_dir, "--out")


def receive(read: Callable[[int], bytes], out_dir: Path) -> dict[str, Any]:
    """Write the stream `read` gives (read(n): at most n bytes, b"" at its end) into `out_dir`, which
    must be empty or absent, checking each file's size and sha256 as it comes; the manifest last.
    On any failure what was written is removed again."""
    check_out_dir(out_dir)
    created = not out_dir.exists()
    written: list[Path] = []
    try:
        out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        length = int.from_bytes(_read_exactly(read, HEAD_LENGTH_BYTES, "the manifest's length"), "big")
        if length > MANIFEST_BYTES_MAX:
            raise BackupError(f"the node sent a manifest of {length} bytes, more than {MANIFEST_BYTES_MAX}")
        try:
            manifest = check_manifest(json.loads(_read_exactly(read, length, "the manifest")))
        except (ValueError, RecursionError):
            raise BackupError("the node sent a manifest that is not JSON") from None
        for entry in entries(manifest):
            path = out_dir / entry.name
            written.append(path)
            _receive_file(read, path, entry)
        if read(1):
            raise BackupError("the node sent more than its manifest lists")
        path = out_dir / MANIFEST_NAME
        written.append(path)
        _write_new(path, json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n")
        sync_directory(out_dir)
        return manifest
    except BaseException:
        for path in written:
            with contextlib.suppress(OSError):
                path.unlink()
        if created:
            with contextlib.suppress(OSError):
                out_dir.rmdir()
        raise


def _read_exactly(read: Callable[[int], bytes], count: int, what: str) -> bytes:
    parts, left = [], count
    while left:
        chunk = read(min(left, CHUNK_BYTES))
        if not chunk:
            raise BackupError(f"the stream ended inside {what}: the node stopped sending")
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def _receive_file(read: Callable[[int], bytes], path: Path, entry: FileEntry) -> None:
    digest = hashlib.sha256()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        left = entry.size
        while left:
            chunk = read(min(left, CHUNK_BYTES))
            if not chunk:
                raise BackupError(f"the stream ended {entry.size - left} bytes into {entry.name} of {entry.size}")
            digest.update(chunk)
            out.write(chunk)
            left -= len(chunk)
        out.flush()
        os.fsync(out.fileno())
    if digest.hexdigest() != entry.sha256:
        raise BackupError(f"{entry.name} arrived with another sha256 than the node computed: the copy is damaged")


def _write_new(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())


# --- Restoring ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Restored:
    manifest: dict[str, Any]
    old_epoch: int
    new_epoch: int
    age_ms: int


def restore(backup_dir: Path, data_dir: Path, *, now_ms: int, force: bool, rng: random.Random) -> Restored:
    """Make `data_dir` (empty or absent) a data directory holding the backup, under a new epoch (see the
    module docstring). Nothing is written unless every check passes; a failure leaves `data_dir` as it was."""
    manifest = verify(backup_dir)
    _empty_or_absent(data_dir, "--data-dir")
    age_ms = now_ms - manifest["created_ms"]
    grace_ms = manifest["tombstone_grace_ms"]
    if age_ms > grace_ms and not force:
        raise BackupError(
            f"the backup is {age_ms / 1000:.0f} s old, older than tombstone_grace_ms ({grace_ms / 1000:.0f} s): "
            "keys deleted since, whose tombstones were reaped, would come back; --force restores it all the same "
            "(or start the node on an empty data directory and let anti-entropy rebuild it)"
        )
    data_dir = data_dir.absolute()
    # Built inside D, then renamed within it: D may be a mount point (which cannot be renamed), on
    # another filesystem than its parent, or in a parent this user cannot write.
    created = not data_dir.exists()
    building = data_dir / f".{STORE_DIR_NAME}.restoring"
    try:
        if created:
            data_dir.mkdir(mode=0o700, parents=True)
        building.mkdir(mode=0o700)
        size = 0
        for entry in entries(manifest):
            shutil.copyfile(backup_dir / entry.name, building / entry.name)
            with open(building / entry.name, "rb+") as copied:
                os.fsync(copied.fileno())
            size += entry.size
        old_epoch, new_epoch = _new_epoch(manifest["engine"], building, size, rng)
        sync_directory(building)
        # rename(2) within D: the store appears whole or not at all.
        os.rename(building, data_dir / STORE_DIR_NAME)
        sync_directory(data_dir)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        if created:
            shutil.rmtree(data_dir, ignore_errors=True)
        raise
    return Restored(manifest, old_epoch, new_epoch, age_ms)


def _new_epoch(kind: str, store: Path, size: int, rng: random.Random) -> tuple[int, int]:
    """Give the store at `store` a new epoch, generation 0 (the node takes generation 1 when it starts)
    and no remembered dots; return the old epoch and the new."""
    engine: LmdbEngine | SqliteEngine
    try:
        # An LMDB map must hold the copy, whatever this machine's settings say.
        engine = LmdbEngine(store, map_size_bytes=max(2 * size, 1 << 30)) if kind == "lmdb" else SqliteEngine(store)
    except StorageError as exc:
        raise BackupError(f"the restored copy does not open: {exc}") from None
    try:
        raw = engine.get("meta", META_EPOCH)
        if raw is None or len(raw) != EPOCH_BITS // 8:
            raise BackupError("the backup holds no epoch: it is not a node's store")
        old = int.from_bytes(raw, "big")
        new = old
        while new == old:
            new = rng.getrandbits(EPOCH_BITS)
        engine.write(
            [
                Op("meta", META_EPOCH, new.to_bytes(EPOCH_BITS // 8, "big")),
                Op("meta", META_GENERATION, None),
                Op("meta", META_FORGOTTEN, None),
            ]
        )
        engine.sync()
    finally:
        engine.close()
    return old, new
