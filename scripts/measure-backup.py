"""Measure `dynastore backup` and `restore` on one local node: the time and size of a backup, of a
restore, and the read latency clients see while backups run back to back (against none running).

    PYTHONPATH=src .venv/bin/python scripts/measure-backup.py [--keys 20000] [--engine lmdb] [--seconds 10]
"""

from __future__ import annotations

import argparse
import http.client
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from dynastore.localcluster import LocalCluster


def _put(host: str, port: int, keys: range, value: bytes) -> None:
    conn = http.client.HTTPConnection(host, port, timeout=30)
    for i in keys:
        conn.request("PUT", f"/buckets/b/keys/k{i}", body=value, headers={"Content-Type": "text/plain"})
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 204, resp.status
    conn.close()


def _read_latencies(host: str, port: int, keys: int, seconds: float) -> list[float]:
    conn = http.client.HTTPConnection(host, port, timeout=30)
    rng = random.Random(1)
    out: list[float] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.perf_counter()
        conn.request("GET", f"/buckets/b/keys/k{rng.randrange(keys)}")
        resp = conn.getresponse()
        resp.read()
        out.append((time.perf_counter() - started) * 1000)
    conn.close()
    return out


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "dynastore", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(result.stderr)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=20_000)
    parser.add_argument("--value-bytes", type=int, default=1024)
    parser.add_argument("--engine", default="lmdb", choices=["lmdb", "sqlite"])
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="measure-backup-"))
    overrides = (f"storage_engine={args.engine}", "n_val=1", "r=1", "w=1")
    try:
        with LocalCluster(root / "cluster", 1, overrides=overrides) as cluster:
            cluster.start()
            cluster.wait_ready(60)
            node = cluster[0]
            value = b"x" * args.value_bytes
            step = args.keys // 8
            with ThreadPoolExecutor(8) as pool:
                list(
                    pool.map(
                        lambda s: _put(node.host, node.http_port, range(s, s + step), value), range(0, 8 * step, step)
                    )
                )
            quiet = _read_latencies(node.host, node.http_port, 8 * step, args.seconds)
            stop = threading.Event()
            runs: list[float] = []

            def back_to_back() -> None:
                while not stop.is_set():
                    out = root / f"b{len(runs)}"
                    started = time.monotonic()
                    _cli("backup", "--node", node.url, "--out", str(out))
                    runs.append(time.monotonic() - started)
                    shutil.rmtree(out)

            thread = threading.Thread(target=back_to_back)
            thread.start()
            busy = _read_latencies(node.host, node.http_port, 8 * step, args.seconds)
            stop.set()
            thread.join()
            out = root / "final"
            _cli("backup", "--node", node.url, "--out", str(out))
            size = sum(p.stat().st_size for p in out.iterdir())
            node.stop()
            started = time.monotonic()
            _cli("restore", str(out), "--data-dir", str(root / "restored"))
            restore_s = time.monotonic() - started
        print(f"engine {args.engine}, {8 * step} keys of {args.value_bytes} B, backup {size / 1e6:.1f} MB")
        print(
            f"backup (CLI, end to end): median {_pct(runs, 0.5):.2f} s over {len(runs)} runs; restore {restore_s:.2f} s"
        )
        for name, lat in (("no backup", quiet), ("backups back to back", busy)):
            p50, p99 = _pct(lat, 0.5), _pct(lat, 0.99)
            print(f"reads, {name}: {len(lat)} in {args.seconds:.0f} s, p50 {p50:.2f} ms, p99 {p99:.2f} ms")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
