"""The latency histogram: percentiles within 0.1% of the true ones, exact merges, and a lossless JSON form."""

from __future__ import annotations

import math
import random

import pytest

from dynastore.bench.ycsb_histogram import LatencyHistogram, bucket_bounds, bucket_of


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
    with pytest.raises(ValueError, match="do not add up"):
        LatencyHistogram.from_json({**data, "total": 5})


def test_an_empty_histogram_reports_zeros_and_negative_durations_count_as_zero() -> None:
    """Nothing recorded reads as zeros (not an error); a negative duration (a clock step) is clamped to 0."""
    empty = LatencyHistogram()
    assert empty.percentile(99.9) == 0
    assert empty.summary_ms()["p99.9"] == 0.0 and empty.summary_ms()["mean"] == 0.0
    empty.record(-5)
    assert empty.max_ns == 0 and empty.total == 1
