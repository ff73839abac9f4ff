"""Stored objects: the siblings of a key (value, content type, user metadata, secondary index entries,
links, last-modified, deleted flag), their byte encoding for disk and wire, and the rules of buckets
that keep one value per key.

An object on a replica is a `Versioned[Content]` (see versions.py): a clock and the live siblings,
each with its dot. A delete is a write of a sibling with `deleted=True` (a tombstone): it takes part
in merges like any value, so a replica that missed the delete cannot bring the old value back.
Decoding validates everything; a malformed object from disk or from a peer raises ObjectError and is
never half-applied.

One value per key
-----------------
A bucket with `last_write_wins`, or with `allow_mult` off, keeps one sibling per key: wherever a
write or a merge would leave several, only the newest stays (the latest last-modified time, then the
greatest dot), and the clock goes on covering all of them. The two differ in what a write replaces:
a last-write-wins write replaces whatever its coordinator holds, whatever the client's context says;
with allow_mult off a write replaces what its context covers, and only values concurrent with it are
left for the timestamps to decide (tombstones included: a delete concurrent with a write is decided
the same way).

Which value is kept must not depend on the order in which copies meet, or replicas would settle on
different values. One invariant makes it so: the value a copy keeps is newer than every version its
clock covers. A copy is then just its clock plus the newest version the clock covers, and a merge is
the union of the clocks with the newer of the two values, a join whatever the order (the newer value
is never dropped by versions.merge: the other clock could cover it only by keeping something newer).
A write keeps the invariant in two ways. Its last-modified time is raised just past that of every
value it replaces, so a coordinator whose clock runs behind cannot make a value that has seen another
lose to it. And it replaces only values its coordinator holds: a version that the client's context
names but the coordinator lacks has a timestamp nobody here knows, so it stays concurrent with the
write and the timestamps decide (as they would have had the context not named it); for the same
reason its dot's clock entry, which claims every earlier version of its actor, comes from a new actor
if this copy lacks one of them (actors.py, `trust_context`). Objects written while a bucket kept
siblings may not hold the invariant; they are resolved the same way, and their copies still converge
(a merge only ever adds to what a copy knows), though the value kept may then depend on the order the
copies met in.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import msgpack

from dynastore.core.versions import ACTOR_BYTES_MAX, COUNTER_MAX, Clock, Context, Dot, Versioned, keep_only, update

# Format 1: a sibling is [actor, counter, value, content type, charset, encoding, usermeta,
# last-modified, deleted]. Format 2 adds the sibling's index entries and links (two more fields). An
# object none of whose siblings has either is still written as format 1, so that every object stored
# before indexes existed keeps its bytes (and its anti-entropy summary); both are read.
FORMAT_VERSION = 2
FORMAT_PLAIN = 1
# What a stored copy (data or hint) is on disk: this byte, a checksum of the payload, the payload (the
# object's wire bytes). Copies written before checksums are the bare payload, a msgpack array of three
# (0x93): read unchecked, and rewritten with a checksum by the next write or the scrub.
STORED_CHECKED = 0x01
STORED_LEGACY = 0x93
CHECKSUM_BYTES = 8
K = TypeVar("K")
V = TypeVar("V")


class ObjectError(ValueError):
    """Bytes that should hold an object do not."""


class CorruptCopy(ObjectError):
    """A stored copy fails its checksum or does not decode: the disk or something beside dynastore
    changed it. It is treated as missing, never served or sent."""


@dataclass(frozen=True, slots=True, order=True)
class Content:
    """One sibling's payload and metadata, as a Riak client sees it."""

    value: bytes
    content_type: str = "application/octet-stream"
    charset: str | None = None
    content_encoding: str | None = None
    usermeta: tuple[tuple[str, str], ...] = ()
    last_modified_us: int = 0
    deleted: bool = False
    # Secondary index entries (field name with its `_bin`/`_int` suffix, term; an `_int` term is its
    # decimal text), sorted and without duplicates, and links (bucket, key, tag) in the order given
    # (core/indexes.py validates both).
    indexes: tuple[tuple[str, bytes], ...] = ()
    links: tuple[tuple[bytes, bytes, bytes], ...] = ()

    @property
    def size_bytes(self) -> int:
        meta = sum(len(k) + len(v) for k, v in self.usermeta)
        extra = sum(len(f) + len(t) for f, t in self.indexes) + sum(len(b) + len(k) + len(t) for b, k, t in self.links)
        return len(self.value) + len(self.content_type) + meta + extra

    @property
    def extended(self) -> bool:
        """Whether this sibling needs format 2 (it has index entries or links)."""
        return bool(self.indexes or self.links)


Object = Versioned[Content]


def check_content(c: Content) -> str | None:
    """Why a client's content cannot be stored (a reason fit for a 400), or None when it can."""
    texts = [("content type", c.content_type), ("charset", c.charset), ("content encoding", c.content_encoding)]
    texts += [("metadata", text) for pair in c.usermeta for text in pair]
    for what, text in texts:
        if text is None:
            continue
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return f"{what} is not valid UTF-8 text"
    return None


def tombstone(now_us: int) -> Content:
    return Content(b"", "application/octet-stream", None, None, (), now_us, True)


# An entry holds a dot (an actor of at most 255 bytes) and a short tag: 8,192 of them are under 3 MiB.
@functools.lru_cache(maxsize=8192)
def vtag(dot: Dot) -> str:
    """A short, stable tag naming one sibling (Riak's `vtag`); derived from the sibling's dot."""
    digest = hashlib.md5(dot.actor + dot.counter.to_bytes(8, "big"), usedforsecurity=False).digest()
    return base64.b32encode(digest[:10]).decode().rstrip("=").lower()


def size_bytes(obj: Object | None) -> int:
    """What the siblings of an object weigh together (values, types, metadata)."""
    return 0 if obj is None else sum(content.size_bytes for _, content in obj.siblings)


def live(obj: Object) -> list[tuple[Dot, Content]]:
    """The siblings that are not tombstones."""
    return [(dot, c) for dot, c in obj.siblings if not c.deleted]


def is_tombstone(obj: Object) -> bool:
    """True when the object holds only deletions (a GET answers 404 with a context)."""
    return bool(obj.siblings) and all(c.deleted for _, c in obj.siblings)


def newest(siblings: list[tuple[Dot, Content]]) -> tuple[Dot, Content]:
    """The value a bucket keeping one value keeps: the latest timestamp, then the greatest dot."""
    return max(siblings, key=lambda pair: (pair[1].last_modified_us, pair[0]))


def resolve(obj: Object) -> Object:
    """One value: the newest sibling, with the whole clock (see "One value per key" above)."""
    return keep_only(obj, newest)


def update_one(state: Object | None, context: Context, dot: Dot, content: Content, now_ms: int, *, lww: bool) -> Object:
    """A coordinator's new state of a key in a bucket keeping one value, once the client's write (or
    delete) of `content` with `context` is applied as `dot`.

    `state` is everything the coordinator holds of the key. The write replaces all of it when `lww`,
    else the siblings `context` covers; it is dated just past every value it replaces, and what else
    remains is resolved to the newest. The clock is `state`'s, advanced by `dot`: versions the context
    names beyond it stay concurrent with the write (the module docstring says why).
    """
    current: Object = state if state is not None else Versioned(Clock(), ())
    replaced = [(d, c) for d, c in current.siblings if lww or context.covers(d)]
    floor_us = max((c.last_modified_us + 1 for _, c in replaced), default=0)
    if content.last_modified_us < floor_us:
        content = dataclasses.replace(content, last_modified_us=floor_us)
    held = Context((), frozenset(d for d, _ in replaced))
    return resolve(update(current, held, dot, content, now_ms))


def same(a: Object, b: Object) -> bool:
    """True when two copies hold the same siblings under the same counters (clock timestamps aside)."""
    return a.clock.same_counters(b.clock) and a.siblings == b.siblings


# --- Encoding ------------------------------------------------------------------------------------


def content_fields(c: Content, extended: bool | None = None) -> list[Any]:
    """A sibling's fields as format 1 writes them, with its index entries and links after them when
    `extended` (by default: when it has any, so a sibling without them has the fields it always had)."""
    fields: list[Any] = [
        c.value,
        c.content_type,
        c.charset,
        c.content_encoding,
        [list(pair) for pair in c.usermeta],
        c.last_modified_us,
        c.deleted,
    ]
    if c.extended if extended is None else extended:
        fields.append([[f, t] for f, t in c.indexes])
        fields.append([list(link) for link in c.links])
    return fields


def to_wire(obj: Object) -> list[Any]:
    """A msgpack-ready form, used inside inter-node messages."""
    extended = any(content.extended for _, content in obj.siblings)
    return [
        FORMAT_VERSION if extended else FORMAT_PLAIN,
        [[a, c, ts] for a, c, ts in obj.clock.entries],
        [[d.actor, d.counter, *content_fields(content, extended)] for d, content in obj.siblings],
    ]


# Objects are immutable, and hot keys are decoded and encoded over and over (every read decodes the
# stored bytes, every replica answer encodes them again). Two caches make that free: bytes -> object
# for decoding, and object -> bytes (by identity, holding the object so its id stays its own) for
# encoding. Each is bounded by the bytes of the objects it holds, not by their number (a thousand
# 1 MiB objects would be a gigabyte), and an object larger than a tenth of the bound is not kept.
# They change no result, only the work done.
CACHE_BYTES_MAX = 32 * 1024 * 1024
_CACHE_ITEM_BYTES_MAX = CACHE_BYTES_MAX // 10


class _ByteBoundedCache(Generic[K, V]):
    """Least recently used entries go first once the held bytes pass the bound."""

    def __init__(self, bytes_max: int) -> None:
        self.bytes_max = bytes_max
        self.held = 0
        self._entries: OrderedDict[K, tuple[V, int]] = OrderedDict()

    def get(self, key: K) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry[0]

    def put(self, key: K, value: V, size: int) -> None:
        if size > _CACHE_ITEM_BYTES_MAX:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self.held -= old[1]
        self._entries[key] = (value, size)
        self.held += size
        while self.held > self.bytes_max:
            _, (_, dropped) = self._entries.popitem(last=False)
            self.held -= dropped

    def clear(self) -> None:
        self._entries.clear()
        self.held = 0


_encoded: _ByteBoundedCache[int, tuple[Object, bytes]] = _ByteBoundedCache(CACHE_BYTES_MAX)
_decoded: _ByteBoundedCache[bytes, Object] = _ByteBoundedCache(CACHE_BYTES_MAX)


def _remember(obj: Object, raw: bytes) -> None:
    _encoded.put(id(obj), (obj, raw), len(raw))


def encode(obj: Object) -> bytes:
    known = _encoded.get(id(obj))
    if known is not None and known[0] is obj:
        return known[1]
    raw: bytes = msgpack.packb(to_wire(obj), use_bin_type=True)
    _remember(obj, raw)
    return raw


def decode(raw: bytes) -> Object:
    """Validate and rebuild an object from its bytes; raises ObjectError for anything malformed."""
    raw = bytes(raw)
    known = _decoded.get(raw)
    if known is not None:
        return known
    try:
        data = msgpack.unpackb(raw, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:
        raise ObjectError(f"undecodable object: {exc}") from None
    obj = from_wire(data)
    _decoded.put(raw, obj, len(raw))
    _remember(obj, raw)
    return obj


def _checksum(payload: bytes) -> bytes:
    return hashlib.blake2b(payload, digest_size=CHECKSUM_BYTES, person=b"dynastore-copy").digest()


def encode_stored(obj: Object) -> bytes:
    """A copy as it is stored: checksummed, so that a flipped byte anywhere in it is found on reading."""
    payload = encode(obj)
    return bytes((STORED_CHECKED,)) + _checksum(payload) + payload


def decode_stored(raw: bytes) -> Object:
    """The object of a stored copy; raises CorruptCopy when it fails its checksum or does not decode."""
    raw = bytes(raw)
    known = _decoded.get(raw)
    if known is not None:
        return known
    if not raw:
        raise CorruptCopy("empty stored copy")
    if raw[0] == STORED_CHECKED:
        payload = raw[1 + CHECKSUM_BYTES :]
        if _checksum(payload) != raw[1 : 1 + CHECKSUM_BYTES]:
            raise CorruptCopy("checksum mismatch")
    elif raw[0] == STORED_LEGACY:
        payload = raw
    else:
        raise CorruptCopy(f"unknown stored format 0x{raw[0]:02x}")
    try:
        obj = decode(payload)
    except ObjectError as exc:
        raise CorruptCopy(str(exc)) from None
    if payload is not raw:
        _decoded.put(raw, obj, len(raw))
    return obj


def is_checked(raw: bytes) -> bool:
    """Whether a stored copy carries a checksum (copies written before checksums do not)."""
    return bool(raw) and raw[0] == STORED_CHECKED


def cache_bytes() -> int:
    """What the two caches hold now (for /stats and the tests that bound memory)."""
    return _encoded.held + _decoded.held


def _need(cond: bool, what: str) -> None:
    if not cond:
        raise ObjectError(what)


def _is_int(x: object, lo: int, hi: int) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and lo <= x <= hi


def from_wire(data: Any) -> Object:
    """Validate and rebuild an object; raises ObjectError for anything malformed."""
    _need(isinstance(data, list) and len(data) == 3, "object must be a 3-element list")
    version, raw_clock, raw_siblings = data
    _need(version in (FORMAT_PLAIN, FORMAT_VERSION), f"unknown object format {version!r}")
    width = 9 if version == FORMAT_PLAIN else 11
    _need(isinstance(raw_clock, list) and isinstance(raw_siblings, list), "malformed object")
    entries: dict[bytes, tuple[int, int]] = {}
    for entry in raw_clock:
        _need(isinstance(entry, list) and len(entry) == 3, "malformed clock entry")
        actor, counter, ts = entry
        _need(isinstance(actor, bytes) and 0 < len(actor) <= ACTOR_BYTES_MAX, "malformed actor")
        _need(_is_int(counter, 1, COUNTER_MAX) and _is_int(ts, 0, COUNTER_MAX), "malformed counter")
        _need(actor not in entries, "duplicate clock entry")
        entries[actor] = (counter, ts)
    clock = Clock.from_mapping(entries)
    siblings: dict[Dot, Content] = {}
    for sib in raw_siblings:
        _need(isinstance(sib, list) and len(sib) == width, "malformed sibling")
        actor, counter, value, ctype, charset, encoding, meta, modified, deleted = sib[:9]
        index_entries, links = _extras(sib[9:])
        _need(isinstance(actor, bytes) and 0 < len(actor) <= ACTOR_BYTES_MAX, "malformed sibling actor")
        _need(_is_int(counter, 1, COUNTER_MAX), "malformed sibling counter")
        _need(isinstance(value, bytes) and isinstance(ctype, str), "malformed sibling value")
        _need(charset is None or isinstance(charset, str), "malformed charset")
        _need(encoding is None or isinstance(encoding, str), "malformed content encoding")
        _need(isinstance(meta, list), "malformed usermeta")
        pairs: list[tuple[str, str]] = []
        for pair in meta:
            _need(isinstance(pair, list) and len(pair) == 2, "malformed usermeta entry")
            k, v = pair
            _need(isinstance(k, str) and isinstance(v, str), "malformed usermeta entry")
            pairs.append((k, v))
        _need(_is_int(modified, 0, COUNTER_MAX) and isinstance(deleted, bool), "malformed sibling flags")
        dot = Dot(actor, counter)
        _need(dot not in siblings, "duplicate sibling dot")
        _need(clock.covers(dot), "sibling dot not covered by the clock")
        siblings[dot] = Content(value, ctype, charset, encoding, tuple(pairs), modified, deleted, index_entries, links)
    return Versioned(clock, tuple(sorted(siblings.items(), key=lambda pair: pair[0])))


def _extras(raw: list[Any]) -> tuple[tuple[tuple[str, bytes], ...], tuple[tuple[bytes, bytes, bytes], ...]]:
    """A format-2 sibling's index entries and links (their shapes; their limits are the writer's)."""
    if not raw:
        return (), ()
    raw_entries, raw_links = raw
    _need(isinstance(raw_entries, list) and isinstance(raw_links, list), "malformed index entries or links")
    entries: list[tuple[str, bytes]] = []
    for entry in raw_entries:
        _need(isinstance(entry, list) and len(entry) == 2, "malformed index entry")
        name, term = entry
        _need(isinstance(name, str) and isinstance(term, bytes), "malformed index entry")
        entries.append((name, term))
    _need(entries == sorted(set(entries)), "index entries must be sorted and distinct")
    links: list[tuple[bytes, bytes, bytes]] = []
    for link in raw_links:
        _need(isinstance(link, list) and len(link) == 3 and all(isinstance(x, bytes) for x in link), "malformed link")
        links.append((link[0], link[1], link[2]))
    return tuple(entries), tuple(links)
