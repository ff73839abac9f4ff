"""Tombstone reaping: removing a deleted key's tombstone once no replica can still need it.

Theory of operation
-------------------
A delete writes a tombstone (coordination.py). Storing a tombstone records the key in the `reap` area
with the time it was written, in the same batch, so the pending reaps survive a restart. A node that
is no longer a replica of the key forgets the pending reap.

A tombstone may go only once no copy older than it is left anywhere: a replica that holds nothing of
a key takes whatever version it is sent, so an older copy arriving after the reap brings the deleted
value back. Such copies are not only on the primaries. A fallback keeps a hint until it delivers it,
which waits until the owner looks reachable *to the fallback* and the background controller admits
the delivery; a node that stopped replicating a key keeps its stray copy until a sweep hands it to
the replicas, which waits the same way. Neither waits for the grace period, and a read of the
primaries sees neither. So every reap interval, when no ring transition is under way and every member
is up, the first primary of each key whose grace period has passed:

1. asks every member, itself included, whether it holds a hint of the key (for any owner) or holds
   the key in its data (ReapCheck); data counts only on a node that is not one of the key's primaries
   (a stray), since the primaries' copies are read in step 2;
2. keeps the keys of which no member holds such a copy; a key kept in two rounds in a row, with the
   same tombstone here, is read from all primaries at once;
3. only if every primary answered with exactly the same tombstone, tells each of them (itself
   included) to delete it; each deletes it only if its copy is still that tombstone.

A member answers only once what it answered from is on its disk, so a hint it has just delivered
cannot come back with a crash after it said it held none. Two rounds rather than one because a copy
may be on the wire while a round asks (a delivered hint whose duplicate is still travelling, a read
repair from a coordinator that saw no tombstone): a round later it has landed, merged into a
primary's tombstone (where it changes nothing) or held by a member that says so. A copy that stays
on the wire longer than a reap interval is assumed not to exist.

Why ask every member rather than the alternatives: remembering each reaped key's clock and refusing
older copies would need a new storage area with an expiry, and no expiry is safe, because a hint has
no age limit (a hint is never dropped: it may be the only copy of an acknowledged write). Holding the
reap until the reaper's own hints are delivered covers only the reaper's hints. Asking changes nothing
on disk and costs one message each way per member per round (a round asks about up to reap_batch_max
keys at once). Its price is that one member down holds up every reap until it is back or removed;
that is as it must be, since the member may hold a hint. A node removed from the cluster is not asked,
though it may still hand over hints it held (node.py accepts them): removing a node that holds hints
of deleted keys can bring those keys back.

This module must never delete anything but a tombstone that every primary was seen to hold, and only
after no member reported another copy of its key in two rounds.
"""

from __future__ import annotations

from dynastore.core import hints, keys, membership, objects, placement
from dynastore.core.messages import HELD_DATA, HELD_HINT, Reap, ReapCheck, ReapCheckReply
from dynastore.core.nodebase import NodeBase
from dynastore.core.objects import Object
from dynastore.core.ops import GetOp, ReapCheckOp
from dynastore.core.quorum import GetTally
from dynastore.core.ring import Target

# The members asked before a reap: all that may hold a copy (one that is exiting still hands off).
ASKED_STATUSES = ("joining", "valid", "leaving", "exiting")


class Reaping(NodeBase):
    """Tombstone reaping; mixed into NodeCore."""

    _next_reap_ms: int
    # The keys of which no member held another copy in the last round, with the tombstone held here then.
    _reap_clear: dict[bytes, Object]
    # A round's ReapCheck is in flight (one round at a time).
    _reap_checking: bool

    def _init_reaping(self, now_ms: int) -> None:
        self._next_reap_ms = now_ms + self.settings.reap_interval_ms
        self._reap_clear = {}
        self._reap_checking = False

    def _tick_reaping(self, now_ms: int) -> None:
        if now_ms >= self._next_reap_ms:
            self._next_reap_ms = now_ms + self.settings.reap_interval_ms
            self._reap_tombstones(now_ms)

    def _reap_tombstones(self, now_ms: int) -> None:
        """Start a round: ask every member about the tombstones this node would reap (step 1)."""
        state = self.cluster
        if self._reap_checking or state.ring.next_owners is not None:
            return
        members = state.names(ASKED_STATUSES)
        if not all(m == self.name or self.detector.is_up(m, now_ms) for m in members):
            return
        rows = self._scan("reap", b"", None, self.settings.reap_batch_max)
        tombstones: dict[bytes, Object] = {}
        primaries: dict[bytes, tuple[str, ...]] = {}
        for skey, raw_time in rows:
            if int.from_bytes(raw_time, "big") + self.settings.tombstone_grace_ms > now_ms:
                continue
            parsed = keys.decode(skey)
            n_val = int(self._props(parsed.bucket)["n_val"])
            owners = placement.placement(state.ring, parsed.partition, n_val).plist.primary_nodes
            if self.name not in owners:
                # No longer a replica of this key: its reaping is someone else's business.
                self._put("reap", skey, None)
                continue
            if owners[0] != self.name:
                continue
            local = self._load("data", skey)
            if local is None or not objects.is_tombstone(local):
                self._put("reap", skey, None)
                continue
            tombstones[skey] = local
            primaries[skey] = owners
        if not tombstones:
            self._reap_clear = {}
            return
        others = {m for m in members if m != self.name}
        op = ReapCheckOp(tuple(tombstones), tombstones, primaries, others, now_ms + self.settings.request_timeout_ms)
        op_id = self._register(op)
        self._reap_checking = True
        # This node's own answer needs no wait for its disk: whatever it reaps leaves in a later batch.
        self._note_held(op, self.name, [self._held(skey) for skey in op.keys])
        for member in others:
            self._send(member, ReapCheck(op_id, op.keys), after=0)
        self._advance_reap_check(op_id, op, now_ms)

    def _held(self, skey: bytes) -> int:
        """What this node holds of a key, as HELD_* flags: a hint for any owner, a copy in its data."""
        flags = HELD_DATA if self._get("data", skey) is not None else 0
        if self._hint_count:
            for owner in self.cluster.names(membership.STATUSES):
                if self._get("hints", hints.hint_key(owner, skey)) is not None:
                    return flags | HELD_HINT
        return flags

    def _note_held(self, op: ReapCheckOp, node: str, held: list[int] | tuple[int, ...]) -> None:
        for skey, flags in zip(op.keys, held, strict=True):
            if flags & HELD_HINT or (flags & HELD_DATA and node not in op.primaries[skey]):
                op.held.add(skey)

    def _on_reap_check(self, src: str, msg: ReapCheck, now_ms: int) -> None:
        outer = self.store.begin_read()
        held = tuple(self._held(skey) for skey in msg.keys)
        # Answer only once what the answer was read from is durable: a hint deleted in a batch not yet
        # written would be back after a crash, though this node said it held none.
        after = self.store.end_read(outer)
        self._send(src, ReapCheckReply(msg.req, held), after=after)

    def _on_reap_check_reply(self, src: str, msg: ReapCheckReply, now_ms: int) -> None:
        op = self._ops.get(msg.req)
        if not isinstance(op, ReapCheckOp) or src not in op.waiting:
            return
        if len(msg.held) != len(op.keys):
            # Not an answer to what was asked: the round learns nothing.
            self._end_reap_check(msg.req)
            return
        op.waiting.discard(src)
        self._note_held(op, src, msg.held)
        self._advance_reap_check(msg.req, op, now_ms)

    def _advance_reap_check(self, op_id: int, op: ReapCheckOp, now_ms: int) -> None:
        """Every member answered: read the keys that were clear in this round and the last (step 2)."""
        if op.waiting:
            return
        self._finish(op_id)
        self._reap_checking = False
        clear = {skey: tombstone for skey, tombstone in op.tombstones.items() if skey not in op.held}
        before, self._reap_clear = self._reap_clear, clear
        for skey, tombstone in clear.items():
            seen = before.get(skey)
            local = self._load("data", skey)
            if seen is None or local is None or not (objects.same(seen, tombstone) and objects.same(local, tombstone)):
                continue
            parsed = keys.decode(skey)
            targets = tuple(Target(p, True) for p in op.primaries[skey])
            tally = GetTally(targets, len(targets), len(targets))
            deadline_ms = now_ms + self.settings.request_timeout_ms
            read = GetOp(None, parsed.bucket, parsed.key, tally, deadline_ms, None)
            read.reap = local
            self._dispatch_get(read, now_ms)

    def _end_reap_check(self, op_id: int) -> None:
        """A round that did not hear from every member: nothing is clear, the next two rounds decide."""
        self._finish(op_id)
        self._reap_checking = False
        self._reap_clear = {}

    def _expire_reap_check(self, op_id: int, op: ReapCheckOp, now_ms: int) -> None:
        self._end_reap_check(op_id)

    def _lost_reap_check(self, op_id: int, op: ReapCheckOp, peer: str, reason: str, now_ms: int) -> None:
        if peer in op.waiting:
            self._end_reap_check(op_id)

    def _finish_reap(self, op: GetOp, now_ms: int) -> None:
        """The primaries answered: reap if each holds exactly the tombstone (step 3)."""
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
