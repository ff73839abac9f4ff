"""The HTTP API: the key/value subset of Riak KV's HTTP interface, so Riak HTTP clients work unchanged.

Routes are parsed from the raw path (bucket and key are percent-decoded to bytes), so any binary key
round-trips, `%2F` included. Both the current (`/buckets/B/keys/K`, `/types/default/buckets/...`) and
the legacy (`/riak/B/K`) forms are served. Every input is validated before it reaches the node; bad
input gets a 4xx with a plain-text reason and changes nothing. A 500 means a bug.

Beyond Riak's resources, `/ring` serves the ring for partition-aware clients and `/admin/...` serves
the cluster commands of the CLI.
"""

from __future__ import annotations

import email.utils
import json
import logging
import secrets
import uuid
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote, unquote_to_bytes

from aiohttp import web
from multidict import CIMultiDict

from dynastore import __version__
from dynastore.api import admin
from dynastore.core import context as ctxcodec
from dynastore.core import objects
from dynastore.core.context import ContextError
from dynastore.core.messages import (
    QUORUM_WORDS,
    ClientGet,
    ClientListKeys,
    ClientPut,
    ClientResponse,
    ClientSetBucketProps,
    Failure,
    NotFound,
    Ok,
    Siblings,
)
from dynastore.core.objects import Content
from dynastore.core.versions import Context, Dot
from dynastore.runtime.node import NodeRuntime

log = logging.getLogger("dynastore.http")

# The Riak KV release whose HTTP API this one follows; clients use it for feature detection.
RIAK_KV_VERSION = "2.2.3"
RESOURCES = {
    "riak_kv_wm_buckets": "/buckets",
    "riak_kv_wm_keylist": "/buckets",
    "riak_kv_wm_object": "/buckets",
    "riak_kv_wm_ping": "/ping",
    "riak_kv_wm_props": "/buckets",
    "riak_kv_wm_stats": "/stats",
}
STATUS_OF_FAILURE = {
    "bad_request": 400,
    "too_large": 413,
    "too_many_siblings": 409,
    "unavailable": 503,
    "timeout": 503,
    "overload": 503,
}
META_PREFIX = "x-riak-meta-"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class BadRequest(Exception):
    """Client input that cannot be accepted; the message is the plain-text reason."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.status = status


def _text(status: int, body: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, text=body if body.endswith("\n") else body + "\n", headers=headers)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, text=json.dumps(data), content_type="application/json")


class Api:
    def __init__(self, runtime: NodeRuntime) -> None:
        self.runtime = runtime
        self.settings = runtime.settings
        self.secret = (self.settings.cluster_secret or self.settings.cluster_name).encode()

    # --- Dispatch -------------------------------------------------------------------------------------------

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._route(request)
        except BadRequest as exc:
            return _text(exc.status, str(exc))
        except web.HTTPRequestEntityTooLarge:
            return _text(413, f"request body exceeds the limit of {self.settings.object_bytes_max} bytes")
        except web.HTTPException:
            raise
        except Exception:
            log.exception("internal error serving %s %s", request.method, request.path)
            return _text(500, "internal error")

    async def _route(self, request: web.Request) -> web.StreamResponse:
        raw = request.rel_url.raw_path
        parts = [unquote_to_bytes(p) for p in raw.strip("/").split("/")] if raw.strip("/") else []
        method = request.method
        if parts[:3] == [b"types", b"default", b"buckets"]:
            parts = parts[2:]
        elif parts and parts[0] == b"types":
            raise BadRequest("only the default bucket type exists", 404)
        if not parts:
            return self._only(method, "GET", self.resources, request)
        head = parts[0]
        if head == b"ping" and len(parts) == 1:
            return _text(200, "OK") if method in ("GET", "HEAD") else _text(405, "Method Not Allowed")
        if head == b"stats" and len(parts) == 1:
            return await self._only_async(method, "GET", self.stats, request)
        if head == b"ring" and len(parts) == 1:
            return await self._only_async(method, "GET", self.ring, request)
        if head == b"admin":
            return await admin.handle(self, request, parts[1:])
        if head == b"buckets":
            return await self._buckets(request, parts[1:])
        if head == b"riak":
            return await self._legacy(request, parts[1:])
        return _text(404, "Not Found")

    async def _buckets(self, request: web.Request, rest: list[bytes]) -> web.StreamResponse:
        method = request.method
        if not rest:
            return await self._only_async(method, "GET", self.list_buckets, request)
        bucket = rest[0]
        if len(rest) == 2 and rest[1] == b"props":
            if method == "GET":
                return self.get_props(bucket)
            if method in ("PUT", "POST"):
                return await self.set_props(request, bucket)
            if method == "DELETE":
                return await self.reset_props(bucket)
            return _text(405, "Method Not Allowed")
        if len(rest) == 2 and rest[1] == b"keys":
            if method == "GET":
                return await self.list_keys(request, bucket)
            if method == "POST":
                return await self.store(request, bucket, None)
            return _text(405, "Method Not Allowed")
        if len(rest) == 3 and rest[1] == b"keys":
            return await self._object(request, bucket, rest[2])
        if len(rest) == 4 and rest[1] == b"keys" and rest[3] == b"preflist":
            return self._only(method, "GET", lambda r: self.preflist(bucket, rest[2]), request)
        return _text(404, "Not Found")

    async def _legacy(self, request: web.Request, rest: list[bytes]) -> web.StreamResponse:
        if len(rest) == 1:
            if request.method == "GET":
                if request.query.get("keys") in ("true", "stream"):
                    return await self.list_keys(request, rest[0])
                return self.get_props(rest[0])
            if request.method in ("PUT", "POST") and request.content_type == "application/json":
                return await self.set_props(request, rest[0])
            if request.method == "POST":
                return await self.store(request, rest[0], None)
            return _text(405, "Method Not Allowed")
        if len(rest) == 2:
            return await self._object(request, rest[0], rest[1])
        return _text(404, "Not Found")

    async def _object(self, request: web.Request, bucket: bytes, key: bytes) -> web.StreamResponse:
        method = request.method
        if method in ("GET", "HEAD"):
            return await self.fetch(request, bucket, key)
        if method in ("PUT", "POST"):
            return await self.store(request, bucket, key)
        if method == "DELETE":
            return await self.delete(request, bucket, key)
        return _text(405, "Method Not Allowed")

    def _only(
        self, method: str, allowed: str, handler: Callable[[web.Request], web.StreamResponse], request: web.Request
    ) -> web.StreamResponse:
        if method != allowed and not (allowed == "GET" and method == "HEAD"):
            return _text(405, "Method Not Allowed")
        return handler(request)

    async def _only_async(
        self, method: str, allowed: str, handler: Handler, request: web.Request
    ) -> web.StreamResponse:
        if method != allowed and not (allowed == "GET" and method == "HEAD"):
            return _text(405, "Method Not Allowed")
        return await handler(request)

    # --- Simple resources ---------------------------------------------------------------------------------

    def resources(self, request: web.Request) -> web.StreamResponse:
        if "application/json" in request.headers.get("Accept", "") or "*/*" not in request.headers.get("Accept", "*/*"):
            return _json(RESOURCES)
        links = "".join(f'<li><a href="{path}">{name}</a></li>' for name, path in RESOURCES.items())
        return web.Response(text=f"<html><body><ul>{links}</ul></body></html>", content_type="text/html")

    async def stats(self, request: web.Request) -> web.StreamResponse:
        data = self.runtime.stats()
        data.update(
            {
                "riak_kv_version": RIAK_KV_VERSION,
                "riak_core_version": RIAK_KV_VERSION,
                "dynastore_version": __version__,
                "sys_driver_version": "dynastore",
            }
        )
        return _json(data)

    async def ring(self, request: web.Request) -> web.StreamResponse:
        core = self.runtime.core
        assert core is not None
        state = core.cluster
        return _json(
            {
                "cluster": state.cluster,
                "version": state.ring.version,
                "ring_size": core.ring.size,
                "owners": list(core.ring.owners),
                "members": {
                    m.name: {"host": m.host, "http_port": m.http_port, "peer_port": m.peer_port, "status": m.status}
                    for m in state.members
                },
                "n_val": self.settings.n_val,
            }
        )

    def preflist(self, bucket: bytes, key: bytes) -> web.StreamResponse:
        core = self.runtime.core
        assert core is not None
        self.check_names(bucket, key)
        _, plist = core.preference_list(bucket, key)
        healthy = core.healthy(self.runtime.clock.now_ms())
        entries = [{"partition": t_partition, "node": node, "primary": True} for t_partition, node in plist.primaries]
        # Riak lists the fallbacks that stand in for down primaries as non-primary entries.
        for target in plist.targets(healthy):
            if not target.primary:
                where = next(p for p, n in plist.fallbacks if n == target.node)
                entries.append({"partition": where, "node": target.node, "primary": False})
        return _json({"preflist": entries})

    # --- Bucket properties --------------------------------------------------------------------------------

    def get_props(self, bucket: bytes) -> web.StreamResponse:
        core = self.runtime.core
        assert core is not None
        self.check_names(bucket, b"-")
        props = core.bucket_props(bucket)
        props["name"] = bucket.decode(errors="replace")
        props["basic_quorum"] = False
        props["notfound_ok"] = True
        props["rw"] = "quorum"
        return _json({"props": props})

    async def set_props(self, request: web.Request, bucket: bytes) -> web.StreamResponse:
        self.check_names(bucket, b"-")
        try:
            body = await request.json(loads=json.loads)
        except (ValueError, UnicodeDecodeError):
            raise BadRequest('body must be JSON of the form {"props": {...}}') from None
        if not isinstance(body, dict) or not isinstance(body.get("props"), dict):
            raise BadRequest('body must be JSON of the form {"props": {...}}')
        ignored = {
            "name",
            "basic_quorum",
            "notfound_ok",
            "rw",
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
        props = tuple(sorted((k, v) for k, v in body["props"].items() if k not in ignored))
        response = await self.runtime.request(ClientSetBucketProps(bucket, props))
        if isinstance(response, Failure):
            return self.failure(response)
        return web.Response(status=204)

    async def reset_props(self, bucket: bytes) -> web.StreamResponse:
        defaults = self.settings
        props = (
            ("allow_mult", defaults.allow_mult),
            ("last_write_wins", defaults.last_write_wins),
            ("n_val", defaults.n_val),
            ("r", "quorum"),
            ("w", "quorum"),
        )
        response = await self.runtime.request(ClientSetBucketProps(bucket, props))
        if isinstance(response, Failure):
            return self.failure(response)
        return web.Response(status=204)

    # --- Listing --------------------------------------------------------------------------------------------

    async def list_buckets(self, request: web.Request) -> web.StreamResponse:
        if request.query.get("buckets") not in ("true", "stream"):
            raise BadRequest("list buckets with ?buckets=true")
        response = await self.runtime.request(ClientListKeys(None, self._int_param(request, "timeout")))
        if isinstance(response, Failure):
            return self.failure(response)
        assert isinstance(response, Ok)
        names = [b.decode(errors="replace") for b in response.keys]
        return _json({"buckets": names})

    async def list_keys(self, request: web.Request, bucket: bytes) -> web.StreamResponse:
        mode = request.query.get("keys")
        if mode not in ("true", "stream"):
            if request.query.get("props") == "false" or mode == "false":
                raise BadRequest("list keys with ?keys=true or ?keys=stream")
            return self.get_props(bucket)
        self.check_names(bucket, b"-")
        response = await self.runtime.request(ClientListKeys(bucket, self._int_param(request, "timeout")))
        if isinstance(response, Failure):
            return self.failure(response)
        assert isinstance(response, Ok)
        names = [k.decode(errors="replace") for k in response.keys]
        if mode == "true":
            return _json({"keys": names})
        stream = web.StreamResponse(headers={"Content-Type": "application/json"})
        stream.enable_chunked_encoding()
        await stream.prepare(request)
        for start in range(0, len(names), 1000):
            await stream.write(json.dumps({"keys": names[start : start + 1000]}).encode())
        await stream.write(json.dumps({"keys": []}).encode())
        await stream.write_eof()
        return stream

    # --- Objects ---------------------------------------------------------------------------------------------

    async def fetch(self, request: web.Request, bucket: bytes, key: bytes) -> web.StreamResponse:
        self.check_names(bucket, key)
        query = request.query
        response = await self.runtime.request(
            ClientGet(
                bucket,
                key,
                r=self._quorum(query, "r"),
                pr=self._quorum(query, "pr"),
                timeout_ms=self._int_param(request, "timeout"),
            )
        )
        if isinstance(response, Failure):
            return self.failure(response)
        if isinstance(response, NotFound):
            headers = {}
            if response.context is not None:
                headers["X-Riak-Vclock"] = self._encode_context(response.context, bucket, key)
            return _text(404, "not found", headers)
        assert isinstance(response, Ok) and response.found is not None
        found = response.found
        vclock = self._encode_context(found.context, bucket, key)
        wanted = query.get("vtag")
        if wanted is not None:
            for dot, content in found.values:
                if objects.vtag(dot) == wanted:
                    return self._object_response(request, bucket, dot, content, vclock, 200)
            return _text(404, f"no sibling with vtag {wanted}")
        if len(found.values) == 1:
            dot, content = found.values[0]
            return self._object_response(request, bucket, dot, content, vclock, 200)
        return self._siblings_response(request, bucket, found, vclock)

    async def store(self, request: web.Request, bucket: bytes, key: bytes | None) -> web.StreamResponse:
        generated = key is None
        if key is None:
            key = uuid.uuid4().hex.encode()
        self.check_names(bucket, key)
        query = request.query
        limit = self.settings.object_bytes_max
        declared = request.content_length
        if declared is not None and declared > limit:
            return _text(413, f"object of {declared} bytes exceeds the limit of {limit} bytes")
        body = await request.read()
        if len(body) > limit:
            return _text(413, f"object of {len(body)} bytes exceeds the limit of {limit} bytes")
        if any(name.lower().startswith("x-riak-index-") for name in request.headers):
            raise BadRequest("secondary indexes (X-Riak-Index-*) are not supported")
        context = self._context_header(request, bucket, key)
        content_type, charset = _split_content_type(request.headers.get("Content-Type"))
        usermeta = tuple(
            sorted(
                (name[len(META_PREFIX) :].lower(), value)
                for name, value in request.headers.items()
                if name.lower().startswith(META_PREFIX)
            )
        )
        if sum(len(k) + len(v) for k, v in usermeta) > self.settings.meta_bytes_max:
            raise BadRequest(f"user metadata exceeds {self.settings.meta_bytes_max} bytes", 413)
        content = Content(body, content_type, charset, request.headers.get("Content-Encoding"), usermeta)
        return_body = _bool_param(query, "returnbody")
        if request.headers.get("If-None-Match") == "*" or request.headers.get("If-Match"):
            precondition = await self._precondition(request, bucket, key)
            if precondition is not None:
                return precondition
        response = await self.runtime.request(
            ClientPut(
                bucket,
                key,
                context,
                content,
                w=self._quorum(query, "w"),
                dw=self._quorum(query, "dw"),
                pw=self._quorum(query, "pw"),
                timeout_ms=self._int_param(request, "timeout"),
                return_body=return_body,
            )
        )
        if isinstance(response, Failure):
            return self.failure(response)
        location = "/buckets/" + quote(bucket, safe="") + "/keys/" + quote(key, safe="")
        headers: dict[str, str] = {}
        if generated:
            headers["Location"] = location
        if isinstance(response, NotFound):
            return _text(404, "not found", headers)
        assert isinstance(response, Ok) and response.found is not None
        found = response.found
        vclock = self._encode_context(found.context, bucket, key)
        if not return_body or not found.values:
            headers["X-Riak-Vclock"] = vclock
            return web.Response(status=201 if generated else 204, headers=headers)
        if len(found.values) == 1:
            dot, content = found.values[0]
            resp = self._object_response(request, bucket, dot, content, vclock, 201 if generated else 200)
        else:
            resp = self._siblings_response(request, bucket, found, vclock)
        resp.headers.update(headers)
        return resp

    async def delete(self, request: web.Request, bucket: bytes, key: bytes) -> web.StreamResponse:
        self.check_names(bucket, key)
        query = request.query
        context = self._context_header(request, bucket, key)
        r = self._quorum(query, "r")
        self._quorum(query, "pr")
        rw = self._quorum(query, "rw")
        w = self._quorum(query, "w") or rw
        timeout = self._int_param(request, "timeout")
        # Riak answers 404 for a key that does not exist; find out first, with the delete's quorum.
        existing = await self.runtime.request(ClientGet(bucket, key, r=r or rw, timeout_ms=timeout))
        if isinstance(existing, Failure):
            return self.failure(existing)
        if isinstance(existing, NotFound) and existing.context is None:
            return _text(404, "not found")
        if context is None:
            context = existing.context if isinstance(existing, NotFound) else None
            if isinstance(existing, Ok) and existing.found is not None:
                context = existing.found.context
        response = await self.runtime.request(
            ClientPut(
                bucket,
                key,
                context,
                None,
                w=w,
                dw=self._quorum(query, "dw"),
                pw=self._quorum(query, "pw"),
                timeout_ms=timeout,
            )
        )
        if isinstance(response, Failure):
            return self.failure(response)
        return web.Response(status=204)

    async def _precondition(self, request: web.Request, bucket: bytes, key: bytes) -> web.StreamResponse | None:
        current = await self.runtime.request(ClientGet(bucket, key))
        if isinstance(current, Failure):
            return self.failure(current)
        exists = isinstance(current, Ok) and current.found is not None and bool(current.found.values)
        if request.headers.get("If-None-Match") == "*" and exists:
            return _text(412, "the object already exists")
        wanted = request.headers.get("If-Match")
        if wanted:
            tags = set()
            if isinstance(current, Ok) and current.found is not None:
                tags = {objects.vtag(dot) for dot, _ in current.found.values}
            if wanted.strip('"') not in tags:
                return _text(412, "the object's ETag does not match If-Match")
        return None

    # --- Responses ------------------------------------------------------------------------------------------

    def _content_headers(self, bucket: bytes, dot: Dot, content: Content) -> CIMultiDict[str]:
        headers: CIMultiDict[str] = CIMultiDict()
        ctype = content.content_type + (f"; charset={content.charset}" if content.charset else "")
        headers["Content-Type"] = ctype
        headers["Link"] = f'</buckets/{quote(bucket, safe="")}>; rel="up"'
        headers["ETag"] = f'"{objects.vtag(dot)}"'
        headers["Last-Modified"] = email.utils.formatdate(content.last_modified_us / 1_000_000, usegmt=True)
        if content.content_encoding:
            headers["Content-Encoding"] = content.content_encoding
        for name, value in content.usermeta:
            headers.add("X-Riak-Meta-" + name, value)
        return headers

    def _object_response(
        self, request: web.Request, bucket: bytes, dot: Dot, content: Content, vclock: str, status: int
    ) -> web.Response:
        headers = self._content_headers(bucket, dot, content)
        headers["X-Riak-Vclock"] = vclock
        etag = headers["ETag"]
        if (
            request.method == "GET"
            and status == 200
            and request.headers.get("If-None-Match") in (etag, etag.strip('"'))
        ):
            return web.Response(status=304, headers={"ETag": etag, "X-Riak-Vclock": vclock})
        body = b"" if request.method == "HEAD" else content.value
        return web.Response(status=status, body=body, headers=headers)

    def _siblings_response(self, request: web.Request, bucket: bytes, found: Siblings, vclock: str) -> web.Response:
        accept = request.headers.get("Accept", "")
        if "multipart/mixed" in accept:
            boundary = secrets.token_hex(12)
            chunks: list[bytes] = []
            for dot, content in found.values:
                head = self._content_headers(bucket, dot, content)
                lines = "".join(f"{name}: {value}\r\n" for name, value in head.items())
                chunks.append(f"\r\n--{boundary}\r\n{lines}\r\n".encode() + content.value)
            body = b"".join(chunks) + f"\r\n--{boundary}--\r\n".encode()
            return web.Response(
                status=300,
                body=body,
                headers={"Content-Type": f"multipart/mixed; boundary={boundary}", "X-Riak-Vclock": vclock},
            )
        text = "Siblings:\n" + "".join(objects.vtag(dot) + "\n" for dot, _ in found.values)
        return web.Response(status=300, text=text, headers={"X-Riak-Vclock": vclock})

    def failure(self, failure: ClientResponse) -> web.Response:
        assert isinstance(failure, Failure)
        return _text(STATUS_OF_FAILURE.get(failure.kind, 503), failure.reason)

    # --- Parameters ---------------------------------------------------------------------------------------------

    def check_names(self, bucket: bytes, key: bytes) -> None:
        if not bucket or len(bucket) > self.settings.bucket_bytes_max:
            raise BadRequest(f"bucket must be 1 to {self.settings.bucket_bytes_max} bytes")
        if not key or len(key) > self.settings.key_bytes_max:
            raise BadRequest(f"key must be 1 to {self.settings.key_bytes_max} bytes")

    def _quorum(self, query: Any, name: str) -> int | str | None:
        raw = query.get(name)
        if raw is None:
            return None
        value: str = raw.strip().lower()
        if value in QUORUM_WORDS:
            return value
        if value.isdigit() and len(value) < 6:
            return int(value)
        raise BadRequest(f"{name} must be an integer or one of {', '.join(QUORUM_WORDS)}; got {raw!r}")

    def _int_param(self, request: web.Request, name: str) -> int | None:
        raw = request.query.get(name)
        if raw is None:
            return None
        if not raw.isdigit() or len(raw) > 9 or int(raw) == 0:
            raise BadRequest(f"{name} must be a positive integer (milliseconds); got {raw!r}")
        return int(raw)

    def _context_header(self, request: web.Request, bucket: bytes, key: bytes) -> Context | None:
        raw = request.headers.get("X-Riak-Vclock")
        if raw is None or not raw.strip():
            return None
        try:
            return ctxcodec.decode(raw, self.secret, bucket, key, self.settings.context_extra_dots_max)
        except ContextError as exc:
            raise BadRequest(f"bad X-Riak-Vclock: {exc}") from None

    def _encode_context(self, context: Context, bucket: bytes, key: bytes) -> str:
        return ctxcodec.encode(context, self.secret, bucket, key)


def _bool_param(query: Any, name: str) -> bool:
    raw = query.get(name)
    if raw is None:
        return False
    value = raw.strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise BadRequest(f"{name} must be true or false; got {raw!r}")


def _split_content_type(header: str | None) -> tuple[str, str | None]:
    if not header:
        return "application/octet-stream", None
    main, _, params = header.partition(";")
    charset = None
    for param in params.split(";"):
        name, _, value = param.strip().partition("=")
        if name.lower() == "charset" and value:
            charset = value.strip('"')
    return main.strip() or "application/octet-stream", charset


def make_app(runtime: NodeRuntime) -> web.Application:
    api = Api(runtime)
    # Bodies are bounded: the object limit plus room for nothing else (metadata travels in headers).
    app = web.Application(client_max_size=runtime.settings.object_bytes_max + 64 * 1024)
    app.router.add_route("*", "/{tail:.*}", api.dispatch)
    return app
