"""A whole dynastore cluster in one process: NodeCores over a simulated network and clock.

Every message crosses the real wire codec (dataclass -> msgpack bytes -> validated dataclass), so the
simulator exercises exactly what travels between real nodes. Time is a single integer that only moves
when the simulation says so; all randomness comes from one seeded `random.Random`. A node's disk is a
SimDisk that survives a crash: what the core had flushed (and synced) is kept, what it had only staged is lost,
as on a real machine.

By default a node's batch is written the instant it is taken. With `commit_ms` set, writing it takes
that long, as on the real node: the node goes on taking inputs meanwhile, performs the effects the
core frees at once (take_free) and the rest only when the batch is on disk; a crash before then loses
the batch.

A node can also be *stalled*, as a process is by SIGSTOP or by a machine too loaded to schedule it:
it handles nothing while stalled. Messages and client requests sent to it wait (as in its socket
buffers), the end of a batch write it started is only noticed later, and its timers do not fire;
once it resumes it works through the backlog in arrival order and every overdue timer fires late.
Its peers meanwhile time out, judge it down and route around it, and its clients give up on it while
their writes may still land.

This module never sleeps, never opens a socket and never reads the wall clock.
"""

from __future__ import annotations

import collections
import heapq
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import msgpack

from dynastore.core import membership, messages, secret
from dynastore.core.effects import Event
from dynastore.core.membership import Member, RingState
from dynastore.core.messages import ClientRequest, ClientResponse, Message
from dynastore.core.node import Batch, ClientJoin, Effect, NodeCore, Reply, Send
from dynastore.core.nodebase import META_CLUSTER, META_CLUSTER_KEY
from dynastore.core.ring import claim
from dynastore.settings import Settings
from dynastore.sim.disk import SimDisk
from dynastore.storage.base import Op

# The `src` of a queue entry that is not a message but the end of a node's batch write.
_COMMIT = "\0commit"
LOGGED_MAX = 1000


def write_batch(engine: SimDisk, batch: Batch) -> None:
    if batch.ops:
        engine.write(batch.ops)
    if batch.sync:
        engine.sync()


def write_now(core: NodeCore, engine: SimDisk) -> list[Effect]:
    """A disk that takes no time: the free effects, the batch written at once, and what it released."""
    effects = core.take_free()
    if not core.has_pending:
        return effects
    write_batch(engine, core.take_batch())
    return effects + core.batch_written()


@dataclass(order=True)
class _InFlight:
    deliver_at_ms: int
    seq: int
    src: str = field(compare=False)
    dst: str = field(compare=False)
    payload: bytes = field(compare=False)


@dataclass
class NetworkFaults:
    """What the network does to messages. Probabilities are per message."""

    delay_ms: tuple[int, int] = (1, 3)
    loss: float = 0.0
    duplicate: float = 0.0
    # Directed links that drop everything: (src, dst).
    cut: set[tuple[str, str]] = field(default_factory=set)
    # Drops the messages it is true of: drop(src, dst, message).
    drop: Callable[[str, str, Message], bool] | None = None


class SimulationError(Exception):
    """The simulated cluster itself misbehaved (a node's timer that never moves forward)."""


SAME_INSTANT_TIMERS_MAX = 10_000


class SimNode:
    """One simulated node. Whatever may move its next timer (its core being reached, a crash, a stall,
    its clock being set) adds its name to `touched`, the cluster's set of timers to look at again."""

    def __init__(
        self,
        name: str,
        settings: Settings,
        rng: random.Random,
        now_ms: int,
        touched: set[str] | None = None,
        preload: Sequence[Op] = (),
    ) -> None:
        self.name = name
        self.settings = settings
        self.engine = SimDisk(settings.durable)
        if preload:
            self.engine.write(preload)
        self.rng = random.Random(rng.getrandbits(64))
        self._touched: set[str] = set() if touched is None else touched
        self._core: NodeCore | None = None
        # This node's own batch write time, overriding the cluster's (a slow disk).
        self.commit_ms: tuple[int, int] | None = None
        # The batch being written (with commit_ms), and the queue entry that ends its write.
        self.committing: Batch | None = None
        self.commit_seq = 0
        # This node's clock: offset (skew) plus drift in parts per million of elapsed time.
        self.clock_offset_ms = 0
        self.clock_drift_ppm = 0
        self.started_ms = now_ms
        # While stalled, what arrives waits here in order: messages, batch-write completions, requests.
        self.stalled = False
        # Why the node's core asked to stop (a `Stop` effect), if it did.
        self.stop_reason: str | None = None
        # What the core asked to be logged (the last LOGGED_MAX).
        self.logged: collections.deque[Event] = collections.deque(maxlen=LOGGED_MAX)
        self.backlog: list[_InFlight | tuple[int, ClientRequest | ClientJoin]] = []
        self.start(now_ms)

    def start(self, now_ms: int) -> None:
        self.core = NodeCore(
            self.name,
            self.settings,
            self.engine,
            self.rng,
            self.local_ms(now_ms),
            host=self.name,
            peer_port=1,
            http_port=2,
        )
        write_now(self.core, self.engine)

    @property
    def core(self) -> NodeCore | None:
        # Whoever reaches the core may change its next deadline (a tick, a message, a request).
        self._touched.add(self.name)
        return self._core

    @core.setter
    def core(self, core: NodeCore | None) -> None:
        self._touched.add(self.name)
        self._core = core

    @property
    def clock_offset_ms(self) -> int:
        return self._clock_offset_ms

    @clock_offset_ms.setter
    def clock_offset_ms(self, offset_ms: int) -> None:
        self._touched.add(self.name)
        self._clock_offset_ms = offset_ms

    @property
    def clock_drift_ppm(self) -> int:
        return self._clock_drift_ppm

    @clock_drift_ppm.setter
    def clock_drift_ppm(self, drift_ppm: int) -> None:
        self._touched.add(self.name)
        self._clock_drift_ppm = drift_ppm

    @property
    def stalled(self) -> bool:
        return self._stalled

    @stalled.setter
    def stalled(self, stalled: bool) -> None:
        self._touched.add(self.name)
        self._stalled = stalled

    def timer_ms(self) -> int | None:
        """When this node's next timer fires in simulation time (None: down or stalled, no timer)."""
        core = self._core
        if core is None or self._stalled:
            return None
        local_ms = core.next_deadline_ms()
        elapsed_local = local_ms - self._clock_offset_ms - self.started_ms
        return self.started_ms + elapsed_local * 1_000_000 // (1_000_000 + self._clock_drift_ppm) + 1

    @property
    def up(self) -> bool:
        return self._core is not None

    def crash(self) -> int:
        """Stop without flushing: staged writes, unsent effects and unsynced disk writes are lost."""
        self.core = None
        self.committing = None
        self.stalled = False
        self.backlog = []
        return self.engine.lose_unsynced()

    def local_ms(self, now_ms: int) -> int:
        return now_ms + self.clock_offset_ms + (now_ms - self.started_ms) * self.clock_drift_ppm // 1_000_000


class SimCluster:
    """Nodes `n0`, `n1`, ... that founded or joined one cluster, plus the network between them.

    With `formed`, the nodes start as members of one cluster whose ring is already claimed and
    settled, as if each had joined and every transition had finished: how a test of a large cluster
    starts without paying for hundreds of joins and transitions first.
    """

    def __init__(
        self, count: int, settings: Settings | None = None, seed: int = 0, join: bool = True, formed: bool = False
    ) -> None:
        self.settings = settings or Settings(ring_size=16)
        self.rng = random.Random(seed)
        self.now_ms = 1_000_000
        self.faults = NetworkFaults()
        # How long a node takes to write and sync a batch: (low, high) ms, drawn per batch; None: no time.
        self.commit_ms: tuple[int, int] | None = None
        self.nodes: dict[str, SimNode] = {}
        self._queue: list[_InFlight] = []
        self._seq = 0
        self._request_id = 0
        self.replies: dict[int, ClientResponse] = {}
        self.trace: list[str] = []
        self.tracing = False
        self.delivered = 0
        # Messages a node refused as no honest peer would send them (the shell would drop the link).
        self.peer_errors = 0
        self._last_timer: tuple[str, int] = ("", -1)
        self._same_instant = 0
        # Every node's next timer, in a heap of (simulation ms, name); an entry is current only while
        # it equals `_timer_of[name]`. Nodes in `_touched` may have moved theirs and are looked at
        # again before the next step, so that a step costs log(nodes) instead of a scan of them all.
        self._timers: list[tuple[int, str]] = []
        self._timer_of: dict[str, int | None] = {}
        self._touched: set[str] = set()
        # Messages sent, and their encoded bytes, by message type (what crosses the wire).
        self.sent_count: collections.Counter[str] = collections.Counter()
        self.sent_bytes: collections.Counter[str] = collections.Counter()
        preload = self._formed_state([f"n{i}" for i in range(count)]) if formed else ()
        for i in range(count):
            self.add_node(f"n{i}", preload)
        if join and not formed:
            for i in range(1, count):
                response = self.request(f"n{i}", ClientJoin("n0", 1))
                assert isinstance(response, messages.Ok), response
            self.settle()

    # --- Topology --------------------------------------------------------------------------------

    def add_node(self, name: str, preload: Sequence[Op] = ()) -> SimNode:
        node = SimNode(name, self.settings, self.rng, self.now_ms, self._touched, preload)
        self.nodes[name] = node
        return node

    def _formed_state(self, names: list[str]) -> tuple[Op, ...]:
        """What every member of a formed cluster finds on its disk: one cluster state and its key."""
        s = self.settings
        members = [Member(name, name, 1, 2) for name in names]
        state = membership.new_cluster(s.cluster_name, members[0], s.ring_size, s.n_val, s.security_enabled)
        for member in members[1:]:
            state = state.with_member(member)
        owners = claim({name: 1 for name in names}, s.ring_size, s.n_val).owners
        state = replace(state, ring=RingState(1, min(names), owners))
        key = self.rng.randbytes(secret.CLUSTER_KEY_BYTES)
        return (Op("meta", META_CLUSTER, membership.encode(state)), Op("meta", META_CLUSTER_KEY, key))

    def core(self, name: str) -> NodeCore:
        core = self.nodes[name].core
        assert core is not None, f"{name} is down"
        return core

    def crash(self, name: str) -> None:
        self.nodes[name].crash()

    def stop(self, name: str) -> None:
        """A clean stop, as SIGTERM gives a real node: it records the stop and writes what it holds."""
        core = self.core(name)
        core.prepare_shutdown()
        self._perform(name, write_now(core, self.nodes[name].engine))
        self.nodes[name].crash()

    def restart(self, name: str) -> None:
        node = self.nodes[name]
        assert node.core is None
        node.start(self.now_ms)
        self._flush(name)

    def stall(self, name: str) -> None:
        """Stop `name` handling anything (SIGSTOP, or a machine too busy to run it) until `resume`."""
        node = self.nodes[name]
        if node.core is not None:
            node.stalled = True

    def resume(self, name: str) -> None:
        """Let a stalled node go on: it handles its backlog in arrival order, then its overdue timers."""
        node = self.nodes[name]
        node.stalled = False
        backlog, node.backlog = node.backlog, []
        for entry in backlog:
            if node.core is None or node.stalled:
                break
            if isinstance(entry, _InFlight):
                if entry.src == _COMMIT:
                    self._written(entry)
                else:
                    self._deliver(entry)
            else:
                rid, request = entry
                node.core.on_request(rid, request, self._local_now(name))
                self._flush(name)

    def partition(self, *groups: set[str]) -> None:
        """Cut every link between different groups (both directions)."""
        for a in groups:
            for b in groups:
                if a is not b:
                    self.faults.cut.update((x, y) for x in a for y in b)

    def heal(self) -> None:
        self.faults.cut.clear()

    def link_failed(self, node: str, peer: str) -> None:
        """`node`'s connection to `peer` broke (a reset, an idle link closed): its shell reports the
        peer unreachable, whatever was or was not delivered before the break."""
        self.core(node).on_unreachable(peer, self._local_now(node))
        self._flush(node)

    # --- Driving ---------------------------------------------------------------------------------

    def submit(self, node: str, request: ClientRequest | ClientJoin) -> int:
        self._request_id += 1
        rid = self._request_id
        if self.nodes[node].stalled:
            self.nodes[node].backlog.append((rid, request))
            return rid
        self.core(node).on_request(rid, request, self._local_now(node))
        self._flush(node)
        return rid

    def request(self, node: str, request: ClientRequest | ClientJoin, limit_ms: int = 60_000) -> ClientResponse:
        """Submit a client request and run the cluster until it is answered (bounded)."""
        started = self.now_ms
        rid = self.submit(node, request)
        self.run_until(lambda: rid in self.replies, limit_ms)
        assert rid in self.replies, f"no reply to request {rid} within {limit_ms} ms"
        if self.nodes[node].core is not None:
            self.core(node).observe_latency(self.now_ms - started, self._local_now(node))
        return self.replies.pop(rid)

    def run_until(self, done: Callable[[], bool], limit_ms: int) -> bool:
        end = self.now_ms + limit_ms
        while not done():
            if not self.step(end):
                return done()
        return True

    def settle(self, duration_ms: int = 5_000) -> None:
        """Let gossip, heartbeats and hint delivery run for a while."""
        end = self.now_ms + duration_ms
        while self.step(end):
            pass
        self.now_ms = end

    def step(self, until_ms: int) -> bool:
        """Deliver the next message or fire the next timer, if either is due before `until_ms`."""
        next_timer = self._next_timer(until_ms)
        next_msg = self._queue[0].deliver_at_ms if self._queue else until_ms + 1
        if min(next_timer[0], next_msg) > until_ms:
            return False
        if next_msg <= next_timer[0]:
            item = heapq.heappop(self._queue)
            self.now_ms = max(self.now_ms, item.deliver_at_ms)
            if item.src == _COMMIT:
                self._written(item)
            else:
                self._deliver(item)
        else:
            self.now_ms = max(self.now_ms, next_timer[0])
            name = next_timer[1]
            self.core(name).on_tick(self._local_now(name))
            self._flush(name)
            # A core whose deadline stays in the past after a tick would spin a real node's event loop.
            key = (name, self.now_ms)
            self._same_instant = self._same_instant + 1 if key == self._last_timer else 0
            self._last_timer = key
            if self._same_instant > SAME_INSTANT_TIMERS_MAX:
                raise SimulationError(f"{name}'s timer fires again and again at {self.now_ms} ms without moving on")
        return True

    def _next_timer(self, until_ms: int) -> tuple[int, str]:
        """The earliest (simulation ms, name) of any running node's timer, ties to the smaller name."""
        timers, timer_of = self._timers, self._timer_of
        while self._touched:
            name = self._touched.pop()
            node = self.nodes.get(name)
            at = None if node is None else node.timer_ms()
            if at != timer_of.get(name):
                timer_of[name] = at
                if at is not None:
                    heapq.heappush(timers, (at, name))
        while timers:
            at, name = timers[0]
            if timer_of.get(name) != at:
                heapq.heappop(timers)
                continue
            # A caller holding a core from earlier may have moved its deadline since: look again.
            now_at = self.nodes[name].timer_ms()
            if now_at == at:
                return at, name
            heapq.heappop(timers)
            timer_of[name] = now_at
            if now_at is not None:
                heapq.heappush(timers, (now_at, name))
        return until_ms + 1, ""

    def _local_now(self, name: str) -> int:
        return self.nodes[name].local_ms(self.now_ms)

    def _deliver(self, item: _InFlight) -> None:
        node = self.nodes.get(item.dst)
        if node is None or node.core is None:
            return
        if node.stalled:
            node.backlog.append(item)
            return
        msg = messages.from_wire(msgpack.unpackb(item.payload, raw=False))
        self.delivered += 1
        if self.tracing:
            self.trace.append(f"{self.now_ms} {item.src}->{item.dst} {type(msg).__name__}")
        try:
            node.core.on_message(item.src, msg, self._local_now(item.dst))
        except messages.PeerError:
            # The shell drops such a peer's link: what it sent is gone, and the sender hears of it.
            self.peer_errors += 1
            sender = self.nodes.get(item.src)
            if sender is not None and sender.core is not None:
                sender.core.on_unreachable(item.dst, self._local_now(item.src), "protocol error")
                self._flush(item.src)
            return
        self._flush(item.dst)

    def _flush(self, name: str) -> None:
        core = self.core(name)
        node = self.nodes[name]
        span = node.commit_ms or self.commit_ms
        if span is None:
            self._perform(name, write_now(core, node.engine))
            return
        self._perform(name, core.take_free())
        if node.committing is not None or node.core is not core:
            return
        batch = core.take_batch()
        if not batch.ops and not batch.sync:
            self._perform(name, core.batch_written())
            return
        node.committing = batch
        self._seq += 1
        node.commit_seq = self._seq
        done_at = self.now_ms + self.rng.randint(*span)
        heapq.heappush(self._queue, _InFlight(done_at, self._seq, _COMMIT, name, b""))

    def _written(self, item: _InFlight) -> None:
        node = self.nodes[item.dst]
        batch = node.committing
        if node.core is None or batch is None or node.commit_seq != item.seq:
            return  # the node crashed while writing: the batch never reached its disk
        if node.stalled:
            node.backlog.append(item)
            return
        node.committing = None
        write_batch(node.engine, batch)
        node.core.observe_space(node.engine.space())
        self._perform(item.dst, node.core.batch_written())
        if node.core is not None and node.core.has_pending:
            self._flush(item.dst)

    def _perform(self, name: str, effects: list[Effect]) -> None:
        for effect in effects:
            if isinstance(effect, Reply):
                self.replies[effect.request_id] = effect.response
            elif isinstance(effect, Send):
                self._send(name, effect)
            elif isinstance(effect, Event):
                self.nodes[name].logged.append(effect)
            else:
                # A simulated node that asks to stop keeps running: tests look at what it did before.
                self.nodes[name].stop_reason = effect.reason

    def _send(self, src: str, effect: Send) -> None:
        dst = effect.dst
        if effect.address is not None:
            dst = effect.address[0]
        target = self.nodes.get(dst)
        if target is None or target.core is None:
            # A refused connection: the sender learns at once.
            self.core(src).on_unreachable(dst, self._local_now(src))
            self._flush(src)
            return
        if (src, dst) in self.faults.cut or self.rng.random() < self.faults.loss:
            return
        if self.faults.drop is not None and self.faults.drop(src, dst, effect.msg):
            return
        payload: bytes = msgpack.packb(messages.to_wire(effect.msg), use_bin_type=True)
        kind = type(effect.msg).__name__
        self.sent_count[kind] += 1
        self.sent_bytes[kind] += len(payload)
        copies = 2 if self.rng.random() < self.faults.duplicate else 1
        for _ in range(copies):
            self._seq += 1
            delay = self.rng.randint(*self.faults.delay_ms)
            heapq.heappush(self._queue, _InFlight(self.now_ms + delay, self._seq, src, dst, payload))

    def stats(self, name: str) -> dict[str, Any]:
        return self.core(name).stats_snapshot(self._local_now(name))

    def send_raw(self, src: str, dst: str, msg: Message) -> None:
        self._send(src, Send(dst, msg))
