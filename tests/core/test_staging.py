"""The durability pipeline: staged writes read back through the overlay, numbered batches, and effects
that never leave before the batch they wait for."""

from __future__ import annotations

import random

import pytest

from dynastore.core.messages import ClientPut, Ok
from dynastore.core.node import ClientLeave, NodeCore, Reply
from dynastore.core.objects import Content
from dynastore.core.staging import Outbox, StagedStore
from dynastore.settings import Settings
from dynastore.sim.cluster import SimCluster
from dynastore.sim.disk import SimDisk
from dynastore.sim.run import SIM_SETTINGS
from dynastore.storage.base import Op, truncated
from dynastore.storage.memory import MemoryEngine


def test_a_staged_value_is_read_back_and_reads_note_the_batch_that_holds_it() -> None:
    """Pending values go in batch taken+1, committing ones are batch taken, written ones are on disk."""
    store = StagedStore(MemoryEngine())
    store.put("data", b"a", b"1")
    outer = store.begin_read()
    assert store.get("data", b"a") == b"1"
    assert store.end_read(outer) == 1 and store.durable_after("data", b"a") == 1
    number, ops = store.take()
    assert number == 1 and [(op.key, op.value) for op in ops] == [(b"a", b"1")]
    store.put("data", b"b", b"2")
    outer = store.begin_read()
    assert store.get("data", b"a") == b"1", "the batch being written is still read through the overlay"
    assert store.end_read(outer) == 1
    assert store.durable_after("data", b"b") == 2
    store.engine.write(ops)
    store.mark_written(1)
    outer = store.begin_read()
    assert store.get("data", b"a") == b"1"
    assert store.end_read(outer) == 0, "what is on disk depends on nothing"
    assert store.scan("data", b"", None, 10) == [(b"a", b"1"), (b"b", b"2")]


def test_the_store_refuses_a_second_batch_while_one_is_written_and_a_batch_reported_written_twice() -> None:
    """Batches written never exceed batches taken, and only the batch being written can be reported."""
    store = StagedStore(MemoryEngine())
    store.put("data", b"a", b"1")
    store.take()
    with pytest.raises(AssertionError):
        store.take()
    with pytest.raises(AssertionError):
        store.mark_written(2)
    store.mark_written(1)
    with pytest.raises(AssertionError):
        store.mark_written(1)


def test_an_effect_leaves_with_its_batch_a_held_one_with_the_batch_it_names_and_a_free_one_at_once() -> None:
    """The outbox never releases an effect before the batch it waits for is written."""
    box: Outbox[str] = Outbox()
    box.queue("next", None)
    box.queue("free", 0)
    box.queue("second", 2)
    assert box.take_free() == ["free"]
    box.seal(1)
    box.queue("after the first", None)
    assert box.written(1) == ["next"]
    assert box.take_free() == [], "held for batch 2, which is not written"
    box.seal(2)
    assert box.written(2) == ["after the first"]
    assert box.take_free() == ["second"]
    with pytest.raises(AssertionError):
        box.written(2)


def node(durable: bool = True, **overrides: object) -> NodeCore:
    settings = Settings(ring_size=16, n_val=1, r=1, w=1, durable=durable).with_mapping(overrides)
    return NodeCore("n0", settings, SimDisk(durable), random.Random(1), 1_000_000)


def drive(core: NodeCore) -> list[object]:
    """The shell's few lines: free effects, the batch written at once, what that releases."""
    effects: list[object] = list(core.take_free())
    batch = core.take_batch()
    if batch.ops:
        core.engine.write(batch.ops)
    if batch.sync:
        core.engine.sync()
    return effects + list(core.batch_written())


def test_a_write_is_answered_only_by_the_batch_written_call_of_the_batch_holding_it() -> None:
    """The answer to a write comes back from batch_written, never from take_free before it."""
    core = node()
    drive(core)
    core.on_request(7, ClientPut(b"b", b"k", None, Content(b"v")), 1_000_001)
    assert core.take_free() == []
    batch = core.take_batch()
    assert batch.number == 2 and batch.ops
    core.engine.write(batch.ops)
    replies = [e for e in core.batch_written() if isinstance(e, Reply)]
    assert [r.request_id for r in replies] == [7] and isinstance(replies[0].response, Ok)


def test_in_buffered_mode_a_batch_says_when_to_sync_and_the_core_never_syncs_its_engine_itself() -> None:
    """The periodic sync of buffered mode is the shell's to perform, asked for by a batch."""
    core = node(durable=False, buffered_sync_interval_ms=500)
    engine = core.engine
    assert isinstance(engine, SimDisk)
    drive(core)
    syncs = engine.syncs
    core.on_tick(1_000_100)
    assert not core.take_batch().sync
    core.batch_written()
    core.on_tick(1_000_600)
    assert engine.syncs == syncs, "on_tick did not sync the engine"
    assert core.has_pending
    batch = core.take_batch()
    assert batch.sync and not batch.ops
    core.batch_written()
    assert not core.take_batch().sync, "one sync per interval"


def test_a_node_that_left_asks_its_shell_to_stop_with_an_effect() -> None:
    """Stop is an effect like any other: the shell does not poll the core for it."""
    c = SimCluster(3, Settings().with_mapping(SIM_SETTINGS))
    assert isinstance(c.request("n2", ClientLeave()), Ok)
    assert c.run_until(lambda: c.nodes["n2"].stop_reason is not None, 120_000)
    assert "left the cluster" in (c.nodes["n2"].stop_reason or "")
    assert all(c.nodes[n].stop_reason is None for n in ("n0", "n1"))


@pytest.mark.parametrize("seed", range(40))
def test_a_scan_through_the_overlay_agrees_with_the_engine_it_will_become_bounded_by_count_and_bytes(
    seed: int,
) -> None:
    """Staged puts and deletes (pending and committing) over an engine, then scans with random bounds:
    each returns exactly what the same scan returns once everything is written; and one walk with a
    byte bound, page after page until a page is not cut short, sees every key once."""
    rng = random.Random(seed)
    names = [bytes([rng.randrange(6)]) * rng.randrange(1, 4) for _ in range(30)]

    def value() -> bytes:
        return b"v" * rng.randrange(0, 12)

    store = StagedStore(MemoryEngine())
    store.engine.write([Op("data", key, value()) for key in names[:15]])
    for key in rng.sample(names, 10):
        store.put("data", key, None if rng.random() < 0.4 else value())
    number, ops = store.take()
    for key in rng.sample(names, 10):
        store.put("data", key, None if rng.random() < 0.4 else value())
    final = MemoryEngine()
    final.write([Op("data", k, v) for k, v in store.engine.scan("data", b"", None, 1000)])
    final.write(list(ops))
    final.write([Op("data", k, v) for (area, k), v in store._pending.items()])
    for _ in range(30):
        start = bytes([rng.randrange(6)]) * rng.randrange(0, 3)
        end = None if rng.random() < 0.5 else bytes([rng.randrange(6)]) * rng.randrange(1, 4)
        limit, bytes_max = rng.randrange(0, 8), rng.choice([None, rng.randrange(1, 40)])
        assert store.scan("data", start, end, limit, bytes_max) == final.scan("data", start, end, limit, bytes_max)
    seen: list[bytes] = []
    cursor = b""
    while True:
        rows = store.scan("data", cursor, None, 4, 15)
        seen += [key for key, _ in rows]
        if not truncated(rows, 4, 15):
            break
        cursor = rows[-1][0] + b"\x00"
    assert seen == [key for key, _ in final.scan("data", b"", None, 1000)]
    assert number == 1
