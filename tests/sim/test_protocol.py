"""NodeCores in a simulated cluster: quorum reads and writes, siblings, sloppy quorum with hinted
handoff, read repair, deletes and reaping, bucket properties, forwarding and failures."""

from __future__ import annotations

import dataclasses

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynastore.core import keys, messages, objects
from dynastore.core.messages import (
    ClientGet,
    ClientListKeys,
    ClientPut,
    ClientSetBucketProps,
    Failure,
    NotFound,
    Ok,
    PeerError,
)
from dynastore.core.node import ClientJoin
from dynastore.core.objects import Content
from dynastore.core.versions import Context, Dot
from dynastore.settings import Settings
from dynastore.sim.cluster import SimCluster


def put(c: SimCluster, node: str, key: bytes, value: bytes, ctx: Context | None = None, **kw: object) -> Ok:
    response = c.request(node, ClientPut(b"b", key, ctx, Content(value, "text/plain"), **kw))  # type: ignore[arg-type]
    assert isinstance(response, Ok), response
    return response


def get(c: SimCluster, node: str, key: bytes, bucket: bytes = b"b", **kw: object) -> Ok | NotFound | Failure:
    return c.request(node, ClientGet(bucket, key, **kw))  # type: ignore[arg-type]


def values(response: object) -> list[bytes]:
    assert isinstance(response, Ok) and response.found is not None, response
    return sorted(c.value for _, c in response.found.values)


def primaries(c: SimCluster, key: bytes, bucket: bytes = b"b") -> list[str]:
    _, plist = c.core("n0").preference_list(bucket, key)
    return list(plist.primary_nodes)


def local(c: SimCluster, node: str, key: bytes, bucket: bytes = b"b") -> objects.Object | None:
    core = c.core(node)
    skey = keys.encode(core.ring.partition_of(bucket, key), bucket, key)
    raw = core.engine.get("data", skey)
    return None if raw is None else objects.decode_stored(raw)


def test_a_cluster_forms_by_joining_and_every_node_owns_partitions() -> None:
    """Three nodes that joined n0 agree on membership and ring, and each owns a share of it."""
    c = SimCluster(3)
    rings = {name: c.core(name).cluster.ring for name in c.nodes}
    assert len(set(rings.values())) == 1
    counts = c.core("n0").ring.counts()
    assert sorted(counts) == ["n0", "n1", "n2"] and min(counts.values()) >= 5
    assert all(m.status == "valid" for m in c.core("n2").cluster.members)


def test_put_then_get_round_trips_from_any_node() -> None:
    """A write acknowledged by one node is read back, with its content type, from every node."""
    c = SimCluster(3)
    put(c, "n1", b"k", b"hello")
    for node in c.nodes:
        response = get(c, node, b"k")
        assert values(response) == [b"hello"]
        assert isinstance(response, Ok) and response.found is not None
        assert response.found.values[0][1].content_type == "text/plain"
    assert isinstance(get(c, "n0", b"missing"), NotFound)


def test_two_writes_with_the_same_stale_context_become_siblings_and_a_merged_write_resolves_them() -> None:
    """Concurrent writes are both kept; writing with the context that saw both leaves one value."""
    c = SimCluster(3)
    put(c, "n0", b"k", b"v0")
    first = get(c, "n0", b"k")
    assert isinstance(first, Ok) and first.found is not None
    stale = first.found.context
    put(c, "n1", b"k", b"left", stale)
    put(c, "n2", b"k", b"right", stale)
    both = get(c, "n0", b"k")
    assert values(both) == [b"left", b"right"]
    assert isinstance(both, Ok) and both.found is not None
    put(c, "n0", b"k", b"merged", both.found.context)
    assert values(get(c, "n1", b"k")) == [b"merged"]


def test_a_last_write_wins_bucket_never_shows_siblings() -> None:
    """With last_write_wins, concurrent writes resolve to the latest one on every read."""
    c = SimCluster(3)
    assert isinstance(c.request("n0", ClientSetBucketProps(b"b", (("last_write_wins", True),))), Ok)
    c.settle(100)
    put(c, "n0", b"k", b"one")
    c.now_ms += 5
    put(c, "n1", b"k", b"two")
    c.now_ms += 5
    put(c, "n2", b"k", b"three")
    for node in c.nodes:
        assert values(get(c, node, b"k")) == [b"three"]
    for node in primaries(c, b"k"):
        obj = local(c, node, b"k")
        assert obj is not None and len(obj.siblings) == 1


def test_bucket_properties_spread_to_every_node() -> None:
    """Setting props on one node makes them visible on all, and bad props change nothing."""
    c = SimCluster(3)
    assert isinstance(c.request("n1", ClientSetBucketProps(b"pb", (("n_val", 2), ("allow_mult", False)))), Ok)
    c.settle(100)
    for node in c.nodes:
        props = c.core(node).bucket_props(b"pb")
        assert props["n_val"] == 2 and props["allow_mult"] is False
    bad = c.request("n0", ClientSetBucketProps(b"pb", (("n_val", 99),)))
    assert isinstance(bad, Failure) and bad.kind == "bad_request"
    bad = c.request("n0", ClientSetBucketProps(b"pb", (("r", 3),)))
    assert isinstance(bad, Failure) and "n_val=2" in bad.reason
    bad = c.request("n0", ClientSetBucketProps(b"pb", (("colour", "red"),)))
    assert isinstance(bad, Failure) and "colour" in bad.reason
    assert c.core("n2").bucket_props(b"pb")["n_val"] == 2


def test_quorum_values_above_n_val_are_rejected_and_change_nothing() -> None:
    """r or w above n_val, or a word that is not a quorum, is a bad request; nothing is written."""
    c = SimCluster(3)
    bad = c.request("n0", ClientPut(b"b", b"k", None, Content(b"x"), w=4))
    assert isinstance(bad, Failure) and bad.kind == "bad_request"
    bad = c.request("n0", ClientPut(b"b", b"k", None, Content(b"x"), w="most"))
    assert isinstance(bad, Failure) and bad.kind == "bad_request"
    bad = get(c, "n0", b"k", r=7)
    assert isinstance(bad, Failure) and bad.kind == "bad_request"
    assert isinstance(get(c, "n0", b"k", r="all"), NotFound)


def test_an_oversize_object_is_refused() -> None:
    """Objects over the size limit are refused as too large and nothing is stored."""
    c = SimCluster(3, Settings(ring_size=16, object_bytes_max=1000))
    bad = c.request("n0", ClientPut(b"b", b"k", None, Content(b"x" * 1001)))
    assert isinstance(bad, Failure) and bad.kind == "too_large"
    assert isinstance(get(c, "n0", b"k"), NotFound)


def test_a_write_sent_to_a_node_outside_the_preference_list_is_forwarded() -> None:
    """With n_val 1, a write arriving at another node is forwarded to the owner, which coordinates it."""
    c = SimCluster(3)
    c.request("n0", ClientSetBucketProps(b"b", (("n_val", 1), ("w", 1), ("r", 1))))
    c.settle(100)
    owner = primaries(c, b"k")[0]
    other = next(n for n in c.nodes if n != owner)
    put(c, other, b"k", b"v")
    assert c.core(other).stats.forwarded_puts == 1
    assert c.core(owner).stats.coordinated_puts == 1
    assert local(c, owner, b"k") is not None and local(c, other, b"k") is None


def test_a_write_prefers_the_coordinator_named_by_the_read_context() -> None:
    """The context of a read names the fastest primary; a write with it is coordinated there."""
    c = SimCluster(5)
    put(c, "n0", b"k", b"v")
    reader = next(n for n in c.nodes if n not in primaries(c, b"k"))
    response = get(c, reader, b"k")
    assert isinstance(response, Ok) and response.found is not None
    preferred = response.found.context.coordinator
    assert preferred in primaries(c, b"k")
    before = c.core(preferred).stats.coordinated_puts
    put(c, reader, b"k", b"w", response.found.context)
    assert c.core(preferred).stats.coordinated_puts == before + 1


def test_with_two_primaries_down_a_w2_write_lands_on_fallbacks_and_hints_drain_after_restart() -> None:
    """Sloppy quorum and hinted handoff: 5 nodes, n_val 3, two primaries killed; a w=2 write succeeds
    on a fallback with a hint; once the primaries return, hints are delivered and deleted."""
    c = SimCluster(5)
    owners = primaries(c, b"k")
    alive = owners[0]
    for node in owners[1:]:
        c.crash(node)
    put(c, alive, b"k", b"sloppy", w=2)
    # w=2 answers after two acknowledgements; the third fallback's copy may still be on its way.
    c.run_until(lambda: sum(c.core(n).hints_pending for n in c.nodes if c.nodes[n].up) >= 2, 1000)
    fallback_hints = sum(c.core(n).hints_pending for n in c.nodes if c.nodes[n].up)
    assert fallback_hints == 2
    for node in owners[1:]:
        c.restart(node)
    c.settle(5_000)
    assert sum(c.core(n).hints_pending for n in c.nodes) == 0
    for node in owners:
        obj = local(c, node, b"k")
        assert obj is not None and [s.value for _, s in obj.siblings] == [b"sloppy"]
    fallbacks = [n for n in c.nodes if n not in owners]
    assert all(local(c, n, b"k") is None for n in fallbacks)


def test_admin_status_counts_hints_per_owner_across_a_restart_and_to_zero_once_delivered() -> None:
    """The dashboard's hints per peer: each fallback's status names the down owners it holds hints for,
    the counts add up to its total, survive its own restart (counted from storage) and fall to zero
    once the owners are back and the hints delivered."""
    c = SimCluster(5)
    owners = primaries(c, b"k")
    down = owners[1:]
    for node in down:
        c.crash(node)
    put(c, owners[0], b"k", b"sloppy", w=2)
    put(c, owners[0], b"k2", b"sloppy", w=2)
    c.run_until(lambda: sum(c.core(n).hints_pending for n in c.nodes if c.nodes[n].up) >= 2, 1000)

    def per_owner(node: str) -> dict[str, int]:
        status = c.core(node).admin_status(c.now_ms)
        return {m["name"]: m["hints_pending"] for m in status["members"] if m["hints_pending"]}

    holders = [n for n in c.nodes if c.nodes[n].up and c.core(n).hints_pending]
    assert holders
    for node in holders:
        counts = per_owner(node)
        assert sum(counts.values()) == c.core(node).hints_pending
        assert set(counts) <= set(down)
    before = {n: per_owner(n) for n in holders}
    c.stop(holders[0])
    c.restart(holders[0])
    assert per_owner(holders[0]) == before[holders[0]]
    for node in down:
        c.restart(node)
    c.settle(5_000)
    assert all(per_owner(n) == {} for n in c.nodes)


def test_a_replica_that_missed_a_write_has_it_after_one_get() -> None:
    """Read repair: a primary that was down during a write is repaired by the next read."""
    c = SimCluster(3, Settings(ring_size=16, hinted_handoff_enabled=False))
    owners = primaries(c, b"k")
    c.crash(owners[2])
    put(c, owners[0], b"k", b"v", w=2)
    c.restart(owners[2])
    c.settle(2_000)
    assert local(c, owners[2], b"k") is None
    assert values(get(c, owners[0], b"k", r=3)) == [b"v"]
    c.settle(100)
    repaired = local(c, owners[2], b"k")
    assert repaired is not None and repaired.values()[0].value == b"v"
    assert c.core(owners[0]).stats.read_repairs == 1


def test_a_deleted_key_stays_deleted_after_the_replica_that_missed_the_delete_returns() -> None:
    """A tombstone outlives a stale replica: the node that missed the delete cannot resurrect the value."""
    c = SimCluster(3, Settings(ring_size=16, hinted_handoff_enabled=False))
    put(c, "n0", b"k", b"v")
    c.settle(100)
    owners = primaries(c, b"k")
    c.crash(owners[2])
    deleted = c.request(owners[0], ClientPut(b"b", b"k", None, None))
    assert isinstance(deleted, Ok)
    c.restart(owners[2])
    c.settle(1_000)
    stale = local(c, owners[2], b"k")
    assert stale is not None and not objects.is_tombstone(stale)
    for node in (owners[2], owners[0], owners[1]):
        response = get(c, node, b"k", r=3)
        assert isinstance(response, NotFound) and response.context is not None, response
    c.settle(100)
    repaired = local(c, owners[2], b"k")
    assert repaired is not None and objects.is_tombstone(repaired)


def test_tombstones_are_reaped_only_after_every_primary_holds_them_and_the_grace_period() -> None:
    """After the grace period, a tombstone held identically by all primaries is removed everywhere."""
    settings = Settings(ring_size=16, tombstone_grace_ms=10_000, reap_interval_ms=1_000)
    c = SimCluster(3, settings)
    put(c, "n0", b"k", b"v")
    c.settle(100)
    assert isinstance(c.request("n1", ClientPut(b"b", b"k", None, None)), Ok)
    c.settle(100)
    owners = primaries(c, b"k")
    assert all(local(c, n, b"k") is not None for n in owners)
    c.settle(5_000)
    assert all(local(c, n, b"k") is not None for n in owners), "reaped before the grace period"
    c.settle(10_000)
    assert all(local(c, n, b"k") is None for n in owners)
    assert all(c.core(n).engine.count("reap") == 0 for n in owners)
    assert isinstance(get(c, "n0", b"k"), NotFound)


def test_a_tombstone_is_not_reaped_while_a_primary_is_down() -> None:
    """Reaping needs every primary to confirm the same tombstone; a down primary postpones it."""
    settings = Settings(ring_size=16, tombstone_grace_ms=1_000, reap_interval_ms=500)
    c = SimCluster(4, settings)
    put(c, "n0", b"k", b"v")
    owners = primaries(c, b"k")
    assert isinstance(c.request(owners[0], ClientPut(b"b", b"k", None, None)), Ok)
    c.settle(100)
    c.crash(owners[1])
    c.settle(5_000)
    assert local(c, owners[0], b"k") is not None
    c.restart(owners[1])
    c.settle(5_000)
    assert all(local(c, n, b"k") is None for n in owners)


def test_reap_state_survives_a_restart() -> None:
    """A restart between the delete and the end of the grace period neither resurrects nor forgets."""
    settings = Settings(ring_size=16, tombstone_grace_ms=3_000, reap_interval_ms=500)
    c = SimCluster(3, settings)
    put(c, "n0", b"k", b"v")
    c.request("n0", ClientPut(b"b", b"k", None, None))
    c.settle(100)
    for node in list(c.nodes):
        c.crash(node)
        c.restart(node)
    assert isinstance(get(c, "n1", b"k"), NotFound)
    c.settle(8_000)
    assert all(local(c, n, b"k") is None for n in c.nodes)


def test_when_too_few_replicas_answer_in_time_the_request_fails_with_a_reason() -> None:
    """A partitioned coordinator cannot reach W replicas: a timeout or unavailable failure, not a hang."""
    c = SimCluster(3)
    owners = primaries(c, b"k")
    c.partition({owners[0]}, set(owners[1:]))
    response = c.request(owners[0], ClientPut(b"b", b"k", None, Content(b"v"), w=3, timeout_ms=1000))
    assert isinstance(response, Failure) and response.kind in ("timeout", "unavailable")
    response = get(c, owners[0], b"k", r=3, timeout_ms=1000)
    assert isinstance(response, Failure)


def test_dots_are_never_reused_across_a_crash_and_every_start_and_new_data_directory_gets_a_new_actor() -> None:
    """Counters resume above everything handed out before a crash; a restarted node names its versions
    with a new generation of its actor (it may have lost copies the old one wrote), and a wiped node
    with a new epoch."""
    c = SimCluster(1, Settings(ring_size=16, n_val=1, r=1, w=1, counter_lease_count=3))
    dots = []
    for i in range(5):
        response = put(c, "n0", b"k%d" % i, b"v")
        assert response.found is not None
        dots.extend(response.found.context.dots)
    c.crash("n0")
    c.restart("n0")
    response = put(c, "n0", b"after", b"v")
    assert response.found is not None
    (after,) = response.found.context.dots
    assert after.counter > max(d.counter for d in dots)
    assert after.actor != dots[0].actor
    assert after.actor.rsplit(b".", 1)[0] == dots[0].actor.rsplit(b".", 1)[0], "same data directory, same epoch"
    node = c.nodes["n0"]
    node.crash()
    from dynastore.sim.disk import SimDisk

    node.engine = SimDisk()
    node.start(c.now_ms)
    assert c.core("n0").actor.rsplit(b".", 1)[0] != after.actor.rsplit(b".", 1)[0]


def list_all(c: SimCluster, node: str, bucket: bytes | None) -> list[bytes]:
    """A whole listing, page after page, as the HTTP API gathers it."""
    found: list[bytes] = []
    resume: tuple[int, bytes] | None = (0, b"")
    pages = 0
    while resume is not None:
        page = c.request(node, ClientListKeys(bucket, None, *resume))
        assert isinstance(page, Ok), page
        found += page.keys
        resume = page.resume
        pages += 1
        assert pages < 10_000
    return found


def test_keys_and_buckets_can_be_listed_and_deleted_keys_are_not() -> None:
    """Listing a bucket shows its live keys, each once (every partition from one of its replicas);
    listing buckets shows the buckets."""
    c = SimCluster(3)
    for i in range(20):
        put(c, "n0", b"key%02d" % i, b"v")
    c.request("n0", ClientPut(b"other", b"x", None, Content(b"v")))
    c.request("n0", ClientPut(b"b", b"key05", None, None))
    c.settle(100)
    listed = list_all(c, "n2", b"b")
    assert sorted(listed) == [b"key%02d" % i for i in range(20) if i != 5]
    assert len(listed) == len(set(listed))
    assert sorted(set(list_all(c, "n1", None))) == [b"b", b"other"]


def test_a_listing_goes_a_bounded_step_at_a_time_and_pages_resume_where_they_stopped() -> None:
    """2,000 keys in a ring of 2 partitions and steps of at most 50 keys: no message a node handles,
    nor any page it answers itself, reads more than one step's rows from its disk, and the pages
    together list every key once."""
    c = SimCluster(2, Settings(ring_size=2, n_val=1, r=1, w=1, list_page_keys_max=50))
    for i in range(2000):
        assert isinstance(c.request("n0", ClientPut(b"b", b"k%04d" % i, None, Content(b"v"))), Ok)
    c.settle(500)
    most = 0
    for node in c.nodes.values():
        core, disk = node.core, node.engine
        assert core is not None
        step = core._list_step

        def measured(*args: object, step: object = step, disk: object = disk) -> object:
            nonlocal most
            before = disk.rows_read  # type: ignore[attr-defined]
            answer = step(*args)  # type: ignore[operator]
            most = max(most, disk.rows_read - before)  # type: ignore[attr-defined]
            return answer

        core._list_step = measured  # type: ignore[method-assign]
    found: list[bytes] = []
    resume: tuple[int, bytes] | None = (0, b"")
    pages = 0
    while resume is not None:
        page = c.request("n1", ClientListKeys(b"b", None, *resume))
        assert isinstance(page, Ok) and len(page.keys) <= 50
        found += page.keys
        resume = page.resume
        pages += 1
    assert sorted(found) == [b"k%04d" % i for i in range(2000)] and len(found) == 2000
    assert pages >= 40
    assert 0 < most <= 50, most


def test_writes_beyond_the_sibling_limit_are_refused() -> None:
    """Blind writes pile up siblings; past the limit a write is refused with a clear reason."""
    c = SimCluster(1, Settings(ring_size=16, n_val=1, r=1, w=1, siblings_max=3))
    for i in range(3):
        put(c, "n0", b"k", b"%d" % i)
    refused = c.request("n0", ClientPut(b"b", b"k", None, Content(b"x")))
    assert isinstance(refused, Failure) and refused.kind == "too_many_siblings"
    assert len(values(get(c, "n0", b"k"))) == 3


def test_joining_twice_is_harmless_and_a_node_with_data_cannot_join() -> None:
    """Joining the cluster a node is already in succeeds and changes nothing; joining another cluster
    is refused; a node with data cannot join."""
    c = SimCluster(2)
    before = c.core("n1").cluster
    assert isinstance(c.request("n1", ClientJoin("n0", 1)), Ok)
    assert c.core("n1").cluster == before
    elsewhere = c.request("n1", ClientJoin("n9", 1))
    assert isinstance(elsewhere, Failure) and "another cluster" in elsewhere.reason
    loner = c.add_node("n9")
    assert loner.core is not None
    stored = c.request("n9", ClientPut(b"b", b"k", None, Content(b"v"), w=1, dw=1))
    assert isinstance(stored, Ok), stored
    refused = c.request("n9", ClientJoin("n0", 1))
    assert isinstance(refused, Failure) and "holds data" in refused.reason


def test_a_put_with_allow_mult_false_shows_and_keeps_one_value() -> None:
    """allow_mult=false: a blind write over another leaves one value, the newest, on every replica."""
    c = SimCluster(3)
    c.request("n0", ClientSetBucketProps(b"b", (("allow_mult", False),)))
    c.settle(100)
    put(c, "n0", b"k", b"one")
    c.now_ms += 10
    put(c, "n1", b"k", b"two")
    assert values(get(c, "n2", b"k")) == [b"two"]
    c.settle(1000)
    for node in c.nodes:
        copy = local(c, node, b"k")
        assert copy is not None and [content.value for content in copy.values()] == [b"two"]


@settings(max_examples=300, deadline=None)
@given(
    junk=st.recursive(
        st.none() | st.booleans() | st.integers() | st.binary(max_size=8) | st.text(max_size=8),
        lambda inner: st.lists(inner, max_size=6),
        max_leaves=30,
    )
)
def test_malformed_peer_messages_are_rejected_by_the_codec(junk: object) -> None:
    """Any msgpack value that is not a well-formed message raises PeerError, never anything else."""
    try:
        messages.from_wire(junk)
    except PeerError:
        return


def test_every_message_type_round_trips_through_the_wire_codec() -> None:
    """A message encoded and decoded is equal to itself, for a sample of every kind used in a run."""
    c = SimCluster(3)
    c.tracing = True
    seen: dict[str, object] = {}
    original = c._send

    def spy(src: str, effect: object) -> None:
        msg = effect.msg  # type: ignore[attr-defined]
        decoded = messages.from_wire(msgpack.unpackb(msgpack.packb(messages.to_wire(msg), use_bin_type=True)))
        assert decoded == msg
        seen[type(msg).__name__] = msg
        original(src, effect)  # type: ignore[arg-type]

    c._send = spy  # type: ignore[method-assign]
    put(c, "n0", b"k", b"v")
    get(c, "n1", b"k")
    c.request("n2", ClientListKeys(b"b"))
    c.settle(2_000)
    assert {"ReplicaGet", "ReplicaGetReply", "ReplicaPut", "ReplicaPutReply", "Ping", "Pong"} <= set(seen)


@pytest.mark.parametrize("seed", range(5))
def test_random_concurrent_writers_never_lose_an_acknowledged_write(seed: int) -> None:
    """Writers with stale contexts at random nodes: every acknowledged value is among the final
    siblings unless the context given with a later acknowledged write covered it."""
    import random

    c = SimCluster(4, seed=seed)
    rng = random.Random(seed)
    written: list[tuple[bytes, Dot, Context]] = []
    contexts: list[Context] = [Context()]
    for i in range(40):
        node = rng.choice(sorted(c.nodes))
        given = rng.choice(contexts)
        value = b"v%d" % i
        response = c.request(node, ClientPut(b"b", b"k", given, Content(value)))
        assert isinstance(response, Ok) and response.found is not None
        (dot,) = response.found.context.dots
        written.append((value, dot, given))
        read = get(c, rng.choice(sorted(c.nodes)), b"k")
        if isinstance(read, Ok) and read.found is not None:
            contexts.append(read.found.context)
    c.settle(1_000)
    final = get(c, "n0", b"k", r=3)
    assert isinstance(final, Ok) and final.found is not None
    final_by_dot = {dot: content.value for dot, content in final.found.values}
    for value, dot, _ in written:
        if dot in final_by_dot:
            assert final_by_dot[dot] == value
        else:
            assert any(given.covers(dot) for _, other, given in written if other != dot), value


def test_a_read_waits_for_the_replica_that_has_the_value_before_answering_not_found() -> None:
    """Two fast not-found replies do not hide a value held by the third replica: the read waits for it."""
    c = SimCluster(3, Settings(ring_size=16, hinted_handoff_enabled=False, read_repair_enabled=False))
    owners = primaries(c, b"k")
    c.crash(owners[1])
    c.crash(owners[2])
    put(c, owners[0], b"k", b"only-here", w=1, dw=1)
    c.restart(owners[1])
    c.restart(owners[2])
    c.settle(2_000)
    assert local(c, owners[1], b"k") is None and local(c, owners[2], b"k") is None
    # The coordinator's own read is instant; make the holder slow by reading from another node.
    assert values(get(c, owners[1], b"k", r=2)) == [b"only-here"]
    assert isinstance(get(c, owners[1], b"absent", r=2), NotFound)


def test_a_listing_step_reply_that_does_not_move_forward_is_not_taken_as_a_page() -> None:
    """A replica answering a step with done=False and `last` where the step began (or names before
    it) would send a listing round the same page for ever: the reply counts as a lost replica, and
    with no other the page fails rather than repeat."""
    c = SimCluster(3, Settings(ring_size=16))
    status = c.request("n0", ClientSetBucketProps(b"one", (("n_val", 1),)))
    assert isinstance(status, Ok), status
    c.settle(1000)
    core = c.core("n0")
    partition = next(p for p in range(core.ring.size) if core._list_replicas(b"one", p, c.now_ms) == ["n1"])
    for bad in (
        messages.ListKeysReply(0, (), b"", False),
        messages.ListKeysReply(0, (b"a",), b"a", False),
    ):
        core.on_request(7001, ClientListKeys(b"one", None, partition, b"a" if bad.items else b""), c.now_ms)
        op_id = max(i for i, op in core._ops.items() if type(op).__name__ == "ListOp")
        core.on_message("n1", dataclasses.replace(bad, req=op_id), c.now_ms)
        c._flush("n0")
        answer = c.replies.pop(7001)
        assert isinstance(answer, Failure), (bad, answer)


def _forwarding_setup() -> tuple[SimCluster, str, list[str]]:
    """Five nodes; a node outside the key's preference list (which forwards its writes), and the
    key's primaries in order."""
    c = SimCluster(5)
    owners = primaries(c, b"k")
    origin = next(n for n in c.nodes if n not in owners)
    return c, origin, owners


def test_a_forwarded_write_retried_after_its_reply_was_lost_leaves_one_sibling() -> None:
    """The first coordinator applies a forwarded write, its reply is lost and the link breaks: the
    origin retries at a second coordinator, which must recognise the write and not add a sibling."""
    c, origin, owners = _forwarding_setup()
    first = owners[0]
    # Everything the first coordinator says to the origin is lost, its ForwardPutReply included.
    c.faults.cut.add((first, origin))
    rid = c.submit(origin, ClientPut(b"b", b"k", None, Content(b"once", "text/plain")))
    assert c.run_until(
        lambda: c.core(first).stats.coordinated_puts == 1 and c.stats(first)["requests_in_flight"] == 0, 1_000
    )
    assert all(local(c, n, b"k") is not None for n in owners)
    c.link_failed(origin, first)
    assert c.run_until(lambda: rid in c.replies, 5_000)
    assert isinstance(c.replies.pop(rid), Ok)
    # The retry was coordinated (not refused, not forwarded back) by the second primary.
    assert c.core(owners[1]).stats.coordinated_puts == 1
    c.heal()
    c.settle(2_000)
    assert values(get(c, origin, b"k", r=3)) == [b"once"]
    for node in owners:
        obj = local(c, node, b"k")
        assert obj is not None and len(obj.siblings) == 1, (node, obj)


def test_a_forwarded_write_delivered_twice_to_its_coordinator_is_applied_once() -> None:
    """A ForwardPut that arrives twice (the network duplicated it) is applied once: one sibling."""
    c, origin, owners = _forwarding_setup()
    c.faults.duplicate = 1.0
    put(c, origin, b"k", b"once")
    c.faults.duplicate = 0.0
    assert c.core(owners[0]).stats.coordinated_puts == 2
    c.settle(2_000)
    assert values(get(c, origin, b"k", r=3)) == [b"once"]
    for node in owners:
        obj = local(c, node, b"k")
        assert obj is not None and len(obj.siblings) == 1, (node, obj)
