"""Membership in a simulated cluster: joins and leaves move data by ownership handoff without losing
writes; transfers resume from checkpoints; gossip converges; concurrent changes end in one ring."""

from __future__ import annotations

import random
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from dynastore.core import keys, membership
from dynastore.core.membership import ClusterState, Member, RingState
from dynastore.core.messages import ClientGet, ClientPut, Ok
from dynastore.core.node import ClientJoin, ClientLeave, ClientRemove
from dynastore.core.objects import Content
from dynastore.core.ring import claim
from dynastore.settings import Settings
from dynastore.sim.cluster import SimCluster

SETTINGS = Settings(ring_size=16, handoff_batch_max=20, handoff_pause_ms=5, stray_scan_interval_ms=500)


def write_keys(c: SimCluster, count: int, prefix: str = "k", node: str = "n0") -> dict[bytes, bytes]:
    written = {}
    for i in range(count):
        key = f"{prefix}{i}".encode()
        response = c.request(node, ClientPut(b"b", key, None, Content(b"v-" + key)))
        assert isinstance(response, Ok), response
        written[key] = b"v-" + key
    return written


def read_all(c: SimCluster, written: dict[bytes, bytes], node: str = "n0") -> None:
    for key, value in written.items():
        response = c.request(node, ClientGet(b"b", key))
        assert isinstance(response, Ok) and response.found is not None, (key, response)
        assert [content.value for _, content in response.found.values] == [value], key


def holders(c: SimCluster, key: bytes) -> set[str]:
    found = set()
    for name, node in c.nodes.items():
        if node.core is None:
            continue
        skey = keys.encode(node.core.ring.partition_of(b"b", key), b"b", key)
        if node.engine.get("data", skey) is not None:
            found.add(name)
    return found


def settled(c: SimCluster) -> bool:
    states = {n.core.cluster for n in c.nodes.values() if n.core is not None}
    return len(states) == 1 and next(iter(states)).ring.next_owners is None


def join(c: SimCluster, name: str) -> None:
    c.add_node(name)
    assert isinstance(c.request(name, ClientJoin("n0", 1)), Ok)


def test_growing_from_three_to_five_nodes_moves_data_and_keeps_every_key_readable() -> None:
    """Two joins with 200 keys stored: transitions finish, every key is readable and held by exactly
    its N replicas (old owners handed off their copies)."""
    c = SimCluster(3, SETTINGS)
    written = write_keys(c, 200)
    join(c, "n3")
    join(c, "n4")
    assert c.run_until(lambda: settled(c), 120_000)
    c.settle(5_000)
    read_all(c, written, node="n4")
    ring = c.core("n0").ring
    assert set(ring.owners) == {"n0", "n1", "n2", "n3", "n4"}
    for key in written:
        assert holders(c, key) == set(ring.replicas(ring.partition_of(b"b", key), 3)), key
    assert sum(c.core(n).stats.transfers_completed for n in c.nodes) > 0


def test_writes_during_a_transfer_are_never_lost() -> None:
    """Keys written while partitions are moving end up on the new owners and stay readable."""
    c = SimCluster(3, SETTINGS.replace(handoff_pause_ms=50))
    before = write_keys(c, 100)
    join(c, "n3")
    # The seed tells every member of the joiner at once; the claimant starts the transition at its next tick.
    assert c.run_until(lambda: c.core("n0").cluster.ring.next_owners is not None, 10_000)
    during: dict[bytes, bytes] = {}
    i = 0
    while not settled(c) and i < 300:
        key = f"during{i}".encode()
        response = c.request(f"n{i % 4}", ClientPut(b"b", key, None, Content(b"v-" + key)))
        assert isinstance(response, Ok), response
        during[key] = b"v-" + key
        i += 1
        c.settle(20)
    assert c.core("n0").stats.transfers_completed + c.core("n3").stats.transfers_completed > 0
    assert c.run_until(lambda: settled(c), 60_000)
    c.settle(5_000)
    read_all(c, before | during, node="n3")
    ring = c.core("n0").ring
    for key in before | during:
        assert set(ring.replicas(ring.partition_of(b"b", key), 3)) <= holders(c, key), key


def test_a_leaving_node_hands_off_everything_and_asks_to_stop() -> None:
    """`leave`: the node's partitions move to the others, its data is handed off, then it is removed."""
    c = SimCluster(4, SETTINGS)
    written = write_keys(c, 150)
    assert isinstance(c.request("n2", ClientLeave()), Ok)
    assert c.run_until(lambda: c.core("n2").exit_requested, 120_000)
    assert not c.core("n2").has_data()
    c.crash("n2")
    c.settle(3_000)
    read_all(c, written, node="n1")
    assert "n2" not in c.core("n0").ring.owners
    assert c.core("n0").cluster.member("n2").status == "removed"  # type: ignore[union-attr]


def test_removing_a_dead_node_rebuilds_its_partitions_from_the_other_replicas() -> None:
    """A node lost for good is removed; its partitions are pulled from surviving replicas, so every key
    again has N copies."""
    c = SimCluster(4, SETTINGS)
    written = write_keys(c, 150)
    c.crash("n3")
    assert isinstance(c.request("n0", ClientRemove("n3")), Ok)
    assert c.run_until(lambda: settled(c) and "n3" not in c.core("n1").ring.owners, 120_000)
    c.settle(3_000)
    ring = c.core("n0").ring
    for key in written:
        assert holders(c, key) == set(ring.replicas(ring.partition_of(b"b", key), 3)), key
    read_all(c, written)


def test_a_transfer_cut_by_a_crash_resumes_from_its_checkpoint() -> None:
    """The receiving node crashes mid-transfer; after restart it resumes from the checkpoint rather
    than from the start, and completes."""
    c = SimCluster(2, SETTINGS.replace(handoff_batch_max=5, handoff_pause_ms=20, handoff_concurrency_max=1))
    written = write_keys(c, 300)
    join(c, "n2")
    receiver = c.core("n2")
    assert c.run_until(lambda: c.core("n2").stats.handoff_batches >= 4, 60_000)
    assert not settled(c)
    keys_before_crash = receiver.stats.handoff_keys
    c.crash("n2")
    c.settle(500)
    c.restart("n2")
    assert c.run_until(lambda: c.core("n2").stats.handoff_batches >= 1, 30_000)
    assert c.core("n2").stats.handoff_resumed >= 1
    assert c.run_until(lambda: settled(c), 120_000)
    # Resumed, not restarted: what it pulled after the crash is exactly what it still lacked.
    ring = c.core("n0").ring
    owed = sum(1 for key in written if "n2" in ring.replicas(ring.partition_of(b"b", key), 3))
    assert keys_before_crash > 0
    assert c.core("n2").stats.handoff_keys == owed - keys_before_crash
    c.settle(3_000)
    read_all(c, written, node="n2")


def test_concurrent_membership_changes_on_both_sides_of_a_partition_end_in_one_ring() -> None:
    """Two claimants during a partition each publish a ring; after healing everyone agrees on one."""
    c = SimCluster(4, SETTINGS)
    c.partition({"n0", "n1"}, {"n2", "n3"})
    c.settle(3_000)
    # Each side loses sight of the other; n2 becomes a claimant for its side when n0 and n1 leave it.
    assert isinstance(c.request("n0", ClientRemove("n3")), Ok)
    assert isinstance(c.request("n2", ClientRemove("n1")), Ok)
    c.settle(5_000)
    c.heal()
    assert c.run_until(lambda: len({n.core.cluster.ring for n in c.nodes.values() if n.core}) == 1, 60_000)
    assert c.run_until(lambda: settled(c), 120_000)
    rings = {n.core.cluster.ring.owners for n in c.nodes.values() if n.core}
    assert len(rings) == 1


def test_a_restarted_node_recovers_membership_and_ring_from_disk() -> None:
    """Restarting every node one by one leaves membership and ring exactly as they were."""
    c = SimCluster(5, SETTINGS)
    before = c.core("n0").cluster
    for name in list(c.nodes):
        c.crash(name)
        c.settle(200)
        c.restart(name)
        c.settle(2_000)
    for name in c.nodes:
        after = c.core(name).cluster
        assert after.members == before.members and after.ring == before.ring


# --- Gossip merge laws ------------------------------------------------------------------------------


def _member(name: str, status: str, version: int) -> Member:
    return Member(name, "h", 1, 2, 1, status, version)


@st.composite
def updates(draw: st.DrawFn) -> list[ClusterState]:
    """Several states of one cluster, as different nodes might have produced them."""
    names = ["a", "b", "c", "d"]
    base = membership.new_cluster("x", _member("a", "valid", 1), 16, 3)
    states = []
    for _ in range(draw(st.integers(1, 8))):
        state = base
        for name in draw(st.lists(st.sampled_from(names), max_size=4)):
            status = draw(st.sampled_from(membership.STATUSES))
            state = state.with_member(_member(name, status, draw(st.integers(1, 5))))
        if draw(st.booleans()):
            owners = claim({m.name: 1 for m in state.members}, 16, 3).owners
            done = frozenset(draw(st.sets(st.tuples(st.integers(0, 15), st.sampled_from(names)), max_size=4)))
            version = draw(st.integers(1, 4))
            claimant = draw(st.sampled_from(names))
            nxt = owners if draw(st.booleans()) else None
            state = replace(state, ring=RingState(version, claimant, base.ring.owners, nxt, done))
        if draw(st.booleans()):
            state = state.with_bucket(b"bk", {"n_val": draw(st.integers(1, 5))}, draw(st.sampled_from(names)))
        states.append(state)
    return states


@settings(max_examples=300, deadline=None)
@given(states=updates(), seed=st.integers(0, 1000))
def test_gossip_merge_converges_whatever_order_updates_arrive_in(states: list[ClusterState], seed: int) -> None:
    """Merging the same updates in any order, with repeats, gives the same state."""
    rng = random.Random(seed)

    def fold(order: list[ClusterState]) -> ClusterState:
        result = order[0]
        for s in order[1:]:
            result = membership.merge(result, s)
        return result

    expected = fold(states)
    shuffled = states + rng.sample(states, k=min(3, len(states)))
    rng.shuffle(shuffled)
    assert fold(shuffled) == expected
    assert membership.decode(membership.encode(expected)) == expected
    a, b = states[0], states[-1]
    assert membership.merge(a, b) == membership.merge(b, a)


def test_a_write_during_a_transition_reaches_the_receiving_node() -> None:
    """While a partition is moving, the coordinator sends writes to its new owner as well."""
    c = SimCluster(2, SETTINGS.replace(handoff_pause_ms=1_000, handoff_batch_max=1))
    write_keys(c, 50)
    join(c, "n2")
    assert c.run_until(lambda: c.core("n0").cluster.ring.next_owners is not None, 10_000)
    ring = c.core("n0").cluster.ring
    assert ring.next_ring is not None
    key = next(
        f"x{i}".encode()
        for i in range(1000)
        if "n2" in ring.next_ring.replicas(ring.ring.partition_of(b"b", f"x{i}".encode()), 3)
    )
    assert isinstance(c.request("n0", ClientPut(b"b", key, None, Content(b"fresh"))), Ok)
    c.settle(50)
    assert "n2" in holders(c, key)
    response = c.request("n1", ClientGet(b"b", key))
    assert isinstance(response, Ok) and response.found is not None


def test_hints_held_for_a_removed_node_drain_to_the_keys_current_owners() -> None:
    """A fallback holds hints for a node that is then removed for good: the hints go to each key's
    current owners and are dropped, so hints_pending returns to 0 and no acknowledged write is lost."""
    c = SimCluster(5, SETTINGS)
    gone = "n4"
    ring = c.core("n0").ring
    keys_of_gone = [
        f"h{i}".encode() for i in range(200) if gone in ring.replicas(ring.partition_of(b"b", f"h{i}".encode()), 3)
    ][:20]
    assert len(keys_of_gone) == 20
    c.crash(gone)
    # Let the others see it down, so the writes go to fallbacks at once.
    c.settle(10_000)
    written = {}
    for key in keys_of_gone:
        response = c.request("n0", ClientPut(b"b", key, None, Content(b"v-" + key), w=3))
        assert isinstance(response, Ok), response
        written[key] = b"v-" + key
    assert sum(c.core(n).hints_pending for n in c.nodes if n != gone) >= len(written)
    assert isinstance(c.request("n0", ClientRemove(gone)), Ok)
    # Writes made while the ring still lists the removed node are hinted for it too.
    assert c.run_until(lambda: c.core("n0").cluster.ring.next_owners is not None, 10_000)
    for key in [f"t{i}".encode() for i in range(40)]:
        response = c.request("n2", ClientPut(b"b", key, None, Content(b"v-" + key), w=3))
        assert isinstance(response, Ok), response
        written[key] = b"v-" + key
    assert c.run_until(lambda: settled(c) and gone not in c.core("n1").ring.owners, 120_000)
    assert c.run_until(lambda: sum(c.core(n).hints_pending for n in c.nodes if n != gone) == 0, 30_000)
    c.settle(3_000)
    ring = c.core("n0").ring
    for key, value in written.items():
        response = c.request("n1", ClientGet(b"b", key, r=3))
        assert isinstance(response, Ok) and response.found is not None, (key, response)
        assert [content.value for _, content in response.found.values] == [value], key
        assert set(ring.replicas(ring.partition_of(b"b", key), 3)) <= holders(c, key), key
