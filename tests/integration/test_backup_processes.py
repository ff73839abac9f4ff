"""Real processes: a node backed up under writes, wiped and restored rejoins with nothing lost, gets what
came after the backup by anti-entropy, keeps deleted keys deleted and never reuses a dot (kv679)."""

from __future__ import annotations

import http.client
import json
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from http_util import call, get, obj, put
from proc_util import run_dynastore as cli

from dynastore.localcluster import LocalCluster, NodeProc

MakeCluster = Callable[..., LocalCluster]
BUCKET = "bk"


def local(node: NodeProc, key: str) -> dict[str, Any] | None:
    """`node`'s own copy of a key (no quorum), or None when it holds none."""
    status, _, body = call("GET", f"{node.url}/admin/local/{quote(BUCKET)}/{quote(key)}", timeout_s=10)
    if status == 404:
        return None
    assert status == 200, body
    data: dict[str, Any] = json.loads(body)
    return data


def live_values(copy: dict[str, Any] | None) -> set[str]:
    return set() if copy is None else {s["value"] for s in copy["siblings"] if not s["deleted"]}


def epoch_of(actor: str) -> str:
    return actor.split("#", 1)[1].split(".", 1)[0]


class Writer:
    """Writes unique keys through node0 and node1 (w=2) until stopped; records what was acknowledged."""

    def __init__(self, cluster: LocalCluster, prefix: str) -> None:
        self.cluster, self.prefix = cluster, prefix
        self.acked: dict[str, str] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        i = 0
        while not self.stop.is_set() and i < 5000:
            key, value = f"{self.prefix}{i}", f"value-{self.prefix}{i}"
            try:
                status = put(self.cluster[i % 2].url, BUCKET, key, value.encode())[0]
            except OSError:
                status = 0
            if status == 204:
                self.acked[key] = value
            i += 1

    def __enter__(self) -> Writer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(60)


def test_a_node_restored_from_a_backup_rejoins_without_losing_or_resurrecting_anything(
    make_cluster: MakeCluster, tmp_path: Path
) -> None:
    """Back up node2 while a client writes; then delete keys the backup holds, crash node2 (so it takes
    a new actor generation) and write more, some through node2; wipe node2, restore it from the backup
    and start it. Every acknowledged write is on node2's own copies again (anti-entropy, no reads),
    deleted keys stay deleted, and node2's first write after the restore carries a new epoch and is kept
    beside (not swallowed by) the write node2 coordinated after the backup."""
    cluster = make_cluster(3, "anti_entropy_interval_ms=1000", "read_repair_enabled=false", "tombstone_grace_ms=600000")
    node2 = cluster[2]
    acked: dict[str, str] = {}
    for i in range(150):
        status, _, body = put(cluster[i % 3].url, BUCKET, f"old{i}", b"value-old%d" % i, query="w=3")
        assert status == 204, body
        acked[f"old{i}"] = f"value-old{i}"
    epoch_before = epoch_of(cluster.stats(node2)["actor"])

    out = tmp_path / "backup"
    with Writer(cluster, "during") as during:
        cluster.wait(lambda: len(during.acked) >= 20, 60, "writes before the backup")
        result = cli("backup", "--node", node2.url, "--out", str(out))
        assert result.returncode == 0, result.stderr
        seen = len(during.acked)
        cluster.wait(lambda: len(during.acked) >= seen + 20, 60, "writes after the backup")
    acked.update(during.acked)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["node"] == "node2" and manifest["engine"] == "lmdb" and manifest["epoch"] == epoch_before
    assert sorted(m["name"] for m in manifest["metadata"]["members"]) == ["node0", "node1", "node2"]

    # After the backup: deletes of keys it holds (node2 takes their tombstones), a crash of node2 (its next
    # writes are under a new actor generation), writes of new keys, one of them coordinated by node2.
    deleted = [f"old{i}" for i in range(0, 150, 5)]
    for key in deleted:
        status, _, body = call("DELETE", obj(cluster[0].url, BUCKET, key, "w=3"))
        assert status == 204, body
        acked.pop(key)
    node2.kill()
    node2.start()
    cluster.wait_ready(60)
    for i in range(100):
        status, _, body = put(cluster[i % 3].url, BUCKET, f"after{i}", b"value-after%d" % i, query="w=3")
        assert status == 204, body
        acked[f"after{i}"] = f"value-after{i}"
    status, _, body = put(node2.url, BUCKET, "contested", b"before-restore", query="w=3")
    assert status == 204, body
    actor_after_backup = cluster.stats(node2)["actor"]
    assert epoch_of(actor_after_backup) == epoch_before and actor_after_backup != manifest["actor"]

    node2.stop()
    shutil.rmtree(node2.data_dir)
    result = cli("restore", str(out), "--data-dir", str(node2.data_dir))
    assert result.returncode == 0, result.stderr
    node2.start()
    cluster.wait_ready(60)
    # At once, before anti-entropy brings it the key: a blind write through node2, which coordinates it.
    status, _, body = put(node2.url, BUCKET, "contested", b"after-restore", query="w=3")
    assert status == 204, body
    epoch_restored = epoch_of(cluster.stats(node2)["actor"])
    assert epoch_restored != epoch_before

    def missing() -> list[str]:
        return [key for key, value in acked.items() if live_values(local(node2, key)) != {value}]

    cluster.wait(lambda: not missing(), 180, "anti-entropy to give node2 every write", detail=lambda: str(missing()))
    for key in deleted:
        assert live_values(local(node2, key)) == set(), f"{key} came back on node2"
    lost = [k for k, v in acked.items() if get(cluster[0].url, BUCKET, k, query="r=3")[2] != v.encode()]
    assert lost == []
    for key in deleted:
        assert get(cluster[0].url, BUCKET, key, query="r=3")[0] == 404, f"{key} came back"
    # Neither write of the contested key swallowed the other: they are concurrent, so both are siblings.
    # (Restored under its old epoch, node2 handed out the very dot of its write before the restore, and
    # every replica dropped the acknowledged new write as one it had seen: Riak's kv679.)
    cluster.wait(
        lambda: live_values(local(node2, "contested")) == {"before-restore", "after-restore"},
        60,
        "both writes of the contested key on node2",
        detail=lambda: str(local(node2, "contested")),
    )
    copy = local(node2, "contested")
    assert copy is not None
    restored_dots = [s["dot"][0] for s in copy["siblings"] if s["value"] == "after-restore"]
    assert [epoch_of(actor) for actor in restored_dots] == [epoch_restored]
    status, _, _ = get(cluster[1].url, BUCKET, "contested", query="r=3")
    assert status == 300


def test_a_sqlite_node_restored_from_its_backup_holds_the_same_copies(
    make_cluster: MakeCluster, tmp_path: Path
) -> None:
    """SQLite's backup API round trip on one node: every stored copy (values, tombstones, clocks) is as
    it was, and the node takes a new epoch. A backup while one is streaming is refused (409)."""
    cluster = make_cluster(1, "storage_engine=sqlite", "n_val=1", "r=1", "w=1", "tombstone_grace_ms=600000")
    node = cluster[0]
    keys = [f"key{i}" for i in range(200)]
    for i, key in enumerate(keys):
        assert put(node.url, BUCKET, key, b"v%d" % i)[0] == 204
    for key in keys[::10]:
        assert call("DELETE", obj(node.url, BUCKET, key))[0] == 204
    # Large values, so that a backup whose client reads nothing stays stalled in its stream.
    for i in range(12):
        assert put(node.url, BUCKET, f"large{i}", bytes([65 + i]) * 1_000_000)[0] == 204
    keys += [f"large{i}" for i in range(12)]
    before = {key: local(node, key) for key in keys}
    actor_before = cluster.stats(node)["actor"]
    parts = urlsplit(node.url)
    stalled = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    try:
        stalled.request("GET", "/admin/backup")
        assert stalled.getresponse().status == 200
        second = cli("backup", "--node", node.url, "--out", str(tmp_path / "second"))
        assert second.returncode == 1 and "409" in second.stderr and "already running" in second.stderr
        assert not (tmp_path / "second").exists()
    finally:
        stalled.close()
    out = tmp_path / "backup"

    def backed_up() -> bool:
        result = cli("backup", "--node", node.url, "--out", str(out))
        # Until the node has seen the stalled client go, it still refuses a second backup.
        assert result.returncode == 0 or "already running" in result.stderr, result.stderr
        return result.returncode == 0

    cluster.wait(backed_up, 60, "the backup once the stalled one has gone", poll_s=0.5)
    assert json.loads((out / "manifest.json").read_text())["engine"] == "sqlite"
    # A second backup into the same directory is refused, and changes nothing there.
    files = sorted((p.name, p.stat().st_size) for p in out.iterdir())
    again = cli("backup", "--node", node.url, "--out", str(out))
    assert again.returncode == 1 and "not empty" in again.stderr
    assert sorted((p.name, p.stat().st_size) for p in out.iterdir()) == files

    node.stop()
    shutil.rmtree(node.data_dir)
    result = cli("restore", str(out), "--data-dir", str(node.data_dir))
    assert result.returncode == 0, result.stderr
    node.start()
    cluster.wait_ready(60)
    assert {key: local(node, key) for key in keys} == before
    assert epoch_of(cluster.stats(node)["actor"]) != epoch_of(actor_before)


def test_a_backup_needs_an_operator_and_a_memory_node_refuses_it(make_cluster: MakeCluster, tmp_path: Path) -> None:
    """With security on, a backup without credentials gets 401; the operator (proving the cluster secret)
    reaches the route, which a node on the memory engine refuses with its reason. Nothing is written."""
    cluster = make_cluster(1, "storage_engine=memory", "n_val=1", "r=1", "w=1")
    url, secret = cluster[0].url, str(cluster.root / "cluster.secret")
    assert cli("security", "enable", "--node", url, "--secret-file", secret).returncode == 0
    anonymous = cli("backup", "--node", url, "--out", str(tmp_path / "backup"))
    assert anonymous.returncode == 1 and "401" in anonymous.stderr
    result = cli("backup", "--node", url, "--out", str(tmp_path / "backup"), "--secret-file", secret)
    assert result.returncode == 1 and "409" in result.stderr and "nothing durable" in result.stderr
    assert not (tmp_path / "backup").exists()
