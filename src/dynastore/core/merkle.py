"""Hash trees for anti-entropy: one per (partition, n_val) on every node, maintained on every write.

Theory of operation
-------------------
A key belongs to one of S *segments* (a hash of its stored key). A leaf is the XOR of
`H(key, version summary)` over the keys of its segment, so a write updates a leaf in O(1) by XORing
out the old summary's hash and XORing in the new one; no rescan is ever needed to keep a tree current.
Interior nodes hash their children (fan-out F), computed lazily when an exchange asks for them.

The version summary of an object hashes its clock counters, its siblings' dots and their contents
(value and metadata, made once by the write's coordinator), never the clock's timestamps or the order
siblings were merged in: two replicas holding the same versions have the same summary, and a copy
whose bytes changed under the same versions does not.

Two replicas compare roots, then only the children of nodes that differ, level by level, down to the
differing segments, then only the keys of those segments (listed from the on-disk segment index, see
antientropy.py). What crosses the network grows with the number of differences, not the number of keys.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import msgpack

from dynastore.core import objects
from dynastore.core.objects import Content, Object

HASH_BYTES = 16
FANOUT = 32
_ZERO = bytes(HASH_BYTES)


# 2: a summary covers the siblings' values and metadata, not only clock and dots. An index written
# with another version is recomputed from the data when the node starts (antientropy.py).
SUMMARY_VERSION = 2


def summary(obj: Object) -> bytes:
    """What two replicas must agree on for a key: clock counters, sibling dots, and every sibling's
    value and metadata (so that a copy whose bytes changed under the same versions differs)."""
    h = hashlib.blake2b(digest_size=HASH_BYTES)
    for actor, counter, _ in obj.clock.entries:
        h.update(len(actor).to_bytes(1, "big") + actor + counter.to_bytes(8, "big"))
    h.update(b"|")
    for dot, content in obj.siblings:
        h.update(len(dot.actor).to_bytes(1, "big") + dot.actor + dot.counter.to_bytes(8, "big"))
        h.update(content_digest(content))
    return h.digest()


def content_digest(content: Content) -> bytes:
    fields = objects.content_fields(content)
    return hashlib.blake2b(msgpack.packb(fields, use_bin_type=True), digest_size=HASH_BYTES).digest()


def key_hash(storage_key: bytes, version: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(storage_key + version, digest_size=HASH_BYTES).digest(), "big")


def segment_of(storage_key: bytes, segments: int) -> int:
    return (
        int.from_bytes(hashlib.blake2b(storage_key, digest_size=8, person=b"dynastore-seg").digest(), "big") % segments
    )


def level_sizes(segments: int, fanout: int = FANOUT) -> list[int]:
    """Node counts per level, root (1) first, leaves (segments) last."""
    sizes = [segments]
    while sizes[-1] > 1:
        sizes.append((sizes[-1] + fanout - 1) // fanout)
    return list(reversed(sizes))


@dataclass
class HashTree:
    """Leaves XORed from key hashes, and the levels above them made on demand.

    A tree of all-zero leaves (an empty partition) holds no leaf list at all: a node keeps a tree per
    partition and n_val, and at thousands of partitions the trees of partitions it holds nothing of
    would otherwise be most of its memory.
    """

    segments: int
    fanout: int = FANOUT
    # Empty: every leaf is zero.
    leaves: list[int] = field(default_factory=list)
    ready: bool = False
    _levels: list[list[bytes]] | None = None

    def __post_init__(self) -> None:
        assert self.segments >= 1 and self.fanout >= 2
        assert not self.leaves or len(self.leaves) == self.segments

    @property
    def depth(self) -> int:
        return len(level_sizes(self.segments, self.fanout))

    def toggle(self, segment: int, value: int) -> None:
        """XOR one key's contribution in or out of its leaf."""
        assert 0 <= segment < self.segments
        if not self.leaves:
            self.leaves = [0] * self.segments
        self.leaves[segment] ^= value
        self._levels = None

    def clear(self) -> None:
        self.leaves = []
        self._levels = None
        self.ready = False

    def _build(self) -> list[list[bytes]]:
        if self._levels is None:
            levels = [[leaf.to_bytes(HASH_BYTES, "big") for leaf in self.leaves]]
            while len(levels[-1]) > 1:
                below = levels[-1]
                above = []
                for start in range(0, len(below), self.fanout):
                    children = below[start : start + self.fanout]
                    if all(c == _ZERO for c in children):
                        above.append(_ZERO)
                    else:
                        above.append(hashlib.blake2b(b"".join(children), digest_size=HASH_BYTES).digest())
                levels.append(above)
            self._levels = list(reversed(levels))
        return self._levels

    def hashes(self, level: int, indexes: list[int]) -> list[bytes]:
        if not self.leaves:
            return [_ZERO for _ in indexes]
        nodes = self._build()[level]
        return [nodes[i] if 0 <= i < len(nodes) else _ZERO for i in indexes]

    def root(self) -> bytes:
        if not self.leaves:
            return _ZERO
        return self._build()[0][0]

    def children(self, level: int, index: int) -> list[int]:
        """Indexes at level+1 of the children of node `index` at `level`."""
        sizes = level_sizes(self.segments, self.fanout)
        if level + 1 >= len(sizes):
            return []
        start = index * self.fanout
        return list(range(start, min(start + self.fanout, sizes[level + 1])))


def differing(indexes: list[int], mine: list[bytes], theirs: list[bytes]) -> list[int]:
    return [i for i, a, b in zip(indexes, mine, theirs, strict=True) if a != b]
