"""Riak's HTTP API for secondary indexes and links: `X-Riak-Index-*` and `Link` headers on objects, and
queries (`/buckets/B/index/FIELD/VALUE`, `/buckets/B/index/FIELD/START/END`, on types too).

On a write, every `X-Riak-Index-NAME_bin` / `X-Riak-Index-NAME_int` header gives one or more terms,
comma-separated, as Riak reads them; `Link: </buckets/B/keys/K>; riaktag="T"` (or the legacy
`</riak/B/K>`) names links, percent-encoded as Riak clients send them. Both are checked here and again
by the coordinator (core/indexes.py), and a read gives them back per sibling, as Riak does.

A query runs page by page (ClientIndexQuery, a coverage query: core/indexquery.py). With
`max_results` it answers that many at most, with a `continuation` to pass back for the next page;
without, it gathers every page (bounded by index_result_bytes_max) or, with `stream=true`, sends each
page as a part of a chunked multipart/mixed answer, as Riak does. A continuation is opaque to
clients: base64 of a version and the position after which the next page starts, checked on the way in.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
import secrets
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote, quote_plus, unquote_to_bytes

import msgpack

from dynastore.api.answers import Answer, BadRequest, bool_param, json_response
from dynastore.api.server import Request, Response, StreamResponse
from dynastore.core import indexes
from dynastore.core.indexes import IndexProblem
from dynastore.core.messages import ClientIndexQuery, Failure, Ok
from dynastore.core.objects import Content
from dynastore.runtime.node import NodeRuntime
from dynastore.settings import Settings

INDEX_PREFIX = "x-riak-index-"
CONTINUATION_VERSION = 1
# What max_results may ask for (HTTP takes at most 9 digits); a page is index_page_results_max at most.
MAX_RESULTS_MAX = 999_999_999
# One link: `<path>; riaktag="tag"` (parameters in any order, riaktag the one that matters).
_LINK = re.compile(r'\s*<([^>]*)>\s*((?:;\s*[A-Za-z-]+\s*=\s*"[^"]*"\s*)*)')
_PARAM = re.compile(r';\s*([A-Za-z-]+)\s*=\s*"([^"]*)"')


class Api(Protocol):
    """What these routes use of the HTTP API (api/http.py's Api, which calls them)."""

    runtime: NodeRuntime
    settings: Settings

    def check_names(self, bucket: bytes, key: bytes | None) -> None: ...
    def _int_param(self, request: Request, name: str) -> int | None: ...
    def failure(self, response: Any) -> Response: ...


# --- Headers on objects -------------------------------------------------------------------------------


def parse_index_headers(settings: Settings, headers: Iterable[tuple[str, str]]) -> tuple[indexes.Entry, ...]:
    """The index entries a write's headers give; raises BadRequest with the reason."""
    given: list[tuple[str, str]] = []
    for name, value in headers:
        if not name.lower().startswith(INDEX_PREFIX):
            continue
        field = name[len(INDEX_PREFIX) :]
        for term in value.split(","):
            given.append((field, term.strip()))
            if len(given) > settings.index_entries_max:
                raise BadRequest(f"more than {settings.index_entries_max} index entries (index_entries_max)")
    try:
        return indexes.normalised(settings, given)
    except IndexProblem as exc:
        raise BadRequest(f"bad secondary index header: {exc}") from None


def parse_links(settings: Settings, headers: Iterable[tuple[str, str]]) -> tuple[indexes.Link, ...]:
    """The links a write's `Link` headers name (those with a riaktag; a `rel="up"` link, which reads
    hand out, is no link of the object); raises BadRequest for a header that is not links."""
    text = ",".join(value for name, value in headers if name.lower() == "link")
    if not text.strip():
        return ()
    found: list[indexes.Link] = []
    position = 0
    while position < len(text):
        match = _LINK.match(text, position)
        if match is None:
            raise BadRequest(f'bad Link header near {text[position : position + 64]!r}: expected <path>; riaktag="tag"')
        position = match.end()
        if position < len(text):
            if text[position] != ",":
                raise BadRequest(f"bad Link header near {text[position : position + 64]!r}")
            position += 1
        params = dict((k.lower(), v) for k, v in _PARAM.findall(match.group(2)))
        if "riaktag" not in params:
            continue
        bucket, key = _link_target(match.group(1))
        try:
            found.append(indexes.link(settings, bucket, key, unquote_to_bytes(params["riaktag"].replace("+", " "))))
        except IndexProblem as exc:
            raise BadRequest(f"bad Link header: {exc}") from None
        if len(found) > settings.links_max:
            raise BadRequest(f"more than {settings.links_max} links (links_max)")
    return tuple(found)


def _link_target(path: str) -> tuple[bytes, bytes]:
    parts = [unquote_to_bytes(p.replace("+", " ")) for p in path.strip("/").split("/")]
    if len(parts) == 4 and parts[0] == b"buckets" and parts[2] == b"keys":
        return parts[1], parts[3]
    if len(parts) == 3 and parts[0] == b"riak":
        return parts[1], parts[2]
    raise BadRequest(f"bad Link header: {path[:128]!r} is not /buckets/B/keys/K or /riak/B/K")


def index_headers(content: Content) -> list[tuple[str, str]]:
    """A sibling's index entries as Riak gives them back: one header per field, its terms comma-separated."""
    fields: dict[str, list[str]] = {}
    for field, term in content.indexes:
        fields.setdefault(field, []).append(term.decode("utf-8", "replace"))
    return [("X-Riak-Index-" + field, ", ".join(terms)) for field, terms in fields.items()]


def link_values(content: Content, legacy: bool) -> list[str]:
    """A sibling's links as `Link` header elements, in the form the request used."""
    out = []
    for bucket, key, tag in content.links:
        path = f"/riak/{quote(bucket, safe='')}/{quote(key, safe='')}"
        if not legacy:
            path = f"/buckets/{quote(bucket, safe='')}/keys/{quote(key, safe='')}"
        out.append(f'<{path}>; riaktag="{quote_plus(tag, safe="")}"')
    return out


# --- Queries ------------------------------------------------------------------------------------------


def encode_continuation(position: indexes.Position) -> str:
    raw = msgpack.packb([CONTINUATION_VERSION, position[0], position[1]], use_bin_type=True)
    return base64.urlsafe_b64encode(raw).decode()


def decode_continuation(settings: Settings, text: str) -> indexes.Position:
    """A continuation a client passed back; raises BadRequest for anything not handed out by a node."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        data = msgpack.unpackb(raw, raw=False)
    except (binascii.Error, ValueError, msgpack.UnpackException):
        raise BadRequest("invalid continuation") from None
    longest = max(settings.index_term_bytes_max, settings.key_bytes_max)
    if (
        not isinstance(data, list)
        or len(data) != 3
        or data[0] != CONTINUATION_VERSION
        or not all(isinstance(part, bytes) and len(part) <= longest for part in data[1:])
    ):
        raise BadRequest("invalid continuation")
    return data[1], data[2]


@dataclass(frozen=True, slots=True)
class Query:
    """A 2i query as a client asked it, checked (HTTP's URL and query string, or PB's RpbIndexReq):
    the field, its bounds in sort-term form, and how it pages."""

    field: str
    low: bytes
    high: bytes
    exact: bool
    return_terms: bool
    max_results: int | None
    after: indexes.Position | None


def parse_query(
    settings: Settings,
    field_name: str,
    terms: Sequence[bytes],
    *,
    return_terms: bool,
    max_results: int | None,
    continuation: str | None,
) -> Query:
    """The one place a query's rules are kept, for every API: `terms` is [value] or [start, end];
    raises BadRequest with the reason. return_terms applies to ranges only, as in Riak."""
    field = field_name.lower()
    exact = len(terms) == 1
    if field == indexes.BUCKET_INDEX and not exact:
        raise BadRequest("$bucket takes no range: query it with one value, the bucket")
    if field not in indexes.SPECIAL:
        problem = indexes.field_problem(settings, field)
        if problem is not None:
            raise BadRequest(problem)
    try:
        low, high = indexes.bounds_of(field, terms[0], terms[-1])
    except IndexProblem as exc:
        raise BadRequest(str(exc)) from None
    if max_results is not None and not 0 < max_results <= MAX_RESULTS_MAX:
        raise BadRequest(f"max_results must be a positive integer of at most {MAX_RESULTS_MAX}; got {max_results}")
    after = None
    if continuation is not None:
        after = decode_continuation(settings, continuation)
        if field.endswith(indexes.INT) and len(after[0]) != 8:
            raise BadRequest("invalid continuation")
    return Query(field, low, high, exact, return_terms and not exact, max_results, after)


async def route(api: Api, request: Request, bucket: bytes, tail: list[bytes]) -> Answer:
    """`tail` is [b"index", FIELD, VALUE] or [b"index", FIELD, START, END]."""
    if request.method not in ("GET", "HEAD"):
        return Response(status=405, text="Method Not Allowed", headers={"Allow": "GET, HEAD"})
    if len(tail) not in (3, 4):
        return Response(status=404, text="Not Found")
    api.check_names(bucket, None)
    settings = api.settings
    query = request.query
    if "term_regex" in query:
        raise BadRequest("term_regex is not supported")
    max_results = None
    if "max_results" in query:
        raw = query["max_results"]
        if not raw.isascii() or not raw.isdigit() or len(raw) > 9 or int(raw) == 0:
            raise BadRequest(f"max_results must be a positive integer; got {raw!r}")
        max_results = int(raw)
    asked = parse_query(
        settings,
        tail[1].decode("utf-8", "replace"),
        tail[2:],
        return_terms=bool_param(query, "return_terms"),
        max_results=max_results,
        continuation=query.get("continuation"),
    )
    field, return_terms = asked.field, asked.return_terms
    stream = bool_param(query, "stream")
    timeout = api._int_param(request, "timeout")
    pages = query_pages(api.runtime, settings, bucket, field, asked.low, asked.high, asked.after, max_results, timeout)
    if stream and request.method != "HEAD":
        return await _streamed(request, field, return_terms, pages)
    results: list[indexes.Position] = []
    held = 0
    continuation: indexes.Position | None = None
    async for page in pages:
        if isinstance(page, Failure):
            return api.failure(page)
        chunk, continuation = page
        results.extend(chunk)
        held += indexes.positions_bytes(chunk)
        if held > settings.index_result_bytes_max:
            return api.failure(too_many_results(settings))
    body = _body(field, return_terms, results)
    if max_results is not None and continuation is not None:
        body["continuation"] = encode_continuation(continuation)
    return json_response(body)


def too_many_results(settings: Settings) -> Failure:
    """What a whole (not streamed, not paged) answer past index_result_bytes_max gets."""
    bound = settings.index_result_bytes_max
    reason = f"more than {bound} bytes of results (index_result_bytes_max); use max_results or stream"
    return Failure("overload", reason)


def distinct_keys(results: Iterable[indexes.Position]) -> list[bytes]:
    """The keys of results without terms: each once (a key may match a range under several terms)."""
    seen: set[bytes] = set()
    out = []
    for _, key in results:
        if key not in seen:
            seen.add(key)
            out.append(key)
    return out


def term_bytes(field: str, term: bytes, key: bytes) -> bytes:
    """A result's term as Riak gives it to a client: an `_int` as decimal text, `$key` the key."""
    if field == indexes.KEY_INDEX:
        return key
    if field == indexes.BUCKET_INDEX:
        return b""
    if field.endswith(indexes.INT):
        return str(indexes.term_text(field, term)).encode()
    return term


def _body(field: str, return_terms: bool, results: list[indexes.Position]) -> dict[str, Any]:
    if return_terms:
        return {"results": [{str(_term(field, t, k)): k.decode(errors="replace")} for t, k in results]}
    return {"keys": [key.decode(errors="replace") for key in distinct_keys(results)]}


def _term(field: str, term: bytes, key: bytes) -> str | int:
    if field == indexes.KEY_INDEX:
        return key.decode(errors="replace")
    if field == indexes.BUCKET_INDEX:
        return ""
    return indexes.term_text(field, term)


async def query_pages(
    runtime: NodeRuntime,
    settings: Settings,
    bucket: bytes,
    field: str,
    low: bytes,
    high: bytes,
    after: indexes.Position | None,
    max_results: int | None,
    timeout_ms: int | None,
) -> AsyncIterator[tuple[list[indexes.Position], indexes.Position | None] | Failure]:
    """The query's pages, each with where the next starts, until `max_results` (all without it) or
    the end, or a failure; with `timeout_ms`, the whole query must be done within it. Any API that
    answers 2i queries (HTTP here, PB) pages through this; `low` and `high` are sort terms
    (core/indexes.bounds_of) and `after` a decoded continuation."""
    loop = asyncio.get_running_loop()
    deadline = None if timeout_ms is None else loop.time() + timeout_ms / 1000
    left = max_results
    while True:
        remaining_ms = None
        if deadline is not None:
            remaining_ms = int((deadline - loop.time()) * 1000)
            if remaining_ms <= 0:
                yield Failure("timeout", "the index query did not finish within its timeout")
                return
        size = settings.index_page_results_max if left is None else min(left, settings.index_page_results_max)
        response = await runtime.request(ClientIndexQuery(bucket, field, low, high, size, after, remaining_ms))
        if isinstance(response, Failure):
            yield response
            return
        assert isinstance(response, Ok) and response.page is not None
        page = response.page
        after = page.continuation
        if left is not None:
            left -= len(page.results)
        yield list(page.results), after
        if after is None or (left is not None and left <= 0):
            return


async def _streamed(
    request: Request,
    field: str,
    return_terms: bool,
    pages: AsyncIterator[tuple[list[indexes.Position], indexes.Position | None] | Failure],
) -> StreamResponse:
    """Each page as one JSON part of a multipart/mixed stream, then the continuation (when there is
    one) as the last part, as Riak streams; a failure once begun is an `{"error": ...}` part."""
    boundary = secrets.token_hex(12)
    stream = StreamResponse(headers={"Content-Type": f"multipart/mixed; boundary={boundary}"})

    def part(data: dict[str, Any]) -> bytes:
        return f"\r\n--{boundary}\r\nContent-Type: application/json\r\n\r\n".encode() + json.dumps(data).encode()

    try:
        await stream.prepare(request)
        continuation: indexes.Position | None = None
        async for page in pages:
            if isinstance(page, Failure):
                await stream.write(part({"error": "timeout" if page.kind == "timeout" else page.reason}))
                continuation = None
                break
            chunk, continuation = page
            if chunk:
                await stream.write(part(_body(field, return_terms, chunk)))
        if continuation is not None and "max_results" in request.query:
            await stream.write(part({"continuation": encode_continuation(continuation)}))
        await stream.write(f"\r\n--{boundary}--\r\n".encode())
        await stream.write_eof()
    except ConnectionResetError:
        # The client went away mid-stream; there is no one left to answer.
        pass
    return stream
