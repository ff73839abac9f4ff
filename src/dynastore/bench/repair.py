"""Anti-entropy measurements, two of them:

dynastore bench repair traffic [--keys 100000] [--differences 10 100 1000]
    Two replicas (simulated, exact byte counts of every anti-entropy message) that differ in D keys
    out of K: bytes exchanged until they converge, for each D.

dynastore bench repair pacing [--keys 20000] [--rate 300] [--target-ms 25] [--runs 1]
    A real 3-node cluster under a constant client load (an open-loop schedule of reads and
    writes at --rate per second); one node loses its data directory and is rebuilt by anti-entropy
    while the load runs. Reports the foreground p99 per second during the repair and how long
    the repair took, with the background controller at its target and with it effectively off,
    alternating the two --runs times (a shared machine is noisy: compare medians).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from dynastore.localcluster import LocalCluster

# --- Traffic (simulated) -----------------------------------------------------------------------------


def traffic(keys: int, differences: list[int], segments: int) -> list[tuple[int, int, float]]:
    from dynastore.core import keys as keylayout
    from dynastore.core.objects import Content
    from dynastore.core.versions import Context, Dot, update
    from dynastore.settings import Settings
    from dynastore.sim.cluster import SimCluster

    settings = Settings(
        ring_size=16,
        n_val=2,
        anti_entropy_interval_ms=2_000,
        anti_entropy_segments_count=segments,
        hinted_handoff_enabled=False,
        read_repair_enabled=False,
    )
    out = []
    for count in differences:
        c = SimCluster(2, settings, seed=count)
        for name in ("n0", "n1"):
            core = c.core(name)
            for i in range(keys):
                key = b"k%07d" % i
                obj = update(None, Context(), Dot(b"writer#1", i + 1), Content(b"v" * 100, last_modified_us=1), 1)
                core._merge_into_data(b"b", key, obj, False, c.now_ms)
            c._flush(name)
        c.settle(3_000)
        idle = sum(c.core(n).aae.stats.bytes_sent for n in c.nodes)
        dropped = [b"k%07d" % i for i in range(0, keys, max(1, keys // count))][:count]
        core = c.core("n1")
        for key in dropped:
            core._delete_data(keylayout.encode(core.ring.partition_of(b"b", key), b"b", key))
        c._flush("n1")
        started = c.now_ms

        def repaired(sim: SimCluster = c, missing: list[bytes] = dropped) -> bool:
            return all(sim.core("n1").local_copy(b"b", k) is not None for k in missing)

        c.run_until(repaired, 600_000)
        converge_s = (c.now_ms - started) / 1000
        c.settle(2_000)
        exchanged = sum(c.core(n).aae.stats.bytes_sent for n in c.nodes) - idle
        out.append((count, exchanged, converge_s))
    return out


# --- Pacing (real processes) --------------------------------------------------------------------------


async def _load(
    urls: list[str], rate: float, stop: asyncio.Event, samples: list[tuple[float, float]], keys: int
) -> None:
    import aiohttp

    rng = random.Random(1)
    interval = 1.0 / rate
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        tasks: set[asyncio.Task[None]] = set()
        next_at = time.perf_counter()

        async def one(intended: float) -> None:
            url = rng.choice(urls) + f"/buckets/bench/keys/k{rng.randrange(keys)}"
            try:
                if rng.random() < 0.5:
                    async with session.get(url) as resp:
                        await resp.read()
                else:
                    async with session.put(url, data=b"v" * 1000, headers={"Content-Type": "text/plain"}) as resp:
                        await resp.read()
            except (aiohttp.ClientError, TimeoutError):
                pass
            # Latency from the intended start (open loop): a stalled server is charged its full delay.
            samples.append((time.monotonic(), (time.perf_counter() - intended) * 1000))

        while not stop.is_set():
            now = time.perf_counter()
            if now < next_at:
                await asyncio.sleep(next_at - now)
            task = asyncio.get_running_loop().create_task(one(next_at))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            next_at += interval
        await asyncio.gather(*tasks, return_exceptions=True)


def pacing(keys: int, rate: float, target_ms: float, label: str, report_ms: float | None = None) -> dict[str, Any]:
    """One run; `report_ms` is the p99 the seconds are judged against (default: the controller's target)."""
    report_ms = target_ms if report_ms is None else report_ms
    with tempfile.TemporaryDirectory(prefix="dynastore-pacing-") as tmp:
        overrides = (
            "anti_entropy_interval_ms=1000",
            f"background_latency_target_ms={target_ms}",
            "read_repair_enabled=false",
        )
        cluster = LocalCluster(Path(tmp), 3, overrides=overrides)
        try:
            cluster.start()
            cluster.wait_ready(60)
            asyncio.run(_fill([n.url for n in cluster.nodes], keys))
            wiped = cluster[2]
            samples: list[tuple[float, float]] = []

            baseline: list[tuple[float, float]] = []

            # The baseline: the same load on the whole cluster, once the fill's writes have settled.
            async def measure_baseline() -> None:
                await asyncio.sleep(5.0)
                stop = asyncio.Event()
                load = asyncio.create_task(_load([n.url for n in cluster.nodes[:2]], rate, stop, baseline, keys))
                await asyncio.sleep(10.0)
                stop.set()
                await load

            asyncio.run(measure_baseline())

            async def run() -> float:
                stop = asyncio.Event()
                load = asyncio.create_task(_load([n.url for n in cluster.nodes[:2]], rate, stop, samples, keys))
                await asyncio.sleep(3.0)
                await asyncio.to_thread(wiped.stop)
                shutil.rmtree(wiped.data_dir)
                started = time.monotonic()
                await asyncio.to_thread(wiped.start)
                while True:
                    await asyncio.sleep(0.5)
                    try:
                        stored = await asyncio.to_thread(lambda: cluster.stats(wiped)["keys_stored"])
                    except Exception:
                        continue
                    if stored >= keys or time.monotonic() - started > 600:
                        break
                duration = time.monotonic() - started
                stop.set()
                await load
                return duration

            duration = asyncio.run(run())
            # Every node's controller: the responders' are the ones that see the client load.
            node_stats = [cluster.stats(node) for node in cluster.nodes]
        finally:
            cluster.close()
    per_second: dict[int, list[float]] = {}
    start = samples[0][0] if samples else 0.0
    for t, latency in samples:
        per_second.setdefault(int(t - start), []).append(latency)
    p99s = [sorted(v)[min(len(v) - 1, int(0.99 * len(v)))] for _, v in sorted(per_second.items()) if len(v) > 10]
    all_latencies = sorted(latency for _, latency in samples)
    base = sorted(latency for _, latency in baseline)
    return {
        "label": label,
        "baseline_p99_ms": round(base[int(0.99 * len(base))], 1) if base else None,
        "target_ms": target_ms,
        "repair_s": round(duration, 1),
        "requests": len(samples),
        "p99_overall_ms": round(all_latencies[int(0.99 * len(all_latencies))], 1) if all_latencies else None,
        "p99_per_second_median_ms": round(statistics.median(p99s), 1) if p99s else None,
        "p99_per_second_max_ms": round(max(p99s), 1) if p99s else None,
        "seconds_over_target": sum(1 for p in p99s if p > report_ms),
        "seconds": len(p99s),
        "background_deferred": sum(st["background_deferred_total"] for st in node_stats),
        "background_slowdowns": sum(st["background_slowdowns_total"] for st in node_stats),
        "aae_busy_replies": sum(st["aae_busy_replies_total"] for st in node_stats),
        "limit_ms_max": max(st["background_latency_limit_ms"] for st in node_stats),
    }


async def _fill(urls: list[str], keys: int) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        sem = asyncio.Semaphore(32)

        async def put(i: int) -> None:
            async with (
                sem,
                session.put(
                    urls[i % len(urls)] + f"/buckets/bench/keys/k{i}?w=3",
                    data=b"v" * 1000,
                    headers={"Content-Type": "text/plain"},
                ) as resp,
            ):
                await resp.read()

        await asyncio.gather(*(put(i) for i in range(keys)))


def main(argv: list[str] | None = None) -> int:
    # The whole docstring is the help: it names both measurements and their options.
    parser = argparse.ArgumentParser(
        prog="dynastore bench repair", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="what", required=True, metavar="{traffic,pacing}")
    t = sub.add_parser("traffic", help="bytes exchanged per difference (simulated replicas)")
    t.add_argument("--keys", type=int, default=100_000, help="keys per replica (default 100000)")
    t.add_argument(
        "--differences", type=int, nargs="+", default=[10, 100, 1000], help="differing keys D (default 10 100 1000)"
    )
    t.add_argument("--segments", type=int, default=1024, help="segments per Merkle tree (default 1024)")
    p = sub.add_parser("pacing", help="foreground p99 while a node is rebuilt (a real 3-node cluster)")
    p.add_argument("--keys", type=int, default=20_000, help="keys loaded (default 20000)")
    p.add_argument("--rate", type=float, default=300.0, help="client requests per second (default 300)")
    p.add_argument("--target-ms", type=float, default=25.0, help="background controller's p99 target (default 25)")
    p.add_argument("--runs", type=int, default=1, help="alternate controller on/off this many times (default 1)")
    args = parser.parse_args(argv)
    if args.what == "pacing" and (args.runs < 1 or args.keys < 1 or args.rate <= 0 or args.target_ms <= 0):
        parser.error("--runs, --keys, --rate and --target-ms must be positive")
    if args.what == "traffic":
        print(f"{'differing keys':>15} {'bytes exchanged':>16} {'bytes per difference':>21} {'converged (sim s)':>18}")
        for count, exchanged, seconds in traffic(args.keys, args.differences, args.segments):
            print(f"{count:>15} {exchanged:>16} {exchanged // max(1, count):>21} {seconds:>18.1f}")
        print(f"({args.keys} keys per replica, {args.segments} segments per tree)")
        return 0
    rows = []
    for run in range(1, args.runs + 1):
        for row in (
            pacing(args.keys, args.rate, args.target_ms, "controller on"),
            pacing(args.keys, args.rate, 1_000_000.0, "controller off", report_ms=args.target_ms),
        ):
            rows.append(row)
            print(
                f"run {run} {row['label']:<15} baseline p99 {row['baseline_p99_ms']} ms; "
                f"during repair ({row['repair_s']} s): p99 overall {row['p99_overall_ms']} ms, "
                f"p99 per second: median {row['p99_per_second_median_ms']} ms, "
                f"max {row['p99_per_second_max_ms']} ms, "
                f"{row['seconds_over_target']}/{row['seconds']} s over {args.target_ms} ms  "
                f"(all nodes: deferred {row['background_deferred']}, slowdowns {row['background_slowdowns']}, "
                f"busy replies {row['aae_busy_replies']}, highest limit at the end {row['limit_ms_max']} ms)",
                flush=True,
            )
    if args.runs > 1:
        print(f"medians of {args.runs} runs:")
        for label in ("controller on", "controller off"):
            mine = [r for r in rows if r["label"] == label]

            def median(field: str, rows: list[dict[str, Any]] = mine) -> float:
                return round(statistics.median(float(r[field]) for r in rows if r[field] is not None), 1)

            print(
                f"  {label:<15} baseline p99 {median('baseline_p99_ms')} ms; repair {median('repair_s')} s; "
                f"p99 during repair {median('p99_overall_ms')} ms, per-second median "
                f"{median('p99_per_second_median_ms')} ms; seconds over target "
                f"{sum(r['seconds_over_target'] for r in mine)}/{sum(r['seconds'] for r in mine)}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
