"""Real processes: a cluster grows and shrinks online under load, transfers resume after a crash, and
membership survives restarts."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from cluster_settings import FAST
from http_util import get, put
from proc_util import dynastore_ok as cli

from dynastore.core.hashing import key_partition
from dynastore.localcluster import LocalCluster, NodeProc, http_json

MakeCluster = Callable[..., LocalCluster]


def settled(cluster: LocalCluster, names: set[str]) -> bool:
    """Every live node agrees there is no transition and the owners are exactly `names`."""
    for node in cluster.nodes:
        if not node.alive:
            continue
        status = node.status()
        if status["transition"] is not None:
            return False
        owners = {m["name"] for m in status["members"] if m["partitions"] > 0}
        if owners != names:
            return False
    return True


class Load:
    """A writer of unique keys (w=2) and a reader of acknowledged keys (r=2), counting failures."""

    def __init__(self, nodes: Callable[[], list[NodeProc]]) -> None:
        self.nodes = nodes
        self.acked: list[str] = []
        self.write_errors: list[str] = []
        self.read_errors: list[str] = []
        self.reads = 0
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._write), threading.Thread(target=self._read)]

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)

    def _pick(self, rng: random.Random) -> NodeProc:
        return rng.choice([n for n in self.nodes() if n.alive])

    def _write(self) -> None:
        rng = random.Random(1)
        i = 0
        while not self.stop.is_set():
            key = f"load{i}"
            try:
                status, _, body = put(self._pick(rng).url, "load", key, key.encode(), query="w=2")
            except OSError as exc:
                self.write_errors.append(f"{key}: {exc}")
            else:
                if status == 204:
                    self.acked.append(key)
                else:
                    self.write_errors.append(f"{key}: {status} {body!r}")
            i += 1
            time.sleep(0.01)

    def _read(self) -> None:
        rng = random.Random(2)
        while not self.stop.is_set():
            if not self.acked:
                time.sleep(0.01)
                continue
            key = rng.choice(self.acked)
            node = self._pick(rng)
            try:
                status, _, body = get(node.url, "load", key, query="r=2")
            except OSError as exc:
                self.read_errors.append(f"{key} at {node.name}: {exc}")
                continue
            self.reads += 1
            if status != 200 or body != key.encode():
                self.read_errors.append(f"{key} at {node.name}: {status} {body[:80]!r}")
            time.sleep(0.005)


def test_a_cluster_grows_from_one_to_five_and_shrinks_to_three_under_load_without_losing_writes(
    tmp_path: Path,
) -> None:
    """Start one node, join two with `dynastore cluster join`, grow to 5, shrink back to 3 with
    `dynastore cluster leave`, while a writer writes (w=2) and a reader reads (r=2): every acknowledged
    write is readable at the end and no read fails throughout."""
    overrides = (*FAST, "handoff_pause_ms=5", "stray_scan_interval_ms=500")
    cluster = LocalCluster(tmp_path, 1, overrides=overrides)
    try:
        for _ in range(4):
            cluster.add_node()
        cluster[0].start()
        cluster.wait_ready(30, nodes=[cluster[0]])
        seed = cluster[0].peer_address
        for i in (1, 2):
            cluster[i].start()
            cluster.wait_serving(cluster[i])
            cli("cluster", "join", seed, "--node", cluster[i].url)
        cluster.wait(lambda: settled(cluster, {"node0", "node1", "node2"}), 60, "three owners")
        members = [cluster[0], cluster[1], cluster[2]]
        with Load(lambda: members) as load:
            cluster.wait(lambda: len(load.acked) > 50, 30, "the writer to start")
            for i in (3, 4):
                cluster[i].start()
                cluster.wait_serving(cluster[i])
                cli("cluster", "join", seed, "--node", cluster[i].url)
                members.append(cluster[i])
            cluster.wait(lambda: settled(cluster, {f"node{i}" for i in range(5)}), 120, "five owners")
            # Like an operator, stop sending clients to the nodes about to leave, then ask them to.
            del members[3:]
            for i in (4, 3):
                cli("cluster", "leave", "--node", cluster[i].url)
            cluster.wait(lambda: not cluster[3].alive and not cluster[4].alive, 120, "the leavers to stop")
            cluster.wait(lambda: settled(cluster, {"node0", "node1", "node2"}), 60, "three owners again")
            time.sleep(1.0)
        assert cluster[3].proc is not None and cluster[3].proc.returncode == 0
        print(
            f"acknowledged writes {len(load.acked)}, reads {load.reads}, read errors {len(load.read_errors)}, "
            f"write errors {len(load.write_errors)}"
        )
        assert not load.read_errors, "\n".join(load.read_errors + load.write_errors)
        assert len(load.acked) > 200
        missing = []
        for key in load.acked:
            status, _, body = get(cluster[random.randrange(3)].url, "load", key, query="r=2")
            if (status, body) != (200, key.encode()):
                missing.append(key)
        assert missing == []
        status_text = cli("cluster", "status", "--node", cluster[0].url, "--no-watch")
        assert "no transfers in progress" in status_text and "node4" in status_text
    finally:
        cluster.close()


def test_a_transfer_cut_by_kill_9_of_the_receiver_resumes_from_its_checkpoint(make_cluster: MakeCluster) -> None:
    """SIGKILL the node receiving partitions mid-transfer and restart it: it resumes from the
    checkpoint (fewer keys pulled after the restart than in all) and the transfer completes."""
    # Batches of 5 keys: a partition (about 23 of the 1500 keys) takes several batches, so a kill lands
    # mid-partition and the restart must resume from a checkpoint inside it.
    # A pause of 60 ms between batches keeps each partition part-way through for 60 ms or more (the
    # whole transfer takes about 6 s): three times the window the polling below has to catch.
    cluster = make_cluster(2, "handoff_batch_max=5", "handoff_pause_ms=60", "handoff_concurrency_max=1")
    for i in range(1500):
        assert put(cluster[i % 2].url, "bulk", f"key{i}", b"x" * 200, query="w=2")[0] == 204
    joiner = cluster.add_node(seeds=(cluster[0].peer_address,))
    joiner.start()
    cluster.wait(lambda: cluster.stats(joiner)["handoff_keys_total"] >= 20, 60, "the transfer to start")
    # Kill only while a partition is part-way through its first source, with at least 11 of its keys
    # still owed (two more batches, 120 ms or more away) and an earlier batch's checkpoint committed. A
    # kill in the instant between two partitions would leave nothing part-way to resume.
    sizes = Counter(key_partition(b"bulk", f"key{i}".encode(), 64) for i in range(1500))

    def mid_partition() -> bool:
        status = http_json(joiner.url + "/admin/status", timeout_s=2.0)
        return any(t["active"] and 10 <= t["keys_received"] <= sizes[t["partition"]] - 11 for t in status["receiving"])

    cluster.wait(mid_partition, 60, "a partition part-way through", poll_s=0.005)
    before = cluster.stats(joiner)["handoff_keys_total"]
    joiner.kill()
    joiner.start()
    cluster.wait(
        lambda: cluster.stats(joiner)["handoff_resumed_total"] >= 1,
        60,
        "a resumed pull",
        detail=lambda: f"joiner: {cluster.stats(joiner)}\n{http_json(joiner.url + '/admin/status')}",
    )
    cluster.wait(lambda: settled(cluster, {"node0", "node1", "node2"}), 120, "the transition to finish")
    after = cluster.stats(joiner)["handoff_keys_total"]
    print(f"keys received before the kill: {before}; after the restart: {after}; total owed: 1500")
    assert after < 1500 and before + after >= 1500
    for i in range(0, 1500, 7):
        status, _, body = get(joiner.url, "bulk", f"key{i}", query="r=2")
        assert (status, body) == (200, b"x" * 200), i


def test_restarting_every_node_of_five_one_by_one_keeps_membership_and_ring(make_cluster: MakeCluster) -> None:
    """Each of 5 nodes restarted in turn comes back from its disk; membership and ring are identical."""
    cluster = make_cluster(5)

    def view() -> tuple[object, object]:
        status = http_json(cluster[0].url + "/admin/status")
        ring = http_json(cluster[0].url + "/ring")
        members = sorted((m["name"], m["status"], m["partitions"]) for m in status["members"])
        return members, (ring["version"], ring["owners"])

    before = view()
    for node in cluster.nodes:
        node.stop()
        node.start()
        cluster.wait_ready(60)
    assert view() == before
    for node in cluster.nodes:
        ring = http_json(node.url + "/ring")
        assert (ring["version"], ring["owners"]) == before[1]
