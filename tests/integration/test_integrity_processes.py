"""Bytes that rot on a real node's disk: flipped in a stopped node's LMDB file, inside a value and in
dynastore's own record encoding. After a restart no read through any node returns what rotted, and a
copy nobody reads is repaired within one scrub interval. Damage LMDB itself cannot open is reported
in one line that names the file."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from http_util import call, get, put

from dynastore.localcluster import LocalCluster, NodeProc

MakeCluster = Callable[..., LocalCluster]


def _value(name: str) -> bytes:
    return (f"<{name}: the bytes that must survive> " * 40).encode()


def _flip_in_file(path: Path, find: Callable[[bytearray], list[int]]) -> int:
    """Flip bit 0 of every byte `find` points at in `path`; how many were flipped."""
    data = bytearray(path.read_bytes())
    places = find(data)
    for index in places:
        data[index] ^= 1
    path.write_bytes(bytes(data))
    return len(places)


def _occurrences(data: bytearray, needle: bytes) -> list[int]:
    found, at = [], data.find(needle)
    while at >= 0:
        found.append(at)
        at = data.find(needle, at + 1)
    return found


def _inside_value(value: bytes) -> Callable[[bytearray], list[int]]:
    return lambda data: [at + len(value) // 2 for at in _occurrences(data, value)]


def _record_header(value: bytes) -> Callable[[bytearray], list[int]]:
    """The msgpack array header (0x93) that opens the payload of every stored copy holding `value`:
    it follows the copy's format byte (0x01) and its 8-byte checksum, a little before the value."""

    def find(data: bytearray) -> list[int]:
        places = []
        for at in _occurrences(data, value):
            for start in range(at - 1, max(0, at - 200), -1):
                if data[start] == 0x93 and data[start - 9] == 0x01:
                    places.append(start)
                    break
        return places

    return find


def _local(node: NodeProc, key: str) -> list[str] | None:
    status, _, body = call("GET", f"{node.url}/admin/local/b/{key}")
    if status == 404:
        return None
    assert status == 200, body
    return [s["value"] for s in json.loads(body)["siblings"]]


def test_rotten_bytes_in_a_stopped_nodes_file_are_never_served_and_the_scrub_repairs_them(
    make_cluster: MakeCluster,
) -> None:
    """Three keys on three nodes; node2 stops; in its data file one byte flips inside the value of
    `read` and of `unread`, and the record header of `header`. After the restart, reads of `read` and
    `header` through every node give the written values; `unread`, which nobody reads, is found by
    the scrub (every 3 s; regular exchanges only every 10 minutes) and repaired by the exchange it
    starts, within one scrub interval."""
    cluster = make_cluster(3, "scrub_interval_ms=3000", "anti_entropy_interval_ms=600000")
    for key in ("read", "unread", "header"):
        status, _, body = put(cluster[0].url, "b", key, _value(key), query="w=3")
        assert status == 204, body
    victim = cluster[2]
    assert victim.stop() == 0
    store = victim.data_dir / "store" / "data.mdb"
    assert _flip_in_file(store, _inside_value(_value("read"))) >= 1
    assert _flip_in_file(store, _inside_value(_value("unread"))) >= 1
    assert _flip_in_file(store, _record_header(_value("header"))) >= 1
    victim.start()
    cluster.wait_ready(60)

    for key in ("read", "header"):
        for node in cluster.nodes:
            for r in (1, 3):
                status, _, body = get(node.url, "b", key, query=f"r={r}")
                assert (status, body) == (200, _value(key)), (key, node.name, r, status, body[:80])

    started = time.monotonic()
    cluster.wait(
        lambda: cluster.stats(victim)["storage_corrupt_copies_total"] >= 3,
        3 + 5,
        "the scrub to find the copy nobody read",
        detail=lambda: str(cluster.stats(victim)),
    )
    cluster.wait(lambda: _local(victim, "unread") == [_value("unread").decode()], 5, "the exchange to repair it")
    took = time.monotonic() - started
    stats = cluster.stats(victim)
    assert stats["scrub_passes_total"] >= 1 and stats["aae_exchanges_with_differences_total"] >= 1, stats
    assert took < 3 + 5, took
    for key in ("read", "header"):
        assert _local(victim, key) == [_value(key).decode()], key
    assert "corrupt copy of b/unread" in victim.log_tail(200)


def test_an_lmdb_file_its_engine_cannot_open_is_reported_in_one_line_naming_it(
    make_cluster: MakeCluster,
) -> None:
    """Both LMDB meta pages overwritten: the node refuses to start, with one line on stderr that names
    the data file, and no traceback."""
    cluster = make_cluster(1, "n_val=1", "r=1", "w=1")
    node = cluster[0]
    assert put(node.url, "b", "k", b"v")[0] == 204
    assert node.stop() == 0
    store = node.data_dir / "store" / "data.mdb"
    data = bytearray(store.read_bytes())
    data[0:8192] = b"\xa5" * 8192
    store.write_bytes(bytes(data))
    result = subprocess.run(
        [sys.executable, *node.command()[1:]], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(store) in lines[0] and "Traceback" not in result.stderr, lines
