"""Buffered writes, the Dynamo paper's section 6.1: with `durable=false` a write's coordinator asks one
replica (itself when it holds a copy) to sync its copy before acknowledging it and the others only to
write theirs; `dw` counts synced copies. So an acknowledged buffered write survives the machine crash
of every replica that only buffered it. And the write coordinator named by the preceding read is
chosen even by a primary that receives the write (section 6.4)."""

from __future__ import annotations

from dynastore.core.coordination import _sync_nodes
from dynastore.core.messages import ClientGet, ClientPut, Ok
from dynastore.core.objects import Content
from dynastore.core.quorum import FAIL, OK, WAIT, PutTally
from dynastore.core.ring import Target
from dynastore.core.versions import Context
from dynastore.settings import Settings
from dynastore.sim.cluster import SimCluster
from dynastore.sim.run import SIM_SETTINGS

KEY = b"k1"


def cluster(durable: bool, **overrides: object) -> SimCluster:
    # No periodic sync during a test: only the syncs buffered writes ask for reach the simulated disks.
    settings = {**SIM_SETTINGS, "durable": durable, "buffered_sync_interval_ms": 10**9, **overrides}
    c = SimCluster(5, Settings().with_mapping(settings), seed=11)
    c.settle(3000)
    # What the cluster wrote while forming is on disk, as a periodic sync would leave it.
    for node in c.nodes.values():
        node.engine.sync()
    return c


def primaries(c: SimCluster, key: bytes = KEY) -> list[str]:
    _, plist = c.core("n0").preference_list(b"b", key)
    return list(plist.primary_nodes)


def synced(c: SimCluster, node: str, key: bytes = KEY) -> bool:
    """Whether `node`'s disk would keep its copy of the key through a machine crash."""
    core = c.core(node)
    return core.engine.durable_get("data", core._stored_key(b"b", key)) is not None  # type: ignore[attr-defined]


def test_the_coordinator_of_a_buffered_write_is_the_one_replica_that_syncs_before_the_answer() -> None:
    """The coordinator (a primary) holds its copy synced when it answers; the two other primaries
    acknowledged copies they wrote but did not sync."""
    c = cluster(durable=False)
    owners = primaries(c)
    assert isinstance(c.request(owners[0], ClientPut(b"b", KEY, None, Content(b"v"), w=3)), Ok)
    assert [synced(c, node) for node in owners] == [True, False, False]


def test_a_coordinator_that_holds_no_copy_asks_the_first_healthy_primary_to_sync() -> None:
    """A node outside the preference list forwards the write to a replica, which coordinates it and is
    itself the synced copy; the forwarding node never holds the key."""
    c = cluster(durable=False)
    owners = primaries(c)
    outsider = next(n for n in c.nodes if n not in owners)
    assert isinstance(c.request(outsider, ClientPut(b"b", KEY, None, Content(b"v"), w=3)), Ok)
    assert sum(synced(c, node) for node in owners) == 1
    assert not synced(c, outsider)


def test_dw_asks_that_many_replicas_to_sync() -> None:
    """dw=2 on a buffered write: two synced copies (the coordinator and the next primary), one buffered."""
    c = cluster(durable=False)
    owners = primaries(c)
    assert isinstance(c.request(owners[0], ClientPut(b"b", KEY, None, Content(b"v"), w=3, dw=2)), Ok)
    assert [synced(c, node) for node in owners] == [True, True, False]


def test_a_durable_cluster_syncs_every_replica_as_before() -> None:
    c = cluster(durable=True)
    owners = primaries(c)
    assert isinstance(c.request(owners[0], ClientPut(b"b", KEY, None, Content(b"v"), w=3)), Ok)
    assert all(synced(c, node) for node in owners)


def test_an_acknowledged_buffered_write_survives_the_machine_crash_of_every_replica() -> None:
    """Every node loses what it had not synced (a power cut across the cluster) after the write was
    acknowledged with w=2: the coordinator's synced copy is still there, and read repair gives it back
    to the others. Before buffered writes synced one replica, the write was gone from every disk."""
    c = cluster(durable=False)
    owners = primaries(c)
    assert isinstance(c.request(owners[0], ClientPut(b"b", KEY, None, Content(b"kept"))), Ok)
    c.settle(50)
    for node in list(c.nodes):
        c.crash(node)
    for node in list(c.nodes):
        c.restart(node)
    c.settle(5000)
    response = c.request(owners[1], ClientGet(b"b", KEY, r="all"))
    assert isinstance(response, Ok) and response.found is not None, response
    assert [content.value for _, content in response.found.values] == [b"kept"]


def test_the_buffered_default_dw_is_one_and_a_durable_cluster_keeps_quorum() -> None:
    from dynastore.core import bucketprops

    assert bucketprops.defaults(Settings(durable=False))["dw"] == 1
    assert bucketprops.defaults(Settings())["dw"] == "quorum"


def test_the_synced_replica_is_the_coordinator_else_the_first_primary_and_every_target_when_durable() -> None:
    a, b, f = Target("a", True), Target("b", True), Target("f", False, hint_for="c")
    assert _sync_nodes((a, b, f), b, 1, durable=False) == {"b"}
    assert _sync_nodes((a, b, f), f, 1, durable=False) == {"f"}
    assert _sync_nodes((f, a, b), None, 1, durable=False) == {"a"}
    assert _sync_nodes((a, b, f), b, 2, durable=False) == {"b", "a"}
    assert _sync_nodes((a, b, f), b, 0, durable=False) == {"b"}
    assert _sync_nodes((a, b, f), b, 1, durable=True) == {"a", "b", "f"}


def test_dw_counts_only_synced_acknowledgements() -> None:
    """w=2 dw=1: two buffered acks are not enough while the synced one may still come; a synced ack
    and a buffered one are; three buffered acks with nothing pending can no longer succeed."""
    targets = (Target("a", True), Target("b", True), Target("c", True))
    tally = PutTally(targets, 2, 1, 0)
    tally.ack("b", durable=False)
    tally.ack("c", durable=False)
    assert tally.decision() == WAIT
    tally.ack("a", durable=True)
    assert tally.decision() == OK

    tally = PutTally(targets, 2, 1, 0)
    for node in ("a", "b", "c"):
        tally.ack(node, durable=False)
    assert tally.decision() == FAIL
    assert "0 of dw=1 durably" in tally.shortfall()

    tally = PutTally(targets, 2, 1, 0)
    tally.ack("a", durable=True)
    assert tally.decision() == WAIT, "w=2 still needs a second acknowledgement, synced or not"


def test_a_buffered_write_whose_synced_replica_is_lost_asks_its_stand_in_to_sync() -> None:
    """The coordinator's disk is full, so it holds no copy: the first primary is the synced replica.
    That primary dies as the write is sent, so its stand-in (a fallback keeping a hint) syncs instead."""
    c = cluster(durable=False)
    owners = primaries(c)
    _, plist = c.core("n0").preference_list(b"b", KEY)
    # The first fallback stands in for the coordinator itself (it has no room); the second for owners[0].
    stand_in = [node for _, node in plist.fallbacks][1]
    coordinator = owners[1]
    disk = c.nodes[coordinator].engine
    disk.free_bytes = 0
    c.core(coordinator).observe_space(disk.space())
    c.crash(owners[0])
    assert owners[0] in c.core(coordinator).healthy(c.now_ms), "the coordinator has not noticed yet"
    assert isinstance(c.request(coordinator, ClientPut(b"b", KEY, None, Content(b"v"), w=2)), Ok)
    disk = c.nodes[stand_in].engine
    assert not synced(c, coordinator) and not c.core(coordinator).local_copy(b"b", KEY)
    hints = [k for k, _ in disk.scan("hints", b"", None, 100)]
    assert hints, "the fallback took the write as a hint"
    assert all(disk.durable_get("hints", k) is not None for k in hints), "the stand-in synced its hint"
    assert not synced(c, owners[2]), "the other primary only buffered its copy"


def test_a_primary_that_receives_a_write_naming_another_replica_as_fastest_forwards_it_there() -> None:
    """The context of the preceding read names owners[2]; the client sends the write to owners[0], a
    replica too: owners[2] coordinates it (one forward). A forwarded write is coordinated where it
    lands, and with write_to_fastest_replica off the receiving replica coordinates."""
    c = cluster(durable=True)
    owners = primaries(c)
    context = Context((), frozenset(), owners[2])
    before = {n: c.core(n).stats.coordinated_puts for n in owners}
    assert isinstance(c.request(owners[0], ClientPut(b"b", KEY, context, Content(b"v"))), Ok)
    after = {n: c.core(n).stats.coordinated_puts for n in owners}
    assert after[owners[2]] == before[owners[2]] + 1
    assert after[owners[0]] == before[owners[0]]
    assert c.core(owners[0]).stats.forwarded_puts == 1

    forwarded = ClientPut(b"b", KEY, context, Content(b"w"), hops=1)
    assert isinstance(c.request(owners[1], forwarded), Ok)
    assert c.core(owners[1]).stats.coordinated_puts == before[owners[1]] + 1, "a forwarded write stays"

    off = cluster(durable=True, write_to_fastest_replica=False)
    owners = primaries(off)
    coordinated = off.core(owners[0]).stats.coordinated_puts
    context = Context((), frozenset(), owners[2])
    assert isinstance(off.request(owners[0], ClientPut(b"b", KEY, context, Content(b"v"))), Ok)
    assert off.core(owners[0]).stats.coordinated_puts == coordinated + 1


def test_a_buffered_owner_syncs_a_delivered_hint_before_acknowledging_it() -> None:
    """A fallback drops its hint once the owner acknowledges the delivery, and that hint may be the one
    synced copy of a write: a buffered owner syncs what it was handed before it answers."""
    c = cluster(durable=False)
    owners = primaries(c)
    c.crash(owners[0])
    c.settle(5000)
    assert isinstance(c.request(owners[1], ClientPut(b"b", KEY, None, Content(b"v"))), Ok)
    assert sum(c.core(n).hints_pending for n in c.nodes if c.nodes[n].up) == 1
    c.restart(owners[0])
    c.run_until(lambda: all(c.core(n).hints_pending == 0 for n in c.nodes), 20_000)
    assert all(c.core(n).hints_pending == 0 for n in c.nodes), "the hint was delivered"
    assert synced(c, owners[0])


def test_a_replica_whose_fastest_replica_is_gone_coordinates_the_write_itself() -> None:
    """The context names owners[2], which died a moment ago (not yet judged down): the forward fails at
    once and owners[0], a replica itself, coordinates the retry rather than sending it to itself (a
    node's shell drops what it sends itself, so that write would have waited for its timeout)."""
    c = cluster(durable=True)
    owners = primaries(c)
    c.crash(owners[2])
    before = c.core(owners[0]).stats.coordinated_puts
    context = Context((), frozenset(), owners[2])
    c.tracing = True
    assert isinstance(c.request(owners[0], ClientPut(b"b", KEY, context, Content(b"v"))), Ok)
    assert c.core(owners[0]).stats.coordinated_puts == before + 1
    assert not [line for line in c.trace if f" {owners[0]}->{owners[0]} " in line], "a message to itself"


def test_a_primary_whose_preferred_coordinator_is_silently_cut_off_coordinates_the_write_itself() -> None:
    """The replica a write's context names as the read's fastest is cut off without a broken link (a
    partition, a paused process), and nobody has judged it down yet. The primary that received the
    write hands it there, hears nothing, and coordinates it itself (same write id) after half the
    request's time, instead of answering a timeout it could have avoided."""
    c = cluster(durable=True)
    owners = primaries(c)
    c.faults.cut.add((owners[0], owners[2]))
    c.faults.cut.add((owners[2], owners[0]))
    context = Context((), frozenset(), owners[2])
    answer = c.request(owners[0], ClientPut(b"b", KEY, context, Content(b"v")))
    assert isinstance(answer, Ok), answer
    read = c.request(owners[1], ClientGet(b"b", KEY, r=2))
    assert isinstance(read, Ok) and read.found is not None
    assert [content.value for _, content in read.found.values] == [b"v"]
