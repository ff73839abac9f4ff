"""Buckets with allow_mult=false keep one value per key on every replica, in a simulated cluster:
blind writes never pile up hidden siblings, and concurrent writes and deletes on both sides of a
partition resolve to the newest, the same on every replica, once healed."""

from __future__ import annotations

from dynastore.core import keys, objects
from dynastore.core.messages import ClientGet, ClientPut, ClientSetBucketProps, NotFound, Ok
from dynastore.core.objects import Content
from dynastore.settings import Settings
from dynastore.sim.cluster import SimCluster
from dynastore.sim.run import Options, run_seed

BUCKET = b"one"
NODES = ("n0", "n1", "n2")
# Replicas that missed writes during a partition catch up by anti-entropy alone (no read repair), soon.
SETTINGS = Settings(
    ring_size=16,
    read_repair_enabled=False,
    anti_entropy_interval_ms=1000,
    anti_entropy_segments_count=64,
    tombstone_grace_ms=600_000,
)


def cluster() -> SimCluster:
    c = SimCluster(3, SETTINGS)
    assert isinstance(c.request("n0", ClientSetBucketProps(BUCKET, (("allow_mult", False),))), Ok)
    c.settle(1000)
    return c


def stored(c: SimCluster, node: str, key: bytes) -> objects.Object | None:
    core = c.core(node)
    raw = core.engine.get("data", keys.encode(core.ring.partition_of(BUCKET, key), BUCKET, key))
    return None if raw is None else objects.decode_stored(raw)


def write(c: SimCluster, node: str, key: bytes, value: bytes | None, **kw: object) -> None:
    content = None if value is None else Content(value)
    answer = c.request(node, ClientPut(BUCKET, key, None, content, **kw))  # type: ignore[arg-type]
    assert isinstance(answer, Ok), answer


def read(c: SimCluster, node: str, key: bytes) -> list[bytes] | None:
    """The values a read with r=all shows, or None when it answers not found."""
    answer = c.request(node, ClientGet(BUCKET, key, r="all"))
    if isinstance(answer, NotFound):
        return None
    assert isinstance(answer, Ok) and answer.found is not None, answer
    return [content.value for _, content in answer.found.values]


def converged(c: SimCluster, key: bytes) -> bool:
    copies = [stored(c, node, key) for node in NODES]
    first = copies[0]
    return first is not None and all(copy is not None and objects.same(copy, first) for copy in copies)


def test_300_blind_writes_to_one_key_all_succeed_and_every_replica_holds_one_sibling() -> None:
    """With siblings_max=100, 300 writes without a context through every node in turn are all
    acknowledged (none hits the sibling limit), and each replica's stored object holds exactly one
    sibling, the last value, whose clock covers all of them."""
    c = cluster()
    assert c.settings.siblings_max < 300
    for i in range(300):
        write(c, NODES[i % 3], b"k", b"v%03d" % i)
        for node in NODES:
            copy = stored(c, node, b"k")
            assert copy is None or len(copy.siblings) == 1, (i, node, copy)
    c.settle(3000)
    assert converged(c, b"k")
    for node in NODES:
        copy = stored(c, node, b"k")
        assert copy is not None and [content.value for content in copy.values()] == [b"v299"]
        assert read(c, node, b"k") == [b"v299"]


def test_concurrent_writes_on_both_sides_of_a_partition_converge_to_the_newest_single_value() -> None:
    """Blind writes on both sides of a partition, the newest on the minority side: once healed, every
    replica holds that one value, the same object, and every node reads it."""
    c = cluster()
    write(c, "n0", b"k", b"before")
    c.partition({"n0"}, {"n1", "n2"})
    c.settle(3000)
    for i in range(3):
        write(c, "n1", b"k", b"majority-%d" % i, w=1, dw=1)
    c.now_ms += 50
    for i in range(3):
        write(c, "n0", b"k", b"minority-%d" % i, w=1, dw=1)
    assert [content.value for content in stored(c, "n1", b"k").values()] == [b"majority-2"]  # type: ignore[union-attr]
    c.heal()
    assert c.run_until(lambda: converged(c, b"k"), 60_000)
    for node in NODES:
        copy = stored(c, node, b"k")
        assert copy is not None and [content.value for content in copy.values()] == [b"minority-2"]
        assert read(c, node, b"k") == [b"minority-2"]


def test_a_delete_concurrent_with_a_write_resolves_by_timestamp_on_every_replica() -> None:
    """A delete on one side of a partition and a write on the other: the later of the two wins on
    every replica once healed (a key deleted last reads as not found, one written last as its value)."""
    c = cluster()
    for key in (b"deleted-last", b"written-last"):
        write(c, "n0", key, b"before")
    c.partition({"n0"}, {"n1", "n2"})
    c.settle(3000)
    write(c, "n1", b"deleted-last", b"majority", w=1, dw=1)
    write(c, "n0", b"written-last", None, w=1, dw=1)
    c.now_ms += 50
    write(c, "n0", b"deleted-last", None, w=1, dw=1)
    write(c, "n1", b"written-last", b"majority", w=1, dw=1)
    c.heal()
    assert c.run_until(lambda: converged(c, b"deleted-last") and converged(c, b"written-last"), 60_000)
    for node in NODES:
        tombstone = stored(c, node, b"deleted-last")
        assert tombstone is not None and len(tombstone.siblings) == 1 and objects.is_tombstone(tombstone)
        written = stored(c, node, b"written-last")
        assert written is not None and [content.value for content in written.values()] == [b"majority"]
        assert read(c, node, b"deleted-last") is None
        assert read(c, node, b"written-last") == [b"majority"]


def test_simulated_runs_on_allow_mult_false_buckets_converge_with_one_value_per_register() -> None:
    """Seeds of swarm-drawn faults on allow_mult=false buckets: replicas converge, each register ends
    with one attempted value, nothing unexpected appears; concurrent read-modify-writes of a set
    overwrite each other, and the checker says so."""
    lost = 0
    for seed in range(6):
        result = run_seed(seed, Options(allow_mult=False, safety_ms=8_000))
        assert not result.problems, result.summary()
        assert result.registers is not None and result.registers.ok, result.summary()
        assert result.sets is not None and not result.sets.unexpected, result.summary()
        lost += len(result.sets.lost)
    assert lost > 0
