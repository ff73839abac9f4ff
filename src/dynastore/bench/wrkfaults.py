"""Where Dynamo wins by design, measured: dynastore and etcd under the same wrk load while one node
is SIGSTOPped, and while one node is cut off from the others by iptables; per second, side by side.

    dynastore bench wrk --faults [--out bench-results] [--fault-seconds 10] [--fault-ops put,get]

Each system runs as 3 nodes in network namespaces of their own (localnet.PrivateNet, each node its own
address on a bridge), so that a node can be cut from the others with iptables while the load
generator, in the root namespace, still reaches every node. wrk sends PUTs, and then GETs (of the
pre-loaded key space), of 1 KB values over random keys to a node that is not faulted: dynastore's
node0, with node2 the victim (on 3 nodes with N=3 every node is a replica of every key); for etcd a
follower, with the leader the victim. Each run lasts 5 s before the fault, the fault, 10 s after it.
The namespaces and every process are removed when the run ends, however it ends.

wrk's Lua has no per-request clock or connection identity, so kv.lua runs one connection per thread
(50 threads, 50 connections: the same 50 closed-loop clients as the headline run) and logs each
response with CLOCK_MONOTONIC from LuaJIT's ffi; wrk_report.per_second folds the logs into rows of
requests ok, errors, timeouts (slower than 2 s) and p99.9. Written to OUT/faults.json and
OUT/faults.md. Needs root (namespaces, iptables); without it the run is skipped with a message.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dynastore import localnet
from dynastore.bench.wrk_report import (
    ParseError,
    faults_markdown,
    parse_log_line,
    parse_wrk_json,
    per_second,
    summarize,
)
from dynastore.bench.wrk_tools import (
    CONNECTIONS,
    DYNASTORE,
    GENERATOR_GRACE_S,
    KEYS,
    VALUE_BYTES,
    BenchError,
    Generator,
    etcd_leader,
    preload_http,
    set_bucket_props,
    wrk_command,
)
from dynastore.bench.ycsb_peers import READY_TIMEOUT_S, PeerError, etcd_cluster
from dynastore.bench.ycsb_targets import ETCD
from dynastore.localcluster import ClusterError, LocalCluster

# PUT first: a GET run reads the keys the pre-load wrote, and a PUT run's writes do not change that.
OPS = ("put", "get")
BEFORE_S = 5
AFTER_S = 10
TIMEOUT_MS = 2000
RECOVER_TIMEOUT_S = 90.0
# Network ids 100-199 are the fault tests' (tests/faults/conftest.py); the benchmark keeps below them.
NET_ID_BASE = 20
NET_IDS = 80

SCENARIOS = {
    "sigstop": "one node SIGSTOPped (etcd: its leader), then SIGCONT",
    "cut": "one node cut off from the other two by iptables (etcd: its leader), then healed",
}

NOTES = (
    "Both systems get the same load: 50 closed-loop connections of wrk, each waiting for its answer "
    "before the next request (wrk does not give up on a request), so a stalled request stalls its "
    "connection and shows as lost throughput, then as one late answer; it counts as a timeout when later "
    "than 2 s, and its latency is in that second's p99.9.",
    "A row counts requests by the second they completed in; 'err+to' is errors (non-2xx answers) plus "
    "timeouts. Broken connections (wrk reconnects) are in wrk's totals only, listed per run in faults.json "
    "as wrk_errors and in the summary.",
    "etcd is driven through its JSON gateway (v3 /v3/kv/put and /v3/kv/range, base64 keys and values), which "
    "costs it CPU; its native gRPC would be faster. A follower forwards writes to the leader and asks it for a "
    "read index before each (linearizable, the default) read.",
    "dynastore: N=3 R=2 W=2 durable, the defaults; the bucket has allow_mult=false (blind writes replace "
    "the value, as in etcd). The coordinator sends to all three replicas and answers after two (W=2, R=2).",
    "The machine is shared with other work: absolute rates are noisy; the shape per second is the point.",
)


@dataclass(frozen=True)
class FaultSettings:
    before_s: int = BEFORE_S
    fault_s: int = 10
    after_s: int = AFTER_S
    connections: int = CONNECTIONS
    keys: int = KEYS
    value_bytes: int = VALUE_BYTES
    timeout_ms: int = TIMEOUT_MS
    ops: tuple[str, ...] = OPS
    # Settings of every dynastore node (`--set`); none for the published figures.
    overrides: tuple[str, ...] = ()

    @property
    def total_s(self) -> int:
        return self.before_s + self.fault_s + self.after_s


@dataclass(frozen=True)
class Fault:
    """What to do to the victim, and how to undo it (undo runs however the run ends)."""

    apply: Callable[[], None]
    undo: Callable[[], None]


def read_logs(log_dir: Path) -> list[tuple[int, int, int]]:
    records = []
    for path in sorted(log_dir.glob("thread-*.log")):
        for line in path.read_text().splitlines():
            if line.strip():
                records.append(parse_log_line(line))
    return records


def scenario_key(fault: str, op: str) -> str:
    return f"{fault}/{op}"


def loaded_run(url: str, kind: str, op: str, s: FaultSettings, fault: Fault, work: Path) -> dict[str, Any]:
    """wrk `op` for s.total_s against `url`, with `fault` applied from s.before_s for s.fault_s."""
    log_dir = work / "logs"
    log_dir.mkdir(parents=True)
    command = wrk_command(
        url,
        kind,
        op,
        duration_s=s.total_s,
        threads=s.connections,
        connections=s.connections,
        keys=s.keys,
        value_bytes=s.value_bytes,
        log_dir=log_dir,
    )
    generator = Generator(command, work / "wrk.out", s.total_s + GENERATOR_GRACE_S)
    start = time.monotonic()
    generator.start()
    try:
        time.sleep(max(0.0, start + s.before_s - time.monotonic()))
        try:
            fault.apply()
            time.sleep(max(0.0, start + s.before_s + s.fault_s - time.monotonic()))
        finally:
            fault.undo()
        text, generator_cpu_s = generator.finish()
    finally:
        generator.kill()
    doc = parse_wrk_json(text)
    records = read_logs(log_dir)
    statuses = Counter(str(status) for _, _, status in records)
    rows = per_second(
        records,
        start_us=int(start * 1e6),
        seconds=s.total_s,
        timeout_us=s.timeout_ms * 1000,
        pending_start_us=doc["pending_start_us"],
        end_us=doc["end_us"],
    )
    fault_end = s.before_s + s.fault_s
    return {
        "seconds": [asdict(row) for row in rows],
        "summary": {
            "before": asdict(summarize(rows, 0, s.before_s)),
            "during": asdict(summarize(rows, s.before_s, fault_end)),
            "after": asdict(summarize(rows, fault_end, s.total_s)),
        },
        "wrk_errors": doc["errors"],
        "statuses": dict(sorted(statuses.items())),
        "generator_cpu_s": round(generator_cpu_s, 3),
        "command": " ".join(command),
    }


def _net_id() -> int:
    return NET_ID_BASE + os.getpid() % NET_IDS


@contextmanager
def _dynastore(root: Path, overrides: tuple[str, ...]) -> Iterator[tuple[localnet.PrivateNet, LocalCluster]]:
    with localnet.PrivateNet(_net_id(), 3) as net:
        cluster = LocalCluster(root, 3, hosts=net.addresses, netns=net.namespaces, overrides=overrides)
        try:
            cluster.start()
            cluster.wait_ready(READY_TIMEOUT_S)
            yield net, cluster
        finally:
            cluster.close()


def run_dynastore(s: FaultSettings, root: Path) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    with _dynastore(root / "cluster", s.overrides) as (net, cluster):
        client, victim = cluster[0], cluster[2]
        if "get" in s.ops:
            preload_http(client.url, DYNASTORE, s.keys, s.value_bytes)
        else:
            set_bucket_props(client.url)
        faults = {
            "sigstop": Fault(lambda: victim.signal(signal.SIGSTOP), lambda: victim.signal(signal.SIGCONT)),
            "cut": Fault(lambda: net.isolate(victim.index), net.heal),
        }
        for op in s.ops:
            for name, fault in faults.items():
                print(f"wrk faults: dynastore, {name}, {op} ...", file=sys.stderr, flush=True)
                result = loaded_run(client.url, DYNASTORE, op, s, fault, root / f"{name}-{op}")
                result["victim"] = f"{victim.name} is the victim, wrk sends to {client.name}"
                results[scenario_key(name, op)] = result
                cluster.wait_ready(RECOVER_TIMEOUT_S)
    return results


def _etcd_leader_when_ready(urls: tuple[str, ...]) -> int:
    deadline = time.monotonic() + RECOVER_TIMEOUT_S
    while True:
        try:
            return etcd_leader(urls)
        except (OSError, ValueError, KeyError, BenchError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def run_etcd(s: FaultSettings, root: Path) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    with (
        localnet.PrivateNet(_net_id(), 3) as net,
        etcd_cluster(root / "cluster", hosts=net.addresses, netns=net.namespaces) as (peer, servers),
    ):
        urls = peer.endpoint.addresses
        if "get" in s.ops:
            preload_http(urls[_etcd_leader_when_ready(urls)], ETCD, s.keys, s.value_bytes)
        for op, name in ((op, name) for op in s.ops for name in SCENARIOS):
            leader = _etcd_leader_when_ready(urls)
            client = next(i for i in range(len(urls)) if i != leader)
            proc = servers[leader].proc
            assert proc is not None, "a started etcd member has a process"
            pid = proc.pid

            def signal_leader(sig: int, pid: int = pid) -> None:
                os.killpg(pid, sig)

            def isolate(leader: int = leader) -> None:
                net.isolate(leader)

            if name == "sigstop":
                fault = Fault(lambda: signal_leader(signal.SIGSTOP), lambda: signal_leader(signal.SIGCONT))
            else:
                fault = Fault(isolate, net.heal)
            print(f"wrk faults: etcd, {name}, {op} ...", file=sys.stderr, flush=True)
            result = loaded_run(urls[client], ETCD, op, s, fault, root / f"{name}-{op}")
            result["victim"] = f"etcd{leader}, the leader, is the victim, wrk sends to etcd{client}, a follower"
            results[scenario_key(name, op)] = result
    return results


def run(s: FaultSettings, out: Path) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "started": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "settings": {**asdict(s), "total_s": s.total_s},
        "scenarios": [],
        "notes": list(NOTES),
    }
    by_system: dict[str, dict[str, dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="dynastore-wrk-faults-") as tmp:
        for system, runner in ((DYNASTORE, run_dynastore), (ETCD, run_etcd)):
            try:
                by_system[system] = runner(s, Path(tmp) / system)
            except (BenchError, PeerError, ClusterError, ParseError, localnet.NetError, OSError) as exc:
                print(f"wrk faults: {system} failed: {exc}", file=sys.stderr)
                by_system[system] = {"error": {"error": str(exc).splitlines()[0] or type(exc).__name__}}
    for op in s.ops:
        for name, description in SCENARIOS.items():
            key = scenario_key(name, op)
            systems = {
                system: results.get(key, results.get("error", {"error": "not run"}))
                for system, results in by_system.items()
            }
            doc["scenarios"].append({"fault": name, "op": op, "description": description, "systems": systems})
    out.mkdir(parents=True, exist_ok=True)
    (out / "faults.json").write_text(json.dumps(doc, indent=2) + "\n")
    (out / "faults.md").write_text(faults_markdown(doc))
    return doc


def main(args: argparse.Namespace) -> int:
    """`dynastore bench wrk --faults` (wrkbench.main parsed the options)."""
    reason = localnet.available()
    if reason is not None:
        print(f"dynastore bench wrk --faults: skipped, network namespaces are needed: {reason}", file=sys.stderr)
        return 0
    if shutil.which("wrk") is None:
        print(
            "dynastore bench wrk --faults: skipped, wrk is not installed (scripts/install-bench-deps.sh)",
            file=sys.stderr,
        )
        return 0
    s = FaultSettings(
        fault_s=args.fault_seconds,
        connections=args.connections,
        keys=args.keys,
        value_bytes=args.value_bytes,
        ops=tuple(args.fault_ops),
        overrides=tuple(args.overrides),
    )
    doc = run(s, args.out)
    print((args.out / "faults.md").read_text())
    failed = [
        system for scenario in doc["scenarios"] for system, result in scenario["systems"].items() if "error" in result
    ]
    return 1 if failed else 0
