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

import heapq
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from dynastore.core import (
    bucketprops,
    buckettypes,
    changes,
    hints,
    indexes,
    keys,
    membership,
    objects,
    placement,
    quorum,
)
from dynastore.core.actors import Actors
from dynastore.core.antientropy import AntiEntropy
from dynastore.core.controller import BackgroundController
from dynastore.core.effects import Effect, Event, EventField, Reply, Send
from dynastore.core.failure import FailureDetector
from dynastore.core.membership import ACTIVE, ClusterState
from dynastore.core.messages import ClientResponse, Failure, ForwardPutReply, Message, NotFound, Ok
from dynastore.core.objects import CorruptCopy, Object
from dynastore.core.ops import AnyOp, GetOp, Origin, ToClient
from dynastore.core.placement import Placement
from dynastore.core.ring import PreferenceList, Ring
from dynastore.core.staging import Outbox, StagedStore
from dynastore.core.versions import merge
from dynastore.settings import Settings
from dynastore.storage.base import Engine

META_CLUSTER = b"cluster"
META_CLUSTER_KEY = b"cluster_key"


class StartupError(Exception):
    """A node cannot start on this data directory with these settings; the message says why in one line."""


# Why a read asked the replicas it held back (speculative.py): its delay passed, a replica answered
# not-found, a replica was found unreachable.
SpeculationReason = Literal["timer", "notfound", "failure"]
SPECULATION_REASONS: tuple[SpeculationReason, ...] = ("timer", "notfound", "failure")


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
    # What the objects received by ownership handoff weigh (values, types, metadata; objects.size_bytes).
    handoff_bytes: int = 0
    handoff_resumed: int = 0
    transfers_completed: int = 0
    strays_handed_off: int = 0
    # Messages other than a join from a node that is not a member (or was removed): dropped.
    strangers_dropped: int = 0
    # Stored copies that failed their checksum or did not decode (discarded, repaired from replicas).
    corrupt_copies: int = 0
    # Writes this node turned away because its disk is (nearly) full (diskspace.py).
    writes_refused_full: int = 0
    # The scrub: copies it re-read, passes it finished, copies it rewrote with a checksum.
    scrubbed_copies: int = 0
    scrub_passes: int = 0
    scrub_upgraded: int = 0
    siblings_histogram: dict[int, int] = field(default_factory=dict)
    # Speculative retry: reads that asked fewer replicas first, the held replicas asked later (by why),
    # and those never asked (the replica reads it saved).
    speculative_reads: int = 0
    speculative_sends: dict[SpeculationReason, int] = field(
        default_factory=lambda: dict.fromkeys(SPECULATION_REASONS, 0)
    )
    speculative_unasked: int = 0


@dataclass(frozen=True, slots=True)
class Readiness:
    """What `/ready` reports: `ready` with an empty `reason`, else the reason; the owners believed up
    and in all, and the default bucket's n_val, r and w."""

    ready: bool
    reason: str
    owners_up: int
    owners: int
    n_val: int
    r: int
    w: int


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
    # The actor that names this node's versions, and the dots it hands out (actors.py).
    actors: Actors
    # A clean stop is under way (NodeCore.prepare_shutdown): no more writes are coordinated here.
    stopping: bool
    cluster: ClusterState
    stats: Stats
    detector: FailureDetector
    controller: BackgroundController
    aae: AntiEntropy
    # The latest `now_ms` any input carried, for the rare helper that has no `now_ms` of its own.
    now_hint_ms: int
    # The durability pipeline (staging.py): writes staged for the next batch and the batch being
    # written, read through an overlay; effects and the batch each waits for.
    store: StagedStore
    outbox: Outbox[Effect]
    # The store's and the outbox's own methods, bound once (every request goes through them):
    # reads and writes through the overlay, the batch that makes a key durable, and
    # `_queue(effect, after)`: leave once batch `after` is durable (None, the default of every caller
    # that does not know better, waits for the next batch, which holds everything staged so far; a
    # caller that knows what its effect depends on names that batch, 0 for nothing).
    _get: Callable[[str, bytes], bytes | None]
    _put: Callable[[str, bytes, bytes | None], None]
    _durable_after: Callable[[str, bytes], int]
    # The next batch taken is synced (buffered mode's periodic sync, `_sync_next_batch`).
    _sync_due: bool
    # `_scan(area, start, end, limit, bytes_max=None)`: see StagedStore.scan.
    _scan: Callable[..., list[tuple[bytes, bytes]]]
    _scan_all: Callable[[str, bytes, bytes | None], Iterable[tuple[bytes, bytes]]]
    _queue: Callable[[Effect, int | None], None]
    _healthy_key: tuple[int, int, int]
    _props_cache: dict[bytes, dict[str, Any]]
    _props_at: int
    _cluster_changes: int
    _healthy: frozenset[str]
    _ops: dict[int, AnyOp]
    # A heap of (deadline_ms, op id); entries of finished ops are skipped when they surface.
    _deadlines: list[tuple[int, int]]
    _next_op: int
    # Hints held, and their bytes: both bounded (hints_max, hints_bytes_max).
    _hint_count: int
    _hint_bytes: int
    # Hints held per owner they are for (owners with none are absent): what the dashboard shows.
    _hints_by_owner: dict[str, int]

    def _init_base(self, engine: Engine, now_ms: int) -> None:
        """The state every concern shares: storage pipeline, caches, op registry, stats, failure detector."""
        self.engine = engine
        self.store = store = StagedStore(engine)
        self.outbox = Outbox()
        self._get, self._put, self._durable_after = store.get, store.put, store.durable_after
        self._scan, self._scan_all = store.scan, store.scan_all
        self._queue = self.outbox.queue
        self.now_hint_ms = now_ms
        self._healthy_key = (-1, -1, -1)
        self._cluster_changes = 0
        self._props_cache = {}
        self._props_at = -1
        self._healthy = frozenset()
        self._ops = {}
        self._deadlines = []
        self._next_op = 1
        self.stats = Stats()
        s = self.settings
        self.detector = FailureDetector(
            s.phi_threshold,
            s.phi_window_count,
            float(s.phi_min_std_dev_ms),
            float(s.phi_acceptable_pause_ms),
            float(s.heartbeat_interval_ms),
        )

    # --- Calls across concerns ---------------------------------------------------------------------------

    @abstractmethod
    def _dispatch_get(self, op: GetOp, now_ms: int) -> None:
        """Register a read and ask its targets (coordination.py); reaping reads through it too."""

    @abstractmethod
    def _finish_reap(self, op: GetOp, now_ms: int) -> None:
        """Reap a tombstone once the read that preceded it is complete (reaping.py)."""

    @abstractmethod
    def _refuses(self, *, delete: bool) -> bool:
        """Whether a write (a delete: `delete`) must not be staged here for lack of room (diskspace.py)."""

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
            props = bucketprops.defaults(self.settings)
            # The type's properties, then the bucket's own (buckettypes.py). A quorum set to "default"
            # follows the node's default: it is no count of its own.
            record = self.cluster.bucket_type(buckettypes.split(bucket)[0])
            if record is not None:
                props.update((k, v) for k, v in record.props if v != "default")
            props.update((k, v) for k, v in self.cluster.bucket(bucket).items() if v != "default")
            if props.get("datatype") is not None:
                # A data type's copies merge as siblings, whatever the settings (datatypes.py).
                props["allow_mult"], props["last_write_wins"] = True, False
            if len(self._props_cache) > PROPS_CACHE_MAX:
                self._props_cache.clear()
            self._props_cache[bucket] = props
        return props

    def _keeps_one(self, bucket: bytes) -> bool:
        """Whether a bucket keeps one value per key (last-write-wins, or allow_mult off; objects.py)."""
        return bucketprops.keeps_one(self._props(bucket))

    def preference_list(self, bucket: bytes, key: bytes) -> tuple[int, PreferenceList]:
        """The preference list serving a key now (the next ring's once its partition has switched)."""
        partition, where = self.placement_for(bucket, key)
        return partition, where.plist

    def placement_for(self, bucket: bytes, key: bytes) -> tuple[int, Placement]:
        n_val = int(self._props(bucket)["n_val"])
        partition = self.ring.partition_of(bucket, key)
        return partition, placement.placement(self.cluster.ring, partition, n_val)

    def _list_replicas(self, bucket: bytes | None, partition: int, now_ms: int) -> list[str]:
        """The reachable primaries of `partition` for the bucket's n_val (the smallest n_val when listing
        buckets: those hold every bucket's keys), this node first: who may answer for the partition in
        a listing or a coverage query."""
        n_val = self.n_vals()[0] if bucket is None else int(self._props(bucket)["n_val"])
        healthy = self.healthy(now_ms)
        primaries = placement.placement(self.cluster.ring, partition, n_val).plist.primary_nodes
        found = [node for node in primaries if node in healthy]
        return sorted(found, key=lambda node: node != self.name)

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

    def readiness(self, now_ms: int) -> Readiness:
        """Whether this node can serve the default bucket's reads and writes now: it is an active
        member, the ring is known, and enough owners are believed up for the default bucket's R and W
        (sloppy quorum: any owners, primaries or fallbacks). One owner down of three leaves R=W=2."""
        props = bucketprops.defaults(self.settings)
        record = self.cluster.bucket_type(buckettypes.DEFAULT)
        if record is not None:
            props.update((k, v) for k, v in record.props if v != "default")
        n_val = int(props["n_val"])
        try:
            r = quorum.resolve("r", props["r"], n_val, self.settings.r, 1)
            w = quorum.resolve("w", props["w"], n_val, self.settings.w, 1)
        except quorum.QuorumError as exc:
            return Readiness(False, f"the default bucket's quorums are invalid: {exc}", 0, 0, n_val, 0, 0)
        owners = set(self.ring.counts())
        up = len(owners & self.healthy(now_ms))
        need = max(r, w)
        if self.name not in self.cluster.names(ACTIVE):
            reason = "this node is not an active member of its cluster"
        elif not owners:
            reason = "the ring is not known yet"
        elif up < need:
            reason = (
                f"{up} of {len(owners)} owners believed up; the default bucket (n_val={n_val}) needs "
                f"{need} for r={r} and w={w}"
            )
        else:
            reason = ""
        return Readiness(not reason, reason, up, len(owners), n_val, r, w)

    def has_data(self) -> bool:
        return bool(self.engine.scan("data", b"", None, 1)) or self.store.has_staged("data")

    # --- Storage helpers ------------------------------------------------------------------------------

    def _stored_key(self, bucket: bytes, key: bytes) -> bytes:
        return keys.encode(self.ring.partition_of(bucket, key), bucket, key)

    def _load(self, area: str, key: bytes) -> Object | None:
        """A stored copy (data or hint); None when there is none or it is corrupt (then discarded)."""
        raw = self._get(area, key)
        if raw is None:
            return None
        return self._decode_copy(area, key, raw)

    def _decode_copy(self, area: str, key: bytes, raw: bytes) -> Object | None:
        """The object of a stored copy of `key` in `area`; None when it fails its checksum or does not
        decode: it is then discarded and counted, and replicas bring it back (read repair, and an
        anti-entropy exchange of its partition started at once)."""
        try:
            return objects.decode_stored(raw)
        except CorruptCopy as exc:
            self._discard_corrupt(area, key, raw, str(exc))
            return None

    def _discard_corrupt(self, area: str, key: bytes, raw: bytes, reason: str) -> None:
        self.stats.corrupt_copies += 1
        where = keys.describe(key if area == "data" else hints.parse(key)[1])
        text = f"corrupt copy of {where} in {area} ({reason}): discarded, to be repaired"
        self._event("corrupt_copy", "warning", text, key=where, area=area, reason=reason)
        # It may have held versions of this node's actor that no other copy holds: never claim them.
        self.actors.new_actor()
        self._put(area, key, None)
        if area == "hints":
            self._hint_count -= 1
            self._hint_bytes -= len(raw)
            self._count_hint_owner(key, -1)
            return
        self._put("reap", key, None)
        indexes.on_write(self, key, None)
        # The segment index still holds the summary of what the copy was: now the tree shows it missing.
        self.aae.on_write(key, self._n_val_of(key), None)
        self.aae.repair_soon(int.from_bytes(key[: keys.PARTITION_BYTES], "big"))

    def _n_val_of(self, skey: bytes) -> int:
        return int(self._props(keys.decode(skey).bucket)["n_val"])

    @property
    def actor(self) -> bytes:
        """The actor naming the versions this node writes now."""
        return self.actors.actor

    def _delete_data(self, skey: bytes) -> None:
        self.actors.forget(skey, self._get("data", skey))
        self._put("data", skey, None)
        self._put("reap", skey, None)
        indexes.on_write(self, skey, None)
        self.aae.on_write(skey, self._n_val_of(skey), None)

    def _store_data(self, skey: bytes, obj: Object, previous: Object | None, now_ms: int) -> None:
        self._put("data", skey, objects.encode_stored(obj))
        indexes.on_write(self, skey, obj, previous)
        self.aae.on_write(skey, self._n_val_of(skey), obj, previous)
        if objects.is_tombstone(obj):
            if previous is None or not objects.is_tombstone(previous) or self._get("reap", skey) is None:
                self._put("reap", skey, now_ms.to_bytes(8, "big"))
        elif previous is not None and objects.is_tombstone(previous):
            self._put("reap", skey, None)

    def _merge_into_data(self, bucket: bytes, key: bytes, incoming: Object, one: bool, now_ms: int) -> None:
        """Merge `incoming` into this node's copy; `one`: the bucket keeps one value per key."""
        skey = self._stored_key(bucket, key)
        local = self._load("data", skey)
        merged = _merged(local, incoming, one)
        if local is None or not objects.same(local, merged):
            # The usual case is a newer version replacing an older one: store the incoming object
            # itself, whose bytes are already known (it arrived as them), rather than an equal copy.
            if merged is not incoming and objects.same(merged, incoming):
                merged = incoming
            self._store_data(skey, merged, local, now_ms)

    def _merge_into_hints(self, owner: str, bucket: bytes, key: bytes, incoming: Object, one: bool) -> bool:
        """Keep `incoming` as a hint for `owner`; False when the hint store is full (in count or bytes)."""
        skey = self._stored_key(bucket, key)
        hkey = hints.hint_key(owner, skey)
        old_raw = self._get("hints", hkey)
        local = None if old_raw is None else self._decode_copy("hints", hkey, old_raw)
        if local is None:
            old_raw = None
        if local is None and self._hint_count >= self.settings.hints_max:
            return False
        merged = _merged(local, incoming, one)
        if local is not None and objects.same(local, merged):
            return True
        raw = objects.encode_stored(merged)
        grown = len(raw) - (0 if old_raw is None else len(old_raw))
        if grown > 0 and self._hint_bytes + grown > self.settings.hints_bytes_max:
            return False
        if local is None:
            self._hint_count += 1
            self._count_hint_owner(hkey, +1)
            self.stats.hinted_writes += 1
        self._hint_bytes += grown
        self._put("hints", hkey, raw)
        return True

    def _drop_hint(self, hkey: bytes, raw: bytes) -> None:
        """A hint was delivered: delete it, remembering what this node's actor had written in it."""
        self.actors.forget(hints.parse(hkey)[1], raw)
        self._put("hints", hkey, None)
        self._hint_count -= 1
        self._hint_bytes -= len(raw)
        self._count_hint_owner(hkey, -1)

    def _count_hint_owner(self, hkey: bytes, change: int) -> None:
        """Count one hint more or fewer for the owner `hkey` names (a key that names none is not counted)."""
        try:
            owner = hints.parse(hkey)[0]
        except hints.HintKeyError:
            return
        count = self._hints_by_owner.get(owner, 0) + change
        if count > 0:
            self._hints_by_owner[owner] = count
        else:
            self._hints_by_owner.pop(owner, None)

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
        outer = self.store.begin_read()
        obj = self._read_local(bucket, key)
        return obj, self.store.end_read(outer)

    def _set_cluster(self, state: ClusterState) -> None:
        if state == self.cluster:
            return
        old, self.cluster = self.cluster, state
        self._cluster_changes += 1
        self._put("meta", META_CLUSTER, membership.encode(state))
        for event in changes.between(old, state):
            self._queue(event, 0)

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

    def _send(self, dst: str, msg: Message, *, after: int | None = None) -> None:
        self._queue(Send(dst, msg), after)

    def _event(
        self, kind: str, level: Literal["debug", "info", "warning", "error"], text: str, **fields: EventField
    ) -> None:
        """Tell the operator (the shell logs it at once: an event reports, it acknowledges nothing)."""
        self._queue(Event(kind, level, text, tuple(fields.items())), 0)

    def _answer(self, origin: Origin | None, response: ClientResponse, *, after: int | None = None) -> None:
        if origin is None:
            return
        if isinstance(origin, ToClient):
            self._queue(Reply(origin.request_id, response), after)
        else:
            self._send(origin.node, _forward_reply(origin.req, response), after=after)

    def _sync_next_batch(self) -> None:
        """The next batch taken holds a copy that must be synced before what waits for it leaves (a
        durable engine syncs every batch anyway): a buffered write's chosen replica, and in buffered
        mode a copy whose sender drops its own once it is acknowledged (a delivered hint, a handed-off
        stray or partition), which may be the one synced copy of an acknowledged write. A sync covers
        every batch written before it too."""
        if not self.engine.durable:
            self._sync_due = True

    def _timeout(self, timeout_ms: int | None, now_ms: int) -> int:
        limit = self.settings.request_timeout_ms if timeout_ms is None else timeout_ms
        return now_ms + max(1, min(limit, 10 * self.settings.request_timeout_ms))

    # --- Validation ---------------------------------------------------------------------------------------

    def _check_key(self, bucket: bytes, key: bytes | None) -> Failure | None:
        problem = keys.name_problem(self.settings, bucket, key)
        return None if problem is None else Failure("bad_request", problem)


def _merged(local: Object | None, incoming: Object, one: bool) -> Object:
    """What a copy becomes once `incoming` is merged into it (resolved to one value when `one`)."""
    merged = incoming if local is None else merge(local, incoming)
    return objects.resolve(merged) if one else merged


def _forward_reply(req: int, response: ClientResponse) -> ForwardPutReply:
    if isinstance(response, Ok):
        found = response.found
        if found is None:
            return ForwardPutReply(req, "ok", "", (), None, False)
        return ForwardPutReply(req, "ok", "", found.values, found.context, found.tombstone)
    if isinstance(response, NotFound):
        return ForwardPutReply(req, "notfound", "", (), response.context, True)
    return ForwardPutReply(req, response.kind, response.reason, (), None, False)
