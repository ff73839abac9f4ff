"""Riak's Protocol Buffers API (port 8087 in Riak; `pb_port` here), for the clients that speak only it:
what each request does. The listener (connections, frames, bounds) is listener.py; the data-type
translation dtops.py; the messages schema.py.

Every operation is the HTTP API's: the handlers call the same node requests (ClientGet, ClientPut,
ClientListKeys, ClientSetBucketProps, ClientBucketType) through the same helpers of api/http.py's Api
(name checks, contexts, bucket props, listing pages) and api/datatypes.py, and the same Guard
(api/auth.py) decides who may do what, with Riak's permission names. An unknown code, a body that
does not decode as its message, a message missing required fields or any refused input is answered
with RpbErrorResp and nothing is done.

Security. With security on, a connection must authenticate (RpbAuthReq) before any request but
RpbPingReq, RpbStartTls and RpbAuthReq, which get RpbErrorResp until then. RpbAuthReq needs TLS, as
in Riak, under the rule the HTTP API follows too: passwords travel only inside TLS, except on a node
that has no TLS configured and serves loopback only (a network node with security on and no TLS
refuses to start, runtime/node.py, and security cannot be enabled while a member serves the network
without TLS, core/security.py). With TLS configured, RpbStartTls upgrades the connection with the
node's certificate (net/tls.py, as its HTTPS listener), and every request but RpbPingReq and
RpbStartTls must come inside TLS, whether security is on or not: the node's HTTP is HTTPS only too.

Secondary indexes and links: RpbContent carries a sibling's index entries (RpbPair field -> term) and
links (RpbLink), checked on a write by the same rules as HTTP's X-Riak-Index-* and Link headers
(core/indexes.py) and given back on every read; RpbIndexReq runs the query HTTP's /index routes run
(api/indexes.py: parse_query, query_pages), answered whole or streamed as RpbIndexResp frames.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

from dynastore.api import datatypes as dtapi
from dynastore.api import indexes as index_api
from dynastore.api.answers import BadRequest
from dynastore.api.auth import Guard
from dynastore.api.http import DATATYPE_CONTENT_TYPES, IGNORED_PROPS, RIAK_KV_VERSION, Api
from dynastore.api.pb import schema
from dynastore.api.pb.dtops import DT_TYPES, dt_op, map_entries
from dynastore.api.pb.framing import Frame
from dynastore.api.pb.listener import PbError, PbServer, Session, utf8
from dynastore.api.server import Response
from dynastore.core import buckettypes, crdt, indexes, objects, quorum, security
from dynastore.core import datatypes as dt
from dynastore.core.indexes import Position
from dynastore.core.messages import (
    ClientBucketType,
    ClientGet,
    ClientPut,
    ClientResponse,
    ClientSetBucketProps,
    DtUpdate,
    Failure,
    NotFound,
    Ok,
)
from dynastore.core.objects import Content
from dynastore.core.versions import Context, Dot
from dynastore.net import tls
from dynastore.runtime.node import NodeRuntime

log = logging.getLogger("dynastore.pb")

# Riak's symbolic quorums on the wire (riak_pb_kv_codec.hrl: UINT_MAX - 1 ... UINT_MAX - 4).
UINT_MAX: Final = 0xFFFFFFFF
QUORUM_WORDS: Final = {UINT_MAX - 1: "one", UINT_MAX - 2: "quorum", UINT_MAX - 3: "all", UINT_MAX - 4: "default"}
QUORUM_CODES: Final = {word: code for code, word in QUORUM_WORDS.items()}
# A client id (deprecated since Riak 1.0: vector clocks name vnodes, not clients) is kept, not used.
CLIENT_ID_BYTES_MAX: Final = 64
# What RpbBucketProps carries that dynastore has, and what it takes and leaves as it is (as HTTP does).
QUORUM_PROPS: Final = ("r", "w", "rw", "pr", "pw", "dw")
PLAIN_PROPS: Final = ("n_val", "allow_mult", "last_write_wins", "hll_precision")
IGNORED_PB_PROPS: Final = frozenset(IGNORED_PROPS | {"has_precommit", "has_postcommit"})
# Riak machinery dynastore does not have: a client may say it is off, not ask for it.
UNSUPPORTED_PROPS: Final = ("backend", "search", "repl", "search_index", "consistent", "write_once")
# An HTTP header name: what a user metadata key must be, so that HTTP clients can read it too.
_TOKEN: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# The requests that may come before authentication when security is on.
OPEN_CODES: Final = frozenset({schema.CODES["RpbPingReq"], schema.CODES["RpbStartTls"], schema.CODES["RpbAuthReq"]})
# The requests a node with TLS configured answers outside TLS.
PLAIN_CODES: Final = frozenset({schema.CODES["RpbPingReq"], schema.CODES["RpbStartTls"]})


@dataclass(frozen=True, slots=True)
class Need:
    """What a request needs when security is on (api/auth.py's Need, for PB): None is any user."""

    permission: str | None
    bucket_type: str | None = None
    bucket: bytes | None = None


def _msg(name: str, **fields: Any) -> Any:
    return schema.message(name)(**fields)


def _quorum(req: Any, name: str) -> int | str | None:
    """A quorum field: absent is None, Riak's codes their words; anything else must be a sane count."""
    if not req.HasField(name):
        return None
    raw = getattr(req, name)
    value = QUORUM_WORDS.get(raw, raw)
    try:
        return quorum.parse(name, value)
    except quorum.QuorumError as exc:
        raise PbError(str(exc)) from None


def _timeout(req: Any) -> int | None:
    if "timeout" not in req.DESCRIPTOR.fields_by_name or not req.HasField("timeout"):
        return None
    if req.timeout == 0:
        raise PbError("timeout must be a positive number of milliseconds")
    return int(req.timeout)


def _failure(response: ClientResponse) -> PbError:
    assert isinstance(response, Failure)
    return PbError(response.reason)


Handler = Callable[[Session, Any], Awaitable[None]]


class PbApi:
    """The handlers of each request code, over one node's runtime and its HTTP API's helpers."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.runtime: NodeRuntime = api.runtime
        self.settings = api.settings
        self.guard: Guard = api.guard
        self.tls_required = tls.enabled(self.settings)
        # code -> (request message name or None for a bare code, handler, what it needs)
        self.routes: dict[int, tuple[str | None, Handler, Callable[[Any], Need]]] = {}
        route = self._route
        any_user = self._anyone
        route("RpbPingReq", None, self.ping, any_user)
        route("RpbGetServerInfoReq", None, self.server_info, any_user)
        route("RpbGetClientIdReq", None, self.get_client_id, any_user)
        route("RpbSetClientIdReq", "RpbSetClientIdReq", self.set_client_id, any_user)
        route("RpbGetReq", "RpbGetReq", self.get, self._on_bucket("riak_kv.get"))
        route("RpbPutReq", "RpbPutReq", self.put, self._on_bucket("riak_kv.put"))
        route("RpbDelReq", "RpbDelReq", self.delete, self._on_bucket("riak_kv.delete"))
        route("RpbListBucketsReq", "RpbListBucketsReq", self.list_buckets, self._on_type("riak_kv.list_buckets"))
        route("RpbListKeysReq", "RpbListKeysReq", self.list_keys, self._on_bucket("riak_kv.list_keys"))
        route("RpbGetBucketReq", "RpbGetBucketReq", self.get_bucket, self._on_bucket("riak_core.get_bucket"))
        route("RpbSetBucketReq", "RpbSetBucketReq", self.set_bucket, self._on_bucket("riak_core.set_bucket"))
        route("RpbResetBucketReq", "RpbResetBucketReq", self.reset_bucket, self._on_bucket("riak_core.set_bucket"))
        route("RpbGetBucketTypeReq", "RpbGetBucketTypeReq", self.get_type, self._on_type("riak_core.get_bucket_type"))
        route("RpbSetBucketTypeReq", "RpbSetBucketTypeReq", self.set_type, self._on_type("riak_core.set_bucket_type"))
        route("RpbGetBucketKeyPreflistReq", "RpbGetBucketKeyPreflistReq", self.preflist, self._on_bucket("riak_kv.get"))
        route("RpbIndexReq", "RpbIndexReq", self.index, self._on_bucket("riak_kv.index"))
        route("RpbCounterUpdateReq", "RpbCounterUpdateReq", self.counter_update, self._on_bucket("riak_kv.put"))
        route("RpbCounterGetReq", "RpbCounterGetReq", self.counter_get, self._on_bucket("riak_kv.get"))
        route("DtFetchReq", "DtFetchReq", self.dt_fetch, self._on_bucket("riak_kv.get"))
        route("DtUpdateReq", "DtUpdateReq", self.dt_update, self._on_bucket("riak_kv.put"))
        route("RpbStartTls", None, self.start_tls, any_user)
        route("RpbAuthReq", "RpbAuthReq", self.auth, any_user)

    def _route(self, code_name: str, message: str | None, handler: Handler, need: Callable[[Any], Need]) -> None:
        self.routes[schema.CODES[code_name]] = (message, handler, need)

    @staticmethod
    def _type_of(req: Any) -> str:
        """The bucket type a request names; Riak 1.4's messages (counters) have none: the default."""
        if "type" not in req.DESCRIPTOR.fields_by_name or not req.HasField("type"):
            return buckettypes.DEFAULT
        return utf8(req.type, "a bucket type")

    @staticmethod
    def _anyone(req: Any) -> Need:
        return Need(None)

    def _on_bucket(self, permission: str) -> Callable[[Any], Need]:
        return lambda req: Need(permission, self._type_of(req), req.bucket)

    def _on_type(self, permission: str) -> Callable[[Any], Need]:
        return lambda req: Need(permission, self._type_of(req))

    # --- Dispatch -------------------------------------------------------------------------------------

    async def handle(self, session: Session, frame: Frame) -> None:
        """Answers one request frame (errors as RpbErrorResp); ConnectionError when the client is gone."""
        try:
            await self._handle(session, frame)
        except PbError as exc:
            await session.error(str(exc))
        except BadRequest as exc:
            await session.error(str(exc))
        except ConnectionError:
            raise
        except Exception:
            log.exception("internal error serving PB message code %d", frame.code)
            await session.error("internal error")

    async def _handle(self, session: Session, frame: Frame) -> None:
        entry = self.routes.get(frame.code)
        if entry is None:
            name = schema.NAMES.get(frame.code)
            what = f"message code {frame.code}" + (f" ({name})" if name else "")
            raise PbError(f"unknown or unsupported {what}")
        message_name, handler, need_of = entry
        req: Any = None
        if message_name is not None:
            req = schema.message(message_name)()
            try:
                req.ParseFromString(frame.body)
            except Exception:
                raise PbError(f"the body of {message_name} does not decode") from None
            if not req.IsInitialized():
                missing = ", ".join(req.FindInitializationErrors())
                raise PbError(f"{message_name} lacks required fields: {missing}")
        elif frame.body:
            raise PbError(f"{schema.NAMES[frame.code]} has no body")
        await self._admit(session, frame.code, need_of(req))
        await handler(session, req)

    def awaiting_login(self, session: Session) -> bool:
        core = self.runtime.core
        return core is not None and core.cluster.security.on and session.user is None

    async def _admit(self, session: Session, code: int, need: Need) -> None:
        core = self.runtime.core
        assert core is not None
        if self.tls_required and not session.tls and code not in PLAIN_CODES:
            # As the node's HTTP is HTTPS only: with TLS configured, client traffic is inside it.
            raise PbError("this node takes requests inside TLS only: send RpbStartTls first")
        state = core.cluster.security
        if not state.on or code in OPEN_CODES:
            return
        if session.user is None:
            raise PbError("security is enabled: authenticate with RpbAuthReq (over TLS) first")
        if need.permission is None:
            return
        if not security.allowed(state, session.user, need.permission, need.bucket_type, need.bucket):
            raise PbError(f"permission denied: user {session.user} lacks {need.permission}")

    # --- Buckets --------------------------------------------------------------------------------------

    def _bucket(self, req: Any, key: bytes | None = None, *, plain: bool = True) -> bytes:
        """The node's name for a request's bucket (and type), checked as HTTP checks it; with `plain`,
        a bucket whose type holds data types is refused (its keys are not plain objects)."""
        type_name = self._type_of(req)
        core = self.runtime.core
        assert core is not None
        if type_name != buckettypes.DEFAULT:
            record = core.cluster.bucket_type(type_name)
            if record is None:
                raise PbError(f"unknown bucket type {type_name!r}")
            if not record.active:
                raise PbError(f"bucket type {type_name!r} is not active: activate it first")
        elif buckettypes.is_typed(req.bucket):
            raise PbError("a bucket name may not start with a NUL byte")
        bucket = buckettypes.typed(type_name, req.bucket)
        self.api.check_names(bucket, key)
        if plain:
            datatype = self.api._datatype_of(bucket)
            if datatype is not None:
                raise PbError(f"bucket type {type_name} holds {datatype}s: use DtFetchReq and DtUpdateReq")
        return bucket

    # --- Simple requests ------------------------------------------------------------------------------

    async def ping(self, session: Session, req: Any) -> None:
        await session.send("RpbPingResp")

    async def server_info(self, session: Session, req: Any) -> None:
        info = _msg(
            "RpbGetServerInfoResp",
            node=self.runtime.config.name.encode(),
            server_version=RIAK_KV_VERSION.encode(),
        )
        await session.send("RpbGetServerInfoResp", info)

    async def get_client_id(self, session: Session, req: Any) -> None:
        await session.send("RpbGetClientIdResp", _msg("RpbGetClientIdResp", client_id=session.client_id))

    async def set_client_id(self, session: Session, req: Any) -> None:
        if len(req.client_id) > CLIENT_ID_BYTES_MAX:
            raise PbError(f"a client id is at most {CLIENT_ID_BYTES_MAX} bytes")
        session.client_id = req.client_id
        await session.send("RpbSetClientIdResp")

    # --- Objects --------------------------------------------------------------------------------------

    def _vclock(self, context: Context, bucket: bytes, key: bytes) -> bytes:
        return self.api._encode_context(context, bucket, key).encode("ascii")

    def _context(self, raw: bytes, bucket: bytes, key: bytes, what: str = "vclock") -> Context:
        return self.api._decode_context(raw.decode("ascii", "replace"), bucket, key, what)

    def _content_out(self, message: Any, dot: Dot, content: Content, head: bool) -> None:
        message.value = b"" if head else content.value
        message.content_type = content.content_type.encode()
        if content.charset:
            message.charset = content.charset.encode()
        if content.content_encoding:
            message.content_encoding = content.content_encoding.encode()
        message.vtag = objects.vtag(dot).encode()
        message.last_mod = content.last_modified_us // 1_000_000
        message.last_mod_usecs = content.last_modified_us % 1_000_000
        for name, value in content.usermeta:
            message.usermeta.add(key=name.encode(), value=value.encode())
        for field, term in content.indexes:
            message.indexes.add(key=field.encode(), value=term)
        for bucket, key, tag in content.links:
            message.links.add(bucket=bucket, key=key, tag=tag)
        if content.deleted:
            message.deleted = True

    def _content_in(self, message: Any) -> Content:
        """A client's RpbContent as ours, validated as HTTP validates the same headers."""
        limit = self.settings.object_bytes_max
        if len(message.value) > limit:
            raise PbError(f"object of {len(message.value)} bytes exceeds the limit of {limit} bytes")
        content_type = "application/octet-stream"
        if message.HasField("content_type") and message.content_type:
            content_type = utf8(message.content_type, "content_type").strip()
            kind, slash, subtype = content_type.partition("/")
            if not slash or not _TOKEN.fullmatch(kind) or not _TOKEN.fullmatch(subtype.split(";")[0].strip()):
                raise PbError(f"{content_type!r} is not a valid media type")
        if content_type.split(";")[0].strip().lower() in DATATYPE_CONTENT_TYPES:
            raise PbError("application/riak_* content types are the data types' own: update them with DtUpdateReq")
        charset = utf8(message.charset, "charset") if message.HasField("charset") and message.charset else None
        if charset is not None and not _TOKEN.fullmatch(charset):
            raise PbError(f"{charset!r} is not a valid charset name")
        encoding = None
        if message.HasField("content_encoding") and message.content_encoding:
            encoding = utf8(message.content_encoding, "content_encoding")
            if not _TOKEN.fullmatch(encoding):
                raise PbError(f"{encoding!r} is not a valid content encoding")
        meta: list[tuple[str, str]] = []
        for pair in message.usermeta:
            name = utf8(pair.key, "a user metadata key")
            value = utf8(pair.value, "a user metadata value")
            if not _TOKEN.fullmatch(name) or "\r" in value or "\n" in value:
                raise PbError(f"user metadata {name!r} cannot be stored: keys are tokens, values one line")
            meta.append((name.lower(), value))
        usermeta = tuple(sorted(meta))
        if sum(len(k) + len(v) for k, v in usermeta) > self.settings.meta_bytes_max:
            raise PbError(f"user metadata exceeds {self.settings.meta_bytes_max} bytes")
        content = Content(
            message.value,
            content_type,
            charset,
            encoding,
            usermeta,
            indexes=self._indexes_in(message.indexes),
            links=self._links_in(message.links),
        )
        problem = objects.check_content(content) or indexes.content_problem(self.settings, content)
        if problem is not None:
            raise PbError(problem)
        return content

    def _indexes_in(self, pairs: Any) -> tuple[indexes.Entry, ...]:
        """RpbContent.indexes (RpbPair field -> term) under the rules HTTP's X-Riak-Index-* headers keep."""
        bound = self.settings.index_entries_max
        if len(pairs) > bound:
            raise PbError(f"more than {bound} index entries (index_entries_max)")
        given = [(utf8(pair.key, "an index name"), pair.value) for pair in pairs]
        try:
            return indexes.normalised(self.settings, given)
        except indexes.IndexProblem as exc:
            raise PbError(f"bad secondary index: {exc}") from None

    def _links_in(self, links: Any) -> tuple[indexes.Link, ...]:
        """RpbContent.links (bucket, key, tag) under the rules HTTP's Link headers keep, in the order given."""
        bound = self.settings.links_max
        if len(links) > bound:
            raise PbError(f"more than {bound} links (links_max)")
        try:
            return tuple(indexes.link(self.settings, link.bucket, link.key, link.tag) for link in links)
        except indexes.IndexProblem as exc:
            raise PbError(f"bad link: {exc}") from None

    async def get(self, session: Session, req: Any) -> None:
        bucket = self._bucket(req, req.key)
        key = req.key
        # Checked before anything is asked, as every input is.
        unless = self._context(req.if_modified, bucket, key, "if_modified") if req.HasField("if_modified") else None
        response = await self.runtime.request(
            ClientGet(bucket, key, r=_quorum(req, "r"), pr=_quorum(req, "pr"), timeout_ms=_timeout(req))
        )
        answer = _msg("RpbGetResp")
        if isinstance(response, Failure):
            raise _failure(response)
        if isinstance(response, NotFound):
            if req.deletedvclock and response.context is not None:
                answer.vclock = self._vclock(response.context, bucket, key)
            await session.send("RpbGetResp", answer)
            return
        assert isinstance(response, Ok) and response.found is not None
        found = response.found
        if unless is not None and unless == found.context:
            answer.unchanged = True
            await session.send("RpbGetResp", answer)
            return
        for dot, content in found.values:
            self._content_out(answer.content.add(), dot, content, req.head)
        answer.vclock = self._vclock(found.context, bucket, key)
        await session.send("RpbGetResp", answer)

    async def put(self, session: Session, req: Any) -> None:
        generated = not req.HasField("key")
        key = uuid.uuid4().hex.encode() if generated else req.key
        bucket = self._bucket(req, key)
        content = self._content_in(req.content)
        context = self._context(req.vclock, bucket, key) if req.HasField("vclock") and req.vclock else None
        w, dw, pw, timeout = _quorum(req, "w"), _quorum(req, "dw"), _quorum(req, "pw"), _timeout(req)
        if not generated and (req.if_none_match or req.if_not_modified):
            current = await self.runtime.request(ClientGet(bucket, key))
            if isinstance(current, Failure):
                raise _failure(current)
            exists = isinstance(current, Ok) and current.found is not None and bool(current.found.values)
            # Riak's own reasons, which clients match on.
            if req.if_none_match and exists:
                raise PbError("match_found")
            if req.if_not_modified:
                if context is None:
                    raise PbError("if_not_modified needs the vclock the client read")
                if not exists or not isinstance(current, Ok) or current.found is None:
                    raise PbError("notfound")
                if current.found.context != context:
                    raise PbError("modified")
        with_body = req.return_body or req.return_head
        response = await self.runtime.request(
            ClientPut(bucket, key, context, content, w=w, dw=dw, pw=pw, timeout_ms=timeout, return_body=with_body)
        )
        if isinstance(response, Failure):
            raise _failure(response)
        answer = _msg("RpbPutResp")
        if generated:
            answer.key = key
        if with_body and isinstance(response, Ok) and response.found is not None:
            found = response.found
            for dot, stored in found.values:
                self._content_out(answer.content.add(), dot, stored, req.return_head and not req.return_body)
            answer.vclock = self._vclock(found.context, bucket, key)
        await session.send("RpbPutResp", answer)

    async def delete(self, session: Session, req: Any) -> None:
        """As the HTTP API deletes: read with the delete's read quorum, then write the tombstone over what
        was read (or over the client's vclock). A key that is not there is a success, as in Riak."""
        bucket = self._bucket(req, req.key, plain=False)
        key = req.key
        datatype = self.api._datatype_of(bucket)
        timeout = _timeout(req)
        core = self.runtime.core
        assert core is not None
        rw = core.bucket_props(bucket)["rw"]
        r, w = quorum.delete_quorums(_quorum(req, "r"), _quorum(req, "w"), _quorum(req, "rw"), rw)
        dw, pw, pr = _quorum(req, "dw"), _quorum(req, "pw"), _quorum(req, "pr")
        if datatype is not None:
            state = await dtapi.read_state(self.runtime, bucket, key, datatype, r, pr, timeout)
            if isinstance(state, Failure):
                raise _failure(state)
            if isinstance(state, crdt.CrdtError):
                raise PbError(f"the key holds no readable {datatype}: {state}")
            if state is not None:
                seen = crdt.clock_vector(state)
                update = DtUpdate(datatype, self._precision(bucket), b"", seen)
                response = await self.runtime.request(
                    ClientPut(bucket, key, None, None, w=w, dw=dw, pw=pw, timeout_ms=timeout, dt=update)
                )
                if isinstance(response, Failure):
                    raise _failure(response)
            await session.send("RpbDelResp")
            return
        context = self._context(req.vclock, bucket, key) if req.HasField("vclock") and req.vclock else None
        existing = await self.runtime.request(ClientGet(bucket, key, r=r, pr=pr, timeout_ms=timeout))
        if isinstance(existing, Failure):
            raise _failure(existing)
        if isinstance(existing, Ok) and existing.found is not None:
            response = await self.runtime.request(
                ClientPut(
                    bucket,
                    key,
                    context if context is not None else existing.found.context,
                    None,
                    w=w,
                    dw=dw,
                    pw=pw,
                    timeout_ms=timeout,
                )
            )
            if isinstance(response, Failure):
                raise _failure(response)
        await session.send("RpbDelResp")

    async def preflist(self, session: Session, req: Any) -> None:
        bucket = self._bucket(req, req.key, plain=False)
        core = self.runtime.core
        assert core is not None
        _, plist = core.preference_list(bucket, req.key)
        healthy = core.healthy(self.runtime.clock.now_ms())
        answer = _msg("RpbGetBucketKeyPreflistResp")
        for partition, node in plist.primaries:
            answer.preflist.add(partition=partition, node=node.encode(), primary=True)
        where = {node: partition for partition, node in plist.fallbacks}
        for target in plist.targets(healthy):
            if not target.primary and target.node in where:
                answer.preflist.add(partition=where[target.node], node=target.node.encode(), primary=False)
        await session.send("RpbGetBucketKeyPreflistResp", answer)

    # --- Listing --------------------------------------------------------------------------------------

    async def list_buckets(self, session: Session, req: Any) -> None:
        """Streamed (stream=true: a frame per page, then one with done) or whole in one frame, bounded
        like HTTP's buckets=true by list_result_bytes_max."""
        if req is None:
            req = _msg("RpbListBucketsReq")
        type_name = self._type_of(req)
        timeout = _timeout(req)
        if not req.stream:
            found = await self.api._gathered(None, timeout, type_name)
            if isinstance(found, Failure):
                raise _failure(found)
            await session.send("RpbListBucketsResp", _msg("RpbListBucketsResp", buckets=found))
            return
        sent: set[bytes] = set()
        held = 0
        bound = self.settings.list_result_bytes_max
        async for page in self.api._pages(None, timeout):
            if isinstance(page, Failure):
                raise _failure(page)
            names = [name for name in _of_type(page, type_name) if name not in sent]
            sent.update(names)
            held += sum(len(name) for name in names)
            if held > bound:
                raise PbError(f"more than {bound} bytes of buckets (list_result_bytes_max)")
            if names:
                await session.send("RpbListBucketsResp", _msg("RpbListBucketsResp", buckets=names))
        await session.send("RpbListBucketsResp", _msg("RpbListBucketsResp", done=True))

    async def list_keys(self, session: Session, req: Any) -> None:
        """Always streamed, as in Riak: a frame per page, each written once the client has taken the last
        (Session.send drains), then one with done."""
        bucket = self._bucket(req, plain=False)
        async for page in self.api._pages(bucket, _timeout(req)):
            if isinstance(page, Failure):
                raise _failure(page)
            await session.send("RpbListKeysResp", _msg("RpbListKeysResp", keys=page))
        await session.send("RpbListKeysResp", _msg("RpbListKeysResp", done=True))

    async def index(self, session: Session, req: Any) -> None:
        """A 2i query (RpbIndexReq) as HTTP's /index routes answer it, through the same rules
        (api/indexes.parse_query) and pages (query_pages): whole in one RpbIndexResp (bounded by
        index_result_bytes_max), or with stream=true a frame per page and a last one with done (and
        the continuation, with max_results), as Riak streams. Keys go in `keys`, or with return_terms
        on a range (term, key) in `results`; a failure once streaming has begun is RpbErrorResp."""
        bucket = self._bucket(req, plain=False)
        for name in ("term_regex", "cover_context"):
            if req.HasField(name):
                raise PbError(f"{name} is not supported by dynastore")
        if req.return_body:
            raise PbError("return_body is not supported by dynastore: fetch the keys found")
        field = utf8(req.index, "the index name")
        if req.qtype == schema.message("RpbIndexReq").eq:
            if not req.HasField("key"):
                raise PbError("an eq query needs key, the value to match")
            terms = [req.key]
        else:
            if not (req.HasField("range_min") and req.HasField("range_max")):
                raise PbError("a range query needs range_min and range_max")
            terms = [req.range_min, req.range_max]
        continuation = None
        if req.HasField("continuation"):
            continuation = req.continuation.decode("ascii", "replace")
        asked = index_api.parse_query(
            self.settings,
            field,
            terms,
            return_terms=req.return_terms,
            max_results=req.max_results if req.HasField("max_results") else None,
            continuation=continuation,
        )
        field = asked.field
        pages = index_api.query_pages(
            self.runtime,
            self.settings,
            bucket,
            field,
            asked.low,
            asked.high,
            asked.after,
            asked.max_results,
            _timeout(req),
        )
        results: list[Position] = []
        held = 0
        after: Position | None = None
        async for page in pages:
            if isinstance(page, Failure):
                raise _failure(page)
            chunk, after = page
            if req.stream:
                if chunk:
                    await session.send("RpbIndexResp", _index_resp(field, asked.return_terms, chunk))
                continue
            results.extend(chunk)
            held += indexes.positions_bytes(chunk)
            if held > self.settings.index_result_bytes_max:
                raise _failure(index_api.too_many_results(self.settings))
        answer = _msg("RpbIndexResp") if req.stream else _index_resp(field, asked.return_terms, results)
        if asked.max_results is not None and after is not None:
            answer.continuation = index_api.encode_continuation(after).encode()
        if req.stream:
            answer.done = True
        await session.send("RpbIndexResp", answer)

    # --- Bucket properties ----------------------------------------------------------------------------

    def _props_out(self, props: dict[str, Any]) -> Any:
        out = _msg("RpbBucketProps")
        for name in ("n_val", "allow_mult", "last_write_wins"):
            setattr(out, name, props[name])
        for name in QUORUM_PROPS:
            value = props.get(name)
            if value is not None:
                setattr(out, name, QUORUM_CODES.get(value, value) if isinstance(value, str) else int(value))
        out.basic_quorum = False
        out.notfound_ok = True
        if props.get("datatype"):
            out.datatype = str(props["datatype"]).encode()
        if props.get("hll_precision") is not None:
            out.hll_precision = int(props["hll_precision"])
        return out

    def _props_in(self, message: Any) -> tuple[tuple[str, Any], ...]:
        """RpbBucketProps as our properties: what we have is taken (checked by the node as HTTP's are),
        what Riak clients send back as they read it is left alone, and Riak machinery we lack may be
        said to be off but not asked for."""
        given: dict[str, Any] = {}
        for fd, value in message.ListFields():
            name = fd.name
            if name in QUORUM_PROPS:
                word = QUORUM_WORDS.get(value, value)
                try:
                    given[name] = quorum.parse(name, word)
                except quorum.QuorumError as exc:
                    raise PbError(str(exc)) from None
            elif name in PLAIN_PROPS:
                given[name] = value
            elif name == "datatype":
                given[name] = utf8(value, "datatype")
            elif name in IGNORED_PB_PROPS:
                continue
            elif name in UNSUPPORTED_PROPS:
                if value:
                    raise PbError(f"bucket property {name} is not supported by dynastore")
            else:
                raise PbError(f"bucket property {name} is not supported by dynastore")
        return tuple(sorted(given.items()))

    async def get_bucket(self, session: Session, req: Any) -> None:
        bucket = self._bucket(req, plain=False)
        props = self.api._props_of(bucket)
        await session.send("RpbGetBucketResp", _msg("RpbGetBucketResp", props=self._props_out(props)))

    async def set_bucket(self, session: Session, req: Any) -> None:
        bucket = self._bucket(req, plain=False)
        response = await self.runtime.request(ClientSetBucketProps(bucket, self._props_in(req.props)))
        if isinstance(response, Failure):
            raise _failure(response)
        await session.send("RpbSetBucketResp")

    async def reset_bucket(self, session: Session, req: Any) -> None:
        bucket = self._bucket(req, plain=False)
        response = await self.runtime.request(ClientSetBucketProps(bucket, (), reset=True))
        if isinstance(response, Failure):
            raise _failure(response)
        await session.send("RpbResetBucketResp")

    def _known_type(self, req: Any) -> str:
        type_name = utf8(req.type, "a bucket type")
        core = self.runtime.core
        assert core is not None
        if type_name != buckettypes.DEFAULT and core.cluster.bucket_type(type_name) is None:
            raise PbError(f"unknown bucket type {type_name!r}")
        return type_name

    async def get_type(self, session: Session, req: Any) -> None:
        props = self.api.type_props_of(self._known_type(req))
        await session.send("RpbGetBucketResp", _msg("RpbGetBucketResp", props=self._props_out(props)))

    async def set_type(self, session: Session, req: Any) -> None:
        type_name = self._known_type(req)
        response = await self.runtime.request(ClientBucketType("update", type_name, self._props_in(req.props)))
        if isinstance(response, NotFound):
            raise PbError(f"unknown bucket type {type_name!r}")
        if isinstance(response, Failure):
            raise _failure(response)
        await session.send("RpbSetBucketResp")

    # --- Counters and data types ----------------------------------------------------------------------

    def _precision(self, bucket: bytes) -> int:
        core = self.runtime.core
        assert core is not None
        return int(core.bucket_props(bucket).get("hll_precision", crdt.HLL_PRECISION_DEFAULT))

    def _legacy_bucket(self, req: Any) -> bytes:
        """Riak 1.4's counters live in buckets of the default type with allow_mult=true."""
        bucket = self._bucket(req, req.key)
        core = self.runtime.core
        assert core is not None
        if core.bucket_props(bucket).get("allow_mult") is not True:
            raise PbError("Counters require bucket property 'allow_mult=true'")
        return bucket

    async def _state(self, bucket: bytes, key: bytes, datatype: str, req: Any) -> crdt.State | None:
        state = await dtapi.read_state(
            self.runtime, bucket, key, datatype, _quorum(req, "r"), _quorum(req, "pr"), _timeout(req)
        )
        if isinstance(state, Failure):
            raise _failure(state)
        if isinstance(state, crdt.CrdtError):
            raise PbError(f"the key holds no readable {datatype}: {state}")
        return state

    async def _update(
        self, bucket: bytes, key: bytes, datatype: str, op: dict[str, Any], context: Any, req: Any, with_body: bool
    ) -> crdt.State | None:
        """Writes a data-type operation (Riak's JSON form, checked here as HTTP checks it) and, with
        `with_body`, answers the state written."""
        try:
            crdt.parse_op(datatype, op)
        except crdt.CrdtError as exc:
            raise PbError(str(exc)) from None
        encoded = json.dumps(op, separators=(",", ":"), ensure_ascii=False).encode()
        update = DtUpdate(datatype, self._precision(bucket), encoded, context)
        response = await self.runtime.request(
            ClientPut(
                bucket,
                key,
                None,
                None,
                w=_quorum(req, "w"),
                dw=_quorum(req, "dw"),
                pw=_quorum(req, "pw"),
                timeout_ms=_timeout(req),
                return_body=with_body,
                dt=update,
            )
        )
        if isinstance(response, Failure):
            raise _failure(response)
        if not with_body or not isinstance(response, Ok) or response.found is None:
            return None
        written = response.found
        try:
            return dt.join(written.values, datatype)
        except crdt.CrdtError as exc:
            raise PbError(f"the key holds no readable {datatype}: {exc}") from None

    async def counter_get(self, session: Session, req: Any) -> None:
        bucket = self._legacy_bucket(req)
        state = await self._state(bucket, req.key, "counter", req)
        answer = _msg("RpbCounterGetResp")
        if state is not None:
            answer.value = crdt.value(state)
        await session.send("RpbCounterGetResp", answer)

    async def counter_update(self, session: Session, req: Any) -> None:
        bucket = self._legacy_bucket(req)
        state = await self._update(
            bucket, req.key, "counter", {"increment": req.amount}, None, req, bool(req.returnvalue)
        )
        answer = _msg("RpbCounterUpdateResp")
        if state is not None:
            answer.value = crdt.value(state)
        await session.send("RpbCounterUpdateResp", answer)

    def _dt_bucket(self, req: Any, key: bytes) -> tuple[bytes, str]:
        bucket = self._bucket(req, key, plain=False)
        datatype = self.api._datatype_of(bucket)
        if datatype is None:
            raise PbError(f"bucket type {self._type_of(req)} holds no data types (its datatype property is not set)")
        return bucket, datatype

    def _dt_value(self, state: crdt.State, into: Any) -> None:
        """A state's value into DtValue or DtUpdateResp (their value fields have the same names)."""
        kind, value = state.kind, crdt.value(state)
        if kind == "counter":
            into.counter_value = value
        elif kind == "set":
            into.set_value.extend(value)
        elif kind == "hll":
            into.hll_value = value
        elif kind == "map":
            map_entries(value, into.map_value)

    async def dt_fetch(self, session: Session, req: Any) -> None:
        bucket, datatype = self._dt_bucket(req, req.key)
        state = await self._state(bucket, req.key, datatype, req)
        answer = _msg("DtFetchResp", type=DT_TYPES[datatype])
        if state is not None:
            self._dt_value(state, answer.value)
            if req.include_context and datatype in dtapi.WITH_CONTEXT:
                answer.context = self._vclock(Context(crdt.clock_vector(state)), bucket, req.key)
        await session.send("DtFetchResp", answer)

    async def dt_update(self, session: Session, req: Any) -> None:
        generated = not req.HasField("key")
        key = uuid.uuid4().hex.encode() if generated else req.key
        bucket, datatype = self._dt_bucket(req, key)
        op = dt_op(req.op, datatype)
        context = None
        if req.HasField("context") and req.context:
            context = self._context(req.context, bucket, key, "context").vector
        state = await self._update(bucket, key, datatype, op, context, req, bool(req.return_body))
        answer = _msg("DtUpdateResp")
        if generated:
            answer.key = key
        if state is not None:
            self._dt_value(state, answer)
            if req.include_context and datatype in dtapi.WITH_CONTEXT:
                answer.context = self._vclock(Context(crdt.clock_vector(state)), bucket, key)
        await session.send("DtUpdateResp", answer)

    # --- TLS and authentication -----------------------------------------------------------------------

    async def start_tls(self, session: Session, req: Any) -> None:
        if session.tls:
            raise PbError("the connection already runs inside TLS")
        if not tls.enabled(self.settings):
            raise PbError("this node has no TLS configured (tls_cert_file, tls_key_file)")
        await session.send("RpbStartTls")
        session.start_tls = True

    async def auth(self, session: Session, req: Any) -> None:
        core = self.runtime.core
        assert core is not None
        state = core.cluster.security
        if not state.on:
            raise PbError("security is not enabled")
        clear_allowed = not tls.enabled(self.settings) and self.runtime.config.loopback_only
        if not session.tls and not clear_allowed:
            raise PbError("RpbAuthReq needs TLS: send RpbStartTls first")
        user = utf8(req.user, "the user name")
        password = utf8(req.password, "the password")
        if len(req.password) > security.PASSWORD_BYTES_MAX:
            raise PbError("unknown user or wrong password")
        outcome = await self.guard.login(user, password, session.client_host, state)
        if isinstance(outcome, Response):
            raise PbError(outcome.body.decode("utf-8", "replace").strip())
        session.user = outcome
        await session.send("RpbAuthResp")


def _index_resp(field: str, return_terms: bool, results: list[Position]) -> Any:
    """One RpbIndexResp of results: (term, key) pairs with return_terms, else each key once."""
    answer = _msg("RpbIndexResp")
    if return_terms:
        for term, key in results:
            answer.results.add(key=index_api.term_bytes(field, term, key), value=key)
    else:
        answer.keys.extend(index_api.distinct_keys(results))
    return answer


def _of_type(names: tuple[bytes, ...], type_name: str) -> list[bytes]:
    out: list[bytes] = []
    for name in names:
        of, bucket = buckettypes.split(name)
        if of == type_name:
            out.append(bucket)
    return out


def make_server(api: Api) -> PbServer:
    """The node's PB server beside its HTTP API (`api`, whose helpers and Guard it shares, and whose
    /stats shows its counts); not yet listening."""
    settings = api.settings
    server = PbServer(
        PbApi(api),
        frame_bytes_max=settings.pb_frame_bytes_max,
        connections_max=settings.pb_connections_max,
        idle_timeout_s=settings.pb_idle_timeout_ms / 1000,
        buffer_bytes_max=settings.pb_buffer_bytes_max,
        auth_timeout_s=settings.pb_auth_timeout_ms / 1000,
    )
    api.pb_stats = server.stats
    return server
