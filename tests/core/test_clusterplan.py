"""Staged membership changes: a plan shows exactly the ring the claimant will make of the committed
changes, staging moves nothing, replace hands over exactly the old node's partitions, clear drops
everything staged, bad changes are refused and change nothing, and the records merge and encode like
the rest of the cluster state (a format-3 state of the previous release reads with nothing staged)."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import replace

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynastore.core import clusterplan, membership
from dynastore.core.clusterplan import PlanError
from dynastore.core.membership import ClusterState, Member, RingState
from dynastore.core.ring import claim

RING_SIZE = 64
N_VAL = 3


def cluster_of(count: int, ring_size: int = RING_SIZE) -> ClusterState:
    """A settled cluster of `count` valid members n0..n(count-1), its ring claimed as the claimant would."""
    members = tuple(Member(f"n{i}", "127.0.0.1", 9000 + i, 8098 + i) for i in range(count))
    owners = claim({m.name: 1 for m in members}, ring_size, N_VAL).owners
    return ClusterState("c", members, RingState(1, "n0", owners))


def with_staged_joiner(state: ClusterState, name: str, weight: int = 1) -> ClusterState:
    """`name` added by a staged join, as the seed adds it (raises PlanError when the ring is full)."""
    joiner = Member(name, "127.0.0.1", 9100, 8198, weight=weight, status="joining")
    return clusterplan.stage_join(state.with_member(joiner), name, "n0")


def claimant_ring(state: ClusterState) -> tuple[str, ...]:
    """The owners the claimant gives the ring after a commit (the function `_claim` calls)."""
    return clusterplan.future_owners(state, N_VAL)


def test_a_staged_join_and_leave_move_nothing_until_commit_and_the_plan_is_what_commit_does() -> None:
    state = with_staged_joiner(cluster_of(3), "n3")
    state = clusterplan.stage(state, "n1", "leave", "n0")
    # Staged only: the claimant's ring is the current one, and n3 is not given a partition.
    assert "n3" not in clusterplan.owning_weights(state)
    assert claimant_ring(state) == state.ring.owners
    plan = clusterplan.plan(state, N_VAL)
    assert [(c.node, c.action) for c in plan.changes] == [("n1", "leave"), ("n3", "join")]
    committed = clusterplan.commit(state, "n2")
    assert plan.owners_after == claimant_ring(committed)
    assert committed.member("n1").status == "leaving"  # type: ignore[union-attr]
    assert not clusterplan.pending(committed)
    by_node = {n.name: n for n in plan.nodes}
    assert by_node["n1"].partitions_after == 0 and by_node["n1"].status_after == "exiting"
    assert by_node["n3"].partitions_now == 0 and by_node["n3"].status_after == "valid"
    assert by_node["n3"].gains == by_node["n3"].partitions_after > 0
    # Gains and losses balance, and each node's count after is its count now plus gains minus losses.
    assert sum(n.gains for n in plan.nodes) == sum(n.losses for n in plan.nodes) == plan.partitions_moved
    for n in plan.nodes:
        assert n.partitions_after == n.partitions_now + n.gains - n.losses
        assert n.partitions_after == Counter(plan.owners_after)[n.name]
    # Only the leaver's partitions move (n3 takes over n1's share, the others keep theirs).
    assert {source for source, _, _ in plan.moves} == {"n1"}


@settings(max_examples=60, deadline=None)
@given(
    st.integers(min_value=2, max_value=7),
    st.lists(st.sampled_from(["join", "leave", "remove", "replace"]), min_size=1, max_size=4),
    st.sampled_from([8, 16, 64]),
)
def test_the_planned_ring_is_always_the_ring_the_claimant_makes_of_the_commit(
    count: int, actions: list[str], ring_size: int
) -> None:
    state = cluster_of(count, ring_size)
    joiners = 0
    for i, action in enumerate(actions):
        node = f"n{i % count}"
        try:
            if action == "join":
                state = with_staged_joiner(state, f"j{joiners}")
                joiners += 1
            elif action == "replace":
                state = with_staged_joiner(state, f"j{joiners}")
                state = clusterplan.stage(state, node, "replace", "n0", f"j{joiners}")
                joiners += 1
            else:
                state = clusterplan.stage(state, node, action, "n0" if node != "n0" else "n1")
        except PlanError:
            continue
    if not clusterplan.pending(state):
        return
    plan = clusterplan.plan(state, N_VAL)
    committed = clusterplan.commit(state, "n0")
    assert plan.owners_after == claimant_ring(committed)
    # Whatever the mix, every node still owning is within one partition of its fair share.
    counts = Counter(plan.owners_after)
    fair = ring_size / len(counts)
    assert all(abs(c - fair) < 1 + 1e-9 for c in counts.values()), counts


def test_replace_gives_the_new_node_exactly_the_old_nodes_partitions() -> None:
    state = with_staged_joiner(cluster_of(4), "n9")
    state = clusterplan.stage(state, "n2", "replace", "n0", "n9")
    plan = clusterplan.plan(state, N_VAL)
    expected = tuple("n9" if owner == "n2" else owner for owner in state.ring.owners)
    assert plan.owners_after == expected
    assert plan.moves == (("n2", "n9", state.ring.owners.count("n2")),)
    committed = clusterplan.commit(state, "n0")
    assert claimant_ring(committed) == expected
    assert committed.member("n2").status == "leaving"  # type: ignore[union-attr]
    # The replace stays recorded, committed, until a ring without n2 is installed.
    assert clusterplan.committed_replacements(committed) == {"n2": "n9"}
    installed = replace(committed, ring=RingState(3, "n0", expected))
    assert clusterplan.committed_replacements(clusterplan.settle_replacements(installed, "n0")) == {}


def test_clear_drops_every_staged_change_and_removes_nodes_staged_to_join() -> None:
    state = with_staged_joiner(cluster_of(3), "n3")
    state = clusterplan.stage(state, "n1", "leave", "n0")
    cleared = clusterplan.clear(state, "n2")
    assert clusterplan.pending(cleared) == []
    assert cleared.member("n3").status == "removed"  # type: ignore[union-attr]
    assert cleared.member("n1").status == "valid"  # type: ignore[union-attr]
    assert claimant_ring(cleared) == state.ring.owners
    with pytest.raises(PlanError, match="no staged changes"):
        clusterplan.plan(cleared, N_VAL)
    # Merged with a copy from before the clear (gossiped late), the clear wins: records only go up.
    assert clusterplan.pending(membership.merge(state, cleared)) == []


@pytest.mark.parametrize(
    ("node", "action", "author", "target", "reason"),
    [
        ("n7", "leave", "n0", "", "not a member"),
        ("n0", "remove", "n0", "", "cannot remove itself"),
        ("n2", "replace", "n0", "n8", "not a node staged to join"),
        ("n2", "replace", "n0", "n0", "not a node staged to join"),
        ("n4", "replace", "n0", "n3", "already leaving"),
        ("n1", "leave", "n0", "", "already has a staged leave"),
        ("n3", "leave", "n0", "", "already has a staged join"),
        ("n2", "grow", "n0", "", "cannot stage"),
    ],
)
def test_bad_staged_changes_are_refused_with_a_reason_and_change_nothing(
    node: str, action: str, author: str, target: str, reason: str
) -> None:
    state = with_staged_joiner(cluster_of(3), "n3")
    state = clusterplan.stage(state, "n1", "leave", "n0")
    state = state.with_member(Member("n4", "127.0.0.1", 9004, 8102, status="leaving"))
    before = membership.encode(state)
    with pytest.raises(PlanError, match=reason):
        clusterplan.stage(state, node, action, author, target)
    assert membership.encode(state) == before


def test_a_node_is_replaced_by_one_node_only_the_last_owners_cannot_all_go_and_the_ring_cannot_overfill() -> None:
    state = with_staged_joiner(cluster_of(3), "n3")
    state = clusterplan.stage(state, "n1", "replace", "n0", "n3")
    with pytest.raises(PlanError, match="already the replacement"):
        clusterplan.stage(state, "n2", "replace", "n0", "n3")
    two = clusterplan.stage(cluster_of(2), "n1", "leave", "n0")
    with pytest.raises(PlanError, match="no member to own the ring"):
        clusterplan.stage(two, "n0", "leave", "n0")
    with pytest.raises(PlanError, match="cannot share the ring's 4 partitions"):
        with_staged_joiner(cluster_of(4, ring_size=4), "n4")


def test_plan_and_commit_refuse_while_a_ring_transition_is_in_progress_and_warn_below_n_val() -> None:
    state = clusterplan.stage(cluster_of(3), "n2", "leave", "n0")
    moving = replace(state, ring=replace(state.ring, next_owners=state.ring.owners[::-1]))
    for refused in (clusterplan.plan, lambda s, _n: clusterplan.commit(s, "n0")):
        with pytest.raises(PlanError, match="transition is in progress"):
            refused(moving, N_VAL)
    # Two owners for n_val 3: allowed, as in Riak, with a warning.
    assert any("distinct nodes" in w for w in clusterplan.plan(state, N_VAL).warnings)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["n0", "n1", "n2"]), st.sampled_from(["", "leave", "remove"])), max_size=6))
def test_staged_records_merge_commutatively_associatively_and_idempotently(
    edits: list[tuple[str, str]],
) -> None:
    base = cluster_of(3)
    views = [base, base, base]
    for i, (node, action) in enumerate(edits):
        views[i % 3] = views[i % 3].with_staged(node, action, f"n{i % 3}")
    a, b, c = views
    merge = membership.merge
    assert merge(a, b) == merge(b, a)
    assert merge(merge(a, b), c) == merge(a, merge(b, c))
    assert merge(a, a) == a


def test_staged_changes_survive_encoding_and_a_format_3_state_reads_with_nothing_staged() -> None:
    state = with_staged_joiner(cluster_of(3), "n3")
    state = clusterplan.stage(state, "n1", "replace", "n0", "n3")
    back = membership.decode(membership.encode(state))
    assert back == state and back.staged_for("n1") == state.staged_for("n1")
    # The previous release's data directory holds a format-3 state: seven fields, nothing staged.
    data = msgpack.unpackb(membership.encode(state), raw=False)
    assert data[0] == membership.STATE_FORMAT == 4
    old = msgpack.packb([3, *data[1:7]], use_bin_type=True)
    migrated = membership.decode(old)
    assert migrated.staged == () and migrated.members == state.members and migrated.ring == state.ring
    assert msgpack.unpackb(membership.encode(migrated), raw=False)[0] == 4


@pytest.mark.parametrize(
    "entry",
    [
        ["n9", "leave", "", False, 1, "n0"],
        ["n1", "grow", "", False, 1, "n0"],
        ["n1", "leave", "n2", False, 1, "n0"],
        ["n1", "replace", "n9", False, 1, "n0"],
        ["n1", "leave", "", True, 1, "n0"],
        ["n1", "leave", "", False, -1, "n0"],
    ],
)
def test_a_malformed_staged_record_is_refused_on_decode(entry: list[object]) -> None:
    data = msgpack.unpackb(membership.encode(cluster_of(3)), raw=False)
    data[7] = [entry]
    with pytest.raises(membership.StateError):
        membership.decode(msgpack.packb(data, use_bin_type=True))


def test_a_commit_of_a_plan_refuses_once_the_staged_changes_differ_from_it() -> None:
    state = clusterplan.stage(cluster_of(4), "n1", "leave", "n0")
    planned = clusterplan.plan(state, N_VAL).plan_id
    # Another change staged elsewhere arrives by gossip after the plan was shown.
    later = clusterplan.stage(state, "n2", "remove", "n3")
    with pytest.raises(PlanError, match="changed since that plan"):
        clusterplan.commit(later, "n0", planned)
    assert clusterplan.commit(state, "n0", planned).member("n1").status == "leaving"  # type: ignore[union-attr]
    # So is an unstaged remove that lands between the plan and its commit (the ring not yet changed).
    n3 = state.member("n3")
    assert n3 is not None
    removed = state.with_member(replace(n3, status="removed", version=n3.version + 1))
    with pytest.raises(PlanError, match="changed since that plan"):
        clusterplan.commit(removed, "n0", planned)


@pytest.mark.parametrize(
    ("method", "route"),
    [
        ("GET", b"plan"),
        ("POST", b"commit"),
        ("POST", b"clear"),
        ("POST", b"replace"),
        ("POST", b"repair"),
        ("POST", b"join"),
    ],
)
def test_the_staged_change_and_repair_routes_need_an_operator_and_aae_status_is_a_status_read(
    method: str, route: bytes
) -> None:
    from dynastore.api import auth

    assert auth.need_of(method, [b"admin", route], {}) == auth.OPERATOR
    assert auth.need_of("GET", [b"admin", b"aae"], {}) == auth.STATUS


def test_commit_refuses_what_plan_refuses_when_the_state_changed_after_the_changes_were_staged() -> None:
    """A one-node cluster: a join and the node's own leave are staged; then the joiner is removed at
    once (unstaged). Plan refuses the leave of the last owner, and so does commit (no plan id given)."""
    state = with_staged_joiner(cluster_of(1), "j")
    state = clusterplan.stage(state, "n0", "leave", "n0")
    j = state.member("j")
    assert j is not None
    state = state.with_member(replace(j, status="removed", version=j.version + 1))
    with pytest.raises(PlanError):
        clusterplan.plan(state, N_VAL)
    with pytest.raises(PlanError, match="no member to own the ring"):
        clusterplan.commit(state, "n0")


def test_a_cluster_that_has_staged_as_many_nodes_as_a_state_may_hold_refuses_one_more() -> None:
    """The state's staged records are bounded (membership.STAGED_MAX): staging past it is refused rather
    than written into a state that could not be read back."""
    state = cluster_of(3)
    names = [f"gone{i:05d}" for i in range(membership.STAGED_MAX)]
    gone = tuple(Member(name, "127.0.0.1", 1, 1, status="removed", version=2) for name in names)
    records = tuple(membership.Staged(name, "", version=2, author="n0") for name in names)
    state = replace(state, members=state.members + gone, staged=records)
    assert len(membership.decode(membership.encode(state)).staged) == membership.STAGED_MAX
    with pytest.raises(PlanError, match="more than"):
        clusterplan.stage(state, "n1", "leave", "n0")


@pytest.mark.parametrize("raw", ["²", "١٢", "-1", "1234567", ""])
def test_a_repair_of_a_partition_that_is_no_number_is_a_bad_request(raw: str) -> None:
    """What str.isdigit takes but int() does not (superscripts, other scripts' digits) is refused as
    clearly as any other non-number, not answered with a 500."""
    from types import SimpleNamespace

    from dynastore.api import admin
    from dynastore.api.answers import BadRequest

    runtime = SimpleNamespace(core=object())
    request = SimpleNamespace(query={"partition": raw})
    with pytest.raises(BadRequest, match="partition must be a partition number"):
        asyncio.run(admin._repair(runtime, request))  # type: ignore[arg-type]
