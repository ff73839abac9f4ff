"""How byte keys of any length are laid out in LMDB, whose keys must be 1 to 511 bytes, in the same order.

LMDB refuses the empty key and any key longer than its compile-time limit (511 bytes in the
published wheels), while dynastore's keys may be empty and reach several KiB (partition, bucket and
key, see core/keys.py). So every LMDB key starts with one tag byte, which makes the empty key
storable, and:

- a key of at most `inline_max` bytes is a record of its own, under `TAG + key`;
- longer keys are grouped by their first `inline_max + 1` bytes into one *group record* under
  `TAG + key[:inline_max + 1]`, whose value lists the (suffix, value) pairs of its members in
  suffix order.

Byte order is kept. An inline key has at most `inline_max` bytes, so it compares with a group's
prefix (`inline_max + 1` bytes) exactly as it compares with every member of the group; two groups
differ within their prefixes; inside a group, members sort by suffix. A record is a group record
exactly when its LMDB key is `inline_max + 2` bytes long.

Groups only form when long keys share their first ~510 bytes, so they are small in practice; a
write to a group rewrites the whole group.

This module is pure: it must never touch LMDB or a file.
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Sequence
from dataclasses import dataclass

TAG = b"\x00"
# Per member: suffix length, value length (both big-endian u32), then the suffix and the value.
_MEMBER_HEADER = struct.Struct(">II")

Members = list[tuple[bytes, bytes]]


class LayoutError(ValueError):
    """A group record does not decode: the file is corrupt or was written by something else."""


@dataclass(frozen=True, slots=True)
class Layout:
    """The mapping for one environment; `inline_max` is fixed when the environment is created."""

    inline_max: int

    def __post_init__(self) -> None:
        assert self.inline_max >= 0, self.inline_max

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

    def suffix(self, key: bytes) -> bytes:
        """The part of a long key stored inside its group record."""
        assert len(key) > self.inline_max, len(key)
        return key[self.inline_max + 1 :]


def prefix_of(record_key: bytes) -> bytes:
    """The stored key (inline record) or the members' common prefix (group record)."""
    return record_key[len(TAG) :]


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


def with_member(members: Members, suffix: bytes, value: bytes) -> Members:
    """The members with `suffix` set to `value`, still in suffix order."""
    result = list(members)
    index = bisect.bisect_left(result, suffix, key=lambda member: member[0])
    if index < len(result) and result[index][0] == suffix:
        result[index] = (suffix, value)
    else:
        result.insert(index, (suffix, value))
    return result


def without_member(members: Members, suffix: bytes) -> Members:
    """The members without `suffix` (unchanged if it is absent)."""
    return [member for member in members if member[0] != suffix]
