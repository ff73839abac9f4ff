"""Handoff: moving data to the nodes that should hold it. Ownership transfers during a ring transition,
the sweep of strays (data held here that this node no longer replicates), and hinted-handoff delivery.

Theory of operation
-------------------
- Ownership transfers: during a transition each receiver pulls the partitions it gains from their
  sources (placement.py says which), one batch at a time, with a bounded number of pulls at once. The
  checkpoint of a pull (the last key received, whether the source is exhausted, the keys counted) is
  staged in the same batch as the data it covers, so a node that crashes resumes exactly where it
  stopped. Once every source of a partition is exhausted, the receiver records the partition as done
  in the ring and tells the claimant.
- Strays: data this node holds but no longer replicates (the old owner's copy once a partition has
  switched, late hints, writes from a coordinator with an older ring) is offered to the key's replicas
  and deleted here once every replica has acknowledged, and only if the local copy did not change
  meanwhile.
- Hints: a fallback that took a write for a primary delivers it, in batches, once that primary is
  reachable again, and deletes a hint only if it was not rewritten since it was sent. A primary that
  left the cluster or was removed will never take its hints back: they go to each key's replicas in
  the current ring instead, and are deleted once every one of those has acknowledged them.

Every step is admitted by the background controller, so handoff slows down when foreground latency
rises. This module must never delete the only copy of anything: data leaves a node only after its
new holders acknowledged it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import msgpack

from dynastore.core import hints, keys, membership, objects, placement
from dynastore.core.membership import ACTIVE
from dynastore.core.messages import (
    GossipState,
    HandoffBatch,
    HandoffPull,
    HintDelivery,
    HintDeliveryReply,
    HintItem,
)
from dynastore.core.nodebase import NodeBase
from dynastore.core.ops import ExchangeOp, HintOp, PullOp, StrayOp
from dynastore.storage.base import truncated


class Handoff(NodeBase):
    """Ownership transfers, the stray sweep and hint delivery; mixed into NodeCore."""

    # (partition, source) pairs being pulled now, and those pulled at least once since the node started.
    _pulling: set[tuple[int, str]]
    _resumed: set[tuple[int, str]]
    _next_transfer_ms: int
    _stray_inflight: bool
    _sweep_cursor: int
    _next_stray_ms: int
    # Owners with a hint delivery in flight (one at a time per owner).
    _hints_inflight: set[str]
    _next_hint_scan_ms: int

    def _init_handoff(self, now_ms: int) -> None:
        self._hints_inflight = set()
        self._pulling = set()
        self._resumed = set()
        self._stray_inflight = False
        self._sweep_cursor = 0
        self._hint_count = self.engine.count("hints")
        self._hint_bytes = 0
        self._hints_by_owner = {}
        for hkey, raw in self._scan_all("hints", b"", None):
            self._hint_bytes += len(raw)
            self._count_hint_owner(hkey, +1)
        self._next_hint_scan_ms = now_ms + self.settings.hint_scan_interval_ms
        self._next_transfer_ms = now_ms
        self._next_stray_ms = now_ms + self.settings.stray_scan_interval_ms

    def _tick_hints(self, now_ms: int) -> None:
        if now_ms >= self._next_hint_scan_ms:
            self._next_hint_scan_ms = now_ms + self.settings.hint_scan_interval_ms
            self._deliver_hints(now_ms)

    def _tick_transfers(self, now_ms: int) -> None:
        if now_ms >= self._next_transfer_ms:
            self._next_transfer_ms = now_ms + self.settings.handoff_retry_ms
            self._start_transfers(now_ms)

    def _tick_strays(self, now_ms: int) -> bool:
        """Sweep strays when it is time; says whether it was."""
        if now_ms < self._next_stray_ms:
            return False
        self._next_stray_ms = now_ms + self.settings.stray_scan_interval_ms
        self._sweep_strays(now_ms)
        return True

    # --- Ownership transfers -------------------------------------------------------------------------------

    def _checkpoint(self, transition: bytes, partition: int, source: str) -> tuple[bytes, bool, int]:
        raw = self._get("handoff", _checkpoint_key(transition, partition, source))
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
        op = PullOp(transition, partition, source, after, now_ms + self.settings.request_timeout_ms)
        op_id = self._register(op)
        if (partition, source) not in self._resumed:
            if after:
                # The first pull of this transfer since the node started, from a checkpoint: a resume.
                self.stats.handoff_resumed += 1
            how = "resumed" if after else "started"
            self._event(
                "transfer_started",
                "info",
                f"transfer of partition {partition} from {source} {how}",
                partition=partition,
                source=source,
                resumed=bool(after),
            )
        self._resumed.add((partition, source))
        self._pulling.add((partition, source))
        self._send(source, HandoffPull(op_id, transition, partition, after, not after))

    def _end_pull(self, op_id: int, op: PullOp) -> None:
        self._finish(op_id)
        self._pulling.discard((op.partition, op.source))

    def _expire_pull(self, op_id: int, op: PullOp, now_ms: int) -> None:
        self._end_pull(op_id, op)

    def _lost_pull(self, op_id: int, op: PullOp, peer: str, reason: str, now_ms: int) -> None:
        if op.source == peer:
            self._end_pull(op_id, op)

    def _on_handoff_pull(self, src: str, msg: HandoffPull, now_ms: int) -> None:
        prefix = keys.partition_prefix(msg.partition)
        start = msg.after + b"\x00" if msg.after else prefix
        limit, bytes_max = self.settings.handoff_batch_max, self.settings.handoff_batch_bytes_max
        rows = self._scan("data", start, keys.prefix_end(prefix), limit, bytes_max)
        items: list[HintItem] = []
        last = msg.after
        for skey, raw in rows:
            last = skey
            obj = self._decode_copy("data", skey, raw)
            if obj is not None:
                parsed = keys.decode(skey)
                items.append(HintItem(parsed.bucket, parsed.key, obj))
        done = not truncated(rows, limit, bytes_max)
        self._send(src, HandoffBatch(msg.req, msg.transfer, msg.partition, tuple(items), last, done))

    def _on_handoff_batch(self, src: str, msg: HandoffBatch, now_ms: int) -> None:
        op = self._ops.get(msg.req)
        if not isinstance(op, PullOp) or op.source != src or op.partition != msg.partition:
            return
        self._end_pull(msg.req, op)
        if placement.transition_id(self.cluster.ring) != op.transition:
            return
        if msg.items and self._refuses(delete=False):
            # No room: the pull resumes from its checkpoint once there is (diskspace.py).
            self.stats.writes_refused_full += 1
            self._next_transfer_ms = min(self._next_transfer_ms, now_ms + self.settings.handoff_retry_ms)
            return
        for item in msg.items:
            self._merge_into_data(item.bucket, item.key, item.obj, self._keeps_one(item.bucket), now_ms)
        _, _, count = self._checkpoint(op.transition, op.partition, op.source)
        count += len(msg.items)
        # The checkpoint rides in the same batch as the data it covers: a crash resumes exactly here.
        self._put(
            "handoff",
            _checkpoint_key(op.transition, op.partition, op.source),
            msgpack.packb([msg.last, msg.done, count]),
        )
        self.stats.handoff_batches += 1
        self.stats.handoff_keys += len(msg.items)
        self.stats.handoff_bytes += sum(objects.size_bytes(item.obj) for item in msg.items)
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
        # Once the ring says this node has the partition, its old owner drops its copies: the batch
        # that records it (and every batch of the transfer before it) is synced.
        self._sync_next_batch()
        self._set_cluster(replace(state, ring=replace(ring, done=ring.done | {(partition, self.name)})))
        prefix = _checkpoint_prefix(transition, partition)
        received = 0
        for raw_key, raw in self._scan("handoff", prefix, keys.prefix_end(prefix), 64):
            received += _checkpoint_count(raw)
            self._put("handoff", raw_key, None)
        self._event(
            "transfer_finished",
            "info",
            f"transfer of partition {partition} finished ({received} keys received)",
            partition=partition,
            keys=received,
        )
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
        n_vals = self.n_vals()
        healthy = self.healthy(now_ms)
        for partition in self._held_partitions(self._sweep_cursor):
            # A replica for the smallest n_val is a replica for every larger one (walks are prefixes).
            where = placement.placement(self.cluster.ring, partition, n_vals[0])
            if self.name in where.plist.primary_nodes or self.name in where.receivers:
                continue
            prefix = keys.partition_prefix(partition)
            batch_max, bytes_max = self.settings.hint_batch_max, self.settings.hint_batch_bytes_max
            rows = self._scan("data", prefix, keys.prefix_end(prefix), batch_max, bytes_max)
            by_targets: dict[tuple[str, ...], list[tuple[bytes, bytes]]] = {}
            for skey, raw in rows:
                bucket = keys.decode(skey).bucket
                n_val = int(self._props(bucket)["n_val"])
                here = placement.placement(self.cluster.ring, partition, n_val)
                if self.name in here.plist.primary_nodes or self.name in here.receivers:
                    continue
                if self._decode_copy("data", skey, raw) is None:
                    continue
                replicas = tuple(n for n in here.plist.primary_nodes if n != self.name)
                by_targets.setdefault(replicas, []).append((skey, raw))
            for replicas, batch in by_targets.items():
                if not replicas or not all(r in healthy for r in replicas):
                    continue
                if not self.controller.admit(now_ms):
                    return
                items = []
                one = []
                for skey, raw in batch:
                    parsed = keys.decode(skey)
                    items.append(HintItem(parsed.bucket, parsed.key, objects.decode_stored(raw)))
                    one.append(self._keeps_one(parsed.bucket))
                op = StrayOp(set(replicas), batch, now_ms + self.settings.request_timeout_ms)
                op_id = self._register(op)
                for node in replicas:
                    self._send(node, HintDelivery(op_id, tuple(items), tuple(one)))
                self._stray_inflight = True
                self._sweep_cursor = partition
                return
        self._sweep_cursor = 0

    def _held_partitions(self, start: int) -> Iterator[int]:
        """The partitions holding any data, clockwise from `start` (once round the ring).

        One short scan finds the next partition with data, so a sweep costs a scan per partition this
        node holds data in, not one per partition of the ring (thousands, nearly all empty on a node
        of a large cluster).
        """
        size = self.ring.size
        for low, high in ((start, size), (0, start)):
            partition = low
            while partition < high:
                end = None if high == size else keys.partition_prefix(high)
                rows = self._scan("data", keys.partition_prefix(partition), end, 1)
                if not rows:
                    break
                found = int.from_bytes(rows[0][0][: keys.PARTITION_BYTES], "big")
                yield found
                partition = found + 1

    def _end_strays(self, op_id: int) -> None:
        self._finish(op_id)
        self._stray_inflight = False

    def _expire_strays(self, op_id: int, op: StrayOp, now_ms: int) -> None:
        self._end_strays(op_id)

    def _lost_strays(self, op_id: int, op: StrayOp, peer: str, reason: str, now_ms: int) -> None:
        if peer in op.waiting:
            self._end_strays(op_id)

    def _on_stray_ack(self, op_id: int, op: StrayOp, src: str, ok: bool, now_ms: int) -> None:
        if src not in op.waiting:
            return
        if not ok:
            self._end_strays(op_id)
            return
        op.waiting.discard(src)
        if op.waiting:
            return
        self._end_strays(op_id)
        for skey, raw in op.sent:
            if self._get("data", skey) == raw:
                self._delete_data(skey)
                self.stats.strays_handed_off += 1
        # Keep going while there is more to hand off.
        self._next_stray_ms = min(self._next_stray_ms, now_ms)

    # --- Hinted handoff --------------------------------------------------------------------------------

    def _peer_up(self, peer: str, now_ms: int) -> None:
        # Deliver hints soon after an owner comes back.
        self._next_hint_scan_ms = min(self._next_hint_scan_ms, now_ms)

    def _deliver_hints(self, now_ms: int) -> None:
        if not self._hint_count or not self.settings.hinted_handoff_enabled:
            return
        active = set(self.cluster.names(ACTIVE))
        for owner in self.cluster.names(membership.STATUSES):
            if owner == self.name or owner in self._hints_inflight:
                continue
            gone = owner not in active
            if not gone and not self.detector.is_up(owner, now_ms):
                continue
            prefix = hints.owner_prefix(owner)
            batch_max, bytes_max = self.settings.hint_batch_max, self.settings.hint_batch_bytes_max
            rows = self._scan("hints", prefix, keys.prefix_end(prefix), batch_max, bytes_max)
            if not rows:
                continue
            if not self.controller.admit(now_ms):
                self._next_hint_scan_ms = min(self._next_hint_scan_ms, now_ms + 100)
                return
            if gone:
                self._rehome_hints(owner, rows, active, now_ms)
                continue
            sent: list[tuple[bytes, bytes]] = []
            items: list[HintItem] = []
            one: list[bool] = []
            for hkey, raw in rows:
                obj = self._decode_copy("hints", hkey, raw)
                if obj is None:
                    continue
                _, skey = hints.parse(hkey)
                parsed = keys.decode(skey)
                sent.append((hkey, raw))
                items.append(HintItem(parsed.bucket, parsed.key, obj))
                one.append(self._keeps_one(parsed.bucket))
            op = HintOp(owner, sent, now_ms + self.settings.request_timeout_ms, {owner})
            op_id = self._register(op)
            self._hints_inflight.add(owner)
            self._send(owner, HintDelivery(op_id, tuple(items), tuple(one)))

    def _rehome_hints(self, owner: str, rows: list[tuple[bytes, bytes]], active: set[str], now_ms: int) -> None:
        """Hints for an owner that left the cluster or was removed: it will never take them back, so
        each goes to its key's replicas in the current ring instead (the primaries serving the key now
        and, while its partition moves, its new owners: where a write of the key made now would go),
        and is dropped once every one of them has acknowledged it. A replica that is this node merges
        it into its own data here. A hint whose replicas are not all reachable waits for a later scan.
        """
        healthy = self.healthy(now_ms)
        sent: list[tuple[bytes, bytes]] = []
        batches: dict[str, tuple[list[HintItem], list[bool]]] = {}
        for hkey, raw in rows:
            _, skey = hints.parse(hkey)
            parsed = keys.decode(skey)
            props = self._props(parsed.bucket)
            where = placement.placement(self.cluster.ring, parsed.partition, int(props["n_val"]))
            replicas = [n for n in (*where.plist.primary_nodes, *where.receivers) if n in active]
            if not replicas or not all(n in healthy for n in replicas):
                continue
            obj = self._decode_copy("hints", hkey, raw)
            if obj is None:
                continue
            one = self._keeps_one(parsed.bucket)
            sent.append((hkey, raw))
            for node in replicas:
                if node == self.name:
                    self._merge_into_data(parsed.bucket, parsed.key, obj, one, now_ms)
                else:
                    items, flags = batches.setdefault(node, ([], []))
                    items.append(HintItem(parsed.bucket, parsed.key, obj))
                    flags.append(one)
        if not batches:
            # Nothing to wait for: every hint sent (if any) is merged into this node's data, in the
            # same batch that deletes it.
            self._drop_delivered(owner, sent)
            return
        op = HintOp(owner, sent, now_ms + self.settings.request_timeout_ms, set(batches))
        op_id = self._register(op)
        self._hints_inflight.add(owner)
        for node, (items, flags) in sorted(batches.items()):
            self._send(node, HintDelivery(op_id, tuple(items), tuple(flags)))

    def _drop_delivered(self, owner: str, sent: list[tuple[bytes, bytes]]) -> None:
        delivered = 0
        for hkey, raw in sent:
            # Delete only what was delivered: a hint rewritten since it was sent goes next round.
            if self._get("hints", hkey) == raw:
                self._drop_hint(hkey, raw)
                delivered += 1
        self.stats.hints_delivered += delivered
        if delivered:
            text = f"{delivered} hints delivered to {owner} ({self._hint_count} still held)"
            self._event("hints_delivered", "info", text, owner=owner, count=delivered, pending=self._hint_count)

    def _end_hints(self, op_id: int, op: HintOp) -> None:
        self._finish(op_id)
        self._hints_inflight.discard(op.owner)

    def _expire_hints(self, op_id: int, op: HintOp, now_ms: int) -> None:
        self._end_hints(op_id, op)

    def _lost_hints(self, op_id: int, op: HintOp, peer: str, reason: str, now_ms: int) -> None:
        if peer in op.waiting:
            self._end_hints(op_id, op)

    def _on_hint_delivery(self, src: str, msg: HintDelivery, now_ms: int) -> None:
        if any(self._refuses(delete=objects.is_tombstone(item.obj)) for item in msg.items):
            # No room: the sender keeps its copies and tries again later (diskspace.py).
            self.stats.writes_refused_full += 1
            self._send(src, HintDeliveryReply(msg.req, False))
            return
        for item, one in zip(msg.items, msg.resolve_one, strict=False):
            self._merge_into_data(item.bucket, item.key, item.obj, one, now_ms)
        # The sender drops its copies once this is acknowledged: they must be synced here first.
        self._sync_next_batch()
        self._send(src, HintDeliveryReply(msg.req, True))

    def _on_hint_delivery_reply(self, src: str, msg: HintDeliveryReply, now_ms: int) -> None:
        op = self._ops.get(msg.req)
        if isinstance(op, StrayOp):
            self._on_stray_ack(msg.req, op, src, msg.ok, now_ms)
            return
        if isinstance(op, ExchangeOp):
            if op.peer == src and op.stage == "push":
                self.aae.on_push_ack(msg.req, op, msg.ok)
            return
        if not isinstance(op, HintOp) or src not in op.waiting:
            return
        if not msg.ok:
            self._end_hints(msg.req, op)
            return
        op.waiting.discard(src)
        if op.waiting:
            return
        self._end_hints(msg.req, op)
        self._drop_delivered(op.owner, op.sent)
        # More may be waiting for this owner.
        self._next_hint_scan_ms = min(self._next_hint_scan_ms, now_ms)


def _checkpoint_count(raw: bytes) -> int:
    """The keys a checkpoint says its pull has received so far (0 for one that does not decode)."""
    try:
        _, _, count = msgpack.unpackb(raw)
        return int(count)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
        return 0


def _checkpoint_prefix(transition: bytes, partition: int) -> bytes:
    """Where the checkpoints of one partition's pulls in one transition live in the `handoff` area."""
    return transition + b"|" + partition.to_bytes(4, "big")


def _checkpoint_key(transition: bytes, partition: int, source: str) -> bytes:
    return _checkpoint_prefix(transition, partition) + source.encode()
