"""Hash trees find exactly the segments that differ; the background controller backs off under load."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from dynastore.core import merkle
from dynastore.core.controller import BackgroundController
from dynastore.core.merkle import HashTree
from dynastore.core.versions import Context, Dot, update

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
    a = update(None, Context(), Dot(b"n1#1", 1), b"x", now_ms=5)
    b = update(None, Context(), Dot(b"n1#1", 1), b"x", now_ms=99)
    assert merkle.summary(a) == merkle.summary(b)  # type: ignore[arg-type]
    c = update(a, Context(), Dot(b"n2#1", 1), b"y", now_ms=6)
    assert merkle.summary(c) != merkle.summary(a)  # type: ignore[arg-type]


def test_the_controller_halves_the_background_rate_when_foreground_p99_exceeds_its_target() -> None:
    """Slow foreground requests halve the admission rate each second; fast ones let it recover."""
    c = BackgroundController(target_ms=50, window_ms=10_000, rate_per_s=400)
    for _ in range(200):
        c.observe(0, 200.0)
    for second in range(3):
        c.admit(second * 1000)
    assert c.rate_per_s == 50.0
    assert c.slowdowns == 3
    now = 20_000
    for _ in range(200):
        c.observe(now, 1.0)
    for step in range(1, 6):
        c.admit(now + step * 1000)
    assert c.rate_per_s > 100


def test_the_controller_defers_work_beyond_its_rate() -> None:
    """With a rate of 10 steps a second, a burst of 100 steps gets about 10 admitted; the rest are deferred."""
    c = BackgroundController(target_ms=50, window_ms=1000, rate_per_s=10, rate_max_per_s=10)
    admitted = sum(1 for _ in range(100) if c.admit(0))
    assert admitted == 10
    assert c.deferred == 90
    assert c.admit(150)  # 1.5 tokens refilled after 150 ms
