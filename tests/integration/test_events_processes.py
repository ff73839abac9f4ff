"""What a node tells its operator, on real processes: a peer judged down is logged with its phi, a
ring change and the transfers of a join are logged; a seed that refuses a new node (another
cluster, another secret) stops it with the reason; a seed that does not answer yet is retried with
a warning until `seed_join_timeout_ms`, and a node meant to join never carries on alone."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from dynastore.localcluster import LocalCluster, NodeProc, free_port

MakeCluster = Callable[..., LocalCluster]


def wait_exit(node: NodeProc, timeout_s: float) -> int | None:
    assert node.proc is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        code = node.proc.poll()
        if code is not None:
            return code
        time.sleep(0.1)
    return None


def wait_log(node: NodeProc, text: str, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        log = node.log_path.read_text(errors="replace") if node.log_path.exists() else ""
        if text in log:
            return log
        time.sleep(0.2)
    raise AssertionError(f"{text!r} not in the log of {node.name}:\n{node.log_tail(40)}")


def test_a_killed_peer_is_logged_down_with_its_phi_and_a_join_logs_the_ring_change(make_cluster: MakeCluster) -> None:
    cluster = make_cluster(2)
    joiner = cluster.add_node(seeds=(cluster[0].peer_address,))
    joiner.start()
    cluster.wait_ready(60, nodes=[joiner])
    log = wait_log(cluster[0], "ring version", 60)
    assert "member node2" in log and "added as joining" in log
    wait_log(joiner, "transfer of partition", 60)
    cluster[1].kill()
    log = wait_log(cluster[0], "node1 is judged down", 30)
    line = next(line for line in log.splitlines() if "node1 is judged down" in line)
    assert "WARNING" in line and ("phi" in line or "connection failed" in line), line


def test_a_seed_of_another_cluster_refuses_a_new_node_which_stops_with_the_reason(
    make_cluster: MakeCluster, tmp_path: Path
) -> None:
    cluster = make_cluster(1)
    stranger = cluster.add_node(seeds=(cluster[0].peer_address,))
    stranger.overrides = (*stranger.overrides, "cluster_name=another")
    stranger.start()
    code = wait_exit(stranger, 30)
    assert code is not None and code != 0, stranger.log_tail()
    log = stranger.log_path.read_text()
    assert "refused node1" in log and "belongs to cluster" in log, log
    assert "ERROR" in log, log


def test_a_seed_that_holds_another_secret_refuses_a_new_node_which_stops(
    make_cluster: MakeCluster, tmp_path: Path
) -> None:
    cluster = make_cluster(1)
    other = tmp_path / "other.secret"
    other.write_text("a different secret, long enough\n")
    other.chmod(0o600)
    stranger = cluster.add_node(seeds=(cluster[0].peer_address,))
    kept = [o for o in stranger.overrides if not o.startswith("cluster_secret_file=")]
    stranger.overrides = (*kept, f"cluster_secret_file={other}")
    stranger.start()
    code = wait_exit(stranger, 30)
    assert code is not None and code != 0, stranger.log_tail()
    log = stranger.log_path.read_text()
    assert "refused node1" in log, log
    assert "key" in log or "secret" in log, log


def test_a_seed_that_is_not_up_yet_is_retried_with_a_warning_then_joined(make_cluster: MakeCluster) -> None:
    cluster = make_cluster(1, start=False)
    early = cluster.add_node(seeds=(cluster[0].peer_address,))
    early.start()
    wait_log(early, "no seed answered yet", 30)
    assert early.alive
    cluster[0].start()
    cluster.wait_ready(60)
    cluster.wait_ready(60, nodes=[early])
    members = {m["name"] for m in cluster[0].status()["members"]}
    assert members == {"node0", "node1"}


def test_a_node_whose_seeds_never_answer_stops_after_seed_join_timeout(make_cluster: MakeCluster) -> None:
    cluster = make_cluster(1, start=False)
    lonely = cluster.add_node(seeds=(f"127.0.0.1:{free_port()}",))
    lonely.overrides = (*lonely.overrides, "seed_join_timeout_ms=3000")
    started = time.monotonic()
    lonely.start()
    code = wait_exit(lonely, 30)
    assert code is not None and code != 0, lonely.log_tail()
    assert time.monotonic() - started >= 3
    log = lonely.log_path.read_text()
    assert "no seed answered in seed_join_timeout_ms=3000" in log, log


def test_in_the_json_log_format_an_event_carries_its_name_and_fields(make_cluster: MakeCluster) -> None:
    cluster = make_cluster(2, start=False)
    for node in cluster.nodes:
        node.env["DYNASTORE_NODE_LOG_FORMAT"] = "json"
    cluster.start()
    cluster.wait_ready(60)
    cluster[1].kill()
    wait_log(cluster[0], '"peer_down"', 30)
    records = [json.loads(line) for line in cluster[0].log_path.read_text().splitlines() if line.startswith("{")]
    down = [r for r in records if r.get("event") == "peer_down"]
    assert down and down[0]["peer"] == "node1" and isinstance(down[0]["phi"], float), down
    assert down[0]["level"] == "WARNING" or down[0]["level"].lower() == "warning"
    assert down[0]["logger"] == "dynastore.events" and "node1 is judged down" in down[0]["msg"]
    added = [r for r in records if r.get("event") == "member_added"]
    assert {r["member"] for r in added} >= {"node1"}
