"""The HTTP API: the key/value subset of Riak KV's HTTP interface, so Riak HTTP clients work unchanged.

Routes are parsed from the raw path. Bucket and key segments are decoded as Riak decodes them (its
default `http_url_encoding = on`, i.e. mochiweb's unquote): `+` is a space and `%XX` is any byte, so a
client that escapes with `quote_plus` (riak-python-client does) and one that uses `%20` name the same
key, a literal plus is `%2B`, and any binary key round-trips, `%2F` included. The current
(`/buckets/B/keys/K`), typed (`/types/T/buckets/...`) and legacy (`/riak/B/K`) forms are served,
and the URLs we hand back (Location, Link) use the form the request used. A bucket of a type other
than `default` is named inside the node with its type (buckettypes.typed); the data types of such a
type are served by datatypes.py.

Every input is validated here before it reaches the node; bad input gets a 4xx with a plain-text
reason and changes nothing. Header text that is not UTF-8 (the server hands it over as lone surrogates)
is refused, because it could not be stored. A 500 means a bug.

Beyond Riak's resources, `/ring` serves the ring for partition-aware clients, `/admin/...` serves
the cluster commands of the CLI and `/dashboard` the operator's page (dashboard.py).
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import re
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from multidict import CIMultiDict

from dynastore import __version__
from dynastore.api import admin, auth, dashboard, datatypes
from dynastore.api import indexes as index_api
from dynastore.api.answers import Answer, BadRequest, bool_param, failure, json_response, text
from dynastore.api.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from dynastore.api.metrics import NodeMetrics
from dynastore.api.server import HttpServer, Request, RequestEntityTooLarge, Response, StreamResponse, http_date
from dynastore.core import bucketprops, buckettypes, crdt, keys, objects, quorum, ringdoc
from dynastore.core import context as ctxcodec
from dynastore.core.context import ContextError
from dynastore.core.messages import (
    ClientBucketType,
    ClientGet,
    ClientListKeys,
    ClientLocalGet,
    ClientPut,
    ClientResponse,
    ClientSetBucketProps,
    Failure,
    NotFound,
    Ok,
    Siblings,
)
from dynastore.core.objects import Content
from dynastore.core.secret import CONTEXT
from dynastore.core.versions import Context, Dot
from dynastore.runtime.node import NodeRuntime

log = logging.getLogger("dynastore.http")

# The Riak KV release whose HTTP API this one follows; clients use it for feature detection.
RIAK_KV_VERSION = "2.2.3"
# What `GET /` advertises, as Riak 2.2 does: clients decide that bucket types work from the version
# (riak-python-client does, for 2.0 and later) and use `/types/T/...` only when riak_kv_wm_bucket_type
# is listed; the legacy counters of Riak 1.4 when riak_kv_wm_counter is.
RESOURCES = {
    "riak_kv_wm_bucket_type": "/types",
    "riak_kv_wm_buckets": "/buckets",
    "riak_kv_wm_counter": "/buckets",
    "riak_kv_wm_index": "/buckets",
    "riak_kv_wm_keylist": "/buckets",
    "riak_kv_wm_object": "/buckets",
    "riak_kv_wm_ping": "/ping",
    "riak_kv_wm_preflist": "/buckets",
    "riak_kv_wm_props": "/buckets",
    "riak_kv_wm_stats": "/stats",
}
META_PREFIX = "x-riak-meta-"
# Riak bucket properties that clients send back as they read them, or that name Riak machinery this
# store does not have; a PUT of them is accepted and they are left as they are.
IGNORED_PROPS = frozenset(
    {
        "name",
        "basic_quorum",
        "notfound_ok",
        "young_vclock",
        "old_vclock",
        "small_vclock",
        "big_vclock",
        "chash_keyfun",
        "linkfun",
        "precommit",
        "postcommit",
        "dvv_enabled",
    }
)
DATATYPE_CONTENT_TYPES = frozenset(crdt.CONTENT_TYPES.values())
# What GET shows of a type or bucket that a client may send back but not change that way.
TYPE_READ_ONLY_PROPS = frozenset({"active", "claimant"})
QUORUM_PARAMS = ("r", "w", "dw", "rw", "pr", "pw")
READ_METHODS = ("GET", "HEAD")
OBJECT_METHODS = ("GET", "HEAD", "PUT", "POST", "DELETE")
PROPS_METHODS = ("GET", "HEAD", "PUT", "POST", "DELETE")
# RFC 9110 token characters: what a media type, its subtype and a charset name may be made of.
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_DIGITS = re.compile(r"[0-9]+")

Handler = Callable[[Request], Awaitable[Answer]]

RING_HEADER = "X-Dynastore-Ring"
# A replica read (`GET .../keys/K?replica=true`, for clients that coordinate their own reads): the
# node's own copy in its stored form (objects.encode_stored: versioned and checksummed), and the node
# that answered. The context of that copy comes signed in X-Riak-Vclock as always.
REPLICA_CONTENT_TYPE = "application/x-dynastore-object"
NODE_HEADER = "X-Dynastore-Node"
ONE_VALUE_HEADER = "X-Dynastore-One-Value"


def ring_epoch(runtime: NodeRuntime) -> str:
    """Changes whenever routing by the ring changes (see ringdoc.epoch)."""
    core = runtime.core
    assert core is not None
    return ringdoc.epoch(core.cluster)


@dataclass(frozen=True, slots=True)
class UrlStyle:
    """How a request named its bucket, so that the URLs handed back to it take the same form."""

    # Where an object lives: `{objects}/{bucket}/keys/{key}`, or `{objects}/{bucket}/{key}` when legacy.
    objects: str
    legacy: bool
    # The bucket type the request named.
    type_name: str = buckettypes.DEFAULT

    def internal(self, bucket: bytes) -> bytes:
        """The node's name for the request's bucket (buckettypes.typed); a default bucket may not
        start with NUL, which would name a bucket of another type."""
        if self.type_name == buckettypes.DEFAULT and buckettypes.is_typed(bucket):
            raise BadRequest("a bucket name may not start with a NUL byte")
        return buckettypes.typed(self.type_name, bucket)

    def object_url(self, bucket: bytes, key: bytes, where: str = "keys") -> str:
        middle = "/" if self.legacy else f"/{where}/"
        return self.objects + "/" + _quote(buckettypes.split(bucket)[1]) + middle + _quote(key)

    def bucket_url(self, bucket: bytes) -> str:
        # Riak links an object of the default type to its bucket by the untyped path.
        if self.type_name != buckettypes.DEFAULT:
            return self.objects + "/" + _quote(buckettypes.split(bucket)[1])
        return ("/riak/" if self.legacy else "/buckets/") + _quote(bucket)


CURRENT = UrlStyle("/buckets", legacy=False)
TYPED = UrlStyle("/types/default/buckets", legacy=False)
LEGACY = UrlStyle("/riak", legacy=True)


def typed_style(type_name: str) -> UrlStyle:
    if type_name == buckettypes.DEFAULT:
        return TYPED
    return UrlStyle(f"/types/{_quote(type_name.encode())}/buckets", legacy=False, type_name=type_name)


def _quote(name: bytes) -> str:
    return quote(name, safe="")


def _not_allowed(allowed: tuple[str, ...]) -> Response:
    return text(405, "Method Not Allowed", {"Allow": ", ".join(allowed)})


class Api:
    def __init__(self, runtime: NodeRuntime) -> None:
        self.runtime = runtime
        self.settings = runtime.settings
        # The server this API answers for (its connection counts go into /stats).
        self.server: HttpServer | None = None
        # The counts of the node's PB listener for /stats (api/pb/server.py sets it; None: no PB).
        self.pb_stats: Callable[[], dict[str, int]] | None = None
        self.guard = auth.Guard(runtime)
        self.metrics = NodeMetrics(runtime, lambda: 0 if self.server is None else len(self.server.connections))

    # --- Dispatch -------------------------------------------------------------------------------------------

    async def dispatch(self, request: Request) -> Answer:
        response = await self._dispatch(request)
        if not response.prepared:
            # Partition-aware clients compare this with the ring they hold and refetch when it moved.
            response.headers[RING_HEADER] = ring_epoch(self.runtime)
        return response

    async def _dispatch(self, request: Request) -> Answer:
        try:
            parts = auth.segments(request.raw_path)
            guard = self.guard
            refusal = guard.origin_problem(request, parts) or await guard.admit(
                request, auth.need_of(request.method, parts, dict(request.query))
            )
            if refusal is not None:
                return refusal
            return await self._route(request, parts)
        except BadRequest as exc:
            return text(exc.status, str(exc))
        except RequestEntityTooLarge:
            return text(413, f"request body exceeds the limit of {self.settings.object_bytes_max} bytes")
        except Exception:
            log.exception("internal error serving %s %r", request.method, request.raw_path)
            return text(500, "internal error")

    async def _route(self, request: Request, parts: list[bytes]) -> Answer:
        if not parts:
            return await self._allow(request, READ_METHODS, self.resources)
        head, rest = parts[0], parts[1:]
        if head == b"ping" and not rest:
            return await self._allow(request, READ_METHODS, self.ping)
        if head == b"health" and not rest:
            return await self._allow(request, READ_METHODS, self.health)
        if head == b"ready" and not rest:
            return await self._allow(request, READ_METHODS, self.ready)
        if head == b"stats" and not rest:
            return await self._allow(request, READ_METHODS, self.stats)
        if head == b"metrics" and not rest:
            return await self._allow(request, READ_METHODS, self.prometheus)
        if head == b"ring" and not rest:
            return await self._allow(request, READ_METHODS, self.ring)
        if head == b"admin":
            return await admin.handle(self.runtime, self.guard, request, rest)
        if head == b"dashboard":
            return dashboard.handle(request, rest)
        if head == b"buckets":
            return await self._buckets(request, rest, CURRENT)
        if head == b"types":
            return await self._types(request, rest)
        if head == b"riak":
            if rest and buckettypes.is_typed(rest[0]):
                raise BadRequest("a bucket name may not start with a NUL byte")
            return await self._legacy(request, rest)
        return text(404, "Not Found")

    async def _types(self, request: Request, rest: list[bytes]) -> Answer:
        """`/types/T/props` and `/types/T/buckets/...`: an unknown type is a 404, one created but not
        yet active a 400."""
        if not rest:
            return text(404, "Not Found")
        type_name = rest[0].decode("utf-8", "replace")
        core = self.runtime.core
        assert core is not None
        record = core.cluster.bucket_type(type_name)
        known = type_name == buckettypes.DEFAULT or record is not None
        if rest[1:] == [b"props"]:
            if not known:
                raise BadRequest(f"unknown bucket type {type_name!r}", 404)
            return await self._type_props(request, type_name)
        if rest[1:2] != [b"buckets"]:
            return text(404, "Not Found")
        if not known:
            raise BadRequest(f"unknown bucket type {type_name!r}", 404)
        if record is not None and not record.active:
            raise BadRequest(f"bucket type {type_name!r} is not active: activate it first")
        return await self._buckets(request, rest[2:], typed_style(type_name))

    async def _type_props(self, request: Request, type_name: str) -> Answer:
        method = request.method
        if method in READ_METHODS:
            return json_response({"props": self.type_props_of(type_name)})
        if method not in ("PUT", "POST"):
            return _not_allowed(("GET", "HEAD", "PUT", "POST"))
        given = await self._props_body(request)
        props = tuple(sorted((k, v) for k, v in given.items() if k not in IGNORED_PROPS | TYPE_READ_ONLY_PROPS))
        response = await self.runtime.request(ClientBucketType("update", type_name, props))
        if isinstance(response, NotFound):
            return text(404, f"unknown bucket type {type_name!r}")
        if isinstance(response, Failure):
            return self.failure(response)
        return Response(status=204)

    def type_props_of(self, type_name: str) -> dict[str, Any]:
        """A type's properties as Riak shows them: the defaults overlaid by the type's own, and whether
        it is active."""
        core = self.runtime.core
        assert core is not None
        record = core.cluster.bucket_type(type_name)
        props = bucketprops.defaults(self.settings)
        if record is not None:
            props.update((k, v) for k, v in record.props if v != "default")
        props["name"] = type_name
        props["active"] = type_name == buckettypes.DEFAULT or (record is not None and record.active)
        props["basic_quorum"] = False
        props["notfound_ok"] = True
        return props

    async def _buckets(self, request: Request, rest: list[bytes], style: UrlStyle) -> Answer:
        method = request.method
        if not rest:
            return await self._allow(request, READ_METHODS, lambda r: self.list_buckets(r, style.type_name))
        bucket, tail = style.internal(rest[0]), rest[1:]
        if tail == [b"props"]:
            return await self._props(request, bucket)
        if tail[:1] in ([b"datatypes"], [b"counters"]):
            return await datatypes.route(self, request, bucket, tail, style)
        if tail[:1] == [b"index"]:
            return await index_api.route(self, request, bucket, tail)
        datatype = self._datatype_of(bucket)
        if tail == [b"keys"]:
            if method in READ_METHODS:
                return await self.list_keys(request, bucket, with_props=False)
            if method == "POST":
                if datatype is not None:
                    raise BadRequest(_datatype_bucket(style, datatype))
                return await self.store(request, bucket, None, style)
            return _not_allowed(("GET", "HEAD", "POST"))
        if len(tail) == 2 and tail[0] == b"keys":
            if datatype is not None:
                return await datatypes.on_plain_object(self, request, bucket, tail[1], style, datatype)
            return await self._object(request, bucket, tail[1], style)
        if len(tail) == 3 and tail[0] == b"keys" and tail[2] == b"preflist":
            return await self._allow(request, READ_METHODS, lambda r: self.preflist(bucket, tail[1]))
        return text(404, "Not Found")

    async def _legacy(self, request: Request, rest: list[bytes]) -> Answer:
        """Riak's pre-1.0 paths, dispatched as Riak does: a POST to a bucket creates an object, keys=true
        or stream lists keys (with the props unless props=false), and otherwise the bucket is its props."""
        method = request.method
        if not rest:
            return await self._allow(request, READ_METHODS, self.list_buckets)
        bucket = rest[0]
        if len(rest) == 1:
            if method == "POST":
                return await self.store(request, bucket, None, LEGACY)
            with_props = request.query.get("props") != "false"
            if request.query.get("keys") in ("true", "stream"):
                if method not in READ_METHODS:
                    return _not_allowed(("GET", "HEAD", "POST"))
                return await self.list_keys(request, bucket, with_props=with_props)
            if with_props:
                return await self._props(request, bucket)
            return text(404, "Not Found")
        if len(rest) == 2:
            return await self._object(request, bucket, rest[1], LEGACY)
        return text(404, "Not Found")

    async def _props(self, request: Request, bucket: bytes) -> Answer:
        method = request.method
        if method in READ_METHODS:
            return self.get_props(bucket)
        if method in ("PUT", "POST"):
            return await self.set_props(request, bucket)
        if method == "DELETE":
            return await self.reset_props(bucket)
        return _not_allowed(PROPS_METHODS)

    async def _object(self, request: Request, bucket: bytes, key: bytes, style: UrlStyle) -> Answer:
        method = request.method
        if method in READ_METHODS:
            return await self.fetch(request, bucket, key, style)
        if method in ("PUT", "POST"):
            return await self.store(request, bucket, key, style)
        if method == "DELETE":
            return await self.delete(request, bucket, key)
        return _not_allowed(OBJECT_METHODS)

    async def _allow(self, request: Request, allowed: tuple[str, ...], handler: Handler) -> Answer:
        if request.method not in allowed:
            return _not_allowed(allowed)
        return await handler(request)

    # --- Simple resources ---------------------------------------------------------------------------------

    async def resources(self, request: Request) -> Answer:
        # Riak offers HTML first, so a browser or `Accept: */*` gets HTML and clients ask for JSON.
        links = ",".join(f'<{path}>; rel="{name}"' for name, path in RESOURCES.items())
        if _negotiate(request.headers.get("Accept"), ("text/html", "application/json")) == "application/json":
            return json_response(RESOURCES, headers={"Link": links})
        items = "".join(f'<li><a href="{path}">{name}</a></li>' for name, path in RESOURCES.items())
        return Response(
            text=f"<html><body><ul>{items}</ul></body></html>", content_type="text/html", headers={"Link": links}
        )

    async def ping(self, request: Request) -> Answer:
        # Exactly "OK": clients compare the body with it (riak-python-client's ping() does).
        return Response(text="OK")

    async def health(self, request: Request) -> Answer:
        """Alive: 200 while the process serves (503 once it is stopping). Nothing here waits on peers
        or storage, so a slow disk never makes a live node look dead."""
        runtime = self.runtime
        stopping = runtime.stopping.is_set()
        body = {"status": "stopping" if stopping else "ok", "node": runtime.config.name, "uptime_s": runtime.uptime_s()}
        return json_response(body, status=503 if stopping else 200)

    async def ready(self, request: Request) -> Answer:
        """Ready: 200 when storage is open, the ring known and the default bucket's R and W can be met;
        503 with the reason otherwise (runtime.readiness)."""
        answer = self.runtime.readiness()
        return json_response(answer, status=200 if answer["ready"] else 503)

    async def stats(self, request: Request) -> Answer:
        data = self.runtime.stats()
        if self.server is not None:
            data["http_connections"] = len(self.server.connections)
            data["http_connections_refused_total"] = self.server.connections_refused
        if self.pb_stats is not None:
            data.update(self.pb_stats())
        data.update(
            {
                "riak_kv_version": RIAK_KV_VERSION,
                "riak_core_version": RIAK_KV_VERSION,
                "dynastore_version": __version__,
                "sys_driver_version": "dynastore",
            }
        )
        return json_response(data)

    async def prometheus(self, request: Request) -> Answer:
        return Response(body=self.metrics.render(), headers={"Content-Type": METRICS_CONTENT_TYPE})

    async def ring(self, request: Request) -> Answer:
        core = self.runtime.core
        assert core is not None
        return json_response(ringdoc.document(core.cluster, self.settings.n_val))

    async def preflist(self, bucket: bytes, key: bytes) -> Answer:
        core = self.runtime.core
        assert core is not None
        self.check_names(bucket, key)
        _, plist = core.preference_list(bucket, key)
        healthy = core.healthy(self.runtime.clock.now_ms())
        entries = [{"partition": partition, "node": node, "primary": True} for partition, node in plist.primaries]
        # Riak lists the fallbacks that stand in for down primaries as non-primary entries.
        where = {node: partition for partition, node in plist.fallbacks}
        for target in plist.targets(healthy):
            if not target.primary and target.node in where:
                entries.append({"partition": where[target.node], "node": target.node, "primary": False})
        return json_response({"preflist": entries})

    # --- Bucket properties --------------------------------------------------------------------------------

    def _datatype_of(self, bucket: bytes) -> str | None:
        """The datatype a bucket's type gives its keys (None: plain objects)."""
        if not buckettypes.is_typed(bucket):
            return None
        core = self.runtime.core
        assert core is not None
        datatype = core.bucket_props(bucket).get("datatype")
        return None if datatype is None else str(datatype)

    def _props_of(self, bucket: bytes) -> dict[str, Any]:
        core = self.runtime.core
        assert core is not None
        self.check_names(bucket, None)
        props = core.bucket_props(bucket)
        props["name"] = buckettypes.split(bucket)[1].decode(errors="replace")
        props["basic_quorum"] = False
        props["notfound_ok"] = True
        return props

    def get_props(self, bucket: bytes) -> Answer:
        return json_response({"props": self._props_of(bucket)})

    async def _props_body(self, request: Request) -> dict[str, Any]:
        """The `{"props": {...}}` of a PUT of bucket or type properties, its quorums checked."""
        shape = 'body must be JSON of the form {"props": {...}}'
        # Decoded here rather than by request.json(): JSON is UTF-8 whatever charset the header names
        # (an unknown one would raise LookupError there), and nesting depth is the sender's choice.
        try:
            body = json.loads((await request.read()).decode("utf-8"))
        except (ValueError, RecursionError):
            raise BadRequest(shape) from None
        if not isinstance(body, dict) or not isinstance(body.get("props"), dict):
            raise BadRequest(shape)
        given: dict[str, Any] = body["props"]
        for name in QUORUM_PARAMS:
            if name in given:
                _quorum_value(name, given[name])
        return given

    async def set_props(self, request: Request, bucket: bytes) -> Answer:
        self.check_names(bucket, None)
        given = await self._props_body(request)
        props = tuple(sorted((k, v) for k, v in given.items() if k not in IGNORED_PROPS | TYPE_READ_ONLY_PROPS))
        response = await self.runtime.request(ClientSetBucketProps(bucket, props))
        if isinstance(response, Failure):
            return self.failure(response)
        return Response(status=204)

    async def reset_props(self, bucket: bytes) -> Answer:
        """Every property back to its type's (Riak: DELETE /buckets/B/props): the node's defaults for
        the default type."""
        self.check_names(bucket, None)
        response = await self.runtime.request(ClientSetBucketProps(bucket, (), reset=True))
        if isinstance(response, Failure):
            return self.failure(response)
        return Response(status=204)

    # --- Listing --------------------------------------------------------------------------------------------

    async def _pages(self, bucket: bytes | None, timeout_ms: int | None) -> AsyncIterator[tuple[bytes, ...] | Failure]:
        """A listing page by page (one step of one partition each, see ClientListKeys), until it is done
        or a page fails; with `timeout_ms`, the whole listing must be done within it."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout_ms is None else loop.time() + timeout_ms / 1000
        resume: tuple[int, bytes] | None = (0, b"")
        while resume is not None:
            left = None
            if deadline is not None:
                left = int((deadline - loop.time()) * 1000)
                if left <= 0:
                    yield Failure("timeout", "the listing did not finish within its timeout")
                    return
            response = await self.runtime.request(ClientListKeys(bucket, left, *resume))
            if isinstance(response, Failure):
                yield response
                return
            assert isinstance(response, Ok)
            resume = response.resume
            if response.keys:
                yield response.keys

    async def _gathered(
        self, bucket: bytes | None, timeout_ms: int | None, type_name: str = buckettypes.DEFAULT
    ) -> list[bytes] | Failure:
        """A whole listing in memory (keys=true, buckets=true), bounded by list_result_bytes_max; a
        listing of buckets names those of `type_name`."""
        found: set[bytes] = set()
        held = 0
        bound = self.settings.list_result_bytes_max
        async for page in self._pages(bucket, timeout_ms):
            if isinstance(page, Failure):
                return page
            if bucket is None:
                page = _of_type(page, type_name)
            for name in page:
                if name not in found:
                    found.add(name)
                    held += len(name)
            if held > bound:
                what = "keys" if bucket is not None else "buckets"
                reason = f"more than {bound} bytes of {what} to list (list_result_bytes_max); use {what}=stream"
                return Failure("overload", reason)
        return sorted(found)

    async def _streamed(
        self,
        request: Request,
        bucket: bytes | None,
        timeout_ms: int | None,
        head: dict[str, Any],
        type_name: str = buckettypes.DEFAULT,
    ) -> StreamResponse:
        """A listing as a stream of JSON objects, one per page; a failure once the stream has begun is
        an `{"error": ...}` object in it, as Riak gives (a timeout's is `"timeout"`). Buckets appear in
        many partitions: the ones already sent are remembered (bounded by list_result_bytes_max)."""
        what = "keys" if bucket is not None else "buckets"
        stream = StreamResponse(headers={"Content-Type": "application/json"})
        sent: set[bytes] = set()
        held = 0
        bound = self.settings.list_result_bytes_max
        try:
            await stream.prepare(request)
            if head:
                await stream.write(json.dumps(head).encode())
            async for page in self._pages(bucket, timeout_ms):
                if isinstance(page, Failure):
                    error = "timeout" if page.kind == "timeout" else page.reason
                    await stream.write(json.dumps({"error": error}).encode())
                    break
                names = page
                if bucket is None:
                    names = tuple(name for name in _of_type(page, type_name) if name not in sent)
                    sent.update(names)
                    held += sum(len(name) for name in names)
                    if held > bound:
                        await stream.write(json.dumps({"error": f"more than {bound} bytes of buckets"}).encode())
                        break
                if names:
                    await stream.write(json.dumps({what: [n.decode(errors="replace") for n in names]}).encode())
            else:
                await stream.write(json.dumps({what: []}).encode())
            await stream.write_eof()
        except ConnectionResetError:
            # The client went away mid-stream; there is no one left to answer.
            pass
        return stream

    async def list_buckets(self, request: Request, type_name: str = buckettypes.DEFAULT) -> Answer:
        mode = request.query.get("buckets")
        if mode not in ("true", "stream"):
            raise BadRequest("list buckets with ?buckets=true or ?buckets=stream")
        timeout = self._int_param(request, "timeout")
        if mode == "stream" and request.method != "HEAD":
            return await self._streamed(request, None, timeout, {}, type_name)
        found = await self._gathered(None, timeout, type_name)
        if isinstance(found, Failure):
            return self.failure(found)
        return json_response({"buckets": [b.decode(errors="replace") for b in found]})

    async def list_keys(self, request: Request, bucket: bytes, *, with_props: bool) -> Answer:
        """`keys=true` or `keys=stream` lists the keys; without it only the props, if asked for, are
        given (Riak answers `{}` on /buckets/B/keys and the props on /riak/B)."""
        self.check_names(bucket, None)
        mode = request.query.get("keys")
        timeout = self._int_param(request, "timeout")
        head: dict[str, Any] = {"props": self._props_of(bucket)} if with_props else {}
        if mode not in ("true", "stream"):
            return json_response(head)
        if mode == "stream" and request.method != "HEAD":
            return await self._streamed(request, bucket, timeout, head)
        found = await self._gathered(bucket, timeout)
        if isinstance(found, Failure):
            return self.failure(found)
        return json_response({**head, "keys": [k.decode(errors="replace") for k in found]})

    # --- Objects ---------------------------------------------------------------------------------------------

    async def fetch(self, request: Request, bucket: bytes, key: bytes, style: UrlStyle) -> Answer:
        self.check_names(bucket, key)
        query = request.query
        quorums = self._quorums(query)
        if bool_param(query, "replica"):
            return await self.replica_read(bucket, key)
        response = await self.runtime.request(
            ClientGet(bucket, key, r=quorums["r"], pr=quorums["pr"], timeout_ms=self._int_param(request, "timeout"))
        )
        if isinstance(response, Failure):
            return self.failure(response)
        if isinstance(response, NotFound):
            return self._not_found(response, bucket, key)
        assert isinstance(response, Ok) and response.found is not None
        found = response.found
        vclock = self._encode_context(found.context, bucket, key)
        chosen: tuple[Dot, Content] | None = None
        wanted = query.get("vtag")
        if wanted is not None:
            chosen = next(((d, c) for d, c in found.values if objects.vtag(d) == wanted), None)
            if chosen is None:
                return text(404, f"no sibling with vtag {wanted!r}")
        elif len(found.values) == 1:
            chosen = found.values[0]
        if chosen is None:
            return self._siblings_response(request, bucket, found, vclock, style)
        dot, content = chosen
        conditional = _read_precondition(request, objects.vtag(dot), content.last_modified_us // 1_000_000)
        if conditional is not None:
            conditional.headers["X-Riak-Vclock"] = vclock
            return conditional
        return self._object_response(bucket, dot, content, vclock, 200, style)

    async def replica_read(self, bucket: bytes, key: bytes) -> Answer:
        """This node's own copy of a key, no quorum: a client coordinating its read (the Dynamo paper's
        client-driven coordination) asks N replicas and merges R answers itself. The context is that of
        the copy, naming this node, signed with the cluster key the client does not hold: the client
        sends back the contexts of every copy it merged, and the write's coordinator verifies each and
        joins them (`_context_header`), which is the context of the merged object."""
        core = self.runtime.core
        assert core is not None
        response = await self.runtime.request(ClientLocalGet(bucket, key))
        if isinstance(response, Failure):
            return self.failure(response)
        if not isinstance(response, Ok) or response.local is None:
            return text(404, "no local copy", {NODE_HEADER: core.name})
        obj = response.local
        headers = {
            "Content-Type": REPLICA_CONTENT_TYPE,
            "X-Riak-Vclock": self._encode_context(obj.context(core.name), bucket, key),
            NODE_HEADER: core.name,
            # The bucket keeps one value per key: the client resolves what it merges as nodes do.
            ONE_VALUE_HEADER: "true" if bucketprops.keeps_one(core.bucket_props(bucket)) else "false",
        }
        return Response(status=200, body=objects.encode_stored(obj), headers=headers)

    async def store(self, request: Request, bucket: bytes, key: bytes | None, style: UrlStyle) -> Answer:
        generated = key is None
        if key is None:
            key = uuid.uuid4().hex.encode()
        self.check_names(bucket, key)
        query = request.query
        limit = self.settings.object_bytes_max
        declared = request.content_length
        if declared is not None and declared > limit:
            return text(413, f"object of {declared} bytes exceeds the limit of {limit} bytes")
        body = await request.read()
        if len(body) > limit:
            return text(413, f"object of {len(body)} bytes exceeds the limit of {limit} bytes")
        if request.headers.get("Content-Type", "").split(";")[0].strip().lower() in DATATYPE_CONTENT_TYPES:
            raise BadRequest("application/riak_* content types are the data types' own: update them as data types")
        quorums = self._quorums(query)
        timeout = self._int_param(request, "timeout")
        return_body = bool_param(query, "returnbody")
        context = self._context_header(request, bucket, key)
        content_type, charset = _split_content_type(request.headers.get("Content-Type"))
        encoding = request.headers.get("Content-Encoding")
        if encoding is not None:
            _check_header_text("Content-Encoding", encoding)
        usermeta = tuple(
            sorted(
                (_check_header_text(name, name)[len(META_PREFIX) :].lower(), _check_header_text(name, value))
                for name, value in request.headers.items()
                if name.lower().startswith(META_PREFIX)
            )
        )
        if sum(len(k) + len(v) for k, v in usermeta) > self.settings.meta_bytes_max:
            raise BadRequest(f"user metadata exceeds {self.settings.meta_bytes_max} bytes", 413)
        for name, value in request.headers.items():
            if name.lower().startswith(index_api.INDEX_PREFIX) or name.lower() == "link":
                _check_header_text(name, value)
        entries = index_api.parse_index_headers(self.settings, request.headers.items())
        links = index_api.parse_links(self.settings, request.headers.items())
        content = Content(body, content_type, charset, encoding, usermeta, indexes=entries, links=links)
        if not generated and _has_write_precondition(request):
            refused = await self._write_precondition(request, bucket, key, await self._read_current(bucket, key))
            if refused is not None:
                return refused
        response = await self.runtime.request(
            ClientPut(
                bucket,
                key,
                context,
                content,
                w=quorums["w"],
                dw=quorums["dw"],
                pw=quorums["pw"],
                timeout_ms=timeout,
                return_body=return_body,
            )
        )
        if isinstance(response, Failure):
            return self.failure(response)
        headers: dict[str, str] = {}
        if generated:
            headers["Location"] = style.object_url(bucket, key)
        if isinstance(response, NotFound):
            return text(404, "not found", headers)
        assert isinstance(response, Ok) and response.found is not None
        found = response.found
        vclock = self._encode_context(found.context, bucket, key)
        if not return_body or not found.values:
            headers["X-Riak-Vclock"] = vclock
            return Response(status=201 if generated else 204, headers=headers)
        if len(found.values) == 1:
            dot, stored = found.values[0]
            resp = self._object_response(bucket, dot, stored, vclock, 201 if generated else 200, style)
        else:
            resp = self._siblings_response(request, bucket, found, vclock, style)
        resp.headers.update(headers)
        return resp

    async def delete(self, request: Request, bucket: bytes, key: bytes) -> Answer:
        self.check_names(bucket, key)
        quorums = self._quorums(request.query)
        timeout = self._int_param(request, "timeout")
        context = self._context_header(request, bucket, key)
        core = self.runtime.core
        assert core is not None
        r, w = quorum.delete_quorums(quorums["r"], quorums["w"], quorums["rw"], core.bucket_props(bucket)["rw"])
        # Riak answers 404 for a key that does not exist, or is already deleted; find out first, with
        # the delete's read quorum.
        existing = await self.runtime.request(ClientGet(bucket, key, r=r, pr=quorums["pr"], timeout_ms=timeout))
        if isinstance(existing, Failure):
            return self.failure(existing)
        if isinstance(existing, NotFound):
            return self._not_found(existing, bucket, key)
        assert isinstance(existing, Ok) and existing.found is not None
        if _has_write_precondition(request):
            refused = await self._write_precondition(request, bucket, key, existing)
            if refused is not None:
                return refused
        response = await self.runtime.request(
            ClientPut(
                bucket,
                key,
                context if context is not None else existing.found.context,
                None,
                w=w,
                dw=quorums["dw"],
                pw=quorums["pw"],
                timeout_ms=timeout,
            )
        )
        if isinstance(response, Failure):
            return self.failure(response)
        return Response(status=204)

    async def _read_current(self, bucket: bytes, key: bytes) -> ClientResponse:
        return await self.runtime.request(ClientGet(bucket, key))

    async def _write_precondition(
        self, request: Request, bucket: bytes, key: bytes, current: ClientResponse
    ) -> Answer | None:
        """If-Match / If-None-Match on a write, checked against the vtags of the current siblings."""
        if isinstance(current, Failure):
            return self.failure(current)
        tags: set[str] = set()
        if isinstance(current, Ok) and current.found is not None:
            tags = {objects.vtag(dot) for dot, _ in current.found.values}
        wanted = request.headers.get("If-Match")
        if wanted is not None and not _etag_matches(wanted, tags):
            return text(412, "the object's ETag does not match If-Match")
        unwanted = request.headers.get("If-None-Match")
        if unwanted is not None and _etag_matches(unwanted, tags):
            reason = (
                "the object already exists" if unwanted.strip() == "*" else "the object's ETag matches If-None-Match"
            )
            return text(412, reason)
        return None

    # --- Responses ------------------------------------------------------------------------------------------

    def _not_found(self, response: NotFound, bucket: bytes, key: bytes) -> Response:
        headers: dict[str, str] = {}
        if response.context is not None:
            # A tombstone: its context lets a client write over the delete without a sibling.
            headers["X-Riak-Vclock"] = self._encode_context(response.context, bucket, key)
            headers["X-Riak-Deleted"] = "true"
        return text(404, "not found", headers)

    def _content_headers(self, bucket: bytes, dot: Dot, content: Content, style: UrlStyle) -> CIMultiDict[str]:
        headers: CIMultiDict[str] = CIMultiDict()
        ctype = content.content_type + (f"; charset={content.charset}" if content.charset else "")
        headers["Content-Type"] = ctype
        links = index_api.link_values(content, style.legacy)
        headers["Link"] = ", ".join([*links, f'<{style.bucket_url(bucket)}>; rel="up"'])
        headers["ETag"] = f'"{objects.vtag(dot)}"'
        headers["Last-Modified"] = _http_date(content.last_modified_us)
        if content.content_encoding:
            headers["Content-Encoding"] = content.content_encoding
        for name, value in content.usermeta:
            headers.add("X-Riak-Meta-" + name, value)
        for name, value in index_api.index_headers(content):
            headers.add(name, value)
        return headers

    def _object_response(
        self, bucket: bytes, dot: Dot, content: Content, vclock: str, status: int, style: UrlStyle
    ) -> Response:
        headers = self._content_headers(bucket, dot, content, style)
        headers["X-Riak-Vclock"] = vclock
        # The server leaves the body out of a HEAD response itself, keeping its Content-Length true.
        return Response(status=status, body=content.value, headers=headers)

    def _siblings_response(
        self, request: Request, bucket: bytes, found: Siblings, vclock: str, style: UrlStyle
    ) -> Response:
        # Riak offers the vtag list first and the siblings themselves to a client that prefers them.
        offered = _negotiate(request.headers.get("Accept"), ("text/plain", "multipart/mixed"))
        if offered == "multipart/mixed":
            boundary = secrets.token_hex(12)
            chunks: list[bytes] = []
            for dot, content in found.values:
                head = self._content_headers(bucket, dot, content, style)
                lines = "".join(f"{name}: {value}\r\n" for name, value in head.items())
                chunks.append(f"\r\n--{boundary}\r\n{lines}\r\n".encode() + content.value)
            body = b"".join(chunks) + f"\r\n--{boundary}--\r\n".encode()
            return Response(
                status=300,
                body=body,
                headers={"Content-Type": f"multipart/mixed; boundary={boundary}", "X-Riak-Vclock": vclock},
            )
        text = "Siblings:\n" + "".join(objects.vtag(dot) + "\n" for dot, _ in found.values)
        return Response(status=300, text=text, headers={"X-Riak-Vclock": vclock})

    def failure(self, response: ClientResponse) -> Response:
        return failure(response)

    # --- Parameters ---------------------------------------------------------------------------------------------

    def check_names(self, bucket: bytes, key: bytes | None) -> None:
        problem = keys.name_problem(self.settings, bucket, key)
        if problem is not None:
            raise BadRequest(problem)

    def _quorums(self, query: Mapping[str, str]) -> dict[str, int | str | None]:
        """Every quorum parameter, validated whether or not this operation uses it (as Riak does)."""
        return {name: _quorum_param(query, name) for name in QUORUM_PARAMS}

    def _int_param(self, request: Request, name: str) -> int | None:
        raw = request.query.get(name)
        if raw is None:
            return None
        if not _DIGITS.fullmatch(raw) or len(raw) > 9 or int(raw) == 0:
            raise BadRequest(f"{name} must be a positive integer (milliseconds); got {raw!r}")
        return int(raw)

    def _context_header(self, request: Request, bucket: bytes, key: bytes) -> Context | None:
        """The context of a write. A client that merged replica reads itself sends the signed contexts
        of the copies it merged, comma-separated (base64 has no comma): each is verified, and their join
        is the context of the merged object; the first names the replica that answered first."""
        raw = request.headers.get("X-Riak-Vclock")
        if raw is None or not raw.strip():
            return None
        parts = raw.split(",")
        if len(parts) > self.settings.n_val_max:
            raise BadRequest(f"bad X-Riak-Vclock: more than n_val_max={self.settings.n_val_max} contexts")
        joined = self._decode_context(parts[0], bucket, key, "X-Riak-Vclock")
        for part in parts[1:]:
            joined = joined.join(self._decode_context(part, bucket, key, "X-Riak-Vclock"))
        return joined

    def _decode_context(self, raw: str, bucket: bytes, key: bytes, what: str) -> Context:
        """A context a client sends back (`what` names where it came in), or a 400."""
        core = self.runtime.core
        assert core is not None
        problem: ContextError | None = None
        # The current key first; during a rotation of the secret, contexts made under the previous one.
        for context_key in core.cluster_keys().keys(CONTEXT):
            try:
                return ctxcodec.decode(raw, context_key, bucket, key, self.settings.context_extra_dots_max)
            except ContextError as exc:
                problem = problem or exc
        raise BadRequest(f"bad {what}: {problem}")

    def _encode_context(self, context: Context, bucket: bytes, key: bytes) -> str:
        core = self.runtime.core
        assert core is not None
        return ctxcodec.encode(context, core.cluster_keys().signing(CONTEXT), bucket, key)


# --- Helpers ------------------------------------------------------------------------------------------------


def _of_type(names: tuple[bytes, ...], type_name: str) -> tuple[bytes, ...]:
    """The buckets of `type_name` among node-side bucket names, as their clients name them."""
    out: list[bytes] = []
    for name in names:
        of, bucket = buckettypes.split(name)
        if of == type_name:
            out.append(bucket)
    return tuple(out)


def _datatype_bucket(style: UrlStyle, datatype: str) -> str:
    return (
        f"bucket type {style.type_name} holds {datatype}s: use {style.objects}/BUCKET/datatypes/KEY"
        " (a plain object cannot be stored there)"
    )


def _quorum_param(query: Mapping[str, str], name: str) -> int | str | None:
    raw = query.get(name)
    return None if raw is None else _quorum_value(name, raw)


def _quorum_value(name: str, raw: object) -> int | str:
    """A quorum as a client gave it (see quorum.parse), or a 400."""
    try:
        return quorum.parse(name, raw)
    except quorum.QuorumError as exc:
        raise BadRequest(str(exc)) from None


def _check_header_text(name: str, value: str) -> str:
    """A request header's text, refused if it was not UTF-8: the server maps such bytes to lone surrogates,
    which can be neither stored nor sent back."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(f"header {name.encode(errors='replace')!r} is not valid UTF-8") from None
    return value


def _split_content_type(header: str | None) -> tuple[str, str | None]:
    """The media type and charset of a request's Content-Type; a missing one means opaque bytes, and
    one that is not `type/subtype` is refused with 415, as Riak does."""
    if header is None or not header.strip():
        return "application/octet-stream", None
    main, _, params = header.partition(";")
    main = main.strip()
    kind, slash, subtype = main.partition("/")
    if not slash or not _TOKEN.fullmatch(kind) or not _TOKEN.fullmatch(subtype):
        raise BadRequest(f"{main!r} is not a valid media type for the Content-Type header", 415)
    charset = None
    for param in params.split(";"):
        name, _, value = param.strip().partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"'):
            charset = value.strip().strip('"')
            if not _TOKEN.fullmatch(charset):
                raise BadRequest(f"{charset!r} is not a valid charset name", 415)
    return main, charset


def _negotiate(accept: str | None, offers: tuple[str, ...]) -> str:
    """The offer the Accept header ranks highest by q-value, the most specific matching range deciding;
    ties go to the earlier offer. With no Accept, or nothing acceptable, the first offer is served."""
    if accept is None or not accept.strip():
        return offers[0]
    ranges: list[tuple[str, float]] = []
    for item in accept.split(","):
        media, *params = item.split(";")
        quality = 1.0
        for param in params:
            name, _, value = param.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
                if not 0.0 <= quality <= 1.0:
                    quality = 0.0
        ranges.append((media.strip().lower(), quality))

    def rank(offer: str) -> float:
        kind = offer.split("/")[0]
        for pattern in (offer, kind + "/*", "*/*"):
            qualities = [q for media, q in ranges if media == pattern]
            if qualities:
                return max(qualities)
        return 0.0

    best, best_rank = offers[0], 0.0
    for offer in offers:
        if rank(offer) > best_rank:
            best, best_rank = offer, rank(offer)
    return best


def _etag_matches(header: str, tags: set[str]) -> bool:
    """Whether an If-Match / If-None-Match list names one of `tags`; `*` matches any existing object.
    Weak and unquoted tags are accepted, as clients send both."""
    for item in header.split(","):
        tag = item.strip()
        if tag == "*":
            return bool(tags)
        if tag[:2] in ("W/", "w/"):
            tag = tag[2:]
        if tag.strip('"') in tags:
            return True
    return False


def _has_write_precondition(request: Request) -> bool:
    return "If-Match" in request.headers or "If-None-Match" in request.headers


def _read_precondition(request: Request, vtag: str, last_modified_s: int) -> Response | None:
    """The conditional GET of RFC 9110 §13.2.2: If-Match, then If-None-Match (or, without it,
    If-Modified-Since). A 304 carries the validators the client compares."""
    wanted = request.headers.get("If-Match")
    if wanted is not None and not _etag_matches(wanted, {vtag}):
        return text(412, "the object's ETag does not match If-Match")
    unchanged = {"ETag": f'"{vtag}"', "Last-Modified": _http_date(last_modified_s * 1_000_000)}
    unwanted = request.headers.get("If-None-Match")
    if unwanted is not None:
        return Response(status=304, headers=unchanged) if _etag_matches(unwanted, {vtag}) else None
    since = request.headers.get("If-Modified-Since")
    if since is not None:
        try:
            parsed = email.utils.parsedate_to_datetime(since)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if parsed.tzinfo is not None and last_modified_s <= parsed.timestamp():
            return Response(status=304, headers=unchanged)
    return None


def _http_date(micros: int) -> str:
    return http_date(micros // 1_000_000)


def make_server(runtime: NodeRuntime, api: Api | None = None) -> HttpServer:
    """The node's HTTP server for `api` (a new one by default; the PB API shares the node's), not yet
    listening. Bodies are bounded: the object limit plus room for nothing else (metadata travels in
    headers)."""
    api = api if api is not None else Api(runtime)
    server = HttpServer(
        api.dispatch,
        body_bytes_max=runtime.settings.object_bytes_max + 64 * 1024,
        idle_timeout_s=runtime.settings.http_idle_timeout_ms / 1000,
        connections_max=runtime.settings.http_connections_max,
        body_buffer_bytes_max=runtime.settings.http_body_buffer_bytes_max,
    )
    api.server = server
    return server
