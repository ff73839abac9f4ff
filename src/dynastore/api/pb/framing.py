"""Riak's Protocol Buffers framing, pure: a 4-byte big-endian length that covers what follows, one byte of
message code, then the message's protobuf body.

The decoder only buffers bytes and hands back whole frames; it never touches a socket. A length
beyond the limit it is given, or a length of zero (no room for the code), is the peer's fault and
ends the stream (`FrameError`): there is no way to find the next frame without reading past what
the limit allows. Messages are decoded elsewhere (codec in server.py).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

HEADER: Final = struct.Struct(">IB")
LENGTH_BYTES: Final = 4


class FrameError(ValueError):
    """The stream is not well framed (the connection cannot go on)."""


@dataclass(frozen=True, slots=True)
class Frame:
    code: int
    body: bytes


def encode(code: int, body: bytes = b"") -> bytes:
    if not 0 <= code <= 255:
        raise ValueError(f"message code {code} is not a byte")
    return HEADER.pack(len(body) + 1, code) + body


class Decoder:
    """Feed it bytes as they arrive; it returns the frames completed by them, in order. It holds at most
    one incomplete frame (at most `frame_bytes_max` plus its length) and what one feed brought beyond
    the frames it completed."""

    def __init__(self, frame_bytes_max: int) -> None:
        if frame_bytes_max < 1:
            raise ValueError("frame_bytes_max must be positive")
        self.frame_bytes_max = frame_bytes_max
        self._buffer = bytearray()

    @property
    def buffered_bytes(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Frame]:
        buffer = self._buffer
        buffer += data
        frames: list[Frame] = []
        start = 0
        while len(buffer) - start >= LENGTH_BYTES:
            length = int.from_bytes(buffer[start : start + LENGTH_BYTES], "big")
            if length == 0:
                raise FrameError("a frame of length 0 has no message code")
            if length > self.frame_bytes_max:
                raise FrameError(
                    f"a frame of {length} bytes exceeds the limit of {self.frame_bytes_max} bytes (pb_frame_bytes_max)"
                )
            end = start + LENGTH_BYTES + length
            if len(buffer) < end:
                break
            frames.append(Frame(buffer[start + LENGTH_BYTES], bytes(buffer[start + LENGTH_BYTES + 1 : end])))
            start = end
        if start:
            del buffer[:start]
        return frames
