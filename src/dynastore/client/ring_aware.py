"""A partition-aware client: Dynamo's client-driven coordination, asynchronous, on top of `HttpClient`.

Reads are coordinated by the client itself (the Dynamo paper's section 6.4): it asks the first N
reachable nodes of the key's preference list for their own copies (`GET ...?replica=true`), answers
after R of them, and merges them with the very function the nodes merge replicas with (so concurrent
writes come back as siblings). The context it returns is the comma-separated list of the signed
contexts of the copies it merged, the first one's replica having answered first; the client holds no
cluster key, so it never makes a context: the node that takes the following write verifies every one
and joins them, which is the context of the merged object. A replica that answered something older
than the merge (or nothing) is repaired by one ordinary read sent to the fastest replica, which
coordinates that read and its read repair.

Writes are sent to a replica, which coordinates them: first to the replica that answered the
preceding read first (named in the context), then the key's other nodes. A client cannot coordinate a
write: a new version needs a dot drawn from a node's actor, whose counters only that node may hand
out (a crash-safe lease on its disk), and its context is authenticated with the cluster key.

Theory of operation
-------------------
- The client holds a `RingView`, fetched with `GET /ring` from its seeds or from any member it has
  learned of, and the n_val of every bucket it has used (`GET /buckets/B/props`). Placement is the
  pure `routing.route`, built on the very functions the nodes use; nothing is hashed here.
- A request tries the key's primaries in preference-list order, then its fallbacks. A node that
  refused a connection or timed out is remembered for `failed_node_ttl_s` and tried last meanwhile;
  a node that answers is forgotten at once.
- Routing by a stale ring is safe, only slower: every node accepts every request and forwards a
  write to a node that holds the key. So staleness is repaired in the background, never waited for:
  a ring older than `ring_max_age_s` is refetched while the request proceeds with the ring held, and
  so is the ring after a connection failure or a 503 (members may have changed). Such background
  fetches start at most once per `ring_refresh_gap_s`, so a dead node cannot cause a refresh storm.
  Only two cases wait for a fetch: the first request (there is no ring yet) and a request that no
  node of the ring answered (the ring may name nodes that are all gone); the latter is retried once,
  and only if the fresh ring places the key differently.
- Every public call completes or raises `ClientError` within `timeout_s`, whatever the nodes do.
  Each try of one node is bounded by `attempt_timeout_s` (just above the nodes' own 5 s request
  timeout, so a slow quorum is not mistaken for a dead node) and its connection set-up by
  `connect_timeout_s`.

The HTTP, context and multipart handling, and sibling resolution, are `HttpClient`'s; this class
only chooses the `urls=` of each call and listens to how each try went.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import math
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import quote

from dynastore.client.http import ClientError, DataType, Fetched, HttpClient, Resolver, Value, _path
from dynastore.client.routing import Expiring, RingView, RingViewError, Route, route
from dynastore.core import buckettypes, objects
from dynastore.core.context import coordinator_hint
from dynastore.core.objects import Content, CorruptCopy, Object
from dynastore.core.quorum import QuorumError, resolve
from dynastore.core.versions import Dot, merge

T = TypeVar("T")

# Answers after which the ring is worth a fresh look: a node could not gather a quorum, which is
# what a node sees when members have left or moved.
RING_EPOCH_HEADER = "X-Dynastore-Ring"
_STATUSES_SUGGESTING_RING_MOVED = frozenset({503})
# What a replica read answers (api/http.py).
REPLICA_CONTENT_TYPE = "application/x-dynastore-object"
NODE_HEADER = "X-Dynastore-Node"


ONE_VALUE_HEADER = "X-Dynastore-One-Value"


class _Copy:
    """One replica's answer to a replica read: its copy (None: it holds none), that copy's context, and
    whether the bucket keeps one value per key (objects.resolve, as the nodes merge such copies)."""

    __slots__ = ("context", "node", "obj", "one_value")

    def __init__(self, node: str, obj: Object | None, context: str | None, one_value: bool = False) -> None:
        self.node = node
        self.obj = obj
        self.context = context
        self.one_value = one_value


class RingAwareClient:
    """get / put / delete like `HttpClient`, each sent to the first reachable node of the key's preference list."""

    def __init__(
        self,
        seeds: str | list[str],
        *,
        timeout_s: float = 10.0,
        attempt_timeout_s: float = 6.0,
        connect_timeout_s: float = 1.0,
        resolver: Resolver | None = None,
        ring_max_age_s: float = 5.0,
        ring_refresh_gap_s: float = 0.5,
        failed_node_ttl_s: float = 5.0,
        bucket_props_max_age_s: float = 30.0,
        buckets_cached_max: int = 1024,
        nodes_remembered_max: int = 1024,
        clock: Callable[[], float] = time.monotonic,
        ssl_context: ssl.SSLContext | None = None,
        auth: tuple[str, str] | None = None,
        coordinate_reads: bool = True,
        background_max: int = 256,
        repair_grace_s: float = 1.0,
    ) -> None:
        self.seeds = [_normal(url) for url in ([seeds] if isinstance(seeds, str) else seeds)]
        if not self.seeds:
            raise ValueError("at least one seed URL is needed")
        if not (timeout_s > 0 and 0 < connect_timeout_s <= attempt_timeout_s):
            raise ValueError("timeouts must be positive, and connect_timeout_s at most attempt_timeout_s")
        if not 0 < ring_refresh_gap_s <= ring_max_age_s:
            raise ValueError("ring_refresh_gap_s must be positive and at most ring_max_age_s")
        self.timeout_s = timeout_s
        # True: reads are coordinated here (the module docstring); False: sent to a replica that does.
        self.coordinate_reads = coordinate_reads
        # Replica reads still running after their read was answered, and repairs: at most this many
        # tasks; past it, the late answers of a read are dropped and no repair is started.
        if background_max < 1:
            raise ValueError("background_max must be at least 1")
        self.background_max = background_max
        self._background: set[asyncio.Task[None]] = set()
        self.repairs_started = 0
        # A replica missing only versions younger than this is left to the write still reaching it.
        self.repair_grace_s = repair_grace_s
        self.ring_max_age_s = ring_max_age_s
        self.ring_refresh_gap_s = ring_refresh_gap_s
        self._clock = clock
        self._http = HttpClient(
            self.seeds,
            timeout_s=min(attempt_timeout_s, timeout_s),
            resolver=resolver,
            connect_timeout_s=connect_timeout_s,
            on_attempt=self._on_attempt,
            on_headers=self._on_headers,
            ssl_context=ssl_context,
            auth=auth,
        )
        self._view: RingView | None = None
        self._view_fetched_s = -math.inf
        self._refresh_started_s = -math.inf
        self._refresh: asyncio.Task[RingView] | None = None
        self._failed_urls: Expiring[str, bool] = Expiring(failed_node_ttl_s, nodes_remembered_max)
        self._n_vals: Expiring[bytes, int] = Expiring(bucket_props_max_age_s, buckets_cached_max)
        self.last_refresh_error: str | None = None

    async def __aenter__(self) -> RingAwareClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        task, self._refresh = self._refresh, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ClientError):
                await task
        background, self._background = list(self._background), set()
        for late in background:
            late.cancel()
        for late in background:
            with contextlib.suppress(asyncio.CancelledError, ClientError):
                await late
        await self._http.close()

    # --- What the client knows ------------------------------------------------------------------------------

    @property
    def resolver(self) -> Resolver | None:
        return self._http.resolver

    @resolver.setter
    def resolver(self, resolver: Resolver | None) -> None:
        self._http.resolver = resolver

    @property
    def ring_view(self) -> RingView | None:
        """The ring requests are routed by; None before the first request or `refresh`."""
        return self._view

    def failing_nodes(self) -> frozenset[str]:
        """Members that recently failed to answer, tried last until `failed_node_ttl_s` passes."""
        return frozenset() if self._view is None else self._failing_in(self._view)

    def route_for(self, bucket: str | bytes, key: str | bytes) -> Route:
        """Where a request for this key would go now (by the bucket's n_val when learned, else the default)."""
        if self._view is None:
            raise ClientError(0, "no ring yet: make a request or call refresh() first")
        bucket_b = _bytes(bucket)
        n_val = self._known_n_val(self._view, bucket_b) or self._view.n_val
        return route(self._view.state, bucket_b, _bytes(key), n_val, self.failing_nodes())

    async def refresh(self) -> RingView:
        """Fetch the ring now and route by it from here on (bounded by `timeout_s`)."""
        return await self._bounded("fetching the ring", self._fresh_view(since_s=math.inf))

    # --- Requests ----------------------------------------------------------------------------------------------

    async def get(
        self,
        bucket: str | bytes,
        key: str | bytes,
        *,
        r: int | str | None = None,
        pr: int | str | None = None,
        timeout_ms: int | None = None,
    ) -> Fetched:
        """Every sibling and the context to write with; siblings are resolved when a resolver is set."""
        if self.coordinate_reads:
            what = f"get {bucket!r}/{key!r}"
            return await self._bounded(what, self._coordinated_get(_bytes(bucket), _bytes(key), r, pr))
        return await self._routed(
            "get", bucket, key, lambda urls: self._http.get(bucket, key, r=r, pr=pr, timeout_ms=timeout_ms, urls=urls)
        )

    async def put(
        self,
        bucket: str | bytes,
        key: str | bytes,
        data: bytes,
        *,
        context: str | None = None,
        content_type: str = "application/octet-stream",
        usermeta: Mapping[str, str] | None = None,
        w: int | str | None = None,
        dw: int | str | None = None,
        pw: int | str | None = None,
        timeout_ms: int | None = None,
    ) -> str | None:
        """Store a value; returns the context of the write (to write again without reading). Sent first
        to the replica that answered the read of `context` first, which coordinates it."""
        return await self._routed(
            "put",
            bucket,
            key,
            lambda urls: self._http.put(
                bucket,
                key,
                data,
                context=context,
                content_type=content_type,
                usermeta=usermeta,
                w=w,
                dw=dw,
                pw=pw,
                timeout_ms=timeout_ms,
                urls=urls,
            ),
            prefer=_preferred(context),
        )

    async def delete(
        self,
        bucket: str | bytes,
        key: str | bytes,
        *,
        context: str | None = None,
        w: int | str | None = None,
        timeout_ms: int | None = None,
    ) -> bool:
        """Delete a key; False when it did not exist."""
        return await self._routed(
            "delete",
            bucket,
            key,
            lambda urls: self._http.delete(bucket, key, context=context, w=w, timeout_ms=timeout_ms, urls=urls),
            prefer=_preferred(context),
        )

    # --- Data types: routed by the key's place, which hashes its type, bucket and key -----------------

    async def dt_get(
        self,
        bucket_type: str,
        bucket: str | bytes,
        key: str | bytes,
        *,
        r: int | str | None = None,
        timeout_ms: int | None = None,
    ) -> DataType | None:
        """A data type's value and context; None when the key does not exist."""
        return await self._routed(
            "dt get",
            buckettypes.typed(bucket_type, _bytes(bucket)),
            key,
            lambda urls: self._http.dt_get(bucket_type, bucket, key, r=r, timeout_ms=timeout_ms, urls=urls),
        )

    async def dt_update(
        self,
        bucket_type: str,
        bucket: str | bytes,
        key: str | bytes,
        operation: Any,
        *,
        context: str | None = None,
        w: int | str | None = None,
        return_body: bool = False,
        timeout_ms: int | None = None,
    ) -> tuple[str | None, DataType | None]:
        """Apply one of Riak's JSON operations (see HttpClient.dt_update) at a replica of the key."""
        return await self._routed(
            "dt update",
            buckettypes.typed(bucket_type, _bytes(bucket)),
            key,
            lambda urls: self._http.dt_update(
                bucket_type,
                bucket,
                key,
                operation,
                context=context,
                w=w,
                return_body=return_body,
                timeout_ms=timeout_ms,
                urls=urls,
            ),
        )

    async def dt_delete(self, bucket_type: str, bucket: str | bytes, key: str | bytes) -> bool:
        """Delete a data type; False when it did not exist."""
        return await self._routed(
            "dt delete",
            buckettypes.typed(bucket_type, _bytes(bucket)),
            key,
            lambda urls: self._http.dt_delete(bucket_type, bucket, key, urls=urls),
        )

    async def _routed(
        self,
        what: str,
        bucket: str | bytes,
        key: str | bytes,
        send: Callable[[list[str]], Awaitable[T]],
        prefer: str | None = None,
    ) -> T:
        work = self._send_routed(_bytes(bucket), _bytes(key), send, prefer)
        return await self._bounded(f"{what} {bucket!r}/{key!r}", work)

    async def _bounded(self, what: str, work: Awaitable[T]) -> T:
        try:
            async with asyncio.timeout(self.timeout_s):
                return await work
        except TimeoutError:
            raise ClientError(0, f"{what}: no answer within {self.timeout_s:g} s") from None

    async def _send_routed(
        self, bucket: bytes, key: bytes, send: Callable[[list[str]], Awaitable[T]], prefer: str | None = None
    ) -> T:
        started_s = self._clock()
        view = await self._view_for_request()
        urls = await self._urls_for(view, bucket, key)
        preferred = view.urls.get(prefer) if prefer is not None else None
        if preferred in urls and preferred not in self._failed_urls.keys(self._clock()):
            # The replica that answered the read first: it holds what was read (read-your-writes).
            urls = [preferred] + [url for url in urls if url != preferred]
        try:
            return await send(urls)
        except ClientError as exc:
            if exc.status in _STATUSES_SUGGESTING_RING_MOVED:
                self._start_refresh()
            if exc.status != 0:
                raise
            unanswered = exc
        # No node of the ring answered: the ring itself may name nodes that are gone. One fresh look,
        # and one more try only when it places the key elsewhere (otherwise the answer stands).
        try:
            fresh = await self._fresh_view(since_s=started_s)
        except ClientError:
            raise unanswered from None
        if fresh.same_placement(view):
            raise unanswered
        return await send(await self._urls_for(fresh, bucket, key))

    # --- Reads coordinated by the client --------------------------------------------------------------------

    async def _coordinated_get(self, bucket: bytes, key: bytes, r: int | str | None, pr: int | str | None) -> Fetched:
        """R of the N replicas' own copies, merged; a replica read has no timeout of its own but the
        client's `attempt_timeout_s` (a replica answers from its own disk, never waits for a quorum)."""
        view = await self._view_for_request()
        n_val = self._known_n_val(view, bucket)
        if n_val is None:
            n_val = await self._learn_n_val(bucket, self._ordered_urls(view, bucket, key, view.n_val)) or view.n_val
        try:
            # The bucket's own r and pr stay with the nodes; a client-coordinated read uses Riak's defaults.
            r_count = resolve("r", r, n_val, "quorum", 1)
            pr_count = resolve("pr", pr, n_val, 0, 0)
        except QuorumError as exc:
            raise ClientError(400, str(exc)) from None
        plan = route(view.state, bucket, key, n_val, self._failing_in(view))
        # The first N nodes it can reach, as the nodes' sloppy quorum takes the first N healthy ones.
        replicas = [node for node in plan.order if node in view.urls][:n_val]
        if len(replicas) < r_count:
            raise ClientError(503, f"{len(replicas)} reachable replicas cannot satisfy r={r_count}")
        primaries = set(plan.primaries)
        # Nodes of the walk not asked yet: a replica that cannot be reached is replaced by the next.
        spare = [node for node in plan.order if node in view.urls][n_val:]
        loop = asyncio.get_running_loop()

        def ask(node: str) -> asyncio.Task[_Copy]:
            return loop.create_task(self._replica_read(node, view.urls[node], bucket, key), name=node)

        asked = list(replicas)
        pending = {ask(node) for node in replicas}
        copies: list[_Copy] = []
        failures: list[ClientError] = []
        try:
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                # Several may finish in one turn: in the order they were asked, which is plist order.
                for task in sorted(done, key=lambda t: asked.index(t.get_name())):
                    error = task.exception()
                    if error is None:
                        copies.append(task.result())
                    elif isinstance(error, ClientError):
                        failures.append(error)
                        if error.status == 0 and spare:
                            asked.append(spare.pop(0))
                            pending.add(ask(asked[-1]))
                    else:
                        raise error
                answered_primaries = sum(1 for c in copies if c.node in primaries)
                if len(copies) >= r_count and answered_primaries >= pr_count:
                    break
                can_primaries = answered_primaries + sum(1 for t in pending if t.get_name() in primaries)
                if len(copies) + len(pending) < r_count or can_primaries < pr_count:
                    break
        except BaseException:
            for task in pending:
                task.cancel()
            raise
        answered_primaries = sum(1 for c in copies if c.node in primaries)
        if len(copies) < r_count or answered_primaries < pr_count:
            for task in pending:
                task.cancel()
            if len(failures) == len(asked) and all(f.status == 0 for f in failures):
                raise ClientError(0, f"no replica answered: {failures[0].reason}")
            raise ClientError(
                503,
                f"r={r_count} pr={pr_count} not met: {len(copies)} replicas answered ({answered_primaries} primaries)",
            )
        merged = _merge(copies)
        self._after_read(view, bucket, key, copies, pending, merged)
        contexts = [c.context for c in copies if c.obj is not None and c.context]
        context = ",".join(contexts) if contexts else None
        if merged is None:
            return Fetched((), context)
        values = tuple(_value_of(dot, content) for dot, content in objects.live(merged))
        fetched = Fetched(values, context)
        if len(values) > 1 and self.resolver is not None:
            resolved = self.resolver(values)
            new_context = await self.put(
                bucket,
                key,
                resolved.data,
                context=context,
                content_type=resolved.content_type,
                usermeta=resolved.usermeta,
            )
            return Fetched((resolved,), new_context)
        return fetched

    async def _replica_read(self, node: str, url: str, bucket: bytes, key: bytes) -> _Copy:
        status, headers, body = await self._http.call_one(url, "GET", _path(bucket, key), {"replica": "true"})
        if status == 404:
            return _Copy(node, None, None)
        if status != 200 or headers.get("Content-Type", "").split(";")[0].strip() != REPLICA_CONTENT_TYPE:
            if status in _STATUSES_SUGGESTING_RING_MOVED:
                self._start_refresh()
            raise ClientError(status, f"{node}: " + body[:200].decode(errors="replace").strip())
        try:
            obj = objects.decode_stored(body)
        except CorruptCopy as exc:
            raise ClientError(502, f"{node} sent a copy that does not decode: {exc}") from None
        return _Copy(node, obj, headers.get("X-Riak-Vclock"), headers.get(ONE_VALUE_HEADER) == "true")

    def _after_read(
        self,
        view: RingView,
        bucket: bytes,
        key: bytes,
        copies: list[_Copy],
        late: set[asyncio.Task[_Copy]],
        merged: Object | None,
    ) -> None:
        """The replica reads still running and the read repair, in the background (bounded)."""
        if len(self._background) >= self.background_max:
            for task in late:
                task.cancel()
            return
        job = asyncio.get_running_loop().create_task(self._repair_if_stale(view, bucket, key, copies, late, merged))
        self._background.add(job)
        job.add_done_callback(self._background.discard)

    async def _repair_if_stale(
        self,
        view: RingView,
        bucket: bytes,
        key: bytes,
        copies: list[_Copy],
        late: set[asyncio.Task[_Copy]],
        merged: Object | None,
    ) -> None:
        every = list(copies)
        if late:
            done, _ = await asyncio.wait(late)
            every += [t.result() for t in done if not t.cancelled() and t.exception() is None]
        merged = _merge(every)
        if merged is None or not any(_behind(c.obj, merged, time.time() - self.repair_grace_s) for c in every):
            return
        # One ordinary read at the replica that answered first: it coordinates the read and repairs
        # every replica that missed something (the client cannot write the merged version itself).
        self.repairs_started += 1
        with contextlib.suppress(ClientError):
            await self._http.get(bucket, key, r="all", urls=[view.urls[every[0].node]])

    def _known_n_val(self, view: RingView, bucket: bytes) -> int | None:
        """The bucket's n_val from the ring (nodes publish it) or from an earlier props lookup."""
        return view.bucket_n_vals.get(bucket) or self._n_vals.get(bucket, self._clock())

    async def _urls_for(self, view: RingView, bucket: bytes, key: bytes) -> list[str]:
        n_val = self._known_n_val(view, bucket)
        if n_val is None:
            # The order of the walk does not depend on n_val, only where the primaries end does; so
            # the props can be asked of the very nodes the request is about to go to.
            n_val = await self._learn_n_val(bucket, self._ordered_urls(view, bucket, key, view.n_val))
        # Ordered after learning, so that a node found dead while learning is already tried last.
        return self._ordered_urls(view, bucket, key, n_val or view.n_val)

    def _failing_in(self, view: RingView) -> frozenset[str]:
        failing_urls = self._failed_urls.keys(self._clock())
        return frozenset(name for name, url in view.urls.items() if url in failing_urls)

    def _ordered_urls(self, view: RingView, bucket: bytes, key: bytes, n_val: int) -> list[str]:
        plan = route(view.state, bucket, key, n_val, self._failing_in(view))
        urls = [view.urls[node] for node in plan.order if node in view.urls]
        if not urls:
            raise ClientError(0, "the ring names no member with an HTTP address")
        return urls

    async def _learn_n_val(self, bucket: bytes, urls: list[str]) -> int | None:
        """The bucket's n_val, asked of the cluster and cached; None (use the default) when no node says."""
        type_name, name = buckettypes.split(bucket)
        path = "/buckets/" if type_name == buckettypes.DEFAULT else f"/types/{quote(type_name, safe='')}/buckets/"
        try:
            body = await self._http.json(path + quote(name, safe="") + "/props", urls=urls)
            n_val = body["props"]["n_val"]
        except (ClientError, ValueError, KeyError, TypeError):
            return None
        if isinstance(n_val, bool) or not isinstance(n_val, int) or n_val < 1:
            return None
        self._n_vals.set(bucket, n_val, self._clock())
        return n_val

    # --- The ring ----------------------------------------------------------------------------------------------

    async def _view_for_request(self) -> RingView:
        view = self._view
        if view is None:
            return await self._fresh_view(since_s=math.inf)
        if self._clock() - self._view_fetched_s >= self.ring_max_age_s:
            self._start_refresh()
        return view

    async def _fresh_view(self, since_s: float) -> RingView:
        """A ring fetched at or after `since_s`: the one held if it is, else the outcome of a fetch."""
        if self._view is not None and self._view_fetched_s >= since_s:
            return self._view
        task = self._start_refresh(even_within_gap=True)
        assert task is not None
        # Shielded: a caller that gives up does not cancel a fetch other callers are waiting on.
        return await asyncio.shield(task)

    def _start_refresh(self, *, even_within_gap: bool = False) -> asyncio.Task[RingView] | None:
        """The running fetch of the ring, or a new one; None when one started within the gap."""
        if self._refresh is not None and not self._refresh.done():
            return self._refresh
        now_s = self._clock()
        if not even_within_gap and now_s - self._refresh_started_s < self.ring_refresh_gap_s:
            return None
        self._refresh_started_s = now_s
        self._refresh = asyncio.get_running_loop().create_task(self._fetch_ring())
        self._refresh.add_done_callback(_retrieve_outcome)
        return self._refresh

    async def _fetch_ring(self) -> RingView:
        """Ask the seeds, then every known member (failing ones last), for the ring; keep the first
        answer of our cluster that is at least as new as the ring held."""
        reasons: list[str] = []
        held_is_newest = False
        try:
            async with asyncio.timeout(self.timeout_s):
                for url in self._ring_sources():
                    try:
                        view = RingView.from_json(await self._http.json("/ring", urls=[url]), url)
                    except (ClientError, RingViewError, ValueError) as exc:
                        reasons.append(f"{url}: {exc}")
                        continue
                    held = self._view
                    if held is not None and view.cluster != held.cluster:
                        reasons.append(f"{url}: belongs to cluster {view.cluster!r}, not {held.cluster!r}")
                        continue
                    if held is not None and view.version < held.version:
                        # A node that has not yet heard of the newest ring; another may have.
                        reasons.append(f"{url}: ring version {view.version} is older than {held.version}")
                        held_is_newest = True
                        continue
                    self._view, self._view_fetched_s = view, self._clock()
                    self.last_refresh_error = None
                    return view
        except TimeoutError:
            reasons.append(f"gave up after {self.timeout_s:g} s")
        if held_is_newest and self._view is not None:
            # Nodes answered, none with a newer ring than ours: ours is the newest there is, for now.
            self._view_fetched_s = self._clock()
            return self._view
        self.last_refresh_error = "; ".join(reasons) or "no node to ask"
        raise ClientError(0, f"could not fetch the ring: {self.last_refresh_error}")

    def _ring_sources(self) -> list[str]:
        members = list(self._view.urls.values()) if self._view is not None else []
        candidates = list(dict.fromkeys(self.seeds + members))
        failing = self._failed_urls.keys(self._clock())
        return [url for url in candidates if url not in failing] + [url for url in candidates if url in failing]

    def _on_attempt(self, url: str, error: BaseException | None) -> None:
        url = _normal(url)
        if error is None:
            self._failed_urls.discard(url)
            return
        self._failed_urls.set(url, True, self._clock())
        self._start_refresh()

    def _on_headers(self, url: str, headers: Mapping[str, str]) -> None:
        # Every node says which ring epoch it routes by; a different one means ours is stale.
        epoch = headers.get(RING_EPOCH_HEADER)
        view = self._view
        if epoch and view is not None and view.epoch and epoch != view.epoch:
            self._start_refresh()


def _merge(copies: list[_Copy]) -> Object | None:
    merged: Object | None = None
    for copy in copies:
        if copy.obj is not None:
            merged = copy.obj if merged is None else merge(merged, copy.obj)
    if merged is not None and any(copy.one_value for copy in copies):
        merged = objects.resolve(merged)
    return merged


def _behind(copy: Object | None, merged: Object, written_before_s: float) -> bool:
    """Whether a replica's copy misses a version of the merge written before `written_before_s` (Unix
    time). One written since is most likely still on its way there from its coordinator, which sends
    it to every replica: repairing for it would cost a read for nearly every read of a key being
    written (measured: 44% of reads of a zipfian 50/50 workload)."""
    limit_us = written_before_s * 1_000_000
    for dot, content in merged.siblings:
        # A copy's clock covers every version it holds or has seen superseded.
        held = copy is not None and copy.clock.covers(dot)
        if not held and content.last_modified_us < limit_us:
            return True
    return False


def _value_of(dot: Dot, content: Content) -> Value:
    """A sibling as `HttpClient.get` shows one (metadata names in lower case, as HTTP headers are)."""
    meta = {name.lower(): value for name, value in content.usermeta}
    modified = email.utils.formatdate(content.last_modified_us // 1_000_000, usegmt=True)
    return Value(content.value, content.content_type, meta, objects.vtag(dot), modified)


def _preferred(context: str | None) -> str | None:
    """The replica a write's context names as the fastest of its read (the first context of a list)."""
    return None if not context else coordinator_hint(context.split(",", 1)[0])


def _retrieve_outcome(task: asyncio.Task[RingView]) -> None:
    # A background fetch nobody awaited must not log "exception was never retrieved"; its failure is
    # already recorded in last_refresh_error and the next request will try again.
    if not task.cancelled():
        task.exception()


def _bytes(name: str | bytes) -> bytes:
    return name if isinstance(name, bytes) else name.encode()


def _normal(url: str) -> str:
    return url.rstrip("/")
