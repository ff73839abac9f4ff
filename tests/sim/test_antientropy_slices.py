"""Anti-entropy's index verification and tree builds run in bounded slices: no tick reads more than
the batch bound, the node answers clients meanwhile, and writes between the slices leave the index
equal to the data and every tree equal to one built in one step."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from dynastore.core import keys, merkle, objects
from dynastore.core.antientropy import index_key
from dynastore.core.merkle import HashTree
from dynastore.core.messages import ClientGet, Ok
from dynastore.core.node import NodeCore
from dynastore.core.objects import Content
from dynastore.core.versions import Context, Dot, update
from dynastore.settings import Settings
from dynastore.sim.cluster import SimCluster
from dynastore.storage.base import Op

BATCH = 20
ONE = Settings(
    ring_size=16,
    n_val=1,
    r=1,
    w=1,
    anti_entropy_interval_ms=2_000,
    anti_entropy_segments_count=64,
    anti_entropy_verify_batch_keys_max=BATCH,
    hinted_handoff_enabled=False,
    read_repair_enabled=False,
)


def put(core: NodeCore, key: bytes, counter: int, now_ms: int) -> None:
    obj = update(None, Context(), Dot(b"writer#1", counter), Content(b"v%d" % counter, last_modified_us=1), 1)
    core._merge_into_data(b"b", key, obj, False, now_ms)


def skey_of(core: NodeCore, key: bytes) -> bytes:
    return keys.encode(core.ring.partition_of(b"b", key), b"b", key)


def expected_index(core: NodeCore) -> dict[bytes, bytes]:
    """The segment index the data calls for (n_val 1 everywhere)."""
    out = {}
    for skey, raw in core._scan_all("data", b"", None):
        segment = merkle.segment_of(skey, core.settings.anti_entropy_segments_count)
        out[index_key(1, skey, segment)] = merkle.summary(objects.decode_stored(raw))
    return out


def one_step_root(core: NodeCore, partition: int) -> bytes:
    """The root of partition's tree built from its index in one go."""
    tree = HashTree(core.settings.anti_entropy_segments_count)
    prefix = bytes([1]) + keys.partition_prefix(partition)
    for raw_key, version in core._scan_all("aae", prefix, keys.prefix_end(prefix)):
        tree.toggle(int.from_bytes(raw_key[5:7], "big"), merkle.key_hash(raw_key[7:], version))
    return tree.root()


def damage_index(c: SimCluster, core: NodeCore, rng: random.Random, written: list[bytes]) -> None:
    """Behind the store's back: lose some entries, change some, add strays for keys with no data."""
    engine = c.nodes["n0"].engine
    ops = []
    for key in rng.sample(written, 6):
        skey = skey_of(core, key)
        raw_key = index_key(1, skey, merkle.segment_of(skey, core.settings.anti_entropy_segments_count))
        ops.append(Op("aae", raw_key, None if rng.random() < 0.5 else b"\x00" * merkle.HASH_BYTES))
    for i in range(4):
        skey = skey_of(core, b"ghost%d" % i)
        ops.append(Op("aae", index_key(1, skey, rng.randrange(64)), b"\x01" * merkle.HASH_BYTES))
    engine.write(ops)


def count_per_tick(core: NodeCore) -> list[dict[str, int]]:
    """Record, for every anti-entropy tick, the data copies decoded and the index rows read."""
    ticks: list[dict[str, int]] = []
    current = {"decoded": 0, "index_rows": 0}
    decode, scan, scan_all, tick = core._decode_copy, core._scan, core._scan_all, core.aae.on_tick

    def counting_decode(area: str, key: bytes, raw: bytes) -> Any:
        current["decoded"] += area == "data"
        return decode(area, key, raw)

    def counting_scan(area: str, *args: Any) -> list[tuple[bytes, bytes]]:
        rows = scan(area, *args)
        current["index_rows"] += len(rows) if area == "aae" else 0
        return rows

    def counting_scan_all(area: str, *args: Any) -> Any:
        for row in scan_all(area, *args):
            current["index_rows"] += area == "aae"
            yield row

    def counting_tick(now_ms: int) -> None:
        current.update(decoded=0, index_rows=0)
        tick(now_ms)
        ticks.append(dict(current))

    core._decode_copy = counting_decode  # type: ignore[method-assign]
    core._scan = counting_scan
    core._scan_all = counting_scan_all
    core.aae.on_tick = counting_tick  # type: ignore[method-assign]
    return ticks


def test_a_node_restarted_uncleanly_verifies_in_bounded_ticks_and_answers_clients_meanwhile() -> None:
    """After an unclean stop with ~100 keys per partition and a bound of 20, no tick decodes more than
    20 copies or reads more than 20 index rows per job, a client read is answered while the
    verification is under way, and it ends with the damaged index fixed and every tree right."""
    c = SimCluster(1, ONE)
    core = c.core("n0")
    written = [b"k%05d" % i for i in range(1600)]
    for i, key in enumerate(written):
        put(core, key, i + 1, c.now_ms)
    c._flush("n0")
    damage_index(c, core, random.Random(7), written)
    c.crash("n0")
    c.restart("n0")
    core = c.core("n0")
    ticks = count_per_tick(core)
    aae = core.aae
    assert c.run_until(lambda: aae.stats.index_verifications >= 1, 60_000)
    assert aae.stats.index_verifications < ONE.ring_size, "the verification ran in one go"
    answer = c.request("n0", ClientGet(b"b", written[-1], r=1))
    assert isinstance(answer, Ok)
    assert aae.stats.index_verifications < ONE.ring_size

    def finished() -> bool:
        return aae.stats.index_verifications >= ONE.ring_size and all(t.ready for t in aae.trees.values())

    assert c.run_until(finished, 120_000)
    c.settle(500)
    assert max(t["decoded"] for t in ticks) <= BATCH
    # A tick may run a slice of a build and one of a verification: each reads at most the bound.
    assert max(t["index_rows"] for t in ticks) <= 2 * BATCH
    assert aae.stats.index_fixes == 10
    assert dict(core._scan_all("aae", b"", None)) == expected_index(core)
    for partition in range(ONE.ring_size):
        assert aae.trees[(partition, 1)].root() == one_step_root(core, partition)


def drive(
    core: NodeCore,
    rng: random.Random,
    keyspace: list[bytes],
    now_ms: int,
    busy: Callable[[], bool],
    keep_ready: bool = False,
) -> int:
    """Tick anti-entropy until `busy` is false, with random puts and deletes between the ticks; return
    how many writes landed while a build or a verification was half done. With `keep_ready`, every
    tree must stay ready (in use for exchanges) throughout."""
    counter = 10_000
    interleaved = 0
    for _ in range(5_000):
        if not busy():
            return interleaved
        core.aae.on_tick(now_ms)
        assert not keep_ready or all(t.ready for t in core.aae.trees.values())
        for _ in range(rng.randrange(4)):
            key = rng.choice(keyspace)
            interleaved += core.aae._build is not None or core.aae._verify is not None
            if rng.random() < 0.3:
                core._delete_data(skey_of(core, key))
            else:
                counter += 1
                put(core, key, counter, now_ms)
    raise AssertionError("anti-entropy did not finish")


def test_slices_with_writes_between_them_end_with_the_index_equal_to_the_data_and_one_step_trees() -> None:
    """For many seeds: an index damaged behind the store's back, verified and rebuilt 1-7 keys a tick
    with puts and deletes between the ticks, ends equal to the data, and every tree's root equals that
    of a tree built from the index in one step."""
    for seed in range(12):
        verify_and_rebuild_in_slices(seed)


def verify_and_rebuild_in_slices(seed: int) -> None:
    """One seed of the test above: its key space, damage, bound and writes all drawn from the seed."""
    rng = random.Random(seed)
    c = SimCluster(1, ONE.replace(anti_entropy_verify_batch_keys_max=rng.randint(1, 7)), seed=seed)
    core = c.core("n0")
    controller = core.controller
    controller.rate_per_s = controller.rate_max_per_s = controller.rate_min_per_s = 1e9
    keyspace = [b"k%03d" % i for i in range(rng.randint(50, 250))]
    written = keyspace[: len(keyspace) * 2 // 3]
    for i, key in enumerate(written):
        put(core, key, i + 1, c.now_ms)
    c._flush("n0")
    aae = core.aae
    assert c.run_until(lambda: all(t.ready for t in aae.trees.values()) and len(aae.trees) == 16, 10_000)
    damage_index(c, core, rng, written)
    # A periodic verification (trees in use meanwhile), then builds of fresh trees from scratch.
    aae.verify_queue.extend(range(ONE.ring_size))
    during_verify = drive(core, rng, keyspace, c.now_ms, lambda: bool(aae.verify_queue or aae._verify), True)
    drive(core, rng, keyspace, c.now_ms, lambda: bool(aae.build_queue or aae._build), True)
    assert during_verify > 0, seed
    assert dict(core._scan_all("aae", b"", None)) == expected_index(core), seed
    for partition in range(ONE.ring_size):
        assert aae.trees[(partition, 1)].ready
        assert aae.trees[(partition, 1)].root() == one_step_root(core, partition), (seed, partition)
    for partition in range(ONE.ring_size):
        aae.trees[(partition, 1)].clear()
        aae.build_queue.append((partition, 1))
    assert drive(core, rng, keyspace, c.now_ms, lambda: bool(aae.build_queue or aae._build)) > 0, seed
    for partition in range(ONE.ring_size):
        assert aae.trees[(partition, 1)].root() == one_step_root(core, partition), (seed, partition)
