"""The stores the YCSB driver can load: one client per driver worker, each reading and writing keys.

A `Target` is opened inside a driver process from an `Endpoint` (what kind of store, at which
addresses), which is plain data so that it can be handed to driver processes. Every target's client
does the same two things, `read` (True when the record was there) and `update` (store a value,
acknowledged by the store's own durability rules); a load's insert is an update of a new key.

Requests are spread over the nodes of replicated stores: client i of a process talks to node
i mod nodes, so each node coordinates its share, except for `dynastore-ring`, whose client sends each
request straight to a node that holds the key (Dynamo's client-driven coordination).

dynastore keeps sibling versions of concurrent writes (allow_mult), so an update must carry the
context of the version it replaces, or every update of a hot key would add a sibling. The driver
therefore remembers, per process, the context each key last came back with (from a read or a
write) and sends it with the next update, as a Dynamo client does. A read that found siblings is
counted, not an error; its merged context lets the next update resolve them.

Third-party clients (redis) are imported only when their target is opened, so the driver runs
without them for the targets that do not need them.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote

import aiohttp

from dynastore.client.http import Fetched, HttpClient
from dynastore.client.ring_aware import RingAwareClient
from dynastore.net.tls import http_client_context

if TYPE_CHECKING:
    from dynastore.client.pb import PbClient

# The table YCSB loads; dynastore stores it as one bucket.
BUCKET = "usertable"

NOOP = "noop"
DYNASTORE_HTTP = "dynastore-http"
DYNASTORE_RING = "dynastore-ring"
DYNASTORE_HTTP_BUFFERED = "dynastore-http-buffered"
# dynastore through Riak's Protocol Buffers API (one connection per worker, spread over the nodes).
DYNASTORE_PB = "dynastore-pb"
ETCD = "etcd"
REDIS = "redis"
PYSYNCOBJ = "pysyncobj"

DYNASTORE_TARGETS = (DYNASTORE_HTTP, DYNASTORE_RING, DYNASTORE_HTTP_BUFFERED, DYNASTORE_PB)
# The order `--target all` runs them in: the driver's own ceiling first, then the peers, then dynastore.
ALL_TARGETS = (NOOP, REDIS, ETCD, PYSYNCOBJ, DYNASTORE_HTTP, DYNASTORE_PB, DYNASTORE_RING)

# Contexts remembered per driver process; far above any record count a run on one machine loads.
CONTEXTS_REMEMBERED_MAX = 1_000_000
REQUEST_TIMEOUT_S = 10.0


class TargetError(Exception):
    """A store answered a request with an error (the driver counts it, and the run goes on)."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a started store listens: its kind (a target name) and each node's address."""

    kind: str
    addresses: tuple[str, ...]


class Client(Protocol):
    async def read(self, key: str) -> bool: ...

    async def update(self, key: str, value: bytes) -> None: ...


class Target(Protocol):
    def client(self, worker: int) -> Client: ...

    def counters(self) -> dict[str, int]: ...

    async def close(self) -> None: ...


async def open_target(endpoint: Endpoint, concurrency: int) -> Target:
    """A connected target for `concurrency` workers of one driver process."""
    kind = endpoint.kind
    if kind == NOOP:
        return NoopTarget()
    if kind in (DYNASTORE_HTTP, DYNASTORE_HTTP_BUFFERED, DYNASTORE_RING, DYNASTORE_PB):
        # A cluster with security on: the driver's user from the environment (as the CLI takes it);
        # https:// nodes are verified against DYNASTORE_CA.
        user, password = os.environ.get("DYNASTORE_USER"), os.environ.get("DYNASTORE_PASSWORD", "")
        auth = (user, password) if user else None
        ca = os.environ.get("DYNASTORE_CA")
        ssl_context = http_client_context(ca) if ca else None
        if kind == DYNASTORE_PB:
            # The addresses are host:pb-port; PB is one request at a time per connection.
            return DynastoreTarget(
                [
                    _pb_client(endpoint.addresses[i % len(endpoint.addresses)], auth, ssl_context)
                    for i in range(max(1, concurrency))
                ]
            )
        if kind == DYNASTORE_RING:
            aware = RingAwareClient(
                list(endpoint.addresses), timeout_s=REQUEST_TIMEOUT_S, auth=auth, ssl_context=ssl_context
            )
            return DynastoreTarget([aware])
        return DynastoreTarget(
            [
                HttpClient(url, timeout_s=REQUEST_TIMEOUT_S, auth=auth, ssl_context=ssl_context)
                for url in endpoint.addresses
            ]
        )
    if kind == ETCD:
        return EtcdTarget(endpoint.addresses, concurrency)
    if kind == PYSYNCOBJ:
        return PySyncObjTarget(endpoint.addresses, concurrency)
    if kind == REDIS:
        return RedisTarget(endpoint.addresses[0], concurrency)
    raise ValueError(f"unknown target {kind!r}")


# --- noop ------------------------------------------------------------------------------------------------


class NoopTarget:
    """Answers at once, after one trip through the event loop: what remains is the driver's own cost."""

    def client(self, worker: int) -> Client:
        return _NoopClient()

    def counters(self) -> dict[str, int]:
        return {}

    async def close(self) -> None:
        return None


class _NoopClient:
    async def read(self, key: str) -> bool:
        # One yield, as a real request's await would, so that workers take turns on the loop.
        await asyncio.sleep(0)
        return True

    async def update(self, key: str, value: bytes) -> None:
        await asyncio.sleep(0)


# --- dynastore -------------------------------------------------------------------------------------------


class _KeyValue(Protocol):
    async def get(self, bucket: str | bytes, key: str | bytes) -> Fetched: ...

    async def put(
        self, bucket: str | bytes, key: str | bytes, data: bytes, *, context: str | None = None
    ) -> str | None: ...

    async def close(self) -> None: ...


def _pb_client(address: str, auth: tuple[str, str] | None, ssl_context: Any) -> PbClient:
    # Imported here, as the peers' clients are: driver processes of other targets never load protobuf
    # (a spawned driver imports everything before it says it is ready).
    from dynastore.client.pb import PbClient

    host, _, port = address.rpartition(":")
    return PbClient(host, int(port), timeout_s=REQUEST_TIMEOUT_S, auth=auth, ssl_context=ssl_context)


class DynastoreTarget:
    """dynastore through `HttpClient` (one per node, workers spread over them), one `RingAwareClient`,
    or `PbClient` (one per worker)."""

    def __init__(self, stores: list[HttpClient] | list[RingAwareClient] | list[PbClient]) -> None:
        assert stores, "at least one client is needed"
        self._stores: list[_KeyValue] = list(stores)
        self._contexts: dict[str, str] = {}
        self._counts = {"reads_with_siblings": 0}

    def client(self, worker: int) -> Client:
        return _DynastoreClient(self._stores[worker % len(self._stores)], self._contexts, self._counts)

    def counters(self) -> dict[str, int]:
        return dict(self._counts)

    async def close(self) -> None:
        for store in self._stores:
            await store.close()


class _DynastoreClient:
    def __init__(self, store: _KeyValue, contexts: dict[str, str], counts: dict[str, int]) -> None:
        self._store = store
        self._contexts = contexts
        self._counts = counts

    def _remember(self, key: str, context: str | None) -> None:
        if context is None:
            return
        if len(self._contexts) >= CONTEXTS_REMEMBERED_MAX and key not in self._contexts:
            # Forgetting costs at most one sibling per forgotten key, resolved by its next read.
            self._contexts.clear()
        self._contexts[key] = context

    async def read(self, key: str) -> bool:
        fetched = await self._store.get(BUCKET, key)
        self._remember(key, fetched.context)
        if len(fetched.values) > 1:
            self._counts["reads_with_siblings"] += 1
        return fetched.exists

    async def update(self, key: str, value: bytes) -> None:
        self._remember(key, await self._store.put(BUCKET, key, value, context=self._contexts.get(key)))


# --- HTTP peers: etcd (its JSON gateway) and the pysyncobj server ------------------------------------------


def _session(concurrency: int) -> aiohttp.ClientSession:
    # One connection per worker at most, all kept open: the pool never makes a request wait.
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=max(1, concurrency)),
        timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
    )


class _HttpPeer:
    def __init__(self, urls: tuple[str, ...], concurrency: int) -> None:
        assert urls, "at least one node address is needed"
        self.urls = tuple(url.rstrip("/") for url in urls)
        self.session = _session(concurrency)

    def counters(self) -> dict[str, int]:
        return {}

    async def close(self) -> None:
        await self.session.close()


def _b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


class EtcdTarget(_HttpPeer):
    """etcd v3 through its gRPC-JSON gateway (`/v3/kv/range`, `/v3/kv/put`, base64 keys and values).

    Reads are etcd's default, linearizable (each one confirmed with the leader through ReadIndex).
    """

    def client(self, worker: int) -> Client:
        return _EtcdClient(self.session, self.urls[worker % len(self.urls)])


class _EtcdClient:
    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self._session = session
        self._range = url + "/v3/kv/range"
        self._put = url + "/v3/kv/put"

    async def _post(self, url: str, body: Mapping[str, str]) -> Any:
        async with self._session.post(url, data=json.dumps(body), headers={"Content-Type": "application/json"}) as r:
            payload = await r.read()
            if r.status != 200:
                raise TargetError(f"etcd {r.status}: {payload[:200].decode(errors='replace')}")
        return json.loads(payload)

    async def read(self, key: str) -> bool:
        answer = await self._post(self._range, {"key": _b64(key)})
        kvs = answer.get("kvs") or []
        # Decoded, so that a read costs the driver what reading a value costs with every other target.
        return bool(kvs) and bool(base64.b64decode(kvs[0].get("value", "")))

    async def update(self, key: str, value: bytes) -> None:
        await self._post(self._put, {"key": _b64(key), "value": _b64(value)})


class PySyncObjTarget(_HttpPeer):
    """The pysyncobj server of `ycsb_pysyncobj_server` (GET and PUT /kv/KEY)."""

    def client(self, worker: int) -> Client:
        return _PySyncObjClient(self.session, self.urls[worker % len(self.urls)])


class _PySyncObjClient:
    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self._session = session
        self._base = url + "/kv/"

    async def read(self, key: str) -> bool:
        async with self._session.get(self._base + quote(key, safe="")) as r:
            body = await r.read()
            if r.status == 404:
                return False
            if r.status != 200:
                raise TargetError(f"pysyncobj {r.status}: {body[:200].decode(errors='replace')}")
        return True

    async def update(self, key: str, value: bytes) -> None:
        async with self._session.put(self._base + quote(key, safe=""), data=value) as r:
            body = await r.read()
            if r.status != 204:
                raise TargetError(f"pysyncobj {r.status}: {body[:200].decode(errors='replace')}")


# --- redis -------------------------------------------------------------------------------------------------


class RedisTarget:
    """One redis server through `redis.asyncio`, one pooled connection per worker."""

    def __init__(self, address: str, concurrency: int) -> None:
        import redis.asyncio

        host, _, port = address.rpartition(":")
        self._redis = redis.asyncio.Redis(
            host=host, port=int(port), max_connections=max(1, concurrency), socket_timeout=REQUEST_TIMEOUT_S
        )

    def client(self, worker: int) -> Client:
        return _RedisClient(self._redis)

    def counters(self) -> dict[str, int]:
        return {}

    async def close(self) -> None:
        await self._redis.aclose()


class _RedisClient:
    def __init__(self, redis: Any) -> None:
        self._redis = redis

    async def read(self, key: str) -> bool:
        value: bytes | None = await self._redis.get(key)
        return value is not None

    async def update(self, key: str, value: bytes) -> None:
        await self._redis.set(key, value)
