"""Inter-node transport over asyncio TCP: one pooled outgoing connection per peer, a listener for
incoming ones, the handshake on both, bounded buffers everywhere.

Built on `asyncio.Protocol` callbacks rather than streams: a frame to send is appended to its link's
buffer and every buffer is written once per turn of the event loop (one system call for all the
frames of a turn); received bytes are cut into frames and handed to `on_message` straight from
`data_received`. No coroutine is resumed per message.

Outgoing sockets are bound to the node's own host address, so a node on 10.0.0.2 connects *from*
10.0.0.2 (firewall rules and namespaces see the real source). A peer whose connection fails is
reported once per failure through `on_unreachable`; frames buffered for it are dropped (the core
treats them as lost and its requests fail over or time out), and it is not dialled again for a short
while unless it reaches us first. A peer that sends garbage is logged and disconnected; the node keeps
serving everyone else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Callable
from typing import cast

from dynastore.core.messages import Message, PeerError
from dynastore.net.framing import (
    FrameDecoder,
    FrameError,
    Hello,
    decode_hello,
    decode_message,
    encode_hello,
    encode_message,
)

log = logging.getLogger("dynastore.net")

HELLO_BYTES_MAX = 4096
# Above this many bytes waiting in a socket's send buffer, frames are held back in the link's own
# (bounded) buffer until the kernel drains it.
WRITE_BUFFER_HIGH_BYTES = 4 * 1024 * 1024


class _Outgoing(asyncio.Protocol):
    """The client side of one link: handshake, then frames out; the peer never speaks after its hello."""

    def __init__(self, link: PeerLink) -> None:
        self.link = link
        self.transport: asyncio.Transport | None = None
        self.decoder = FrameDecoder(HELLO_BYTES_MAX)
        self.ready = False
        self.paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport instances but offer the same methods.
        self.transport = tcp = cast(asyncio.Transport, transport)
        tcp.set_write_buffer_limits(high=WRITE_BUFFER_HIGH_BYTES)
        node = self.link.node
        tcp.write(encode_hello(node.hello, node.secret))

    def data_received(self, data: bytes) -> None:
        if self.ready:
            return
        try:
            frames = self.decoder.feed(data)
            if not frames:
                return
            hello = decode_hello(frames[0], self.link.node.secret, self.link.node.cluster)
            if not self.link.peer.startswith("@") and hello.node != self.link.peer:
                raise FrameError(f"expected {self.link.peer}, reached {hello.node}")
        except PeerError as exc:
            log.warning("link to %s refused: %s", self.link.peer or "?", exc)
            self.link.failed()
            return
        self.ready = True
        self.link.connected(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.link.lost(self)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self.link.schedule_flush()


class PeerLink:
    """The outgoing connection to one peer, with its buffer of frames not written yet."""

    def __init__(self, node: Transport, peer: str, address: tuple[str, int] | None = None) -> None:
        self.node = node
        self.peer = peer
        self.address = address
        self.buffer: list[bytes] = []
        self.protocol: _Outgoing | None = None
        self.connecting: asyncio.Task[None] | None = None
        self.flush_scheduled = False
        self.retry_after = 0.0

    def send(self, frame: bytes) -> None:
        if time.monotonic() < self.retry_after:
            self.node.report_unreachable(self.peer)
            return
        if len(self.buffer) >= self.node.queue_frames_max:
            self.node.dropped_frames += 1
            return
        self.buffer.append(frame)
        if self.protocol is not None:
            self.schedule_flush()
        elif self.connecting is None:
            self.connecting = asyncio.get_running_loop().create_task(self._connect())

    def schedule_flush(self) -> None:
        if not self.flush_scheduled:
            self.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self.flush_scheduled = False
        protocol = self.protocol
        if protocol is None or protocol.transport is None or not self.buffer or protocol.paused:
            return
        frames, self.buffer = self.buffer, []
        protocol.transport.write(b"".join(frames))

    async def _connect(self) -> None:
        try:
            address = self.address or self.node.address_of(self.peer) or self.node.learned.get(self.peer)
            if address is None:
                raise ConnectionError(f"no address known for {self.peer}")
            loop = asyncio.get_running_loop()
            await asyncio.wait_for(
                loop.create_connection(
                    lambda: _Outgoing(self),
                    address[0],
                    address[1],
                    local_addr=(self.node.host, 0),
                    ssl=self.node.ssl_client,
                    server_hostname="" if self.node.ssl_client is not None else None,
                ),
                self.node.connect_timeout_s,
            )
        except (OSError, TimeoutError, ConnectionError, ssl.SSLError) as exc:
            log.debug("link to %s failed: %s", self.peer, exc)
            self.failed()
        finally:
            self.connecting = None

    def connected(self, protocol: _Outgoing) -> None:
        self.protocol = protocol
        self.flush()

    def failed(self) -> None:
        """The connection could not be made or was refused: drop what waits, back off, report."""
        protocol, self.protocol = self.protocol, None
        if protocol is not None and protocol.transport is not None:
            protocol.transport.abort()
        self.buffer = []
        self.retry_after = time.monotonic() + self.node.retry_s
        self.node.report_unreachable(self.peer)

    def lost(self, protocol: _Outgoing) -> None:
        if self.protocol is protocol or (self.protocol is None and not protocol.ready):
            self.failed()

    def close(self) -> None:
        if self.connecting is not None:
            self.connecting.cancel()
        if self.protocol is not None and self.protocol.transport is not None:
            self.protocol.transport.close()
        self.protocol = None


class _Incoming(asyncio.Protocol):
    """The server side of one link: the peer's hello, our hello back, then frames in."""

    def __init__(self, node: Transport) -> None:
        self.node = node
        self.decoder = FrameDecoder(node.frame_bytes_max)
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        stream = cast(asyncio.Transport, transport)
        if len(self.node.inbound) >= self.node.inbound_max:
            # Over the limit: reset at once, nothing is read or kept (a member retries its link).
            self.node.inbound_refused += 1
            stream.abort()
            return
        self.transport = stream
        self.node.inbound.add(self)
        # A connection that never says hello is closed rather than held open.
        self.timer = asyncio.get_running_loop().call_later(self.node.connect_timeout_s, self._no_hello)

    def _no_hello(self) -> None:
        if not self.peer and self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        node = self.node
        try:
            frames = self.decoder.feed(data)
            for frame in frames:
                if not self.peer:
                    hello = decode_hello(frame, node.secret, node.cluster)
                    self.peer = hello.node
                    node.heard(hello)
                    assert self.transport is not None
                    self.transport.write(encode_hello(node.hello, node.secret))
                    continue
                node.on_message(self.peer, decode_message(frame))
        except PeerError as exc:
            node.peer_errors += 1
            log.warning("dropping peer %s: %s", self.peer or "?", exc)
            if self.transport is not None:
                self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.node.inbound.discard(self)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


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
        inbound_max: int,
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
        self.inbound: set[_Incoming] = set()
        # Inbound connections held at once (each a socket and a frame buffer), and those turned away.
        self.inbound_max = inbound_max
        self.inbound_refused = 0
        self.dropped_frames = 0
        self.peer_errors = 0
        self.hello = Hello(cluster, name, host, port)
        # Addresses peers announced in their handshakes: enough to answer a node that has just joined
        # and is not in our cluster state yet.
        self.learned: dict[str, tuple[str, int]] = {}

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: _Incoming(self), self.host, self.port, reuse_address=True, ssl=self.ssl_server
        )

    async def drain(self, timeout_s: float) -> None:
        """Wait (bounded) until every buffered frame has been handed to the kernel, e.g. a last gossip."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while any(link.buffer and (link.protocol or link.connecting) for link in self.links.values()):
            if asyncio.get_running_loop().time() > deadline:
                return
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        for link in self.links.values():
            link.close()
        if self.server is not None:
            self.server.close()
        for incoming in list(self.inbound):
            incoming.close()
        if self.server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)

    def send(self, peer: str, msg: Message, address: tuple[str, int] | None = None) -> None:
        if address is not None:
            # A node known only by address (a seed): a link named by that address.
            key = f"@{address[0]}:{address[1]}"
            link = self.links.get(key)
            if link is None:
                link = self.links[key] = PeerLink(self, key, address)
        else:
            link = self.links.get(peer)
            if link is None:
                link = self.links[peer] = PeerLink(self, peer)
        link.send(encode_message(msg))

    def report_unreachable(self, peer: str) -> None:
        self.on_unreachable(peer)

    def heard(self, hello: Hello) -> None:
        """A peer connected to us: remember its address, and stop refusing to send to it."""
        if len(self.learned) < 10_000 or hello.node in self.learned:
            self.learned[hello.node] = (hello.host, hello.port)
        link = self.links.get(hello.node)
        if link is not None:
            link.retry_after = 0.0
