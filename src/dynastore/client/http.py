"""A plain HTTP client for dynastore (any node coordinates), asynchronous, on aiohttp.

get returns every sibling and the opaque context; put takes the context back. When a key has
siblings, an optional resolver turns them into one value, and `get` then writes the resolution back
with the merged context so the siblings go away (Dynamo's client-side reconciliation).

Every call may name the node URLs to try (`urls=`), in order; `on_attempt` hears how each try went.
Those two are the seam the partition-aware client (`ring_aware.py`) drives this one through, so the
HTTP and multipart handling lives here only.
"""

from __future__ import annotations

import base64
import json
import quopri
import ssl
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp


class ClientError(Exception):
    """A request failed; `status` is the HTTP status (0 when no node answered)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status}: {reason}" if status else reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Value:
    """One sibling as a client sees it."""

    data: bytes
    content_type: str = "application/octet-stream"
    usermeta: Mapping[str, str] = field(default_factory=dict)
    vtag: str = ""
    last_modified: str = ""


@dataclass(frozen=True, slots=True)
class IndexResult:
    """A page of a secondary-index query: (term, key) pairs in index order (the term is None unless
    the query asked for terms), and the continuation for the next page (None after the last)."""

    results: tuple[tuple[str | int | None, str], ...]
    continuation: str | None

    @property
    def keys(self) -> list[str]:
        return [key for _, key in self.results]


@dataclass(frozen=True, slots=True)
class Fetched:
    """The outcome of a get: the siblings (empty when absent or deleted) and the context to write with."""

    values: tuple[Value, ...]
    context: str | None

    @property
    def exists(self) -> bool:
        return bool(self.values)

    @property
    def value(self) -> Value:
        if len(self.values) != 1:
            raise ClientError(300, f"{len(self.values)} siblings; resolve them first")
        return self.values[0]


@dataclass(frozen=True, slots=True)
class DataType:
    """A data type's value as fetched (Riak's JSON value: a number, a list, a map of `name_type`
    fields) and the context a remove names to remove what was seen (sets and maps)."""

    type: str
    value: Any
    context: str | None = None


Resolver = Callable[[tuple[Value, ...]], Value]
# Told, after each try of one node URL, the connection error, or None when the node answered.
AttemptObserver = Callable[[str, BaseException | None], None]


def _path(bucket: str | bytes, key: str | bytes | None = None) -> str:
    b = quote(bucket if isinstance(bucket, bytes) else bucket.encode(), safe="")
    if key is None:
        return f"/buckets/{b}/keys"
    k = quote(key if isinstance(key, bytes) else key.encode(), safe="")
    return f"/buckets/{b}/keys/{k}"


def _dt_path(bucket_type: str, bucket: str | bytes, key: str | bytes | None = None) -> str:
    t = quote(bucket_type.encode(), safe="")
    b = quote(bucket if isinstance(bucket, bytes) else bucket.encode(), safe="")
    if key is None:
        return f"/types/{t}/buckets/{b}/datatypes"
    k = quote(key if isinstance(key, bytes) else key.encode(), safe="")
    return f"/types/{t}/buckets/{b}/datatypes/{k}"


def _query(params: Mapping[str, Any]) -> dict[str, str]:
    return {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in params.items() if v is not None}


def _boundary(content_type: str) -> bytes:
    for param in content_type.split(";")[1:]:
        name, _, value = param.strip().partition("=")
        if name.strip().lower() == "boundary" and value:
            return value.strip().strip('"').encode()
    raise ClientError(300, f"a multipart answer without a boundary: {content_type!r}")


def _split_parts(body: bytes, boundary: bytes) -> list[bytes]:
    """The parts of a multipart body (RFC 2046): the CRLF before each delimiter belongs to it."""
    delimiter = b"--" + boundary
    parts: list[bytes] = []
    at = body.find(delimiter)
    while at >= 0:
        after = at + len(delimiter)
        if body.startswith(b"--", after):
            break  # the close delimiter
        line_end = body.find(b"\n", after)
        if line_end < 0:
            break
        start = line_end + 1
        following = body.find(b"\n" + delimiter, start)
        if following < 0:
            parts.append(body[start:])
            break
        end = following - 1 if following > start and body[following - 1 : following] == b"\r" else following
        parts.append(body[start:end])
        at = following + 1
    return parts


def _part_headers(head: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    last = ""
    for raw in head.decode("latin-1").splitlines():
        if raw[:1] in (" ", "\t") and last:
            headers[last] += " " + raw.strip()  # a folded header line
            continue
        name, sep, value = raw.partition(":")
        if sep:
            last = name.strip().lower()
            headers[last] = value.strip()
    return headers


def _head_and_payload(part: bytes) -> tuple[bytes, bytes]:
    """A part is its headers, an empty line, then its payload; with no headers it starts with the line end."""
    for line_end in (b"\r\n", b"\n"):
        if part.startswith(line_end):
            return b"", part[len(line_end) :]
        cut = part.find(line_end + line_end)
        if cut >= 0:
            return part[:cut], part[cut + 2 * len(line_end) :]
    return part, b""


def parse_multipart(body: bytes, content_type: str) -> tuple[Value, ...]:
    """Every sibling of a 300 answer (`multipart/mixed`), each with its content type and metadata.

    A small parser of our own: the general MIME parser of the standard library took more than half of
    a benchmark client's CPU.
    """
    values: list[Value] = []
    for part in _split_parts(body, _boundary(content_type)):
        head, payload = _head_and_payload(part)
        headers = _part_headers(head)
        encoding = headers.get("content-transfer-encoding", "").lower()
        if encoding == "base64":
            payload = base64.b64decode(payload)
        elif encoding == "quoted-printable":
            payload = quopri.decodestring(payload)
        meta = {
            name[len("x-riak-meta-") :]: value for name, value in headers.items() if name.startswith("x-riak-meta-")
        }
        ctype = headers.get("content-type", "text/plain").split(";")[0].strip().lower() or "text/plain"
        values.append(Value(payload, ctype, meta, headers.get("etag", "").strip('"'), headers.get("last-modified", "")))
    return tuple(values)


def basic_auth(user: str, password: str) -> dict[str, str]:
    """The HTTP Basic header of a user (the cluster's users, when its security is on)."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


class HttpClient:
    """Talks to one node (or, on failure, the next of `urls`).

    `timeout_s` bounds each try of one node; `connect_timeout_s`, when given, bounds the connection
    set-up alone, so that a host that drops packets is given up on quickly.
    """

    def __init__(
        self,
        urls: str | list[str],
        *,
        timeout_s: float = 10.0,
        resolver: Resolver | None = None,
        connect_timeout_s: float | None = None,
        on_attempt: AttemptObserver | None = None,
        on_headers: Callable[[str, Mapping[str, str]], None] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        auth: tuple[str, str] | None = None,
    ) -> None:
        self.urls = [urls] if isinstance(urls, str) else list(urls)
        assert self.urls, "at least one node URL is needed"
        self.timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=connect_timeout_s)
        self.resolver = resolver
        self.on_attempt = on_attempt
        # Hears every response's headers (the ring-aware client watches the ring epoch in them).
        self.on_headers = on_headers
        # For https:// nodes: the context that verifies them (dynastore.net.tls.http_client_context).
        self.ssl_context = ssl_context
        # A user and password, sent with every request (HTTP Basic) when the cluster's security is on.
        self.auth_headers = {} if auth is None else basic_auth(*auth)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> HttpClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(ssl=self.ssl_context) if self.ssl_context is not None else None
            self._session = aiohttp.ClientSession(timeout=self.timeout, connector=connector, headers=self.auth_headers)
        return self._session

    async def _call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        urls: list[str] | None = None,
    ) -> tuple[int, Mapping[str, str], bytes]:
        last: Exception | None = None
        for base in urls or self.urls:
            try:
                async with self.session().request(
                    method, base.rstrip("/") + path, params=_query(params or {}), data=data, headers=headers
                ) as resp:
                    answer = resp.status, resp.headers, await resp.read()
            except (aiohttp.ClientConnectionError, TimeoutError) as exc:
                last = exc
                if self.on_attempt is not None:
                    self.on_attempt(base, exc)
                continue
            if self.on_attempt is not None:
                self.on_attempt(base, None)
            if self.on_headers is not None:
                self.on_headers(base, answer[1])
            return answer
        raise ClientError(0, f"no node answered: {last}")

    async def call_one(
        self, url: str, method: str, path: str, params: Mapping[str, Any] | None = None
    ) -> tuple[int, Mapping[str, str], bytes]:
        """One request to one node, with this client's session and observers; ClientError(0) when it
        cannot be reached."""
        return await self._call(method, path, params=params, urls=[url])

    async def get(
        self,
        bucket: str | bytes,
        key: str | bytes,
        *,
        r: int | str | None = None,
        pr: int | str | None = None,
        timeout_ms: int | None = None,
        urls: list[str] | None = None,
    ) -> Fetched:
        status, headers, body = await self._call(
            "GET",
            _path(bucket, key),
            params={"r": r, "pr": pr, "timeout": timeout_ms},
            headers={"Accept": "multipart/mixed, */*;q=0.5"},
            urls=urls,
        )
        context = headers.get("X-Riak-Vclock")
        if status == 404:
            return Fetched((), context)
        if status == 200:
            return Fetched((_value(headers, body),), context)
        if status == 300:
            fetched = Fetched(parse_multipart(body, headers.get("Content-Type", "")), context)
            if self.resolver is not None:
                resolved = self.resolver(fetched.values)
                new_context = await self.put(
                    bucket,
                    key,
                    resolved.data,
                    context=context,
                    content_type=resolved.content_type,
                    usermeta=resolved.usermeta,
                    urls=urls,
                )
                return Fetched((resolved,), new_context)
            return fetched
        raise ClientError(status, body.decode(errors="replace").strip())

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
        urls: list[str] | None = None,
        indexes: Mapping[str, Iterable[str | int]] | None = None,
    ) -> str | None:
        """Store a value; returns the context of the write (to write again without reading).
        `indexes` maps an index name (`..._bin`, `..._int`) to its terms."""
        headers = {"Content-Type": content_type}
        if context:
            headers["X-Riak-Vclock"] = context
        for name, value in (usermeta or {}).items():
            headers["X-Riak-Meta-" + name] = value
        for name, terms in (indexes or {}).items():
            headers["X-Riak-Index-" + name] = ", ".join(str(term) for term in terms)
        status, resp_headers, body = await self._call(
            "PUT",
            _path(bucket, key),
            params={"w": w, "dw": dw, "pw": pw, "timeout": timeout_ms},
            data=data,
            headers=headers,
            urls=urls,
        )
        if status not in (200, 204):
            raise ClientError(status, body.decode(errors="replace").strip())
        return resp_headers.get("X-Riak-Vclock")

    async def index(
        self,
        bucket: str | bytes,
        field: str,
        low: str | int,
        high: str | int | None = None,
        *,
        max_results: int | None = None,
        continuation: str | None = None,
        return_terms: bool = False,
        timeout_ms: int | None = None,
        urls: list[str] | None = None,
    ) -> IndexResult:
        """One secondary-index query (exact when `high` is None, else the range [low, high]): a page
        of at most `max_results` (all without it) and the continuation to pass for the next."""
        b = quote(bucket if isinstance(bucket, bytes) else bucket.encode(), safe="")
        terms = [low] if high is None else [low, high]
        path = f"/buckets/{b}/index/{quote(field, safe='')}/" + "/".join(quote(str(t), safe="") for t in terms)
        params = {
            "max_results": max_results,
            "continuation": continuation,
            "return_terms": return_terms or None,
            "timeout": timeout_ms,
        }
        status, _, body = await self._call("GET", path, params=params, urls=urls)
        if status != 200:
            raise ClientError(status, body.decode(errors="replace").strip())
        answer = json.loads(body)
        if "results" in answer:
            pairs: list[tuple[str | int | None, str]] = []
            for item in answer["results"]:
                ((term, key),) = item.items()
                pairs.append((int(term) if field.endswith("_int") else term, key))
            results = tuple(pairs)
        else:
            results = tuple((None, key) for key in answer["keys"])
        return IndexResult(results, answer.get("continuation"))

    async def delete(
        self,
        bucket: str | bytes,
        key: str | bytes,
        *,
        context: str | None = None,
        w: int | str | None = None,
        timeout_ms: int | None = None,
        urls: list[str] | None = None,
    ) -> bool:
        """Delete a key; False when it did not exist."""
        headers = {"X-Riak-Vclock": context} if context else {}
        status, _, body = await self._call(
            "DELETE", _path(bucket, key), params={"w": w, "timeout": timeout_ms}, headers=headers, urls=urls
        )
        if status == 404:
            return False
        if status != 204:
            raise ClientError(status, body.decode(errors="replace").strip())
        return True

    # --- Data types (bucket types whose `datatype` is set) -------------------------------------------

    async def dt_get(
        self,
        bucket_type: str,
        bucket: str | bytes,
        key: str | bytes,
        *,
        r: int | str | None = None,
        timeout_ms: int | None = None,
        urls: list[str] | None = None,
    ) -> DataType | None:
        """A data type's value and context; None when the key does not exist."""
        status, _, body = await self._call(
            "GET", _dt_path(bucket_type, bucket, key), params={"r": r, "timeout": timeout_ms}, urls=urls
        )
        if status == 404:
            return None
        if status != 200:
            raise ClientError(status, body.decode(errors="replace").strip())
        import json

        data = json.loads(body)
        return DataType(data["type"], data["value"], data.get("context"))

    async def dt_update(
        self,
        bucket_type: str,
        bucket: str | bytes,
        key: str | bytes | None,
        operation: Any,
        *,
        context: str | None = None,
        w: int | str | None = None,
        return_body: bool = False,
        timeout_ms: int | None = None,
        urls: list[str] | None = None,
    ) -> tuple[str | None, DataType | None]:
        """Apply one of Riak's JSON operations (`{"increment": 1}`, `{"add": "x"}`, `{"update": {...}}`)
        to a key (a server-chosen one when `key` is None); returns the key and, with `return_body`,
        the new value. A remove of what is not there is a ClientError with status 412."""
        import json

        body = operation if not isinstance(operation, dict) else dict(operation)
        if context is not None and isinstance(body, dict):
            body["context"] = context
        status, headers, answer = await self._call(
            "POST",
            _dt_path(bucket_type, bucket, key),
            params={"w": w, "returnbody": return_body or None, "timeout": timeout_ms},
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            urls=urls,
        )
        if status not in (200, 201, 204):
            raise ClientError(status, answer.decode(errors="replace").strip())
        made_key = key.decode() if isinstance(key, bytes) else key
        if key is None:
            made_key = headers.get("Location", "").rsplit("/", 1)[-1] or None
        found = None
        if answer and status in (200, 201):
            data = json.loads(answer)
            found = DataType(data["type"], data["value"], data.get("context"))
        return made_key, found

    async def dt_delete(
        self, bucket_type: str, bucket: str | bytes, key: str | bytes, *, urls: list[str] | None = None
    ) -> bool:
        """Delete a data type; False when it did not exist."""
        status, _, body = await self._call("DELETE", _dt_path(bucket_type, bucket, key), urls=urls)
        if status == 404:
            return False
        if status != 204:
            raise ClientError(status, body.decode(errors="replace").strip())
        return True

    async def json(
        self,
        path: str,
        *,
        method: str = "GET",
        params: Mapping[str, Any] | None = None,
        urls: list[str] | None = None,
    ) -> Any:
        status, _, body = await self._call(method, path, params=params, urls=urls)
        if status != 200:
            raise ClientError(status, body.decode(errors="replace").strip())
        import json

        return json.loads(body)


def _value(headers: Mapping[str, str], body: bytes) -> Value:
    meta = {k[len("X-Riak-Meta-") :].lower(): v for k, v in headers.items() if k.lower().startswith("x-riak-meta-")}
    ctype = headers.get("Content-Type", "application/octet-stream").split(";")[0].strip()
    return Value(body, ctype, meta, headers.get("ETag", "").strip('"'), headers.get("Last-Modified", ""))
