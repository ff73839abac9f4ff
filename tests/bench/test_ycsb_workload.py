"""The YCSB workload generator: each workload's operation mix, and zipfian popularity scattered over the keys."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from dynastore.bench.ycsb_workload import (
    READ,
    READ_MODIFY_WRITE,
    UPDATE,
    WORKLOADS,
    OperationStream,
    ScrambledZipfian,
    Workload,
    fnv1a_64,
    key_of,
    make_values,
)

DRAWS = 40_000


def _mix(workload: str, seed: int = 7, records: int = 1000) -> Counter[str]:
    stream = OperationStream(WORKLOADS[workload], ScrambledZipfian.create(records), random.Random(seed))
    return Counter(op for op, _ in stream.take(DRAWS))


@pytest.mark.parametrize(
    ("workload", "shares"),
    [
        ("A", {READ: 0.5, UPDATE: 0.5}),
        ("B", {READ: 0.95, UPDATE: 0.05}),
        ("C", {READ: 1.0}),
        ("F", {READ: 0.5, READ_MODIFY_WRITE: 0.5}),
    ],
)
def test_each_workload_draws_operations_in_ycsbs_proportions(workload: str, shares: dict[str, float]) -> None:
    """A, B, C and F issue reads, updates and read-modify-writes in YCSB's shares, and nothing else."""
    mix = _mix(workload)
    assert set(mix) == set(shares)
    for op, share in shares.items():
        # 40,000 draws: four standard deviations of a 50% share is 1%.
        assert mix[op] / DRAWS == pytest.approx(share, abs=0.01), (op, mix)


def test_a_workload_whose_shares_do_not_add_up_to_one_is_refused() -> None:
    """A workload description is checked: shares outside [0, 1] or not summing to one are a bug."""
    with pytest.raises(AssertionError):
        Workload("X", "broken", 0.5, 0.4, 0.0)


def test_the_scramble_is_a_permutation_of_the_records() -> None:
    """Every rank reads a different record and every record has a rank (unlike YCSB's hash-mod)."""
    keys = ScrambledZipfian.create(5000)
    assert sorted(keys.record_of_rank) == list(range(5000))


def test_the_most_popular_record_is_drawn_as_often_as_zipf_says() -> None:
    """Popularity follows the zipfian distribution: rank 0's record comes up with probability 1/zeta(n)."""
    keys = ScrambledZipfian.create(1000)
    draws = keys.sample(random.Random(3), 100_000)
    hottest = keys.record_of_rank[0]
    expected = keys.generator.probability(0)
    assert draws.count(hottest) / len(draws) == pytest.approx(expected, rel=0.05)
    assert Counter(draws).most_common(1)[0][0] == hottest


def test_hot_records_are_scattered_over_the_keyspace_not_bunched_at_its_start() -> None:
    """The twenty hottest records are spread over the whole record range, as ScrambledZipfian intends."""
    records = 10_000
    keys = ScrambledZipfian.create(records)
    hottest = [record for record, _ in Counter(keys.sample(random.Random(11), 200_000)).most_common(20)]
    assert set(hottest) == set(keys.record_of_rank[:20])
    # Unscrambled, they would be records 0..19. Scrambled, they land in most of ten equal slices.
    assert max(hottest) - min(hottest) > records // 2
    assert len({record * 10 // records for record in hottest}) >= 6


def test_the_same_seed_gives_the_same_stream_and_another_seed_another() -> None:
    """A run is reproducible from its seed: operations and records come only from the Random passed in."""
    keys = ScrambledZipfian.create(500)

    def stream(seed: int) -> list[tuple[str, int]]:
        return OperationStream(WORKLOADS["A"], keys, random.Random(seed), batch=64).take(1000)

    assert stream(5) == stream(5)
    assert stream(5) != stream(6)


def test_the_scramble_hash_is_ycsbs_fnv1a_over_the_little_endian_bytes() -> None:
    """fnv1a_64 hashes a record number as YCSB's Utils.fnvhash64 does: FNV-1a over 8 little-endian bytes."""

    def fnv1a(data: bytes) -> int:
        hashed = 0xCBF29CE484222325
        for byte in data:
            hashed = ((hashed ^ byte) * 0x100000001B3) % 2**64
        return hashed

    for value in (0, 1, 255, 256, 123_456_789, 2**63 - 1):
        assert fnv1a_64(value) == fnv1a(value.to_bytes(8, "little"))
    assert fnv1a(b"a") == 0xAF63DC4C8601EC8C  # the published FNV-1a test vector, checking the reference itself


def test_values_have_the_record_size_and_keys_follow_ycsbs_naming() -> None:
    """Writes send full-size printable values; record i is stored under `user<i>`."""
    values = make_values(random.Random(1), count=4, size=1000)
    assert len(values) == 4 and len(set(values)) == 4
    assert all(len(v) == 1000 and v.isascii() and v.isalnum() for v in values)
    assert key_of(42) == "user42"
