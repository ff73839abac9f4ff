"""The ring: Q equal partitions, who owns each, and the preference list of every key.

Theory of operation
-------------------
The 128-bit hash space is cut into Q equal partitions (Dynamo's strategy 3). Each partition has one
owner, a physical node. A key's *preference list* is found by walking the partitions clockwise from
the key's partition and collecting owners, skipping nodes already collected (the Dynamo paper's rule:
"skipping positions in the ring to ensure that the list contains only distinct physical nodes"). The
first N distinct nodes are the primaries, the rest are fallbacks in walk order. Requests go to the
first N *healthy* nodes of that list: a fallback stands in for a primary that is down (sloppy quorum).

Claim decides the owners. It must be
- deterministic: the same inputs always give the same ring (no randomness, no hash());
- balanced: every node owns floor or ceil of its weighted fair share Q * w / sum(w);
- spaced: any N consecutive partitions have N distinct owners wherever that is possible, so that the
  walk rarely needs to skip and every node carries its fair share of replicas (Riak's claim broke
  this and produced preference lists holding two distinct nodes);
- frugal: when nodes join, only the partitions the newcomers must own move (about Q/(S+1) for one
  node joining S); when nodes leave, only the leavers' partitions move.

A fresh claim lays nodes out greedily (most remaining quota first, never a node seen in the previous
N-1 positions) and then repairs the few conflicts left at the seam by swaps. An incremental claim keeps
every partition where it is unless its owner left or holds more than its target, and gives each moving
partition to the node that needs it and fits best at that position.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from dynastore.core.hashing import key_partition

WEIGHT_MAX = 1000


class ClaimError(ValueError):
    """The membership given to claim cannot produce a ring (no members, bad weight, bad size)."""


@dataclass(frozen=True, slots=True)
class Target:
    """One node a request goes to. `hint_for` names the primary a fallback stands in for."""

    node: str
    primary: bool
    hint_for: str | None = None


@dataclass(frozen=True, slots=True)
class PreferenceList:
    """Primaries (with the partition at which the walk met each) then fallbacks, for one key."""

    partition: int
    primaries: tuple[tuple[int, str], ...]
    fallbacks: tuple[tuple[int, str], ...]

    @property
    def primary_nodes(self) -> tuple[str, ...]:
        return tuple(node for _, node in self.primaries)

    def targets(self, healthy: Collection[str] | None = None) -> tuple[Target, ...]:
        """The first N healthy nodes: healthy primaries, then fallbacks for the primaries that are down.

        When `healthy` is None every node counts as healthy.
        """
        if healthy is None:
            return tuple(Target(node, True) for _, node in self.primaries)
        chosen = [Target(node, True) for _, node in self.primaries if node in healthy]
        down = [node for _, node in self.primaries if node not in healthy]
        spare = (node for _, node in self.fallbacks if node in healthy)
        for missing in down:
            substitute = next(spare, None)
            if substitute is None:
                break
            chosen.append(Target(substitute, False, hint_for=missing))
        return tuple(chosen)


@dataclass(frozen=True, slots=True)
class Ring:
    """Owners of the Q partitions. Immutable; derived data is cached per instance."""

    owners: tuple[str, ...]
    _walks: dict[int, tuple[tuple[int, str], ...]] = field(default_factory=dict, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        size = len(self.owners)
        assert size > 0 and size & (size - 1) == 0, f"ring size {size} is not a power of two"

    @property
    def size(self) -> int:
        return len(self.owners)

    @property
    def members(self) -> frozenset[str]:
        return frozenset(self.owners)

    def partition_of(self, bucket: bytes, key: bytes) -> int:
        return key_partition(bucket, key, self.size)

    def walk(self, partition: int) -> tuple[tuple[int, str], ...]:
        """Every distinct owner, in clockwise order from `partition`, with where it was met."""
        cached = self._walks.get(partition)
        if cached is not None:
            return cached
        seen: set[str] = set()
        found: list[tuple[int, str]] = []
        total = len(self.members)
        size = self.size
        for step in range(size):
            index = (partition + step) % size
            owner = self.owners[index]
            if owner not in seen:
                seen.add(owner)
                found.append((index, owner))
                if len(found) == total:
                    break
        walk = tuple(found)
        self._walks[partition] = walk
        return walk

    def preference_list(self, partition: int, n_val: int) -> PreferenceList:
        walk = self.walk(partition)
        return PreferenceList(partition, walk[:n_val], walk[n_val:])

    def replicas(self, partition: int, n_val: int) -> tuple[str, ...]:
        return tuple(node for _, node in self.walk(partition)[:n_val])

    def partitions_of(self, node: str) -> list[int]:
        return [i for i, owner in enumerate(self.owners) if owner == node]

    def counts(self) -> Counter[str]:
        return Counter(self.owners)


# --- Claim ----------------------------------------------------------------------------------------


def target_counts(
    weights: Mapping[str, int], ring_size: int, current: Mapping[str, int] | None = None
) -> dict[str, int]:
    """How many partitions each node should own: floor or ceil of its weighted fair share.

    The partitions left over after every node has its floor go to nodes whose share is fractional:
    nodes that would otherwise own nothing first, then nodes that already own the ceiling (so that a
    membership change moves as little as possible), then larger fractional parts, then names.
    """
    _check_membership(weights, ring_size)
    current = current or {}
    total = sum(weights.values())
    targets = {node: ring_size * w // total for node, w in weights.items()}
    leftover = ring_size - sum(targets.values())
    fractional = [node for node, w in weights.items() if (ring_size * w) % total]
    # A node whose share is below one partition still gets one when there are enough to go round, so
    # that every member takes part in the ring.
    fractional.sort(
        key=lambda node: (
            targets[node] > 0,
            current.get(node, 0) <= targets[node],
            -((ring_size * weights[node]) % total),
            node,
        )
    )
    for node in fractional[:leftover]:
        targets[node] += 1
    assert sum(targets.values()) == ring_size
    return targets


def claim(weights: Mapping[str, int], ring_size: int, n_val: int, previous: Ring | None = None) -> Ring:
    """The ring for this membership, as close to `previous` as balance allows."""
    _check_membership(weights, ring_size)
    assert n_val >= 1
    if previous is not None and previous.size != ring_size:
        raise ClaimError(f"ring size is fixed at {previous.size}, cannot claim {ring_size}")
    # With fewer nodes than n_val, N distinct owners in a window are impossible; aim for all of them.
    spacing = min(n_val, len(weights))
    if previous is None or not (previous.members & weights.keys()):
        return Ring(_fresh_claim(weights, ring_size, spacing))
    return Ring(_incremental_claim(weights, previous, spacing))


def spacing_violations(owners: Sequence[str], n_val: int) -> int:
    """How many windows of n_val consecutive partitions (cyclically) repeat an owner."""
    size = len(owners)
    span = min(n_val, size)
    return sum(1 for start in range(size) if len({owners[(start + k) % size] for k in range(span)}) < span)


def _check_membership(weights: Mapping[str, int], ring_size: int) -> None:
    if not weights:
        raise ClaimError("a ring needs at least one member")
    if ring_size < 1 or ring_size & (ring_size - 1):
        raise ClaimError(f"ring size {ring_size} is not a power of two")
    if len(weights) > ring_size:
        raise ClaimError(f"{len(weights)} members cannot share {ring_size} partitions")
    for node, w in weights.items():
        if not node:
            raise ClaimError("a member needs a non-empty name")
        if isinstance(w, bool) or not isinstance(w, int) or not 1 <= w <= WEIGHT_MAX:
            raise ClaimError(f"weight of {node} must be an integer from 1 to {WEIGHT_MAX}")


def _conflicts(owners: Sequence[str | None], index: int, node: str, n_val: int) -> int:
    """How many partitions within n_val - 1 positions of `index` (either side) `node` owns."""
    size = len(owners)
    reach = min(n_val - 1, size - 1)
    total = 0
    for k in range(1, reach + 1):
        if owners[(index + k) % size] == node:
            total += 1
        if owners[(index - k) % size] == node:
            total += 1
    return total


def _fresh_claim(weights: Mapping[str, int], ring_size: int, n_val: int) -> tuple[str, ...]:
    targets = target_counts(weights, ring_size)
    remaining = dict(targets)
    names = sorted(weights)
    rank = {node: i for i, node in enumerate(names)}
    owners: list[str | None] = [None] * ring_size
    reach = min(n_val - 1, ring_size - 1)
    # Nodes with quota left, most first (then by name): one current entry per node, stale ones skipped.
    queue = [(-remaining[node], rank[node], node) for node in names if remaining[node] > 0]
    heapq.heapify(queue)
    for index in range(ring_size):
        # Most remaining quota first keeps the layout feasible; a node seen within the last n-1
        # positions (or, near the end, at the start it will wrap onto) is avoided when possible.
        # Only the few nodes near `index` conflict at all, so the best node is the first in quota
        # order that is not near; when every node with quota is near, all of them are weighed.
        near = {owners[(index + k) % ring_size] for k in range(-reach, reach + 1) if k}
        passed: list[tuple[int, int, str]] = []
        best: str | None = None
        while queue:
            entry = heapq.heappop(queue)
            node = entry[2]
            if -entry[0] != remaining[node]:
                continue
            passed.append(entry)
            if node not in near:
                best = node
                break
        if best is None:
            candidates = [node for node in names if remaining[node] > 0]
            best = min(
                candidates,
                key=lambda node: (_conflicts(owners, index, node, n_val), -remaining[node], rank[node]),
            )
        for entry in passed:
            if entry[2] != best:
                heapq.heappush(queue, entry)
        owners[index] = best
        remaining[best] -= 1
        if remaining[best] > 0:
            heapq.heappush(queue, (-remaining[best], rank[best], best))
    complete = [owner for owner in owners if owner is not None]
    assert len(complete) == ring_size
    _repair_by_swaps(complete, n_val, range(ring_size))
    return tuple(complete)


def _repair_by_swaps(owners: list[str], n_val: int, movable: Iterable[int], passes_max: int = 4) -> None:
    """Swap owners between movable positions to clear spacing conflicts.

    A swap is taken only when it clears the conflict at one position without creating one at the
    other, so the conflict total strictly falls and every node keeps its count (balance is untouched).
    Bounded by `passes_max` passes over the movable positions.
    """
    allowed = sorted(set(movable))
    size = len(owners)
    reach = min(n_val - 1, size - 1)
    if reach <= 0:
        return

    def near(index: int) -> set[str]:
        return {owners[(index + k) % size] for k in range(-reach, reach + 1) if k}

    for _ in range(passes_max):
        changed = False
        for i in allowed:
            a = owners[i]
            around_i = near(i)
            if a not in around_i:
                continue
            for j in allowed:
                b = owners[j]
                if b == a or b in around_i or min((i - j) % size, (j - i) % size) <= reach:
                    continue
                if a in near(j):
                    continue
                owners[i], owners[j] = b, a
                changed = True
                break
        if not changed:
            return


def _incremental_claim(weights: Mapping[str, int], previous: Ring, n_val: int) -> tuple[str, ...]:
    ring_size = previous.size
    owners: list[str] = list(previous.owners)
    counts = Counter(owner for owner in owners if owner in weights)
    targets = target_counts(weights, ring_size, counts)
    deficit = {node: targets[node] - counts.get(node, 0) for node in weights}
    surplus = {node: -d for node, d in deficit.items() if d < 0}
    names = sorted(weights)
    rank = {node: i for i, node in enumerate(names)}
    reach = min(n_val - 1, ring_size - 1)

    def relief_at(i: int) -> int:
        owner = owners[i]
        return _conflicts(owners, i, owner, n_val) if owner in weights else 0

    # Each move takes the (position, taker) of least (taker's conflicts there, -relief of moving the
    # position's owner, -taker's deficit, position, taker's name). Only the few nodes near a position
    # conflict there, and only positions whose owner repeats nearby give relief, so rather than score
    # every pair (Q * takers per move: minutes for Q=4096) the positions that give relief are scored
    # in full and the others in position order, each with the first taker not near it, stopping as
    # soon as no later position can win. The choice is the same as scoring every pair.
    relieving = {i for i in range(ring_size) if relief_at(i) > 0}
    # Positions where every taker conflicts. Takers only ever drop out, so a position stays blocked
    # until a move near it changes its neighbours.
    blocked: set[int] = set()

    # Moving a partition is needed when its owner left; allowed when its owner holds more than its
    # target. Orphans are placed first so that their placement is never crowded out.
    orphans = [i for i, owner in enumerate(owners) if owner not in weights]
    moved: list[int] = []
    for phase in ("orphans", "surplus"):
        if phase == "orphans":
            movable = list(orphans)
        else:
            movable = [i for i, owner in enumerate(owners) if surplus.get(owner, 0) > 0]
        while movable:
            takers = [node for node in names if deficit[node] > 0]
            if not takers:
                break
            best = _choose_move(owners, movable, takers, deficit, rank, relieving, blocked, n_val, relief_at)
            assert best is not None
            _, index, taker = best
            giver = owners[index]
            if giver in surplus:
                surplus[giver] -= 1
                deficit[giver] += 1
            owners[index] = taker
            deficit[taker] -= 1
            moved.append(index)
            movable.remove(index)
            if giver in surplus and surplus[giver] == 0:
                movable = [i for i in movable if owners[i] != giver]
            for k in range(-reach, reach + 1):
                position = (index + k) % ring_size
                blocked.discard(position)
                if relief_at(position) > 0:
                    relieving.add(position)
                else:
                    relieving.discard(position)
    assert all(owner in weights for owner in owners), "claim left a partition with a departed owner"
    assert all(d == 0 for d in deficit.values()), deficit
    # Partitions that move anyway may trade places with each other for free.
    _repair_by_swaps(owners, n_val, moved)
    return tuple(owners)


def _choose_move(
    owners: list[str],
    movable: list[int],
    takers: list[str],
    deficit: dict[str, int],
    rank: dict[str, int],
    relieving: set[int],
    blocked: set[int],
    n_val: int,
    relief_at: Callable[[int], int],
) -> tuple[tuple[int, int, int, int, int], int, str] | None:
    """The incremental claim's next move: the (score, position, taker) of least score, as
    `_incremental_claim` describes; None when no position can move."""
    ring_size = len(owners)
    reach = min(n_val - 1, ring_size - 1)
    order = sorted(takers, key=lambda node: (-deficit[node], rank[node]))
    top = -deficit[order[0]]
    best: tuple[tuple[int, int, int, int, int], int, str] | None = None
    for i in sorted(relieving.intersection(movable)):
        relief = relief_at(i)
        for node in takers:
            score = (_conflicts(owners, i, node, n_val), -relief, -deficit[node], i, rank[node])
            if best is None or score < best[0]:
                best = (score, i, node)
    free_found = False
    for i in movable:
        if best is not None and best[0] < (0, 0, top, i, -1):
            break
        if i in relieving or i in blocked:
            continue
        near = {owners[(i + k) % ring_size] for k in range(-reach, reach + 1) if k}
        taker = next((node for node in order if node not in near), None)
        if taker is None:
            blocked.add(i)
            continue
        free_found = True
        score = (0, 0, -deficit[taker], i, rank[taker])
        if best is None or score < best[0]:
            best = (score, i, taker)
    if not free_found:
        # No position is free of conflict for some taker: weigh the blocked ones in full.
        for i in sorted(blocked.intersection(movable).difference(relieving)):
            for node in takers:
                score = (_conflicts(owners, i, node, n_val), 0, -deficit[node], i, rank[node])
                if best is None or score < best[0]:
                    best = (score, i, node)
    return best
