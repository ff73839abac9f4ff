"""The YCSB driver: workers that issue requests to a target and record how long each one took.

Theory of operation
-------------------
- A phase (the load, or one workload's run) is described by `Phase`, plain data handed to each
  driver process. One process runs in the caller; with `processes > 1` each runs in a spawned
  process of its own (one event loop, on one core, each), and the parent adds their outcomes up.
  Histograms add exactly (see dynastore.histogram), so merged percentiles are those of all the samples.
- Every process starts at the same wall-clock instant (`start_at`), runs `warmup_s` unmeasured, then
  measures for `duration_s`. Spawned processes first import everything and open their target, then
  say they are ready; the parent sets `start_at` only once all are (START_LEAD_S ahead) and sends it,
  so however slowly a busy machine starts them, none begins after its window. An operation counts
  when it *started* inside the measured window. Work still in flight at its end completes (each
  request is bounded by the target's timeout) but is not counted, so throughput is operations
  started and completed in the window divided by its length.
- Closed loop (the default): each of `concurrency` workers issues its next request as soon as the
  previous one answers; latency runs from just before a request is issued to just after its
  response is read. With a target rate (`rate_per_s`) the schedule is open: request i is due at
  start + i / rate, and its latency runs from when it was due, not when a worker got to it, so a
  stalled store is charged for the requests it held up (no coordinated omission).
- A read-modify-write is timed as a whole (`read-modify-write`) and its read and update are also
  recorded under `read` and `update`, as YCSB does.
- A failed request (an exception, or a read of a loaded record that finds nothing) is counted per
  operation with a few of its messages kept; its latency is not mixed into the successful ones.
- The driver measures its own CPU time over the window, and the first process also samples the
  server processes' CPU time (from /proc): on a machine shared by driver and servers, how busy each
  side was tells whether a number is the store's or the driver's limit.

The driver must not be the bottleneck: the `noop` target shows its ceiling on this machine.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from dynastore.bench.ycsb_targets import Client, Endpoint, Target, open_target
from dynastore.bench.ycsb_workload import (
    INSERT,
    READ,
    READ_MODIFY_WRITE,
    UPDATE,
    WORKLOADS,
    OperationStream,
    ScrambledZipfian,
    key_of,
    make_values,
)
from dynastore.histogram import LatencyHistogram

LOAD = "load"
ERROR_SAMPLES_MAX = 5
# How far ahead of now the common start is set once every spawned process is ready (it only has to
# receive it and wake), and for a phase run in the caller.
START_LEAD_S = 0.5
LOCAL_LEAD_S = 0.2
# How long spawned driver processes may take to import, open their target and say they are ready.
READY_TIMEOUT_S = 120.0
# How long past its planned end a phase may run (in-flight requests) before it is abandoned.
PHASE_GRACE_S = 60.0
LOAD_TIMEOUT_S = 1800.0


class DriverError(Exception):
    """A phase could not be run (driver processes failed or overran); the message says why."""


@dataclass(frozen=True, slots=True)
class Phase:
    """What one driver process does: the load (its share of the records) or a run of one workload."""

    endpoint: Endpoint
    workload: str  # a key of WORKLOADS, or LOAD
    records: int
    concurrency: int
    warmup_s: float
    duration_s: float
    seed: int
    start_at: float  # time.time() at which every process starts
    value_bytes: int
    theta: float
    rate_per_s: float | None = None
    process_index: int = 0
    processes: int = 1
    server_pids: tuple[int, ...] = ()


@dataclass(slots=True)
class Outcome:
    """What a phase measured, from one process or added up over several."""

    histograms: dict[str, LatencyHistogram] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    error_samples: list[str] = field(default_factory=list)
    operations: int = 0
    window_s: float = 0.0
    driver_cpu_s: float = 0.0
    server_cpu_s: float | None = None
    counters: dict[str, int] = field(default_factory=dict)

    def histogram(self, op: str) -> LatencyHistogram:
        found = self.histograms.get(op)
        if found is None:
            found = self.histograms[op] = LatencyHistogram()
        return found

    def failed(self, op: str, exc: BaseException | str) -> None:
        self.errors[op] = self.errors.get(op, 0) + 1
        if len(self.error_samples) < ERROR_SAMPLES_MAX:
            text = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}".strip()
            self.error_samples.append(f"{op}: {text}"[:300])

    def merge(self, other: Outcome) -> None:
        """Add another process's outcome of the same phase (their windows coincide)."""
        for op, histogram in other.histograms.items():
            self.histogram(op).merge(histogram)
        for op, count in other.errors.items():
            self.errors[op] = self.errors.get(op, 0) + count
        room = ERROR_SAMPLES_MAX - len(self.error_samples)
        self.error_samples.extend(other.error_samples[: max(0, room)])
        self.operations += other.operations
        self.window_s = max(self.window_s, other.window_s)
        self.driver_cpu_s += other.driver_cpu_s
        if other.server_cpu_s is not None:
            self.server_cpu_s = (self.server_cpu_s or 0.0) + other.server_cpu_s
        for name, count in other.counters.items():
            self.counters[name] = self.counters.get(name, 0) + count


def merge_outcomes(outcomes: list[Outcome]) -> Outcome:
    merged = Outcome()
    for outcome in outcomes:
        merged.merge(outcome)
    return merged


def cpu_seconds(pids: tuple[int, ...]) -> float | None:
    """User plus system CPU time of the given processes so far (None when /proc cannot tell)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        # Fields after the command name (which may hold spaces, so split after its closing paren).
        fields = stat.rpartition(")")[2].split()
        total += int(fields[11]) + int(fields[12])
    return total / ticks


class _Window:
    """The measured window on this process's perf_counter clock, from the shared wall-clock start."""

    def __init__(self, phase: Phase) -> None:
        offset_s = time.time() - time.perf_counter()
        self.start_ns = int((phase.start_at - offset_s) * 1e9)
        self.measure_ns = self.start_ns + int(phase.warmup_s * 1e9)
        self.end_ns = self.measure_ns + int(phase.duration_s * 1e9) if math.isfinite(phase.duration_s) else 2**62

    async def sleep_until(self, when_ns: int) -> None:
        delay_s = (when_ns - time.perf_counter_ns()) / 1e9
        if delay_s > 0:
            await asyncio.sleep(delay_s)


class _Schedule:
    """Open-loop due times shared by one process's workers: request i is due at start + i / rate."""

    def __init__(self, window: _Window, rate_per_s: float) -> None:
        assert rate_per_s > 0, rate_per_s
        self._start_ns = window.start_ns
        self._interval_ns = 1e9 / rate_per_s
        self._next = 0

    def next_due_ns(self) -> int:
        due = self._start_ns + int(self._next * self._interval_ns)
        self._next += 1
        return due


class _Runner:
    """One process's workers for one phase, and what they measured."""

    def __init__(self, phase: Phase, target: Target) -> None:
        self.phase = phase
        self.target = target
        self.window = _Window(phase)
        self.outcome = Outcome(window_s=phase.duration_s)
        self.values = make_values(random.Random(phase.seed), size=phase.value_bytes)
        self.schedule = _Schedule(self.window, phase.rate_per_s) if phase.rate_per_s else None

    async def _timed(self, op: str, started_ns: int, measured: bool, call: Awaitable[bool | None]) -> bool:
        """Await one request; record its latency from `started_ns` when measured. False when it failed."""
        try:
            found = await call
        except Exception as exc:
            # Any failure of a request (timeouts, refused connections, a store's error answer) is
            # the store's outcome to report, not the driver's to crash on.
            if measured:
                self.outcome.failed(op, exc)
            return False
        if found is False:
            if measured:
                self.outcome.failed(op, "record not found")
            return False
        if measured:
            self.outcome.histogram(op).record(time.perf_counter_ns() - started_ns)
        return True

    async def _operate(self, client: Client, op: str, record: int, value: bytes, started_ns: int) -> bool:
        measured = started_ns >= self.window.measure_ns
        key = key_of(record)
        if op == READ:
            return await self._timed(READ, started_ns, measured, client.read(key))
        if op in (UPDATE, INSERT):
            return await self._timed(op, started_ns, measured, client.update(key, value))
        assert op == READ_MODIFY_WRITE, op
        if not await self._timed(READ, started_ns, measured, client.read(key)):
            if measured:
                self.outcome.failed(READ_MODIFY_WRITE, "its read failed")
            return False
        if not await self._timed(UPDATE, time.perf_counter_ns(), measured, client.update(key, value)):
            if measured:
                self.outcome.failed(READ_MODIFY_WRITE, "its update failed")
            return False
        if measured:
            self.outcome.histogram(READ_MODIFY_WRITE).record(time.perf_counter_ns() - started_ns)
        return True

    async def _started_ns(self) -> int | None:
        """When the worker's next request starts (None: the window is over), waiting for its due time."""
        if self.schedule is None:
            now = time.perf_counter_ns()
            return now if now < self.window.end_ns else None
        due = self.schedule.next_due_ns()
        if due >= self.window.end_ns:
            return None
        await self.window.sleep_until(due)
        return due

    async def run_worker(self, worker: int, stream: OperationStream) -> None:
        client = self.target.client(worker)
        values = self.values
        value_count = len(values)
        at = worker
        while True:
            started_ns = await self._started_ns()
            if started_ns is None:
                return
            op, record = stream.next()
            at += 1
            ok = await self._operate(client, op, record, values[at % value_count], started_ns)
            if ok and started_ns >= self.window.measure_ns:
                self.outcome.operations += 1

    async def load_worker(self, worker: int, records: range) -> None:
        client = self.target.client(worker)
        for record in records:
            value = self.values[record % len(self.values)]
            if await self._operate(client, INSERT, record, value, time.perf_counter_ns()):
                self.outcome.operations += 1

    async def sample_cpu(self) -> None:
        """CPU time of this process (and of the servers, when given) over the measured window."""
        await self.window.sleep_until(self.window.measure_ns)
        driver_start, server_start = time.process_time(), cpu_seconds(self.phase.server_pids)
        await self.window.sleep_until(self.window.end_ns)
        self.outcome.driver_cpu_s = time.process_time() - driver_start
        server_end = cpu_seconds(self.phase.server_pids)
        if self.phase.server_pids and server_start is not None and server_end is not None:
            self.outcome.server_cpu_s = server_end - server_start


async def drive(phase: Phase, ready: Callable[[], Awaitable[float]] | None = None) -> Outcome:
    """Run one process's share of a phase and return what it measured; with `ready`, once the target is
    open it is awaited for the common start (which replaces phase.start_at)."""
    target = await open_target(phase.endpoint, phase.concurrency)
    try:
        if ready is not None:
            phase = replace(phase, start_at=await ready())
        runner = _Runner(phase, target)
        await runner.window.sleep_until(runner.window.start_ns)
        if phase.workload == LOAD:
            mine = range(phase.process_index, phase.records, phase.processes)
            workers = [
                runner.load_worker(w, mine[w :: phase.concurrency]) for w in range(min(phase.concurrency, len(mine)))
            ]
        else:
            keys = ScrambledZipfian.create(phase.records, phase.theta)
            workload = WORKLOADS[phase.workload]
            # Each worker its own stream: seeded by process and worker, so a run is reproducible.
            seeds = random.Random(f"{phase.seed}/{phase.workload}/{phase.process_index}")
            workers = [
                runner.run_worker(w, OperationStream(workload, keys, random.Random(seeds.getrandbits(64))))
                for w in range(phase.concurrency)
            ]
        if phase.workload == LOAD:
            # A load has no planned end: its window is however long its workers take.
            started_s, cpu_start = time.perf_counter(), time.process_time()
            await asyncio.gather(*workers)
            runner.outcome.window_s = time.perf_counter() - started_s
            runner.outcome.driver_cpu_s = time.process_time() - cpu_start
        else:
            await asyncio.gather(runner.sample_cpu(), *workers)
        runner.outcome.counters = target.counters()
        return runner.outcome
    finally:
        await target.close()


def _run_loop(phase: Phase, ready: Callable[[], Awaitable[float]] | None = None) -> Outcome:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(drive(phase, ready))
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as loop:
        return loop.run(drive(phase, ready))


def drive_process(phase: Phase, conn: Connection) -> None:
    """Entry point of a spawned driver process: ("ready",) once its target is open, then the common
    start from the parent, then ("done", outcome) or ("error", message) back."""

    async def ready() -> float:
        conn.send(("ready",))
        # Waited for in a thread so the loop (and the target's connections) stay served.
        if not await asyncio.to_thread(conn.poll, READY_TIMEOUT_S + START_LEAD_S):
            raise DriverError("the parent never sent the start")
        start_at = conn.recv()
        assert isinstance(start_at, float), start_at
        return start_at

    try:
        outcome = _run_loop(phase, ready)
    except BaseException as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        raise
    conn.send(("done", outcome))


def _receive(conns: dict[Connection, int], processes: list[BaseProcess], kind: str, bound_s: float) -> list[Any]:
    """One message of `kind` from every driver process (in process order) within `bound_s`; DriverError
    when one reports an error, dies, or the time runs out."""
    got: dict[int, Any] = {}
    deadline = time.monotonic() + bound_s
    sentinels = {p.sentinel: i for i, p in enumerate(processes)}
    while len(got) < len(conns):
        left_s = deadline - time.monotonic()
        if left_s <= 0:
            late = sorted(set(range(len(conns))) - set(got))
            raise DriverError(f"driver processes {late} did not send {kind} within {bound_s:.0f} s")
        waiting = [c for c, i in conns.items() if i not in got]
        for ready in wait([*waiting, *(s for s, i in sentinels.items() if i not in got)], timeout=left_s):
            if isinstance(ready, int):
                index = sentinels[ready]
                if index in got:
                    continue
                if not any(c.poll() for c, i in conns.items() if i == index):
                    code = processes[index].exitcode
                    raise DriverError(f"driver process {index} exited (code {code}) before it sent {kind}")
                continue
            assert isinstance(ready, Connection)
            index = conns[ready]
            try:
                message = ready.recv()
            except EOFError:
                raise DriverError(f"driver process {index} closed its pipe before it sent {kind}") from None
            if message[0] == "error":
                raise DriverError(f"driver process {index} failed: {message[1]}")
            assert message[0] == kind, message
            got[index] = message[1:]
    return [got[i] for i in range(len(conns))]


def run_phase(phase: Phase, processes: int) -> Outcome:
    """Run `phase` in `processes` driver processes (the concurrency and the rate shared out) and merge."""
    assert processes >= 1, processes
    assert phase.concurrency >= processes, "every driver process needs at least one worker"
    if processes == 1:
        return _run_loop(replace(phase, start_at=time.time() + LOCAL_LEAD_S))
    shares = [
        replace(
            phase,
            concurrency=phase.concurrency // processes + (1 if i < phase.concurrency % processes else 0),
            rate_per_s=phase.rate_per_s / processes if phase.rate_per_s else None,
            process_index=i,
            processes=processes,
            # One process samples the servers, or their CPU time would be counted once per process.
            server_pids=phase.server_pids if i == 0 else (),
        )
        for i in range(processes)
    ]
    bound_s = (
        LOAD_TIMEOUT_S if phase.workload == LOAD else START_LEAD_S + phase.warmup_s + phase.duration_s + PHASE_GRACE_S
    )
    context = multiprocessing.get_context("spawn")
    conns: dict[Connection, int] = {}
    children: list[BaseProcess] = []
    finished = False
    try:
        for i, share in enumerate(shares):
            mine, theirs = context.Pipe()
            child = context.Process(target=drive_process, args=(share, theirs), name=f"ycsb-driver-{i}", daemon=True)
            child.start()
            theirs.close()
            conns[mine] = i
            children.append(child)
        _receive(conns, children, "ready", READY_TIMEOUT_S)
        start_at = time.time() + START_LEAD_S
        for conn in conns:
            conn.send(start_at)
        outcomes = [message[0] for message in _receive(conns, children, "done", bound_s)]
        finished = True
    finally:
        # After their outcomes the processes are exiting; after a failure the others are stopped now.
        for process in children:
            process.join(timeout=5 if finished else 0)
            if process.is_alive():
                process.kill()
                process.join()
        for conn in conns:
            conn.close()
    return merge_outcomes(outcomes)
