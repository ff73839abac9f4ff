"""Batch writes that take time (SimCluster.commit_ms): what waits for a node's disk and what does not.

Times here are the simulator's own milliseconds, exact and repeatable, not the wall clock.
"""

from __future__ import annotations

from dynastore.core.messages import ClientGet, ClientPut, ClientRequest, ClientResponse, Ok
from dynastore.core.objects import Content
from dynastore.settings import Settings
from dynastore.sim.cluster import SimCluster

COMMIT_MS = 50


def cluster() -> SimCluster:
    c = SimCluster(3, Settings(ring_size=16))
    c.commit_ms = (COMMIT_MS, COMMIT_MS)
    return c


def answered_after(c: SimCluster, node: str, *requests: ClientRequest) -> list[tuple[ClientResponse, int]]:
    """Submit the requests to `node` at the same instant; each one's response and how long it took."""
    start = c.now_ms
    rids = [c.submit(node, request) for request in requests]
    when: dict[int, int] = {}

    def all_answered() -> bool:
        for rid in rids:
            if rid in c.replies and rid not in when:
                when[rid] = c.now_ms - start
        return len(when) == len(rids)

    assert c.run_until(all_answered, 10_000)
    return [(c.replies.pop(rid), when[rid]) for rid in rids]


def values(response: ClientResponse) -> list[bytes]:
    assert isinstance(response, Ok) and response.found is not None, response
    return sorted(content.value for _, content in response.found.values)


def write(key: bytes, value: bytes, **kw: object) -> ClientPut:
    return ClientPut(b"b", key, None, Content(value), **kw)  # type: ignore[arg-type]


def test_a_read_of_data_on_disk_does_not_wait_for_a_batch_being_written() -> None:
    """While the coordinator's disk writes another key's batch, a read of a durable key is answered."""
    c = cluster()
    answered_after(c, "n0", write(b"old", b"v1"))
    c.settle(1_000)
    (put, put_ms), (get, get_ms) = answered_after(c, "n0", write(b"other", b"x"), ClientGet(b"b", b"old"))
    assert isinstance(put, Ok) and put_ms >= COMMIT_MS
    assert values(get) == [b"v1"]
    assert get_ms < COMMIT_MS // 2


def test_a_read_that_sees_a_write_not_yet_durable_waits_for_its_batch() -> None:
    """A read must not show a value that a crash could still take back: it waits for the batch."""
    c = cluster()
    (put, _), (get, get_ms) = answered_after(c, "n0", write(b"k", b"new"), ClientGet(b"b", b"k"))
    assert isinstance(put, Ok)
    assert values(get) == [b"new"]
    assert get_ms >= COMMIT_MS


def test_replicas_write_in_parallel_with_the_coordinator() -> None:
    """A W=2 write costs one batch write, not the coordinator's and then the replicas' in turn. The
    coordinator's first write after a start is the exception: its dot's counter lease must be on
    disk before any replica sees the dot."""
    c = cluster()
    [(first, first_ms)] = answered_after(c, "n1", write(b"a", b"1", w=2))
    [(second, second_ms)] = answered_after(c, "n1", write(b"b", b"2", w=2))
    assert isinstance(first, Ok) and isinstance(second, Ok)
    assert first_ms >= 2 * COMMIT_MS
    assert COMMIT_MS <= second_ms < 2 * COMMIT_MS


def test_the_coordinator_counts_its_own_copy_only_once_it_is_on_disk() -> None:
    """With the coordinator's disk slow, W=3 waits for it while W=2 is met by the two fast replicas;
    a crash of the coordinator before its disk finished loses nothing that was acknowledged."""
    c = SimCluster(3, Settings(ring_size=16))
    answered_after(c, "n0", write(b"warm", b"up"))
    c.settle(1_000)
    c.commit_ms = (5, 5)
    c.nodes["n0"].commit_ms = (400, 400)
    [(all3, all3_ms)] = answered_after(c, "n0", write(b"k3", b"v", w=3))
    assert isinstance(all3, Ok) and all3_ms >= 400
    [(two, two_ms)] = answered_after(c, "n0", write(b"k2", b"v", w=2))
    assert isinstance(two, Ok) and two_ms < 50
    assert c.nodes["n0"].committing is not None
    c.crash("n0")
    [(read, _)] = answered_after(c, "n1", ClientGet(b"b", b"k2", r=2))
    assert values(read) == [b"v"]


def test_a_dot_is_never_seen_before_its_counter_lease_is_on_disk() -> None:
    """A coordinator that crashes before the lease of its first dot is durable hands that dot out
    again after restarting; had a replica stored (and acknowledged) a value under it, one of the two
    values would be lost. Every value acknowledged survives."""
    c = SimCluster(3, Settings(ring_size=16))
    c.commit_ms = (5, 5)
    c.nodes["n1"].commit_ms = (400, 400)
    first = c.submit("n1", write(b"k", b"v1", w=2))
    c.run_until(lambda: False, 50)
    c.crash("n1")
    c.restart("n1")
    c.nodes["n1"].commit_ms = None
    [(second, _)] = answered_after(c, "n1", write(b"k", b"v2", w=2))
    assert isinstance(second, Ok)
    c.settle(2_000)
    acknowledged = [b"v2"] + ([b"v1"] if isinstance(c.replies.get(first), Ok) else [])
    [(read, _)] = answered_after(c, "n0", ClientGet(b"b", b"k", r=3))
    assert set(acknowledged) <= set(values(read))
