"""A node whose disk is (nearly) full: for writes it is a down primary (fallbacks take hints for it),
reads go on, deletes still go into the reserve, and once it has room again the hints reach it. Only
when W nodes with room cannot be found does a write fail, as insufficient storage."""

from __future__ import annotations

from dynastore.core import keys, objects
from dynastore.core.messages import ClientGet, ClientPut, Failure, NotFound, Ok
from dynastore.core.objects import Content
from dynastore.settings import Settings
from dynastore.sim.cluster import SimCluster
from dynastore.sim.disk import SimDisk

MIB = 1024 * 1024
BASE = Settings(ring_size=16, storage_reserve_bytes=64 * MIB, anti_entropy_enabled=False)


def fill(c: SimCluster, name: str, free_bytes: int | None) -> None:
    """Set what `name`'s disk can still take, as the shell would measure it."""
    engine = c.core(name).engine
    assert isinstance(engine, SimDisk)
    engine.free_bytes = free_bytes
    c.core(name).observe_space(engine.space())
    c._flush(name)


def primaries_with(c: SimCluster, name: str, count: int) -> list[bytes]:
    """Keys of bucket b whose primaries include `name`."""
    core = c.core("n0")
    found = []
    i = 0
    while len(found) < count:
        key = b"k%d" % i
        if name in core.preference_list(b"b", key)[1].primary_nodes:
            found.append(key)
        i += 1
    return found


def local(c: SimCluster, name: str, key: bytes) -> bytes | None:
    core = c.core(name)
    raw = core.engine.get("data", keys.encode(core.ring.partition_of(b"b", key), b"b", key))
    if raw is None:
        return None
    return objects.live(objects.decode_stored(raw))[0][1].value


def test_a_full_replica_is_a_down_primary_for_writes_and_gets_its_copies_by_hints_once_it_has_room() -> None:
    c = SimCluster(4, BASE)
    c.settle(2000)
    before = primaries_with(c, "n3", 5)
    for key in before:
        assert isinstance(c.request("n0", ClientPut(b"b", key, None, Content(b"old"), w="all")), Ok)
    fill(c, "n3", 10 * MIB)
    keys_ = primaries_with(c, "n3", 20)[5:]
    for i, key in enumerate(keys_):
        # Through every node, n3 included: the write is acknowledged by three nodes with room.
        answer = c.request(f"n{i % 4}", ClientPut(b"b", key, None, Content(b"v" + key), w=3))
        assert isinstance(answer, Ok), (key, answer)
    assert all(local(c, "n3", key) is None for key in keys_)
    assert c.core("n3").stats.writes_refused_full > 0
    assert sum(c.core(n)._hint_count for n in ("n0", "n1", "n2")) == len(keys_)
    for key in before:
        found = c.request("n3", ClientGet(b"b", key, r=1))
        assert isinstance(found, Ok) and found.found is not None and found.found.values[0][1].value == b"old"
    assert c.core("n3").space_full and c.core("n3").stats_snapshot(c.now_ms)["storage_full"] is True
    fill(c, "n3", None)
    c.settle(5000)
    assert sum(c.core(n)._hint_count for n in ("n0", "n1", "n2")) == 0
    assert all(local(c, "n3", key) == b"v" + key for key in keys_)


def test_deletes_go_into_the_reserve_and_writes_fail_as_insufficient_storage_only_without_w_nodes_with_room() -> None:
    """Three nodes, all nearly full: a write gets insufficient_storage (HTTP 507) and changes nothing;
    a delete, with a quarter of the reserve still free, is taken; below that it is refused too."""
    c = SimCluster(3, BASE)
    assert isinstance(c.request("n0", ClientPut(b"b", b"gone", None, Content(b"x"), w="all")), Ok)
    for name in ("n0", "n1", "n2"):
        fill(c, name, 20 * MIB)
    for node in ("n0", "n1", "n2"):
        answer = c.request(node, ClientPut(b"b", b"new", None, Content(b"x")))
        assert isinstance(answer, Failure) and answer.kind == "insufficient_storage", (node, answer)
    assert isinstance(c.request("n1", ClientGet(b"b", b"new")), NotFound)
    deleted = c.request("n2", ClientPut(b"b", b"gone", None, None))
    assert isinstance(deleted, Ok), deleted
    assert isinstance(c.request("n0", ClientGet(b"b", b"gone", r=3)), NotFound)
    for name in ("n0", "n1", "n2"):
        fill(c, name, 10 * MIB)
    refused = c.request("n0", ClientPut(b"b", b"other", None, None))
    assert isinstance(refused, Failure) and refused.kind == "insufficient_storage", refused
    for name in ("n0", "n1", "n2"):
        fill(c, name, None)
    assert isinstance(c.request("n0", ClientPut(b"b", b"new", None, Content(b"x"))), Ok)
