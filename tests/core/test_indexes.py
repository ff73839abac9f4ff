"""Secondary index entries, the per-partition index kept beside the data, replica scans, coverage plans
and the merging of pages: what a query relies on to see every key once."""

from __future__ import annotations

import pytest

from dynastore.core import coverage, indexes, keys, objects
from dynastore.core.indexes import IndexProblem
from dynastore.core.objects import Content, Object
from dynastore.core.versions import Clock, Dot, Versioned
from dynastore.settings import Settings
from dynastore.storage.base import Op
from dynastore.storage.memory import MemoryEngine

S = Settings()


class Host:
    """A node's staged store, reduced to an engine: what indexes.on_write and indexes.scan use."""

    def __init__(self) -> None:
        self.engine = MemoryEngine()

    def _get(self, area: str, key: bytes) -> bytes | None:
        return self.engine.get(area, key)

    def _put(self, area: str, key: bytes, value: bytes | None) -> None:
        self.engine.write([Op(area, key, value)])

    def _scan(
        self, area: str, start: bytes, end: bytes | None, limit: int, bytes_max: int | None = None
    ) -> list[tuple[bytes, bytes]]:
        return self.engine.scan(area, start, end, limit, bytes_max)

    def _decode_copy(self, area: str, key: bytes, raw: bytes) -> Object | None:
        return objects.decode_stored(raw)

    def store(self, skey: bytes, obj: Object | None) -> None:
        if obj is None:
            self._put("data", skey, None)
        else:
            self._put("data", skey, objects.encode_stored(obj))
        indexes.on_write(self, skey, obj)


def obj(*contents: Content) -> Object:
    clock = Clock.from_mapping({bytes([65 + i]): (1, 0) for i in range(len(contents))})
    return Versioned(clock, tuple((Dot(bytes([65 + i]), 1), c) for i, c in enumerate(contents)))


def with_entries(*entries: tuple[str, bytes | str | int], deleted: bool = False) -> Content:
    return Content(b"v", indexes=indexes.normalised(S, entries), deleted=deleted)


def skey(key: bytes, partition: int = 3, bucket: bytes = b"b") -> bytes:
    return keys.encode(partition, bucket, key)


def query(host: Host, field: str, low: str, high: str, **kw: object) -> list[tuple[bytes, bytes]]:
    lo, hi = indexes.bounds_of(field, low, high)
    found, _, done = indexes.scan(host, 3, b"b", field, lo, hi, kw.get("after"), 1000, 1 << 20)  # type: ignore[arg-type]
    assert done
    return found


def test_entries_are_lowercased_checked_sorted_and_int_terms_canonical() -> None:
    """Field names are lowercased; _int terms become canonical decimal text; duplicates collapse."""
    got = indexes.normalised(S, [("Email_BIN", "a@x"), ("age_int", " 042 "), ("age_int", 42), ("email_bin", b"a@x")])
    assert got == (("age_int", b"42"), ("email_bin", b"a@x"))


@pytest.mark.parametrize(
    ("name", "term", "reason"),
    [
        ("email", "x", "ending in _bin or _int"),
        ("e mail_bin", "x", "lowercase letters"),
        ("age_int", "12a", "must be an integer"),
        ("age_int", "+5", "must be an integer"),
        ("age_int", "١٢", "must be an integer"),
        ("age_int", str(1 << 63), "signed 64-bit"),
        ("tag_bin", "", "may not be empty"),
        ("tag_bin", "x" * (S.index_term_bytes_max + 1), "longer than"),
        ("t" * S.index_name_bytes_max + "_bin", "x", "longer than"),
    ],
)
def test_a_bad_entry_is_refused_with_a_reason(name: str, term: str, reason: str) -> None:
    """Names need a _bin/_int suffix and safe characters; _int terms are ASCII signed 64-bit integers."""
    with pytest.raises(IndexProblem, match=reason):
        indexes.entry(S, name, term)


def test_too_many_entries_or_links_are_refused() -> None:
    """The counts are bounded by index_entries_max and links_max."""
    small = Settings(index_entries_max=2, links_max=1)
    with pytest.raises(IndexProblem, match="may carry 2"):
        indexes.normalised(small, [("a_bin", "1"), ("a_bin", "2"), ("a_bin", "3")])
    content = Content(b"", links=((b"b", b"k", b"t"), (b"b", b"k2", b"t")))
    assert "may carry 1" in (indexes.content_problem(small, content) or "")
    assert indexes.content_problem(S, content) is None
    assert "sorted" in (indexes.content_problem(S, Content(b"", indexes=(("b_bin", b"x"), ("a_bin", b"x")))) or "")


def test_a_key_is_indexed_under_the_union_of_its_live_siblings_and_a_tombstone_under_nothing() -> None:
    """Siblings each carry their entries; deleted siblings index nothing."""
    two = obj(with_entries(("a_bin", "x")), with_entries(("a_bin", "y"), ("n_int", 1)))
    assert indexes.object_entries(two) == {("a_bin", b"x"), ("a_bin", b"y"), ("n_int", b"1")}
    half = obj(with_entries(("a_bin", "x")), with_entries(("a_bin", "gone"), deleted=True))
    assert indexes.object_entries(half) == {("a_bin", b"x")}
    assert indexes.object_entries(obj(with_entries(("a_bin", "x"), deleted=True))) == frozenset()
    assert indexes.object_entries(None) == frozenset()


def test_the_index_follows_writes_sibling_resolution_and_deletes() -> None:
    """Entries appear with a write, change with the next, and go with a delete or a tombstone."""
    host = Host()
    host.store(skey(b"k1"), obj(with_entries(("a_bin", "x")), with_entries(("a_bin", "y"))))
    host.store(skey(b"k2"), obj(with_entries(("a_bin", "y"))))
    assert query(host, "a_bin", "y", "y") == [(b"y", b"k1"), (b"y", b"k2")]
    host.store(skey(b"k1"), obj(with_entries(("a_bin", "x"))))
    assert query(host, "a_bin", "a", "z") == [(b"x", b"k1"), (b"y", b"k2")]
    host.store(skey(b"k2"), obj(with_entries(("a_bin", "y"), deleted=True)))
    host.store(skey(b"k1"), None)
    assert query(host, "a_bin", "a", "z") == []
    assert host.engine.count(indexes.AREA) == 0, "no entry or reverse record is left behind"


def test_int_terms_sort_as_numbers_and_bin_terms_bytewise_even_with_nul_bytes() -> None:
    """Positions order as the terms do: -5 < 3 < 20, and b'a' < b'a\\x00' < b'a\\x00b' < b'ab'."""
    host = Host()
    for i, n in enumerate([20, -5, 3]):
        host.store(skey(b"n%d" % i), obj(with_entries(("n_int", n))))
    found = query(host, "n_int", "-10", "10")
    assert [indexes.term_text("n_int", t) for t, _ in found] == [-5, 3]
    for i, term in enumerate([b"ab", b"a\x00b", b"a", b"a\x00"]):
        host.store(skey(b"s%d" % i), obj(Content(b"", indexes=(("s_bin", term),))))
    got = indexes.scan(host, 3, b"b", "s_bin", b"a", b"ab", None, 100, 1 << 20)[0]
    assert [t for t, _ in got] == [b"a", b"a\x00", b"a\x00b", b"ab"]
    assert [k for _, k in got] == [b"s2", b"s3", b"s1", b"s0"]


def test_a_scan_is_bounded_and_resumes_after_its_last_position() -> None:
    """A scan stops at its limit and says so; one after its last position goes on from there."""
    host = Host()
    for i in range(10):
        host.store(skey(b"k%d" % i), obj(with_entries(("a_bin", "t"))))
    first, last, done = indexes.scan(host, 3, b"b", "a_bin", b"t", b"t", None, 4, 1 << 20)
    assert len(first) == 4 and not done and last == first[-1]
    rest, _, done = indexes.scan(host, 3, b"b", "a_bin", b"t", b"t", last, 100, 1 << 20)
    assert done and [k for _, k in first + rest] == [b"k%d" % i for i in range(10)]


def test_bucket_and_key_indexes_read_live_keys_of_the_data() -> None:
    """$bucket lists every live key; $key the live keys in an inclusive range; tombstones are skipped."""
    host = Host()
    for key in (b"a", b"b", b"c", b"d"):
        host.store(skey(key), obj(Content(b"v")))
    host.store(skey(b"c"), obj(Content(b"", deleted=True)))
    host.store(skey(b"z", bucket=b"other"), obj(Content(b"v")))
    assert [k for _, k in query(host, "$bucket", "b", "b")] == [b"a", b"b", b"d"]
    assert query(host, "$key", "b", "d") == [(b"b", b"b"), (b"d", b"d")]


def test_a_coverage_plan_asks_each_partition_once_local_node_first_and_few_nodes() -> None:
    """Every partition is covered by one of its candidates; the coordinator takes all it can."""
    nodes = ["n0", "n1", "n2", "n3", "n4"]
    candidates = {p: [nodes[(p + i) % 5] for i in range(3)] for p in range(16)}
    plan = coverage.plan(candidates, "n2")
    covered = sorted(p for parts in plan.values() for p in parts)
    assert covered == list(range(16))
    assert all(node in candidates[p] for node, parts in plan.items() for p in parts)
    assert plan["n2"] == sorted(p for p in range(16) if "n2" in candidates[p])
    assert len(plan) <= 3
    assert coverage.plan(candidates, "n2") == plan, "the same candidates give the same plan"


def test_a_fallback_asks_each_partition_of_its_next_untried_candidate() -> None:
    """A failed replica's partitions go to their next candidates; one with none left is stranded."""
    candidates = {0: ["a", "b"], 1: ["a", "c"], 2: ["a"]}
    asked, stranded = coverage.fallback([0, 1, 2], candidates, {0: {"a"}, 1: {"a"}, 2: {"a"}})
    assert asked == {"b": [0], "c": [1]} and stranded == [2]


def test_a_page_holds_only_what_every_partition_has_answered_up_to() -> None:
    """A partition that stopped short bounds the page; the continuation is where the next starts."""
    answers = {
        0: ([(b"a", b"1"), (b"c", b"1")], (b"c", b"1"), False),
        1: ([(b"b", b"2"), (b"d", b"2")], (b"d", b"2"), True),
    }
    page = coverage.page_of(answers, 10)
    assert page.results == ((b"a", b"1"), (b"b", b"2"), (b"c", b"1")) and page.continuation == (b"c", b"1")
    small = coverage.page_of(answers, 2)
    assert small.results == ((b"a", b"1"), (b"b", b"2")) and small.continuation == (b"b", b"2")
    done = coverage.page_of({0: ([(b"a", b"1")], (b"a", b"1"), True)}, 1)
    assert done.continuation is None
    nothing_live = coverage.page_of({0: ([], (b"", b"tomb"), False)}, 5)
    assert nothing_live.results == () and nothing_live.continuation == (b"", b"tomb")


def test_objects_without_entries_keep_format_one_bytes_and_with_them_round_trip() -> None:
    """Old objects' bytes (and so their anti-entropy summaries) do not change; entries and links survive
    encoding; an object in format 1 written before indexes still decodes."""
    plain = obj(Content(b"v", "text/plain"))
    assert objects.to_wire(plain)[0] == objects.FORMAT_PLAIN
    assert len(objects.to_wire(plain)[2][0]) == 9
    rich = obj(Content(b"v"), with_entries(("a_bin", "x")))
    rich = Versioned(
        rich.clock,
        (
            rich.siblings[0],
            (rich.siblings[1][0], Content(b"w", indexes=(("a_bin", b"x"),), links=((b"b", b"k", b"t"),))),
        ),
    )
    wire = objects.to_wire(rich)
    assert wire[0] == objects.FORMAT_VERSION and all(len(s) == 11 for s in wire[2])
    assert objects.decode(objects.encode(rich)) == rich
    assert objects.decode_stored(objects.encode_stored(rich)) == rich
    bad = objects.to_wire(rich)
    bad[2][1][9] = [["b_bin", b"x"], ["a_bin", b"x"]]
    import msgpack

    with pytest.raises(objects.ObjectError, match="sorted"):
        objects.decode(msgpack.packb(bad, use_bin_type=True))


def test_a_node_records_the_index_format_and_refuses_a_newer_one() -> None:
    """A data directory without the record (written before indexes) gets it; a newer format is refused
    in one line before the node starts."""
    import random

    from dynastore.core.node import NodeCore
    from dynastore.core.nodebase import StartupError

    engine = MemoryEngine()
    engine.write([Op("data", skey(b"old"), objects.encode_stored(obj(Content(b"v"))))])
    core = NodeCore("n0", S, engine, random.Random(0), 0)
    batch = core.take_batch()
    engine.write(batch.ops)
    assert engine.get("meta", indexes.META_INDEX_FORMAT) == indexes.INDEX_FORMAT.to_bytes(4, "big")
    engine.write([Op("meta", indexes.META_INDEX_FORMAT, (indexes.INDEX_FORMAT + 1).to_bytes(4, "big"))])
    with pytest.raises(StartupError, match="secondary index has format 2"):
        NodeCore("n0", S, engine, random.Random(0), 0)
