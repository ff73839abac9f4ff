"""Speculative retry of reads in a simulated cluster (core/speculative.py): with `speculative_retry` set,
a read asks the R replicas it needs first, the others only after the delay or at once when an answer
is missing, and answers exactly what `none` answers; bad values are refused and change nothing."""

from __future__ import annotations

import re

import pytest

from dynastore.core.messages import (
    ClientBucketType,
    ClientGet,
    ClientPut,
    ClientSetBucketProps,
    Failure,
    NotFound,
    Ok,
)
from dynastore.core.objects import Content
from dynastore.settings import Settings
from dynastore.sim.cluster import SimCluster
from dynastore.sim.run import Options, Simulation

B = b"spec"
DELAY_MS = 20
# Anti-entropy off: what a replica holds is what reads and writes left there.
QUIET = Settings(ring_size=16, anti_entropy_enabled=False)


def set_props(c: SimCluster, node: str, bucket: bytes, **props: object) -> Ok | Failure:
    response = c.request(node, ClientSetBucketProps(bucket, tuple(sorted(props.items()))))
    assert isinstance(response, Ok | Failure), response
    c.settle(100)
    return response


def order(c: SimCluster, coordinator: str, key: bytes) -> list[str]:
    """The key's targets in the order a speculative read at `coordinator` asks them (itself first)."""
    core = c.core(coordinator)
    _, plist = core.preference_list(B, key)
    nodes = [t.node for t in plist.targets(core.healthy(c.now_ms))]
    return sorted(nodes, key=lambda n: n != coordinator)


def cluster(policy: str = f"{DELAY_MS}ms", settings: Settings | None = None) -> SimCluster:
    c = SimCluster(3, settings or QUIET)
    assert isinstance(set_props(c, "n0", B, speculative_retry=policy), Ok)
    assert isinstance(c.request("n0", ClientPut(B, b"k", None, Content(b"v"), w=3)), Ok)
    c.settle(200)
    return c


def replica_gets(c: SimCluster, since: int) -> list[tuple[int, str]]:
    """(time, destination) of every ReplicaGet sent since trace line `since`."""
    found = []
    for line in c.trace[since:]:
        if (m := re.fullmatch(r"(\d+) n0->(\w+) ReplicaGet", line)) is not None:
            found.append((int(m.group(1)), m.group(2)))
    return found


def sent_at(c: SimCluster, node: str, since: int) -> int:
    """When n0's ReplicaGet to `node` was sent: its delivery time less the network delay (1 to 3 ms)."""
    times = [t for t, dst in replica_gets(c, since) if dst == node]
    assert len(times) == 1, (node, times)
    return times[0]


def read_value(c: SimCluster, node: str, key: bytes = b"k") -> list[bytes]:
    response = c.request(node, ClientGet(B, key))
    assert isinstance(response, Ok) and response.found is not None, response
    return sorted(content.value for _, content in response.found.values)


def spec_stats(c: SimCluster, node: str = "n0") -> dict[str, object]:
    stats = c.stats(node)
    return {
        "reads": stats["speculative_reads_total"],
        "sends": stats["speculative_sends_by_reason"],
        "unasked": stats["speculative_replicas_unasked_total"],
    }


def sends(timer: int = 0, notfound: int = 0, failure: int = 0) -> dict[str, int]:
    return {"timer": timer, "notfound": notfound, "failure": failure}


def test_the_third_replica_is_not_asked_when_the_first_two_answer_in_time() -> None:
    """R=2 of N=3: the coordinator reads its own copy and asks one replica; both answer within the
    delay, so the read is done and the third replica never hears of it."""
    c = cluster()
    first, second, _ = order(c, "n0", b"k")
    assert first == "n0"
    c.tracing = True
    assert read_value(c, "n0") == [b"v"]
    c.settle(3 * DELAY_MS)
    assert [dst for _, dst in replica_gets(c, 0)] == [second]
    assert spec_stats(c) == {"reads": 1, "sends": sends(), "unasked": 1}
    assert c.stats("n0")["requests_in_flight"] == 0


def test_with_none_every_replica_is_asked_at_once() -> None:
    """The default: the read asks both other replicas straight away and counts nothing speculative."""
    c = cluster("none")
    c.tracing = True
    assert read_value(c, "n0") == [b"v"]
    c.settle(100)
    asked = replica_gets(c, 0)
    assert sorted(dst for _, dst in asked) == sorted(order(c, "n0", b"k")[1:])
    assert len({t for t, _ in asked}) <= 2 and max(t for t, _ in asked) - min(t for t, _ in asked) <= 2
    assert spec_stats(c) == {"reads": 0, "sends": sends(), "unasked": 0}


@pytest.mark.parametrize("fault", ["stalled", "partitioned"])
def test_a_slow_or_partitioned_replica_makes_the_read_ask_the_third_after_the_delay(fault: str) -> None:
    """The replica asked first does not answer (stalled, or its link cut): the third is asked once the
    delay has passed, not before, and the read answers with its copy."""
    c = cluster()
    _, second, third = order(c, "n0", b"k")
    if fault == "stalled":
        c.stall(second)
    else:
        c.partition({"n0", third}, {second})
    c.tracing = True
    started = c.now_ms
    assert read_value(c, "n0") == [b"v"]
    answered_ms = c.now_ms - started
    # A ReplicaGet is traced when delivered, 1 to 3 ms after it was sent.
    delivered = sent_at(c, third, 0) - started
    assert DELAY_MS + 1 <= delivered <= DELAY_MS + 3, delivered
    assert DELAY_MS < answered_ms <= DELAY_MS + 8, answered_ms
    assert spec_stats(c) == {"reads": 1, "sends": sends(timer=1), "unasked": 0}
    c.heal()
    c.resume(second)


def test_a_replica_found_down_makes_the_read_ask_the_others_at_once() -> None:
    """The replica asked first crashed a moment ago (not yet judged down): the connection is refused,
    and the third is asked at that instant, without waiting for the delay."""
    c = cluster()
    _, second, third = order(c, "n0", b"k")
    c.crash(second)
    c.tracing = True
    started = c.now_ms
    assert read_value(c, "n0") == [b"v"]
    assert c.now_ms - started < DELAY_MS
    assert sent_at(c, third, 0) - started <= 3
    assert spec_stats(c) == {"reads": 1, "sends": sends(failure=1), "unasked": 0}


def test_a_link_that_breaks_mid_read_makes_it_ask_the_others_at_once() -> None:
    """The asked replica's link is cut and then reported broken before the delay: the third is asked
    when the break is reported."""
    c = cluster()
    _, second, third = order(c, "n0", b"k")
    c.partition({"n0", third}, {second})
    c.tracing = True
    started = c.now_ms
    rid = c.submit("n0", ClientGet(B, b"k"))
    c.run_until(lambda: False, 5)
    assert rid not in c.replies
    c.link_failed("n0", second)
    c.run_until(lambda: rid in c.replies, 100)
    assert isinstance(c.replies.pop(rid), Ok)
    assert sent_at(c, third, 0) - started <= 5 + 3
    assert spec_stats(c) == {"reads": 1, "sends": sends(failure=1), "unasked": 0}
    c.heal()


def test_a_not_found_makes_the_read_ask_every_replica_at_once() -> None:
    """A key no replica holds: this node's own copy is missing, so the others are asked at once (only
    all of them can say not-found) and the answer is a not-found. A key this node missed but the
    others hold is read from them, at once, and this node is repaired."""
    c = cluster()
    c.tracing = True
    started = c.now_ms
    response = c.request("n0", ClientGet(B, b"absent"))
    assert isinstance(response, NotFound), response
    assert c.now_ms - started < DELAY_MS
    assert spec_stats(c)["sends"] == sends(notfound=1)

    second = order(c, "n0", b"missed")[1]
    c.faults.cut.add((second, "n0"))
    assert isinstance(c.request(second, ClientPut(B, b"missed", None, Content(b"m"))), Ok)
    c.settle(50)
    c.heal()
    assert c.core("n0").local_copy(B, b"missed") is None
    started = c.now_ms
    assert read_value(c, "n0", b"missed") == [b"m"]
    assert c.now_ms - started < DELAY_MS
    assert spec_stats(c)["sends"] == sends(notfound=2)
    c.settle(100)
    assert c.core("n0").local_copy(B, b"missed") is not None, "read repair did not reach the coordinator"


def test_a_replica_not_asked_is_not_read_repaired_while_one_that_none_asks_is() -> None:
    """The third replica missed a write. A speculative read that did not need it leaves it stale (that
    is anti-entropy's work); the same read with none asks it and repairs it."""
    c = cluster()
    third = order(c, "n0", b"stale")[2]
    c.faults.cut.add(("n0", third))
    assert isinstance(c.request("n0", ClientPut(B, b"stale", None, Content(b"s"))), Ok)
    c.settle(50)
    c.heal()
    assert c.core(third).local_copy(B, b"stale") is None
    assert read_value(c, "n0", b"stale") == [b"s"]
    c.settle(200)
    assert c.core(third).local_copy(B, b"stale") is None
    assert c.stats("n0")["read_repairs_total"] == 0
    assert isinstance(set_props(c, "n0", B, speculative_retry="none"), Ok)
    assert read_value(c, "n0", b"stale") == [b"s"]
    c.settle(200)
    assert c.core(third).local_copy(B, b"stale") is not None


def test_a_percentile_waits_for_enough_samples_then_waits_that_percentile_of_them() -> None:
    """99p on a cold node asks every replica at once; once a hundred replica reads are measured the
    read holds the third back, and asks it after the 99th percentile of what was measured."""
    c = cluster("99p")
    assert read_value(c, "n0") == [b"v"]
    assert spec_stats(c)["reads"] == 0
    for _ in range(60):
        read_value(c, "n0")
    c.settle(200)
    assert spec_stats(c)["reads"] > 0
    core = c.core("n0")
    delay = core._replica_latency.delay_ms(core._speculation_policy("99p"), c.now_ms)
    # Replies take two network hops of 1 to 3 ms each.
    assert delay is not None and 2 <= delay <= 6, delay
    _, second, third = order(c, "n0", b"k")
    c.stall(second)
    c.tracing = True
    started = c.now_ms
    assert read_value(c, "n0") == [b"v"]
    delivered = sent_at(c, third, 0) - started
    assert delay + 1 <= delivered <= delay + 3, (delay, delivered)
    c.resume(second)


def test_no_replica_is_held_back_when_r_is_n_pr_needs_them_all_or_a_fallback_stands_in() -> None:
    """r=3 or pr=3 of n_val 3 need every replica; with a primary judged down the targets include a
    fallback (sloppy quorum) and every one is asked at once, as with none."""
    c = cluster()
    for read in (ClientGet(B, b"k", r=3), ClientGet(B, b"k", pr=3), ClientGet(B, b"k", r="all")):
        response = c.request("n0", read)
        assert isinstance(response, Ok) and response.found is not None, (read, response)
    assert spec_stats(c)["reads"] == 0

    c5 = SimCluster(5, QUIET)
    assert isinstance(set_props(c5, "n0", B, speculative_retry="20ms"), Ok)
    assert isinstance(c5.request("n0", ClientPut(B, b"k", None, Content(b"v"), w=3)), Ok)
    _, plist = c5.core("n0").preference_list(B, b"k")
    down = next(n for n in plist.primary_nodes if n != "n0")
    coordinator = next(n for n in plist.primary_nodes if n != down)
    c5.crash(down)
    c5.settle(5_000)
    assert down not in c5.core(coordinator).healthy(c5.now_ms)
    response = c5.request(coordinator, ClientGet(B, b"k"))
    assert isinstance(response, Ok) and response.found is not None
    assert spec_stats(c5, coordinator)["reads"] == 0


def test_a_coordinator_that_holds_no_copy_asks_the_first_r_primaries_and_holds_the_last_back() -> None:
    """5 nodes, n_val 3: a node outside the key's preference list asks its first two primaries, in
    preference-list order, and the third only once one of them is slow."""
    c5 = SimCluster(5, QUIET)
    assert isinstance(set_props(c5, "n0", B, speculative_retry=f"{DELAY_MS}ms"), Ok)
    _, plist = c5.core("n0").preference_list(B, b"k")
    primaries = list(plist.primary_nodes)
    outsider = next(n for n in sorted(c5.nodes) if n not in primaries)
    assert isinstance(c5.request(primaries[0], ClientPut(B, b"k", None, Content(b"v"), w=3)), Ok)
    c5.settle(200)
    c5.tracing = True
    response = c5.request(outsider, ClientGet(B, b"k"))
    assert isinstance(response, Ok) and response.found is not None
    # The trace lists deliveries (each 1 to 3 ms after its send), so their order is not the sends'.
    asked = sorted(line.split()[1] for line in c5.trace if line.endswith(" ReplicaGet"))
    assert asked == sorted(f"{outsider}->{n}" for n in primaries[:2]), asked
    c5.stall(primaries[1])
    c5.trace.clear()
    started = c5.now_ms
    response = c5.request(outsider, ClientGet(B, b"k"))
    assert isinstance(response, Ok) and response.found is not None
    late = [int(line.split()[0]) for line in c5.trace if line.endswith(f"->{primaries[2]} ReplicaGet")]
    assert len(late) == 1 and DELAY_MS + 1 <= late[0] - started <= DELAY_MS + 3, (late, started)
    assert spec_stats(c5, outsider) == {"reads": 2, "sends": sends(timer=1), "unasked": 1}
    c5.resume(primaries[1])


def test_reads_answer_the_same_siblings_with_and_without_speculation() -> None:
    """Keys with one to four siblings and a tombstone, on replicas that each missed some writes, under
    duplicated and delayed messages: every read answers the same values and causal context with
    20ms, 1ms and 99p as with none."""
    c = cluster("none")
    c.faults.duplicate = 0.3
    c.faults.delay_ms = (1, 12)
    nodes = ["n0", "n1", "n2"]
    for i in range(12):
        key = f"s{i}".encode()
        for j in range(1 + i % 4):
            writer = nodes[(i + j) % 3]
            # Each blind write is a sibling; some miss a replica (its link from the writer cut).
            if (i + j) % 3 == 0:
                c.faults.cut.add((writer, nodes[(i + j + 1) % 3]))
            assert isinstance(c.request(writer, ClientPut(B, key, None, Content(b"%d-%d" % (i, j)))), Ok)
            c.heal()
    assert isinstance(c.request("n1", ClientPut(B, b"s0", None, None)), Ok)
    c.settle(200)

    def answers(policy: str) -> list[object]:
        assert isinstance(set_props(c, "n0", B, speculative_retry=policy), Ok)
        out: list[object] = []
        for reader in nodes:
            for i in range(12):
                response = c.request(reader, ClientGet(B, f"s{i}".encode()))
                if isinstance(response, Ok) and response.found is not None:
                    ctx = response.found.context
                    out.append((sorted(v.value for _, v in response.found.values), ctx.vector, ctx.dots))
                else:
                    assert isinstance(response, NotFound), response
                    out.append(("notfound", response.context and response.context.vector))
        return out

    baseline = answers("none")
    # Enough replica reads measured on every node for 99p to have a delay to wait (SAMPLES_MIN).
    assert answers("none") == answers("none") == baseline
    assert any(len(entry[0]) > 1 for entry in baseline if isinstance(entry, tuple) and entry[0] != "notfound")
    for policy in ("20ms", "1ms", "99p", "none"):
        held = sum(c.core(n).stats.speculative_reads for n in nodes)
        assert answers(policy) == baseline, policy
        if policy != "none":
            assert sum(c.core(n).stats.speculative_reads for n in nodes) > held, f"{policy} held nothing back"


def test_bad_values_are_refused_and_change_nothing() -> None:
    """On a bucket and on a bucket type, a value that is no policy is a bad request naming the accepted
    forms; the props stay as they were on every node. A type's value applies to its buckets, and a
    bucket's own value overrides it."""
    c = cluster("95p")
    for bad in ("always", "100p", "0ms", "fast", 20, None, "20 ms"):
        response = set_props(c, "n1", B, speculative_retry=bad)
        assert isinstance(response, Failure) and response.kind == "bad_request", (bad, response)
        assert "speculative_retry" in response.reason
        assert all(c.core(n).bucket_props(B)["speculative_retry"] == "95p" for n in c.nodes)
    created = c.request("n0", ClientBucketType("create", "fast", (("speculative_retry", "5ms"),)))
    assert isinstance(created, Ok), created
    refused = c.request("n0", ClientBucketType("update", "fast", (("speculative_retry", "soon"),)))
    assert isinstance(refused, Failure) and refused.kind == "bad_request"
    refused = c.request("n0", ClientBucketType("create", "slow", (("speculative_retry", "1h"),)))
    assert isinstance(refused, Failure) and refused.kind == "bad_request"
    assert isinstance(c.request("n0", ClientBucketType("activate", "fast", ())), Ok)
    c.settle(100)
    assert c.core("n0").cluster.bucket_type("slow") is None
    typed = b"\x00fast\x00b"
    assert all(c.core(n).bucket_props(typed)["speculative_retry"] == "5ms" for n in c.nodes)
    assert isinstance(set_props(c, "n2", typed, speculative_retry="none"), Ok)
    assert all(c.core(n).bucket_props(typed)["speculative_retry"] == "none" for n in c.nodes)


@pytest.mark.parametrize(("policy", "seeds"), [("2ms", (2, 11)), ("8ms", (8,))])
def test_simulated_faults_lose_nothing_with_speculation_on(policy: str, seeds: tuple[int, ...]) -> None:
    """The simulator's swarm of faults (partitions, crashes, loss, duplication, skew) with every
    workload bucket speculating: no acknowledged write lost, nothing unexpected, replicas converge;
    and the runs did hold replicas back, ask them for each reason, and leave some unasked."""
    held = unasked = 0
    reasons = dict.fromkeys(("timer", "notfound", "failure"), 0)
    for seed in seeds:
        sim = Simulation(seed, Options(speculative_retry=policy, safety_ms=6_000))
        result = sim.run()
        assert result.ok, result.summary()
        for node in sim.cluster.nodes.values():
            if node.core is not None:
                held += node.core.stats.speculative_reads
                unasked += node.core.stats.speculative_unasked
                for reason, count in node.core.stats.speculative_sends.items():
                    reasons[reason] += count
    assert held > 0 and unasked > 0 and reasons["timer"] > 0 and reasons["notfound"] > 0, (held, unasked, reasons)
    if policy == "2ms":
        assert reasons["failure"] > 0, reasons
