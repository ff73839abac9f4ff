"""Both Python clients against real node processes: the plain one (any node coordinates) and the
partition-aware one (each request goes straight to a node of its key's preference list)."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeAlias

import pytest
from http_util import call

from dynastore.client import HttpClient, RingAwareClient, Value
from dynastore.client.http import ClientError
from dynastore.core.ring import Ring
from dynastore.localcluster import LocalCluster, NodeProc, http_json

MakeCluster = Callable[..., LocalCluster]
Client: TypeAlias = HttpClient | RingAwareClient


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


def counters(nodes: list[NodeProc]) -> dict[str, tuple[int, int]]:
    """(coordinated_puts_total, coord_redirs_total) of every given node, by name."""
    out = {}
    for node in nodes:
        stats = http_json(node.url + "/stats", timeout_s=5.0)
        out[node.name] = (stats["coordinated_puts_total"], stats["coord_redirs_total"])
    return out


def coordinated_since(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> Counter[str]:
    return Counter({name: after[name][0] - before[name][0] for name in after if after[name][0] != before[name][0]})


def redirects_since(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> int:
    return sum(after[name][1] - before[name][1] for name in after)


def server_primaries(node: NodeProc, bucket: str, key: str) -> tuple[str, ...]:
    status, _, body = call("GET", f"{node.url}/buckets/{bucket}/keys/{key}/preflist")
    assert status == 200, body
    return tuple(entry["node"] for entry in json.loads(body)["preflist"] if entry["primary"])


async def until(what: str, condition: Callable[[], Awaitable[bool]], timeout_s: float) -> None:
    """Re-check `condition` until it holds; fail after `timeout_s` naming what was awaited."""
    try:
        async with asyncio.timeout(timeout_s):
            while not await condition():
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}") from None


def joined(values: tuple[Value, ...]) -> Value:
    return Value(b"+".join(sorted(v.data for v in values)), "text/plain")


def test_both_clients_round_trip_values_contexts_deletes_and_resolve_siblings(make_cluster: MakeCluster) -> None:
    """get/put/delete with contexts and metadata, siblings from writes on one stale context, and the
    resolver's write-back behave the same through the plain client and the ring-aware client."""
    cluster = make_cluster(3)

    async def exercise(client: Client, bucket: str) -> None:
        assert not (await client.get(bucket, "k")).exists
        context = await client.put(bucket, "k", b"one", content_type="text/plain", usermeta={"colour": "blue"})
        assert context
        fetched = await client.get(bucket, "k")
        assert (fetched.value.data, fetched.value.content_type, dict(fetched.value.usermeta)) == (
            b"one",
            "text/plain",
            {"colour": "blue"},
        )

        await client.put(bucket, "k", b"left", context=fetched.context)
        await client.put(bucket, "k", b"right", context=fetched.context)
        siblings = await client.get(bucket, "k")
        assert sorted(v.data for v in siblings.values) == [b"left", b"right"]
        with pytest.raises(ClientError) as raised:
            _ = siblings.value
        assert raised.value.status == 300, "two siblings have no single value"

        client.resolver = joined
        resolved = await client.get(bucket, "k")
        assert [v.data for v in resolved.values] == [b"left+right"]
        client.resolver = None
        assert [v.data for v in (await client.get(bucket, "k")).values] == [b"left+right"], "resolution was stored"

        assert await client.delete(bucket, "k") is True
        assert not (await client.get(bucket, "k")).exists
        assert await client.delete(bucket, "never-written") is False

    async def scenario() -> None:
        async with HttpClient([n.url for n in cluster.nodes]) as plain:
            await exercise(plain, "plain")
        async with RingAwareClient(cluster[1].url) as aware:
            await exercise(aware, "aware")

    run(scenario)


def test_ring_aware_writes_are_coordinated_by_a_primary_while_plain_writes_through_a_non_owner_are_redirected(
    make_cluster: MakeCluster,
) -> None:
    """In a bucket with n_val 1, the plain client's writes through node0 are forwarded for every key
    node0 does not own; the ring-aware client's writes and deletes reach each key's owner directly,
    so no node redirects anything, and it learned the bucket's n_val to know so."""
    cluster = make_cluster(3)
    props = json.dumps({"props": {"n_val": 1}}).encode()
    status, _, body = call("PUT", f"{cluster[0].url}/buckets/single/props", props, {"Content-Type": "application/json"})
    assert status == 204, body
    cluster.wait(
        lambda: all(http_json(f"{n.url}/buckets/single/props")["props"]["n_val"] == 1 for n in cluster.nodes),
        15,
        "the bucket's n_val to spread",
    )
    ring = Ring(tuple(http_json(cluster[0].url + "/ring")["owners"]))
    keys = [f"k{i}" for i in range(30)]
    owner = {k: ring.replicas(ring.partition_of(b"single", k.encode()), 1)[0] for k in keys}
    entry = cluster[0]
    assert {o for o in owner.values() if o != entry.name}, "some key must be owned elsewhere"

    async def scenario() -> None:
        before = counters(cluster.nodes)
        async with HttpClient(entry.url) as plain:
            for k in keys:
                await plain.put("single", k, b"plain")
        after_plain = counters(cluster.nodes)
        assert redirects_since(before, after_plain) == sum(1 for k in keys if owner[k] != entry.name)
        assert coordinated_since(before, after_plain) == Counter(owner.values())

        async with RingAwareClient(entry.url) as aware:
            for k in keys:
                fetched = await aware.get("single", k)
                await aware.put("single", k, b"aware", context=fetched.context)
                assert aware.route_for("single", k).primaries == (owner[k],)
            for k in keys[:10]:
                assert await aware.delete("single", k)
        after_aware = counters(cluster.nodes)
        assert redirects_since(after_plain, after_aware) == 0
        assert coordinated_since(after_plain, after_aware) == Counter(owner.values()) + Counter(
            owner[k] for k in keys[:10]
        )

    run(scenario)


def test_the_ring_aware_client_fails_over_when_its_seed_node_is_killed_and_refreshes_from_the_survivors(
    make_cluster: MakeCluster,
) -> None:
    """SIGKILL node0, the client's only seed and the first primary of the key: get, put and delete
    still succeed through the key's next primary (which coordinates: no redirect), the dead node is
    tried last from then on, and the ring is still fetched, from the members the client learned."""
    cluster = make_cluster(3)
    victim = cluster[0]
    survivors = cluster.nodes[1:]

    async def scenario() -> None:
        async with RingAwareClient(victim.url) as client:
            await client.refresh()
            key = next(f"k{i}" for i in range(1000) if client.route_for("b", f"k{i}").primaries[0] == victim.name)
            await client.put("b", key, b"before")
            await asyncio.to_thread(victim.kill)
            before = counters(survivors)

            fetched = await client.get("b", key)
            assert fetched.value.data == b"before"
            assert client.failing_nodes() == {victim.name}
            assert client.route_for("b", key).order[-1] == victim.name
            await client.put("b", key, b"after", context=fetched.context)
            assert (await client.get("b", key)).value.data == b"after"
            assert await client.delete("b", key)
            assert not (await client.get("b", key)).exists

            after = counters(survivors)
            assert redirects_since(before, after) == 0
            assert sum(coordinated_since(before, after).values()) == 2, "the put and the delete"
            view = await client.refresh()
            assert view.urls[victim.name] == victim.url, "the ring still names the dead node: it was not removed"

    run(scenario)


def test_the_ring_aware_client_routes_by_the_new_ring_once_a_fourth_node_has_joined(make_cluster: MakeCluster) -> None:
    """A node joins; once the cluster is ready, the client's ring (older than ring_max_age_s) is
    refreshed by ordinary requests, it places keys where the nodes do, and writes for keys the
    newcomer now owns first are coordinated by the newcomer without a redirect."""
    cluster = make_cluster(3)

    async def scenario() -> None:
        async with RingAwareClient(cluster[0].url, ring_max_age_s=1.0, ring_refresh_gap_s=0.2) as client:
            await client.put("b", "warm", b"x")
            assert client.ring_view is not None and "node3" not in client.ring_view.ring.members

            newcomer = cluster.add_node(seeds=(cluster[0].peer_address,))
            newcomer.start()
            await asyncio.to_thread(cluster.wait_ready, 90)

            async def client_sees_the_cluster_ring() -> bool:
                await client.get("b", "warm")
                versions = {http_json(n.url + "/stats")["ring_version"] for n in cluster.nodes}
                view = client.ring_view
                return view is not None and versions == {view.version} and newcomer.name in view.ring.members

            await until("the client to route by the ring every node holds", client_sees_the_cluster_ring, 30)

            keys = [f"k{i}" for i in range(2000) if client.route_for("b", f"k{i}").primaries[0] == newcomer.name]
            keys = keys[:10]
            assert len(keys) == 10
            for k in keys[:3]:
                assert server_primaries(cluster[1], "b", k) == client.route_for("b", k).primaries
            before = counters(cluster.nodes)
            for k in keys:
                await client.put("b", k, b"v")
            after = counters(cluster.nodes)
            assert redirects_since(before, after) == 0
            assert coordinated_since(before, after) == Counter({newcomer.name: len(keys)})

    run(scenario)


def test_both_clients_update_read_and_delete_data_types_and_the_ring_aware_one_reaches_a_replica(
    make_cluster: MakeCluster,
) -> None:
    """In a counter type with n_val 1, the ring-aware client's data-type updates reach each key's owner
    directly (it hashes the type with the bucket and learns the type's n_val), so nothing is
    redirected; the plain client's go through any node. Both read, update with returnbody and delete."""
    cluster = make_cluster(3)
    url = cluster[0].url
    for target, body in (
        ("/admin/bucket-types/ones", json.dumps({"props": {"datatype": "counter", "n_val": 1}}).encode()),
        ("/admin/bucket-types/ones/activate", b""),
    ):
        status, _, answer = call("POST", url + target, body, {"Content-Type": "application/json"})
        assert status == 200, answer
    cluster.wait(
        lambda: all(
            http_json(f"{n.url}/types/ones/buckets/b/props")["props"].get("datatype") == "counter"
            and http_json(f"{n.url}/types/ones/props")["props"]["active"]
            for n in cluster.nodes
        ),
        15,
        "the type on every node",
    )
    keys = [f"k{i}" for i in range(20)]

    async def scenario() -> None:
        before = counters(cluster.nodes)
        async with RingAwareClient(cluster[0].url) as aware:
            for k in keys:
                await aware.dt_update("ones", "b", k, {"increment": 2})
            _, found = await aware.dt_update("ones", "b", keys[0], {"increment": 1}, return_body=True)
            assert found is not None and found.value == 3
            fetched = await aware.dt_get("ones", "b", keys[1])
            assert fetched is not None and (fetched.type, fetched.value) == ("counter", 2)
            assert await aware.dt_delete("ones", "b", keys[2])
            assert await aware.dt_get("ones", "b", keys[2]) is None
        after = counters(cluster.nodes)
        assert redirects_since(before, after) == 0
        async with HttpClient(cluster[0].url) as plain:
            for k in keys:
                await plain.dt_update("ones", "b", k, {"increment": 1})
            assert (await plain.dt_get("ones", "b", keys[3])).value == 3  # type: ignore[union-attr]
            assert await plain.dt_get("ones", "b", "absent") is None
            with pytest.raises(ClientError) as err:
                await plain.dt_update("ones", "b", keys[3], {"add": "x"})
            assert err.value.status == 400
        assert redirects_since(after, counters(cluster.nodes)) > 0

    run(scenario)


def gets_coordinated(nodes: list[NodeProc]) -> int:
    return sum(http_json(node.url + "/stats", timeout_s=5.0)["node_gets_total"] for node in nodes)


def test_the_ring_aware_client_coordinates_reads_itself_and_its_merged_context_is_verified_by_the_writer(
    make_cluster: MakeCluster,
) -> None:
    """A get asks the replicas for their own copies and merges R of them: no node coordinates it. Its
    context is the list of the copies' signed contexts; the write on it goes to the replica that
    answered first, which verifies each context and joins them (the write replaces what was read, no
    sibling), and an altered one is refused. Concurrent writes read this way come back as siblings. A
    replica that missed a write is repaired by the read that finds it behind."""
    cluster = make_cluster(3, "hinted_handoff_enabled=false", "anti_entropy_enabled=false")

    async def scenario() -> None:
        async with HttpClient([n.url for n in cluster.nodes]) as plain, RingAwareClient(cluster[0].url) as aware:
            await plain.put("b", "k", b"one", w="all")
            before = gets_coordinated(cluster.nodes)
            fetched = await aware.get("b", "k")
            assert [v.data for v in fetched.values] == [b"one"]
            assert gets_coordinated(cluster.nodes) == before, "no node coordinated the read"
            assert fetched.context is not None
            contexts = fetched.context.split(",")
            assert 2 <= len(contexts) <= 3, contexts

            coordinated = counters(cluster.nodes)
            await aware.put("b", "k", b"two", context=fetched.context)
            assert redirects_since(coordinated, counters(cluster.nodes)) == 0, "sent to the fastest replica"
            assert sum(coordinated_since(coordinated, counters(cluster.nodes)).values()) == 1
            assert [v.data for v in (await aware.get("b", "k", r="all")).values] == [b"two"], "no sibling"

            forged = contexts[0] + "," + contexts[1][:-4] + ("AAAA" if not contexts[1].endswith("AAAA") else "BBBB")
            with pytest.raises(ClientError) as raised:
                await aware.put("b", "k", b"forged", context=forged)
            assert raised.value.status == 400 and "vclock" in raised.value.reason

            assert call("GET", f"{cluster[0].url}/buckets/b/keys/k?replica=maybe")[0] == 400
            too_many = ",".join([contexts[0]] * 65)
            status, _, body = call("PUT", f"{cluster[0].url}/buckets/b/keys/k", b"x", {"X-Riak-Vclock": too_many})
            assert status == 400 and b"n_val_max" in body, body

            stale = await aware.get("b", "k")
            await aware.put("b", "k", b"left", context=stale.context)
            await aware.put("b", "k", b"right", context=stale.context)
            assert sorted(v.data for v in (await aware.get("b", "k", r="all")).values) == [b"left", b"right"]

            # A bucket that keeps one value: what the client merges is resolved as the nodes resolve it.
            props = json.dumps({"props": {"allow_mult": False}}).encode()
            status, _, body = call(
                "PUT", f"{cluster[0].url}/buckets/one/props", props, {"Content-Type": "application/json"}
            )
            assert status == 204, body
            await plain.put("one", "k", b"first", w="all")
            stale = await aware.get("one", "k")
            await aware.put("one", "k", b"second", context=stale.context)
            await plain.put("one", "k", b"third", context=stale.context, w="all")
            assert len((await aware.get("one", "k", r="all")).values) == 1

            # node2 misses a write (it is stopped), then comes back: the read that sees it behind repairs it.
            cluster[2].stop()
            await plain.put("b", "k2", b"missed", w=2, urls=[cluster[0].url])
            written = time.time()
            cluster[2].start()
            cluster.wait_ready(60)
            await aware.refresh()
            # A version younger than the client's repair grace is taken to be on its way (not repaired).
            await asyncio.sleep(max(0.0, written + aware.repair_grace_s - time.time()))
            assert [v.data for v in (await aware.get("b", "k2", r="all")).values] == [b"missed"]

            async def repaired() -> bool:
                status, _, _ = call("GET", f"{cluster[2].url}/buckets/b/keys/k2?replica=true")
                return status == 200

            await until("read repair of node2", repaired, 15)
            assert aware.repairs_started >= 1

    run(scenario)
