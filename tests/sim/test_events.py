"""The events a node reports to its operator (core/effects.py Event), seen in a simulated cluster: a
peer judged down and back up, ring transitions and transfers, hints delivered, keys repaired by
anti-entropy, membership and security changes. The core emits them as effects; the shell logs them."""

from __future__ import annotations

from dynastore.core import keys, security
from dynastore.core.effects import Event, SecurityChange
from dynastore.core.messages import ClientPut, Ok
from dynastore.core.node import ClientJoin, ClientLeave, ClientStaged
from dynastore.core.objects import Content
from dynastore.core.versions import Context, Dot, update
from dynastore.settings import Settings
from dynastore.sim.cluster import SimCluster

SETTINGS = Settings(ring_size=16, handoff_batch_max=20, handoff_pause_ms=5)


def events(c: SimCluster, name: str, kind: str) -> list[Event]:
    return [e for e in c.nodes[name].logged if e.kind == kind]


def fields(event: Event) -> dict[str, object]:
    return dict(event.fields)


def put(c: SimCluster, node: str, key: bytes, value: bytes, w: int | None = None) -> None:
    response = c.request(node, ClientPut(b"b", key, None, Content(value), w=w))
    assert isinstance(response, Ok), response


def test_a_crashed_peer_is_reported_down_with_its_phi_and_up_again_with_how_long_it_was_down() -> None:
    c = SimCluster(3, SETTINGS)
    c.settle(3_000)
    assert not events(c, "n0", "peer_down")
    c.crash("n2")
    assert c.run_until(lambda: bool(events(c, "n0", "peer_down")), 30_000)
    down = events(c, "n0", "peer_down")
    assert [fields(e)["peer"] for e in down] == ["n2"] and down[0].level == "warning"
    assert isinstance(fields(down[0])["phi"], float)
    assert "n2 is judged down" in down[0].text
    # Reported once, not on every tick while it stays down.
    c.settle(5_000)
    assert len(events(c, "n0", "peer_down")) == 1
    c.restart("n2")
    assert c.run_until(lambda: bool(events(c, "n0", "peer_up")), 30_000)
    up = events(c, "n0", "peer_up")
    assert fields(up[0])["peer"] == "n2" and int(fields(up[0])["down_ms"]) > 0  # type: ignore[call-overload]


def test_a_join_is_reported_as_a_member_added_a_transition_and_the_transfers_it_made() -> None:
    c = SimCluster(3, SETTINGS)
    for i in range(100):
        put(c, "n0", b"k%d" % i, b"v")
    c.add_node("n3")
    assert isinstance(c.request("n3", ClientJoin("n0", 1)), Ok)

    def settled() -> bool:
        rings = [n.core.cluster.ring for n in c.nodes.values() if n.core is not None]
        return all(r.next_owners is None and "n3" in r.owners for r in rings)

    assert c.run_until(settled, 120_000)
    c.settle(2_000)
    added = [e for e in events(c, "n0", "member_added") if fields(e)["member"] == "n3"]
    assert added and fields(added[0])["status"] == "joining"
    assert any(fields(e)["status"] == "valid" and fields(e)["member"] == "n3" for e in events(c, "n0", "member_status"))
    started = events(c, "n1", "ring_transition_started")
    finished = events(c, "n1", "ring_transition_finished")
    assert started and finished
    assert int(fields(started[-1])["partitions_moving"]) > 0  # type: ignore[call-overload]
    assert fields(finished[-1])["partitions_moved"] == fields(started[-1])["partitions_moving"]
    # The joiner pulled partitions: each transfer reported when it started and when it finished.
    began = {fields(e)["partition"] for e in events(c, "n3", "transfer_started")}
    ended = {fields(e)["partition"] for e in events(c, "n3", "transfer_finished")}
    assert began and began <= ended
    assert sum(int(fields(e)["keys"]) for e in events(c, "n3", "transfer_finished")) > 0  # type: ignore[call-overload]


def test_a_leave_is_reported_by_every_member() -> None:
    c = SimCluster(4, SETTINGS)
    c.settle(2_000)
    assert isinstance(c.request("n3", ClientLeave()), Ok)
    assert c.run_until(lambda: any(fields(e)["status"] == "leaving" for e in events(c, "n0", "member_status")), 10_000)


def test_hints_delivered_to_a_peer_that_came_back_are_reported() -> None:
    c = SimCluster(5, SETTINGS)
    core = c.core("n0")
    owners = core.ring.replicas(core.ring.partition_of(b"b", b"k"), 3)
    for node in owners[1:]:
        c.crash(node)
    put(c, owners[0], b"k", b"sloppy", w=2)
    for node in owners[1:]:
        c.restart(node)
    c.settle(10_000)
    delivered = [e for n in c.nodes for e in events(c, n, "hints_delivered")]
    assert delivered
    assert {fields(e)["owner"] for e in delivered} <= set(owners[1:])
    assert sum(int(fields(e)["count"]) for e in delivered) >= 2  # type: ignore[call-overload]


def test_keys_repaired_by_anti_entropy_are_reported_with_their_partition_and_peer() -> None:
    aae = Settings(
        ring_size=16, n_val=2, anti_entropy_interval_ms=2_000, hinted_handoff_enabled=False, read_repair_enabled=False
    )
    c = SimCluster(2, aae)
    for name in ("n0", "n1"):
        core = c.core(name)
        for i in range(200):
            key = b"k%04d" % i
            obj = update(None, Context(), Dot(b"writer#1", i + 1), Content(b"v", last_modified_us=1), 1)
            core._merge_into_data(b"b", key, obj, False, c.now_ms)
        c._flush(name)
    core = c.core("n1")
    for key in (b"k0003", b"k0100"):
        core._delete_data(keys.encode(core.ring.partition_of(b"b", key), b"b", key))
    c._flush("n1")
    c.settle(2 * aae.anti_entropy_interval_ms + 1_000)
    repaired = [e for n in c.nodes for e in events(c, n, "aae_repaired")]
    assert sum(int(fields(e)["keys"]) for e in repaired) >= 2  # type: ignore[call-overload]
    partitions = {core.ring.partition_of(b"b", k) for k in (b"k0003", b"k0100")}
    assert {fields(e)["partition"] for e in repaired} == partitions


def test_security_changes_are_reported_on_every_node_without_the_password() -> None:
    # Simulated members serve "TLS" (the core only sees that both files are set): security may be on.
    c = SimCluster(3, SETTINGS.replace(tls_cert_file="sim.pem", tls_key_file="sim.key"))
    c.settle(2_000)
    digest = security.hash_password("a secret password", bytes(security.SALT_BYTES))
    for change in (
        SecurityChange("add_user", "alice", password_hash=digest),
        SecurityChange("grant", "alice", permissions=("riak_kv.get",), scope="b"),
        SecurityChange("enable"),
    ):
        assert isinstance(c.request("n0", change), Ok)
    c.settle(5_000)
    for name in c.nodes:
        kinds = [e.kind for e in c.nodes[name].logged]
        assert {"user_added", "grant_added", "security_changed"} <= set(kinds), (name, kinds)
        assert not any(digest.hex() in e.text or digest in repr(e.fields).encode() for e in c.nodes[name].logged)
    enabled = events(c, "n2", "security_changed")
    assert fields(enabled[-1])["enabled"] is True


def test_a_staged_join_is_reported_when_staged_and_when_committed() -> None:
    c = SimCluster(3, SETTINGS)
    c.settle(2_000)
    transitions = len(events(c, "n1", "ring_transition_started"))
    c.add_node("n3")
    assert isinstance(c.request("n3", ClientJoin("n0", 1, stage=True)), Ok)
    c.settle(3_000)
    staged = events(c, "n1", "change_staged")
    assert staged and fields(staged[0])["node"] == "n3" and fields(staged[0])["action"] == "join"
    assert len(events(c, "n1", "ring_transition_started")) == transitions
    assert isinstance(c.request("n0", ClientStaged("commit")), Ok)
    assert c.run_until(lambda: len(events(c, "n1", "ring_transition_started")) > transitions, 30_000)
    committed = events(c, "n0", "changes_committed")
    assert committed and "join of n3" in committed[0].text
    assert any(fields(e)["node"] == "n3" for e in events(c, "n0", "change_unstaged"))
