"""The shell's request metrics: outcomes counted by op, replica latency timed from a request's arrival
to its reply, the table of unanswered replica requests bounded, and Riak's one-minute /stats fields."""

from __future__ import annotations

from dynastore.core.messages import Failure, NotFound, Ok, ReplicaGet
from dynastore.runtime import metrics
from dynastore.runtime.metrics import RequestMetrics, outcome_of


def test_outcomes_are_ok_not_found_or_the_failure_kind() -> None:
    """The outcome label is one of a fixed set of words, never a free-form reason."""
    assert outcome_of(Ok()) == "ok"
    assert outcome_of(NotFound(None)) == "not_found"
    assert outcome_of(Failure("timeout", "r=2 not met within 5000 ms")) == "timeout"


def test_coordinated_requests_feed_the_lifetime_histograms_and_the_one_minute_fields() -> None:
    """A delete counts as a delete in /metrics and as a put in Riak's node_puts (the put FSM)."""
    m = RequestMetrics()
    m.coordinated("get", "ok", 2_000_000, 100.0)
    m.coordinated("get", "not_found", 4_000_000, 101.0)
    m.coordinated("delete", "ok", 3_000_000, 102.0)
    assert m.latency[("get", "coordinator")].total == 2 and m.latency[("delete", "coordinator")].total == 1
    assert m.outcomes == {("get", "ok"): 1, ("get", "not_found"): 1, ("delete", "ok"): 1}
    stats = m.stats(103.0)
    assert stats["node_gets"] == 2 and stats["node_puts"] == 1
    assert stats["node_get_fsm_time_mean"] == 3000 and 4000 <= stats["node_get_fsm_time_100"] <= 4000 * 1.016
    assert m.stats(200.0)["node_gets"] == 0


def test_replica_latency_runs_from_arrival_to_reply_and_the_waiting_table_is_bounded() -> None:
    """A reply to an unknown request is ignored; past REPLICA_INFLIGHT_MAX the oldest entry goes."""
    m = RequestMetrics()
    m.replica_request("n1", ReplicaGet(7, b"b", b"k"), 1_000)
    m.replica_replied("n2", 7, 5_000)
    m.replica_replied("n1", 7, 501_000)
    histogram = m.latency[("get", "replica")]
    assert histogram.total == 1 and histogram.sum_ns == 500_000
    for req in range(metrics.REPLICA_INFLIGHT_MAX + 10):
        m.replica_request("n1", ReplicaGet(req, b"b", b"k"), req)
    assert len(m._replica_started) == metrics.REPLICA_INFLIGHT_MAX
    m.replica_replied("n1", 0, 10)
    assert histogram.total == 1


def test_read_repairs_per_minute_follow_the_core_running_count() -> None:
    """Sampled once a second from the core's counter: what it grew by in the last minute."""
    m = RequestMetrics()
    m.observe_read_repairs(0, 0.0)
    m.observe_read_repairs(3, 1.0)
    m.observe_read_repairs(5, 30.0)
    assert m.stats(31.0)["read_repairs"] == 5
    assert m.stats(62.0)["read_repairs"] == 2
    assert m.stats(95.0)["read_repairs"] == 0


def test_a_request_refused_before_the_core_counts_by_outcome_but_is_not_timed() -> None:
    """An overload refusal shows in requests_total and in no latency histogram."""
    m = RequestMetrics()
    m.refused("put", "overload")
    assert m.outcomes == {("put", "overload"): 1}
    assert m.latency[("put", "coordinator")].total == 0
