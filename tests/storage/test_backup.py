"""Backups without processes: each disk engine's consistent copy, the manifest's checks, the stream's
checks, and a restore that gives a new epoch; bad input is refused and changes nothing."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import random
import shutil
import subprocess
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from multidict import CIMultiDict

from dynastore import backup
from dynastore.api import admin, auth
from dynastore.backup import BackupError
from dynastore.core.actors import META_COUNTER, META_EPOCH, META_GENERATION
from dynastore.storage import open_engine
from dynastore.storage.base import NoSpaceError, Op, scan_all
from dynastore.storage.directory import STORE_DIR_NAME, disk_free_bytes
from dynastore.storage.lmdb_engine import LmdbEngine
from dynastore.storage.memory import MemoryEngine
from dynastore.storage.sqlite_engine import SqliteEngine

NOW_MS = 1_700_000_000_000
GRACE_MS = 60_000
EPOCH = 0x1234ABCD


def _store(kind: str, path: Path) -> LmdbEngine | SqliteEngine:
    engine = open_engine(kind, path, durable=False)
    assert isinstance(engine, (LmdbEngine, SqliteEngine))
    return engine


def _fill(engine: LmdbEngine | SqliteEngine, keys: int = 300) -> None:
    engine.write(
        [
            Op("meta", META_EPOCH, EPOCH.to_bytes(4, "big")),
            Op("meta", META_GENERATION, (3).to_bytes(8, "big")),
            Op("meta", META_COUNTER, (5000).to_bytes(8, "big")),
        ]
    )
    engine.write([Op("data", b"key%05d" % i, b"value%d" % i * 10) for i in range(keys)])


def _make_backup(kind: str, tmp_path: Path, created_ms: int = NOW_MS) -> Path:
    """A backup directory as `dynastore backup` writes it: the stream of a copy, received."""
    engine = _store(kind, tmp_path / "live")
    try:
        _fill(engine)
        copy = tmp_path / "copy"
        copy.mkdir()
        files = backup.snapshot(engine, copy)
    finally:
        engine.close()
    manifest = _manifest(kind, files, created_ms)
    stream = io.BytesIO(backup.encode_head(manifest) + b"".join((copy / f.name).read_bytes() for f in files))
    out = tmp_path / "backup"
    backup.receive(stream.read, out)
    return out


def _manifest(kind: str, files: list[backup.FileEntry], created_ms: int = NOW_MS) -> dict[str, Any]:
    return {
        "format": backup.BACKUP_FORMAT,
        "format_version": backup.BACKUP_FORMAT_VERSION,
        "node": "node1",
        "engine": kind,
        "created_ms": created_ms,
        "tombstone_grace_ms": GRACE_MS,
        "epoch": f"{EPOCH:08x}",
        "files": [f.as_dict() for f in files],
    }


def _rewrite_manifest(out: Path, change: dict[str, Any]) -> None:
    path = out / backup.MANIFEST_NAME
    data = json.loads(path.read_text())
    data.update(change)
    path.write_text(json.dumps(data))


def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("kind", ["lmdb", "sqlite"])
def test_a_restored_store_holds_the_backed_up_data_under_a_new_epoch(kind: str, tmp_path: Path) -> None:
    """Backup then restore gives every key back, another epoch, no generation (the node takes a fresh
    one at start) and no other change."""
    out = _make_backup(kind, tmp_path)
    assert sorted(p.name for p in out.iterdir()) == sorted([*backup.ENGINE_FILES[kind], backup.MANIFEST_NAME])
    done = backup.restore(out, tmp_path / "data", now_ms=NOW_MS + 1000, force=False, rng=random.Random(1))
    assert done.old_epoch == EPOCH and done.new_epoch != EPOCH
    restored = _store(kind, tmp_path / "data" / STORE_DIR_NAME)
    try:
        rows = list(scan_all(restored, "data"))
        assert rows == [(b"key%05d" % i, b"value%d" % i * 10) for i in range(300)]
        assert restored.get("meta", META_EPOCH) == done.new_epoch.to_bytes(4, "big")
        assert restored.get("meta", META_GENERATION) is None
        assert restored.get("meta", META_COUNTER) == (5000).to_bytes(8, "big")
    finally:
        restored.close()


def test_the_new_epoch_is_never_the_old_one(tmp_path: Path) -> None:
    """Even a random source that draws the old epoch first gets another."""

    class Repeats(random.Random):
        def __init__(self) -> None:
            super().__init__(0)
            self.draws = [EPOCH, EPOCH, 7]

        def getrandbits(self, k: int) -> int:
            return self.draws.pop(0)

    out = _make_backup("lmdb", tmp_path)
    done = backup.restore(out, tmp_path / "data", now_ms=NOW_MS, force=False, rng=Repeats())
    assert done.new_epoch == 7


def test_a_sqlite_copy_taken_under_writes_is_one_consistent_state(tmp_path: Path) -> None:
    """The SQLite copy releases the engine between steps; batches written meanwhile are in the copy
    whole or not at all (each batch writes a key and the count of keys together)."""
    engine = _store("sqlite", tmp_path / "live")
    engine.write([Op("data", b"big%05d" % i, b"x" * 4000) for i in range(2000)])
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            engine.write([Op("hints", b"n%08d" % i, b""), Op("meta", b"count", i.to_bytes(8, "big"))])

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        copy = tmp_path / "copy"
        copy.mkdir()
        backup.snapshot(engine, copy)
    finally:
        stop.set()
        thread.join(30)
        engine.close()
    snapshot = _store("sqlite", copy)
    try:
        raw = snapshot.get("meta", b"count")
        count = 0 if raw is None else int.from_bytes(raw, "big")
        assert snapshot.count("hints") == count
        assert snapshot.count("data") == 2000
    finally:
        snapshot.close()


def test_a_damaged_file_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    out = _make_backup("lmdb", tmp_path)
    path = out / "data.mdb"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(BackupError, match="sha256"):
        backup.restore(out, tmp_path / "data", now_ms=NOW_MS, force=True, rng=random.Random(1))
    assert not (tmp_path / "data").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format_version": 2}, "backup format version 2"),
        ({"format": "tarball"}, "not a dynastore backup"),
        ({"engine": "memory"}, "restorable engines"),
        ({"files": [{"name": "../../etc/passwd", "size": 1, "sha256": "0" * 64}]}, "no lmdb copy has"),
        ({"created_ms": "yesterday"}, "created_ms"),
    ],
)
def test_a_manifest_this_dynastore_cannot_restore_is_refused(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    out = _make_backup("lmdb", tmp_path)
    _rewrite_manifest(out, change)
    with pytest.raises(BackupError, match=message):
        backup.restore(out, tmp_path / "data", now_ms=NOW_MS, force=True, rng=random.Random(1))
    assert not (tmp_path / "data").exists()


def test_a_file_of_another_size_is_refused(tmp_path: Path) -> None:
    out = _make_backup("sqlite", tmp_path)
    with open(out / "store.sqlite3", "ab") as grow:
        grow.write(b"\0" * 10)
    with pytest.raises(BackupError, match="bytes, the manifest says"):
        backup.verify(out)


def test_a_non_empty_data_directory_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    out = _make_backup("lmdb", tmp_path)
    data = tmp_path / "data"
    (data / STORE_DIR_NAME).mkdir(parents=True)
    (data / STORE_DIR_NAME / "data.mdb").write_bytes(b"someone else's")
    before = _tree(data)
    with pytest.raises(BackupError, match="not empty"):
        backup.restore(out, data, now_ms=NOW_MS, force=True, rng=random.Random(1))
    assert _tree(data) == before


def test_an_empty_data_directory_is_filled(tmp_path: Path) -> None:
    out = _make_backup("lmdb", tmp_path)
    (tmp_path / "data").mkdir()
    backup.restore(out, tmp_path / "data", now_ms=NOW_MS, force=False, rng=random.Random(1))
    assert (tmp_path / "data" / STORE_DIR_NAME / "data.mdb").is_file()


def test_a_backup_older_than_the_tombstone_grace_needs_force(tmp_path: Path) -> None:
    """Deletes made after it may have been reaped everywhere: restoring it would bring them back."""
    out = _make_backup("lmdb", tmp_path)
    later = NOW_MS + GRACE_MS + 1
    with pytest.raises(BackupError, match="tombstone_grace_ms"):
        backup.restore(out, tmp_path / "data", now_ms=later, force=False, rng=random.Random(1))
    assert not (tmp_path / "data").exists()
    backup.restore(out, tmp_path / "data", now_ms=later, force=True, rng=random.Random(1))
    assert (tmp_path / "data" / STORE_DIR_NAME / "data.mdb").is_file()


def test_receiving_refuses_a_non_empty_directory_and_keeps_its_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(BackupError, match="not empty"):
        backup.receive(io.BytesIO(b"").read, out)
    assert _tree(out) == {"notes.txt": b"mine"}


def _stream(kind: str, payload: bytes, digest: str | None = None, size: int | None = None) -> bytes:
    entry = backup.FileEntry(
        backup.ENGINE_FILES[kind][0],
        len(payload) if size is None else size,
        digest or hashlib.sha256(payload).hexdigest(),
    )
    return backup.encode_head(_manifest(kind, [entry])) + payload


@pytest.mark.parametrize(
    ("stream", "message"),
    [
        (_stream("lmdb", b"abc" * 1000, digest="0" * 64), "another sha256"),
        (_stream("lmdb", b"abc" * 1000, size=5000), "stream ended 3000 bytes into"),
        (_stream("lmdb", b"abc") + b"more", "more than its manifest lists"),
        (_stream("lmdb", b"abc")[:5], "inside the manifest's length"),
        ((10**9).to_bytes(8, "big"), "more than"),
        ((3).to_bytes(8, "big") + b"{{{", "not JSON"),
    ],
)
def test_a_damaged_or_short_stream_leaves_no_backup_behind(tmp_path: Path, stream: bytes, message: str) -> None:
    out = tmp_path / "out"
    with pytest.raises(BackupError, match=message):
        backup.receive(io.BytesIO(stream).read, out)
    assert not out.exists()


def test_the_memory_engine_is_refused_with_its_reason() -> None:
    assert "nothing durable" in (backup.refusal_of(MemoryEngine()) or "")


def test_the_backup_route_is_an_operator_route() -> None:
    """It hands out every stored object and the users' password hashes: dynastore.admin only."""
    assert auth.need_of("GET", [b"admin", b"backup"], {}) == auth.OPERATOR


class _SlowCopyEnv:
    """An LMDB environment whose copy lasts until `release` is set (at most 10 s): a long copy."""

    def __init__(self, env: Any) -> None:
        self._env = env
        self.started = threading.Event()
        self.release = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._env, name)

    def copy(self, path: str, compact: bool = False) -> None:
        self.started.set()
        self.release.wait(10)
        self._env.copy(path, compact=compact)


def test_an_lmdb_map_full_during_a_copy_never_makes_reads_wait_for_the_copy(tmp_path: Path) -> None:
    """A batch that fills the map while a backup copies must not queue a resize behind the copy: every
    read would wait for the resize, so for the copy. The batch fails for room instead (the runtime writes
    it again, acknowledging nothing) and fits once the copy has ended."""
    engine = LmdbEngine(tmp_path / "live", durable=False, map_size_bytes=1 << 30, map_initial_bytes=4 << 20)
    slow: _SlowCopyEnv | None = None
    threads: list[threading.Thread] = []
    try:
        _fill(engine)
        slow = _SlowCopyEnv(engine._env)
        engine._env = slow  # type: ignore[assignment]
        (tmp_path / "copy").mkdir()
        copier = threading.Thread(target=engine.copy_to, args=(tmp_path / "copy",))
        copier.start()
        threads.append(copier)
        assert slow.started.wait(10)
        map_bytes = int(slow.info()["map_size"])
        # Bigger than the whole map: it cannot fit without a resize.
        big = [Op("data", b"big%05d" % i, b"x" * 100_000) for i in range(2 * map_bytes // 100_000)]
        outcome: list[BaseException | None] = []

        def write() -> None:
            try:
                engine.write(big)
                outcome.append(None)
            except BaseException as exc:
                outcome.append(exc)

        writer = threading.Thread(target=write)
        writer.start()
        threads.append(writer)
        deadline = time.monotonic() + 10
        while writer.is_alive() and not engine._gate._resizing and time.monotonic() < deadline:
            time.sleep(0.01)
        took: list[float] = []

        def read() -> None:
            started = time.monotonic()
            engine.get("data", b"key00001")
            took.append(time.monotonic() - started)

        reader = threading.Thread(target=read)
        reader.start()
        threads.append(reader)
        reader.join(2)
        assert took and took[0] < 0.5, "a read waited for the backup's copy"
        assert copier.is_alive()
        writer.join(10)
        assert outcome and isinstance(outcome[0], NoSpaceError)
        slow.release.set()
        copier.join(10)
        engine.write(big)
        assert engine.get("data", b"big00000") == b"x" * 100_000
    finally:
        if slow is not None:
            slow.release.set()
        for thread in threads:
            thread.join(10)
        engine.close()


def test_reads_and_syncs_go_on_during_a_sqlite_copy(tmp_path: Path) -> None:
    """The copy reads through its own connection and never holds the engine's mutex: a read on the event
    loop answers within 50 ms throughout, and a sync (a FULL checkpoint would wait for the copy's reader)
    still makes the batches durable."""
    engine = _store("sqlite", tmp_path / "live")
    try:
        for start in range(0, 24_000, 1000):
            engine.write([Op("data", b"big%05d" % i, random.randbytes(4000)) for i in range(start, start + 1000)])
        engine.sync()
        (tmp_path / "copy").mkdir()
        copier = threading.Thread(target=backup.snapshot, args=(engine, tmp_path / "copy"))
        started = time.monotonic()
        copier.start()
        slowest, reads, i = 0.0, 0, 0
        while copier.is_alive() and time.monotonic() - started < 30:
            began = time.monotonic()
            assert engine.get("data", b"big%05d" % (reads % 24_000)) is not None
            slowest = max(slowest, time.monotonic() - began)
            reads += 1
            if reads % 50 == 0:
                i += 1
                engine.write([Op("meta", b"during", i.to_bytes(8, "big"))])
                engine.sync()
            time.sleep(0.001)
        copier.join(30)
        assert reads >= 5, "the copy ended before the reads could overlap it"
        assert slowest < 0.05, f"a read waited {slowest:.3f} s during the copy"
    finally:
        engine.close()
    copy = _store("sqlite", tmp_path / "copy")
    try:
        assert copy.count("data") == 24_000
    finally:
        copy.close()


def _mount_tmpfs(path: Path, size: str) -> None:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "none", str(path)], check=False, timeout=30)
    if done.returncode != 0:
        pytest.skip("this machine does not let the tests mount a tmpfs")


def _unmount(path: Path) -> None:
    subprocess.run(["umount", str(path)], check=False, timeout=30)


def test_a_restore_into_a_mount_point_builds_the_store_inside_it(tmp_path: Path) -> None:
    """A mount point cannot be renamed onto (EBUSY), nor a directory from another filesystem (EXDEV):
    the store is built inside the data directory and appears there whole, with mode 0700."""
    out = _make_backup("lmdb", tmp_path)
    data = tmp_path / "mounted"
    _mount_tmpfs(data, "64m")
    try:
        backup.restore(out, data, now_ms=NOW_MS, force=False, rng=random.Random(1))
        assert sorted(p.name for p in data.iterdir()) == [STORE_DIR_NAME]
        assert (data / STORE_DIR_NAME).stat().st_mode & 0o777 == 0o700
        restored = _store("lmdb", data / STORE_DIR_NAME)
        try:
            assert restored.count("data") == 300
        finally:
            restored.close()
    finally:
        _unmount(data)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_restore_needs_no_write_access_to_the_data_directorys_parent(tmp_path: Path) -> None:
    out = _make_backup("sqlite", tmp_path)
    parent = tmp_path / "parent"
    (parent / "data").mkdir(parents=True)
    if os.geteuid() == 0:
        # root writes anywhere: a read-only mount stands in for a parent it may not write.
        _mount_tmpfs(parent, "1m")
        (parent / "data").mkdir()
        subprocess.run(["mount", "-o", "remount,ro", str(parent)], check=True, timeout=30)
        _mount_tmpfs(parent / "data", "64m")
    else:
        parent.chmod(0o500)
    try:
        backup.restore(out, parent / "data", now_ms=NOW_MS, force=False, rng=random.Random(1))
        assert sorted(p.name for p in (parent / "data").iterdir()) == [STORE_DIR_NAME]
    finally:
        if os.geteuid() == 0:
            _unmount(parent / "data")
            _unmount(parent)
        else:
            parent.chmod(0o700)


def test_a_failed_restore_leaves_the_data_directory_empty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = _make_backup("lmdb", tmp_path)
    data = tmp_path / "data"
    data.mkdir()

    def broken(*args: Any, **kwargs: Any) -> tuple[int, int]:
        raise BackupError("the disk went away")

    monkeypatch.setattr(backup, "_new_epoch", broken)
    with pytest.raises(BackupError, match="went away"):
        backup.restore(out, data, now_ms=NOW_MS, force=False, rng=random.Random(1))
    assert list(data.iterdir()) == []
    with pytest.raises(BackupError, match="went away"):
        backup.restore(out, tmp_path / "new", now_ms=NOW_MS, force=False, rng=random.Random(1))
    assert not (tmp_path / "new").exists()


class _Runtime:
    """What the backup route reads of a node's runtime, with the manifest's head given."""

    def __init__(self, engine: LmdbEngine | SqliteEngine, data_dir: Path, reserve: int) -> None:
        self.engine = engine
        self.backup_running = False
        self.config = SimpleNamespace(data_dir=data_dir)
        self.settings = SimpleNamespace(storage_reserve_bytes=reserve)


def _route(
    monkeypatch: pytest.MonkeyPatch,
    engine: LmdbEngine | SqliteEngine,
    data_dir: Path,
    head: dict[str, Any],
    reserve: int,
) -> tuple[Any, list[Path]]:
    copies: list[Path] = []
    real_snapshot = backup.snapshot

    def snapshot(engine: Any, directory: Path) -> list[backup.FileEntry]:
        copies.append(directory)
        return real_snapshot(engine, directory)

    monkeypatch.setattr(admin, "_manifest_head", lambda runtime: dict(head))
    monkeypatch.setattr(admin.backup, "snapshot", snapshot)
    runtime = _Runtime(engine, data_dir, reserve)
    answer = asyncio.run(admin._backup(runtime, object()))  # type: ignore[arg-type]
    assert not runtime.backup_running
    return answer, copies


def test_a_backup_without_room_for_its_copy_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The copy is about as large as the store and goes on the data directory's disk: with less free
    than the store's used bytes beyond storage_reserve_bytes, 507 before anything is copied."""
    engine = _store("lmdb", tmp_path / "data" / STORE_DIR_NAME)
    try:
        _fill(engine)
        free = disk_free_bytes(tmp_path)
        answer, copies = _route(monkeypatch, engine, tmp_path / "data", _manifest("lmdb", []), reserve=free)
        assert answer.status == 507 and "storage_reserve_bytes" in answer.body.decode()
        assert copies == []
        assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [STORE_DIR_NAME]
    finally:
        engine.close()
    assert backup.room_problem(100, 1000, 900) is None
    assert "uses 101 bytes" in (backup.room_problem(101, 1000, 900) or "")


def test_a_manifest_over_its_limit_is_refused_before_the_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The head (all of the manifest but its files) is measured first: 500 with the reason, no copy, and
    never a 200 cut off after its headers."""
    engine = _store("sqlite", tmp_path / "data" / STORE_DIR_NAME)
    try:
        _fill(engine)
        head = {**_manifest("sqlite", []), "metadata": {"users": ["u" * 1000] * (backup.MANIFEST_BYTES_MAX // 1000)}}
        answer, copies = _route(monkeypatch, engine, tmp_path / "data", head, reserve=0)
        assert answer.status == 500 and "more than" in answer.body.decode()
        assert copies == []
        assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [STORE_DIR_NAME]
    finally:
        engine.close()
    assert backup.head_problem(_manifest("lmdb", []), "lmdb") is None


@pytest.mark.parametrize(
    ("headers", "refused"),
    [
        ({}, False),
        ({"Sec-Fetch-Site": "none"}, False),
        ({"Sec-Fetch-Site": "same-origin"}, False),
        ({"Origin": "http://127.0.0.1:8098"}, True),
        ({"Origin": "null"}, True),
        ({"sec-fetch-site": "cross-site"}, True),
        ({"Sec-Fetch-Site": "same-site"}, True),
    ],
)
def test_a_web_page_cannot_start_a_backup(headers: dict[str, str], refused: bool) -> None:
    """With security off on a loopback node an <img src=http://127.0.0.1:8098/admin/backup> would copy the
    store again and again: a GET of the route carrying a browser's Origin or Sec-Fetch-Site is refused.
    The CLI sends neither; other GET routes keep answering pages."""
    guard = object.__new__(auth.Guard)
    guard.loopback_node, guard.own_hosts, guard.allowed_hosts = True, {"127.0.0.1"}, set()
    request = SimpleNamespace(method="GET", scheme="http", headers=CIMultiDict({"Host": "127.0.0.1:8098", **headers}))
    answer = guard.origin_problem(request, [b"admin", b"backup"])  # type: ignore[arg-type]
    assert (answer is not None and answer.status == 403) == refused
    assert guard.origin_problem(request, [b"admin", b"status"]) is None  # type: ignore[arg-type]
