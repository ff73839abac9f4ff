"""Bucket types: their names never collide with default buckets, their records merge like any cluster
metadata and survive encoding (older states included), and their changes are checked as Riak checks
them (datatype fixed once active, hll_precision fixed at creation)."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynastore.core import buckettypes, hashing, keys, membership
from dynastore.core.membership import ClusterState, Member
from dynastore.settings import Settings


def _state() -> ClusterState:
    return membership.new_cluster("c", Member("n0", "127.0.0.1", 9000, 8098), 8, 3)


@given(st.text(alphabet="abcXYZ09_.-", min_size=1, max_size=64), st.binary(min_size=1, max_size=40))
def test_a_typed_bucket_name_round_trips_and_never_equals_a_default_bucket(type_name: str, bucket: bytes) -> None:
    internal = buckettypes.typed(type_name, bucket)
    if type_name == buckettypes.DEFAULT:
        assert internal == bucket
        return
    assert buckettypes.split(internal) == (type_name, bucket)
    assert internal != bucket and buckettypes.is_typed(internal)
    # The key hashes its type too: the same bucket and key of two types live at different positions.
    assert hashing.key_position(internal, b"k") != hashing.key_position(bucket, b"k")
    assert keys.name_problem(Settings(), internal, b"k") is None


def test_a_default_bucket_may_not_start_with_nul_and_a_typed_name_is_checked() -> None:
    s = Settings()
    assert keys.name_problem(s, b"\x00plain", b"k") is not None
    assert keys.name_problem(s, b"\x00bad type\x00b", b"k") is not None
    assert keys.name_problem(s, b"\x00default\x00b", b"k") is not None
    assert keys.name_problem(s, b"\x00t\x00", b"k") is not None  # an empty bucket of a type
    assert keys.name_problem(s, buckettypes.typed("t", b"x" * (s.bucket_bytes_max + 1)), b"k") is not None
    assert keys.name_problem(s, buckettypes.typed("t", b"x" * s.bucket_bytes_max), b"k") is None


def test_changes_are_refused_as_riak_refuses_them() -> None:
    check = buckettypes.change_problem
    assert check(None, False, {"datatype": "counter"}, {"datatype": "counter", "allow_mult": True}) is None
    assert "datatype must be" in (check(None, False, {"datatype": "tree"}, {"datatype": "tree"}) or "")
    assert "unknown" in (check(None, False, {"colour": 1}, {}) or "")
    # Inactive: the datatype may still change; active: never.
    assert check({"datatype": "set"}, False, {"datatype": "map"}, {"datatype": "map"}) is None
    assert "fixed" in (check({"datatype": "set"}, True, {"datatype": "map"}, {"datatype": "map"}) or "")
    assert check({"datatype": "set"}, True, {"datatype": "set", "n_val": 2}, {"datatype": "set"}) is None
    hll = {"datatype": "hll", "hll_precision": 12}
    assert "fixed" in (check(hll, False, {"hll_precision": 13}, {**hll, "hll_precision": 13}) or "")
    assert "4 to 16" in (check(None, False, {"hll_precision": 3}, {"datatype": "hll", "hll_precision": 3}) or "")
    assert "hll" in (check(None, False, {"hll_precision": 12}, {"hll_precision": 12}) or "")
    assert "allow_mult" in (check(None, False, {"datatype": "set"}, {"datatype": "set", "allow_mult": False}) or "")
    assert buckettypes.bucket_change_problem({"datatype": "map"}, {"datatype": "set"}) is not None
    assert buckettypes.bucket_change_problem({"datatype": "set", "n_val": 2}, {"datatype": "set"}) is None


@st.composite
def typed_states(draw: st.DrawFn) -> ClusterState:
    state = _state()
    for _ in range(draw(st.integers(0, 6))):
        name = draw(st.sampled_from(["counters", "sets", "maps"]))
        props = {"n_val": draw(st.integers(1, 3)), "datatype": draw(st.sampled_from(["counter", "set"]))}
        state = state.with_type(name, props, draw(st.booleans()), draw(st.sampled_from(["n0", "n1", "n2"])))
    return state


@settings(max_examples=150, deadline=None)
@given(typed_states(), typed_states(), typed_states())
def test_type_records_merge_commutatively_associatively_idempotently(
    a: ClusterState, b: ClusterState, c: ClusterState
) -> None:
    assert membership.merge(a, b) == membership.merge(b, a)
    assert membership.merge(membership.merge(a, b), c) == membership.merge(a, membership.merge(b, c))
    assert membership.merge(a, a) == a


def test_types_survive_encoding_and_an_older_state_reads_with_none() -> None:
    state = _state().with_type("counters", {"datatype": "counter"}, True, "n0")
    back = membership.decode(membership.encode(state))
    assert back == state and back.bucket_type("counters") is not None
    # A state of format 2 (the previous release's data directory) has no types.
    data = msgpack.unpackb(membership.encode(state), raw=False)
    old = msgpack.packb([2, *data[1:6]], use_bin_type=True)
    assert membership.decode(old).types == ()


@pytest.mark.parametrize(
    "entry",
    [
        ["bad name", [], True, 1, "n0"],
        ["t", [["datatype", "tree"]], True, 1, "n0"],
        ["t", [["hll_precision", 99]], True, 1, "n0"],
        ["t", [], "yes", 1, "n0"],
        ["t", [["n_val", 1], ["n_val", 2]], True, 1, "n0"],
    ],
)
def test_a_malformed_type_record_from_a_peer_is_refused(entry: list[object]) -> None:
    data = msgpack.unpackb(membership.encode(_state()), raw=False)
    data[6] = [entry]
    with pytest.raises(membership.StateError):
        membership.decode(msgpack.packb(data, use_bin_type=True))


def test_an_active_record_wins_over_a_concurrent_change_of_an_inactive_one() -> None:
    """One node activates a type while another, that has not heard of it, changes its datatype: every
    node ends with the active type and the datatype it was activated with."""
    base = _state().with_type("t", {"datatype": "counter"}, False, "n0")
    activated = base.with_type("t", {"datatype": "counter"}, True, "n0")
    changed = base.with_type("t", {"datatype": "set"}, False, "n1")
    for merged in (membership.merge(activated, changed), membership.merge(changed, activated)):
        record = merged.bucket_type("t")
        assert record is not None and record.active and record.as_dict()["datatype"] == "counter"


def test_a_type_made_an_hll_while_inactive_may_choose_its_precision_once() -> None:
    check = buckettypes.change_problem
    changes = {"datatype": "hll", "hll_precision": 12}
    assert check({}, False, changes, changes) is None
    assert "fixed" in (check({"datatype": "hll", "hll_precision": 12}, False, {"hll_precision": 10}, {}) or "")
