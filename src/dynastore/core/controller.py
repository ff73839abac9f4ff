"""Admission of background work (anti-entropy, tree rebuilds, ownership handoff, hint delivery), paced
by foreground latency.

Background steps take tokens from a bucket refilled at `rate_per_s`. Once a second the controller
judges the p99 of the foreground requests that finished since its last judgement (or, when traffic is
too light for a p99 of one second, of those in the recent window since its last slowdown): above the
limit it halves the rate; otherwise, if background work used at least half of its rate, it raises the
rate (by a half plus one up to the rate it last halved to, by a tenth plus one beyond), and if it did
not, it lets the rate decay towards what was used (like TCP's congestion window, which is halved on
loss and not grown while the sender leaves it unfilled), always within [rate_min, rate_max]. So a
repair that starts after a quiet spell starts slowly and speeds up while clients do not suffer. A step
that finds no token is deferred and counted; it runs on a later tick.

Each slowdown is judged on requests that finished after the previous one, so one slow spell halves the
rate once, not once a second for as long as it stays in the window.

The limit is the target, unless the foreground is slower than the target without any help from
background work: seconds spent at the floor rate show what clients see when background work is all but
stopped, and while those are recent (a minute) and no second since has met the target with background
work running, the limit is their median plus a quarter. Then repair
still makes progress on a cluster that is slow for reasons of its own, and adds at most a quarter to
its p99, instead of being starved at the floor while clients gain nothing from it.

The p99 shown on status pages (`/stats`, `/admin/status`) is read from a histogram of the window
(dynastore.histogram, within 1.6 %), so a status call never sorts the window's samples; the
judgements above still use the samples themselves.

Pure: time arrives as `now_ms`; latencies are reported by the shell.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field

from dynastore.histogram import NODE_SUB_BUCKET_BITS, WindowedHistogram

SAMPLES_MAX = 50_000
# The status p99's window is kept in this many intervals (it covers 90-100 % of window_ms).
STATUS_INTERVALS = 10
ADJUST_EVERY_MS = 1000
# Fewer requests than this in a second make that second's p99 mostly noise.
INTERVAL_SAMPLES_MIN = 20
# How much background work may add to the p99 clients see with it all but stopped.
HEADROOM = 0.25
QUIET_MEMORY_MS = 60_000
QUIET_SECONDS_MIN = 3
QUIET_SECONDS_MAX = 60


def _p99(values: list[float]) -> float:
    if not values:
        return 0.0
    values.sort()
    return values[min(len(values) - 1, int(0.99 * len(values)))]


@dataclass
class BackgroundController:
    target_ms: float
    window_ms: int
    rate_min_per_s: float = 2.0
    rate_max_per_s: float = 2000.0
    rate_per_s: float = 200.0
    samples: deque[tuple[int, float]] = field(default_factory=deque)
    tokens: float = 0.0
    last_refill_ms: int | None = None
    last_adjust_ms: int | None = None
    last_slowdown_ms: int | None = None
    # (when, p99) of the seconds spent at the floor rate: the foreground's own latency.
    quiet: deque[tuple[int, float]] = field(default_factory=deque)
    deferred: int = 0
    admitted: int = 0
    _admitted_at_adjust: int = 0
    # The rate after the last slowdown: below it the rate grows quickly, above it gently (TCP's ssthresh).
    threshold_per_s: float = float("inf")
    slowdowns: int = 0
    recent: WindowedHistogram = field(init=False)

    def __post_init__(self) -> None:
        self.recent = WindowedHistogram(self.window_ms / 1000, STATUS_INTERVALS, NODE_SUB_BUCKET_BITS)

    def observe(self, now_ms: int, latency_ms: float) -> None:
        self.recent.record(now_ms / 1000, int(latency_ms * 1_000_000))
        self.samples.append((now_ms, latency_ms))
        if len(self.samples) > SAMPLES_MAX:
            self.samples.popleft()

    def _expire(self, now_ms: int) -> None:
        while self.samples and self.samples[0][0] < now_ms - self.window_ms:
            self.samples.popleft()
        while self.quiet and (self.quiet[0][0] < now_ms - QUIET_MEMORY_MS or len(self.quiet) > QUIET_SECONDS_MAX):
            self.quiet.popleft()

    def p99(self, now_ms: int) -> float:
        """The p99 of foreground latency over the recent window, in ms (for status pages)."""
        return round(self.recent.snapshot(now_ms / 1000).percentile(99.0) / 1_000_000, 3)

    def limit_ms(self, now_ms: int) -> float:
        """The p99 above which background work slows down: the target, or a quarter above what clients
        see with background work at its floor, whichever is higher."""
        self._expire(now_ms)
        if len(self.quiet) < QUIET_SECONDS_MIN:
            return self.target_ms
        return max(self.target_ms, statistics.median(p for _, p in self.quiet) * (1 + HEADROOM))

    def adjust(self, now_ms: int) -> None:
        if self.last_adjust_ms is not None and now_ms - self.last_adjust_ms < ADJUST_EVERY_MS:
            return
        since = self.last_adjust_ms
        self.last_adjust_ms = now_ms
        self._expire(now_ms)
        at_floor = self.rate_per_s <= self.rate_min_per_s
        fresh = [latency for t, latency in self.samples if since is None or t > since]
        one_second = len(fresh) >= INTERVAL_SAMPLES_MIN
        if not one_second:
            after = self.last_slowdown_ms
            fresh = [latency for t, latency in self.samples if after is None or t > after]
        p99 = _p99(fresh)
        if since is not None and len(fresh) >= INTERVAL_SAMPLES_MIN:
            if at_floor:
                self.quiet.append((now_ms, p99))
                if len(self.quiet) == QUIET_SECONDS_MIN:
                    # The limit has just risen: where clients suffered under the old one says nothing.
                    self.threshold_per_s = float("inf")
            elif one_second and p99 <= self.target_ms:
                # The cluster meets the target with background work running: the load that was slow
                # on its own has gone, and so has the reason for a higher limit.
                self.quiet.clear()
        used_per_s = (self.admitted - self._admitted_at_adjust) * 1000 / max(1, now_ms - (since or now_ms))
        self._admitted_at_adjust = self.admitted
        if p99 > self.limit_ms(now_ms):
            if not at_floor:
                # (At the floor there is nothing to halve; the requests since the floor was reached keep
                # counting, so that under light traffic they add up to a p99 worth recording.)
                self.rate_per_s = max(self.rate_min_per_s, self.rate_per_s / 2)
                self.threshold_per_s = self.rate_per_s
                self.slowdowns += 1
                self.last_slowdown_ms = now_ms
        elif since is not None and used_per_s < self.rate_per_s / 2:
            # Background work used less than half its rate: that rate was never shown to be harmless,
            # so it is not raised, and it decays towards what was used (as TCP does with a window the
            # sender did not fill), lest a repair that starts after a quiet spell burst at full speed.
            self.rate_per_s = max(self.rate_min_per_s, min(self.rate_per_s, 2 * used_per_s + self.rate_min_per_s))
        else:
            # Quickly up to where clients last suffered, halved; gently beyond it.
            growth = 1.5 if self.rate_per_s < self.threshold_per_s else 1.1
            self.rate_per_s = min(self.rate_max_per_s, self.rate_per_s * growth + 1)

    def admit(self, now_ms: int, cost: float = 1.0) -> bool:
        """Take `cost` tokens for one background step; False means: defer it."""
        self.adjust(now_ms)
        if self.last_refill_ms is None:
            self.last_refill_ms = now_ms
            self.tokens = self.rate_per_s
        elapsed_s = max(0, now_ms - self.last_refill_ms) / 1000
        self.last_refill_ms = now_ms
        # At most one second's worth of tokens accumulates, so an idle spell does not allow a burst.
        self.tokens = min(self.rate_per_s, self.tokens + elapsed_s * self.rate_per_s)
        if self.tokens >= cost:
            self.tokens -= cost
            self.admitted += 1
            return True
        self.deferred += 1
        return False
