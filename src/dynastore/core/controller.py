"""Admission of background work (anti-entropy, tree rebuilds, ownership handoff, hint delivery), paced
by foreground latency.

Background steps take tokens from a bucket refilled at `rate_per_s`. Once a second the controller
looks at the p99 of foreground request latencies over the recent window: above the target it halves
the rate, otherwise it raises it by a quarter plus one (multiplicative decrease, gentle increase, like
TCP's congestion control), always within [rate_min, rate_max]. A step that finds no token is deferred
and counted; it runs on a later tick.

Pure: time arrives as `now_ms`; latencies are reported by the shell.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

SAMPLES_MAX = 50_000
ADJUST_EVERY_MS = 1000


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
    deferred: int = 0
    admitted: int = 0
    slowdowns: int = 0

    def observe(self, now_ms: int, latency_ms: float) -> None:
        self.samples.append((now_ms, latency_ms))
        if len(self.samples) > SAMPLES_MAX:
            self.samples.popleft()

    def p99(self, now_ms: int) -> float:
        while self.samples and self.samples[0][0] < now_ms - self.window_ms:
            self.samples.popleft()
        if not self.samples:
            return 0.0
        values = sorted(latency for _, latency in self.samples)
        return values[min(len(values) - 1, int(0.99 * len(values)))]

    def adjust(self, now_ms: int) -> None:
        if self.last_adjust_ms is not None and now_ms - self.last_adjust_ms < ADJUST_EVERY_MS:
            return
        self.last_adjust_ms = now_ms
        if self.p99(now_ms) > self.target_ms:
            self.rate_per_s = max(self.rate_min_per_s, self.rate_per_s / 2)
            self.slowdowns += 1
        else:
            self.rate_per_s = min(self.rate_max_per_s, self.rate_per_s * 1.25 + 1)

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
