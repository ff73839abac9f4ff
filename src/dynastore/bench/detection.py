"""How long failure detection takes: SIGKILL or SIGSTOP one node of a local 3-node cluster and time
how long the other nodes take to judge it down (and, after a restart or SIGCONT, up again).

Run with the product's default settings (heartbeat 1 s, phi threshold 8) unless --set says otherwise:

    dynastore bench detection [--runs 5] [--set heartbeat_interval_ms=500 ...]

A SIGKILLed process closes its sockets, so peers learn at their next send (at most one heartbeat).
A SIGSTOPped process keeps its connections open and silent, so only phi accrual can tell.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import tempfile
import time
from pathlib import Path

from dynastore.localcluster import LocalCluster, NodeProc

POLL_S = 0.02


def _judged(cluster: LocalCluster, observers: list[NodeProc], name: str, reachable: bool, timeout_s: float) -> float:
    started = time.monotonic()
    deadline = started + timeout_s
    while time.monotonic() < deadline:
        ok = True
        for node in observers:
            members = node.status(timeout_s=1.0)["members"]
            if not any(m["name"] == name and m["reachable"] is reachable for m in members):
                ok = False
                break
        if ok:
            return time.monotonic() - started
        time.sleep(POLL_S)
    raise TimeoutError(f"{name} not judged {'up' if reachable else 'down'} within {timeout_s} s")


def measure(runs: int, overrides: tuple[str, ...]) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {
        "SIGKILL": [],
        "SIGSTOP": [],
        "back up after restart": [],
        "back up after SIGCONT": [],
    }
    with tempfile.TemporaryDirectory(prefix="dynastore-detection-") as tmp:
        cluster = LocalCluster(Path(tmp), 3, overrides=overrides)
        try:
            cluster.start()
            cluster.wait_ready(60)
            victim = cluster[2]
            observers = [cluster[0], cluster[1]]
            for _ in range(runs):
                time.sleep(3.0)  # a steady heartbeat history before each fault
                victim.signal(signal.SIGKILL)
                results["SIGKILL"].append(_judged(cluster, observers, victim.name, False, 60))
                victim.kill()
                victim.start()
                results["back up after restart"].append(_judged(cluster, observers, victim.name, True, 60))
                cluster.wait_ready(60)
                time.sleep(3.0)
                victim.signal(signal.SIGSTOP)
                results["SIGSTOP"].append(_judged(cluster, observers, victim.name, False, 60))
                victim.signal(signal.SIGCONT)
                results["back up after SIGCONT"].append(_judged(cluster, observers, victim.name, True, 60))
        finally:
            cluster.close()
    return results


def format_table(results: dict[str, list[float]]) -> str:
    lines = [f"{'event':<24} {'runs':>4} {'min s':>7} {'median s':>9} {'max s':>7}"]
    for event, values in results.items():
        if values:
            median = statistics.median(values)
            lines.append(f"{event:<24} {len(values):>4} {min(values):>7.2f} {median:>9.2f} {max(values):>7.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dynastore bench detection", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="kills and stops timed, 1 to 100 (default 5)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="NAME=VALUE", help="a setting of every node"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.runs <= 100:
        parser.error("--runs must be from 1 to 100")
    print(format_table(measure(args.runs, tuple(args.overrides))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
