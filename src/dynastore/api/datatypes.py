"""Riak's HTTP API for data types (`/types/T/buckets/B/datatypes/K`) and the legacy counters of
Riak 1.4 (`/buckets/B/counters/K`).

A data-type key is read with a quorum read that shows every sibling, deletions' too, and its value is
the join of their states (core/datatypes.py); an update is a write whose value the coordinator makes
from the operation. Operations are checked here first (crdt.parse_op), so a malformed one is a 400
before anything is sent; the coordinator parses them again where it applies them. The context handed
to clients is the state's clock, authenticated like any X-Riak-Vclock (core/context.py).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from typing import Any, Protocol

from dynastore.api.answers import Answer, BadRequest, bool_param, json_response, text
from dynastore.api.server import Request, Response
from dynastore.core import buckettypes, crdt
from dynastore.core import datatypes as dt
from dynastore.core.messages import ClientGet, ClientPut, DtUpdate, Failure, NotFound, Ok
from dynastore.core.versions import Context
from dynastore.runtime.node import NodeRuntime
from dynastore.settings import Settings


class UrlStyle(Protocol):
    """How the request named its bucket (api/http.py's UrlStyle)."""

    @property
    def objects(self) -> str: ...
    @property
    def type_name(self) -> str: ...

    def object_url(self, bucket: bytes, key: bytes, where: str = "keys") -> str: ...


class Api(Protocol):
    """What these routes use of the HTTP API (api/http.py's Api, which calls them)."""

    runtime: NodeRuntime
    settings: Settings

    def check_names(self, bucket: bytes, key: bytes | None) -> None: ...
    def _datatype_of(self, bucket: bytes) -> str | None: ...
    def _quorums(self, query: Mapping[str, str]) -> dict[str, int | str | None]: ...
    def _int_param(self, request: Request, name: str) -> int | None: ...
    def _encode_context(self, context: Context, bucket: bytes, key: bytes) -> str: ...
    def _decode_context(self, raw: str, bucket: bytes, key: bytes, what: str) -> Context: ...
    def failure(self, response: Any) -> Response: ...


# Data types whose value a remove must name with a context to remove what the client saw.
WITH_CONTEXT = ("set", "map")
_INTEGER = re.compile(r"\s*[+-]?[0-9]{1,19}\s*")
COUNTER_MAX = (1 << 63) - 1


async def route(api: Api, request: Request, bucket: bytes, tail: list[bytes], style: UrlStyle) -> Answer:
    """`datatypes[/K]` on a bucket of a type, `counters/K` on a bucket of the default type."""
    api.check_names(bucket, None)
    if tail[0] == b"counters":
        if buckettypes.is_typed(bucket) or len(tail) != 2:
            return text(404, "Not Found")
        return await _legacy_counter(api, request, bucket, tail[1])
    datatype = api._datatype_of(bucket)
    if datatype is None:
        raise BadRequest(f"bucket type {style.type_name} holds no data types (its datatype property is not set)", 404)
    method = request.method
    if len(tail) == 1:
        if method != "POST":
            return text(405, "Method Not Allowed", {"Allow": "POST"})
        return await update(api, request, bucket, None, style, datatype)
    if len(tail) != 2:
        return text(404, "Not Found")
    key = tail[1]
    if method in ("GET", "HEAD"):
        return await fetch(api, request, bucket, key, datatype)
    if method in ("POST", "PUT"):
        return await update(api, request, bucket, key, style, datatype)
    if method == "DELETE":
        return await delete(api, request, bucket, key, datatype)
    return text(405, "Method Not Allowed", {"Allow": "GET, HEAD, POST, PUT, DELETE"})


async def on_plain_object(
    api: Api, request: Request, bucket: bytes, key: bytes, style: UrlStyle, datatype: str
) -> Answer:
    """`/keys/K` of a datatype bucket: a delete removes the data type (clients delete through it), and
    anything else is refused, since a plain object cannot live there."""
    if request.method == "DELETE":
        return await delete(api, request, bucket, key, datatype)
    raise BadRequest(f"bucket type {style.type_name} holds {datatype}s: use {style.objects}/BUCKET/datatypes/KEY")


def _precision(api: Api, bucket: bytes) -> int:
    core = api.runtime.core
    assert core is not None
    return int(core.bucket_props(bucket).get("hll_precision", crdt.HLL_PRECISION_DEFAULT))


class _Refused(Exception):
    """A read that failed, with the answer that says why."""

    def __init__(self, answer: Answer) -> None:
        super().__init__()
        self.answer = answer


async def _read(api: Api, request: Request, bucket: bytes, key: bytes, datatype: str) -> crdt.State | None:
    """The key's joined state (None: not found); raises _Refused when it cannot be read."""
    quorums = api._quorums(request.query)
    timeout = api._int_param(request, "timeout")
    response = await read_state(api.runtime, bucket, key, datatype, quorums["r"], quorums["pr"], timeout)
    if isinstance(response, Failure):
        raise _Refused(api.failure(response))
    if isinstance(response, crdt.CrdtError):
        raise _Refused(text(409, f"the key holds no readable {datatype}: {response}"))
    return response


async def read_state(
    runtime: NodeRuntime, bucket: bytes, key: bytes, datatype: str, r: Any, pr: Any, timeout_ms: int | None
) -> crdt.State | Failure | crdt.CrdtError | None:
    """A data-type key's joined state, read with every sibling (deletions' too): None when not found,
    the Failure when it cannot be read, the CrdtError when what is stored is no readable `datatype`.
    Shared by this API and the PB API (api/pb/server.py)."""
    response = await runtime.request(ClientGet(bucket, key, r=r, pr=pr, timeout_ms=timeout_ms, with_deletions=True))
    if isinstance(response, Failure):
        return response
    if isinstance(response, NotFound):
        return None
    assert isinstance(response, Ok) and response.found is not None
    try:
        return dt.visible(response.found.values, datatype)
    except crdt.CrdtError as exc:
        return exc


def _joined(join: Any, datatype: str) -> crdt.State | None:
    """A join of stored states, or _Refused (409) when one is not a `datatype` this node can read."""
    try:
        state: crdt.State | None = join()
    except crdt.CrdtError as exc:
        raise _Refused(text(409, f"the key holds no readable {datatype}: {exc}")) from None
    return state


def _body(api: Api, state: crdt.State, datatype: str, bucket: bytes, key: bytes, with_context: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"type": datatype, "value": crdt.to_json(state)}
    if with_context and datatype in WITH_CONTEXT:
        out["context"] = api._encode_context(Context(crdt.clock_vector(state)), bucket, key)
    return out


def _include_context(request: Request) -> bool:
    raw = request.query.get("include_context")
    if raw is None:
        return True
    if raw.strip().lower() in ("true", "1", "yes"):
        return True
    if raw.strip().lower() in ("false", "0", "no"):
        return False
    raise BadRequest(f"include_context must be true or false; got {raw!r}")


async def fetch(api: Api, request: Request, bucket: bytes, key: bytes, datatype: str) -> Answer:
    api.check_names(bucket, key)
    try:
        found = await _read(api, request, bucket, key, datatype)
    except _Refused as refused:
        return refused.answer
    if found is None:
        # Riak answers a missing data type with its type in JSON (clients read it from the 404).
        return json_response({"type": datatype, "error": "notfound"}, status=404)
    return json_response(_body(api, found, datatype, bucket, key, _include_context(request)))


def _decode_context(api: Api, raw: Any, bucket: bytes, key: bytes) -> tuple[tuple[bytes, int], ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise BadRequest("context must be the string a fetch returned")
    if not raw.strip():
        return None
    return api._decode_context(raw, bucket, key, "context").vector


async def _operation(api: Api, request: Request, datatype: str) -> tuple[Any, Any]:
    """The request's operation as JSON (checked) and its context string, or a 400/413."""
    limit = api.settings.object_bytes_max
    raw = await request.read()
    if len(raw) > limit:
        raise BadRequest(f"operation of {len(raw)} bytes exceeds the limit of {limit} bytes", 413)
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise BadRequest("body must be a JSON data-type operation") from None
    try:
        _, context = crdt.parse_op(datatype, body)
    except crdt.CrdtError as exc:
        raise BadRequest(str(exc), 413 if exc.kind == "too_large" else 400) from None
    if isinstance(body, dict):
        body = {k: v for k, v in body.items() if k != "context"}
    return body, context


async def update(
    api: Api, request: Request, bucket: bytes, key: bytes | None, style: UrlStyle, datatype: str
) -> Answer:
    generated = key is None
    if key is None:
        key = uuid.uuid4().hex.encode()
    api.check_names(bucket, key)
    body, raw_context = await _operation(api, request, datatype)
    context = _decode_context(api, raw_context, bucket, key)
    quorums = api._quorums(request.query)
    return_body = bool_param(request.query, "returnbody")
    op = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    limit = api.settings.object_bytes_max
    if len(op) > limit:
        raise BadRequest(f"operation of {len(op)} bytes exceeds the limit of {limit} bytes", 413)
    update = DtUpdate(datatype, _precision(api, bucket), op, context)
    response = await api.runtime.request(
        ClientPut(
            bucket,
            key,
            None,
            None,
            w=quorums["w"],
            dw=quorums["dw"],
            pw=quorums["pw"],
            timeout_ms=api._int_param(request, "timeout"),
            return_body=return_body,
            dt=update,
        )
    )
    if isinstance(response, Failure):
        return api.failure(response)
    headers = {"Location": style.object_url(bucket, key, "datatypes")} if generated else {}
    status = 201 if generated else 200
    if not return_body:
        return Response(status=201 if generated else 204, headers=headers)
    if not isinstance(response, Ok) or response.found is None:
        return Response(status=201 if generated else 204, headers=headers)
    found = response.found
    try:
        state = _joined(lambda: dt.join(found.values, datatype), datatype)
    except _Refused as refused:
        return refused.answer
    if state is None:
        return Response(status=201 if generated else 204, headers=headers)
    answer = json_response(_body(api, state, datatype, bucket, key, _include_context(request)), status=status)
    answer.headers.update(headers)
    return answer


async def delete(api: Api, request: Request, bucket: bytes, key: bytes, datatype: str) -> Answer:
    """Riak answers 404 for a key that does not exist: read it first, then write the deletion."""
    api.check_names(bucket, key)
    try:
        found = await _read(api, request, bucket, key, datatype)
    except _Refused as refused:
        return refused.answer
    if found is None:
        return text(404, "not found")
    quorums = api._quorums(request.query)
    # The delete removes what the read saw, wherever its coordinator stands.
    seen = crdt.clock_vector(found)
    response = await api.runtime.request(
        ClientPut(
            bucket,
            key,
            None,
            None,
            w=quorums["w"],
            dw=quorums["dw"],
            pw=quorums["pw"],
            timeout_ms=api._int_param(request, "timeout"),
            dt=DtUpdate(datatype, _precision(api, bucket), b"", seen),
        )
    )
    if isinstance(response, Failure):
        return api.failure(response)
    return Response(status=204)


async def _legacy_counter(api: Api, request: Request, bucket: bytes, key: bytes) -> Answer:
    """Riak 1.4's counters: GET answers the number as text, POST adds a signed integer. They need
    allow_mult=true, as in Riak (409 otherwise)."""
    api.check_names(bucket, key)
    core = api.runtime.core
    assert core is not None
    if core.bucket_props(bucket).get("allow_mult") is not True:
        return text(409, "Counters require bucket property 'allow_mult=true'")
    method = request.method
    if method in ("GET", "HEAD"):
        try:
            found = await _read(api, request, bucket, key, "counter")
        except _Refused as refused:
            return refused.answer
        if found is None:
            return text(404, "not found")
        return Response(text=str(crdt.value(found)), content_type="text/plain")
    if method != "POST":
        return text(405, "Method Not Allowed", {"Allow": "GET, HEAD, POST"})
    body = await request.read()
    raw = body[:64].decode("ascii", "replace")
    if len(body) > 64 or not _INTEGER.fullmatch(raw) or abs(int(raw)) > COUNTER_MAX:
        raise BadRequest(f"a counter takes a signed 64-bit integer; got {raw.strip()[:32]!r}")
    quorums = api._quorums(request.query)
    return_value = bool_param(request.query, "returnvalue")
    op = json.dumps({"increment": int(raw)}).encode()
    response = await api.runtime.request(
        ClientPut(
            bucket,
            key,
            None,
            None,
            w=quorums["w"],
            dw=quorums["dw"],
            pw=quorums["pw"],
            timeout_ms=api._int_param(request, "timeout"),
            return_body=return_value,
            dt=DtUpdate("counter", crdt.HLL_PRECISION_DEFAULT, op, None),
        )
    )
    if isinstance(response, Failure):
        return api.failure(response)
    if return_value and isinstance(response, Ok) and response.found is not None:
        written = response.found
        try:
            state = _joined(lambda: dt.join(written.values, "counter"), "counter")
        except _Refused as refused:
            return refused.answer
        if state is not None:
            return Response(text=str(crdt.value(state)), content_type="text/plain")
    return Response(status=204)
