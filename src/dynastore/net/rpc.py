"""Inter-node transport over asyncio TCP: one pooled outgoing connection per peer, a listener for
incoming ones, the handshake on both, bounded queues everywhere.

Outgoing sockets are bound to the node's own host address, so a node on 10.0.0.2 connects *from*
10.0.0.2 (firewall rules and namespaces see the real source). A peer whose connection fails is
reported once per failure through `on_unreachable`; frames queued for it are dropped (the core treats
them as lost and its requests fail over or time out). A peer that sends garbage is logged and
disconnected; the node keeps serving everyone else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections import deque
from collections.abc import Callable

from dynastore.core.messages import Message, PeerError
from dynastore.net.framing import (
    HEADER_BYTES,
    FrameDecoder,
    FrameError,
    Hello,
    decode_hello,
    decode_message,
    encode_hello,
    encode_message,
)

log = logging.getLogger("dynastore.net")

READ_CHUNK_BYTES = 256 * 1024
WRITE_BUFFER_HIGH_BYTES = 4 * 1024 * 1024


class PeerLink:
    """The outgoing connection to one peer, with its queue of frames."""

    def __init__(self, transport: Transport, peer: str) -> None:
        self.transport = transport
        self.peer = peer
        self.queue: deque[bytes] = deque()
        self.writer: asyncio.StreamWriter | None = None
        self.task: asyncio.Task[None] | None = None
        self.wakeup = asyncio.Event()
        self.retry_after = 0.0
        self.address: tuple[str, int] | None = None

    def send(self, frame: bytes) -> None:
        if time.monotonic() < self.retry_after:
            self.transport.report_unreachable(self.peer)
            return
        if len(self.queue) >= self.transport.queue_frames_max:
            self.transport.dropped_frames += 1
            return
        self.queue.append(frame)
        self.wakeup.set()
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        try:
            await self._connect()
            await self._pump()
        except (TimeoutError, OSError, ConnectionError, FrameError) as exc:
            log.debug("link to %s failed: %s", self.peer, exc)
            self._fail()
        finally:
            if self.writer is not None:
                self.writer.close()
                self.writer = None

    async def _connect(self) -> None:
        address = self.address or self.transport.address_of(self.peer) or self.transport.learned.get(self.peer)
        if address is None:
            raise ConnectionError(f"no address known for {self.peer}")
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                address[0], address[1], local_addr=(self.transport.host, 0), ssl=self.transport.ssl_client
            ),
            self.transport.connect_timeout_s,
        )
        self.writer = writer
        writer.write(encode_hello(self.transport.hello, self.transport.secret))
        # The accepting side answers with its own handshake before anything else.
        header = await asyncio.wait_for(reader.readexactly(HEADER_BYTES), self.transport.connect_timeout_s)
        length = int.from_bytes(header, "big")
        if length > 4096:
            raise FrameError("oversized handshake")
        payload = await asyncio.wait_for(reader.readexactly(length), self.transport.connect_timeout_s)
        hello = decode_hello(payload, self.transport.secret, self.transport.cluster)
        if not self.peer.startswith("@") and hello.node != self.peer:
            raise FrameError(f"expected {self.peer}, reached {hello.node}")
        # Watch the read side so that a closed connection is noticed even when idle.
        asyncio.get_running_loop().create_task(self._watch(reader))

    async def _watch(self, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(Exception):
            await reader.read()
        if self.writer is not None:
            self.writer.close()
        self.wakeup.set()

    async def _pump(self) -> None:
        writer = self.writer
        assert writer is not None
        while True:
            while self.queue:
                if writer.is_closing():
                    raise ConnectionError("connection closed")
                # Everything queued goes out in one write: one system call for many frames.
                frames = list(self.queue)
                self.queue.clear()
                writer.write(b"".join(frames))
                if writer.transport.get_write_buffer_size() > WRITE_BUFFER_HIGH_BYTES:
                    await writer.drain()
            await writer.drain()
            if writer.is_closing():
                raise ConnectionError("connection closed")
            self.wakeup.clear()
            if not self.queue:
                await self.wakeup.wait()

    def _fail(self) -> None:
        self.queue.clear()
        self.retry_after = time.monotonic() + self.transport.retry_s
        self.transport.report_unreachable(self.peer)

    def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
        if self.writer is not None:
            self.writer.close()


class Transport:
    """All of a node's inter-node connections."""

    def __init__(
        self,
        *,
        name: str,
        host: str,
        port: int,
        cluster: str,
        secret: bytes,
        frame_bytes_max: int,
        queue_frames_max: int,
        connect_timeout_ms: int,
        retry_ms: int,
        address_of: Callable[[str], tuple[str, int] | None],
        on_message: Callable[[str, Message], None],
        on_unreachable: Callable[[str], None],
        ssl_server: ssl.SSLContext | None = None,
        ssl_client: ssl.SSLContext | None = None,
    ) -> None:
        self.ssl_server = ssl_server
        self.ssl_client = ssl_client
        self.name = name
        self.host = host
        self.port = port
        self.cluster = cluster
        self.secret = secret
        self.frame_bytes_max = frame_bytes_max
        self.queue_frames_max = queue_frames_max
        self.connect_timeout_s = connect_timeout_ms / 1000
        self.retry_s = retry_ms / 1000
        self.address_of = address_of
        self.on_message = on_message
        self.on_unreachable = on_unreachable
        self.links: dict[str, PeerLink] = {}
        self.server: asyncio.Server | None = None
        self.inbound: set[asyncio.StreamWriter] = set()
        self.dropped_frames = 0
        self.peer_errors = 0
        self.hello = Hello(cluster, name, host, port)
        # Addresses peers announced in their handshakes: enough to answer a node that has just joined
        # and is not in our cluster state yet.
        self.learned: dict[str, tuple[str, int]] = {}

    async def start(self) -> None:
        self.server = await asyncio.start_server(
            self._accept, self.host, self.port, reuse_address=True, ssl=self.ssl_server
        )

    async def drain(self, timeout_s: float) -> None:
        """Wait (bounded) until every queued frame has been written, e.g. a last gossip before exit."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while any(link.queue for link in self.links.values() if link.task and not link.task.done()):
            if asyncio.get_running_loop().time() > deadline:
                return
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        for link in self.links.values():
            link.close()
        if self.server is not None:
            self.server.close()
        for writer in list(self.inbound):
            writer.close()
        if self.server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)

    def send(self, peer: str, msg: Message, address: tuple[str, int] | None = None) -> None:
        if address is not None:
            # A node known only by address (a seed): a link named by that address.
            key = f"@{address[0]}:{address[1]}"
            link = self.links.get(key)
            if link is None:
                link = self.links[key] = PeerLink(self, key)
                link.address = address
        else:
            link = self.links.get(peer)
            if link is None:
                link = self.links[peer] = PeerLink(self, peer)
        link.send(encode_message(msg))

    def report_unreachable(self, peer: str) -> None:
        self.on_unreachable(peer)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.inbound.add(writer)
        peer = "?"
        try:
            decoder = FrameDecoder(self.frame_bytes_max)
            hello_frames: list[bytes] = []
            while not hello_frames:
                chunk = await asyncio.wait_for(reader.read(4096), self.connect_timeout_s)
                if not chunk:
                    return
                hello_frames = decoder.feed(chunk)
            hello = decode_hello(hello_frames[0], self.secret, self.cluster)
            peer = hello.node
            if len(self.learned) < 10_000 or peer in self.learned:
                self.learned[peer] = (hello.host, hello.port)
            link = self.links.get(peer)
            if link is not None:
                # The peer just reached us, so it is alive: stop refusing to send to it.
                link.retry_after = 0.0
            writer.write(encode_hello(self.hello, self.secret))
            pending = hello_frames[1:]
            while True:
                for frame in pending:
                    self.on_message(peer, decode_message(frame))
                chunk = await reader.read(READ_CHUNK_BYTES)
                if not chunk:
                    return
                pending = decoder.feed(chunk)
        except PeerError as exc:
            self.peer_errors += 1
            log.warning("dropping peer %s: %s", peer, exc)
        except (TimeoutError, OSError, ConnectionError):
            pass
        finally:
            self.inbound.discard(writer)
            writer.close()
