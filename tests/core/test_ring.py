"""The ring's claim is deterministic, balanced, spaced and frugal; preference lists hold distinct nodes."""

from __future__ import annotations

from collections import Counter
from fractions import Fraction

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from dynastore.core.hashing import key_partition, key_position, partition_of
from dynastore.core.ring import ClaimError, Ring, claim, spacing_violations, target_counts

RING_SIZES = st.sampled_from([16, 32, 64, 128, 256])


@st.composite
def memberships(draw: st.DrawFn, min_nodes: int = 1, max_nodes: int = 12, max_weight: int = 4) -> dict[str, int]:
    count = draw(st.integers(min_nodes, max_nodes))
    names = draw(st.lists(st.text("abcdefgh", min_size=1, max_size=4), min_size=count, max_size=count, unique=True))
    return {name: draw(st.integers(1, max_weight)) for name in names}


def moved(a: Ring, b: Ring) -> int:
    return sum(1 for x, y in zip(a.owners, b.owners, strict=True) if x != y)


def assert_balanced(ring: Ring, weights: dict[str, int]) -> None:
    """Every member owns within one partition of its weighted share. A member whose share is under
    one partition may own none: with more weight than partitions, not every member can own one
    and stay within one of its share (7 members of weight 1 and 5 of weight 3 over 16 partitions)."""
    total = sum(weights.values())
    counts = ring.counts()
    assert set(counts) <= set(weights)
    for node, w in weights.items():
        fair = Fraction(ring.size * w, total)
        assert abs(counts.get(node, 0) - fair) < 1, (node, counts.get(node, 0), fair)


def test_positions_are_md5_of_the_length_prefixed_pair() -> None:
    """A key's position is MD5 over (len(bucket), bucket, key): ("ab","c") and ("a","bc") differ."""
    assert key_position(b"ab", b"c") != key_position(b"a", b"bc")
    assert 0 <= key_position(b"b", b"k") < 1 << 128
    assert partition_of(0, 64) == 0
    assert partition_of((1 << 128) - 1, 64) == 63
    assert partition_of(1 << 122, 64) == 1
    assert key_partition(b"b", b"k", 64) == key_position(b"b", b"k") >> 122


@settings(max_examples=150, deadline=None)
@given(weights=memberships(), ring_size=RING_SIZES, n_val=st.integers(1, 5))
@example(
    weights={**dict.fromkeys("abcdefg", 1), **dict.fromkeys(["h", "aa", "ab", "ac", "aaa"], 3)}, ring_size=16, n_val=1
)
def test_claim_is_deterministic_and_balanced(weights: dict[str, int], ring_size: int, n_val: int) -> None:
    """The same membership always gives the same ring, with every node within one partition of its share."""
    if len(weights) > ring_size:
        return
    first = claim(weights, ring_size, n_val)
    again = claim(dict(reversed(list(weights.items()))), ring_size, n_val)
    assert first == again
    assert_balanced(first, weights)


@settings(max_examples=150, deadline=None)
@given(weights=memberships(), ring_size=RING_SIZES, n_val=st.integers(1, 5))
def test_every_preference_list_has_n_distinct_nodes(weights: dict[str, int], ring_size: int, n_val: int) -> None:
    """Whenever there are at least N nodes, every preference list starts with N distinct primaries."""
    ring = claim(weights, ring_size, n_val)
    # A member owns nothing only when shares below one partition outnumber the partitions left over.
    assert len(ring.members) == min(len(weights), ring_size) or len(weights) * 2 > ring_size
    for partition in range(ring_size):
        plist = ring.preference_list(partition, n_val)
        nodes = [node for _, node in plist.primaries + plist.fallbacks]
        assert len(nodes) == len(set(nodes)) == len(ring.members)
        assert len(plist.primaries) == min(n_val, len(ring.members))
        assert plist.primaries[0] == (partition, ring.owners[partition])


@settings(max_examples=100, deadline=None)
@given(count=st.integers(4, 12), ring_size=st.sampled_from([64, 128, 256]), n_val=st.integers(2, 3))
def test_fresh_claim_with_equal_weights_is_fully_spaced(count: int, ring_size: int, n_val: int) -> None:
    """With more nodes than N, any N consecutive partitions of a fresh ring have N distinct owners."""
    weights = {f"node{i}": 1 for i in range(count)}
    ring = claim(weights, ring_size, n_val)
    assert spacing_violations(ring.owners, n_val) == 0


@settings(max_examples=100, deadline=None)
@given(weights=memberships(min_nodes=3), ring_size=st.sampled_from([64, 128]), joiner_weight=st.integers(1, 4))
def test_a_join_moves_only_what_the_newcomer_takes(weights: dict[str, int], ring_size: int, joiner_weight: int) -> None:
    """One node joining S nodes moves about Q/(S+1) partitions: exactly what it must own, plus what
    balance forces others to trade, and never more than its share plus one per node."""
    if len(weights) + 1 > ring_size:
        return
    before = claim(weights, ring_size, 3)
    grown = {**weights, "zz-new": joiner_weight}
    after = claim(grown, ring_size, 3, before)
    assert_balanced(after, grown)
    newcomer = after.counts()["zz-new"]
    assert newcomer <= moved(before, after) <= newcomer + len(weights)


@settings(max_examples=100, deadline=None)
@given(count=st.integers(1, 15), ring_size=st.sampled_from([64, 128, 256]))
def test_with_equal_weights_a_join_moves_exactly_the_newcomers_partitions(count: int, ring_size: int) -> None:
    """Equal weights: the newcomer takes floor or ceil of Q/(S+1) and nothing else moves."""
    weights = {f"n{i:02d}": 1 for i in range(count)}
    before = claim(weights, ring_size, 3)
    after = claim({**weights, "new": 1}, ring_size, 3, before)
    share = Fraction(ring_size, count + 1)
    assert moved(before, after) == after.counts()["new"]
    assert abs(after.counts()["new"] - share) < 1


@settings(max_examples=100, deadline=None)
@given(weights=memberships(min_nodes=2), ring_size=st.sampled_from([64, 128]), data=st.data())
def test_a_leave_moves_only_the_leavers_partitions(
    weights: dict[str, int], ring_size: int, data: st.DataObject
) -> None:
    """When a node leaves, the partitions it owned move and no other partition does."""
    before = claim(weights, ring_size, 3)
    leaver = data.draw(st.sampled_from(sorted(weights)))
    rest = {k: v for k, v in weights.items() if k != leaver}
    after = claim(rest, ring_size, 3, before)
    assert_balanced(after, rest)
    changed = {i for i in range(ring_size) if before.owners[i] != after.owners[i]}
    assert changed == set(before.partitions_of(leaver))


@settings(max_examples=60, deadline=None)
@given(steps=st.lists(st.tuples(st.booleans(), st.integers(1, 3)), min_size=1, max_size=12))
@example(steps=[(False, 1), (True, 3), (False, 1), (True, 3), (True, 3), (True, 1), (True, 1), (True, 1), (False, 1)])
def test_any_sequence_of_joins_and_leaves_keeps_balance_and_replica_load(
    steps: list[tuple[bool, int]],
) -> None:
    """Through any history of changes the ring stays balanced, and no node is a primary for much more
    than N times the partitions it owns, whenever no node is so heavy that spacing is impossible.

    Incremental claims keep movement minimal, so a layout inherited from a smaller cluster can leave
    windows that repeat an owner; the distinct-node walk then skips ahead. Measured over 3,000 random
    histories, the worst excess replica load is 48%; hypothesis found the history in the example at
    62% (weighted, borderline-feasible rings); this bound catches a walk or claim that piles replicas
    on a node."""
    ring_size, n_val = 64, 3
    weights = {"n00": 1}
    ring = claim(weights, ring_size, n_val)
    fresh_id = 1
    for join, weight in steps:
        if join or len(weights) == 1:
            weights[f"n{fresh_id:02d}"] = weight
            fresh_id += 1
        else:
            del weights[sorted(weights)[fresh_id % len(weights)]]
        ring = claim(weights, ring_size, n_val, ring)
        assert_balanced(ring, weights)
        if len(weights) > n_val and max(ring.counts().values()) * n_val <= ring_size:
            load: Counter[str] = Counter()
            for p in range(ring_size):
                load.update(ring.replicas(p, n_val))
            for node, owned in ring.counts().items():
                assert load[node] <= 1.7 * n_val * owned + n_val, (node, load[node], owned)


def test_preference_list_targets_replace_down_primaries_with_hinted_fallbacks() -> None:
    """Sloppy quorum: a down primary is replaced by the next healthy fallback, which carries a hint."""
    ring = claim({f"n{i}": 1 for i in range(5)}, 64, 3)
    plist = ring.preference_list(7, 3)
    p0, p1, p2 = plist.primary_nodes
    f0, f1 = (node for _, node in plist.fallbacks)
    healthy = {p0, p2, f0, f1}
    targets = plist.targets(healthy)
    assert [(t.node, t.primary, t.hint_for) for t in targets] == [
        (p0, True, None),
        (p2, True, None),
        (f0, False, p1),
    ]
    assert [t.node for t in plist.targets(None)] == [p0, p1, p2]
    assert len(plist.targets({p0})) == 1


def test_claim_rejects_impossible_memberships() -> None:
    """Bad membership input gets a clear ClaimError."""
    with pytest.raises(ClaimError):
        claim({}, 64, 3)
    with pytest.raises(ClaimError):
        claim({"a": 0}, 64, 3)
    with pytest.raises(ClaimError):
        claim({"a": 1}, 48, 3)
    with pytest.raises(ClaimError):
        claim({f"n{i}": 1 for i in range(5)}, 4, 3)
    with pytest.raises(ClaimError):
        claim({"a": 1}, 64, 3, claim({"a": 1}, 32, 3))


def test_target_counts_prefer_nodes_already_holding_the_ceiling() -> None:
    """Leftover partitions go first to nodes that already own the larger count, so nothing moves needlessly."""
    targets = target_counts({"a": 1, "b": 1, "c": 1}, 64, {"a": 21, "b": 21, "c": 22})
    assert targets == {"a": 21, "b": 21, "c": 22}
    targets = target_counts({"a": 1, "b": 1, "c": 1}, 64, {"a": 22, "b": 21, "c": 21})
    assert targets == {"a": 22, "b": 21, "c": 21}
