"""How byte keys of any length are laid out in LMDB, whose keys must be 1 to 511 bytes, in the same order.

LMDB refuses the empty key and any key longer than its compile-time limit (511 bytes in the
published wheels), while dynastore's keys may be empty and reach several KiB (partition, bucket and
key, see core/keys.py). So every LMDB key of an area's database starts with one tag byte, which
makes the empty key storable, and:

- a key of at most `inline_max` bytes is a record of its own, under `TAG + key`;
- a longer key's first `inline_max + 1` bytes (its *head*) name a *group record* under `TAG + head`,
  whose value is the id (8 bytes) of a node in a tree kept in the area's second database, `long`;
  the rest of the key (its *tail*) is a path in that tree.

A node holds records `id + chunk + marker` in `long`. A tail of more than `chunk` bytes starts with
an *interior* record (`chunk` bytes of it, marker 0x01) whose value is the id of the node holding
the rest; the last `chunk` bytes or fewer of a tail are a *leaf* (marker 0x00) whose value is the
key's value. So a read or a write walks one record per `chunk` bytes of tail, each an O(log n) LMDB
lookup, whatever the number of keys sharing a head (a bucket with a long name); a write touches only
its own path.

Byte order is kept. An inline key has at most `inline_max` bytes, so it compares with a group's head
(`inline_max + 1` bytes) exactly as with every key of the group; two groups differ within their
heads. Inside a node, a leaf's chunk followed by 0x00 sorts before every longer key it is a prefix
of (an interior chunk followed by more, or a longer leaf), and chunks otherwise compare as the keys
do. A record of an area's database is a group record exactly when its LMDB key is `inline_max + 2`
bytes long.

Layout 1 (data directories written before) kept a group's members, all of them, in the group record
itself: every write to a group rewrote it. `encode_group` and `decode_group` read and write that
form, for the migration.

This module is pure: it must never touch LMDB or a file.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

TAG = b"\x00"
LAYOUT_VERSION = 2
ID_BYTES = 8
LEAF = b"\x00"
INTERIOR = b"\x01"
# Per member of a layout-1 group: suffix length, value length (both big-endian u32), suffix, value.
_MEMBER_HEADER = struct.Struct(">II")

Members = list[tuple[bytes, bytes]]


class LayoutError(ValueError):
    """A record does not decode: the file is corrupt or was written by something else."""


@dataclass(frozen=True, slots=True)
class Layout:
    """The mapping for one environment; `inline_max` is fixed when the environment is created, and
    `chunk` (the tail bytes per tree record) follows from LMDB's key limit."""

    inline_max: int
    chunk: int

    def __post_init__(self) -> None:
        assert self.inline_max >= 0 and self.chunk >= 1, (self.inline_max, self.chunk)

    @classmethod
    def for_limit(cls, inline_max: int, key_bytes_max: int) -> Layout:
        """The layout for LMDB keys of at most `key_bytes_max` bytes."""
        return cls(inline_max, key_bytes_max - ID_BYTES - 1)

    @property
    def record_key_bytes_max(self) -> int:
        return self.inline_max + 2

    def record_key(self, key: bytes) -> bytes:
        """The LMDB key of the record that holds `key`: its own, or its group's.

        It is also where a scan starting at `key` seeks: every record before it holds smaller keys only.
        """
        if len(key) <= self.inline_max:
            return TAG + key
        return TAG + key[: self.inline_max + 1]

    def is_group(self, record_key: bytes) -> bool:
        return len(record_key) == self.inline_max + 2

    def tail(self, key: bytes) -> bytes:
        """The part of a long key below its group record."""
        assert len(key) > self.inline_max, len(key)
        return key[self.inline_max + 1 :]

    def path(self, tail: bytes) -> tuple[list[bytes], bytes]:
        """The interior chunks a tail walks through, and its leaf chunk."""
        step = self.chunk
        interior = []
        while len(tail) > step:
            interior.append(tail[:step])
            tail = tail[step:]
        return interior, tail


def prefix_of(record_key: bytes) -> bytes:
    """The stored key (inline record) or the group's head (group record)."""
    return record_key[len(TAG) :]


def node_id(raw: bytes) -> bytes:
    """A node id as a record's value holds it."""
    if len(raw) != ID_BYTES:
        raise LayoutError(f"a tree node id of {len(raw)} bytes")
    return raw


def encode_group(members: Sequence[tuple[bytes, bytes]]) -> bytes:
    parts: list[bytes] = []
    for suffix, value in members:
        parts.append(_MEMBER_HEADER.pack(len(suffix), len(value)))
        parts.append(suffix)
        parts.append(value)
    return b"".join(parts)


def decode_group(blob: bytes) -> Members:
    members: Members = []
    offset = 0
    size = len(blob)
    while offset < size:
        if offset + _MEMBER_HEADER.size > size:
            raise LayoutError("group record ends inside a member header")
        suffix_len, value_len = _MEMBER_HEADER.unpack_from(blob, offset)
        offset += _MEMBER_HEADER.size
        if offset + suffix_len + value_len > size:
            raise LayoutError("group record ends inside a member")
        suffix = blob[offset : offset + suffix_len]
        offset += suffix_len
        members.append((suffix, blob[offset : offset + value_len]))
        offset += value_len
    if not members:
        raise LayoutError("group record is empty")
    return members
