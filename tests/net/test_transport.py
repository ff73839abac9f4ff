"""The inter-node transport delivers frames in order, authenticates peers (both ways, with fresh nonces,
and every frame after), drops a peer that sends garbage while serving the others, reports unreachable
peers, and bounds what it buffers."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Awaitable, Callable

import msgpack
import pytest

from dynastore.core import messages
from dynastore.core.messages import GossipState, JoinRequest, Message, Ping
from dynastore.core.objects import Content, Object
from dynastore.core.secret import PEER, ClusterKeys
from dynastore.core.versions import Dot, update
from dynastore.net.framing import (
    NONCE_BYTES,
    TO_LISTENER,
    FrameDecoder,
    FrameError,
    Hello,
    Sealer,
    decode_hello,
    encode_finish,
    encode_hello,
    encode_payload,
    matching,
    proof,
    session_key,
)
from dynastore.net.rpc import Transport

SECRET = b"secret-of-this-test-cluster"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Node:
    def __init__(
        self,
        name: str,
        directory: dict[str, tuple[str, int]],
        secret: bytes = SECRET,
        queue_max: int = 1000,
        inbound_max: int = 1024,
        connect_timeout_ms: int = 1000,
        configured: bool = True,
        frame_bytes_max: int = 1 << 20,
        queue_bytes_max: int = 64 << 20,
        message_bytes_max: int = 256 << 20,
        idle_timeout_ms: int = 300_000,
    ):
        self.received: list[tuple[str, Message]] = []
        self.unreachable: list[str] = []
        self.reasons: list[str] = []
        keys = ClusterKeys((secret,), configured=configured)
        self.port = free_port()
        directory[name] = ("127.0.0.1", self.port)
        self.transport = Transport(
            name=name,
            host="127.0.0.1",
            port=self.port,
            cluster="test",
            keys=lambda: keys,
            frame_bytes_max=frame_bytes_max,
            queue_frames_max=queue_max,
            queue_bytes_max=queue_bytes_max,
            message_bytes_max=message_bytes_max,
            reassembly_bytes_max=message_bytes_max,
            idle_timeout_ms=idle_timeout_ms,
            connect_timeout_ms=connect_timeout_ms,
            inbound_max=inbound_max,
            retry_ms=200,
            address_of=directory.get,
            on_message=lambda src, msg: self.received.append((src, msg)),
            on_unreachable=self._unreachable,
        )

    def _unreachable(self, peer: str, reason: str) -> None:
        self.unreachable.append(peer)
        self.reasons.append(reason)


async def handshake(
    port: int, name: str, secret: bytes = SECRET
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, Sealer, list[bytes]]:
    """Dial a node as peer `name` by hand; returns the link, its sealer and the frames of the handshake sent."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    ours = Hello("test", name, "127.0.0.1", 1, os.urandom(NONCE_BYTES))
    sent = [encode_hello(ours)]
    writer.write(sent[0])
    decoder = FrameDecoder(1 << 16)
    frames: list[bytes] = []
    while not frames:
        frames = decoder.feed(await asyncio.wait_for(reader.read(4096), 5))
    theirs, proofs = decode_hello(frames[0], "test")
    key = ClusterKeys((secret,), configured=True).signing(PEER)
    assert any(matching((key,), "server", ours, theirs, p) for p in proofs), "the node proved the secret"
    sent.append(encode_finish(proof(key, "client", ours, theirs)))
    writer.write(sent[1])
    await writer.drain()
    return reader, writer, Sealer(session_key(key, ours, theirs), TO_LISTENER), sent


async def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_frames_arrive_in_order_and_from_the_authenticated_sender() -> None:
    """A thousand messages sent in one burst arrive complete, in order, named by the sender's hello."""

    async def scenario() -> None:
        directory: dict[str, tuple[str, int]] = {}
        a, b = Node("a", directory), Node("b", directory)
        await a.transport.start()
        await b.transport.start()
        try:
            for seq in range(1000):
                a.transport.send("b", Ping(seq))
            await until(lambda: len(b.received) == 1000)
            assert [msg for _, msg in b.received] == [Ping(seq) for seq in range(1000)]
            assert {src for src, _ in b.received} == {"a"}
        finally:
            await a.transport.close()
            await b.transport.close()

    run(scenario)


def test_a_peer_sending_garbage_is_dropped_and_the_node_keeps_serving_others() -> None:
    """After a valid hello, an undecodable frame gets the connection closed and counted; a well-behaved
    peer's messages still arrive."""

    async def scenario() -> None:
        directory: dict[str, tuple[str, int]] = {}
        a, b = Node("a", directory), Node("b", directory)
        await a.transport.start()
        await b.transport.start()
        try:
            reader, writer, sealer, _ = await handshake(b.port, "mallory")
            writer.write(sealer.seal(b"\xc1\xc1 this is not msgpack"))
            await writer.drain()
            await until(lambda: b.transport.peer_errors == 1)
            # The node answered our hello, then closed the connection on the garbage.
            assert await asyncio.wait_for(reader.read(), 5) == b""
            assert b.transport.auth_failures == 0, "the garbage was sealed: a protocol error, not an auth one"
            a.transport.send("b", Ping(7))
            await until(lambda: ("a", Ping(7)) in b.received)
            writer.close()
        finally:
            await a.transport.close()
            await b.transport.close()

    run(scenario)


def test_a_peer_without_the_cluster_secret_is_refused_before_any_message() -> None:
    """Messages from a node whose handshake proof uses another secret are never delivered."""

    async def scenario() -> None:
        directory: dict[str, tuple[str, int]] = {}
        a, b = Node("a", directory, secret=b"wrong"), Node("b", directory)
        await a.transport.start()
        await b.transport.start()
        try:
            a.transport.send("b", Ping(1))
            await until(lambda: "b" in a.unreachable)
            assert b.received == []
            assert a.transport.auth_failures == 1, "a saw b prove a key it does not hold"
            assert "does not hold this cluster's secret" in a.reasons[0]
        finally:
            await a.transport.close()
            await b.transport.close()

    run(scenario)


def test_an_unreachable_peer_is_reported_and_tried_again_once_the_back_off_passes() -> None:
    """Sending to a peer that does not listen reports it at once; once it listens, sends get through."""

    async def scenario() -> None:
        directory: dict[str, tuple[str, int]] = {}
        a, b = Node("a", directory), Node("b", directory)
        await a.transport.start()
        try:
            a.transport.send("b", Ping(1))
            await until(lambda: a.unreachable == ["b"])
            await b.transport.start()
            await asyncio.sleep(0.25)  # the back-off (retry_ms=200) must pass; this is the scenario
            a.transport.send("b", Ping(2))
            await until(lambda: ("a", Ping(2)) in b.received)
            assert ("a", Ping(1)) not in b.received
        finally:
            await a.transport.close()
            await b.transport.close()

    run(scenario)


def test_frames_beyond_the_buffer_limit_are_dropped_and_counted() -> None:
    """While a connection is being made, at most queue_frames_max frames wait; the rest are dropped."""

    async def scenario() -> None:
        directory: dict[str, tuple[str, int]] = {}
        a, b = Node("a", directory, queue_max=10), Node("b", directory)
        await a.transport.start()
        await b.transport.start()
        try:
            for seq in range(25):
                a.transport.send("b", Ping(seq))
            await until(lambda: len(b.received) == 10)
            assert a.transport.dropped_frames == 15
            assert [msg for _, msg in b.received] == [Ping(seq) for seq in range(10)]
        finally:
            await a.transport.close()
            await b.transport.close()

    run(scenario)


def test_inbound_connections_over_the_limit_are_reset_and_a_member_gets_in_once_a_place_frees() -> None:
    """With room for two inbound connections, two silent strangers fill it: a third connection is reset
    at once (long before the hello timeout) and counted, and so is a member's link, which reports the
    peer unreachable; once the strangers are gone the member's link gets through again."""

    async def scenario() -> None:
        directory: dict[str, tuple[str, int]] = {}
        a, b = Node("a", directory), Node("b", directory, inbound_max=2, connect_timeout_ms=10_000)
        await b.transport.start()
        await a.transport.start()
        strangers = [await asyncio.open_connection("127.0.0.1", b.port) for _ in range(2)]
        try:
            await until(lambda: len(b.transport.inbound) == 2)
            reader, writer = await asyncio.open_connection("127.0.0.1", b.port)
            started = asyncio.get_running_loop().time()
            try:
                assert await asyncio.wait_for(reader.read(100), 5) == b""
            except ConnectionResetError:
                pass
            assert asyncio.get_running_loop().time() - started < 5  # the hello timeout is 10 s
            writer.close()
            assert b.transport.inbound_refused == 1 and len(b.transport.inbound) == 2

            a.transport.send("b", Ping(1))
            await until(lambda: b.transport.inbound_refused >= 2)
            assert b.received == []
            await until(lambda: "b" in a.unreachable)
            for _, stranger in strangers:
                stranger.close()
            # The member backs off and tries again, like any link that failed.
            for seq in range(2, 100):
                a.transport.send("b", Ping(seq))
                if b.received:
                    break
                await asyncio.sleep(0.1)
            await until(lambda: bool(b.received))
            assert {src for src, _ in b.received} == {"a"}
        finally:
            for _, stranger in strangers:
                stranger.close()
            await a.transport.close()
            await b.transport.close()

    run(scenario)


def test_a_recorded_handshake_replayed_later_is_refused() -> None:
    """A listener's nonce is fresh for every connection: the proof of an old session proves nothing."""

    async def scenario() -> None:
        directory: dict[str, tuple[str, int]] = {}
        b = Node("b", directory)
        await b.transport.start()
        try:
            _, writer, sealer, recorded = await handshake(b.port, "a")
            writer.write(sealer.seal(encode_payload(Ping(1))))
            await writer.drain()
            await until(lambda: ("a", Ping(1)) in b.received)
            writer.close()
            # The eavesdropper's copy of that session, replayed byte for byte.
            replay_reader, replay = await asyncio.open_connection("127.0.0.1", b.port)
            replay.write(recorded[0] + recorded[1])
            await replay.drain()
            await until(lambda: b.transport.auth_failures == 1)
            # The node answered the replayed hello with a fresh challenge, then dropped the stale proof.
            answer = await asyncio.wait_for(replay_reader.read(), 5)
            assert answer.startswith(b"\x00") and len(answer) > 40
            assert b.received == [("a", Ping(1))]
            replay.close()
        finally:
            await b.transport.close()

    run(scenario)


def test_a_frame_altered_or_replayed_within_a_session_fails_its_mac_and_drops_the_peer() -> None:
    """Every frame's MAC covers its sequence number: the same frame twice is refused the second time."""

    async def scenario() -> None:
        directory: dict[str, tuple[str, int]] = {}
        b = Node("b", directory)
        await b.transport.start()
        try:
            _, writer, sealer, _ = await handshake(b.port, "a")
            frame = sealer.seal(encode_payload(Ping(1)))
            writer.write(frame + frame)
            await writer.drain()
            await until(lambda: b.transport.auth_failures == 1)
            assert b.received == [("a", Ping(1))]
            _, writer2, sealer2, _ = await handshake(b.port, "a")
            tampered = bytearray(sealer2.seal(encode_payload(Ping(2))))
            tampered[-20] ^= 1
            writer2.write(bytes(tampered))
            await writer2.drain()
            await until(lambda: b.transport.auth_failures == 2)
            assert b.received == [("a", Ping(1))]
            writer.close()
            writer2.close()
        finally:
            await b.transport.close()

    run(scenario)


def test_open_nodes_with_different_keys_carry_a_join_over_an_unproven_link_and_nothing_else() -> None:
    """Two nodes without a configured secret (loopback) whose keys differ: a join request gets through,
    a ping does not (the link is dialled again, and given up while the keys still differ); a node with
    a configured secret never opens such a link."""

    async def scenario() -> None:
        directory: dict[str, tuple[str, int]] = {}
        a = Node("a", directory, secret=b"key-of-a-one-node-cluster", configured=False)
        b = Node("b", directory, secret=b"key-of-b-one-node-cluster", configured=False)
        c = Node("c", directory, secret=b"a-configured-secret-of-c", configured=True)
        for node in (a, b, c):
            await node.transport.start()
        try:
            a.transport.send("b", JoinRequest(1, b"member"))
            await until(lambda: ("a", JoinRequest(1, b"member")) in b.received)
            a.transport.send("b", Ping(5))
            await until(lambda: "b" in a.unreachable)
            assert ("a", Ping(5)) not in b.received
            c.transport.send("b", JoinRequest(2, b"member"))
            await until(lambda: "b" in c.unreachable)
            assert ("c", JoinRequest(2, b"member")) not in b.received
        finally:
            for node in (a, b, c):
                await node.transport.close()

    run(scenario)


def test_a_first_message_larger_than_a_handshake_frame_arrives_with_the_proof_in_one_read() -> None:
    """The dialling side writes its proof and its first frames together: a first message of 64 KiB
    (a hint batch, a gossiped state) must not trip the small limit of the handshake's frames."""

    async def scenario() -> None:
        directory: dict[str, tuple[str, int]] = {}
        b = Node("b", directory)
        await b.transport.start()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", b.port)
            ours = Hello("test", "a", "127.0.0.1", 1, os.urandom(NONCE_BYTES))
            writer.write(encode_hello(ours))
            decoder = FrameDecoder(1 << 16)
            frames: list[bytes] = []
            while not frames:
                frames = decoder.feed(await asyncio.wait_for(reader.read(4096), 5))
            theirs, _ = decode_hello(frames[0], "test")
            key = ClusterKeys((SECRET,), configured=True).signing(PEER)
            sealer = Sealer(session_key(key, ours, theirs), TO_LISTENER)
            big = JoinRequest(7, b"m" * 65536)
            writer.write(encode_finish(proof(key, "client", ours, theirs)) + sealer.seal(encode_payload(big)))
            await writer.drain()
            await until(lambda: ("a", big) in b.received)
            assert b.transport.peer_errors == 0
            writer.close()
        finally:
            await b.transport.close()

    run(scenario)


def test_a_message_larger_than_a_frame_arrives_whole_as_fragments_and_the_link_stays() -> None:
    """A 3 MiB message over 1 MiB frames (a key whose siblings add up to more than a frame) arrives
    whole, between the messages sent before and after it, without the link being dropped; one larger
    than the receiver puts back together is refused as a peer error."""

    async def scenario() -> None:
        directory: dict[str, tuple[str, int]] = {}
        a = Node("a", directory)
        b = Node("b", directory, message_bytes_max=8 << 20)
        await a.transport.start()
        await b.transport.start()
        try:
            big = GossipState(os.urandom(3 << 20), False)
            a.transport.send("b", Ping(1))
            a.transport.send("b", big)
            a.transport.send("b", Ping(2))
            await until(lambda: len(b.received) == 3)
            assert [msg for _, msg in b.received] == [Ping(1), big, Ping(2)]
            assert a.unreachable == [] and b.transport.peer_errors == 0
            assert b.transport.reassembling_bytes == 0
            a.transport.send("b", GossipState(os.urandom(9 << 20), False))
            await until(lambda: b.transport.peer_errors == 1)
            assert b.transport.reassembling_bytes == 0, "what the dropped link held is given back"
        finally:
            await a.transport.close()
            await b.transport.close()

    run(scenario)


def test_what_waits_for_a_peer_is_bounded_in_bytes_and_one_larger_message_still_goes() -> None:
    """With 1 MiB allowed to wait, three 300 KiB messages wait and the other seven are dropped and
    counted; a single 2 MiB message, alone in the queue, still goes."""

    async def scenario() -> None:
        directory: dict[str, tuple[str, int]] = {}
        a, b = Node("a", directory, queue_bytes_max=1 << 20), Node("b", directory)
        await a.transport.start()
        await b.transport.start()
        try:
            sent = [GossipState(bytes([seq]) * (300 << 10), False) for seq in range(10)]
            for msg in sent:
                a.transport.send("b", msg)
            await until(lambda: len(b.received) == 3)
            assert a.transport.dropped_frames == 7
            assert [msg for _, msg in b.received] == sent[:3]
            large = GossipState(b"L" * (2 << 20), False)
            a.transport.send("b", large)
            await until(lambda: len(b.received) == 4)
            assert b.received[-1] == ("a", large)
        finally:
            await a.transport.close()
            await b.transport.close()

    run(scenario)


def test_links_idle_for_the_timeout_are_closed_and_forgotten_and_dialled_again_when_needed() -> None:
    """After a message, a link that carries nothing for peer_idle_timeout_ms is closed on both sides;
    the next message dials a new one."""

    async def scenario() -> None:
        directory: dict[str, tuple[str, int]] = {}
        a = Node("a", directory, idle_timeout_ms=400)
        b = Node("b", directory, idle_timeout_ms=400)
        await a.transport.start()
        await b.transport.start()
        try:
            a.transport.send("b", Ping(1))
            await until(lambda: len(b.received) == 1)
            assert "b" in a.transport.links and len(b.transport.inbound) == 1
            await until(lambda: not a.transport.links and not b.transport.inbound, timeout_s=3)
            a.transport.send("b", Ping(2))
            await until(lambda: len(b.received) == 2)
            assert a.unreachable == []
        finally:
            await a.transport.close()
            await b.transport.close()

    run(scenario)


def test_a_link_the_peer_closes_for_idleness_first_is_forgotten_without_a_report() -> None:
    """The peer's idle sweep closes the link before this side's does (its timeout is a little shorter;
    nodes sweep at their own moments): this side
    forgets the link as its own sweep would, reports nobody unreachable, and the next message dials
    a new link at once (no back-off)."""

    async def scenario() -> None:
        directory: dict[str, tuple[str, int]] = {}
        a = Node("a", directory, idle_timeout_ms=500)
        b = Node("b", directory, idle_timeout_ms=350)
        await a.transport.start()
        await b.transport.start()
        try:
            a.transport.send("b", Ping(1))
            await until(lambda: len(b.received) == 1)
            await until(lambda: not b.transport.inbound, timeout_s=3)
            await asyncio.sleep(0.1)
            assert a.unreachable == []
            a.transport.send("b", Ping(2))
            await until(lambda: len(b.received) == 2)
            assert a.unreachable == []
        finally:
            await a.transport.close()
            await b.transport.close()

    run(scenario)


def test_a_peer_of_protocol_9_is_refused_clearly_and_its_replica_put_does_not_decode() -> None:
    """Protocol 10 added the durable flag of ReplicaPut and ReplicaPutReply (buffered writes): a node of
    protocol 9 is refused at the handshake with a reason naming both versions, and a ReplicaPut in
    its shape (one field fewer) is a malformed message, never taken for a durable or buffered one."""
    assert messages.PROTOCOL_VERSION == 10
    old = Hello("test", "old", "127.0.0.1", 1, b"\x00" * NONCE_BYTES, version=9)
    with pytest.raises(FrameError, match="protocol version 9, this node 10"):
        decode_hello(encode_hello(old)[4:], "test")
    obj: Object = update(None, messages.Context(), Dot(b"a", 1), Content(b"v"), 0)
    wire = messages.to_wire(messages.ReplicaPut(1, b"b", b"k", obj, None, False))
    assert wire[-1] is True
    with pytest.raises(messages.PeerError, match="ReplicaPut needs 9 fields"):
        messages.from_wire(msgpack.unpackb(msgpack.packb(wire[:-1], use_bin_type=True)))
    reply = messages.to_wire(messages.ReplicaPutReply(1, True, ""))
    with pytest.raises(messages.PeerError, match="ReplicaPutReply needs 4 fields"):
        messages.from_wire(reply[:-1])
