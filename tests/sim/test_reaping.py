"""Reaping tombstones in a simulated cluster: a reaped key never comes back through an older copy
held elsewhere (a hint a fallback could not deliver yet, a stray copy not yet handed off), tombstones
still go away once those copies are gone, and a new write after the reap is kept."""

from __future__ import annotations

from dynastore.core import keys, objects
from dynastore.core.messages import ClientGet, ClientPut, NotFound, Ok
from dynastore.core.node import ClientJoin
from dynastore.core.objects import Content
from dynastore.core.versions import Context
from dynastore.settings import Settings
from dynastore.sim.cluster import SimCluster

FAST = Settings(ring_size=16, tombstone_grace_ms=3_000, reap_interval_ms=500, hint_scan_interval_ms=300)


def stored(c: SimCluster, node: str, key: bytes) -> objects.Object | None:
    core = c.core(node)
    raw = core.engine.get("data", keys.encode(core.ring.partition_of(b"b", key), b"b", key))
    return None if raw is None else objects.decode_stored(raw)


def read(c: SimCluster, node: str, key: bytes) -> Ok | NotFound:
    response = c.request(node, ClientGet(b"b", key, r="all"))
    assert isinstance(response, (Ok, NotFound)), response
    return response


def delete(c: SimCluster, node: str, key: bytes) -> None:
    """Delete `key` with the context of a read that saw every primary (the value is covered)."""
    seen = read(c, node, key)
    assert isinstance(seen, Ok) and seen.found is not None, seen
    assert isinstance(c.request(node, ClientPut(b"b", key, seen.found.context, None)), Ok)


def reaped_everywhere(c: SimCluster, key: bytes) -> bool:
    return all(stored(c, n, key) is None and c.core(n).engine.count("reap") == 0 for n in c.nodes)


def test_a_hint_delivered_after_the_reap_would_have_happened_does_not_bring_the_value_back() -> None:
    """A fallback holds a hint of the value for a primary it cannot reach, while the coordinator of the
    reap sees every primary healthy: the tombstone is kept until the hint is delivered (and merged
    into it), then reaped. Before the fix, the reap went ahead and the late hint revived the value."""
    c = SimCluster(4, FAST)
    _, plist = c.core("n0").preference_list(b"b", b"k")
    first, _, third = plist.primary_nodes
    fallback = plist.fallbacks[0][1]
    c.crash(third)
    c.settle(3_000)
    assert isinstance(c.request(first, ClientPut(b"b", b"k", None, Content(b"v"))), Ok)
    assert c.core(fallback).hints_pending == 1
    # The primary comes back, but the fallback cannot reach it: the hint stays where it is.
    c.partition({fallback}, {third})
    c.restart(third)
    c.settle(3_000)
    delete(c, first, b"k")
    c.settle(10_000)
    assert c.core(fallback).hints_pending == 1, "the fallback still holds the value"
    c.heal()
    c.settle(2_000)
    assert c.core(fallback).hints_pending == 0
    for node in c.nodes:
        assert isinstance(read(c, node, b"k"), NotFound), node
    assert c.run_until(lambda: reaped_everywhere(c, b"k"), 20_000), "the tombstone is never reaped"
    c.settle(5_000)
    for node in c.nodes:
        assert isinstance(read(c, node, b"k"), NotFound), node


def test_a_stray_copy_handed_off_after_the_reap_would_have_happened_does_not_bring_the_value_back() -> None:
    """A join moves a key away from a node, whose copy is a stray until its next sweep; a delete on the
    new primaries outlives the grace period before that sweep: the tombstone waits for the stray to be
    handed off (merged into it), then goes. Before the fix the sweep revived the reaped value."""
    c = SimCluster(
        3,
        Settings(ring_size=16, tombstone_grace_ms=3_000, reap_interval_ms=500).with_mapping(
            {"stray_scan_interval_ms": 40_000}
        ),
    )
    names = [f"k{i}".encode() for i in range(40)]
    for key in names:
        assert isinstance(c.request("n0", ClientPut(b"b", key, None, Content(b"v"))), Ok)
    before = {key: set(c.core("n0").preference_list(b"b", key)[1].primary_nodes) for key in names}
    c.add_node("n3")
    assert isinstance(c.request("n3", ClientJoin("n0", 1)), Ok)

    def settled() -> bool:
        states = {c.core(n).cluster for n in c.nodes}
        return len(states) == 1 and "n3" in c.core("n0").ring.owners and next(iter(states)).ring.next_owners is None

    assert c.run_until(settled, 30_000)
    key = next(k for k in names if set(c.core("n0").preference_list(b"b", k)[1].primary_nodes) != before[k])
    owners = c.core("n0").preference_list(b"b", key)[1].primary_nodes
    (old_owner,) = before[key] - set(owners)
    assert stored(c, old_owner, key) is not None, "the old owner's copy is a stray now"
    delete(c, owners[0], key)
    c.settle(10_000)
    assert c.run_until(lambda: stored(c, old_owner, key) is None, 40_000), "the stray is never handed off"
    for node in c.nodes:
        assert isinstance(read(c, node, key), NotFound), node
    assert c.run_until(lambda: reaped_everywhere(c, key), 20_000), "the tombstone is never reaped"
    c.settle(5_000)
    for node in c.nodes:
        assert isinstance(read(c, node, key), NotFound), node


def test_a_new_write_after_the_reap_is_kept_whether_blind_or_with_the_context_of_a_read() -> None:
    """Reaping forgets the key: a write with no context, and one with the context of a read after the
    reap, are new versions that every replica stores and every read returns."""
    c = SimCluster(4, FAST)
    assert isinstance(c.request("n1", ClientPut(b"b", b"k", None, Content(b"old"))), Ok)
    delete(c, "n2", b"k")
    assert c.run_until(lambda: reaped_everywhere(c, b"k"), 20_000), "the tombstone is never reaped"
    assert isinstance(c.request("n3", ClientPut(b"b", b"k", None, Content(b"blind"))), Ok)
    c.settle(2_000)
    response = read(c, "n0", b"k")
    assert isinstance(response, Ok) and response.found is not None
    assert [content.value for _, content in response.found.values] == [b"blind"]
    delete(c, "n0", b"k")
    assert c.run_until(lambda: reaped_everywhere(c, b"k"), 20_000), "the second tombstone is never reaped"
    after = read(c, "n1", b"k")
    assert isinstance(after, NotFound)
    context = after.context if after.context is not None else Context()
    assert isinstance(c.request("n1", ClientPut(b"b", b"k", context, Content(b"again"))), Ok)
    c.settle(2_000)
    for node in c.nodes:
        response = read(c, node, b"k")
        assert isinstance(response, Ok) and response.found is not None, node
        assert [content.value for _, content in response.found.values] == [b"again"]


def test_a_member_that_is_down_holds_up_the_reap_until_it_is_back() -> None:
    """A member that is no primary of the key may still hold a hint of it: while it is down nothing is
    reaped, and once it is back the tombstone goes."""
    c = SimCluster(4, FAST)
    assert isinstance(c.request("n0", ClientPut(b"b", b"k", None, Content(b"v"))), Ok)
    _, plist = c.core("n0").preference_list(b"b", b"k")
    outsider = plist.fallbacks[0][1]
    delete(c, plist.primary_nodes[0], b"k")
    c.crash(outsider)
    c.settle(10_000)
    assert all(stored(c, n, b"k") is not None for n in plist.primary_nodes), "reaped while a member was down"
    c.restart(outsider)
    assert c.run_until(lambda: reaped_everywhere(c, b"k"), 20_000), "the tombstone is never reaped"
