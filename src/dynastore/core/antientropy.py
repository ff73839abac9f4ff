"""Anti-entropy: keeps replicas converged in the background with Merkle-tree exchanges.

Theory of operation
-------------------
Every node keeps, for each (partition, n_val), a hash tree of the keys it holds (see merkle.py) and
an on-disk *segment index* in the `aae` area: `n_val | partition | segment | stored key -> version
summary`, written in the same batch as the data it describes. So the index can never disagree with the
data after a crash; the in-memory trees are rebuilt from it at start-up, and, after an unclean
shutdown and periodically, the index itself is verified against the data (a full rescan, paced).

Both the rebuild and the verification run in bounded steps, so that the node goes on answering its
clients and peers (heartbeats included) between them: one tick reads at most
`anti_entropy_verify_batch_keys_max` keys (data keys or index entries, and at most
`anti_entropy_batch_bytes_max` bytes of data), and every step is admitted by the background
controller. Writes happen between the steps; every write of the index (a data write, a verification's
fix) goes through `_index_put`, which keeps the trees in step with it:

- A *build* fills a fresh tree from the index in key order, up to its cursor (every entry below the
  cursor is in the tree). The tree it replaces, when there is one, stays in use meanwhile and is kept
  current as before. A write whose index key is below the cursor toggles the new tree too (the build
  has passed it); one at or above does not (the build will read the entry as the write left it). So
  when the cursor reaches the end of the tree's range the new tree is exactly the index, and replaces
  the old one, ready.
- A *verification* of a partition first walks its data keys in slices: for each live copy it looks up
  the index entry the copy should have (`index_key(n_val, key, segment)`) and writes the summary when
  the entry is missing or differs (a copy that does not decode is discarded, index entry included, as
  on every read). Then it walks the partition's index entries (each n_val in turn) in slices and
  deletes those whose data key holds nothing (or belongs to another n_val, or to another segment). A
  write between slices writes the data and its index entry in one batch, so it leaves that key's index
  and data in agreement: a key the first walk has passed stays right, one it has not reached it finds
  right; a key the second walk reaches has its entry only if it has data. So no write creates a
  disagreement the verification misses, and none makes it "fix" what is right. When both walks end,
  the partition's trees are rebuilt (in slices, as above).

Exchanges: on a schedule that visits each of its (partition, n_val) trees about once per
`anti_entropy_interval_ms`, a node picks another primary of the partition and compares trees top
down, asking only for the children of nodes that differ, then for the keys and summaries of the
differing segments, then for the peer's objects of the keys that differ. It merges them into its own
copies (siblings kept, dominated versions dropped, tombstones included so nothing deleted comes back)
and sends back the merged objects that differ from the peer's, so both sides end equal. Every step is
admitted by the background controller, which slows all of this when foreground latency rises: the
start of an exchange and each batch of objects on the initiator's side, the first tree level, each
segment request and each objects request on the responder's (a busy responder says so and the
initiator asks again later). A step moves at most `anti_entropy_keys_batch_max` objects, so one
admitted step never stalls the node for long.

An operator may ask for exchanges now (`cluster repair`): `request_repair` queues one exchange with
every other primary of the partitions named, and they start one after another, before the scheduled
rounds, each still admitted by the controller. One that is abandoned (a busy responder, a timeout)
goes back in the queue, up to `REPAIR_ATTEMPTS_MAX` times, so a repair asked for is not silently lost
to load; one given up (or whose peer is down or no longer a primary) is counted and shown. A
partition where a copy was found corrupt and discarded is queued the same way, with one live peer
(`repair_soon`), so its repair waits neither for the next scheduled round nor is lost to an exchange
already running or a tree still being built. What
`cluster aae-status` shows (when each tree was built, each partition's last exchange, with whom, and
the keys it repaired) is kept in `AaeStats`.

The initiator drives the exchange; the responder answers statelessly. Both count the bytes of the
anti-entropy messages they send and receive.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import msgpack

from dynastore.core import keys, merkle, messages, objects, placement
from dynastore.core.controller import BackgroundController
from dynastore.core.effects import EventField
from dynastore.core.membership import ClusterState, RingState
from dynastore.core.merkle import HashTree
from dynastore.core.messages import (
    HintItem,
    Message,
    ObjectsReply,
    ObjectsRequest,
    SegmentReply,
    SegmentRequest,
    TreeReply,
    TreeRequest,
)
from dynastore.core.objects import Object
from dynastore.core.ops import AnyOp, ExchangeOp
from dynastore.core.ring import Ring
from dynastore.settings import Settings
from dynastore.storage.base import truncated

SEGMENTS_PER_REQUEST = 64
QUEUE_RETRY_MS = 10
# A responder too busy to send objects is asked again after this long.
BUSY_RETRY_MS = 200
# How long requested exchanges wait, when none could start, before they are looked at again.
REQUEST_WAIT_MS = 100
META_CLEAN = b"clean_shutdown"
# The summary version the segment index was written with (none: version 1).
META_SUMMARY_VERSION = b"aae_summary_version"
# Exchanges an operator asked for (`cluster repair`) waiting to start, at most; how often one that is
# abandoned is tried again, and how long after.
REPAIR_QUEUE_MAX = 16384
REPAIR_ATTEMPTS_MAX = 50


class RepairError(ValueError):
    """A repair that cannot be queued (a partition this node holds no replica of, a full queue)."""


@dataclass(frozen=True, slots=True)
class LastExchange:
    """A partition's most recent completed exchange: when, with which peer, how many keys it repaired."""

    at_ms: int
    peer: str
    n_val: int
    keys_repaired: int


class AntiEntropyHost(Protocol):
    """What anti-entropy needs from the node it runs in (NodeBase provides it): identity and settings,
    the cluster and its placement, the background controller, the staged store, the op registry, and
    the merge of a repaired object into the node's data."""

    name: str
    settings: Settings
    controller: BackgroundController
    cluster: ClusterState
    now_hint_ms: int
    _ops: dict[int, AnyOp]

    @property
    def ring(self) -> Ring: ...

    def n_vals(self) -> list[int]: ...

    def healthy(self, now_ms: int) -> frozenset[str]: ...

    def has_data(self) -> bool: ...

    def _props(self, bucket: bytes) -> dict[str, Any]: ...

    def _get(self, area: str, key: bytes) -> bytes | None: ...

    def _put(self, area: str, key: bytes, value: bytes | None) -> None: ...

    def _scan_all(self, area: str, start: bytes, end: bytes | None) -> Iterable[tuple[bytes, bytes]]: ...

    def _scan(
        self, area: str, start: bytes, end: bytes | None, limit: int, bytes_max: int | None = None
    ) -> list[tuple[bytes, bytes]]: ...

    def _load(self, area: str, key: bytes) -> Object | None: ...

    def _decode_copy(self, area: str, key: bytes, raw: bytes) -> Object | None: ...

    def _refuses(self, *, delete: bool) -> bool: ...

    def _stored_key(self, bucket: bytes, key: bytes) -> bytes: ...

    def _keeps_one(self, bucket: bytes) -> bool: ...

    def _merge_into_data(self, bucket: bytes, key: bytes, incoming: Object, one: bool, now_ms: int) -> None: ...

    def _register(self, op: AnyOp) -> int: ...

    def _extend(self, op_id: int, op: AnyOp, deadline_ms: int) -> None: ...

    def _finish(self, op_id: int) -> None: ...

    def _send(self, dst: str, msg: Message, *, after: int | None = None) -> None: ...

    def _event(
        self, kind: str, level: Literal["debug", "info", "warning", "error"], text: str, **fields: EventField
    ) -> None: ...


@dataclass
class AaeStats:
    exchanges: int = 0
    exchanges_with_differences: int = 0
    keys_repaired: int = 0
    tree_builds: int = 0
    index_verifications: int = 0
    index_fixes: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    busy_replies: int = 0
    objects_pushed: int = 0
    last_exchange_ms: dict[int, int] = field(default_factory=dict)
    last_exchange: dict[int, LastExchange] = field(default_factory=dict)
    # When each (partition, n_val) tree was last built, and keys repaired per partition since start.
    built_ms: dict[tuple[int, int], int] = field(default_factory=dict)
    repaired_by_partition: dict[int, int] = field(default_factory=dict)
    repairs_requested: int = 0
    repairs_given_up: int = 0
    # When a requested exchange of the partition was last given up.
    repair_given_up_ms: dict[int, int] = field(default_factory=dict)


@dataclass(slots=True)
class _Build:
    """A tree being built from the segment index: every entry below `cursor` is in `tree`."""

    partition: int
    n_val: int
    tree: HashTree
    cursor: bytes


@dataclass(slots=True)
class _Verify:
    """A partition's verification in progress: the walk over its data keys from `cursor` ("data"), then
    the walk over its index entries of `n_vals[0]` from `cursor`, then of the n_vals after it ("index")."""

    partition: int
    phase: Literal["data", "index"]
    cursor: bytes
    n_vals: list[int]


def _size(msg: Message) -> int:
    return len(msgpack.packb(messages.to_wire(msg), use_bin_type=True))


def index_key(n_val: int, storage_key: bytes, segment: int) -> bytes:
    return bytes([n_val]) + storage_key[: keys.PARTITION_BYTES] + segment.to_bytes(2, "big") + storage_key


def _tree_prefix(n_val: int, partition: int) -> bytes:
    return bytes([n_val]) + keys.partition_prefix(partition)


class AntiEntropy:
    def __init__(self, node: AntiEntropyHost, now_ms: int) -> None:
        self.node = node
        self.segments = node.settings.anti_entropy_segments_count
        self.trees: dict[tuple[int, int], HashTree] = {}
        self.stats = AaeStats()
        # Trees to build from the segment index, and partitions whose index to verify against the data.
        self.build_queue: list[tuple[int, int]] = []
        self.verify_queue: list[int] = []
        # The build and the verification in progress (one of each at a time), between their steps.
        self._build: _Build | None = None
        self._verify: _Verify | None = None
        self._cursor = 0
        self._candidates_cache: tuple[RingState, tuple[int, ...], list[tuple[int, int, list[str]]]] | None = None
        self._exchanging = False
        # The exchange (one at a time) whose next objects request waits for admission: (not before, op id).
        self._deferred: tuple[int, int] | None = None
        self._next_exchange_ms = now_ms + node.settings.anti_entropy_interval_ms // 4
        self._next_verify_all_ms = now_ms + node.settings.anti_entropy_rebuild_interval_ms
        # Exchanges to run before the scheduled rounds — those an operator asked for, and those of a
        # partition where a copy was found corrupt and discarded: (partition, n_val, peer) -> attempts
        # so far, in order; none starts before `_requested_not_before_ms` (set after an attempt is
        # abandoned, or when none could start).
        self.requested: dict[tuple[int, int, str], int] = {}
        self._requested_not_before_ms = 0
        clean = node._get("meta", META_CLEAN) is not None
        node._put("meta", META_CLEAN, None)
        raw_version = node._get("meta", META_SUMMARY_VERSION)
        current = raw_version is not None and int.from_bytes(raw_version, "big") == merkle.SUMMARY_VERSION
        if not current:
            node._put("meta", META_SUMMARY_VERSION, merkle.SUMMARY_VERSION.to_bytes(4, "big"))
        if not current and node.has_data():
            # Summaries of another version: recompute the index from the data before any exchange (a
            # verification builds the partition's trees; until then they are not ready).
            self.verify_queue.extend(range(node.ring.size))
            return
        for partition in range(node.ring.size):
            for n_val in node.n_vals():
                self.build_queue.append((partition, n_val))
        if not clean and node.has_data():
            # An unclean stop: the index is written with the data and should be exact, but verify it.
            self.verify_queue.extend(range(node.ring.size))

    # --- Index and tree maintenance (called on every data write) --------------------------------------

    def tree(self, partition: int, n_val: int) -> HashTree:
        key = (partition, n_val)
        tree = self.trees.get(key)
        if tree is None:
            tree = self.trees[key] = HashTree(self.segments)
        return tree

    def on_write(self, skey: bytes, n_val: int, obj: Object | None, previous: Object | bool | None = True) -> None:
        """Keep index and tree in step with a data write (obj None: the key was deleted).

        `previous` is the object the write replaces, when the caller has it (None: there was none);
        True means unknown, and the index entry is read instead (so it is while the tree is being
        built: the new tree holds what the index holds).
        """
        if not self.node.settings.anti_entropy_enabled:
            return
        partition = int.from_bytes(skey[: keys.PARTITION_BYTES], "big")
        segment = merkle.segment_of(skey, self.segments)
        building = self._build is not None and (self._build.partition, self._build.n_val) == (partition, n_val)
        if previous is True or building:
            old = self.node._get("aae", index_key(n_val, skey, segment))
        else:
            # The index is written with the data, so its entry is the summary of what the data held.
            old = None if previous is None or previous is False else merkle.summary(previous)
        self._index_put(partition, n_val, skey, segment, old, None if obj is None else merkle.summary(obj))

    def _index_put(
        self, partition: int, n_val: int, skey: bytes, segment: int, old: bytes | None, new: bytes | None
    ) -> None:
        """Write one index entry (`new` None: delete it) that held `old`, and toggle the trees that hold
        it: the tree in use when it is ready, and the tree being built when the build has passed it."""
        raw_key = index_key(n_val, skey, segment)
        self.node._put("aae", raw_key, new)
        if segment >= self.segments:
            return  # a stray entry no tree ever held (a build skips it too)
        trees = []
        live = self.tree(partition, n_val)
        if live.ready:
            trees.append(live)
        build = self._build
        if build is not None and (build.partition, build.n_val) == (partition, n_val) and raw_key < build.cursor:
            trees.append(build.tree)
        for tree in trees:
            if old is not None:
                tree.toggle(segment, merkle.key_hash(skey, old))
            if new is not None:
                tree.toggle(segment, merkle.key_hash(skey, new))

    def _build_step(self, budget: int) -> int:
        """Read up to `budget` index entries into the tree being built (starting the next queued build
        when none is); finish it when its range is read. Returns the entries read (at least 1)."""
        build = self._build
        if build is None:
            partition, n_val = self.build_queue.pop(0)
            build = self._build = _Build(partition, n_val, HashTree(self.segments), _tree_prefix(n_val, partition))
        end = keys.prefix_end(_tree_prefix(build.n_val, build.partition))
        rows = self.node._scan("aae", build.cursor, end, budget)
        for raw_key, version in rows:
            segment = int.from_bytes(raw_key[5:7], "big")
            if segment < self.segments:
                build.tree.toggle(segment, merkle.key_hash(raw_key[7:], version))
        if truncated(rows, budget, None):
            build.cursor = rows[-1][0] + b"\x00"
            return len(rows)
        self._build = None
        build.tree.ready = True
        self.trees[(build.partition, build.n_val)] = build.tree
        self.stats.tree_builds += 1
        self.stats.built_ms[(build.partition, build.n_val)] = self.node.now_hint_ms
        return max(1, len(rows))

    def _verify_step(self, budget: int) -> int:
        """One slice of the verification in progress (starting the next queued one when none is), of
        at most `budget` keys and the byte bound of data. Returns the keys looked at (at least 1; the
        whole budget when the byte bound stopped the slice)."""
        node = self.node
        job = self._verify
        if job is None:
            partition = self.verify_queue.pop(0)
            job = self._verify = _Verify(partition, "data", keys.partition_prefix(partition), [])
        if job.phase == "data":
            bytes_max = node.settings.anti_entropy_batch_bytes_max
            rows = node._scan(
                "data", job.cursor, keys.prefix_end(keys.partition_prefix(job.partition)), budget, bytes_max
            )
            for skey, raw in rows:
                obj = node._decode_copy("data", skey, raw)
                if obj is None:
                    continue  # discarded, index entry included
                n_val = int(node._props(keys.decode(skey).bucket)["n_val"])
                segment = merkle.segment_of(skey, self.segments)
                have = node._get("aae", index_key(n_val, skey, segment))
                want = merkle.summary(obj)
                if have != want:
                    self._index_put(job.partition, n_val, skey, segment, have, want)
                    self.stats.index_fixes += 1
            if truncated(rows, budget, bytes_max):
                job.cursor = rows[-1][0] + b"\x00"
                return budget if len(rows) < budget else len(rows)
            job.phase = "index"
            job.n_vals = sorted(self._all_n_vals())
            job.cursor = _tree_prefix(job.n_vals[0], job.partition) if job.n_vals else b""
            return max(1, len(rows))
        looked = 0
        while job.n_vals and looked < budget:
            n_val = job.n_vals[0]
            limit = budget - looked
            rows = node._scan("aae", job.cursor, keys.prefix_end(_tree_prefix(n_val, job.partition)), limit)
            looked += len(rows)
            for raw_key, version in rows:
                skey = raw_key[7:]
                segment = int.from_bytes(raw_key[5:7], "big")
                held = node._get("data", skey)
                # The first walk discarded every copy that does not decode: a copy present is live.
                if (
                    held is None
                    or segment != merkle.segment_of(skey, self.segments)
                    or int(node._props(keys.decode(skey).bucket)["n_val"]) != n_val
                ):
                    self._index_put(job.partition, n_val, skey, segment, version, None)
                    self.stats.index_fixes += 1
            if truncated(rows, limit, None):
                job.cursor = rows[-1][0] + b"\x00"
                return looked
            job.n_vals.pop(0)
            if job.n_vals:
                job.cursor = _tree_prefix(job.n_vals[0], job.partition)
        if job.n_vals:
            return looked
        self._verify = None
        self.stats.index_verifications += 1
        # Rebuild the partition's trees from the verified index, before the other queued builds (one
        # being built now is kept in step with the fixes by `_index_put`, so it needs no second build).
        building = None if self._build is None else (self._build.partition, self._build.n_val)
        fresh = [
            (job.partition, n_val)
            for n_val in sorted(self._all_n_vals())
            if (job.partition, n_val) not in self.build_queue and (job.partition, n_val) != building
        ]
        self.build_queue[:0] = fresh
        return max(1, looked)

    def _all_n_vals(self) -> set[int]:
        return set(self.node.n_vals()) | {n for _, n in self.trees}

    def mark_clean_shutdown(self) -> None:
        self.node._put("meta", META_CLEAN, b"1")

    # --- Ticks --------------------------------------------------------------------------------------------

    def next_deadline_ms(self) -> int:
        if not self.node.settings.anti_entropy_enabled:
            return self.node.now_hint_ms + 3_600_000
        if self.build_queue or self.verify_queue or self._build is not None or self._verify is not None:
            # Soon, not now: a step the controller deferred must not make the timer spin.
            return self.node.now_hint_ms + QUEUE_RETRY_MS
        if self.requested and not self._exchanging:
            return max(self.node.now_hint_ms + QUEUE_RETRY_MS, self._requested_not_before_ms)
        soonest = min(self._next_exchange_ms, self._next_verify_all_ms)
        if self._deferred is not None:
            soonest = min(soonest, max(self._deferred[0], self.node.now_hint_ms + QUEUE_RETRY_MS))
        return soonest

    def on_tick(self, now_ms: int) -> None:
        if not self.node.settings.anti_entropy_enabled:
            return
        controller = self.node.controller
        # Building trees from the index is cheap (no object decoding); verifying from data is not. Each
        # reads at most a batch of keys per tick, so the node answers between the steps.
        batch = self.node.settings.anti_entropy_verify_batch_keys_max
        budget = batch
        while budget > 0 and (self._build is not None or self.build_queue) and controller.admit(now_ms, 0.25):
            budget -= self._build_step(budget)
        budget = batch
        while budget > 0 and (self._verify is not None or self.verify_queue) and controller.admit(now_ms):
            budget -= self._verify_step(budget)
        if self._deferred is not None and self._deferred[0] <= now_ms:
            op_id = self._deferred[1]
            op = self.node._ops.get(op_id)
            if not isinstance(op, ExchangeOp) or op.stage != "deferred":
                self._deferred = None  # abandoned meanwhile (timed out, peer lost)
            elif controller.admit(now_ms):
                self._deferred = None
                self._send_objects_request(op_id, op, now_ms)
        if now_ms >= self._next_verify_all_ms:
            self._next_verify_all_ms = now_ms + self.node.settings.anti_entropy_rebuild_interval_ms
            self.verify_queue.extend(p for p in range(self.node.ring.size) if p not in self.verify_queue)
        if self.requested and not self._exchanging and now_ms >= self._requested_not_before_ms:
            self._start_requested(now_ms)
        if now_ms >= self._next_exchange_ms:
            candidates = self._candidates()
            spacing = self.node.settings.anti_entropy_interval_ms // max(1, len(candidates))
            self._next_exchange_ms = now_ms + max(1, spacing)
            if candidates and not self._exchanging and controller.admit(now_ms):
                self._start(candidates, now_ms)

    def repair_soon(self, partition: int) -> None:
        """A copy in `partition` was discarded: queue an exchange of the partition with one live other
        primary (per n_val), run before the scheduled rounds and retried like an operator's request,
        so it is neither lost to an exchange already running nor to a tree still being built."""
        node = self.node
        healthy = node.healthy(node.now_hint_ms)
        for n_val in node.n_vals():
            primaries = placement.placement(node.cluster.ring, partition, n_val).plist.primary_nodes
            live = [p for p in primaries if p != node.name and p in healthy]
            if node.name not in primaries or not live:
                continue  # not a replica of it, or nobody to ask now: the scheduled rounds will do
            if any(p == partition and n == n_val for p, n, _ in self.requested):
                continue
            if len(self.requested) >= REPAIR_QUEUE_MAX:
                return
            self.requested[(partition, n_val, live[self.stats.exchanges % len(live)])] = 0

    def request_repair(self, partition: int | None) -> list[tuple[int, int, str]]:
        """Queue an exchange now with every other primary of `partition` (None: of every partition this
        node is a primary of). Returns what was queued; raises RepairError, queueing nothing, when the
        node holds no replica of the partition or the queue would pass its limit."""
        node = self.node
        if partition is not None and not 0 <= partition < node.ring.size:
            raise RepairError(f"partition must be from 0 to {node.ring.size - 1}")
        wanted = [
            (p, n_val, peer)
            for p, n_val, peers in self._candidates()
            if partition is None or p == partition
            for peer in peers
        ]
        if partition is not None and not wanted:
            primaries = placement.placement(node.cluster.ring, partition, node.settings.n_val).plist.primary_nodes
            raise RepairError(
                f"{node.name} holds no replica of partition {partition} with another primary "
                f"(its primaries: {', '.join(primaries)})"
            )
        fresh = [entry for entry in wanted if entry not in self.requested]
        if len(self.requested) + len(fresh) > REPAIR_QUEUE_MAX:
            raise RepairError(f"more than {REPAIR_QUEUE_MAX} exchanges would be queued; repair fewer partitions")
        for entry in fresh:
            self.requested[entry] = 0
        self.stats.repairs_requested += len(fresh)
        return wanted

    def _start_requested(self, now_ms: int) -> None:
        """Start the first requested exchange that can run (its tree is ready; the peer is up and still a
        primary). Those that can never run now are dropped; those waiting for their tree stay."""
        healthy = self.node.healthy(now_ms)
        current = {(p, n): peers for p, n, peers in self._candidates()}
        for entry, attempts in list(self.requested.items()):
            partition, n_val, peer = entry
            if peer not in current.get((partition, n_val), ()) or peer not in healthy:
                del self.requested[entry]
                self._give_up(partition, now_ms)
                continue
            tree = self.trees.get((partition, n_val))
            if tree is None or not tree.ready:
                continue
            if not self.node.controller.admit(now_ms):
                break
            del self.requested[entry]
            self._begin(peer, partition, n_val, now_ms, attempts + 1)
            return
        # Nothing could start (trees being built, or the controller's budget spent): look again a
        # little later rather than at every tick (finding the candidates walks the whole ring).
        self._requested_not_before_ms = now_ms + REQUEST_WAIT_MS

    def _give_up(self, partition: int, now_ms: int) -> None:
        self.stats.repairs_given_up += 1
        self.stats.repair_given_up_ms[partition] = now_ms

    def _candidates(self) -> list[tuple[int, int, list[str]]]:
        """(partition, n_val, the other primaries) of every tree this node exchanges; callers only read it.

        Made once per ring state and set of n_vals: exchanges start every interval / candidates, and
        each walk of the whole ring costs Q placements (at Q=4096 that walk was most of a node's work).
        """
        node = self.node
        ring = node.cluster.ring
        n_vals = tuple(node.n_vals())
        cached = self._candidates_cache
        if cached is not None and cached[0] is ring and cached[1] == n_vals:
            return cached[2]
        out = []
        for partition in range(node.ring.size):
            for n_val in n_vals:
                primaries = placement.placement(ring, partition, n_val).plist.primary_nodes
                if node.name in primaries:
                    peers = [p for p in primaries if p != node.name]
                    if peers:
                        out.append((partition, n_val, peers))
        self._candidates_cache = (ring, n_vals, out)
        return out

    def _start(self, candidates: list[tuple[int, int, list[str]]], now_ms: int) -> None:
        node = self.node
        healthy = node.healthy(now_ms)
        for step in range(len(candidates)):
            partition, n_val, peers = candidates[(self._cursor + step) % len(candidates)]
            tree = self.trees.get((partition, n_val))
            if tree is None or not tree.ready:
                continue
            live = [p for p in peers if p in healthy]
            if not live:
                continue
            self._cursor = (self._cursor + step + 1) % len(candidates)
            self._begin(live[self.stats.exchanges % len(live)], partition, n_val, now_ms)
            return

    def _begin(self, peer: str, partition: int, n_val: int, now_ms: int, attempt: int = 0) -> None:
        """Start an exchange with `peer`; `attempt` counts the tries of an operator's request (0: none)."""
        op = ExchangeOp(peer, partition, n_val, now_ms + self.node.settings.request_timeout_ms, attempt=attempt)
        op_id = self.node._register(op)
        self._exchanging = True
        self._send(peer, TreeRequest(op_id, partition, n_val, 0, (0,)))

    def _send(self, dst: str, msg: Message) -> None:
        self.stats.bytes_sent += _size(msg)
        self.node._send(dst, msg)

    def _done(self, op_id: int, op: ExchangeOp, now_ms: int) -> None:
        self.node._finish(op_id)
        self._exchanging = False
        self.stats.exchanges += 1
        self.stats.last_exchange_ms[op.partition] = now_ms
        if op.repaired:
            self.node._event(
                "aae_repaired",
                "info",
                f"anti-entropy with {op.peer} repaired {op.repaired} keys of partition {op.partition}",
                partition=op.partition,
                peer=op.peer,
                keys=op.repaired,
                n_val=op.n_val,
            )
        self.stats.last_exchange[op.partition] = LastExchange(now_ms, op.peer, op.n_val, op.repaired)

    def abandon(self, op_id: int) -> None:
        op = self.node._ops.get(op_id)
        self.node._finish(op_id)
        self._exchanging = False
        if isinstance(op, ExchangeOp) and op.attempt:
            # An exchange an operator asked for is tried again, a little later, up to a limit.
            now_ms = self.node.now_hint_ms
            if op.attempt >= REPAIR_ATTEMPTS_MAX or len(self.requested) >= REPAIR_QUEUE_MAX:
                self._give_up(op.partition, now_ms)
                return
            self.requested[(op.partition, op.n_val, op.peer)] = op.attempt
            self._requested_not_before_ms = now_ms + BUSY_RETRY_MS

    # --- Responder ---------------------------------------------------------------------------------------

    def on_tree_request(self, src: str, msg: TreeRequest, now_ms: int) -> None:
        self.stats.bytes_received += _size(msg)
        tree = self.trees.get((msg.partition, msg.n_val))
        # The responder's own clients count too: when it is busy serving them it declines, and the
        # initiator tries again later (an exchange costs both sides).
        busy = msg.level == 0 and not self.node.controller.admit(now_ms)
        if busy or tree is None or not tree.ready or not 0 <= msg.level < tree.depth:
            self._send(src, TreeReply(msg.req, (), False))
            return
        self._send(src, TreeReply(msg.req, tuple(tree.hashes(msg.level, list(msg.indexes))), True))

    def on_segment_request(self, src: str, msg: SegmentRequest, now_ms: int) -> None:
        self.stats.bytes_received += _size(msg)
        if not self.node.controller.admit(now_ms):
            self._send(src, SegmentReply(msg.req, (), (), False))
            return
        found = self._segment_entries(msg.partition, msg.n_val, msg.segments)
        self._send(src, SegmentReply(msg.req, tuple(found), tuple(found.values()), True))

    def on_objects_request(self, src: str, msg: ObjectsRequest, now_ms: int) -> None:
        self.stats.bytes_received += _size(msg)
        node = self.node
        if not node.controller.admit(now_ms):
            self._send(src, ObjectsReply(msg.req, (), False, 0))
            return
        items = []
        served = size = 0
        bytes_max = node.settings.anti_entropy_batch_bytes_max
        for skey in msg.keys[: node.settings.anti_entropy_keys_batch_max]:
            served += 1
            raw = node._get("data", skey)
            obj = None if raw is None else node._decode_copy("data", skey, raw)
            if raw is not None and obj is not None:
                parsed = keys.decode(skey)
                items.append(HintItem(parsed.bucket, parsed.key, obj))
                size += len(raw)
                if size >= bytes_max:
                    break
        self._send(src, ObjectsReply(msg.req, tuple(items), True, served))

    def _segment_entries(self, partition: int, n_val: int, segments: Iterable[int]) -> dict[bytes, bytes]:
        found: dict[bytes, bytes] = {}
        for segment in segments:
            if not 0 <= segment < self.segments:
                continue
            prefix = _tree_prefix(n_val, partition) + segment.to_bytes(2, "big")
            for raw_key, version in self.node._scan_all("aae", prefix, keys.prefix_end(prefix)):
                found[raw_key[7:]] = version
        return found

    # --- Initiator ------------------------------------------------------------------------------------------

    def on_tree_reply(self, src: str, msg: TreeReply, now_ms: int) -> None:
        self.stats.bytes_received += _size(msg)
        op = self.node._ops.get(msg.req)
        if not isinstance(op, ExchangeOp) or op.peer != src or op.stage != "tree":
            return
        tree = self.trees.get((op.partition, op.n_val))
        if not msg.ready or tree is None or not tree.ready:
            self.abandon(msg.req)
            return
        indexes = [0] if op.level == 0 else op.segments
        if len(msg.hashes) != len(indexes):
            self.abandon(msg.req)
            return
        diff = merkle.differing(indexes, tree.hashes(op.level, indexes), list(msg.hashes))
        if not diff:
            self._done(msg.req, op, now_ms)
            return
        if op.level == tree.depth - 1:
            self.stats.exchanges_with_differences += 1
            op.stage = "segments"
            op.segments = diff
            self._next_segments(msg.req, op)
            return
        op.level += 1
        op.segments = [child for index in diff for child in tree.children(op.level - 1, index)]
        self._send(src, TreeRequest(msg.req, op.partition, op.n_val, op.level, tuple(op.segments)))

    def _next_segments(self, op_id: int, op: ExchangeOp) -> None:
        batch, op.segments = op.segments[:SEGMENTS_PER_REQUEST], op.segments[SEGMENTS_PER_REQUEST:]
        if not batch:
            self._done(op_id, op, self.node.now_hint_ms)
            return
        op.stage = "segments"
        op.differing = []
        op.batch = batch
        self._send(op.peer, SegmentRequest(op_id, op.partition, op.n_val, tuple(batch)))

    def on_segment_reply(self, src: str, msg: SegmentReply, now_ms: int) -> None:
        self.stats.bytes_received += _size(msg)
        op = self.node._ops.get(msg.req)
        if not isinstance(op, ExchangeOp) or op.peer != src or op.stage != "segments":
            return
        if not msg.ready or len(msg.keys) != len(msg.summaries):
            self.abandon(msg.req)
            return
        theirs = dict(zip(msg.keys, msg.summaries, strict=True))
        mine = self._segment_entries(op.partition, op.n_val, op.batch)
        op.differing = sorted(k for k in theirs.keys() | mine.keys() if theirs.get(k) != mine.get(k))
        self._request_objects(msg.req, op)

    def _request_objects(self, op_id: int, op: ExchangeOp, delay_ms: int = 0) -> None:
        """Ask the peer for the next batch of differing keys, once the controller admits it."""
        if not op.differing:
            self._next_segments(op_id, op)
            return
        now_ms = self.node.now_hint_ms
        if delay_ms == 0 and self.node.controller.admit(now_ms):
            self._send_objects_request(op_id, op, now_ms)
            return
        op.stage = "deferred"
        self._deferred = (now_ms + delay_ms, op_id)

    def _send_objects_request(self, op_id: int, op: ExchangeOp, now_ms: int) -> None:
        # Each step gets its own time limit: an exchange paced over many steps is not a stuck one.
        self.node._extend(op_id, op, now_ms + self.node.settings.request_timeout_ms)
        op.stage = "objects"
        limit = self.node.settings.anti_entropy_keys_batch_max
        self._send(op.peer, ObjectsRequest(op_id, tuple(op.differing[:limit])))

    def on_objects_reply(self, src: str, msg: ObjectsReply, now_ms: int) -> None:
        self.stats.bytes_received += _size(msg)
        op = self.node._ops.get(msg.req)
        if not isinstance(op, ExchangeOp) or op.peer != src or op.stage != "objects":
            return
        if not msg.ready:
            self.stats.busy_replies += 1
            self._request_objects(msg.req, op, BUSY_RETRY_MS)
            return
        node = self.node
        limit = node.settings.anti_entropy_keys_batch_max
        asked = min(limit, len(op.differing))
        if not 1 <= msg.served <= asked:
            self.abandon(msg.req)
            return
        if node._refuses(delete=False):
            # No room on this disk: the exchange waits for a later round (diskspace.py).
            self.abandon(msg.req)
            return
        batch, op.differing = op.differing[: msg.served], op.differing[msg.served :]
        wanted = set(batch)
        theirs: dict[tuple[bytes, bytes], Object] = {}
        for item in msg.items:
            # Only what was asked for, and only once: a peer cannot slip other keys in.
            if (item.bucket, item.key) in theirs or node._stored_key(item.bucket, item.key) not in wanted:
                continue
            node._merge_into_data(item.bucket, item.key, item.obj, node._keeps_one(item.bucket), now_ms)
            theirs[(item.bucket, item.key)] = item.obj
        # Send back the merged result of every differing key the peer does not hold already (a key it
        # lacks, or one where this side added something), so both sides end equal. What does not fit
        # the byte bound goes back to be asked for again.
        merged = []
        flags = []
        size = 0
        bytes_max = node.settings.anti_entropy_batch_bytes_max
        for index, skey in enumerate(batch):
            if size >= bytes_max:
                op.differing[:0] = batch[index:]
                batch = batch[:index]
                break
            raw = node._get("data", skey)
            obj = None if raw is None else node._decode_copy("data", skey, raw)
            if raw is not None and obj is not None:
                parsed = keys.decode(skey)
                held = theirs.get((parsed.bucket, parsed.key))
                if held is not None and objects.same(held, obj):
                    continue
                merged.append(HintItem(parsed.bucket, parsed.key, obj))
                flags.append(node._keeps_one(parsed.bucket))
                size += len(raw)
        self.stats.keys_repaired += len(batch)
        op.repaired += len(batch)
        by_partition = self.stats.repaired_by_partition
        by_partition[op.partition] = by_partition.get(op.partition, 0) + len(batch)
        if not merged:
            self._request_objects(msg.req, op)
            return
        op.stage = "push"
        self.stats.objects_pushed += len(merged)
        self._send(op.peer, messages.HintDelivery(msg.req, tuple(merged), tuple(flags)))

    def on_push_ack(self, op_id: int, op: ExchangeOp, ok: bool) -> None:
        if not ok:
            self.abandon(op_id)
            return
        self._request_objects(op_id, op)
