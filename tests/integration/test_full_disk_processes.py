"""A full disk under a real node: its data directory on a 48 MiB tmpfs, filled by a file beside it.
The node stays up, serves reads and /ping, shows its space in /stats, counts as a down primary for
writes (fallbacks take hints for it), takes deletes into its reserve, answers 507 only when a write
needs its disk, survives a restart on the full disk, and takes writes again once room is freed."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from http_util import call, get, obj, put

from dynastore.localcluster import LocalCluster, NodeProc

MakeCluster = Callable[..., LocalCluster]
MiB = 1024 * 1024


@contextmanager
def tmpfs(path: Path, size_mib: int) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=False)


def fill_leaving(path: Path, free_bytes: int) -> Path:
    """A file on `path`'s filesystem that leaves about `free_bytes` free."""
    filler = path / "filler"
    fs = os.statvfs(path)
    size = fs.f_bavail * fs.f_frsize - free_bytes
    with open(filler, "wb") as out:
        chunk = b"\0" * MiB
        while size > 0:
            out.write(chunk[: min(size, MiB)])
            size -= MiB
    return filler


def primaries(base: str, bucket: str, key: str) -> list[str]:
    status, _, body = call("GET", obj(base, bucket, key) + "/preflist")
    assert status == 200, body
    return [e["node"] for e in json.loads(body)["preflist"] if e["primary"]]


def keys_on(base: str, bucket: str, node: str, count: int) -> list[str]:
    found = []
    i = 0
    while len(found) < count:
        if node in primaries(base, bucket, f"k{i}"):
            found.append(f"k{i}")
        i += 1
    return found


def local(node: NodeProc, bucket: str, key: str) -> list[str] | None:
    status, _, body = call("GET", f"{node.url}/admin/local/{bucket}/{key}")
    if status == 404:
        return None
    assert status == 200, body
    return [s["value"] for s in json.loads(body)["siblings"] if not s["deleted"]]


def test_a_node_on_a_full_disk_stays_up_serves_reads_and_its_writes_go_to_fallbacks_until_room_is_freed(
    make_cluster: MakeCluster, tmp_path: Path
) -> None:
    cluster = make_cluster(
        4, "storage_reserve_bytes=8388608", "storage_check_interval_ms=200", "anti_entropy_enabled=false", start=False
    )
    full = cluster[3]
    with tmpfs(full.data_dir, 48) as disk:
        try:
            cluster.start()
            cluster.wait_ready(60)
            base = cluster[0].url
            status, _, body = call(
                "PUT", f"{base}/buckets/one/props", b'{"props": {"n_val": 1}}', {"Content-Type": "application/json"}
            )
            assert status == 204, body
            before = keys_on(base, "b", full.name, 3)
            for key in before:
                assert put(base, "b", key, b"old " + key.encode(), query="w=3")[0] == 204
            lone = keys_on(base, "one", full.name, 3)
            for key in lone[:2]:
                assert put(base, "one", key, b"lone", query="w=1")[0] == 204
            filler = fill_leaving(disk, 4 * MiB)
            cluster.wait(lambda: cluster.stats(full)["storage_full"] is True, 10, "node3 to see its disk full")
            stats = cluster.stats(full)
            assert 0 < stats["storage_free_bytes"] < 8 * MiB and stats["storage_used_bytes"] > 0, stats

            writes = keys_on(base, "b", full.name, 40)[3:]
            for i, key in enumerate(writes):
                status, _, body = put(cluster[i % 4].url, "b", key, b"new " + key.encode(), query="w=3")
                assert status == 204, (key, status, body)
            assert sum(cluster.stats(n)["hints_pending"] for n in cluster.nodes[:3]) == len(writes)
            assert all(local(full, "b", key) is None for key in writes[:5])
            # Reads and /ping on the full node; a write that needs its disk (pw=1, the only primary) is
            # a 507; a delete goes into its reserve.
            assert call("GET", f"{full.url}/ping")[0] == 200
            for key in before:
                assert get(full.url, "b", key, query="r=1")[:3:2] == (200, b"old " + key.encode())
            status, _, body = put(base, "one", lone[2], b"x", query="pw=1")
            assert status == 507, (status, body)
            status, _, body = call("DELETE", obj(full.url, "one", lone[0]))
            assert status == 204, (status, body)
            assert get(base, "one", lone[0])[0] == 404

            assert full.stop() == 0
            full.start()
            cluster.wait_serving(full, 30)
            assert cluster.stats(full)["storage_full"] is True
            assert get(full.url, "b", before[0], query="r=1")[:3:2] == (200, b"old " + before[0].encode())
            assert get(full.url, "one", lone[1], query="r=1")[:3:2] == (200, b"lone")

            filler.unlink()
            cluster.wait(lambda: cluster.stats(full)["storage_full"] is False, 10, "node3 to see room again")
            cluster.wait_ready(30)
            cluster.wait(
                lambda: sum(cluster.stats(n)["hints_pending"] for n in cluster.nodes) == 0, 30, "hints to drain"
            )
            assert all(local(full, "b", key) == ["new " + key] for key in writes)
            assert put(base, "one", lone[2], b"x", query="pw=1")[0] == 204
            assert full.alive
        finally:
            cluster.close()
