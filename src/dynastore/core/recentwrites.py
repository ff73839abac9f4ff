"""The client writes a node applied recently, by the id their origin gave them: what lets a retried
forwarded write keep its identity, so that it is never applied twice.

Theory of operation
-------------------
A node that hands a client's write to a coordinator (a forwarded put) gives it a random write id,
which every retry of it keeps, at whichever coordinator. A node that applies the write remembers the
id with the key and the dot the write was given: the coordinator that drew the dot, and every replica
it sent the new version to (ReplicaPut carries both). When the same write comes to be coordinated
again (the network delivered it twice, or the origin lost the reply to a broken link and retried, at
the first coordinator or at a second one that holds the first attempt's version), the node finds the
id, sees that its copy already holds that dot, and writes nothing new: it sends what it holds to the
write's targets once more and answers after the same quorums, with the context the first attempt
returns (the client's context plus that dot). So a retry never adds a sibling of its own, and its
answer still means what a first attempt's means: the version is durable on W nodes.

What is not remembered (by a node that restarted, an entry expired or pushed out by newer ones, a
second coordinator that never received the first attempt's version) is written as a new version: at
worst a spurious sibling, never a lost write. Entries are bounded in count (`recent_writes_max`) and
live twice as long as a forwarded write may be retried (its origin gives up after at most 10 request
timeouts). An entry holds the id, a digest of the key and a dot (an actor of at most 255 bytes),
under 400 bytes, so the memory is bounded in bytes as well. Pure: time comes in as `now_ms`.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

from dynastore.core.versions import Dot

WRITE_ID_BYTES = 16


@dataclass(frozen=True, slots=True)
class _Entry:
    key_digest: bytes
    dot: Dot
    expires_ms: int


def _digest(skey: bytes) -> bytes:
    return hashlib.blake2b(skey, digest_size=16).digest()


class RecentWrites:
    """Write id -> (key, dot) of the writes applied here lately; oldest first, bounded (see above)."""

    def __init__(self, count_max: int, ttl_ms: int) -> None:
        assert count_max >= 0 and ttl_ms >= 1, (count_max, ttl_ms)
        self._count_max = count_max
        self._ttl_ms = ttl_ms
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def remember(self, write_id: bytes, skey: bytes, dot: Dot, now_ms: int) -> None:
        """Write `write_id` of key `skey` is applied here as `dot` (an empty id: a write nobody retries)."""
        if not write_id or self._count_max == 0:
            return
        self._expire(now_ms)
        self._entries.pop(write_id, None)
        self._entries[write_id] = _Entry(_digest(skey), dot, now_ms + self._ttl_ms)
        while len(self._entries) > self._count_max:
            self._entries.popitem(last=False)

    def find(self, write_id: bytes, skey: bytes, now_ms: int) -> Dot | None:
        """The dot write `write_id` of key `skey` was applied here as, if it is remembered. An id
        remembered for another key is not this write (ids are random: only a broken peer reuses one)."""
        if not write_id:
            return None
        self._expire(now_ms)
        entry = self._entries.get(write_id)
        if entry is None or entry.key_digest != _digest(skey):
            return None
        return entry.dot

    def _expire(self, now_ms: int) -> None:
        # Entries are kept in the order they were last remembered, so the oldest expire first.
        while self._entries:
            first = next(iter(self._entries.values()))
            if first.expires_ms > now_ms:
                return
            self._entries.popitem(last=False)
