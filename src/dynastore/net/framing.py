"""Length-prefixed frames, the connection handshake and authenticated frames, with no I/O.

A frame is a 4-byte big-endian length followed by that many bytes. Every connection starts with a
three-step handshake that proves both ends hold the cluster's peer key without sending it, with a
fresh nonce from each side, so a recorded handshake replayed later is refused:

1. the dialling side sends its hello: `["dynastore", protocol version, cluster, node, host, port,
   nonce]`;
2. the listening side answers with its own hello and, for each peer key it accepts (two while a
   secret is rotated), a proof: a MAC of both hellos under that key;
3. the dialling side checks one proof against its own keys and answers with its proof under the key
   that matched.

Both sides then derive a session key from the key and both hellos. Every later frame is msgpack plus
a 16-byte keyed BLAKE2b MAC over a per-direction sequence number and the payload, so a frame can be
neither altered, nor replayed, reordered or dropped within the session without the link failing.

A message larger than a frame (a key whose siblings add up to more) travels as consecutive
*fragments*: frames whose payload starts with a byte no msgpack message starts with, then whether
more follow, then a piece of the message. The receiver puts them back together within a bound, so
no message is ever refused, and no link dropped, for the size of what it carries.

A node of a loopback-only cluster without a configured secret is *open*: when the keys do not match
(a node that has not joined yet holds a key of its own), two open nodes still talk, over an
*unproven* link that carries only the messages of a join. A node with a configured secret never
accepts or makes an unproven link. A peer of another cluster or protocol version is refused with a
reason that says so.
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
NONCE_BYTES = 16
PROOF_BYTES = 16
MAC_BYTES = 16
# At most this many proofs in a hello: the current key and one being rotated out.
PROOFS_MAX = 2


class FrameError(PeerError):
    """The byte stream is not a sequence of acceptable frames."""


class AuthError(FrameError):
    """The peer does not hold the cluster's key, or a frame's MAC does not verify."""


def encode_frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(HEADER_BYTES, "big") + payload


# The first byte of a fragment's payload: 0xc1 is never used by msgpack, so no message starts with it.
FRAGMENT = 0xC1
FRAGMENT_HEADER_BYTES = 2


def fragments(payload: bytes, piece_bytes_max: int) -> list[bytes]:
    """The payloads of the frames that carry one message: itself, or fragments of at most
    `piece_bytes_max` bytes each when it is longer."""
    if len(payload) <= piece_bytes_max:
        return [payload]
    step = piece_bytes_max - FRAGMENT_HEADER_BYTES
    assert step > 0, piece_bytes_max
    pieces = [payload[i : i + step] for i in range(0, len(payload), step)]
    return [bytes([FRAGMENT, i + 1 < len(pieces)]) + piece for i, piece in enumerate(pieces)]


class Reassembler:
    """Puts a message sent as fragments back together; refuses one longer than `message_bytes_max`."""

    def __init__(self, message_bytes_max: int) -> None:
        self.message_bytes_max = message_bytes_max
        self._pieces: list[bytes] = []
        self.held_bytes = 0

    def add(self, payload: bytes) -> bytes | None:
        """The message payload once complete; None while a fragmented one is still arriving."""
        if not payload or payload[0] != FRAGMENT:
            if self._pieces:
                raise FrameError("a message arrived in the middle of another's fragments")
            return payload
        if len(payload) < FRAGMENT_HEADER_BYTES or payload[1] not in (0, 1):
            raise FrameError("malformed fragment")
        if self.held_bytes + len(payload) - FRAGMENT_HEADER_BYTES > self.message_bytes_max:
            raise FrameError(f"a message of more than {self.message_bytes_max} bytes")
        self.held_bytes += len(payload) - FRAGMENT_HEADER_BYTES
        self._pieces.append(payload[FRAGMENT_HEADER_BYTES:])
        if payload[1]:
            return None
        message = b"".join(self._pieces)
        self._pieces, self.held_bytes = [], 0
        return message


def encode_payload(msg: Message) -> bytes:
    return msgpack.packb(messages.to_wire(msg), use_bin_type=True)  # type: ignore[no-any-return]


def encode_message(msg: Message) -> bytes:
    """A message as an unsealed frame (unproven links only)."""
    return encode_frame(encode_payload(msg))


def decode_message(payload: bytes) -> Message:
    try:
        data = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except Exception as exc:
        raise FrameError(f"undecodable frame: {exc}") from None
    return messages.from_wire(data)


class FrameDecoder:
    """Accumulates bytes and hands out complete frames; refuses a frame over the size limit.

    The limit applies to each frame as it is taken (`next`), so a caller may raise it between frames:
    the handshake's frames are held to a small limit, the frames after it to the link's.
    """

    def __init__(self, frame_bytes_max: int) -> None:
        self.frame_bytes_max = frame_bytes_max
        self._buffer = bytearray()

    def push(self, data: bytes) -> None:
        self._buffer += data
        # Even an incomplete frame must announce a length within the limit.
        if len(self._buffer) >= HEADER_BYTES:
            self._check(int.from_bytes(self._buffer[:HEADER_BYTES], "big"))

    def next(self) -> bytes | None:
        """The next complete frame, or None until more bytes arrive."""
        if len(self._buffer) < HEADER_BYTES:
            return None
        length = self._check(int.from_bytes(self._buffer[:HEADER_BYTES], "big"))
        if len(self._buffer) < HEADER_BYTES + length:
            return None
        frame = bytes(self._buffer[HEADER_BYTES : HEADER_BYTES + length])
        del self._buffer[: HEADER_BYTES + length]
        return frame

    def feed(self, data: bytes) -> list[bytes]:
        """Every complete frame so far (all under the current limit)."""
        self.push(data)
        frames: list[bytes] = []
        while (frame := self.next()) is not None:
            frames.append(frame)
        return frames

    def _check(self, length: int) -> int:
        if length > self.frame_bytes_max:
            raise FrameError(f"frame of {length} bytes exceeds the limit of {self.frame_bytes_max}")
        return length


# --- Handshake ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    cluster: str
    node: str
    host: str
    port: int
    nonce: bytes
    version: int = messages.PROTOCOL_VERSION

    def fields(self) -> list[Any]:
        return [MAGIC, self.version, self.cluster, self.node, self.host, self.port, self.nonce]


def encode_hello(hello: Hello, proofs: tuple[bytes, ...] = ()) -> bytes:
    """A hello frame; the listening side's carries its proofs."""
    return encode_frame(msgpack.packb([*hello.fields(), list(proofs)], use_bin_type=True))


def is_hello(payload: bytes) -> bool:
    """Whether `payload` is a dynastore hello at all (of any cluster or protocol version)."""
    try:
        data: Any = msgpack.unpackb(payload, raw=False)
    except Exception:
        return False
    return isinstance(data, list) and len(data) >= 2 and data[0] == MAGIC


def decode_hello(payload: bytes, cluster: str) -> tuple[Hello, tuple[bytes, ...]]:
    """Validate a peer's hello; raises FrameError saying why it is refused."""
    try:
        data: Any = msgpack.unpackb(payload, raw=False)
    except Exception:
        raise FrameError("handshake is not msgpack") from None
    if not (isinstance(data, list) and len(data) >= 2 and data[0] == MAGIC):
        raise FrameError("not a dynastore handshake")
    if data[1] != messages.PROTOCOL_VERSION:
        raise FrameError(
            f"peer speaks protocol version {data[1]!r}, this node {messages.PROTOCOL_VERSION}: "
            "every node of a cluster must run the same protocol version"
        )
    if len(data) != 8:
        raise FrameError("malformed handshake")
    _, version, their_cluster, node, host, port, nonce, proofs = data
    if not isinstance(their_cluster, str) or their_cluster != cluster:
        raise FrameError(f"peer belongs to cluster {their_cluster!r}, not {cluster!r}")
    if not isinstance(node, str) or not node or len(node) > 255:
        raise FrameError("handshake has no valid node name")
    if not isinstance(host, str) or not host or len(host) > 255:
        raise FrameError("handshake has no valid host")
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise FrameError("handshake has no valid port")
    if not isinstance(nonce, bytes) or len(nonce) != NONCE_BYTES:
        raise FrameError("handshake has no valid nonce")
    if not (
        isinstance(proofs, list)
        and len(proofs) <= PROOFS_MAX
        and all(isinstance(p, bytes) and len(p) == PROOF_BYTES for p in proofs)
    ):
        raise FrameError("handshake has malformed proofs")
    return Hello(their_cluster, node, host, port, nonce, version), tuple(proofs)


def encode_finish(proof: bytes) -> bytes:
    """The dialling side's last handshake step: its proof (empty: an unproven link between open nodes)."""
    return encode_frame(msgpack.packb([MAGIC, proof], use_bin_type=True))


def decode_finish(payload: bytes) -> bytes:
    try:
        data: Any = msgpack.unpackb(payload, raw=False)
    except Exception:
        raise FrameError("handshake is not msgpack") from None
    if not (isinstance(data, list) and len(data) == 2 and data[0] == MAGIC and isinstance(data[1], bytes)):
        raise FrameError("malformed handshake finish")
    if len(data[1]) not in (0, PROOF_BYTES):
        raise FrameError("malformed handshake proof")
    return data[1]


def _transcript(client: Hello, server: Hello) -> bytes:
    return msgpack.packb([client.fields(), server.fields()], use_bin_type=True)  # type: ignore[no-any-return]


def proof(key: bytes, role: str, client: Hello, server: Hello) -> bytes:
    """What one side shows to prove it holds `key`, bound to both nonces (no replay)."""
    return hmac.new(key, role.encode() + _transcript(client, server), hashlib.sha256).digest()[:PROOF_BYTES]


def matching(keys: tuple[bytes, ...], role: str, client: Hello, server: Hello, given: bytes) -> bytes | None:
    """The first of `keys` under which `given` is the proof `role` must show, if any."""
    for key in keys:
        if hmac.compare_digest(given, proof(key, role, client, server)):
            return key
    return None


def session_key(key: bytes, client: Hello, server: Hello) -> bytes:
    return hmac.new(key, b"session" + _transcript(client, server), hashlib.sha256).digest()


# --- Authenticated frames -------------------------------------------------------------------------------


class Sealer:
    """Seals the frames one side sends: payload + MAC(session key, direction, sequence number, payload)."""

    def __init__(self, key: bytes, direction: bytes) -> None:
        self._key = key
        self._direction = direction
        self._seq = 0

    def seal(self, payload: bytes) -> bytes:
        mac = hashlib.blake2b(
            self._direction + self._seq.to_bytes(8, "big") + payload, key=self._key, digest_size=MAC_BYTES
        ).digest()
        self._seq += 1
        return encode_frame(payload + mac)


class Opener:
    """Checks the frames the other side sealed, in order; a frame altered, replayed or skipped fails."""

    def __init__(self, key: bytes, direction: bytes) -> None:
        self._key = key
        self._direction = direction
        self._seq = 0

    def open(self, frame: bytes) -> bytes:
        if len(frame) < MAC_BYTES:
            raise AuthError("frame too short for its MAC")
        payload, mac = frame[:-MAC_BYTES], frame[-MAC_BYTES:]
        expected = hashlib.blake2b(
            self._direction + self._seq.to_bytes(8, "big") + payload, key=self._key, digest_size=MAC_BYTES
        ).digest()
        if not hmac.compare_digest(mac, expected):
            raise AuthError("frame MAC does not verify (altered, replayed or out of order)")
        self._seq += 1
        return payload


# Frames go from the dialling side to the listening side on a link; only handshakes go back.
TO_LISTENER = b">"
