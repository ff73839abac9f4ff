"""Dotted version vectors keep every concurrent write, drop exactly what a context saw, and merge as a
lattice; buckets keeping one value per key resolve concurrent writes by timestamp, still as a lattice."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from dynastore.core import objects
from dynastore.core.objects import Content, Object
from dynastore.core.versions import (
    Clock,
    Context,
    Dot,
    Versioned,
    concurrent,
    descends,
    empty,
    merge,
    merge_all,
    prune,
    update,
)

ACTORS = [b"a#1", b"b#1", b"c#1", b"d#1"]


@dataclass
class History:
    """Replicas built by random writes (with contexts from earlier states) and merges.

    Every actor takes its counters from its own sequence, as nodes do, so the states are ones the
    system can really reach.
    """

    states: list[Versioned[bytes]] = field(default_factory=list)
    counters: dict[bytes, int] = field(default_factory=dict)

    def next_dot(self, actor: bytes) -> Dot:
        self.counters[actor] = self.counters.get(actor, 0) + 1
        return Dot(actor, self.counters[actor])


@st.composite
def histories(draw: st.DrawFn, steps_max: int = 25) -> History:
    h = History(states=[empty(), empty(), empty()])
    for step in range(draw(st.integers(0, steps_max))):
        target = draw(st.integers(0, len(h.states) - 1))
        if draw(st.booleans()):
            source = draw(st.integers(0, len(h.states) - 1))
            h.states[target] = merge(h.states[target], h.states[source])
        else:
            seen = draw(st.integers(0, len(h.states) - 1))
            ctx = h.states[seen].context() if draw(st.booleans()) else Context()
            actor = ACTORS[target % len(ACTORS)]
            # A coordinator writes on top of its own state; the context may come from any replica.
            dot = h.next_dot(actor)
            while h.states[target].clock.covers(dot) or ctx.covers(dot):
                dot = h.next_dot(actor)
            h.states[target] = update(h.states[target], ctx, dot, b"v%d" % step, step)
        if draw(st.booleans()) and len(h.states) < 6:
            h.states.append(h.states[target])
    return h


def same(a: Versioned[bytes], b: Versioned[bytes]) -> bool:
    return a.clock.same_counters(b.clock) and a.siblings == b.siblings


@settings(max_examples=300, deadline=None)
@given(h=histories(), picks=st.tuples(st.integers(0, 5), st.integers(0, 5), st.integers(0, 5)))
def test_merge_is_commutative_associative_and_idempotent(h: History, picks: tuple[int, int, int]) -> None:
    """Replica states form a join-semilattice under merge, whatever order states meet in."""
    a, b, c = (h.states[i % len(h.states)] for i in picks)
    assert same(merge(a, b), merge(b, a))
    assert same(merge(merge(a, b), c), merge(a, merge(b, c)))
    assert same(merge(a, a), a)
    # merge(a, a) is `a` itself (a shortcut); a state equal to `a` but not the same object merges to
    # a state equal to `a` in every field, timestamps included, so the shortcut changes nothing.
    twin = Versioned(Clock(tuple(a.clock.entries)), tuple(a.siblings))
    assert twin is not a and merge(a, twin) == a and merge(twin, a) == a
    for state in (a, b, c, merge(a, b)):
        state.check()


@settings(max_examples=300, deadline=None)
@given(h=histories(), picks=st.tuples(st.integers(0, 5), st.integers(0, 5), st.integers(0, 5)))
def test_descends_is_a_partial_order(h: History, picks: tuple[int, int, int]) -> None:
    """Descends is reflexive, antisymmetric (up to equal counters) and transitive; a merge descends both."""
    a, b, c = (h.states[i % len(h.states)].clock for i in picks)
    assert descends(a, a)
    if descends(a, b) and descends(b, a):
        assert a.same_counters(b)
    if descends(a, b) and descends(b, c):
        assert descends(a, c)
    joined = a.merge(b)
    assert descends(joined, a) and descends(joined, b)
    assert concurrent(a, b) == (not descends(a, b) and not descends(b, a))


@settings(max_examples=300, deadline=None)
@given(h=histories(), pick=st.integers(0, 5))
def test_a_write_with_the_context_of_everything_it_saw_replaces_all_it_saw(h: History, pick: int) -> None:
    """Writing with a state's own context leaves exactly one sibling: the new value."""
    state = h.states[pick % len(h.states)]
    dot = Dot(b"z#1", 1)
    after = update(state, state.context(), dot, b"new", 99)
    assert after.siblings == ((dot, b"new"),)
    assert descends(after.clock, state.clock)


@settings(max_examples=300, deadline=None)
@given(h=histories(), pick=st.integers(0, 5))
def test_concurrent_writes_with_the_same_context_are_both_kept(h: History, pick: int) -> None:
    """Two writes from the same context on different replicas both survive their merge, as siblings."""
    state = h.states[pick % len(h.states)]
    ctx = state.context()
    left = update(state, ctx, Dot(b"x#1", 1), b"left", 1)
    right = update(state, ctx, Dot(b"y#1", 1), b"right", 2)
    merged = merge(left, right)
    assert {v for _, v in merged.siblings} == {b"left", b"right"}
    # A later merge with any older state never brings back what the context covered.
    assert same(merge(merged, state), merged)


@settings(max_examples=200, deadline=None)
@given(h=histories(), pick=st.integers(0, 5), other=st.integers(0, 5))
def test_merging_never_loses_a_sibling_that_the_other_side_has_not_seen(h: History, pick: int, other: int) -> None:
    """A live sibling survives a merge unless the other state's clock covers it and does not hold it."""
    a = h.states[pick % len(h.states)]
    b = h.states[other % len(h.states)]
    merged = merge(a, b)
    kept = set(merged.dots())
    for dot in a.dots():
        if dot not in kept:
            assert b.clock.covers(dot) and dot not in b.dots()


def test_two_clients_writing_with_their_own_previous_context_never_exceed_two_siblings() -> None:
    """The sibling-explosion scenario: 100 rounds of two interleaved writers, each writing with the
    context returned by its own previous write, through one coordinator, hold at most 2 siblings
    (Riak's per-node vector clocks reached about 99)."""
    actor = b"node0#1"
    state: Versioned[bytes] = empty()
    contexts = {"x": Context(), "y": Context()}
    counter = 0
    worst = 0
    for round_ in range(100):
        for client in ("x", "y"):
            counter += 1
            dot = Dot(actor, counter)
            state = update(state, contexts[client], dot, f"{client}{round_}".encode(), counter)
            contexts[client] = contexts[client].after_write(dot)
            worst = max(worst, len(state.siblings))
    assert worst <= 2
    assert {v for _, v in state.siblings} == {b"x99", b"y99"}


def test_two_clients_through_two_coordinators_never_exceed_two_siblings() -> None:
    """The same scenario with each client writing through its own replica, replicas merging after
    every write: still at most 2 siblings on every replica."""
    replicas = {"x": empty(), "y": empty()}
    actors = {"x": b"node0#1", "y": b"node1#1"}
    counters = {"x": 0, "y": 0}
    contexts = {"x": Context(), "y": Context()}
    worst = 0
    for round_ in range(100):
        for client, peer in (("x", "y"), ("y", "x")):
            counters[client] += 1
            dot = Dot(actors[client], counters[client])
            replicas[client] = update(replicas[client], contexts[client], dot, b"%d" % round_, round_)
            contexts[client] = contexts[client].after_write(dot)
            replicas[peer] = merge(replicas[peer], replicas[client])
            worst = max(worst, *(len(r.siblings) for r in replicas.values()))
    assert worst <= 2


def test_a_client_that_reads_then_writes_resolves_all_siblings() -> None:
    """Reading every sibling and writing with the read's context resolves them to one value."""
    state: Versioned[bytes] = empty()
    state = update(state, Context(), Dot(b"a#1", 1), b"one", 1)
    state = update(state, Context(), Dot(b"a#1", 2), b"two", 2)
    assert len(state.siblings) == 2
    state = update(state, state.context(), Dot(b"a#1", 3), b"resolved", 3)
    assert state.values() == [b"resolved"]


@settings(max_examples=200, deadline=None)
@given(h=histories(steps_max=40), pick=st.integers(0, 5), limit=st.integers(1, 4))
def test_pruning_bounds_the_clock_and_never_drops_a_live_sibling_actor(h: History, pick: int, limit: int) -> None:
    """Pruning removes the oldest entries beyond the limit, but never an entry that covers a live sibling."""
    state = merge_all(h.states)
    pruned = prune(state, limit)
    assert pruned.siblings == state.siblings
    pruned.check()
    live_actors = {d.actor for d in state.dots()}
    assert len(pruned.clock.entries) <= max(limit, len(live_actors))
    kept = {a for a, _, _ in pruned.clock.entries}
    dropped = {a for a, _, _ in state.clock.entries} - kept
    oldest_kept = min((ts for a, _, ts in pruned.clock.entries if a not in live_actors), default=None)
    for actor, _, ts in state.clock.entries:
        if actor in dropped and oldest_kept is not None:
            assert ts <= oldest_kept


def test_pruning_drops_oldest_entries_first() -> None:
    """With ten writers and a limit of three, the three most recent actors (plus live ones) remain."""
    state: Versioned[bytes] = empty()
    for i in range(10):
        actor = b"n%d#1" % i
        state = update(state, state.context(), Dot(actor, 1), b"v", now_ms=1000 + i)
    pruned = prune(state, 3)
    assert [a for a, _, _ in pruned.clock.entries] == [b"n7#1", b"n8#1", b"n9#1"]


def test_clock_merge_takes_the_greater_counter_and_its_timestamp() -> None:
    """Clock entries merge by counter; the timestamp travels with the winning counter."""
    a = Clock(((b"a", 3, 10), (b"b", 1, 5)))
    b = Clock(((b"a", 2, 99), (b"c", 4, 7)))
    assert a.merge(b) == Clock(((b"a", 3, 10), (b"b", 1, 5), (b"c", 4, 7)))
    assert a.merge(b) == b.merge(a)


def test_context_after_a_write_covers_only_what_the_writer_saw() -> None:
    """The context returned by a write covers the client's context and the new dot, not concurrent siblings."""
    ctx = Context(((b"a#1", 2),))
    after = ctx.after_write(Dot(b"a#1", 7))
    assert after.covers(Dot(b"a#1", 2))
    assert after.covers(Dot(b"a#1", 7))
    assert not after.covers(Dot(b"a#1", 5))
    joined = after.join(Context(((b"a#1", 8),)))
    assert joined.dots == frozenset()
    assert joined.covers(Dot(b"a#1", 5))


@settings(max_examples=300, deadline=None)
@given(h=histories(), pick=st.integers(0, 5), seen=st.integers(0, 5))
def test_a_write_keeps_exactly_the_siblings_its_context_did_not_see(h: History, pick: int, seen: int) -> None:
    """update(S, C, d, v) holds the siblings of S that C does not cover, plus the new one."""
    state = h.states[pick % len(h.states)]
    ctx = h.states[seen % len(h.states)].context()
    dot = Dot(b"z#1", 1)
    after = update(state, ctx, dot, b"new", 7)
    expected = {d for d in state.dots() if not ctx.covers(d)} | {dot}
    assert set(after.dots()) == expected
    after.check()


def test_a_writer_reusing_its_own_context_never_overwrites_a_concurrent_writer() -> None:
    """Client y writes, then x writes concurrently through the same node (getting a larger counter),
    then x writes again with the context its first write returned: y's value must still be there."""
    actor = b"node0#1"
    state: Versioned[bytes] = empty()
    state = update(state, Context(), Dot(actor, 1), b"y", 1)
    x_ctx = Context()
    state = update(state, x_ctx, Dot(actor, 2), b"x1", 2)
    x_ctx = x_ctx.after_write(Dot(actor, 2))
    state = update(state, x_ctx, Dot(actor, 3), b"x2", 3)
    assert sorted(state.values()) == [b"x2", b"y"]


# --- One value per key (last-write-wins, or allow_mult off) --------------------------------------------


@dataclass
class OneValueHistory:
    """Copies of one key in a bucket keeping one value, built like `History` by writes and merges, with
    the timestamp of every write drawn at random (coordinators' clocks may be skewed any way), some
    writes deletes. `written` holds what each write stored, by its dot."""

    lww: bool
    states: list[Object] = field(default_factory=list)
    counters: dict[bytes, int] = field(default_factory=dict)
    written: dict[Dot, Content] = field(default_factory=dict)

    def next_dot(self, actor: bytes) -> Dot:
        self.counters[actor] = self.counters.get(actor, 0) + 1
        return Dot(actor, self.counters[actor])


def merge_one(a: Object, b: Object) -> Object:
    """The merge every replica of such a bucket does (nodebase._merged, GetTally.merged)."""
    return objects.resolve(merge(a, b))


@st.composite
def one_value_histories(draw: st.DrawFn, steps_max: int = 25) -> OneValueHistory:
    h = OneValueHistory(lww=draw(st.booleans()), states=[empty(), empty(), empty()])
    for step in range(draw(st.integers(0, steps_max))):
        target = draw(st.integers(0, len(h.states) - 1))
        if draw(st.booleans()):
            source = draw(st.integers(0, len(h.states) - 1))
            h.states[target] = merge_one(h.states[target], h.states[source])
        else:
            seen = draw(st.integers(0, len(h.states) - 1))
            ctx = h.states[seen].context() if draw(st.booleans()) else Context()
            actor = ACTORS[target % len(ACTORS)]
            # As a node does (actors.py): an actor writes only on a copy holding everything it wrote of
            # the key, else a fresh actor writes.
            while h.counters.get(actor, 0) > h.states[target].clock.get(actor):
                actor += b"+"
            dot = h.next_dot(actor)
            while h.states[target].clock.covers(dot) or ctx.covers(dot):
                dot = h.next_dot(actor)
            # A small range of timestamps, so that ties (decided by the dot) are common.
            ts = draw(st.integers(0, 30))
            content = (
                objects.tombstone(ts)
                if draw(st.integers(0, 4)) == 0
                else Content(b"v%d" % step, "t", None, None, (), ts)
            )
            new = objects.update_one(h.states[target], ctx, dot, content, step, lww=h.lww)
            h.written[dot] = dict(new.siblings).get(dot, content)
            h.states[target] = new
        if draw(st.booleans()) and len(h.states) < 6:
            h.states.append(h.states[target])
    return h


def newest_covered(h: OneValueHistory, state: Object) -> tuple[Dot, Content] | None:
    covered = [(dot, content) for dot, content in h.written.items() if state.clock.covers(dot)]
    return objects.newest(covered) if covered else None


@settings(max_examples=400, deadline=None)
@given(h=one_value_histories(), picks=st.tuples(st.integers(0, 5), st.integers(0, 5), st.integers(0, 5)))
def test_resolving_to_one_value_merges_as_a_lattice_whatever_the_timestamps(
    h: OneValueHistory, picks: tuple[int, int, int]
) -> None:
    """Merging then keeping the newest is commutative, associative and idempotent, even when writes
    carry timestamps skewed every which way: replicas agree on the value whatever order they meet in."""
    a, b, c = (h.states[i % len(h.states)] for i in picks)
    assert same(merge_one(a, b), merge_one(b, a))
    assert same(merge_one(merge_one(a, b), c), merge_one(a, merge_one(b, c)))
    assert same(merge_one(a, a), a)
    for state in (a, b, c, merge_one(a, b)):
        state.check()


@settings(max_examples=400, deadline=None)
@given(h=one_value_histories(), pick=st.integers(0, 5))
def test_a_copy_keeps_exactly_the_newest_of_every_version_its_clock_covers(h: OneValueHistory, pick: int) -> None:
    """The invariant that makes the merge a lattice: one sibling, and it is the newest (timestamp, then
    dot) of all versions ever written that the copy's clock covers; none is ever left without a value."""
    state = h.states[pick % len(h.states)]
    expected = newest_covered(h, state)
    assert state.siblings == (() if expected is None else (expected,))


@settings(max_examples=200, deadline=None)
@given(h=one_value_histories(), pick=st.integers(0, 5), ts=st.integers(0, 30))
def test_a_write_with_the_context_of_its_copy_wins_even_with_an_older_timestamp(
    h: OneValueHistory, pick: int, ts: int
) -> None:
    """A write that saw the value replaces it, even from a coordinator whose clock is behind: it is
    dated just past what it replaced."""
    state = h.states[pick % len(h.states)]
    dot = Dot(b"z#1", 1)
    after = objects.update_one(state, state.context(), dot, Content(b"new", last_modified_us=ts), 99, lww=h.lww)
    assert after.dots() == [dot] and after.values()[0].value == b"new"
    assert descends(after.clock, state.clock)
    for old in state.values():
        assert after.values()[0].last_modified_us > old.last_modified_us


@settings(max_examples=200, deadline=None)
@given(
    h=one_value_histories(),
    pick=st.integers(0, 5),
    times=st.tuples(st.integers(0, 30), st.integers(0, 30)),
    deletes=st.tuples(st.booleans(), st.booleans()),
)
def test_concurrent_writes_and_deletes_resolve_to_the_newest_on_every_replica(
    h: OneValueHistory, pick: int, times: tuple[int, int], deletes: tuple[bool, bool]
) -> None:
    """Two writes (or deletes) from the same context on two replicas: whichever order they merge in,
    both replicas keep the later timestamp (the greater dot on a tie), and the clock covers both."""
    state = h.states[pick % len(h.states)]
    ctx = state.context()
    floor = max((c.last_modified_us + 1 for c in state.values()), default=0)
    made = []
    for dot, ts, delete, value in zip((Dot(b"x#1", 1), Dot(b"y#1", 1)), times, deletes, (b"l", b"r"), strict=True):
        content = objects.tombstone(ts) if delete else Content(value, last_modified_us=ts)
        made.append(objects.update_one(state, ctx, dot, content, 50, lww=h.lww))
    left, right = made
    merged = merge_one(left, right)
    assert same(merged, merge_one(right, left))
    winner = max(zip(times, (Dot(b"x#1", 1), Dot(b"y#1", 1)), strict=True), key=lambda p: (max(p[0], floor), p[1]))
    assert merged.dots() == [winner[1]]
    assert merged.clock.covers(Dot(b"x#1", 1)) and merged.clock.covers(Dot(b"y#1", 1))
    # A later merge with an older copy changes nothing.
    assert same(merge_one(merged, state), merged)


def test_blind_writes_to_a_key_keeping_one_value_never_pile_up_siblings() -> None:
    """300 writes without a context, through two coordinators that merge after each write, leave one
    sibling on each: the newest (the blind writes of an allow_mult=true bucket would keep them all)."""
    replicas: list[Object] = [empty(), empty()]
    actors = [b"node0#1", b"node1#1"]
    for i in range(300):
        here = i % 2
        content = Content(b"%d" % i, last_modified_us=1000 + i)
        replicas[here] = objects.update_one(replicas[here], Context(), Dot(actors[here], i + 1), content, i, lww=False)
        replicas[1 - here] = merge_one(replicas[1 - here], replicas[here])
        assert all(len(r.siblings) == 1 for r in replicas)
    assert same(replicas[0], replicas[1]) and replicas[0].values()[0].value == b"299"
