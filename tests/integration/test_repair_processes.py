"""Real processes: anti-entropy rebuilds a node that lost its disk, with no client reads at all."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable

from http_util import get, put

from dynastore.localcluster import LocalCluster

MakeCluster = Callable[..., LocalCluster]


def test_a_node_that_lost_its_data_directory_gets_every_key_back_without_reads(make_cluster: MakeCluster) -> None:
    """Write 5,000 keys to 3 nodes (n_val 3); stop one, delete its data directory, restart it; with no
    client reads, anti-entropy brings every key back (checked by stopping the other two and reading
    with r=1 from it alone)."""
    cluster = make_cluster(3, "anti_entropy_interval_ms=2000", "read_repair_enabled=false")
    for i in range(5000):
        status, _, body = put(cluster[i % 3].url, "aae", f"key{i}", b"value%d" % i, query="w=3")
        assert status == 204, body
    wiped = cluster[2]
    wiped.stop()
    shutil.rmtree(wiped.data_dir)
    started = time.monotonic()
    wiped.start()
    cluster.wait_ready(60)

    cluster.wait(lambda: cluster.stats(wiped)["keys_stored"] >= 5000, 240, "anti-entropy to restore 5,000 keys")
    elapsed = time.monotonic() - started
    gets_before = cluster.stats(wiped)["node_gets_total"]
    assert gets_before == 0, "the repair must not depend on client reads"
    for node in cluster.nodes[:2]:
        node.stop()
    missing = [i for i in range(5000) if get(wiped.url, "aae", f"key{i}", query="r=1")[:3:2] != (200, b"value%d" % i)]
    print(f"repaired 5,000 keys in {elapsed:.1f} s; missing after repair: {len(missing)}")
    assert missing == []
