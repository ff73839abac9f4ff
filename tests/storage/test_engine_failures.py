"""Failures of the libraries under the engines surface as StorageError, never as their own exceptions."""

from __future__ import annotations

from pathlib import Path

import pytest

from dynastore.storage import StorageError
from dynastore.storage.base import put
from dynastore.storage.directory import DirectoryLock
from dynastore.storage.lmdb_engine import LmdbEngine
from dynastore.storage.lmdb_layout import Layout, LayoutError, decode_group, encode_group
from dynastore.storage.sqlite_engine import FILE_NAME, SqliteEngine


def test_a_file_that_is_not_sqlite_is_refused_at_open_and_frees_the_directory(tmp_path: Path) -> None:
    (tmp_path / FILE_NAME).write_bytes(b"this is not a database" * 100)
    with pytest.raises(StorageError, match="sqlite open"):
        SqliteEngine(tmp_path)
    DirectoryLock.acquire(tmp_path).release()


def test_a_file_that_is_not_lmdb_is_refused_at_open_and_frees_the_directory(tmp_path: Path) -> None:
    (tmp_path / "data.mdb").write_bytes(b"this is not an environment" * 1000)
    with pytest.raises(StorageError, match="lmdb open"):
        LmdbEngine(tmp_path)
    DirectoryLock.acquire(tmp_path).release()


def test_a_directory_that_cannot_be_created_is_a_storage_error(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_bytes(b"")
    with pytest.raises(StorageError, match="cannot open store directory"):
        SqliteEngine(tmp_path / "a-file" / "store")


def test_lmdb_refuses_to_reopen_with_another_inline_key_limit(tmp_path: Path) -> None:
    """The key layout is fixed when the environment is created; reading it with another would lose keys."""
    LmdbEngine(tmp_path, inline_key_bytes_max=2).close()
    with pytest.raises(StorageError, match="inline keys up to 2 bytes"):
        LmdbEngine(tmp_path, inline_key_bytes_max=3)
    engine = LmdbEngine(tmp_path)
    try:
        put(engine, "data", b"a-long-key", b"v")
        assert engine.get("data", b"a-long-key") == b"v"
    finally:
        engine.close()


@pytest.mark.parametrize("inline_key_bytes_max", [-1, 10_000])
def test_lmdb_refuses_an_inline_key_limit_outside_what_lmdb_allows(tmp_path: Path, inline_key_bytes_max: int) -> None:
    with pytest.raises(StorageError, match="this LMDB build allows"):
        LmdbEngine(tmp_path, inline_key_bytes_max=inline_key_bytes_max)
    DirectoryLock.acquire(tmp_path).release()


def test_group_records_round_trip_and_truncation_is_detected() -> None:
    members = [(b"", b""), (b"a", b"1" * 300), (b"b\x00", b"")]
    blob = encode_group(members)
    assert decode_group(blob) == members
    for cut in (1, 7, 9, len(blob) - 1):
        with pytest.raises(LayoutError):
            decode_group(blob[:cut])
    with pytest.raises(LayoutError):
        decode_group(b"")


def test_the_layout_keeps_inline_keys_apart_from_group_records() -> None:
    layout = Layout(inline_max=2, chunk=4)
    assert layout.record_key(b"") == b"\x00"
    assert layout.record_key(b"ab") == b"\x00ab"
    assert layout.record_key(b"abc") == layout.record_key(b"abcdef") == b"\x00abc"
    assert not layout.is_group(layout.record_key(b"ab"))
    assert layout.is_group(layout.record_key(b"abc"))
    assert layout.tail(b"abcdef") == b"def"
    assert layout.path(b"") == ([], b"")
    assert layout.path(b"defg") == ([], b"defg")
    assert layout.path(b"defgh") == ([b"defg"], b"h")
    assert layout.path(b"defghijk") == ([b"defg"], b"hijk")
    assert Layout.for_limit(509, 511).chunk == 502
