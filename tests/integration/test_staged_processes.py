"""Real processes, through the CLI: staged joins, leaves, removes and replaces move nothing until
`cluster commit`, which takes the cluster to exactly the ring `cluster plan` showed; `cluster clear`
drops staged changes; commands without --stage still act at once; `cluster repair` brings back the
keys a replica lost, for the partition asked, and `cluster aae-status` shows the exchange."""

from __future__ import annotations

import json
import shutil
import urllib.parse
from collections.abc import Callable
from typing import Any

from http_util import call, get, put
from proc_util import dynastore_ok as cli
from proc_util import run_dynastore as run

from dynastore.core.hashing import key_partition
from dynastore.localcluster import LocalCluster, NodeProc, http_json

MakeCluster = Callable[..., LocalCluster]


def refused(*args: str) -> str:
    result = run(*args)
    assert result.returncode != 0, result.stdout
    return result.stderr


def owners(node: NodeProc) -> tuple[int, list[str]]:
    ring = http_json(node.url + "/ring")
    return ring["version"], ring["owners"]


def converged_to(cluster: LocalCluster, expected: list[str]) -> bool:
    """Every live node has installed `expected` and no transition is in progress."""
    for node in cluster.nodes:
        if node.alive and (node.status()["transition"] is not None or owners(node)[1] != expected):
            return False
    return True


def join_staged(cluster: LocalCluster) -> NodeProc:
    node = cluster.add_node()
    node.start()
    cluster.wait_serving(node)
    out = cli("cluster", "join", cluster[0].peer_address, "--stage", "--node", node.url)
    assert "staged" in out
    return node


def test_staged_join_and_leave_move_nothing_until_commit_then_the_cluster_reaches_the_planned_ring(
    make_cluster: MakeCluster,
) -> None:
    """Stage a 4th node's join and node1's leave: every node's plan shows the same moves and nothing
    moves; commit at another node; the cluster converges to exactly the planned ring, node1 exits, and
    every key stays readable. Then a staged remove is cleared, changing nothing."""
    cluster = make_cluster(3, "handoff_pause_ms=5", "stray_scan_interval_ms=500")
    for i in range(150):
        assert put(cluster[i % 3].url, "staged", f"k{i}", b"v%d" % i, query="w=3")[0] == 204
    before = owners(cluster[0])
    joiner = join_staged(cluster)
    cli("cluster", "leave", "--stage", "--node", cluster[1].url)
    assert "already has a staged leave" in refused("cluster", "leave", "--stage", "--node", cluster[1].url)

    def plan_at(node: NodeProc) -> Any:
        return json.loads(cli("cluster", "plan", "--json", "--node", node.url))

    cluster.wait(lambda: all(len(plan_at(n)["changes"]) == 2 for n in cluster.nodes), 30, "the plan at every node")
    plans = [plan_at(n) for n in cluster.nodes]
    assert all(p["owners_after"] == plans[0]["owners_after"] and p["plan_id"] == plans[0]["plan_id"] for p in plans)
    plan = plans[0]
    nodes = {n["name"]: n for n in plan["nodes"]}
    assert nodes["node1"]["partitions_after"] == 0 and nodes["node1"]["losses"] == nodes["node1"]["partitions_now"]
    assert nodes["node3"]["partitions_now"] == 0 and nodes["node3"]["gains"] == nodes["node3"]["partitions_after"] > 0
    text = cli("cluster", "plan", "--node", cluster[2].url)
    assert "leave      node1" in text and "join       node3" in text and "from node1 to node3" in text
    # Staged only: the ring, every node's view of it, and the joiner's share are as before.
    for node in cluster.nodes:
        assert owners(node) == before
        assert node.status()["transition"] is None
    joiner_row = next(m for m in cluster[0].status()["members"] if m["name"] == "node3")
    assert (joiner_row["status"], joiner_row["partitions"], joiner_row["staged"]) == ("joining", 0, "join")
    status_text = cli("cluster", "status", "--no-watch", "--node", cluster[1].url)
    assert "(staged join)" in status_text and "(staged leave)" in status_text

    out = cli("cluster", "commit", "--node", cluster[2].url)
    assert "committed 2 staged changes" in out
    cluster.wait(lambda: not cluster[1].alive, 120, "node1 to hand off and exit")
    assert cluster[1].proc is not None and cluster[1].proc.returncode == 0
    cluster.wait(lambda: converged_to(cluster, plan["owners_after"]), 60, "the planned ring")
    assert "there are no staged changes" in cli("cluster", "plan", "--node", cluster[0].url)
    for i in range(150):
        assert get(joiner.url, "staged", f"k{i}", query="r=2")[::2] == (200, b"v%d" % i), i

    # A staged remove, cleared: nothing staged, node2 still a valid owner, the ring unchanged.
    settled = owners(cluster[0])
    cli("cluster", "remove", "node2", "--stage", "--node", cluster[0].url)
    assert "remove     node2" in cli("cluster", "plan", "--node", cluster[0].url)
    cli("cluster", "clear", "--node", cluster[3].url)
    cluster.wait(lambda: "no staged" in cli("cluster", "plan", "--node", cluster[2].url), 30, "the clear to spread")
    assert "there are no staged changes" in refused("cluster", "commit", "--node", cluster[0].url)
    assert owners(cluster[0]) == settled
    assert next(m for m in cluster[0].status()["members"] if m["name"] == "node2")["status"] == "valid"


def test_replace_hands_the_old_nodes_partitions_to_the_new_one_and_unstaged_commands_act_at_once(
    make_cluster: MakeCluster,
) -> None:
    """`cluster replace node2 node3` (node3 staged to join), committed: node3 owns exactly the
    partitions node2 owned, node2 exits, keys stay readable. A bad replace is refused and changes
    nothing. Then a join without --stage acts at once, with no commit."""
    cluster = make_cluster(3, "handoff_pause_ms=5", "stray_scan_interval_ms=500")
    for i in range(150):
        assert put(cluster[i % 3].url, "replace", f"k{i}", b"v%d" % i, query="w=3")[0] == 204
    version, before = owners(cluster[0])
    new = join_staged(cluster)
    assert "node7 is not a member" in refused("cluster", "replace", "node7", "node3", "--node", cluster[0].url)
    assert "not a node staged to join" in refused("cluster", "replace", "node2", "node1", "--node", cluster[0].url)
    cli("cluster", "replace", "node2", "node3", "--node", cluster[0].url)
    plan = json.loads(cli("cluster", "plan", "--json", "--node", cluster[0].url))
    expected = ["node3" if o == "node2" else o for o in before]
    assert plan["owners_after"] == expected
    assert plan["moves"] == [{"from": "node2", "to": "node3", "partitions": before.count("node2")}]
    cli("cluster", "commit", "--node", cluster[0].url, "--plan-id", plan["plan_id"])
    cluster.wait(lambda: not cluster[2].alive, 120, "node2 to hand off and exit")
    cluster.wait(lambda: converged_to(cluster, expected), 60, "node3 in node2's place")
    for i in range(150):
        assert get(new.url, "replace", f"k{i}", query="r=2")[::2] == (200, b"v%d" % i), i

    # Without --stage, a join acts at once: the new node gets partitions with no plan and no commit.
    extra = cluster.add_node()
    extra.start()
    cluster.wait_serving(extra)
    assert "joined the cluster" in cli("cluster", "join", cluster[0].peer_address, "--node", extra.url)
    cluster.wait(lambda: "node4" in owners(cluster[0])[1], 30, "node4 to be given partitions")
    assert owners(cluster[0])[0] > version
    assert "there are no staged changes" in cli("cluster", "plan", "--node", cluster[0].url)


def test_repair_of_a_partition_brings_back_the_keys_a_wiped_replica_lost_and_aae_status_shows_it(
    make_cluster: MakeCluster,
) -> None:
    """node2 loses its data directory; with scheduled anti-entropy an hour away and read repair off,
    `cluster repair P` at node2 restores exactly partition P's keys (others stay missing) and
    `cluster aae-status` shows the exchange, its peer and the keys repaired; `repair --all` then
    restores every key. A partition out of range is refused."""
    cluster = make_cluster(3, "anti_entropy_interval_ms=3600000", "read_repair_enabled=false")
    keys = [f"key{i}" for i in range(400)]
    for i, key in enumerate(keys):
        assert put(cluster[i % 3].url, "aae", key, key.encode(), query="w=3")[0] == 204
    wiped = cluster[2]
    wiped.stop()
    shutil.rmtree(wiped.data_dir)
    wiped.start()
    cluster.wait_ready(60)

    def local(key: str) -> bool:
        status, _, _ = call("GET", f"{wiped.url}/admin/local/aae/{urllib.parse.quote(key)}")
        return status == 200

    by_partition: dict[int, list[str]] = {}
    for key in keys:
        by_partition.setdefault(key_partition(b"aae", key.encode(), 64), []).append(key)
    partition, chosen = max(by_partition.items(), key=lambda item: len(item[1]))
    assert not any(local(key) for key in keys)

    assert "partition must be from 0 to 63" in refused("cluster", "repair", "99", "--node", wiped.url)
    result = json.loads(cli("cluster", "repair", str(partition), "--wait", "60", "--json", "--node", wiped.url))
    assert result["partitions"] == [partition] and result["keys_repaired"] == len(chosen)
    assert all(local(key) for key in chosen)
    others = [key for key in keys if key not in chosen]
    assert not any(local(key) for key in others), "only the partition asked for is repaired"
    status = json.loads(cli("cluster", "aae-status", "--json", "--node", wiped.url))
    row = status["partitions"][str(partition)]
    assert row["last_exchange"]["peer"] in ("node0", "node1")
    assert row["keys_repaired"] >= len(chosen) and row["last_exchange"]["at_ms"] >= result["requested_at_ms"]
    assert status["trees"][f"{partition}/3"]["built_at_ms"] is not None
    text = cli("cluster", "aae-status", "--node", wiped.url)
    assert any(line.split()[0] == str(partition) and "node" in line for line in text.splitlines()[2:])

    out = cli("cluster", "repair", "--all", "--wait", "120", "--node", wiped.url)
    assert "queued for 64 partitions" in out
    assert all(local(key) for key in keys)
