"""Staged membership in a simulated cluster: staged changes are seen at every node and move nothing,
one commit makes one ring transition to exactly the planned ring, replace hands the old node's
partitions to the new one and the old node exits, and a cleared join stops the joiner."""

from __future__ import annotations

import msgpack

from dynastore.core import clusterplan
from dynastore.core.messages import ClientGet, ClientPut, Failure, Ok
from dynastore.core.node import ClientJoin, ClientLeave, ClientReplace, ClientStaged
from dynastore.core.nodebase import META_CLUSTER
from dynastore.core.objects import Content
from dynastore.settings import Settings
from dynastore.sim.cluster import SimCluster
from dynastore.storage.base import Op

SETTINGS = Settings(ring_size=16, handoff_batch_max=20, handoff_pause_ms=5, stray_scan_interval_ms=500)


def write_keys(c: SimCluster, count: int) -> dict[bytes, bytes]:
    written = {}
    for i in range(count):
        key = f"k{i}".encode()
        assert isinstance(c.request("n0", ClientPut(b"b", key, None, Content(b"v-" + key))), Ok)
        written[key] = b"v-" + key
    return written


def read_all(c: SimCluster, written: dict[bytes, bytes], node: str) -> None:
    for key, value in written.items():
        response = c.request(node, ClientGet(b"b", key))
        assert isinstance(response, Ok) and response.found is not None, (key, response)
        assert [content.value for _, content in response.found.values] == [value], key


def settled(c: SimCluster) -> bool:
    states = {n.core.cluster for n in c.nodes.values() if n.core is not None and not n.core.exit_requested}
    return len(states) == 1 and next(iter(states)).ring.next_owners is None


def test_a_staged_join_and_leave_wait_for_commit_and_end_in_the_planned_ring() -> None:
    c = SimCluster(3, SETTINGS)
    written = write_keys(c, 60)
    version = c.core("n0").cluster.ring.version
    c.add_node("n3")
    assert isinstance(c.request("n3", ClientJoin("n0", 1, stage=True)), Ok)
    assert isinstance(c.request("n1", ClientLeave(stage=True)), Ok)
    c.settle(3_000)
    # Every node sees both staged changes; nothing moved and no ring was made.
    for name in ("n0", "n1", "n2", "n3"):
        state = c.core(name).cluster
        assert {(r.node, r.action) for r in clusterplan.pending(state)} == {("n1", "leave"), ("n3", "join")}
        assert state.ring.version == version and state.ring.next_owners is None
    plan = c.core("n2").cluster_plan()
    assert plan == c.core("n3").cluster_plan()
    # Only the claimant (n0) commits: a commit and a clear asked of two nodes at once cannot mix.
    elsewhere = c.request("n2", ClientStaged("commit"))
    assert isinstance(elsewhere, Failure) and "ask n0" in elsewhere.reason, elsewhere
    assert clusterplan.pending(c.core("n0").cluster)
    assert isinstance(c.request("n0", ClientStaged("commit")), Ok)
    transitions = set()

    def done() -> bool:
        ring = c.core("n0").cluster.ring
        if ring.next_owners is not None:
            transitions.add(ring.next_owners)
        return settled(c) and "n1" not in ring.owners

    assert c.run_until(done, 120_000)
    assert c.core("n0").cluster.ring.owners == plan.owners_after
    assert transitions == {plan.owners_after}, "one transition, to the planned ring"
    assert c.run_until(lambda: c.core("n1").exit_requested, 60_000)
    read_all(c, written, node="n3")


def test_replace_hands_exactly_the_old_nodes_partitions_to_the_new_one() -> None:
    c = SimCluster(4, SETTINGS)
    written = write_keys(c, 60)
    before = c.core("n0").cluster.ring.owners
    c.add_node("n9")
    assert isinstance(c.request("n9", ClientJoin("n0", 1, stage=True)), Ok)
    refused = c.request("n0", ClientReplace("n7", "n9"))
    assert isinstance(refused, Failure) and "not a member" in refused.reason
    assert isinstance(c.request("n0", ClientReplace("n2", "n9")), Ok)
    # Staged changes spread like any cluster state: n1 commits what it has heard of.
    assert c.run_until(lambda: len(clusterplan.pending(c.core("n1").cluster)) == 2, 5_000)
    assert isinstance(c.request("n0", ClientStaged("commit")), Ok)
    assert c.run_until(lambda: c.core("n2").exit_requested, 120_000)
    assert c.run_until(lambda: settled(c), 60_000)
    assert c.core("n0").cluster.ring.owners == tuple("n9" if o == "n2" else o for o in before)
    assert clusterplan.committed_replacements(c.core("n0").cluster) == {}
    read_all(c, written, node="n9")


def test_clearing_a_staged_join_removes_the_joiner_and_it_asks_to_stop() -> None:
    c = SimCluster(3, SETTINGS)
    c.add_node("n3")
    assert isinstance(c.request("n3", ClientJoin("n0", 1, stage=True)), Ok)
    assert isinstance(c.request("n0", ClientStaged("clear")), Ok)
    assert c.run_until(lambda: c.core("n3").exit_requested, 30_000)
    nothing = c.request("n0", ClientStaged("commit"))
    assert isinstance(nothing, Failure) and "no staged changes" in nothing.reason
    assert "n3" not in c.core("n0").cluster.ring.owners


def test_a_data_directory_of_the_previous_release_opens_and_its_state_is_written_back_as_format_4() -> None:
    """A node whose cluster state is of format 3 (last release, before staged changes) starts, serves its
    keys, stages and commits as any other, and has rewritten its state in format 4."""
    c = SimCluster(1, Settings(ring_size=16, n_val=1, r=1, w=1))
    assert isinstance(c.request("n0", ClientPut(b"b", b"k", None, Content(b"v"))), Ok)
    c.stop("n0")
    disk = c.nodes["n0"].engine
    raw = disk.get("meta", META_CLUSTER)
    assert raw is not None
    state = msgpack.unpackb(raw, raw=False)
    disk.write([Op("meta", META_CLUSTER, msgpack.packb([3, *state[1:7]], use_bin_type=True))])
    c.restart("n0")
    read_all(c, {b"k": b"v"}, node="n0")
    c.settle(1_000)
    rewritten = disk.get("meta", META_CLUSTER)
    assert rewritten is not None and msgpack.unpackb(rewritten, raw=False)[0] == 4
    assert c.core("n0").cluster.staged == ()


def test_a_node_staged_to_join_does_not_count_as_another_owner_for_an_unstaged_leave() -> None:
    """One valid node and a staged joiner (which owns nothing until a commit): the valid node's plain
    leave is refused as the last member's, instead of leaving a cluster with nobody to own the ring."""
    c = SimCluster(1, SETTINGS)
    c.add_node("j")
    assert isinstance(c.request("j", ClientJoin("n0", 1, stage=True)), Ok)
    c.settle(2_000)
    refused = c.request("n0", ClientLeave())
    assert isinstance(refused, Failure) and "last member" in refused.reason, refused
    assert c.core("n0").cluster.member("n0").status == "valid"  # type: ignore[union-attr]
