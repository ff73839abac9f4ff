"""Claim's fast paths choose exactly what its rule says: each position's owner (fresh) and each move
(incremental) is the least score over every candidate, as a reference that scores them all finds."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

from hypothesis import example, given, settings
from hypothesis import strategies as st

from dynastore.core import ring as ring_module
from dynastore.core.ring import Ring, claim, target_counts


def conflicts(owners: list[str | None], index: int, node: str, n_val: int) -> int:
    size = len(owners)
    reach = min(n_val - 1, size - 1)
    return sum((owners[(index + k) % size] == node) + (owners[(index - k) % size] == node) for k in range(1, reach + 1))


def reference_fresh(weights: Mapping[str, int], ring_size: int, n_val: int) -> tuple[str, ...]:
    """Every node with quota scored at every position: (conflicts, -quota left, name)."""
    remaining = dict(target_counts(weights, ring_size))
    names = sorted(weights)
    owners: list[str | None] = [None] * ring_size
    for index in range(ring_size):
        best = min(
            (node for node in names if remaining[node] > 0),
            key=lambda node: (conflicts(owners, index, node, n_val), -remaining[node], names.index(node)),
        )
        owners[index] = best
        remaining[best] -= 1
    complete = [owner for owner in owners if owner is not None]
    ring_module._repair_by_swaps(complete, n_val, range(ring_size))
    return tuple(complete)


def reference_incremental(weights: Mapping[str, int], previous: Ring, n_val: int) -> tuple[str, ...]:
    """Every (movable position, taker) pair scored for every move."""
    owners = list(previous.owners)
    counts = Counter(owner for owner in owners if owner in weights)
    targets = target_counts(weights, previous.size, counts)
    deficit = {node: targets[node] - counts.get(node, 0) for node in weights}
    surplus = {node: -d for node, d in deficit.items() if d < 0}
    names = sorted(weights)
    orphans = [i for i, owner in enumerate(owners) if owner not in weights]
    moved: list[int] = []
    for phase in ("orphans", "surplus"):
        while True:
            takers = [node for node in names if deficit[node] > 0]
            if phase == "orphans":
                movable = [i for i in orphans if owners[i] not in weights]
            else:
                movable = [i for i, owner in enumerate(owners) if surplus.get(owner, 0) > 0]
            if not takers or not movable:
                break
            spots: list[str | None] = list(owners)
            _, index, taker = min(
                (
                    (
                        conflicts(spots, i, node, n_val),
                        -(conflicts(spots, i, owners[i], n_val) if owners[i] in weights else 0),
                        -deficit[node],
                        i,
                        names.index(node),
                    ),
                    i,
                    node,
                )
                for i in movable
                for node in takers
            )
            giver = owners[index]
            if giver in surplus:
                surplus[giver] -= 1
                deficit[giver] += 1
            owners[index] = taker
            deficit[taker] -= 1
            moved.append(index)
    ring_module._repair_by_swaps(owners, n_val, moved)
    return tuple(owners)


@st.composite
def changes(draw: st.DrawFn) -> tuple[int, int, dict[str, int], list[dict[str, int]]]:
    ring_size = draw(st.sampled_from([8, 16, 32, 64, 128]))
    n_val = draw(st.integers(1, 5))
    count = draw(st.integers(1, min(12, ring_size)))
    first = {f"n{i}": draw(st.integers(1, 3)) for i in range(count)}
    later: list[dict[str, int]] = []
    current = dict(first)
    for step in range(draw(st.integers(1, 3))):
        nxt = dict(current)
        for k in range(draw(st.integers(0, 4))):
            nxt[f"j{step}_{k}"] = draw(st.integers(1, 3))
        for name in draw(st.lists(st.sampled_from(sorted(nxt)), max_size=2, unique=True)):
            if len(nxt) > 1:
                nxt.pop(name)
        if len(nxt) <= ring_size:
            later.append(nxt)
            current = nxt
    return ring_size, n_val, first, later


@settings(max_examples=150, deadline=None)
@example((32, 3, {"n0": 1}, [{"j0_1": 1, "j0_2": 2, "j0_3": 2}]))
@given(changes())
def test_fast_claim_makes_the_ring_that_scoring_every_candidate_makes(case: tuple) -> None:
    """Fresh and incremental claims equal the full-scoring reference through joins, leaves, weights."""
    ring_size, n_val, first, later = case
    ring = claim(first, ring_size, n_val)
    assert ring.owners == reference_fresh(first, ring_size, min(n_val, len(first)))
    for weights in later:
        spacing = min(n_val, len(weights))
        if ring.members & weights.keys():
            expected = reference_incremental(weights, ring, spacing)
        else:
            # No member stays: claim starts afresh, as for a new cluster.
            expected = reference_fresh(weights, ring_size, spacing)
        ring = claim(weights, ring_size, n_val, ring)
        assert ring.owners == expected, weights


def test_one_join_into_ten_nodes_at_1024_partitions_is_the_reference_ring() -> None:
    """At a size where the reference's every-pair scoring is slow but bearable, the two still agree."""
    weights = {f"n{i}": 1 for i in range(10)}
    before = claim(weights, 1024, 3)
    joined = {**weights, "n10": 1}
    assert claim(joined, 1024, 3, before).owners == reference_incremental(joined, before, 3)
