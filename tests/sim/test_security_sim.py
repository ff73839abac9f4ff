"""Security metadata in a simulated cluster: changes made on both sides of a partition all hold once it
heals, strangers cannot change anything, and the simulator's seeds pass with security on."""

from __future__ import annotations

from dynastore.core import security
from dynastore.core.membership import encode
from dynastore.core.messages import ClientPut, Failure, GossipState, Ok
from dynastore.core.node import ClientJoin, ClientRemove, SecurityChange
from dynastore.core.objects import Content
from dynastore.settings import Settings
from dynastore.sim.cluster import SimCluster, SimNode
from dynastore.sim.run import SIM_SETTINGS, Options, run_seed

HASH = security.hash_password("pw", bytes(security.SALT_BYTES))


# Simulated members serve "TLS" (the core only sees that both files are set): security may be on.
TLS = {"tls_cert_file": "sim.pem", "tls_key_file": "sim.key"}


def test_users_and_grants_changed_on_both_sides_of_a_partition_all_hold_after_healing() -> None:
    """Users added and granted at n0 and at n2 while they cannot talk, and security switched on at n1:
    after healing every node holds the same state, with all of it."""
    c = SimCluster(4, Settings().with_mapping({**SIM_SETTINGS, **TLS}))
    c.partition({"n0", "n1"}, {"n2", "n3"})
    c.settle(1000)
    for node, user, perm in (("n0", "alice", "riak_kv.get"), ("n2", "bob", "riak_kv.put")):
        assert isinstance(c.request(node, SecurityChange("add_user", user, HASH)), Ok)
        assert isinstance(c.request(node, SecurityChange("grant", user, b"", (perm,), "any")), Ok)
    assert isinstance(c.request("n1", SecurityChange("enable")), Ok)
    c.heal()
    c.settle(5000)
    states = {c.core(n).cluster.security for n in c.nodes}
    assert len(states) == 1
    state = states.pop()
    assert state.on and state.user_names() == ["alice", "bob"]
    assert state.grants_of("alice") == [("riak_kv.get", "any")] and state.grants_of("bob") == [("riak_kv.put", "any")]


def test_security_is_never_on_with_a_member_that_would_take_passwords_in_clear() -> None:
    """Members on network addresses without TLS: `enable` is refused; and a cluster with security on
    refuses a joiner that serves without TLS (it would take passwords in clear)."""
    plain = SimCluster(3, Settings().with_mapping(SIM_SETTINGS))
    refused = plain.request("n1", SecurityChange("enable"))
    assert isinstance(refused, Failure) and "TLS" in refused.reason
    secured = SimCluster(2, Settings().with_mapping({**SIM_SETTINGS, **TLS, "security_enabled": True}))
    assert all(secured.core(n).cluster.security.on for n in secured.nodes)
    secured.nodes["n2"] = SimNode("n2", Settings().with_mapping(SIM_SETTINGS), secured.rng, secured.now_ms)
    answer = secured.request("n2", ClientJoin("n0", 1))
    assert isinstance(answer, Failure) and "TLS" in answer.reason
    assert [m.name for m in secured.core("n0").cluster.members] == ["n0", "n1"]


def test_a_stranger_cannot_gossip_itself_users_or_members() -> None:
    """A peer that is not a member (it holds the key, say, but never joined) sends a state that would add
    a user: dropped and counted, nothing changes."""
    c = SimCluster(3, Settings().with_mapping(SIM_SETTINGS))
    core = c.core("n0")
    forged = core.cluster.with_security(core.cluster.security.with_user("mallory", HASH, "x"))
    c.send_raw("mallory", "n0", GossipState(encode(forged), False))
    c.settle(500)
    assert core.cluster.security.user_names() == []
    assert core.stats.strangers_dropped == 1


def test_simulator_seeds_pass_with_security_enabled() -> None:
    """Security changes nothing the protocol does between nodes: seeds with it on stay safe and converge."""
    failures = [
        result.summary()
        for seed in range(12)
        if not (result := run_seed(seed, Options(safety_ms=8_000, settings={"security_enabled": True, **TLS}))).ok
    ]
    assert not failures, "\n".join(failures)


def test_a_removed_node_may_still_hand_over_the_hints_it_holds() -> None:
    """Hints may be the only copy of an acknowledged write: members take them from a node they removed,
    while refusing anything else it sends."""
    c = SimCluster(5, Settings().with_mapping(SIM_SETTINGS))
    _, plist = c.core("n0").preference_list(b"b", b"k3")
    primaries = list(plist.primary_nodes)
    fallback = next(node for _, node in plist.fallbacks)
    c.partition({primaries[0]}, set(c.nodes) - {primaries[0]})
    c.settle(4000)
    assert isinstance(c.request(fallback, ClientPut(b"b", b"k3", None, Content(b"hinted"))), Ok)
    assert c.core(fallback).hints_pending == 1
    c.partition({fallback}, set(c.nodes) - {fallback})
    c.settle(2000)
    remover = next(n for n in c.nodes if n != fallback)
    assert isinstance(c.request(remover, ClientRemove(fallback)), Ok)
    c.settle(2000)
    c.heal()
    c.run_until(lambda: c.core(fallback).hints_pending == 0, 30_000)
    assert c.core(fallback).hints_pending == 0
    owner = c.core(primaries[0])
    assert owner.local_copy(b"b", b"k3") is not None
