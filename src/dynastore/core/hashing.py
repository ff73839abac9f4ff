"""Where a key lives: MD5 of the (bucket, key) pair, as a position on a 128-bit ring.

The encoding of the pair is unambiguous (the bucket is length-prefixed), so ("ab", "c") and
("a", "bc") never share a position. This module must stay free of any notion of nodes.
"""

from __future__ import annotations

import functools
import hashlib

RING_BITS = 128
RING_TOP = 1 << RING_BITS


# A request computes its key's position several times (placement, stored key, anti-entropy); MD5 is
# cheap but not free, and the answer never changes. An entry holds a bucket and a key, at most about
# 4.6 KiB at the default name limits: 4,096 entries are under 20 MiB.
@functools.lru_cache(maxsize=4096)
def key_position(bucket: bytes, key: bytes) -> int:
    """The 128-bit ring position of a key."""
    digest = hashlib.md5(len(bucket).to_bytes(4, "big") + bucket + key, usedforsecurity=False).digest()
    return int.from_bytes(digest, "big")


def partition_of(position: int, ring_size: int) -> int:
    """The index of the equal-sized partition that holds a ring position.

    Partition i covers [i * 2^128 / Q, (i + 1) * 2^128 / Q).
    """
    assert 0 <= position < RING_TOP, position
    assert ring_size > 0 and ring_size & (ring_size - 1) == 0, ring_size
    return position >> (RING_BITS - (ring_size.bit_length() - 1))


def key_partition(bucket: bytes, key: bytes, ring_size: int) -> int:
    return partition_of(key_position(bucket, key), ring_size)
