"""Latency histograms: HDR-style, log-linear buckets, mergeable, recorded in O(1).

A value (nanoseconds) lands in a bucket whose width is at most 1/2^(bits-1) of the value: with the
default 11 sub-bucket bits (the YCSB driver's) that is 1/1024, so any percentile read back is within
0.1 % of a recorded value, however many samples are recorded: memory grows with the number of
distinct buckets touched (a few thousand), never with the number of samples. That is what lets a run
keep every sample of p99.9 and lets driver processes send their histograms to the parent to be added
up exactly. A node's request latencies use fewer bits (NODE_SUB_BUCKET_BITS: within 1.6 %), so a
histogram touches a few hundred buckets and reading one (for `/stats` or a Prometheus scrape) costs
tens of microseconds.

Bucket layout (as in HdrHistogram): values below 2^bits have a bucket each; above, each power of two
is cut into 2^(bits-1) equal sub-buckets. A percentile is reported as the highest value its bucket can
hold, so the error is always upward (a reported p99 is never better than the truth).

`WindowedHistogram` keeps the last minute (or any window) as a ring of per-interval histograms and
their running sum: a sample is added to the current interval and to the sum, and an interval that
falls out of the window is subtracted from the sum, so reading the window never merges or sorts
samples.

This module must stay pure: no clock, no I/O; callers time requests and pass `now` in.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

SUB_BUCKET_BITS = 11
# A node's request latencies: buckets at most 1/64 of their value wide.
NODE_SUB_BUCKET_BITS = 7
SUB_BUCKET_BITS_MIN = 2
SUB_BUCKET_BITS_MAX = 16
# A week in nanoseconds: far beyond any request timeout, and it keeps the bucket index small.
VALUE_MAX_NS = 7 * 24 * 3600 * 10**9

PERCENTILES = (50.0, 95.0, 99.0, 99.9)


def bucket_of(value: int, bits: int = SUB_BUCKET_BITS) -> int:
    """The bucket index of a non-negative value."""
    if value < 1 << bits:
        return value
    shift = value.bit_length() - bits
    return (shift << (bits - 1)) + (value >> shift)


def bucket_bounds(index: int, bits: int = SUB_BUCKET_BITS) -> tuple[int, int]:
    """The lowest and highest value that fall into bucket `index` (inclusive)."""
    if index < 1 << bits:
        return index, index
    half = 1 << (bits - 1)
    shift = index // half - 1
    mantissa = index - shift * half
    return mantissa << shift, ((mantissa + 1) << shift) - 1


@dataclass(slots=True)
class LatencyHistogram:
    """Counts of durations in nanoseconds, plus the exact count, sum, minimum and maximum."""

    counts: dict[int, int] = field(default_factory=dict)
    total: int = 0
    sum_ns: int = 0
    min_ns: int = 0
    max_ns: int = 0
    sub_bucket_bits: int = SUB_BUCKET_BITS

    def __post_init__(self) -> None:
        if not SUB_BUCKET_BITS_MIN <= self.sub_bucket_bits <= SUB_BUCKET_BITS_MAX:
            raise ValueError(
                f"sub_bucket_bits must be within [{SUB_BUCKET_BITS_MIN}, {SUB_BUCKET_BITS_MAX}], "
                f"not {self.sub_bucket_bits}"
            )

    def record(self, value_ns: int) -> None:
        # Clamped rather than refused: a clock step must not crash a benchmark run or a node.
        value_ns = min(max(value_ns, 0), VALUE_MAX_NS)
        index = bucket_of(value_ns, self.sub_bucket_bits)
        self.counts[index] = self.counts.get(index, 0) + 1
        if self.total == 0 or value_ns < self.min_ns:
            self.min_ns = value_ns
        if value_ns > self.max_ns:
            self.max_ns = value_ns
        self.total += 1
        self.sum_ns += value_ns

    def merge(self, other: LatencyHistogram) -> None:
        """Add every sample of `other` to this histogram (exactly: buckets are the same everywhere)."""
        self._check_layout(other)
        if other.total == 0:
            return
        for index, count in other.counts.items():
            self.counts[index] = self.counts.get(index, 0) + count
        self.min_ns = other.min_ns if self.total == 0 else min(self.min_ns, other.min_ns)
        self.max_ns = max(self.max_ns, other.max_ns)
        self.total += other.total
        self.sum_ns += other.sum_ns

    def subtract(self, other: LatencyHistogram) -> None:
        """Take away the samples of `other`, which were all merged into this one before. The minimum
        and maximum cannot be taken away: they stay those of every sample ever added (a window keeps
        its own; see WindowedHistogram)."""
        self._check_layout(other)
        counts = self.counts
        for index, count in other.counts.items():
            left = counts[index] - count
            assert left >= 0, (index, left)
            if left:
                counts[index] = left
            else:
                del counts[index]
        self.total -= other.total
        self.sum_ns -= other.sum_ns
        assert self.total >= 0 and self.sum_ns >= 0, (self.total, self.sum_ns)
        if self.total == 0:
            self.min_ns = self.max_ns = 0

    def _check_layout(self, other: LatencyHistogram) -> None:
        if other.sub_bucket_bits != self.sub_bucket_bits:
            raise ValueError(f"cannot combine histograms of {other.sub_bucket_bits} and {self.sub_bucket_bits} bits")

    def count_at_or_below(self, bounds_ns: Iterable[int]) -> list[int]:
        """How many samples are at or below each bound (ascending), as a Prometheus histogram's
        cumulative buckets count them. A bucket counts under a bound when its highest value is at or
        below it, so a bound that cuts a bucket counts that bucket under the next bound up: an error of
        at most one bucket width, the histogram's precision."""
        bits = self.sub_bucket_bits
        limits = [bucket_of(min(max(b, 0), VALUE_MAX_NS), bits) for b in bounds_ns]
        # The bucket holding a bound counts under it only when the bound is that bucket's highest value.
        cut = [i if bucket_bounds(i, bits)[1] <= b else i - 1 for i, b in zip(limits, bounds_ns, strict=True)]
        own = [0] * (len(cut) + 1)
        for index, count in self.counts.items():
            own[bisect.bisect_left(cut, index)] += count
        return list(itertools.accumulate(own[:-1]))

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
                out[current[0]] = min(bucket_bounds(index, self.sub_bucket_bits)[1], self.max_ns)
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
            "sub_bucket_bits": self.sub_bucket_bits,
            "total": self.total,
            "sum_ns": self.sum_ns,
            "min_ns": self.min_ns,
            "max_ns": self.max_ns,
            "counts": sorted(self.counts.items()),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LatencyHistogram:
        bits = data.get("sub_bucket_bits")
        if not isinstance(bits, int) or not SUB_BUCKET_BITS_MIN <= bits <= SUB_BUCKET_BITS_MAX:
            raise ValueError(f"histogram has {bits} sub-bucket bits, not a number within [2, 16]")
        counts = {int(index): int(count) for index, count in data["counts"]}
        if sum(counts.values()) != data["total"]:
            raise ValueError("histogram counts do not add up to its total")
        total, sum_ns = int(data["total"]), int(data["sum_ns"])
        return cls(counts, total, sum_ns, int(data["min_ns"]), int(data["max_ns"]), bits)


class WindowedHistogram:
    """The samples of the last `window_s` seconds (to within one interval), readable in one pass.

    A ring of `intervals` histograms, each covering window_s / intervals seconds, and their running
    sum. Recording adds to the current interval and to the sum (O(1)); when time moves past an
    interval, the oldest is subtracted from the sum and reused, once per interval whatever the traffic.
    The window read back covers between window_s - interval_s and window_s seconds of samples.
    """

    __slots__ = ("_epoch", "_ring", "_sum", "bits", "interval_s", "intervals")

    def __init__(self, window_s: float = 60.0, intervals: int = 12, bits: int = NODE_SUB_BUCKET_BITS) -> None:
        if not window_s > 0 or intervals < 1:
            raise ValueError(f"a window needs a positive length and at least one interval, not {window_s}/{intervals}")
        self.bits = bits
        self.intervals = intervals
        self.interval_s = window_s / intervals
        # The number of the interval the newest slot of the ring covers (time // interval_s).
        self._epoch: int | None = None
        self._ring = [LatencyHistogram(sub_bucket_bits=bits) for _ in range(intervals)]
        self._sum = LatencyHistogram(sub_bucket_bits=bits)

    def _advance(self, now_s: float) -> LatencyHistogram:
        """The interval `now_s` falls in, after dropping those that have left the window."""
        epoch = int(now_s // self.interval_s)
        last = self._epoch
        if last is None:
            self._epoch = epoch
        elif epoch > last:
            # At most `intervals` slots are cleared, however long the window was idle.
            for step in range(last + 1, min(epoch, last + self.intervals) + 1):
                slot = self._ring[step % self.intervals]
                if slot.total:
                    self._sum.subtract(slot)
                    self._ring[step % self.intervals] = LatencyHistogram(sub_bucket_bits=self.bits)
            self._epoch = epoch
        # A time before the newest interval (a caller's clock is monotonic, so only by rounding) counts
        # in the newest interval.
        assert self._epoch is not None
        return self._ring[self._epoch % self.intervals]

    def record(self, now_s: float, value_ns: int) -> None:
        self._advance(now_s).record(value_ns)
        self._sum.record(value_ns)

    def snapshot(self, now_s: float) -> LatencyHistogram:
        """The window's samples as one histogram (shared: read it, do not change it). Its minimum and
        maximum are those of the intervals still in the window."""
        self._advance(now_s)
        window = self._sum
        live = [slot for slot in self._ring if slot.total]
        window.min_ns = min((slot.min_ns for slot in live), default=0)
        window.max_ns = max((slot.max_ns for slot in live), default=0)
        return window


class WindowedCounter:
    """How many events happened in the last `window_s` seconds (to within one interval): Riak's
    one-minute counters. A ring of per-interval counts and their running sum, like WindowedHistogram;
    `add` and `count` cost O(1) (an interval that leaves the window is subtracted once)."""

    __slots__ = ("_epoch", "_ring", "_sum", "interval_s", "intervals")

    def __init__(self, window_s: float = 60.0, intervals: int = 12) -> None:
        if not window_s > 0 or intervals < 1:
            raise ValueError(f"a window needs a positive length and at least one interval, not {window_s}/{intervals}")
        self.intervals = intervals
        self.interval_s = window_s / intervals
        self._epoch: int | None = None
        self._ring = [0] * intervals
        self._sum = 0

    def _advance(self, now_s: float) -> int:
        epoch = int(now_s // self.interval_s)
        last = self._epoch
        if last is None:
            self._epoch = last = epoch
        elif epoch > last:
            for step in range(last + 1, min(epoch, last + self.intervals) + 1):
                self._sum -= self._ring[step % self.intervals]
                self._ring[step % self.intervals] = 0
            self._epoch = last = epoch
        return last % self.intervals

    def add(self, now_s: float, count: int = 1) -> None:
        if count < 0:
            raise ValueError(f"a counter only grows, not by {count}")
        self._ring[self._advance(now_s)] += count
        self._sum += count

    def count(self, now_s: float) -> int:
        self._advance(now_s)
        return self._sum
