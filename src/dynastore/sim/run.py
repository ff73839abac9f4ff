"""One simulated run from one seed: a fault mix drawn from the seed (swarm testing), client workloads,
a safety phase with faults, then a liveness phase that heals everything and demands convergence.

Theory of operation
-------------------
The seed decides everything: the cluster size, which faults are switched on and how hard (message
loss, duplication, delay spread that reorders messages, symmetric and one-way partitions, crashes
with restarts, clock skew and drift), the workload, and every random choice inside the cluster. The
same seed replays the same run exactly, message for message.

Safety phase: clients add unique elements to a few sets by read-modify-write (merging siblings),
write unique values to independent keys with contexts from earlier reads, write fresh keys once
then delete them with the context of a read (their tombstones are reaped while the run goes on),
increment data-type counters, and add unique elements to data-type sets and remove some with the
context of a read (core/datatypes.py), while the faults happen. Every operation is recorded as ok, fail or unknown.

Liveness phase: partitions heal, crashed nodes restart, the network stops losing messages. Within a
bound, every replica of every key must hold the same versions, the Merkle roots of every replica set
must agree and every hint queue must be empty. Then the final reads feed the set and register checkers:
no acknowledged write may be lost, nothing never written may appear and nothing deleted may come back;
the data-type checker judges the counters and sets (checkers.py).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any

import msgpack

from dynastore.core import buckettypes, crdt, datatypes, hints, keys, merkle, objects, placement
from dynastore.core.messages import (
    ClientGet,
    ClientPut,
    ClientResponse,
    ClientSetBucketProps,
    DtUpdate,
    Failure,
    NotFound,
    Ok,
)
from dynastore.core.objects import Content
from dynastore.core.versions import Context
from dynastore.settings import Settings
from dynastore.sim.checkers import (
    FAIL,
    OK,
    UNKNOWN,
    Copies,
    CounterOp,
    DataTypeVerdict,
    ElementOp,
    RegisterVerdict,
    RegisterWrite,
    SetOp,
    SetVerdict,
    check_copies,
    check_datatypes,
    check_registers,
    check_sets,
)
from dynastore.sim.cluster import SimCluster

SET_BUCKET = b"sets"
REG_BUCKET = b"registers"
# Data-type keys live in buckets of a type (the core needs no record of it: an operation names its
# datatype).
COUNTER_BUCKET = buckettypes.typed("counters", b"c")
DT_SET_BUCKET = buckettypes.typed("sets", b"s")
CLIENT_TIMEOUT_MS = 3000
# The steps of an op that write (the rest read): a write cut short may still have been applied.
WRITE_STEPS = frozenset({"set-write", "reg-write", "del-create", "del-write", "dt-increment", "dt-add", "dt-remove"})
REQUEST_TIMEOUT_MS = 1500


@dataclass
class Options:
    safety_ms: int = 12_000
    liveness_bound_ms: int = 90_000
    clients: int | None = None
    # The workload's buckets: last-write-wins, or allow_mult off. Either keeps one value per key, so
    # concurrent writes lose to the newest and the set checker must find lost elements.
    lww: bool = False
    allow_mult: bool = True
    # The workload's buckets' speculative_retry (core/speculative.py): the checkers hold whatever it is.
    speculative_retry: str = "none"
    settings: dict[str, Any] = field(default_factory=dict)
    trace: bool = False


@dataclass
class FaultPlan:
    nodes: int
    loss: float
    duplicate: float
    delay_ms: tuple[int, int]
    partitions: bool
    one_way: bool
    crashes: bool
    skew: bool
    events: list[tuple[int, str, tuple[str, ...]]] = field(default_factory=list)
    # How long a node takes to write a batch (ms, drawn per batch); None: no time at all.
    commit_ms: tuple[int, int] | None = None
    # A loaded machine: nodes stalled for a while (SIGSTOP, starved of CPU), and one node whose
    # disk is much slower than the others' (its own copy of a write it coordinates lags its replicas').
    stalls: bool = False
    slow_disk: tuple[str, tuple[int, int]] | None = None

    def describe(self) -> str:
        on = [
            name
            for name, enabled in (
                ("partitions", self.partitions),
                ("one-way cuts", self.one_way),
                ("crashes", self.crashes),
                ("clock skew", self.skew),
                ("stalls", self.stalls),
            )
            if enabled
        ]
        disk = "instant" if self.commit_ms is None else f"{self.commit_ms[0]}-{self.commit_ms[1]} ms"
        if self.slow_disk is not None:
            name, (low, high) = self.slow_disk
            disk += f" ({name}: {low}-{high} ms)"
        return (
            f"{self.nodes} nodes, loss {self.loss:.0%}, duplicates {self.duplicate:.0%}, "
            f"delay {self.delay_ms[0]}-{self.delay_ms[1]} ms, batch writes {disk}, faults: {', '.join(on) or 'none'}"
        )


def draw_plan(rng: random.Random, safety_ms: int) -> FaultPlan:
    """Swarm testing: which faults are on, and how hard, is itself drawn from the seed."""
    plan = FaultPlan(
        nodes=rng.choice([3, 4, 5]),
        loss=rng.choice([0.0, 0.0, 0.01, 0.05, 0.15]),
        duplicate=rng.choice([0.0, 0.0, 0.02, 0.1]),
        delay_ms=rng.choice([(1, 3), (1, 10), (1, 60)]),
        partitions=rng.random() < 0.5,
        one_way=rng.random() < 0.25,
        crashes=rng.random() < 0.5,
        skew=rng.random() < 0.4,
    )
    names = [f"n{i}" for i in range(plan.nodes)]
    t = rng.randint(500, 2000)
    while t < safety_ms - 500:
        kinds = [
            k for k, on in (("partition", plan.partitions), ("one_way", plan.one_way), ("crash", plan.crashes)) if on
        ]
        if not kinds:
            break
        kind = rng.choice(kinds)
        length = rng.randint(300, 4000)
        if kind == "partition":
            shuffled = names[:]
            rng.shuffle(shuffled)
            shape = rng.choice(["halves", "isolate", "bridge"])
            if shape == "isolate":
                groups = (shuffled[:1], shuffled[1:])
            elif shape == "halves":
                cut = len(shuffled) // 2
                groups = (shuffled[:cut], shuffled[cut:])
            else:
                # A bridge node sees both sides; the sides do not see each other.
                bridge, rest = shuffled[0], shuffled[1:]
                cut = len(rest) // 2
                groups = (rest[:cut], rest[cut:])
                del bridge
            plan.events.append((t, "partition", (",".join(groups[0]), ",".join(groups[1]))))
            plan.events.append((t + length, "heal", ()))
        elif kind == "one_way":
            a, b = rng.sample(names, 2)
            plan.events.append((t, "cut", (a, b)))
            plan.events.append((t + length, "heal", ()))
        else:
            victim = rng.choice(names)
            plan.events.append((t, "crash", (victim,)))
            plan.events.append((t + length, "restart", (victim,)))
        t += length + rng.randint(200, 2000)
    plan.events.sort()
    return plan


def draw_load(plan: FaultPlan, rng: random.Random, safety_ms: int) -> None:
    """What a loaded machine adds (drawn from a stream of its own, so a seed's other faults stay what
    they were): stalls of one node at a time, from a scheduling hiccup to a SIGSTOP of seconds, and
    sometimes one node with a slow disk."""
    names = [f"n{i}" for i in range(plan.nodes)]
    plan.stalls = rng.random() < 0.5
    if rng.random() < 0.4:
        plan.slow_disk = (rng.choice(names), rng.choice([(10, 40), (20, 150)]))
    if not plan.stalls:
        return
    t = rng.randint(300, 2000)
    while t < safety_ms - 300:
        victim = rng.choice(names)
        length = rng.choice([rng.randint(20, 300), rng.randint(300, 1500), rng.randint(1500, 5000)])
        plan.events.append((t, "stall", (victim,)))
        plan.events.append((t + length, "resume", (victim,)))
        t += length + rng.randint(100, 1500)
    plan.events.sort()


@dataclass
class Client:
    name: str
    rng: random.Random
    next_at_ms: int = 0
    waiting: int | None = None
    waiting_since_ms: int = 0
    step: str = ""
    op: Any = None
    node: str = ""
    counter: int = 0


@dataclass
class RunResult:
    seed: int
    plan: FaultPlan
    sets: SetVerdict | None = None
    registers: RegisterVerdict | None = None
    datatypes: DataTypeVerdict | None = None
    converged_ms: int | None = None
    problems: list[str] = field(default_factory=list)
    writes_attempted_during_faults: int = 0
    writes_acknowledged_during_faults: int = 0
    messages: int = 0
    trace: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            not self.problems
            and self.sets is not None
            and self.sets.ok
            and self.registers is not None
            and self.registers.ok
            and self.datatypes is not None
            and self.datatypes.ok
        )

    def summary(self) -> str:
        sets, regs = self.sets, self.registers
        parts = [f"seed {self.seed}: {'ok' if self.ok else 'FAILED'} ({self.plan.describe()})"]
        if sets is not None:
            parts.append(
                f"  sets: {sets.acknowledged} acknowledged, {len(sets.lost)} lost, {len(sets.unexpected)} unexpected, "
                f"{sets.unknown} unknown ({sets.recovered_unknown} present)"
            )
        if regs is not None:
            parts.append(
                f"  registers: {regs.acknowledged} acknowledged, {len(regs.lost)} lost, "
                f"{len(regs.unexpected)} unexpected, {regs.unknown} unknown"
            )
        dts = self.datatypes
        if dts is not None:
            parts.append(
                f"  data types: {dts.counters} increments, {dts.elements} adds and removes, {len(dts.lost)} lost, "
                f"{len(dts.unexpected)} unexpected"
            )
            parts.extend(f"  data type: {p}" for p in (dts.lost + dts.unexpected)[:10])
        if self.writes_attempted_during_faults:
            availability = self.writes_acknowledged_during_faults / self.writes_attempted_during_faults
            parts.append(f"  write availability during faults: {availability:.1%}")
        if self.converged_ms is not None:
            parts.append(f"  converged {self.converged_ms} ms after healing; {self.messages} messages")
        parts.extend(f"  problem: {p}" for p in self.problems)
        return "\n".join(parts)


SIM_SETTINGS = dict(
    ring_size=16,
    gossip_interval_ms=300,
    heartbeat_interval_ms=300,
    phi_acceptable_pause_ms=600,
    phi_min_std_dev_ms=100,
    hint_scan_interval_ms=300,
    anti_entropy_interval_ms=3000,
    anti_entropy_segments_count=64,
    reap_interval_ms=2000,
    tombstone_grace_ms=5000,
    stray_scan_interval_ms=1000,
    request_timeout_ms=REQUEST_TIMEOUT_MS,
)


class Simulation:
    def __init__(self, seed: int, options: Options | None = None) -> None:
        self.seed = seed
        self.options = options or Options()
        rng = random.Random(seed)
        self.rng = rng
        self.plan = draw_plan(rng, self.options.safety_ms)
        # Drawn from a stream of its own, so that every seed's other faults stay what they were.
        self.plan.commit_ms = random.Random(f"disk {seed}").choice([None, (1, 3), (2, 12)])
        draw_load(self.plan, random.Random(f"load {seed}"), self.options.safety_ms)
        settings = Settings().with_mapping({**SIM_SETTINGS, **self.options.settings})
        self.cluster = SimCluster(self.plan.nodes, settings, seed=rng.getrandbits(32))
        self.cluster.tracing = self.options.trace
        self.cluster.commit_ms = self.plan.commit_ms
        if self.plan.slow_disk is not None:
            slow, span = self.plan.slow_disk
            self.cluster.nodes[slow].commit_ms = span
        c = self.cluster
        c.faults.loss = 0.0
        if self.plan.skew:
            for node in c.nodes.values():
                node.clock_offset_ms = rng.randint(-5000, 5000)
                node.clock_drift_ppm = rng.randint(-500, 500)
        props: tuple[tuple[str, Any], ...] = ()
        if self.options.lww:
            props += (("last_write_wins", True),)
        if not self.options.allow_mult:
            props += (("allow_mult", False),)
        for bucket in (SET_BUCKET, REG_BUCKET):
            if props:
                response = c.request("n0", ClientSetBucketProps(bucket, props))
                assert isinstance(response, Ok), response
        if self.options.speculative_retry != "none":
            for bucket in (SET_BUCKET, REG_BUCKET, COUNTER_BUCKET, DT_SET_BUCKET):
                change = (("speculative_retry", self.options.speculative_retry),)
                response = c.request("n0", ClientSetBucketProps(bucket, change))
                assert isinstance(response, Ok), response
        c.settle(1000)
        count = self.options.clients or rng.randint(3, 6)
        self.clients = [Client(f"c{i}", random.Random(rng.getrandbits(64))) for i in range(count)]
        self.set_ops: list[SetOp] = []
        self.writes: list[RegisterWrite] = []
        self.set_keys = [f"s{i}" for i in range(3)]
        self.reg_keys = [f"r{i}" for i in range(4)]
        # Keys written once and then deleted, never written again: one for each such op begun.
        self.del_keys: list[str] = []
        self.next_element = 0
        self.counter_keys = [f"k{i}" for i in range(2)]
        self.dt_set_keys = [f"t{i}" for i in range(2)]
        self.counter_ops: list[CounterOp] = []
        self.element_ops: list[ElementOp] = []
        self.result = RunResult(seed, self.plan)
        self.start_ms = c.now_ms

    # --- Clients ----------------------------------------------------------------------------------------

    def _live_nodes(self) -> list[str]:
        return sorted(name for name, node in self.cluster.nodes.items() if node.up)

    def _begin(self, client: Client) -> None:
        nodes = self._live_nodes()
        if not nodes:
            client.next_at_ms = self.cluster.now_ms + 200
            return
        client.node = client.rng.choice(nodes)
        kind = client.rng.random()
        if kind >= 0.75:
            self._begin_datatype(client, (kind - 0.75) / 0.25)
            return
        kind /= 0.75
        if kind < 0.45:
            self.next_element += 1
            client.op = SetOp(client.rng.choice(self.set_keys), self.next_element)
            client.step = "set-read"
            self._submit(client, ClientGet(SET_BUCKET, client.op.set_key.encode(), timeout_ms=REQUEST_TIMEOUT_MS))
        elif kind < 0.85:
            client.counter += 1
            key = client.rng.choice(self.reg_keys)
            client.op = RegisterWrite(key, f"{client.name}-{client.counter}".encode(), Context())
            client.step = "reg-read"
            self._submit(client, ClientGet(REG_BUCKET, key.encode(), timeout_ms=REQUEST_TIMEOUT_MS))
        else:
            # A fresh key, written blind once; then read and deleted (see _on_reply).
            client.counter += 1
            key = f"d-{client.name}-{client.counter}"
            self.del_keys.append(key)
            client.op = RegisterWrite(key, f"{client.name}-{client.counter}".encode(), Context())
            client.step = "del-create"
            self._submit(
                client,
                ClientPut(REG_BUCKET, key.encode(), None, Content(client.op.value), timeout_ms=REQUEST_TIMEOUT_MS),
            )

    def _begin_datatype(self, client: Client, kind: float) -> None:
        """A counter increment, a set add, or a read of a set followed by a remove of what it showed."""
        if kind < 0.45:
            amount = client.rng.randint(1, 5)
            client.op = CounterOp(client.rng.choice(self.counter_keys), amount)
            client.step = "dt-increment"
            self._submit(client, _dt_put(COUNTER_BUCKET, client.op.key, "counter", {"increment": amount}))
        elif kind < 0.85:
            self.next_element += 1
            client.op = ElementOp(client.rng.choice(self.dt_set_keys), f"e{self.next_element}")
            client.step = "dt-add"
            self._submit(client, _dt_put(DT_SET_BUCKET, client.op.key, "set", {"add": client.op.element}))
        else:
            client.op = ElementOp(client.rng.choice(self.dt_set_keys), "", remove=True)
            client.step = "dt-read"
            self._submit(
                client,
                ClientGet(DT_SET_BUCKET, client.op.key.encode(), timeout_ms=REQUEST_TIMEOUT_MS, with_deletions=True),
            )

    def _submit(self, client: Client, request: ClientGet | ClientPut) -> None:
        c = self.cluster
        if not c.nodes[client.node].up:
            self._finish(client, UNKNOWN if client.step in WRITE_STEPS else FAIL)
            return
        client.waiting = c.submit(client.node, request)
        client.waiting_since_ms = c.now_ms

    def _finish(self, client: Client, outcome: str) -> None:
        op = client.op
        if op is not None:
            op.outcome = outcome
            if isinstance(op, SetOp):
                self.set_ops.append(op)
            elif isinstance(op, CounterOp):
                self.counter_ops.append(op)
            elif isinstance(op, ElementOp):
                if op.element:  # a remove whose read showed nothing to remove is no operation
                    self.element_ops.append(op)
            else:
                self.writes.append(op)
            if client.step in WRITE_STEPS and self._faulty():
                self.result.writes_attempted_during_faults += 1
                if outcome == OK:
                    self.result.writes_acknowledged_during_faults += 1
        client.waiting = None
        client.op = None
        client.step = ""
        client.next_at_ms = self.cluster.now_ms + client.rng.randint(20, 200)

    def _faulty(self) -> bool:
        c = self.cluster
        return bool(c.faults.cut) or any(not n.up or n.stalled for n in c.nodes.values()) or c.faults.loss > 0

    def _on_reply(self, client: Client, response: ClientResponse) -> None:
        step = client.step
        op = client.op
        client.waiting = None
        if step == "dt-read":
            assert isinstance(op, ElementOp)
            state = None
            if isinstance(response, Ok) and response.found is not None:
                state = datatypes.visible(response.found.values, "set")
            if state is None:
                self._finish(client, FAIL)  # nothing to remove (or the read failed): nothing was written
                return
            present = crdt.value(state)
            assert isinstance(present, list)
            if not present:
                self._finish(client, FAIL)
                return
            op.element = client.rng.choice(present).decode()
            client.step = "dt-remove"
            seen_clock = crdt.clock_vector(state)
            self._submit(client, _dt_put(DT_SET_BUCKET, op.key, "set", {"remove": op.element}, seen_clock))
            return
        if step in ("dt-increment", "dt-add", "dt-remove"):
            if isinstance(response, Ok):
                self._finish(client, OK)
            elif isinstance(response, Failure) and response.kind in ("bad_request", "precondition"):
                self._finish(client, FAIL)
            else:
                self._finish(client, UNKNOWN)
            return
        if step == "set-read":
            assert isinstance(op, SetOp)
            if isinstance(response, Failure):
                self._finish(client, FAIL)  # nothing was written
                return
            elements: set[int] = set()
            context = Context()
            if isinstance(response, Ok) and response.found is not None:
                context = response.found.context
                for _, content in response.found.values:
                    elements.update(msgpack.unpackb(content.value))
            elif isinstance(response, NotFound) and response.context is not None:
                context = response.context
            elements.add(op.element)
            op.stored = frozenset(elements)
            client.step = "set-write"
            value = msgpack.packb(sorted(elements))
            self._submit(
                client,
                ClientPut(SET_BUCKET, op.set_key.encode(), context, Content(value), timeout_ms=REQUEST_TIMEOUT_MS),
            )
        elif step in ("del-read", "reg-read"):
            # A register write or a delete: the read's context, then the write (no content: a delete).
            assert isinstance(op, RegisterWrite)
            if isinstance(response, Failure):
                self._finish(client, FAIL)
                return
            if isinstance(response, Ok) and response.found is not None:
                op.given = response.found.context
            elif isinstance(response, NotFound) and response.context is not None:
                op.given = response.context
            client.step = "del-write" if step == "del-read" else "reg-write"
            written: Content | None = None if step == "del-read" else Content(op.value)
            self._submit(
                client, ClientPut(REG_BUCKET, op.key.encode(), op.given, written, timeout_ms=REQUEST_TIMEOUT_MS)
            )
        else:
            if isinstance(response, Ok):
                if response.found is not None and response.found.context.dots:
                    op.dot = next(iter(response.found.context.dots))
                self._finish(client, OK)
                if step == "del-create":
                    # Written: now read it and delete it with what the read saw.
                    client.step = "del-read"
                    client.op = RegisterWrite(op.key, b"", Context(), delete=True)
                    self._submit(client, ClientGet(REG_BUCKET, op.key.encode(), timeout_ms=REQUEST_TIMEOUT_MS))
            elif isinstance(response, Failure) and response.kind == "bad_request":
                self._finish(client, FAIL)
            else:
                # A write that failed to reach its quorum may still have been applied somewhere.
                self._finish(client, UNKNOWN)

    def _pump_clients(self) -> None:
        c = self.cluster
        for client in self.clients:
            if client.waiting is not None and client.waiting in c.replies:
                self._on_reply(client, c.replies.pop(client.waiting))
            elif client.waiting is not None and c.now_ms - client.waiting_since_ms > CLIENT_TIMEOUT_MS:
                c.replies.pop(client.waiting, None)
                self._finish(client, UNKNOWN if client.step in WRITE_STEPS else FAIL)

    # --- Faults ---------------------------------------------------------------------------------------------

    def _apply(self, kind: str, args: tuple[str, ...]) -> None:
        c = self.cluster
        if kind == "partition":
            c.partition(set(args[0].split(",")), set(args[1].split(",")))
        elif kind == "cut":
            c.faults.cut.add((args[0], args[1]))
        elif kind == "heal":
            c.heal()
        elif kind == "crash":
            if c.nodes[args[0]].up:
                c.crash(args[0])
        elif kind == "restart" and not c.nodes[args[0]].up:
            c.restart(args[0])
        elif kind == "stall":
            c.stall(args[0])
        elif kind == "resume":
            c.resume(args[0])
        if self.options.trace:
            self.result.trace.append(f"{c.now_ms} FAULT {kind} {' '.join(args)}")

    # --- Phases ------------------------------------------------------------------------------------------------

    def run(self) -> RunResult:
        c = self.cluster
        plan = self.plan
        c.faults.loss = plan.loss
        c.faults.duplicate = plan.duplicate
        c.faults.delay_ms = plan.delay_ms
        events = [(self.start_ms + t, kind, args) for t, kind, args in plan.events]
        end = self.start_ms + self.options.safety_ms
        self._loop(end, events)
        self._check_copies("at the end of the safety phase")
        # Liveness: heal everything and stop issuing new operations.
        c.faults.loss = 0.0
        c.faults.duplicate = 0.0
        c.heal()
        for name, node in c.nodes.items():
            if node.stalled:
                c.resume(name)
            if not node.up:
                c.restart(name)
        healed = c.now_ms
        self._loop(c.now_ms + CLIENT_TIMEOUT_MS + 100, [], new_ops=False)
        bound = healed + self.options.liveness_bound_ms
        while c.now_ms < bound:
            c.settle(500)
            problems = self._divergence()
            if not problems:
                self.result.converged_ms = c.now_ms - healed
                break
        else:
            self.result.problems.extend(self._divergence()[:10])
            self.result.problems.append(f"not converged {self.options.liveness_bound_ms} ms after healing")
        self._final_reads()
        self._check_copies("after convergence")
        self.result.messages = c.delivered
        if self.options.trace:
            self.result.trace = sorted(self.result.trace + c.trace, key=lambda line: int(line.split(" ", 1)[0]))
        return self.result

    def _loop(self, end_ms: int, events: list[tuple[int, str, tuple[str, ...]]], new_ops: bool = True) -> None:
        c = self.cluster
        pending = list(events)
        while True:
            self._pump_clients()
            while pending and pending[0][0] <= c.now_ms:
                _, kind, args = pending.pop(0)
                self._apply(kind, args)
            due = [cl.next_at_ms for cl in self.clients if cl.waiting is None] if new_ops else []
            for client in self.clients:
                if new_ops and client.waiting is None and client.next_at_ms <= c.now_ms:
                    self._begin(client)
            if not new_ops and all(cl.waiting is None for cl in self.clients):
                return
            next_wake = min([end_ms, *(d for d in due if d > c.now_ms), *(e[0] for e in pending[:1])])
            waiting = [cl.waiting_since_ms + CLIENT_TIMEOUT_MS + 1 for cl in self.clients if cl.waiting is not None]
            next_wake = min([next_wake, *waiting])
            if c.now_ms >= end_ms:
                return
            if not c.step(next_wake):
                c.now_ms = max(c.now_ms, next_wake)

    def _divergence(self) -> list[str]:
        """Everything that still differs between replicas: versions, Merkle roots, hints."""
        c = self.cluster
        problems = []
        for name in c.nodes:
            core = c.core(name)
            if core.hints_pending:
                problems.append(f"{name} still holds {core.hints_pending} hints")
            if core.cluster.ring.next_owners is not None:
                problems.append(f"{name} sees a ring transition in progress")
        states = {c.core(n).cluster.ring for n in c.nodes}
        if len(states) > 1:
            problems.append("nodes disagree on the ring")
        ring_state = c.core("n0").cluster.ring
        for bucket, names in self._workload_keys():
            for key in names:
                partition = c.core("n0").ring.partition_of(bucket, key.encode())
                n_val = int(c.core("n0").bucket_props(bucket)["n_val"])
                replicas = placement.placement(ring_state, partition, n_val).plist.primary_nodes
                versions = set()
                for replica in replicas:
                    raw = c.core(replica).engine.get("data", keys.encode(partition, bucket, key.encode()))
                    # Compare versions (what anti-entropy compares), not bytes: clock entry timestamps
                    # are bookkeeping for pruning and may differ between replicas holding the same versions.
                    versions.add(None if raw is None else merkle.summary(objects.decode_stored(raw)))
                if len(versions) > 1:
                    problems.append(f"replicas of {bucket.decode()}/{key} differ")
        for partition in range(c.core("n0").ring.size):
            for n_val in c.core("n0").n_vals():
                replicas = placement.placement(ring_state, partition, n_val).plist.primary_nodes
                roots = set()
                for replica in replicas:
                    tree = c.core(replica).aae.trees.get((partition, n_val))
                    roots.add(None if tree is None or not tree.ready else tree.root())
                if len(roots) > 1:
                    problems.append(f"Merkle roots of partition {partition} differ")
        return problems

    def _workload_keys(self) -> tuple[tuple[bytes, list[str]], ...]:
        return (
            (SET_BUCKET, self.set_keys),
            (REG_BUCKET, self.reg_keys + self.del_keys),
            (COUNTER_BUCKET, self.counter_keys),
            (DT_SET_BUCKET, self.dt_set_keys),
        )

    def _copies(self) -> Copies:
        """What every node holds durably of each workload key: its data and its hints for any owner."""
        c = self.cluster
        ring = next(node.core for node in c.nodes.values() if node.core is not None).ring
        out: dict[str, dict[str, list[objects.Object]]] = {}
        for name, node in c.nodes.items():
            by_key: dict[str, list[objects.Object]] = {}
            for bucket, names in self._workload_keys():
                for key in names:
                    skey = keys.encode(ring.partition_of(bucket, key.encode()), bucket, key.encode())
                    stored = [node.engine.durable_get("data", skey)]
                    stored += [node.engine.durable_get("hints", hints.hint_key(owner, skey)) for owner in c.nodes]
                    by_key[key] = [objects.decode_stored(raw) for raw in stored if raw is not None]
            out[name] = by_key
        return out

    @property
    def one_value(self) -> bool:
        """The workload's buckets keep one value per key (last-write-wins, or allow_mult off)."""
        return self.options.lww or not self.options.allow_mult

    def _check_copies(self, when: str) -> None:
        if self.one_value:
            return  # a copy keeps one value by design, and may even forget the clock entry of one that lost
        w = self.cluster.settings.w
        # A write still in flight may already have replaced what its context covered on some copies.
        in_flight = [cl.op for cl in self.clients if cl.step in WRITE_STEPS and isinstance(cl.op, RegisterWrite)]
        problems = check_copies(self.set_ops, self.writes + in_flight, self._copies(), w, msgpack.unpackb)
        self.result.problems.extend(f"{when}: {p}" for p in problems[:10])

    def _final_reads(self) -> None:
        c = self.cluster
        final_sets: dict[str, set[int]] = {}
        for key in self.set_keys:
            response = c.request("n0", ClientGet(SET_BUCKET, key.encode(), r="all"))
            elements: set[int] = set()
            if isinstance(response, Ok) and response.found is not None:
                for _, content in response.found.values:
                    elements.update(msgpack.unpackb(content.value))
            elif isinstance(response, Failure):
                self.result.problems.append(f"final read of {key} failed: {response.reason}")
            final_sets[key] = elements
        final_regs = {}
        for key in self.reg_keys + self.del_keys:
            response = c.request("n0", ClientGet(REG_BUCKET, key.encode(), r="all"))
            siblings = []
            if isinstance(response, Ok) and response.found is not None:
                siblings = [(dot, content.value) for dot, content in response.found.values]
            elif isinstance(response, Failure):
                self.result.problems.append(f"final read of {key} failed: {response.reason}")
            final_regs[key] = siblings
        final_counters: dict[str, int] = {}
        final_dt_sets: dict[str, set[str]] = {}
        for bucket, names, kind in (
            (COUNTER_BUCKET, self.counter_keys, "counter"),
            (DT_SET_BUCKET, self.dt_set_keys, "set"),
        ):
            for key in names:
                response = c.request("n0", ClientGet(bucket, key.encode(), r="all", with_deletions=True))
                state = None
                if isinstance(response, Ok) and response.found is not None:
                    state = datatypes.visible(response.found.values, kind)
                elif isinstance(response, Failure):
                    self.result.problems.append(f"final read of {key} failed: {response.reason}")
                value = None if state is None else crdt.value(state)
                if kind == "counter":
                    final_counters[key] = int(value) if isinstance(value, int) else 0
                else:
                    final_dt_sets[key] = {e.decode() for e in value} if isinstance(value, list) else set()
        self.result.datatypes = check_datatypes(self.counter_ops, self.element_ops, final_counters, final_dt_sets)
        self.result.sets = check_sets(self.set_ops, final_sets)
        self.result.registers = check_registers(self.writes, final_regs, one_value=self.one_value)


def run_seed(seed: int, options: Options | None = None) -> RunResult:
    return Simulation(seed, options).run()


def _dt_put(
    bucket: bytes, key: str, datatype: str, op: dict[str, Any], context: tuple[tuple[bytes, int], ...] | None = None
) -> ClientPut:
    dt = DtUpdate(datatype, crdt.HLL_PRECISION_DEFAULT, json.dumps(op).encode(), context)
    return ClientPut(bucket, key.encode(), None, None, timeout_ms=REQUEST_TIMEOUT_MS, dt=dt)
