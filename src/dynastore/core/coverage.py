"""Coverage plans: which replica answers for each partition of a query that must see every key once.

A key's replicas all store it under the partition it hashes to (keys.py), so a query that asks each
partition once, of one replica, sees every key once. A plan picks, from each partition's candidates
(its reachable replicas, in preference order), one node, so that few nodes cover the ring: the
coordinator itself first (its answers cost no message), then greedily the node that covers the most
partitions still uncovered (ties: the name first in order). Each chosen node is then asked once for
all of its partitions. When one does not answer, `fallback` gives each of its partitions to the next
candidate not tried yet. Once every partition is answered, `page_of` merges the answers into a page.

This module is pure and deterministic: the same candidates give the same plan on every node.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from dynastore.core.messages import IndexPage

Position = tuple[bytes, bytes]


def plan(candidates: Mapping[int, Sequence[str]], local: str) -> dict[str, list[int]]:
    """Node -> the partitions it answers for (in order), covering every partition of `candidates`
    (each must have at least one candidate)."""
    assert all(candidates.values()), "a partition without a candidate cannot be covered"
    left = set(candidates)
    chosen: dict[str, list[int]] = {}
    if any(local in nodes for nodes in candidates.values()):
        mine = sorted(p for p in left if local in candidates[p])
        chosen[local] = mine
        left.difference_update(mine)
    while left:
        covers: dict[str, int] = {}
        for partition in left:
            for node in candidates[partition]:
                covers[node] = covers.get(node, 0) + 1
        best = min(covers, key=lambda node: (-covers[node], node))
        taken = sorted(p for p in left if best in candidates[p])
        chosen[best] = taken
        left.difference_update(taken)
    return chosen


def fallback(
    partitions: Sequence[int], candidates: Mapping[int, Sequence[str]], tried: Mapping[int, set[str]]
) -> tuple[dict[str, list[int]], list[int]]:
    """For partitions whose replica failed: node -> the partitions it is asked for next (each its
    first candidate not in `tried`), and the partitions with no candidate left."""
    asked: dict[str, list[int]] = {}
    stranded: list[int] = []
    for partition in sorted(partitions):
        untried = [node for node in candidates[partition] if node not in tried.get(partition, set())]
        if not untried:
            stranded.append(partition)
        else:
            asked.setdefault(untried[0], []).append(partition)
    return asked, stranded


def page_of(answers: Mapping[int, tuple[Sequence[Position], Position | None, bool]], max_results: int) -> IndexPage:
    """One page from every partition's answer (its positions in order, where its scan stopped, whether
    it is done). Every position up to the lowest stop of a partition not done is known: the page is
    the first `max_results` of those, sorted and without duplicates; the next page starts after its
    last position when more were known, else after that lowest stop (None once all are done)."""
    assert max_results >= 1, max_results
    stops = [last for _, last, done in answers.values() if not done and last is not None]
    bound = min(stops) if stops else None
    known = sorted({p for positions, _, _ in answers.values() for p in positions if bound is None or p <= bound})
    page = tuple(known[:max_results])
    if len(known) > max_results:
        return IndexPage(page, page[-1])
    return IndexPage(page, bound)
