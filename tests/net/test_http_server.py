"""The node's HTTP/1.1 server, spoken to over raw sockets on loopback: pipelining, chunked bodies in and
out, 100-continue, the body limit, malformed input, HTTP/1.0, HEAD, the idle timeout, flow control and
stopping. Every scenario runs on both asyncio's loop and uvloop (the node's), and is bounded in time."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import uvloop

from dynastore.api.server import (
    FIELD_BYTES_MAX,
    FIELD_OPEN_BYTES_MAX,
    HEAD_BYTES_MAX,
    HEADERS_COUNT_MAX,
    PIPELINED_MAX,
    REFUSALS_LINGERING_MAX,
    URL_BYTES_MAX,
    HttpServer,
    Request,
    RequestEntityTooLarge,
    Response,
    StreamResponse,
    parse_query,
    split_target,
)

BODY_MAX = 64 * 1024
SCENARIO_TIMEOUT_S = 15.0


class App:
    """Answers by path: /echo gives back the body and what was parsed, /slow answers after a pause,
    /hang never answers, /stream streams three pieces, /fail raises, /big answers 8 MiB, /refused raises
    a ConnectionError of its own, /stream204 streams a 204, anything else names itself."""

    def __init__(self) -> None:
        self.order: list[str] = []
        self.cancelled = 0
        self.release = asyncio.Event()

    async def __call__(self, request: Request) -> Response | StreamResponse:
        self.order.append(request.raw_path)
        if request.raw_path == "/echo":
            try:
                body = await request.read()
            except RequestEntityTooLarge:
                return Response(status=413, text="too large")
            seen = {
                "method": request.method,
                "query": dict(request.query),
                "version": list(request.version),
                "headers": [[name, value] for name, value in request.headers.items()],
            }
            return Response(body=body, headers={"X-Seen": json.dumps(seen, ensure_ascii=True)})
        if request.raw_path == "/slow":
            await asyncio.sleep(0.2)
            return Response(text="slow")
        if request.raw_path == "/hang":
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
            return Response(text="released")
        if request.raw_path == "/stream":
            stream = StreamResponse(headers={"Content-Type": "application/json"})
            await stream.prepare(request)
            for piece in (b'{"a": 1}', b'{"b": 2}', b'{"c": 3}'):
                await stream.write(piece)
            await stream.write_eof()
            return stream
        if request.raw_path == "/fail":
            raise RuntimeError("handler bug")
        if request.raw_path == "/big":
            return Response(body=b"x" * (8 * 1024 * 1024))
        if request.raw_path == "/refused":
            raise ConnectionRefusedError("a peer is down")
        if request.raw_path == "/stream204":
            empty = StreamResponse(status=204)
            await empty.prepare(request)
            await empty.write(b"ignored")
            await empty.write_eof()
            return empty
        return Response(text=f"{request.method} {request.raw_path}")


Scenario = Callable[[HttpServer, App], Awaitable[None]]


@pytest.fixture(params=["asyncio", "uvloop"])
def serve(request: pytest.FixtureRequest) -> Iterator[Callable[..., None]]:
    def run(
        scenario: Scenario,
        *,
        idle_timeout_s: float = 30.0,
        connections_max: int = 2048,
        body_buffer_bytes_max: int = 256 * 1024 * 1024,
    ) -> None:
        async def main() -> None:
            app = App()
            server = HttpServer(
                app,
                body_bytes_max=BODY_MAX,
                idle_timeout_s=idle_timeout_s,
                connections_max=connections_max,
                body_buffer_bytes_max=body_buffer_bytes_max,
            )
            await server.start("127.0.0.1", 0)
            try:
                await asyncio.wait_for(scenario(server, app), SCENARIO_TIMEOUT_S)
            finally:
                await server.stop(grace_s=0.5)

        if request.param == "uvloop":
            uvloop.run(main())
        else:
            asyncio.run(main())

    yield run


class Answer:
    def __init__(self, version: str, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.version = version
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name: str) -> str | None:
        values = [v for n, v in self.headers if n.lower() == name.lower()]
        assert len(values) <= 1, (name, values)
        return values[0] if values else None


async def read_answer(reader: asyncio.StreamReader, *, head_request: bool = False) -> Answer:
    """One answer off the wire: by Content-Length, by chunks, or up to EOF."""
    status_line = (await reader.readuntil(b"\r\n")).decode("latin-1").rstrip("\r\n")
    version, status, _ = status_line.split(" ", 2)
    headers: list[tuple[str, str]] = []
    while True:
        line = (await reader.readuntil(b"\r\n")).decode("utf-8").rstrip("\r\n")
        if not line:
            break
        name, _, value = line.partition(":")
        headers.append((name, value.strip()))
    answer = Answer(version, int(status), headers, b"")
    if head_request or answer.status in (204, 304) or 100 <= answer.status < 200:
        return answer
    length = answer.header("Content-Length")
    if length is not None:
        answer.body = await reader.readexactly(int(length))
    elif answer.header("Transfer-Encoding") == "chunked":
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            piece = await reader.readexactly(size + 2)
            if size == 0:
                break
            body += piece[:-2]
        answer.body = body
    else:
        answer.body = await reader.read()
    return answer


async def connect(server: HttpServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", server.port)


async def closed_by_server(reader: asyncio.StreamReader, timeout_s: float = 3.0) -> bool:
    """Whether the server closes the connection (EOF or reset) within `timeout_s`, reading past
    anything it still sends."""
    try:
        async with asyncio.timeout(timeout_s):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return True


def get(path: str, extra: str = "", version: str = "1.1") -> bytes:
    host = "Host: test\r\n" if version == "1.1" else ""
    return f"GET {path} HTTP/{version}\r\n{host}{extra}\r\n".encode()


def seen(answer: Answer) -> dict[str, Any]:
    raw = answer.header("X-Seen")
    assert raw is not None
    parsed: dict[str, Any] = json.loads(raw)
    return parsed


# --- Keep-alive, pipelining, versions ------------------------------------------------------------------


def test_pipelined_requests_are_answered_one_at_a_time_in_order(serve: Callable[..., None]) -> None:
    """Three requests in one write, the first slow: three answers in request order on one connection,
    handled one after another; the connection stays open."""

    async def scenario(server: HttpServer, app: App) -> None:
        reader, writer = await connect(server)
        writer.write(get("/slow") + get("/first") + get("/second"))
        answers = [await read_answer(reader) for _ in range(3)]
        assert [a.body for a in answers] == [b"slow", b"GET /first", b"GET /second"]
        assert app.order == ["/slow", "/first", "/second"]
        assert all(a.status == 200 and a.header("Connection") is None for a in answers)
        writer.write(get("/again"))
        assert (await read_answer(reader)).body == b"GET /again"
        writer.close()

    serve(scenario)


def test_connection_close_and_http10_without_keep_alive_close_after_the_answer(serve: Callable[..., None]) -> None:
    """`Connection: close` (HTTP/1.1) and a plain HTTP/1.0 request are answered, then the server closes;
    an HTTP/1.0 request asking for keep-alive is told `Connection: keep-alive` and the connection stays."""

    async def scenario(server: HttpServer, app: App) -> None:
        reader, writer = await connect(server)
        writer.write(get("/a", "Connection: close\r\n"))
        answer = await read_answer(reader)
        assert (answer.version, answer.status, answer.header("Connection")) == ("HTTP/1.1", 200, "close")
        assert await closed_by_server(reader)
        writer.close()

        reader, writer = await connect(server)
        writer.write(get("/b", version="1.0"))
        answer = await read_answer(reader)
        assert (answer.version, answer.body, answer.header("Connection")) == ("HTTP/1.0", b"GET /b", None)
        assert await closed_by_server(reader)
        writer.close()

        reader, writer = await connect(server)
        writer.write(get("/c", "Connection: keep-alive\r\n", version="1.0"))
        answer = await read_answer(reader)
        assert answer.header("Connection") == "keep-alive"
        writer.write(get("/d", "Connection: keep-alive\r\n", version="1.0"))
        assert (await read_answer(reader)).body == b"GET /d"
        writer.close()

    serve(scenario)


def test_every_answer_has_date_server_and_content_length(serve: Callable[..., None]) -> None:
    async def scenario(server: HttpServer, app: App) -> None:
        reader, writer = await connect(server)
        writer.write(get("/x"))
        answer = await read_answer(reader)
        date = answer.header("Date")
        assert date is not None and date.endswith(" GMT")
        assert (answer.header("Server") or "").startswith("Python/")
        assert answer.header("Content-Length") == "6"
        assert answer.header("Content-Type") == "text/plain; charset=utf-8"
        writer.close()

    serve(scenario)


# --- Request bodies ------------------------------------------------------------------------------------


def test_a_chunked_request_body_is_reassembled_and_trailers_are_dropped(serve: Callable[..., None]) -> None:
    async def scenario(server: HttpServer, app: App) -> None:
        reader, writer = await connect(server)
        writer.write(b"PUT /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n1\r\n \r\n")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"5\r\nworld\r\n0\r\nX-Trailer: t\r\n\r\n")
        answer = await read_answer(reader)
        assert (answer.status, answer.body) == (200, b"hello world")
        assert seen(answer)["method"] == "PUT"
        writer.write(get("/after"))
        assert (await read_answer(reader)).body == b"GET /after"
        writer.close()

    serve(scenario)


def test_an_expectation_that_is_not_utf8_is_refused_with_417_and_the_connection_goes_on(
    serve: Callable[..., None],
) -> None:
    """The 417 names what was expected with the bytes that are not UTF-8 replaced; the request after it
    is answered."""

    async def scenario(server: HttpServer, app: App) -> None:
        reader, writer = await connect(server)
        writer.write(b"GET /a HTTP/1.1\r\nHost: t\r\nExpect: \xff\r\n\r\n" + get("/b"))
        answer = await read_answer(reader)
        assert (answer.status, answer.body) == (417, "Unknown Expect: \ufffd".encode())
        assert (await read_answer(reader)).status == 200
        writer.close()

    serve(scenario)


def test_a_client_that_reads_nothing_of_its_answers_is_dropped(
    serve: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three pipelined 8 MiB answers to a client that never reads: once the write buffer has stayed
    over its mark for the drain limit, the connection is aborted and forgotten, buffer and all."""
    import dynastore.api.server as server_module

    monkeypatch.setattr(server_module, "DRAIN_TIMEOUT_S", 0.5)

    async def scenario(server: HttpServer, app: App) -> None:
        _reader, writer = await connect(server)
        writer.write(get("/big") * 3)
        await writer.drain()
        for _ in range(100):
            await asyncio.sleep(0.05)
            if app.order and not server.connections:
                break
        assert app.order and not server.connections
        writer.close()

    serve(scenario)


def test_a_request_trickled_in_a_byte_at_a_time_is_refused_with_408(
    serve: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every byte arrives well within the idle timeout, but the head never completes: once the request
    has taken longer than the receive limit, it gets 408 and the connection closes. A slow body too."""
    import dynastore.api.server as server_module

    monkeypatch.setattr(server_module, "RECEIVE_TIMEOUT_S", 0.5)

    async def scenario(server: HttpServer, app: App) -> None:
        for start in (b"GET /a HTTP/1.1\r\nX-A: ", b"PUT /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n"):
            reader, writer = await connect(server)
            writer.write(start)

            async def trickle(writer: asyncio.StreamWriter = writer) -> None:
                with contextlib.suppress(ConnectionError):
                    for _ in range(40):
                        await asyncio.sleep(0.1)
                        writer.write(b"a")

            task = asyncio.create_task(trickle())
            answer = await asyncio.wait_for(read_answer(reader), 3.0)
            assert answer.status == 408
            assert await closed_by_server(reader)
            task.cancel()
            writer.close()
        assert app.order == []

    serve(scenario)


def test_a_handler_raising_a_connection_error_of_its_own_gets_a_500(serve: Callable[..., None]) -> None:
    """A ConnectionError out of the handler (a peer is down) is the handler's failure, not the client's
    departure: the client is answered 500."""

    async def scenario(server: HttpServer, app: App) -> None:
        reader, writer = await connect(server)
        writer.write(get("/refused"))
        assert (await asyncio.wait_for(read_answer(reader), 3.0)).status == 500
        writer.close()

    serve(scenario)


def test_a_streamed_204_has_no_body_and_the_next_answer_is_framed_right(serve: Callable[..., None]) -> None:
    async def scenario(server: HttpServer, app: App) -> None:
        reader, writer = await connect(server)
        writer.write(get("/stream204") + get("/b"))
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 204 ") and b"chunked" not in head.lower()
        answer = await asyncio.wait_for(read_answer(reader), 3.0)
        assert (answer.status, answer.body) == (200, b"GET /b")
        writer.close()

    serve(scenario)


def test_expect_100_continue_is_answered_before_the_body_is_sent(serve: Callable[..., None]) -> None:
    """The client sends only the head and waits: it gets `100 Continue`, then sends the body and gets
    the answer. Any other expectation is refused with 417."""

    async def scenario(server: HttpServer, app: App) -> None:
        reader, writer = await connect(server)
        writer.write(b"PUT /echo HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
        interim = await reader.readuntil(b"\r\n\r\n")
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"body")
        answer = await read_answer(reader)
        assert (answer.status, answer.body) == (200, b"body")

        writer.write(b"PUT /echo HTTP/1.1\r\nHost: t\r\nExpect: something-else\r\nContent-Length: 4\r\n\r\nbody")
        answer = await read_answer(reader)
        assert (answer.status, answer.body) == (417, b"Unknown Expect: something-else")
        assert app.order == ["/echo"]
        writer.write(get("/still-open"))
        assert (await read_answer(reader)).status == 200
        writer.close()

    serve(scenario)


def test_a_body_over_the_limit_gets_413_and_the_connection_is_closed(serve: Callable[..., None]) -> None:
    """Declared too large (with or without 100-continue, whose body is then never asked for) or found
    too large while chunked: the handler is told (read() raises), the answer says close, and the server
    closes the connection after it, even while the client is still sending."""

    async def scenario(server: HttpServer, app: App) -> None:
        size = BODY_MAX + 1
        reader, writer = await connect(server)
        writer.write(f"PUT /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {size}\r\n\r\n".encode() + b"x" * size)
        answer = await read_answer(reader)
        assert (answer.status, answer.body, answer.header("Connection")) == (413, b"too large", "close")
        assert await closed_by_server(reader)
        writer.close()

        reader, writer = await connect(server)
        writer.write(
            f"PUT /echo HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: {size}\r\n\r\n".encode()
        )
        answer = await read_answer(reader)
        assert answer.status == 413
        assert await closed_by_server(reader)
        writer.close()

        reader, writer = await connect(server)
        writer.write(b"PUT /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(BODY_MAX // 4096 + 2):
            writer.write(b"1000\r\n" + b"y" * 4096 + b"\r\n")
        writer.write(b"0\r\n\r\n")
        answer = await read_answer(reader)
        assert (answer.status, answer.header("Connection")) == (413, "close")
        assert await closed_by_server(reader)
        writer.close()

        # A body at the limit is served.
        reader, writer = await connect(server)
        writer.write(f"PUT /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {BODY_MAX}\r\n\r\n".encode() + b"z" * BODY_MAX)
        answer = await read_answer(reader)
        assert (answer.status, len(answer.body)) == (200, BODY_MAX)
        writer.close()

    serve(scenario)


# --- Bad input -----------------------------------------------------------------------------------------

MALFORMED = [
    b"FOO / HTTP/1.1\r\nHost: t\r\n\r\n",
    b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",
    b"GET / HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: t\r\nHost: u\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: t\r\nX-A: a\x00b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost : t\r\n\r\n",
    b"GET /\xc3\xbc HTTP/1.1\r\nHost: t\r\n\r\n",
    b"PUT / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nabc",
    b"PUT / HTTP/1.1\r\nHost: t\r\nContent-Length: x\r\n\r\n",
    b"PUT / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"GET " + b"/" * (URL_BYTES_MAX + 1) + b" HTTP/1.1\r\nHost: t\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: t\r\nX-A: " + b"a" * 8191 + b"\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: t\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(HEADERS_COUNT_MAX)) + b"\r\n",
]


@pytest.mark.parametrize("raw", MALFORMED, ids=range(len(MALFORMED)))
def test_a_malformed_request_gets_400_and_the_connection_is_closed(serve: Callable[..., None], raw: bytes) -> None:
    async def scenario(server: HttpServer, app: App) -> None:
        reader, writer = await connect(server)
        writer.write(raw)
        answer = await read_answer(reader)
        assert (answer.status, answer.header("Connection")) == (400, "close"), answer.body
        assert answer.body.strip()
        assert await closed_by_server(reader)
        assert app.order == []
        writer.close()

    serve(scenario)


def test_requests_before_a_malformed_one_are_answered_first(serve: Callable[..., None]) -> None:
    async def scenario(server: HttpServer, app: App) -> None:
        reader, writer = await connect(server)
        writer.write(get("/one") + get("/two") + b"}garbage\r\n\r\n")
        first, second, refusal = [await read_answer(reader) for _ in range(3)]
        assert (first.body, second.body, refusal.status) == (b"GET /one", b"GET /two", 400)
        assert second.header("Connection") is None and refusal.header("Connection") == "close"
        assert await closed_by_server(reader)
        writer.close()

    serve(scenario)


def test_other_versions_get_505(serve: Callable[..., None]) -> None:
    async def scenario(server: HttpServer, app: App) -> None:
        reader, writer = await connect(server)
        writer.write(b"GET / HTTP/2.0\r\nHost: t\r\n\r\n")
        assert (await read_answer(reader)).status == 505
        assert await closed_by_server(reader)
        writer.close()

    serve(scenario)


def test_header_bytes_that_are_not_utf8_arrive_as_lone_surrogates_and_the_limits_are_inclusive(
    serve: Callable[..., None],
) -> None:
    """What the API's validation relies on: undecodable bytes become surrogates (never silently another
    character), UTF-8 is decoded, names keep their case, trailing blanks are dropped; a 128-field head
    and a 8190-byte value are accepted."""

    async def scenario(server: HttpServer, app: App) -> None:
        reader, writer = await connect(server)
        writer.write(b"GET /echo HTTP/1.1\r\nHost: t\r\nX-Bad: \xff\xfe\r\nX-Good: \xc3\xbc  \r\n\r\n")
        headers = dict((name, value) for name, value in seen(await read_answer(reader))["headers"])
        assert headers["X-Bad"] == "\udcff\udcfe"
        assert headers["X-Good"] == "ü"

        many = b"".join(b"X-%d: 1\r\n" % i for i in range(HEADERS_COUNT_MAX - 2))
        writer.write(b"GET /echo HTTP/1.1\r\nHost: t\r\n" + many + b"X-Long: " + b"v" * 8190 + b"\r\n\r\n")
        answer = await read_answer(reader)
        assert answer.status == 200 and len(seen(answer)["headers"]) == HEADERS_COUNT_MAX
        writer.close()

    serve(scenario)


def test_a_header_field_that_never_ends_is_refused_without_buffering_the_head_limit(
    serve: Callable[..., None],
) -> None:
    """A value streamed on and on is refused once the head has grown FIELD_OPEN_BYTES_MAX (plus a read)
    with no field ending, not after HEAD_BYTES_MAX; a head at every limit at once (target and fields of
    8190 bytes), sent whole or trickled in 1 KiB pieces, is still served."""

    async def scenario(server: HttpServer, app: App) -> None:
        target = "/" + "t" * (URL_BYTES_MAX - 1)
        fields = b"".join(
            b"N%d" % i + b"n" * (FIELD_BYTES_MAX - 2) + b": " + b"v" * FIELD_BYTES_MAX + b"\r\n" for i in range(4)
        )
        head = f"GET {target} HTTP/1.1\r\nHost: t\r\n".encode() + fields + b"\r\n"
        for piece in (len(head), 1024):
            reader, writer = await connect(server)
            for at in range(0, len(head), piece):
                writer.write(head[at : at + piece])
                await writer.drain()
                await asyncio.sleep(0)
            answer = await read_answer(reader)
            assert answer.status == 200 and answer.body == f"GET {target}".encode()
            writer.close()

        # In the head, and in the trailers of a chunked body (which the parser holds the same way).
        chunked = b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n"
        for opening in (b"GET / HTTP/1.1\r\nHost: t\r\nX-Long: ", chunked + b"X-Trailer: "):
            reader, writer = await connect(server)
            writer.write(opening)
            answer_read = asyncio.ensure_future(read_answer(reader))
            sent = 0
            while not answer_read.done() and sent < HEAD_BYTES_MAX:
                writer.write(b"v" * 4096)
                sent += 4096
                with contextlib.suppress(ConnectionError):
                    await writer.drain()
                await asyncio.sleep(0.001)
            answer = await asyncio.wait_for(answer_read, 5)
            assert answer.status == 400 and b"header name or value longer than 8190 bytes" in answer.body
            assert sent < FIELD_OPEN_BYTES_MAX + 512 * 1024, sent
            writer.close()

    serve(scenario)


def test_requests_before_a_head_in_the_same_read_do_not_count_against_its_fields(
    serve: Callable[..., None],
) -> None:
    """A read that carries a large body (or many pipelined requests) and then the start of the next
    request's head: the next request is served once its head is complete."""

    async def scenario(server: HttpServer, app: App) -> None:
        body = b"b" * 60_000
        many = get("/p") * 1500
        for first in (b"PUT /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 60000\r\n\r\n" + body, many):
            reader, writer = await connect(server)
            writer.write(first + b"GET /last HTTP/1.1\r\nHo")
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(b"st: t\r\n\r\n")
            answers = [await read_answer(reader) for _ in range(1 if first is not many else 1500)]
            assert all(a.status == 200 for a in answers)
            last = await read_answer(reader)
            assert (last.status, last.body) == (200, b"GET /last")
            writer.close()

    serve(scenario)


def test_the_target_is_split_into_raw_path_and_first_query_values(serve: Callable[..., None]) -> None:
    async def scenario(server: HttpServer, app: App) -> None:
        reader, writer = await connect(server)
        writer.write(get("/echo?a=1&a=2&b=x+y&c=%C2%B2&d&e=%FF#frag"))
        parsed = seen(await read_answer(reader))
        assert parsed["query"] == {"a": "1", "b": "x y", "c": "²", "d": "", "e": "\ufffd"}
        writer.write(b"GET http://example.com:80/echo?q=1 HTTP/1.1\r\nHost: t\r\n\r\n")
        assert seen(await read_answer(reader))["query"] == {"q": "1"}
        assert app.order == ["/echo", "/echo"]
        writer.close()

    serve(scenario)


def test_parse_query_and_split_target() -> None:
    assert parse_query("") == {}
    assert parse_query("r=1&r=2&&w=") == {"r": "1", "w": ""}
    assert parse_query("v=a%2Bb+c") == {"v": "a+b c"}
    assert split_target("GET", "/a/%2F/b?x=1#f") == ("/a/%2F/b", "x=1")
    assert split_target("GET", "/a#b?c") == ("/a#b", "c")
    assert split_target("GET", "/a#b") == ("/a", "")
    assert split_target("GET", "https://h/p/q?z") == ("/p/q", "z")
    assert split_target("GET", "http://h?z") == ("/", "z")
    assert split_target("OPTIONS", "*") == ("*", "")


# --- Answers -------------------------------------------------------------------------------------------


def test_head_gets_the_length_of_the_body_it_leaves_out(serve: Callable[..., None]) -> None:
    """HEAD keeps Content-Length and sends no body, so the next answer on the connection is intact."""

    async def scenario(server: HttpServer, app: App) -> None:
        reader, writer = await connect(server)
        writer.write(b"HEAD /thing HTTP/1.1\r\nHost: t\r\n\r\n" + get("/next"))
        head = await read_answer(reader, head_request=True)
        assert (head.status, head.header("Content-Length"), head.body) == (200, str(len(b"HEAD /thing")), b"")
        assert (await read_answer(reader)).body == b"GET /next"
        writer.close()

    serve(scenario)


def test_a_streamed_answer_is_chunked_and_to_http10_ends_with_the_connection(serve: Callable[..., None]) -> None:
    async def scenario(server: HttpServer, app: App) -> None:
        reader, writer = await connect(server)
        writer.write(get("/stream"))
        answer = await read_answer(reader)
        assert answer.header("Transfer-Encoding") == "chunked" and answer.header("Content-Length") is None
        assert answer.body == b'{"a": 1}{"b": 2}{"c": 3}'
        writer.write(get("/after"))
        assert (await read_answer(reader)).body == b"GET /after"
        writer.close()

        reader, writer = await connect(server)
        writer.write(get("/stream", "Connection: keep-alive\r\n", version="1.0"))
        answer = await read_answer(reader)
        assert answer.header("Transfer-Encoding") is None and answer.header("Connection") is None
        assert answer.body == b'{"a": 1}{"b": 2}{"c": 3}'
        writer.close()

    serve(scenario)


def test_a_failing_handler_gets_500_and_the_connection_closes(serve: Callable[..., None]) -> None:
    async def scenario(server: HttpServer, app: App) -> None:
        reader, writer = await connect(server)
        writer.write(get("/fail"))
        answer = await read_answer(reader)
        assert (answer.status, answer.header("Connection")) == (500, "close")
        assert await closed_by_server(reader)
        writer.close()

    serve(scenario)


def test_response_refuses_a_line_break_in_a_header(serve: Callable[..., None]) -> None:
    """An answer whose header would split the head is not sent: the connection is dropped instead."""

    async def scenario(server: HttpServer, app: App) -> None:
        async def splitting(request: Request) -> Response:
            return Response(text="x", headers={"X-Evil": "a\r\nSet-Cookie: b"})

        server.handler = splitting
        reader, writer = await connect(server)
        writer.write(get("/"))
        assert await reader.read() == b""
        writer.close()

    serve(scenario)


# --- Timeouts, flow control, stopping -------------------------------------------------------------------


def test_a_connection_over_the_limit_gets_503_and_is_closed_and_its_place_comes_back(
    serve: Callable[..., None],
) -> None:
    """With room for two connections, a third is answered 503 (even with its request already sent) and
    closed, while the two go on being served; when one of them closes, a new connection is served."""

    async def scenario(server: HttpServer, app: App) -> None:
        held = [await connect(server) for _ in range(2)]
        for reader, writer in held:
            writer.write(get("/a"))
            assert (await read_answer(reader)).status == 200
        for request in (b"", get("/b")):
            reader, writer = await connect(server)
            writer.write(request)
            answer = await read_answer(reader)
            assert answer.status == 503 and b"too many connections (the limit is 2)" in answer.body
            assert await closed_by_server(reader)
            writer.close()
        assert server.connections_refused == 2 and len(server.connections) == 2
        assert app.order == ["/a", "/a"]
        reader, writer = held[1]
        writer.write(get("/c"))
        assert (await read_answer(reader)).body == b"GET /c"

        held[0][1].close()
        async with asyncio.timeout(3):
            while len(server.connections) > 1:
                await asyncio.sleep(0.01)
        reader, writer = await connect(server)
        writer.write(get("/d"))
        assert (await read_answer(reader)).body == b"GET /d"
        writer.close()
        held[1][1].close()

    serve(scenario, connections_max=2)


def test_refused_connections_linger_only_up_to_a_bound_then_are_reset(serve: Callable[..., None]) -> None:
    """Connections turned away wait (with their 503) for the client to close, but only
    REFUSALS_LINGERING_MAX of them at a time: one more is reset without an answer."""

    async def scenario(server: HttpServer, app: App) -> None:
        held = await connect(server)
        refused = []
        for _ in range(REFUSALS_LINGERING_MAX):
            reader, writer = await connect(server)
            assert (await read_answer(reader)).status == 503
            refused.append(writer)
        assert server.refusals_lingering == REFUSALS_LINGERING_MAX
        reader, writer = await connect(server)
        try:
            assert await asyncio.wait_for(reader.read(100), 3) == b""
        except ConnectionResetError:
            pass
        writer.close()
        assert server.connections_refused == REFUSALS_LINGERING_MAX + 1
        for w in refused:
            w.close()
        async with asyncio.timeout(3):
            while server.refusals_lingering:
                await asyncio.sleep(0.01)
        held[1].write(get("/e"))
        assert (await read_answer(held[0])).body == b"GET /e"
        held[1].close()

    serve(scenario, connections_max=1)


def test_stopping_closes_refused_connections_that_still_linger(serve: Callable[..., None]) -> None:
    async def scenario(server: HttpServer, app: App) -> None:
        held = await connect(server)
        reader, writer = await connect(server)
        assert (await read_answer(reader)).status == 503 and server.refusals_lingering == 1
        await server.stop(grace_s=0.5)
        assert await closed_by_server(reader, 1.0)  # not after the 5 s linger
        assert server.refusals_lingering == 0
        writer.close()
        held[1].close()

    serve(scenario, connections_max=1)


def test_an_idle_connection_is_closed_after_the_idle_timeout(serve: Callable[..., None]) -> None:
    """Idle after an answer, or idle from the start (or with a request half sent): closed once the idle
    timeout passes, not before; a slow handler is not idle."""

    async def scenario(server: HttpServer, app: App) -> None:
        reader, writer = await connect(server)
        writer.write(get("/slow"))
        assert (await read_answer(reader)).body == b"slow"
        assert not await closed_by_server(reader, 0.1)
        assert await closed_by_server(reader, 2.0)
        writer.close()

        reader, writer = await connect(server)
        writer.write(b"GET / HTTP/1.1\r\n")
        assert await closed_by_server(reader, 2.0)
        writer.close()

    serve(scenario, idle_timeout_s=0.3)


def test_reading_pauses_while_a_request_is_handled_and_pipelined_requests_wait(serve: Callable[..., None]) -> None:
    """While a handler runs, data the client keeps sending is read at most once more; then reading
    stops until the answer is out, and resumes for the waiting requests."""

    async def scenario(server: HttpServer, app: App) -> None:
        reader, writer = await connect(server)
        writer.write(get("/hang"))
        await writer.drain()
        while not app.order:
            await asyncio.sleep(0.01)
        for i in range(50):
            writer.write(get(f"/p{i}"))
            await writer.drain()
        await asyncio.sleep(0.1)
        (conn,) = server.connections
        assert conn._reading_paused
        assert app.order == ["/hang"]
        app.release.set()
        answers = [await read_answer(reader) for _ in range(51)]
        assert [a.body for a in answers] == [b"released"] + [f"GET /p{i}".encode() for i in range(50)]
        assert not conn._reading_paused
        writer.close()

    serve(scenario)


def test_stopping_closes_idle_connections_and_cancels_handlers_that_do_not_finish(serve: Callable[..., None]) -> None:
    async def scenario(server: HttpServer, app: App) -> None:
        idle_reader, idle_writer = await connect(server)
        busy_reader, busy_writer = await connect(server)
        busy_writer.write(get("/hang"))
        while not app.order:
            await asyncio.sleep(0.01)
        port = server.port
        loop = asyncio.get_running_loop()
        started = loop.time()
        await server.stop(grace_s=0.3)
        assert loop.time() - started < 2.0
        assert app.cancelled == 1
        assert await closed_by_server(idle_reader, 1.0)
        assert await closed_by_server(busy_reader, 1.0)
        assert not server.connections
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)
        idle_writer.close()
        busy_writer.close()

    serve(scenario)


def test_stopping_lets_an_answer_in_progress_finish_within_the_grace(serve: Callable[..., None]) -> None:
    async def scenario(server: HttpServer, app: App) -> None:
        reader, writer = await connect(server)
        writer.write(get("/slow"))
        while not app.order:
            await asyncio.sleep(0.01)
        await server.stop(grace_s=2.0)
        answer = await read_answer(reader)
        assert (answer.body, answer.header("Connection")) == (b"slow", "close")
        assert await closed_by_server(reader, 1.0)
        writer.close()

    serve(scenario)


def test_a_stream_waits_for_a_slow_reader_instead_of_buffering(serve: Callable[..., None]) -> None:
    """A streamed answer larger than the socket buffers, to a client that reads late: the writer waits
    (the transport's buffer stays bounded) and the whole stream arrives once the client reads."""

    async def scenario(server: HttpServer, app: App) -> None:
        piece = b"k" * 65536
        pieces = 200

        async def big_stream(request: Request) -> StreamResponse:
            stream = StreamResponse()
            await stream.prepare(request)
            for _ in range(pieces):
                await stream.write(piece)
            await stream.write_eof()
            return stream

        server.handler = big_stream
        reader, writer = await connect(server)
        writer.write(get("/"))
        await asyncio.sleep(0.3)
        (conn,) = server.connections
        transport = conn._transport
        assert transport is not None and transport.get_write_buffer_size() < 4 * 1024 * 1024
        answer = await read_answer(reader)
        assert len(answer.body) == len(piece) * pieces
        writer.close()

    serve(scenario)


def test_a_read_full_of_pipelined_requests_is_parsed_only_a_bounded_way_ahead(serve: Callable[..., None]) -> None:
    """10,000 pipelined requests (about 300 KiB) sent at once behind one that hangs: the server parses at
    most PIPELINED_MAX and one input piece's worth ahead, keeps the rest of a read unparsed, and still
    answers all of them, in order, once the first is released; then the connection serves on."""

    async def scenario(server: HttpServer, app: App) -> None:
        reader, writer = await connect(server)
        writer.write(get("/hang") + b"".join(get(f"/p{i}") for i in range(10_000)))
        await writer.drain()
        while not app.order:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
        (conn,) = server.connections
        assert PIPELINED_MAX <= len(conn._queue) <= PIPELINED_MAX + 64, len(conn._queue)
        assert len(conn._unparsed) <= 256 * 1024
        app.release.set()
        answers = [await read_answer(reader) for _ in range(10_001)]
        assert answers[0].body == b"released"
        assert [a.body for a in answers[1:]] == [f"GET /p{i}".encode() for i in range(10_000)]
        writer.write(get("/after"))
        assert (await read_answer(reader)).body == b"GET /after"
        assert not conn._unparsed and not conn._queue
        writer.close()

    serve(scenario)


def test_requests_left_unparsed_are_still_answered_when_the_client_half_closes(serve: Callable[..., None]) -> None:
    """A client sends many pipelined requests and shuts its side down at once: every one is answered
    before the server closes."""

    async def scenario(server: HttpServer, app: App) -> None:
        reader, writer = await connect(server)
        writer.write(get("/slow") + b"".join(get(f"/q{i}") for i in range(500)))
        writer.write_eof()
        answers = [await read_answer(reader) for _ in range(501)]
        assert [a.body for a in answers[1:]] == [f"GET /q{i}".encode() for i in range(500)]
        assert await closed_by_server(reader)
        writer.close()

    serve(scenario)


def test_request_bodies_held_at_once_are_bounded_over_all_connections(serve: Callable[..., None]) -> None:
    """With 160 KiB for bodies over all connections, eight clients each send 40 KiB of a 60 KiB body and
    stop: the bodies held never pass the bound, the clients past it get 503 and are closed, and once the
    others go away the budget is whole again and a complete body goes through."""

    async def scenario(server: HttpServer, app: App) -> None:
        clients = []
        for _ in range(8):
            reader, writer = await connect(server)
            writer.write(b"PUT /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 61440\r\n\r\n" + b"x" * 40960)
            await writer.drain()
            clients.append((reader, writer))
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)
        assert server.body_bytes_held <= 160 * 1024 + 40960
        refused = []
        for reader, _ in clients:
            try:
                async with asyncio.timeout(0.5):
                    refused.append((await read_answer(reader)).status)
            except (TimeoutError, asyncio.IncompleteReadError):
                pass
        assert refused and set(refused) == {503}, refused
        assert server.bodies_refused == len(refused) and 3 <= len(refused) <= 5
        for _, writer in clients:
            writer.close()
        for _ in range(100):
            if server.body_bytes_held == 0:
                break
            await asyncio.sleep(0.02)
        assert server.body_bytes_held == 0
        reader, writer = await connect(server)
        writer.write(b"PUT /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 61440\r\n\r\n" + b"y" * 61440)
        answer = await read_answer(reader)
        assert answer.status == 200 and answer.body == b"y" * 61440
        assert server.body_bytes_held == 0
        writer.close()

    serve(scenario, body_buffer_bytes_max=160 * 1024)
