"""Stored copies that rot: a byte flipped on a replica's disk, in a value or in dynastore's own record
encoding, is never served or sent, is counted, and is replaced from the other replicas — by read
repair when a client reads it, by the scrub and an anti-entropy exchange when nobody does. Copies
written before checksums still read, and the scrub gives them one."""

from __future__ import annotations

from dynastore.core import keys, objects
from dynastore.core.messages import ClientGet, ClientPut, Ok
from dynastore.core.objects import Content
from dynastore.settings import Settings
from dynastore.sim.cluster import SimCluster
from dynastore.sim.disk import SimDisk
from dynastore.storage.base import Op

BASE = Settings(ring_size=16, hinted_handoff_enabled=False, anti_entropy_segments_count=64)
VALUE = b"the value that must survive " * 8


def skey(c: SimCluster, key: bytes) -> bytes:
    return keys.encode(c.core("n0").ring.partition_of(b"b", key), b"b", key)


def disk(c: SimCluster, name: str) -> SimDisk:
    engine = c.core(name).engine
    assert isinstance(engine, SimDisk)
    return engine


def stored(c: SimCluster, name: str, key: bytes) -> bytes | None:
    return disk(c, name).get("data", skey(c, key))


def written(settings: Settings) -> SimCluster:
    c = SimCluster(3, settings)
    assert isinstance(c.request("n0", ClientPut(b"b", b"k", None, Content(VALUE), w="all")), Ok)
    c.settle(500)
    return c


def rot_value(c: SimCluster, name: str, key: bytes) -> None:
    """Flip a byte in the middle of the value, wherever the record keeps it."""
    raw = stored(c, name, key)
    assert raw is not None
    disk(c, name).rot("data", skey(c, key), raw.index(VALUE) + 40)


def read(c: SimCluster, node: str, r: int = 1) -> list[bytes]:
    answer = c.request(node, ClientGet(b"b", b"k", r=r))
    assert isinstance(answer, Ok) and answer.found is not None, answer
    return [content.value for _, content in answer.found.values]


def test_a_flipped_byte_in_a_value_is_never_served_and_read_repair_replaces_the_copy() -> None:
    """n1's copy rots: reads through every node (r=1 included, n1 answers first for itself) give the
    value as written; n1 counts the corrupt copy, and read repair writes the good one back."""
    c = written(BASE.replace(anti_entropy_enabled=False))
    rot_value(c, "n1", b"k")
    for node in ("n1", "n0", "n2"):
        assert read(c, node, r=1) == [VALUE], node
    c.settle(500)
    assert c.core("n1").stats.corrupt_copies == 1
    raw = stored(c, "n1", b"k")
    assert raw is not None and objects.decode_stored(raw).siblings[0][1].value == VALUE
    assert any("corrupt copy of b/k" in entry.text for entry in c.nodes["n1"].logged)


def test_a_flipped_byte_in_the_record_encoding_is_a_missing_copy_that_a_write_replaces() -> None:
    """The first byte, a checksum byte, a msgpack header byte: each makes the copy unreadable. It is
    treated as missing (never a failed request), and the next write (blind) replaces it."""
    for index in (0, 3, 9, 10):
        c = written(BASE.replace(anti_entropy_enabled=False, read_repair_enabled=False))
        disk(c, "n2").rot("data", skey(c, b"k"), index)
        assert read(c, "n2", r=3) == [VALUE], index
        answer = c.request("n2", ClientPut(b"b", b"k", None, Content(b"next"), w="all"))
        assert isinstance(answer, Ok), (index, answer)
        c.settle(200)
        raw = stored(c, "n2", b"k")
        assert raw is not None and objects.is_checked(raw)
        assert b"next" in {content.value for _, content in objects.decode_stored(raw).siblings}, index
        assert c.core("n2").stats.corrupt_copies >= 1


def test_the_scrub_finds_a_rotten_copy_nobody_reads_and_an_exchange_repairs_it_within_one_interval() -> None:
    """No client read: with scrub_interval_ms=2000 (and regular exchanges only every 10 minutes), n2's
    rotten copy is found by the scrub's next pass and replaced by the exchange it starts at once."""
    settings = BASE.replace(scrub_interval_ms=2_000, anti_entropy_interval_ms=600_000)
    c = written(settings)
    c.settle(3_000)
    rot_value(c, "n2", b"k")
    before = c.core("n2").stats.scrub_passes
    c.settle(2_200)
    core = c.core("n2")
    assert core.stats.scrub_passes > before
    assert core.stats.corrupt_copies == 1
    raw = stored(c, "n2", b"k")
    assert raw is not None and objects.decode_stored(raw).siblings[0][1].value == VALUE
    assert core.aae.stats.exchanges_with_differences >= 1


def test_copies_written_before_checksums_read_as_before_and_the_scrub_gives_them_one() -> None:
    """A data directory of the previous format holds bare copies: they read, and after one pass of
    the scrub every copy carries a checksum (counted as upgraded)."""
    c = written(BASE.replace(scrub_interval_ms=1_000, anti_entropy_enabled=False))
    for name in ("n0", "n1", "n2"):
        raw = stored(c, name, b"k")
        assert raw is not None
        bare = objects.encode(objects.decode_stored(raw))
        assert bare[0] == objects.STORED_LEGACY
        for engine in (disk(c, name)._view, disk(c, name)._synced):
            engine.write([objects_op(c, bare)])
    assert read(c, "n1", r=3) == [VALUE]
    c.settle(2_500)
    for name in ("n0", "n1", "n2"):
        raw = stored(c, name, b"k")
        assert raw is not None and objects.is_checked(raw), name
        assert c.core(name).stats.scrub_upgraded >= 1
        assert c.core(name).stats.corrupt_copies == 0


def objects_op(c: SimCluster, raw: bytes) -> Op:
    return Op("data", skey(c, b"k"), raw)


def test_a_rotten_hint_is_discarded_and_counted_without_breaking_delivery() -> None:
    """A fallback's hint rots before its owner comes back: it is dropped (hints_pending falls to 0, the
    hint bytes with it), the node keeps delivering its other hints, and nothing raises."""
    c = SimCluster(4, BASE.replace(hinted_handoff_enabled=True, anti_entropy_enabled=False))
    c.crash("n3")
    c.settle(3000)
    for i in range(30):
        assert isinstance(c.request("n0", ClientPut(b"b", b"h%d" % i, None, Content(b"v%d" % i))), Ok)
    holders = [n for n in ("n0", "n1", "n2") if c.core(n)._hint_count]
    assert holders
    holder = c.core(holders[0])
    rows = disk(c, holders[0]).scan("hints", b"", None, 1000)
    disk(c, holders[0]).rot("hints", rows[0][0], len(rows[0][1]) - 2)
    count = holder._hint_count
    c.restart("n3")
    c.settle(5000)
    assert holder.stats.corrupt_copies == 1
    assert holder._hint_count == 0 and holder._hint_bytes == 0, (count, holder._hint_count, holder._hint_bytes)


def test_rotten_copies_in_several_partitions_found_at_once_are_all_repaired_promptly() -> None:
    """The scrub finds rotten copies in four partitions in one step. Exchanges run one at a time, so
    the others wait for the first — but only that long, not for the next regular round (10 minutes
    apart here): every copy is repaired within a few seconds of the pass."""
    settings = BASE.replace(scrub_interval_ms=2_000, anti_entropy_interval_ms=600_000)
    c = SimCluster(3, settings)
    ring = c.core("n0").ring
    names: list[bytes] = []
    seen: set[int] = set()
    for i in range(200):
        name = b"k%d" % i
        if ring.partition_of(b"b", name) not in seen:
            seen.add(ring.partition_of(b"b", name))
            names.append(name)
        if len(names) == 4:
            break
    for name in names:
        assert isinstance(c.request("n0", ClientPut(b"b", name, None, Content(VALUE), w="all")), Ok)
    c.settle(3_000)
    for name in names:
        raw = disk(c, "n2").get("data", skey(c, name))
        assert raw is not None
        disk(c, "n2").rot("data", skey(c, name), raw.index(VALUE) + 40)
    c.settle(2_000 + 3_000)
    core = c.core("n2")
    assert core.stats.corrupt_copies == 4
    for name in names:
        raw = disk(c, "n2").get("data", skey(c, name))
        assert raw is not None, name
        assert objects.decode_stored(raw).siblings[0][1].value == VALUE, name
