"""The headline benchmark: GET and PUT of 1 KB values over random keys, driven by C load generators
(wrk for dynastore and etcd, redis-benchmark for redis, the ceiling), every target in one run.

    dynastore bench wrk [--out bench-results] [--duration 10] [--target dynastore,etcd,redis]
                        [--placement one,spread | --spread]
    dynastore bench wrk --faults [--out bench-results]      # wrkfaults.py: SIGSTOP and a cut, per second

Each store is started by the benchmark (ycsb_peers.py: a 3-node dynastore LocalCluster as
`dynastore up` makes it, with the defaults N=3 R=2 W=2 and durable LMDB; a 3-node etcd; one redis)
on free loopback ports, its key space pre-loaded, then driven with GET and then PUT for a warm-up
and the measured seconds, and stopped. wrk runs kv.lua (in wrk/, shipped with the package) with
1 thread and 50 connections, placed two ways (both by default, each operation one way then the
other, on the same cluster): "one" sends them all to one node, dynastore's node0 and etcd's leader
(etcd's best case: a follower forwards writes to the leader); "spread" runs one wrk per node, 1
thread each, the connections split between them (17/17/16), started together for the same seconds,
as a Dynamo cluster is meant to be used (any node coordinates) and as etcd's followers also take
requests. A spread run's rates and errors are summed and its wrk processes' latency histograms
(kv.lua lists each) merged exactly (wrk_report.merge_wrk_docs). redis is one node, the ceiling, and
runs once. Written to OUT/wrk.json and OUT/wrk.md.

The CPU of every server process and of the load generator over the measured seconds is read from
/proc/PID/stat (utime + stime); a load generator's after it exits and before it is reaped, so that
none of its time is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dynastore.bench.wrk_report import (
    EXACT,
    ONE,
    PLACEMENTS,
    SPREAD,
    ParseError,
    headline_markdown,
    merge_wrk_docs,
    parse_redis_benchmark,
    parse_wrk_json,
    ratios,
    split_connections,
)
from dynastore.bench.wrk_tools import (
    CONNECTIONS,
    DYNASTORE,
    GENERATOR_GRACE_S,
    KEYS,
    VALUE_BYTES,
    BenchError,
    Generator,
    cpu_of,
    etcd_leader,
    preload_http,
    preload_redis,
    sigterm_unwinds,
    wrk_command,
)
from dynastore.bench.ycsb_machine import describe
from dynastore.bench.ycsb_peers import PeerError, PeerUnavailable, RunningPeer, running
from dynastore.bench.ycsb_targets import DYNASTORE_HTTP, ETCD, REDIS

TARGETS = (DYNASTORE, ETCD, REDIS)
KEYS_MAX = 1_000_000
VALUE_BYTES_MAX = 1 << 20
DURATION_S = 10
DURATION_S_MAX = 600
WARMUP_S = 2
CONNECTIONS_MAX = 1000
# dynastore and etcd each run as this many nodes (ycsb_peers.py); a spread run has one wrk per node.
SPREAD_NODES = 3
# redis-benchmark runs a number of requests, not a time: a short calibration run sets the number.
REDIS_CALIBRATION_REQUESTS = 20_000
REDIS_REQUESTS_MAX = 50_000_000

NOTES = (
    "etcd is driven through its JSON gateway (/v3/kv/put and /v3/kv/range with base64 keys and values), "
    "which costs it CPU for JSON and base64 and a gRPC hop inside the process; its native gRPC API would be "
    "faster. Its reads are linearizable (the default: each asks the leader for a read index).",
    "dynastore: 3 nodes as `dynastore up` makes them, N=3 R=2 W=2, durable (LMDB, each batch synced "
    "before its acknowledgements), the defaults. Security as in the default local cluster: peer links "
    "authenticated with the cluster secret (a challenge each way, every frame MAC'd), client HTTP without "
    "TLS and without user authentication (security_enabled=false). The bucket has allow_mult=false so "
    "that blind writes replace the value, as etcd and redis do (with siblings on, each PUT without a "
    "context would add one).",
    "redis is one node in memory without persistence or replication: the ceiling, not a peer.",
    "Every process shares one machine with the load generator (and, here, with other work); wrk's and "
    "redis-benchmark's CPU are listed, so a target is not limited by a starved generator unnoticed.",
)


@dataclass(frozen=True)
class Settings:
    duration_s: int = DURATION_S
    warmup_s: int = WARMUP_S
    keys: int = KEYS
    value_bytes: int = VALUE_BYTES
    connections: int = CONNECTIONS
    threads: int = 1
    # Settings of every dynastore node (`--set NAME=VALUE`); none for the headline figures.
    overrides: tuple[str, ...] = ()
    # Where the clients of dynastore and etcd are: ONE node, SPREAD over every node, or both.
    placements: tuple[str, ...] = PLACEMENTS


def _server_cpu(names: Sequence[str], pids: Sequence[int], before: Sequence[float]) -> list[dict[str, Any]]:
    after = cpu_of(pids)
    return [
        {"name": name, "pid": pid, "cpu_s": round(a - b, 3)}
        for name, pid, a, b in zip(names, pids, after, before, strict=True)
    ]


def _wrk_run(
    urls: Sequence[str],
    nodes: Sequence[str],
    kind: str,
    op: str,
    s: Settings,
    names: list[str],
    pids: list[int],
    work: Path,
) -> dict[str, Any]:
    """One measured run of wrk processes started together, one per url (one url: the one-node run),
    with the connections split between them; their figures merged (merge_wrk_docs)."""
    shares = split_connections(s.connections, len(urls))
    placement = ONE if len(urls) == 1 else SPREAD

    def generators(duration_s: int, stem: str) -> list[Generator]:
        return [
            Generator(
                wrk_command(
                    url,
                    kind,
                    op,
                    duration_s=duration_s,
                    threads=s.threads,
                    connections=connections,
                    keys=s.keys,
                    value_bytes=s.value_bytes,
                ),
                work / f"{stem}-{i}.out",
                duration_s + GENERATOR_GRACE_S,
            )
            for i, (url, connections) in enumerate(zip(urls, shares, strict=True))
        ]

    def together(group: list[Generator]) -> list[tuple[str, float]]:
        try:
            for generator in group:
                generator.start()
            return [generator.finish() for generator in group]
        finally:
            # One that failed to start or finish leaves none of the others running.
            for generator in group:
                generator.kill()

    if s.warmup_s > 0:
        together(generators(s.warmup_s, "warmup"))
    group = generators(s.duration_s, f"wrk-{kind}-{op}-{placement}")
    before, load, started = cpu_of(pids), os.getloadavg()[0], time.monotonic()
    outputs = together(group)
    server_cpu = _server_cpu(names, pids, before)
    docs = [parse_wrk_json(text) for text, _ in outputs]
    # Up to the last wrk's done() (its end_us, on the clock of time.monotonic()), so that the histogram
    # listing after the run is not counted as the run's time, as its CPU is not counted as wrk's.
    wall_s = max(doc["end_us"] for doc in docs) / 1e6 - started
    merged = merge_wrk_docs(docs)
    errors = merged["errors"]
    return {
        "op": op,
        "placement": placement,
        "url": urls[0] if len(urls) == 1 else ",".join(urls),
        "requests": merged["requests"],
        "ops_per_s": merged["ops_per_s"],
        "latency_ms": {k: v / 1000.0 for k, v in merged["latency_us"].items()},
        "latency_merge": merged["latency_merge"] if len(docs) > 1 else EXACT,
        "errors": errors,
        "errors_total": sum(errors.values()),
        "server_cpu": server_cpu,
        "generator": "wrk",
        # Without the CPU kv.lua spent listing the histogram after the run (its WRK_HIST line says how much).
        "generator_cpu_s": round(sum(cpu_s for _, cpu_s in outputs) - sum(d["histogram_cpu_s"] for d in docs), 3),
        "generator_histogram_cpu_s": round(sum(d["histogram_cpu_s"] for d in docs), 3),
        "generators": [
            {
                "node": node,
                "url": url,
                "connections": connections,
                "requests": doc["requests"],
                "ops_per_s": doc["requests"] / (doc["duration_us"] / 1e6),
                "latency_ms": {k: v / 1000.0 for k, v in doc["latency_us"].items()},
                "errors": doc["errors"],
                "cpu_s": round(cpu_s - doc["histogram_cpu_s"], 3),
            }
            for node, url, connections, doc, (_, cpu_s) in zip(nodes, urls, shares, docs, outputs, strict=True)
        ],
        "wall_s": round(wall_s, 3),
        "load_avg_1m_before": load,
        "command": " & ".join(" ".join(generator.command) for generator in group),
    }


def _redis_run(address: str, op: str, s: Settings, pids: list[int], work: Path) -> dict[str, Any]:
    host, port = address.rsplit(":", 1)
    test = {"get": "get", "put": "set"}[op]

    def command(requests: int) -> list[str]:
        base = ["redis-benchmark", "-h", host, "-p", port, "-t", test, "-c", str(s.connections)]
        return [*base, "-d", str(s.value_bytes), "-r", str(s.keys), "-n", str(requests)]

    probe = Generator(command(REDIS_CALIBRATION_REQUESTS), work / "redis-probe.out", 120)
    probe.start()
    rate = parse_redis_benchmark(probe.finish()[0])["ops_per_s"]
    requests = max(REDIS_CALIBRATION_REQUESTS, min(REDIS_REQUESTS_MAX, int(rate * s.duration_s)))
    generator = Generator(command(requests), work / f"redis-{op}.out", s.duration_s * 5 + GENERATOR_GRACE_S)
    before, load, started = cpu_of(pids), os.getloadavg()[0], time.monotonic()
    generator.start()
    text, generator_cpu = generator.finish()
    server_cpu = _server_cpu(["redis"], pids, before)
    wall_s = time.monotonic() - started
    parsed = parse_redis_benchmark(text)
    return {
        "op": op,
        "placement": ONE,
        "url": address,
        "requests": requests,
        "ops_per_s": parsed["ops_per_s"],
        "latency_ms": parsed["latency_ms"],
        # redis-benchmark counts no errors in its summary (it stops at a connection error).
        "errors": {},
        "errors_total": None,
        "server_cpu": server_cpu,
        "generator": "redis-benchmark",
        "generator_cpu_s": round(generator_cpu, 3),
        "wall_s": round(wall_s, 3),
        "load_avg_1m_before": load,
        "command": " ".join(generator.command),
    }


def run_target(target: str, s: Settings, root: Path) -> list[dict[str, Any]]:
    """GET then PUT against `target`, started under `root` and stopped afterwards."""
    peer_target = DYNASTORE_HTTP if target == DYNASTORE else target
    work = root / "generators"
    work.mkdir(parents=True, exist_ok=True)
    overrides = s.overrides if target == DYNASTORE else ()
    with running(peer_target, root / target, overrides=overrides, python_client=False) as peer:
        runs = _drive(target, peer, s, work)
    for run in runs:
        run["target"] = target
        run["version"] = peer.version
    return runs


def _drive(target: str, peer: RunningPeer, s: Settings, work: Path) -> list[dict[str, Any]]:
    pids = list(peer.server_pids)
    addresses = list(peer.endpoint.addresses)
    if target == REDIS:
        preload_redis(addresses[0], s.keys, s.value_bytes)
        return [_redis_run(addresses[0], op, s, pids, work) for op in ("get", "put")]
    if target == DYNASTORE:
        nodes = [f"node{i}" for i in range(len(pids))]
        first = 0
    else:
        nodes = [f"etcd{i}" for i in range(len(pids))]
        first = etcd_leader(addresses)
        nodes[first] += " (leader)"
    preload_http(addresses[first], target, s.keys, s.value_bytes)
    placed = {ONE: ([addresses[first]], [nodes[first]]), SPREAD: (addresses, nodes)}
    # Each operation one way then the other, so that the two placements of it are measured close in time.
    return [
        _wrk_run(*placed[placement], target, op, s, list(nodes), pids, work)
        for op in ("get", "put")
        for placement in s.placements
    ]


# --- the whole run ----------------------------------------------------------------------------------------


def missing_tools(targets: Sequence[str]) -> list[str]:
    needs = {DYNASTORE: "wrk", ETCD: "wrk", REDIS: "redis-benchmark"}
    return sorted({needs[t] for t in targets if shutil.which(needs[t]) is None})


def run(targets: Sequence[str], s: Settings, out: Path, *, measure_cores: bool = True) -> dict[str, Any]:
    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    doc: dict[str, Any] = {
        "started": started,
        "machine": describe(measure_cores=measure_cores),
        "settings": {
            "duration_s": s.duration_s,
            "warmup_s": s.warmup_s,
            "keys": s.keys,
            "value_bytes": s.value_bytes,
            "connections": s.connections,
            "threads": s.threads,
            "dynastore": "3 nodes, N=3 R=2 W=2, durable, security_enabled=false, bucket allow_mult=false",
            "dynastore_overrides": list(s.overrides),
            "placements": list(s.placements),
        },
        "runs": [],
        "skipped": {},
        "failed": {},
        "notes": list(NOTES),
    }
    with tempfile.TemporaryDirectory(prefix="dynastore-wrk-") as tmp:
        for target in targets:
            missing = missing_tools([target])
            if missing:
                reason = f"{', '.join(missing)} is not installed (scripts/install-bench-deps.sh installs it)"
                print(f"wrk bench: skipped {target}: {reason}", file=sys.stderr)
                doc["skipped"][target] = reason
                continue
            print(f"wrk bench: {target} ...", file=sys.stderr, flush=True)
            try:
                doc["runs"] += run_target(target, s, Path(tmp))
            except PeerUnavailable as exc:
                print(f"wrk bench: skipped {target}: {exc}", file=sys.stderr)
                doc["skipped"][target] = str(exc)
            except (PeerError, BenchError, ParseError) as exc:
                # As the YCSB run does: the other targets still run, and the command fails at the end.
                print(f"wrk bench: {target} failed: {exc}", file=sys.stderr)
                doc["failed"][target] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    runs = doc["runs"]
    doc["ratios"] = run_ratios(runs)
    for note_target, reason in doc["skipped"].items():
        doc["notes"].append(f"{note_target} skipped: {reason}")
    for note_target, error in doc["failed"].items():
        doc["notes"].append(f"{note_target} failed: {error}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "wrk.json").write_text(json.dumps(doc, indent=2) + "\n")
    (out / "wrk.md").write_text(headline_markdown(doc))
    return doc


def run_ratios(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """dynastore / etcd with the clients placed alike (one node, then spread), and each against
    redis (one node, the ceiling); only the pairs whose both runs are there."""
    have = {(r["target"], r.get("placement", ONE)) for r in runs}
    pairs = [(DYNASTORE, ETCD, p, p) for p in PLACEMENTS]
    pairs += [(a, REDIS, p, ONE) for a in (DYNASTORE, ETCD) for p in PLACEMENTS]
    label = {ONE: "one node", SPREAD: "spread"}
    return {
        f"{a} / {b} ({label[pa]})" if b != REDIS else f"{a} ({label[pa]}) / {b}": ratios(
            runs, a, b, numerator_placement=pa, denominator_placement=pb
        )
        for a, b, pa, pb in pairs
        if (a, pa) in have and (b, pb) in have
    }


def _placements(text: str) -> tuple[str, ...]:
    chosen = [p.strip() for p in text.split(",") if p.strip()]
    if not chosen or any(p not in PLACEMENTS for p in chosen) or len(set(chosen)) != len(chosen):
        raise argparse.ArgumentTypeError("placements are one, spread or one,spread")
    return tuple(chosen)


def _targets(text: str) -> list[str]:
    chosen = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in chosen if t not in TARGETS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"targets are a comma-separated subset of {','.join(TARGETS)}")
    return chosen


def _ops(text: str) -> list[str]:
    chosen = [op.strip() for op in text.split(",") if op.strip()]
    if not chosen or any(op not in ("put", "get") for op in chosen) or len(set(chosen)) != len(chosen):
        raise argparse.ArgumentTypeError("operations are put, get or put,get")
    return chosen


def _bounded(low: int, high: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not from {low} to {high}")
        return value

    return parse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dynastore bench wrk", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench-results"), help="directory for the reports")
    parser.add_argument("--target", type=_targets, default=list(TARGETS), help="dynastore,etcd,redis (default all)")
    parser.add_argument("--duration", type=_bounded(1, DURATION_S_MAX), default=DURATION_S, help="seconds per op")
    parser.add_argument("--warmup", type=_bounded(0, DURATION_S_MAX), default=WARMUP_S, help="seconds before each")
    parser.add_argument("--keys", type=_bounded(1, KEYS_MAX), default=KEYS, help="size of the key space")
    parser.add_argument("--value-bytes", type=_bounded(1, VALUE_BYTES_MAX), default=VALUE_BYTES)
    parser.add_argument("--connections", type=_bounded(1, CONNECTIONS_MAX), default=CONNECTIONS)
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting of every dynastore node (recorded in wrk.json; the defaults when none)",
    )
    parser.add_argument(
        "--placement",
        type=_placements,
        default=PLACEMENTS,
        help="where dynastore's and etcd's clients are: one (node0 / the leader), spread (one wrk per node) "
        "or one,spread (default); redis is always one node",
    )
    parser.add_argument("--spread", action="store_true", help="the same as --placement spread")
    parser.add_argument("--no-cores", action="store_true", help="do not measure the machine's effective cores")
    parser.add_argument(
        "--faults", action="store_true", help="instead: SIGSTOP and an iptables cut under load, dynastore vs etcd"
    )
    parser.add_argument("--fault-seconds", type=_bounded(1, 120), default=10, help="with --faults: fault length")
    parser.add_argument(
        "--fault-ops", type=_ops, default=["put", "get"], help="with --faults: put,get (default), put or get"
    )
    args = parser.parse_args(argv)
    bad = [pair for pair in args.overrides if "=" not in pair or not pair.split("=", 1)[0]]
    if bad:
        parser.error(f"--set takes NAME=VALUE, not {bad[0]!r}")
    if args.faults:
        from dynastore.bench import wrkfaults

        with sigterm_unwinds():
            return wrkfaults.main(args)
    placements = (SPREAD,) if args.spread else args.placement
    if SPREAD in placements and args.connections < SPREAD_NODES:
        parser.error(
            f"a spread run gives each of {SPREAD_NODES} nodes a connection: --connections {SPREAD_NODES} at least"
        )
    s = Settings(
        args.duration,
        args.warmup,
        args.keys,
        args.value_bytes,
        args.connections,
        overrides=tuple(args.overrides),
        placements=placements,
    )
    try:
        with sigterm_unwinds():
            doc = run(args.target, s, args.out, measure_cores=not args.no_cores)
    except (BenchError, PeerError, ParseError, OSError) as exc:
        print(f"dynastore bench wrk: {exc}", file=sys.stderr)
        return 1
    print((args.out / "wrk.md").read_text())
    if doc["failed"]:
        print(f"dynastore bench wrk: failed: {', '.join(doc['failed'])}", file=sys.stderr)
    return 0 if doc["runs"] and not doc["failed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
