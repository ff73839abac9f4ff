"""Quorum options in a simulated cluster: pr and pw count primaries only, so a down primary fails them
where sloppy quorum meets r and w with a fallback; and the bucket property rw (the quorum of a delete,
applied by the HTTP API) is stored, validated, gossiped and persisted like the other props."""

from __future__ import annotations

import msgpack

from dynastore.core.messages import ClientGet, ClientPut, ClientSetBucketProps, Failure, Ok
from dynastore.core.nodebase import META_CLUSTER
from dynastore.core.objects import Content
from dynastore.settings import Settings
from dynastore.sim.cluster import SimCluster
from dynastore.storage.base import Op


def set_props(c: SimCluster, node: str, bucket: bytes, **props: object) -> Ok | Failure:
    response = c.request(node, ClientSetBucketProps(bucket, tuple(sorted(props.items()))))
    assert isinstance(response, Ok | Failure), response
    return response


def with_a_primary_down() -> tuple[SimCluster, list[str], str]:
    """5 nodes, n_val 3, key b/k written everywhere, then one of its primaries crashed and judged down
    by every other node. Returns the cluster, the key's primaries and a live one of them."""
    c = SimCluster(5)
    assert isinstance(c.request("n0", ClientPut(b"b", b"k", None, Content(b"v"), w=3)), Ok)
    _, plist = c.core("n0").preference_list(b"b", b"k")
    owners = list(plist.primary_nodes)
    c.crash(owners[1])
    c.settle(5_000)
    for name, node in c.nodes.items():
        if node.up:
            assert owners[1] not in c.core(name).healthy(c.now_ms), f"{name} still judges {owners[1]} up"
    return c, owners, owners[0]


def unavailable(response: object) -> bool:
    return isinstance(response, Failure) and response.kind == "unavailable"


def test_with_a_primary_down_w_all_is_met_by_a_fallback_but_pw_all_fails_and_pw_1_succeeds() -> None:
    """Sloppy quorum lets w=3 count a fallback's (hinted) copy; pw=3 asks for three primaries, of which
    only two are up, and fails at once; pw=2 and pw=1 succeed."""
    c, _, coordinator = with_a_primary_down()
    hints_before = sum(c.core(n).hints_pending for n in c.nodes if c.nodes[n].up)
    write = ClientPut(b"b", b"k", None, Content(b"sloppy"), w=3)
    assert isinstance(c.request(coordinator, write), Ok)
    c.settle(100)
    assert sum(c.core(n).hints_pending for n in c.nodes if c.nodes[n].up) > hints_before, "no fallback took it"

    refused = c.request(coordinator, ClientPut(b"b", b"k", None, Content(b"strict"), w=3, pw=3))
    assert unavailable(refused), refused
    assert isinstance(refused, Failure) and "pw=3" in refused.reason
    assert isinstance(c.request(coordinator, ClientPut(b"b", b"k", None, Content(b"two"), pw=2)), Ok)
    assert isinstance(c.request(coordinator, ClientPut(b"b", b"k", None, Content(b"one"), pw="one")), Ok)
    refused = c.request(coordinator, ClientPut(b"b", b"k", None, Content(b"words"), pw="all"))
    assert unavailable(refused), refused


def test_with_a_primary_down_r_all_is_met_by_a_fallback_but_pr_all_fails_and_pr_1_succeeds() -> None:
    """A read with r=3 counts the fallback's not-found; pr=3 needs three primaries and fails at once;
    pr=2 and pr=1 read the value."""
    c, owners, coordinator = with_a_primary_down()
    for node in (coordinator, owners[2]):
        read = c.request(node, ClientGet(b"b", b"k", r=3))
        assert isinstance(read, Ok) and read.found is not None, read
        assert [v.value for _, v in read.found.values] == [b"v"]
        refused = c.request(node, ClientGet(b"b", b"k", r=3, pr=3))
        assert unavailable(refused), refused
        assert isinstance(refused, Failure) and "pr=3" in refused.reason
        assert unavailable(c.request(node, ClientGet(b"b", b"k", pr="all")))
        for pr in (2, 1, "one", "quorum"):
            read = c.request(node, ClientGet(b"b", b"k", pr=pr))
            assert isinstance(read, Ok) and read.found is not None, (pr, read)


def test_a_bucket_pr_or_pw_of_all_fails_with_a_primary_down_and_an_explicit_value_wins() -> None:
    """Set as bucket properties, pr=all and pw=all apply to every request that names none, on every node;
    a request's own pr or pw replaces them."""
    c, owners, coordinator = with_a_primary_down()
    assert isinstance(set_props(c, owners[2], b"b", pr="all", pw="all"), Ok)
    c.settle(100)
    assert unavailable(c.request(coordinator, ClientGet(b"b", b"k")))
    assert unavailable(c.request(coordinator, ClientPut(b"b", b"k", None, Content(b"x"))))
    read = c.request(coordinator, ClientGet(b"b", b"k", pr=1))
    assert isinstance(read, Ok) and read.found is not None
    assert isinstance(c.request(coordinator, ClientPut(b"b", b"k", None, Content(b"x"), pw=1)), Ok)
    # The crashed primary back: every primary up, pr=all and pw=all are met again.
    c.restart(owners[1])
    c.settle(5_000)
    assert isinstance(c.request(coordinator, ClientPut(b"b", b"k", None, Content(b"y"))), Ok)
    assert isinstance(c.request(coordinator, ClientGet(b"b", b"k")), Ok)


def test_a_bucket_rw_is_stored_gossiped_and_kept_across_restarts() -> None:
    """rw defaults to quorum; set on one node it is seen by every node, and survives every node
    crashing and restarting."""
    c = SimCluster(3)
    assert all(c.core(n).bucket_props(b"d")["rw"] == "quorum" for n in c.nodes)
    assert isinstance(set_props(c, "n1", b"d", rw="all"), Ok)
    c.settle(100)
    assert all(c.core(n).bucket_props(b"d")["rw"] == "all" for n in c.nodes)
    assert isinstance(set_props(c, "n2", b"e", rw=1, n_val=2), Ok)
    c.settle(100)
    for node in list(c.nodes):
        c.crash(node)
    for node in list(c.nodes):
        c.restart(node)
    c.settle(1_000)
    for node in c.nodes:
        assert c.core(node).bucket_props(b"d")["rw"] == "all"
        assert (c.core(node).bucket_props(b"e")["rw"], c.core(node).bucket_props(b"e")["n_val"]) == (1, 2)
        assert c.core(node).bucket_props(b"other")["rw"] == "quorum"


def test_a_bad_rw_is_refused_and_changes_nothing() -> None:
    """rw is checked like r and w: an integer from 1 to n_val or one/quorum/all/default; anything else,
    or an n_val that an rw already set would exceed, is a bad request and every prop stays as it was."""
    c = SimCluster(3)
    assert isinstance(set_props(c, "n0", b"d", rw=3, allow_mult=False), Ok)
    c.settle(100)
    before = {n: c.core(n).bucket_props(b"d") for n in c.nodes}
    for bad in ({"rw": 4}, {"rw": 0}, {"rw": "most"}, {"rw": True}, {"rw": [1]}, {"n_val": 2}, {"rw": 2, "n_val": 1}):
        refused = set_props(c, "n0", b"d", **bad)
        assert isinstance(refused, Failure) and refused.kind == "bad_request", (bad, refused)
        assert "rw" in refused.reason, (bad, refused.reason)
    c.settle(100)
    assert {n: c.core(n).bucket_props(b"d") for n in c.nodes} == before
    for good in ("one", "quorum", "all", 1, 2):
        assert isinstance(set_props(c, "n0", b"d", rw=good), Ok), good
    c.settle(100)
    assert c.core("n2").bucket_props(b"d")["rw"] == 2


def test_a_quorum_prop_set_to_default_follows_the_node_default_and_requests_still_work() -> None:
    """The word default is accepted for rw (and for r and w): it stands for the node's own default, so the
    bucket shows that value and reads and writes are served rather than refused."""
    c = SimCluster(3, Settings(ring_size=16, r=1, w=3))
    assert isinstance(set_props(c, "n0", b"d", rw="default", r="default", w="default"), Ok)
    c.settle(100)
    props = c.core("n1").bucket_props(b"d")
    assert (props["rw"], props["r"], props["w"]) == ("quorum", 1, 3)
    assert isinstance(c.request("n1", ClientPut(b"d", b"k", None, Content(b"v"))), Ok)
    read = c.request("n2", ClientGet(b"d", b"k"))
    assert isinstance(read, Ok) and read.found is not None
    # A later change to another prop keeps "default" as set: it still follows the node's default.
    assert isinstance(set_props(c, "n0", b"d", allow_mult=False), Ok)
    assert dict(c.core("n0").cluster.bucket(b"d"))["r"] == "default"


def test_a_cluster_state_persisted_before_rw_existed_loads_with_rw_quorum() -> None:
    """A data directory whose cluster state was written by a release without rw (bucket props lacking
    it, in format 2, before bucket types) loads, keeps the props it has, and gives the bucket rw=quorum."""
    c = SimCluster(1, Settings(ring_size=16, n_val=1, r=1, w=1))
    c.stop("n0")
    disk = c.nodes["n0"].engine
    raw = disk.get("meta", META_CLUSTER)
    assert raw is not None
    state = msgpack.unpackb(raw, raw=False)
    assert state[0] == 4 and state[4] == [] and state[6] == [] and state[7] == []
    state = [2, *state[1:6]]
    # The bucket entry as such a release wrote it: [bucket, [[name, value], ...], version, author].
    state[4] = [[b"old", [["allow_mult", False], ["n_val", 1], ["r", "all"]], 3, "n0"]]
    disk.write([Op("meta", META_CLUSTER, msgpack.packb(state, use_bin_type=True))])
    c.restart("n0")
    props = c.core("n0").bucket_props(b"old")
    assert (props["rw"], props["r"], props["allow_mult"], props["n_val"]) == ("quorum", "all", False, 1)
    assert isinstance(set_props(c, "n0", b"old", rw="one"), Ok)
    assert c.core("n0").cluster.bucket_record(b"old") is not None
    assert c.core("n0").bucket_props(b"old")["rw"] == "one"
    assert c.core("n0").bucket_props(b"old")["r"] == "all"
