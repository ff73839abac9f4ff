"""Local failure detection: phi accrual over heartbeat arrivals, plus what requests tell us.

Each node judges every peer on its own (there is no shared verdict). For a peer we keep the recent
intervals between messages received from it; phi is -log10 of the probability that the next message
is still to come this late, under a normal distribution fitted to those intervals (with a floor on
the standard deviation, and an allowance for an acceptable pause). A peer is down when phi passes the
threshold, or at once when a connection to it is refused or reset: a failed request is evidence too.
Any message from a peer brings it back up.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

PHI_MAX = 1000.0


@dataclass
class PhiAccrual:
    window_count: int
    min_std_dev_ms: float
    acceptable_pause_ms: float
    first_interval_ms: float
    intervals: deque[float] = field(default_factory=deque)
    last_ms: int | None = None

    def heartbeat(self, now_ms: int) -> None:
        if self.last_ms is not None:
            interval = now_ms - self.last_ms
            if interval > 0:
                self.intervals.append(float(interval))
                while len(self.intervals) > self.window_count:
                    self.intervals.popleft()
        else:
            # Seed the window with the expected interval so that phi is meaningful from the start.
            self.intervals.append(self.first_interval_ms)
        self.last_ms = now_ms if self.last_ms is None else max(self.last_ms, now_ms)

    def phi(self, now_ms: int) -> float:
        if self.last_ms is None or not self.intervals:
            return 0.0
        elapsed = now_ms - self.last_ms
        mean = sum(self.intervals) / len(self.intervals)
        variance = sum((x - mean) ** 2 for x in self.intervals) / len(self.intervals)
        std = max(math.sqrt(variance), self.min_std_dev_ms)
        y = (elapsed - mean - self.acceptable_pause_ms) / std
        later = 0.5 * math.erfc(y / math.sqrt(2.0))
        if later <= 0.0:
            return PHI_MAX
        return min(PHI_MAX, -math.log10(later))


@dataclass
class FailureDetector:
    threshold: float
    window_count: int
    min_std_dev_ms: float
    acceptable_pause_ms: float
    heartbeat_interval_ms: float
    peers: dict[str, PhiAccrual] = field(default_factory=dict)
    # Peers whose connections failed, with when; cleared by the next message from them.
    unreachable: dict[str, int] = field(default_factory=dict)
    # When each peer was last judged down, for reporting how long detection took.
    down_since: dict[str, int] = field(default_factory=dict)
    # Bumped whenever a judgement may change other than by time passing (callers cache on it).
    version: int = 0
    # How long the last peer that `heard_from` brought back up had been judged down (-1: it had not
    # been judged down, only found unreachable since the last judgement).
    recovered_after_ms: int = -1

    def _detector(self, peer: str) -> PhiAccrual:
        det = self.peers.get(peer)
        if det is None:
            det = self.peers[peer] = PhiAccrual(
                self.window_count, self.min_std_dev_ms, self.acceptable_pause_ms, self.heartbeat_interval_ms
            )
        return det

    def heard_from(self, peer: str, now_ms: int) -> bool:
        """Record a message from `peer`; True when this brings a peer judged down back up."""
        was_down = peer in self.unreachable or peer in self.down_since
        if was_down:
            self.version += 1
            # -1: it was only unreachable, never judged down (so never reported down either).
            since = self.down_since.get(peer)
            self.recovered_after_ms = -1 if since is None else max(0, now_ms - since)
        self._detector(peer).heartbeat(now_ms)
        self.unreachable.pop(peer, None)
        self.down_since.pop(peer, None)
        return was_down

    def connection_failed(self, peer: str, now_ms: int) -> None:
        if peer not in self.unreachable:
            self.version += 1
        self.unreachable.setdefault(peer, now_ms)

    def phi(self, peer: str, now_ms: int) -> float:
        det = self.peers.get(peer)
        return 0.0 if det is None else det.phi(now_ms)

    def is_up(self, peer: str, now_ms: int) -> bool:
        if peer in self.unreachable:
            return False
        return self.phi(peer, now_ms) < self.threshold

    def update(self, peers: list[str], now_ms: int) -> list[str]:
        """Re-judge every peer; returns the peers newly judged down."""
        newly: list[str] = []
        for peer in peers:
            if not self.is_up(peer, now_ms) and peer not in self.down_since:
                self.down_since[peer] = now_ms
                newly.append(peer)
        return newly

    def forget(self, peer: str) -> None:
        self.version += 1
        self.peers.pop(peer, None)
        self.unreachable.pop(peer, None)
        self.down_since.pop(peer, None)
