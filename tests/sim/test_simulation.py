"""The deterministic simulator: seeds pass, replay exactly, and its checkers catch broken behaviour."""

from __future__ import annotations

import msgpack
import pytest

from dynastore.core.messages import ClientGet, ClientPut, Ok
from dynastore.core.objects import Content
from dynastore.core.versions import Clock, Context, Dot, Versioned
from dynastore.settings import Settings
from dynastore.sim.__main__ import main as sim_main
from dynastore.sim.checkers import (
    FAIL,
    OK,
    UNKNOWN,
    CounterOp,
    ElementOp,
    IndexQuery,
    IndexWrite,
    RegisterWrite,
    SetOp,
    check_copies,
    check_datatypes,
    check_indexes,
    check_registers,
    check_sets,
)
from dynastore.sim.cluster import SimCluster
from dynastore.sim.run import Options, run_seed

SEEDS_PER_CHUNK = 10
CHUNKS = 20  # 200 seeds in all

# Seeds that once exposed a bug, kept so the bug can never come back unnoticed:
# 9 - the convergence check compared replica bytes, which include clock timestamps that replicas
#     holding the same versions need not share; it must compare versions (as anti-entropy does).
# 637 - a fallback delivered its hint, stood in again and wrote the key from a read that missed what
#     it had written: its new dot's clock entry claimed the delivered write, which every merge then
#     dropped (a register lost; issue 13).
# 806 - the same with a stalled node (a loaded machine): an acknowledged set element lost.
# 1403 - the same with no partition at all: the fallback stood in for a node that crashed twice.
# 323, 1486 - a deleted key came back: its tombstone was reaped once every primary held it, while a
#     fallback still held a hint of the value, delivered afterwards (issue 17).
REGRESSION_SEEDS = [9, 323, 637, 806, 1403, 1486]


@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_every_seed_passes_with_no_lost_or_unexpected_writes_and_converges(chunk: int) -> None:
    """Safety and liveness hold for 200 seeds of swarm-drawn faults (10 per test)."""
    failures = []
    for seed in range(chunk * SEEDS_PER_CHUNK, (chunk + 1) * SEEDS_PER_CHUNK):
        result = run_seed(seed)
        if not result.ok:
            failures.append(result.summary())
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("seed", REGRESSION_SEEDS)
def test_regression_seeds_pass(seed: int) -> None:
    """Seeds that found bugs before keep passing."""
    result = run_seed(seed)
    assert result.ok, result.summary()


def test_a_seed_replays_exactly() -> None:
    """Running the same seed twice gives the same trace, message for message."""
    first = run_seed(21, Options(safety_ms=4_000, trace=True))
    second = run_seed(21, Options(safety_ms=4_000, trace=True))
    assert first.trace == second.trace
    assert len(first.trace) > 100
    assert first.summary() == second.summary()


def test_last_write_wins_buckets_lose_acknowledged_writes_and_the_checker_says_so() -> None:
    """With last-write-wins, concurrent read-modify-writes overwrite each other: the set checker reports
    acknowledged elements lost (what Jepsen found in Riak); everything else still holds."""
    lost = 0
    for seed in range(6):
        result = run_seed(seed, Options(lww=True, safety_ms=8_000))
        assert result.sets is not None and not result.sets.unexpected, result.summary()
        assert not result.problems and result.registers is not None and result.registers.ok, result.summary()
        lost += len(result.sets.lost)
    assert lost > 0


def test_a_build_without_hint_delivery_is_caught() -> None:
    """With hinted handoff switched off (a test-only setting), some seed ends with hints that never
    drain, and the liveness phase reports it."""
    caught = []
    for seed in range(8):
        result = run_seed(
            seed,
            Options(safety_ms=8_000, liveness_bound_ms=10_000, settings={"hinted_handoff_enabled": "false"}),
        )
        if not result.ok:
            caught.append(result)
    assert caught
    assert any("hints" in problem for result in caught for problem in result.problems)


def test_a_build_without_read_repair_or_anti_entropy_is_caught() -> None:
    """With read repair and anti-entropy off, replicas that missed writes stay behind: caught."""
    settings = {"read_repair_enabled": "false", "anti_entropy_enabled": "false"}
    caught = [
        seed
        for seed in range(12)
        if not run_seed(seed, Options(safety_ms=8_000, liveness_bound_ms=10_000, settings=settings)).ok
    ]
    assert caught


def test_the_set_checker_finds_lost_and_unexpected_elements() -> None:
    """Acknowledged-but-absent is lost; present-but-never-attempted is unexpected; unknown is neither."""
    ops = [SetOp("s", 1, OK), SetOp("s", 2, OK), SetOp("s", 3, UNKNOWN)]
    verdict = check_sets(ops, {"s": {1, 3, 99}})
    assert verdict.lost == [2] and verdict.unexpected == [99] and verdict.recovered_unknown == 1
    assert not verdict.ok
    assert check_sets(ops, {"s": {1, 2}}).ok


def test_the_register_checker_accepts_only_overwrites_by_writers_that_saw_the_value() -> None:
    """A value may vanish only if another attempted write's context covered its dot."""
    a = RegisterWrite("k", b"a", Context(), OK, Dot(b"n#1", 1))
    b = RegisterWrite("k", b"b", Context(((b"n#1", 1),)), OK, Dot(b"n#1", 2))
    assert check_registers([a, b], {"k": [(Dot(b"n#1", 2), b"b")]}).ok
    blind = RegisterWrite("k", b"b", Context(), OK, Dot(b"n#1", 2))
    assert check_registers([a, blind], {"k": [(Dot(b"n#1", 2), b"b")]}).lost == ["k=b'a'"]


def test_the_register_checker_for_buckets_keeping_one_value_wants_exactly_one_attempted_value() -> None:
    """With one value per key, an acknowledged write may lose to a concurrent one, but a register must
    end with exactly one value, one that was attempted."""
    a = RegisterWrite("k", b"a", Context(), OK, Dot(b"n#1", 1))
    blind = RegisterWrite("k", b"b", Context(), OK, Dot(b"n#1", 2))
    assert check_registers([a, blind], {"k": [(Dot(b"n#1", 2), b"b")]}, one_value=True).ok
    assert check_registers([a, blind], {"k": []}, one_value=True).lost == ["k: every value"]
    both = {"k": [(Dot(b"n#1", 1), b"a"), (Dot(b"n#1", 2), b"b")]}
    assert check_registers([a, blind], both, one_value=True).unexpected == ["k holds 2 values"]
    assert check_registers([a], {"k": [(Dot(b"n#1", 3), b"z")]}, one_value=True).unexpected == ["k=b'z'"]


def test_the_register_checker_calls_a_deleted_value_that_comes_back_unexpected() -> None:
    """A value an acknowledged delete's context covered must not be among the final siblings (it was
    resurrected); an unknown delete may not have been applied, and a deleted value is not lost."""
    written = RegisterWrite("d", b"v", Context(), OK, Dot(b"n#1", 1))
    deleted = RegisterWrite("d", b"", Context(((b"n#1", 1),)), OK, Dot(b"n#1", 2), delete=True)
    back = {"d": [(Dot(b"n#1", 1), b"v")]}
    verdict = check_registers([written, deleted], back)
    assert verdict.unexpected == ["d=b'v' (deleted, then back)"] and not verdict.ok
    assert check_registers([written, deleted], {"d": []}).ok
    maybe = RegisterWrite("d", b"", Context(((b"n#1", 1),)), UNKNOWN, None, delete=True)
    assert check_registers([written, maybe], back).ok
    assert check_registers([written, maybe], {"d": []}).ok


def test_the_index_checker_wants_every_acknowledged_key_once_in_a_final_answer_and_nothing_never_written() -> None:
    """During faults an answer may miss keys but never repeat one or hold one no write gave a term in
    range; a final answer must also hold every acknowledged key in its range and must have succeeded."""
    writes = [
        IndexWrite("a", (("id_int", 1), ("grp_bin", "g")), OK),
        IndexWrite("b", (("id_int", 2), ("grp_bin", "g")), OK),
        IndexWrite("c", (("id_int", 10), ("grp_bin", "g")), UNKNOWN),
    ]
    assert check_indexes(writes, [IndexQuery("id_int", 1, 2, ["a"], OK)]).ok
    assert check_indexes(writes, [IndexQuery("id_int", 1, 10, ["a", "b"], OK, final=True)]).ok
    verdict = check_indexes(writes, [IndexQuery("id_int", 1, 10, ["a", "c"], OK, final=True)])
    assert verdict.lost == ["b not in id_int [1, 10]"] and not verdict.ok
    twice = check_indexes(writes, [IndexQuery("grp_bin", "g", "g", ["a", "b", "a"], FAIL)])
    assert twice.duplicated == ["a twice in grp_bin ['g', 'g']"]
    # c's term is out of this range, and z was never written: neither may appear in an answer.
    stray = check_indexes(writes, [IndexQuery("id_int", 1, 5, ["c", "z"], FAIL)])
    assert len(stray.unexpected) == 2 and not stray.ok
    # Integers compare as numbers, not as text ("10" < "2").
    assert check_indexes(writes, [IndexQuery("id_int", 2, 10, ["b", "c"], OK, final=True)]).ok
    failed = check_indexes(writes, [IndexQuery("grp_bin", "g", "g", ["a"], FAIL, final=True)])
    assert failed.failed_final == ["grp_bin ['g', 'g']"] and not failed.ok


def test_the_index_checker_wants_a_deleted_object_in_no_final_answer_and_an_unknown_delete_either_way() -> None:
    """After an acknowledged delete a final answer holding the key is wrong (a tombstone indexes
    nothing), though an answer during faults may still show it; after an unknown one, either is fine."""
    gone = IndexWrite("a", (("grp_bin", "g"),), OK, deleted=OK)
    maybe = IndexWrite("b", (("grp_bin", "g"),), OK, deleted=UNKNOWN)
    kept = IndexWrite("c", (("grp_bin", "g"),), OK, deleted=FAIL)
    writes = [gone, maybe, kept]
    assert check_indexes(writes, [IndexQuery("grp_bin", "g", "g", ["c"], OK, final=True)]).ok
    assert check_indexes(writes, [IndexQuery("grp_bin", "g", "g", ["b", "c"], OK, final=True)]).ok
    assert check_indexes(writes, [IndexQuery("grp_bin", "g", "g", ["a", "b", "c"], OK)]).ok
    back = check_indexes(writes, [IndexQuery("grp_bin", "g", "g", ["a", "c"], OK, final=True)])
    assert back.unexpected == ["a in grp_bin ['g', 'g'] after its delete was acknowledged"] and not back.ok
    assert check_indexes(writes, [IndexQuery("grp_bin", "g", "g", ["b"], OK, final=True)]).lost == [
        "c not in grp_bin ['g', 'g']"
    ]


def test_the_copies_checker_lets_a_reaped_delete_leave_no_copy() -> None:
    """Once a delete covered a write, its tombstone may be reaped: no node need hold the write."""
    written = RegisterWrite("d", b"v", Context(), OK, Dot(b"n#1", 1))
    deleted = RegisterWrite("d", b"", Context(((b"n#1", 1),)), OK, Dot(b"n#1", 2), delete=True)
    assert check_copies([], [written, deleted], {"x": {"d": []}, "y": {"d": []}}, 2, msgpack.unpackb) == []
    assert check_copies([], [written], {"x": {"d": []}, "y": {"d": []}}, 2, msgpack.unpackb) == [
        "the write of b'v' to d is held by 0 nodes (w=2)"
    ]


def test_the_command_line_replays_a_seed_and_sweeps(capsys: pytest.CaptureFixture[str]) -> None:
    """`python -m dynastore.sim --seed S` prints a trace and a summary; `--seeds A..B` sweeps."""
    assert sim_main(["--seed", "3", "--safety-ms", "2000"]) == 0
    out = capsys.readouterr().out
    assert "seed 3: ok" in out and "ReplicaPut" in out
    assert sim_main(["--seeds", "0..1", "--safety-ms", "2000"]) == 0
    assert "2/2 seeds passed" in capsys.readouterr().out


def test_a_node_with_anti_entropy_switched_off_does_not_spin_its_timer() -> None:
    """Regression: with anti-entropy off, its pending tree builds reported a deadline of 'now' forever,
    spinning the event loop. The simulator now fails fast on a timer that never moves on."""
    result = run_seed(2, Options(safety_ms=3_000, settings={"anti_entropy_enabled": "false"}))
    assert result.converged_ms is not None or result.problems


def test_the_copies_checker_finds_a_clock_that_claims_a_write_its_copy_lost_and_a_write_held_too_thinly() -> None:
    """A copy whose clock covers an acknowledged write must still hold what it wrote, and W nodes must
    cover it; a copy that descends from it legitimately passes."""
    a, b = Dot(b"n1#1.1", 1), Dot(b"n1#1.1", 2)
    write = SetOp("s", 7, OK, a, frozenset({7}))

    def copy(dot: Dot, elements: list[int], clock: dict[bytes, int]) -> Versioned[Content]:
        entries = tuple((actor, counter, 0) for actor, counter in sorted(clock.items()))
        return Versioned(Clock(entries), ((dot, Content(msgpack.packb(elements))),))

    good = copy(b, [7, 8], {b"n1#1.1": 2})
    claims = copy(b, [8], {b"n1#1.1": 2})
    assert check_copies([write], [], {"x": {"s": [good]}, "y": {"s": [good]}}, 2, msgpack.unpackb) == []
    problems = check_copies([write], [], {"x": {"s": [good]}, "y": {"s": [claims]}}, 2, msgpack.unpackb)
    assert problems == ["y's copy of s covers the write of element 7 but lacks 1 of the elements it stored (e.g. 7)"]
    problems = check_copies([write], [], {"x": {"s": [good]}, "y": {"s": []}}, 2, msgpack.unpackb)
    assert problems == ["the write of element 7 to s is held by 1 nodes (w=2)"]
    reg = RegisterWrite("r", b"v", Context(), OK, a)
    lost = copy(b, [], {b"n1#1.1": 2})
    assert check_copies([], [reg], {"x": {"r": [lost]}}, 1, msgpack.unpackb) == [
        "x's copy of r covers b'v' but no longer holds it"
    ]
    seen = RegisterWrite("r", b"w", Context(((b"n1#1.1", 1),)), OK, b)
    assert check_copies([], [reg, seen], {"x": {"r": [lost]}}, 1, msgpack.unpackb) == []


def test_a_stalled_node_handles_nothing_until_it_resumes_then_its_backlog_in_order_and_its_timers_late() -> None:
    """While stalled a node answers nobody and its timers stand still; its peers time out on it. Resumed,
    it takes the requests and messages that waited, in the order they came."""
    fast = {"heartbeat_interval_ms": 300, "phi_acceptable_pause_ms": 600, "phi_min_std_dev_ms": 100}
    c = SimCluster(3, Settings(ring_size=16, request_timeout_ms=500).with_mapping(fast))
    core = c.core("n1")
    ticks_before = core.stats.gossip_rounds
    c.stall("n1")
    c.settle(3000)
    # Queued behind the heartbeats that came meanwhile (which tell it its peers are up).
    first = c.submit("n1", ClientPut(b"b", b"k", None, Content(b"one")))
    second = c.submit("n1", ClientGet(b"b", b"k"))
    c.settle(1000)
    assert first not in c.replies and second not in c.replies
    assert core.stats.gossip_rounds == ticks_before, "no timer fired while stalled"
    assert "n1" in c.core("n0").stats_snapshot(c.now_ms)["down_nodes"]
    c.resume("n1")
    c.settle(2000)
    assert core.stats.gossip_rounds > ticks_before
    assert isinstance(c.replies[first], Ok)
    read = c.replies[second]
    assert isinstance(read, Ok) and read.found is not None
    assert [content.value for _, content in read.found.values] == [b"one"], "the write was handled first"


def test_the_data_type_checker_bounds_counters_and_judges_adds_and_removes() -> None:
    ops = [CounterOp("k", 3, OK), CounterOp("k", 2, UNKNOWN), CounterOp("k", 7, FAIL)]
    assert check_datatypes(ops, [], {"k": 3}, {}).ok
    assert check_datatypes(ops, [], {"k": 5}, {}).ok
    assert check_datatypes(ops, [], {"k": 2}, {}).lost
    assert check_datatypes(ops, [], {"k": 6}, {}).unexpected
    elements = [
        ElementOp("t", "e1", outcome=OK),
        ElementOp("t", "e2", outcome=OK),
        ElementOp("t", "e2", remove=True, outcome=OK),
        ElementOp("t", "e3", outcome=UNKNOWN),
        ElementOp("t", "e4", outcome=OK),
        ElementOp("t", "e4", remove=True, outcome=UNKNOWN),
    ]
    assert check_datatypes([], elements, {}, {"t": {"e1", "e3"}}).ok
    assert check_datatypes([], elements, {}, {"t": {"e1", "e4"}}).ok
    assert check_datatypes([], elements, {}, {"t": set()}).lost == ["set t: e1"]
    assert check_datatypes([], elements, {}, {"t": {"e1", "e2"}}).unexpected == ["set t: e2 (removed, then back)"]
    assert check_datatypes([], elements, {}, {"t": {"e1", "e9"}}).unexpected == ["set t: e9 (never added)"]


def test_a_coordinator_that_ignores_what_it_holds_of_a_data_type_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """If a coordinator applied operations to a fresh state instead of the join of its copies, counters
    would lose increments and sets elements; the data-type checker finds it in the first seeds."""
    from dynastore.core import datatypes

    fresh = datatypes.next_content
    monkeypatch.setattr(datatypes, "next_content", lambda local, dt, dot, now_us, s: fresh(None, dt, dot, now_us, s))
    caught = [seed for seed in range(4) if not (result := run_seed(seed, Options(safety_ms=6_000))).ok]
    assert caught, "the broken coordinator went unnoticed"
    del result
