"""LMDB's layout of long keys: a bucket whose name fills LMDB's key limit costs O(log n) per read and
write, and a data directory of the earlier layout (group records holding all their members) opens,
migrated, with nothing lost; one of a later layout is refused in one line."""

from __future__ import annotations

from pathlib import Path

import lmdb
import pytest

from dynastore.storage import StorageError
from dynastore.storage.base import AREAS, NoSpaceError, Op
from dynastore.storage.lmdb_engine import LmdbEngine
from dynastore.storage.lmdb_layout import encode_group

# Keys as a bucket of a 504-byte name makes them: partition, bucket length, bucket, then the key.
HEAD = b"\x00\x00\x00\x07\x01\xf8" + b"B" * 504


def raw_records(path: Path) -> dict[bytes, list[tuple[bytes, bytes]]]:
    """Every record of every database in the environment, read with LMDB itself."""
    env = lmdb.open(str(path), max_dbs=32, readonly=True, lock=False)
    try:
        out: dict[bytes, list[tuple[bytes, bytes]]] = {}
        with env.begin() as txn:
            names = [bytes(name) for name, _ in txn.cursor()]
        for name in names:
            db = env.open_db(name, create=False)
            with env.begin(db=db) as txn:
                out[name] = [(bytes(k), bytes(v)) for k, v in txn.cursor()]
        return out
    finally:
        env.close()


def test_keys_of_a_bucket_with_a_long_name_are_records_of_their_own_not_one_growing_group(tmp_path: Path) -> None:
    """1,500 keys sharing their first 510 bytes: no record holds more than one key's value (in layout 1
    one group record held all 1,500, rewritten by every write: reads 3 us -> 522 us, writes 30 us ->
    2.2 ms); every key reads back, the scan is in order, and deleting them all leaves no record behind."""
    path = tmp_path / "store"
    engine = LmdbEngine(path, durable=False)
    keys = [HEAD + b"key%05d" % i for i in range(1500)]
    try:
        for key in keys:
            engine.write([Op("data", key, b"v" * 100)])
        assert all(engine.get("data", key) == b"v" * 100 for key in keys[::37])
        assert [k for k, _ in engine.scan("data", b"", None, 10_000)] == keys
        assert engine.count("data") == 1500
    finally:
        engine.close()
    records = raw_records(path)
    assert max(len(v) for rows in records.values() for _, v in rows) <= 100
    assert len(records[b"data+long"]) == 1500
    engine = LmdbEngine(path, durable=False)
    try:
        engine.write([Op("data", key, None) for key in keys])
        assert engine.count("data") == 0 and engine.scan("data", b"", None, 10) == []
    finally:
        engine.close()
    records = raw_records(path)
    assert records.get(b"data", []) == [] and records.get(b"data+long", []) == []


def test_a_key_longer_than_many_chunks_walks_its_tree_and_scans_start_inside_it(tmp_path: Path) -> None:
    """Keys of up to 4.6 KB (nine levels of tree) under one head, with starts and ends that fall inside
    the tree: each scan agrees with sorting."""
    engine = LmdbEngine(tmp_path / "store", durable=False)
    keys = sorted(
        {
            HEAD + bytes([a]) * n + bytes([b]) * m
            for a in (0, 7, 255)
            for b in (0, 9)
            for n in (0, 500, 2000)
            for m in (1, 600)
        }
    )
    try:
        engine.write([Op("data", key, key[-8:]) for key in keys])
        assert engine.scan("data", b"", None, 1000) == [(k, k[-8:]) for k in keys]
        for start in keys[::5]:
            for end in (None, *keys[::7]):
                want = [k for k in keys if k >= start and (end is None or k < end)]
                assert [k for k, _ in engine.scan("data", start, end, 1000)] == want
    finally:
        engine.close()


def write_layout_1(path: Path, inline_max: int, keys: dict[bytes, bytes]) -> None:
    """A data directory as dynastore's layout 1 wrote it: inline records, and group records that hold
    their members (suffix, value) themselves; the engine's book counts members beyond one per group."""
    path.mkdir(parents=True)
    env = lmdb.open(str(path), max_dbs=len(AREAS) + 1, subdir=True)
    try:
        with env.begin(write=True) as txn:
            engine_db = env.open_db(b"_engine", txn=txn)
            txn.put(b"inline_max", inline_max.to_bytes(4, "big"), db=engine_db)
            dbs = {area: env.open_db(area.encode(), txn=txn) for area in AREAS}
            groups: dict[bytes, list[tuple[bytes, bytes]]] = {}
            for key, value in sorted(keys.items()):
                if len(key) <= inline_max:
                    txn.put(b"\x00" + key, value, db=dbs["data"])
                else:
                    groups.setdefault(key[: inline_max + 1], []).append((key[inline_max + 1 :], value))
            for head, members in groups.items():
                txn.put(b"\x00" + head, encode_group(members), db=dbs["data"])
            extra = sum(len(members) - 1 for members in groups.values())
            txn.put(b"extra:data", extra.to_bytes(8, "big", signed=True), db=engine_db)
    finally:
        env.close()


def test_a_data_directory_of_layout_1_opens_migrated_with_every_key_and_the_count(tmp_path: Path) -> None:
    """Inline keys and two groups (one of 300 members) in layout 1: opened, every key reads back, the
    scan is in order, the count is right, writes and deletes work; opened again, nothing moves."""
    keys = {b"a": b"1", b"short": b"2", **{HEAD + b"k%03d" % i: b"g%03d" % i for i in range(300)}}
    keys[HEAD[:-1] + b"C" + b"x"] = b"other group"
    path = tmp_path / "store"
    write_layout_1(path, 509, keys)
    for _ in range(2):
        engine = LmdbEngine(path, durable=False)
        try:
            assert engine.scan("data", b"", None, 1000) == sorted(keys.items())
            assert all(engine.get("data", k) == v for k, v in keys.items())
            assert engine.count("data") == len(keys)
        finally:
            engine.close()
    records = raw_records(path)
    assert max(len(v) for _, v in records[b"data"]) <= 16, "no group record holds members any more"
    engine = LmdbEngine(path, durable=False)
    try:
        engine.write([Op("data", HEAD + b"k000", None), Op("data", HEAD + b"new", b"n")])
        assert engine.count("data") == len(keys)
        assert engine.get("data", HEAD + b"new") == b"n" and engine.get("data", HEAD + b"k000") is None
    finally:
        engine.close()


def test_a_data_directory_of_a_later_layout_is_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "store"
    LmdbEngine(path).close()
    env = lmdb.open(str(path), max_dbs=32)
    with env.begin(write=True) as txn:
        txn.put(b"layout", (3).to_bytes(4, "big"), db=env.open_db(b"_engine", txn=txn))
    env.close()
    with pytest.raises(StorageError, match="has storage layout 3; this dynastore reads layouts 1 to 2"):
        LmdbEngine(path)


def test_the_map_grows_by_itself_up_to_its_maximum_then_a_batch_is_refused_whole_and_deletes_free_room(
    tmp_path: Path,
) -> None:
    """From a 1 MiB map with a 16 MiB maximum: 8 MiB of values fit (the map doubled); past the
    maximum a batch raises NoSpaceError and leaves nothing of itself; reads go on, deletes are
    taken, and the room they free takes a new batch."""
    engine = LmdbEngine(tmp_path / "store", durable=False, map_size_bytes=16 << 20, map_initial_bytes=1 << 20)
    try:
        value = b"v" * 100_000
        for i in range(80):
            engine.write([Op("data", b"k%03d" % i, value)])
        assert engine.count("data") == 80
        with pytest.raises(NoSpaceError):
            for i in range(80, 400):
                engine.write([Op("data", b"k%03d" % i, value), Op("meta", b"marker%d" % i, b"m")])
        stopped = engine.count("data")
        assert engine.count("meta") == stopped - 80
        assert engine.get("data", b"k000") == value
        space = engine.space()
        assert space is not None and space.free_bytes < 1 << 20
        engine.write([Op("data", b"k%03d" % i, None) for i in range(40)])
        assert engine.space().free_bytes > 3 << 20  # type: ignore[union-attr]
        engine.write([Op("data", b"again%d" % i, value) for i in range(20)])
        assert engine.get("data", b"again19") == value
    finally:
        engine.close()


def test_the_chunk_size_is_kept_with_the_directory_not_worked_out_again_from_the_lmdb_build(tmp_path: Path) -> None:
    """A directory whose trees were written in chunks other than this build's would (a build with a
    larger key limit) is read with its own chunks: simulated by rewriting the stored chunk before any
    tree exists, then writing and reading keys of many chunks."""
    path = tmp_path / "store"
    LmdbEngine(path, durable=False).close()
    env = lmdb.open(str(path), max_dbs=20)
    with env.begin(write=True) as txn:
        txn.put(b"chunk", (100).to_bytes(4, "big"), db=env.open_db(b"_engine", txn=txn))
    env.close()
    keys = [HEAD + b"x" * n for n in (1, 99, 100, 101, 350)]
    engine = LmdbEngine(path, durable=False)
    try:
        engine.write([Op("data", key, b"%d" % len(key)) for key in keys])
        assert [engine.get("data", key) for key in keys] == [b"%d" % len(key) for key in keys]
    finally:
        engine.close()
    records = raw_records(path)
    assert max(len(k) for k, _ in records[b"data+long"]) <= 8 + 100 + 1
    env = lmdb.open(str(path), max_dbs=20)
    with env.begin(write=True) as txn:
        txn.put(b"chunk", (5000).to_bytes(4, "big"), db=env.open_db(b"_engine", txn=txn))
    env.close()
    with pytest.raises(StorageError, match="chunks of 5000 bytes"):
        LmdbEngine(path, durable=False)
