"""YCSB's core workloads as data: which operation comes next and which record it touches.

A, B, C and F are YCSB's workloads of the same names (Cooper et al., "Benchmarking Cloud Serving
Systems with YCSB", SoCC 2010): the mix of reads, updates and read-modify-writes, requests spread
over the records by a zipfian distribution (theta 0.99) whose popular ranks are scattered over the
keyspace, as YCSB's ScrambledZipfianGenerator does, so that hot records do not sit side by side (on
one partition of a ring, say).

YCSB scrambles by `fnvhash64(rank) % records`, which maps some ranks onto the same record and leaves
others unused. Here the scramble is a permutation instead: records sorted by the same FNV-1a hash,
rank i reading the i-th of them. Popularity is then exactly zipfian over the records, still
scattered by a fixed hash, and reproducible across processes and runs.

Pure: randomness comes from the `random.Random` passed in; no clock, no I/O.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass

from dynastore.bench.zipf import THETA_DEFAULT, ZipfianGenerator

READ = "read"
UPDATE = "update"
INSERT = "insert"
READ_MODIFY_WRITE = "read-modify-write"

# YCSB's record: 10 fields of 100 bytes. One value of the same size stands for them.
VALUE_BYTES_DEFAULT = 1000

_FNV_OFFSET_BASIS_64 = 0xCBF29CE484222325
_FNV_PRIME_64 = 0x100000001B3
_MASK_64 = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class Workload:
    """The share of each operation in a workload's run phase; the shares add up to one."""

    name: str
    description: str
    read: float
    update: float
    read_modify_write: float

    def __post_init__(self) -> None:
        shares = (self.read, self.update, self.read_modify_write)
        assert all(0.0 <= share <= 1.0 for share in shares), self
        assert abs(sum(shares) - 1.0) < 1e-9, self

    @property
    def writes(self) -> bool:
        return self.update > 0.0 or self.read_modify_write > 0.0


WORKLOADS: dict[str, Workload] = {
    "A": Workload("A", "update heavy: 50% reads, 50% updates", 0.5, 0.5, 0.0),
    "B": Workload("B", "read mostly: 95% reads, 5% updates", 0.95, 0.05, 0.0),
    "C": Workload("C", "read only: 100% reads", 1.0, 0.0, 0.0),
    "F": Workload("F", "read-modify-write: 50% reads, 50% read-modify-writes", 0.5, 0.0, 0.5),
}


def fnv1a_64(value: int) -> int:
    """YCSB's `Utils.fnvhash64`: FNV-1a over the eight little-endian bytes of a 64-bit value."""
    hashed = _FNV_OFFSET_BASIS_64
    for _ in range(8):
        hashed ^= value & 0xFF
        hashed = (hashed * _FNV_PRIME_64) & _MASK_64
        value >>= 8
    return hashed


@dataclass(frozen=True, slots=True)
class ScrambledZipfian:
    """Records 0 .. records - 1, popular by zipfian rank, rank i being the i-th record in hash order."""

    generator: ZipfianGenerator
    record_of_rank: tuple[int, ...]

    @classmethod
    def create(cls, records: int, theta: float = THETA_DEFAULT) -> ScrambledZipfian:
        assert records >= 2, records
        return cls(ZipfianGenerator.create(records, theta), tuple(sorted(range(records), key=fnv1a_64)))

    @property
    def records(self) -> int:
        return self.generator.items

    def sample(self, rng: random.Random, count: int) -> list[int]:
        order = self.record_of_rank
        return [order[rank] for rank in self.generator.sample(rng, count)]


class OperationStream:
    """An endless stream of (operation, record) pairs of one workload, drawn from a seeded Random.

    Records are drawn in batches, because the zipfian sampler is several times faster per sample
    when it is asked for many at once. The stream depends on the seed and the batch size only.
    """

    def __init__(self, workload: Workload, keys: ScrambledZipfian, rng: random.Random, batch: int = 1024) -> None:
        assert batch >= 1, batch
        self.workload = workload
        self._keys = keys
        self._rng = rng
        self._batch = batch
        self._read_below = workload.read
        self._update_below = workload.read + workload.update
        self._ops: list[str] = []
        self._records: list[int] = []
        self._at = 0

    def _refill(self) -> None:
        draw = self._rng.random
        read_below, update_below = self._read_below, self._update_below
        self._ops = [
            READ if u < read_below else UPDATE if u < update_below else READ_MODIFY_WRITE
            for u in (draw() for _ in range(self._batch))
        ]
        self._records = self._keys.sample(self._rng, self._batch)
        self._at = 0

    def next(self) -> tuple[str, int]:
        if self._at == len(self._ops):
            self._refill()
        at = self._at
        self._at = at + 1
        return self._ops[at], self._records[at]

    def take(self, count: int) -> list[tuple[str, int]]:
        return [self.next() for _ in range(count)]


def key_of(record: int) -> str:
    """The key of record `record`, as YCSB names them in its `usertable`."""
    return f"user{record}"


def make_values(rng: random.Random, count: int = 16, size: int = VALUE_BYTES_DEFAULT) -> tuple[bytes, ...]:
    """A few distinct printable values of `size` bytes; writes cycle through them, so each write
    sends a full-size value without paying to generate one per request."""
    assert count >= 1 and size >= 1, (count, size)
    alphabet = string.ascii_letters + string.digits
    return tuple("".join(rng.choices(alphabet, k=size)).encode() for _ in range(count))
