"""NodeCore: the whole protocol logic of one dynastore node, as a deterministic state machine.

Theory of operation
-------------------
Inputs are client requests (`on_request`), messages from peers (`on_message`), news that a peer
could not be reached (`on_unreachable`) and the passage of time (`on_tick`); each carries `now_ms`.
Handling an input updates memory, stages writes for the local engine and queues effects (messages to
send, replies to give). By default an effect leaves only once the staged operations are written as
one batch (durable engines sync it): `take_batch()` hands the shell the batch, the shell writes it
(from another thread, so the node keeps working meanwhile), calls `batch_written()` and only then
performs the effects that call returns. So no acknowledgement ever precedes the data it acknowledges,
and many inputs share one disk sync (group commit). Reads see staged and in-flight writes through an
overlay, and note which batch holds what they saw. The pipeline itself (staged store, outbox) is
staging.py.

Effects that are known to depend on nothing still being written need not wait: a request for data, a
read answered from data already on disk, a write's answer once every acknowledgement it counts is
durable, a write sent to the other replicas (each acknowledges only its own copy once written, and
synced when the write asks it to; this node's own counts only once its batch is written). `take_free()`
hands them to the shell at once, even while a batch is being written; an effect that depends on a batch
being written is held until that batch is, rather than the next. A shell drives a core with the same few
lines whatever its clock and disk:

    perform(core.take_free())
    batch = core.take_batch()          # only when no batch is being written
    write(batch.ops); sync if batch.sync
    perform(core.batch_written())

The core never touches a socket, the clock or its engine's writes, and draws randomness only from
the injected `random.Random`; the asyncio shell (or the simulator) moves bytes and calls it. Malformed
input from clients becomes a `Failure`; malformed input from peers never reaches here (the codec
rejects it). A broken invariant of our own raises and stops the node.

Layout
------
This module is the shell of the state machine: construction, the public surface, the dispatch of
messages and of op timeouts and lost peers to the concern that owns them (typed tables at the end),
and the node's status. The protocol itself lives in one mixin per concern, over the shared state and
helpers of nodebase.py (storage overlay, op registry, effects); each concern initialises its own
state and owns the lifecycle of its op kinds:
- coordination.py: get, put, delete, forwarding, listing and read repair;
- clusterops.py: heartbeats, gossip, join, leave, remove, the claimant's ring transitions, bucket
  properties;
- handoff.py: ownership transfers, the stray sweep, hinted-handoff delivery;
- reaping.py: tombstone reaping;
and anti-entropy is the composed helper of antientropy.py (`self.aae`), the actor and its dots that
of actors.py (`self.actors`). Effects and admin requests are defined in effects.py and importable
from here.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from dynastore.core import hints, indexes, peercheck, placement
from dynastore.core.actors import Actors
from dynastore.core.antientropy import AntiEntropy, RepairError
from dynastore.core.bucketprops import BUCKET_PROPS
from dynastore.core.clusterops import ClusterOps
from dynastore.core.controller import BackgroundController
from dynastore.core.coordination import Coordination
from dynastore.core.diskspace import DiskSpace
from dynastore.core.effects import (
    AdminRequest,
    Batch,
    ClientJoin,
    ClientLeave,
    ClientRemove,
    ClientRepair,
    ClientReplace,
    ClientStaged,
    Effect,
    Reply,
    SecurityChange,
    Send,
    Stop,
    seed_label,
)
from dynastore.core.handoff import Handoff
from dynastore.core.indexquery import IndexQueries
from dynastore.core.membership import ACTIVE, Member
from dynastore.core.messages import (
    ClientBucketType,
    ClientGet,
    ClientIndexQuery,
    ClientListKeys,
    ClientLocalGet,
    ClientPut,
    ClientRequest,
    ClientSetBucketProps,
    Failure,
    ForwardPut,
    ForwardPutReply,
    GossipDigest,
    GossipState,
    HandoffBatch,
    HandoffPull,
    HintDelivery,
    HintDeliveryReply,
    IndexScan,
    IndexScanReply,
    JoinReply,
    JoinRequest,
    ListKeys,
    ListKeysReply,
    Message,
    ObjectsReply,
    ObjectsRequest,
    Ok,
    Ping,
    Pong,
    Reap,
    ReapCheck,
    ReapCheckReply,
    ReplicaGet,
    ReplicaGetReply,
    ReplicaPut,
    ReplicaPutReply,
    SegmentReply,
    SegmentRequest,
    TreeReply,
    TreeRequest,
)
from dynastore.core.nodebase import NodeBase, StartupError, Stats
from dynastore.core.objects import Object
from dynastore.core.ops import (
    AnyOp,
    ExchangeOp,
    ForwardOp,
    GetOp,
    HintOp,
    IndexQueryOp,
    IndexScanOp,
    JoinOp,
    ListOp,
    PullOp,
    PutOp,
    ReapCheckOp,
    StrayOp,
    ToClient,
)
from dynastore.core.quorum import QuorumError
from dynastore.core.reaping import Reaping
from dynastore.core.scrub import Scrub
from dynastore.settings import Settings
from dynastore.storage.base import Engine

__all__ = [
    "BUCKET_PROPS",
    "AdminRequest",
    "Batch",
    "ClientJoin",
    "ClientLeave",
    "ClientRemove",
    "ClientRepair",
    "ClientReplace",
    "ClientStaged",
    "Effect",
    "NodeCore",
    "Reply",
    "SecurityChange",
    "Send",
    "Stats",
    "Stop",
    "seed_label",
]


class NodeCore(Coordination, IndexQueries, ClusterOps, Handoff, Reaping, Scrub, DiskSpace, NodeBase):
    """One node's protocol state machine. See the module docstring."""

    def __init__(
        self,
        name: str,
        settings: Settings,
        engine: Engine,
        rng: random.Random,
        now_ms: int,
        *,
        host: str = "127.0.0.1",
        peer_port: int = 0,
        http_port: int = 0,
        weight: int = 1,
    ) -> None:
        assert name and len(name.encode()) <= hints.OWNER_BYTES_MAX
        self.name = name
        self.settings = settings
        self.rng = rng
        self._init_base(engine, now_ms)
        self._limits = peercheck.Limits(settings, 0)
        self.actors = Actors(name, self.store, rng, settings)
        self._init_coordination()
        tls = bool(settings.tls_cert_file and settings.tls_key_file)
        self._init_cluster(Member(name, host, peer_port, http_port, weight, "valid", 1, tls), now_ms)
        self._init_handoff(now_ms)
        self._init_reaping(now_ms)
        self._init_scrub(now_ms)
        self._init_space()
        # Buffered mode syncs its engine this often (a batch says when); durable engines sync every batch.
        self._next_sync_ms = now_ms + settings.buffered_sync_interval_ms
        self._sync_due = False
        # Set by prepare_shutdown: writes are turned away.
        self.stopping = False
        self.controller = BackgroundController(settings.background_latency_target_ms, settings.background_window_ms)
        self.aae = AntiEntropy(self, now_ms)
        self._init_index_format()

    def _init_index_format(self) -> None:
        """The secondary index's layout version (indexes.py). A data directory written before indexes
        existed has no record of it: its objects are all of format 1, which carries no index entries,
        so its index is exactly the empty one it has, and the record is written. A newer layout is
        refused."""
        raw = self._get("meta", indexes.META_INDEX_FORMAT)
        version = None if raw is None else int.from_bytes(raw, "big")
        if version is not None and version > indexes.INDEX_FORMAT:
            raise StartupError(
                f"this data directory's secondary index has format {version}; "
                f"this dynastore reads formats up to {indexes.INDEX_FORMAT}"
            )
        if version is None:
            self._put("meta", indexes.META_INDEX_FORMAT, indexes.INDEX_FORMAT.to_bytes(4, "big"))

    # --- Public surface: the durability pipeline ----------------------------------------------------

    def take_free(self) -> list[Effect]:
        """The effects that depend on nothing not yet durable (requests for data, data read from disk,
        answers to writes every acknowledgement of which is durable): the shell performs them at
        once, even while a batch is being written."""
        return self.outbox.take_free()

    def take_batch(self) -> Batch:
        """Everything staged so far as the next batch. The caller writes `batch.ops` to the engine (and
        syncs it when `batch.sync`), then calls `batch_written()` and performs what that returns.

        Effects queued while a batch is being written may depend on it (a reply built from its data),
        so they wait for the next batch, which is taken only after this one is written.
        """
        number, ops = self.store.take()
        self.outbox.seal(number)
        sync, self._sync_due = self._sync_due, False
        return Batch(number, ops, sync)

    def batch_written(self) -> list[Effect]:
        """The batch from `take_batch` is on disk: the effects to perform now. Reads go to the engine
        for it; the effects queued with it and those held for it leave; the writes this node
        coordinates whose copies it held count this node's acknowledgement."""
        number = self.store.taken
        self.store.mark_written(number)
        self._space_failed = False
        effects = self.outbox.written(number)
        self._own_copies_durable(number, self.now_hint_ms)
        return effects + self.outbox.take_free()

    @property
    def has_pending(self) -> bool:
        """Whether anything is staged or queued that a batch would carry."""
        return self.store.has_pending or self.outbox.has_waiting or self._sync_due

    def next_deadline_ms(self) -> int:
        deadline = min(
            self._next_gossip_ms,
            self._next_heartbeat_ms,
            self._next_hint_scan_ms,
            self._next_reap_ms,
            self._scrub_deadline_ms(),
            self._next_transfer_ms,
            self._next_stray_ms,
            self.aae.next_deadline_ms(),
            self._next_sync_ms if not self.engine.durable else self._next_gossip_ms,
        )
        while self._deadlines and self._deadlines[0][1] not in self._ops:
            heapq.heappop(self._deadlines)
        if self._deadlines:
            deadline = min(deadline, self._deadlines[0][0])
        return deadline

    # --- Public surface: inputs -----------------------------------------------------------------------

    def on_request(self, request_id: int, request: ClientRequest | AdminRequest, now_ms: int) -> None:
        self.now_hint_ms = now_ms
        origin = ToClient(request_id)
        try:
            if isinstance(request, ClientGet):
                self._start_get(origin, request, now_ms)
            elif isinstance(request, ClientPut):
                self._start_put(origin, request, now_ms)
            elif isinstance(request, ClientListKeys):
                self._start_list(origin, request, now_ms)
            elif isinstance(request, ClientIndexQuery):
                self._start_index_query(origin, request, now_ms)
            elif isinstance(request, ClientLocalGet):
                self._local_get(origin, request)
            elif isinstance(request, ClientSetBucketProps):
                self._set_bucket_props(origin, request, now_ms)
            elif isinstance(request, ClientBucketType):
                self._bucket_type(origin, request, now_ms)
            elif isinstance(request, ClientJoin):
                self._start_join(origin, request, now_ms)
            elif isinstance(request, ClientLeave):
                self._leave(origin, request, now_ms)
            elif isinstance(request, ClientReplace):
                self._replace(origin, request, now_ms)
            elif isinstance(request, ClientStaged):
                self._staged(origin, request, now_ms)
            elif isinstance(request, ClientRepair):
                self._repair(origin, request, now_ms)
            elif isinstance(request, SecurityChange):
                self._change_security(origin, request, now_ms)
            else:
                self._remove(origin, request, now_ms)
        except QuorumError as exc:
            self._answer(origin, Failure("bad_request", str(exc)))

    def on_message(self, src: str, msg: Message, now_ms: int) -> None:
        """A peer's message. Raises PeerError, before anything changes, for one that no honest member
        sends (peercheck.py): the shell then drops the peer."""
        self.now_hint_ms = now_ms
        if not self._accepts(src, msg):
            self.stats.strangers_dropped += 1
            return
        limits = self._limits
        if limits.ring_size != self.ring.size:
            limits = self._limits = peercheck.Limits(self.settings, self.ring.size)
        peercheck.check(limits, msg)
        if self.detector.heard_from(src, now_ms):
            down_ms = self.detector.recovered_after_ms
            if down_ms >= 0:
                self._event(
                    "peer_up", "info", f"{src} is up again (judged down for {down_ms} ms)", peer=src, down_ms=down_ms
                )
            self._peer_up(src, now_ms)
        handler = _HANDLERS.get(type(msg))
        assert handler is not None, f"no handler for {type(msg).__name__}"
        handler(self, src, msg, now_ms)

    def _accepts(self, src: str, msg: Message) -> bool:
        """Only members change membership or data. A stranger (a node that has not joined, or was
        removed) may ask to join, be answered, and ask for our state, which tells it where it stands;
        a removed node may still hand over the hints it holds (merges that lose nothing: they may be
        the only copy of an acknowledged write)."""
        if type(msg) in _FROM_STRANGERS or self.cluster.is_member(src):
            return True
        return isinstance(msg, HintDelivery) and self.cluster.member(src) is not None

    def on_unreachable(self, peer: str, now_ms: int, reason: str = "") -> None:
        """A connection to `peer` failed or was refused (`reason` says why when the peer refused it): it
        is down until it speaks again, and every op waiting on it is told (each concern decides what
        that means for its own ops).

        A seed known only by address is named by `seed_label(host, port)`.
        """
        self.now_hint_ms = now_ms
        if peer == self.name:
            return
        if not peer.startswith("@"):
            self.detector.connection_failed(peer, now_ms)
        for op_id, op in list(self._ops.items()):
            _OP_KINDS[type(op)].lost(self, op_id, op, peer, reason, now_ms)

    def on_tick(self, now_ms: int) -> None:
        self.now_hint_ms = now_ms
        while self._deadlines and self._deadlines[0][0] <= now_ms:
            _, op_id = heapq.heappop(self._deadlines)
            op = self._ops.get(op_id)
            if op is None:
                continue
            if op.deadline_ms <= now_ms:
                _OP_KINDS[type(op)].expire(self, op_id, op, now_ms)
            elif isinstance(op, GetOp):
                # A read's speculative retry shares the deadline heap (coordination.py).
                self._speculate(op_id, op, now_ms)
        self._tick_membership(now_ms)
        self._tick_hints(now_ms)
        self._tick_reaping(now_ms)
        self._tick_scrub(now_ms)
        self._tick_transfers(now_ms)
        if self._tick_strays(now_ms):
            self._maybe_exit(now_ms)
        self.aae.on_tick(now_ms)
        if not self.engine.durable and now_ms >= self._next_sync_ms:
            # Buffered mode: acknowledged writes may sit in the OS cache; bound what a machine crash loses.
            self._next_sync_ms = now_ms + self.settings.buffered_sync_interval_ms
            self._sync_due = True

    def observe_latency(self, latency_ms: float, now_ms: int) -> None:
        """A foreground request took this long (measured by the shell): input of the background controller."""
        self.controller.observe(now_ms, latency_ms)

    def prepare_shutdown(self) -> None:
        """Record a clean stop: the next start trusts its anti-entropy index without verifying it, and
        goes on with this node's actor. From now on the node coordinates no write (a version written
        after this record could be lost with the process)."""
        self.stopping = True
        self.actors.save()
        self.aae.mark_clean_shutdown()

    # --- Queries for the shell -------------------------------------------------------------------------

    def address_of(self, node: str) -> tuple[str, int] | None:
        member = self.cluster.member(node)
        return None if member is None else member.address

    @property
    def hints_pending(self) -> int:
        return self._hint_count

    def local_copy(self, bucket: bytes, key: bytes) -> Object | None:
        """This node's own copy of a key (data and hints merged), read without any quorum."""
        return self._read_local(bucket, key)

    # --- Status: what `dynastore cluster status` and /admin show --------------------------------------------

    def admin_status(self, now_ms: int) -> dict[str, Any]:
        """Membership as this node sees it, the ring transition and transfers, and anti-entropy."""
        ring = self.cluster.ring
        transition = None
        if ring.next_owners is not None:
            n_vals = self.n_vals()
            switched = sum(1 for p in range(len(ring.owners)) if all(placement.switched(ring, p, n) for n in n_vals))
            pending = placement.transfers(self.cluster, n_vals)
            transition = {
                "partitions_total": len(ring.owners),
                "partitions_switched": switched,
                "transfers_pending": len(pending),
                "receivers": sorted({t.receiver for t in pending}),
            }
        aae, controller = self.aae, self.controller
        return {
            "node": self.name,
            "cluster": self.cluster.cluster,
            "ring_version": ring.version,
            "claimant": self.cluster.claimant(),
            "members": self._members_status(now_ms),
            "hints_pending": self.hints_pending,
            "transition": transition,
            "receiving": self.transfer_progress(),
            "anti_entropy": {
                "exchanges": aae.stats.exchanges,
                "keys_repaired": aae.stats.keys_repaired,
                "tree_builds": aae.stats.tree_builds,
                "trees_ready": sum(1 for t in aae.trees.values() if t.ready),
                "trees": len(aae.trees),
                "last_exchange_age_s": {
                    str(p): round((now_ms - t) / 1000, 1) for p, t in sorted(aae.stats.last_exchange_ms.items())
                },
                "background_rate_per_s": round(controller.rate_per_s, 1),
                "background_deferred": controller.deferred,
                "foreground_p99_ms": controller.p99(now_ms),
                "background_latency_limit_ms": round(controller.limit_ms(now_ms), 1),
            },
        }

    def _members_status(self, now_ms: int) -> list[dict[str, Any]]:
        counts = self.ring.counts()
        members = []
        for m in self.cluster.members:
            me = m.name == self.name
            record = self.cluster.staged_for(m.name)
            members.append(
                {
                    "name": m.name,
                    "host": m.host,
                    "peer_port": m.peer_port,
                    "http_port": m.http_port,
                    "status": m.status,
                    "weight": m.weight,
                    "tls": m.tls,
                    "reachable": me or self.detector.is_up(m.name, now_ms),
                    "phi": 0.0 if me else round(self.detector.phi(m.name, now_ms), 2),
                    "partitions": counts.get(m.name, 0),
                    # Hints this node holds for the member, to hand over when it is reachable.
                    "hints_pending": self._hints_by_owner.get(m.name, 0),
                    # A staged change waiting for `cluster commit` (clusterplan.py), if any.
                    "staged": record.action if record is not None and record.pending else None,
                }
            )
        return members

    def aae_trees(self) -> dict[str, dict[str, Any]]:
        """Every anti-entropy tree's root, whether this node is a primary of its partition (replicas of
        one partition show equal roots once converged), and when it was last built (ms since the epoch)."""
        trees = {}
        built = self.aae.stats.built_ms
        for (partition, n_val), tree in sorted(self.aae.trees.items()):
            primaries = placement.placement(self.cluster.ring, partition, n_val).plist.primary_nodes
            trees[f"{partition}/{n_val}"] = {
                "root": tree.root().hex() if tree.ready else None,
                "primary": self.name in primaries,
                "built_at_ms": built.get((partition, n_val)) if tree.ready else None,
            }
        return trees

    def aae_partitions(self) -> dict[str, dict[str, Any]]:
        """Per partition this node is a primary of (`cluster aae-status`): its last exchange (when, with
        whom, keys repaired), keys repaired since the node started, exchanges asked for and waiting,
        whether one is running now, and when a requested one was last given up (peer down or too busy)."""
        stats = self.aae.stats
        queued: dict[int, int] = {}
        for partition, _, _ in self.aae.requested:
            queued[partition] = queued.get(partition, 0) + 1
        exchanging = {op.partition for op in self._ops.values() if isinstance(op, ExchangeOp)}
        out: dict[str, dict[str, Any]] = {}
        for partition, _n_val, _peers in self.aae._candidates():
            if str(partition) in out:
                continue
            last = stats.last_exchange.get(partition)
            out[str(partition)] = {
                "last_exchange": None
                if last is None
                else {"at_ms": last.at_ms, "peer": last.peer, "n_val": last.n_val, "keys_repaired": last.keys_repaired},
                "keys_repaired": stats.repaired_by_partition.get(partition, 0),
                "repairs_queued": queued.get(partition, 0),
                "exchanging": partition in exchanging,
                "repair_given_up_at_ms": stats.repair_given_up_ms.get(partition),
            }
        return out

    def _repair(self, origin: ToClient, req: ClientRepair, now_ms: int) -> None:
        """`cluster repair`: anti-entropy exchanges now, for one partition or every one held here."""
        if not self.settings.anti_entropy_enabled:
            self._answer(origin, Failure("bad_request", "anti-entropy is off on this node (anti_entropy_enabled)"))
            return
        try:
            self.aae.request_repair(req.partition)
        except RepairError as exc:
            self._answer(origin, Failure("bad_request", str(exc)))
            return
        self._answer(origin, Ok())

    # --- Stats ----------------------------------------------------------------------------------------------

    def stats_snapshot(self, now_ms: int) -> dict[str, Any]:
        s = self.stats
        members = self.cluster.names(ACTIVE)
        return {
            "nodename": self.name,
            "actor": self.actor.decode(),
            "ring_members": sorted(members),
            "ring_ownership": {node: count for node, count in sorted(self.ring.counts().items())},
            "ring_version": self.cluster.ring.version,
            "ring_num_partitions": self.ring.size,
            "connected_nodes": sorted(n for n in members if n != self.name and self.detector.is_up(n, now_ms)),
            "down_nodes": sorted(n for n in members if n != self.name and not self.detector.is_up(n, now_ms)),
            "node_gets_total": s.gets,
            "node_puts_total": s.puts,
            "node_deletes_total": s.deletes,
            "coord_redirs_total": s.forwarded_puts,
            "coordinated_puts_total": s.coordinated_puts,
            "read_repairs_total": s.read_repairs,
            "hinted_writes_total": s.hinted_writes,
            "hints_delivered_total": s.hints_delivered,
            "hints_pending": self._hint_count,
            "keys_stored": self.engine.count("data"),
            "tombstones_reaped_total": s.tombstones_reaped,
            "gossip_rounds_total": s.gossip_rounds,
            "handoff_batches_total": s.handoff_batches,
            "handoff_keys_total": s.handoff_keys,
            "handoff_bytes_total": s.handoff_bytes,
            "handoff_resumed_total": s.handoff_resumed,
            "transfers_completed_total": s.transfers_completed,
            "strays_handed_off_total": s.strays_handed_off,
            "strangers_dropped_total": s.strangers_dropped,
            "storage_corrupt_copies_total": s.corrupt_copies,
            "storage_used_bytes": None if self.space is None else self.space.used_bytes,
            "storage_free_bytes": None if self.space is None else self.space.free_bytes,
            "storage_full": self.space_full,
            "storage_writes_refused_total": s.writes_refused_full,
            "scrub_copies_total": s.scrubbed_copies,
            "scrub_passes_total": s.scrub_passes,
            "scrub_copies_upgraded_total": s.scrub_upgraded,
            "ring_transition": self.cluster.ring.next_owners is not None,
            "aae_exchanges_total": self.aae.stats.exchanges,
            "aae_exchanges_with_differences_total": self.aae.stats.exchanges_with_differences,
            "aae_keys_repaired_total": self.aae.stats.keys_repaired,
            "aae_tree_builds_total": self.aae.stats.tree_builds,
            "aae_index_verifications_total": self.aae.stats.index_verifications,
            "aae_index_fixes_total": self.aae.stats.index_fixes,
            "aae_bytes_sent_total": self.aae.stats.bytes_sent,
            "aae_bytes_received_total": self.aae.stats.bytes_received,
            "aae_busy_replies_total": self.aae.stats.busy_replies,
            "aae_objects_pushed_total": self.aae.stats.objects_pushed,
            "aae_trees_ready": sum(1 for t in self.aae.trees.values() if t.ready),
            "background_rate_per_s": round(self.controller.rate_per_s, 1),
            "background_admitted_total": self.controller.admitted,
            "background_deferred_total": self.controller.deferred,
            "background_slowdowns_total": self.controller.slowdowns,
            "foreground_p99_ms": self.controller.p99(now_ms),
            "background_latency_limit_ms": round(self.controller.limit_ms(now_ms), 1),
            "siblings_histogram": {str(k): v for k, v in sorted(s.siblings_histogram.items())},
            "speculative_reads_total": s.speculative_reads,
            "speculative_sends_total": sum(s.speculative_sends.values()),
            "speculative_sends_by_reason": dict(s.speculative_sends),
            "speculative_replicas_unasked_total": s.speculative_unasked,
            "replica_get_p99_ms": round(self._replica_latency.percentile_ms(99.0, now_ms), 3),
            "requests_in_flight": len(self._ops),
        }


# What a peer that is not a member may send: nothing that changes membership or data.
_FROM_STRANGERS = frozenset({JoinRequest, JoinReply, GossipDigest, Ping, Pong})

MsgT = TypeVar("MsgT", bound=Message)
OpT = TypeVar("OpT", bound=AnyOp)
Handler = Callable[[NodeCore, str, Any, int], None]


def _on(kind: type[MsgT], handler: Callable[[NodeCore, str, MsgT, int], None]) -> tuple[type[Any], Handler]:
    """A message kind and its handler, checked to take that kind."""
    return kind, handler


@dataclass(frozen=True, slots=True)
class OpKind:
    """What ends an op of one kind: its deadline passing, and a peer found unreachable (which may or may
    not concern it: the handler decides)."""

    expire: Callable[[NodeCore, int, Any, int], None]
    lost: Callable[[NodeCore, int, Any, str, str, int], None]


def _op(
    kind: type[OpT],
    expire: Callable[[NodeCore, int, OpT, int], None],
    lost: Callable[[NodeCore, int, OpT, str, str, int], None],
) -> tuple[type[Any], OpKind]:
    """An op kind and its lifecycle handlers, checked to take that kind."""
    return kind, OpKind(expire, lost)


_HANDLERS: dict[type[Any], Handler] = dict(
    [
        _on(Ping, NodeCore._on_ping),
        _on(Pong, NodeCore._on_pong),
        _on(ReplicaGet, NodeCore._on_replica_get),
        _on(ReplicaGetReply, NodeCore._on_replica_get_reply),
        _on(ReplicaPut, NodeCore._on_replica_put),
        _on(ReplicaPutReply, NodeCore._on_replica_put_reply),
        _on(ForwardPut, NodeCore._on_forward_put),
        _on(ForwardPutReply, NodeCore._on_forward_put_reply),
        _on(HintDelivery, NodeCore._on_hint_delivery),
        _on(HintDeliveryReply, NodeCore._on_hint_delivery_reply),
        _on(Reap, NodeCore._on_reap),
        _on(ReapCheck, NodeCore._on_reap_check),
        _on(ReapCheckReply, NodeCore._on_reap_check_reply),
        _on(ListKeys, NodeCore._on_list_keys),
        _on(ListKeysReply, NodeCore._on_list_keys_reply),
        _on(IndexScan, NodeCore._on_index_scan),
        _on(IndexScanReply, NodeCore._on_index_scan_reply),
        _on(GossipDigest, NodeCore._on_gossip_digest),
        _on(GossipState, NodeCore._on_gossip_state),
        _on(JoinRequest, NodeCore._on_join_request),
        _on(JoinReply, NodeCore._on_join_reply),
        _on(HandoffPull, NodeCore._on_handoff_pull),
        _on(HandoffBatch, NodeCore._on_handoff_batch),
        _on(TreeRequest, lambda node, src, msg, now: node.aae.on_tree_request(src, msg, now)),
        _on(TreeReply, lambda node, src, msg, now: node.aae.on_tree_reply(src, msg, now)),
        _on(SegmentRequest, lambda node, src, msg, now: node.aae.on_segment_request(src, msg, now)),
        _on(SegmentReply, lambda node, src, msg, now: node.aae.on_segment_reply(src, msg, now)),
        _on(ObjectsRequest, lambda node, src, msg, now: node.aae.on_objects_request(src, msg, now)),
        _on(ObjectsReply, lambda node, src, msg, now: node.aae.on_objects_reply(src, msg, now)),
    ]
)

_OP_KINDS: dict[type[Any], OpKind] = dict(
    [
        _op(GetOp, NodeCore._expire_get, NodeCore._lost_get),
        _op(PutOp, NodeCore._expire_put, NodeCore._lost_put),
        _op(ForwardOp, NodeCore._expire_forward, NodeCore._lost_forward),
        _op(ListOp, NodeCore._expire_list, NodeCore._lost_list),
        _op(IndexQueryOp, NodeCore._expire_index_query, NodeCore._lost_index_query),
        _op(IndexScanOp, NodeCore._expire_index_scan, NodeCore._lost_index_scan),
        _op(HintOp, NodeCore._expire_hints, NodeCore._lost_hints),
        _op(JoinOp, NodeCore._expire_join, NodeCore._lost_join),
        _op(PullOp, NodeCore._expire_pull, NodeCore._lost_pull),
        _op(StrayOp, NodeCore._expire_strays, NodeCore._lost_strays),
        _op(ReapCheckOp, NodeCore._expire_reap_check, NodeCore._lost_reap_check),
        _op(
            ExchangeOp,
            lambda node, op_id, op, now: node.aae.abandon(op_id),
            lambda node, op_id, op, peer, reason, now: node.aae.abandon(op_id) if op.peer == peer else None,
        ),
    ]
)
