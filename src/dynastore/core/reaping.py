"""Tombstone reaping: removing a deleted key's tombstone once no replica can still need it.

Theory of operation
-------------------
A delete writes a tombstone (coordination.py). Storing a tombstone records the key in the `reap` area
with the time it was written, in the same batch, so the pending reaps survive a restart. Every reap
interval the first primary of each such key, once the grace period has passed and every primary is
healthy, reads the key from all primaries at once. Only if every primary answered with exactly the
same tombstone does it tell each of them (itself included) to delete it; each deletes it only if its
copy is still that tombstone. A node that is no longer a replica of the key forgets the pending reap.

This module must never delete anything but a tombstone that every primary was seen to hold: reaping
one that a replica lacks could let an older value come back.
"""

from __future__ import annotations

from dynastore.core import keys, objects, placement
from dynastore.core.messages import Reap
from dynastore.core.nodebase import NodeBase
from dynastore.core.objects import Object
from dynastore.core.ops import GetOp
from dynastore.core.quorum import GetTally
from dynastore.core.ring import Target


class Reaping(NodeBase):
    """Tombstone reaping; mixed into NodeCore."""

    _next_reap_ms: int

    def _init_reaping(self, now_ms: int) -> None:
        self._next_reap_ms = now_ms + self.settings.reap_interval_ms

    def _tick_reaping(self, now_ms: int) -> None:
        if now_ms >= self._next_reap_ms:
            self._next_reap_ms = now_ms + self.settings.reap_interval_ms
            self._reap_tombstones(now_ms)

    def _reap_tombstones(self, now_ms: int) -> None:
        rows = self._scan("reap", b"", None, self.settings.reap_batch_max)
        healthy = self.healthy(now_ms)
        for skey, raw_time in rows:
            if int.from_bytes(raw_time, "big") + self.settings.tombstone_grace_ms > now_ms:
                continue
            parsed = keys.decode(skey)
            n_val = int(self._props(parsed.bucket)["n_val"])
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
            op = GetOp(None, parsed.bucket, parsed.key, tally, deadline_ms, None)
            op.reap = local
            self._dispatch_get(op, now_ms)

    def _finish_reap(self, op: GetOp, now_ms: int) -> None:
        assert op.reap is not None
        tombstone = op.reap
        results = op.tally.results
        if len(results) != len(op.tally.targets):
            return
        if not all(obj is not None and objects.same(obj, tombstone) for obj in results.values()):
            return
        for target in op.tally.targets:
            if target.node == self.name:
                self._apply_reap(op.bucket, op.key, tombstone)
            else:
                self._send(target.node, Reap(op.bucket, op.key, tombstone))

    def _apply_reap(self, bucket: bytes, key: bytes, tombstone: Object) -> None:
        skey = self._stored_key(bucket, key)
        local = self._load("data", skey)
        if local is not None and objects.is_tombstone(local) and objects.same(local, tombstone):
            self._delete_data(skey)
            self.stats.tombstones_reaped += 1

    def _on_reap(self, src: str, msg: Reap, now_ms: int) -> None:
        self._apply_reap(msg.bucket, msg.key, msg.obj)
