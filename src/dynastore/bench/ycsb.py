"""YCSB's core workloads against dynastore and, side by side, etcd, redis and pysyncobj.

    dynastore bench ycsb --target all --workload A,B,C,F --paper --out bench-results
    dynastore bench ycsb --target dynastore-http --workload A --duration 30 --json a.json
    dynastore bench paper            # the Dynamo paper's two latency measurements

Each target's store is started by the benchmark (a 3-node dynastore LocalCluster with the default
N=3 R=2 W=2 and durable LMDB, a 3-node etcd, one redis, 3 pysyncobj nodes) in a temporary directory,
loaded with the records, run through each workload for the same warm-up and measured time, then
stopped. A target that is not installed is skipped with a message. Workloads run on the data of one
load, read-only first and then by growing share of writes (C, B, A, F), so that a read-only run never
reads the siblings that concurrent updates of an earlier run left on hot keys.

With --paper (and in `dynastore bench paper`, which runs only these), the run adds what the Dynamo
paper measured, on workload A:
- durable against buffered writes (`dynastore-http-buffered`: durable=false, the storage engine does
  not sync each batch), both at peak, on the main comparison's cluster size;
- server-driven (dynastore-http) against client-driven (dynastore-ring) coordination on a cluster of
  --paper-nodes (5), at peak and at a fixed moderate rate (a quarter of dynastore-http's peak unless
  --paper-rate says otherwise, measured for --paper-duration, by default three times --duration)
  where queueing does not hide the hop that client-driven coordination saves. The cluster is
  larger than N=3 because on 3 nodes every node is a replica of every key, so a server-driven
  request is never forwarded and there is no hop to save.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

from dynastore.addresses import node_url
from dynastore.bench.ycsb_driver import LOAD, DriverError, Outcome, Phase, run_phase
from dynastore.bench.ycsb_machine import describe
from dynastore.bench.ycsb_peers import PeerError, PeerUnavailable, RunningPeer, running
from dynastore.bench.ycsb_report import (
    find_run,
    format_paper,
    format_table,
    latency,
    markdown,
    paper_comparisons,
    ratios,
    run_record,
    write_plots,
)
from dynastore.bench.ycsb_targets import (
    ALL_TARGETS,
    DYNASTORE_HTTP,
    DYNASTORE_HTTP_BUFFERED,
    DYNASTORE_RING,
    DYNASTORE_TARGETS,
)
from dynastore.bench.ycsb_workload import READ, READ_MODIFY_WRITE, UPDATE, VALUE_BYTES_DEFAULT, WORKLOADS
from dynastore.bench.zipf import THETA_DEFAULT

RUN_ORDER = ("C", "B", "A", "F")
KNOWN_TARGETS = (*ALL_TARGETS, DYNASTORE_HTTP_BUFFERED)
# The moderate load of the coordination comparison, as a share of dynastore-http's peak.
PAPER_RATE_SHARE = 0.25
# Measured time of the moderate-load runs, in multiples of --duration: at a quarter of the peak rate
# a run of --duration yields too few samples for a p99.9 that rests on more than a couple of them.
PAPER_DURATION_FACTOR = 3.0


@dataclass(frozen=True, slots=True)
class BenchConfig:
    targets: tuple[str, ...]
    workloads: tuple[str, ...]
    records: int = 10_000
    concurrency: int = 32
    duration_s: float = 20.0
    warmup_s: float = 2.0
    processes: int = 1
    rate_per_s: float | None = None
    seed: int = 1
    value_bytes: int = VALUE_BYTES_DEFAULT
    theta: float = THETA_DEFAULT
    overrides: tuple[str, ...] = ()
    urls: tuple[str, ...] = ()
    nodes: int = 3
    paper: bool = False
    paper_nodes: int = 5
    paper_rate_per_s: float | None = None
    paper_duration_s: float | None = None
    measure_cores: bool = True

    @property
    def moderate_duration_s(self) -> float:
        return self.paper_duration_s or self.duration_s * PAPER_DURATION_FACTOR

    @property
    def run_order(self) -> tuple[str, ...]:
        return tuple(w for w in RUN_ORDER if w in self.workloads)

    @property
    def paper_workload(self) -> str | None:
        writing = [w for w in sorted(self.workloads) if WORKLOADS[w].update > 0]
        return "A" if "A" in writing else (writing[0] if writing else None)


Log = Callable[[str], None]

# How a run is paced: as fast as the clients go (or at --rate when given), or at the paper's moderate rate.
PEAK = "peak"
MODERATE = "moderate"


@dataclass(frozen=True, slots=True)
class Session:
    """One store, started and loaded once, and the runs made on it in order: (workload, pacing)."""

    target: str
    nodes: int
    variant: str
    plan: tuple[tuple[str, str], ...]


def sessions(config: BenchConfig) -> list[Session]:
    """Every store to start, in order: the targets asked for, each through every workload, then what
    the paper's comparisons need and the targets did not already cover."""
    plans: dict[tuple[str, int], list[tuple[str, str]]] = {}

    def add(target: str, nodes: int, workload: str, pacing: str) -> None:
        plan = plans.setdefault((target, nodes), [])
        if (workload, pacing) not in plan:
            plan.append((workload, pacing))

    for target in config.targets:
        for workload in config.run_order:
            add(target, config.nodes, workload, PEAK)
    paper_workload = config.paper_workload
    if config.paper and paper_workload is not None:
        # Buffered against durable writes at peak, on the main comparison's cluster size.
        add(DYNASTORE_HTTP, config.nodes, paper_workload, PEAK)
        add(DYNASTORE_HTTP_BUFFERED, config.nodes, paper_workload, PEAK)
        # Coordination on a cluster larger than N, where a node that is not a replica must forward.
        for target in (DYNASTORE_HTTP, DYNASTORE_RING):
            add(target, config.paper_nodes, paper_workload, PEAK)
            if not config.rate_per_s:
                add(target, config.paper_nodes, paper_workload, MODERATE)
    return [
        Session(target, nodes, "" if nodes == config.nodes else f"{nodes} nodes", tuple(plan))
        for (target, nodes), plan in plans.items()
    ]


def _summary(run: Mapping[str, Any]) -> str:
    parts = [f"{run['throughput_ops_s']:,.0f} ops/s"]
    for op in (READ, UPDATE, READ_MODIFY_WRITE, "insert"):
        p50, p99 = latency(run, op, "p50"), latency(run, op, "p99")
        if p50 is not None and p99 is not None:
            parts.append(f"{op} p50 {p50:.2f} p99 {p99:.2f} ms")
    if run["errors"]:
        parts.append(f"{run['errors']} errors ({run['error_samples'][0]})")
    return "; ".join(parts)


def _rate(config: BenchConfig, pacing: str, workload: str, nodes: int, runs: list[dict[str, Any]]) -> float | None:
    """The rate a run is paced at (None: closed loop). The moderate rate is --paper-rate, or a quarter
    of dynastore-http's peak on the same cluster size, so that both coordinations are offered the same load."""
    if pacing == PEAK:
        return config.rate_per_s
    if config.paper_rate_per_s:
        return config.paper_rate_per_s
    peak = find_run(runs, DYNASTORE_HTTP, workload, nodes=nodes)
    if peak is None or not peak["throughput_ops_s"] > 0:
        return None
    # Rounded, so that the runs' label reads as the round number it is.
    return float(max(1, round(peak["throughput_ops_s"] * PAPER_RATE_SHARE, -1)))


def _run_session(
    config: BenchConfig,
    session: Session,
    peer: RunningPeer,
    runs: list[dict[str, Any]],
    loads: list[dict[str, Any]],
    log: Log,
) -> None:
    target, name = session.target, session.target + (f" ({session.variant})" if session.variant else "")
    base = Phase(
        endpoint=peer.endpoint,
        workload=LOAD,
        records=config.records,
        concurrency=config.concurrency,
        warmup_s=0.0,
        duration_s=math.inf,
        seed=config.seed,
        start_at=0.0,
        value_bytes=config.value_bytes,
        theta=config.theta,
        server_pids=tuple(peer.server_pids),
    )

    def record(workload: str, outcome: Outcome, rate: float | None = None) -> dict[str, Any]:
        return run_record(
            target,
            workload,
            outcome,
            concurrency=config.concurrency,
            nodes=peer.nodes,
            rate_per_s=rate,
            variant=session.variant,
        )

    loaded = record(LOAD, run_phase(base, config.processes))
    loads.append(loaded)
    log(f"{name} load of {config.records:,} records: {_summary(loaded)}")
    if loaded["operations"] == 0:
        raise DriverError(f"the load stored nothing: {'; '.join(loaded['error_samples'][:2])}")
    for workload, pacing in session.plan:
        rate = _rate(config, pacing, workload, session.nodes, runs)
        if pacing == MODERATE and rate is None:
            log(f"{name} {workload}: no peak of {DYNASTORE_HTTP} to pace the moderate-load run by; not run")
            continue
        duration_s = config.moderate_duration_s if pacing == MODERATE else config.duration_s
        phase = replace(base, workload=workload, warmup_s=config.warmup_s, duration_s=duration_s, rate_per_s=rate)
        run = record(workload, run_phase(phase, config.processes), rate)
        runs.append(run)
        log(f"{name} {workload}{f' at {rate:g} ops/s' if rate else ''}: {_summary(run)}")


def run_benchmark(config: BenchConfig, command: str, log: Log) -> dict[str, Any]:
    """Run every target through every workload; the results document (see ycsb_report)."""
    started = time.monotonic()
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    machine = describe(measure_cores=config.measure_cores)
    log(f"machine: {machine['vcpus']} vCPUs, {machine['effective_cores']:.2f} effective cores, {machine['cpu']}")
    runs: list[dict[str, Any]] = []
    loads: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    failed: list[dict[str, str]] = []
    versions: dict[str, str] = {}
    for session in sessions(config):
        target = session.target
        with tempfile.TemporaryDirectory(prefix=f"dynastore-ycsb-{target}-") as tmp:
            try:
                urls = config.urls if target in DYNASTORE_TARGETS else ()
                with running(target, Path(tmp), nodes=session.nodes, overrides=config.overrides, urls=urls) as peer:
                    if peer.version:
                        versions[target] = peer.version
                    _run_session(config, session, peer, runs, loads, log)
            except PeerUnavailable as exc:
                skipped.append({"target": target, "reason": str(exc)})
                log(f"{target}: skipped: {exc}")
            except (PeerError, DriverError) as exc:
                failed.append({"target": target, "error": str(exc)})
                log(f"{target}: failed: {exc}")
    settings = asdict(config)
    settings.update(run_order=list(config.run_order), zipf_theta=config.theta)
    return {
        "benchmark": "ycsb",
        "command": command,
        "started_at": started_at,
        "elapsed_s": time.monotonic() - started,
        "machine": machine,
        "settings": settings,
        "versions": versions,
        "loads": loads,
        "runs": runs,
        "skipped": skipped,
        "failed": failed,
        "ratios": ratios(runs),
        "paper": paper_comparisons(runs) if config.paper else None,
    }


def write_outputs(doc: dict[str, Any], json_path: Path | None, out_dir: Path | None) -> list[Path]:
    written: list[Path] = []
    text = json.dumps(doc, indent=2, allow_nan=False, default=_json_default) + "\n"
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(text)
        written.append(json_path)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "results.json").write_text(text)
        (out_dir / "results.md").write_text(markdown(doc))
        written += [out_dir / "results.json", out_dir / "results.md", *write_plots(doc, out_dir)]
    return written


def _json_default(value: object) -> object:
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


# --- Command line -----------------------------------------------------------------------------------------


def _names(values: list[str], known: tuple[str, ...], what: str, parser: argparse.ArgumentParser) -> tuple[str, ...]:
    names: list[str] = []
    for value in values:
        for name in value.split(","):
            name = name.strip()
            if not name:
                continue
            if name not in known:
                parser.error(f"unknown {what} {name!r}; choose from {', '.join(known)}")
            if name not in names:
                names.append(name)
    return tuple(names)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line on stderr, as every dynastore command reports a mistake (argparse adds the usage).
        self.exit(2, f"{self.prog}: {message}\n")


def _parser(prog: str, paper: bool) -> argparse.ArgumentParser:
    summary = "The Dynamo paper's latency measurements" if paper else __doc__.split("\n\n")[0]
    parser = _Parser(
        prog=prog,
        description=summary,
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawTextHelpFormatter,
    )
    if not paper:
        parser.add_argument(
            "--target",
            action="append",
            default=[],
            metavar="NAME[,NAME]",
            help=f"what to load: {', '.join(KNOWN_TARGETS)}, or all (default: dynastore-http)",
        )
    parser.add_argument(
        "--workload", action="append", default=[], metavar="W[,W]", help="YCSB workloads: A, B, C, F (default: A)"
    )
    parser.add_argument("--records", type=int, default=10_000, help="records loaded (default: 10000)")
    parser.add_argument("--concurrency", type=int, default=32, help="clients, over all driver processes (default: 32)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds measured per workload (default: 20)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds run unmeasured first (default: 2)")
    parser.add_argument("--processes", type=int, default=1, help="driver processes (default: 1)")
    parser.add_argument(
        "--rate", type=float, default=None, help="target ops/s over all clients: open loop instead of closed"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--value-bytes", type=int, default=VALUE_BYTES_DEFAULT, help="bytes per record (default: 1000)")
    parser.add_argument("--json", dest="json_path", type=Path, help="write the results as JSON to this file")
    parser.add_argument("--out", type=Path, help="write results.json, results.md, throughput.png, latency.png here")
    parser.add_argument(
        "--url",
        action="append",
        default=[],
        help="a node of a running dynastore cluster to use instead of starting one",
    )
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="NAME=VALUE", help="dynastore setting"
    )
    parser.add_argument("--nodes", type=int, default=3, help="nodes of the dynastore clusters started (default: 3)")
    if not paper:
        parser.add_argument("--paper", action="store_true", help="add the Dynamo paper's measurements")
    parser.add_argument(
        "--paper-nodes", type=int, default=5, help="nodes of the coordination comparison's clusters (default: 5)"
    )
    parser.add_argument(
        "--paper-rate", type=float, default=None, help="ops/s of the moderate-load comparison (default: peak / 4)"
    )
    parser.add_argument(
        "--paper-duration",
        type=float,
        default=None,
        help="seconds measured at the moderate rate (default: 3 x --duration)",
    )
    parser.add_argument(
        "--no-core-check", action="store_true", help="do not measure the machine's effective cores (2 s)"
    )
    return parser


def _config(args: argparse.Namespace, parser: argparse.ArgumentParser, paper: bool) -> BenchConfig:
    # The paper's comparisons bring the dynastore targets they need (see `sessions`).
    targets: tuple[str, ...] = ()
    if not paper:
        requested = [t for t in args.target if t != "all"] + (list(ALL_TARGETS) if "all" in args.target else [])
        targets = _names(requested or [DYNASTORE_HTTP], KNOWN_TARGETS, "target", parser)
    workloads = _names(args.workload or ["A"], tuple(WORKLOADS), "workload", parser)
    if args.records < 2:
        parser.error("--records must be at least 2")
    if not 1 <= args.processes <= args.concurrency:
        parser.error("--processes must be from 1 to --concurrency")
    if not (args.duration > 0 and args.warmup >= 0):
        parser.error("--duration must be positive and --warmup not negative")
    for name in ("rate", "paper_rate", "paper_duration"):
        value = getattr(args, name)
        if value is not None and not value > 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if not 1 <= args.value_bytes <= 1024 * 1024:
        parser.error("--value-bytes must be from 1 to 1048576")
    if args.url and args.overrides:
        parser.error("--set applies to clusters the benchmark starts, not to one named by --url")
    wants_paper = paper or args.paper
    if args.url and (DYNASTORE_HTTP_BUFFERED in targets or wants_paper):
        parser.error("buffered writes and the paper's comparisons need clusters the benchmark starts, not --url")
    if not (1 <= args.nodes <= 16 and 1 <= args.paper_nodes <= 16):
        parser.error("--nodes and --paper-nodes must be from 1 to 16")
    try:
        urls = tuple(node_url(url) for url in args.url)
    except ValueError as exc:
        parser.error(f"--url: {exc}")
    return BenchConfig(
        targets=targets,
        workloads=workloads,
        records=args.records,
        concurrency=args.concurrency,
        duration_s=args.duration,
        warmup_s=args.warmup,
        processes=args.processes,
        rate_per_s=args.rate,
        seed=args.seed,
        value_bytes=args.value_bytes,
        overrides=tuple(args.overrides),
        urls=urls,
        nodes=args.nodes,
        paper=wants_paper,
        paper_nodes=args.paper_nodes,
        paper_rate_per_s=args.paper_rate,
        paper_duration_s=args.paper_duration,
        measure_cores=not args.no_core_check,
    )


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Unwinds through every `finally`, so the stores this run started are stopped.
    raise SystemExit(128 + signum)


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _main(argv: list[str] | None, prog: str, paper: bool) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser(prog, paper)
    args = parser.parse_args(argv)
    config = _config(args, parser, paper)
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        doc = run_benchmark(config, " ".join([prog, *map(shlex.quote, argv)]), _log)
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(format_table(doc["runs"]))
    if doc["paper"] is not None:
        print()
        print(format_paper(doc["paper"]))
    for path in write_outputs(doc, args.json_path, args.out):
        _log(f"wrote {path}")
    for entry in doc["skipped"]:
        _log(f"skipped {entry['target']}: {entry['reason']}")
    empty = [f"{r['target']} {r['workload']}" for r in doc["runs"] if r["operations"] == 0]
    if doc["failed"] or empty:
        names = [entry["target"] for entry in doc["failed"]] + empty
        _log(f"{prog}: failed: {', '.join(names)}")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    return _main(argv, "dynastore bench ycsb", paper=False)


def paper_main(argv: list[str] | None = None) -> int:
    return _main(argv, "dynastore bench paper", paper=True)


if __name__ == "__main__":
    raise SystemExit(main())
