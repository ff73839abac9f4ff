"""The asyncio shell around one NodeCore: it feeds inputs in, performs the effects that come out,
and keeps the core's timer armed. It decides nothing about the protocol.

Pipelined group commit: inputs are handed to the core as they arrive; what they stage is taken as one
batch and written by a single writer thread, while the event loop goes on serving the next inputs
(which stage the next batch). A batch's replies and messages are performed only once the batch is on
disk, and batches are written one after another, in order. So a durable fsync never stalls the event
loop, and the longer a sync takes, the more requests share the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dynastore.backup import remove_temp as remove_backup_temp
from dynastore.core.effects import Event
from dynastore.core.membership import ACTIVE
from dynastore.core.messages import (
    ClientGet,
    ClientPut,
    ClientRequest,
    ClientResponse,
    Failure,
    Message,
    ReplicaGet,
    ReplicaGetReply,
    ReplicaPut,
    ReplicaPutReply,
)
from dynastore.core.node import AdminRequest, Batch, ClientJoin, Effect, NodeCore, Reply, Send
from dynastore.core.nodebase import StartupError
from dynastore.core.secret import is_loopback, startup_problem
from dynastore.net import tls
from dynastore.net.rpc import WILDCARD_HOSTS, Transport
from dynastore.runtime.metrics import RequestMetrics, outcome_of
from dynastore.runtime.secrets import resolve as resolve_secret
from dynastore.settings import Settings
from dynastore.storage import open_engine
from dynastore.storage.base import Engine, NoSpaceError, Space, StorageError
from dynastore.storage.directory import STORE_DIR_NAME

log = logging.getLogger("dynastore.node")
# What the core reports as events (core/effects.py Event), one line each; the JSON log format gives
# each event's kind and fields (runtime/logs.py).
events = logging.getLogger("dynastore.events")

# A batch the disk had no room for is written again this often.
STUCK_RETRY_S = 1.0


@dataclass(frozen=True, slots=True)
class NodeConfig:
    name: str
    host: str
    http_port: int
    peer_port: int
    data_dir: Path
    seeds: tuple[tuple[str, int], ...] = ()
    weight: int = 1
    # The address peers and clients are told (member record, /ring, hellos); `host` is the one bound.
    # Empty: the same as `host`.
    advertise_host: str = ""
    # Riak's Protocol Buffers API (api/pb/); 0: none.
    pb_port: int = 0

    @property
    def advertised(self) -> str:
        return self.advertise_host or self.host

    @property
    def loopback_only(self) -> bool:
        """Whether the node is bound to and known by loopback addresses only (this machine alone)."""
        return is_loopback(self.host) and is_loopback(self.advertised)


def log_event(event: Event) -> None:
    level = logging.getLevelName(event.level.upper())
    if events.isEnabledFor(level):
        events.log(level, "%s", event.text, extra={"event": event.kind, "fields": dict(event.fields)})


def _op_of(request: ClientRequest | AdminRequest) -> str | None:
    """What /stats and /metrics count a client request as: get, put, delete, or nothing."""
    if isinstance(request, ClientGet):
        return "get"
    if isinstance(request, ClientPut):
        return "put" if request.content is not None else "delete"
    return None


class Clock:
    """Milliseconds (and microseconds) on a monotonic clock, anchored to the wall clock when the node
    started.

    Timers never jump with NTP steps, while timestamps (last-modified, tombstone ages) stay close to
    wall-clock time, including any skew the machine's clock has. The anchor is taken in microseconds,
    so that the nodes of one machine agree to within microseconds, not to within the millisecond a
    truncated anchor would lose: a value's last-modified time (`now_us`) is what decides between
    concurrent writes in a bucket keeping one value, and two writes a client makes one after the
    other, through two nodes, must be dated in that order.
    """

    def __init__(self) -> None:
        # The pair of readings taken closest together (a preemption between them would skew the anchor).
        best: tuple[int, int, int] | None = None
        for _ in range(5):
            before = time.monotonic_ns()
            wall = time.time_ns()
            after = time.monotonic_ns()
            if best is None or after - before < best[0]:
                best = (after - before, wall, (before + after) // 2)
        assert best is not None
        self._wall_us = best[1] // 1000
        self._mono_ns = best[2]

    def now_us(self) -> int:
        return self._wall_us + (time.monotonic_ns() - self._mono_ns) // 1000

    def now_ms(self) -> int:
        return self.now_us() // 1000


class BatchWriter:
    """The one thread that writes batches, one at a time and in order. Each result comes back to the
    event loop as one callback (an executor's two futures and their chaining cost two and a half
    times as much CPU per batch)."""

    def __init__(self, name: str) -> None:
        # Never more than one batch waits: the runtime hands over the next only when the last is written.
        self._queue: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(
        self,
        loop: asyncio.AbstractEventLoop,
        engine: Engine,
        batch: Batch,
        done: Callable[[BaseException | None, Space | None], None],
    ) -> None:
        """Write `batch` to `engine` (and sync it when it says so) on the writer thread, then call
        `done(error, space)` on `loop`, with the engine's space measured after the write."""

        def work() -> None:
            error: BaseException | None = None
            space: Space | None = None
            try:
                if batch.ops:
                    engine.write(batch.ops)
                if batch.sync:
                    engine.sync()
            except BaseException as exc:  # the runtime stops the node on any other storage failure
                error = exc
            with contextlib.suppress(StorageError):
                space = engine.space()
            with contextlib.suppress(RuntimeError):  # the loop is already closed: nobody is waiting
                loop.call_soon_threadsafe(done, error, space)

        self._queue.put(work)

    def _run(self) -> None:
        while True:
            work = self._queue.get()
            if work is None:
                return
            work()

    def shutdown(self) -> None:
        self._queue.put(None)
        self._thread.join()


class NodeRuntime:
    def __init__(self, config: NodeConfig, settings: Settings) -> None:
        self.config = config
        self.settings = resolve_secret(settings)
        self.clock = Clock()
        self.engine: Engine | None = None
        self.core: NodeCore | None = None
        self.transport: Transport | None = None
        self._futures: dict[int, asyncio.Future[ClientResponse]] = {}
        self._request_id = 0
        self._flush_scheduled = False
        # One thread writes batches, one at a time and in order; `_committing` is true while it does.
        self._writer = BatchWriter(f"{config.name}-commit")
        self._committing = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at_ms: int | None = None
        self._join_task: asyncio.Task[None] | None = None
        # A batch the disk had no room for, written again every STUCK_RETRY_S until it fits.
        self._stuck: Batch | None = None
        self._space_timer: asyncio.TimerHandle | None = None
        self.metrics = RequestMetrics()
        self._counters_timer: asyncio.TimerHandle | None = None
        self.started_at = time.time()
        self.stopping = asyncio.Event()
        # Why the node stops on its own when it must (a seed refused it): the process exits with it.
        self.failure: str | None = None
        # A backup is being copied or streamed (api/admin.py): one at a time.
        self.backup_running = False

    # --- Lifecycle ------------------------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.config
        problem = startup_problem(self.settings, cfg.host, cfg.advertised)
        if problem is None and cfg.advertised in WILDCARD_HOSTS:
            problem = f"--host {cfg.host} listens on every interface: give --advertise-host, the address peers reach"
        if problem is not None:
            raise StartupError(problem)
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        # A backup's copy left behind by a crash during it (backup.py).
        remove_backup_temp(cfg.data_dir)
        self.engine = open_engine(
            self.settings.storage_engine,
            cfg.data_dir / STORE_DIR_NAME,
            durable=self.settings.durable,
            settings=self.settings,
        )
        self.core = NodeCore(
            cfg.name,
            self.settings,
            self.engine,
            # The operating system's randomness: the core draws the cluster's key from it too.
            random.SystemRandom(),
            self.clock.now_ms(),
            host=cfg.advertised,
            peer_port=cfg.peer_port,
            http_port=cfg.http_port,
            weight=cfg.weight,
        )
        # On a full disk the node starts refusing writes before its first batch (diskspace.py).
        self.core.observe_space(self.engine.space())
        self.transport = Transport(
            name=cfg.name,
            host=cfg.host,
            port=cfg.peer_port,
            cluster=self.settings.cluster_name,
            keys=self.core.cluster_keys,
            frame_bytes_max=self.settings.frame_bytes_max,
            queue_frames_max=self.settings.peer_queue_frames_max,
            queue_bytes_max=self.settings.peer_queue_bytes_max,
            message_bytes_max=self.settings.peer_message_bytes_max,
            reassembly_bytes_max=self.settings.peer_reassembly_bytes_max,
            idle_timeout_ms=self.settings.peer_idle_timeout_ms,
            inbound_max=self.settings.peer_connections_max,
            connect_timeout_ms=self.settings.connect_timeout_ms,
            retry_ms=self.settings.unreachable_retry_ms,
            address_of=self.core.address_of,
            on_message=self._on_message,
            on_unreachable=self._on_unreachable,
            ssl_server=tls.server_context(self.settings, require_client_cert=True),
            ssl_client=tls.peer_client_context(self.settings),
            advertise_host=cfg.advertised,
        )
        if self.core.cluster.security.on and not cfg.loopback_only and not tls.enabled(self.settings):
            raise StartupError(
                f"security is on and --host {cfg.host} (advertised as {cfg.advertised}) is not a loopback address: "
                "set tls_cert_file and tls_key_file, or passwords would cross the network in clear"
            )
        await self.transport.start()
        self._check_space()
        self._sample_counters()
        self._flush()
        if cfg.seeds and len(self.core.cluster.members) == 1 and not self.core.has_data():
            self._join_task = asyncio.get_running_loop().create_task(self._join_seeds())

    async def stop(self) -> None:
        if self._join_task is not None:
            self._join_task.cancel()
        if self._timer is not None:
            self._timer.cancel()
        if self._space_timer is not None:
            self._space_timer.cancel()
        if self._counters_timer is not None:
            self._counters_timer.cancel()
        if self._stuck is not None:
            # A batch with no room is never written: nothing that depends on it was acknowledged.
            log.warning("stopping with a batch the disk had no room for (its writes were not acknowledged)")
            self._stuck = None
            self._committing = False
            self._idle.set()
        if self.core is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._idle.wait(), 30)
                self.core.prepare_shutdown()
                self._flush_now()
                await asyncio.wait_for(self._idle.wait(), 30)
        if self.transport is not None:
            await self.transport.drain(1.0)
            await self.transport.close()
        for fut in self._futures.values():
            if not fut.done():
                fut.set_result(Failure("unavailable", "node is shutting down"))
        self._writer.shutdown()
        if self.engine is not None:
            self.engine.close()

    async def _join_seeds(self) -> None:
        """A fresh node started with seeds joins their cluster. A seed that answers and refuses it
        (another cluster, another secret, ...) stops the node with the reason; while none answers it
        retries, warning, for up to seed_join_timeout_ms (nodes started together come up in any
        order), then stops with an error: a node meant to join must never carry on alone."""
        deadline = time.monotonic() + self.settings.seed_join_timeout_ms / 1000
        attempt = 0
        while True:
            attempt += 1
            problems: list[str] = []
            for host, port in self.config.seeds:
                response = await self.request(ClientJoin(host, port))
                if not isinstance(response, Failure):
                    log.info("%s joined the cluster through %s:%d", self.config.name, host, port)
                    return
                if self._joined():
                    # An earlier attempt that timed out got through after all (gossip says so).
                    log.info("%s joined the cluster", self.config.name)
                    return
                if response.kind == "bad_request":
                    self.fail(f"seed {host}:{port} refused {self.config.name}: {response.reason}")
                    return
                problems.append(f"{host}:{port}: {response.reason}")
            left = deadline - time.monotonic()
            if left <= 0:
                self.fail(
                    f"no seed answered in seed_join_timeout_ms={self.settings.seed_join_timeout_ms} "
                    f"({'; '.join(problems)})"
                )
                return
            # Every attempt at first, then every tenth: a seed slow to start is not an emergency.
            if attempt <= 3 or attempt % 10 == 0:
                log.warning("no seed answered yet (%s); retrying for %.0f s more", "; ".join(problems), left)
            await asyncio.sleep(1.0)

    def _joined(self) -> bool:
        core = self.core
        return core is not None and len(core.cluster.names(ACTIVE)) > 1

    def fail(self, reason: str) -> None:
        """Stop the node because it cannot go on as it was asked to; the process exits with `reason`."""
        log.error("%s; stopping", reason)
        if self.failure is None:
            self.failure = reason
        self.stopping.set()

    # --- Inputs ------------------------------------------------------------------------------------------

    async def request(self, request: ClientRequest | AdminRequest) -> ClientResponse:
        core = self.core
        assert core is not None
        op = _op_of(request)
        if len(self._futures) >= self.settings.requests_inflight_max:
            if op is not None:
                self.metrics.refused(op, "overload")
            return Failure("overload", f"more than {self.settings.requests_inflight_max} requests in flight")
        self._request_id += 1
        rid = self._request_id
        fut: asyncio.Future[ClientResponse] = asyncio.get_running_loop().create_future()
        self._futures[rid] = fut
        started_ns = time.perf_counter_ns()
        now_us = self.clock.now_us()
        if isinstance(request, ClientPut) and request.content is not None and not request.content.last_modified_us:
            # Dated here, to the microsecond (the core's clock is in milliseconds): see Clock.
            content = dataclasses.replace(request.content, last_modified_us=now_us)
            request = dataclasses.replace(request, content=content)
        core.on_request(rid, request, now_us // 1000)
        self._schedule_flush()
        # What a request that never got its answer (its client went away) counts as.
        outcome = "cancelled"
        try:
            response = await fut
            outcome = outcome_of(response)
            return response
        finally:
            self._futures.pop(rid, None)
            if op is not None:
                elapsed_ns = time.perf_counter_ns() - started_ns
                self.metrics.coordinated(op, outcome, elapsed_ns, time.monotonic())
                # The background controller paces repair and handoff by what clients experience.
                core.observe_latency(elapsed_ns / 1e6, self.clock.now_ms())

    def _on_message(self, src: str, msg: Message) -> None:
        assert self.core is not None
        if isinstance(msg, ReplicaGet | ReplicaPut):
            # Timed until its reply leaves (after the batch holding a write is durable): replica latency.
            self.metrics.replica_request(src, msg, time.perf_counter_ns())
        self.core.on_message(src, msg, self.clock.now_ms())
        self._schedule_flush()

    def _on_unreachable(self, peer: str, reason: str) -> None:
        assert self.core is not None
        self.core.on_unreachable(peer, self.clock.now_ms(), reason)
        self._schedule_flush()

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at_ms = None
        assert self.core is not None
        self.core.on_tick(self.clock.now_ms())
        self._flush_now()

    # --- Effects ----------------------------------------------------------------------------------------

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        self._flush_now()

    def _flush_now(self) -> None:
        core = self.core
        assert core is not None
        # What depends on nothing unwritten leaves now, even while a batch is being written. The timer is
        # armed with a batch's effects: what is free never sets a deadline of its own.
        self._perform(core.take_free())
        if self._committing:
            # The batch being written ends by taking the next one, which will carry this input's work.
            return
        if not core.has_pending:
            # Nothing staged or queued (a read of durable data, a heartbeat): no batch to take.
            self._arm_timer()
            return
        batch = core.take_batch()
        if not batch.ops and not batch.sync:
            self._perform(core.batch_written())
            self._arm_timer()
            return
        self._committing = True
        self._idle.clear()
        engine = self.engine
        assert engine is not None
        self._writer.submit(asyncio.get_running_loop(), engine, batch, functools.partial(self._written, batch))

    def _check_space(self) -> None:
        """Measure the disk every storage_check_interval_ms (room freed by others shows up here)."""
        core, engine = self.core, self.engine
        assert core is not None and engine is not None
        if not self._committing:
            with contextlib.suppress(StorageError):
                core.observe_space(engine.space())
            self._schedule_flush()
        interval_s = self.settings.storage_check_interval_ms / 1000
        self._space_timer = asyncio.get_running_loop().call_later(interval_s, self._check_space)

    def _sample_counters(self) -> None:
        """Once a second, hand the core's running counts to the one-minute counters of `/stats`."""
        assert self.core is not None
        self.metrics.observe_read_repairs(self.core.stats.read_repairs, time.monotonic())
        self._counters_timer = asyncio.get_running_loop().call_later(1.0, self._sample_counters)

    def _retry_stuck(self) -> None:
        batch, self._stuck = self._stuck, None
        assert batch is not None and self.engine is not None
        if self.stopping.is_set():
            return
        self._writer.submit(asyncio.get_running_loop(), self.engine, batch, functools.partial(self._written, batch))

    def _written(self, batch: Batch, error: BaseException | None, space: Space | None) -> None:
        core = self.core
        assert core is not None
        if isinstance(error, NoSpaceError):
            # Nothing of the batch was written and nothing that depends on it was acknowledged: the
            # node stays up, serves reads, refuses new writes and writes this batch once it fits.
            if self._stuck is None:
                log.warning("no room for a batch (%s); writing it again every %.0f s", error, STUCK_RETRY_S)
            core.observe_space(space, failed=True)
            self._stuck = batch
            asyncio.get_running_loop().call_later(STUCK_RETRY_S, self._retry_stuck)
            self._perform(core.take_free())
            return
        self._committing = False
        self._idle.set()
        if space is not None or error is None:
            core.observe_space(space)
        if error is not None:
            # A write that cannot be made durable must not be acknowledged: stop the node, acking nothing.
            log.error("storage failure; stopping: %s", error)
            self.stopping.set()
            return
        self._perform(core.batch_written())
        self._arm_timer()
        if core.has_pending:
            self._flush_now()

    def _perform(self, effects: Sequence[Effect]) -> None:
        core, transport = self.core, self.transport
        assert core is not None and transport is not None
        for effect in effects:
            if isinstance(effect, Reply):
                fut = self._futures.get(effect.request_id)
                if fut is not None and not fut.done():
                    fut.set_result(effect.response)
            elif isinstance(effect, Send):
                if effect.dst == self.config.name and effect.address is None:
                    continue
                msg = effect.msg
                if isinstance(msg, ReplicaGetReply | ReplicaPutReply):
                    self.metrics.replica_replied(effect.dst, msg.req, time.perf_counter_ns())
                transport.send(effect.dst, msg, effect.address)
            elif isinstance(effect, Event):
                log_event(effect)
            elif not self.stopping.is_set():
                log.info("%s; stopping", effect.reason)
                self.stopping.set()

    def _arm_timer(self) -> None:
        assert self.core is not None
        deadline = self.core.next_deadline_ms()
        if self._timer is not None and self._timer_at_ms is not None and self._timer_at_ms <= deadline:
            return
        if self._timer is not None:
            self._timer.cancel()
        delay_s = max(0.0, (deadline - self.clock.now_ms()) / 1000)
        self._timer = asyncio.get_running_loop().call_later(delay_s, self._on_timer)
        self._timer_at_ms = deadline

    # --- Queries ------------------------------------------------------------------------------------------

    def uptime_s(self) -> int:
        return int(time.time() - self.started_at)

    def readiness(self) -> dict[str, Any]:
        """`/ready`'s answer: the core's judgement (membership, ring, quorums), after the shell's own
        (the process is not stopping, its storage is open)."""
        core = self.core
        assert core is not None
        answer = core.readiness(self.clock.now_ms())
        reason = answer.reason
        if self.stopping.is_set():
            reason = "the node is stopping"
        elif self.engine is None:
            # A full disk is not here: the node still serves reads, and writes go to other replicas.
            reason = "storage is not open"
        body = dataclasses.asdict(answer)
        body.update(node=self.config.name, ready=not reason, reason=reason)
        return body

    def stats(self) -> dict[str, Any]:
        core = self.core
        assert core is not None and self.transport is not None
        now = time.monotonic()
        out = core.stats_snapshot(self.clock.now_ms())
        # The core's read_repairs is its running count; Riak's is per minute (read_repairs_total stays).
        self.metrics.observe_read_repairs(core.stats.read_repairs, now)
        out.update(self.metrics.stats(now))
        out["peer_frames_dropped_total"] = self.transport.dropped_frames
        out["peer_protocol_errors_total"] = self.transport.peer_errors
        out["peer_auth_failures_total"] = self.transport.auth_failures
        out["peer_connections_inbound"] = len(self.transport.inbound)
        out["peer_connections_refused_total"] = self.transport.inbound_refused
        out["uptime_s"] = self.uptime_s()
        return out
