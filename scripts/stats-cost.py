"""What one `/stats` and one `/metrics` answer costs the event loop when the last minute holds many
requests: a node is started in this process, its latency records are filled as a minute of heavy
traffic would fill them, and the handlers are timed (the median of many calls).

    PYTHONPATH=src .venv/bin/python scripts/stats-cost.py [--samples 200000] [--calls 30]

`--samples` per operation (get and put): 200,000 is the bound of the sample window that `/stats`
sorted before the histograms. The background controller's own window (the last 10 s, at most 50,000
samples) is filled too, as the same traffic would. Works on a tree from before `/metrics` as well (it
then times `/stats` only), so the same command measures both sides of the change.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from dynastore.api.http import Api
from dynastore.localcluster import free_port
from dynastore.runtime.node import NodeConfig, NodeRuntime
from dynastore.settings import Settings

CONTROLLER_SAMPLES = 50_000


def fill(runtime: NodeRuntime, samples: int) -> None:
    rng = random.Random(1)
    now_s = time.monotonic()
    core = runtime.core
    assert core is not None
    now_ms = runtime.clock.now_ms()
    for op in ("get", "put"):
        for i in range(samples):
            micros = int(rng.lognormvariate(7.5, 0.6))  # about 2 ms, with a tail
            at = now_s - 59.0 + 59.0 * i / samples
            metrics = getattr(runtime, "metrics", None)
            if metrics is not None:
                metrics.coordinated(op, "ok", micros * 1000, at)
            else:
                runtime.latency[op].record(at, micros)  # type: ignore[attr-defined]
    for i in range(CONTROLLER_SAMPLES):
        core.observe_latency(rng.lognormvariate(0.7, 0.6), now_ms - 9_000 + 9_000 * i // CONTROLLER_SAMPLES)


def timed(calls: int, fn: Any) -> float:
    """The median wall time of one call, in microseconds."""
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1e6)
    return statistics.median(times)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200_000)
    parser.add_argument("--calls", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = NodeConfig("node0", "127.0.0.1", free_port(), free_port(), Path(tmp) / "node0")
        runtime = NodeRuntime(config, Settings())
        await runtime.start()
        try:
            api = Api(runtime)
            fill(runtime, args.samples)

            def stats() -> None:
                # The handler's work: the node's figures, encoded as the JSON body.
                json.dumps(runtime.stats())

            core = runtime.core
            assert core is not None
            print(f"samples per op: {args.samples}; median of {args.calls} calls")
            # First, while the controller's 10 s window is full (slow /stats calls would let it empty).
            snapshot_us = timed(args.calls, lambda: core.stats_snapshot(runtime.clock.now_ms()))
            print(f"/stats   {timed(args.calls, stats):10.0f} us")
            print(f"  of which core.stats_snapshot {snapshot_us:10.0f} us (with the controller's window full)")
            metrics = getattr(api, "metrics", None)
            if metrics is not None:
                body = metrics.render()
                print(f"/metrics {timed(args.calls, metrics.render):10.0f} us ({len(body)} bytes)")
        finally:
            runtime.stopping.set()
            await runtime.stop()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
