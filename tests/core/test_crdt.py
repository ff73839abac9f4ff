"""Convergent data types: merge is a lattice join, operations are inflations, replicas converge,
an observed remove removes exactly what it saw, a counter is the sum of its increments however
they were merged, deferred removes wait for what they name, and decoding refuses anything malformed."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynastore.core import crdt
from dynastore.core.crdt import CounterOp, CrdtError, FlagOp, HllOp, Limits, MapOp, RegisterOp, SetOp, State
from dynastore.core.versions import Dot

LIMITS = Limits()
ACTORS = [b"a#1.1", b"b#2.1", b"c#3.1"]
ELEMENTS = [b"x", b"y", b"z", b"w"]


@dataclass
class History:
    """Replicas of one key, each coordinating operations with its own actor's growing counters, and
    merging others' states, as nodes do. Records what an outside observer needs to judge the result."""

    kind: str
    states: list[State] = field(default_factory=list)
    counters: dict[bytes, int] = field(default_factory=dict)
    increments: int = 0
    deleted: bool = False

    def dot(self, replica: int) -> Dot:
        actor = ACTORS[replica]
        self.counters[actor] = self.counters.get(actor, 0) + 1
        return Dot(actor, self.counters[actor])


def _op(draw: st.DrawFn, kind: str) -> crdt.Op:
    if kind == "counter":
        return CounterOp(draw(st.integers(-5, 9)))
    if kind == "set":
        return SetOp(
            tuple(draw(st.lists(st.sampled_from(ELEMENTS), max_size=2, unique=True))),
            tuple(draw(st.lists(st.sampled_from(ELEMENTS), max_size=1, unique=True))),
        )
    if kind == "hll":
        return HllOp(tuple(draw(st.lists(st.sampled_from(ELEMENTS), max_size=3))))
    return MapOp(
        tuple(
            draw(
                st.lists(
                    st.sampled_from(
                        [
                            (b"n", "counter", CounterOp(2)),
                            (b"s", "set", SetOp((b"x",), ())),
                            (b"s", "set", SetOp((b"y",), (b"x",))),
                            (b"r", "register", RegisterOp(b"v1")),
                            (b"r", "register", RegisterOp(b"v2")),
                            (b"f", "flag", FlagOp(True)),
                            (b"f", "flag", FlagOp(False)),
                            (b"m", "map", MapOp(((b"c", "counter", CounterOp(1)),))),
                            (b"m", "map", MapOp(((b"t", "set", SetOp((b"z",), ())),))),
                        ]
                    ),
                    max_size=2,
                    unique_by=lambda u: (u[0], u[1]),
                )
            )
        ),
        tuple(
            draw(
                st.lists(
                    st.sampled_from(
                        [(b"s", "set"), (b"n", "counter"), (b"m", "map"), (b"r", "register"), (b"f", "flag")]
                    ),
                    max_size=1,
                )
            )
        ),
    )


@st.composite
def histories(draw: st.DrawFn, kind: str | None = None, deletes: bool = True, steps_max: int = 14) -> History:
    kind = kind or draw(st.sampled_from(crdt.DATATYPES))
    h = History(kind, [crdt.new(kind, 8) for _ in ACTORS])
    for _ in range(draw(st.integers(0, steps_max))):
        target = draw(st.integers(0, len(ACTORS) - 1))
        choice = draw(st.integers(0, 9))
        if choice < 4:
            source = draw(st.integers(0, len(ACTORS) - 1))
            h.states[target] = crdt.merge(h.states[target], h.states[source])
        elif choice == 4 and deletes:
            h.states[target] = crdt.delete_state(h.states[target], h.dot(target))
            h.deleted = True
        else:
            op = _op(draw, kind)
            context = None
            if draw(st.booleans()) and kind in ("set", "map"):
                context = crdt.clock_vector(h.states[draw(st.integers(0, len(ACTORS) - 1))])
            # Coordinators' clocks disagree: a register's timestamps do not follow causality.
            now_us = draw(st.integers(0, 50))
            try:
                h.states[target] = crdt.apply(h.states[target], op, h.dot(target), now_us, LIMITS, context)
            except CrdtError as exc:
                assert exc.kind == "precondition", exc
                continue
            if isinstance(op, CounterOp):
                h.increments += op.delta
    return h


def enc(state: State) -> bytes:
    return crdt.encode(state)


@settings(max_examples=200, deadline=None)
@given(histories())
def test_merge_is_commutative_associative_and_idempotent(h: History) -> None:
    # Three replicas of one history: a dot names one operation. (States of separate histories could
    # name two different writes by the same dot, which no cluster makes: actors never reuse a count.)
    a, b, c = h.states
    assert enc(crdt.merge(a, b)) == enc(crdt.merge(b, a))
    assert enc(crdt.merge(crdt.merge(a, b), c)) == enc(crdt.merge(a, crdt.merge(b, c)))
    assert enc(crdt.merge(a, a)) == enc(a)


@settings(max_examples=200, deadline=None)
@given(histories(), st.data())
def test_an_operation_is_an_inflation_and_every_replica_converges(h: History, data: st.DataObject) -> None:
    state = h.states[0]
    op = _op(data.draw, h.kind)
    try:
        after = crdt.apply(state, op, h.dot(0), 2000, LIMITS)
    except CrdtError as exc:
        assert exc.kind == "precondition"
    else:
        assert enc(crdt.merge(state, after)) == enc(after)
    joined = crdt.join_all(h.states)
    assert joined is not None
    for s in h.states:
        assert enc(crdt.merge(s, joined)) == enc(joined)
    # Merging in another order reaches the same state.
    shuffled = list(h.states)
    random.Random(0).shuffle(shuffled)
    again = crdt.join_all(reversed(shuffled))
    assert again is not None and enc(again) == enc(joined)


@settings(max_examples=200, deadline=None)
@given(histories("counter", deletes=False, steps_max=20))
def test_a_counter_is_the_sum_of_every_increment_however_merged(h: History) -> None:
    joined = crdt.join_all(h.states)
    assert joined is not None and crdt.value(joined) == h.increments


@settings(max_examples=150, deadline=None)
@given(histories("counter", deletes=True, steps_max=16), st.integers(1, 9))
def test_an_increment_no_delete_saw_is_never_lost(h: History, amount: int) -> None:
    """Whatever was deleted before, an increment that a concurrent delete did not see counts in full
    once everything meets: the increments of the join with it are at least those of the join without
    it plus this one (more when its entry carries counts the delete saw: an entry extended
    concurrently with a delete survives whole, as in Riak)."""
    # Replica 1 increments concurrently with a delete at replica 0.
    bumped = crdt.apply(h.states[1], CounterOp(amount), h.dot(1), 3000, LIMITS)
    others = [crdt.delete_state(h.states[0], h.dot(0)), h.states[2]]
    with_it = crdt.join_all([bumped, *others])
    without = crdt.join_all([h.states[1], *others])
    assert with_it is not None and without is not None
    assert sum(e[2] for e in with_it.body) >= sum(e[2] for e in without.body) + amount


def test_an_observed_remove_removes_exactly_what_it_saw() -> None:
    s = crdt.new("set")
    left = crdt.apply(s, SetOp((b"x",)), Dot(b"a", 1), 0, LIMITS)
    seen = crdt.clock_vector(left)
    # b adds x again concurrently, having not seen a's add.
    right = crdt.apply(s, SetOp((b"x", b"y")), Dot(b"b", 1), 0, LIMITS)
    removed = crdt.apply(left, SetOp((), (b"x",)), Dot(b"a", 2), 0, LIMITS, seen)
    merged = crdt.merge(removed, right)
    assert crdt.value(merged) == [b"x", b"y"]  # b's add of x was not seen: it survives
    # A remove of both adds, having seen both, removes x.
    gone = crdt.apply(merged, SetOp((), (b"x",)), Dot(b"c", 1), 0, LIMITS, crdt.clock_vector(merged))
    assert crdt.value(crdt.merge(gone, right)) == [b"y"]


def test_a_remove_without_context_of_a_missing_element_is_a_failed_precondition() -> None:
    s = crdt.apply(crdt.new("set"), SetOp((b"x",)), Dot(b"a", 1), 0, LIMITS)
    with pytest.raises(CrdtError) as err:
        crdt.apply(s, SetOp((), (b"q",)), Dot(b"a", 2), 0, LIMITS)
    assert err.value.kind == "precondition"
    m = crdt.apply(crdt.new("map"), MapOp(((b"n", "counter", CounterOp(1)),)), Dot(b"a", 1), 0, LIMITS)
    with pytest.raises(CrdtError) as err:
        crdt.apply(m, MapOp((), ((b"q", "set"),)), Dot(b"a", 2), 0, LIMITS)
    assert err.value.kind == "precondition"


def test_a_remove_whose_context_the_coordinator_has_not_seen_waits_for_it() -> None:
    base = crdt.new("set")
    at_a = crdt.apply(base, SetOp((b"x", b"y")), Dot(b"a", 1), 0, LIMITS)
    context = crdt.clock_vector(at_a)
    # b has not seen a's add; the client read it at a and removes x at b.
    at_b = crdt.apply(base, SetOp((b"z",)), Dot(b"b", 1), 0, LIMITS)
    removed = crdt.apply(at_b, SetOp((), (b"x",)), Dot(b"b", 2), 0, LIMITS, context)
    assert removed.deferred
    merged = crdt.merge(removed, at_a)
    assert crdt.value(merged) == [b"y", b"z"] and not merged.deferred
    assert enc(crdt.merge(at_a, removed)) == enc(merged)
    # The same for a map field.
    m = crdt.apply(crdt.new("map"), MapOp(((b"s", "set", SetOp((b"x",))),)), Dot(b"a", 1), 0, LIMITS)
    other = crdt.apply(crdt.new("map"), MapOp(((b"r", "register", RegisterOp(b"v")),)), Dot(b"b", 1), 0, LIMITS)
    dropped = crdt.apply(other, MapOp((), ((b"s", "set"),)), Dot(b"b", 2), 0, LIMITS, crdt.clock_vector(m))
    assert crdt.value(crdt.merge(dropped, m)) == {(b"r", "register"): b"v"}


def test_a_map_keeps_each_kind_of_field_and_a_concurrent_update_survives_a_field_remove() -> None:
    op = MapOp(
        (
            (b"name", "register", RegisterOp(b"ada")),
            (b"visits", "counter", CounterOp(3)),
            (b"admin", "flag", FlagOp(True)),
            (b"langs", "set", SetOp((b"en", b"fr"))),
            (b"address", "map", MapOp(((b"city", "register", RegisterOp(b"london")),))),
        )
    )
    m = crdt.apply(crdt.new("map"), op, Dot(b"a", 1), 10, LIMITS)
    assert crdt.to_json(m) == {
        "address_map": {"city_register": "london"},
        "admin_flag": True,
        "langs_set": ["en", "fr"],
        "name_register": "ada",
        "visits_counter": 3,
    }
    removed = crdt.apply(m, MapOp((), ((b"langs", "set"),)), Dot(b"a", 2), 20, LIMITS)
    updated = crdt.apply(m, MapOp(((b"langs", "set", SetOp((b"de",))),)), Dot(b"b", 1), 20, LIMITS)
    merged = crdt.to_json(crdt.merge(removed, updated))
    # The update survives, with only what the remove had not seen (reset-remove).
    assert merged["langs_set"] == ["de"]
    # A register resolves by its own timestamp: a coordinator whose clock is behind still replaces
    # the value it saw.
    later = crdt.apply(m, MapOp(((b"name", "register", RegisterOp(b"bob")),)), Dot(b"c", 1), 5, LIMITS)
    assert crdt.to_json(crdt.merge(m, later))["name_register"] == "bob"


def test_a_delete_removes_what_it_saw_and_keeps_a_concurrent_add() -> None:
    s = crdt.apply(crdt.new("set"), SetOp((b"x",)), Dot(b"a", 1), 0, LIMITS)
    deleted = crdt.delete_state(s, Dot(b"a", 2))
    concurrent = crdt.apply(s, SetOp((b"y",)), Dot(b"b", 1), 0, LIMITS)
    assert crdt.value(crdt.merge(deleted, concurrent)) == [b"y"]
    c = crdt.apply(crdt.new("counter"), CounterOp(5), Dot(b"a", 1), 0, LIMITS)
    gone = crdt.delete_state(c, Dot(b"b", 1))
    again = crdt.apply(gone, CounterOp(2), Dot(b"a", 2), 0, LIMITS)
    assert crdt.value(crdt.merge(again, c)) == 2  # the deleted 5 does not come back


def test_hll_estimates_within_three_percent_and_merges_as_the_union() -> None:
    elements = [f"e{i}".encode() for i in range(10_000)]
    h = crdt.apply(crdt.new("hll", 14), HllOp(tuple(elements)), Dot(b"a", 1), 0, LIMITS)
    assert abs(crdt.value(h) - 10_000) < 300
    left = crdt.apply(crdt.new("hll", 14), HllOp(tuple(elements[:6000])), Dot(b"a", 1), 0, LIMITS)
    right = crdt.apply(crdt.new("hll", 14), HllOp(tuple(elements[4000:])), Dot(b"b", 1), 0, LIMITS)
    assert crdt.merge(left, right).body == h.body
    with pytest.raises(CrdtError):
        crdt.merge(crdt.new("hll", 12), crdt.new("hll", 14))


def test_limits_are_enforced_as_too_large() -> None:
    small = Limits(set_elements_max=3, map_fields_max=2, depth_max=2, element_bytes_max=8, deferred_max=1)
    cases = [
        ("set", SetOp((b"a", b"b", b"c", b"d"))),
        ("set", SetOp((b"x" * 9,))),
        ("map", MapOp(((b"a", "flag", FlagOp(True)), (b"b", "flag", FlagOp(True)), (b"c", "flag", FlagOp(True))))),
        ("map", MapOp(((b"a", "map", MapOp(((b"b", "map", MapOp(((b"c", "flag", FlagOp(True)),))),))),))),
    ]
    for kind, op in cases:
        with pytest.raises(CrdtError) as err:
            crdt.apply(crdt.new(kind), op, Dot(b"a", 1), 0, small)
        assert err.value.kind == "too_large", op
    tiny = Limits(state_bytes_max=64)
    with pytest.raises(CrdtError) as err:
        crdt.apply(crdt.new("set"), SetOp(tuple(b"e%d" % i for i in range(20))), Dot(b"a", 1), 0, tiny)
    assert err.value.kind == "too_large"
    with pytest.raises(CrdtError) as err:
        crdt.apply(crdt.new("counter"), CounterOp(1 << 62), Dot(b"a", 1), 0, LIMITS)
        big = crdt.apply(crdt.new("counter"), CounterOp((1 << 63) - 1), Dot(b"a", 1), 0, LIMITS)
        crdt.apply(big, CounterOp(1), Dot(b"a", 2), 0, LIMITS)
    assert err.value.kind == "bad_request"


@settings(max_examples=150, deadline=None)
@given(histories())
def test_encoding_round_trips(h: History) -> None:
    for state in h.states:
        assert crdt.decode(crdt.encode(state)) == state


@settings(max_examples=300, deadline=None)
@given(histories(), st.data())
def test_decoding_damaged_bytes_raises_only_crdt_error(h: History, data: st.DataObject) -> None:
    raw = bytearray(crdt.encode(h.states[0]))
    how = data.draw(st.integers(0, 2))
    if how == 0 and raw:
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    elif how == 1 and raw:
        raw[data.draw(st.integers(0, len(raw) - 1))] ^= data.draw(st.integers(1, 255))
    else:
        raw = bytearray(data.draw(st.binary(max_size=64)))
    try:
        crdt.decode(bytes(raw))
    except CrdtError as exc:
        assert exc.kind == "bad_request"


@pytest.mark.parametrize(
    ("kind", "body", "expected"),
    [
        ("counter", {"increment": 5}, CounterOp(5)),
        ("counter", {"decrement": 2}, CounterOp(-2)),
        ("counter", 7, CounterOp(7)),
        ("set", {"add": "a"}, SetOp((b"a",))),
        ("set", {"add_all": ["a", "b"], "remove_all": ["c"]}, SetOp((b"a", b"b"), (b"c",))),
        ("set", {"remove": "x", "context": "abc"}, SetOp((), (b"x",))),
        ("hll", {"add_all": ["a"]}, HllOp((b"a",))),
        (
            "map",
            {
                "update": {
                    "name_register": "x",
                    "r2_register": {"assign": "y"},
                    "n_counter": {"increment": 1},
                    "c_counter": 3,
                    "on_flag": "enable",
                    "tags_set": {"add": "t"},
                    "sub_map": {"update": {"a_flag": "disable"}},
                },
                "remove": ["old_set"],
                "add": "empty_set",
            },
            MapOp(
                (
                    (b"name", "register", RegisterOp(b"x")),
                    (b"r2", "register", RegisterOp(b"y")),
                    (b"n", "counter", CounterOp(1)),
                    (b"c", "counter", CounterOp(3)),
                    (b"on", "flag", FlagOp(True)),
                    (b"tags", "set", SetOp((b"t",))),
                    (b"sub", "map", MapOp(((b"a", "flag", FlagOp(False)),))),
                    (b"empty", "set", None),
                ),
                ((b"old", "set"),),
            ),
        ),
    ],
)
def test_riak_json_operations_parse(kind: str, body: object, expected: crdt.Op) -> None:
    op, _ = crdt.parse_op(kind, body)
    assert op == expected


@pytest.mark.parametrize(
    ("kind", "body"),
    [
        ("counter", {"increment": "1"}),
        ("counter", True),
        ("counter", {"increment": 1, "decrement": 1}),
        ("counter", {"add": "x"}),
        ("set", {"increment": 1}),
        ("set", {"add": 3}),
        ("set", {}),
        ("set", ["a"]),
        ("hll", {"remove": "x"}),
        ("map", {"update": {"x_tree": 1}}),
        ("map", {"update": {"noname": 1}}),
        ("map", {"update": {"on_flag": "maybe"}}),
        ("map", {"update": {"n_counter": {"add": 1}}}),
        ("map", {"delete": []}),
        ("set", {"add": "x", "context": 5}),
        ("tree", {}),
    ],
)
def test_bad_operations_are_refused(kind: str, body: object) -> None:
    with pytest.raises(CrdtError) as err:
        crdt.parse_op(kind, body)
    assert err.value.kind == "bad_request"
    json.dumps(str(err.value))


def _assign(state: State, value: bytes, dot: Dot, now_us: int) -> State:
    return crdt.apply(state, MapOp(((b"r", "register", RegisterOp(value)),)), dot, now_us, LIMITS)


def test_a_register_merges_as_a_lattice_whatever_the_timestamps() -> None:
    """A register keeps the versions no one has seen: a value written at the same time as a remove
    (and unseen by it) survives in every order of merging, and a removed one never comes back."""
    x = _assign(crdt.new("map"), b"hi", Dot(b"A", 1), 2)
    y = _assign(crdt.new("map"), b"lo", Dot(b"B", 1), 1)
    z = crdt.apply(x, MapOp((), ((b"r", "register"),)), Dot(b"C", 1), 0, LIMITS)
    left = crdt.merge(z, crdt.merge(x, y))
    right = crdt.merge(crdt.merge(z, x), y)
    assert enc(left) == enc(right) and crdt.value(left) == {(b"r", "register"): b"lo"}
    old = _assign(crdt.new("map"), b"old", Dot(b"A", 1), 100)
    removed = crdt.apply(old, MapOp((), ((b"r", "register"),)), Dot(b"B", 2), 0, LIMITS)
    again = _assign(removed, b"aaa", Dot(b"B", 3), 100)
    assert crdt.value(crdt.merge(old, again)) == {(b"r", "register"): b"aaa"}
    assert enc(crdt.merge(old, again)) == enc(again)


def test_a_delete_keeps_the_removes_still_waiting_for_their_context() -> None:
    at_a = crdt.apply(crdt.new("set"), SetOp((b"x",)), Dot(b"A", 1), 0, LIMITS)
    at_b = crdt.apply(crdt.new("set"), SetOp((b"y",)), Dot(b"B", 1), 0, LIMITS)
    waiting = crdt.apply(at_b, SetOp((), (b"x",)), Dot(b"B", 2), 0, LIMITS, crdt.clock_vector(at_a))
    deleted = crdt.delete_state(waiting, Dot(b"B", 3))
    assert deleted.deferred and enc(crdt.merge(waiting, deleted)) == enc(deleted)
    assert crdt.value(crdt.merge(deleted, at_a)) == []


def test_a_delete_removes_what_the_read_before_it_saw_even_where_its_coordinator_holds_nothing() -> None:
    read = crdt.apply(crdt.new("set"), SetOp((b"x",)), Dot(b"A", 1), 0, LIMITS)
    concurrent = crdt.apply(crdt.new("set"), SetOp((b"y",)), Dot(b"C", 1), 0, LIMITS)
    deleted = crdt.delete_state(crdt.new("set"), Dot(b"B", 1), crdt.clock_vector(read))
    assert crdt.value(crdt.join_all([deleted, read, concurrent])) == [b"y"]


def test_past_the_deferred_limit_only_a_new_waiting_remove_is_refused() -> None:
    small = Limits(deferred_max=1)
    ahead = [crdt.apply(crdt.new("set"), SetOp((b"e%d" % i,)), Dot(b"A%d" % i, 1), 0, small) for i in range(2)]
    waits = [
        crdt.apply(crdt.new("set"), SetOp((), (b"e%d" % i,)), Dot(b"B%d" % i, 1), 0, small, crdt.clock_vector(ahead[i]))
        for i in range(2)
    ]
    both = crdt.merge(waits[0], waits[1])
    assert len(both.deferred) == 2
    grown = crdt.apply(both, SetOp((b"new",)), Dot(b"C", 1), 0, small)  # adds no waiting remove: taken
    assert crdt.value(grown) == [b"new"]
    with pytest.raises(CrdtError) as err:
        crdt.apply(grown, SetOp((), (b"z",)), Dot(b"C", 2), 0, small, ((b"Q", 9),))
    assert err.value.kind == "too_large"


def test_a_state_merged_past_a_limit_can_still_shrink_but_not_grow() -> None:
    small = Limits(set_elements_max=2)
    a = crdt.apply(crdt.new("set"), SetOp((b"a", b"b")), Dot(b"A", 1), 0, small)
    b = crdt.apply(crdt.new("set"), SetOp((b"c", b"d")), Dot(b"B", 1), 0, small)
    both = crdt.merge(a, b)
    assert crdt.value(crdt.apply(both, SetOp((), (b"a",)), Dot(b"A", 2), 0, small)) == [b"b", b"c", b"d"]
    with pytest.raises(CrdtError):
        crdt.apply(both, SetOp((b"e",)), Dot(b"A", 2), 0, small)


def test_an_operation_naming_more_elements_than_a_set_may_hold_is_refused_before_any_work() -> None:
    small = Limits(set_elements_max=3)
    for kind, op in (
        ("set", SetOp((), (b"a", b"b", b"c", b"d"))),
        ("hll", HllOp((b"a", b"b", b"c", b"d"))),
        ("map", MapOp(((b"s", "set", SetOp((b"a", b"b", b"c"))),))),
    ):
        with pytest.raises(CrdtError) as err:
            crdt.apply(crdt.new(kind), op, Dot(b"a", 1), 0, small)
        assert err.value.kind == "too_large"
