"""A node cut off by iptables is judged down by the others, writes go to fallbacks with hints, and
after healing it is judged up again and the hints drain."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from http_util import call, obj, put

from dynastore import localnet
from dynastore.localcluster import LocalCluster

NetCluster = Callable[..., tuple[localnet.PrivateNet, LocalCluster]]


def sees_down(cluster: LocalCluster, observer: int, name: str) -> bool:
    members = cluster[observer].status()["members"]
    return any(m["name"] == name and not m["reachable"] for m in members)


def test_a_partitioned_node_is_marked_down_writes_go_to_fallbacks_and_hints_drain_after_healing(
    net_cluster: NetCluster,
) -> None:
    """5 nodes in their own namespaces; one primary of a key is cut off from every other node for
    longer than detection takes: the others mark it down and a write lands on a fallback as a hint;
    after healing it is marked up, the hints drain to 0 and the node holds the write."""
    net, cluster = net_cluster(5)
    status, _, body = call("GET", obj(cluster[0].url, "b", "k") + "/preflist")
    assert status == 200
    owners = [e["node"] for e in json.loads(body)["preflist"] if e["primary"]]
    victim = next(n for n in cluster.nodes if n.name == owners[2])
    others = [n for n in cluster.nodes if n is not victim]
    started = time.monotonic()
    net.isolate(victim.index)
    cluster.wait(lambda: all(sees_down(cluster, n.index, victim.name) for n in others), 30, "the others to see it down")
    detection_s = time.monotonic() - started
    coordinator = next(n for n in cluster.nodes if n.name == owners[0])
    status, _, body = put(coordinator.url, "b", "k", b"while-cut", query="w=3")
    assert status == 204, body
    hinted = sum(cluster.stats(n)["hints_pending"] for n in others)
    assert hinted >= 1
    time.sleep(1.0)  # stay cut well beyond the detection time, as the scenario requires
    net.heal()
    healed = time.monotonic()
    cluster.wait(lambda: not any(sees_down(cluster, n.index, victim.name) for n in others), 30, "it to be seen up")
    recovery_s = time.monotonic() - healed
    cluster.wait(lambda: sum(cluster.stats(n)["hints_pending"] for n in cluster.nodes) == 0, 30, "hints to drain")
    status, _, body = call("GET", f"{victim.url}/admin/local/b/k")
    assert status == 200 and json.loads(body)["siblings"][0]["value"] == "while-cut"
    print(f"detected down in {detection_s:.2f} s, up again {recovery_s:.2f} s after healing, {hinted} hint(s)")
