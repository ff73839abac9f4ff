"""Everything nodes say to each other, and what clients ask of a node, as frozen dataclasses.

Inter-node messages cross the wire as msgpack lists `[type code, field, field, ...]`. The codec is
driven by each dataclass's field annotations, and decoding validates every field: a peer that sends
a malformed message gets a PeerError (the shell logs it and drops the peer), never a crash and never a
half-built message. Client requests and responses never cross the node-to-node wire except inside
a forwarded put, which reuses the same codec.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from dynastore.core import objects
from dynastore.core.objects import Content, Object, ObjectError
from dynastore.core.versions import ACTOR_BYTES_MAX, COUNTER_MAX, Context, Dot

# 4: the handshake proves the key both ways and frames carry MACs; JoinReply carries the cluster key;
# the cluster state carries security metadata. 5: a message larger than a frame travels as fragments;
# ObjectsReply says how many of the asked keys it served; a listing goes a bounded step at a time.
# 6: anti-entropy summaries cover the siblings' values (merkle.SUMMARY_VERSION 2); a forwarded write
# may fail as insufficient_storage; a bucket's props in the cluster state may hold `rw`; ReapCheck /
# ReapCheckReply: a tombstone is reaped only once no member holds another copy of its key; a forwarded
# write carries its write id, and ReplicaPut the write id and dot of the write it carries
# (recentwrites.py), so that a retried forwarded write is not applied twice; ReplicaPut's and
# HintDelivery's flag (was `lww`) is set for allow_mult=false buckets too: the receiver resolves what
# it merges to one value (objects.py, "One value per key"). 7: bucket types and data types. 8: the
# cluster state carries staged membership changes (membership.STATE_FORMAT 4); JoinRequest says whether
# the join is staged (the member adds the node, and the claimant gives it nothing until commit).
# 9: a bucket's (or type's) props in the cluster state may hold `speculative_retry` (speculative.py),
# which a node of 8 would refuse as an unknown property; objects and contents carry secondary index
# entries and links (objects.FORMAT_VERSION 2); IndexScan / IndexScanReply: one replica's part of a
# coverage query of a secondary index. 10: buffered writes (the Dynamo paper's section 6.1): ReplicaPut
# says whether the replica must sync the copy before it acknowledges it, and ReplicaPutReply whether
# the copy it acknowledges is synced.
PROTOCOL_VERSION = 10
_INT_MAX = COUNTER_MAX


class PeerError(ValueError):
    """A peer sent something that is not a valid message (the peer misbehaved, not us)."""


# --- Failure kinds ---------------------------------------------------------------------------------

# Why a request could not be done: malformed input, an object or a listing too large, too many
# siblings, not enough replicas reachable, no answer in time, more requests than the node takes, not
# enough replicas with room on their disks.
# A data-type remove of an element or field that is not there is a failed precondition (HTTP 412).
FailureKind = Literal[
    "bad_request",
    "too_large",
    "too_many_siblings",
    "unavailable",
    "timeout",
    "overload",
    "insufficient_storage",
    "precondition",
]
FAILURE_KINDS: tuple[FailureKind, ...] = typing.get_args(FailureKind)
# What a forwarded write's coordinator answers: done, done and the key is deleted, or a failure.
ForwardStatus = Literal[
    "ok",
    "notfound",
    "bad_request",
    "too_large",
    "too_many_siblings",
    "unavailable",
    "timeout",
    "overload",
    "insufficient_storage",
    "precondition",
]
FORWARD_STATUSES: tuple[ForwardStatus, ...] = typing.get_args(ForwardStatus)
assert set(FORWARD_STATUSES) == {"ok", "notfound", *FAILURE_KINDS}

# --- Quorum specifications ---------------------------------------------------------------------------

QUORUM_WORDS = ("one", "quorum", "all", "default")
Quorum = int | str  # an integer, or one of QUORUM_WORDS


# --- Client requests and responses --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClientGet:
    bucket: bytes
    key: bytes
    r: Quorum | None = None
    pr: Quorum | None = None
    timeout_ms: int | None = None
    # Show deletions' siblings as well as the live ones (a data-type read joins them; datatypes.py).
    with_deletions: bool = False


@dataclass(frozen=True, slots=True)
class ClientLocalGet:
    """A replica read: this node's own copy of a key (data and hints merged, tombstones included),
    with no quorum, for a client that coordinates its reads itself (client/ring_aware.py). Answered
    `Ok(local=...)`, or NotFound(None) when this node holds no copy; like every read, only once what
    it shows is on disk."""

    bucket: bytes
    key: bytes


@dataclass(frozen=True, slots=True)
class DtUpdate:
    """A data-type operation on one key (crdt.py): the key's datatype and HLL precision, the operation
    in Riak's JSON form (b"" deletes the key), and the clock the client read (its context), if any.
    The coordinator parses the operation, so a forwarded one is checked where it is applied."""

    datatype: str
    hll_precision: int
    op: bytes
    context: tuple[tuple[bytes, int], ...] | None = None


@dataclass(frozen=True, slots=True)
class ClientPut:
    """A write; `content` None means a delete (a tombstone is written)."""

    bucket: bytes
    key: bytes
    context: Context | None
    content: Content | None
    w: Quorum | None = None
    dw: Quorum | None = None
    pw: Quorum | None = None
    timeout_ms: int | None = None
    return_body: bool = False
    # How many times this request was already forwarded between nodes (bounded).
    hops: int = 0
    # The identity of a forwarded write, which every retry keeps (recentwrites.py); set by the node
    # that forwards it, never by a client. Empty: a write nobody retries.
    write_id: bytes = b""
    # A data-type operation: `content` is then None and the coordinator makes the value.
    dt: DtUpdate | None = None


@dataclass(frozen=True, slots=True)
class ClientListKeys:
    """One page of a listing: the live keys of a bucket (the buckets themselves when `bucket` is None)
    in partition `partition` after `after`. The answer is an Ok whose `resume` names where the next
    page starts, None once every partition has been listed; a listing is the pages from (0, b"")."""

    bucket: bytes | None
    timeout_ms: int | None = None
    partition: int = 0
    after: bytes = b""


@dataclass(frozen=True, slots=True)
class ClientSetBucketProps:
    bucket: bytes
    props: tuple[tuple[str, Any], ...]
    # Drop every property the bucket set, so it follows its type (or the node's defaults) again.
    reset: bool = False


@dataclass(frozen=True, slots=True)
class ClientBucketType:
    """Create, activate or update a bucket type (buckettypes.py); `props` are the changes."""

    action: Literal["create", "activate", "update"]
    name: str
    props: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True, slots=True)
class ClientIndexQuery:
    """One page of a secondary-index query (indexes.py): the keys of `bucket` whose entries of `field`
    (or `$bucket`, `$key`) lie in [low, high] (sort terms, inclusive), after the position `after`,
    at most `max_results` of them. The answer is an Ok whose `page` holds them in index order, and
    where the next page starts (None after the last)."""

    bucket: bytes
    field: str
    low: bytes
    high: bytes
    max_results: int
    after: tuple[bytes, bytes] | None = None
    timeout_ms: int | None = None


ClientRequest = (
    ClientGet | ClientPut | ClientListKeys | ClientSetBucketProps | ClientBucketType | ClientIndexQuery | ClientLocalGet
)


@dataclass(frozen=True, slots=True)
class Siblings:
    """What a client is shown of an object: the live values (or nothing) and one merged context."""

    values: tuple[tuple[Dot, Content], ...]
    context: Context
    tombstone: bool = False


@dataclass(frozen=True, slots=True)
class IndexPage:
    """A page of an index query: (sort term, key) positions in index order, and the position after
    which the next page starts (None: there is none)."""

    results: tuple[tuple[bytes, bytes], ...]
    continuation: tuple[bytes, bytes] | None


@dataclass(frozen=True, slots=True)
class Ok:
    """Success. `found` is the object for reads and for writes with return_body; a page of a listing
    gives its `keys` and where the next page starts (`resume`, None after the last); a page of an
    index query is `page`; a replica read (ClientLocalGet) gives the node's own copy as `local`."""

    found: Siblings | None = None
    keys: tuple[bytes, ...] = ()
    resume: tuple[int, bytes] | None = None
    page: IndexPage | None = None
    local: Object | None = None


@dataclass(frozen=True, slots=True)
class NotFound:
    context: Context | None = None


@dataclass(frozen=True, slots=True)
class Failure:
    """A request that could not be done. `kind` maps to an HTTP status in the API layer."""

    kind: FailureKind
    reason: str


ClientResponse = Ok | NotFound | Failure


# --- Inter-node messages --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ping:
    CODE: ClassVar[int] = 1
    seq: int


@dataclass(frozen=True, slots=True)
class Pong:
    CODE: ClassVar[int] = 2
    seq: int


@dataclass(frozen=True, slots=True)
class ReplicaGet:
    """Read one key's replica state; a fallback also looks in its hint store."""

    CODE: ClassVar[int] = 3
    req: int
    bucket: bytes
    key: bytes


@dataclass(frozen=True, slots=True)
class ReplicaGetReply:
    CODE: ClassVar[int] = 4
    req: int
    obj: Object | None


@dataclass(frozen=True, slots=True)
class ReplicaPut:
    """Merge `obj` into the receiver's replica (or into its hint store when `hint_for` names the owner).
    For a forwarded write, `write_id` and `dot` name it and the dot it was given (recentwrites.py);
    empty and None otherwise (a write nobody retries, a read repair)."""

    CODE: ClassVar[int] = 5
    req: int
    bucket: bytes
    key: bytes
    obj: Object
    hint_for: str | None
    # The bucket keeps one value per key (last-write-wins, or allow_mult off): resolve once merged.
    resolve_one: bool
    write_id: bytes = b""
    dot: Dot | None = None
    # Sync the copy before acknowledging it, whatever the receiver's own `durable` setting (the one
    # replica a buffered write's coordinator picks, or every replica of a durable write).
    durable: bool = True


@dataclass(frozen=True, slots=True)
class ReplicaPutReply:
    """`durable`: the copy acknowledged was synced before this reply (else it is only written, and a
    machine crash before the receiver's next sync may lose it)."""

    CODE: ClassVar[int] = 6
    req: int
    ok: bool
    reason: str
    durable: bool = False


@dataclass(frozen=True, slots=True)
class ForwardPut:
    """A client write handed to a node of the preference list, which coordinates it."""

    CODE: ClassVar[int] = 7
    req: int
    bucket: bytes
    key: bytes
    context: Context | None
    content: Content | None
    w: str
    dw: str
    pw: str
    timeout_ms: int
    return_body: bool
    hops: int
    # The write's identity, the same in every retry (recentwrites.py).
    write_id: bytes = b""
    dt: DtUpdate | None = None


@dataclass(frozen=True, slots=True)
class ForwardPutReply:
    CODE: ClassVar[int] = 8
    req: int
    status: ForwardStatus
    reason: str
    values: tuple[tuple[Dot, Content], ...]
    context: Context | None
    tombstone: bool


@dataclass(frozen=True, slots=True)
class HintItem:
    bucket: bytes
    key: bytes
    obj: Object


@dataclass(frozen=True, slots=True)
class HintDelivery:
    """Hinted writes handed back to the owner they were meant for."""

    CODE: ClassVar[int] = 9
    req: int
    items: tuple[HintItem, ...]
    # Per item, as ReplicaPut's: its bucket keeps one value per key.
    resolve_one: tuple[bool, ...]


@dataclass(frozen=True, slots=True)
class HintDeliveryReply:
    CODE: ClassVar[int] = 10
    req: int
    ok: bool


@dataclass(frozen=True, slots=True)
class Reap:
    """Delete a tombstone for good, if the receiver's copy is still exactly this tombstone."""

    CODE: ClassVar[int] = 11
    bucket: bytes
    key: bytes
    obj: Object


@dataclass(frozen=True, slots=True)
class ReapCheck:
    """Before reaping: which of these keys (storage keys) does the receiver hold a copy of, as a hint
    for any owner or in its data?"""

    CODE: ClassVar[int] = 26
    req: int
    keys: tuple[bytes, ...]


# What a member holds of a key it was asked about before reaping (ReapCheckReply), as flags.
HELD_HINT = 1
HELD_DATA = 2


@dataclass(frozen=True, slots=True)
class ReapCheckReply:
    """One entry per asked key, in order: what the receiver holds of it (HELD_* flags, 0 for nothing)."""

    CODE: ClassVar[int] = 27
    req: int
    held: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ListKeys:
    """One step of a listing: the live keys of `bucket` (the buckets, when None) in `partition`, after
    `after`; the answer is bounded in count and in the bytes read to find them."""

    CODE: ClassVar[int] = 12
    req: int
    bucket: bytes | None
    partition: int
    after: bytes


@dataclass(frozen=True, slots=True)
class ListKeysReply:
    """A step's keys (or buckets); `last` is where the next step starts, `done` that the partition is."""

    CODE: ClassVar[int] = 13
    req: int
    items: tuple[bytes, ...]
    last: bytes
    done: bool


@dataclass(frozen=True, slots=True)
class GossipDigest:
    CODE: ClassVar[int] = 14
    digest: bytes


@dataclass(frozen=True, slots=True)
class GossipState:
    """A full cluster state; `reply` asks the receiver to answer with its own when they differ."""

    CODE: ClassVar[int] = 15
    state: bytes
    reply: bool


@dataclass(frozen=True, slots=True)
class JoinRequest:
    """A node asks a member to let it into the member's cluster (staged: given no partitions until commit)."""

    CODE: ClassVar[int] = 16
    req: int
    member: bytes
    stage: bool = False


@dataclass(frozen=True, slots=True)
class JoinReply:
    CODE: ClassVar[int] = 17
    req: int
    ok: bool
    reason: str
    state: bytes
    # The cluster's key, when the seed has no configured secret (loopback only); else empty.
    key: bytes


@dataclass(frozen=True, slots=True)
class HandoffPull:
    """The new owner asks an old owner for the next batch of a partition, after `after` (exclusive)."""

    CODE: ClassVar[int] = 18
    req: int
    transfer: bytes
    partition: int
    after: bytes
    started: bool


@dataclass(frozen=True, slots=True)
class HandoffBatch:
    CODE: ClassVar[int] = 19
    req: int
    transfer: bytes
    partition: int
    items: tuple[HintItem, ...]
    last: bytes
    done: bool


@dataclass(frozen=True, slots=True)
class TreeRequest:
    """Anti-entropy: ask for the hashes of the given tree nodes of a partition's replica set."""

    CODE: ClassVar[int] = 20
    req: int
    partition: int
    n_val: int
    level: int
    indexes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class TreeReply:
    CODE: ClassVar[int] = 21
    req: int
    hashes: tuple[bytes, ...]
    ready: bool


@dataclass(frozen=True, slots=True)
class SegmentRequest:
    """Anti-entropy: ask for (key, version summary) of every key in the given segments."""

    CODE: ClassVar[int] = 22
    req: int
    partition: int
    n_val: int
    segments: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class SegmentReply:
    """Keys and version summaries of the asked segments; `ready` false: busy, ask again later."""

    CODE: ClassVar[int] = 23
    req: int
    keys: tuple[bytes, ...]
    summaries: tuple[bytes, ...]
    ready: bool


@dataclass(frozen=True, slots=True)
class ObjectsRequest:
    """Anti-entropy: send me these keys' objects (storage keys of one partition)."""

    CODE: ClassVar[int] = 24
    req: int
    keys: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class ObjectsReply:
    """The objects of the first `served` asked keys (those the responder holds; it stops once their
    bytes reach its bound, and the rest are asked again); `ready` false: busy, ask again later."""

    CODE: ClassVar[int] = 25
    req: int
    items: tuple[HintItem, ...]
    ready: bool
    served: int


@dataclass(frozen=True, slots=True)
class IndexScan:
    """A coverage query's request to one replica: for each of `partitions`, the positions of
    `bucket`'s keys whose entries of `field` lie in [low, high] after `after` (empty, or term and key),
    at most `limit` per partition, reading about `bytes_max` in all (indexes.scan)."""

    CODE: ClassVar[int] = 28
    req: int
    bucket: bytes
    field: str
    low: bytes
    high: bytes
    after: tuple[bytes, ...]
    limit: int
    bytes_max: int
    partitions: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class IndexScanReply:
    """Per asked partition, in order: how many of the positions (`terms[i]`, `keys[i]`, in order) are
    its, where its scan stopped (`last_terms`, `last_keys`; empty when it read nothing) and whether it
    is done."""

    CODE: ClassVar[int] = 29
    req: int
    partitions: tuple[int, ...]
    counts: tuple[int, ...]
    terms: tuple[bytes, ...]
    keys: tuple[bytes, ...]
    last_terms: tuple[bytes, ...]
    last_keys: tuple[bytes, ...]
    done: tuple[bool, ...]


Message = (
    Ping
    | Pong
    | ReplicaGet
    | ReplicaGetReply
    | ReplicaPut
    | ReplicaPutReply
    | ForwardPut
    | ForwardPutReply
    | HintDelivery
    | HintDeliveryReply
    | Reap
    | ReapCheck
    | ReapCheckReply
    | ListKeys
    | ListKeysReply
    | GossipDigest
    | GossipState
    | JoinRequest
    | JoinReply
    | HandoffPull
    | HandoffBatch
    | TreeRequest
    | TreeReply
    | SegmentRequest
    | SegmentReply
    | ObjectsRequest
    | ObjectsReply
    | IndexScan
    | IndexScanReply
)

MESSAGE_TYPES: tuple[type[Any], ...] = typing.get_args(Message)
_BY_CODE: dict[int, type[Any]] = {cls.CODE: cls for cls in MESSAGE_TYPES}
assert len(_BY_CODE) == len(MESSAGE_TYPES), "message codes must be unique"


# --- Codec ----------------------------------------------------------------------------------------


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check(cond: bool, what: str) -> None:
    if not cond:
        raise PeerError(what)


def context_to_wire(ctx: Context) -> list[Any]:
    return [[[a, c] for a, c in ctx.vector], [[d.actor, d.counter] for d in sorted(ctx.dots)], ctx.coordinator]


def context_from_wire(data: Any) -> Context:
    _check(isinstance(data, list) and len(data) == 3, "malformed context")
    raw_vector, raw_dots, coordinator = data
    _check(isinstance(raw_vector, list) and isinstance(raw_dots, list), "malformed context")
    vector: dict[bytes, int] = {}
    for entry in raw_vector:
        _check(isinstance(entry, list) and len(entry) == 2, "malformed context entry")
        actor, counter = entry
        _check(isinstance(actor, bytes) and 0 < len(actor) <= ACTOR_BYTES_MAX, "malformed context actor")
        _check(_is_int(counter) and 0 < counter <= COUNTER_MAX, "malformed context counter")
        vector[actor] = counter
    dots: set[Dot] = set()
    for entry in raw_dots:
        _check(isinstance(entry, list) and len(entry) == 2, "malformed context dot")
        actor, counter = entry
        _check(isinstance(actor, bytes) and 0 < len(actor) <= ACTOR_BYTES_MAX, "malformed context actor")
        _check(_is_int(counter) and 0 < counter <= COUNTER_MAX, "malformed context counter")
        dots.add(Dot(actor, counter))
    _check(coordinator is None or isinstance(coordinator, str), "malformed context coordinator")
    return Context(tuple(sorted(vector.items())), frozenset(dots), coordinator)


def _content_to_wire(c: Content) -> list[Any]:
    return objects.content_fields(c, extended=True)


def _content_from_wire(data: Any) -> Content:
    # Reuse the object decoder's validation by wrapping the content in a one-sibling object.
    _check(isinstance(data, list) and len(data) == 9, "malformed content")
    try:
        obj = objects.from_wire([objects.FORMAT_VERSION, [[b"x", 1, 0]], [[b"x", 1, *data]]])
    except ObjectError as exc:
        raise PeerError(f"malformed content: {exc}") from None
    return obj.siblings[0][1]


def _object_from_wire(data: Any) -> Object:
    # Objects travel as their stored bytes: the receiver's decode is cached and a replica that takes
    # the incoming version as it is stores those bytes without encoding them again.
    _check(isinstance(data, bytes), "an object must be bytes")
    try:
        return objects.decode(data)
    except ObjectError as exc:
        raise PeerError(f"malformed object: {exc}") from None


def _dot_from_wire(data: Any) -> Dot:
    _check(isinstance(data, list) and len(data) == 2, "malformed dot")
    actor, counter = data
    _check(isinstance(actor, bytes) and 0 < len(actor) <= ACTOR_BYTES_MAX, "malformed dot actor")
    _check(_is_int(counter) and 0 < counter <= COUNTER_MAX, "malformed dot counter")
    return Dot(actor, counter)


def _values_to_wire(values: tuple[tuple[Dot, Content], ...]) -> list[Any]:
    return [[d.actor, d.counter, _content_to_wire(c)] for d, c in values]


def _values_from_wire(data: Any) -> tuple[tuple[Dot, Content], ...]:
    _check(isinstance(data, list), "malformed values")
    out: list[tuple[Dot, Content]] = []
    for entry in data:
        _check(isinstance(entry, list) and len(entry) == 3, "malformed value")
        actor, counter, content = entry
        _check(isinstance(actor, bytes) and 0 < len(actor) <= ACTOR_BYTES_MAX, "malformed value actor")
        _check(_is_int(counter) and 0 < counter <= COUNTER_MAX, "malformed value counter")
        out.append((Dot(actor, counter), _content_from_wire(content)))
    return tuple(out)


def _dt_to_wire(dt: DtUpdate) -> list[Any]:
    context = None if dt.context is None else [[a, c] for a, c in dt.context]
    return [dt.datatype, dt.hll_precision, dt.op, context]


def _dt_from_wire(data: Any) -> DtUpdate:
    _check(isinstance(data, list) and len(data) == 4, "malformed data-type operation")
    datatype, precision, op, raw_context = data
    _check(isinstance(datatype, str) and _is_int(precision) and isinstance(op, bytes), "malformed data-type operation")
    context = None
    if raw_context is not None:
        vector = context_from_wire([raw_context, [], None]).vector
        _check(len(vector) == len(raw_context), "a data-type context names an actor twice")
        context = vector
    return DtUpdate(datatype, precision, op, context)


def _hint_item_from_wire(data: Any) -> HintItem:
    _check(isinstance(data, list) and len(data) == 3, "malformed item")
    bucket, key, obj = data
    _check(isinstance(bucket, bytes) and isinstance(key, bytes), "malformed item key")
    return HintItem(bucket, key, _object_from_wire(obj))


def _scalar(kind: type[Any], what: str) -> Callable[[Any], Any]:
    def check(x: Any) -> Any:
        if kind is int:
            _check(_is_int(x) and -_INT_MAX <= x <= _INT_MAX, f"{what} must be an integer")
        else:
            _check(isinstance(x, kind), f"{what} must be {kind.__name__}")
        return x

    return check


def _one_of(allowed: tuple[str, ...], x: Any) -> Any:
    _check(isinstance(x, str) and x in allowed, f"must be one of {', '.join(allowed)}")
    return x


def _optional(inner: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda x: None if x is None else inner(x)


def _tuple_of(inner: Callable[[Any], Any], what: str) -> Callable[[Any], Any]:
    def check(x: Any) -> Any:
        _check(isinstance(x, list), f"{what} must be a list")
        return tuple(inner(item) for item in x)

    return check


_ENCODERS: dict[str, Callable[[Any], Any]] = {
    "Object": objects.encode,
    "Object | None": lambda o: None if o is None else objects.encode(o),
    "Context | None": lambda c: None if c is None else context_to_wire(c),
    "Content | None": lambda c: None if c is None else _content_to_wire(c),
    "Dot | None": lambda d: None if d is None else [d.actor, d.counter],
    "DtUpdate | None": lambda dt: None if dt is None else _dt_to_wire(dt),
    "tuple[tuple[Dot, Content], ...]": _values_to_wire,
    "tuple[HintItem, ...]": lambda items: [[i.bucket, i.key, objects.encode(i.obj)] for i in items],
}

_DECODERS: dict[str, Callable[[Any], Any]] = {
    "int": _scalar(int, "field"),
    "bool": _scalar(bool, "field"),
    "str": _scalar(str, "field"),
    "ForwardStatus": lambda x: _one_of(FORWARD_STATUSES, x),
    "bytes": _scalar(bytes, "field"),
    "str | None": _optional(_scalar(str, "field")),
    "bytes | None": _optional(_scalar(bytes, "field")),
    "Object": _object_from_wire,
    "Object | None": _optional(_object_from_wire),
    "Context | None": _optional(context_from_wire),
    "Content | None": _optional(_content_from_wire),
    "Dot | None": _optional(_dot_from_wire),
    "DtUpdate | None": _optional(_dt_from_wire),
    "tuple[tuple[Dot, Content], ...]": _values_from_wire,
    "tuple[HintItem, ...]": _tuple_of(_hint_item_from_wire, "items"),
    "tuple[bytes, ...]": _tuple_of(_scalar(bytes, "item"), "items"),
    "tuple[int, ...]": _tuple_of(_scalar(int, "item"), "items"),
    "tuple[bool, ...]": _tuple_of(_scalar(bool, "item"), "items"),
}

_FIELDS: dict[type[Any], tuple[tuple[str, str], ...]] = {
    cls: tuple((f.name, str(f.type)) for f in dataclasses.fields(cls)) for cls in MESSAGE_TYPES
}
for _cls, _fields in _FIELDS.items():
    for _name, _kind in _fields:
        assert _kind in _DECODERS, f"{_cls.__name__}.{_name}: no codec for {_kind}"


def to_wire(msg: Message) -> list[Any]:
    out: list[Any] = [msg.CODE]
    for name, kind in _FIELDS[type(msg)]:
        value = getattr(msg, name)
        encoder = _ENCODERS.get(kind)
        if encoder is not None:
            out.append(encoder(value))
        elif isinstance(value, tuple):
            out.append(list(value))
        else:
            out.append(value)
    return out


def from_wire(data: Any) -> Message:
    """Validate and build a message; raises PeerError for anything malformed."""
    _check(isinstance(data, list) and len(data) > 0 and _is_int(data[0]), "a message must be a list with a type code")
    cls = _BY_CODE.get(data[0])
    _check(cls is not None, f"unknown message type {data[0]!r}")
    assert cls is not None
    fields = _FIELDS[cls]
    _check(len(data) == len(fields) + 1, f"{cls.__name__} needs {len(fields)} fields")
    values: dict[str, Any] = {}
    for (name, kind), raw in zip(fields, data[1:], strict=True):
        try:
            values[name] = _DECODERS[kind](raw)
        except PeerError as exc:
            raise PeerError(f"{cls.__name__}.{name}: {exc}") from None
    msg: Message = cls(**values)
    return msg
