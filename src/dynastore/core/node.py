"""NodeCore: the whole protocol logic of one dynastore node, as a deterministic state machine.

Theory of operation
-------------------
Inputs are client requests (`on_request`), messages from peers (`on_message`), news that a peer
could not be reached (`on_unreachable`) and the passage of time (`on_tick`); each carries `now_ms`.
Handling an input updates memory, stages writes for the local engine and queues effects (messages to
send, replies to give). By default an effect leaves only once the staged operations are written as
one batch (durable engines sync it): `take_batch()` hands the shell the batch and the effects queued
with it, the shell writes the batch (from another thread, so the node keeps working meanwhile), calls
`batch_written()` and only then performs the effects. So no acknowledgement ever precedes the data it
acknowledges, and many inputs share one disk sync (group commit). Reads see staged and in-flight
writes through an overlay, and note which batch holds what they saw.

Effects that are known to depend on nothing still being written need not wait: a request for data, a
read answered from data already on disk, a write's answer once every acknowledgement it counts is
durable, a write sent to the other replicas (each acknowledges only its own durable copy; this node's
own counts only once its batch is written). `take_free()` hands them to the shell at once, even while
a batch is being written; an effect that depends on a batch being written is held until that batch
is, rather than the next. `flush(now_ms)` does it all in one call (the simulator's way without disk
latency).

The core never touches a socket or the clock and draws randomness only from the injected
`random.Random`; the asyncio shell (or the simulator) moves bytes and calls it. Malformed input from
clients becomes a `Failure`; malformed input from peers never reaches here (the codec rejects it).
A broken invariant of our own raises and stops the node.

Layout
------
This module is the shell of the state machine: construction, the public surface, the dispatch of
messages to handlers, the timeouts of operations in flight, and stats. The protocol itself lives in
one mixin per concern, over the shared state and helpers of nodebase.py (storage overlay, op
registry, effects):
- coordination.py: get, put, delete, forwarding, listing and read repair;
- clusterops.py: heartbeats, gossip, join, leave, remove, the claimant's ring transitions, bucket
  properties;
- handoff.py: ownership transfers, the stray sweep, hinted-handoff delivery;
- reaping.py: tombstone reaping;
and anti-entropy is the composed helper of antientropy.py (`self.aae`). Effects and admin requests
are defined in effects.py and importable from here.
"""

from __future__ import annotations

import heapq
import random
from typing import Any

from dynastore.core import hints, membership
from dynastore.core.antientropy import AntiEntropy, ExchangeOp
from dynastore.core.clusterops import BUCKET_PROPS, ClusterOps
from dynastore.core.controller import BackgroundController
from dynastore.core.coordination import LIST_KEYS_MAX, Coordination
from dynastore.core.effects import (
    AdminRequest,
    Batch,
    ClientJoin,
    ClientLeave,
    ClientRemove,
    Effect,
    Reply,
    Send,
    seed_label,
)
from dynastore.core.failure import FailureDetector
from dynastore.core.handoff import Handoff
from dynastore.core.membership import ACTIVE, Member
from dynastore.core.messages import (
    ClientGet,
    ClientListKeys,
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
    JoinReply,
    JoinRequest,
    ListKeys,
    ListKeysReply,
    Message,
    ObjectsReply,
    ObjectsRequest,
    Ping,
    Pong,
    Reap,
    ReplicaGet,
    ReplicaGetReply,
    ReplicaPut,
    ReplicaPutReply,
    SegmentReply,
    SegmentRequest,
    TreeReply,
    TreeRequest,
)
from dynastore.core.nodebase import META_CLUSTER, META_COUNTER, META_EPOCH, META_GENERATION, NodeBase, Stats
from dynastore.core.objects import Object
from dynastore.core.ops import AnyOp, ForwardOp, GetOp, HintOp, JoinOp, ListOp, PullOp, PutOp, StrayOp, ToClient
from dynastore.core.quorum import QuorumError
from dynastore.core.reaping import Reaping
from dynastore.settings import Settings
from dynastore.storage.base import Engine, Op

__all__ = [
    "BUCKET_PROPS",
    "LIST_KEYS_MAX",
    "META_CLUSTER",
    "META_COUNTER",
    "META_EPOCH",
    "AdminRequest",
    "Batch",
    "ClientJoin",
    "ClientLeave",
    "ClientRemove",
    "Effect",
    "NodeCore",
    "Reply",
    "Send",
    "Stats",
    "seed_label",
]


class NodeCore(Coordination, ClusterOps, Handoff, Reaping, NodeBase):
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
        self.engine = engine
        self.rng = rng
        self.secret = (settings.cluster_secret or settings.cluster_name).encode()
        self._pending = {}
        self._committing = {}
        self._healthy_key = (-1, -1, -1)
        self._cluster_changes = 0
        self._props_cache = {}
        self._props_at = -1
        self._healthy = frozenset()
        self._batches_taken = 0
        self._batches_written = 0
        self._read_after = 0
        self._outbox = []
        self._free = []
        self._held = []
        self._staged_puts = []
        self._committing_puts = []
        self._ops = {}
        self._deadlines = []
        self._next_op = 1
        self.stats = Stats()
        self.detector = FailureDetector(
            settings.phi_threshold,
            settings.phi_window_count,
            float(settings.phi_min_std_dev_ms),
            float(settings.phi_acceptable_pause_ms),
            float(settings.heartbeat_interval_ms),
        )
        self._hints_inflight = set()
        self._pulling = set()
        self._resumed = set()
        self._stray_inflight = False
        self._sweep_cursor = 0
        self._ping_seq = 0
        self.exit_requested = False

        # Identity: an epoch drawn once per data directory, so a node that lost its disk gets a new
        # actor and can never reuse a dot it handed out before.
        raw_epoch = self._get("meta", META_EPOCH)
        if raw_epoch is None:
            epoch = rng.getrandbits(32)
            self._put("meta", META_EPOCH, epoch.to_bytes(4, "big"))
        else:
            epoch = int.from_bytes(raw_epoch, "big")
        self.epoch = epoch
        # A new actor at every start: a copy this node wrote may have been lost with the process (its
        # replicas may still hold and have acknowledged it), and the old actor's entries claim it.
        raw_generation = self._get("meta", META_GENERATION)
        self.generation = 0 if raw_generation is None else int.from_bytes(raw_generation, "big")
        self._new_actor()
        raw_lease = self._get("meta", META_COUNTER)
        # Counters below the persisted lease end may have been handed out before a crash: skip them.
        self._counter = 0 if raw_lease is None else int.from_bytes(raw_lease, "big")
        self._lease_end = self._counter

        me = Member(name, host, peer_port, http_port, weight, "valid", 1)
        raw_state = self._get("meta", META_CLUSTER)
        if raw_state is None:
            state = membership.new_cluster(settings.cluster_name, me, settings.ring_size, settings.n_val)
            self._put("meta", META_CLUSTER, membership.encode(state))
        else:
            state = membership.decode(raw_state)
            mine = state.member(name)
            if mine is not None and (mine.host, mine.peer_port, mine.http_port) != (host, peer_port, http_port):
                # Restarted at another address: publish the new one with a higher version.
                moved = Member(name, host, peer_port, http_port, mine.weight, mine.status, mine.version + 1)
                state = state.with_member(moved)
                self._put("meta", META_CLUSTER, membership.encode(state))
        self.cluster = state
        self._hint_count = self.engine.count("hints")
        self._next_gossip_ms = now_ms + rng.randrange(max(1, settings.gossip_interval_ms))
        self._next_heartbeat_ms = now_ms
        self._next_hint_scan_ms = now_ms + settings.hint_scan_interval_ms
        self._next_reap_ms = now_ms + settings.reap_interval_ms
        self._next_transfer_ms = now_ms
        self._next_stray_ms = now_ms + settings.stray_scan_interval_ms
        self.now_hint_ms = now_ms
        self._next_sync_ms = now_ms + settings.buffered_sync_interval_ms
        self.controller = BackgroundController(settings.background_latency_target_ms, settings.background_window_ms)
        self.aae = AntiEntropy(self, now_ms)

    # --- Public surface ------------------------------------------------------------------------------

    def flush(self, now_ms: int) -> list[Effect]:
        """Write staged operations as one batch, then release the effects that depended on them."""
        free = self.take_free()
        batch = self.take_batch()
        if batch.ops:
            self.engine.write(batch.ops)
        self.batch_written()
        return free + list(batch.effects) + self.take_free()

    def take_free(self) -> list[Effect]:
        """The effects that depend on nothing not yet durable (requests for data, data read from disk,
        answers to writes every acknowledgement of which is durable): the shell performs them at
        once, even while a batch is being written."""
        free, self._free = self._free, []
        return free

    def take_batch(self) -> Batch:
        """Everything staged so far as one batch, with every effect queued so far.

        The caller writes `batch.ops` to the engine, calls `batch_written()`, and only then performs
        `batch.effects`. Effects queued while a batch is being written may depend on it (a reply built
        from its data), so they wait for the next batch, which is taken only after this one is written.
        """
        assert not self._committing, "a batch is still being written"
        ops = tuple(Op(area, key, value) for (area, key), value in self._pending.items())
        self._committing, self._pending = self._pending, {}
        self._batches_taken += 1
        self._committing_puts, self._staged_puts = self._staged_puts, []
        effects, self._outbox = tuple(self._outbox), []
        return Batch(ops, effects)

    def batch_written(self) -> None:
        """The batch from `take_batch` is on disk: reads may now go to the engine for it, and the
        writes this node coordinates whose copies it held count this node's acknowledgement (answers
        that follow are queued to go at once: take them with `take_free`), as are the effects held
        for this batch."""
        self._committing = {}
        self._batches_written = self._batches_taken
        if self._held:
            done = self._batches_written
            self._free.extend(effect for after, effect in self._held if after <= done)
            self._held = [(after, effect) for after, effect in self._held if after > done]
        puts, self._committing_puts = self._committing_puts, []
        for op_id in puts:
            self._local_put_durable(op_id, self.now_hint_ms)

    @property
    def has_pending(self) -> bool:
        """Whether anything is staged or queued that a batch would carry."""
        return bool(self._pending) or bool(self._outbox) or bool(self._free)

    def next_deadline_ms(self) -> int:
        deadline = min(
            self._next_gossip_ms,
            self._next_heartbeat_ms,
            self._next_hint_scan_ms,
            self._next_reap_ms,
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
            elif isinstance(request, ClientSetBucketProps):
                self._set_bucket_props(origin, request, now_ms)
            elif isinstance(request, ClientJoin):
                self._start_join(origin, request, now_ms)
            elif isinstance(request, ClientLeave):
                self._leave(origin, now_ms)
            else:
                self._remove(origin, request, now_ms)
        except QuorumError as exc:
            self._answer(origin, Failure("bad_request", str(exc)))

    def on_message(self, src: str, msg: Message, now_ms: int) -> None:
        self.now_hint_ms = now_ms
        if self.detector.heard_from(src, now_ms):
            self._peer_up(src, now_ms)
        handler = _HANDLERS.get(type(msg))
        assert handler is not None, f"no handler for {type(msg).__name__}"
        handler(self, src, msg, now_ms)

    def on_unreachable(self, peer: str, now_ms: int) -> None:
        """A connection to `peer` failed or was refused: it is down until it speaks again.

        A seed known only by address is named by `seed_label(host, port)`.
        """
        self.now_hint_ms = now_ms
        if peer == self.name:
            return
        if not peer.startswith("@"):
            self.detector.connection_failed(peer, now_ms)
        for op_id, op in list(self._ops.items()):
            if isinstance(op, GetOp):
                self._get_target_lost(op_id, op, peer, now_ms)
            elif isinstance(op, PutOp):
                self._put_target_lost(op_id, op, peer, now_ms)
            elif isinstance(op, ForwardOp) and op.dst == peer:
                self._retry_forward(op_id, op, now_ms)
            elif isinstance(op, ListOp) and peer in op.waiting:
                op.waiting.discard(peer)
                self._advance_list(op_id, op)
            elif isinstance(op, HintOp) and op.owner == peer:
                self._finish(op_id)
                self._hints_inflight.discard(peer)
            elif isinstance(op, JoinOp) and op.seed == peer:
                self._finish(op_id)
                self._answer(op.origin, Failure("unavailable", f"seed {peer[1:]} is unreachable"))
            elif isinstance(op, PullOp) and op.source == peer:
                self._finish(op_id)
                self._pulling.discard((op.partition, op.source))
            elif isinstance(op, StrayOp) and peer in op.waiting:
                self._finish(op_id)
                self._stray_inflight = False
            elif isinstance(op, ExchangeOp) and op.peer == peer:
                self.aae.abandon(op_id)

    def on_tick(self, now_ms: int) -> None:
        self.now_hint_ms = now_ms
        while self._deadlines and self._deadlines[0][0] <= now_ms:
            _, op_id = heapq.heappop(self._deadlines)
            op = self._ops.get(op_id)
            if op is not None and op.deadline_ms <= now_ms:
                self._expire(op_id, op, now_ms)
        self.detector.update([n for n in self.cluster.names(ACTIVE) if n != self.name], now_ms)
        if now_ms >= self._next_heartbeat_ms:
            self._next_heartbeat_ms = now_ms + self.settings.heartbeat_interval_ms
            self._heartbeat()
        if now_ms >= self._next_gossip_ms:
            self._next_gossip_ms = now_ms + self.settings.gossip_interval_ms
            self._gossip(now_ms)
            self._claim(now_ms)
        if now_ms >= self._next_hint_scan_ms:
            self._next_hint_scan_ms = now_ms + self.settings.hint_scan_interval_ms
            self._deliver_hints(now_ms)
        if now_ms >= self._next_reap_ms:
            self._next_reap_ms = now_ms + self.settings.reap_interval_ms
            self._reap_tombstones(now_ms)
        if now_ms >= self._next_transfer_ms:
            self._next_transfer_ms = now_ms + self.settings.handoff_retry_ms
            self._start_transfers(now_ms)
        if now_ms >= self._next_stray_ms:
            self._next_stray_ms = now_ms + self.settings.stray_scan_interval_ms
            self._sweep_strays(now_ms)
            self._maybe_exit(now_ms)
        self.aae.on_tick(now_ms)
        if not self.engine.durable and now_ms >= self._next_sync_ms:
            # Buffered mode: acknowledged writes may sit in the OS cache; bound what a machine crash loses.
            self._next_sync_ms = now_ms + self.settings.buffered_sync_interval_ms
            self.engine.sync()

    def observe_latency(self, latency_ms: float, now_ms: int) -> None:
        """A foreground request took this long (measured by the shell): input of the background controller."""
        self.controller.observe(now_ms, latency_ms)

    def prepare_shutdown(self) -> None:
        """Record a clean stop, so that the next start trusts its anti-entropy index without verifying it."""
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

    # --- Timeouts ------------------------------------------------------------------------------------------

    def _expire(self, op_id: int, op: AnyOp, now_ms: int) -> None:
        self._finish(op_id)
        if isinstance(op, GetOp):
            if not op.replied:
                op.replied = True
                self._answer(
                    op.origin,
                    Failure("timeout", f"timed out waiting for r={op.tally.r}: {len(op.tally.results)} replied"),
                )
            self._read_repair(op, now_ms)
        elif isinstance(op, PutOp):
            if not op.replied:
                op.replied = True
                self._answer(op.origin, Failure("timeout", f"timed out: {op.tally.shortfall()}"))
        elif isinstance(op, ForwardOp):
            self._answer(op.origin, Failure("timeout", f"timed out waiting for coordinator {op.dst}"))
        elif isinstance(op, ListOp):
            self._answer(op.origin, Failure("timeout", f"timed out waiting for {', '.join(sorted(op.waiting))}"))
        elif isinstance(op, HintOp):
            self._hints_inflight.discard(op.owner)
        elif isinstance(op, PullOp):
            self._pulling.discard((op.partition, op.source))
        elif isinstance(op, StrayOp):
            self._stray_inflight = False
        elif isinstance(op, ExchangeOp):
            self.aae.abandon(op_id)
        else:
            self._answer(op.origin, Failure("timeout", "timed out waiting for the seed to answer"))

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
            "read_repairs": s.read_repairs,
            "read_repairs_total": s.read_repairs,
            "hinted_writes_total": s.hinted_writes,
            "hints_delivered_total": s.hints_delivered,
            "hints_pending": self._hint_count,
            "keys_stored": self.engine.count("data"),
            "tombstones_reaped_total": s.tombstones_reaped,
            "gossip_rounds_total": s.gossip_rounds,
            "handoff_batches_total": s.handoff_batches,
            "handoff_keys_total": s.handoff_keys,
            "handoff_resumed_total": s.handoff_resumed,
            "transfers_completed_total": s.transfers_completed,
            "strays_handed_off_total": s.strays_handed_off,
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
            "requests_in_flight": len(self._ops),
        }


_HANDLERS: dict[type[Any], Any] = {
    Ping: NodeCore._on_ping,
    Pong: NodeCore._on_pong,
    ReplicaGet: NodeCore._on_replica_get,
    ReplicaGetReply: NodeCore._on_replica_get_reply,
    ReplicaPut: NodeCore._on_replica_put,
    ReplicaPutReply: NodeCore._on_replica_put_reply,
    ForwardPut: NodeCore._on_forward_put,
    ForwardPutReply: NodeCore._on_forward_put_reply,
    HintDelivery: NodeCore._on_hint_delivery,
    HintDeliveryReply: NodeCore._on_hint_delivery_reply,
    Reap: NodeCore._on_reap,
    ListKeys: NodeCore._on_list_keys,
    ListKeysReply: NodeCore._on_list_keys_reply,
    GossipDigest: NodeCore._on_gossip_digest,
    GossipState: NodeCore._on_gossip_state,
    JoinRequest: NodeCore._on_join_request,
    JoinReply: NodeCore._on_join_reply,
    HandoffPull: NodeCore._on_handoff_pull,
    HandoffBatch: NodeCore._on_handoff_batch,
    TreeRequest: lambda node, src, msg, now: node.aae.on_tree_request(src, msg, now),
    TreeReply: lambda node, src, msg, now: node.aae.on_tree_reply(src, msg, now),
    SegmentRequest: lambda node, src, msg, now: node.aae.on_segment_request(src, msg, now),
    SegmentReply: lambda node, src, msg, now: node.aae.on_segment_reply(src, msg, now),
    ObjectsRequest: lambda node, src, msg, now: node.aae.on_objects_request(src, msg, now),
    ObjectsReply: lambda node, src, msg, now: node.aae.on_objects_reply(src, msg, now),
}
