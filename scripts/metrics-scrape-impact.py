"""Does scraping /metrics every second change what clients see? Runs `dynastore bench ycsb` against one
local 3-node cluster, alternating runs without and with a scraper that fetches every node's /metrics
once a second (as a Prometheus with a 1 s scrape interval would), and prints each run's client p99s
and what the scrapes cost.

    .venv/bin/python scripts/metrics-scrape-impact.py [--pairs 2] [--duration 60] [--workload A]

The runs go off, on, off, on, ... (or on, off, ... with --start-with on) on the same cluster and data,
so that drift of a busy machine falls on both sides alike. The verdict compares the difference between
the mean p99 with and without the scraper with the run-to-run noise (the spread of p99 among runs of
the same kind). Everything runs on loopback and stops by itself; the cluster is stopped at the end,
even on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from dynastore.localcluster import LocalCluster

SCRAPE_TIMEOUT_S = 5.0


class Scraper:
    """Fetches every node's /metrics once per interval on a thread, timing each fetch."""

    def __init__(self, urls: list[str], interval_s: float) -> None:
        self.urls = urls
        self.interval_s = interval_s
        self.times_ms: list[float] = []
        self.failures = 0
        self.bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Scraper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(SCRAPE_TIMEOUT_S * len(self.urls) + self.interval_s)

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            for url in self.urls:
                started = time.perf_counter()
                try:
                    with urllib.request.urlopen(f"{url}/metrics", timeout=SCRAPE_TIMEOUT_S) as response:
                        self.bytes = len(response.read())
                    self.times_ms.append((time.perf_counter() - started) * 1000)
                except OSError:
                    self.failures += 1
            next_at += self.interval_s
            self._stop.wait(max(0.0, next_at - time.monotonic()))


def bench(urls: list[str], args: argparse.Namespace, out: Path) -> dict[str, Any]:
    command = [sys.executable, "-m", "dynastore", "bench", "ycsb", "--target", "dynastore-http"]
    for url in urls:
        command += ["--url", url]
    command += [
        "--workload", args.workload, "--duration", str(args.duration), "--warmup", str(args.warmup),
        "--records", str(args.records), "--concurrency", str(args.concurrency), "--no-core-check",
        "--json", str(out),
    ]  # fmt: skip
    timeout_s = args.duration * 4 + 600
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    if result.returncode != 0:
        raise SystemExit(f"bench ycsb failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
    data = json.loads(out.read_text())
    runs = [r for r in data["runs"] if r["workload"] == args.workload]
    if not runs:
        raise SystemExit(f"no {args.workload} run in the results of bench ycsb: {sorted(data)}")
    return runs[-1]


def p99s(run: dict[str, Any]) -> dict[str, float]:
    return {op: v["latency_ms"]["p99"] for op, v in run["ops"].items() if v.get("latency_ms")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=2, help="runs without and with the scraper, each (default: 2)")
    parser.add_argument("--duration", type=int, default=60, help="seconds measured per run (default: 60)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--workload", default="A")
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between scrapes of every node")
    parser.add_argument(
        "--start-with", choices=("off", "on"), default="off", help="the scraper's state in the first run (default: off)"
    )
    args = parser.parse_args()
    if args.pairs < 1 or args.duration < 1 or args.interval <= 0:
        parser.error("--pairs and --duration must be at least 1, --interval positive")

    results: list[tuple[str, dict[str, float], float, Scraper | None]] = []
    with tempfile.TemporaryDirectory(prefix="scrape-impact-") as tmp, LocalCluster(Path(tmp) / "cluster", 3) as cluster:
        cluster.start()
        cluster.wait_ready(120)
        urls = [node.url for node in cluster.nodes]
        print(f"cluster: {', '.join(urls)}; workload {args.workload}, {args.duration} s per run, "
              f"concurrency {args.concurrency}; load average {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
        for i in range(2 * args.pairs):
            scraping = (i % 2 == 1) == (args.start_with == "off")
            out = Path(tmp) / f"run{i}.json"
            if scraping:
                with Scraper(urls, args.interval) as scraper:
                    run = bench(urls, args, out)
            else:
                scraper = None
                run = bench(urls, args, out)
            ops_s = sum(v["throughput_ops_s"] for v in run["ops"].values())
            results.append(("on" if scraping else "off", p99s(run), ops_s, scraper))
            line = ", ".join(f"{op} p99 {ms:.2f} ms" for op, ms in sorted(p99s(run).items()))
            extra = ""
            if scraper is not None and scraper.times_ms:
                t = sorted(scraper.times_ms)
                extra = (f"; {len(t)} scrapes ({scraper.failures} failed, {scraper.bytes} bytes), "
                         f"scrape median {statistics.median(t):.2f} ms, max {t[-1]:.2f} ms")  # fmt: skip
            print(f"run {i + 1} scraper {'on ' if scraping else 'off'}: {line}; {ops_s:.0f} ops/s{extra}", flush=True)

    print()
    ops = sorted(set.intersection(*(set(p) for _, p, _, _ in results)))
    for op in ops:
        off = [p[op] for kind, p, _, _ in results if kind == "off"]
        on = [p[op] for kind, p, _, _ in results if kind == "on"]
        noise = max(max(off) - min(off), max(on) - min(on))
        change = statistics.mean(on) - statistics.mean(off)
        verdict = "within" if abs(change) <= noise else "BEYOND"
        print(f"{op}: p99 off {statistics.mean(off):.2f} ms (runs {', '.join(f'{v:.2f}' for v in off)}), "
              f"on {statistics.mean(on):.2f} ms (runs {', '.join(f'{v:.2f}' for v in on)}); "
              f"change {change:+.2f} ms, run-to-run noise {noise:.2f} ms: {verdict} the noise")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
