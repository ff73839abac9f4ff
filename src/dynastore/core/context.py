"""The opaque causal context handed to clients (`X-Riak-Vclock`): compact binary, base64, authenticated.

Layout before base64: `payload | mac`, where payload is
    version (1 byte) | actors | vector | extra dots | coordinator
with every count and integer as an unsigned LEB128 varint and every string length-prefixed. The MAC
(BLAKE2b, 10 bytes) is keyed by the cluster secret and covers the bucket and key as well as the payload,
so a context that was corrupted, forged without the secret, or taken from another key is rejected
with ContextError before it can take part in a merge. Decoding never raises anything else.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac

from dynastore.core.versions import ACTOR_BYTES_MAX, COUNTER_MAX, Context, Dot

FORMAT_VERSION = 1
MAC_BYTES = 10
ENCODED_BYTES_MAX = 16 * 1024
ACTORS_MAX = 64
COORDINATOR_BYTES_MAX = 255


class ContextError(ValueError):
    """A client context that cannot be used: the message says why, in words fit for an HTTP 400."""


@functools.lru_cache(maxsize=8)
def _mac_key(secret: bytes) -> bytes:
    return hashlib.blake2b(secret, digest_size=32).digest()


def _mac(secret: bytes, bucket: bytes, key: bytes, payload: bytes) -> bytes:
    h = hashlib.blake2b(digest_size=MAC_BYTES, key=_mac_key(secret))
    h.update(len(bucket).to_bytes(4, "big"))
    h.update(bucket)
    h.update(len(key).to_bytes(4, "big"))
    h.update(key)
    h.update(payload)
    return h.digest()


def _varint(value: int) -> bytes:
    assert value >= 0
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode(context: Context, secret: bytes, bucket: bytes, key: bytes) -> str:
    actors = sorted({a for a, _ in context.vector} | {d.actor for d in context.dots})
    index = {a: i for i, a in enumerate(actors)}
    out = bytearray([FORMAT_VERSION])
    out += _varint(len(actors))
    for actor in actors:
        out += _varint(len(actor)) + actor
    out += _varint(len(context.vector))
    for actor, counter in context.vector:
        out += _varint(index[actor]) + _varint(counter)
    dots = sorted(context.dots)
    out += _varint(len(dots))
    for dot in dots:
        out += _varint(index[dot.actor]) + _varint(dot.counter)
    coordinator = (context.coordinator or "").encode()
    out += _varint(len(coordinator)) + coordinator
    payload = bytes(out)
    return base64.b64encode(payload + _mac(secret, bucket, key, payload)).decode("ascii")


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def varint(self, limit: int, what: str) -> int:
        value = 0
        for shift in range(0, 70, 7):
            if self.pos >= len(self.data):
                raise ContextError(f"vclock ends inside {what}")
            byte = self.data[self.pos]
            self.pos += 1
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                if value > limit:
                    raise ContextError(f"vclock {what} out of range")
                return value
        raise ContextError(f"vclock {what} is not a valid varint")

    def raw(self, length: int, what: str) -> bytes:
        if self.pos + length > len(self.data):
            raise ContextError(f"vclock ends inside {what}")
        chunk = self.data[self.pos : self.pos + length]
        self.pos += length
        return chunk


def decode(text: str | bytes, secret: bytes, bucket: bytes, key: bytes, extra_dots_max: int = 16) -> Context:
    """Parse and authenticate a client context; raises ContextError, and only that, on any problem."""
    if isinstance(text, str):
        try:
            text = text.strip().encode("ascii")
        except UnicodeEncodeError:
            raise ContextError("vclock is not base64") from None
    if len(text) > ENCODED_BYTES_MAX:
        raise ContextError("vclock is too long")
    try:
        blob = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ContextError("vclock is not base64") from None
    if len(blob) < 1 + MAC_BYTES:
        raise ContextError("vclock is too short")
    payload, mac = blob[:-MAC_BYTES], blob[-MAC_BYTES:]
    if not hmac.compare_digest(mac, _mac(secret, bucket, key, payload)):
        raise ContextError("vclock does not belong to this bucket and key, or was altered")
    return _parse(payload, extra_dots_max)


def coordinator_hint(text: str) -> str | None:
    """The node a context names as the fastest replica of the read it came from, read without checking
    its MAC (None when it names none or does not parse). Only a routing hint for a client, which does not
    hold the cluster key: the node the write goes to verifies the whole context before using any of it."""
    try:
        blob = base64.b64decode(text.strip().encode("ascii"), validate=True)
        if len(text) > ENCODED_BYTES_MAX or len(blob) < 1 + MAC_BYTES:
            return None
        return _parse(blob[:-MAC_BYTES], ACTORS_MAX).coordinator
    except (ContextError, binascii.Error, ValueError):
        return None


def _parse(payload: bytes, extra_dots_max: int) -> Context:
    reader = _Reader(payload)
    version = reader.raw(1, "version")[0]
    if version != FORMAT_VERSION:
        raise ContextError(f"unknown vclock format {version}")
    actor_count = reader.varint(ACTORS_MAX, "actor count")
    actors: list[bytes] = []
    for _ in range(actor_count):
        length = reader.varint(ACTOR_BYTES_MAX, "actor length")
        if length == 0:
            raise ContextError("vclock has an empty actor")
        actors.append(reader.raw(length, "actor"))
    if len(set(actors)) != len(actors):
        raise ContextError("vclock repeats an actor")
    vector: dict[bytes, int] = {}
    for _ in range(reader.varint(ACTORS_MAX, "entry count")):
        actor = actors[_index(reader, actors)]
        counter = reader.varint(COUNTER_MAX, "counter")
        if counter == 0 or actor in vector:
            raise ContextError("vclock has a malformed entry")
        vector[actor] = counter
    dots: set[Dot] = set()
    for _ in range(reader.varint(extra_dots_max, "dot count")):
        actor = actors[_index(reader, actors)]
        counter = reader.varint(COUNTER_MAX, "dot counter")
        if counter == 0:
            raise ContextError("vclock has a malformed dot")
        dots.add(Dot(actor, counter))
    coordinator_bytes = reader.raw(reader.varint(COORDINATOR_BYTES_MAX, "coordinator length"), "coordinator")
    if reader.pos != len(payload):
        raise ContextError("vclock has trailing bytes")
    try:
        coordinator = coordinator_bytes.decode("utf-8") or None
    except UnicodeDecodeError:
        raise ContextError("vclock coordinator is not UTF-8") from None
    return Context(tuple(sorted(vector.items())), frozenset(dots), coordinator)


def _index(reader: _Reader, actors: list[bytes]) -> int:
    if not actors:
        raise ContextError("vclock entry refers to no actor")
    return reader.varint(len(actors) - 1, "actor index")
