"""Length-prefixed frames and the connection handshake, with no I/O.

A frame is a 4-byte big-endian length followed by that many bytes of msgpack. The first frame each
side sends is a handshake: `["dynastore", protocol version, cluster name, node name, host, peer port,
proof]`, where the proof is a MAC of the other fields keyed by the cluster secret. The address lets a
node answer a peer it has not heard of through gossip yet (a node that has just joined). A peer of
another cluster, another protocol version or without the secret is refused before any message is read.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

import msgpack

from dynastore.core import messages
from dynastore.core.messages import Message, PeerError

HEADER_BYTES = 4
MAGIC = "dynastore"


class FrameError(PeerError):
    """The byte stream is not a sequence of acceptable frames."""


def encode_frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(HEADER_BYTES, "big") + payload


def encode_message(msg: Message) -> bytes:
    return encode_frame(msgpack.packb(messages.to_wire(msg), use_bin_type=True))


def decode_message(payload: bytes) -> Message:
    try:
        data = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except Exception as exc:
        raise FrameError(f"undecodable frame: {exc}") from None
    return messages.from_wire(data)


class FrameDecoder:
    """Accumulates bytes and yields complete frames; refuses frames over the size limit."""

    def __init__(self, frame_bytes_max: int) -> None:
        self.frame_bytes_max = frame_bytes_max
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        frames: list[bytes] = []
        while len(self._buffer) >= HEADER_BYTES:
            length = int.from_bytes(self._buffer[:HEADER_BYTES], "big")
            if length > self.frame_bytes_max:
                raise FrameError(f"frame of {length} bytes exceeds the limit of {self.frame_bytes_max}")
            if len(self._buffer) < HEADER_BYTES + length:
                break
            frames.append(bytes(self._buffer[HEADER_BYTES : HEADER_BYTES + length]))
            del self._buffer[: HEADER_BYTES + length]
        return frames


@dataclass(frozen=True, slots=True)
class Hello:
    cluster: str
    node: str
    host: str
    port: int
    version: int = messages.PROTOCOL_VERSION


def _proof(secret: bytes, hello: Hello) -> bytes:
    text = f"{MAGIC}|{hello.version}|{hello.cluster}|{hello.node}|{hello.host}|{hello.port}"
    return hmac.new(secret, text.encode(), hashlib.sha256).digest()[:16]


def encode_hello(hello: Hello, secret: bytes) -> bytes:
    fields = [MAGIC, hello.version, hello.cluster, hello.node, hello.host, hello.port, _proof(secret, hello)]
    return encode_frame(msgpack.packb(fields, use_bin_type=True))


def decode_hello(payload: bytes, secret: bytes, cluster: str) -> Hello:
    """Validate a peer's handshake; raises FrameError saying why it is refused."""
    try:
        data: Any = msgpack.unpackb(payload, raw=False)
    except Exception:
        raise FrameError("handshake is not msgpack") from None
    if not (isinstance(data, list) and len(data) == 7 and data[0] == MAGIC):
        raise FrameError("not a dynastore handshake")
    _, version, their_cluster, node, host, port, proof = data
    if version != messages.PROTOCOL_VERSION:
        raise FrameError(f"protocol version {version!r} is not {messages.PROTOCOL_VERSION}")
    if not isinstance(their_cluster, str) or their_cluster != cluster:
        raise FrameError(f"peer belongs to cluster {their_cluster!r}, not {cluster!r}")
    if not isinstance(node, str) or not node or len(node) > 255:
        raise FrameError("handshake has no valid node name")
    if not isinstance(host, str) or not host or len(host) > 255:
        raise FrameError("handshake has no valid host")
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise FrameError("handshake has no valid port")
    hello = Hello(their_cluster, node, host, port, version)
    if not isinstance(proof, bytes) or not hmac.compare_digest(proof, _proof(secret, hello)):
        raise FrameError("handshake proof does not match the cluster secret")
    return hello
