"""NodeBase: the state every part of a NodeCore shares, and the helpers they all lean on.

NodeCore (node.py) is assembled from one mixin per concern: coordination.py, clusterops.py,
handoff.py and reaping.py, each a subclass of this base. The base declares every shared attribute,
so that mypy checks each mixin against the whole node, and holds what all of them use: the node's
view of placement and health, the staged-write storage overlay, the op registry and the queue of
effects. The two calls that cross from one concern into another are declared here as abstract methods.

Storage overlay: writes are staged in `_pending` and read back through it; `flush` (node.py) writes
them as one batch. Nothing here may write to the engine directly, or an acknowledgement could leave
before the data it acknowledges. This class never constructs anything: NodeCore.__init__ sets every
attribute declared here.
"""

from __future__ import annotations

import hashlib
import heapq
import random
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from dynastore.core import hints, keys, membership, objects, placement
from dynastore.core.antientropy import AntiEntropy
from dynastore.core.controller import BackgroundController
from dynastore.core.effects import Effect, Reply, Send
from dynastore.core.failure import FailureDetector
from dynastore.core.membership import ACTIVE, ClusterState
from dynastore.core.messages import ClientResponse, Failure, ForwardPutReply, Message, NotFound, Ok
from dynastore.core.objects import Object, ObjectError
from dynastore.core.ops import AnyOp, GetOp, Origin, ToClient
from dynastore.core.placement import Placement
from dynastore.core.ring import PreferenceList, Ring
from dynastore.core.versions import merge
from dynastore.settings import Settings
from dynastore.storage.base import Engine

META_EPOCH = b"epoch"
META_GENERATION = b"actor_generation"
META_COUNTER = b"counter_lease_end"
META_CLUSTER = b"cluster"
# What one remembered key costs besides its bytes (a dict entry and an int), for the byte bound.
FORGOTTEN_ENTRY_BYTES = 100
# Node names longer than this are shortened to a digest inside actor ids (an actor is at most 255 bytes).
ACTOR_NAME_BYTES_MAX = 200


@dataclass
class Stats:
    gets: int = 0
    puts: int = 0
    deletes: int = 0
    read_repairs: int = 0
    forwarded_puts: int = 0
    coordinated_puts: int = 0
    hinted_writes: int = 0
    hints_delivered: int = 0
    tombstones_reaped: int = 0
    peer_errors: int = 0
    gossip_rounds: int = 0
    handoff_batches: int = 0
    handoff_keys: int = 0
    handoff_resumed: int = 0
    transfers_completed: int = 0
    strays_handed_off: int = 0
    siblings_histogram: dict[int, int] = field(default_factory=dict)


# Buckets whose properties are kept ready (cleared wholesale when full or when the cluster changes).
PROPS_CACHE_MAX = 10_000
# How long a computed set of healthy members may be reused (failure detection works in seconds).
HEALTHY_CACHE_MS = 100


class NodeBase(ABC):
    """Shared state and helpers of NodeCore's parts. See the module docstring."""

    name: str
    settings: Settings
    engine: Engine
    rng: random.Random
    secret: bytes
    # The actor that names this node's versions: node name, the data directory's epoch, and a
    # generation that is new at every start and whenever this node may have lost track of versions
    # it wrote under its previous actor (see `_new_actor`).
    epoch: int
    generation: int
    actor: bytes
    # Keys whose deleted local copy held versions of the current actor, with the newest such counter.
    _forgotten: dict[bytes, int]
    _forgotten_bytes: int
    cluster: ClusterState
    stats: Stats
    detector: FailureDetector
    controller: BackgroundController
    aae: AntiEntropy
    # The latest `now_ms` any input carried, for the rare helper that has no `now_ms` of its own.
    now_hint_ms: int
    # Staged writes, by (area, key); None deletes. Reads see them before the engine.
    _pending: dict[tuple[str, bytes], bytes | None]
    _healthy_key: tuple[int, int, int]
    _props_cache: dict[bytes, dict[str, Any]]
    _props_at: int
    _cluster_changes: int
    _healthy: frozenset[str]
    # The batch the shell is writing right now (taken by take_batch, cleared by batch_written).
    _committing: dict[tuple[str, bytes], bytes | None]
    # Batches handed to the shell (take_batch) and batches written (batch_written): while they differ,
    # batch number `_batches_taken` is being written, and what is staged goes in the one after it.
    _batches_taken: int
    _batches_written: int
    # The newest batch holding something the reads since it was reset saw (see `_read_local_after`).
    _read_after: int
    # Effects that leave once the next batch is durable (the default), effects free to leave now,
    # and effects held until the batch numbered with them is durable.
    _outbox: list[Effect]
    _free: list[Effect]
    _held: list[tuple[int, Effect]]
    # Writes this node coordinates whose own copy is staged, and those whose copy is being written.
    _staged_puts: list[int]
    _committing_puts: list[int]
    _ops: dict[int, AnyOp]
    # A heap of (deadline_ms, op id); entries of finished ops are skipped when they surface.
    _deadlines: list[tuple[int, int]]
    _next_op: int
    _hint_count: int

    # --- Calls across concerns ---------------------------------------------------------------------------

    @abstractmethod
    def _dispatch_get(self, op: GetOp, now_ms: int) -> None:
        """Register a read and ask its targets (coordination.py); reaping reads through it too."""

    @abstractmethod
    def _local_put_durable(self, op_id: int, now_ms: int) -> None:
        """This node's copy of a write it coordinates is durable: count its ack (coordination.py)."""

    @abstractmethod
    def _finish_reap(self, op: GetOp, now_ms: int) -> None:
        """Reap a tombstone once the read that preceded it is complete (reaping.py)."""

    # --- Queries: bucket properties, placement, health -------------------------------------------------

    def bucket_props(self, bucket: bytes) -> dict[str, Any]:
        """A bucket's properties (defaults overlaid with what was set), as a dict the caller may change."""
        return dict(self._props(bucket))

    def _props(self, bucket: bytes) -> dict[str, Any]:
        """The same, shared and cached until the cluster state changes: callers must not modify it."""
        if self._props_at != self._cluster_changes:
            self._props_cache.clear()
            self._props_at = self._cluster_changes
        props = self._props_cache.get(bucket)
        if props is None:
            props = self.default_bucket_props()
            props.update(self.cluster.bucket(bucket))
            if len(self._props_cache) > PROPS_CACHE_MAX:
                self._props_cache.clear()
            self._props_cache[bucket] = props
        return props

    def default_bucket_props(self) -> dict[str, Any]:
        """The properties of a bucket nobody configured (from the node's settings)."""
        s = self.settings
        props: dict[str, Any] = {
            "n_val": s.n_val,
            "r": "quorum" if s.r == s.n_val // 2 + 1 else s.r,
            "w": "quorum" if s.w == s.n_val // 2 + 1 else s.w,
            "pr": 0,
            "pw": 0,
            "dw": "quorum",
            "allow_mult": s.allow_mult,
            "last_write_wins": s.last_write_wins,
        }
        return props

    def preference_list(self, bucket: bytes, key: bytes) -> tuple[int, PreferenceList]:
        """The preference list serving a key now (the next ring's once its partition has switched)."""
        partition, where = self.placement_for(bucket, key)
        return partition, where.plist

    def placement_for(self, bucket: bytes, key: bytes) -> tuple[int, Placement]:
        n_val = int(self._props(bucket)["n_val"])
        partition = self.ring.partition_of(bucket, key)
        return partition, placement.placement(self.cluster.ring, partition, n_val)

    def n_vals(self) -> list[int]:
        return placement.n_vals_in_use(self.cluster, self.settings.n_val)

    @property
    def ring(self) -> Ring:
        return self.cluster.ring.ring

    def healthy(self, now_ms: int) -> frozenset[str]:
        """Members judged up now. Computed at most once per 100 ms of clock, and again whenever the
        failure detector or the membership changes (phi only creeps up between events)."""
        key = (self.detector.version, self._cluster_changes, now_ms // HEALTHY_CACHE_MS)
        if key != self._healthy_key:
            self._healthy_key = key
            self._healthy = frozenset(
                n for n in self.cluster.names(ACTIVE) if n == self.name or self.detector.is_up(n, now_ms)
            )
        return self._healthy

    def has_data(self) -> bool:
        staged = any(k[0] == "data" for k in self._pending) or any(k[0] == "data" for k in self._committing)
        return bool(self.engine.scan("data", b"", None, 1)) or staged

    # --- Storage helpers ------------------------------------------------------------------------------

    def _get(self, area: str, key: bytes) -> bytes | None:
        # A staged value goes in the next batch; one in `_committing` is in the batch being written.
        staged = (area, key)
        if staged in self._pending:
            self._read_after = self._batches_taken + 1
            return self._pending[staged]
        if staged in self._committing:
            self._read_after = max(self._read_after, self._batches_taken)
            return self._committing[staged]
        return self.engine.get(area, key)

    def _durable_after(self, area: str, key: bytes) -> int:
        """The number of the batch that makes this key's staged value durable (0: it is already)."""
        if (area, key) in self._pending:
            return self._batches_taken + 1
        if (area, key) in self._committing:
            return self._batches_taken
        return 0

    def _put(self, area: str, key: bytes, value: bytes | None) -> None:
        # Re-inserting moves the key to the end, so the batch applies operations in the order made.
        self._pending.pop((area, key), None)
        self._pending[(area, key)] = value

    def _scan(self, area: str, start: bytes, end: bytes | None, limit: int) -> list[tuple[bytes, bytes]]:
        staged = len(self._pending) + len(self._committing)
        rows = dict(self.engine.scan(area, start, end, limit + staged))
        # The batch being written first, then what was staged after it: the later write wins.
        for overlay in (self._committing, self._pending):
            for (a, k), v in overlay.items():
                if a == area and k >= start and (end is None or k < end):
                    if v is None:
                        rows.pop(k, None)
                    else:
                        rows[k] = v
        return sorted(rows.items())[:limit]

    def _scan_all(self, area: str, start: bytes, end: bytes | None) -> Iterable[tuple[bytes, bytes]]:
        cursor = start
        while True:
            rows = self._scan(area, cursor, end, 1000)
            yield from rows
            if len(rows) < 1000:
                return
            cursor = rows[-1][0] + b"\x00"

    def _stored_key(self, bucket: bytes, key: bytes) -> bytes:
        return keys.encode(self.ring.partition_of(bucket, key), bucket, key)

    def _load(self, area: str, key: bytes) -> Object | None:
        raw = self._get(area, key)
        if raw is None:
            return None
        try:
            return objects.decode(raw)
        except ObjectError as exc:
            raise AssertionError(f"corrupt object in {area} at {key!r}: {exc}") from None

    def _n_val_of(self, skey: bytes) -> int:
        return int(self._props(keys.decode(skey).bucket)["n_val"])

    def _new_actor(self) -> None:
        """Name this node's next versions with a fresh actor, one that has written nothing anywhere.

        A version vector entry `actor: n` claims every version that actor wrote to the key up to `n`,
        so a coordinator may extend it only from a copy that holds all of them. A node loses that
        certainty when a copy it wrote is lost (staged but not yet durable when the process died: its
        replicas may have acknowledged it) or deleted (a delivered hint, a handed-off stray): a later
        write under the same actor would then claim versions it never saw, and every replica merging
        it would drop them. A fresh actor claims nothing. The generation is persisted in the next
        batch, and nothing carrying the new actor leaves before that batch is durable.
        """
        self.generation += 1
        self._put("meta", META_GENERATION, self.generation.to_bytes(8, "big"))
        name = self.name.encode()
        if len(name) > ACTOR_NAME_BYTES_MAX:
            name = hashlib.blake2b(name, digest_size=16).hexdigest().encode()
        self.actor = name + f"#{self.epoch:08x}.{self.generation}".encode()
        self._forgotten = {}
        self._forgotten_bytes = 0

    def _forget_copy(self, skey: bytes, raw: bytes | None) -> None:
        """A local copy of `skey` (its data or a hint) is about to be deleted: remember the newest
        version of the current actor it held, so the next write of this key here knows what it lacks."""
        if raw is None:
            return
        counter = objects.decode(raw).clock.get(self.actor)
        if counter == 0:
            return
        if skey not in self._forgotten:
            self._forgotten_bytes += len(skey) + FORGOTTEN_ENTRY_BYTES
        self._forgotten[skey] = max(counter, self._forgotten.get(skey, 0))
        if self._forgotten_bytes > self.settings.forgotten_dots_bytes_max:
            self._new_actor()

    def _recall_copy(self, skey: bytes) -> None:
        """A copy of `skey` holding the current actor's newest version of it is staged: nothing of
        this actor is forgotten for the key any more."""
        if self._forgotten.pop(skey, None) is not None:
            self._forgotten_bytes -= len(skey) + FORGOTTEN_ENTRY_BYTES

    def _delete_data(self, skey: bytes) -> None:
        self._forget_copy(skey, self._get("data", skey))
        self._put("data", skey, None)
        self._put("reap", skey, None)
        self.aae.on_write(skey, self._n_val_of(skey), None)

    def _store_data(self, skey: bytes, obj: Object, previous: Object | None, now_ms: int) -> None:
        self._put("data", skey, objects.encode(obj))
        self.aae.on_write(skey, self._n_val_of(skey), obj, previous)
        if objects.is_tombstone(obj):
            if previous is None or not objects.is_tombstone(previous) or self._get("reap", skey) is None:
                self._put("reap", skey, now_ms.to_bytes(8, "big"))
        elif previous is not None and objects.is_tombstone(previous):
            self._put("reap", skey, None)

    def _merge_into_data(self, bucket: bytes, key: bytes, incoming: Object, lww: bool, now_ms: int) -> None:
        skey = self._stored_key(bucket, key)
        local = self._load("data", skey)
        merged = _merged(local, incoming, lww)
        if local is None or not objects.same(local, merged):
            # The usual case is a newer version replacing an older one: store the incoming object
            # itself, whose bytes are already known (it arrived as them), rather than an equal copy.
            if merged is not incoming and objects.same(merged, incoming):
                merged = incoming
            self._store_data(skey, merged, local, now_ms)

    def _merge_into_hints(self, owner: str, bucket: bytes, key: bytes, incoming: Object, lww: bool) -> bool:
        skey = self._stored_key(bucket, key)
        hkey = hints.hint_key(owner, skey)
        local = self._load("hints", hkey)
        if local is None and self._hint_count >= self.settings.hints_max:
            return False
        merged = _merged(local, incoming, lww)
        if local is None:
            self._hint_count += 1
            self.stats.hinted_writes += 1
        if local is None or not objects.same(local, merged):
            self._put("hints", hkey, objects.encode(merged))
        return True

    def _read_local(self, bucket: bytes, key: bytes) -> Object | None:
        """This node's copy of a key: its data, merged with any hints it holds for other owners."""
        skey = self._stored_key(bucket, key)
        obj = self._load("data", skey)
        if self._hint_count:
            for owner in self.cluster.names(membership.STATUSES):
                hinted = self._load("hints", hints.hint_key(owner, skey))
                if hinted is not None:
                    obj = hinted if obj is None else merge(obj, hinted)
        return obj

    def _read_local_after(self, bucket: bytes, key: bytes) -> tuple[Object | None, int]:
        """`_read_local`, and the batch that must be durable before what it read may be shown to
        anyone (0: all of it is on disk already)."""
        outer, self._read_after = self._read_after, 0
        obj = self._read_local(bucket, key)
        after, self._read_after = self._read_after, max(outer, self._read_after)
        return obj, after

    def _set_cluster(self, state: ClusterState) -> None:
        if state == self.cluster:
            return
        self.cluster = state
        self._cluster_changes += 1
        self._put("meta", META_CLUSTER, membership.encode(state))

    # --- Op bookkeeping ------------------------------------------------------------------------------

    def _register(self, op: AnyOp) -> int:
        op_id = self._next_op
        self._next_op += 1
        self._ops[op_id] = op
        heapq.heappush(self._deadlines, (op.deadline_ms, op_id))
        return op_id

    def _extend(self, op_id: int, op: AnyOp, deadline_ms: int) -> None:
        """Give a registered op a new deadline (a long op paced in steps gets one per step)."""
        op.deadline_ms = deadline_ms
        heapq.heappush(self._deadlines, (deadline_ms, op_id))

    def _finish(self, op_id: int) -> None:
        self._ops.pop(op_id, None)

    def _queue(self, effect: Effect, after: int | None) -> None:
        """Queue an effect to leave once the batch numbered `after` is durable. None (the default of
        every caller that does not know better) waits for the next batch, which holds everything
        staged so far; a caller that knows what its effect depends on names that batch (0: nothing)."""
        if after is None:
            self._outbox.append(effect)
        elif after <= self._batches_written:
            self._free.append(effect)
        else:
            self._held.append((after, effect))

    def _send(self, dst: str, msg: Message, *, after: int | None = None) -> None:
        self._queue(Send(dst, msg), after)

    def _answer(self, origin: Origin | None, response: ClientResponse, *, after: int | None = None) -> None:
        if origin is None:
            return
        if isinstance(origin, ToClient):
            self._queue(Reply(origin.request_id, response), after)
        else:
            self._send(origin.node, _forward_reply(origin.req, response), after=after)

    def _timeout(self, timeout_ms: int | None, now_ms: int) -> int:
        limit = self.settings.request_timeout_ms if timeout_ms is None else timeout_ms
        return now_ms + max(1, min(limit, 10 * self.settings.request_timeout_ms))

    # --- Validation ---------------------------------------------------------------------------------------

    def _check_key(self, bucket: bytes, key: bytes) -> Failure | None:
        if not bucket or len(bucket) > self.settings.bucket_bytes_max:
            return Failure("bad_request", f"bucket must be 1 to {self.settings.bucket_bytes_max} bytes")
        if not key or len(key) > self.settings.key_bytes_max:
            return Failure("bad_request", f"key must be 1 to {self.settings.key_bytes_max} bytes")
        return None


def _merged(local: Object | None, incoming: Object, lww: bool) -> Object:
    """What a copy becomes once `incoming` is merged into it (resolved to one value in a last-write-wins bucket)."""
    merged = incoming if local is None else merge(local, incoming)
    return objects.resolve_lww(merged) if lww else merged


def _forward_reply(req: int, response: ClientResponse) -> ForwardPutReply:
    if isinstance(response, Ok):
        found = response.found
        if found is None:
            return ForwardPutReply(req, "ok", "", (), None, False)
        return ForwardPutReply(req, "ok", "", found.values, found.context, found.tombstone)
    if isinstance(response, NotFound):
        return ForwardPutReply(req, "notfound", "", (), response.context, True)
    return ForwardPutReply(req, response.kind, response.reason, (), None, False)
