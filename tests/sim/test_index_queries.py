"""Secondary-index coverage queries in a simulated cluster: every acknowledged, converged key is seen
exactly once with a node down, partitioned away or stalled, page by page; the index moves with the
data in handoff and is rebuilt by anti-entropy repair on the receiving side."""

from __future__ import annotations

from dynastore.core import indexes, keys
from dynastore.core.messages import ClientIndexQuery, ClientPut, Failure, IndexScanReply, Ok
from dynastore.core.node import ClientJoin
from dynastore.core.objects import Content
from dynastore.settings import Settings
from dynastore.sim.cluster import SimCluster

SETTINGS = Settings(ring_size=16, handoff_batch_max=20, handoff_pause_ms=5, stray_scan_interval_ms=500)


def write(c: SimCluster, count: int, node: str = "n0", start: int = 0) -> set[bytes]:
    written = set()
    for i in range(start, start + count):
        key = b"k%04d" % i
        content = Content(b"v", indexes=indexes.normalised(SETTINGS, [("grp_bin", f"g{i % 3}"), ("n_int", i)]))
        response = c.request(node, ClientPut(b"b", key, None, content))
        assert isinstance(response, Ok), response
        written.add(key)
    return written


def query_all(
    c: SimCluster, node: str, field: str, low: str, high: str, page: int = 7
) -> list[tuple[bytes, bytes]] | Failure:
    """Every page of a query, following continuations (bounded: a query that never ends fails)."""
    lo, hi = indexes.bounds_of(field, low, high)
    after = None
    found: list[tuple[bytes, bytes]] = []
    for _ in range(1000):
        response = c.request(node, ClientIndexQuery(b"b", field, lo, hi, page, after))
        if isinstance(response, Failure):
            return response
        assert isinstance(response, Ok) and response.page is not None, response
        assert len(response.page.results) <= page
        found.extend(response.page.results)
        after = response.page.continuation
        if after is None:
            return found
    raise AssertionError("the query's pages never ended")


def keys_of(found: list[tuple[bytes, bytes]] | Failure) -> list[bytes]:
    assert not isinstance(found, Failure), found
    return [key for _, key in found]


def test_exact_and_range_queries_see_each_key_once_in_index_order_across_pages() -> None:
    """Pages of 7 follow one another to the end; ranges of _int terms sort as numbers."""
    c = SimCluster(3, SETTINGS)
    written = write(c, 60)
    g1 = keys_of(query_all(c, "n1", "grp_bin", "g1", "g1"))
    assert g1 == sorted(k for k in written if int(k[1:]) % 3 == 1)
    ranged = query_all(c, "n2", "n_int", "5", "25")
    assert keys_of(ranged) == [b"k%04d" % i for i in range(5, 26)]
    assert sorted(keys_of(query_all(c, "n0", "$bucket", "b", "b"))) == sorted(written)
    assert keys_of(query_all(c, "n0", "$key", "k0010", "k0012")) == [b"k0010", b"k0011", b"k0012"]


def test_a_query_sees_every_key_exactly_once_with_a_node_down() -> None:
    """With one of five nodes crashed, its partitions are answered by other replicas."""
    c = SimCluster(5, SETTINGS)
    written = write(c, 80)
    c.crash("n3")
    c.settle(10_000)
    assert sorted(keys_of(query_all(c, "n0", "n_int", "0", "1000"))) == sorted(written)
    assert sorted(keys_of(query_all(c, "n4", "$bucket", "b", "b"))) == sorted(written)


def test_a_query_from_the_majority_side_of_a_partition_sees_every_key_once() -> None:
    """A node cut off is replaced for its partitions once it does not answer (or is judged down)."""
    c = SimCluster(5, SETTINGS.replace(index_replica_timeout_ms=300))
    written = write(c, 50)
    c.partition({"n0", "n1", "n2", "n3"}, {"n4"})
    found = query_all(c, "n1", "grp_bin", "g0", "g2", page=11)
    assert sorted(keys_of(found)) == sorted(written)
    assert len(keys_of(found)) == len(written)


def test_a_stalled_replica_is_replaced_after_the_replica_timeout() -> None:
    """A replica that takes the request and never answers holds the query up one replica timeout only."""
    c = SimCluster(5, SETTINGS.replace(index_replica_timeout_ms=200))
    written = write(c, 40)
    c.stall("n2")
    started = c.now_ms
    found = query_all(c, "n0", "n_int", "0", "100", page=100)
    assert sorted(keys_of(found)) == sorted(written)
    assert c.now_ms - started < SETTINGS.request_timeout_ms


def test_a_query_with_a_partition_no_replica_can_answer_fails_as_unavailable() -> None:
    """n_val=1 and the only replica down: the page fails, it does not silently miss keys."""
    c = SimCluster(3, SETTINGS.replace(n_val=1, r=1, w=1))
    write(c, 20)
    c.crash("n2")
    c.settle(10_000)
    found = query_all(c, "n0", "$bucket", "b", "b")
    assert isinstance(found, Failure) and found.kind == "unavailable"


def test_a_malformed_scan_answer_is_not_merged_and_another_replica_is_asked() -> None:
    """A replica answering positions outside the query does not get them into the page."""
    c = SimCluster(5, SETTINGS.replace(index_replica_timeout_ms=300))
    written = write(c, 30)
    lo, hi = indexes.bounds_of("n_int", "0", "100")
    request_id = c.submit("n0", ClientIndexQuery(b"b", "n_int", lo, hi, 1000))
    core = c.core("n0")
    scans = [(op_id, op) for op_id, op in core._ops.items() if type(op).__name__ == "IndexScanOp"]
    assert scans, "n0 asked other replicas"
    op_id, scan = scans[0]
    bogus = IndexScanReply(
        op_id,
        scan.partitions,
        (1,) + (0,) * (len(scan.partitions) - 1),
        (b"\xff" * 8,),
        (b"bogus",),
        (b"",) * len(scan.partitions),
        (b"",) * len(scan.partitions),
        (True,) * len(scan.partitions),
    )
    core.on_message(scan.peer, bogus, c.now_ms)
    assert c.run_until(lambda: request_id in c.replies, 10_000)
    response = c.replies[request_id]
    assert isinstance(response, Ok) and response.page is not None
    assert sorted(k for _, k in response.page.results) == sorted(written)


def test_after_handoff_the_new_owner_holds_the_index_of_what_it_received() -> None:
    """A joining node receives partitions by handoff and indexes them itself; queries stay complete."""
    c = SimCluster(3, SETTINGS)
    written = write(c, 60)
    c.add_node("n3")
    assert isinstance(c.request("n3", ClientJoin("n0", 1)), Ok)
    assert c.run_until(
        lambda: c.core("n0").cluster.ring.next_owners is None and "n3" in c.core("n0").ring.owners, 120_000
    )
    c.settle(5_000)
    core = c.core("n3")
    mine = [k for k in written if "n3" in core.ring.replicas(core.ring.partition_of(b"b", k), 3)]
    assert mine
    for key in mine:
        partition = core.ring.partition_of(b"b", key)
        lo, hi = indexes.bounds_of("n_int", key[1:].decode(), key[1:].decode())
        found, _, _ = indexes.scan(core, partition, b"b", "n_int", lo, hi, None, 10, 1 << 20)
        assert [k for _, k in found] == [key]
    assert sorted(keys_of(query_all(c, "n3", "n_int", "0", "1000", page=50))) == sorted(written)


def test_anti_entropy_repair_rebuilds_the_index_on_the_replica_it_repairs() -> None:
    """A replica that missed writes (no hints, no read repair) gets them back by anti-entropy, and
    with them their index entries."""
    aae = SETTINGS.replace(anti_entropy_interval_ms=2_000, hinted_handoff_enabled=False, read_repair_enabled=False)
    c = SimCluster(3, aae)
    c.partition({"n0", "n1"}, {"n2"})
    c.settle(5_000)
    written = write(c, 30)
    core = c.core("n2")
    assert core.engine.count(indexes.AREA) == 0
    c.heal()
    c.settle(3 * aae.anti_entropy_interval_ms + 2_000)
    for key in written:
        partition = core.ring.partition_of(b"b", key)
        assert core.engine.get("data", keys.encode(partition, b"b", key)) is not None, key
        lo, hi = indexes.bounds_of("n_int", key[1:].decode(), key[1:].decode())
        found, _, _ = indexes.scan(core, partition, b"b", "n_int", lo, hi, None, 10, 1 << 20)
        assert [k for _, k in found] == [key]


def test_a_query_whose_replicas_never_answer_times_out_as_a_whole() -> None:
    """With every other replica stalled and a replica timeout longer than the query's, the answer is
    the query's timeout, not a cascade of replaced replicas ending as unavailable."""
    c = SimCluster(5, SETTINGS.replace(index_replica_timeout_ms=10_000))
    write(c, 10)
    for name in ("n1", "n2", "n3", "n4"):
        c.stall(name)
    lo, hi = indexes.bounds_of("n_int", "0", "100")
    response = c.request("n0", ClientIndexQuery(b"b", "n_int", lo, hi, 100, None, 500))
    assert isinstance(response, Failure) and response.kind == "timeout", response


def test_queries_while_partitions_move_see_every_key_once() -> None:
    """During a transition, old replicas serve until a partition switches, and a replica whose own ring
    says it does not hold a partition says so and another is asked: no key is missed or repeated."""
    c = SimCluster(3, SETTINGS.replace(handoff_pause_ms=50, index_replica_timeout_ms=300))
    written = write(c, 60)
    c.add_node("n3")
    assert isinstance(c.request("n3", ClientJoin("n0", 1)), Ok)
    assert c.run_until(lambda: c.core("n0").cluster.ring.next_owners is not None, 10_000)
    rounds = 0
    while c.core("n0").cluster.ring.next_owners is not None and rounds < 40:
        for node in ("n0", "n3"):
            found = keys_of(query_all(c, node, "n_int", "0", "1000", page=25))
            assert sorted(found) == sorted(written) and len(found) == len(written), (node, rounds)
        c.settle(100)
        rounds += 1
    assert rounds > 0, "the transition ended before any query ran during it"


def test_a_replica_bounds_a_scan_by_its_own_limits_and_the_coordinator_pages_on() -> None:
    """A replica with a smaller scan budget answers short (saying where it stopped) and the
    coordinator's pages still hold every key once."""
    c = SimCluster(5, SETTINGS)
    written = write(c, 60)
    for name in ("n1", "n2", "n3", "n4"):
        node = c.nodes[name]
        assert node.core is not None
        node.core.settings = node.core.settings.replace(index_scan_bytes_max=64, index_page_results_max=2)
    lo, hi = indexes.bounds_of("grp_bin", "g0", "g2")
    after = None
    found: list[bytes] = []
    pages = 0
    while pages < 1000:
        response = c.request("n0", ClientIndexQuery(b"b", "grp_bin", lo, hi, 50, after))
        assert isinstance(response, Ok) and response.page is not None, response
        found += [key for _, key in response.page.results]
        pages += 1
        after = response.page.continuation
        if after is None:
            break
    assert sorted(found) == sorted(written) and len(found) == len(written)
    assert pages > 2, "60 keys in pages of 50 take more than two pages only when replicas answer short"
