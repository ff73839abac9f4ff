"""What secondary indexes cost, on a local cluster (LMDB, loopback, n_val 3): the latency of a write
with two index entries beside one without (alternating rounds), and the time of queries of several
sizes, with all nodes up and with one stopped, each over HTTP and over the PB API in alternating
runs. On 3 nodes every node holds every partition and a query is answered by its coordinator alone;
on 5, a coverage query asks other nodes too.

    PYTHONPATH=src .venv/bin/python scripts/measure-2i.py [KEYS] [NODES]
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from dynastore.client.http import HttpClient, IndexResult
from dynastore.client.pb import PbClient
from dynastore.localcluster import LocalCluster

FAST = (
    "gossip_interval_ms=200",
    "heartbeat_interval_ms=200",
    "phi_acceptable_pause_ms=600",
    "unreachable_retry_ms=300",
)


def ms(samples: list[float]) -> str:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"p50 {statistics.median(ordered) * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms"


async def writes(client: HttpClient, keys: int) -> None:
    rounds = 4
    per_round = keys // (2 * rounds)
    timings: dict[str, list[float]] = {"with 2 index entries": [], "without": []}
    n = 0
    for _ in range(rounds):
        for label in timings:
            for _ in range(per_round):
                indexes = {"grp_bin": [f"g{n % 10}"], "n_int": [n]} if label != "without" else None
                started = time.perf_counter()
                await client.put("idx" if indexes else "plain", f"k{n:06d}", b"x" * 100, indexes=indexes)
                timings[label].append(time.perf_counter() - started)
                n += 1
    for label, samples in timings.items():
        print(f"put {label}: {ms(samples)} ({len(samples)} writes, alternating rounds of {per_round})")


async def queries(client: HttpClient, pb: PbClient, keys: int, label: str) -> None:
    half = keys // 2
    cases = [
        ("exact, 1 key", ("n_int", 7, None, None)),
        (f"exact, {half // 10} keys", ("grp_bin", "g3", None, None)),
        ("range, first page of 100", ("n_int", 0, 10**9, 100)),
        (f"range, all {half} keys", ("n_int", 0, 10**9, None)),
        (f"$bucket, all {half} keys", ("$bucket", "idx", None, None)),
    ]
    for name, (field, low, high, max_results) in cases:
        samples: dict[str, list[float]] = {"http": [], "pb": []}
        count = 0
        for _ in range(5):
            for api, asker in (("http", client), ("pb", pb)):
                started = time.perf_counter()
                page: IndexResult = await asker.index(
                    "idx", field, low, high, max_results=max_results, timeout_ms=30_000
                )
                samples[api].append(time.perf_counter() - started)
                count = len(page.results)
        for api, taken in samples.items():
            print(f"{label}: {name} over {api}: {ms(taken)} over 5 runs ({count} results)")


async def main(keys: int, nodes: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cluster = LocalCluster(Path(tmp) / "c", nodes, overrides=FAST)
        try:
            cluster.start()
            cluster.wait_ready(60)
            pb = PbClient(cluster[0].host, cluster[0].pb_port, timeout_s=60)
            try:
                async with HttpClient([node.url for node in cluster.nodes]) as client:
                    await writes(client, keys)
                # Both APIs asked at the same node, so that they differ only in the protocol.
                async with HttpClient([cluster[0].url]) as client:
                    await queries(client, pb, keys, f"{nodes} nodes up")
                cluster[nodes - 1].stop()
                async with HttpClient([cluster[0].url]) as client:
                    await queries(client, pb, keys, f"1 of {nodes} stopped")
            finally:
                await pb.close()
        finally:
            cluster.close()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 4000, int(sys.argv[2]) if len(sys.argv) > 2 else 3))
