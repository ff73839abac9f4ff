"""The PB API's listener: connections, frames in and out, and every bound on them; what a request does
is the handlers' (server.py).

Theory of operation
-------------------
A connection carries frames (framing.py): the client sends one request and reads its answer (one
frame, or a stream of frames for a listing, the last with `done`), then the next. Requests are read
and answered strictly in turn; while one is answered nothing more is read, so a client cannot make
the node buffer more than the asyncio reader's limit ahead, and every answer waits for the socket to
drain (DRAIN_TIMEOUT_S at most) before the next frame is written, which paces a streamed listing to
the client's reading. A frame beyond `pb_frame_bytes_max` or of length zero cannot be skipped: it is
answered with RpbErrorResp and the connection closed. The request bytes held over all connections
(frames being received, or received and waiting their turn) are bounded by `pb_buffer_bytes_max`:
the read that would pass it is refused the same way. At most `pb_connections_max` connections are
open; one more gets RpbErrorResp and is closed. A connection that sends nothing for
`pb_idle_timeout_ms` between requests is closed. RpbStartTls (answered by the handlers) upgrades the
connection before its next read; bytes that came after it in clear end the connection instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
from typing import Any, Final, Protocol

from dynastore.api.pb import framing, schema
from dynastore.api.pb.framing import Frame, FrameError
from dynastore.net import tls
from dynastore.settings import Settings

# How long an answer waits for a client that reads nothing before the connection is dropped.
DRAIN_TIMEOUT_S: Final = 30.0
# What one read from the socket may take in (the asyncio reader's buffer is bounded by it too).
READ_BYTES: Final = 64 * 1024
# How long connections still answering when the server stops get before they are cancelled.
STOP_GRACE_S: Final = 2.0
# Riak's errcode for every error it sends (riak_pb: RIAKC_ERR_GENERAL).
ERRCODE_GENERAL: Final = 1


class PbError(Exception):
    """A request refused: answered with RpbErrorResp carrying this message, and nothing done."""


def utf8(raw: bytes, what: str) -> str:
    """A request's bytes as text, or PbError naming `what`."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise PbError(f"{what} must be UTF-8 text") from None


class Session:
    """One connection's state: whether it runs inside TLS, who authenticated, and how it answers."""

    def __init__(self, writer: asyncio.StreamWriter, client_host: str) -> None:
        self.writer = writer
        self.client_host = client_host
        self.tls = False
        self.user: str | None = None
        self.client_id = os.urandom(4)
        # Set by RpbStartTls once its answer is sent: the connection upgrades before the next read.
        self.start_tls = False
        self.busy = False
        # Request bytes this connection holds (counted against PbServer.buffer_bytes_max).
        self.held = 0

    async def send(self, name: str, message: Any = None) -> None:
        body = b"" if message is None else message.SerializeToString()
        self.writer.write(framing.encode(schema.CODES[name], body))
        try:
            async with asyncio.timeout(DRAIN_TIMEOUT_S):
                await self.writer.drain()
        except TimeoutError:
            self.writer.transport.abort()
            raise ConnectionResetError(f"the client read nothing for {DRAIN_TIMEOUT_S:g} s") from None

    async def error(self, message: str) -> None:
        error = schema.message("RpbErrorResp")(errmsg=message.encode(), errcode=ERRCODE_GENERAL)
        await self.send("RpbErrorResp", error)


class Handlers(Protocol):
    """What the listener hands frames to (server.py's PbApi)."""

    @property
    def settings(self) -> Settings: ...

    async def handle(self, session: Session, frame: Frame) -> None: ...

    def awaiting_login(self, session: Session) -> bool:
        """Whether security is on and `session` has not authenticated yet."""
        ...


class PbServer:
    """Serves the PB API on one listening socket, from `start()` until `stop()` (see the module doc)."""

    def __init__(
        self,
        api: Handlers,
        *,
        frame_bytes_max: int,
        connections_max: int,
        idle_timeout_s: float,
        buffer_bytes_max: int = 128 * 1024 * 1024,
        auth_timeout_s: float = 30.0,
    ) -> None:
        self.api = api
        self.frame_bytes_max = frame_bytes_max
        # Request bytes held over all connections (frames being received, or received and waiting for
        # their turn); a read that takes them past the bound is refused and its connection closed.
        self.buffer_bytes_max = buffer_bytes_max
        self.buffered_bytes = 0
        self.connections_max = connections_max
        self.idle_timeout_s = idle_timeout_s
        # A connection still to authenticate (security on) gets this much, not idle_timeout_s.
        self.auth_timeout_s = auth_timeout_s
        # Each open connection's task and session (busy while it answers a request).
        self.connections: dict[asyncio.Task[None], Session] = {}
        self.connections_refused = 0
        self.frames_refused = 0
        self.stopping = False
        self._server: asyncio.Server | None = None
        self._tls: ssl.SSLContext | None = tls.server_context(api.settings, require_client_cert=False)

    async def start(self, host: str, port: int, *, backlog: int = 128) -> None:
        if self._server is not None:
            raise RuntimeError("the server is already started")
        self._server = await asyncio.start_server(
            self._serve, host, port, reuse_address=True, backlog=backlog, limit=READ_BYTES
        )

    def stats(self) -> dict[str, int]:
        return {
            "pb_connections": len(self.connections),
            "pb_connections_refused_total": self.connections_refused,
            "pb_frames_refused_total": self.frames_refused,
            "pb_buffered_bytes": self.buffered_bytes,
        }

    @property
    def port(self) -> int:
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the server is not listening")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        session = Session(writer, str(peer[0]) if isinstance(peer, tuple) and peer else "")
        task = asyncio.current_task()
        assert task is not None
        try:
            if len(self.connections) >= self.connections_max:
                self.connections_refused += 1
                await session.error(f"more than {self.connections_max} PB connections (pb_connections_max)")
                return
            self.connections[task] = session
            await self._converse(reader, session)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, OSError):
            pass
        finally:
            self.connections.pop(task, None)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _converse(self, reader: asyncio.StreamReader, session: Session) -> None:
        decoder = framing.Decoder(self.frame_bytes_max)
        try:
            await self._frames(reader, session, decoder)
        finally:
            self.buffered_bytes -= session.held
            session.held = 0

    def _hold(self, session: Session, held: int) -> bool:
        """Counts what a connection holds now; False when that takes the node past its bound."""
        self.buffered_bytes += held - session.held
        session.held = held
        return self.buffered_bytes <= self.buffer_bytes_max

    async def _frames(self, reader: asyncio.StreamReader, session: Session, decoder: framing.Decoder) -> None:
        while True:
            try:
                wait_s = self.idle_timeout_s
                if self.api.awaiting_login(session):
                    wait_s = min(wait_s, self.auth_timeout_s)
                async with asyncio.timeout(wait_s):
                    data = await reader.read(READ_BYTES)
            except TimeoutError:
                return
            if not data:
                return
            try:
                frames = decoder.feed(data)
            except FrameError as exc:
                self.frames_refused += 1
                await session.error(str(exc))
                return
            waiting = sum(len(frame.body) for frame in frames)
            if not self._hold(session, decoder.buffered_bytes + waiting):
                self.frames_refused += 1
                await session.error(
                    f"the node holds more than {self.buffer_bytes_max} bytes of requests (pb_buffer_bytes_max)"
                )
                return
            for i, frame in enumerate(frames):
                waiting -= len(frame.body)
                session.busy = True
                try:
                    await self.api.handle(session, frame)
                finally:
                    session.busy = False
                self._hold(session, decoder.buffered_bytes + waiting)
                if self.stopping:
                    return
                if session.start_tls:
                    # Nothing more is read in clear: what the client sent after StartTls is either in
                    # this read, in the decoder, or in the stream's own buffer (a read returns at most
                    # READ_BYTES), and any of it could only be plaintext smuggled past the handshake.
                    # (uvloop's transports are not asyncio.ReadTransport subclasses, but have it.)
                    pause = getattr(session.writer.transport, "pause_reading", None)
                    if pause is not None:
                        pause()
                    await session.writer.drain()
                    if i + 1 < len(frames) or decoder.buffered_bytes or _unread_bytes(reader):
                        return
                    await self._upgrade(session)
                    break

    async def _upgrade(self, session: Session) -> None:
        assert self._tls is not None
        session.start_tls = False
        await session.writer.start_tls(self._tls)
        session.tls = True

    async def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Stop listening; idle connections close now, those answering get `grace_s` to finish."""
        self.stopping = True
        if self._server is not None:
            self._server.close()
        for task, session in list(self.connections.items()):
            if not session.busy:
                task.cancel()
        if self.connections:
            _, pending = await asyncio.wait(set(self.connections), timeout=grace_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)


def _unread_bytes(reader: asyncio.StreamReader) -> int:
    """Bytes the stream has received and not yet handed out (asyncio keeps them in `_buffer`; a
    stream without one is taken to hold something, so that StartTls is refused rather than unsafe)."""
    buffer = getattr(reader, "_buffer", None)
    return 1 if buffer is None else len(buffer)
