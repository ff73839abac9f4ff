"""Secondary indexes under the fault suite's nemesis: while clients write indexed objects and query
them through partitions, kill -9, SIGSTOP and a skewed clock, no answer holds a key twice or a key never written; after
healing and convergence, every acknowledged object is found by its own term exactly once, and the
shared term, page by page from every node, gives every acknowledged object exactly once."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from jepsen import run

from dynastore import localnet
from dynastore.localcluster import LocalCluster

NetCluster = Callable[..., tuple[localnet.PrivateNet, LocalCluster]]


@pytest.mark.timeout(180)
def test_under_partitions_kills_and_pauses_every_acknowledged_indexed_object_is_found_exactly_once(
    net_cluster: NetCluster,
) -> None:
    """The main run's six faults (isolation, halves, a bridge, kill -9, SIGSTOP, a skewed clock), each
    held shorter, with most operations index writes, deletes and queries; the sets, registers and data
    types keep their own guarantees too."""
    net, cluster = net_cluster(
        5, "anti_entropy_interval_ms=3000", "request_timeout_ms=2000", "index_replica_timeout_ms=1000"
    )
    report = run(net, cluster, seed=21, fault_s=2.5, faults=6, index_share=0.6)
    print(report.text())
    assert report.indexes is not None
    assert report.indexes.acknowledged > 50, report.text()
    assert report.indexes.queries_ok > 20, report.text()
    assert report.ok, report.text()
