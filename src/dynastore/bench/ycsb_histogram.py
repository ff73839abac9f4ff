"""Latency histograms for the YCSB driver: HDR-style, log-linear buckets, mergeable across processes.

A value (nanoseconds) lands in a bucket whose width is at most 1/1024 of the value, so any percentile
read back is within 0.1 % of a recorded value, however many samples are recorded: memory grows with
the number of distinct buckets touched (a few thousand), never with the number of samples. That is
what lets a run keep every sample of p99.9 (a thousand times more samples than the tail it reports)
and lets driver processes send their histograms to the parent to be added up exactly.

Bucket layout (as in HdrHistogram): values below 2^11 have a bucket each; above, each power of two
is cut into 1024 equal sub-buckets. A percentile is reported as the highest value its bucket can
hold, so the error is always upward (a reported p99 is never better than the truth).

This module must stay pure: no clock, no I/O; the driver times requests and records durations here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

SUB_BUCKET_BITS = 11
_SUB_BUCKETS = 1 << SUB_BUCKET_BITS
_HALF = _SUB_BUCKETS >> 1
# A week in nanoseconds: far beyond any request timeout, and it keeps the bucket index small.
VALUE_MAX_NS = 7 * 24 * 3600 * 10**9

PERCENTILES = (50.0, 95.0, 99.0, 99.9)


def bucket_of(value: int) -> int:
    """The bucket index of a non-negative value."""
    if value < _SUB_BUCKETS:
        return value
    shift = value.bit_length() - SUB_BUCKET_BITS
    return (shift << (SUB_BUCKET_BITS - 1)) + (value >> shift)


def bucket_bounds(index: int) -> tuple[int, int]:
    """The lowest and highest value that fall into bucket `index` (inclusive)."""
    if index < _SUB_BUCKETS:
        return index, index
    shift = index // _HALF - 1
    mantissa = index - shift * _HALF
    return mantissa << shift, ((mantissa + 1) << shift) - 1


@dataclass(slots=True)
class LatencyHistogram:
    """Counts of durations in nanoseconds, plus the exact count, sum, minimum and maximum."""

    counts: dict[int, int] = field(default_factory=dict)
    total: int = 0
    sum_ns: int = 0
    min_ns: int = 0
    max_ns: int = 0

    def record(self, value_ns: int) -> None:
        # Clamped rather than refused: a clock step must not crash a benchmark run.
        value_ns = min(max(value_ns, 0), VALUE_MAX_NS)
        index = bucket_of(value_ns)
        self.counts[index] = self.counts.get(index, 0) + 1
        if self.total == 0 or value_ns < self.min_ns:
            self.min_ns = value_ns
        if value_ns > self.max_ns:
            self.max_ns = value_ns
        self.total += 1
        self.sum_ns += value_ns

    def merge(self, other: LatencyHistogram) -> None:
        """Add every sample of `other` to this histogram (exactly: buckets are the same everywhere)."""
        if other.total == 0:
            return
        for index, count in other.counts.items():
            self.counts[index] = self.counts.get(index, 0) + count
        self.min_ns = other.min_ns if self.total == 0 else min(self.min_ns, other.min_ns)
        self.max_ns = max(self.max_ns, other.max_ns)
        self.total += other.total
        self.sum_ns += other.sum_ns

    @property
    def mean_ns(self) -> float:
        return self.sum_ns / self.total if self.total else math.nan

    def percentile(self, percent: float) -> int:
        """The value at or below which `percent` of the samples lie (the bucket's highest value,
        clamped to the recorded maximum); 0 for an empty histogram."""
        return self.percentiles((percent,))[percent]

    def percentiles(self, wanted: Iterable[float] = PERCENTILES) -> dict[float, int]:
        """Several percentiles in one pass over the buckets."""
        wanted = sorted(wanted)
        assert all(0.0 <= p <= 100.0 for p in wanted), wanted
        out: dict[float, int] = {}
        if self.total == 0:
            return dict.fromkeys(wanted, 0)
        # The 1-based rank of each sample sought. Rounded before the ceiling so that float noise
        # (1000 * 99.9 / 100 is 999.0000000000001) does not push a rank one sample too far.
        ranks = [(p, max(1, math.ceil(round(self.total * p / 100.0, 6)))) for p in wanted]
        seen = 0
        pending = iter(ranks)
        current = next(pending, None)
        for index in sorted(self.counts):
            seen += self.counts[index]
            while current is not None and seen >= current[1]:
                out[current[0]] = min(bucket_bounds(index)[1], self.max_ns)
                current = next(pending, None)
            if current is None:
                break
        return out

    def summary_ms(self) -> dict[str, float]:
        """mean, min, p50, p95, p99, p99.9 and max in milliseconds: what reports and results.json show."""
        ms = 1e-6
        found = self.percentiles()
        out = {"mean": self.mean_ns * ms if self.total else 0.0, "min": self.min_ns * ms}
        out.update({f"p{p:g}": found[p] * ms for p in PERCENTILES})
        out["max"] = self.max_ns * ms
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "sub_bucket_bits": SUB_BUCKET_BITS,
            "total": self.total,
            "sum_ns": self.sum_ns,
            "min_ns": self.min_ns,
            "max_ns": self.max_ns,
            "counts": sorted(self.counts.items()),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LatencyHistogram:
        if data.get("sub_bucket_bits") != SUB_BUCKET_BITS:
            raise ValueError(f"histogram has {data.get('sub_bucket_bits')} sub-bucket bits, not {SUB_BUCKET_BITS}")
        counts = {int(index): int(count) for index, count in data["counts"]}
        if sum(counts.values()) != data["total"]:
            raise ValueError("histogram counts do not add up to its total")
        return cls(counts, int(data["total"]), int(data["sum_ns"]), int(data["min_ns"]), int(data["max_ns"]))
