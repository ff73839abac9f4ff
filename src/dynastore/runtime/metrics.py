"""What the shell measures about requests: latency histograms and outcome counts, as coordinator and as
replica, over the node's life (for `/metrics`) and over the last minute (for `/stats`).

Recording costs O(1) per request: a histogram bucket and a dict entry are incremented, nothing is
sorted or allocated per sample. Reading is a pass over a few hundred buckets (dynastore.histogram).

The core keeps its own counters as plain ints (nodebase.Stats); only what needs a clock (latency, and
the one-minute counters Riak's `/stats` shows) lives here. This module never reads a clock itself:
the runtime passes `now_s` (monotonic seconds) and durations in nanoseconds.
"""

from __future__ import annotations

from dynastore.core.messages import ClientResponse, Failure, NotFound, ReplicaGet, ReplicaPut
from dynastore.histogram import NODE_SUB_BUCKET_BITS, LatencyHistogram, WindowedCounter, WindowedHistogram

OPS = ("get", "put", "delete")
ROLES = ("coordinator", "replica")
# Riak's `/stats` latency fields: node_get_fsm_time_* and node_put_fsm_time_* (a delete is a put of a
# tombstone, as in Riak, whose delete runs the put FSM).
FSM_OPS = ("get", "put")
WINDOW_S = 60.0
WINDOW_INTERVALS = 12
# Replica requests waiting for their reply to leave, timed from their arrival. A request the core drops
# without a reply (from a stranger, for a partition being torn down) stays until pushed out by newer ones.
REPLICA_INFLIGHT_MAX = 50_000


def outcome_of(response: ClientResponse) -> str:
    """A request's outcome as a label: ok, not_found, or the failure's kind (a fixed set of words)."""
    if isinstance(response, Failure):
        return response.kind
    if isinstance(response, NotFound):
        return "not_found"
    return "ok"


class RequestMetrics:
    def __init__(self) -> None:
        self.latency: dict[tuple[str, str], LatencyHistogram] = {
            (op, role): LatencyHistogram(sub_bucket_bits=NODE_SUB_BUCKET_BITS) for op in OPS for role in ROLES
        }
        self.window: dict[str, WindowedHistogram] = {
            op: WindowedHistogram(WINDOW_S, WINDOW_INTERVALS) for op in FSM_OPS
        }
        # (op, outcome) -> requests this node coordinated (took from a client) and how they ended.
        self.outcomes: dict[tuple[str, str], int] = {}
        self.read_repairs_window = WindowedCounter(WINDOW_S, WINDOW_INTERVALS)
        self._read_repairs_seen = 0
        # (source node, request id) -> (op, arrival in ns) of replica requests not yet answered.
        self._replica_started: dict[tuple[str, int], tuple[str, int]] = {}

    def coordinated(self, op: str, outcome: str, elapsed_ns: int, now_s: float) -> None:
        """A client request this node took ended (op is get, put or delete)."""
        self.latency[(op, "coordinator")].record(elapsed_ns)
        self.window["get" if op == "get" else "put"].record(now_s, elapsed_ns)
        key = (op, outcome)
        self.outcomes[key] = self.outcomes.get(key, 0) + 1

    def refused(self, op: str, outcome: str) -> None:
        """A client request turned away before the core saw it (too many in flight): counted, not timed."""
        key = (op, outcome)
        self.outcomes[key] = self.outcomes.get(key, 0) + 1

    def replica_request(self, src: str, msg: ReplicaGet | ReplicaPut, now_ns: int) -> None:
        if isinstance(msg, ReplicaGet):
            op = "get"
        else:
            op = "delete" if all(content.deleted for _, content in msg.obj.siblings) else "put"
        started = self._replica_started
        if len(started) >= REPLICA_INFLIGHT_MAX:
            # The oldest entry: dicts keep insertion order.
            del started[next(iter(started))]
        started[(src, msg.req)] = (op, now_ns)

    def replica_replied(self, dst: str, req: int, now_ns: int) -> None:
        found = self._replica_started.pop((dst, req), None)
        if found is not None:
            op, started_ns = found
            self.latency[(op, "replica")].record(now_ns - started_ns)

    def observe_read_repairs(self, total: int, now_s: float) -> None:
        """Note the core's running count of read repairs (called once a second or more often), so the
        one-minute count holds the repairs made in the last minute."""
        grown = total - self._read_repairs_seen
        if grown > 0:
            self.read_repairs_window.add(now_s, grown)
        self._read_repairs_seen = total

    def stats(self, now_s: float) -> dict[str, int]:
        """Riak's one-minute `/stats` fields: latency in microseconds and counts of the last minute."""
        out: dict[str, int] = {}
        for op in FSM_OPS:
            window = self.window[op].snapshot(now_s)
            found = window.percentiles((50.0, 95.0, 99.0, 100.0))
            us = 1000
            out[f"node_{op}_fsm_time_mean"] = window.sum_ns // window.total // us if window.total else 0
            out[f"node_{op}_fsm_time_median"] = found[50.0] // us
            out[f"node_{op}_fsm_time_95"] = found[95.0] // us
            out[f"node_{op}_fsm_time_99"] = found[99.0] // us
            out[f"node_{op}_fsm_time_100"] = found[100.0] // us
            out[f"node_{op}s"] = window.total
        out["read_repairs"] = self.read_repairs_window.count(now_s)
        return out
