"""What a member's message must satisfy beyond its shape, checked before any handler sees it.

The codec (messages.py) guarantees types: an int is an int, an object decodes. It cannot know that a
partition must be on the ring, that a bucket name is never empty, that a stored key has the layout
keys.py writes, or that a batch's flags match its items. A peer that sends such a message is broken
or hostile: `check` raises PeerError, the shell drops the link, and nothing was changed.

Only what no honest node ever sends is refused here. Whatever an honest node may send in a race (a
reply to a request that already timed out, a hint for an owner this node has not heard of yet) is
the handler's to ignore: refusing it would drop a healthy link. This module is pure.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from dynastore.core import buckettypes, crdt, hints, indexes, keys
from dynastore.core import context as ctxcodec
from dynastore.core.messages import (
    HELD_DATA,
    HELD_HINT,
    MESSAGE_TYPES,
    ForwardPut,
    HandoffBatch,
    HandoffPull,
    HintDelivery,
    HintItem,
    IndexScan,
    IndexScanReply,
    ListKeys,
    ListKeysReply,
    Message,
    ObjectsReply,
    ObjectsRequest,
    PeerError,
    Reap,
    ReapCheck,
    ReapCheckReply,
    ReplicaGet,
    ReplicaPut,
    SegmentRequest,
    TreeRequest,
)
from dynastore.core.recentwrites import WRITE_ID_BYTES
from dynastore.settings import Settings

# More items than any honest batch holds (every batch is bounded by settings far below this).
ITEMS_MAX = 100_000
# An n_val beyond this is no setting's.
N_VAL_MAX = 1024
HOPS_MAX = 64


@dataclass(frozen=True, slots=True)
class Limits:
    settings: Settings
    ring_size: int


def _need(cond: bool, what: str) -> None:
    if not cond:
        raise PeerError(what)


def _names(limits: Limits, bucket: bytes, key: bytes | None) -> None:
    problem = keys.name_problem(limits.settings, bucket, key)
    _need(problem is None, f"{problem}")


def _partition(limits: Limits, partition: int) -> None:
    _need(0 <= partition < limits.ring_size, f"partition {partition} of a ring of {limits.ring_size}")


def _stored(limits: Limits, raw: bytes, partition: int | None = None) -> None:
    problem = keys.stored_key_problem(limits.settings, raw, limits.ring_size)
    _need(problem is None, f"stored key: {problem}")
    _need(partition is None or keys.decode(raw).partition == partition, "stored key of another partition")


def _items(limits: Limits, items: Iterable[HintItem]) -> None:
    count = 0
    for item in items:
        _names(limits, item.bucket, item.key)
        count += 1
    _need(count <= ITEMS_MAX, f"more than {ITEMS_MAX} items")


def _replica_get(limits: Limits, msg: ReplicaGet) -> None:
    _names(limits, msg.bucket, msg.key)


def _replica_put(limits: Limits, msg: ReplicaPut) -> None:
    _names(limits, msg.bucket, msg.key)
    owner = msg.hint_for
    _need(owner is None or 0 < len(owner.encode()) <= hints.OWNER_BYTES_MAX, "a hint's owner must be a member name")
    _need(len(msg.write_id) in (0, WRITE_ID_BYTES), f"a write id must be {WRITE_ID_BYTES} bytes")
    _need((msg.dot is None) == (not msg.write_id), "a replicated write names its dot exactly when it has an id")


def _forward_put(limits: Limits, msg: ForwardPut) -> None:
    _names(limits, msg.bucket, msg.key)
    _need(0 <= msg.hops <= HOPS_MAX, f"a forwarded write of {msg.hops} hops")
    _need(len(msg.write_id) == WRITE_ID_BYTES, f"a forwarded write's id must be {WRITE_ID_BYTES} bytes")
    dt = msg.dt
    if dt is not None:
        _need(msg.content is None, "a data-type operation carries no content")
        _need(dt.datatype in crdt.DATATYPES, f"unknown datatype {dt.datatype!r}")
        _need(
            buckettypes.HLL_PRECISION_MIN <= dt.hll_precision <= buckettypes.HLL_PRECISION_MAX,
            "hll precision out of range",
        )
        _need(len(dt.op) <= limits.settings.object_bytes_max, "a data-type operation larger than an object")
        _need(dt.context is None or len(dt.context) <= ctxcodec.ACTORS_MAX, "a data-type context of too many actors")


def _hint_delivery(limits: Limits, msg: HintDelivery) -> None:
    _items(limits, msg.items)
    _need(len(msg.resolve_one) == len(msg.items), "a hint batch needs one flag per item")


def _reap(limits: Limits, msg: Reap) -> None:
    _names(limits, msg.bucket, msg.key)


def _reap_check(limits: Limits, msg: ReapCheck) -> None:
    _need(len(msg.keys) <= ITEMS_MAX, f"more than {ITEMS_MAX} keys")
    for raw in msg.keys:
        _stored(limits, raw)


def _reap_check_reply(limits: Limits, msg: ReapCheckReply) -> None:
    _need(len(msg.held) <= ITEMS_MAX, f"more than {ITEMS_MAX} answers")
    _need(all(0 <= flags <= HELD_HINT | HELD_DATA for flags in msg.held), "an answer that is no set of flags")


def _list_keys(limits: Limits, msg: ListKeys) -> None:
    if msg.bucket is not None:
        _names(limits, msg.bucket, None)
    _partition(limits, msg.partition)
    longest = limits.settings.bucket_bytes_max if msg.bucket is None else limits.settings.key_bytes_max
    _need(len(msg.after) <= longest, "a listing cursor longer than any name")


def _list_keys_reply(limits: Limits, msg: ListKeysReply) -> None:
    longest = max(limits.settings.bucket_bytes_max, limits.settings.key_bytes_max)
    _need(len(msg.items) <= ITEMS_MAX, f"more than {ITEMS_MAX} items")
    _need(all(len(item) <= longest for item in msg.items) and len(msg.last) <= longest, "a name longer than any")


def _index_scan(limits: Limits, msg: IndexScan) -> None:
    _names(limits, msg.bucket, None)
    problem = indexes.query_problem(limits.settings, msg.field, msg.low, msg.high)
    _need(problem is None, f"index query: {problem}")
    _need(len(msg.after) in (0, 2), "a query's continuation is a term and a key")
    longest = max(limits.settings.index_term_bytes_max, limits.settings.key_bytes_max)
    _need(all(len(part) <= longest for part in msg.after), "a continuation longer than any position")
    _need(1 <= msg.limit <= ITEMS_MAX, f"a scan limit of {msg.limit}")
    _need(1 <= msg.bytes_max <= limits.settings.peer_message_bytes_max, f"a scan of {msg.bytes_max} bytes")
    _need(0 < len(msg.partitions) <= limits.ring_size, "a scan of no partitions or more than the ring")
    _need(len(set(msg.partitions)) == len(msg.partitions), "a scan names a partition twice")
    for partition in msg.partitions:
        _partition(limits, partition)


def _index_scan_reply(limits: Limits, msg: IndexScanReply) -> None:
    width = len(msg.partitions)
    _need(width <= limits.ring_size, "an answer for more partitions than the ring has")
    _need(
        len(msg.counts) == len(msg.last_terms) == len(msg.last_keys) == len(msg.done) == width,
        "an index scan answer needs one count, last position and flag per partition",
    )
    _need(all(count >= 0 for count in msg.counts), "a negative count")
    _need(sum(msg.counts) == len(msg.terms) == len(msg.keys) <= ITEMS_MAX, "counts that do not match the positions")
    longest = max(limits.settings.index_term_bytes_max, limits.settings.key_bytes_max)
    for part in (*msg.terms, *msg.keys, *msg.last_terms, *msg.last_keys):
        _need(len(part) <= longest, "a position longer than any")


def _handoff_pull(limits: Limits, msg: HandoffPull) -> None:
    _partition(limits, msg.partition)
    if msg.after:
        _stored(limits, msg.after, msg.partition)


def _handoff_batch(limits: Limits, msg: HandoffBatch) -> None:
    _partition(limits, msg.partition)
    _items(limits, msg.items)
    if msg.last:
        _stored(limits, msg.last, msg.partition)


def _tree_request(limits: Limits, msg: TreeRequest) -> None:
    _partition(limits, msg.partition)
    _need(1 <= msg.n_val <= N_VAL_MAX, f"n_val {msg.n_val}")
    _need(msg.level >= 0 and all(index >= 0 for index in msg.indexes), "a negative tree level or index")
    _need(len(msg.indexes) <= ITEMS_MAX, f"more than {ITEMS_MAX} indexes")


def _segment_request(limits: Limits, msg: SegmentRequest) -> None:
    _partition(limits, msg.partition)
    _need(1 <= msg.n_val <= N_VAL_MAX, f"n_val {msg.n_val}")
    _need(len(msg.segments) <= ITEMS_MAX, f"more than {ITEMS_MAX} segments")


def _objects_request(limits: Limits, msg: ObjectsRequest) -> None:
    _need(len(msg.keys) <= ITEMS_MAX, f"more than {ITEMS_MAX} keys")
    for raw in msg.keys:
        _stored(limits, raw)


def _objects_reply(limits: Limits, msg: ObjectsReply) -> None:
    _items(limits, msg.items)
    _need(msg.served >= 0, "a negative count of keys served")


def _nothing(limits: Limits, msg: Any) -> None:
    """The codec's checks are all this message needs (its handler ignores what it cannot match)."""


_CHECKS: dict[type[Any], Callable[[Limits, Any], None]] = {cls: _nothing for cls in MESSAGE_TYPES}
_CHECKS.update(
    {
        ReplicaGet: _replica_get,
        ReplicaPut: _replica_put,
        ForwardPut: _forward_put,
        HintDelivery: _hint_delivery,
        Reap: _reap,
        ReapCheck: _reap_check,
        ReapCheckReply: _reap_check_reply,
        ListKeys: _list_keys,
        ListKeysReply: _list_keys_reply,
        IndexScan: _index_scan,
        IndexScanReply: _index_scan_reply,
        HandoffPull: _handoff_pull,
        HandoffBatch: _handoff_batch,
        TreeRequest: _tree_request,
        SegmentRequest: _segment_request,
        ObjectsRequest: _objects_request,
        ObjectsReply: _objects_reply,
    }
)


def check(limits: Limits, msg: Message) -> None:
    """Raise PeerError when `msg` holds what no honest member sends."""
    _CHECKS[type(msg)](limits, msg)
