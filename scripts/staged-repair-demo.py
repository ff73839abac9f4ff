"""Runs the README's staged-membership and repair walk-through on a local 3-node cluster and measures it.

Usage: PYTHONPATH=src .venv/bin/python scripts/staged-repair-demo.py [KEYS]   (default 5000)

Starts 3 nodes with LocalCluster (scheduled anti-entropy an hour away, read repair off), writes KEYS
keys of 100 bytes with w=3, wipes node2's data directory and restarts it, then times
`cluster repair --all --wait`; then stages node3's join and node1's leave, prints `cluster plan`
(and its wall time, median of 5) and commits. Every CLI output is printed as it is.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from dynastore.localcluster import LocalCluster

FAST = ("gossip_interval_ms=200", "heartbeat_interval_ms=200", "unreachable_retry_ms=300")


def cli(*args: str, show: bool = True) -> tuple[str, float]:
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "dynastore", *args], capture_output=True, text=True, timeout=600)
    elapsed = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"dynastore {' '.join(args)}: {result.stderr.strip()}")
    if show:
        print(f"$ dynastore {' '.join(args)}\n{result.stdout}", end="")
    return result.stdout, elapsed


def put(url: str, key: str) -> None:
    request = urllib.request.Request(f"{url}/buckets/demo/keys/{key}?w=3", data=b"x" * 100, method="PUT")
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 204


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    root = Path(tempfile.mkdtemp(prefix="dynastore-demo-"))
    cluster = LocalCluster(root, 3, overrides=(*FAST, "anti_entropy_interval_ms=3600000", "read_repair_enabled=false"))
    try:
        cluster.start()
        cluster.wait_ready(60)
        for i in range(count):
            put(cluster[i % 3].url, f"key{i}")
        wiped = cluster[2]
        wiped.stop()
        shutil.rmtree(wiped.data_dir)
        wiped.start()
        cluster.wait_ready(60)
        print(f"# node2 lost its data directory; it holds {cluster.stats(wiped)['keys_stored']} of {count} keys")
        _, first = cli("cluster", "repair", "17", "--wait", "60", "--node", wiped.url)
        cli("cluster", "aae-status", "--node", wiped.url, show=False)
        status, _ = cli("cluster", "aae-status", "--node", wiped.url, show=False)
        print("$ dynastore cluster aae-status --node", wiped.url, "| head -3 (of 64 partitions; 17 shown)")
        lines = status.splitlines()
        print("\n".join(lines[:2] + [line for line in lines[2:] if line.split()[0] == "17"]))
        _, repair_s = cli("cluster", "repair", "--all", "--wait", "600", "--node", wiped.url)
        print(f"# repair --all: {repair_s:.1f} s; node2 now holds {cluster.stats(wiped)['keys_stored']} of {count} keys")

        joiner = cluster.add_node()
        joiner.start()
        cluster.wait_serving(joiner)
        cli("cluster", "join", cluster[0].peer_address, "--stage", "--node", joiner.url)
        cli("cluster", "leave", "--stage", "--node", cluster[1].url)
        cli("cluster", "plan", "--node", cluster[0].url)
        times = sorted(cli("cluster", "plan", "--json", "--node", cluster[0].url, show=False)[1] for _ in range(5))
        print(f"# cluster plan wall time, median of 5: {times[2] * 1000:.0f} ms")
        plan = json.loads(cli("cluster", "plan", "--json", "--node", cluster[0].url, show=False)[0])
        cli("cluster", "commit", "--node", cluster[2].url)
        started = time.monotonic()
        while time.monotonic() - started < 300:
            ring = json.loads(urllib.request.urlopen(f"{cluster[0].url}/ring", timeout=5).read())
            if ring["owners"] == plan["owners_after"] and not cluster[1].alive:
                break
            time.sleep(0.5)
        else:
            raise SystemExit("the cluster did not reach the planned ring in 300 s")
        print(f"# the planned ring installed and node1 exited {time.monotonic() - started:.1f} s after commit")
    finally:
        cluster.close()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
