"""Inter-node transport over asyncio TCP: one pooled outgoing connection per peer, a listener for
incoming ones, the handshake on both, bounded buffers everywhere.

Built on `asyncio.Protocol` callbacks rather than streams: a frame to send is appended to its link's
buffer and every buffer is written once per turn of the event loop (one system call for all the
frames of a turn); received bytes are cut into frames and handed to `on_message` straight from
`data_received`. No coroutine is resumed per message.

Outgoing sockets are bound to the node's own host address, so a node on 10.0.0.2 connects *from*
10.0.0.2 (firewall rules and namespaces see the real source). A peer whose connection fails is
reported once per failure through `on_unreachable`, with the reason when it was refused; frames
buffered for it are dropped (the core treats them as lost and its requests fail over or time out),
and it is not dialled again for a short while unless it reaches us first. A peer that sends garbage
is logged and disconnected; the node keeps serving everyone else.

Every link starts with the handshake of framing.py: both ends prove they hold the cluster's peer key
(fresh nonces both ways), and every frame after it carries a MAC under the session key. A peer that
fails the proof or sends a frame whose MAC does not verify is dropped and counted (`auth_failures`).
Between two open nodes whose keys differ (one has not joined yet) a link may stay *unproven*: it
carries only the messages of a join, and a link that must carry anything else is dialled again, and
given up if it stays unproven.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import time
from collections.abc import Callable
from typing import cast

from dynastore.core.messages import JoinReply, JoinRequest, Message, PeerError
from dynastore.core.secret import PEER, ClusterKeys
from dynastore.net.framing import (
    MAC_BYTES,
    NONCE_BYTES,
    TO_LISTENER,
    AuthError,
    FrameDecoder,
    FrameError,
    Hello,
    Opener,
    Reassembler,
    Sealer,
    decode_finish,
    decode_hello,
    decode_message,
    encode_finish,
    encode_frame,
    encode_hello,
    encode_payload,
    fragments,
    is_hello,
    matching,
    proof,
    session_key,
)

log = logging.getLogger("dynastore.net")

# The largest frame accepted before a peer has proved itself (a handshake's frames are small).
HELLO_BYTES_MAX = 4096
# Outgoing links kept at once; past it, a message to a peer without one is dropped (members always
# have one: they are heard from every heartbeat, and idle links are closed).
LINKS_MAX = 4096
# The only messages an unproven link (between open nodes whose keys differ) may carry.
JOIN_MESSAGES = (JoinRequest, JoinReply)
# Above this many bytes waiting in a socket's send buffer, frames are held back in the link's own
# (bounded) buffer until the kernel drains it.
WRITE_BUFFER_HIGH_BYTES = 4 * 1024 * 1024
# Bind addresses that mean every interface: never an address to tell peers, nor a source to bind.
WILDCARD_HOSTS = ("0.0.0.0", "::", "[::]", "")


class _Outgoing(asyncio.Protocol):
    """The dialling side of one link: handshake, then frames out; the peer never speaks after its hello."""

    def __init__(self, link: PeerLink) -> None:
        self.link = link
        self.transport: asyncio.Transport | None = None
        self.decoder = FrameDecoder(HELLO_BYTES_MAX)
        self.ready = False
        self.paused = False
        # Set once the handshake proved the peer: every frame is sealed. None on an unproven link.
        self.sealer: Sealer | None = None
        node = link.node
        self.hello = Hello(node.cluster, node.name, node.advertise_host, node.port, os.urandom(NONCE_BYTES))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport instances but offer the same methods.
        self.transport = tcp = cast(asyncio.Transport, transport)
        tcp.set_write_buffer_limits(high=WRITE_BUFFER_HIGH_BYTES)
        tcp.write(encode_hello(self.hello))

    def data_received(self, data: bytes) -> None:
        if self.ready:
            return
        node = self.link.node
        try:
            frames = self.decoder.feed(data)
            if not frames:
                return
            theirs, proofs = decode_hello(frames[0], node.cluster)
            if not self.link.peer.startswith("@") and theirs.node != self.link.peer:
                raise FrameError(f"expected {self.link.peer}, reached {theirs.node}")
            keys = node.keys()
            key = next(
                (k for p in proofs if (k := matching(keys.keys(PEER), "server", self.hello, theirs, p)) is not None),
                None,
            )
            if key is not None:
                assert self.transport is not None
                self.transport.write(encode_finish(proof(key, "client", self.hello, theirs)))
                self.sealer = Sealer(session_key(key, self.hello, theirs), TO_LISTENER)
            elif not node.open:
                raise AuthError(f"{theirs.node} does not hold this cluster's secret")
            else:
                assert self.transport is not None
                self.transport.write(encode_finish(b""))
        except PeerError as exc:
            if isinstance(exc, AuthError):
                node.auth_failures += 1
            log.warning("link to %s refused: %s", self.link.peer or "?", exc)
            self.link.failed(str(exc))
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
        # Payloads not written yet, each with whether it is part of a join (an unproven link takes only those).
        self.buffer: list[tuple[bytes, bool]] = []
        self.buffer_bytes = 0
        self.last_active = time.monotonic()
        self.protocol: _Outgoing | None = None
        self.connecting: asyncio.Task[None] | None = None
        self.flush_scheduled = False
        self.retry_after = 0.0
        # Set when an unproven link had to carry more than a join: the next link must be proven.
        self.need_proof = False

    def send(self, msg: Message) -> None:
        if time.monotonic() < self.retry_after:
            self.node.report_unreachable(self.peer)
            return
        payload = encode_payload(msg)
        # Bounded in messages and in bytes; a message larger than the byte bound still goes alone.
        node = self.node
        if len(self.buffer) >= node.queue_frames_max or (
            self.buffer and self.buffer_bytes + len(payload) > node.queue_bytes_max
        ):
            node.dropped_frames += 1
            return
        self.buffer.append((payload, isinstance(msg, JOIN_MESSAGES)))
        self.buffer_bytes += len(payload)
        self.last_active = time.monotonic()
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
        sealer = protocol.sealer
        # A message larger than a frame goes as fragments (a sealed frame also carries its MAC).
        piece = self.node.frame_bytes_max - MAC_BYTES
        self.last_active = time.monotonic()
        if sealer is not None:
            payloads, self.buffer, self.buffer_bytes = self.buffer, [], 0
            protocol.transport.write(
                b"".join(sealer.seal(part) for payload, _ in payloads for part in fragments(payload, piece))
            )
            return
        # An unproven link carries the messages of a join only: they go now, the rest wait.
        joins = [payload for payload, join in self.buffer if join]
        self.buffer = [(payload, join) for payload, join in self.buffer if not join]
        self.buffer_bytes = sum(len(payload) for payload, _ in self.buffer)
        protocol.transport.write(
            b"".join(encode_frame(part) for payload in joins for part in fragments(payload, piece))
        )
        if not self.buffer:
            return
        # Something else must go: dial again (closing lets what was written go first), now that the
        # join may have given both ends the same key; a link that stays unproven is given up.
        self.protocol = None
        protocol.transport.close()
        if self.need_proof:
            self.buffer, self.buffer_bytes = [], 0
            self.need_proof = False
            self.retry_after = time.monotonic() + self.node.retry_s
            self.node.report_unreachable(self.peer, f"{self.peer} does not hold this cluster's key")
            return
        self.need_proof = True
        self.connecting = asyncio.get_running_loop().create_task(self._connect())

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
                    local_addr=None if self.node.source_host is None else (self.node.source_host, 0),
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
        if protocol.sealer is not None:
            self.need_proof = False
        self.flush()

    def failed(self, reason: str = "") -> None:
        """The connection could not be made or was refused: drop what waits, back off, report."""
        protocol, self.protocol = self.protocol, None
        if protocol is not None and protocol.transport is not None:
            protocol.transport.abort()
        self.buffer, self.buffer_bytes = [], 0
        self.need_proof = False
        self.retry_after = time.monotonic() + self.node.retry_s
        self.node.report_unreachable(self.peer, reason)

    def lost(self, protocol: _Outgoing) -> None:
        if self.protocol is protocol and protocol.ready and not self.buffer and self._idle_for_the_peer():
            # The peer's own sweep closed a link that had carried nothing for a long while (both sides
            # close idle links; whichever sweeps first): forgotten, as this side's sweep would, not a
            # failure to report (a link a request just crossed is never this idle).
            self.protocol = None
            if self.node.links.get(self.peer) is self:
                del self.node.links[self.peer]
            return
        if self.protocol is protocol or (self.protocol is None and not protocol.ready):
            self.failed()

    def _idle_for_the_peer(self) -> bool:
        return time.monotonic() - self.last_active >= self.node.idle_timeout_s / 2

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
        # Until the peer has proved itself, no frame longer than a handshake is taken.
        self.decoder = FrameDecoder(HELLO_BYTES_MAX)
        self.transport: asyncio.Transport | None = None
        # The peer's hello and ours, once the first step is done; the peer's name once it is proved.
        self.theirs: Hello | None = None
        self.ours = Hello(node.cluster, node.name, node.advertise_host, node.port, os.urandom(NONCE_BYTES))
        self.refused_hello = False
        self.peer = ""
        self.opener: Opener | None = None
        self.timer: asyncio.TimerHandle | None = None
        # A message arriving as fragments; its bytes count against the node's budget for all links.
        self.reassembler = Reassembler(node.message_bytes_max)
        self.last_active = time.monotonic()

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
            # Before the handshake is done only its small frames are taken; `_finish` raises the limit
            # before the frames that follow the dialling side's proof (often in the same read).
            self.decoder.push(data)
            self.last_active = time.monotonic()
            while (frame := self.decoder.next()) is not None:
                if self.theirs is None:
                    try:
                        self.theirs, _ = decode_hello(frame, node.cluster)
                    except FrameError:
                        # A dynastore node of another cluster or protocol version gets our hello (no
                        # proofs) before we close, so that it can say why it was refused instead of
                        # seeing a dead link; anything else learns nothing.
                        self.refused_hello = is_hello(frame)
                        raise
                    proofs = tuple(proof(k, "server", self.theirs, self.ours) for k in node.keys().keys(PEER))
                    assert self.transport is not None
                    self.transport.write(encode_hello(self.ours, proofs))
                elif not self.peer:
                    self._finish(decode_finish(frame))
                else:
                    payload = self._whole(self.opener.open(frame) if self.opener is not None else frame)
                    if payload is None:
                        continue
                    msg = decode_message(payload)
                    if self.opener is None and not isinstance(msg, JOIN_MESSAGES):
                        raise AuthError(f"an unproven link carried a {type(msg).__name__}")
                    node.on_message(self.peer, msg)
        except PeerError as exc:
            node.peer_errors += 1
            if isinstance(exc, AuthError):
                node.auth_failures += 1
            log.warning("dropping peer %s: %s", self.peer or (self.theirs.node if self.theirs else "?"), exc)
            if self.transport is not None:
                if self.refused_hello:
                    self.refused_hello = False
                    self.transport.write(encode_hello(self.ours))
                    self.transport.close()
                else:
                    self.transport.abort()

    def _whole(self, payload: bytes) -> bytes | None:
        """A message's payload once all of it is here (None while its fragments arrive), counting what
        is held against the node's budget for messages in pieces on all links."""
        node = self.node
        before = self.reassembler.held_bytes
        whole = self.reassembler.add(payload)
        node.reassembling_bytes += self.reassembler.held_bytes - before
        if node.reassembling_bytes > node.reassembly_bytes_max:
            raise FrameError("too many large messages arriving at once")
        return whole

    def _finish(self, given: bytes) -> None:
        """The dialling side's proof: a proved link, an unproven one between open nodes, or a refusal."""
        node, theirs = self.node, self.theirs
        assert theirs is not None
        keys = node.keys()
        if given:
            key = matching(keys.keys(PEER), "client", theirs, self.ours, given)
            if key is None:
                raise AuthError(f"{theirs.node} does not hold this cluster's secret")
            self.opener = Opener(session_key(key, theirs, self.ours), TO_LISTENER)
        elif not node.open:
            raise AuthError(f"{theirs.node} did not prove it holds this cluster's secret")
        self.peer = theirs.node
        self.decoder.frame_bytes_max = node.frame_bytes_max
        node.heard(theirs)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.node.reassembling_bytes -= self.reassembler.held_bytes
        self.reassembler.held_bytes = 0
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
        keys: Callable[[], ClusterKeys],
        frame_bytes_max: int,
        queue_frames_max: int,
        connect_timeout_ms: int,
        queue_bytes_max: int = 64 << 20,
        message_bytes_max: int = 256 << 20,
        reassembly_bytes_max: int = 256 << 20,
        idle_timeout_ms: int = 300_000,
        inbound_max: int,
        retry_ms: int,
        address_of: Callable[[str], tuple[str, int] | None],
        on_message: Callable[[str, Message], None],
        on_unreachable: Callable[[str, str], None],
        ssl_server: ssl.SSLContext | None = None,
        ssl_client: ssl.SSLContext | None = None,
        advertise_host: str = "",
    ) -> None:
        self.ssl_server = ssl_server
        self.ssl_client = ssl_client
        self.name = name
        # `host` is the address listened on; `advertise_host` (default: the same) the one peers are told
        # in our hello and connect to. Outgoing sockets are bound to `host` when it is also the address
        # advertised; a wildcard bind (0.0.0.0, ::) or an address advertised apart from it (a name, a
        # NAT'd address) leaves the source address to the kernel's routing.
        self.host = host
        self.advertise_host = advertise_host or host
        own = host not in WILDCARD_HOSTS and self.advertise_host == host
        self.source_host: str | None = host if own else None
        self.port = port
        self.cluster = cluster
        # The cluster's key material now (it changes once, when an open node joins a cluster).
        self.keys = keys
        self.frame_bytes_max = frame_bytes_max
        self.queue_frames_max = queue_frames_max
        self.queue_bytes_max = queue_bytes_max
        # The largest message put back together from fragments, and all such bytes held at once.
        self.message_bytes_max = message_bytes_max
        self.reassembly_bytes_max = reassembly_bytes_max
        self.reassembling_bytes = 0
        self.idle_timeout_s = idle_timeout_ms / 1000
        self._idle_sweep: asyncio.TimerHandle | None = None
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
        # Peers that failed the handshake's proof or sent a frame whose MAC did not verify.
        self.auth_failures = 0
        # Addresses peers announced in their handshakes: enough to answer a node that has just joined
        # and is not in our cluster state yet.
        self.learned: dict[str, tuple[str, int]] = {}

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: _Incoming(self), self.host, self.port, reuse_address=True, ssl=self.ssl_server
        )
        self._idle_sweep = loop.call_later(self.idle_timeout_s / 4, self._close_idle)

    def _close_idle(self) -> None:
        """Close links and connections that carried nothing for the idle timeout (a member's never are:
        heartbeats cross them every second); the outgoing ones are forgotten, which bounds them."""
        deadline = time.monotonic() - self.idle_timeout_s
        for name, link in list(self.links.items()):
            if link.last_active < deadline and not link.buffer and link.connecting is None:
                link.close()
                del self.links[name]
        for incoming in list(self.inbound):
            if incoming.last_active < deadline:
                incoming.close()
        self._idle_sweep = asyncio.get_running_loop().call_later(self.idle_timeout_s / 4, self._close_idle)

    async def drain(self, timeout_s: float) -> None:
        """Wait (bounded) until every buffered frame has been handed to the kernel, e.g. a last gossip."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while any(link.buffer and (link.protocol or link.connecting) for link in self.links.values()):
            if asyncio.get_running_loop().time() > deadline:
                return
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        if self._idle_sweep is not None:
            self._idle_sweep.cancel()
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
            peer = key
        link = self.links.get(peer)
        if link is None:
            if len(self.links) >= LINKS_MAX:
                self.dropped_frames += 1
                return
            link = self.links[peer] = PeerLink(self, peer, address)
        link.send(msg)

    def report_unreachable(self, peer: str, reason: str = "") -> None:
        self.on_unreachable(peer, reason)

    @property
    def open(self) -> bool:
        """Whether this node may use unproven links for joins: it has no configured secret (so it
        serves loopback only, and trusts this machine's processes to join it)."""
        return not self.keys().configured

    def heard(self, hello: Hello) -> None:
        """A peer connected to us: remember its address, and stop refusing to send to it."""
        if len(self.learned) < 10_000 or hello.node in self.learned:
            self.learned[hello.node] = (hello.host, hello.port)
        link = self.links.get(hello.node)
        if link is not None:
            link.retry_after = 0.0
