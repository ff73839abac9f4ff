"""Hash trees find exactly the segments that differ; the background controller backs off under load."""

from __future__ import annotations

import statistics

from hypothesis import given, settings
from hypothesis import strategies as st

from dynastore.core import merkle
from dynastore.core.controller import BackgroundController
from dynastore.core.merkle import HashTree
from dynastore.core.objects import Content
from dynastore.core.versions import Context, Dot, Versioned, update

SEGMENTS = 256


def tree_of(entries: dict[bytes, bytes]) -> HashTree:
    tree = HashTree(SEGMENTS, fanout=8)
    for key, version in entries.items():
        tree.toggle(merkle.segment_of(key, SEGMENTS), merkle.key_hash(key, version))
    tree.ready = True
    return tree


def walk_differences(a: HashTree, b: HashTree) -> list[int]:
    """The exchange's descent: from the root, only into children of nodes that differ."""
    indexes = [0]
    for level in range(a.depth):
        diff = merkle.differing(indexes, a.hashes(level, indexes), b.hashes(level, indexes))
        if level == a.depth - 1:
            return diff
        indexes = [child for i in diff for child in a.children(level, i)]
    return []


entries = st.dictionaries(st.binary(min_size=1, max_size=12), st.binary(min_size=16, max_size=16), max_size=200)


@settings(max_examples=300, deadline=None)
@given(base=entries, changed=entries, removed=st.data())
def test_tree_descent_finds_exactly_the_segments_holding_differences(
    base: dict[bytes, bytes], changed: dict[bytes, bytes], removed: st.DataObject
) -> None:
    """Walking differing nodes top-down yields the segments of every key whose version differs, no more."""
    gone = removed.draw(st.sets(st.sampled_from(sorted(base)), max_size=5) if base else st.just(set()))
    other = {k: v for k, v in base.items() if k not in gone} | changed
    expected = sorted(
        {merkle.segment_of(k, SEGMENTS) for k in base.keys() | other.keys() if base.get(k) != other.get(k)}
    )
    found = sorted(walk_differences(tree_of(base), tree_of(other)))
    # A segment whose differences cancel out in XOR would be missed; with 128-bit hashes that never happens.
    assert found == expected


@settings(max_examples=200, deadline=None)
@given(base=entries, order=st.randoms())
def test_a_tree_updated_incrementally_equals_one_built_from_scratch(base: dict[bytes, bytes], order: object) -> None:
    """XOR-ing keys in and out in any order gives the same tree as building from the final set."""
    import random

    assert isinstance(order, random.Random)
    tree = HashTree(SEGMENTS, fanout=8)
    items = list(base.items())
    order.shuffle(items)
    for key, version in items:
        seg = merkle.segment_of(key, SEGMENTS)
        tree.toggle(seg, merkle.key_hash(key, b"old" * 5 + b"x"))
        tree.toggle(seg, merkle.key_hash(key, b"old" * 5 + b"x"))
        tree.toggle(seg, merkle.key_hash(key, version))
    assert tree.root() == tree_of(base).root()


def test_summaries_ignore_timestamps_and_merge_order() -> None:
    """Two replicas with the same versions agree on the summary whatever their clock timestamps."""
    a = update(None, Context(), Dot(b"n1#1", 1), Content(b"x"), now_ms=5)
    b = update(None, Context(), Dot(b"n1#1", 1), Content(b"x"), now_ms=99)
    assert merkle.summary(a) == merkle.summary(b)
    c = update(a, Context(), Dot(b"n2#1", 1), Content(b"y"), now_ms=6)
    d = update(None, Context(), Dot(b"n2#1", 1), Content(b"y"), now_ms=7)
    assert merkle.summary(c) != merkle.summary(a)
    assert merkle.summary(update(d, Context(), Dot(b"n1#1", 1), Content(b"x"), now_ms=8)) == merkle.summary(c)


def test_a_summary_covers_the_values_so_a_copy_changed_under_the_same_versions_differs() -> None:
    """Same clock, same dots, one byte of one value different (or its metadata): the summaries differ,
    so anti-entropy finds a copy whose bytes changed without a new version."""
    base = update(None, Context(), Dot(b"n1#1", 1), Content(b"value", "text/plain"), now_ms=5)
    flipped = Versioned(base.clock, ((Dot(b"n1#1", 1), Content(b"valuf", "text/plain")),))
    retyped = Versioned(base.clock, ((Dot(b"n1#1", 1), Content(b"value", "text/html")),))
    assert len({merkle.summary(base), merkle.summary(flipped), merkle.summary(retyped)}) == 3


def _busy(c: BackgroundController, second: int) -> None:
    """Background work with more to do than its rate allows, asking every millisecond of a second."""
    for ms in range(1000):
        c.admit(second * 1000 + ms)


def test_the_controller_halves_the_background_rate_when_foreground_p99_exceeds_its_target() -> None:
    """Each second of slow foreground requests halves the admission rate; fast ones let it recover."""
    c = BackgroundController(target_ms=50, window_ms=10_000, rate_per_s=400)
    for second in range(3):
        for _ in range(200):
            c.observe(second * 1000, 200.0)
        _busy(c, second)
    assert c.rate_per_s == 50.0
    assert c.slowdowns == 3
    for second in range(3, 13):
        for _ in range(200):
            c.observe(second * 1000, 1.0)
        _busy(c, second)
    assert c.rate_per_s > 100


def test_one_slow_spell_halves_the_rate_once_not_for_as_long_as_it_stays_in_the_window() -> None:
    """A second of slow requests, then fast ones: the next seconds are judged on their own requests."""
    c = BackgroundController(target_ms=50, window_ms=10_000, rate_per_s=400)
    c.admit(0)
    before = c.rate_per_s
    for _ in range(200):
        c.observe(500, 300.0)
    c.admit(1000)
    assert (c.rate_per_s, c.slowdowns) == (before / 2, 1)
    for second in range(1, 5):
        for _ in range(200):
            c.observe(second * 1000 + 1, 2.0)
        _busy(c, second)
    assert c.slowdowns == 1
    assert c.rate_per_s > 400


def test_the_rate_is_not_raised_while_background_work_leaves_it_unused() -> None:
    """A quiet spell does not let the rate climb to its maximum, so work that starts afterwards does not
    burst: it starts near what was used and speeds up while clients do not suffer."""
    c = BackgroundController(target_ms=50, window_ms=10_000, rate_per_s=200)
    for second in range(60):
        c.observe(second * 1000, 1.0)
        c.admit(second * 1000)  # one step a second: an exchange that finds nothing to do
    assert c.rate_per_s <= 5
    rates = []
    for second in range(60, 70):
        for _ in range(100):
            c.observe(second * 1000, 1.0)
        _busy(c, second)
        rates.append(c.rate_per_s)
    assert rates == sorted(rates) and rates[-1] > 200


def test_under_light_traffic_one_slow_request_slows_down_once() -> None:
    """Two requests a second are too few for a p99 of one second: the controller looks at the window,
    but only at requests that finished after its last slowdown."""
    c = BackgroundController(target_ms=50, window_ms=10_000, rate_per_s=400)
    c.admit(0)
    c.observe(100, 500.0)
    for second in range(1, 8):
        c.observe(second * 1000 - 10, 1.0)
        c.admit(second * 1000)
    assert c.slowdowns == 1


def _drive(c: BackgroundController, load_ms: float, ms_per_step: float, seconds: int) -> list[tuple[float, float]]:
    """A model cluster: every step a second of background work adds `ms_per_step` to the foreground
    p99, on top of `load_ms`. Returns (rate, p99) of each second."""
    out = []
    for second in range(seconds):
        p99 = load_ms + ms_per_step * c.rate_per_s
        now = second * 1000
        for i in range(100):
            c.observe(now + i, p99 if i >= 95 else p99 / 3)
        _busy(c, second)
        out.append((c.rate_per_s, p99))
    return out


def test_the_controller_holds_the_target_against_its_own_cost() -> None:
    """Background work that costs latency is held near the rate where the target is met."""
    c = BackgroundController(target_ms=25, window_ms=10_000, rate_per_s=200)
    seconds = _drive(c, load_ms=10, ms_per_step=0.1, seconds=120)[20:]
    # AIMD probes above the target now and then, by at most its last step up, for a second at a time.
    over = [p99 for _, p99 in seconds if p99 > 25]
    assert len(over) <= len(seconds) // 3
    assert max(p99 for _, p99 in seconds) <= 25 * 1.25
    assert statistics.mean(rate for rate, _ in seconds) > 50  # and does not starve the work


def test_a_cluster_slow_for_reasons_of_its_own_does_not_starve_background_work() -> None:
    """With the foreground above the target at any background rate, the controller measures what clients
    see with background work at its floor and lets it add at most a quarter to that."""
    c = BackgroundController(target_ms=25, window_ms=10_000, rate_per_s=200)
    seconds = _drive(c, load_ms=40, ms_per_step=0.1, seconds=120)[30:]
    assert 25 < c.limit_ms(120_000) <= (40 + 0.1 * c.rate_min_per_s) * 1.25 + 0.01
    assert statistics.mean(rate for rate, _ in seconds) > 20
    assert statistics.median(p99 for _, p99 in seconds) <= c.limit_ms(120_000)


def test_under_light_traffic_a_cluster_slow_on_its_own_does_not_starve_background_work_either() -> None:
    """Three requests a second, all at 80 ms against a 50 ms target: too few for a p99 of one second,
    so the controller gathers the requests since it reached its floor, and raises the limit from them."""
    c = BackgroundController(target_ms=50, window_ms=10_000, rate_per_s=200)
    rates, limits = [], []
    for second in range(60):
        for i in range(3):
            c.observe(second * 1000 + i, 80.0)
        _busy(c, second)
        rates.append(c.rate_per_s)
        limits.append(c.limit_ms(second * 1000 + 999))
    assert 50 < max(limits) <= 100
    assert statistics.mean(rates[20:]) > 50


def test_a_higher_limit_ends_when_the_slow_load_goes() -> None:
    """Once a second meets the target with background work running, the limit is the target again."""
    c = BackgroundController(target_ms=25, window_ms=10_000, rate_per_s=200)
    _drive(c, load_ms=40, ms_per_step=0.1, seconds=60)
    assert c.limit_ms(59_999) > 25
    for second in range(60, 64):
        for i in range(100):
            c.observe(second * 1000 + i, 5.0)
        c.admit(second * 1000 + 999)
    assert c.limit_ms(63_999) == 25


def test_the_floor_measurements_are_forgotten_after_a_minute() -> None:
    """Once the cluster has been fast again for a minute, the limit is the target again."""
    c = BackgroundController(target_ms=25, window_ms=10_000, rate_per_s=200)
    _drive(c, load_ms=40, ms_per_step=0.1, seconds=60)
    assert c.limit_ms(59_999) > 25
    assert c.limit_ms(59_999 + 61_000) == 25


def test_the_controller_defers_work_beyond_its_rate() -> None:
    """With a rate of 10 steps a second, a burst of 100 steps gets about 10 admitted; the rest are deferred."""
    c = BackgroundController(target_ms=50, window_ms=1000, rate_per_s=10, rate_max_per_s=10)
    admitted = sum(1 for _ in range(100) if c.admit(0))
    assert admitted == 10
    assert c.deferred == 90
    assert c.admit(150)  # 1.5 tokens refilled after 150 ms
