"""The partition-aware client's decisions without node processes: routing given a ring and failed nodes,
parsing the ring, bounded memory, and (against an in-process fake node) its refresh and time bounds."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from dynastore.client import ClientError, RingAwareClient
from dynastore.client.ring_aware import _behind
from dynastore.client.routing import Expiring, RingView, RingViewError, route
from dynastore.core.objects import Content
from dynastore.core.ring import Ring, claim
from dynastore.core.versions import Context, Dot, merge, update
from dynastore.localcluster import free_port

NODES = ("a", "b", "c", "d", "e")
RING = claim(dict.fromkeys(NODES, 1), 64, 3)


def key_whose_first_primary_is(ring: Ring, node: str, n_val: int = 3) -> bytes:
    for i in range(10_000):
        key = b"k%d" % i
        if route(ring, b"bucket", key, n_val).primaries[0] == node:
            return key
    raise AssertionError(f"no key has {node} first")


# --- Routing ---------------------------------------------------------------------------------------------------


def test_with_no_failed_node_a_key_goes_to_its_primaries_then_its_fallbacks_in_preference_list_order() -> None:
    """The client's placement is the nodes' placement: the same partition, primaries and walk."""
    for i in range(200):
        key = b"key%d" % i
        plan = route(RING, b"bucket", key, 3)
        partition = RING.partition_of(b"bucket", key)
        assert plan.partition == partition
        assert plan.primaries == RING.replicas(partition, 3)
        assert plan.order == tuple(node for _, node in RING.walk(partition))
        assert plan.order[:3] == plan.primaries and plan.order[3:] == plan.fallbacks


def test_a_failed_first_primary_is_tried_last_so_the_second_primary_comes_first() -> None:
    """A node that recently failed goes to the end, behind even the fallbacks, and is not dropped."""
    key = key_whose_first_primary_is(RING, "a")
    healthy = route(RING, b"bucket", key, 3)
    plan = route(RING, b"bucket", key, 3, failing={"a"})
    assert plan.order[0] == healthy.primaries[1]
    assert plan.order == (*healthy.order[1:], "a")
    assert plan.primaries == healthy.primaries, "failures change the order, never who the primaries are"


def test_when_every_primary_failed_the_fallbacks_come_first_then_the_primaries_in_their_order() -> None:
    """Sloppy quorum from the client's side: the first healthy fallback takes the request."""
    key = key_whose_first_primary_is(RING, "b")
    healthy = route(RING, b"bucket", key, 3)
    plan = route(RING, b"bucket", key, 3, failing=set(healthy.primaries))
    assert plan.order == healthy.fallbacks + healthy.primaries


def test_the_bucket_n_val_decides_where_primaries_end_but_not_the_order_of_the_walk() -> None:
    """n_val 1 has one primary and the rest are fallbacks; n_val above the member count has no fallbacks."""
    key = b"some key"
    one = route(RING, b"bucket", key, 1)
    three = route(RING, b"bucket", key, 3)
    many = route(RING, b"bucket", key, 7)
    assert len(one.primaries) == 1 and len(one.fallbacks) == len(NODES) - 1
    assert many.primaries == three.order and many.fallbacks == ()
    assert one.order == three.order == many.order


@given(
    members=st.integers(min_value=1, max_value=6),
    n_val=st.integers(min_value=1, max_value=5),
    key=st.binary(max_size=20),
    failing=st.sets(st.sampled_from([f"n{i}" for i in range(8)])),
)
def test_the_order_is_every_member_once_healthy_ones_first_each_group_in_walk_order(
    members: int, n_val: int, key: bytes, failing: set[str]
) -> None:
    """Whatever the ring and the failures, every member is tried exactly once; none is skipped."""
    ring = claim({f"n{i}": 1 for i in range(members)}, 16, 3)
    plan = route(ring, b"b", key, n_val, failing)
    walk = tuple(node for _, node in ring.walk(ring.partition_of(b"b", key)))
    assert sorted(plan.order) == sorted(walk)
    healthy = [node for node in walk if node not in failing]
    assert list(plan.order) == healthy + [node for node in walk if node in failing]
    assert plan.primaries == walk[:n_val]


# --- The ring as served -------------------------------------------------------------------------------------------


def ring_body(version: int = 1, owners: list[str] | None = None, **members: tuple[str, int]) -> dict[str, Any]:
    members = members or {"a": ("127.0.0.1", 8098), "b": ("127.0.0.1", 8099)}
    return {
        "cluster": "dynastore",
        "version": version,
        "ring_size": 8,
        "owners": owners or ["a", "b"] * 4,
        "members": {
            name: {"host": host, "http_port": port, "peer_port": port + 1000, "status": "valid"}
            for name, (host, port) in members.items()
        },
        "n_val": 3,
    }


def test_a_served_ring_becomes_a_view_with_a_url_per_member_and_a_wildcard_host_becomes_the_servers() -> None:
    """Members are addressed by their HTTP host and port; 0.0.0.0 means "where you reached me"."""
    view = RingView.from_json(
        ring_body(a=("0.0.0.0", 8098), b=("10.0.0.2", 8099), c=("::1", 8100)), "http://example:8098"
    )
    assert view.urls == {"a": "http://example:8098", "b": "http://10.0.0.2:8099", "c": "http://[::1]:8100"}
    assert (view.cluster, view.version, view.n_val, view.ring.owners) == ("dynastore", 1, 3, ("a", "b") * 4)


@pytest.mark.parametrize(
    "body",
    [
        [],
        {**ring_body(), "owners": ["a", "b", "a"]},
        {**ring_body(), "owners": []},
        {**ring_body(), "version": "1"},
        {**ring_body(), "n_val": 0},
        {**ring_body(), "members": {"a": {"host": "h", "http_port": 70000}}},
        {k: v for k, v in ring_body().items() if k != "cluster"},
    ],
)
def test_a_malformed_ring_is_refused_with_a_reason(body: Any) -> None:
    """A node (or not-a-node) serving nonsense at /ring never becomes the client's routing table."""
    with pytest.raises(RingViewError):
        RingView.from_json(body, "http://x:1")


def test_remembered_entries_vanish_after_their_ttl_and_memory_never_exceeds_its_bound() -> None:
    """Failed nodes and bucket n_vals are remembered for a bounded time, and in bounded number."""
    memory: Expiring[str, int] = Expiring(ttl_s=5.0, count_max=3)
    memory.set("a", 1, now_s=0.0)
    memory.set("b", 2, now_s=1.0)
    assert memory.get("a", now_s=4.9) == 1 and memory.get("a", now_s=5.0) is None
    memory.set("c", 3, now_s=2.0)
    memory.set("d", 4, now_s=3.0)
    assert len(memory) == 3 and memory.keys(now_s=3.0) == {"b", "c", "d"}, "the soonest to expire was evicted"
    memory.discard("c")
    assert memory.keys(now_s=6.5) == {"d"}


# --- Against an in-process fake node ---------------------------------------------------------------------------------


@dataclass
class FakeNode:
    """Serves /ring, bucket props and empty keys on loopback; records every request it answers."""

    ring: dict[str, Any] = field(default_factory=dict)
    n_val: int = 3
    seen: list[tuple[str, str]] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append((request.method, request.path))
        if request.path == "/ring":
            return web.json_response(self.ring)
        if request.path.endswith("/props"):
            return web.json_response({"props": {"n_val": self.n_val}})
        if request.method == "PUT":
            return web.Response(status=204, headers={"X-Riak-Vclock": "ctx"})
        return web.Response(status=404, text="not found\n")

    def count(self, path: str) -> int:
        return sum(1 for _, p in self.seen if p == path)


@asynccontextmanager
async def fake_node() -> AsyncIterator[FakeNode]:
    node = FakeNode()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", node.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    node.url = f"http://127.0.0.1:{port}"
    try:
        yield node
    finally:
        await runner.cleanup()


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


async def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.01)


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


def test_a_request_for_a_key_whose_first_primary_is_dead_is_answered_by_the_next_node_which_then_comes_first() -> None:
    """Fail over on a refused connection, and remember the failure so later requests skip the dead node."""

    async def scenario() -> None:
        async with fake_node() as alive:
            dead_port = free_port()
            alive_port = int(alive.url.rsplit(":", 1)[1])
            alive.ring = ring_body(a=("127.0.0.1", dead_port), b=("127.0.0.1", alive_port))
            view = RingView.from_json(alive.ring, alive.url)
            key = key_whose_first_primary_is(view.ring, "a")
            # The get goes to one node that coordinates it: two nodes cannot give a read of its own r=2.
            async with RingAwareClient(alive.url, coordinate_reads=False) as client:
                assert (await client.put("bucket", key, b"v")) == "ctx"
                assert client.failing_nodes() == {"a"}
                assert client.route_for("bucket", key).order == ("b", "a")
                assert not (await client.get("bucket", key)).exists
                key_path = f"/buckets/bucket/keys/{key.decode()}"
                assert [m for m, p in alive.seen if p == key_path] == ["PUT", "GET"]

    run(scenario)


def test_the_ring_is_refetched_once_older_than_its_max_age_and_not_before() -> None:
    """Staleness is bounded: a request on an old ring starts one background fetch; a young ring is reused."""

    async def scenario() -> None:
        async with fake_node() as node:
            port = int(node.url.rsplit(":", 1)[1])
            node.ring = ring_body(1, a=("127.0.0.1", port), b=("127.0.0.1", port))
            clock = FakeClock()
            async with RingAwareClient(node.url, ring_max_age_s=5.0, ring_refresh_gap_s=1.0, clock=clock) as client:
                await client.get("bucket", "k")
                await client.get("bucket", "k2")
                clock.now_s += 4.9
                await client.get("bucket", "k3")
                assert node.count("/ring") == 1
                assert node.count("/buckets/bucket/props") == 1, "the bucket's n_val is learned once"

                node.ring = ring_body(2, owners=["b", "a"] * 4, a=("127.0.0.1", port), b=("127.0.0.1", port))
                clock.now_s += 0.2
                await client.get("bucket", "k4")
                await until(lambda: client.ring_view is not None and client.ring_view.version == 2)
                assert node.count("/ring") == 2
                assert client.ring_view is not None and client.ring_view.ring.owners == ("b", "a") * 4

    run(scenario)


def test_a_seed_that_refuses_connections_is_skipped_and_a_later_seed_provides_the_ring() -> None:
    """Any seed will do: the client asks each in turn for the ring."""

    async def scenario() -> None:
        async with fake_node() as node:
            port = int(node.url.rsplit(":", 1)[1])
            node.ring = ring_body(a=("127.0.0.1", port), b=("127.0.0.1", port))
            async with RingAwareClient([f"http://127.0.0.1:{free_port()}", node.url]) as client:
                view = await client.refresh()
                assert view.urls["a"] == node.url

    run(scenario)


def test_every_call_ends_within_its_timeout_even_when_a_node_accepts_connections_and_never_answers() -> None:
    """Never blocks forever: a silent node costs at most timeout_s, then a ClientError."""

    async def scenario() -> None:
        with socket.socket() as silent:
            silent.bind(("127.0.0.1", 0))
            silent.listen(16)
            url = f"http://127.0.0.1:{silent.getsockname()[1]}"
            async with RingAwareClient(url, timeout_s=0.5, attempt_timeout_s=0.5, connect_timeout_s=0.2) as client:
                started = time.monotonic()
                with pytest.raises(ClientError) as raised:
                    await client.get("bucket", "k")
                assert raised.value.status == 0
                assert time.monotonic() - started < 5.0

    run(scenario)


def test_no_node_at_all_is_a_clear_client_error_naming_what_was_tried() -> None:
    """Seeds that all refuse connections give status 0 and a reason, not a hang or a traceback."""

    async def scenario() -> None:
        dead = f"http://127.0.0.1:{free_port()}"
        async with RingAwareClient(dead, timeout_s=2.0) as client:
            with pytest.raises(ClientError) as raised:
                await client.put("bucket", "k", b"v")
            assert raised.value.status == 0 and dead in raised.value.reason
            assert client.last_refresh_error is not None and dead in client.last_refresh_error

    run(scenario)


def test_a_replica_is_repaired_only_for_versions_it_misses_that_are_older_than_the_grace() -> None:
    """A client-coordinated read repairs a replica that misses a version written before the grace, not
    one missing only a version written since (its coordinator is still sending it there), nor one that
    holds, or has seen superseded, everything merged."""
    old = update(None, Context(), Dot(b"a", 1), Content(b"v1", last_modified_us=1_000_000_000), 0)
    new = update(old, old.context(), Dot(b"a", 2), Content(b"v2", last_modified_us=1_009_000_000), 0)
    other = update(None, Context(), Dot(b"b", 1), Content(b"w", last_modified_us=1_009_000_000), 0)
    merged = merge(new, other)
    assert _behind(None, old, written_before_s=1_005.0), "a replica with no copy misses the old v1"
    assert not _behind(None, merged, written_before_s=1_005.0), "all merged holds was written since"
    assert not _behind(old, merged, written_before_s=1_005.0), "it misses only what was written since"
    assert _behind(old, merged, written_before_s=1_010.0)
    assert not _behind(merged, merged, written_before_s=1_010.0)
