"""Anti-entropy in a simulated cluster: replicas converge without any read, traffic follows the
number of differences, deletes survive exchanges, a wiped node is rebuilt, the index is verified."""

from __future__ import annotations

from dynastore.core import keys, objects
from dynastore.core.messages import ClientGet, ClientPut, NotFound, Ok
from dynastore.core.node import ClientJoin
from dynastore.core.objects import Content
from dynastore.core.versions import Context, Dot, update
from dynastore.settings import Settings
from dynastore.sim.cluster import SimCluster
from dynastore.sim.disk import SimDisk

AAE = Settings(
    ring_size=16,
    anti_entropy_interval_ms=2_000,
    anti_entropy_segments_count=256,
    hinted_handoff_enabled=False,
    read_repair_enabled=False,
)


def load(c: SimCluster, count: int, nodes: list[str]) -> list[bytes]:
    """Put `count` keys straight into the given nodes' stores, as if replicated long ago."""
    written = []
    for name in nodes:
        core = c.core(name)
        for i in range(count):
            key = b"k%06d" % i
            obj = update(None, Context(), Dot(b"writer#1", i + 1), Content(b"v" + key, last_modified_us=1), 1)
            core._merge_into_data(b"b", key, obj, False, c.now_ms)
        c._flush(name)
    written = [b"k%06d" % i for i in range(count)]
    return written


def drop(c: SimCluster, name: str, keys_to_drop: list[bytes]) -> None:
    core = c.core(name)
    for key in keys_to_drop:
        core._delete_data(keys.encode(core.ring.partition_of(b"b", key), b"b", key))
    c._flush(name)


def holds(c: SimCluster, name: str, key: bytes) -> bool:
    core = c.core(name)
    return core.engine.get("data", keys.encode(core.ring.partition_of(b"b", key), b"b", key)) is not None


def total_aae_bytes(c: SimCluster) -> int:
    return sum(c.core(n).aae.stats.bytes_sent for n in c.nodes if c.nodes[n].up)


def test_replicas_that_differ_converge_through_exchanges_without_any_read() -> None:
    """Keys missing on one replica come back through anti-entropy alone."""
    c = SimCluster(2, AAE.replace(n_val=2))
    written = load(c, 500, ["n0", "n1"])
    missing = written[::25]
    drop(c, "n1", missing)
    assert not any(holds(c, "n1", k) for k in missing)
    c.settle(2 * AAE.anti_entropy_interval_ms + 1_000)
    assert all(holds(c, "n1", k) for k in missing)
    assert sum(c.core(n).aae.stats.keys_repaired for n in c.nodes) >= len(missing)
    assert sum(c.core(n).stats.gets for n in c.nodes) == 0


def test_exchange_traffic_grows_with_the_differences_not_with_the_keys() -> None:
    """10, 100 and 1,000 differing keys among 10,000: bytes exchanged grow with the differences, and
    converging 10 differences costs a small fraction of the data."""
    results = {}
    for differences in (10, 100, 1000):
        c = SimCluster(2, AAE.replace(n_val=2, anti_entropy_segments_count=1024), seed=differences)
        written = load(c, 10_000, ["n0", "n1"])
        c.settle(2 * AAE.anti_entropy_interval_ms)  # idle exchanges of equal trees
        idle = total_aae_bytes(c)
        drop(c, "n1", written[:: 10_000 // differences][:differences])
        c.settle(3 * AAE.anti_entropy_interval_ms)
        assert all(holds(c, "n1", k) for k in written[:: 10_000 // differences][:differences])
        results[differences] = total_aae_bytes(c) - idle
    data_bytes = sum(
        len(objects.encode(update(None, Context(), Dot(b"writer#1", 1), Content(b"vk000000"), 1)))
        for _ in range(10_000)
    )
    assert results[10] < data_bytes / 20
    assert results[100] > 3 * results[10]
    assert results[1000] > 3 * results[100]


def test_a_deleted_key_stays_deleted_through_exchanges_with_a_replica_that_missed_the_delete() -> None:
    """A replica still holding the old value does not bring it back: the tombstone wins every exchange."""
    c = SimCluster(3, AAE)
    assert isinstance(c.request("n0", ClientPut(b"b", b"gone", None, Content(b"old"))), Ok)
    c.settle(100)
    _, plist = c.core("n0").preference_list(b"b", b"gone")
    stale = plist.primary_nodes[2]
    c.crash(stale)
    assert isinstance(c.request(plist.primary_nodes[0], ClientPut(b"b", b"gone", None, None)), Ok)
    c.restart(stale)
    c.settle(3 * AAE.anti_entropy_interval_ms)
    core = c.core(stale)
    obj = core.local_copy(b"b", b"gone")
    assert obj is not None and objects.is_tombstone(obj)
    for node in c.nodes:
        assert isinstance(c.request(node, ClientGet(b"b", b"gone", r=3)), NotFound)


def test_a_node_whose_data_directory_was_wiped_is_rebuilt_by_anti_entropy() -> None:
    """A node restarted with an empty disk rejoins, and gets every key back with no client reads."""
    c = SimCluster(3, AAE.replace(read_repair_enabled=True))
    for i in range(300):
        assert isinstance(c.request(f"n{i % 3}", ClientPut(b"b", b"k%d" % i, None, Content(b"v"))), Ok)
    node = c.nodes["n2"]
    node.crash()
    node.engine = SimDisk()
    node.start(c.now_ms)
    assert isinstance(c.request("n2", ClientJoin("n0", 1)), Ok)
    assert c.run_until(lambda: all(holds(c, "n2", b"k%d" % i) for i in range(300)), 120_000)
    assert c.core("n2").stats.gets == 0


def test_the_segment_index_is_verified_against_the_data_after_an_unclean_stop() -> None:
    """An index entry lost behind the store's back is restored when the node restarts uncleanly."""
    c = SimCluster(1, AAE.replace(n_val=1, r=1, w=1))
    assert isinstance(c.request("n0", ClientPut(b"b", b"k", None, Content(b"v"), w=1, dw=1)), Ok)
    engine = c.nodes["n0"].engine
    entries = engine.scan("aae", b"", None, 10)
    assert len(entries) == 1
    from dynastore.storage.base import Op

    engine.write([Op("aae", entries[0][0], None)])
    c.crash("n0")
    c.restart("n0")
    c.settle(2_000)
    assert c.core("n0").aae.stats.index_fixes == 1
    assert engine.scan("aae", b"", None, 10) == entries


def test_an_exchange_sends_back_only_what_the_peer_lacks() -> None:
    """Each side lacks a different set of keys: every key ends on both, and the initiator pushes back
    only the keys the responder did not send (sending back the responder's own copies is waste)."""
    c = SimCluster(2, AAE.replace(n_val=2))
    written = load(c, 800, ["n0", "n1"])
    lacks_on_n0, lacks_on_n1 = written[::20], written[5::20]
    drop(c, "n0", lacks_on_n0)
    drop(c, "n1", lacks_on_n1)
    c.settle(3 * AAE.anti_entropy_interval_ms)
    assert all(holds(c, "n0", k) for k in lacks_on_n0) and all(holds(c, "n1", k) for k in lacks_on_n1)
    pushed = sum(c.core(n).aae.stats.objects_pushed for n in c.nodes)
    # Per partition, the initiator pushes the keys its peer lacks and nothing of what it was sent.
    assert 0 < pushed < len(lacks_on_n0) + len(lacks_on_n1)


def test_a_busy_responder_defers_objects_and_the_exchange_still_converges() -> None:
    """With the background budget nearly exhausted on every node, responders answer objects requests
    with `busy`; initiators ask again later and the replicas still converge, a small batch at a time."""
    c = SimCluster(2, AAE.replace(n_val=2, anti_entropy_keys_batch_max=5))
    written = load(c, 400, ["n0", "n1"])
    missing = written[::4]
    drop(c, "n1", missing)
    for name in c.nodes:
        controller = c.core(name).controller
        controller.rate_per_s = controller.rate_max_per_s = controller.rate_min_per_s = 20.0
    c.settle(20 * AAE.anti_entropy_interval_ms)
    assert all(holds(c, "n1", k) for k in missing)
    stats = [c.core(n).aae.stats for n in c.nodes]
    assert sum(s.busy_replies for s in stats) > 0
    assert sum(c.core(n).controller.deferred for n in c.nodes) > 0


def test_a_replica_is_rebuilt_in_bounded_time_while_clients_are_slow_for_reasons_of_their_own() -> None:
    """Clients see 80 ms however little background work runs (the target is 50 ms): the controllers find
    that out at their floor, let repair add a quarter to it, and a replica missing 600 keys is whole
    again within a minute. A controller that only compares with the target would crawl at its floor."""
    c = SimCluster(2, AAE.replace(n_val=2, anti_entropy_keys_batch_max=5, background_latency_target_ms=50))
    written = load(c, 1200, ["n0", "n1"])

    def slow_clients(seconds: int) -> None:
        for _ in range(seconds * 10):
            c.settle(100)
            for name in c.nodes:
                for _ in range(5):
                    c.core(name).observe_latency(80.0, c._local_now(name))

    slow_clients(30)  # the cluster has been slow for a while when a replica loses its data
    missing = written[::2]
    drop(c, "n1", missing)
    for _ in range(60):
        slow_clients(1)
        if all(holds(c, "n1", k) for k in missing):
            break
    assert all(holds(c, "n1", k) for k in missing), "the replica was not rebuilt within 60 s"
    assert all(50 < c.core(n).controller.limit_ms(c._local_now(n)) <= 100 for n in c.nodes)
