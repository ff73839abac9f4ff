"""Security metadata in a simulated cluster: changes made on both sides of a partition all hold once it
heals, strangers cannot change anything, and the simulator's seeds pass with security on."""

from __future__ import annotations

from dynastore.core import security
from dynastore.core.membership import encode
from dynastore.core.messages import Failure, GossipState, Ok
from dynastore.core.node import SecurityChange
from dynastore.settings import Settings
from dynastore.sim.cluster import SimCluster
from dynastore.sim.run import SIM_SETTINGS, Options, run_seed

HASH = security.hash_password("pw", bytes(security.SALT_BYTES))


def test_users_and_grants_changed_on_both_sides_of_a_partition_all_hold_after_healing() -> None:
    """Users added and granted at n0 and at n2 while they cannot talk, and security switched off at n1:
    after healing every node holds the same state, with all of it. Switching security on is refused
    here: the simulated members serve no TLS and are not on loopback."""
    c = SimCluster(4, Settings().with_mapping({**SIM_SETTINGS, "security_enabled": True}))
    assert all(c.core(n).cluster.security.on for n in c.nodes)
    c.partition({"n0", "n1"}, {"n2", "n3"})
    c.settle(1000)
    for node, user, perm in (("n0", "alice", "riak_kv.get"), ("n2", "bob", "riak_kv.put")):
        assert isinstance(c.request(node, SecurityChange("add_user", user, HASH)), Ok)
        assert isinstance(c.request(node, SecurityChange("grant", user, b"", (perm,), "any")), Ok)
    assert isinstance(c.request("n1", SecurityChange("disable")), Ok)
    refused = c.request("n3", SecurityChange("enable"))
    assert isinstance(refused, Failure) and "TLS" in refused.reason
    c.heal()
    c.settle(5000)
    states = {c.core(n).cluster.security for n in c.nodes}
    assert len(states) == 1
    state = states.pop()
    assert not state.on and state.user_names() == ["alice", "bob"]
    assert state.grants_of("alice") == [("riak_kv.get", "any")] and state.grants_of("bob") == [("riak_kv.put", "any")]


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
        if not (result := run_seed(seed, Options(safety_ms=8_000, settings={"security_enabled": "true"}))).ok
    ]
    assert not failures, "\n".join(failures)
