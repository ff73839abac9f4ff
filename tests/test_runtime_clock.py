"""The node's clock dates writes: nodes started at different moments on one machine must date two
writes made one after the other in that order (a bucket keeping one value keeps the newest)."""

from __future__ import annotations

import time

from dynastore.runtime.node import Clock


def test_clocks_started_at_different_moments_date_successive_events_in_order() -> None:
    """Twenty clocks started a fraction of a millisecond apart (as three node processes are): an event
    dated by one clock and then one dated by another are always in order, to the microsecond, and
    every clock stays within a millisecond of the wall clock."""
    clocks = []
    for i in range(20):
        clocks.append(Clock())
        deadline = time.perf_counter() + (i % 7) * 0.00013
        while time.perf_counter() < deadline:
            pass
    for _ in range(50):
        for first, second in zip(clocks, clocks[1:] + clocks[:1], strict=True):
            earlier = first.now_us()
            spin_until = time.perf_counter() + 0.00005
            while time.perf_counter() < spin_until:
                pass
            assert second.now_us() > earlier
    for clock in clocks:
        assert abs(clock.now_us() - time.time_ns() // 1000) < 1000
        assert clock.now_ms() == clock.now_us() // 1000 or clock.now_ms() == clock.now_us() // 1000 + 1
