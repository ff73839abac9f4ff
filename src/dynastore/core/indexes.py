"""Secondary indexes (Riak's 2i) and links: what an entry may be, how a replica keeps its index, and
one replica's scan of it for a query.

An object's siblings each carry their own index entries and links (objects.Content). A key is
indexed under the union of its *live* siblings' entries: a tombstone indexes nothing, and once
siblings are resolved only the survivor's entries remain. Each replica keeps, in the `index` area,
one record per (partition, bucket, field, term, key), written in the same batch as the data it
describes (`on_write`, called wherever the node's data changes), so the index never disagrees with
the data after a crash. Handoff, anti-entropy, read repair and hinted handoff all store objects
through the same path, so the receiving side builds the entries of what it stores; nothing moves
index records between nodes.

Layout of the `index` area (all of a partition in one contiguous range, like the data):

- entry:   `partition (4) | 0x00 | bucket length (2) | bucket | field length (1) | field | term | key`
  -> b"". An `_int` term is 8 bytes, the integer plus 2**63, big-endian, so integers sort as numbers;
  a `_bin` term is its bytes with 0x00 written as 0x00 0xFF, ended by 0x00 0x00, so that terms sort
  bytewise and the key after them is found again.
- reverse: `partition (4) | 0x01 | bucket length (2) | bucket | key` -> the key's entries (msgpack),
  present only for keys that have any: what a write or delete of the key removes, even when the old
  copy cannot be decoded (a corrupt copy discarded).

A *position* orders query results: (sort term, key), where an `_int` sort term is the 8-byte form
above and a `_bin` one the term itself; `$key` is (key, key) and `$bucket` (b"", key). Python's
tuple order on positions is the index's order, so a coordinator merges replicas' answers with it.

This module is pure: it touches storage only through the host's staged reads and writes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Literal, Protocol

import msgpack

from dynastore.core import keys, objects
from dynastore.core.objects import Object
from dynastore.settings import Settings
from dynastore.storage.base import truncated

AREA = "index"
# The layout above; a data directory of another version is refused (newer) or built (see node.py).
INDEX_FORMAT = 1
META_INDEX_FORMAT = b"index_format"
BIN = "_bin"
INT = "_int"
BUCKET_INDEX = "$bucket"
KEY_INDEX = "$key"
SPECIAL = (BUCKET_INDEX, KEY_INDEX)
INT_MIN = -(1 << 63)
INT_MAX = (1 << 63) - 1
_INT_OFFSET = 1 << 63
_ENTRY = b"\x00"
_REVERSE = b"\x01"
_FIELD = re.compile(r"[a-z0-9_.\-]+(_bin|_int)")
_INTEGER = re.compile(r"-?[0-9]+")

Entry = tuple[str, bytes]
Link = tuple[bytes, bytes, bytes]
Position = tuple[bytes, bytes]


class IndexProblem(ValueError):
    """An index entry, a link or a query that cannot be accepted; the message is fit for a 400."""


# --- What an entry, a link and a query may be --------------------------------------------------------


def field_problem(settings: Settings, name: str) -> str | None:
    """Why `name` cannot name an index field an object carries (None when it can)."""
    if len(name.encode()) > settings.index_name_bytes_max:
        return f"index name {name[:64]!r}... is longer than {settings.index_name_bytes_max} bytes"
    if _FIELD.fullmatch(name) is None:
        return f"index name {name[:64]!r} must be lowercase letters, digits, '_', '.' or '-' ending in _bin or _int"
    return None


def parse_int(text: str) -> int:
    """An `_int` term from its decimal text: ASCII digits with an optional minus, signed 64-bit."""
    stripped = text.strip()
    if _INTEGER.fullmatch(stripped) is None:
        raise IndexProblem(f"an _int index term must be an integer, got {text[:64]!r}")
    value = int(stripped)
    if not INT_MIN <= value <= INT_MAX:
        raise IndexProblem(f"an _int index term must be a signed 64-bit integer, got {text[:64]!r}")
    return value


def entry(settings: Settings, name: str, term: bytes | str | int) -> Entry:
    """One index entry as stored: the field lowercased and checked, an `_int` term in canonical
    decimal text, a `_bin` term as bytes (text as UTF-8). Raises IndexProblem."""
    field = name.lower()
    problem = field_problem(settings, field)
    if problem is not None:
        raise IndexProblem(problem)
    if field.endswith(INT):
        if isinstance(term, int) and not isinstance(term, bool):
            value = term
            if not INT_MIN <= value <= INT_MAX:
                raise IndexProblem(f"an _int index term must be a signed 64-bit integer, got {value}")
        else:
            value = parse_int(term.decode("utf-8", "replace") if isinstance(term, bytes) else str(term))
        return field, str(value).encode()
    raw = term.encode("utf-8") if isinstance(term, str) else term
    if not isinstance(raw, bytes):
        raise IndexProblem(f"a _bin index term must be text, got {type(term).__name__}")
    if not raw:
        raise IndexProblem(f"index {field}: an index term may not be empty")
    if len(raw) > settings.index_term_bytes_max:
        raise IndexProblem(f"index {field}: a term is longer than {settings.index_term_bytes_max} bytes")
    return field, raw


def normalised(settings: Settings, given: Iterable[tuple[str, bytes | str | int]]) -> tuple[Entry, ...]:
    """A sibling's entries, checked, sorted and without duplicates (as Riak keeps them)."""
    found = sorted({entry(settings, name, term) for name, term in given})
    if len(found) > settings.index_entries_max:
        raise IndexProblem(f"{len(found)} index entries; an object may carry {settings.index_entries_max}")
    return tuple(found)


def link(settings: Settings, bucket: bytes, key: bytes, tag: bytes) -> Link:
    """A link, checked: a bucket and key as names go, a tag as long as a key at most."""
    problem = keys.name_problem(settings, bucket, key)
    if problem is not None:
        raise IndexProblem(f"a link's target: {problem}")
    if len(tag) > settings.key_bytes_max:
        raise IndexProblem(f"a link's riaktag is longer than {settings.key_bytes_max} bytes")
    return bucket, key, tag


def content_problem(settings: Settings, content: objects.Content) -> str | None:
    """Why a sibling's entries or links break the rules a client's write must keep (None: they keep
    them). A write from any API, or forwarded by a peer, is checked with this before it is applied."""
    try:
        if normalised(settings, content.indexes) != content.indexes:
            return "index entries must be sorted, distinct and in canonical form"
        if len(content.links) > settings.links_max:
            return f"{len(content.links)} links; an object may carry {settings.links_max}"
        for bucket, key, tag in content.links:
            link(settings, bucket, key, tag)
    except IndexProblem as exc:
        return str(exc)
    return None


def sort_term(field: str, term: bytes) -> bytes:
    """The term of a stored entry (or a query bound in stored form) as positions order it."""
    if field.endswith(INT):
        return (int(term) + _INT_OFFSET).to_bytes(8, "big")
    return term


def term_text(field: str, term: bytes) -> str | int:
    """A position's sort term as a client is shown it: an integer, or the term's text."""
    if field.endswith(INT):
        return int.from_bytes(term, "big") - _INT_OFFSET
    return term.decode("utf-8", "replace")


# --- An object's entries, and keeping the index in step with the data ----------------------------------


def object_entries(obj: Object | None) -> frozenset[Entry]:
    """What a key is indexed under: the union of its live siblings' entries (none for a tombstone)."""
    if obj is None:
        return frozenset()
    found: set[Entry] = set()
    for _, content in obj.siblings:
        if not content.deleted:
            found.update(content.indexes)
    return frozenset(found)


def _escape(term: bytes) -> bytes:
    return term.replace(b"\x00", b"\x00\xff") + b"\x00\x00"


def _encoded_term(field: str, sort: bytes) -> bytes:
    return sort if field.endswith(INT) else _escape(sort)


def field_prefix(partition: int, bucket: bytes, field: str) -> bytes:
    name = field.encode()
    assert len(name) < 256, field
    return (
        keys.partition_prefix(partition)
        + _ENTRY
        + len(bucket).to_bytes(keys.BUCKET_LEN_BYTES, "big")
        + bucket
        + bytes([len(name)])
        + name
    )


def entry_key(skey: bytes, field: str, term: bytes) -> bytes:
    parsed = keys.decode(skey)
    return (
        field_prefix(parsed.partition, parsed.bucket, field) + _encoded_term(field, sort_term(field, term)) + parsed.key
    )


def reverse_key(skey: bytes) -> bytes:
    return skey[: keys.PARTITION_BYTES] + _REVERSE + skey[keys.PARTITION_BYTES :]


def _decode_entries(raw: bytes) -> frozenset[Entry]:
    data = msgpack.unpackb(raw, raw=False, use_list=True)
    return frozenset((str(name), bytes(term)) for name, term in data)


class IndexHost(Protocol):
    """What the index needs of its node: the staged store's reads and writes."""

    def _get(self, area: str, key: bytes) -> bytes | None: ...

    def _put(self, area: str, key: bytes, value: bytes | None) -> None: ...


def on_write(host: IndexHost, skey: bytes, obj: Object | None, previous: Object | Literal[True] | None = True) -> None:
    """Bring the index of `skey` in step with its data becoming `obj` (None: deleted). `previous` is
    what the data held (None: nothing), True when unknown: the reverse record says then. The index is
    written with the data, so when neither the old object nor the new one has entries there is
    nothing to read or write (the common case costs no lookup)."""
    new = object_entries(obj)
    if previous is not True and not new and not object_entries(previous):
        return
    rkey = reverse_key(skey)
    raw = host._get(AREA, rkey)
    old = frozenset() if raw is None else _decode_entries(raw)
    if old == new:
        return
    for field, term in old - new:
        host._put(AREA, entry_key(skey, field, term), None)
    for field, term in new - old:
        host._put(AREA, entry_key(skey, field, term), b"")
    host._put(AREA, rkey, msgpack.packb(sorted([f, t] for f, t in new), use_bin_type=True) if new else None)


# --- One replica's scan for a query --------------------------------------------------------------------


class ScanHost(Protocol):
    """What a replica's scan reads: the staged store, and the decoding of a stored copy."""

    def _scan(
        self, area: str, start: bytes, end: bytes | None, limit: int, bytes_max: int | None = None
    ) -> list[tuple[bytes, bytes]]: ...

    def _decode_copy(self, area: str, key: bytes, raw: bytes) -> Object | None: ...


def query_problem(settings: Settings, field: str, low: bytes, high: bytes) -> str | None:
    """Why a query of `field` over sort terms [low, high] is malformed (None: it is not)."""
    if field not in SPECIAL:
        problem = field_problem(settings, field)
        if problem is not None:
            return problem
        if field.endswith(INT) and (len(low) != 8 or len(high) != 8):
            return "an _int query's bounds are 8-byte sort terms"
    longest = max(settings.index_term_bytes_max, settings.key_bytes_max)
    if len(low) > longest or len(high) > longest:
        return "a query bound longer than any term"
    return None


def scan(
    host: ScanHost,
    partition: int,
    bucket: bytes,
    field: str,
    low: bytes,
    high: bytes,
    after: Position | None,
    limit: int,
    bytes_max: int,
) -> tuple[list[Position], Position | None, bool]:
    """The positions of `bucket`'s keys in `partition` whose entries of `field` lie in [low, high]
    (sort terms, inclusive) and after `after`, in order: at most `limit`, reading at most about
    `bytes_max`. Also where the scan stopped (the last position read, None when none was) and
    whether the partition's range is done."""
    assert limit >= 1 and bytes_max >= 1, (limit, bytes_max)
    if low > high:
        return [], None, True
    if field in SPECIAL:
        return _scan_data(host, partition, bucket, field, low, high, after, limit, bytes_max)
    prefix = field_prefix(partition, bucket, field)
    start = prefix + _encoded_term(field, low)
    if after is not None:
        start = max(start, prefix + _encoded_term(field, after[0]) + after[1] + b"\x00")
    end = keys.prefix_end(prefix + _encoded_term(field, high))
    rows = host._scan(AREA, start, end, limit, bytes_max)
    found = [_position(field, raw[len(prefix) :]) for raw, _ in rows]
    return found, found[-1] if found else None, not truncated(rows, limit, bytes_max)


def _position(field: str, rest: bytes) -> Position:
    if field.endswith(INT):
        return rest[:8], rest[8:]
    out = bytearray()
    i = 0
    while True:
        if rest[i] == 0:
            if rest[i + 1] == 0:
                return bytes(out), rest[i + 2 :]
            out.append(0)
            i += 2
        else:
            out.append(rest[i])
            i += 1


def _scan_data(
    host: ScanHost,
    partition: int,
    bucket: bytes,
    field: str,
    low: bytes,
    high: bytes,
    after: Position | None,
    limit: int,
    bytes_max: int,
) -> tuple[list[Position], Position | None, bool]:
    """`$bucket` (every live key) and `$key` (the live keys in [low, high]) read the data itself."""
    prefix = keys.bucket_prefix(partition, bucket)
    by_key = field == KEY_INDEX
    start = prefix + low if by_key else prefix
    if after is not None:
        start = max(start, prefix + after[1] + b"\x00")
    end = prefix + high + b"\x00" if by_key else keys.prefix_end(prefix)
    rows = host._scan("data", start, end, limit, bytes_max)
    found: list[Position] = []
    for skey, raw in rows:
        obj = host._decode_copy("data", skey, raw)
        if obj is not None and not objects.is_tombstone(obj):
            key = skey[len(prefix) :]
            found.append((key if by_key else b"", key))
    last: Position | None = None
    if rows:
        key = rows[-1][0][len(prefix) :]
        last = (key if by_key else b"", key)
    return found, last, not truncated(rows, limit, bytes_max)


def bounds_of(field: str, low: str | bytes, high: str | bytes) -> tuple[bytes, bytes]:
    """A query's bounds, as a client gives them (text, or the bytes of a URL's segments), in sort-term
    form; raises IndexProblem."""
    if field == BUCKET_INDEX:
        return b"", b""
    if field.endswith(INT):
        texts = [t.decode("utf-8", "replace") if isinstance(t, bytes) else t for t in (low, high)]
        return sort_term(field, str(parse_int(texts[0])).encode()), sort_term(field, str(parse_int(texts[1])).encode())
    raw = [t.encode("utf-8") if isinstance(t, str) else t for t in (low, high)]
    return raw[0], raw[1]


def in_query(field: str, low: bytes, high: bytes, after: Position | None, position: Position) -> bool:
    """Whether a position lies in a query's range and after its continuation (a replica's answer
    must hold no other)."""
    if field != BUCKET_INDEX and not low <= position[0] <= high:
        return False
    if field == BUCKET_INDEX and position[0] != b"":
        return False
    if field == KEY_INDEX and position[0] != position[1]:
        return False
    return after is None or position > after


def positions_bytes(positions: Sequence[Position]) -> int:
    return sum(len(term) + len(key) for term, key in positions)
