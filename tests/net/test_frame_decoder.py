"""The frame decoder hands out exactly the frames that were sent, in order, however the bytes are cut
into reads, and refuses a frame over its limit wherever in a read that frame starts."""

from __future__ import annotations

import random

import pytest

from dynastore.net.framing import FrameDecoder, FrameError, encode_frame


def test_frames_come_out_whole_and_in_order_whatever_the_reads() -> None:
    rng = random.Random(20)
    frames = [bytes(rng.randrange(256) for _ in range(rng.randrange(0, 300))) for _ in range(200)]
    stream = b"".join(encode_frame(f) for f in frames)
    for _ in range(20):
        decoder = FrameDecoder(1 << 16)
        got: list[bytes] = []
        at = 0
        while at < len(stream):
            step = rng.choice((1, 3, 4, 5, 64, 1000, 5000))
            got += decoder.feed(stream[at : at + step])
            at += step
        assert got == frames
        assert all(type(frame) is bytes for frame in got)
        assert decoder.next() is None


def test_a_read_of_many_frames_yields_them_one_by_one_and_then_waits_for_the_rest() -> None:
    decoder = FrameDecoder(1 << 16)
    stream = b"".join(encode_frame(b"%d" % i) for i in range(50)) + encode_frame(b"last")[:6]
    decoder.push(stream)
    assert [decoder.next() for _ in range(50)] == [b"%d" % i for i in range(50)]
    assert decoder.next() is None
    decoder.push(encode_frame(b"last")[6:])
    assert decoder.next() == b"last"
    assert decoder.next() is None


def test_a_frame_over_the_limit_is_refused_when_it_comes_after_others_in_the_same_read() -> None:
    decoder = FrameDecoder(100)
    decoder.push(encode_frame(b"a" * 10) + (1000).to_bytes(4, "big") + b"x")
    assert decoder.next() == b"a" * 10
    with pytest.raises(FrameError, match="exceeds the limit"):
        decoder.next()


def test_a_limit_raised_between_frames_applies_to_the_frames_after() -> None:
    decoder = FrameDecoder(10)
    decoder.push(encode_frame(b"hello") + encode_frame(b"b" * 50))
    assert decoder.next() == b"hello"
    decoder.frame_bytes_max = 100
    assert decoder.next() == b"b" * 50
