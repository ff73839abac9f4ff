"""Where a partition-aware client sends a key's request: the ring it holds, the order of nodes to try.

Pure: no I/O and no clock (time comes in as `now_s`). Placement is never computed here: it is
`Ring.partition_of` and `Ring.preference_list`, the functions every node uses, so a client and the
cluster holding the same ring always agree on where a key lives. What this module adds is the
client's side of the decision: which of those nodes it can address, and which it recently failed to
reach and so tries last.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from dynastore.core import placement
from dynastore.core.membership import RingState
from dynastore.core.ring import Ring
from dynastore.core.ringdoc import RingView, RingViewError

__all__ = ["Expiring", "RingView", "RingViewError", "Route", "route"]


@dataclass(frozen=True, slots=True)
class Route:
    """The nodes to try for one key, in order, and which of them are the key's primaries."""

    partition: int
    primaries: tuple[str, ...]
    fallbacks: tuple[str, ...]
    order: tuple[str, ...]


def route(state: RingState | Ring, bucket: bytes, key: bytes, n_val: int, failing: Collection[str] = ()) -> Route:
    """Primaries first, then fallbacks, each in preference-list order; nodes in `failing` go last.

    The preference list is the one the nodes themselves serve (`placement.placement`): during a
    transition, a partition whose transfers are done is served by the next ring. Failing nodes are kept
    at the end rather than dropped: when everything else is unreachable, a node that failed a moment ago
    is still the best remaining chance.
    """
    assert n_val >= 1, n_val
    if isinstance(state, Ring):
        state = RingState(0, "", state.owners)
    partition = state.ring.partition_of(bucket, key)
    plist = placement.placement(state, partition, n_val).plist
    primaries = plist.primary_nodes
    fallbacks = tuple(node for _, node in plist.fallbacks)
    walk = primaries + fallbacks
    order = tuple(node for node in walk if node not in failing) + tuple(node for node in walk if node in failing)
    return Route(partition, primaries, fallbacks, order)


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Expiring(Generic[K, V]):
    """A map whose entries vanish `ttl_s` after they were set; at most `count_max` entries.

    When full, setting a new entry evicts the one that would expire first, so memory stays bounded
    however many distinct keys (buckets, nodes) a long-lived client meets.
    """

    def __init__(self, ttl_s: float, count_max: int) -> None:
        assert ttl_s > 0 and count_max >= 1, (ttl_s, count_max)
        self.ttl_s = ttl_s
        self.count_max = count_max
        self._entries: dict[K, tuple[V, float]] = {}

    def set(self, key: K, value: V, now_s: float) -> None:
        self._entries.pop(key, None)
        self._expire(now_s)
        if len(self._entries) >= self.count_max:
            soonest = min(self._entries, key=lambda k: self._entries[k][1])
            del self._entries[soonest]
        self._entries[key] = (value, now_s + self.ttl_s)

    def get(self, key: K, now_s: float) -> V | None:
        entry = self._entries.get(key)
        if entry is None or entry[1] <= now_s:
            return None
        return entry[0]

    def discard(self, key: K) -> None:
        self._entries.pop(key, None)

    def keys(self, now_s: float) -> frozenset[K]:
        self._expire(now_s)
        return frozenset(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def _expire(self, now_s: float) -> None:
        for key in [k for k, (_, expiry) in self._entries.items() if expiry <= now_s]:
            del self._entries[key]
