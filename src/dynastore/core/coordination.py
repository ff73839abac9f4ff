"""Coordination of client requests: get, put and delete (forwarded to a coordinator when needed), key
and bucket listing, and read repair.

Theory of operation
-------------------
- get: any node coordinates. It asks the first N healthy nodes of the key's preference list, answers
  after R replies with every causally unrelated sibling and one merged context (naming the primary that
  answered first, the preferred coordinator of a following write), then repairs replicas that missed
  something once every reply is in or the request times out. A read waits for no disk, unless it saw
  a write still being made durable: then for the batch holding that write only. A bucket whose
  `speculative_retry` is not `none` asks only the replicas R needs first and the others after a
  delay, or at once when an answer is missing or says not-found (speculative.py); replicas it never
  asked are not read-repaired by it: anti-entropy covers them.
- put/delete: coordinated by a node among the first N healthy nodes (others forward it there, preferring
  the node named in the context; a replica too hands a client's write to the replica the context names,
  the fastest of the preceding read: Dynamo's section 6.4). The coordinator draws a fresh dot, applies
  the write to its local copy and, without waiting for its own disk, sends the new object to the other
  N-1 targets; it answers after W acknowledgements, its own counting once the batch holding its copy is
  written, of which at least DW are of synced copies. A durable node syncs every batch, so every
  acknowledgement is of a synced copy. A buffered write (`durable=false`, Dynamo's section 6.1) asks one
  target to sync before acknowledging (the coordinator itself when it holds a copy, else the first
  primary; dw of them when the write asks for more) and the others to acknowledge once their copy is
  written, before it is synced: one fsync per write instead of N, and the write still survives a machine
  crash of every replica that only buffered it. (Only a dot whose counter lease is not yet on disk waits
  for it: a crash must never hand a dot out twice.) A fallback target stores the object in its hint
  store, naming the primary it stands in for (handoff.py delivers hints). A target found dead
  mid-request is replaced by the next healthy fallback. A forwarded write carries a write id that every
  retry keeps; a forwarded write is retried at another coordinator when the link to the first breaks,
  which may be after the first applied it. A node that applied a write remembers its id
  (recentwrites.py), so a retry that reaches a coordinator holding the first attempt's version sends
  that version again instead of writing a second one: a retry never adds a sibling of its own. A
  data-type operation (datatypes.py) is never retried at a second coordinator: one that did not hold the
  first attempt would apply it again.
- delete writes a tombstone, a sibling like any other (reaping.py removes it later).
- list: every healthy node lists what it holds (data and hints); the coordinator answers with the union.

The quorum arithmetic lives in quorum.py as pure tallies; this module feeds them and acts on their
decisions. It must never answer a client except on a tally's decision or a deadline, and never
touches the engine: it reads and writes through the staged overlay of nodebase.py.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, replace
from typing import Any

from dynastore.core import bucketprops, crdt, datatypes, indexes, keys, objects, speculative
from dynastore.core.diskspace import DISK_FULL
from dynastore.core.messages import (
    ClientGet,
    ClientListKeys,
    ClientLocalGet,
    ClientPut,
    ClientResponse,
    Failure,
    FailureKind,
    ForwardPut,
    ForwardPutReply,
    ListKeys,
    ListKeysReply,
    NotFound,
    Ok,
    ReplicaGet,
    ReplicaGetReply,
    ReplicaPut,
    ReplicaPutReply,
    Siblings,
)
from dynastore.core.nodebase import NodeBase, SpeculationReason
from dynastore.core.objects import Object
from dynastore.core.ops import ForwardOp, GetOp, ListOp, Origin, PutOp, ToPeer
from dynastore.core.quorum import OK, GetTally, PutTally, QuorumError, resolve
from dynastore.core.recentwrites import WRITE_ID_BYTES, RecentWrites
from dynastore.core.ring import PreferenceList, Target
from dynastore.core.versions import Context, Dot, prune, update
from dynastore.storage.base import truncated

# Parsed speculative_retry values kept (a cluster uses a handful; past this the cache starts again).
POLICIES_CACHED_MAX = 64


@dataclass(frozen=True, slots=True)
class WritePlan:
    """A write this node will coordinate: the request, where it goes, and the quorums it needs."""

    origin: Origin
    request: ClientPut
    plist: PreferenceList
    # The first N healthy nodes (and the partition's new owners during a transfer); `mine` is this node
    # (None: this node keeps no copy, its disk being full).
    targets: tuple[Target, ...]
    mine: Target | None
    w: int
    dw: int
    pw: int
    # A last-write-wins bucket: a write replaces whatever its coordinator holds, whatever its context.
    lww: bool
    # The bucket keeps one value per key (last-write-wins, or allow_mult off; objects.py).
    resolve_one: bool
    # The targets asked to sync their copy before acknowledging it (see `_sync_nodes`).
    sync_nodes: frozenset[str] = frozenset()


class Coordination(NodeBase):
    """Get, put, delete and list coordination; mixed into NodeCore."""

    # The writes this node coordinates whose own copy is staged, by the batch that makes it durable.
    _own_copies: dict[int, list[int]]
    # Forwarded writes applied here lately (coordinated or replicated), by write id.
    _recent_writes: RecentWrites
    # Recent replica-read latency, for speculative retry's percentiles; parsed policies by their text.
    _replica_latency: speculative.ReplicaLatency
    _policies: dict[str, speculative.Policy]

    def _init_coordination(self) -> None:
        self._own_copies = {}
        # A forwarded write lives at most 10 request timeouts (`_timeout`); remember it twice as long.
        s = self.settings
        self._recent_writes = RecentWrites(s.recent_writes_max, 20 * s.request_timeout_ms)
        self._replica_latency = speculative.ReplicaLatency()
        self._policies = {}

    # --- Get ------------------------------------------------------------------------------------------------

    def _start_get(self, origin: Origin, req: ClientGet, now_ms: int) -> None:
        self.stats.gets += 1
        bad = self._check_key(req.bucket, req.key)
        if bad is not None:
            self._answer(origin, bad)
            return
        props = self._props(req.bucket)
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
        asked, held, delay_ms = self._first_asked(targets, max(r, pr), props, now_ms)
        tally = GetTally(asked, r, pr, resolve_one=bucketprops.keeps_one(props))
        op = GetOp(origin, req.bucket, req.key, tally, self._timeout(req.timeout_ms, now_ms), plist)
        op.with_deletions = req.with_deletions
        if held:
            self.stats.speculative_reads += 1
            op.held, op.speculate_at_ms = held, min(now_ms + delay_ms, op.deadline_ms)
        self._dispatch_get(op, now_ms)

    def _first_asked(
        self, targets: tuple[Target, ...], first: int, props: dict[str, Any], now_ms: int
    ) -> tuple[tuple[Target, ...], tuple[Target, ...], int]:
        """The targets a read asks at once, those it holds back (speculative.py) and how long for.

        Every target is asked at once unless the bucket's policy holds some back, the node knows how
        long to wait, there are more targets than the read needs, and all of them are primaries (a
        fallback means a primary is down: sloppy quorum reads every target, as it always did).
        """
        if len(targets) <= first or not all(t.primary for t in targets):
            return targets, (), 0
        policy = self._speculation_policy(props["speculative_retry"])
        delay_ms = self._replica_latency.delay_ms(policy, now_ms) if policy.holds_back else None
        if delay_ms is None:
            return targets, (), 0
        # This node's own copy first: it answers at once and costs no message.
        ordered = sorted(targets, key=lambda t: t.node != self.name)
        return tuple(ordered[:first]), tuple(ordered[first:]), delay_ms

    def _speculation_policy(self, raw: object) -> speculative.Policy:
        policy = self._policies.get(raw) if isinstance(raw, str) else None
        if policy is None:
            # Stored properties were checked on their way in (bucketprops.stored_problem).
            policy = speculative.parse(raw)
            if len(self._policies) >= POLICIES_CACHED_MAX:
                self._policies.clear()
            self._policies[str(raw)] = policy
        return policy

    def _dispatch_get(self, op: GetOp, now_ms: int) -> None:
        op_id = self._register(op)
        if op.held:
            heapq.heappush(self._deadlines, (op.speculate_at_ms, op_id))
        for target in op.tally.targets:
            if target.node == self.name:
                obj, after = self._read_local_after(op.bucket, op.key)
                op.after = max(op.after, after)
                op.tally.add(self.name, obj)
                if obj is None and op.held:
                    # Not found here: only every replica can say so (quorum.py); ask them all now.
                    self._ask_held(op_id, op, "notfound", now_ms)
        for target in op.tally.targets:
            if target.node != self.name and target.node not in op.asked_ms:
                op.asked_ms[target.node] = now_ms
                self._send(target.node, ReplicaGet(op_id, op.bucket, op.key), after=0)
        self._advance_get(op_id, op, now_ms)

    def _ask_held(self, op_id: int, op: GetOp, reason: SpeculationReason, now_ms: int, *, lost: str = "") -> None:
        """Ask the replicas a read held back (speculative.py), now. `lost`: one of them found unreachable,
        added as a target without being asked (the caller counts it as an error)."""
        held, op.held = op.held, ()
        op.tally.targets += held
        for target in held:
            if target.node == lost or target.node in op.asked_ms:
                continue
            self.stats.speculative_sends[reason] += 1
            op.asked_ms[target.node] = now_ms
            self._send(target.node, ReplicaGet(op_id, op.bucket, op.key), after=0)

    def _speculate(self, op_id: int, op: GetOp, now_ms: int) -> None:
        """The speculative retry's delay has passed: the replicas asked first have not all answered."""
        if op.held and now_ms >= op.speculate_at_ms:
            self._ask_held(op_id, op, "timer", now_ms)
            self._advance_get(op_id, op, now_ms)

    def _advance_get(self, op_id: int, op: GetOp, now_ms: int) -> None:
        decision = op.tally.decision()
        if not op.replied and decision != "wait":
            op.replied = True
            # A read waits only for the batch holding what it saw here (none: it answers at once);
            # every other copy it merged came from a replica that answered with durable data only.
            if decision == OK:
                self._answer(op.origin, self._read_response(op), after=op.after)
            else:
                self._answer(
                    op.origin,
                    Failure("unavailable", f"r={op.tally.r} not met: {len(op.tally.results)} replicas answered"),
                    after=op.after,
                )
        if op.tally.complete:
            self._finish(op_id)
            self.stats.speculative_unasked += len(op.held)
            if op.reap is not None:
                self._finish_reap(op, now_ms)
            else:
                self._read_repair(op, now_ms)

    def _read_response(self, op: GetOp) -> ClientResponse:
        merged = op.tally.merged()
        if merged is None:
            return NotFound(None)
        context = merged.context(op.tally.fastest)
        if objects.is_tombstone(merged) or not merged.siblings:
            return NotFound(context)
        # A data-type read joins deletions' states too (datatypes.py).
        values = list(merged.siblings) if op.with_deletions else objects.live(merged)
        count = len(values)
        self.stats.siblings_histogram[count] = self.stats.siblings_histogram.get(count, 0) + 1
        return Ok(Siblings(tuple(values), context))

    def _read_repair(self, op: GetOp, now_ms: int) -> None:
        if not self.settings.read_repair_enabled or op.reap is not None:
            return
        merged = op.tally.merged()
        if merged is None:
            return
        one = op.tally.resolve_one
        for target in op.tally.repairs():
            self.stats.read_repairs += 1
            if target.node == self.name:
                if not self._refuses(delete=objects.is_tombstone(merged)):
                    self._merge_into_data(op.bucket, op.key, merged, one, now_ms)
            else:
                self._send(target.node, ReplicaPut(0, op.bucket, op.key, merged, None, one))

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

    def _lost_get(self, op_id: int, op: GetOp, peer: str, reason: str, now_ms: int) -> None:
        if peer in op.tally.results or peer in op.tally.errors:
            return
        if op.held and any(t.node == peer for t in op.tally.targets + op.held):
            # An answer is missing: the held replicas are asked now, not after the delay.
            self._ask_held(op_id, op, "failure", now_ms, lost=peer)
        substitute = self._substitute(op.tally.targets, op.plist, peer, now_ms)
        op.tally.add_error(peer)
        if substitute is not None:
            op.tally.targets += (substitute,)
            op.asked_ms[substitute.node] = now_ms
            self._send(substitute.node, ReplicaGet(op_id, op.bucket, op.key), after=0)
        self._advance_get(op_id, op, now_ms)

    def _expire_get(self, op_id: int, op: GetOp, now_ms: int) -> None:
        self._finish(op_id)
        self.stats.speculative_unasked += len(op.held)
        if not op.replied:
            op.replied = True
            reason = f"timed out waiting for r={op.tally.r}: {len(op.tally.results)} replied"
            self._answer(op.origin, Failure("timeout", reason))
        self._read_repair(op, now_ms)

    def _local_get(self, origin: Origin, req: ClientLocalGet) -> None:
        """A client's replica read: what this node would answer a coordinator's ReplicaGet."""
        bad = self._check_key(req.bucket, req.key)
        if bad is not None:
            self._answer(origin, bad)
            return
        obj, after = self._read_local_after(req.bucket, req.key)
        self._answer(origin, NotFound(None) if obj is None else Ok(local=obj), after=after)

    def _on_replica_get(self, src: str, msg: ReplicaGet, now_ms: int) -> None:
        obj, after = self._read_local_after(msg.bucket, msg.key)
        self._send(src, ReplicaGetReply(msg.req, obj), after=after)

    def _on_replica_get_reply(self, src: str, msg: ReplicaGetReply, now_ms: int) -> None:
        op = self._ops.get(msg.req)
        if isinstance(op, GetOp):
            asked_ms = op.asked_ms.pop(src, None)
            if asked_ms is None:
                # Not asked by this read (a duplicate, or a peer that is no target): nothing to count.
                return
            self._replica_latency.record(now_ms - asked_ms, now_ms)
            op.tally.add(src, msg.obj)
            if msg.obj is None and op.held:
                self._ask_held(msg.req, op, "notfound", now_ms)
            self._advance_get(msg.req, op, now_ms)

    # --- Put and delete ---------------------------------------------------------------------------------

    def _start_put(self, origin: Origin, req: ClientPut, now_ms: int) -> None:
        deleting = _deletes(req)
        if deleting:
            self.stats.deletes += 1
        else:
            self.stats.puts += 1
        refused = self._put_refusal(req)
        if refused is not None:
            self._answer(origin, refused)
            return
        props = self._props(req.bucket)
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
        if mine is None or self._prefers_other(req, targets):
            self._forward(origin, req, targets, now_ms)
            return
        full_here = self._refuses(delete=deleting)
        if full_here:
            # No room on this node's disk: for this write it is a down primary, and a fallback keeps
            # its copy as a hint (diskspace.py). It still coordinates: it holds what the key was.
            self.stats.writes_refused_full += 1
            healthy = healthy - {self.name}
            targets = plist.targets(healthy)
            mine = None
        # While the key's partition moves, its new owners get every write too.
        chosen = {t.node for t in targets}
        targets += tuple(Target(n, False) for n in where.receivers if n in healthy and n not in chosen)
        if len(targets) < max(w, dw) or sum(1 for t in targets if t.primary) < pw:
            kind: FailureKind = "insufficient_storage" if full_here else "unavailable"
            with_room = " with room" if full_here else ""
            reason = f"{len(targets)} healthy replicas{with_room} cannot satisfy w={w} dw={dw} pw={pw}"
            self._answer(origin, Failure(kind, reason))
            return
        lww = bool(props["last_write_wins"])
        if not targets:
            self._answer(origin, Failure("insufficient_storage", "no node with room on its disk holds this key"))
            return
        if not self.engine.durable:
            # A buffered write is still synced somewhere before it is acknowledged (section 6.1).
            dw = max(dw, 1)
        sync_nodes = _sync_nodes(targets, mine, dw, self.engine.durable)
        plan = WritePlan(origin, req, plist, targets, mine, w, dw, pw, lww, bucketprops.keeps_one(props), sync_nodes)
        self._coordinate_put(plan, now_ms)

    def _put_refusal(self, req: ClientPut) -> Failure | None:
        """Why a client's write is refused before anything is read or sent (None: it is not)."""
        bad = self._check_key(req.bucket, req.key)
        if bad is not None:
            return bad
        problem = None
        if req.content is not None:
            problem = objects.check_content(req.content) or indexes.content_problem(self.settings, req.content)
        if req.dt is not None:
            problem = _dt_problem(req)
        if problem is not None:
            return Failure("bad_request", problem)
        if self.stopping:
            return Failure("unavailable", "this node is stopping")
        if req.context is not None and self.actors.claims_beyond_lease(req.context):
            return Failure("bad_request", "the context names versions of this node it never wrote")
        if req.content is not None and req.content.size_bytes > self.settings.object_bytes_max:
            return Failure("too_large", f"object exceeds the limit of {self.settings.object_bytes_max} bytes")
        return None

    def _prefers_other(self, req: ClientPut, targets: tuple[Target, ...]) -> bool:
        """Whether this replica hands a client's write to the replica its context names as the fastest
        of the preceding read (the Dynamo paper's section 6.4): that node holds what was read, so the
        client reads its own write there. Only a write straight from a client: one forwarded here
        was sent to the node its sender preferred, and is coordinated where it lands (no ping-pong
        between nodes whose views of the ring differ)."""
        preferred = req.context.coordinator if req.context is not None else None
        return (
            self.settings.write_to_fastest_replica
            and req.hops == 0
            and preferred is not None
            and preferred != self.name
            and any(t.node == preferred for t in targets)
        )

    def _forward(self, origin: Origin, req: ClientPut, targets: tuple[Target, ...], now_ms: int) -> None:
        if req.hops >= self.settings.coordinator_forward_retries_max:
            if self._refuses(delete=_deletes(req)):
                self._answer(origin, Failure("insufficient_storage", "no coordinator had room on its disk"))
            else:
                self._answer(origin, Failure("unavailable", "no coordinator accepted the write"))
            return
        nodes = [t.node for t in targets]
        preferred = req.context.coordinator if req.context is not None else None
        dst = preferred if preferred in nodes else nodes[0]
        assert dst is not None
        if not req.write_id:
            # The write's identity from here on, whichever coordinator applies it (recentwrites.py).
            req = replace(req, write_id=self.rng.randbytes(WRITE_ID_BYTES))
        deadline_ms = self._timeout(req.timeout_ms, now_ms)
        op = ForwardOp(origin, req, dst, [dst], deadline_ms)
        if any(t.node == self.name and t.primary for t in targets):
            # A primary that prefers another coordinator (`_prefers_other`) could coordinate itself:
            # if that one is silently cut off (no broken link, not yet judged down), it does so after
            # half the request's time rather than answering a timeout.
            op.local_deadline_ms = deadline_ms
            op.deadline_ms = now_ms + (deadline_ms - now_ms) // 2
        op_id = self._register(op)
        self.stats.forwarded_puts += 1
        self._send_forward(op_id, op)

    def _send_forward(self, op_id: int, op: ForwardOp) -> None:
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
                req.write_id,
                req.dt,
            ),
        )

    def _retry_forward(self, op_id: int, op: ForwardOp, now_ms: int) -> None:
        # The link to the coordinator broke: it may or may not have applied the write. The retry keeps
        # the write's id, so a coordinator that holds the first attempt's version does not write it
        # again (recentwrites.py).
        _, plist = self.preference_list(op.request.bucket, op.request.key)
        targets = plist.targets(self.healthy(now_ms))
        # Never this node itself: a node's shell drops what it sends itself.
        others = [t.node for t in targets if t.node not in op.tried and t.node != self.name]
        dt = op.request.dt
        if dt is not None and dt.op:
            # A data-type operation is not idempotent (an increment applied twice counts twice): one
            # the first coordinator may have applied is never sent to a second.
            self._finish(op_id)
            reason = f"coordinator {op.dst} is unreachable; the operation may have been applied"
            self._answer(op.origin, Failure("unavailable", reason))
            return
        if any(t.node == self.name and t.primary for t in targets):
            # This node is a primary itself: it handed the write to the fastest replica of the read
            # (`_prefers_other`), which is gone; it coordinates the retry (same write id) here.
            self._finish(op_id)
            self._start_put(op.origin, replace(op.request, hops=op.request.hops + 1), now_ms)
            return
        if not others or len(op.tried) > self.settings.coordinator_forward_retries_max:
            self._finish(op_id)
            self._answer(op.origin, Failure("unavailable", f"coordinator {op.dst} is unreachable"))
            return
        op.dst = others[0]
        op.tried.append(op.dst)
        self._send_forward(op_id, op)

    def _expire_forward(self, op_id: int, op: ForwardOp, now_ms: int) -> None:
        self._finish(op_id)
        req = op.request
        not_idempotent = req.dt is not None and bool(req.dt.op)
        if op.local_deadline_ms > now_ms and not not_idempotent:
            # Coordinated here with what is left of the request's time and the same write id, so a
            # coordinator that applied the first attempt is not applied twice where they meet.
            left = op.local_deadline_ms - now_ms
            self._start_put(op.origin, replace(req, hops=req.hops + 1, timeout_ms=left), now_ms)
            return
        self._answer(op.origin, Failure("timeout", f"timed out waiting for coordinator {op.dst}"))

    def _lost_forward(self, op_id: int, op: ForwardOp, peer: str, reason: str, now_ms: int) -> None:
        if op.dst == peer:
            self._retry_forward(op_id, op, now_ms)

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
            msg.write_id,
            msg.dt,
        )
        origin = ToPeer(src, msg.req)
        try:
            self._start_put(origin, request, now_ms)
        except QuorumError as exc:
            self._answer(origin, Failure("bad_request", str(exc)))

    def _on_forward_put_reply(self, src: str, msg: ForwardPutReply, now_ms: int) -> None:
        op = self._ops.get(msg.req)
        if not isinstance(op, ForwardOp) or op.dst != src:
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
        # The coordinator answered only once the write was durable; nothing here is staged for it.
        self._answer(op.origin, response, after=0)

    def _coordinate_put(self, plan: WritePlan, now_ms: int) -> None:
        self.stats.coordinated_puts += 1
        req = plan.request
        skey = self._stored_key(req.bucket, req.key)
        # The new version extends everything this node holds of the key, whichever copy it lands in:
        # its dot's clock entry claims every earlier version of this actor, some of which may sit in a
        # hint kept for another owner.
        local = self._read_local(req.bucket, req.key)
        applied = self._recent_writes.find(req.write_id, skey, now_ms)
        if applied is not None and local is not None and local.clock.covers(applied):
            self._coordinate_again(plan, skey, local, applied, now_ms)
            return
        context = req.context if req.context is not None else Context()
        if req.content is None and req.context is None:
            # A delete without a context removes what this coordinator knows of; concurrent values it
            # has not seen survive as siblings (nothing acknowledged is silently dropped).
            context = Context() if local is None else local.context()
        if req.dt is not None:
            # A data-type version replaces exactly the states held here (datatypes.py).
            context = Context((), datatypes.state_dots(local, req.dt.datatype))
        trust = not plan.resolve_one and req.dt is None
        dot = self.actors.next_dot(skey, local, context, trust_context=trust)
        if req.dt is not None:
            try:
                content = datatypes.next_content(local, req.dt, dot, now_ms * 1000, self.settings)
            except crdt.CrdtError as exc:
                self._answer(plan.origin, Failure(exc.kind, str(exc)))
                return
            new = prune(update(local, context, dot, content, now_ms), self.settings.vclock_prune_entries_max)
        else:
            new = self._new_version(plan, local, context, dot, now_ms)
        if len(new.siblings) > self.settings.siblings_max:
            reason = (
                f"write would leave {len(new.siblings)} siblings (limit {self.settings.siblings_max}); "
                "read the key and write with its context to resolve them"
            )
            self._answer(plan.origin, Failure("too_many_siblings", reason))
            return
        total = sum(content.size_bytes for _, content in new.siblings)
        if total > self.settings.key_siblings_bytes_max and total > objects.size_bytes(local):
            reason = (
                f"the key's siblings would add up to {total} bytes (limit key_siblings_bytes_max="
                f"{self.settings.key_siblings_bytes_max}); read the key and write with its context to resolve them"
            )
            self._answer(plan.origin, Failure("too_large", reason))
            return
        if plan.mine is None:
            # The new version lives on other nodes only: this actor must never claim it unseen here.
            self.actors.written_elsewhere(skey, dot.counter)
        elif plan.mine.hint_for is None:
            self._store_data(skey, new, self._load("data", skey), now_ms)
            self.actors.recall(skey)
        elif not self._merge_into_hints(plan.mine.hint_for, req.bucket, req.key, new, plan.resolve_one):
            self._answer(plan.origin, Failure("unavailable", "this node's hint store is full"))
            return
        else:
            self.actors.recall(skey)
        self._replicate_write(plan, skey, new, context.after_write(dot), dot, now_ms)

    def _coordinate_again(self, plan: WritePlan, skey: bytes, local: Object, dot: Dot, now_ms: int) -> None:
        """A retry of a forwarded write this node already holds as `dot` (it coordinated or replicated
        the first attempt): no new version, no new sibling. What this node holds of the key goes to the
        targets again, under the same quorums, and the answer carries the context the first attempt
        answers with: the client's, plus the write's dot (for a delete without a context, the dot
        alone: a smaller context only ever keeps more siblings, never drops one)."""
        req = plan.request
        if plan.mine is None:
            pass  # this node's disk is full: its copy stays as it is
        elif plan.mine.hint_for is None:
            self._merge_into_data(req.bucket, req.key, local, plan.resolve_one, now_ms)
        elif not self._merge_into_hints(plan.mine.hint_for, req.bucket, req.key, local, plan.resolve_one):
            self._answer(plan.origin, Failure("unavailable", "this node's hint store is full"))
            return
        context = req.context if req.context is not None else Context()
        self._replicate_write(plan, skey, local, context.after_write(dot), dot, now_ms)

    def _replicate_write(
        self, plan: WritePlan, skey: bytes, new: Object, reply_context: Context, dot: Dot, now_ms: int
    ) -> None:
        """Send the version written here (as `dot`) to the other targets and wait for the quorums."""
        req = plan.request
        self._recent_writes.remember(req.write_id, skey, dot, now_ms)
        tally = PutTally(plan.targets, plan.w, plan.dw, plan.pw)
        deadline_ms = self._timeout(req.timeout_ms, now_ms)
        op = PutOp(
            plan.origin,
            req.bucket,
            req.key,
            tally,
            deadline_ms,
            plan.plist,
            new,
            plan.resolve_one,
            reply_context,
            req.return_body,
            write_id=req.write_id,
            dot=dot if req.write_id else None,
            with_deletions=req.dt is not None,
            sync_nodes=set(plan.sync_nodes),
        )
        op_id = self._register(op)
        self._replicate(op_id, op, plan.targets)
        self._advance_put(op_id, op, now_ms)

    def _new_version(self, plan: WritePlan, local: Object | None, context: Context, dot: Dot, now_ms: int) -> Object:
        """The key's state once the client's write (or delete) with `context` is applied as `dot`."""
        req = plan.request
        now_us = now_ms * 1000
        content = req.content if req.content is not None else objects.tombstone(now_us)
        if content.last_modified_us == 0:
            content = replace(content, last_modified_us=now_us)
        if plan.resolve_one:
            new = objects.update_one(local, context, dot, content, now_ms, lww=plan.lww)
        else:
            new = update(local, context, dot, content, now_ms)
        return prune(new, self.settings.vclock_prune_entries_max)

    def _replicate(self, op_id: int, op: PutOp, targets: tuple[Target, ...]) -> None:
        """Send the new version to the other targets, and count this node's own copy once it is durable.

        The replicas write in parallel with this node: the new version goes out before this node's copy
        is durable, and this node's acknowledgement counts only once its batch is (batch_written). But
        not before the actor and counter lease of its dot are durable: a crash could hand it out again.
        """
        lease = self.actors.durable_after()
        for target in targets:
            if target.node != self.name:
                durable = target.node in op.sync_nodes
                msg = ReplicaPut(
                    op_id, op.bucket, op.key, op.obj, target.hint_for, op.resolve_one, op.write_id, op.dot, durable
                )
                self._send(target.node, msg, after=lease)
        if any(target.node == self.name for target in targets):
            self._own_copies.setdefault(self.store.taken + 1, []).append(op_id)
            if self.name in op.sync_nodes:
                self._sync_next_batch()

    def _advance_put(self, op_id: int, op: PutOp, now_ms: int, *, durable_here: bool = False) -> None:
        """Answer once the tally decides. `durable_here`: every acknowledgement counted is of a durable
        copy, so the answer need not wait for the batch being staged now."""
        decision = op.tally.decision()
        if not op.replied and decision != "wait":
            op.replied = True
            after = 0 if durable_here else None
            if decision == OK:
                self._answer(op.origin, self._write_response(op), after=after)
            elif op.full_replicas:
                reason = f"write not acknowledged: {op.tally.shortfall()}; {op.full_replicas} replicas' disks are full"
                self._answer(op.origin, Failure("insufficient_storage", reason), after=after)
            else:
                failure = Failure("unavailable", f"write not acknowledged: {op.tally.shortfall()}")
                self._answer(op.origin, failure, after=after)
        if op.tally.complete:
            self._finish(op_id)

    def _write_response(self, op: PutOp) -> ClientResponse:
        if not op.return_body:
            return Ok(Siblings((), op.reply_context))
        context = op.obj.context(self.name)
        if objects.is_tombstone(op.obj):
            return NotFound(context)
        values = op.obj.siblings if op.with_deletions else tuple(objects.live(op.obj))
        return Ok(Siblings(values, context))

    def _lost_put(self, op_id: int, op: PutOp, peer: str, reason: str, now_ms: int) -> None:
        if peer in op.tally.acks or peer in op.tally.errors:
            return
        self._replace_target(op_id, op, peer, now_ms)
        self._advance_put(op_id, op, now_ms)

    def _replace_target(self, op_id: int, op: PutOp, peer: str, now_ms: int) -> None:
        # Always writeable: a target found dead mid-write is replaced by the next healthy
        # fallback, which keeps the write as a hint for the node it stands in for.
        substitute = self._substitute(op.tally.targets, op.plist, peer, now_ms)
        op.tally.add_error(peer)
        if substitute is not None:
            op.tally.targets += (substitute,)
            # A stand-in for a replica asked to sync is asked to sync: the write still needs its dw.
            durable = peer in op.sync_nodes
            if durable:
                op.sync_nodes.add(substitute.node)
            msg = ReplicaPut(
                op_id, op.bucket, op.key, op.obj, substitute.hint_for, op.resolve_one, op.write_id, op.dot, durable
            )
            self._send(substitute.node, msg)

    def _expire_put(self, op_id: int, op: PutOp, now_ms: int) -> None:
        self._finish(op_id)
        if not op.replied:
            op.replied = True
            self._answer(op.origin, Failure("timeout", f"timed out: {op.tally.shortfall()}"))

    def _on_replica_put(self, src: str, msg: ReplicaPut, now_ms: int) -> None:
        ok = True
        reason = ""
        if self._refuses(delete=objects.is_tombstone(msg.obj)):
            self.stats.writes_refused_full += 1
            if msg.req:
                self._send(src, ReplicaPutReply(msg.req, False, DISK_FULL))
            return
        if msg.hint_for is not None and msg.hint_for != self.name:
            ok = self._merge_into_hints(msg.hint_for, msg.bucket, msg.key, msg.obj, msg.resolve_one)
            reason = "" if ok else "hint store full"
        else:
            self._merge_into_data(msg.bucket, msg.key, msg.obj, msg.resolve_one, now_ms)
        if ok and msg.dot is not None:
            # This node now holds the forwarded write: a retry of it coordinated here adds nothing.
            self._recent_writes.remember(msg.write_id, self._stored_key(msg.bucket, msg.key), msg.dot, now_ms)
        if msg.req:
            # The reply leaves with the next batch, which holds the copy (or follows the batch that
            # did, when the copy was already here): synced first when the coordinator asked for it.
            if ok and msg.durable:
                self._sync_next_batch()
            durable = ok and (msg.durable or self.engine.durable)
            self._send(src, ReplicaPutReply(msg.req, ok, reason, durable))

    def _on_replica_put_reply(self, src: str, msg: ReplicaPutReply, now_ms: int) -> None:
        op = self._ops.get(msg.req)
        if isinstance(op, PutOp):
            if msg.ok:
                op.tally.ack(src, msg.durable)
            elif src not in op.tally.errors:
                # A replica that could not take the copy (its disk or hint store is full) is, for this
                # write, a lost target: the next healthy fallback takes the copy instead.
                if msg.reason == DISK_FULL:
                    op.full_replicas += 1
                self._replace_target(msg.req, op, src, now_ms)
            # Every acknowledgement the tally counts is of a durable copy (this node's own included,
            # see `_local_put_durable`): the answer depends on nothing staged here.
            self._advance_put(msg.req, op, now_ms, durable_here=True)

    def _own_copies_durable(self, batch: int, now_ms: int) -> None:
        """Batch `batch` is on disk: the writes this node coordinates whose copies it held count this
        node's acknowledgement."""
        for op_id in self._own_copies.pop(batch, ()):
            op = self._ops.get(op_id)
            if isinstance(op, PutOp):
                # Synced when this node was asked to be the synced copy (`_sync_next_batch`).
                op.tally.ack(self.name, self.engine.durable or self.name in op.sync_nodes)
                self._advance_put(op_id, op, now_ms, durable_here=True)

    # --- Listing ----------------------------------------------------------------------------------------

    def _start_list(self, origin: Origin, req: ClientListKeys, now_ms: int) -> None:
        """One page of a listing, from one replica of its partition (this node when it is one)."""
        if not 0 <= req.partition < self.ring.size:
            self._answer(origin, Failure("bad_request", f"partition must be 0 to {self.ring.size - 1}"))
            return
        if req.bucket is not None and (failure := self._check_key(req.bucket, None)) is not None:
            self._answer(origin, failure)
            return
        replicas = self._list_replicas(req.bucket, req.partition, now_ms)
        if not replicas:
            self._answer(origin, Failure("unavailable", f"no replica of partition {req.partition} is reachable"))
            return
        if replicas[0] == self.name:
            items, last, done = self._list_step(req.bucket, req.partition, req.after)
            self._answer(origin, self._list_page(req, items, last, done))
            return
        op = ListOp(origin, req, replicas[0], replicas[1:], self._timeout(req.timeout_ms, now_ms))
        self._send(op.peer, ListKeys(self._register(op), req.bucket, req.partition, req.after))

    def _list_page(self, req: ClientListKeys, items: list[bytes], last: bytes, done: bool) -> Ok:
        if not done:
            resume: tuple[int, bytes] | None = (req.partition, last)
        elif req.partition + 1 < self.ring.size:
            resume = (req.partition + 1, b"")
        else:
            resume = None
        return Ok(None, tuple(items), resume)

    def _list_step(self, bucket: bytes | None, partition: int, after: bytes) -> tuple[list[bytes], bytes, bool]:
        """The live keys of `bucket` in `partition` after key `after` (the buckets after bucket `after`
        when `bucket` is None), a bounded step: the names found, where the next step starts, and
        whether the partition is done."""
        settings = self.settings
        limit = settings.list_page_keys_max
        if bucket is None:
            found: list[bytes] = []
            end = keys.prefix_end(keys.partition_prefix(partition))
            start = keys.prefix_end(keys.bucket_prefix(partition, after)) if after else keys.partition_prefix(partition)
            cursor = start
            read = 0
            # One seek per bucket: a bucket's keys are one range, skipped whole. Each seek reads one
            # object: their bytes are bounded per step too.
            while (
                len(found) < limit
                and read < settings.list_page_bytes_max
                and cursor is not None
                and (end is None or cursor < end)
            ):
                rows = self._scan("data", cursor, end, 1, 1)
                if not rows:
                    return found, b"", True
                read += len(rows[0][0]) + len(rows[0][1])
                name = keys.decode(rows[0][0]).bucket
                found.append(name)
                cursor = keys.prefix_end(keys.bucket_prefix(partition, name))
            done = cursor is None or (end is not None and cursor >= end)
            return found, found[-1] if found else after, done
        prefix = keys.bucket_prefix(partition, bucket)
        start = prefix + after + b"\x00" if after else prefix
        rows = self._scan("data", start, keys.prefix_end(prefix), limit, settings.list_page_bytes_max)
        live = [
            keys.decode(skey).key
            for skey, raw in rows
            if (obj := self._decode_copy("data", skey, raw)) is not None and not objects.is_tombstone(obj)
        ]
        last = keys.decode(rows[-1][0]).key if rows else after
        return live, last, not truncated(rows, limit, settings.list_page_bytes_max)

    def _expire_list(self, op_id: int, op: ListOp, now_ms: int) -> None:
        self._finish(op_id)
        self._answer(op.origin, Failure("timeout", f"timed out waiting for {op.peer} to list"))

    def _lost_list(self, op_id: int, op: ListOp, peer: str, reason: str, now_ms: int) -> None:
        if peer != op.peer:
            return
        if not op.others:
            self._finish(op_id)
            self._answer(op.origin, Failure("unavailable", f"no replica of partition {op.request.partition} answered"))
            return
        op.peer = op.others.pop(0)
        req = op.request
        self._send(op.peer, ListKeys(op_id, req.bucket, req.partition, req.after))

    def _on_list_keys(self, src: str, msg: ListKeys, now_ms: int) -> None:
        items, last, done = self._list_step(msg.bucket, msg.partition, msg.after)
        self._send(src, ListKeysReply(msg.req, tuple(items), last, done))

    def _on_list_keys_reply(self, src: str, msg: ListKeysReply, now_ms: int) -> None:
        op = self._ops.get(msg.req)
        if not isinstance(op, ListOp) or op.peer != src:
            return
        if not _progresses(op.request, msg):
            # A step that goes nowhere (or lists names outside it) would make the listing loop for
            # ever: the next replica is asked instead.
            self._lost_list(msg.req, op, src, "a listing step that does not move forward", now_ms)
            return
        self._finish(msg.req)
        self._answer(op.origin, self._list_page(op.request, list(msg.items), msg.last, msg.done))


def _progresses(req: ClientListKeys, msg: ListKeysReply) -> bool:
    """Whether a listing step's reply lies after where it started: its names in (after, last], and
    `last` past `after` unless the partition is done. Buckets order as their stored prefixes do
    (length first), keys bytewise."""

    def position(name: bytes) -> bytes:
        return name if req.bucket is not None else keys.bucket_prefix(0, name)

    after = position(req.after) if req.after else None
    last = position(msg.last) if msg.last else None
    if not msg.done and (last is None or (after is not None and last <= after)):
        return False
    for name in msg.items:
        at = position(name)
        if (after is not None and at <= after) or (last is not None and at > last):
            return False
    return True


def _sync_nodes(targets: tuple[Target, ...], mine: Target | None, dw: int, durable: bool) -> frozenset[str]:
    """The targets asked to sync their copy before acknowledging it. Durable mode: all of them. A
    buffered write (the Dynamo paper's section 6.1): the coordinator itself when it holds a copy, then
    the primaries in preference-list order, then the rest, until there are `dw` (at least one); the
    others acknowledge once their copy is written, before it is synced."""
    if durable:
        return frozenset(t.node for t in targets)
    order = ([mine] if mine is not None else []) + [t for t in targets if t.primary] + list(targets)
    chosen: list[str] = []
    for target in order:
        if target.node not in chosen:
            chosen.append(target.node)
    return frozenset(chosen[: max(dw, 1)])


def _deletes(req: ClientPut) -> bool:
    """Whether a write deletes its key (a tombstone; a data-type delete is one too)."""
    return req.content is None and (req.dt is None or not req.dt.op)


def _dt_problem(req: ClientPut) -> str | None:
    """Why a data-type write is malformed before anything is looked up (a reason for a 400), or None."""
    dt = req.dt
    assert dt is not None
    if req.content is not None:
        return "a data-type operation carries no content"
    if dt.datatype not in crdt.DATATYPES:
        return f"unknown datatype {dt.datatype!r}"
    return None
