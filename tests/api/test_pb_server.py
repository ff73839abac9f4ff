"""The PB listener in process, over loopback sockets, with a stand-in for the handlers: a frame split
over many writes is handled once, the bytes held over all connections are bounded (the connection
that would pass the bound is refused and closed, the others go on), the idle timeout closes a silent
connection, and stopping closes idle connections at once. Every scenario is bounded in time."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from dynastore.api.pb import framing, schema
from dynastore.api.pb.listener import PbServer, Session
from dynastore.settings import Settings

BOUND_S = 10.0


class Echo:
    """Answers every frame with RpbPingResp, and remembers the codes and body sizes it saw."""

    settings = Settings()

    def __init__(self) -> None:
        self.seen: list[tuple[int, int]] = []
        # Whether the stand-in's connections are still to authenticate (security on, no RpbAuthReq).
        self.login_awaited = False

    def awaiting_login(self, session: Session) -> bool:
        return self.login_awaited

    async def handle(self, session: Session, frame: framing.Frame) -> None:
        self.seen.append((frame.code, len(frame.body)))
        await session.send("RpbPingResp")


def run(scenario: Callable[[PbServer, Echo], Awaitable[None]], **limits: Any) -> None:
    async def main() -> None:
        echo = Echo()
        options = {"frame_bytes_max": 1_000_000, "connections_max": 8, "idle_timeout_s": 30.0, **limits}
        server = PbServer(echo, **options)  # type: ignore[arg-type]
        await server.start("127.0.0.1", 0)
        try:
            async with asyncio.timeout(BOUND_S):
                await scenario(server, echo)
        finally:
            await server.stop(grace_s=0.5)

    asyncio.run(main())


async def _until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.005)


async def _answer(reader: asyncio.StreamReader) -> tuple[str, bytes]:
    length, code = struct.unpack(">IB", await reader.readexactly(5))
    return schema.NAMES[code], await reader.readexactly(length - 1)


def test_a_frame_written_a_few_bytes_at_a_time_is_handled_once_whole() -> None:
    async def scenario(server: PbServer, echo: Echo) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        wire = framing.encode(9, b"x" * 5000)
        for i in range(0, len(wire), 7):
            writer.write(wire[i : i + 7])
            await writer.drain()
        assert (await _answer(reader))[0] == "RpbPingResp"
        assert echo.seen == [(9, 5000)]
        writer.close()

    run(scenario)


def test_bytes_held_over_all_connections_are_bounded() -> None:
    """Two connections each send most of a large frame; the one whose read passes the node's bound gets
    RpbErrorResp naming it and is closed; the other finishes its frame and is answered."""

    async def scenario(server: PbServer, echo: Echo) -> None:
        r1, w1 = await asyncio.open_connection("127.0.0.1", server.port)
        r2, w2 = await asyncio.open_connection("127.0.0.1", server.port)
        first = framing.encode(11, b"a" * 700_000)
        w1.write(first[:-1])
        await w1.drain()
        await _until(lambda: server.buffered_bytes >= 700_000)
        w2.write(framing.encode(11, b"b" * 600_000)[:-1])
        await w2.drain()
        name, body = await _answer(r2)
        assert name == "RpbErrorResp"
        assert b"pb_buffer_bytes_max" in schema.message("RpbErrorResp").FromString(body).errmsg
        assert await r2.read() == b""
        w1.write(first[-1:])
        assert (await _answer(r1))[0] == "RpbPingResp"
        assert echo.seen == [(11, 700_000)]
        await _until(lambda: server.buffered_bytes == 0)
        w1.close()
        w2.close()

    run(scenario, buffer_bytes_max=1_200_000)


def test_a_silent_connection_is_closed_after_the_idle_timeout() -> None:
    async def scenario(server: PbServer, echo: Echo) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        assert await reader.read() == b""
        writer.close()

    run(scenario, idle_timeout_s=0.2)


@pytest.mark.parametrize("frames", [0, 1])
def test_stopping_closes_idle_connections_at_once(frames: int) -> None:
    async def main() -> None:
        server = PbServer(Echo(), frame_bytes_max=1000, connections_max=8, idle_timeout_s=30.0)  # type: ignore[arg-type]
        await server.start("127.0.0.1", 0)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        for _ in range(frames):
            writer.write(framing.encode(1))
            assert (await _answer(reader))[0] == "RpbPingResp"
        await _until(lambda: len(server.connections) == 1)
        async with asyncio.timeout(1.0):
            await server.stop(grace_s=5.0)
            assert await reader.read() == b""
        writer.close()

    asyncio.run(main())


def test_with_security_on_a_connection_that_never_authenticates_is_closed_after_the_auth_timeout() -> None:
    """Unauthenticated clients cannot hold connection slots for the hour of the idle timeout: one that
    sends requests but never authenticates is closed after pb_auth_timeout_ms without one."""

    async def scenario(server: PbServer, echo: Echo) -> None:
        echo.login_awaited = True
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(framing.encode(schema.CODES["RpbPingReq"], b""))
        assert (await _answer(reader))[0] == "RpbPingResp"
        started = asyncio.get_running_loop().time()
        assert await reader.read(1) == b""
        assert asyncio.get_running_loop().time() - started < 5
        writer.close()

    run(scenario, idle_timeout_s=30.0, auth_timeout_s=0.3)
