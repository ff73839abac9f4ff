"""A partition-aware client routes like the nodes do while the ring moves, and notices a moved ring."""

from __future__ import annotations

import base64

from dynastore.client.routing import RingView, route
from dynastore.core import placement
from dynastore.core.membership import RingState
from dynastore.core.ring import claim


def ring_json(state: RingState, buckets: dict[bytes, int] | None = None) -> dict[str, object]:
    members = sorted(set(state.owners) | set(state.next_owners or ()))
    return {
        "cluster": "dynastore",
        "version": state.version,
        "epoch": f"{state.version}.{len(state.done)}",
        "owners": list(state.owners),
        "next_owners": None if state.next_owners is None else list(state.next_owners),
        "done": sorted([p, n] for p, n in state.done),
        "members": {m: {"host": "127.0.0.1", "http_port": 8000 + i} for i, m in enumerate(members)},
        "n_val": 3,
        "bucket_n_vals": {base64.b64encode(b).decode(): n for b, n in (buckets or {}).items()},
    }


def test_routing_during_a_transition_follows_each_partitions_switch_like_the_nodes() -> None:
    """For every key, the client's primaries are the nodes' serving primaries: old ring until the
    partition's transfers are done, next ring after."""
    old = claim({"a": 1, "b": 1, "c": 1}, 16, 3)
    nxt = claim({"a": 1, "b": 1, "c": 1, "d": 1}, 16, 3, old)
    pending = RingState(2, "a", old.owners, nxt.owners, frozenset())
    receivers = {p: placement.receivers(pending, p, 3) for p in range(16)}
    half_done = frozenset((p, r) for p in range(8) for r in receivers[p])
    state = RingState(2, "a", old.owners, nxt.owners, half_done)
    view = RingView.from_json(ring_json(state), "http://127.0.0.1:8000")
    assert view.state == RingState(2, "", old.owners, nxt.owners, half_done)
    for i in range(200):
        key = b"k%d" % i
        partition = old.partition_of(b"b", key)
        expected = placement.placement(state, partition, 3).plist.primary_nodes
        assert route(view.state, b"b", key, 3).primaries == expected
        if receivers[partition]:
            serving = nxt if partition < 8 else old
            assert expected == serving.replicas(partition, 3)


def test_bucket_n_vals_published_in_the_ring_are_read() -> None:
    """The ring carries each configured bucket's n_val, so the client needs no props lookup."""
    ring = claim({"a": 1, "b": 1, "c": 1}, 16, 3)
    view = RingView.from_json(ring_json(RingState(1, "a", ring.owners), {b"single": 1, b"\x00bin": 2}), "http://x:1")
    assert view.bucket_n_vals == {b"single": 1, b"\x00bin": 2}
    assert view.epoch == "1.0"


def test_a_view_differs_in_placement_when_a_partition_switches() -> None:
    """Two views of the same transition place keys differently once more transfers are done."""
    old = claim({"a": 1, "b": 1}, 16, 2)
    nxt = claim({"a": 1, "b": 1, "c": 1}, 16, 2, old)
    before = RingView.from_json(ring_json(RingState(2, "a", old.owners, nxt.owners)), "http://x:1")
    done = frozenset((p, "c") for p in range(16))
    after = RingView.from_json(ring_json(RingState(2, "a", old.owners, nxt.owners, done)), "http://x:1")
    assert not before.same_placement(after)
    assert before.same_placement(before)
