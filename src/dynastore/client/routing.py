"""Where a partition-aware client sends a key's request: the ring it holds, the order of nodes to try.

Pure: no I/O and no clock (time comes in as `now_s`). Placement is never computed here: it is
`Ring.partition_of` and `Ring.preference_list`, the functions every node uses, so a client and the
cluster holding the same ring always agree on where a key lives. What this module adds is the
client's side of the decision: which of those nodes it can address, and which it recently failed to
reach and so tries last.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Collection, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeGuard, TypeVar
from urllib.parse import urlsplit

from dynastore.core import placement
from dynastore.core.membership import RingState
from dynastore.core.ring import Ring

# Addresses a node may bind that mean "every interface" and so cannot be dialled as given.
_WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::", "[::]"})


class RingViewError(ValueError):
    """A `GET /ring` answer that does not describe a ring (the node is not a dynastore node, or broken)."""


@dataclass(frozen=True, slots=True)
class RingView:
    """A ring as one node served it: the ring state (with any transition in progress), the HTTP address
    of each member, the cluster's default n_val and the n_val of every bucket that sets one."""

    cluster: str
    version: int
    state: RingState
    urls: Mapping[str, str]
    n_val: int
    epoch: str = ""
    bucket_n_vals: Mapping[bytes, int] = field(default_factory=dict)

    @property
    def ring(self) -> Ring:
        return self.state.ring

    @classmethod
    def from_json(cls, data: Any, served_by: str) -> RingView:
        """Parse a `GET /ring` body. `served_by` (the URL that answered) stands in for a wildcard host."""
        if not isinstance(data, dict):
            raise RingViewError("the ring is not a JSON object")
        cluster, version, owners, members, n_val = (
            data.get("cluster"),
            data.get("version"),
            data.get("owners"),
            data.get("members"),
            data.get("n_val"),
        )
        if not isinstance(cluster, str) or not _is_int(version) or not _is_int(n_val) or n_val < 1:
            raise RingViewError("the ring lacks a cluster name, a version or an n_val")
        if not isinstance(owners, list) or not owners or not all(isinstance(o, str) and o for o in owners):
            raise RingViewError("the ring's owners are not a list of node names")
        size = len(owners)
        if size & (size - 1):
            raise RingViewError(f"the ring's size {size} is not a power of two")
        if not isinstance(members, dict):
            raise RingViewError("the ring's members are not an object")
        fallback_host = urlsplit(served_by).hostname or ""
        urls: dict[str, str] = {}
        for name, member in members.items():
            if not isinstance(member, dict):
                raise RingViewError(f"member {name} is not an object")
            host, port = member.get("host"), member.get("http_port")
            if not isinstance(host, str) or not _is_int(port) or not 0 < port < 65536:
                raise RingViewError(f"member {name} has no usable HTTP address")
            if host in _WILDCARD_HOSTS:
                host = fallback_host
            if ":" in host and not host.startswith("["):
                host = f"[{host}]"
            scheme = member.get("scheme", "http")
            if scheme not in ("http", "https"):
                raise RingViewError(f"member {name} has an unknown scheme {scheme!r}")
            urls[name] = f"{scheme}://{host}:{port}"
        next_owners = data.get("next_owners")
        if next_owners is not None and (
            not isinstance(next_owners, list)
            or len(next_owners) != size
            or not all(isinstance(o, str) and o for o in next_owners)
        ):
            raise RingViewError("the ring's next owners are not a list of node names of the ring's size")
        done: set[tuple[int, str]] = set()
        for entry in data.get("done") or []:
            if not (isinstance(entry, list) and len(entry) == 2 and _is_int(entry[0]) and isinstance(entry[1], str)):
                raise RingViewError("the ring's finished transfers are not [partition, node] pairs")
            done.add((entry[0], entry[1]))
        bucket_n_vals: dict[bytes, int] = {}
        raw_buckets = data.get("bucket_n_vals") or {}
        if not isinstance(raw_buckets, dict):
            raise RingViewError("the ring's bucket n_vals are not an object")
        for encoded, bucket_n_val in raw_buckets.items():
            try:
                name = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                raise RingViewError("a bucket name in the ring is not base64") from None
            if _is_int(bucket_n_val) and bucket_n_val >= 1:
                bucket_n_vals[name] = bucket_n_val
        epoch = data.get("epoch")
        state = RingState(
            version, "", tuple(owners), None if next_owners is None else tuple(next_owners), frozenset(done)
        )
        return cls(cluster, version, state, urls, n_val, epoch if isinstance(epoch, str) else "", bucket_n_vals)

    def same_placement(self, other: RingView) -> bool:
        """Whether routing by `other` would send every request where routing by this view does."""
        mine, theirs = self.state, other.state
        return (mine.owners, mine.next_owners, mine.done) == (theirs.owners, theirs.next_owners, theirs.done) and dict(
            self.urls
        ) == dict(other.urls)


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


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)
