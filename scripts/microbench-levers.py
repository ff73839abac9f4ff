"""CPU per call of the functions the saturation levers touched, in this process (thread CPU time, best
of 5), so that a lever too small for the noise of a shared machine's A/B runs still has a figure.

    PYTHONPATH=<checkout>/src python scripts/microbench-levers.py

Run it against the checkouts before and after a change and compare the lines.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from dynastore.core.failure import PhiAccrual
from dynastore.core.secret import is_loopback
from dynastore.net.framing import FrameDecoder, encode_frame
from dynastore.storage import open_engine
from dynastore.storage.base import Op

REPEATS = 5


def best_us(run: Callable[[int], None], calls: int) -> float:
    """The least thread CPU per call, in µs, over REPEATS runs of `calls` calls."""
    times = []
    for _ in range(REPEATS):
        started = time.thread_time()
        run(calls)
        times.append((time.thread_time() - started) / calls * 1e6)
    return min(times)


def decoder(frames: int, calls: int) -> float:
    read = b"".join(encode_frame(os.urandom(1200)) for _ in range(frames))

    def run(n: int) -> None:
        d = FrameDecoder(1 << 20)
        for _ in range(n):
            d.feed(read)

    return best_us(run, calls) / frames


def loop_lookups(n: int) -> None:
    async def lookups() -> None:
        for _ in range(n):
            asyncio.get_running_loop()

    asyncio.run(lookups())


def phi(asks_per_interval: int) -> float:
    """phi as a node asks it: a window of 100, a new interval each millisecond, a few asks in each."""

    def run(beats: int) -> None:
        det = PhiAccrual(100, 100.0, 0.0, 1000.0)
        now = 1_000_000
        det.heartbeat(now)
        for _ in range(beats):
            now += 1
            det.heartbeat(now)
            for _ in range(asks_per_interval):
                det.phi(now)

    return best_us(run, 20_000) / asks_per_interval


def main() -> None:
    print(f"FrameDecoder: {decoder(40, 2000):.2f} µs per 1.2 KB frame (40 frames per read)")

    def loopbacks(n: int) -> None:
        for _ in range(n):
            is_loopback("127.0.0.1")

    print(f"is_loopback('127.0.0.1'): {best_us(loopbacks, 100_000):.3f} µs")
    print(f"asyncio.get_running_loop(): {best_us(loop_lookups, 100_000):.3f} µs")
    print(f"PhiAccrual.phi, 3 asks per new interval (its heartbeat included): {phi(3):.2f} µs")
    with tempfile.TemporaryDirectory() as tmp:
        engine = open_engine("lmdb", Path(tmp) / "store", durable=False)
        try:
            engine.write([Op("data", b"k%d" % i, os.urandom(1000)) for i in range(1000)])

            def gets(n: int) -> None:
                for i in range(n):
                    engine.get("data", b"k%d" % (i % 1000))

            print(f"LmdbEngine.get of a 1 KB value: {best_us(gets, 50_000):.2f} µs")
        finally:
            engine.close()


if __name__ == "__main__":
    main()
