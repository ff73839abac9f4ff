"""The latency histograms: percentiles within 0.1% of the true ones, exact merges and subtractions, a
lossless JSON form, Prometheus cumulative buckets, and the one-minute windows of a node."""

from __future__ import annotations

import math
import random

import pytest

from dynastore.histogram import (
    NODE_SUB_BUCKET_BITS,
    LatencyHistogram,
    WindowedCounter,
    WindowedHistogram,
    bucket_bounds,
    bucket_of,
)


def _true_percentile(sorted_values: list[int], percent: float) -> int:
    """The nearest-rank percentile: the smallest sample with at least `percent` of samples at or below it."""
    rank = max(1, math.ceil(round(len(sorted_values) * percent / 100, 6)))
    return sorted_values[rank - 1]


def test_every_value_falls_in_a_bucket_no_wider_than_a_thousandth_of_it() -> None:
    """Buckets tile the values: each value lies inside its bucket, which is at most value/1024 wide."""
    rng = random.Random(2)
    values = [*range(5000), *(rng.randrange(1, 10**12) for _ in range(5000))]
    for value in values:
        low, high = bucket_bounds(bucket_of(value))
        assert low <= value <= high
        assert high - low + 1 <= max(1, value / 1024)
    # Neighbouring buckets meet without a gap or an overlap.
    for index in range(1, 40_000, 7):
        assert bucket_bounds(index)[0] == bucket_bounds(index - 1)[1] + 1


def test_percentiles_of_a_uniform_distribution_are_within_a_thousandth() -> None:
    """Recording 1..100,000 once each gives p50 = 50,000 and p99.9 = 99,900, to within 0.1%, never below."""
    histogram = LatencyHistogram()
    for value in range(1, 100_001):
        histogram.record(value)
    found = histogram.percentiles((50.0, 95.0, 99.0, 99.9, 100.0))
    for percent, value in found.items():
        truth = round(percent * 1000)
        assert truth <= value <= truth * 1.001, (percent, value)
    assert histogram.min_ns == 1 and histogram.max_ns == 100_000
    assert histogram.mean_ns == pytest.approx(50_000.5)


def test_percentiles_of_a_skewed_distribution_match_the_samples_sorted() -> None:
    """For log-normal latencies (a long tail, as real ones have) every percentile is within 0.1% of the truth."""
    rng = random.Random(9)
    values = [int(rng.lognormvariate(14, 1.0)) for _ in range(50_000)]
    histogram = LatencyHistogram()
    for value in values:
        histogram.record(value)
    ordered = sorted(values)
    for percent in (1.0, 50.0, 90.0, 99.0, 99.9, 99.99):
        truth = _true_percentile(ordered, percent)
        assert truth <= histogram.percentile(percent) <= truth * 1.001 + 1, percent


def test_small_values_are_recorded_exactly() -> None:
    """Below 2048 every value has a bucket of its own, so percentiles of small values are exact."""
    histogram = LatencyHistogram()
    for value in (5, 5, 7, 2047):
        histogram.record(value)
    assert histogram.percentile(50) == 5
    assert histogram.percentile(75) == 7
    assert histogram.percentile(100) == 2047


def test_merging_histograms_equals_recording_every_sample_in_one() -> None:
    """Driver processes' histograms add up exactly: merged counts, total, sum, min and max are the combined ones."""
    rng = random.Random(4)
    parts = [[rng.randrange(10**3, 10**9) for _ in range(3000)] for _ in range(3)]
    merged, whole = LatencyHistogram(), LatencyHistogram()
    for part in parts:
        histogram = LatencyHistogram()
        for value in part:
            histogram.record(value)
            whole.record(value)
        merged.merge(histogram)
    merged.merge(LatencyHistogram())
    assert merged == whole


def test_a_histogram_survives_its_json_form_and_a_corrupt_one_is_refused() -> None:
    """to_json and from_json round-trip exactly; counts that do not add up to the total are an error."""
    histogram = LatencyHistogram()
    for value in (10, 10_000, 10_000_000, 3):
        histogram.record(value)
    data = histogram.to_json()
    assert LatencyHistogram.from_json(data) == histogram
    coarse = LatencyHistogram(sub_bucket_bits=7)
    for value in (10, 10_000, 10_000_000, 3):
        coarse.record(value)
    assert LatencyHistogram.from_json(coarse.to_json()) == coarse
    with pytest.raises(ValueError, match="do not add up"):
        LatencyHistogram.from_json({**data, "total": 5})


def test_an_empty_histogram_reports_zeros_and_negative_durations_count_as_zero() -> None:
    """Nothing recorded reads as zeros (not an error); a negative duration (a clock step) is clamped to 0."""
    empty = LatencyHistogram()
    assert empty.percentile(99.9) == 0
    assert empty.summary_ms()["p99.9"] == 0.0 and empty.summary_ms()["mean"] == 0.0
    empty.record(-5)
    assert empty.max_ns == 0 and empty.total == 1


def test_fewer_sub_bucket_bits_give_coarser_buckets_that_still_tile_the_values() -> None:
    """A node's histograms (7 bits) put each value in a bucket at most 1/64 of it wide, without gaps."""
    rng = random.Random(3)
    for value in [*range(300), *(rng.randrange(1, 10**11) for _ in range(3000))]:
        low, high = bucket_bounds(bucket_of(value, NODE_SUB_BUCKET_BITS), NODE_SUB_BUCKET_BITS)
        assert low <= value <= high and high - low + 1 <= max(1, value / 64)
    for index in range(1, 3000):
        assert bucket_bounds(index, 7)[0] == bucket_bounds(index - 1, 7)[1] + 1
    with pytest.raises(ValueError, match="sub_bucket_bits"):
        LatencyHistogram(sub_bucket_bits=40)
    with pytest.raises(ValueError, match="cannot combine"):
        LatencyHistogram().merge(LatencyHistogram(sub_bucket_bits=7))


def test_subtracting_a_merged_histogram_leaves_what_was_there_before() -> None:
    """merge then subtract is the identity on counts, total and sum; subtracting everything empties it."""
    rng = random.Random(5)
    a, b = LatencyHistogram(sub_bucket_bits=7), LatencyHistogram(sub_bucket_bits=7)
    for _ in range(500):
        a.record(rng.randrange(10**4, 10**8))
        b.record(rng.randrange(10**4, 10**8))
    whole = LatencyHistogram(sub_bucket_bits=7)
    whole.merge(a)
    whole.merge(b)
    whole.subtract(b)
    assert (whole.counts, whole.total, whole.sum_ns) == (a.counts, a.total, a.sum_ns)
    whole.subtract(a)
    assert whole.total == 0 and whole.counts == {} and whole.max_ns == 0


def test_cumulative_counts_at_bounds_match_counting_the_samples() -> None:
    """count_at_or_below (Prometheus' cumulative buckets) equals counting samples at or below each
    bound, except for samples within one bucket width below a bound, which may count under the next."""
    rng = random.Random(6)
    values = [int(rng.lognormvariate(15, 1.5)) for _ in range(20_000)]
    histogram = LatencyHistogram(sub_bucket_bits=7)
    for v in values:
        histogram.record(v)
    bounds = [10**5, 10**6, 5 * 10**6, 10**7, 10**8, 10**9]
    found = histogram.count_at_or_below(bounds)
    assert found == sorted(found)
    for bound, count in zip(bounds, found, strict=True):
        exact = sum(1 for v in values if v <= bound)
        slack = sum(1 for v in values if bound * (1 - 1 / 64) < v <= bound)
        assert exact - slack <= count <= exact, (bound, count, exact)
    # A bound that is a bucket's highest value cuts nothing: exact.
    edge = bucket_bounds(bucket_of(10**6, 7), 7)[1]
    assert histogram.count_at_or_below([edge]) == [sum(1 for v in values if v <= edge)]


def test_a_window_holds_the_last_minute_and_forgets_what_is_older() -> None:
    """Samples recorded 0-59 s ago are read back; each 5 s interval leaves the window once it is a
    minute old; after a long idle spell the window is empty; percentiles read are those of the window."""
    window = WindowedHistogram(60.0, 12)
    for second in range(60):
        window.record(1000.0 + second, (second + 1) * 1_000_000)
    snap = window.snapshot(1059.9)
    assert snap.total == 60 and snap.min_ns == 1_000_000 and snap.max_ns == 60_000_000
    assert 30_000_000 <= snap.percentile(50) <= 30_000_000 * 1.016
    # At 1060 s the interval [1000, 1005) has left: 55 samples, the smallest now 6 ms.
    snap = window.snapshot(1060.0)
    assert snap.total == 55 and snap.min_ns == 6_000_000
    window.record(1061.0, 5)
    assert window.snapshot(1061.0).min_ns == 5
    assert window.snapshot(1200.0).total == 0
    assert window.snapshot(1200.0).percentile(99) == 0
    window.record(1200.0, 7)
    assert window.snapshot(1200.0).total == 1


def test_a_windowed_counter_counts_events_of_the_last_minute() -> None:
    """Riak's one-minute counters: what was added in the last 55-60 s, nothing after an idle minute."""
    counter = WindowedCounter(60.0, 12)
    for second in range(60):
        counter.add(float(second), 2)
    assert counter.count(59.0) == 120
    # At 65 s the window is [10, 65): the intervals [0, 5) and [5, 10) have left it.
    assert counter.count(65.0) == 100
    assert counter.count(500.0) == 0
    with pytest.raises(ValueError):
        counter.add(500.0, -1)
