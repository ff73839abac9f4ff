"""Every storage engine keeps the engine protocol of storage/base.py, and they all behave alike.

The same tests run against each engine (memory, lmdb, lmdb with tiny inline keys, sqlite); a
Hypothesis state machine then drives each engine and a plain dict with random batches and scans.
"""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Callable
from typing import ClassVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule, run_state_machine_as_test
from storage_harness import StoreFactory

from dynastore.core import indexes, objects
from dynastore.core import keys as storage_keys
from dynastore.core.versions import Context, Dot, update
from dynastore.storage import AREAS, Engine, Op, StorageError
from dynastore.storage.base import delete, put, scan_all
from dynastore.storage.lmdb_engine import LmdbEngine
from dynastore.storage.sqlite_engine import SqliteEngine

# Keys whose byte order is easy to get wrong: the empty key, 0x00 and 0xff bytes, prefixes of each
# other, and keys longer than LMDB accepts (some sharing their first 600 bytes).
LONG = b"L" * 600
AWKWARD_KEYS = [
    b"",
    b"\x00",
    b"\x00\x00",
    b"\x00\xff",
    b"\x01",
    b"a",
    b"a\x00",
    b"ab",
    b"a\xff",
    b"\x7f",
    b"\x80",
    b"\xfe",
    b"\xff",
    b"\xff\x00",
    b"\xff\xff",
    b"\xff\xff\xff",
    LONG[:509],
    LONG[:510],
    LONG,
    LONG + b"\x00",
    LONG + b"a",
    LONG + b"a" * 4000,
    LONG[:599] + b"\xff",
    LONG + b"\xff",
]


def value_of(key: bytes) -> bytes:
    return b"v" + key[:8] + len(key).to_bytes(4, "big")


def fill(engine: Engine, area: str = "data", keys: list[bytes] = AWKWARD_KEYS) -> None:
    engine.write([Op(area, key, value_of(key)) for key in keys])


def bounded_rows(
    table: dict[bytes, bytes], start: bytes, end: bytes | None, limit: int, bytes_max: int | None
) -> list[tuple[bytes, bytes]]:
    """What a scan must return: the first `limit` pairs in range, cut after the pair whose bytes (keys and
    values together) reach `bytes_max`."""
    rows: list[tuple[bytes, bytes]] = []
    size = 0
    for key in sorted(key for key in table if key >= start and (end is None or key < end))[:limit]:
        if bytes_max is not None and size >= bytes_max:
            break
        rows.append((key, table[key]))
        size += len(key) + len(table[key])
    return rows


def expected_scan(keys: list[bytes], start: bytes, end: bytes | None, limit: int) -> list[tuple[bytes, bytes]]:
    chosen = sorted(key for key in keys if key >= start and (end is None or key < end))
    return [(key, value_of(key)) for key in chosen[:limit]]


# --- Single keys -----------------------------------------------------------------------------------


def test_a_key_never_written_reads_as_none(engine: Engine) -> None:
    assert engine.get("data", b"nothing") is None
    assert engine.get("data", b"") is None


def test_a_written_value_reads_back_and_can_be_overwritten(engine: Engine) -> None:
    put(engine, "data", b"k", b"one")
    assert engine.get("data", b"k") == b"one"
    put(engine, "data", b"k", b"two")
    assert engine.get("data", b"k") == b"two"
    assert engine.count("data") == 1


def test_an_empty_value_is_stored_and_is_not_absence(engine: Engine) -> None:
    put(engine, "data", b"k", b"")
    assert engine.get("data", b"k") == b""
    assert engine.scan("data") == [(b"k", b"")]


def test_every_awkward_key_reads_back_its_own_value(engine: Engine) -> None:
    fill(engine)
    for key in AWKWARD_KEYS:
        assert engine.get("data", key) == value_of(key), key[:20]
    assert engine.get("data", LONG + b"b") is None
    assert engine.get("data", LONG[:508]) is None


def test_a_deleted_key_reads_as_none_and_deleting_a_missing_key_is_harmless(engine: Engine) -> None:
    fill(engine)
    delete(engine, "data", b"a")
    delete(engine, "data", LONG + b"a")
    delete(engine, "data", b"never-written")
    assert engine.get("data", b"a") is None
    assert engine.get("data", LONG + b"a") is None
    assert engine.get("data", LONG) == value_of(LONG)
    assert engine.count("data") == len(AWKWARD_KEYS) - 2


def test_a_value_of_a_mebibyte_round_trips(engine: Engine) -> None:
    big = bytes(range(256)) * 4096
    put(engine, "data", LONG + b"big", big)
    assert engine.get("data", LONG + b"big") == big


# --- Batches ---------------------------------------------------------------------------------------


def test_a_batch_spanning_areas_is_applied_whole(engine: Engine) -> None:
    engine.write([Op(area, b"k-" + area.encode(), area.encode()) for area in AREAS])
    for area in AREAS:
        assert engine.get(area, b"k-" + area.encode()) == area.encode()
        assert engine.count(area) == 1


@pytest.mark.parametrize("key", [b"k", b"", LONG + b"k"], ids=["short", "empty", "long"])
def test_the_last_op_on_a_key_within_a_batch_wins(engine: Engine, key: bytes) -> None:
    engine.write([Op("data", key, b"1"), Op("data", key, None)])
    assert engine.get("data", key) is None
    engine.write([Op("data", key, None), Op("data", key, b"2")])
    assert engine.get("data", key) == b"2"
    engine.write([Op("data", key, b"3"), Op("data", key, b"4")])
    assert engine.get("data", key) == b"4"
    engine.write([Op("data", key, b"5"), Op("data", key, None), Op("data", key, b"6"), Op("data", key, None)])
    assert engine.get("data", key) is None
    assert engine.count("data") == 0


def test_an_empty_batch_changes_nothing(engine: Engine) -> None:
    fill(engine)
    engine.write([])
    assert engine.count("data") == len(AWKWARD_KEYS)


@pytest.mark.parametrize(
    "bad_op",
    [
        Op("no-such-area", b"k", b"v"),
        Op("data", "str-key", b"v"),  # type: ignore[arg-type]
        Op("data", b"k", "str-value"),  # type: ignore[arg-type]
    ],
    ids=["unknown-area", "str-key", "str-value"],
)
def test_a_batch_with_a_malformed_op_is_refused_and_changes_nothing(engine: Engine, bad_op: Op) -> None:
    put(engine, "meta", b"before", b"kept")
    with pytest.raises(StorageError):
        engine.write([Op("data", b"a", b"1"), Op("meta", b"before", None), bad_op, Op("data", b"b", b"2")])
    assert engine.scan("data") == []
    assert engine.get("meta", b"before") == b"kept"


def test_areas_are_independent_key_spaces(engine: Engine) -> None:
    engine.write([Op("data", b"k", b"in-data"), Op("hints", b"k", b"in-hints")])
    assert engine.get("data", b"k") == b"in-data"
    assert engine.get("hints", b"k") == b"in-hints"
    assert engine.get("meta", b"k") is None
    delete(engine, "data", b"k")
    assert engine.get("hints", b"k") == b"in-hints"
    assert [engine.count(area) for area in AREAS] == [1 if area == "hints" else 0 for area in AREAS]
    assert engine.scan("meta") == []


# --- Scans -----------------------------------------------------------------------------------------


def test_a_scan_returns_every_key_in_byte_order(engine: Engine) -> None:
    fill(engine)
    assert engine.scan("data", limit=len(AWKWARD_KEYS) + 10) == expected_scan(AWKWARD_KEYS, b"", None, 100)


@pytest.mark.parametrize(
    ("start", "end", "limit", "expected_keys"),
    [
        (b"a", b"b", 10, [b"a", b"a\x00", b"ab", b"a\xff"]),
        (b"a", b"b", 2, [b"a", b"a\x00"]),
        (b"a\x00", b"a\xff", 10, [b"a\x00", b"ab"]),
        (b"", b"\x00", 10, [b""]),
        (b"", b"\x01", 10, [b"", b"\x00", b"\x00\x00", b"\x00\xff"]),
        (b"\xff", None, 10, [b"\xff", b"\xff\x00", b"\xff\xff", b"\xff\xff\xff"]),
        (b"\xff\xff", None, 1, [b"\xff\xff"]),
        (b"\xff\xff\xff\x00", None, 10, []),
        (LONG, LONG + b"b", 10, [LONG, LONG + b"\x00", LONG + b"a", LONG + b"a" * 4000]),
        (LONG + b"\x01", None, 3, [LONG + b"a", LONG + b"a" * 4000, LONG + b"\xff"]),
        (LONG[:509], LONG, 10, [LONG[:509], LONG[:510]]),
        (b"", b"", 10, []),
        (b"", None, 0, []),
    ],
)
def test_a_scan_honours_start_end_and_limit(
    engine: Engine, start: bytes, end: bytes | None, limit: int, expected_keys: list[bytes]
) -> None:
    fill(engine)
    assert engine.scan("data", start, end, limit) == [(key, value_of(key)) for key in expected_keys]


def test_a_scan_agrees_with_sorting_for_every_pair_of_bounds(engine: Engine) -> None:
    fill(engine)
    bounds = [*AWKWARD_KEYS, b"\x00\x01", b"a\x00\x00", LONG + b"a\x00", b"\xff\xff\xff\xff"]
    for start, end in itertools.product(bounds, [*bounds, None]):
        for limit in (1, 3, 100):
            assert engine.scan("data", start, end, limit) == expected_scan(AWKWARD_KEYS, start, end, limit)


def test_a_scan_with_end_at_or_before_start_is_empty(engine: Engine) -> None:
    fill(engine)
    assert engine.scan("data", b"b", b"b") == []
    assert engine.scan("data", b"b", b"a") == []
    assert engine.scan("data", LONG + b"a", LONG) == []


def test_a_scan_bounded_in_bytes_stops_after_the_pair_that_reaches_the_bound(engine: Engine) -> None:
    """Three pairs of 1 MiB: a bound of 1.5 MiB returns two, a bound of one byte still returns one."""
    big = {b"a": b"1" * (1 << 20), b"b": b"2" * (1 << 20), b"c": b"3" * (1 << 20)}
    engine.write([Op("data", key, value) for key, value in big.items()])
    assert [key for key, _ in engine.scan("data", b"", None, 10, 3 << 19)] == [b"a", b"b"]
    assert [key for key, _ in engine.scan("data", b"b", None, 10, 1)] == [b"b"]
    assert [key for key, _ in engine.scan("data", b"", None, 10, 10 << 20)] == [b"a", b"b", b"c"]
    with pytest.raises(StorageError):
        engine.scan("data", b"", None, 10, 0)


def test_a_scan_with_a_negative_limit_is_refused(engine: Engine) -> None:
    with pytest.raises(StorageError):
        engine.scan("data", limit=-1)


def test_scan_all_pages_through_every_key_in_order(engine: Engine) -> None:
    fill(engine)
    for page in (1, 3, 1000):
        assert list(scan_all(engine, "data", page=page)) == expected_scan(AWKWARD_KEYS, b"", None, 100)
    assert list(scan_all(engine, "data", b"a", b"\x80", page=2)) == expected_scan(AWKWARD_KEYS, b"a", b"\x80", 100)


def test_scan_all_refuses_an_empty_page_instead_of_looping_forever(engine: Engine) -> None:
    with pytest.raises(StorageError):
        list(scan_all(engine, "data", page=0))


def test_count_follows_puts_and_deletes(engine: Engine) -> None:
    assert engine.count("data") == 0
    fill(engine)
    assert engine.count("data") == len(AWKWARD_KEYS)
    fill(engine)
    assert engine.count("data") == len(AWKWARD_KEYS)
    engine.write([Op("data", key, None) for key in AWKWARD_KEYS[::2]])
    assert engine.count("data") == len(AWKWARD_KEYS[1::2])
    assert engine.count("hints") == 0


# --- Misuse and lifecycle --------------------------------------------------------------------------


def test_an_unknown_area_is_a_storage_error_for_every_call(engine: Engine) -> None:
    calls: list[Callable[[], object]] = [
        lambda: engine.get("nope", b"k"),
        lambda: engine.write([Op("nope", b"k", b"v")]),
        lambda: engine.scan("nope"),
        lambda: engine.count("nope"),
    ]
    for call in calls:
        with pytest.raises(StorageError, match="unknown storage area 'nope'"):
            call()


def test_every_call_after_close_raises_storage_error(factory: StoreFactory) -> None:
    engine = factory.open()
    put(engine, "data", b"k", b"v")
    engine.close()
    calls: list[Callable[[], object]] = [
        lambda: engine.get("data", b"k"),
        lambda: engine.write([Op("data", b"k", b"v")]),
        lambda: engine.scan("data"),
        lambda: engine.count("data"),
        engine.sync,
    ]
    for call in calls:
        with pytest.raises(StorageError, match="closed"):
            call()


def test_closing_twice_is_harmless(factory: StoreFactory) -> None:
    engine = factory.open()
    engine.close()
    engine.close()


def test_durable_is_true_only_for_a_durable_disk_engine(factory: StoreFactory) -> None:
    for durable in (True, False):
        engine = factory.open(f"durable-{durable}", durable=durable)
        try:
            assert engine.durable is (durable and factory.persistent)
        finally:
            engine.close()


def test_data_survives_close_and_reopen(disk_factory: StoreFactory) -> None:
    engine = disk_factory.open()
    fill(engine)
    engine.write([Op("meta", b"m", b"meta"), Op("data", b"a", None)])
    engine.close()
    reopened = disk_factory.open()
    try:
        assert reopened.get("meta", b"m") == b"meta"
        assert reopened.get("data", b"a") is None
        keys = [key for key in AWKWARD_KEYS if key != b"a"]
        assert reopened.scan("data", limit=100) == expected_scan(keys, b"", None, 100)
        assert reopened.count("data") == len(keys)
    finally:
        reopened.close()


def test_buffered_data_survives_sync_close_and_reopen(disk_factory: StoreFactory) -> None:
    engine = disk_factory.open(durable=False)
    fill(engine)
    engine.sync()
    put(engine, "data", b"after-sync", b"x")
    engine.close()
    reopened = disk_factory.open(durable=True)
    try:
        assert reopened.count("data") == len(AWKWARD_KEYS) + 1
        assert reopened.get("data", b"after-sync") == b"x"
    finally:
        reopened.close()


def test_a_second_engine_on_an_open_directory_is_refused_and_the_first_keeps_working(
    disk_factory: StoreFactory,
) -> None:
    first = disk_factory.open()
    try:
        put(first, "data", b"k", b"v")
        with pytest.raises(StorageError, match="already open"):
            disk_factory.open()
        put(first, "data", b"k2", b"v2")
        assert first.scan("data") == [(b"k", b"v"), (b"k2", b"v2")]
    finally:
        first.close()
    again = disk_factory.open()
    try:
        assert again.count("data") == 2
    finally:
        again.close()


# --- Random batches and scans against a dict model -------------------------------------------------

# A small alphabet, so that random keys collide, share prefixes and hit 0x00 and 0xff often.
keys = st.lists(st.sampled_from(b"\x00\x01\x7f\xfe\xff"), max_size=5).map(bytes)
model_areas = st.sampled_from(AREAS[:2])
ops = st.builds(Op, area=model_areas, key=keys, value=st.none() | st.binary(max_size=6))


class EngineMatchesADict(RuleBasedStateMachine):
    """One engine and a dict of dicts receive the same batches; every read must agree."""

    factory: ClassVar[StoreFactory]
    opened_count: ClassVar[itertools.count[int]]

    def __init__(self) -> None:
        super().__init__()
        self.name = f"machine-{next(self.opened_count)}"
        self.engine = self.factory.open(self.name, durable=False)
        self.model: dict[str, dict[bytes, bytes]] = {area: {} for area in AREAS}

    def expected(
        self, area: str, start: bytes, end: bytes | None, limit: int, bytes_max: int | None = None
    ) -> list[tuple[bytes, bytes]]:
        return bounded_rows(self.model[area], start, end, limit, bytes_max)

    @rule(batch=st.lists(ops, max_size=8))
    def write(self, batch: list[Op]) -> None:
        self.engine.write(batch)
        for op in batch:
            if op.value is None:
                self.model[op.area].pop(op.key, None)
            else:
                self.model[op.area][op.key] = op.value

    @rule(area=model_areas, key=keys)
    def get(self, area: str, key: bytes) -> None:
        assert self.engine.get(area, key) == self.model[area].get(key)

    @rule(area=model_areas, start=keys, end=st.none() | keys, limit=st.integers(0, 6))
    def scan(self, area: str, start: bytes, end: bytes | None, limit: int) -> None:
        assert self.engine.scan(area, start, end, limit) == self.expected(area, start, end, limit)

    @rule(area=model_areas, start=keys, end=st.none() | keys, limit=st.integers(0, 6), bytes_max=st.integers(1, 20))
    def scan_bounded(self, area: str, start: bytes, end: bytes | None, limit: int, bytes_max: int) -> None:
        assert self.engine.scan(area, start, end, limit, bytes_max) == self.expected(area, start, end, limit, bytes_max)

    @rule(area=model_areas, start=keys, page=st.integers(1, 3))
    def scan_all(self, area: str, start: bytes, page: int) -> None:
        assert list(scan_all(self.engine, area, start, page=page)) == self.expected(area, start, None, 10**6)

    @rule(area=model_areas)
    def count(self, area: str) -> None:
        assert self.engine.count(area) == len(self.model[area])

    @precondition(lambda self: self.factory.persistent)
    @rule()
    def sync_and_reopen(self) -> None:
        self.engine.sync()
        self.engine.close()
        self.engine = self.factory.open(self.name, durable=False)

    def teardown(self) -> None:
        self.engine.close()
        shutil.rmtree(self.factory.root / self.name, ignore_errors=True)


def test_every_engine_agrees_with_a_dict_under_random_batches_and_scans(factory: StoreFactory) -> None:
    machine = type(
        "EngineMatchesADictFor" + factory.kind.replace("-", "_"),
        (EngineMatchesADict,),
        {"factory": factory, "opened_count": itertools.count()},
    )
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=60,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


def test_the_awkward_keys_really_cover_long_and_grouped_keys() -> None:
    """Guard the fixture itself: without long keys sharing a prefix, LMDB's groups would go untested."""
    long_keys = [key for key in AWKWARD_KEYS if len(key) > 511]
    assert len({key[:510] for key in long_keys}) < len(long_keys)


def test_a_disk_engine_reports_its_used_and_free_space_and_used_grows_with_data(disk_factory: StoreFactory) -> None:
    engine = disk_factory.open()
    try:
        before = engine.space()
        assert before is not None and before.used_bytes > 0 and before.free_bytes > 0
        engine.write([Op("data", b"big%d" % i, b"x" * 100_000) for i in range(40)])
        after = engine.space()
        assert after is not None and after.used_bytes >= before.used_bytes + 3_000_000
    finally:
        engine.close()


def test_the_memory_engine_is_bounded_by_nothing_but_memory(factory: StoreFactory) -> None:
    engine = factory.open()
    try:
        if factory.kind == "memory":
            assert engine.space() is None
        else:
            assert engine.space() is not None
    finally:
        engine.close()


class _IndexHost:
    """A node's view of an engine, as the secondary index uses it (core/indexes.py)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _get(self, area: str, key: bytes) -> bytes | None:
        return self.engine.get(area, key)

    def _put(self, area: str, key: bytes, value: bytes | None) -> None:
        self.engine.write([Op(area, key, value)])

    def _scan(
        self, area: str, start: bytes, end: bytes | None, limit: int, bytes_max: int | None = None
    ) -> list[tuple[bytes, bytes]]:
        return self.engine.scan(area, start, end, limit, bytes_max)

    def _decode_copy(self, area: str, key: bytes, raw: bytes) -> objects.Object | None:
        return objects.decode_stored(raw)


def _indexed(term: bytes, n: int) -> objects.Object:
    content = objects.Content(b"v", indexes=(("n_int", str(n).encode()), ("t_bin", term)))
    return update(None, Context(), Dot(b"a", 1), content, 1)


def test_the_index_area_keeps_entries_in_query_order_for_long_and_awkward_terms_and_keys(
    factory: StoreFactory,
) -> None:
    """Index entries of long buckets, keys and terms with NUL and 0xff bytes scan back in index order
    and are removed with their key, on every engine, and survive a reopen on every disk engine."""
    bucket = b"B" * 300
    written = {}
    engine = factory.open()
    host = _IndexHost(engine)
    for i, term in enumerate([*AWKWARD_KEYS[1:12], b"T" * 900]):
        key = b"K" * 700 + bytes([i])
        skey = storage_keys.encode(5, bucket, key)
        indexes.on_write(host, skey, _indexed(term, i - 6))
        written[key] = term
    gone = b"K" * 700 + bytes([3])
    indexes.on_write(host, storage_keys.encode(5, bucket, gone), None)
    del written[gone]
    if factory.persistent:
        engine.close()
        engine = factory.open()
    try:
        host = _IndexHost(engine)
        found, _, done = indexes.scan(host, 5, bucket, "t_bin", b"\x00", b"\xff" * 4, None, 100, 1 << 20)
        assert done and found == sorted((term, key) for key, term in written.items())
        lo, hi = indexes.bounds_of("n_int", "-100", "100")
        ints, _, _ = indexes.scan(host, 5, bucket, "n_int", lo, hi, None, 100, 1 << 20)
        assert [indexes.term_text("n_int", t) for t, _ in ints] == sorted(key[-1] - 6 for key in written)
    finally:
        engine.close()


def test_a_data_directory_without_an_index_area_opens_with_an_empty_one(disk_factory: StoreFactory) -> None:
    """A directory written before the index area existed (here: its area dropped) opens, and the area
    is there, empty and writable; the rest of the data is untouched."""
    engine = disk_factory.open()
    engine.write([Op("data", b"k", b"v"), Op("index", b"i", b"")])
    if isinstance(engine, LmdbEngine):
        env = engine._env
        assert env is not None
        with env.begin(write=True) as txn:
            txn.drop(engine._dbs["index"], delete=True)
            txn.drop(engine._long["index"], delete=True)
    else:
        assert isinstance(engine, SqliteEngine)
        conn = engine._conn
        assert conn is not None
        conn.execute('DROP TABLE "area_index"')
        conn.commit()
    engine.close()
    engine = disk_factory.open()
    try:
        assert engine.get("data", b"k") == b"v"
        assert engine.count("index") == 0
        engine.write([Op("index", b"i", b"")])
        assert engine.get("index", b"i") == b""
    finally:
        engine.close()
