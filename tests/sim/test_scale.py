"""A hundred simulated nodes: one join spreads by gossip alone within a few times log2 N rounds, moves
about Q/(S+1) partitions, and leaves the ring as balanced and spaced as the claim promises."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from dynastore.bench.simscale import join_one
from dynastore.core.ring import spacing_violations
from dynastore.settings import Settings
from dynastore.sim.cluster import SimCluster

NODES = 100
RING_SIZE = 1024
# Heartbeats are all-to-all (N^2 messages an interval) and gossip does not depend on them: every node
# pings its peers when it starts, and not again within the test.
SETTINGS = Settings(ring_size=RING_SIZE, heartbeat_interval_ms=600_000)


@pytest.mark.timeout(300)
def test_a_join_into_a_hundred_nodes_spreads_by_gossip_in_log_n_rounds_and_moves_only_its_share() -> None:
    """Pushes dropped, so only the one-peer-a-round exchanges carry it: every node has the newcomer's
    record within 2*log2 N rounds and the finished ring within 4*log2 N (epidemics, not N rounds)."""
    cluster = SimCluster(NODES, SETTINGS, seed=5, formed=True)
    cluster.settle(2000)
    before = cluster.core("n0").cluster.ring.ring
    assert len(before.members) == NODES and cluster.core(f"n{NODES - 1}").cluster.ring.ring is before
    # A seed other than the claimant (n0), so that the claimant too hears of the join by gossip.
    result = join_one(cluster, f"n{NODES - 1}", gossip_only=True)
    log_n = math.log2(NODES + 1)
    # Not within a round: the seed's push (which reaches everyone in a message delay) was dropped.
    assert 1 <= result.member_rounds <= 2 * log_n, result
    assert result.ring_rounds <= 4 * log_n, result
    # Gossip exchanges still carried full states: the filter dropped pushes only.
    assert result.messages.get("GossipState", 0) > 0
    after = cluster.core("n0").cluster.ring.ring
    assert all(cluster.core(name).cluster.ring.ring is after for name in cluster.nodes)
    moved = sum(1 for a, b in zip(before.owners, after.owners, strict=True) if a != b)
    ideal = RING_SIZE / (NODES + 1)
    assert math.floor(ideal) <= moved <= math.ceil(ideal), moved
    counts = Counter(after.owners)
    assert set(counts.values()) <= {RING_SIZE // (NODES + 1), RING_SIZE // (NODES + 1) + 1}, counts
    assert spacing_violations(after.owners, SETTINGS.n_val) == 0
