"""NodeCore: the whole protocol logic of one dynastore node, as a deterministic state machine.

Theory of operation
-------------------
Inputs are client requests (`on_request`), messages from peers (`on_message`), news that a peer
could not be reached (`on_unreachable`) and the passage of time (`on_tick`); each carries `now_ms`.
Handling an input updates memory, stages writes for the local engine and queues effects (messages to
send, replies to give). Nothing leaves until `flush(now_ms)`: it writes every staged operation as one
batch (durable engines sync it) and only then returns the queued effects. So no acknowledgement ever
precedes the data it acknowledges, and many inputs share one disk sync (group commit). Reads see
staged writes through an overlay.

The core never touches a socket or the clock and draws randomness only from the injected
`random.Random`; the asyncio shell (or the simulator) moves bytes and calls it. Malformed input from
clients becomes a `Failure`; malformed input from peers never reaches here (the codec rejects it).
A broken invariant of our own raises and stops the node.

Requests
- get: any node coordinates. It asks the first N healthy nodes of the key's preference list, answers
  after R replies with every causally unrelated sibling and one merged context (naming the primary that
  answered first, the preferred coordinator of a following write), then repairs replicas that missed
  something once every reply is in or the request times out.
- put/delete: coordinated by a node among the first N healthy nodes (others forward it there, preferring
  the node named in the context). The coordinator draws a fresh dot, applies the write to its local
  copy, sends the new object to the other N-1 targets and answers after W acknowledgements (its own
  durable write counts). A fallback target stores the object in its hint store, naming the primary it
  stands in for; hints are delivered when that primary is reachable again, then deleted.
- delete writes a tombstone. Tombstones are reaped after a grace period, only when every primary
  holds exactly the same tombstone; the pending reaps are kept on disk so a restart forgets nothing.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import msgpack

from dynastore.core import hints, keys, membership, objects, placement
from dynastore.core.antientropy import AntiEntropy, ExchangeOp
from dynastore.core.controller import BackgroundController
from dynastore.core.failure import FailureDetector
from dynastore.core.membership import ACTIVE, OWNING, ClusterState, Member, RingState
from dynastore.core.messages import (
    ClientGet,
    ClientListKeys,
    ClientPut,
    ClientRequest,
    ClientResponse,
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
    HintItem,
    JoinReply,
    JoinRequest,
    ListKeys,
    ListKeysReply,
    Message,
    NotFound,
    ObjectsReply,
    ObjectsRequest,
    Ok,
    Ping,
    Pong,
    Reap,
    ReplicaGet,
    ReplicaGetReply,
    ReplicaPut,
    ReplicaPutReply,
    SegmentReply,
    SegmentRequest,
    Siblings,
    TreeReply,
    TreeRequest,
)
from dynastore.core.objects import Content, Object, ObjectError
from dynastore.core.placement import Placement
from dynastore.core.quorum import OK, GetTally, PutTally, QuorumError, resolve
from dynastore.core.ring import PreferenceList, Ring, Target, claim
from dynastore.core.versions import Context, Dot, Versioned, merge, prune, update
from dynastore.settings import Settings
from dynastore.storage.base import Engine, Op

META_EPOCH = b"epoch"
META_COUNTER = b"counter_lease_end"
META_CLUSTER = b"cluster"

BUCKET_PROPS = ("n_val", "r", "w", "pr", "pw", "dw", "allow_mult", "last_write_wins")
LIST_KEYS_MAX = 1_000_000


# --- Effects ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    """Send `msg` to the peer named `dst` (at `address` when the peer is not a known member yet)."""

    dst: str
    msg: Message
    address: tuple[str, int] | None = None


@dataclass(frozen=True, slots=True)
class Reply:
    """Answer the client request the shell numbered `request_id`."""

    request_id: int
    response: ClientResponse


Effect = Send | Reply


@dataclass(frozen=True, slots=True)
class ClientJoin:
    """Admin: join the cluster that the member at `seed` belongs to."""

    seed_host: str
    seed_port: int


@dataclass(frozen=True, slots=True)
class ClientLeave:
    """Admin: this node hands off everything it holds, then leaves the cluster and stops."""


@dataclass(frozen=True, slots=True)
class ClientRemove:
    """Admin: `node` is gone for good; its partitions are rebuilt from the other replicas."""

    node: str


AdminRequest = ClientJoin | ClientLeave | ClientRemove


# --- Operations in flight -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _ToClient:
    request_id: int


@dataclass(frozen=True, slots=True)
class _ToPeer:
    node: str
    req: int


_Origin = _ToClient | _ToPeer


@dataclass
class _GetOp:
    origin: _Origin | None
    bucket: bytes
    key: bytes
    tally: GetTally
    deadline_ms: int
    resolve_one: bool
    plist: PreferenceList | None
    replied: bool = False
    # Set for the read that precedes reaping a tombstone: the object every primary must hold.
    reap: Object | None = None


@dataclass
class _PutOp:
    origin: _Origin
    bucket: bytes
    key: bytes
    tally: PutTally
    deadline_ms: int
    plist: PreferenceList
    obj: Object
    lww: bool
    reply_context: Context
    return_body: bool
    resolve_one: bool
    replied: bool = False


@dataclass
class _ForwardOp:
    origin: _Origin
    request: ClientPut
    dst: str
    tried: list[str]
    deadline_ms: int


@dataclass
class _ListOp:
    origin: _Origin
    waiting: set[str]
    items: set[bytes]
    deadline_ms: int


@dataclass
class _HintOp:
    owner: str
    sent: list[tuple[bytes, bytes]]
    deadline_ms: int


@dataclass
class _JoinOp:
    origin: _Origin
    deadline_ms: int
    seed: str


@dataclass
class _PullOp:
    """A batch of a partition being pulled from `source` for the transition `transition`."""

    transition: bytes
    partition: int
    source: str
    after: bytes
    deadline_ms: int


@dataclass
class _StrayOp:
    """Keys this node holds but no longer replicates, offered to their replicas before deletion."""

    waiting: set[str]
    sent: list[tuple[bytes, bytes]]
    deadline_ms: int


_AnyOp = _GetOp | _PutOp | _ForwardOp | _ListOp | _HintOp | _JoinOp | _PullOp | _StrayOp | ExchangeOp


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


class NodeCore:
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
        self._pending: dict[tuple[str, bytes], bytes | None] = {}
        self._outbox: list[Effect] = []
        self._ops: dict[int, _AnyOp] = {}
        self._deadlines: list[tuple[int, int]] = []
        self._next_op = 1
        self.stats = Stats()
        self.detector = FailureDetector(
            settings.phi_threshold,
            settings.phi_window_count,
            float(settings.phi_min_std_dev_ms),
            float(settings.phi_acceptable_pause_ms),
            float(settings.heartbeat_interval_ms),
        )
        self._hints_inflight: set[str] = set()
        self._pulling: set[tuple[int, str]] = set()
        self._resumed: set[tuple[int, str]] = set()
        self._stray_inflight = False
        self._sweep_cursor = 0
        self._ping_seq = 0
        # Set once a leaving node has handed everything off: the shell stops the process.
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
        self.actor = f"{name}#{epoch:08x}".encode()
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
        if self._pending:
            ops = [Op(area, key, value) for (area, key), value in self._pending.items()]
            self.engine.write(ops)
            self._pending.clear()
        out, self._outbox = self._outbox, []
        return out

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
        origin = _ToClient(request_id)
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
            if isinstance(op, _GetOp):
                if peer in op.tally.results or peer in op.tally.errors:
                    continue
                substitute = self._substitute(op.tally.targets, op.plist, peer, now_ms)
                op.tally.add_error(peer)
                if substitute is not None:
                    op.tally.targets += (substitute,)
                    self._send(substitute.node, ReplicaGet(op_id, op.bucket, op.key))
                self._advance_get(op_id, op, now_ms)
            elif isinstance(op, _PutOp):
                if peer in op.tally.acks or peer in op.tally.errors:
                    continue
                # Always writeable: a target found dead mid-write is replaced by the next healthy
                # fallback, which keeps the write as a hint for the node it stands in for.
                substitute = self._substitute(op.tally.targets, op.plist, peer, now_ms)
                op.tally.add_error(peer)
                if substitute is not None:
                    op.tally.targets += (substitute,)
                    msg = ReplicaPut(op_id, op.bucket, op.key, op.obj, substitute.hint_for, op.lww)
                    self._send(substitute.node, msg)
                self._advance_put(op_id, op, now_ms)
            elif isinstance(op, _ForwardOp) and op.dst == peer:
                self._retry_forward(op_id, op, now_ms)
            elif isinstance(op, _ListOp) and peer in op.waiting:
                op.waiting.discard(peer)
                self._advance_list(op_id, op)
            elif isinstance(op, _HintOp) and op.owner == peer:
                self._finish(op_id)
                self._hints_inflight.discard(peer)
            elif isinstance(op, _JoinOp) and op.seed == peer:
                self._finish(op_id)
                self._answer(op.origin, Failure("unavailable", f"seed {peer[1:]} is unreachable"))
            elif isinstance(op, _PullOp) and op.source == peer:
                self._finish(op_id)
                self._pulling.discard((op.partition, op.source))
            elif isinstance(op, _StrayOp) and peer in op.waiting:
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

    def bucket_props(self, bucket: bytes) -> dict[str, Any]:
        props = self.default_bucket_props()
        props.update(self.cluster.bucket(bucket))
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
        n_val = int(self.bucket_props(bucket)["n_val"])
        partition = self.ring.partition_of(bucket, key)
        return partition, placement.placement(self.cluster.ring, partition, n_val)

    def n_vals(self) -> list[int]:
        return placement.n_vals_in_use(self.cluster, self.settings.n_val)

    @property
    def ring(self) -> Ring:
        return self.cluster.ring.ring

    def healthy(self, now_ms: int) -> set[str]:
        return {n for n in self.cluster.names(ACTIVE) if n == self.name or self.detector.is_up(n, now_ms)}

    @property
    def hints_pending(self) -> int:
        return self._hint_count

    def local_copy(self, bucket: bytes, key: bytes) -> Object | None:
        """This node's own copy of a key (data and hints merged), read without any quorum."""
        return self._read_local(bucket, key)

    def has_data(self) -> bool:
        return bool(self.engine.scan("data", b"", None, 1)) or any(k[0] == "data" for k in self._pending)

    # --- Storage helpers ------------------------------------------------------------------------------

    def _get(self, area: str, key: bytes) -> bytes | None:
        staged = self._pending.get((area, key), b"")
        if staged != b"" or (area, key) in self._pending:
            return staged
        return self.engine.get(area, key)

    def _put(self, area: str, key: bytes, value: bytes | None) -> None:
        # Re-inserting moves the key to the end, so the batch applies operations in the order made.
        self._pending.pop((area, key), None)
        self._pending[(area, key)] = value

    def _scan(self, area: str, start: bytes, end: bytes | None, limit: int) -> list[tuple[bytes, bytes]]:
        rows = dict(self.engine.scan(area, start, end, limit + len(self._pending)))
        for (a, k), v in self._pending.items():
            if a == area and k >= start and (end is None or k < end):
                if v is None:
                    rows.pop(k, None)
                else:
                    rows[k] = v
        return sorted(rows.items())[:limit]

    def _load(self, area: str, key: bytes) -> Object | None:
        raw = self._get(area, key)
        if raw is None:
            return None
        try:
            return objects.decode(raw)
        except ObjectError as exc:
            raise AssertionError(f"corrupt object in {area} at {key!r}: {exc}") from None

    def _n_val_of(self, skey: bytes) -> int:
        return int(self.bucket_props(keys.decode(skey).bucket)["n_val"])

    def _delete_data(self, skey: bytes) -> None:
        self._put("data", skey, None)
        self._put("reap", skey, None)
        self.aae.on_write(skey, self._n_val_of(skey), None)

    def _store_data(self, skey: bytes, obj: Object, previous: Object | None, now_ms: int) -> None:
        self._put("data", skey, objects.encode(obj))
        self.aae.on_write(skey, self._n_val_of(skey), obj)
        if objects.is_tombstone(obj):
            if previous is None or not objects.is_tombstone(previous) or self._get("reap", skey) is None:
                self._put("reap", skey, now_ms.to_bytes(8, "big"))
        elif previous is not None and objects.is_tombstone(previous):
            self._put("reap", skey, None)

    def _merge_into_data(self, bucket: bytes, key: bytes, incoming: Object, lww: bool, now_ms: int) -> None:
        skey = keys.encode(self.ring.partition_of(bucket, key), bucket, key)
        local = self._load("data", skey)
        merged = incoming if local is None else merge(local, incoming)
        if lww:
            merged = objects.resolve_lww(merged)
        if local is None or not _same_object(local, merged):
            self._store_data(skey, merged, local, now_ms)

    def _merge_into_hints(self, owner: str, bucket: bytes, key: bytes, incoming: Object, lww: bool) -> bool:
        skey = keys.encode(self.ring.partition_of(bucket, key), bucket, key)
        hkey = hints.hint_key(owner, skey)
        local = self._load("hints", hkey)
        if local is None and self._hint_count >= self.settings.hints_max:
            return False
        merged = incoming if local is None else merge(local, incoming)
        if lww:
            merged = objects.resolve_lww(merged)
        if local is None:
            self._hint_count += 1
            self.stats.hinted_writes += 1
        if local is None or not _same_object(local, merged):
            self._put("hints", hkey, objects.encode(merged))
        return True

    def _read_local(self, bucket: bytes, key: bytes) -> Object | None:
        """This node's copy of a key: its data, merged with any hints it holds for other owners."""
        skey = keys.encode(self.ring.partition_of(bucket, key), bucket, key)
        obj = self._load("data", skey)
        if self._hint_count:
            for owner in self.cluster.names(membership.STATUSES):
                hinted = self._load("hints", hints.hint_key(owner, skey))
                if hinted is not None:
                    obj = hinted if obj is None else merge(obj, hinted)
        return obj

    # --- Op bookkeeping ------------------------------------------------------------------------------

    def _register(self, op: _AnyOp) -> int:
        op_id = self._next_op
        self._next_op += 1
        self._ops[op_id] = op
        heapq.heappush(self._deadlines, (op.deadline_ms, op_id))
        return op_id

    def _finish(self, op_id: int) -> None:
        self._ops.pop(op_id, None)

    def _send(self, dst: str, msg: Message) -> None:
        self._outbox.append(Send(dst, msg))

    def _answer(self, origin: _Origin | None, response: ClientResponse) -> None:
        if origin is None:
            return
        if isinstance(origin, _ToClient):
            self._outbox.append(Reply(origin.request_id, response))
        else:
            self._send(origin.node, _forward_reply(origin.req, response))

    def _timeout(self, timeout_ms: int | None, now_ms: int) -> int:
        limit = self.settings.request_timeout_ms if timeout_ms is None else timeout_ms
        return now_ms + max(1, min(limit, 10 * self.settings.request_timeout_ms))

    def _expire(self, op_id: int, op: _AnyOp, now_ms: int) -> None:
        self._finish(op_id)
        if isinstance(op, _GetOp):
            if not op.replied:
                op.replied = True
                self._answer(
                    op.origin,
                    Failure("timeout", f"timed out waiting for r={op.tally.r}: {len(op.tally.results)} replied"),
                )
            self._read_repair(op, now_ms)
        elif isinstance(op, _PutOp):
            if not op.replied:
                op.replied = True
                self._answer(op.origin, Failure("timeout", f"timed out: {op.tally.shortfall()}"))
        elif isinstance(op, _ForwardOp):
            self._answer(op.origin, Failure("timeout", f"timed out waiting for coordinator {op.dst}"))
        elif isinstance(op, _ListOp):
            self._answer(op.origin, Failure("timeout", f"timed out waiting for {', '.join(sorted(op.waiting))}"))
        elif isinstance(op, _HintOp):
            self._hints_inflight.discard(op.owner)
        elif isinstance(op, _PullOp):
            self._pulling.discard((op.partition, op.source))
        elif isinstance(op, _StrayOp):
            self._stray_inflight = False
        elif isinstance(op, ExchangeOp):
            self.aae.abandon(op_id)
        else:
            self._answer(op.origin, Failure("timeout", "timed out waiting for the seed to answer"))

    # --- Validation ---------------------------------------------------------------------------------------

    def _check_key(self, bucket: bytes, key: bytes) -> Failure | None:
        if not bucket or len(bucket) > self.settings.bucket_bytes_max:
            return Failure("bad_request", f"bucket must be 1 to {self.settings.bucket_bytes_max} bytes")
        if not key or len(key) > self.settings.key_bytes_max:
            return Failure("bad_request", f"key must be 1 to {self.settings.key_bytes_max} bytes")
        return None

    # --- Get ------------------------------------------------------------------------------------------------

    def _start_get(self, origin: _Origin, req: ClientGet, now_ms: int) -> None:
        self.stats.gets += 1
        bad = self._check_key(req.bucket, req.key)
        if bad is not None:
            self._answer(origin, bad)
            return
        props = self.bucket_props(req.bucket)
        n_val = int(props["n_val"])
        r = resolve("r", req.r, n_val, props["r"], 1)
        pr = resolve("pr", req.pr, n_val, props["pr"], 0)
        _, plist = self.preference_list(req.bucket, req.key)
        targets = plist.targets(self.healthy(now_ms))
        primaries = sum(1 for t in targets if t.primary)
        if len(targets) < r or primaries < pr:
            self._answer(
                origin,
                Failure("unavailable", f"{len(targets)} healthy replicas ({primaries} primaries): r={r} pr={pr}"),
            )
            return
        tally = GetTally(targets, r, pr, lww=bool(props["last_write_wins"]))
        resolve_one = bool(props["last_write_wins"]) or not bool(props["allow_mult"])
        op = _GetOp(origin, req.bucket, req.key, tally, self._timeout(req.timeout_ms, now_ms), resolve_one, plist)
        self._dispatch_get(op, now_ms)

    def _dispatch_get(self, op: _GetOp, now_ms: int) -> None:
        op_id = self._register(op)
        for target in op.tally.targets:
            if target.node == self.name:
                op.tally.add(self.name, self._read_local(op.bucket, op.key))
            else:
                self._send(target.node, ReplicaGet(op_id, op.bucket, op.key))
        self._advance_get(op_id, op, now_ms)

    def _advance_get(self, op_id: int, op: _GetOp, now_ms: int) -> None:
        decision = op.tally.decision()
        if not op.replied and decision != "wait":
            op.replied = True
            if decision == OK:
                self._answer(op.origin, self._read_response(op))
            else:
                self._answer(
                    op.origin,
                    Failure("unavailable", f"r={op.tally.r} not met: {len(op.tally.results)} replicas answered"),
                )
        if op.tally.complete:
            self._finish(op_id)
            if op.reap is not None:
                self._finish_reap(op, now_ms)
            else:
                self._read_repair(op, now_ms)

    def _read_response(self, op: _GetOp) -> ClientResponse:
        merged = op.tally.merged()
        if merged is None:
            return NotFound(None)
        context = merged.context(op.tally.fastest)
        if objects.is_tombstone(merged) or not merged.siblings:
            return NotFound(context)
        values = objects.live(merged)
        if op.resolve_one:
            values = [objects.newest(values)]
        count = len(values)
        self.stats.siblings_histogram[count] = self.stats.siblings_histogram.get(count, 0) + 1
        return Ok(Siblings(tuple(values), context))

    def _read_repair(self, op: _GetOp, now_ms: int) -> None:
        if not self.settings.read_repair_enabled or op.reap is not None:
            return
        merged = op.tally.merged()
        if merged is None:
            return
        lww = op.tally.lww
        for target in op.tally.repairs():
            self.stats.read_repairs += 1
            if target.node == self.name:
                self._merge_into_data(op.bucket, op.key, merged, lww, now_ms)
            else:
                self._send(target.node, ReplicaPut(0, op.bucket, op.key, merged, None, lww))

    def _substitute(
        self, targets: tuple[Target, ...], plist: PreferenceList | None, failed: str, now_ms: int
    ) -> Target | None:
        """The next healthy fallback not yet used, standing in for the target that failed."""
        lost = next((t for t in targets if t.node == failed), None)
        if plist is None or lost is None:
            return None
        used = {t.node for t in targets}
        healthy = self.healthy(now_ms)
        for _, node in plist.fallbacks:
            if node not in used and node in healthy and node != failed:
                return Target(node, False, hint_for=lost.hint_for or lost.node)
        return None

    def _on_replica_get(self, src: str, msg: ReplicaGet, now_ms: int) -> None:
        self._send(src, ReplicaGetReply(msg.req, self._read_local(msg.bucket, msg.key)))

    def _on_replica_get_reply(self, src: str, msg: ReplicaGetReply, now_ms: int) -> None:
        op = self._ops.get(msg.req)
        if isinstance(op, _GetOp):
            op.tally.add(src, msg.obj)
            self._advance_get(msg.req, op, now_ms)

    # --- Put and delete ---------------------------------------------------------------------------------

    def _start_put(self, origin: _Origin, req: ClientPut, now_ms: int) -> None:
        if req.content is None:
            self.stats.deletes += 1
        else:
            self.stats.puts += 1
        bad = self._check_key(req.bucket, req.key)
        if bad is not None:
            self._answer(origin, bad)
            return
        problem = None if req.content is None else objects.check_content(req.content)
        if problem is not None:
            self._answer(origin, Failure("bad_request", problem))
            return
        if req.content is not None and req.content.size_bytes > self.settings.object_bytes_max:
            self._answer(
                origin, Failure("too_large", f"object exceeds the limit of {self.settings.object_bytes_max} bytes")
            )
            return
        props = self.bucket_props(req.bucket)
        n_val = int(props["n_val"])
        w = resolve("w", req.w, n_val, props["w"], 1)
        dw = resolve("dw", req.dw, n_val, props["dw"], 0)
        pw = resolve("pw", req.pw, n_val, props["pw"], 0)
        _, where = self.placement_for(req.bucket, req.key)
        plist = where.plist
        healthy = self.healthy(now_ms)
        targets = plist.targets(healthy)
        if not targets:
            self._answer(origin, Failure("unavailable", "no healthy node holds this key"))
            return
        mine = next((t for t in targets if t.node == self.name), None)
        if mine is None:
            self._forward(origin, req, targets, now_ms)
            return
        # While the key's partition moves, its new owners get every write too.
        chosen = {t.node for t in targets}
        targets += tuple(Target(n, False) for n in where.receivers if n in healthy and n not in chosen)
        if len(targets) < max(w, dw) or sum(1 for t in targets if t.primary) < pw:
            self._answer(
                origin,
                Failure("unavailable", f"{len(targets)} healthy replicas cannot satisfy w={w} dw={dw} pw={pw}"),
            )
            return
        self._coordinate_put(origin, req, props, plist, targets, mine, w, dw, pw, now_ms)

    def _forward(self, origin: _Origin, req: ClientPut, targets: tuple[Target, ...], now_ms: int) -> None:
        if req.hops >= self.settings.coordinator_forward_retries_max:
            self._answer(origin, Failure("unavailable", "no coordinator accepted the write"))
            return
        nodes = [t.node for t in targets]
        preferred = req.context.coordinator if req.context is not None else None
        dst = preferred if preferred in nodes else nodes[0]
        assert dst is not None
        op = _ForwardOp(origin, req, dst, [dst], self._timeout(req.timeout_ms, now_ms))
        op_id = self._register(op)
        self.stats.forwarded_puts += 1
        self._send_forward(op_id, op)

    def _send_forward(self, op_id: int, op: _ForwardOp) -> None:
        req = op.request

        def spec(q: int | str | None) -> str:
            return "default" if q is None else str(q)

        self._send(
            op.dst,
            ForwardPut(
                op_id,
                req.bucket,
                req.key,
                req.context,
                req.content,
                spec(req.w),
                spec(req.dw),
                spec(req.pw),
                req.timeout_ms if req.timeout_ms is not None else self.settings.request_timeout_ms,
                req.return_body,
                req.hops + 1,
            ),
        )

    def _retry_forward(self, op_id: int, op: _ForwardOp, now_ms: int) -> None:
        # The coordinator could not be reached, so the write was never applied there: another
        # target may coordinate it without risk of applying it twice.
        _, plist = self.preference_list(op.request.bucket, op.request.key)
        others = [t.node for t in plist.targets(self.healthy(now_ms)) if t.node not in op.tried]
        if not others or len(op.tried) > self.settings.coordinator_forward_retries_max:
            self._finish(op_id)
            self._answer(op.origin, Failure("unavailable", f"coordinator {op.dst} is unreachable"))
            return
        op.dst = others[0]
        op.tried.append(op.dst)
        self._send_forward(op_id, op)

    def _on_forward_put(self, src: str, msg: ForwardPut, now_ms: int) -> None:
        request = ClientPut(
            msg.bucket,
            msg.key,
            msg.context,
            msg.content,
            msg.w,
            msg.dw,
            msg.pw,
            msg.timeout_ms,
            msg.return_body,
            msg.hops,
        )
        origin = _ToPeer(src, msg.req)
        try:
            self._start_put(origin, request, now_ms)
        except QuorumError as exc:
            self._answer(origin, Failure("bad_request", str(exc)))

    def _on_forward_put_reply(self, src: str, msg: ForwardPutReply, now_ms: int) -> None:
        op = self._ops.get(msg.req)
        if not isinstance(op, _ForwardOp) or op.dst != src:
            return
        self._finish(msg.req)
        response: ClientResponse
        if msg.status == "ok":
            found = None if msg.context is None else Siblings(msg.values, msg.context, msg.tombstone)
            response = Ok(found)
        elif msg.status == "notfound":
            response = NotFound(msg.context)
        else:
            response = Failure(msg.status, msg.reason)
        self._answer(op.origin, response)

    def _next_dot(self, local: Object | None, context: Context) -> Dot:
        floor = max(
            self._counter,
            0 if local is None else local.clock.get(self.actor),
            context.counters().get(self.actor, 0),
            max((d.counter for d in context.dots if d.actor == self.actor), default=0),
        )
        self._counter = floor + 1
        if self._counter > self._lease_end:
            # Persist the end of a new block before using any counter in it; the lease rides in the
            # same batch as the write that needed it.
            self._lease_end = self._counter + self.settings.counter_lease_count
            self._put("meta", META_COUNTER, self._lease_end.to_bytes(8, "big"))
        return Dot(self.actor, self._counter)

    def _coordinate_put(
        self,
        origin: _Origin,
        req: ClientPut,
        props: dict[str, Any],
        plist: PreferenceList,
        targets: tuple[Target, ...],
        mine: Target,
        w: int,
        dw: int,
        pw: int,
        now_ms: int,
    ) -> None:
        self.stats.coordinated_puts += 1
        lww = bool(props["last_write_wins"])
        skey = keys.encode(self.ring.partition_of(req.bucket, req.key), req.bucket, req.key)
        if mine.hint_for is None:
            local = self._load("data", skey)
        else:
            local = self._load("hints", hints.hint_key(mine.hint_for, skey))
        context = req.context if req.context is not None else Context()
        if req.content is None and req.context is None:
            # A delete without a context removes what this coordinator knows of; concurrent values it
            # has not seen survive as siblings (nothing acknowledged is silently dropped).
            context = Context() if local is None else local.context()
        now_us = now_ms * 1000
        content = req.content if req.content is not None else objects.tombstone(now_us)
        if content.last_modified_us == 0:
            content = Content(
                content.value,
                content.content_type,
                content.charset,
                content.content_encoding,
                content.usermeta,
                now_us,
                content.deleted,
            )
        dot = self._next_dot(local, context)
        new = update(local, context, dot, content, now_ms)
        if lww:
            new = Versioned(new.clock, ((dot, content),))
        new = prune(new, self.settings.vclock_prune_entries_max)
        if len(new.siblings) > self.settings.siblings_max:
            self._answer(
                origin,
                Failure(
                    "too_many_siblings",
                    f"write would leave {len(new.siblings)} siblings (limit {self.settings.siblings_max}); "
                    "read the key and write with its context to resolve them",
                ),
            )
            return
        if mine.hint_for is None:
            self._store_data(skey, new, local, now_ms)
        elif not self._merge_into_hints(mine.hint_for, req.bucket, req.key, new, lww):
            self._answer(origin, Failure("unavailable", "this node's hint store is full"))
            return
        tally = PutTally(targets, w, dw, pw)
        tally.ack(self.name)
        resolve_one = lww or not bool(props["allow_mult"])
        op = _PutOp(
            origin,
            req.bucket,
            req.key,
            tally,
            self._timeout(req.timeout_ms, now_ms),
            plist,
            new,
            lww,
            context.after_write(dot),
            req.return_body,
            resolve_one,
        )
        op_id = self._register(op)
        for target in targets:
            if target.node != self.name:
                self._send(target.node, ReplicaPut(op_id, req.bucket, req.key, new, target.hint_for, lww))
        self._advance_put(op_id, op, now_ms)

    def _advance_put(self, op_id: int, op: _PutOp, now_ms: int) -> None:
        decision = op.tally.decision()
        if not op.replied and decision != "wait":
            op.replied = True
            if decision == OK:
                self._answer(op.origin, self._write_response(op))
            else:
                self._answer(op.origin, Failure("unavailable", f"write not acknowledged: {op.tally.shortfall()}"))
        if op.tally.complete:
            self._finish(op_id)

    def _write_response(self, op: _PutOp) -> ClientResponse:
        if not op.return_body:
            return Ok(Siblings((), op.reply_context))
        context = op.obj.context(self.name)
        if objects.is_tombstone(op.obj):
            return NotFound(context)
        values = objects.live(op.obj)
        if op.resolve_one:
            values = [objects.newest(values)]
        return Ok(Siblings(tuple(values), context))

    def _on_replica_put(self, src: str, msg: ReplicaPut, now_ms: int) -> None:
        ok = True
        reason = ""
        if msg.hint_for is not None and msg.hint_for != self.name:
            ok = self._merge_into_hints(msg.hint_for, msg.bucket, msg.key, msg.obj, msg.lww)
            reason = "" if ok else "hint store full"
        else:
            self._merge_into_data(msg.bucket, msg.key, msg.obj, msg.lww, now_ms)
        if msg.req:
            self._send(src, ReplicaPutReply(msg.req, ok, reason))

    def _on_replica_put_reply(self, src: str, msg: ReplicaPutReply, now_ms: int) -> None:
        op = self._ops.get(msg.req)
        if isinstance(op, _PutOp):
            if msg.ok:
                op.tally.ack(src)
            else:
                op.tally.add_error(src)
            self._advance_put(msg.req, op, now_ms)

    # --- Listing ----------------------------------------------------------------------------------------

    def _start_list(self, origin: _Origin, req: ClientListKeys, now_ms: int) -> None:
        nodes = sorted(self.healthy(now_ms))
        op = _ListOp(origin, set(nodes), set(), self._timeout(req.timeout_ms, now_ms))
        op_id = self._register(op)
        for node in nodes:
            if node == self.name:
                op.items.update(self._list_local(req.bucket))
                op.waiting.discard(node)
            else:
                self._send(node, ListKeys(op_id, req.bucket))
        self._advance_list(op_id, op)

    def _advance_list(self, op_id: int, op: _ListOp) -> None:
        if len(op.items) > LIST_KEYS_MAX:
            self._finish(op_id)
            self._answer(op.origin, Failure("overload", f"more than {LIST_KEYS_MAX} entries to list"))
        elif not op.waiting:
            self._finish(op_id)
            self._answer(op.origin, Ok(None, tuple(sorted(op.items))))

    def _list_local(self, bucket: bytes | None) -> set[bytes]:
        found: set[bytes] = set()
        for partition in range(self.ring.size):
            if bucket is None:
                found.update(self._buckets_in(partition))
            else:
                start = keys.bucket_prefix(partition, bucket)
                end = keys.prefix_end(start)
                for raw_key, raw in self._scan_all("data", start, end):
                    if not objects.is_tombstone(objects.decode(raw)):
                        found.add(keys.decode(raw_key).key)
            if len(found) > LIST_KEYS_MAX:
                break
        if bucket is not None and self._hint_count:
            for raw_key, raw in self._scan_all("hints", b"", None):
                _, skey = hints.parse(raw_key)
                parsed = keys.decode(skey)
                if parsed.bucket == bucket and not objects.is_tombstone(objects.decode(raw)):
                    found.add(parsed.key)
        return found

    def _buckets_in(self, partition: int) -> set[bytes]:
        found: set[bytes] = set()
        cursor = keys.partition_prefix(partition)
        end = keys.prefix_end(cursor)
        while True:
            rows = self._scan("data", cursor, end, 1)
            if not rows:
                return found
            bucket = keys.decode(rows[0][0]).bucket
            found.add(bucket)
            nxt = keys.prefix_end(keys.bucket_prefix(partition, bucket))
            if nxt is None:
                return found
            cursor = nxt

    def _scan_all(self, area: str, start: bytes, end: bytes | None) -> Iterable[tuple[bytes, bytes]]:
        cursor = start
        while True:
            rows = self._scan(area, cursor, end, 1000)
            yield from rows
            if len(rows) < 1000:
                return
            cursor = rows[-1][0] + b"\x00"

    def _on_list_keys(self, src: str, msg: ListKeys, now_ms: int) -> None:
        self._send(src, ListKeysReply(msg.req, tuple(sorted(self._list_local(msg.bucket)))))

    def _on_list_keys_reply(self, src: str, msg: ListKeysReply, now_ms: int) -> None:
        op = self._ops.get(msg.req)
        if isinstance(op, _ListOp) and src in op.waiting:
            op.waiting.discard(src)
            op.items.update(msg.items)
            self._advance_list(msg.req, op)

    # --- Bucket properties ---------------------------------------------------------------------------

    def _set_bucket_props(self, origin: _Origin, req: ClientSetBucketProps, now_ms: int) -> None:
        bad = self._check_key(req.bucket, b"-")
        if bad is not None:
            self._answer(origin, bad)
            return
        current = self.bucket_props(req.bucket)
        changes = dict(req.props)
        unknown = sorted(set(changes) - set(BUCKET_PROPS))
        if unknown:
            self._answer(origin, Failure("bad_request", f"unknown bucket properties: {', '.join(unknown)}"))
            return
        merged = {**current, **changes}
        problem = _check_props(merged, self.settings)
        if problem is not None:
            self._answer(origin, Failure("bad_request", problem))
            return
        stored = {k: merged[k] for k in BUCKET_PROPS if k in changes or k in self.cluster.bucket(req.bucket)}
        self._set_cluster(self.cluster.with_bucket(req.bucket, stored, self.name))
        # Push at once to every member so that the change is visible cluster-wide within a round trip.
        state = membership.encode(self.cluster)
        for node in self.cluster.names(ACTIVE):
            if node != self.name:
                self._send(node, GossipState(state, False))
        self._answer(origin, Ok())

    # --- Membership and gossip ---------------------------------------------------------------------------

    def _set_cluster(self, state: ClusterState) -> None:
        if state == self.cluster:
            return
        self.cluster = state
        self._put("meta", META_CLUSTER, membership.encode(state))

    def _heartbeat(self) -> None:
        self._ping_seq += 1
        for node in self.cluster.names(ACTIVE):
            if node != self.name:
                self._send(node, Ping(self._ping_seq))

    def _on_ping(self, src: str, msg: Ping, now_ms: int) -> None:
        self._send(src, Pong(msg.seq))

    def _on_pong(self, src: str, msg: Pong, now_ms: int) -> None:
        return

    def _gossip(self, now_ms: int) -> None:
        peers = [n for n in self.cluster.names(ACTIVE) if n != self.name]
        if not peers:
            return
        self.stats.gossip_rounds += 1
        up = [n for n in peers if self.detector.is_up(n, now_ms)]
        # Mostly gossip with peers believed up; now and then try any peer, so that a peer wrongly
        # believed down (or just restarted) hears from us.
        pool = up if up and self.rng.random() < 0.8 else peers
        self._send(self.rng.choice(sorted(pool)), GossipDigest(self.cluster.digest()))

    def _on_gossip_digest(self, src: str, msg: GossipDigest, now_ms: int) -> None:
        if msg.digest != self.cluster.digest():
            self._send(src, GossipState(membership.encode(self.cluster), True))

    def _on_gossip_state(self, src: str, msg: GossipState, now_ms: int) -> None:
        try:
            theirs = membership.decode(msg.state)
            merged = membership.merge(self.cluster, theirs)
        except membership.StateError as exc:
            self.stats.peer_errors += 1
            del exc
            return
        self._set_cluster(merged)
        if msg.reply and merged.digest() != theirs.digest():
            self._send(src, GossipState(membership.encode(merged), False))

    def _claim(self, now_ms: int) -> None:
        """The claimant turns membership changes into ring transitions, and ends them when done.

        One transition at a time: changes that arrive meanwhile wait for the next one, unless the
        transition would hand partitions to a node that is no longer wanted, which restarts it.
        """
        state = self.cluster
        if state.claimant() != self.name:
            return
        owning = {m.name: m.weight for m in state.members if m.status in OWNING}
        if not owning:
            return
        ring = state.ring
        if ring.next_owners is not None:
            if set(ring.next_owners) <= set(owning):
                if placement.all_switched(ring, self.n_vals()):
                    self._finish_transition(state)
                return
            # A node of the next ring left or was removed meanwhile: plan again from the current ring.
        elif set(ring.owners) == set(owning) and not any(m.status == "joining" for m in state.members):
            return
        owners = claim(owning, len(ring.owners), self.settings.n_val, ring.ring).owners
        if owners == ring.owners:
            self._set_cluster(replace(state, ring=RingState(ring.version + 1, self.name, owners)))
            self._promote_members()
            self._push_state()
            return
        transition = RingState(ring.version + 1, self.name, ring.owners, owners, frozenset())
        self._set_cluster(replace(state, ring=transition))
        self._push_state()

    def _finish_transition(self, state: ClusterState) -> None:
        ring = state.ring
        assert ring.next_owners is not None
        self._set_cluster(replace(state, ring=RingState(ring.version + 1, self.name, ring.next_owners)))
        self._promote_members()
        self._push_state()

    def _promote_members(self) -> None:
        """After a ring change: joiners that own partitions are valid, leavers that own none exit."""
        state = self.cluster
        owners = set(state.ring.owners)
        for m in state.members:
            if m.status == "joining" and m.name in owners:
                state = state.with_member(replace(m, status="valid", version=m.version + 1))
            elif m.status == "leaving" and m.name not in owners:
                state = state.with_member(replace(m, status="exiting", version=m.version + 1))
        self._set_cluster(state)

    def _push_state(self) -> None:
        """Send the whole cluster state to every active member at once (used after important changes)."""
        encoded = membership.encode(self.cluster)
        for node in self.cluster.names(ACTIVE):
            if node != self.name:
                self._send(node, GossipState(encoded, False))

    def _leave(self, origin: _Origin, now_ms: int) -> None:
        me = self.cluster.member(self.name)
        assert me is not None
        others = [m for m in self.cluster.members if m.name != self.name and m.status in OWNING]
        if me.status in ("leaving", "exiting"):
            self._answer(origin, Ok())
            return
        if me.status not in OWNING:
            self._answer(origin, Failure("bad_request", "this node is not a member"))
            return
        if not others:
            self._answer(origin, Failure("bad_request", "the last member of a cluster cannot leave it"))
            return
        self._set_cluster(self.cluster.with_member(replace(me, status="leaving", version=me.version + 1)))
        self._push_state()
        self._answer(origin, Ok())

    def _remove(self, origin: _Origin, req: ClientRemove, now_ms: int) -> None:
        member = self.cluster.member(req.node)
        if member is None:
            self._answer(origin, Failure("bad_request", f"{req.node} is not a member"))
            return
        if req.node == self.name:
            self._answer(origin, Failure("bad_request", "a node cannot remove itself; use leave"))
            return
        if member.status == "removed":
            self._answer(origin, Ok())
            return
        if not [m for m in self.cluster.members if m.name != req.node and m.status in OWNING]:
            self._answer(origin, Failure("bad_request", "removing it would leave no member"))
            return
        self._set_cluster(self.cluster.with_member(replace(member, status="removed", version=member.version + 1)))
        self.detector.forget(req.node)
        self._push_state()
        self._answer(origin, Ok())

    def _maybe_exit(self, now_ms: int) -> None:
        """A node that left and handed everything off marks itself removed and asks to stop."""
        me = self.cluster.member(self.name)
        if me is None or me.status not in ("exiting", "removed") or self.exit_requested:
            return
        if self.name in self.cluster.ring.owners or self._hint_count or self.has_data():
            return
        if me.status == "exiting":
            self._set_cluster(self.cluster.with_member(replace(me, status="removed", version=me.version + 1)))
            self._push_state()
        self.exit_requested = True

    # --- Ownership handoff -------------------------------------------------------------------------------

    def _checkpoint_key(self, transition: bytes, partition: int, source: str) -> bytes:
        return transition + b"|" + partition.to_bytes(4, "big") + source.encode()

    def _checkpoint(self, transition: bytes, partition: int, source: str) -> tuple[bytes, bool, int]:
        raw = self._get("handoff", self._checkpoint_key(transition, partition, source))
        if raw is None:
            return b"", False, 0
        after, done, count = msgpack.unpackb(raw)
        return bytes(after), bool(done), int(count)

    def _start_transfers(self, now_ms: int) -> None:
        """Pull the partitions this node must receive in the current transition (bounded concurrency)."""
        state = self.cluster
        if state.ring.next_owners is None:
            return
        transition = placement.transition_id(state.ring)
        healthy = self.healthy(now_ms)
        for transfer in placement.transfers(state, self.n_vals(), receiver=self.name):
            if len(self._pulling) >= self.settings.handoff_concurrency_max:
                return
            pending = None
            for source in transfer.sources:
                after, done, _ = self._checkpoint(transition, transfer.partition, source)
                if not done:
                    pending = (source, after)
                    break
            if pending is None:
                self._transfer_done(transition, transfer.partition)
                continue
            source, after = pending
            if (transfer.partition, source) in self._pulling or source not in healthy:
                continue
            if not self.controller.admit(now_ms):
                self._next_transfer_ms = min(self._next_transfer_ms, now_ms + 100)
                return
            self._pull(transition, transfer.partition, source, after, now_ms)

    def _pull(self, transition: bytes, partition: int, source: str, after: bytes, now_ms: int) -> None:
        op = _PullOp(transition, partition, source, after, now_ms + self.settings.request_timeout_ms)
        op_id = self._register(op)
        if after and (partition, source) not in self._resumed:
            # The first pull of this transfer since the node started, from a checkpoint: a resume.
            self.stats.handoff_resumed += 1
        self._resumed.add((partition, source))
        self._pulling.add((partition, source))
        self._send(source, HandoffPull(op_id, transition, partition, after, not after))

    def _on_handoff_pull(self, src: str, msg: HandoffPull, now_ms: int) -> None:
        prefix = keys.partition_prefix(msg.partition)
        start = msg.after + b"\x00" if msg.after else prefix
        limit = self.settings.handoff_batch_max
        rows = self._scan("data", start, keys.prefix_end(prefix), limit)
        items: list[HintItem] = []
        size = 0
        last = msg.after
        for skey, raw in rows:
            parsed = keys.decode(skey)
            items.append(HintItem(parsed.bucket, parsed.key, objects.decode(raw)))
            last = skey
            size += len(raw)
            if size >= self.settings.handoff_batch_bytes_max:
                break
        done = len(rows) < limit and len(items) == len(rows)
        self._send(src, HandoffBatch(msg.req, msg.transfer, msg.partition, tuple(items), last, done))

    def _on_handoff_batch(self, src: str, msg: HandoffBatch, now_ms: int) -> None:
        op = self._ops.get(msg.req)
        if not isinstance(op, _PullOp) or op.source != src or op.partition != msg.partition:
            return
        self._finish(msg.req)
        self._pulling.discard((op.partition, op.source))
        if placement.transition_id(self.cluster.ring) != op.transition:
            return
        for item in msg.items:
            lww = bool(self.bucket_props(item.bucket)["last_write_wins"])
            self._merge_into_data(item.bucket, item.key, item.obj, lww, now_ms)
        _, _, count = self._checkpoint(op.transition, op.partition, op.source)
        count += len(msg.items)
        # The checkpoint rides in the same batch as the data it covers: a crash resumes exactly here.
        self._put(
            "handoff",
            self._checkpoint_key(op.transition, op.partition, op.source),
            msgpack.packb([msg.last, msg.done, count]),
        )
        self.stats.handoff_batches += 1
        self.stats.handoff_keys += len(msg.items)
        if msg.done:
            self._start_transfers(now_ms)
        elif self.settings.handoff_pause_ms == 0 and self.controller.admit(now_ms):
            self._pull(op.transition, op.partition, op.source, msg.last, now_ms)
        else:
            self._next_transfer_ms = min(self._next_transfer_ms, now_ms + max(1, self.settings.handoff_pause_ms))

    def _transfer_done(self, transition: bytes, partition: int) -> None:
        state = self.cluster
        ring = state.ring
        if placement.transition_id(ring) != transition or (partition, self.name) in ring.done:
            return
        self.stats.transfers_completed += 1
        self._set_cluster(replace(state, ring=replace(ring, done=ring.done | {(partition, self.name)})))
        prefix = transition + b"|" + partition.to_bytes(4, "big")
        for raw_key, _ in self._scan("handoff", prefix, keys.prefix_end(prefix), 64):
            self._put("handoff", raw_key, None)
        claimant = state.claimant()
        if claimant is not None and claimant != self.name:
            self._send(claimant, GossipState(membership.encode(self.cluster), False))

    def transfer_progress(self) -> list[dict[str, Any]]:
        """Transfers of the current transition that this node receives, with keys received so far."""
        state = self.cluster
        if state.ring.next_owners is None:
            return []
        transition = placement.transition_id(state.ring)
        out = []
        for transfer in placement.transfers(state, self.n_vals(), receiver=self.name):
            received = sum(self._checkpoint(transition, transfer.partition, s)[2] for s in transfer.sources)
            out.append(
                {
                    "partition": transfer.partition,
                    "sources": list(transfer.sources),
                    "keys_received": received,
                    "active": any((transfer.partition, s) in self._pulling for s in transfer.sources),
                }
            )
        return out

    # --- Strays: data held here that this node no longer replicates -----------------------------------

    def _sweep_strays(self, now_ms: int) -> None:
        """Hand keys this node no longer replicates to their replicas, then drop them.

        This finishes every ownership change (the old owner's copy goes once the partition has
        switched), and catches anything that lands on a node after it stopped owning a partition
        (late hints, writes from a coordinator with an older ring). Deletion happens only after every
        replica has acknowledged, and only if the local copy did not change meanwhile.
        """
        if self._stray_inflight:
            return
        size = self.ring.size
        n_vals = self.n_vals()
        healthy = self.healthy(now_ms)
        for step in range(size):
            partition = (self._sweep_cursor + step) % size
            # A replica for the smallest n_val is a replica for every larger one (walks are prefixes).
            where = placement.placement(self.cluster.ring, partition, n_vals[0])
            if self.name in where.plist.primary_nodes or self.name in where.receivers:
                continue
            prefix = keys.partition_prefix(partition)
            rows = self._scan("data", prefix, keys.prefix_end(prefix), self.settings.hint_batch_max)
            by_targets: dict[tuple[str, ...], list[tuple[bytes, bytes]]] = {}
            for skey, raw in rows:
                bucket = keys.decode(skey).bucket
                n_val = int(self.bucket_props(bucket)["n_val"])
                here = placement.placement(self.cluster.ring, partition, n_val)
                if self.name in here.plist.primary_nodes or self.name in here.receivers:
                    continue
                replicas = tuple(n for n in here.plist.primary_nodes if n != self.name)
                by_targets.setdefault(replicas, []).append((skey, raw))
            for replicas, batch in by_targets.items():
                if not replicas or not all(r in healthy for r in replicas):
                    continue
                if not self.controller.admit(now_ms):
                    return
                items = []
                lww = []
                for skey, raw in batch:
                    parsed = keys.decode(skey)
                    items.append(HintItem(parsed.bucket, parsed.key, objects.decode(raw)))
                    lww.append(bool(self.bucket_props(parsed.bucket)["last_write_wins"]))
                op = _StrayOp(set(replicas), batch, now_ms + self.settings.request_timeout_ms)
                op_id = self._register(op)
                for node in replicas:
                    self._send(node, HintDelivery(op_id, tuple(items), tuple(lww)))
                self._stray_inflight = True
                self._sweep_cursor = partition
                return
        self._sweep_cursor = 0

    def _start_join(self, origin: _Origin, req: ClientJoin, now_ms: int) -> None:
        if len(self.cluster.names(ACTIVE)) > 1:
            # Joining the cluster this node already belongs to succeeds and changes nothing.
            if any(m.address == (req.seed_host, req.seed_port) for m in self.cluster.members):
                self._answer(origin, Ok())
            else:
                self._answer(origin, Failure("bad_request", "this node already belongs to another cluster"))
            return
        if self.has_data():
            self._answer(origin, Failure("bad_request", "this node holds data; only an empty node can join"))
            return
        me = self.cluster.member(self.name)
        assert me is not None
        op = _JoinOp(origin, self._timeout(None, now_ms), seed_label(req.seed_host, req.seed_port))
        op_id = self._register(op)
        self._outbox.append(
            Send("", JoinRequest(op_id, membership.encode_member(me)), address=(req.seed_host, req.seed_port))
        )

    def _on_join_request(self, src: str, msg: JoinRequest, now_ms: int) -> None:
        try:
            joiner = membership.decode_member(msg.member)
        except membership.StateError as exc:
            self._send(src, JoinReply(msg.req, False, f"malformed join request: {exc}", b""))
            return
        if joiner.name != src:
            self._send(src, JoinReply(msg.req, False, "a node can only ask to join for itself", b""))
            return
        existing = self.cluster.member(joiner.name)
        if existing is None or existing.status not in ACTIVE:
            version = 1 if existing is None else existing.version + 1
            self._set_cluster(self.cluster.with_member(replace(joiner, status="joining", version=version)))
        elif existing.address != joiner.address:
            moved = replace(existing, host=joiner.host, peer_port=joiner.peer_port, http_port=joiner.http_port)
            self._set_cluster(self.cluster.with_member(replace(moved, version=existing.version + 1)))
        self._send(src, JoinReply(msg.req, True, "", membership.encode(self.cluster)))

    def _on_join_reply(self, src: str, msg: JoinReply, now_ms: int) -> None:
        op = self._ops.get(msg.req)
        if not isinstance(op, _JoinOp):
            return
        self._finish(msg.req)
        if not msg.ok:
            self._answer(op.origin, Failure("bad_request", f"join refused: {msg.reason}"))
            return
        try:
            theirs = membership.decode(msg.state)
        except membership.StateError as exc:
            self._answer(op.origin, Failure("unavailable", f"seed sent a malformed state: {exc}"))
            return
        if theirs.cluster != self.cluster.cluster:
            self._answer(op.origin, Failure("bad_request", f"seed belongs to cluster {theirs.cluster!r}"))
            return
        # The node's one-node cluster is abandoned: it adopts the cluster it joined.
        self._set_cluster(theirs)
        self._answer(op.origin, Ok())

    def _peer_up(self, peer: str, now_ms: int) -> None:
        # Deliver hints soon after an owner comes back.
        self._next_hint_scan_ms = min(self._next_hint_scan_ms, now_ms)

    # --- Hinted handoff --------------------------------------------------------------------------------

    def _deliver_hints(self, now_ms: int) -> None:
        if not self._hint_count or not self.settings.hinted_handoff_enabled:
            return
        for owner in self.cluster.names(membership.STATUSES):
            if owner == self.name or owner in self._hints_inflight or not self.detector.is_up(owner, now_ms):
                continue
            prefix = hints.owner_prefix(owner)
            rows = self._scan("hints", prefix, keys.prefix_end(prefix), self.settings.hint_batch_max)
            if not rows:
                continue
            if not self.controller.admit(now_ms):
                self._next_hint_scan_ms = min(self._next_hint_scan_ms, now_ms + 100)
                return
            sent: list[tuple[bytes, bytes]] = []
            items: list[HintItem] = []
            lww: list[bool] = []
            size = 0
            for hkey, raw in rows:
                _, skey = hints.parse(hkey)
                parsed = keys.decode(skey)
                sent.append((hkey, raw))
                items.append(HintItem(parsed.bucket, parsed.key, objects.decode(raw)))
                lww.append(bool(self.bucket_props(parsed.bucket)["last_write_wins"]))
                size += len(raw)
                if size >= self.settings.hint_batch_bytes_max:
                    break
            op = _HintOp(owner, sent, now_ms + self.settings.request_timeout_ms)
            op_id = self._register(op)
            self._hints_inflight.add(owner)
            self._send(owner, HintDelivery(op_id, tuple(items), tuple(lww)))

    def _on_hint_delivery(self, src: str, msg: HintDelivery, now_ms: int) -> None:
        for item, lww in zip(msg.items, msg.lww, strict=False):
            self._merge_into_data(item.bucket, item.key, item.obj, lww, now_ms)
        self._send(src, HintDeliveryReply(msg.req, True))

    def _on_hint_delivery_reply(self, src: str, msg: HintDeliveryReply, now_ms: int) -> None:
        op = self._ops.get(msg.req)
        if isinstance(op, _StrayOp):
            self._on_stray_ack(msg.req, op, src, msg.ok, now_ms)
            return
        if isinstance(op, ExchangeOp):
            if op.peer == src and op.stage == "push":
                self.aae.on_push_ack(msg.req, op, msg.ok)
            return
        if not isinstance(op, _HintOp) or op.owner != src:
            return
        self._finish(msg.req)
        self._hints_inflight.discard(src)
        if not msg.ok:
            return
        for hkey, raw in op.sent:
            # Delete only what was delivered: a hint rewritten since it was sent goes next round.
            if self._get("hints", hkey) == raw:
                self._put("hints", hkey, None)
                self._hint_count -= 1
                self.stats.hints_delivered += 1
        # More may be waiting for this owner.
        self._next_hint_scan_ms = min(self._next_hint_scan_ms, now_ms)

    def _on_stray_ack(self, op_id: int, op: _StrayOp, src: str, ok: bool, now_ms: int) -> None:
        if src not in op.waiting:
            return
        if not ok:
            self._finish(op_id)
            self._stray_inflight = False
            return
        op.waiting.discard(src)
        if op.waiting:
            return
        self._finish(op_id)
        self._stray_inflight = False
        for skey, raw in op.sent:
            if self._get("data", skey) == raw:
                self._delete_data(skey)
                self.stats.strays_handed_off += 1
        # Keep going while there is more to hand off.
        self._next_stray_ms = min(self._next_stray_ms, now_ms)

    # --- Tombstone reaping ---------------------------------------------------------------------------

    def _reap_tombstones(self, now_ms: int) -> None:
        rows = self._scan("reap", b"", None, self.settings.reap_batch_max)
        healthy = self.healthy(now_ms)
        for skey, raw_time in rows:
            if int.from_bytes(raw_time, "big") + self.settings.tombstone_grace_ms > now_ms:
                continue
            parsed = keys.decode(skey)
            n_val = int(self.bucket_props(parsed.bucket)["n_val"])
            primaries = placement.placement(self.cluster.ring, parsed.partition, n_val).plist.primary_nodes
            if self.name not in primaries:
                # No longer a replica of this key: its reaping is someone else's business.
                self._put("reap", skey, None)
                continue
            if primaries[0] != self.name or not all(p in healthy for p in primaries):
                continue
            local = self._load("data", skey)
            if local is None or not objects.is_tombstone(local):
                self._put("reap", skey, None)
                continue
            targets = tuple(Target(p, True) for p in primaries)
            tally = GetTally(targets, len(targets), len(targets))
            deadline_ms = now_ms + self.settings.request_timeout_ms
            op = _GetOp(None, parsed.bucket, parsed.key, tally, deadline_ms, False, None)
            op.reap = local
            self._dispatch_get(op, now_ms)

    def _finish_reap(self, op: _GetOp, now_ms: int) -> None:
        assert op.reap is not None
        tombstone = op.reap
        results = op.tally.results
        if len(results) != len(op.tally.targets):
            return
        if not all(obj is not None and _same_object(obj, tombstone) for obj in results.values()):
            return
        for target in op.tally.targets:
            if target.node == self.name:
                self._apply_reap(op.bucket, op.key, tombstone)
            else:
                self._send(target.node, Reap(op.bucket, op.key, tombstone))

    def _apply_reap(self, bucket: bytes, key: bytes, tombstone: Object) -> None:
        skey = keys.encode(self.ring.partition_of(bucket, key), bucket, key)
        local = self._load("data", skey)
        if local is not None and objects.is_tombstone(local) and _same_object(local, tombstone):
            self._delete_data(skey)
            self.stats.tombstones_reaped += 1

    def _on_reap(self, src: str, msg: Reap, now_ms: int) -> None:
        self._apply_reap(msg.bucket, msg.key, msg.obj)

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
            "aae_trees_ready": sum(1 for t in self.aae.trees.values() if t.ready),
            "background_rate_per_s": round(self.controller.rate_per_s, 1),
            "background_admitted_total": self.controller.admitted,
            "background_deferred_total": self.controller.deferred,
            "background_slowdowns_total": self.controller.slowdowns,
            "foreground_p99_ms": self.controller.p99(now_ms),
            "siblings_histogram": {str(k): v for k, v in sorted(s.siblings_histogram.items())},
            "requests_in_flight": len(self._ops),
        }


def seed_label(host: str, port: int) -> str:
    """How a peer known only by its address is named in `on_unreachable`."""
    return f"@{host}:{port}"


def _same_object(a: Object, b: Object) -> bool:
    return a.clock.same_counters(b.clock) and a.siblings == b.siblings


def _forward_reply(req: int, response: ClientResponse) -> ForwardPutReply:
    if isinstance(response, Ok):
        found = response.found
        if found is None:
            return ForwardPutReply(req, "ok", "", (), None, False)
        return ForwardPutReply(req, "ok", "", found.values, found.context, found.tombstone)
    if isinstance(response, NotFound):
        return ForwardPutReply(req, "notfound", "", (), response.context, True)
    return ForwardPutReply(req, response.kind, response.reason, (), None, False)


def _check_props(props: dict[str, Any], settings: Settings) -> str | None:
    n_val = props.get("n_val")
    if isinstance(n_val, bool) or not isinstance(n_val, int) or not 1 <= n_val <= settings.n_val_max:
        return f"n_val must be an integer from 1 to {settings.n_val_max}"
    for name, minimum in (("r", 1), ("w", 1), ("pr", 0), ("pw", 0), ("dw", 0)):
        try:
            resolve(name, props.get(name), n_val, "quorum", minimum)
        except QuorumError as exc:
            return str(exc)
    for name in ("allow_mult", "last_write_wins"):
        if not isinstance(props.get(name), bool):
            return f"{name} must be true or false"
    return None


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
