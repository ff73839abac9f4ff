"""Speculative retry of reads: the bucket property `speculative_retry`, and the replica-read latency
a percentile policy waits for.

Theory of operation
-------------------
Without it (`none`, the default) a get asks all N replicas at once and answers after R. With it, the
coordinator asks only the R replicas it needs first (max(r, pr): itself first when it holds a copy,
then the others in preference-list order) and holds the rest back. It asks the held replicas:
- when the delay the policy gives has passed and the first ones have not all answered: the
  percentile (`99p`, `95p`, ...) of this node's recent replica-read latency, or a fixed `Nms`;
- at once, without waiting for the delay, when an answer is already missing or cannot settle the
  read: a replica asked first is found unreachable, or answers not-found (a not-found is only the
  answer once every replica has spoken, quorum.py);
- never, when the first ones answer in time: then the read is done with R replies.
A read whose targets include a fallback (sloppy quorum: a primary is down) or whose R is its N asks
every target at once, as `none` does. pr and r keep their meaning: the tally (quorum.py) counts
exactly what it did, over the replicas asked.

Read repair: a replica that was not asked is not repaired by this read (read repair only repairs
what it saw); anti-entropy (antientropy.py) covers it. That is the trade: the third replica is read
less often, for less load on every node.

The latency is that of ReplicaGet to its ReplicaGetReply as the coordinator sees it, in whole
milliseconds of `now_ms`, kept in a windowed histogram (dynastore.histogram: the last minute, in a
few hundred buckets at most, whatever the traffic) whose values are those milliseconds themselves,
not nanoseconds: every value below 128 ms has a bucket of its own, so a percentile reads back exact.
Until the window holds SAMPLES_MIN samples a percentile policy asks every replica at once: a cold
node knows no latency to wait for, and those reads fill the window. The percentile is read at most
once per DELAY_REFRESH_MS of clock per policy.

`always` (Cassandra: one replica more than the consistency level needs, at once) is not offered:
asking R+1 at once is `none` at N=3, and for a larger N no more useful than a short `Nms`.

Pure: strings, samples and `now_ms` in, delays out. It never sends anything (coordination.py does).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from dynastore.histogram import NODE_SUB_BUCKET_BITS, WindowedHistogram

NONE = "none"
DEFAULT = NONE
# A fixed delay longer than this is refused (a request times out long before).
DELAY_MS_MAX = 60_000
PERCENTILE_MIN = 1.0
PERCENTILE_MAX = 99.99
# Samples the window must hold before a percentile is trusted.
SAMPLES_MIN = 100
WINDOW_S = 60.0
WINDOW_INTERVALS = 12
DELAY_REFRESH_MS = 100
# Distinct percentiles whose delay is cached (buckets use a handful; more only costs a recompute).
CACHED_PERCENTILES_MAX = 16

_PERCENTILE = re.compile(r"([0-9]{1,2}(?:\.[0-9]{1,2})?)(?:p|percentile)")
_FIXED = re.compile(r"([0-9]{1,5})ms")
_FORMS = "none, a percentile such as 99p or 95p (1 to 99.99), or a delay such as 20ms (1 to 60000)"


class PolicyError(ValueError):
    """A speculative_retry value is not acceptable (the message fits an HTTP 400)."""


@dataclass(frozen=True, slots=True)
class Policy:
    """When to ask the replicas a read held back: `percentile` of recent replica-read latency, or after
    `delay_ms`; neither: ask every replica at once (`none`)."""

    percentile: float | None = None
    delay_ms: int | None = None

    @property
    def holds_back(self) -> bool:
        return self.percentile is not None or self.delay_ms is not None


NO_HOLD = Policy()


def parse(raw: object) -> Policy:
    """A speculative_retry value as a client or a stored property gives it (case and spaces aside)."""
    if not isinstance(raw, str) or len(raw) > 32:
        raise PolicyError(f"speculative_retry must be {_FORMS}; got {raw!r}")
    value = raw.strip().lower()
    if value == NONE:
        return NO_HOLD
    if (found := _PERCENTILE.fullmatch(value)) is not None:
        percentile = float(found.group(1))
        if PERCENTILE_MIN <= percentile <= PERCENTILE_MAX:
            return Policy(percentile=percentile)
    elif (found := _FIXED.fullmatch(value)) is not None:
        delay_ms = int(found.group(1))
        if 1 <= delay_ms <= DELAY_MS_MAX:
            return Policy(delay_ms=delay_ms)
    raise PolicyError(f"speculative_retry must be {_FORMS}; got {raw!r}")


def problem(raw: object) -> str | None:
    try:
        parse(raw)
    except PolicyError as exc:
        return str(exc)
    return None


class ReplicaLatency:
    """This node's recent replica-read latencies, and the delay a policy gives from them."""

    __slots__ = ("_cache", "_window")

    def __init__(self) -> None:
        self._window = WindowedHistogram(WINDOW_S, WINDOW_INTERVALS, NODE_SUB_BUCKET_BITS)
        # percentile -> (clock slot it was computed in, delay in ms or None while cold)
        self._cache: dict[float, tuple[int, int | None]] = {}

    def record(self, latency_ms: int, now_ms: int) -> None:
        self._window.record(now_ms / 1000, max(0, latency_ms))

    def delay_ms(self, policy: Policy, now_ms: int) -> int | None:
        """How long to wait before asking the held replicas; None: ask them at once (no policy, or a
        percentile with too few samples to go by)."""
        if policy.delay_ms is not None:
            return policy.delay_ms
        percentile = policy.percentile
        if percentile is None:
            return None
        slot = now_ms // DELAY_REFRESH_MS
        cached = self._cache.get(percentile)
        if cached is not None and cached[0] == slot:
            return cached[1]
        window = self._window.snapshot(now_ms / 1000)
        delay: int | None = None
        if window.total >= SAMPLES_MIN:
            delay = min(DELAY_MS_MAX, max(1, window.percentile(percentile)))
        if len(self._cache) >= CACHED_PERCENTILES_MAX:
            self._cache.clear()
        self._cache[percentile] = (slot, delay)
        return delay

    def percentile_ms(self, percentile: float, now_ms: int) -> float:
        """A percentile of the window in milliseconds (0 when empty): what `/stats` shows."""
        return float(self._window.snapshot(now_ms / 1000).percentile(percentile))

    def samples(self, now_ms: int) -> int:
        return self._window.snapshot(now_ms / 1000).total
