"""`cluster repair` in a simulated cluster: an exchange asked for runs at once (scheduled rounds an
hour away) with every other primary of the partition and repairs exactly its keys; one abandoned
(a timeout, a busy responder) goes back in the queue instead of being lost, up to a limit; bad
requests are refused and queue nothing."""

from __future__ import annotations

import pytest

from dynastore.core import antientropy, keys
from dynastore.core.antientropy import RepairError
from dynastore.core.messages import Failure, Ok
from dynastore.core.node import ClientRepair
from dynastore.core.objects import Content
from dynastore.core.ops import ExchangeOp
from dynastore.core.versions import Context, Dot, update
from dynastore.settings import Settings
from dynastore.sim.cluster import SimCluster

HOURLY = Settings(
    ring_size=16,
    anti_entropy_interval_ms=3_600_000,
    hinted_handoff_enabled=False,
    read_repair_enabled=False,
)


def loaded(count: int) -> tuple[SimCluster, list[bytes]]:
    """Three nodes holding `count` keys each, then n2 loses all of them."""
    c = SimCluster(3, HOURLY)
    written = [b"k%05d" % i for i in range(count)]
    for name in ("n0", "n1", "n2"):
        core = c.core(name)
        for i, key in enumerate(written):
            obj = update(None, Context(), Dot(b"writer#1", i + 1), Content(b"v" + key, last_modified_us=1), 1)
            core._merge_into_data(b"b", key, obj, False, c.now_ms)
        c._flush(name)
    core = c.core("n2")
    for key in written:
        core._delete_data(keys.encode(core.ring.partition_of(b"b", key), b"b", key))
    c._flush("n2")
    c.settle(500)
    return c, written


def held(c: SimCluster, key: bytes) -> bool:
    core = c.core("n2")
    return core.engine.get("data", keys.encode(core.ring.partition_of(b"b", key), b"b", key)) is not None


def partition_of(c: SimCluster, key: bytes) -> int:
    return c.core("n2").ring.partition_of(b"b", key)


def test_a_repair_of_one_partition_exchanges_with_each_other_primary_and_repairs_only_its_keys() -> None:
    c, written = loaded(200)
    target = partition_of(c, written[0])
    mine = [k for k in written if partition_of(c, k) == target]
    assert isinstance(c.request("n2", ClientRepair(target)), Ok)
    assert c.run_until(lambda: all(held(c, k) for k in mine), 10_000)
    c.settle(1_000)
    assert not any(held(c, k) for k in written if partition_of(c, k) != target)
    last = c.core("n2").aae.stats.last_exchange[target]
    assert last.peer in ("n0", "n1")
    assert c.core("n2").aae.stats.exchanges == 2, "one exchange with each of the two other primaries"
    assert c.core("n2").aae.stats.repaired_by_partition[target] == len(mine)
    assert isinstance(c.request("n2", ClientRepair(None)), Ok)
    assert c.run_until(lambda: all(held(c, k) for k in written), 20_000)


def test_a_requested_exchange_that_is_abandoned_goes_back_in_the_queue_until_its_limit() -> None:
    c, written = loaded(50)
    target = partition_of(c, written[0])
    core = c.core("n2")
    assert isinstance(c.request("n2", ClientRepair(target)), Ok)

    def running() -> tuple[int, ExchangeOp] | None:
        return next(((i, op) for i, op in core._ops.items() if isinstance(op, ExchangeOp)), None)

    # The first try is lost as a timeout would lose it: it is queued again, as its second try.
    assert c.run_until(lambda: running() is not None, 5_000)
    op_id, op = running()  # type: ignore[misc]
    core.aae.abandon(op_id)
    assert core.aae.requested[(op.partition, op.n_val, op.peer)] == 1
    assert c.run_until(lambda: all(held(c, k) for k in written if partition_of(c, k) == target), 10_000)
    assert core.aae.stats.repairs_given_up == 0
    # At its last try an abandoned exchange is given up, and counted.
    op.attempt = antientropy.REPAIR_ATTEMPTS_MAX
    core._ops[op_id] = op
    core.aae.abandon(op_id)
    assert core.aae.stats.repairs_given_up == 1 and target in core.aae.stats.repair_given_up_ms


def test_a_repair_of_a_partition_out_of_range_or_with_anti_entropy_off_is_refused_and_queues_nothing() -> None:
    c, _ = loaded(10)
    answer = c.request("n2", ClientRepair(16))
    assert isinstance(answer, Failure) and "from 0 to 15" in answer.reason
    assert c.core("n2").aae.requested == {}
    with pytest.raises(RepairError):
        c.core("n2").aae.request_repair(-1)
    off = SimCluster(1, HOURLY.replace(anti_entropy_enabled=False))
    answer = off.request("n0", ClientRepair(None))
    assert isinstance(answer, Failure) and "anti-entropy is off" in answer.reason
    alone = SimCluster(1, HOURLY.replace(n_val=1, r=1, w=1))
    answer = alone.request("n0", ClientRepair(3))
    assert isinstance(answer, Failure) and "no replica of partition 3 with another primary" in answer.reason


def test_requested_exchanges_waiting_for_their_tree_are_looked_at_every_100_ms_not_every_tick() -> None:
    """Finding an exchange's candidates walks the whole ring: while none can start (its tree is being
    built), the queue is looked at again after REQUEST_WAIT_MS, so the timer does not spin."""
    c, written = loaded(50)
    target = partition_of(c, written[0])
    aae = c.core("n2").aae
    for (partition, _), tree in aae.trees.items():
        if partition == target:
            tree.ready = False
    walks = 0
    candidates = aae._candidates

    def counted() -> list[tuple[int, int, list[str]]]:
        nonlocal walks
        walks += 1
        return candidates()

    aae._candidates = counted  # type: ignore[method-assign]
    assert isinstance(c.request("n2", ClientRepair(target)), Ok)
    c.settle(1_000)
    assert aae.requested, "the exchanges still wait for their tree"
    assert walks <= 1_000 // antientropy.REQUEST_WAIT_MS + 2, walks
