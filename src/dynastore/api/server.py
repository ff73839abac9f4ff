"""A lean HTTP/1.1 server for the node's API: httptools (llhttp) parses, an asyncio.Protocol serves.

It does what the API needs and nothing more, so that a request costs little CPU: one task per request,
no middleware and no routing (the handler routes), each answer's head written in one pass.

Requests on a connection are answered one at a time and in order; pipelined requests wait their turn.
A request goes to the handler once its body is complete (bodies are small: at most `body_bytes_max`).
A body declared or found larger than that is not read: its request goes to the handler at once,
`Request.read()` raises `RequestEntityTooLarge`, and the connection closes after the answer (first
reading and dropping what the client still sends, for at most LINGER_S, so that the client gets the
answer rather than a reset).

Input is decoded as aiohttp decoded it, which the API's validation relies on: the target and the header
names and values are UTF-8 with `surrogateescape`, so bytes that are not UTF-8 arrive as lone
surrogates, which the API refuses. A malformed request gets 400 and the connection is closed, as does
one beyond these limits: a request target of more than 8190 bytes, a header name or value of more
than 8190 bytes, more than 128 header fields, a NUL in a header value, a repeated Host,
Content-Length, Content-Type (and the like), an HTTP/1.1 request without Host; a version other than 1.0 and
1.1 gets 505. `Expect: 100-continue` is answered `100 Continue` when the request's turn comes; any other
expectation of an HTTP/1.1 request is answered 417.

Flow control: while a request is being handled, at most one more read is taken from the socket; reading
then pauses until the answer is written, so a pipelining client cannot make the server buffer more than
one read ahead, and nothing is paused for a client that waits for its answers. Of a read, at most
PIPELINED_MAX requests are parsed ahead; the rest waits, unparsed, for the queue to drain. The bodies
held in memory, being received or waiting with their requests, are bounded over all connections by
`body_buffer_bytes_max`: a body that would take them past it gets 503 and its connection closes. No request is started
while the transport's write buffer is above its high-water mark; a streamed answer waits there, and
gives up on a client that reads nothing for DRAIN_TIMEOUT_S (so does any answer left in a write buffer
that stays over its mark that long). A request must arrive whole within RECEIVE_TIMEOUT_S of its first
byte (time the server spends not reading does not count), or it gets 408 and the connection closes. A
connection with nothing in progress that receives nothing for `idle_timeout_s` is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import functools
import logging
import socket
import ssl
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from http import HTTPStatus
from types import MappingProxyType
from typing import Final, cast
from urllib.parse import parse_qsl

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

from dynastore import __version__

log = logging.getLogger("dynastore.http.server")

URL_BYTES_MAX: Final = 8190
FIELD_BYTES_MAX: Final = 8190
HEADERS_COUNT_MAX: Final = 128
# What a request's head may take in before it is complete. It is counted by whole reads, so it is set
# well above the most that the limits above allow (about 1 MiB), never to refuse a head that keeps them.
HEAD_BYTES_MAX: Final = 4 * 1024 * 1024
# The parser holds a field's name and value until the field ends; a request that grows by this much while
# the parser hands nothing on (no field ends, no body arrives: room for the request line and two fields
# at their limits, with their framing) is refused then, in its head or its trailers, instead of once the
# field is whole or the head reaches HEAD_BYTES_MAX.
FIELD_OPEN_BYTES_MAX: Final = URL_BYTES_MAX + 4 * FIELD_BYTES_MAX + 1024
# How long a connection that refused a body keeps reading (and dropping) it before closing.
LINGER_S: Final = 5.0
# How many connections turned away for being over the limit may linger at once with their 503.
REFUSALS_LINGERING_MAX: Final = 64
# How long a streamed answer waits for a client that reads nothing before the connection is dropped.
DRAIN_TIMEOUT_S: Final = 30.0
# How long a request's head and body may take to arrive, once it has begun (a slow client is refused).
RECEIVE_TIMEOUT_S: Final = 60.0
# How long handlers still running when the server stops get to finish before they are cancelled.
STOP_GRACE_S: Final = 2.0
# Requests parsed ahead of the one being answered on a connection. Past it the rest of a read is kept
# unparsed (and the socket not read) until the queue drains: a pipelining client holds at most this
# many parsed requests, plus what one FEED_BYTES piece of input holds, and one read of raw input.
PIPELINED_MAX: Final = 32
# Input is handed to the parser this much at a time (a body whose length is declared, all at once).
FEED_BYTES: Final = 1024

SERVER_SOFTWARE: Final = f"Python/{sys.version_info[0]}.{sys.version_info[1]} dynastore/{__version__}"

# Header fields a request may carry once only (aiohttp's parser refused repeats of these too).
_SINGLETONS: Final = frozenset(
    {
        b"content-length",
        b"content-location",
        b"content-range",
        b"content-type",
        b"etag",
        b"host",
        b"max-forwards",
        b"server",
        b"transfer-encoding",
        b"user-agent",
    }
)
# Status codes whose answers have no body, and so no Content-Length or Content-Type of their own.
_EMPTY_BODY_STATUS: Final = frozenset((204, 304, *range(100, 200)))
_REASONS: Final = {status.value: status.phrase for status in HTTPStatus}
_VERSIONS: Final = {"1.1": (1, 1), "1.0": (1, 0)}
_EMPTY_QUERY: Final[Mapping[str, str]] = MappingProxyType({})
# Answers of at most this many bytes go out in one write together with their head.
_COALESCE_BYTES: Final = 16 * 1024


class RequestEntityTooLarge(Exception):
    """The request's body is larger than the server accepts; it was not read."""


class _Refused(Exception):
    """A request the server cannot accept: answered with `status` (400 unless said otherwise) and the
    message as its reason, after which the connection closes."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.status = status


class _StopParsing(Exception):
    """Raised out of a parser callback to stop the parser where it is."""


def parse_query(query_string: str) -> Mapping[str, str]:
    """The first value of each name in a query string, decoded as aiohttp (yarl) decoded it: `+` is a
    space, `%XX` escapes are UTF-8 (an invalid sequence becomes U+FFFD), a name without `=` has an
    empty value and empty fields are skipped. Read-only."""
    if not query_string:
        return _EMPTY_QUERY
    values: dict[str, str] = {}
    if "%" not in query_string:
        for field in query_string.replace("+", " ").split("&"):
            if field:
                name, _, value = field.partition("=")
                values.setdefault(name, value)
    else:
        for name, value in parse_qsl(query_string, keep_blank_values=True):
            values.setdefault(name, value)
    return MappingProxyType(values)


def split_target(method: str, target: str) -> tuple[str, str]:
    """The raw path and query string of a request target, split where aiohttp split it, in each form
    of RFC 9112: origin (`/path?query#fragment`), absolute (`http://host/path?query`), authority
    (CONNECT: no path) and asterisk (`OPTIONS *`). Anything else is refused."""
    if target.startswith("/"):
        mark = target.find("?")
        if mark == -1:
            return target.partition("#")[0], ""
        return target[:mark], target[mark + 1 :].partition("#")[0]
    if method == "CONNECT":
        return "", ""
    if target == "*" and method == "OPTIONS":
        return "*", ""
    scheme, sep, rest = target.partition("://")
    if sep and scheme.isascii() and scheme.isalpha():
        end = len(rest)
        for mark_char in "/?#":
            found = rest.find(mark_char)
            if found != -1:
                end = min(end, found)
        if end > 0:
            tail = rest[end:]
            return split_target(method, tail if tail.startswith("/") else "/" + tail)
    raise _Refused(f"invalid request target {target[:100]!r}")


class Request:
    """One request. `raw_path` is the target's path as sent (percent-escapes kept, no query or
    fragment); `headers` keep their names as sent and are looked up case-insensitively; `version` is
    (major, minor); `query` maps each name to its first value."""

    __slots__ = (
        "_body",
        "_charged",
        "_conn",
        "_query",
        "continue_sent",
        "expect",
        "headers",
        "keep_alive",
        "method",
        "query_string",
        "raw_path",
        "too_large",
        "version",
    )

    def __init__(
        self,
        method: str,
        raw_path: str,
        query_string: str,
        version: tuple[int, int],
        headers: CIMultiDictProxy[str],
        keep_alive: bool,
        conn: _Connection | None = None,
    ) -> None:
        self.method = method
        self.raw_path = raw_path
        self.query_string = query_string
        self.version = version
        self.headers = headers
        self.keep_alive = keep_alive
        self._conn = conn
        self._query: Mapping[str, str] | None = None
        self._body = b""
        # The bytes of its body counted against the server's budget until it has been answered.
        self._charged = 0
        # Set when the body exceeded the server's limit and was not read.
        self.too_large = False
        # An HTTP/1.1 request's Expect header, lower-cased ("" when there is none), and whether the
        # interim 100 Continue has gone out.
        self.expect = ""
        self.continue_sent = False

    @property
    def query(self) -> Mapping[str, str]:
        if self._query is None:
            self._query = parse_query(self.query_string)
        return self._query

    @property
    def client_host(self) -> str:
        """The address the client connected from ("" when the request did not come over a socket)."""
        return "" if self._conn is None else self._conn.client_host

    @property
    def body(self) -> bytes:
        """The body as received (empty when it was over the server's limit and not read)."""
        return self._body

    @property
    def scheme(self) -> str:
        return "https" if self._conn is not None and self._conn.tls else "http"

    @property
    def content_length(self) -> int | None:
        """The declared Content-Length (the parser has checked it is digits); None when chunked or absent."""
        raw = self.headers.get("Content-Length")
        return None if raw is None else int(raw)

    async def read(self) -> bytes:
        """The whole body; raises RequestEntityTooLarge when it was over the server's limit."""
        if self.too_large:
            raise RequestEntityTooLarge("the request body exceeds the server's limit")
        return self._body


class Response:
    """A complete answer, built as aiohttp's Response was: `text` goes out as UTF-8, typed
    `text/plain; charset=utf-8` (or `content_type` with that charset); `body` goes out as given, typed
    by a Content-Type header or `content_type`, else application/octet-stream when it is not empty."""

    __slots__ = ("body", "headers", "status")
    # A complete answer is written by the server after the handler returns it.
    prepared = False

    def __init__(
        self,
        *,
        status: int = 200,
        text: str | None = None,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        content_type: str | None = None,
    ) -> None:
        if text is not None and body is not None:
            raise ValueError("a Response takes text or body, not both")
        real: CIMultiDict[str] = CIMultiDict(headers) if headers else CIMultiDict()
        if (text is not None or content_type is not None) and "Content-Type" in real:
            raise ValueError("give the type by the Content-Type header or by text/content_type, not both")
        if text is not None:
            real["Content-Type"] = (content_type or "text/plain") + "; charset=utf-8"
            body = text.encode("utf-8")
        elif content_type is not None:
            real["Content-Type"] = content_type
        self.status = status
        self.headers = real
        self.body = b"" if body is None else body


class StreamResponse:
    """An answer written piece by piece, with chunked transfer coding (to an HTTP/1.0 client: until the
    connection closes). `prepare` sends the head, `write` a piece (waiting while the client is behind),
    `write_eof` the end. Writing to a client that has gone raises ConnectionResetError."""

    __slots__ = ("_conn", "_eof_sent", "_request", "headers", "status")

    def __init__(self, *, status: int = 200, headers: Mapping[str, str] | None = None) -> None:
        self.status = status
        self.headers: CIMultiDict[str] = CIMultiDict(headers) if headers else CIMultiDict()
        self._conn: _Connection | None = None
        self._request: Request | None = None
        self._eof_sent = False

    @property
    def prepared(self) -> bool:
        return self._conn is not None

    async def prepare(self, request: Request) -> None:
        if self._conn is not None:
            return
        conn = request._conn
        if conn is None:
            raise RuntimeError("the request did not come from a server")
        conn.start_stream(request, self)
        self._conn = conn
        self._request = request

    async def write(self, data: bytes) -> None:
        if self._conn is None or self._request is None:
            raise RuntimeError("write() before prepare()")
        if self._eof_sent:
            raise RuntimeError("write() after write_eof()")
        if data:
            await self._conn.write_stream(self._request, data)

    async def write_eof(self) -> None:
        if self._conn is None or self._request is None:
            raise RuntimeError("write_eof() before prepare()")
        if not self._eof_sent:
            self._eof_sent = True
            self._conn.end_stream(self._request)


Handler = Callable[[Request], Awaitable[Response | StreamResponse]]


@functools.lru_cache(maxsize=4096)
def http_date(second: int) -> str:
    """An HTTP date (IMF-fixdate) of a Unix time in whole seconds; the Date header's and Last-Modified's
    text, formatted once per second seen."""
    return email.utils.formatdate(second, usegmt=True)


class _Connection(asyncio.Protocol):
    """One client connection: parses requests, hands them to the handler in order, writes the answers."""

    @property
    def tls(self) -> bool:
        return self._tls

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self._loop = server.loop
        self._transport: asyncio.Transport | None = None
        self._tls = False
        self.client_host = ""
        self._parser = httptools.HttpRequestParser(self)
        # The request being parsed: its target and fields so far, then (from the end of its head) the
        # request itself and its body so far.
        self._url = bytearray()
        self._fields: list[tuple[str, str]] = []
        self._seen: set[bytes] = set()
        self._in_message = False
        self._in_head = False
        self._message_bytes = 0
        # Where (in _message_bytes) the last read ended in which the parser handed something on (the
        # request began, a field ended, body arrived): what it may be holding came after that.
        self._field_mark = 0
        self._progressed = False
        self._current: Request | None = None
        self._body_parts: list[bytes] = []
        # The body being received, in bytes (counted against the server's budget), and what its
        # Content-Length says is still to come.
        self._body_size = 0
        self._body_left = 0
        # Input not parsed yet because enough requests wait already, and whether the client has sent
        # its last byte (what was kept is parsed and answered first).
        self._unparsed = b""
        self._eof = False
        # Complete requests waiting for their turn (or a refusal: status and reason), and the task
        # handling the one whose turn it is.
        self._queue: deque[Request | tuple[int, str]] = deque()
        self._task: asyncio.Task[None] | None = None
        self._streaming = False
        self._reading_paused = False
        self._writing_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        # Set once nothing more is to be parsed: the queue is answered, then the connection closes.
        self._stop_parsing = False
        self._closing = False
        self._lingering = False
        self._idle_since = 0.0
        self._idle_handle: asyncio.TimerHandle | None = None
        self._linger_handle: asyncio.TimerHandle | None = None
        # Armed while the transport's write buffer is over its high-water mark: a client that reads
        # nothing of what it asked for is dropped after DRAIN_TIMEOUT_S, answered or closing alike.
        self._stall_handle: asyncio.TimerHandle | None = None
        # Armed while a request is being received: its head and body must arrive within RECEIVE_TIMEOUT_S
        # of reading (time the server itself stops reading, busy with earlier requests, does not count).
        self._receive_handle: asyncio.TimerHandle | None = None
        self._message_started = 0.0
        self._stream_bodiless = False

    # --- asyncio.Protocol ------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its interface.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        self._tls = transport.get_extra_info("sslcontext") is not None
        peer = transport.get_extra_info("peername")
        self.client_host = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        server = self.server
        if len(server.connections) >= server.connections_max:
            # Over the limit: the client is told why (it may come back later) and nothing is parsed for
            # it. The answer lingers like any refusal, so the reset of a close does not eat it, but only
            # REFUSALS_LINGERING_MAX at a time; past that a connection is reset at once.
            server.connections_refused += 1
            if len(server.refused) >= REFUSALS_LINGERING_MAX:
                transport.abort()
                return
            server.refused.add(self)
            self._stop_parsing = True
            self._write_refusal(503, f"too many connections (the limit is {server.connections_max})")
            self._close(linger=True)
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        server.connections.add(self)
        if server.stopping:
            self._close()
            return
        self._idle_since = self._loop.time()
        self._arm_idle_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self.server.refused.discard(self)
        self._closing = self._stop_parsing = True
        for handle in (self._idle_handle, self._linger_handle, self._stall_handle, self._receive_handle):
            if handle is not None:
                handle.cancel()
        self._idle_handle = self._linger_handle = self._stall_handle = self._receive_handle = None
        self._release_body()
        for item in self._queue:
            if isinstance(item, Request):
                self.server.release(item)
        self._queue.clear()
        self._unparsed = b""
        self._wake_drain(ConnectionResetError("the client closed the connection"))
        # A handler still running finishes (what it does may matter although the client left); the
        # server forgets the connection once it has.
        if self._task is None:
            self.server.connections.discard(self)

    def eof_received(self) -> bool | None:
        # The client sends no more: what it sent is still answered, then the connection closes. (Over
        # TLS the transport closes at once whatever is returned, so nothing is asked of it there.)
        if self._unparsed and not self._lingering and not self._tls:
            # Requests already sent wait unparsed: they are parsed and answered, then the connection closes.
            self._eof = True
            return True
        self._stop_parsing = True
        if self._lingering or self._tls or (self._task is None and not self._queue):
            self._close()
            return None
        return True

    def pause_writing(self) -> None:
        self._writing_paused = True
        if self._stall_handle is None:
            self._stall_handle = self._loop.call_later(DRAIN_TIMEOUT_S, self._on_write_stall)

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._stall_handle is not None:
            self._stall_handle.cancel()
            self._stall_handle = None
        self._wake_drain(None)
        self._next()

    def data_received(self, data: bytes) -> None:
        if self._stop_parsing:
            return
        self._idle_since = self._loop.time()
        self._take(data)
        if self._in_message and self._receive_handle is None and not self._stop_parsing:
            # A request that has not arrived whole in one read gets until RECEIVE_TIMEOUT_S after its start.
            self._receive_handle = self._loop.call_at(
                self._message_started + RECEIVE_TIMEOUT_S, self._on_receive_timeout
            )
        if self._task is not None:
            # Busy: this read is taken in, no further one until the answer is out.
            self._pause_reading()
        else:
            self._next()

    def _take(self, data: bytes) -> None:
        """Parse `data` a piece at a time, keeping the rest unparsed once PIPELINED_MAX requests wait."""
        offset, size = 0, len(data)
        while offset < size and not self._stop_parsing:
            if len(self._queue) >= PIPELINED_MAX:
                self._unparsed = data[offset:]
                self._pause_reading()
                return
            step = max(FEED_BYTES, self._body_left)
            piece = data if offset == 0 and step >= size else data[offset : offset + step]
            offset += len(piece)
            self._feed(piece)
            self._account(len(piece))
        if self._eof:
            self._eof = False
            self._stop_parsing = True

    def _account(self, size: int) -> None:
        """Count `size` more bytes of input against the request being received."""
        if self._in_message and not self._stop_parsing:
            self._message_bytes += size
            if self._progressed:
                self._progressed = False
                self._field_mark = self._message_bytes
            if self._in_head and self._message_bytes > HEAD_BYTES_MAX:
                self._refuse("request head too large")
            elif self._message_bytes - self._field_mark > FIELD_OPEN_BYTES_MAX:
                self._refuse(f"header name or value longer than {FIELD_BYTES_MAX} bytes")
            elif self._message_bytes > self._message_bytes_max() and self._current is not None:
                # Only absurd chunking overhead gets here: the body is bounded, and so are trailers above.
                self._mark_too_large(self._current)

    def _feed(self, data: bytes) -> None:
        while True:
            try:
                self._parser.feed_data(data)
                return
            except httptools.HttpParserUpgrade as upgrade:
                # A request asking to switch protocols has been taken as a plain one (nothing is
                # offered); what follows it is parsed as HTTP again, as aiohttp did. After CONNECT
                # nothing can follow.
                if self._parser.get_method() == b"CONNECT":
                    self._stop_parsing = True
                    return
                offset = upgrade.args[0] if upgrade.args else len(data)
                data = data[offset:]
                if not data:
                    return
            except httptools.HttpParserError as exc:
                cause = exc.__context__
                if isinstance(cause, _StopParsing):
                    return
                if isinstance(cause, _Refused):
                    self._refuse(str(cause), cause.status)
                else:
                    self._refuse(f"malformed request: {exc}")
                return

    # --- httptools callbacks ---------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_message = self._in_head = True
        # The time of the read this request began in (a timer is armed only if it needs another read).
        self._message_started = self._idle_since
        self._message_bytes = 0
        # The read this request began in may hold earlier requests too: only what follows it counts.
        self._progressed = True
        self._url.clear()
        self._fields = []
        self._seen.clear()
        self._release_body()

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > URL_BYTES_MAX:
            raise _Refused(f"request target longer than {URL_BYTES_MAX} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        # Also called for the trailer fields of a chunked body, which are kept to the same limits.
        self._progressed = True
        if len(name) > FIELD_BYTES_MAX or len(value) > FIELD_BYTES_MAX:
            raise _Refused(f"header name or value longer than {FIELD_BYTES_MAX} bytes")
        value = value.rstrip(b" \t")
        if len(self._fields) >= HEADERS_COUNT_MAX:
            raise _Refused(f"more than {HEADERS_COUNT_MAX} header fields")
        if b"\x00" in value:
            raise _Refused("NUL in a header value")
        lowered = name.lower()
        if lowered in _SINGLETONS:
            if lowered in self._seen:
                raise _Refused(f"repeated {name.decode('latin-1')} header")
            self._seen.add(lowered)
        self._fields.append((name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape")))

    def on_headers_complete(self) -> None:
        self._in_head = False
        parser = self._parser
        method = parser.get_method().decode("ascii")
        version = _VERSIONS.get(parser.get_http_version())
        if version is None:
            raise _Refused(f"HTTP/{parser.get_http_version()} is not served", 505)
        headers = CIMultiDictProxy(CIMultiDict(self._fields))
        if version == (1, 1) and "Host" not in headers:
            raise _Refused("missing Host header")
        raw_path, query_string = split_target(method, self._url.decode("utf-8", "surrogateescape"))
        keep_alive = parser.should_keep_alive() and method != "CONNECT"
        request = Request(method, raw_path, query_string, version, headers, keep_alive, self)
        if version == (1, 1):
            expect = headers.get("Expect")
            if expect:
                request.expect = expect.lower() if expect.isascii() else expect
        self._current = request
        declared = headers.get("Content-Length")
        if declared is not None and int(declared) > self.server.body_bytes_max:
            self._mark_too_large(request)
            raise _StopParsing
        self._body_left = 0 if declared is None else int(declared)
        if request.expect == "100-continue" and self._task is None and not self._queue:
            self._send_continue(request)

    def on_body(self, body: bytes) -> None:
        request = self._current
        if request is None:
            return
        self._progressed = True
        server = self.server
        # The body so far and the server's budget grow together; dropping the body gives both back.
        self._body_size += len(body)
        server.body_bytes_held += len(body)
        self._body_left = max(0, self._body_left - len(body))
        if self._body_size > server.body_bytes_max:
            self._mark_too_large(request)
            raise _StopParsing
        if server.body_bytes_held > server.body_buffer_bytes_max:
            server.bodies_refused += 1
            raise _Refused(
                f"the server holds too many request bodies at once (over {server.body_buffer_bytes_max} bytes);"
                " try again shortly",
                503,
            )
        self._body_parts.append(body)

    def on_message_complete(self) -> None:
        self._in_message = False
        self._cancel_receive_timer()
        request = self._current
        self._current = None
        if request is None:
            return
        parts = self._body_parts
        if parts:
            request._body = parts[0] if len(parts) == 1 else b"".join(parts)
            self._body_parts = []
        request._charged, self._body_size, self._body_left = self._body_size, 0, 0
        self._queue.append(request)

    # --- Serving -----------------------------------------------------------------------------------------

    def _message_bytes_max(self) -> int:
        return HEAD_BYTES_MAX + 2 * self.server.body_bytes_max + 65536

    def _mark_too_large(self, request: Request) -> None:
        """The body is over the limit: the request goes to the handler without it, nothing more is
        parsed, and the connection closes once it is answered."""
        request.too_large = True
        request.keep_alive = False
        self._current = None
        self._release_body()
        self._in_message = self._in_head = False
        self._stop_parsing = True
        self._queue.append(request)

    def _refuse(self, reason: str, status: int = 400) -> None:
        """A request that cannot be served: answered in its turn, after which the connection closes."""
        self._cancel_receive_timer()
        self._stop_parsing = True
        self._current = None
        self._release_body()
        self._in_message = self._in_head = False
        self._queue.append((status, reason))

    def _release_body(self) -> None:
        """Drop the body being received, giving its bytes back to the server's budget."""
        self.server.body_bytes_held -= self._body_size
        self._body_parts = []
        self._body_size = self._body_left = 0

    def _pause_reading(self) -> None:
        if not self._reading_paused and self._transport is not None and not self._lingering:
            self._reading_paused = True
            self._transport.pause_reading()

    def _next(self) -> None:
        """Start on the next waiting request when nothing is being handled and the client keeps up
        with the answers; with nothing waiting, read again and start the idle clock."""
        if self._task is not None or self._closing:
            return
        if self._unparsed and len(self._queue) < PIPELINED_MAX and not self._writing_paused:
            unparsed, self._unparsed = self._unparsed, b""
            self._take(unparsed)
        if self._queue:
            if self._writing_paused:
                self._pause_reading()
                return
            item = self._queue.popleft()
            if isinstance(item, tuple):
                self._write_refusal(*item)
                self._close()
                return
            self._task = self._loop.create_task(self._serve(item))
            return
        if self._stop_parsing:
            self._close()
            return
        if self._unparsed:
            return
        current = self._current
        if current is not None and current.expect == "100-continue" and not current.continue_sent:
            self._send_continue(current)
        if self._reading_paused and self._transport is not None:
            self._reading_paused = False
            self._transport.resume_reading()
        self._idle_since = self._loop.time()
        if self._idle_handle is None:
            self._arm_idle_timer()

    async def _serve(self, request: Request) -> None:
        keep = False
        try:
            keep = await self._answer(request)
        except ConnectionError:
            pass
        except Exception:
            log.exception("error answering %s %r", request.method, request.raw_path)
        finally:
            self.server.release(request)
            self._task = None
            self._streaming = False
            if self._transport is None:
                self.server.connections.discard(self)
        if keep and not self.server.stopping:
            self._next()
        else:
            self._close(linger=request.too_large)

    async def _answer(self, request: Request) -> bool:
        """Answers one request; True when the connection may go on to the next."""
        response: Response | StreamResponse
        if request.expect and request.expect != "100-continue":
            # The value as sent, with bytes that are not UTF-8 shown as U+FFFD (they cannot be echoed).
            expect = request.headers.get("Expect", "").encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            response = Response(status=417, text=f"Unknown Expect: {expect}")
        else:
            if request.expect and not request.continue_sent and not request.too_large:
                self._send_continue(request)
            try:
                response = await self.server.handler(request)
            except Exception as exc:
                if isinstance(exc, ConnectionError) and (self._transport is None or self._transport.is_closing()):
                    raise  # the client has gone: nobody to answer
                log.exception("unhandled error serving %s %r", request.method, request.raw_path)
                if self._streaming:
                    return False
                request.keep_alive = False
                response = Response(status=500, text="500 Internal Server Error\n\nServer got itself in trouble")
        if isinstance(response, StreamResponse):
            if not response.prepared:
                await response.prepare(request)
            await response.write_eof()
            return request.keep_alive and self._transport is not None
        try:
            self._write_response(request, response)
        except (ValueError, UnicodeEncodeError):
            log.exception("cannot send the answer to %s %r", request.method, request.raw_path)
            return False
        return request.keep_alive

    def _head(self, request: Request, status: int, headers: CIMultiDict[str]) -> bytes:
        """Status line and header fields. Connection is said as aiohttp said it: `keep-alive` to an
        HTTP/1.0 client whose connection stays, `close` to an HTTP/1.1 client whose does not. The
        connection does not stay when the server stops, or when this is the last answer it will give
        (nothing more is parsed, and no other answer waits)."""
        last = self._stop_parsing and not self._queue
        keep_alive = request.keep_alive and not last and not self.server.stopping
        request.keep_alive = keep_alive
        version = request.version
        lines = [f"HTTP/{version[0]}.{version[1]} {status} {_REASONS.get(status, 'Unknown')}\r\n"]
        lines.extend(f"{name}: {value}\r\n" for name, value in headers.items())
        if "Date" not in headers:
            lines.append(f"Date: {http_date(int(time.time()))}\r\n")
        if "Server" not in headers:
            lines.append(f"Server: {SERVER_SOFTWARE}\r\n")
        if "Connection" not in headers:
            if keep_alive:
                if version == (1, 0):
                    lines.append("Connection: keep-alive\r\n")
            elif version == (1, 1):
                lines.append("Connection: close\r\n")
        lines.append("\r\n")
        head = "".join(lines)
        # Exactly one line break per line: a CR or LF inside a name or value would split the head.
        if head.count("\n") != len(lines) or head.count("\r") != len(lines):
            raise ValueError("a response header contains a line break")
        return head.encode("utf-8")

    def _write_response(self, request: Request, response: Response) -> None:
        """Content-Length, Content-Type and the body follow aiohttp's rules: an answer to HEAD keeps the
        length of the body it leaves out (an empty one gets none), 204 and 304 get none, and an empty
        body no default type."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        status = response.status
        method = request.method
        headers = response.headers
        body = response.body
        no_body = method == "HEAD" or status in _EMPTY_BODY_STATUS
        if "Content-Length" in headers:
            if status in _EMPTY_BODY_STATUS:
                del headers["Content-Length"]
        elif status not in _EMPTY_BODY_STATUS and (body or (status != 304 and method != "HEAD")):
            headers["Content-Length"] = str(len(body))
        if body and not no_body and "Content-Type" not in headers:
            headers["Content-Type"] = "application/octet-stream"
        head = self._head(request, status, headers)
        if no_body or not body:
            transport.write(head)
        elif len(body) <= _COALESCE_BYTES:
            transport.write(head + body)
        else:
            transport.writelines((head, body))

    def _write_refusal(self, status: int, reason: str) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        body = (reason + "\n").encode("utf-8", "replace")
        head = (
            f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"Date: {http_date(int(time.time()))}\r\n"
            f"Server: {SERVER_SOFTWARE}\r\n"
            "Connection: close\r\n\r\n"
        )
        transport.write(head.encode("ascii") + body)

    def _send_continue(self, request: Request) -> None:
        request.continue_sent = True
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    # --- Streamed answers --------------------------------------------------------------------------------

    def start_stream(self, request: Request, response: StreamResponse) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client closed the connection")
        headers = response.headers
        headers.popall("Content-Length", None)
        # An answer to HEAD, and a 1xx, 204 or 304, has no body: nothing of the stream is sent.
        self._stream_bodiless = request.method == "HEAD" or response.status in _EMPTY_BODY_STATUS
        if request.version == (1, 0):
            # HTTP/1.0 has no chunked coding: the body ends where the connection does.
            request.keep_alive = False
        elif not self._stream_bodiless:
            headers["Transfer-Encoding"] = "chunked"
        transport.write(self._head(request, response.status, headers))
        self._streaming = True

    async def write_stream(self, request: Request, data: bytes) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client closed the connection")
        if self._stream_bodiless:
            return
        if request.version == (1, 0):
            transport.write(data)
        else:
            transport.writelines((b"%x\r\n" % len(data), data, b"\r\n"))
        if self._writing_paused:
            await self._drain()

    def end_stream(self, request: Request) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if request.version != (1, 0) and not self._stream_bodiless:
            transport.write(b"0\r\n\r\n")

    async def _drain(self) -> None:
        waiter = self._drain_waiter
        if waiter is None:
            waiter = self._drain_waiter = self._loop.create_future()
        try:
            async with asyncio.timeout(DRAIN_TIMEOUT_S):
                await waiter
        except TimeoutError:
            if self._transport is not None:
                self._transport.abort()
            raise ConnectionResetError(f"the client read nothing for {DRAIN_TIMEOUT_S:g} s") from None

    def _wake_drain(self, exc: Exception | None) -> None:
        waiter = self._drain_waiter
        self._drain_waiter = None
        if waiter is None or waiter.done():
            return
        if exc is None:
            waiter.set_result(None)
        else:
            waiter.set_exception(exc)
            # Seen by the writer waiting on it; marked retrieved so that it is never reported as lost.
            waiter.exception()

    # --- Idle timeout and closing ------------------------------------------------------------------------

    def _arm_idle_timer(self) -> None:
        self._idle_handle = self._loop.call_at(self._idle_since + self.server.idle_timeout_s, self._on_idle_timer)

    def _on_idle_timer(self) -> None:
        self._idle_handle = None
        if self._transport is None or self._task is not None or self._queue:
            # Busy: the timer is armed again when the connection next goes idle.
            return
        deadline = self._idle_since + self.server.idle_timeout_s
        if self._loop.time() < deadline:
            self._idle_handle = self._loop.call_at(deadline, self._on_idle_timer)
            return
        self._close()

    def _cancel_receive_timer(self) -> None:
        if self._receive_handle is not None:
            self._receive_handle.cancel()
            self._receive_handle = None

    def _on_receive_timeout(self) -> None:
        self._receive_handle = None
        if self._transport is None or not self._in_message or self._stop_parsing:
            return
        if self._reading_paused or self._task is not None or self._queue:
            # The server is the one not reading (busy with earlier requests): the client gets its time.
            self._receive_handle = self._loop.call_later(RECEIVE_TIMEOUT_S, self._on_receive_timeout)
            return
        # A client trickling a request (slowloris) would otherwise hold the connection, and a body
        # buffer, for as long as each byte comes before the idle timeout.
        self._refuse(f"request not received within {RECEIVE_TIMEOUT_S:g} s", 408)
        self._next()

    def _on_write_stall(self) -> None:
        self._stall_handle = None
        if self._transport is not None and self._writing_paused:
            log.info("dropping an HTTP client that read nothing for %.0f s", DRAIN_TIMEOUT_S)
            self._transport.abort()

    def _close(self, *, linger: bool = False) -> None:
        self._closing = self._stop_parsing = True
        if self._idle_handle is not None:
            self._idle_handle.cancel()
            self._idle_handle = None
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if linger and not self._lingering and not self.server.stopping:
            # Read and drop what the client still sends, so that its answer is not lost to the reset
            # that closing a socket with unread data causes; close when it stops, or after LINGER_S.
            self._lingering = True
            if transport.can_write_eof():
                with contextlib.suppress(OSError, RuntimeError):
                    transport.write_eof()
            if self._reading_paused:
                self._reading_paused = False
                transport.resume_reading()
            self._linger_handle = self._loop.call_later(LINGER_S, transport.close)
            return
        transport.close()

    def begin_stop(self) -> None:
        """The server is stopping: an idle connection closes now, a busy one after its current answer."""
        self._stop_parsing = True
        if self._task is None:
            self._close()

    def abort(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._transport is not None:
            self._transport.abort()


class HttpServer:
    """Serves `handler` on one listening socket, from `start()` until `stop()`."""

    def __init__(
        self,
        handler: Handler,
        *,
        body_bytes_max: int,
        idle_timeout_s: float,
        connections_max: int,
        body_buffer_bytes_max: int = 256 * 1024 * 1024,
    ) -> None:
        if body_bytes_max < 0:
            raise ValueError("body_bytes_max must not be negative")
        if not idle_timeout_s > 0:
            raise ValueError("idle_timeout_s must be positive")
        if connections_max < 1:
            raise ValueError("connections_max must be positive")
        self.handler = handler
        self.body_bytes_max = body_bytes_max
        # The bytes of request bodies held over all connections (being received, or waiting with their
        # request until it has been answered), and the bound past which a body is refused with 503.
        self.body_buffer_bytes_max = body_buffer_bytes_max
        self.body_bytes_held = 0
        self.bodies_refused = 0
        self.idle_timeout_s = idle_timeout_s
        # Open connections, each holding a socket, a parser and its buffers: at most this many.
        self.connections_max = connections_max
        self.connections_refused = 0
        # Connections turned away that linger with their 503 (not in `connections`).
        self.refused: set[_Connection] = set()
        self.loop = asyncio.get_running_loop()
        self.connections: set[_Connection] = set()
        self.stopping = False
        self._server: asyncio.Server | None = None

    async def start(
        self, host: str, port: int, *, ssl_context: ssl.SSLContext | None = None, backlog: int = 128
    ) -> None:
        if self._server is not None:
            raise RuntimeError("the server is already started")
        self._server = await self.loop.create_server(
            lambda: _Connection(self), host, port, ssl=ssl_context, reuse_address=True, backlog=backlog
        )

    def release(self, request: Request) -> None:
        """A request has been answered (or dropped): its body no longer counts against the budget."""
        self.body_bytes_held -= request._charged
        request._charged = 0

    @property
    def refusals_lingering(self) -> int:
        return len(self.refused)

    @property
    def port(self) -> int:
        """The port listened on (useful after starting on port 0)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the server is not listening")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Stop listening and close idle connections; answers in progress get `grace_s` to finish,
        then their handlers are cancelled and their connections dropped."""
        self.stopping = True
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.begin_stop()
        for conn in list(self.refused):
            conn.abort()
        deadline = self.loop.time() + grace_s
        while self.connections and self.loop.time() < deadline:
            await asyncio.sleep(0.02)
        for conn in list(self.connections):
            conn.abort()
        self.connections.clear()
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
