"""`GET /metrics`: the node's state in the Prometheus text format (prometheus-client).

Each node has its own registry holding one collector, which reads the node at scrape time: the core's
plain counters (nodebase.Stats, the anti-entropy and controller state, the failure detector), the
shell's request histograms (runtime/metrics.py), the transport's and the HTTP server's connections,
and the storage space last measured (never measured here: that takes the engine's lock). Nothing on a
request's path touches a prometheus object, so serving requests costs nothing more for being scraped,
and a scrape costs a pass over a few hundred histogram buckets per family.

Every name is prefixed `dynastore_`; counters end in `_total`, sizes in `_bytes`, times in `_seconds`
(Prometheus' conventions). deploy/grafana-dashboard.json uses these names, and a test checks that
every name it uses is one a node exports.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from dynastore import __version__
from dynastore.core.membership import STATUSES
from dynastore.core.nodebase import Stats
from dynastore.runtime.metrics import OPS, ROLES
from dynastore.runtime.node import NodeRuntime

# The text format version 0.0.4: what every Prometheus server accepts.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Request latency buckets (seconds): from a fast local read to the request timeout and beyond.
LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_LATENCY_BUCKETS_NS = [round(b * 1e9) for b in LATENCY_BUCKETS_S]


class NodeCollector(Collector):
    def __init__(self, runtime: NodeRuntime, http_connections: Callable[[], int]) -> None:
        self.runtime = runtime
        self.http_connections = http_connections

    def collect(self) -> Iterator[Metric]:
        runtime = self.runtime
        core, transport = runtime.core, runtime.transport
        if core is None or transport is None:
            return
        now_ms = runtime.clock.now_ms()
        yield from self._requests()
        yield from _counters(
            (
                (
                    "read_repairs",
                    "Stale or missing replicas repaired after a read this node coordinated.",
                    core.stats.read_repairs,
                ),
                (
                    "hints_created",
                    "Writes stored on this node as a fallback, with a hint naming the owner.",
                    core.stats.hinted_writes,
                ),
                ("hints_delivered", "Hinted writes this node handed to their owner.", core.stats.hints_delivered),
                (
                    "handoff_partitions",
                    "Partitions this node finished receiving by ownership handoff.",
                    core.stats.transfers_completed,
                ),
                ("handoff_keys", "Keys received by ownership handoff.", core.stats.handoff_keys),
                ("handoff_bytes", "Bytes of objects received by ownership handoff.", core.stats.handoff_bytes),
                ("aae_exchanges", "Anti-entropy exchanges this node started.", core.aae.stats.exchanges),
                ("aae_keys_repaired", "Keys anti-entropy found different and repaired.", core.aae.stats.keys_repaired),
                ("background_admitted", "Background steps the controller admitted.", core.controller.admitted),
                (
                    "background_deferred",
                    "Background steps the controller deferred for want of tokens.",
                    core.controller.deferred,
                ),
                ("peer_frames_dropped", "Frames to peers dropped on a full queue.", transport.dropped_frames),
                (
                    "peer_auth_failures",
                    "Peers that failed the handshake's proof or a frame's MAC.",
                    transport.auth_failures,
                ),
            )
        )
        yield from _speculation(core.stats)
        hints = GaugeMetricFamily("dynastore_hints_pending", "Hinted writes held here, waiting for their owner.")
        hints.add_metric([], core.hints_pending)
        yield hints
        receiving = GaugeMetricFamily(
            "dynastore_handoff_partitions_receiving", "Partitions this node is to receive in the current ring change."
        )
        receiving.add_metric([], len(core.transfer_progress()) if core.cluster.ring.next_owners is not None else 0)
        yield receiving
        yield from self._members(now_ms)
        yield from self._storage()
        yield from self._connections()
        yield from self._background(now_ms)
        info = GaugeMetricFamily(
            "dynastore_node_info", "The node's name and version (always 1).", labels=["node", "version"]
        )
        info.add_metric([runtime.config.name, __version__], 1)
        yield info
        uptime = GaugeMetricFamily("dynastore_uptime_seconds", "Seconds since the node process started.")
        uptime.add_metric([], time.time() - runtime.started_at)
        yield uptime

    def _requests(self) -> Iterator[Metric]:
        metrics = self.runtime.metrics
        latency = HistogramMetricFamily(
            "dynastore_request_duration_seconds",
            "Request latency: as coordinator, from a client's request to its answer; as replica, from a "
            "replica request's arrival to its reply (after the write is durable).",
            labels=["op", "role"],
        )
        for op in OPS:
            for role in ROLES:
                histogram = metrics.latency[(op, role)]
                counts = histogram.count_at_or_below(_LATENCY_BUCKETS_NS)
                buckets = [(f"{b:g}", c) for b, c in zip(LATENCY_BUCKETS_S, counts, strict=True)]
                buckets.append(("+Inf", histogram.total))
                latency.add_metric([op, role], buckets, histogram.sum_ns / 1e9)
        yield latency
        requests = CounterMetricFamily(
            "dynastore_requests", "Client requests this node coordinated, by how they ended.", labels=["op", "outcome"]
        )
        for (op, outcome), count in sorted(metrics.outcomes.items()):
            requests.add_metric([op, outcome], count)
        yield requests

    def _members(self, now_ms: int) -> Iterator[Metric]:
        core = self.runtime.core
        assert core is not None
        detector = core.detector
        phi = GaugeMetricFamily(
            "dynastore_peer_phi", "Phi-accrual suspicion of each peer (down above the threshold).", labels=["peer"]
        )
        up = GaugeMetricFamily(
            "dynastore_peer_up", "Whether this node judges each peer up (1) or down (0).", labels=["peer"]
        )
        by_state = dict.fromkeys(STATUSES, 0)
        for member in core.cluster.members:
            by_state[member.status] = by_state.get(member.status, 0) + 1
            if member.name == core.name or member.status == "removed":
                continue
            phi.add_metric([member.name], detector.phi(member.name, now_ms))
            up.add_metric([member.name], 1 if detector.is_up(member.name, now_ms) else 0)
        yield phi
        yield up
        members = GaugeMetricFamily(
            "dynastore_members", "Cluster members by state, as this node knows them.", labels=["state"]
        )
        for state, count in by_state.items():
            members.add_metric([state], count)
        yield members
        ring = GaugeMetricFamily("dynastore_ring_version", "The version of the ring this node holds.")
        ring.add_metric([], core.cluster.ring.version)
        yield ring
        owned = GaugeMetricFamily("dynastore_ring_partitions_owned", "Partitions this node owns.")
        owned.add_metric([], core.ring.counts().get(core.name, 0))
        yield owned
        transition = GaugeMetricFamily("dynastore_ring_transition", "Whether a ring change is under way (1) or not.")
        transition.add_metric([], 1 if core.cluster.ring.next_owners is not None else 0)
        yield transition

    def _storage(self) -> Iterator[Metric]:
        core = self.runtime.core
        assert core is not None
        space = core.space
        if space is None:
            return
        for name, help_text, value in (
            ("used_bytes", "Bytes the storage engine's data takes.", space.used_bytes),
            ("free_bytes", "Bytes the engine may still fill: reusable room in its files plus disk.", space.free_bytes),
            ("file_bytes", "Bytes of the engine's files (LMDB: the part of its map in use).", space.file_bytes),
            ("map_size_bytes", "The size the engine's file may grow to (LMDB's map size).", space.file_bytes_max),
        ):
            if value is not None:
                family = GaugeMetricFamily(f"dynastore_storage_{name}", help_text)
                family.add_metric([], value)
                yield family
        full = GaugeMetricFamily("dynastore_storage_full", "Whether the node refuses writes for want of disk (1).")
        full.add_metric([], 1 if core.space_full else 0)
        yield full

    def _connections(self) -> Iterator[Metric]:
        transport = self.runtime.transport
        assert transport is not None
        http = GaugeMetricFamily("dynastore_http_connections", "Open client HTTP connections.")
        http.add_metric([], self.http_connections())
        yield http
        peers = GaugeMetricFamily(
            "dynastore_peer_connections", "Open connections between nodes, by direction.", labels=["direction"]
        )
        peers.add_metric(["inbound"], len(transport.inbound))
        peers.add_metric(["outbound"], sum(1 for link in transport.links.values() if link.protocol is not None))
        yield peers

    def _background(self, now_ms: int) -> Iterator[Metric]:
        core = self.runtime.core
        assert core is not None
        controller = core.controller
        rate = GaugeMetricFamily(
            "dynastore_background_rate_per_second",
            "Background steps (repair, handoff, hints) the controller admits per second.",
        )
        rate.add_metric([], controller.rate_per_s)
        yield rate
        limit = GaugeMetricFamily(
            "dynastore_background_latency_limit_seconds",
            "The foreground p99 above which the controller slows background work.",
        )
        limit.add_metric([], controller.limit_ms(now_ms) / 1000)
        yield limit


def _speculation(stats: Stats) -> Iterator[Metric]:
    """Speculative retry of reads (core/speculative.py): how often it holds replicas back, asks them
    later anyway (by why) and saves their reads."""
    yield from _counters(
        (
            (
                "speculative_reads",
                "Reads this node coordinated that asked R replicas first and held the others back.",
                stats.speculative_reads,
            ),
            (
                "speculative_replicas_unasked",
                "Replicas held back by a speculative read and never asked (replica reads saved).",
                stats.speculative_unasked,
            ),
        )
    )
    sends = CounterMetricFamily(
        "dynastore_speculative_sends",
        "Held-back replicas a read asked after all: its delay passed (timer), a replica answered "
        "not-found, or one was unreachable (failure).",
        labels=["reason"],
    )
    for reason, count in stats.speculative_sends.items():
        sends.add_metric([reason], count)
    yield sends


def _counters(rows: tuple[tuple[str, str, int], ...]) -> Iterator[Metric]:
    for name, help_text, value in rows:
        family = CounterMetricFamily(f"dynastore_{name}", help_text)
        family.add_metric([], value)
        yield family


class NodeMetrics:
    """The node's registry; `render()` is the body of a scrape."""

    def __init__(self, runtime: NodeRuntime, http_connections: Callable[[], int]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(NodeCollector(runtime, http_connections))

    def render(self) -> bytes:
        return generate_latest(self.registry)
