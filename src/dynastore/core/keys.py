"""The byte layout of keys in a node's local store, and the one check of bucket and key names.

A stored key is `partition (4 bytes, big-endian) | bucket length (2 bytes) | bucket | key`, so that
every partition is one contiguous, ordered range (handoff, anti-entropy and key listing scan it in
order) and, inside a partition, every bucket is a contiguous sub-range.
"""

from __future__ import annotations

from dataclasses import dataclass

from dynastore.core import buckettypes
from dynastore.settings import Settings

PARTITION_BYTES = 4
BUCKET_LEN_BYTES = 2
BUCKET_BYTES_MAX = (1 << (8 * BUCKET_LEN_BYTES)) - 1


class KeyLayoutError(ValueError):
    """A stored key does not have the layout this module writes."""


@dataclass(frozen=True, slots=True)
class StorageKey:
    partition: int
    bucket: bytes
    key: bytes


def encode(partition: int, bucket: bytes, key: bytes) -> bytes:
    assert 0 <= partition < 1 << (8 * PARTITION_BYTES), partition
    assert len(bucket) <= BUCKET_BYTES_MAX, len(bucket)
    return partition.to_bytes(PARTITION_BYTES, "big") + len(bucket).to_bytes(BUCKET_LEN_BYTES, "big") + bucket + key


def decode(raw: bytes) -> StorageKey:
    header = PARTITION_BYTES + BUCKET_LEN_BYTES
    if len(raw) < header:
        raise KeyLayoutError("stored key shorter than its header")
    partition = int.from_bytes(raw[:PARTITION_BYTES], "big")
    blen = int.from_bytes(raw[PARTITION_BYTES:header], "big")
    if len(raw) < header + blen:
        raise KeyLayoutError("stored key shorter than its bucket")
    return StorageKey(partition, raw[header : header + blen], raw[header + blen :])


def describe(raw: bytes) -> str:
    """A stored key as an operator reads it in a log line: bucket/key (partition), bytes escaped."""
    try:
        parsed = decode(raw)
    except KeyLayoutError:
        return f"stored key {raw[:64]!r}"
    bucket = parsed.bucket.decode(errors="backslashreplace")[:128]
    key = parsed.key.decode(errors="backslashreplace")[:256]
    return f"{bucket}/{key} (partition {parsed.partition})"


def partition_prefix(partition: int) -> bytes:
    return partition.to_bytes(PARTITION_BYTES, "big")


def bucket_prefix(partition: int, bucket: bytes) -> bytes:
    return encode(partition, bucket, b"")


def prefix_end(prefix: bytes) -> bytes | None:
    """The smallest byte string greater than every string that starts with `prefix` (None: no bound)."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return None
    return trimmed[:-1] + bytes([trimmed[-1] + 1])


def stored_key_problem(settings: Settings, raw: bytes, ring_size: int) -> str | None:
    """Why `raw` is not a stored key this node could hold (a peer sent it), or None."""
    try:
        parsed = decode(raw)
    except KeyLayoutError as exc:
        return str(exc)
    if parsed.partition >= ring_size:
        return f"partition {parsed.partition} of a ring of {ring_size}"
    return name_problem(settings, parsed.bucket, parsed.key)


def name_problem(settings: Settings, bucket: bytes, key: bytes | None = None) -> str | None:
    """Why a bucket name (and a key, when given) cannot be used (a reason fit for a 400), or None.
    `bucket` is the node's name for it: a typed bucket's name carries its type (buckettypes.py)."""
    if buckettypes.is_typed(bucket):
        problem = buckettypes.internal_problem(bucket)
        if problem is not None:
            return problem
        bucket = buckettypes.split(bucket)[1]
    if not bucket or len(bucket) > settings.bucket_bytes_max:
        return f"bucket must be 1 to {settings.bucket_bytes_max} bytes"
    if key is not None and (not key or len(key) > settings.key_bytes_max):
        return f"key must be 1 to {settings.key_bytes_max} bytes"
    return None
