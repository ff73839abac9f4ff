"""The speculative_retry property's values and the replica-read latency its percentiles come from
(core/speculative.py), and the bucket-property checks that hold it."""

from __future__ import annotations

import pytest

from dynastore.core import bucketprops, buckettypes, speculative
from dynastore.core.speculative import DELAY_REFRESH_MS, SAMPLES_MIN, Policy, PolicyError, ReplicaLatency
from dynastore.settings import Settings


@pytest.mark.parametrize(
    ("raw", "policy"),
    [
        ("none", Policy()),
        (" NONE ", Policy()),
        ("99p", Policy(percentile=99.0)),
        ("95P", Policy(percentile=95.0)),
        ("99.9p", Policy(percentile=99.9)),
        ("99.99p", Policy(percentile=99.99)),
        ("1p", Policy(percentile=1.0)),
        ("99percentile", Policy(percentile=99.0)),
        ("20ms", Policy(delay_ms=20)),
        ("1ms", Policy(delay_ms=1)),
        ("60000ms", Policy(delay_ms=60_000)),
    ],
)
def test_accepted_values_parse_to_their_policy(raw: str, policy: Policy) -> None:
    """none, a percentile and a fixed delay are read whatever their case, as Cassandra writes them."""
    assert speculative.parse(raw) == policy
    assert policy.holds_back == (raw.strip().lower() != "none")


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "always",
        "0p",
        "100p",
        "99.999p",
        "-5p",
        "p",
        "0ms",
        "60001ms",
        "20",
        "20 ms",
        "20s",
        "1e3ms",
        "²ms",
        "99p" * 20,
        None,
        20,
        99.0,
        True,
        ["99p"],
    ],
)
def test_every_other_value_is_refused_with_the_accepted_forms_named(raw: object) -> None:
    """Anything else (always, out-of-range percentiles and delays, numbers, other units) is refused."""
    with pytest.raises(PolicyError, match="none, a percentile such as 99p"):
        speculative.parse(raw)
    assert speculative.problem(raw) is not None


def test_the_default_is_none_and_the_bucket_checks_refuse_a_bad_value() -> None:
    """A bucket nobody configured asks every replica at once; a complete or stored set of props with a
    bad speculative_retry is refused by both checks, a good one passes them."""
    settings = Settings()
    props = bucketprops.defaults(settings)
    assert props["speculative_retry"] == "none"
    assert bucketprops.problem(props, settings) is None
    assert bucketprops.problem({**props, "speculative_retry": "95p"}, settings) is None
    assert "speculative_retry" in (bucketprops.problem({**props, "speculative_retry": "fast"}, settings) or "")
    assert bucketprops.stored_problem({"speculative_retry": "15ms"}) is None
    assert bucketprops.stored_problem({"speculative_retry": 15}) is not None
    assert buckettypes.check_props({"speculative_retry": "99p", "datatype": "set"}) is None
    assert buckettypes.check_props({"speculative_retry": "always"}) is not None


def test_a_fixed_delay_needs_no_samples_and_none_never_waits() -> None:
    latency = ReplicaLatency()
    assert latency.delay_ms(Policy(delay_ms=7), 0) == 7
    assert latency.delay_ms(Policy(), 0) is None


def test_a_percentile_asks_at_once_until_the_window_holds_enough_samples() -> None:
    """A cold node knows no latency to wait for: below SAMPLES_MIN samples a percentile gives no delay."""
    latency = ReplicaLatency()
    now_ms = 1_000_000
    for _ in range(SAMPLES_MIN - 1):
        latency.record(4, now_ms)
    assert latency.delay_ms(Policy(percentile=99.0), now_ms) is None
    latency.record(4, now_ms)
    # The answer of the last DELAY_REFRESH_MS stands until the clock moves into the next slot.
    assert latency.delay_ms(Policy(percentile=99.0), now_ms) is None
    assert latency.delay_ms(Policy(percentile=99.0), now_ms + DELAY_REFRESH_MS) == 4


def test_the_delay_is_the_percentile_of_recent_latency_rounded_up_and_at_least_a_millisecond() -> None:
    """99 samples of 2 ms and one of 50 ms: p99 is 2 ms, p99.5 the slow one; all-zero samples (replies
    within the same millisecond) still give a 1 ms delay, never 0."""
    latency = ReplicaLatency()
    now_ms = 5_000_000
    for _ in range(198):
        latency.record(2, now_ms)
    latency.record(50, now_ms)
    latency.record(50, now_ms)
    assert latency.delay_ms(Policy(percentile=99.0), now_ms) == 2
    assert latency.delay_ms(Policy(percentile=99.5), now_ms) == 50
    cold = ReplicaLatency()
    for _ in range(SAMPLES_MIN):
        cold.record(0, now_ms)
    assert cold.delay_ms(Policy(percentile=99.0), now_ms) == 1


def test_old_samples_leave_the_window() -> None:
    """A minute after slow replies stopped, the delay follows the fast ones again, and once the window
    is empty a percentile asks at once."""
    latency = ReplicaLatency()
    start_ms = 10_000_000
    for _ in range(SAMPLES_MIN):
        latency.record(40, start_ms)
    assert latency.delay_ms(Policy(percentile=95.0), start_ms) == 40
    later_ms = start_ms + 30_000
    for _ in range(20 * SAMPLES_MIN):
        latency.record(3, later_ms)
    assert latency.delay_ms(Policy(percentile=95.0), later_ms) == 3
    assert latency.delay_ms(Policy(percentile=99.9), later_ms) == 40
    assert latency.delay_ms(Policy(percentile=99.9), start_ms + 70_000) == 3
    assert latency.delay_ms(Policy(percentile=99.9), start_ms + 200_000) is None
    assert latency.samples(start_ms + 200_000) == 0
