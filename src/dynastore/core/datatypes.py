"""Data-type keys as stored objects: how the states of crdt.py live in siblings, and how a
coordinator turns a client's operation into the key's next version.

Theory of operation
-------------------
A data-type key is an ordinary object (objects.py) whose siblings hold encoded crdt states, each
tagged with its datatype's content type (`application/riak_counter`, ...). Replicas merge objects as
they always do (dotted version vectors, versions.merge): a state is dropped only when a later version
covers it, and every later version was made from a join that included it, so nothing a replica ever
held is lost. Concurrent versions made by different coordinators stay as siblings until the next
operation; the key's value is the crdt join of every sibling, so a client never sees siblings.

A delete writes a tombstone sibling whose value is `crdt.delete_state`: an empty state whose clock is
what the delete saw. Joined with a concurrent operation's state it removes what the delete observed
and keeps what it did not (an add concurrent with a delete survives it). Plain tombstones (an empty
value) and siblings of another content type (a legacy counter's key may hold plain values too, as in
Riak 1.4) take no part in the join.

A coordinator applies an operation to the join of every state it holds of the key and writes the
result with a context holding exactly those states' dots: it replaces them here, and replicas holding
versions it has not seen keep them beside it. Its dot comes from actors.py with `trust_context` off
(the coordinator holds every version of its actor it claims), which is what keeps a counter's entry
of that actor growing along one chain.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from dynastore.core import crdt
from dynastore.core.messages import DtUpdate
from dynastore.core.objects import Content, Object
from dynastore.core.versions import Dot
from dynastore.settings import Settings

KIND_OF_TYPE = {content_type: kind for kind, content_type in crdt.CONTENT_TYPES.items()}


def limits(settings: Settings) -> crdt.Limits:
    return crdt.Limits(
        set_elements_max=settings.dt_set_elements_max,
        map_fields_max=settings.dt_map_fields_max,
        depth_max=settings.dt_depth_max,
        element_bytes_max=settings.dt_element_bytes_max,
        deferred_max=settings.dt_deferred_max,
        state_bytes_max=settings.object_bytes_max,
    )


def _is_state(content: Content, kind: str) -> bool:
    return KIND_OF_TYPE.get(content.content_type) == kind and bool(content.value)


def state_dots(obj: Object | None, kind: str) -> frozenset[Dot]:
    """The dots of the siblings that hold `kind` states (live or deletions), and of plain tombstones."""
    if obj is None:
        return frozenset()
    return frozenset(d for d, c in obj.siblings if _is_state(c, kind) or (c.deleted and not c.value))


def join(values: Iterable[tuple[Dot, Content]], kind: str) -> crdt.State | None:
    """The join of every `kind` state among `values` (None: there is none). Raises crdt.CrdtError for a
    stored state that does not decode (a corrupt copy is caught by its checksum long before)."""
    return crdt.join_all(crdt.decode(c.value) for _, c in values if _is_state(c, kind))


def visible(values: Iterable[tuple[Dot, Content]], kind: str) -> crdt.State | None:
    """What a read shows: the join, or None when every state is a deletion (the key is not found)."""
    items = [(d, c) for d, c in values if _is_state(c, kind)]
    if not any(not c.deleted for _, c in items):
        return None
    return join(items, kind)


def parse(dt: DtUpdate) -> crdt.Op | None:
    """The operation of `dt` (None: a delete of the key); raises crdt.CrdtError when malformed."""
    if not dt.op:
        return None
    try:
        body = json.loads(dt.op.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise crdt.CrdtError("bad_request", "a data-type operation must be JSON") from None
    op, _ = crdt.parse_op(dt.datatype, body)
    return op


def next_content(local: Object | None, dt: DtUpdate, dot: Dot, now_us: int, settings: Settings) -> Content:
    """The sibling a coordinator writes for `dt` given everything it holds of the key (`local`);
    raises crdt.CrdtError (bad request, too large, failed precondition) and then nothing is written."""
    op = parse(dt)
    current = join(() if local is None else local.siblings, dt.datatype)
    if current is None:
        current = crdt.new(dt.datatype, dt.hll_precision)
    if op is None:
        # A delete removes what the read before it saw (its context) as well as what is here.
        state = crdt.delete_state(current, dot, dt.context)
        return Content(crdt.encode(state), crdt.CONTENT_TYPES[dt.datatype], last_modified_us=now_us, deleted=True)
    state = crdt.apply(current, op, dot, now_us, limits(settings), dt.context)
    return Content(crdt.encode(state), crdt.CONTENT_TYPES[dt.datatype], last_modified_us=now_us)
