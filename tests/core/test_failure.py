"""Phi accrual failure detection (core/failure.py) against the definition, not against its own output.

Hayashibara et al. define phi(t) = -log10(P_later(t - t_last)), where P_later(x) is the probability
that the next heartbeat comes more than x after the last one, under a normal distribution fitted to
the recent inter-arrival times. As in Akka's detector, the mean is moved later by an acceptable pause
and the standard deviation has a floor. So with mean m, floor s_min, pause p and population standard
deviation s of the intervals, phi(x) = -log10(Q((x - m - p) / max(s, s_min))), Q the standard normal
tail. Expected values below come from `statistics.NormalDist` and from the textbook table of Q.
"""

from __future__ import annotations

import itertools
import math
import statistics

import pytest

from dynastore.core.failure import FailureDetector, PhiAccrual
from dynastore.settings import Settings
from dynastore.sim.cluster import SimCluster

# The standard normal tail Q(y) = P(Z > y) at y = 0..6, from the table (Abramowitz & Stegun 26.2).
Q_TABLE = (
    0.5,
    0.158655253931457,
    0.0227501319481792,
    0.00134989803163009,
    3.16712418331200e-05,
    2.86651571879194e-07,
    9.86587645037698e-10,
)
T0_MS = 50_000


def reference_phi(intervals: list[float], elapsed_ms: float, min_std_dev_ms: float, pause_ms: float) -> float:
    """phi by the definition, with the Python standard library's normal distribution."""
    std = max(statistics.pstdev(intervals), min_std_dev_ms)
    later = 1.0 - statistics.NormalDist(statistics.fmean(intervals) + pause_ms, std).cdf(elapsed_ms)
    return -math.log10(later)


def beating(intervals: list[int], min_std_dev_ms: float = 200, pause_ms: float = 0, window: int = 1000) -> PhiAccrual:
    """A detector that heard a heartbeat at T0_MS and then after each of `intervals`; its first interval
    estimate is the first interval, so its window holds exactly `intervals` (seed included)."""
    det = PhiAccrual(window, min_std_dev_ms, pause_ms, float(intervals[0]))
    now = T0_MS
    det.heartbeat(now)
    for interval in intervals[1:]:
        now += interval
        det.heartbeat(now)
    return det


def last_ms(det: PhiAccrual) -> int:
    assert det.last_ms is not None
    return det.last_ms


def test_phi_after_regular_heartbeats_is_the_normal_tail_and_grows_with_silence() -> None:
    """Heartbeats every 1000 ms (no spread, so the 200 ms floor is the deviation): phi at 1000 + 200k ms
    of silence is -log10 Q(k) from the table, and it rises with every further millisecond of silence."""
    det = beating([1000] * 20)
    last = last_ms(det)
    for k, tail in enumerate(Q_TABLE):
        assert det.phi(last + 1000 + 200 * k) == pytest.approx(-math.log10(tail), rel=1e-9), k
    assert det.phi(last + 1000) == pytest.approx(math.log10(2), rel=1e-12)
    silence = [det.phi(last + ms) for ms in range(0, 5001, 25)]
    assert all(a < b for a, b in itertools.pairwise(silence)), "phi must grow with silence"
    assert silence[-1] > 80  # 20 deviations late: Q(20) is about 3e-89


def test_phi_stays_low_for_heartbeats_that_arrive_on_time() -> None:
    """Jittery but on-time heartbeats (900, 1000, 1100 ms apart): at every arrival, and just before
    it, phi is what the definition says and well under 1, far from any threshold."""
    pattern = [900, 1000, 1100]
    intervals = [pattern[i % 3] for i in range(300)]
    det = PhiAccrual(100, 200, 0, 1000.0)
    now = T0_MS
    det.heartbeat(now)
    seen = [1000.0]
    for interval in intervals:
        window = seen[-100:]
        assert det.phi(now + interval - 1) == pytest.approx(reference_phi(window, interval - 1, 200, 0), rel=1e-9)
        assert det.phi(now + interval - 1) < 0.6
        now += interval
        det.heartbeat(now)
        seen.append(float(interval))
        assert det.phi(now) < 1e-5


def test_the_standard_deviation_is_the_intervals_own_unless_below_phi_min_std_dev_ms() -> None:
    """Intervals alternating 800 and 1200 ms have a population deviation of 200 ms: with a floor of 100
    or 200 that deviation is used (phi at 1400 ms is -log10 Q(2)); a floor of 400 replaces it (Q(1));
    without any spread, the floor alone decides."""
    alternating = [800, 1200] * 10
    for floor in (100, 200):
        det = beating(alternating, min_std_dev_ms=floor)
        assert det.phi(last_ms(det) + 1400) == pytest.approx(-math.log10(Q_TABLE[2]), rel=1e-9), floor
    det = beating(alternating, min_std_dev_ms=400)
    assert det.phi(last_ms(det) + 1400) == pytest.approx(-math.log10(Q_TABLE[1]), rel=1e-9)
    for floor, k in ((100, 3), (300, 1)):
        regular = beating([1000] * 10, min_std_dev_ms=floor)
        assert regular.phi(last_ms(regular) + 1300) == pytest.approx(-math.log10(Q_TABLE[k]), rel=1e-9)


def test_an_acceptable_pause_moves_the_whole_curve_later_by_phi_acceptable_pause_ms() -> None:
    """With a 1000 ms acceptable pause, 2000 ms of silence after regular 1000 ms heartbeats is as
    likely as the mean itself (phi = log10 2); without it, the same silence is five deviations late."""
    paused = beating([1000] * 20, pause_ms=1000)
    strict = beating([1000] * 20, pause_ms=0)
    assert paused.phi(last_ms(paused) + 2000) == pytest.approx(math.log10(2), rel=1e-12)
    assert strict.phi(last_ms(strict) + 2000) == pytest.approx(-math.log10(Q_TABLE[5]), rel=1e-9)
    for silence in range(1000, 4001, 100):
        assert paused.phi(last_ms(paused) + silence) == pytest.approx(strict.phi(last_ms(strict) + silence - 1000))


def test_only_the_last_window_count_intervals_are_fitted() -> None:
    """After slow heartbeats (3000 ms) then ten fast ones (1000 ms) with a window of 10, the slow past
    is forgotten: phi is that of regular 1000 ms heartbeats."""
    det = beating([3000] * 10 + [1000] * 10, window=10)
    assert det.phi(last_ms(det) + 1600) == pytest.approx(-math.log10(Q_TABLE[3]), rel=1e-9)
    mixed = [3000.0] * 10 + [1000.0] * 5
    kept = beating([3000] * 10 + [1000] * 5, window=10)
    expected = reference_phi(mixed[-10:], 2500, 200, 0)
    assert kept.phi(last_ms(kept) + 2500) == pytest.approx(expected, rel=1e-9)


def test_after_one_heartbeat_phi_uses_the_expected_interval() -> None:
    """One heartbeat only: the window holds the expected interval (the heartbeat interval), so phi is
    already meaningful; a peer never heard from has phi 0."""
    det = PhiAccrual(100, 200, 0, 1000.0)
    assert det.phi(T0_MS) == 0.0
    det.heartbeat(T0_MS)
    assert det.phi(T0_MS + 1400) == pytest.approx(-math.log10(Q_TABLE[2]), rel=1e-9)


def test_phi_is_capped_and_never_drops_as_silence_grows_past_what_a_float_can_hold() -> None:
    """Far out in the tail the probability underflows to 0; phi then holds at its cap, never falls."""
    det = beating([1000] * 10)
    values = [det.phi(last_ms(det) + ms) for ms in range(1000, 100_001, 500)]
    assert all(a <= b for a, b in itertools.pairwise(values))
    assert values[-1] == 1000.0 and all(math.isfinite(v) for v in values)


def detector(threshold: float = 8.0, pause_ms: float = 0.0) -> FailureDetector:
    return FailureDetector(threshold, 100, 200.0, pause_ms, 1000.0)


def test_a_peer_is_judged_down_once_phi_passes_the_threshold_and_up_at_its_next_heartbeat() -> None:
    """Regular 1000 ms heartbeats, floor 200 ms, threshold 8: phi reaches 8 where Q(y) = 1e-8, at
    y = 5.612, i.e. after 2122.4 ms of silence. Down is reported once; the next heartbeat brings the
    peer back up."""
    fd = detector()
    for i in range(30):
        fd.heard_from("p", T0_MS + 1000 * i)
    last = T0_MS + 29_000
    boundary_ms = 1000 + 200 * -statistics.NormalDist().inv_cdf(1e-8)
    assert boundary_ms == pytest.approx(2122.4, abs=0.1)
    assert fd.is_up("p", last + 2122) and fd.update(["p"], last + 2122) == []
    assert fd.phi("p", last + 2122) < 8 < fd.phi("p", last + 2123)
    assert not fd.is_up("p", last + 2123)
    assert fd.update(["p"], last + 2123) == ["p"]
    assert fd.update(["p"], last + 5000) == [], "a peer already down is not reported again"
    assert fd.down_since == {"p": last + 2123}
    assert fd.heard_from("p", last + 6000) is True
    assert fd.is_up("p", last + 6000) and fd.down_since == {}
    assert fd.update(["p"], last + 6500) == []
    assert fd.heard_from("p", last + 7000) is False


def test_the_threshold_and_the_pause_decide_when_a_peer_is_down() -> None:
    """Threshold 1 (Q(y) = 0.1, y = 1.2816) judges the same silence sooner than threshold 8; a 1000 ms
    acceptable pause delays either by exactly 1000 ms."""
    for threshold, pause in ((1.0, 0.0), (8.0, 0.0), (1.0, 1000.0), (8.0, 1000.0)):
        fd = detector(threshold, pause)
        for i in range(20):
            fd.heard_from("p", T0_MS + 1000 * i)
        last = T0_MS + 19_000
        boundary_ms = 1000 + pause + 200 * -statistics.NormalDist().inv_cdf(10**-threshold)
        assert fd.is_up("p", last + math.floor(boundary_ms) - 1), (threshold, pause)
        assert not fd.is_up("p", last + math.ceil(boundary_ms) + 1), (threshold, pause)


def test_a_refused_connection_is_down_at_once_and_any_message_brings_the_peer_back() -> None:
    """A failed connection needs no phi: the peer is down at once, and up at its next message."""
    fd = detector()
    fd.heard_from("p", T0_MS)
    fd.connection_failed("p", T0_MS + 10)
    assert not fd.is_up("p", T0_MS + 10) and fd.update(["p"], T0_MS + 10) == ["p"]
    assert fd.heard_from("p", T0_MS + 20) is True and fd.is_up("p", T0_MS + 20)


def test_the_node_detector_takes_its_parameters_from_the_phi_settings() -> None:
    """Settings' phi_* and heartbeat_interval_ms are what the detector of every node uses: with the
    defaults (threshold 8, floor 200 ms, pause 1000 ms, heartbeat 1000 ms), regular heartbeats are
    judged down after 1000 + 1000 + 5.612 * 200 ms of silence."""
    s = Settings(ring_size=16, phi_threshold=8.0, phi_min_std_dev_ms=200, phi_acceptable_pause_ms=1000)
    core = SimCluster(1, s).core("n0")
    fd = core.detector
    assert (fd.threshold, fd.min_std_dev_ms, fd.acceptable_pause_ms, fd.heartbeat_interval_ms) == (8.0, 200, 1000, 1000)
    assert fd.window_count == s.phi_window_count
    for i in range(20):
        fd.heard_from("p", T0_MS + 1000 * i)
    last = T0_MS + 19_000
    assert fd.is_up("p", last + 3122) and not fd.is_up("p", last + 3123)


def test_a_peer_only_found_unreachable_comes_back_without_a_report_that_it_was_down() -> None:
    """peer_up is reported only for a peer that was judged down (and so reported down)."""
    fd = detector()
    fd.heard_from("p", T0_MS)
    fd.connection_failed("p", T0_MS + 10)
    assert fd.heard_from("p", T0_MS + 20) is True and fd.recovered_after_ms == -1
    fd.connection_failed("p", T0_MS + 30)
    assert fd.update(["p"], T0_MS + 40) == ["p"]
    assert fd.heard_from("p", T0_MS + 540) is True and fd.recovered_after_ms == 500


def test_phi_asked_between_heartbeats_follows_every_new_interval_and_the_window_sliding() -> None:
    # phi is asked for every peer on every request, between heartbeats; its fit of the window must
    # follow each interval that arrives and each that leaves the window.
    det = PhiAccrual(4, 50.0, 0.0, 100.0)
    now = T0_MS
    det.heartbeat(now)
    window = [100.0]
    for interval in (100, 300, 50, 700, 20, 20, 900, 5):
        for probe in (10, 150, 400):
            want = reference_phi(window, probe, 50.0, 0.0)
            assert det.phi(now + probe) == pytest.approx(want, rel=1e-6)
        now += interval
        det.heartbeat(now)
        window = [*window, float(interval)][-4:]
    assert list(det.intervals) == window
    assert det.phi(now + 150) == pytest.approx(reference_phi(window, 150, 50.0, 0.0), rel=1e-6)
